"""Enhancement steps: N4 bias correction, CLAHE, histogram matching, unsharp masking, CT windows.

:func:`enhance` runs the chosen steps in a fixed, sensible order -- bias correction,
histogram matching, CLAHE, unsharp masking, CT window -- and returns a new float32
volume on the input's grid (the input is never modified). Each step is also a function
of its own. N4, histogram matching and the CT windows are those of
:mod:`medtorch.intensity`; CLAHE is scikit-image's ``equalize_adapthist`` (n-dimensional);
unsharp masking is done here with a Gaussian in millimetres (anisotropic spacing honoured).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from medtorch.errors import MedTorchInputError
from medtorch.progress import CancelToken, ProgressCallback, SubProgress, report, run_sitk_filter
from medtorch.volume import Volume, check_volume

__all__ = ["EnhanceSteps", "clahe", "enhance", "unsharp_mask"]


def clahe(volume: Volume, clip_limit: float = 0.01, kernel_mm: float = 32.0,
          progress: ProgressCallback | None = None, cancel: CancelToken | None = None) -> Volume:
    """Contrast-limited adaptive histogram equalisation in 3D (scikit-image).

    The intensities are mapped to [0, 1] by the 0.5 and 99.5 percentiles first (CLAHE
    works on that range), and the result is mapped back onto the same range, so the
    output stays in the input's units. ``kernel_mm`` is the context region's edge in mm
    (converted per axis to voxels); ``clip_limit`` is scikit-image's (0..1, higher is
    stronger).
    """
    from skimage.exposure import equalize_adapthist

    check_volume(volume, "the volume for CLAHE")
    if not 0 < clip_limit <= 1:
        raise MedTorchInputError(f"the CLAHE clip limit {clip_limit} is outside (0, 1]", "use e.g. 0.01")
    if not kernel_mm > 0:
        raise MedTorchInputError(f"the CLAHE region {kernel_mm} mm is not positive", "use e.g. 32 mm")
    report(progress, cancel, 0.0, "CLAHE")
    a = volume.array.astype(np.float64)
    lo, hi = np.percentile(a, [0.5, 99.5])
    if hi <= lo:
        lo, hi = float(a.min()), float(a.max()) if a.max() > a.min() else float(a.min()) + 1.0
    unit = np.clip((a - lo) / (hi - lo), 0.0, 1.0)
    kernel = [max(2, int(round(kernel_mm / s))) for s in volume.spacing[::-1]]
    kernel = [min(k, n) for k, n in zip(kernel, a.shape)]
    out = equalize_adapthist(unit, kernel_size=kernel, clip_limit=float(clip_limit), nbins=256)
    report(progress, cancel, 1.0, "CLAHE done")
    return volume.with_array((out * (hi - lo) + lo).astype(np.float32), "scalar")


def unsharp_mask(volume: Volume, sigma_mm: float = 1.0, amount: float = 0.5,
                 progress: ProgressCallback | None = None, cancel: CancelToken | None = None) -> Volume:
    """``x + amount * (x - gaussian(x, sigma_mm))``: sharpens detail finer than ``sigma_mm``."""
    import SimpleITK as sitk

    check_volume(volume, "the volume to sharpen")
    if not sigma_mm > 0 or not amount >= 0:
        raise MedTorchInputError(f"unsharp masking needs sigma > 0 mm and amount >= 0, got {sigma_mm}, {amount}",
                                 "use e.g. sigma 1 mm, amount 0.5")
    filt = sitk.SmoothingRecursiveGaussianImageFilter()
    filt.SetSigma(float(sigma_mm))
    img = sitk.Cast(volume.to_sitk(), sitk.sitkFloat32)
    blurred = sitk.GetArrayFromImage(run_sitk_filter(filt, img, progress=progress, cancel=cancel,
                                                     message="unsharp masking"))
    a = volume.array.astype(np.float32)
    return volume.with_array((a + float(amount) * (a - blurred)).astype(np.float32), "scalar")


@dataclass
class EnhanceSteps:
    """Which steps :func:`enhance` runs, and their parameters."""

    n4: bool = False
    n4_shrink: int = 4
    histogram_reference: Volume | None = None
    clahe: bool = False
    clahe_clip: float = 0.01
    clahe_kernel_mm: float = 32.0
    unsharp: bool = False
    unsharp_sigma_mm: float = 1.0
    unsharp_amount: float = 0.5
    window: str | tuple[float, float] | None = None

    def names(self) -> list[str]:
        out = []
        if self.n4:
            out.append("n4")
        if self.histogram_reference is not None:
            out.append("histogram_match")
        if self.clahe:
            out.append("clahe")
        if self.unsharp:
            out.append("unsharp")
        if self.window is not None:
            out.append("window")
        return out


def enhance(volume: Volume, steps: EnhanceSteps, progress: ProgressCallback | None = None,
            cancel: CancelToken | None = None) -> tuple[Volume, dict[str, Any]]:
    """Run ``steps`` on ``volume``; returns the enhanced volume and extra outputs (``bias_field``)."""
    from medtorch.intensity import apply_window, histogram_match, n4_bias_correction

    check_volume(volume, "the volume to enhance")
    names = steps.names()
    if not names:
        raise MedTorchInputError("no enhancement step was chosen",
                                 "choose at least one: N4, histogram matching, CLAHE, unsharp masking or a CT window")
    current = volume
    extra: dict[str, Any] = {}
    n = len(names)
    for i, name in enumerate(names):
        sub = SubProgress(progress, i / n, (i + 1) / n, name)
        report(sub, cancel, 0.0, "starting")
        if name == "n4":
            current, extra["bias_field"] = n4_bias_correction(current, shrink_factor=steps.n4_shrink,
                                                              progress=sub, cancel=cancel)
        elif name == "histogram_match":
            assert steps.histogram_reference is not None
            current = histogram_match(current, steps.histogram_reference)
        elif name == "clahe":
            current = clahe(current, steps.clahe_clip, steps.clahe_kernel_mm, sub, cancel)
        elif name == "unsharp":
            current = unsharp_mask(current, steps.unsharp_sigma_mm, steps.unsharp_amount, sub, cancel)
        elif name == "window":
            assert steps.window is not None
            current = apply_window(current, steps.window)
    report(progress, cancel, 1.0, "done")
    out = Volume(np.asarray(current.array, dtype=np.float32), volume.geometry, "scalar", dict(volume.metadata))
    out.metadata.update({"operation": "enhance", "steps": ",".join(names)})
    return out, extra
