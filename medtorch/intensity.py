"""Intensity helpers shared by the modules: normalisation, CT windows, N4, histogram matching.

Every function takes a :class:`~medtorch.volume.Volume` (most also a plain numpy array),
never modifies its input, and returns voxels on exactly the input's geometry.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Union, overload

import numpy as np

from medtorch.errors import MedTorchInputError
from medtorch.progress import CancelToken, ProgressCallback, report, run_sitk_filter
from medtorch.volume import Volume, check_volume

__all__ = [
    "CT_WINDOWS",
    "robust_normalize",
    "apply_window",
    "window_bounds",
    "otsu_mask",
    "n4_bias_correction",
    "histogram_match",
]

ArrayOrVolume = Union[Volume, np.ndarray]
MaskLike = Union[Volume, np.ndarray, None]

#: CT display windows in Hounsfield units: name -> (width, level).
#: Values as listed in Radiopaedia's "Windowing (CT)" article (head and neck, chest,
#: abdomen and spine sections). Where that article gives a range, the midpoint is used:
#: subdural W 130-300 / L 50-100 -> W 215 L 75. Bone is the spine bone window
#: W 1800 L 400; stroke is the W 40 L 40 variant (the narrower W 8 L 32 is also in use).
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "brain": (80.0, 40.0),
    "subdural": (215.0, 75.0),
    "stroke": (40.0, 40.0),
    "bone": (1800.0, 400.0),
    "lung": (1500.0, -600.0),
    "mediastinum": (350.0, 50.0),
    "soft_tissue": (400.0, 50.0),
    "liver": (150.0, 30.0),
}


# -- helpers ---------------------------------------------------------------------------------


def _voxels(data: ArrayOrVolume, name: str) -> tuple[np.ndarray, Volume | None]:
    """The voxel array of ``data`` (checked), and the volume it came from (or None)."""
    if isinstance(data, Volume):
        check_volume(data, name, allow_constant=True)
        return data.array, data
    arr = np.asarray(data)
    if arr.size == 0:
        raise MedTorchInputError(f"{name} is empty", "give an array that has voxels")
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.number)):
        raise MedTorchInputError(
            f"{name} has voxels of type {arr.dtype}, not numbers", "give an integer or floating-point array"
        )
    if np.iscomplexobj(arr):
        raise MedTorchInputError(f"{name} has complex voxels", "give the magnitude image instead (the scanner's magnitude series)")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        n_nan = int(np.isnan(arr).sum())
        raise MedTorchInputError(
            f"{name} contains {n_nan} NaN and {int((~np.isfinite(arr)).sum()) - n_nan} infinite voxels",
            "replace them (e.g. with 0 or the background value) before running",
        )
    return arr, None


def _mask_array(mask: MaskLike, shape: tuple[int, ...], like: Volume | None) -> np.ndarray | None:
    """``mask`` as a bool array of ``shape``, or None for no mask."""
    if mask is None:
        return None
    if isinstance(mask, Volume):
        if like is not None and not mask.geometry.isclose(like.geometry, atol=1e-4):
            raise MedTorchInputError(
                "the mask and the volume have different geometry",
                "resample the mask onto the volume's grid first",
            )
        m = mask.array
    else:
        m = np.asarray(mask)
    if m.shape != tuple(shape):
        raise MedTorchInputError(
            f"the mask has shape {m.shape} but the volume has shape {tuple(shape)}",
            "give a mask on the same voxel grid as the volume",
        )
    m = m != 0
    if not m.any():
        raise MedTorchInputError("the mask is empty (no voxel is inside it)", "draw or compute a non-empty mask")
    return m


def _like(source: Volume | None, out: np.ndarray, what: str) -> ArrayOrVolume:
    if source is None:
        return out
    vol = Volume(out, source.geometry, "scalar", dict(source.metadata))
    vol.metadata["intensity"] = what
    return vol


def _check_range(out_range: Sequence[float]) -> tuple[float, float]:
    lo, hi = (float(v) for v in out_range)
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo == hi:
        raise MedTorchInputError(
            f"the output range {tuple(out_range)} is empty or not finite",
            "give two different finite values, e.g. (0, 1)",
        )
    return lo, hi


def _rescale(arr: np.ndarray, lo: float, hi: float, out_range: tuple[float, float], clip: bool) -> np.ndarray:
    """Map [lo, hi] linearly to ``out_range`` as a new float32 array."""
    out = np.array(arr, dtype=np.float32, copy=True)
    scale = (out_range[1] - out_range[0]) / (hi - lo)
    out -= np.float32(lo)
    out *= np.float32(scale)
    out += np.float32(out_range[0])
    if clip:
        np.clip(out, min(out_range), max(out_range), out=out)
    return out


# -- normalisation -----------------------------------------------------------------------------


@overload
def robust_normalize(
    volume_or_array: Volume,
    lower_pct: float = ...,
    upper_pct: float = ...,
    mask: MaskLike = ...,
    clip: bool = ...,
    out_range: Sequence[float] = ...,
) -> Volume: ...
@overload
def robust_normalize(
    volume_or_array: np.ndarray,
    lower_pct: float = ...,
    upper_pct: float = ...,
    mask: MaskLike = ...,
    clip: bool = ...,
    out_range: Sequence[float] = ...,
) -> np.ndarray: ...
def robust_normalize(
    volume_or_array: ArrayOrVolume,
    lower_pct: float = 1.0,
    upper_pct: float = 99.0,
    mask: MaskLike = None,
    clip: bool = True,
    out_range: Sequence[float] = (0.0, 1.0),
) -> ArrayOrVolume:
    """Map the ``lower_pct`` .. ``upper_pct`` percentiles linearly onto ``out_range``.

    Percentiles use numpy's default (linear) interpolation and are taken over the voxels
    inside ``mask`` only (a Volume or array, non-zero = inside) or over all voxels. The
    whole volume is rescaled with them; ``clip`` clamps the result to ``out_range``.
    Should the two percentiles coincide (a mostly constant image) the minimum and maximum
    inside the mask are used instead.

    Returns:
        float32 voxels: a Volume on the input's geometry for a Volume, else an array.

    Raises:
        MedTorchInputError: empty, constant (inside the mask), NaN/Inf input, bad
            percentiles, a mask of the wrong shape or an empty mask.
    """
    arr, vol = _voxels(volume_or_array, "the volume to normalise")
    if not (0.0 <= float(lower_pct) < float(upper_pct) <= 100.0):
        raise MedTorchInputError(
            f"the percentiles must satisfy 0 <= lower < upper <= 100, got {lower_pct} and {upper_pct}",
            "use e.g. lower_pct=1, upper_pct=99",
        )
    rng = _check_range(out_range)
    m = _mask_array(mask, arr.shape, vol)
    values = arr[m] if m is not None else arr.reshape(-1)
    lo, hi = (float(v) for v in np.percentile(values, [float(lower_pct), float(upper_pct)]))
    if hi <= lo:
        lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        where = "inside the mask" if m is not None else "in every voxel"
        raise MedTorchInputError(
            f"the volume has one constant value ({lo:g}) {where}, so it cannot be normalised",
            "check that the right volume (and mask) was selected and that it loaded completely",
        )
    return _like(vol, _rescale(arr, lo, hi, rng, clip), f"robust_normalize p{lower_pct:g}-p{upper_pct:g}")


# -- CT windows ----------------------------------------------------------------------------------


def window_bounds(window: "str | tuple[float, float]") -> tuple[float, float]:
    """``(lowest, highest)`` HU of a preset name or a ``(width, level)`` pair."""
    if isinstance(window, str):
        key = window.strip().lower().replace(" ", "_").replace("-", "_")
        if key not in CT_WINDOWS:
            raise MedTorchInputError(
                f"unknown CT window {window!r}", "use one of " + ", ".join(CT_WINDOWS) + ", or a (width, level) pair"
            )
        width, level = CT_WINDOWS[key]
    else:
        try:
            width, level = (float(v) for v in window)
        except (TypeError, ValueError):
            raise MedTorchInputError(
                f"a CT window must be a preset name or a (width, level) pair, got {window!r}",
                "give e.g. 'brain' or (80, 40)",
            ) from None
    if not (np.isfinite(width) and np.isfinite(level)) or width <= 0:
        raise MedTorchInputError(
            f"the window width must be a positive number of HU, got width {width} level {level}",
            "give e.g. (80, 40) for a brain window",
        )
    return level - width / 2.0, level + width / 2.0


@overload
def apply_window(volume: Volume, window: "str | tuple[float, float]", out_range: Sequence[float] = ...) -> Volume: ...
@overload
def apply_window(
    volume: np.ndarray, window: "str | tuple[float, float]", out_range: Sequence[float] = ...
) -> np.ndarray: ...
def apply_window(
    volume: ArrayOrVolume,
    window: "str | tuple[float, float]",
    out_range: Sequence[float] = (0.0, 1.0),
) -> ArrayOrVolume:
    """Apply a CT window: ``level - width/2`` -> ``out_range[0]``, ``level + width/2`` -> ``out_range[1]``.

    Args:
        volume: CT in HU (Volume or array).
        window: a name from :data:`CT_WINDOWS` or a ``(width, level)`` pair in HU.
        out_range: output range; values outside the window are clipped to it.

    Returns:
        float32 voxels (a Volume on the input's geometry for a Volume, else an array).
    """
    arr, vol = _voxels(volume, "the CT volume")
    lo, hi = window_bounds(window)
    rng = _check_range(out_range)
    name = window if isinstance(window, str) else f"W{hi - lo:g} L{(hi + lo) / 2:g}"
    return _like(vol, _rescale(arr, lo, hi, rng, clip=True), f"CT window {name}")


# -- N4 bias field correction --------------------------------------------------------------------


def otsu_mask(volume: Volume) -> Volume:
    """Foreground mask (label volume, uint8 0/1) by Otsu's threshold on the whole volume."""
    import SimpleITK as sitk

    check_volume(volume, "the volume to mask")
    img = sitk.Cast(volume.to_sitk(), sitk.sitkFloat32)
    mask = sitk.OtsuThreshold(img, 0, 1, 200)
    return Volume(sitk.GetArrayFromImage(mask).astype(np.uint8), volume.geometry, "label")


def n4_bias_correction(
    volume: Volume,
    mask: MaskLike = None,
    shrink_factor: int = 4,
    iterations: Sequence[int] = (50, 50, 30, 20),
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    *,
    convergence_threshold: float = 1e-3,
    control_points: int = 4,
    spline_order: int = 3,
) -> tuple[Volume, Volume]:
    """N4 bias field correction (SimpleITK), fitted on a shrunk image for speed.

    The recipe: fit N4 on the volume shrunk by ``shrink_factor`` (per axis, never below
    8 voxels in an axis), evaluate the fitted log bias field on the *full-resolution*
    grid (``GetLogBiasFieldAsImage``) and divide the original voxels by its exponential.

    Args:
        volume: a scalar volume with positive intensities inside the object (MRI).
        mask: where to fit the field (Volume or array on the same grid, non-zero inside);
            by default the Otsu foreground. Voxels <= 0 are always left out of the fit.
        shrink_factor: 1 (no shrinking) .. 16.
        iterations: maximum iterations per fitting level; one level per entry.
        progress, cancel: see :mod:`medtorch.progress`; a cancel stops within an iteration.
        convergence_threshold, control_points, spline_order: N4's own parameters.

    Returns:
        ``(corrected, bias_field)``: float32 volumes on exactly the input's geometry, with
        ``corrected = volume / bias_field`` voxel by voxel. The input is not modified.

    Raises:
        MedTorchInputError: bad input (see :func:`~medtorch.volume.check_volume`), a bad
            parameter, an empty mask, or too few voxels with a positive intensity inside it.
        Cancelled: when ``cancel`` is set.
    """
    import SimpleITK as sitk

    check_volume(volume, "the volume to bias-correct")
    iters = [int(i) for i in iterations]
    if not iters or len(iters) > 10 or any(i < 1 for i in iters):
        raise MedTorchInputError(
            f"iterations must be 1 to 10 positive counts (one per fitting level), got {tuple(iterations)}",
            "use e.g. (50, 50, 30, 20)",
        )
    if not 1 <= int(shrink_factor) <= 16:
        raise MedTorchInputError(
            f"the shrink factor must be 1 to 16, got {shrink_factor}", "use 4 (fast) or 1 (full resolution, slow)"
        )
    report(progress, cancel, 0.0, "N4: preparing")

    image = sitk.Cast(volume.to_sitk(), sitk.sitkFloat32)
    if mask is None:
        mask_arr = otsu_mask(volume).array != 0
    else:
        mask_arr = _mask_array(mask, volume.array.shape, volume)
    fit_mask = mask_arr & (volume.array > 0)
    n_fit = int(np.count_nonzero(fit_mask))
    need = min(1000, max(1, volume.array.size // 100))  # a field cannot be fitted to a handful of voxels
    if n_fit < need:
        raise MedTorchInputError(
            f"N4 bias correction found only {n_fit} voxels with a positive intensity inside the mask "
            f"(it needs at least {need})",
            "N4 is for MRI with positive intensities: check the volume and the mask",
        )
    mask_img = sitk.GetImageFromArray(fit_mask.astype(np.uint8))
    mask_img.CopyInformation(image)

    factors = [max(1, min(int(shrink_factor), s // 8)) for s in volume.size]
    if any(f > 1 for f in factors):
        small = sitk.Shrink(image, factors)
        small_mask = sitk.Shrink(mask_img, factors)
        if not sitk.GetArrayViewFromImage(small_mask).any():
            small, small_mask = image, mask_img  # the mask was too thin to survive shrinking
    else:
        small, small_mask = image, mask_img

    n4 = sitk.N4BiasFieldCorrectionImageFilter()
    n4.SetMaximumNumberOfIterations(iters)
    n4.SetConvergenceThreshold(float(convergence_threshold))
    n4.SetNumberOfControlPoints([int(control_points)] * 3)
    n4.SetSplineOrder(int(spline_order))

    total = float(sum(iters))
    done_before = np.concatenate([[0], np.cumsum(iters)])

    def on_iteration() -> None:
        if progress is None:
            return
        level = min(int(n4.GetCurrentLevel()), len(iters) - 1)
        frac = (done_before[level] + min(int(n4.GetElapsedIterations()), iters[level])) / total
        progress(0.05 + 0.85 * frac, f"N4: level {level + 1}/{len(iters)}")

    # The filter reports iteration events only; run_sitk_filter stops it on cancel.
    n4.AddCommand(sitk.sitkIterationEvent, on_iteration)
    run_sitk_filter(n4, small, small_mask, progress=None, cancel=cancel, message="N4 bias correction")

    report(progress, cancel, 0.92, "N4: full-resolution bias field")
    log_bias = n4.GetLogBiasFieldAsImage(image)
    bias = np.exp(sitk.GetArrayFromImage(log_bias).astype(np.float32, copy=False))
    corrected = volume.array.astype(np.float32)  # a copy: the input stays as it was
    corrected /= bias
    report(progress, cancel, 1.0, "N4: done")

    meta = dict(volume.metadata)
    meta["n4"] = f"shrink {factors}, iterations {iters}"
    return (
        Volume(corrected, volume.geometry, "scalar", meta),
        Volume(bias, volume.geometry, "scalar", {"n4_bias_field_of": meta.get("source", "")}),
    )


# -- histogram matching --------------------------------------------------------------------------


def histogram_match(
    volume: Volume,
    reference: Volume,
    histogram_levels: int = 256,
    match_points: int = 7,
    threshold_at_mean: bool = True,
) -> Volume:
    """Match ``volume``'s intensity histogram to ``reference``'s (SimpleITK).

    Piecewise-linear matching at ``match_points`` quantiles; with ``threshold_at_mean``
    voxels below each image's mean (the background) are left out, as usual for MRI. The
    two volumes need not share a grid. Returns float32 voxels on ``volume``'s geometry.
    """
    import SimpleITK as sitk

    check_volume(volume, "the volume to match")
    check_volume(reference, "the reference volume")
    if histogram_levels < 2 or match_points < 1:
        raise MedTorchInputError(
            f"histogram_levels must be >= 2 and match_points >= 1, got {histogram_levels} and {match_points}",
            "use the defaults (256 levels, 7 match points)",
        )
    f = sitk.HistogramMatchingImageFilter()
    f.SetNumberOfHistogramLevels(int(histogram_levels))
    f.SetNumberOfMatchPoints(int(match_points))
    f.SetThresholdAtMeanIntensity(bool(threshold_at_mean))
    src = sitk.Cast(volume.to_sitk(), sitk.sitkFloat32)
    ref = sitk.Cast(reference.to_sitk(), sitk.sitkFloat32)
    out = f.Execute(src, ref)
    meta: dict[str, Any] = dict(volume.metadata)
    meta["intensity"] = "histogram matched"
    return Volume(sitk.GetArrayFromImage(out).astype(np.float32), volume.geometry, "scalar", meta)
