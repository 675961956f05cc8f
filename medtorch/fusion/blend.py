"""Resample a moving volume onto the fixed volume's grid and blend the two.

This is the *weighted average* fusion rule: each input is first brought to a common
intensity range (robust percentile normalisation to [0, 1] by default, so a CT in HU and
an MRI in arbitrary units weigh alike), then ``fused = (1 - w) * fixed + w * moving``.
The output range is [0, 1] when normalising; otherwise it is the inputs' own range.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from medtorch.errors import MedTorchInputError
from medtorch.ops.fusion import BlendNormalization as Normalization
from medtorch.progress import CancelToken, ProgressCallback, SubProgress, report
from medtorch.resample import resample
from medtorch.volume import Volume, check_volume


@dataclass
class BlendResult:
    """Outputs of :func:`resample_and_blend`."""

    fused: Volume
    resampled_moving: Volume
    overlap_fraction: float


def _normalize(arr: np.ndarray, mask: np.ndarray | None, lower_pct: float, upper_pct: float) -> np.ndarray:
    values = arr[mask] if mask is not None and mask.any() else arr.reshape(-1)
    lo, hi = np.percentile(values, [lower_pct, upper_pct])
    if hi <= lo:
        lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros_like(arr, dtype=np.float32)
    return np.clip((arr.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0)


def resample_and_blend(
    fixed: Volume,
    moving: Volume,
    transform: Any = None,
    weight: float = 0.5,
    normalization: Normalization = "percentile",
    lower_percentile: float = 1.0,
    upper_percentile: float = 99.0,
    device: str | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> BlendResult:
    """Resample ``moving`` onto ``fixed``'s grid through ``transform`` and blend.

    Args:
        fixed: the reference volume; the output has exactly its geometry.
        moving: the volume to bring onto the fixed grid.
        transform: ITK convention (fixed LPS point -> moving LPS point): ``None`` for
            identity, a 4x4 LPS matrix, a displacement-field volume, or a list of these.
        weight: share of the moving volume in the blend, in [0, 1].
        normalization: ``"percentile"`` maps each input's [lower, upper] percentile to
            [0, 1] (the output is then in [0, 1]); ``"none"`` blends raw intensities.
        device: torch device for the resampling: ``auto``/``None`` (``$MEDTORCH_DEVICE``, else
            cuda, then mps, then cpu), ``cpu``, ``cuda`` or ``mps``.

    Raises:
        MedTorchInputError: bad volumes, a weight outside [0, 1], or no overlap between
            the moving volume and the fixed grid.
    """
    check_volume(fixed, "fixed volume")
    check_volume(moving, "moving volume")
    if not 0.0 <= weight <= 1.0:
        raise MedTorchInputError(f"blend weight {weight} is outside [0, 1]", "choose a weight between 0 and 1")
    if not 0.0 <= lower_percentile < upper_percentile <= 100.0:
        raise MedTorchInputError(
            f"percentiles ({lower_percentile}, {upper_percentile}) are not ordered within [0, 100]",
            "use e.g. lower 1 and upper 99",
        )
    from medtorch.device import select_device

    dev = select_device(device)
    report(progress, cancel, 0.0, f"resampling the moving volume on {dev}")
    moved = resample(
        moving,
        fixed.geometry,
        transform,
        interpolation="linear",
        default_value=0.0,
        device=dev,
        progress=SubProgress(progress, 0.0, 0.6, "resampling"),
        cancel=cancel,
    )
    # Which fixed voxels the moving volume covers: resample its support (a volume of ones).
    support = resample(
        moving.with_array(np.ones(moving.array.shape, dtype=np.float32)),
        fixed.geometry,
        transform,
        interpolation="linear",
        default_value=0.0,
        device=dev,
        progress=SubProgress(progress, 0.6, 0.8, "overlap"),
        cancel=cancel,
    )
    inside = support.array > 0.5
    overlap = float(inside.mean())
    if overlap == 0.0:
        raise MedTorchInputError(
            "the moving volume does not overlap the fixed volume at all",
            "check the transform (or the volumes' origins); align them roughly first, e.g. by registration",
        )
    report(progress, cancel, 0.85, "blending")
    moving_arr = np.where(inside, moved.array, 0.0).astype(np.float32)
    if normalization == "percentile":
        f = _normalize(fixed.array, None, lower_percentile, upper_percentile)
        m = _normalize(moving_arr, inside, lower_percentile, upper_percentile)
        m[~inside] = 0.0
    elif normalization == "none":
        f = fixed.array.astype(np.float32)
        m = moving_arr
    else:
        raise MedTorchInputError(f"unknown normalization {normalization!r}", "use 'percentile' or 'none'")
    fused = ((1.0 - weight) * f + weight * m).astype(np.float32)
    meta = {"operation": "blend", "weight": weight, "normalization": normalization, "device": str(dev),
            "output_range": "[0, 1]" if normalization == "percentile" else "input units"}
    report(progress, cancel, 1.0, "done")
    return BlendResult(
        fused=Volume(fused, fixed.geometry, "scalar", meta),
        resampled_moving=Volume(moving_arr, fixed.geometry, "scalar", {"operation": "resample"}),
        overlap_fraction=overlap,
    )
