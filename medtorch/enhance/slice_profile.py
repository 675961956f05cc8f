"""Slice profiles: simulate thick slices, and estimate the profile of a thick-slice volume.

A thick-slice acquisition samples the object blurred along the slice axis by the slice
profile. Here the profile is a Gaussian of a given full width at half maximum (FWHM); a
thick slice ``k`` of factor ``f`` integrates the thin slices around ``f k + (f - 1) / 2``
(in thin-slice index units), the centre of the ``f`` thin slices it replaces. This is the
rule :func:`medtorch.enhance.superres.output_geometry` inverts: super-resolved slice
centres sit symmetrically inside each thick slice.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from medtorch.errors import MedTorchInputError
from medtorch.progress import CancelToken, ProgressCallback, report

__all__ = ["FWHM_TO_SIGMA", "PROFILE_SHAPES", "degrade_along", "estimate_slice_fwhm", "estimate_slice_profile",
           "gaussian_profile_kernel", "profile_kernel"]

#: sigma = FWHM / (2 sqrt(2 ln 2)).
FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))


def gaussian_profile_kernel(factor: int, fwhm_voxels: float) -> tuple[torch.Tensor, int]:
    """Weights ``w`` and left reach ``r`` of a thick slice: ``LR[k] = sum_j w[j] HR[f k - r + j]``.

    The Gaussian (FWHM in thin-slice voxels) is centred on ``f k + (f - 1) / 2``; the
    weights sum to 1. A FWHM of zero gives the plain mean of the ``f`` thin slices.
    """
    f = int(factor)
    if f < 1:
        raise MedTorchInputError(f"the factor {factor} is below 1", "use a factor of 1 or more")
    if not fwhm_voxels > 0:
        return torch.full((f,), 1.0 / f, dtype=torch.float32), 0
    sigma = float(fwhm_voxels) * FWHM_TO_SIGMA
    reach = int(math.ceil(3.5 * sigma))
    j = torch.arange(-reach, f + reach, dtype=torch.float64)
    w = torch.exp(-0.5 * ((j - (f - 1) / 2.0) / sigma) ** 2)
    return (w / w.sum()).to(torch.float32), reach


#: Slice profile shapes: a Gaussian (sampled at the thin-slice centres), or a box (rectangle)
#: of width = FWHM, integrated over each thin slice (the ideal slice of a 2D acquisition).
PROFILE_SHAPES = ("gaussian", "box")


def _tent_integral(u: np.ndarray) -> np.ndarray:
    """``int_{-inf}^{u} max(0, 1 - |x|) dx``."""
    u = np.clip(u, -1.0, 1.0)
    return np.where(u < 0, 0.5 * (u + 1.0) ** 2, 1.0 - 0.5 * (1.0 - u) ** 2)


def box_weights(centre: float, width: float, j: np.ndarray) -> np.ndarray:
    """The box slice profile's weights on samples ``j``: a box of ``width`` (samples) centred on
    ``centre``, over the object taken as linear between the samples (weight ``j`` is the box's
    integral of the hat function centred on ``j``), normalised to sum 1."""
    half = 0.5 * float(width)
    w = _tent_integral(centre + half - j) - _tent_integral(centre - half - j)
    return w / w.sum()


def _box_kernel(factor: int, width_voxels: float) -> tuple[torch.Tensor, int]:
    """A box of ``width_voxels`` centred on ``(f - 1) / 2``, integrated over the object linearly interpolated
    between the thin slices: weight ``j`` is the box's integral of the hat function centred on ``j``."""
    f = int(factor)
    c = (f - 1) / 2.0
    half = 0.5 * float(width_voxels)
    reach = max(0, int(math.ceil(half - c + 1.0 - 1e-9)) - 1)
    j = np.arange(-reach, f + reach, dtype=np.float64)
    return torch.from_numpy(box_weights(c, width_voxels, j)).to(torch.float32), reach


def profile_kernel(factor: int, fwhm_voxels: float, shape: str = "gaussian") -> tuple[torch.Tensor, int]:
    """Weights and left reach of a thick slice for a profile ``shape`` (:data:`PROFILE_SHAPES`).

    As :func:`gaussian_profile_kernel`; a box of width ``fwhm_voxels`` (its FWHM) integrates
    the object taken as linear between the thin slices (so every width gives its own weights).
    """
    if shape not in PROFILE_SHAPES:
        raise MedTorchInputError(f"unknown slice profile shape {shape!r}", "use one of " + ", ".join(PROFILE_SHAPES))
    if shape == "gaussian" or not fwhm_voxels > 0:
        return gaussian_profile_kernel(factor, fwhm_voxels)
    if int(factor) < 1:
        raise MedTorchInputError(f"the factor {factor} is below 1", "use a factor of 1 or more")
    return _box_kernel(int(factor), max(float(fwhm_voxels), 1e-3))


