"""Image-quality measures: with a reference (PSNR, SSIM) and without one (noise, sharpness).

* :func:`psnr`: ``10 log10(peak^2 / MSE)`` over the voxels of ``mask`` (all when ``None``);
  ``peak`` defaults to the reference's maximum minus its minimum (the data range).
* :func:`ssim`: the structural similarity of Wang et al. (2004) with a Gaussian window
  (sigma 1.5 voxels, ``K1 = 0.01``, ``K2 = 0.03``, the data range as ``L``), computed in 3D
  (``per_slice=False``, a 3D window) or per slice along an axis (2D windows), and averaged
  over the voxels of ``mask``. With the same window and constants it agrees with
  ``skimage.metrics.structural_similarity(..., gaussian_weights=True,
  use_sample_covariance=False)`` (tested).
* :func:`noise_level`: the noise standard deviation (:func:`medtorch.enhance.noise.estimate_noise`).
* :func:`sharpness`: the mean gradient magnitude over the object (intensity per mm)
  normalised by the object's mean intensity (1/mm), and the high-frequency energy ratio.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medtorch.errors import MedTorchInputError
from medtorch.volume import Volume

__all__ = ["compare", "noise_level", "psnr", "sharpness", "ssim", "ssim_map"]


def _arr(x: Volume | np.ndarray) -> np.ndarray:
    return x.array if isinstance(x, Volume) else np.asarray(x)


def _check_pair(image: np.ndarray, reference: np.ndarray, mask: Any) -> np.ndarray | None:
    if image.shape != reference.shape:
        raise MedTorchInputError(f"the image {image.shape} and the reference {reference.shape} differ in shape",
                                 "resample one onto the other's grid first")
    if mask is None:
        return None
    m = _arr(mask) != 0
    if m.shape != image.shape:
        raise MedTorchInputError(f"the mask {m.shape} and the image {image.shape} differ in shape",
                                 "give a mask on the image's grid")
    if not m.any():
        raise MedTorchInputError("the mask is empty", "give a mask with voxels inside")
    return m


def _data_range(reference: np.ndarray) -> float:
    r = float(reference.max()) - float(reference.min())
    if not r > 0:
        raise MedTorchInputError("the reference is constant: PSNR and SSIM need a data range",
                                 "give a reference with some contrast, or the peak/data range explicitly")
    return r


def psnr(image: Volume | np.ndarray, reference: Volume | np.ndarray, mask: Any = None,
         peak: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB (``inf`` for identical voxels)."""
    a = _arr(image).astype(np.float64)
    r = _arr(reference).astype(np.float64)
    m = _check_pair(a, r, mask)
    p = _data_range(r) if peak is None else float(peak)
    diff = (a - r) if m is None else (a[m] - r[m])
    mse = float(np.mean(diff**2))
    return float("inf") if mse == 0 else float(10.0 * np.log10(p * p / mse))


def _gaussian_window(sigma: float, dims: int, device: Any = None) -> torch.Tensor:
    radius = int(3.5 * sigma + 0.5)  # as scipy's gaussian_filter(truncate=3.5), which skimage uses
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    g = g / g.sum()
    return g.to(device=device)


def _separable_blur(t: torch.Tensor, g: torch.Tensor, dims: int) -> torch.Tensor:
    """Gaussian blur of ``[N, C, *spatial]`` along its last ``dims`` axes (zero padding not used: valid)."""
    k = g.numel()
    out = t
    for d in range(dims):
        shape = [1] * dims
        shape[d] = k
        w = g.to(t.dtype).reshape(1, 1, *shape).repeat(out.shape[1], 1, *([1] * dims))
        conv = F.conv3d if dims == 3 else F.conv2d
        out = conv(out, w, groups=out.shape[1])
    return out


def ssim_map(image: np.ndarray, reference: np.ndarray, data_range: float, sigma: float = 1.5,
             per_slice_axis: int | None = None) -> np.ndarray:
    """The SSIM of every voxel whose whole window lies inside the volume (``NaN`` elsewhere)."""
    a = torch.from_numpy(np.asarray(image, dtype=np.float64))
    b = torch.from_numpy(np.asarray(reference, dtype=np.float64))
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    g = _gaussian_window(sigma, 3)
    radius = (g.numel() - 1) // 2
    if per_slice_axis is None:
        dims = 3
        x = torch.stack([a, b, a * a, b * b, a * b])[None]
    else:
        dims = 2
        x = torch.stack([a, b, a * a, b * b, a * b]).movedim(per_slice_axis + 1, 0)  # [S, 5, H, W]
    if any(s < g.numel() for s in x.shape[-dims:]):
        raise MedTorchInputError(f"the volume {tuple(a.shape)} is smaller than the SSIM window ({g.numel()} voxels)",
                                 "use a larger volume or a smaller window")
    m = _separable_blur(x, g, dims)
    mu_a, mu_b, s_aa, s_bb, s_ab = (m[:, i] for i in range(5))
    va, vb, cov = s_aa - mu_a**2, s_bb - mu_b**2, s_ab - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (va + vb + c2))
    full = torch.full(x.shape[:1] + x.shape[2:], float("nan"), dtype=torch.float64)
    sl = (slice(None),) + tuple(slice(radius, n - radius) for n in x.shape[-dims:])
    full[sl] = s
    if per_slice_axis is None:
        return full[0].numpy()
    return full.movedim(0, per_slice_axis).numpy()


