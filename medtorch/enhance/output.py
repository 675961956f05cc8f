"""The voxel type of an enhancement result, chosen so that nothing ever wraps around.

Filtered, denoised and super-resolved voxels are fractional and may leave the input's
range (sharpening overshoots, Rician bias correction, interpolation ringing), so the
default output type is ``float32``, whatever the input's type. A caller may ask for:

* ``"float32"`` (default) or ``"float64"``;
* ``"input"``: the input's own type when every (rounded) output value fits it, else the
  smallest wider signed integer type that holds them (recorded in the metadata) --
  never a wrapped or clipped value;
* an integer type by name (``"uint8"``, ``"int16"``, ...): rounded; if a value does not fit,
  :class:`~medtorch.errors.MedTorchInputError` says which values and what to do.
"""

from __future__ import annotations

import numpy as np

from medtorch.errors import MedTorchInputError
from medtorch.volume import Volume

__all__ = ["OUTPUT_DTYPES", "cast_output"]

OUTPUT_DTYPES = ("float32", "float64", "input", "uint8", "int8", "uint16", "int16", "uint32", "int32", "int64")
_WIDER = (np.int16, np.int32, np.int64)


def _fits(lo: float, hi: float, dtype: np.dtype) -> bool:
    info = np.iinfo(dtype)
    return info.min <= lo and hi <= info.max


def cast_output(volume: Volume, requested: str = "float32", input_dtype: np.dtype | type | None = None) -> Volume:
    """``volume`` with voxels of the requested type (see the module docstring)."""
    req = str(requested).strip().lower()
    if req not in OUTPUT_DTYPES:
        raise MedTorchInputError(f"unknown output type {requested!r}", "use one of " + ", ".join(OUTPUT_DTYPES))
    arr = np.asarray(volume.array)
    if req in ("float32", "float64"):
        return volume.with_array(arr.astype(req, copy=False))
    src = np.dtype(input_dtype) if input_dtype is not None else arr.dtype
    if req == "input" and not np.issubdtype(src, np.integer):
        return volume.with_array(arr.astype(src if np.issubdtype(src, np.floating) else np.float32, copy=False))
    rounded = np.rint(arr.astype(np.float64))
    lo, hi = float(rounded.min()), float(rounded.max())
    if req == "input":
        target = src
        if not _fits(lo, hi, target):
            target = next((np.dtype(t) for t in _WIDER if np.dtype(t).itemsize >= src.itemsize
                           and _fits(lo, hi, np.dtype(t))), np.dtype(np.float64))
        out = volume.with_array(rounded.astype(target))
        out.metadata["output_dtype"] = str(np.dtype(target))
        if np.dtype(target) != src:
            out.metadata["output_dtype_note"] = (f"values {lo:g}..{hi:g} do not fit {src}; widened to {np.dtype(target)}")
        return out
    target = np.dtype(req)
    if not _fits(lo, hi, target):
        info = np.iinfo(target)
        raise MedTorchInputError(
            f"the result ranges from {lo:g} to {hi:g}, which does not fit {target} ({info.min}..{info.max}): "
            "it would overflow",
            "keep the default float32 output, choose 'input' (widens the type when needed), or a wider integer type",
        )
    return volume.with_array(rounded.astype(target))
