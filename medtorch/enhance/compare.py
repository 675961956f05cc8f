"""Before/after comparison volumes: a difference volume and a checkerboard.

Both are computed on the *after* volume's grid. When the grids differ (super-resolution
changes the grid), the *before* volume is first resampled onto it (linear, physical space,
:func:`medtorch.resample.resample`), so both show the same anatomy at each voxel.
"""

from __future__ import annotations

from typing import get_args

import numpy as np

from medtorch.errors import MedTorchInputError
from medtorch.ops.enhance import Comparison
from medtorch.volume import Volume, check_volume

__all__ = ["COMPARISONS", "checkerboard", "comparison_volume", "difference"]

#: Comparison kinds (defined by the enhancement requests, :data:`medtorch.ops.enhance.Comparison`).
COMPARISONS: tuple[str, ...] = get_args(Comparison)


def _on_grid(before: Volume, after: Volume) -> np.ndarray:
    if before.geometry.isclose(after.geometry, atol=1e-5):
        return before.array.astype(np.float32)
    from medtorch.resample import resample

    return resample(before, after.geometry, interpolation="linear").array.astype(np.float32)


def difference(before: Volume, after: Volume) -> Volume:
    """``after - before`` voxel by voxel (float32, on ``after``'s grid)."""
    check_volume(before, "the volume before", allow_constant=True)
    check_volume(after, "the volume after", allow_constant=True)
    out = after.array.astype(np.float32) - _on_grid(before, after)
    return Volume(out, after.geometry, "scalar", {"comparison": "difference (after - before)"})


def checkerboard(before: Volume, after: Volume, squares: int = 8) -> Volume:
    """Alternating 3D squares of ``before`` and ``after`` (``squares`` along each axis)."""
    check_volume(before, "the volume before", allow_constant=True)
    check_volume(after, "the volume after", allow_constant=True)
    if int(squares) < 1:
        raise MedTorchInputError(f"a checkerboard of {squares} squares", "use at least 1 square per axis")
    b = _on_grid(before, after)
    a = after.array.astype(np.float32)
    idx: tuple[np.ndarray, ...] = tuple(np.indices(a.shape, sparse=True))
    parity = sum((ix * int(squares)) // n for ix, n in zip(idx, a.shape)) % 2
    out = np.where(parity == 0, b, a).astype(np.float32)
    return Volume(out, after.geometry, "scalar", {"comparison": f"checkerboard ({squares} squares per axis)"})


def comparison_volume(kind: str, before: Volume, after: Volume) -> Volume | None:
    """The comparison volume named ``kind`` (one of :data:`COMPARISONS`), or ``None`` for ``none``."""
    if kind == "none":
        return None
    if kind == "difference":
        return difference(before, after)
    if kind == "checkerboard":
        return checkerboard(before, after)
    raise MedTorchInputError(f"unknown comparison {kind!r}", "use " + ", ".join(COMPARISONS))