def ssim(image: Volume | np.ndarray, reference: Volume | np.ndarray, mask: Any = None,
         data_range: float | None = None, per_slice_axis: int | None = None, sigma: float = 1.5) -> float:
    """Mean SSIM over ``mask`` (voxels away from the volume's border by the window's reach).

    ``per_slice_axis``: an array axis (0 = z) to compute 2D SSIM slice by slice along; 3D when ``None``.
    """
    a = _arr(image)
    r = _arr(reference)
    m = _check_pair(a, r, mask)
    dr = _data_range(r) if data_range is None else float(data_range)
    smap = ssim_map(a, r, dr, sigma, per_slice_axis)
    valid = np.isfinite(smap) if m is None else (np.isfinite(smap) & m)
    if not valid.any():
        raise MedTorchInputError("no voxel of the mask lies far enough from the border for SSIM",
                                 "use a larger mask or volume")
    return float(smap[valid].mean())


def per_slice(metric: str, image: Volume | np.ndarray, reference: Volume | np.ndarray, mask: Any = None,
              axis: int = 0) -> np.ndarray:
    """PSNR or SSIM of each slice along array ``axis`` (``NaN`` for slices with an empty mask)."""
    a, r = _arr(image), _arr(reference)
    m = _check_pair(a, r, mask)
    dr = _data_range(r)
    out = np.full(a.shape[axis], np.nan)
    smap = ssim_map(a, r, dr, per_slice_axis=axis) if metric == "ssim" else None
    for k in range(a.shape[axis]):
        ms = np.take(m, k, axis=axis) if m is not None else np.ones(np.take(a, k, axis=axis).shape, bool)
        if not ms.any():
            continue
        if metric == "psnr":
            d = np.take(a, k, axis=axis)[ms].astype(np.float64) - np.take(r, k, axis=axis)[ms]
            mse = float(np.mean(d**2))
            out[k] = np.inf if mse == 0 else 10 * np.log10(dr * dr / mse)
        elif metric == "ssim":
            assert smap is not None
            s = np.take(smap, k, axis=axis)
            v = np.isfinite(s) & ms
            out[k] = float(s[v].mean()) if v.any() else np.nan
        else:
            raise MedTorchInputError(f"unknown metric {metric!r}", "use psnr or ssim")
    return out


def noise_level(volume: Volume | np.ndarray, model: str = "auto") -> dict[str, Any]:
    """Noise standard deviation and model, without a reference."""
    from medtorch.enhance.noise import estimate_noise

    est = estimate_noise(_arr(volume), model)
    return est.as_metadata()


def sharpness(volume: Volume | np.ndarray, mask: Any = None) -> dict[str, float]:
    """Sharpness without a reference.

    * ``gradient``: mean gradient magnitude (per mm, central differences with the voxel
      spacing when a Volume is given) over the object, divided by its mean intensity;
    * ``hf_ratio``: the share of the (mean-removed) signal energy above half the Nyquist
      frequency along every axis -- it grows with detail and with noise alike, so compare
      volumes of similar noise.
    """
    a = _arr(volume).astype(np.float64)
    spacing = volume.spacing[::-1] if isinstance(volume, Volume) else np.ones(3)
    m = (a > 0.1 * np.percentile(a, 99)) if mask is None else (_arr(mask) != 0)
    if not m.any():
        m = np.ones(a.shape, dtype=bool)
    grads = np.gradient(a, *spacing)
    gmag = np.sqrt(sum(g**2 for g in grads))
    mean_intensity = float(np.abs(a[m]).mean()) or 1.0
    spec = np.abs(np.fft.rfftn(a - a.mean())) ** 2
    freqs = np.meshgrid(*[np.abs(np.fft.fftfreq(n)) for n in a.shape[:2]], np.fft.rfftfreq(a.shape[2]), indexing="ij")
    high = (freqs[0] > 0.25) | (freqs[1] > 0.25) | (freqs[2] > 0.25)
    total = float(spec.sum()) or 1.0
    return {"gradient": float(gmag[m].mean() / mean_intensity), "hf_ratio": float(spec[high].sum() / total)}


def compare(image: Volume | np.ndarray, reference: Volume | np.ndarray | None = None, mask: Any = None,
            slice_axis: int = 0) -> dict[str, Any]:
    """All measures at once: PSNR/SSIM (3D and per-slice mean) with a reference, else noise and sharpness."""
    out: dict[str, Any] = {}
    if reference is not None:
        out["psnr_db"] = psnr(image, reference, mask)
        out["ssim"] = ssim(image, reference, mask)
        out["ssim_per_slice_mean"] = float(np.nanmean(per_slice("ssim", image, reference, mask, slice_axis)))
        out["psnr_per_slice_mean_db"] = float(np.nanmean(np.where(np.isfinite(v := per_slice("psnr", image, reference, mask, slice_axis)), v, np.nan)))
    else:
        out.update(noise_level(image))
        out.update({f"sharpness_{k}": v for k, v in sharpness(image, mask).items()})
    return out
