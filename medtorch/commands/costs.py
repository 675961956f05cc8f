"""Rough cost of each method, shown in ``--help``: one table, measured by ``python -m benchmarks.cost``.

:data:`COST_256_2CORES` holds, per command and method, the wall-clock seconds of one run on a
256^3 volume with 2 CPU cores (``superres``: a 256 x 256 x 64 input made 256^3 with ``--factor
4``; ``fuse``: two aligned 256^3 volumes, metrics off). The benchmark measures every method at two
smaller sizes on the bundled MNI T1 (with 5 % Rician noise for denoising), fits a fixed plus a
per-voxel cost, extrapolates to 256^3, writes ``docs/benchmarks/cost.md`` and checks this table
against what it measured (``--check``: exit 1 where a figure is off by more than 3 times). The
figures are approximate: measured on a machine shared with other work.
"""

from __future__ import annotations

#: Seconds per method for a 256^3 volume on 2 CPU cores (see the module docstring); written from
#: ``python -m benchmarks.cost`` (docs/benchmarks/cost.md), which checks them. ``None``: a method the
#: last run did not measure at a size large enough to extrapolate from (said so in the help).
COST_256_2CORES: dict[str, dict[str, float | None]] = {
    "denoise": {"gaussian": 0.7, "median": 4.7, "anisotropic": 15.4, "bilateral": 27.6, "nlm": 106.4,
                "patch": 1727.1, "dct": 106.2, "collab": 437.3, "selfsup": 964.4},
    "superres": {"linear": 0.2, "bspline": 3.3, "sinc": 165.2, "selfsup": 223.3},
    "fuse": {"average": 1.5, "dwt": 2.6, "laplacian": 3.2, "gff": 3.3, "gradient": 14.5, "pca": 2, "cnn": 601.2,
             "max": 1.2},
}


def _rough(seconds: float) -> str:
    if seconds < 1.5:
        return "~1 s"
    if seconds < 90:
        return f"~{seconds:.0f} s" if seconds < 10 else f"~{round(seconds, -1):.0f} s"
    if seconds < 5400:
        return f"~{seconds / 60:.0f} min"
    return f"~{seconds / 3600:.1f} h"


def cost_help(command: str) -> str:
    """The help sentence for a command's ``--method``: each method's rough time on 256^3."""
    table = COST_256_2CORES.get(command) or {}
    if not table:
        return ""
    parts = ", ".join(f"{m} {_rough(s)}" if s is not None else f"{m} not measured yet" for m, s in table.items())
    return (f"Rough time on a 256^3 volume with 2 CPU cores (approximate: measured by python -m benchmarks.cost on "
            f"a machine shared with other work; 'not measured yet': only small sizes were timed, too few to "
            f"extrapolate): {parts}.")
