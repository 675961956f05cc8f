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

__all__ = ["FWHM_TO_SIGMA", "degrade_along", "estimate_slice_fwhm", "gaussian_profile_kernel"]

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


def degrade_along(tensor: torch.Tensor, dim: int, factor: int, fwhm_voxels: float) -> torch.Tensor:
    """Simulate thick slices along ``dim`` of a tensor: Gaussian profile, then every ``f``-th.

    The length along ``dim`` is first cut to a multiple of ``factor``; the ends are
    mirrored (reflect) for the blur. The output has ``n // factor`` samples along ``dim``.
    """
    f = int(factor)
    n = tensor.shape[dim] // f * f
    if n < f:
        raise MedTorchInputError(f"an axis of {tensor.shape[dim]} voxels cannot be reduced by {f}",
                                 "use a smaller factor or a larger volume")
    w, reach = gaussian_profile_kernel(f, fwhm_voxels)
    t = tensor.narrow(dim, 0, n).movedim(dim, -1)
    lead = t.shape[:-1]
    x = t.reshape(-1, 1, n).to(torch.float32)
    right = len(w) - reach - f
    if reach or right:
        mode = "reflect" if max(reach, right) < n else "replicate"
        x = F.pad(x, (reach, right), mode=mode)
    out = F.conv1d(x, w.to(x.device)[None, None], stride=f)
    return out.reshape(*lead, -1).movedim(-1, dim)


def _diff_energy(t: torch.Tensor, dim: int) -> float:
    d = torch.diff(t, dim=dim)
    return float(d.square().mean())


def _blur_along(tensor: torch.Tensor, dim: int, weights: torch.Tensor) -> torch.Tensor:
    """Convolve ``dim`` with ``weights`` (stride 1, same length, mirrored ends)."""
    t = tensor.movedim(dim, -1)
    lead, n = t.shape[:-1], t.shape[-1]
    k = len(weights)
    x = F.pad(t.reshape(-1, 1, n).to(torch.float32), (k // 2, k - 1 - k // 2), mode="replicate")
    return F.conv1d(x, weights.to(x.device)[None, None]).reshape(*lead, n).movedim(-1, dim)


def estimate_slice_fwhm(array: np.ndarray, axis: int, factor: int, noise_sigma: float = 0.0,
                        candidates: np.ndarray | None = None, max_in_plane: int = 160,
                        progress: ProgressCallback | None = None, cancel: CancelToken | None = None) -> float:
    """Estimate the FWHM (in thin-slice voxels) of the slice profile of a thick-slice volume.

    ``array[z, y, x]``; ``axis`` is the thick axis as an array axis (0 = z); ``factor`` is
    the ratio of thick to thin spacing. The estimate rests on symmetry: if the anatomy's
    statistics are alike in every direction, then for the true profile ``p``

    * the volume degraded *in-plane* (axis ``a``) with ``p`` and the factor, differenced
      along ``a``, and
    * the volume blurred in-plane (axis ``a``) with ``p`` (no decimation), differenced
      along the thick axis

    have the same energy (mean squared difference of neighbouring samples): both are the
    anatomy blurred by ``p`` along two axes and sampled every ``f`` along one of them. The
    candidate FWHM (0.3 to 3 thick slices) where the two energies cross is returned
    (linear interpolation between candidates, both in-plane axes averaged). The white
    noise of standard deviation ``noise_sigma`` is accounted for analytically. Only the
    central ``max_in_plane`` voxels of each in-plane axis are used (enough statistics, bounded time).
    """
    a = np.asarray(array, dtype=np.float32)
    crop = [slice(None)] * 3
    for d in range(3):
        if d != axis and a.shape[d] > max_in_plane:
            start = (a.shape[d] - max_in_plane) // 2
            crop[d] = slice(start, start + max_in_plane)
    t = torch.as_tensor(np.ascontiguousarray(a[tuple(crop)]))
    f = int(factor)
    if f < 2:
        raise MedTorchInputError(f"a slice profile cannot be estimated for factor {factor}",
                                 "the thick spacing must be at least twice the in-plane spacing")
    if min(t.shape) < 4:
        raise MedTorchInputError(f"the volume {tuple(t.shape)} is too small to estimate its slice profile",
                                 "give the slice profile FWHM explicitly")
    cand = np.linspace(0.3 * f, 3.0 * f, 28) if candidates is None else np.asarray(candidates, dtype=float)
    in_plane = [a for a in range(3) if a != axis]
    s2 = float(noise_sigma) ** 2
    gaps = []
    for n, fwhm in enumerate(cand):
        report(progress, cancel, n / len(cand), "estimating the slice profile")
        w, _ = gaussian_profile_kernel(f, float(fwhm))
        sum_w2 = float((w**2).sum())
        shifted = float((w[f:] * w[:-f]).sum()) if len(w) > f else 0.0
        gap = 0.0
        for along in in_plane:
            decimated = _diff_energy(degrade_along(t, along, f, float(fwhm)), along) - 2.0 * s2 * (sum_w2 - shifted)
            blurred = _diff_energy(_blur_along(t, along, w), axis) - 2.0 * s2 * sum_w2
            gap += decimated - blurred
        gaps.append(gap / len(in_plane))
    g = np.asarray(gaps)  # positive for too narrow a profile, negative for too wide
    sign_change = np.nonzero((g[:-1] > 0) & (g[1:] <= 0))[0]
    if len(sign_change) == 0:
        return float(cand[0] if g[0] <= 0 else cand[-1])
    i = int(sign_change[0])
    return float(cand[i] + (cand[i + 1] - cand[i]) * g[i] / (g[i] - g[i + 1]))