def degrade_along(tensor: torch.Tensor, dim: int, factor: int, fwhm_voxels: float,
                  shape: str = "gaussian") -> torch.Tensor:
    """Simulate thick slices along ``dim`` of a tensor: the slice profile, then every ``f``-th.

    ``shape``: the profile, a Gaussian of FWHM ``fwhm_voxels`` or a box of that width
    (:func:`profile_kernel`); a FWHM below the factor leaves gaps between the slices.

    The length along ``dim`` is first cut to a multiple of ``factor``; the ends are
    mirrored (reflect) for the blur. The output has ``n // factor`` samples along ``dim``.
    """
    f = int(factor)
    n = tensor.shape[dim] // f * f
    if n < f:
        raise MedTorchInputError(f"an axis of {tensor.shape[dim]} voxels cannot be reduced by {f}",
                                 "use a smaller factor or a larger volume")
    w, reach = profile_kernel(f, fwhm_voxels, shape)
    t = tensor.narrow(dim, 0, n).movedim(dim, -1)
    lead = t.shape[:-1]
    x = t.reshape(-1, 1, n).to(torch.float32)
    right = len(w) - reach - f
    if reach or right:
        mode = "reflect" if max(reach, right) < n else "replicate"
        x = F.pad(x, (reach, right), mode=mode)
    out = F.conv1d(x, w.to(x.device)[None, None], stride=f)
    return out.reshape(*lead, -1).movedim(-1, dim)


