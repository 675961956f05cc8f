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
    "denoise": {"gaussian": 6.5, "median": 32.5, "anisotropic": 130, "bilateral": 210.2, "nlm": None,
                "patch": None, "dct": None, "collab": None, "selfsup": None},
    "superres": {"linear": 3.4, "bspline": 34.7, "sinc": 2402.3, "selfsup": None},
    "fuse": {"average": 7.9, "dwt": 28.6, "laplacian": 30.7, "gff": 39.1, "gradient": 485.1, "pca": 22,
             "cnn": None, "max": 11.9},
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
            f"a machine shared with other work, under load, so more likely high than low): {parts}.")
