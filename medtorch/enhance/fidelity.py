"""Fidelity maps: where a super-resolved or denoised output departs from what the input supports.

**Super-resolution** (:func:`superres_fidelity`). The forward model of a thick-slice scan
(:mod:`medtorch.enhance.slice_profile`): the object blurred along the thick axis by the slice
profile, sampled at the thick slice centres. The output is put through it again: along every
axis where the output is finer than the input, each input voxel centre takes the output
weighted by the profile (a Gaussian of the given or estimated FWHM, centred on that voxel's
physical position, the ends mirrored as :func:`~medtorch.enhance.slice_profile.degrade_along`
mirrors them; a FWHM of 0 is a box as wide as the input voxel); along the other axes it
takes the output linearly interpolated (the identity when the grids agree, as they do for
:func:`~medtorch.enhance.superres.output_geometry`). The map is ``re-degraded output - input``
on the **input's grid** (its origin, spacing and direction): near zero where the output is
consistent with the input; detail the method invented that the input cannot hold shows up
as residual. Its summary: the RMS residual against the input's robust intensity range
(0.5-99.5 %) and against the input's noise sigma (:func:`~medtorch.enhance.noise.estimate_noise`),
the fraction of voxels with ``|residual| > 3 sigma``, and the largest ``|residual|``.

**Denoising** (:func:`denoise_fidelity`). The removed component ``input - output``
normalised by the noise model: Gaussian ``(y - x) / sigma``; Rician ``(y - E[M]) / sd(M)``
for the amplitude ``A`` the output stands for (the output itself for the Rician-aware
methods, :data:`RICIAN_UNBIASED`; the unbiased amplitude of a plain filter's output, which
estimates ``E[M]``); Poisson-Gaussian ``(y - x) / sqrt(gain (x - offset) + sigma^2)``. When only
noise was removed it is white noise of mean 0 and SD 1. Its summary: mean and SD, the
fraction with ``|r| > 3``, and two measures of removed structure: the correlation of ``|r|``
with the output's gradient magnitude (``edge_correlation``, near 0 for noise) and the RMS of
``r`` over the 10 % strongest edges divided by that elsewhere (``edge_rms_ratio``, near 1).

Both maps are float32 volumes; the inputs are never modified.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from medtorch.enhance.noise import NoiseEstimate, estimate_noise, rician_mean, rician_unbias_mean
from medtorch.enhance.slice_profile import FWHM_TO_SIGMA, box_weights, estimate_slice_fwhm
from medtorch.errors import MedTorchInputError
from medtorch.progress import CancelToken, ProgressCallback, SubProgress, report
from medtorch.verdict import Verdict
from medtorch.volume import Volume, check_volume

__all__ = ["RICIAN_UNBIASED", "SUPERRES_THRESHOLDS", "denoise_fidelity", "format_summary", "noise_used",
           "profile_weights", "superres_fidelity", "superres_verdict"]

#: Denoising methods whose output is the Rician-unbiased amplitude (the others estimate ``E[M]``).
RICIAN_UNBIASED = ("nlm", "dct", "collab", "selfsup")
#: Fraction of voxels with the strongest output gradient counted as edges in ``edge_rms_ratio``.
EDGE_FRACTION = 0.10


# -- super-resolution -----------------------------------------------------------------------------


def _reflect(index: np.ndarray, n: int) -> np.ndarray:
    """Mirror indices into ``[0, n)`` as ``torch.nn.functional.pad(mode='reflect')`` does."""
    if n == 1:
        return np.zeros_like(index)
    period = 2 * (n - 1)
    m = np.mod(index, period)
    return np.where(m < n, m, period - m)


def profile_weights(centres: np.ndarray, n_out: int, fwhm_voxels: float, width_voxels: float,
                    shape: str = "gaussian") -> np.ndarray:
    """``W[k, j]``: the weight of output sample ``j`` in the input sample centred at output index ``centres[k]``.

    A Gaussian of ``fwhm_voxels`` (output voxels) sampled at the output voxel centres, reaching
    3.5 sigma, normalised to sum 1, with indices beyond the ends mirrored (as
    :func:`~medtorch.enhance.slice_profile.degrade_along` pads); ``fwhm_voxels <= 0``: a box of
    ``width_voxels`` (the input voxel), each output voxel weighted by its overlap with it.
    For integer factors on :func:`~medtorch.enhance.superres.output_geometry`'s grid this is
    exactly :func:`~medtorch.enhance.slice_profile.gaussian_profile_kernel`'s forward model.
    ``shape="box"`` with ``fwhm_voxels > 0``: a box of that width over the output taken as linear
    between its samples (:func:`~medtorch.enhance.slice_profile.profile_kernel`'s box).
    """
    c = np.asarray(centres, dtype=np.float64)
    W = np.zeros((len(c), int(n_out)), dtype=np.float64)
    if shape == "box" and fwhm_voxels > 0:
        half = 0.5 * float(fwhm_voxels)
        for k, u in enumerate(c):
            j = np.arange(math.floor(u - half) - 1, math.ceil(u + half) + 2)
            np.add.at(W[k], _reflect(j, int(n_out)), box_weights(u, fwhm_voxels, j))
        return W
    if fwhm_voxels > 0:
        sigma = float(fwhm_voxels) * FWHM_TO_SIGMA
        reach = 3.5 * sigma
    else:
        half = max(float(width_voxels), 1.0) / 2.0
        reach = half + 0.5
    for k, u in enumerate(c):
        j = np.arange(math.floor(u - reach), math.ceil(u + reach) + 1)
        if fwhm_voxels > 0:
            w = np.exp(-0.5 * ((j - u) / sigma) ** 2)
        else:
            w = np.clip(np.minimum(j + 0.5, u + half) - np.maximum(j - 0.5, u - half), 0.0, None)
        if w.sum() <= 0:  # a profile far narrower than a voxel: the nearest sample
            j, w = np.array([int(round(u))]), np.array([1.0])
        np.add.at(W[k], _reflect(j, int(n_out)), w / w.sum())
    return W


def _linear_weights(centres: np.ndarray, n_out: int) -> np.ndarray:
    """Linear interpolation (clamped at the ends) as a ``[k, j]`` matrix."""
    c = np.clip(np.asarray(centres, dtype=np.float64), 0.0, n_out - 1.0)
    lo = np.floor(c).astype(int)
    hi = np.minimum(lo + 1, n_out - 1)
    t = c - lo
    W = np.zeros((len(c), int(n_out)), dtype=np.float64)
    rows = np.arange(len(c))
    np.add.at(W, (rows, lo), 1.0 - t)
    np.add.at(W, (rows, hi), t)
    return W


def _robust_range(array: np.ndarray) -> tuple[float, float]:
    a = np.asarray(array)
    sample = a.reshape(-1)[:: max(1, a.size // 2_000_000)].astype(np.float64)
    lo, hi = float(np.percentile(sample, 0.5)), float(np.percentile(sample, 99.5))
    if hi <= lo:
        lo, hi = float(sample.min()), float(sample.max())
    return lo, (hi if hi > lo else lo + 1.0)


def _fwhm_per_axis(volume: Volume, refined: list[int], factors: np.ndarray, fwhm_mm: Any,
                   noise_sigma: float, progress: ProgressCallback | None,
                   cancel: CancelToken | None) -> tuple[dict[int, float], str]:
    """The slice profile FWHM (mm) of each refined axis, and where it came from."""
    if fwhm_mm is not None:
        values = [float(v) for v in (fwhm_mm if isinstance(fwhm_mm, (list, tuple, np.ndarray)) else [fwhm_mm])]
        if len(values) == 1:
            values = values * 3
        if len(values) != 3 or not all(np.isfinite(v) and v >= 0 for v in values):
            raise MedTorchInputError(f"the slice profile FWHM {fwhm_mm!r} is not one or three numbers >= 0 (mm)",
                                     "give the FWHM in mm (often the slice thickness), or leave it to be estimated")
        return {a: values[a] for a in refined}, "given"
    if len(refined) == 1 and round(float(factors[refined[0]])) >= 2:
        a = refined[0]
        f = int(round(float(factors[a])))
        fwhm_vox = estimate_slice_fwhm(volume.array, 2 - a, f, noise_sigma=noise_sigma, progress=progress,
                                       cancel=cancel)
        return {a: float(fwhm_vox) * float(volume.spacing[a]) / f}, "estimated"
    # isotropic upsampling or a small factor: each input voxel's own width (as selfsup assumes)
    return {a: float(volume.spacing[a]) for a in refined}, "input spacing"


def superres_fidelity(input_volume: Volume, output: Volume, fwhm_mm: float | Sequence[float] | None = None,
                      noise: NoiseEstimate | None = None, fwhm_source: str | None = None,
                      progress: ProgressCallback | None = None,
                      cancel: CancelToken | None = None, profile_shape: str = "gaussian") -> tuple[Volume, dict[str, Any]]:
    """The super-resolution fidelity map (see the module docstring) and its summary.

    Args:
        input_volume: the thick (or coarse) volume that was super-resolved.
        output: the super-resolved volume; its grid must have the input's direction (any
            :func:`~medtorch.enhance.superres.superres` output has).
        fwhm_mm: slice profile FWHM in mm (one for every refined axis, or one per axis i, j,
            k; 0 = a box as wide as the input voxel). ``None``: estimated from the input
            (:func:`~medtorch.enhance.slice_profile.estimate_slice_fwhm`) for one refined axis,
            else the input spacing.
        noise: the input's noise estimate (estimated when ``None``).
        fwhm_source: where a given ``fwhm_mm`` came from, for the summary (default "given"; a
            self-supervised model's own estimate says "estimated").
        profile_shape: ``gaussian`` (FWHM ``fwhm_mm``) or ``box`` (of width ``fwhm_mm``, as a
            model trained for a box profile assumes).

    Returns:
        ``(map, summary)``: ``map`` on the input's grid, ``re-degraded output - input``.
    """
    check_volume(input_volume, "the input of the super-resolution")
    check_volume(output, "the super-resolved volume")
    gi, go = input_volume.geometry, output.geometry
    if not np.allclose(gi.direction, go.direction, atol=1e-4):
        raise MedTorchInputError("the super-resolved volume's axes are not those of the input",
                                 "give the output of super-resolving this input (same orientation)")
    if profile_shape not in ("gaussian", "box"):
        raise MedTorchInputError(f"unknown slice profile shape {profile_shape!r}", "use gaussian or box")
    report(progress, cancel, 0.0, "fidelity map")
    factors = gi.spacing / go.spacing
    refined = [a for a in range(3) if factors[a] > 1.0 + 1e-6]
    if not refined:
        raise MedTorchInputError("the output is not finer than the input along any axis",
                                 "give the super-resolved output of this input")
    noise = noise or estimate_noise(input_volume.array)
    sigma = float(noise.sigma)
    fwhm, source = _fwhm_per_axis(input_volume, refined, factors, fwhm_mm, sigma,
                                  SubProgress(progress, 0.0, 0.5, "slice profile"), cancel)
    # the output's continuous index of each input voxel centre, axis by axis (the grids are aligned)
    offset = gi.direction.T @ (gi.origin - go.origin)
    x = torch.from_numpy(np.ascontiguousarray(output.array, dtype=np.float32))  # float32: half the memory of float64
    for a in range(3):
        centres = (offset[a] + np.arange(gi.size[a]) * gi.spacing[a]) / go.spacing[a]
        if a in refined:
            W = profile_weights(centres, go.size[a], fwhm[a] / go.spacing[a], factors[a], profile_shape)
        elif gi.size[a] == go.size[a] and np.allclose(centres, np.arange(gi.size[a]), atol=1e-4):
            continue
        else:
            W = _linear_weights(centres, go.size[a])
        dim = 2 - a
        x = torch.movedim(torch.tensordot(torch.from_numpy(W.astype(np.float32)), x, dims=([1], [dim])), 0, dim)
        report(progress, cancel, 0.5 + (a + 1) / 8.0, "fidelity map")
    redegraded = x.numpy()
    inp = np.asarray(input_volume.array, dtype=np.float64)
    residual = redegraded - inp
    lo, hi = _robust_range(inp)
    rms = float(np.sqrt(np.mean(residual**2)))
    absr = np.abs(residual)
    summary: dict[str, Any] = {
        "kind": "superres",
        "rms": rms,
        "rms_relative_to_range": rms / (hi - lo),
        "rms_over_noise_sigma": rms / sigma if sigma > 0 else None,
        "fraction_above_3_sigma": float(np.mean(absr > 3.0 * sigma)) if sigma > 0 else None,
        "max_abs": float(absr.max()),
        "max_abs_over_noise_sigma": float(absr.max()) / sigma if sigma > 0 else None,
        "noise_sigma": sigma, "noise_model": noise.model, "intensity_range": [lo, hi],
        "fwhm_mm": {"ijk"[a]: round(float(v), 4) for a, v in fwhm.items()},
        "profile_shape": profile_shape,
        "fwhm_over_spacing": max(float(v) / float(gi.spacing[a]) for a, v in fwhm.items()),
        "fwhm_source": fwhm_source if fwhm_source and fwhm_mm is not None else source,
    }
    meta = {**input_volume.metadata, "operation": "fidelity", "fidelity": "superres residual (re-degraded output - input)"}
    report(progress, cancel, 1.0, "fidelity map")
    return Volume(residual.astype(np.float32), gi, "scalar", meta), summary


# -- denoising -----------------------------------------------------------------------------------


def _gradient_magnitude(volume: Volume) -> np.ndarray:
    import SimpleITK as sitk

    filt = sitk.GradientMagnitudeRecursiveGaussianImageFilter()
    filt.SetSigma(float(volume.spacing.max()))
    img = sitk.Cast(volume.to_sitk(), sitk.sitkFloat32)
    return sitk.GetArrayFromImage(filt.Execute(img)).astype(np.float64)


def noise_used(input_volume: Volume, output: Volume, noise_model: str = "auto",
               noise_sigma: float | None = None) -> NoiseEstimate:
    """The noise model and level a denoiser used: those recorded in the output's metadata (the
    noise-aware methods record them), else estimated from the input (``noise_sigma`` when given)."""
    meta = output.metadata
    if meta.get("noise_model") in ("rician", "gaussian", "poisson") and meta.get("noise_sigma") is not None:
        return NoiseEstimate(meta["noise_model"], float(meta["noise_sigma"]), str(meta.get("noise_estimator", "recorded")),
                             float(meta.get("noise_gain", 0.0)), float(meta.get("noise_offset", 0.0)))
    est = estimate_noise(input_volume.array, noise_model)
    if noise_sigma is not None:
        if not noise_sigma > 0:
            raise MedTorchInputError(f"the noise sigma {noise_sigma} is not positive",
                                     "give the noise standard deviation in intensity units, or leave it estimated")
        return NoiseEstimate(est.model, float(noise_sigma), "given", est.gain, est.offset)
    return est


def denoise_fidelity(input_volume: Volume, output: Volume, noise: NoiseEstimate | None = None,
                     method: str | None = None, noise_model: str = "auto",
                     progress: ProgressCallback | None = None,
                     cancel: CancelToken | None = None) -> tuple[Volume, dict[str, Any]]:
    """The denoising fidelity map (the removed component in units of the noise) and its summary.

    Args:
        input_volume, output: the noisy input and the denoised output (one grid).
        noise: the noise model and level the denoiser used (estimated from the input with
            ``noise_model`` when ``None``).
        method: the denoising method (Rician: which of the two meanings the output has,
            see :data:`RICIAN_UNBIASED`).
    """
    check_volume(input_volume, "the noisy input")
    check_volume(output, "the denoised volume")
    if not input_volume.geometry.isclose(output.geometry, atol=1e-4):
        raise MedTorchInputError("the denoised volume is not on the input's grid",
                                 "give the output of denoising this input")
    report(progress, cancel, 0.0, "fidelity map")
    noise = noise or estimate_noise(input_volume.array, noise_model)
    sigma = float(noise.sigma)
    if not sigma > 0:
        raise MedTorchInputError("the input's noise level is zero: the removed component cannot be normalised",
                                 "give the noise sigma of the input (--noise-sigma)")
    y = np.asarray(input_volume.array, dtype=np.float64)
    x = np.asarray(output.array, dtype=np.float64)
    if noise.model == "rician":
        if method in RICIAN_UNBIASED:
            amplitude, expected = x, rician_mean(np.maximum(x, 0.0), sigma)
        else:
            amplitude, expected = rician_unbias_mean(x, sigma).astype(np.float64), x
        var = amplitude**2 + 2.0 * sigma**2 - expected**2
        sd = np.sqrt(np.maximum(var, (0.1 * sigma) ** 2))
        r = (y - expected) / sd
    elif noise.model == "poisson":
        r = (y - x) / np.sqrt(np.maximum(noise.gain * (x - noise.offset), 0.0) + sigma**2)
    else:
        r = (y - x) / sigma
    report(progress, cancel, 0.5, "fidelity map")
    grad = _gradient_magnitude(output)
    absr = np.abs(r)
    corr = 0.0
    if absr.std() > 0 and grad.std() > 0:
        corr = float(np.corrcoef(absr.reshape(-1), grad.reshape(-1))[0, 1])
    edges = grad >= np.quantile(grad, 1.0 - EDGE_FRACTION)
    rest = np.sqrt(np.mean(r[~edges] ** 2)) if (~edges).any() else 0.0
    ratio = float(np.sqrt(np.mean(r[edges] ** 2)) / rest) if rest > 0 else None
    summary: dict[str, Any] = {
        "kind": "denoise",
        "mean": float(r.mean()), "sd": float(r.std()),
        "fraction_above_3": float(np.mean(absr > 3.0)),
        "max_abs": float(absr.max()),
        "edge_correlation": corr, "edge_rms_ratio": ratio,
        "noise_sigma": sigma, "noise_model": noise.model,
    }
    meta = {**input_volume.metadata, "operation": "fidelity",
            "fidelity": f"denoise residual ((input - output) / noise sd, {noise.model})"}
    report(progress, cancel, 1.0, "fidelity map")
    return Volume(r.astype(np.float32), input_volume.geometry, "scalar", meta), summary


def format_summary(summary: Mapping[str, Any]) -> str:
    """One line for a report or a terminal."""
    def g(key: str, fmt: str = ".3g") -> str:
        v = summary.get(key)
        return "n/a" if v is None else format(v, fmt)

    if summary.get("kind") == "superres":
        fwhm = ", ".join(f"{axis} {float(v):.3g}" for axis, v in dict(summary.get("fwhm_mm") or {}).items())
        return (f"fidelity: residual RMS {g('rms_relative_to_range', '.2%')} of the intensity range "
                f"({g('rms_over_noise_sigma')} noise sigma), {g('fraction_above_3_sigma', '.2%')} of voxels beyond "
                f"3 sigma, max |residual| {g('max_abs')} (slice profile {summary.get('profile_shape', 'gaussian')}, "
                f"FWHM {fwhm} mm, {summary.get('fwhm_source')})")
    return (f"fidelity: removed component mean {g('mean', '.3f')}, SD {g('sd', '.3f')} noise sd "
            f"(0 and 1 when only noise was removed), {g('fraction_above_3', '.2%')} beyond 3, "
            f"edge correlation {g('edge_correlation', '.3f')}, edge/rest RMS {g('edge_rms_ratio', '.2f')}")


#: Thresholds of :func:`superres_verdict`, in units of the input's noise: a faithful output leaves
#: only the input's noise in the residual (RMS ~1 sigma, 0.27 % of voxels beyond 3 sigma, the
#: largest |residual| ~5 sigma on a million voxels). They come from those noise statistics, not
#: from tuning on a benchmark; a cubic B-spline x4 of a noisy head, which invents nothing but
#: blurs, measured 1.2 sigma RMS and 3.8 % beyond 3 sigma (a pass).
SUPERRES_THRESHOLDS: dict[str, tuple[float | None, float | None]] = {
    "fidelity_rms": (1.5, 3.0),
    "fidelity_outliers": (0.05, 0.20),
    "fidelity_peak": (12.0, None),
    "profile_width": (1.25, None),
}
#: ``profile_width``: the slice profile's FWHM over the slice spacing. A 2D MR series has
#: contiguous slices (1) or gaps (below 1); a profile estimated a quarter wider than the spacing
#: says the thick axis is blurrier than its slices explain (the volume was smoothed or resampled
#: along it, or the anatomy was acquired blurrier there), and the model then sharpens it beyond
#: anything the scan held. The consistency checks above cannot see this: the output, re-degraded
#: by that wide profile, still explains its input. (Overlapping reconstructions, as in CT, also
#: reach it: a warning, not a failure.)


def superres_verdict(summary: Mapping[str, Any]) -> Verdict:
    """A verdict on a super-resolved volume from its fidelity summary (:func:`superres_fidelity`):
    does the output, re-degraded by the slice profile, still explain its input?"""
    from medtorch.verdict import grade

    th = SUPERRES_THRESHOLDS
    checks = [
        grade("fidelity_rms", summary.get("rms_over_noise_sigma"), warn_at=th["fidelity_rms"][0],
              fail_at=th["fidelity_rms"][1], unit="sigma", what="RMS of (re-degraded output - input) in noise units",
              messages={"warn": "re-degraded by the slice profile, the output differs from its input by {value} noise "
                                "sigma RMS (warn at {warn_at}): check the fidelity map for where it departs",
                        "fail": "re-degraded by the slice profile, the output differs from its input by {value} noise "
                                "sigma RMS (fail at {fail_at}): it does not explain its input; check the slice profile "
                                "(--fwhm) and the fidelity map (--fidelity-map)"}),
        grade("fidelity_outliers", summary.get("fraction_above_3_sigma"), warn_at=th["fidelity_outliers"][0],
              fail_at=th["fidelity_outliers"][1], what="fraction of input voxels the output misses by > 3 noise sigma",
              messages={"warn": "{value} of the input's voxels differ from the re-degraded output by more than 3 noise "
                                "sigma (warn at {warn_at}): see the fidelity map",
                        "fail": "{value} of the input's voxels differ from the re-degraded output by more than 3 noise "
                                "sigma (fail at {fail_at}): the output does not explain its input"}),
        grade("profile_width", summary.get("fwhm_over_spacing"), warn_at=th["profile_width"][0],
              what="slice profile FWHM over the slice spacing",
              messages={"warn": "the slice profile is {value} times as wide as the slice spacing (warn at {warn_at}): "
                                "slices rarely overlap this much, so the volume is blurrier along its thick axis than "
                                "its slices explain (smoothed or resampled there, or acquired blurrier); the output may "
                                "be sharper there than the scan ever was. Compare it with --method bspline, or give "
                                "the slice profile with --fwhm"}),
        grade("fidelity_peak", summary.get("max_abs_over_noise_sigma"), warn_at=th["fidelity_peak"][0],
              fail_at=th["fidelity_peak"][1], unit="sigma", what="largest |re-degraded output - input| in noise units",
              messages={"warn": "somewhere the re-degraded output departs from the input by {value} noise sigma (warn "
                                "at {warn_at}): detail there may be invented; the fidelity map shows where"}),
    ]
    return Verdict.of(checks, "super-resolution")