def _blur_along(tensor: torch.Tensor, dim: int, weights: torch.Tensor) -> torch.Tensor:
    """Convolve ``dim`` with ``weights`` (stride 1, same length, mirrored ends)."""
    t = tensor.movedim(dim, -1)
    lead, n = t.shape[:-1], t.shape[-1]
    k = len(weights)
    x = F.pad(t.reshape(-1, 1, n).to(torch.float32), (k // 2, k - 1 - k // 2), mode="replicate")
    return F.conv1d(x, weights.to(x.device)[None, None]).reshape(*lead, n).movedim(-1, dim)


def _line_spectrum(t: torch.Tensor, dim: int, length: int) -> torch.Tensor:
    """Mean periodogram along ``dim`` (Welch: Hann-windowed segments of ``length``, half overlap, each line's mean removed).

    Normalised so that white noise of variance ``s2`` has the level ``s2`` at every frequency.
    """
    x = t.movedim(dim, -1).reshape(-1, t.shape[dim]).to(torch.float64)
    x = x - x.mean(dim=1, keepdim=True)
    seg = x.unfold(1, length, max(1, length // 2))  # [lines, segments, length]
    win = torch.hann_window(length, periodic=False, dtype=torch.float64)
    spec = torch.fft.rfft((seg - seg.mean(dim=2, keepdim=True)) * win, dim=2).abs().square()
    return spec.reshape(-1, spec.shape[-1]).mean(dim=0) / float(win.square().sum())


def _noise_spectrum(lag_corr: np.ndarray, length: int) -> torch.Tensor:
    """Expected periodogram (as :func:`_line_spectrum`) of a stationary series with autocovariance ``lag_corr[m]``."""
    win = np.hanning(length)
    # E|FFT(win x)|^2 = sum_m R(m) sum_n win[n] win[n + m] exp(-i w m)
    w = 2.0 * np.pi * np.arange(length // 2 + 1) / length
    out = np.zeros_like(w)
    for m, r in enumerate(lag_corr):
        if m >= length or r == 0.0:
            continue
        c = float((win[: length - m] * win[m:]).sum())
        out += (1.0 if m == 0 else 2.0) * r * c * np.cos(w * m)
    return torch.from_numpy(out / float((win**2).sum()))


def _profile_mismatch(views: dict[int, torch.Tensor], axis: int, factor: int, fwhm: float, shape: str,
                      s2: float, length: int, free_gain: bool) -> float:
    """How far the two spectra of :func:`estimate_slice_profile` are from agreeing, for one candidate profile."""
    f = int(factor)
    w, _ = profile_kernel(f, fwhm, shape)
    wn = w.to(torch.float64).numpy()
    lags = [float((wn[m * f:] * wn[: len(wn) - m * f]).sum()) for m in range(len(wn) // f + 1)]
    noise_dec = s2 * _noise_spectrum(np.asarray(lags), length)
    noise_blur = s2 * _noise_spectrum(np.asarray([lags[0]]), length)
    res = []
    for along, t in views.items():
        dec = _line_spectrum(degrade_along(t, along, f, fwhm, shape), along, length) - noise_dec
        blur = _line_spectrum(_blur_along(t, along, w), axis, length) - noise_blur
        k = torch.arange(len(dec))
        ok = (k >= 2) & (dec > 0.5 * noise_dec.clamp_min(1e-12)) & (blur > 0.5 * noise_blur.clamp_min(1e-12)) \
            & (dec > 0) & (blur > 0)
        if int(ok.sum()) < 3:
            ok = (k >= 2) & (dec > 0) & (blur > 0)
        res.append(torch.log(dec[ok]) - torch.log(blur[ok]))
    r = torch.cat(res)
    if len(r) == 0:
        return float("inf")
    return float((r - r.mean()).square().mean()) if free_gain else float(r.square().mean())


def estimate_slice_profile(array: np.ndarray, axis: int, factor: int, noise_sigma: float = 0.0,
                           shapes: tuple[str, ...] = PROFILE_SHAPES, max_in_plane: int = 160,
                           free_gain: bool = True, progress: ProgressCallback | None = None,
                           cancel: CancelToken | None = None) -> tuple[float, str]:
    """Estimate the slice profile (FWHM in thin-slice voxels, and shape) of a thick-slice volume.

    ``array[z, y, x]``; ``axis`` is the thick axis as an array axis (0 = z); ``factor`` the
    ratio of thick to thin spacing; ``noise_sigma`` the white noise of the thick volume (its
    spectrum is subtracted exactly). Returns ``(fwhm_voxels, shape)``, the shape one of ``shapes``.

    The estimate rests on symmetry: if the anatomy's statistics are alike in every direction,
    then for the true profile ``p``

    * the volume degraded *in-plane* (axis ``a``) with ``p`` and the factor, along ``a``, and
    * the volume blurred in-plane (axis ``a``) with ``p`` (no decimation), along the thick axis

    are the same random process: the anatomy blurred by ``p`` along two axes and sampled every
    ``f`` along one of them. Their power spectra (Welch periodograms at the thick sampling,
    both in-plane axes) are compared frequency by frequency; the candidate profile whose
    log-spectrum ratio is flattest wins. With ``free_gain`` the ratio may sit at any constant
    level: anatomy whose power along the slice axis differs from in-plane by a constant
    (head shape, field of view) does not bias the profile, which is read from how the
    attenuation grows with frequency, not from the energy alone (the earlier estimator,
    matching the energy of neighbour differences, came out 12-20 % low on the MNI template
    for this reason). Candidates: FWHM 0.25 to 2.5 thick slices per shape (coarse grid, then
    a fine one around the best, and a parabola through the three best). Only the central
    ``max_in_plane`` voxels of each in-plane axis are used (every other line across the axis analysed).
    """
    a = np.asarray(array, dtype=np.float32)
    f = int(factor)
    if f < 2:
        raise MedTorchInputError(f"a slice profile cannot be estimated for factor {factor}",
                                 "the thick spacing must be at least twice the in-plane spacing")
    crop = [slice(None)] * 3
    for d in range(3):
        if d != axis and a.shape[d] > max_in_plane:
            start = (a.shape[d] - max_in_plane) // 2
            crop[d] = slice(start, start + max_in_plane)
    t = torch.as_tensor(np.ascontiguousarray(a[tuple(crop)]))
    in_plane = [d for d in range(3) if d != axis]
    length = min(t.shape[axis], min(t.shape[d] for d in in_plane) // f, 64)
    if length < 8:
        raise MedTorchInputError(f"the volume {tuple(a.shape)} is too small to estimate its slice profile",
                                 "give the slice profile FWHM explicitly")
    s2 = float(noise_sigma) ** 2
    # for the spectra along (and blurred along) one in-plane axis, every other line of the third
    # axis is enough: neighbouring lines are nearly alike, and it halves the work
    views = {}
    for along in in_plane:
        other = [d for d in in_plane if d != along][0]
        views[along] = t.index_select(other, torch.arange(0, t.shape[other], 2)).contiguous()
    coarse = np.linspace(0.25 * f, 2.5 * f, 13)
    best: tuple[float, float, str] = (float("inf"), float(f), "gaussian")
    steps = len(shapes) * (len(coarse) + 7)
    n = 0
    for shape in shapes:
        costs = []
        for fw in coarse:
            report(progress, cancel, n / steps, "estimating the slice profile")
            n += 1
            costs.append(_profile_mismatch(views, axis, f, float(fw), shape, s2, length, free_gain))
        i = int(np.argmin(costs))
        lo_, hi_ = coarse[max(i - 1, 0)], coarse[min(i + 1, len(coarse) - 1)]
        fine = np.linspace(lo_, hi_, 7)
        fcost = []
        for fw in fine:
            report(progress, cancel, n / steps, "estimating the slice profile")
            n += 1
            fcost.append(_profile_mismatch(views, axis, f, float(fw), shape, s2, length, free_gain))
        j = int(np.argmin(fcost))
        fw_best = float(fine[j])
        if 0 < j < len(fine) - 1:  # parabola through the three around the minimum
            c0, c1, c2 = fcost[j - 1], fcost[j], fcost[j + 1]
            den = c0 - 2 * c1 + c2
            if den > 0:
                fw_best += 0.5 * (c0 - c2) / den * float(fine[1] - fine[0])
        if fcost[j] < best[0]:
            best = (float(fcost[j]), fw_best, shape)
    return best[1], best[2]


def estimate_slice_fwhm(array: np.ndarray, axis: int, factor: int, noise_sigma: float = 0.0,
                        max_in_plane: int = 160, progress: ProgressCallback | None = None,
                        cancel: CancelToken | None = None) -> float:
    """The FWHM (thin-slice voxels) of a Gaussian slice profile fitted to a thick-slice volume.

    :func:`estimate_slice_profile` with the shape fixed to a Gaussian.
    """
    return estimate_slice_profile(array, axis, factor, noise_sigma, ("gaussian",), max_in_plane,
                                  progress=progress, cancel=cancel)[0]
