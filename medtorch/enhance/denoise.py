"""Denoising: classical filters and self-supervised denoising, with progress and cancel.

Methods (:data:`DENOISE_METHODS`) and what ``strength`` means for each:

* ``gaussian``: Gaussian smoothing, ``strength`` = sigma in mm (default 1.0), honouring
  anisotropic spacing (SimpleITK ``SmoothingRecursiveGaussian``).
* ``median``: median filter, ``strength`` = radius in mm (default 1.0; per axis rounded
  to whole voxels, at least one voxel on some axis).
* ``anisotropic``: curvature anisotropic diffusion, as Slicer's "Curvature Anisotropic
  Diffusion" module: ``strength`` = conductance (default 1.0), ``iterations`` steps, the
  stable time step for 3D (``1 / 2**4 = 0.0625``, voxel units) unless given.
* ``bilateral``: SimpleITK's bilateral filter; domain sigma ``domain_sigma_mm`` (1 mm),
  range sigma ``2 * noise sigma * strength``.
* ``nlm``: non-local means (torch; 7^3 search window, 3^3 patches), ``h`` =
  ``NLM_H * noise sigma * strength``. Rician-aware: squared magnitudes are averaged and
  ``2 sigma^2`` subtracted.
* ``patch``: SimpleITK's patch-based denoising (``PatchBasedDenoisingImageFilter``, the
  ITK filter behind Slicer's patch-based tools), with its Rician, Gaussian or Poisson
  noise model; ``strength`` scales its kernel bandwidth.
* ``dct``: sliding 3D DCT, hard threshold then empirical Wiener; Rician bias corrected by
  inverting the Rician mean.
* ``collab``: the ``dct`` estimate as pilot for guided non-local means, whose result is
  the pilot of a second sliding-DCT Wiener filter; the output is the mean of the two. The
  guided-NLM parameter is chosen per volume by SURE unless ``h`` is given (see
  :mod:`medtorch.enhance.selfsup_denoise`).
* ``selfsup``: self-supervised: ``collab`` and a MONAI 3D network trained on the input
  alone (blind-spot / Noise2Self) that refines the pilot, blended with the weight that
  minimises SURE.

The noise model (``noise_model``: ``auto``, ``rician``, ``gaussian``, ``poisson``) and level
are estimated (:func:`~medtorch.enhance.noise.estimate_noise`) unless ``noise_sigma`` is
given; ``strength`` then scales the level (1 = as estimated) for the noise-aware methods.
The output is a new volume (float32 unless ``output_dtype`` says otherwise, see
:mod:`medtorch.enhance.output`) on the input's grid; the input is never modified. The
noise estimate, the seed and the parameters go into the output's metadata.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, get_args

import numpy as np

from medtorch.enhance.noise import NoiseEstimate, estimate_noise
from medtorch.errors import MedTorchInputError
from medtorch.ops.enhance import DenoiseMethod
from medtorch.progress import CancelToken, ProgressCallback, SubProgress, report, run_sitk_filter
from medtorch.volume import Volume, check_volume

__all__ = ["DENOISE_METHODS", "NOISE_AWARE", "anisotropic", "denoise", "gaussian", "median"]

#: The methods (defined by the ``denoise`` operation's request, :data:`medtorch.ops.enhance.DenoiseMethod`).
DENOISE_METHODS: tuple[str, ...] = get_args(DenoiseMethod)
#: The extra options each method takes (see :func:`denoise`); the pipeline's schema uses it too.
METHOD_OPTIONS: dict[str, set[str]] = {
    "anisotropic": {"iterations", "time_step"}, "bilateral": {"domain_sigma_mm"},
    "nlm": {"search_radius", "patch_radius"}, "patch": {"iterations", "patch_radius"},
    "dct": {"block", "step"}, "collab": {"h"}, "selfsup": {"config", "iterations"}}
#: Methods whose ``strength`` scales the estimated noise level.
NOISE_AWARE = ("bilateral", "nlm", "patch", "dct", "collab", "selfsup")
#: Default strength (when ``None``) per method.
DEFAULT_STRENGTH = {"gaussian": 1.0, "median": 1.0, "anisotropic": 1.0}
#: Plain NLM filtering parameter, in units of the noise sigma.
NLM_H = 1.0


def _float_image(volume: Volume) -> Any:
    import SimpleITK as sitk

    return sitk.Cast(volume.to_sitk(), sitk.sitkFloat32)


def _result(volume: Volume, array: np.ndarray, method: str, **meta: Any) -> Volume:
    info = {"operation": "denoise", "method": method}
    info.update(meta)
    return Volume(np.asarray(array, dtype=np.float32), volume.geometry, "scalar", info)


def gaussian(volume: Volume, sigma_mm: float = 1.0, progress: ProgressCallback | None = None,
             cancel: CancelToken | None = None) -> Volume:
    """Gaussian smoothing, sigma in mm (the same physical width along every axis)."""
    import SimpleITK as sitk

    if not sigma_mm > 0:
        raise MedTorchInputError(f"Gaussian sigma {sigma_mm} mm is not positive", "use a sigma > 0 mm, e.g. 1.0")
    filt = sitk.SmoothingRecursiveGaussianImageFilter()
    filt.SetSigma(float(sigma_mm))
    out = run_sitk_filter(filt, _float_image(volume), progress=progress, cancel=cancel, message="Gaussian smoothing")
    return _result(volume, sitk.GetArrayFromImage(out), "gaussian", sigma_mm=sigma_mm)


def median(volume: Volume, radius_mm: float = 1.0, progress: ProgressCallback | None = None,
           cancel: CancelToken | None = None) -> Volume:
    """Median filter over a box of half-width ``radius_mm`` (rounded to voxels per axis)."""
    import SimpleITK as sitk

    if not radius_mm > 0:
        raise MedTorchInputError(f"median radius {radius_mm} mm is not positive", "use a radius > 0 mm, e.g. 1.0")
    radius = [int(round(radius_mm / s)) for s in volume.spacing]
    if max(radius) < 1:
        raise MedTorchInputError(
            f"a median radius of {radius_mm} mm is less than half a voxel (spacing {tuple(round(float(v), 3) for v in volume.spacing)} mm)",
            f"use a radius of at least {0.5 * float(volume.spacing.min()):.3g} mm")
    filt = sitk.MedianImageFilter()
    filt.SetRadius(radius)
    out = run_sitk_filter(filt, _float_image(volume), progress=progress, cancel=cancel, message="median filter")
    return _result(volume, sitk.GetArrayFromImage(out), "median", radius_mm=radius_mm, radius_voxels=radius)


def stable_time_step(spacing: np.ndarray) -> float:
    """Largest stable time step of SimpleITK's explicit 3D anisotropic diffusion: ``1 / 2**(3+1)``.

    SimpleITK's filters diffuse in voxel units (they do not scale by the image spacing), so
    the stability bound is 0.0625 whatever the spacing; larger steps make ITK warn and can
    oscillate. Slicer's Curvature Anisotropic Diffusion module uses the same default.
    """
    return 1.0 / 16.0


def anisotropic(volume: Volume, conductance: float = 1.0, iterations: int = 5, time_step: float | None = None,
                progress: ProgressCallback | None = None, cancel: CancelToken | None = None) -> Volume:
    """Curvature anisotropic diffusion (edge-preserving), as Slicer's module of that name."""
    import SimpleITK as sitk

    if not conductance > 0:
        raise MedTorchInputError(f"conductance {conductance} is not positive", "use a conductance > 0, e.g. 1.0")
    if int(iterations) < 1:
        raise MedTorchInputError(f"iterations {iterations} is below 1", "use at least 1 iteration")
    dt = stable_time_step(volume.spacing) if time_step is None else float(time_step)
    if not 0 < dt <= stable_time_step(volume.spacing) * 1.0001:
        raise MedTorchInputError(
            f"time step {dt} is unstable for spacing {tuple(round(float(v), 4) for v in volume.spacing)}",
            f"use a time step <= {stable_time_step(volume.spacing):.4g} (or leave it automatic)",
        )
    filt = sitk.CurvatureAnisotropicDiffusionImageFilter()
    filt.SetConductanceParameter(float(conductance))
    filt.SetNumberOfIterations(int(iterations))
    filt.SetTimeStep(dt)
    out = run_sitk_filter(filt, _float_image(volume), progress=progress, cancel=cancel, message="anisotropic diffusion")
    return _result(volume, sitk.GetArrayFromImage(out), "anisotropic", conductance=conductance,
                   iterations=int(iterations), time_step=dt)


def _bilateral(volume: Volume, noise: NoiseEstimate, strength: float, domain_sigma_mm: float = 1.0,
               progress: ProgressCallback | None = None, cancel: CancelToken | None = None) -> np.ndarray:
    import SimpleITK as sitk

    filt = sitk.BilateralImageFilter()
    filt.SetDomainSigma(float(domain_sigma_mm))
    filt.SetRangeSigma(max(2.0 * noise.sigma * strength, 1e-12))
    out = run_sitk_filter(filt, _float_image(volume), progress=progress, cancel=cancel, message="bilateral filter")
    return sitk.GetArrayFromImage(out)


def _patch(volume: Volume, noise: NoiseEstimate, strength: float, iterations: int = 1, patch_radius: int = 2,
           progress: ProgressCallback | None = None, cancel: CancelToken | None = None) -> np.ndarray:
    import SimpleITK as sitk

    if int(patch_radius) < 2:
        raise MedTorchInputError(f"patch radius {patch_radius} is too small for ITK's patch-based filter",
                                 "use a patch radius of 2 voxels or more")
    filt = sitk.PatchBasedDenoisingImageFilter()
    model = {"rician": filt.RICIAN, "gaussian": filt.GAUSSIAN, "poisson": filt.POISSON}[noise.model]
    filt.SetNoiseModel(model)
    filt.SetNoiseSigma(float(noise.sigma * strength))
    filt.SetNoiseModelFidelityWeight(0.0)
    filt.SetPatchRadius(int(patch_radius))
    filt.SetNumberOfIterations(int(iterations))
    filt.SetKernelBandwidthEstimation(False)
    filt.SetKernelBandwidthSigma(float(noise.sigma * strength))
    filt.SetNumberOfSamplePatches(200)
    filt.SetSampleVariance(400.0)
    out = run_sitk_filter(filt, _float_image(volume), progress=progress, cancel=cancel, message="patch-based denoising")
    return sitk.GetArrayFromImage(out)


def _nlm(volume: Volume, noise: NoiseEstimate, strength: float, search_radius: int = 3, patch_radius: int = 1,
         progress: ProgressCallback | None = None, cancel: CancelToken | None = None) -> np.ndarray:
    import torch

    from medtorch.enhance.noise import anscombe_forward, anscombe_inverse, rician_unbias_second_moment
    from medtorch.enhance.patchwise import nonlocal_means

    y = torch.from_numpy(np.ascontiguousarray(volume.array, dtype=np.float32))
    sigma = noise.sigma
    if noise.model == "poisson":
        y, sigma = anscombe_forward(y, noise.gain, noise.sigma, noise.offset), 1.0
    h = NLM_H * sigma * strength
    if noise.model == "rician":
        out = rician_unbias_second_moment(nonlocal_means(y.square(), h, guide=y, search_radius=search_radius,
                                                         patch_radius=patch_radius, progress=progress,
                                                         cancel=cancel), sigma)
    else:
        out = nonlocal_means(y, h, search_radius=search_radius, patch_radius=patch_radius, progress=progress,
                             cancel=cancel)
    if noise.model == "poisson":
        out = anscombe_inverse(out, noise.gain, noise.sigma, noise.offset)
    return out.numpy()


def _dct(volume: Volume, noise: NoiseEstimate, strength: float, block: int = 8, step: int = 2,
         progress: ProgressCallback | None = None, cancel: CancelToken | None = None) -> np.ndarray:
    import torch

    from medtorch.enhance.noise import anscombe_forward, anscombe_inverse, rician_unbias_mean
    from medtorch.enhance.patchwise import sliding_dct_denoise

    y = torch.from_numpy(np.ascontiguousarray(volume.array, dtype=np.float32))
    sigma = noise.sigma
    if noise.model == "poisson":
        y, sigma = anscombe_forward(y, noise.gain, noise.sigma, noise.offset), 1.0
    sigma *= strength
    first = sliding_dct_denoise(y, sigma, block, step, progress=SubProgress(progress, 0, 0.4, "threshold"), cancel=cancel)
    out = sliding_dct_denoise(y, sigma, block, step, pilot=first, progress=SubProgress(progress, 0.4, 1, "Wiener"),
                              cancel=cancel)
    if noise.model == "poisson":
        return anscombe_inverse(out, noise.gain, noise.sigma, noise.offset).numpy()
    if noise.model == "rician":
        return rician_unbias_mean(out.numpy(), sigma)
    return out.numpy()


def _noise_for(volume: Volume, noise_model: str, noise_sigma: float | None) -> NoiseEstimate:
    if noise_sigma is not None:
        if not noise_sigma > 0:
            raise MedTorchInputError(f"the noise sigma {noise_sigma} is not positive",
                                     "give the noise standard deviation in intensity units, or leave it estimated")
        est = estimate_noise(volume.array, noise_model)
        return NoiseEstimate(est.model, float(noise_sigma), "given", est.gain, est.offset)
    return estimate_noise(volume.array, noise_model)


def denoise(volume: Volume, method: str = "gaussian", strength: float | None = None,
            progress: ProgressCallback | None = None, cancel: CancelToken | None = None, *,
            noise_model: str = "auto", noise_sigma: float | None = None, seed: int = 0, device: Any = "cpu",
            output_dtype: str = "float32", **options: Any) -> Volume:
    """Denoise with one of :data:`DENOISE_METHODS` (see the module docstring).

    Extra ``options`` go to the method: ``iterations``, ``time_step`` (anisotropic);
    ``domain_sigma_mm`` (bilateral); ``search_radius``, ``patch_radius`` (nlm);
    ``iterations``, ``patch_radius`` (patch); ``block``, ``step`` (dct); ``h`` (collab: the
    guided-NLM parameter in units of sigma, chosen by SURE when not given); ``config`` (a
    :class:`~medtorch.enhance.selfsup_denoise.SelfSupDenoiseConfig`) or ``iterations``
    (selfsup). Unknown options are an error.
    """
    from medtorch.enhance.output import cast_output

    check_volume(volume, "input volume")
    if method not in DENOISE_METHODS:
        raise MedTorchInputError(f"unknown denoising method {method!r}", "use one of " + ", ".join(DENOISE_METHODS))
    allowed = METHOD_OPTIONS.get(method, set())
    unknown = set(options) - allowed
    if unknown:
        raise MedTorchInputError(f"option(s) {sorted(unknown)} do not apply to the {method} method",
                                 f"the {method} method takes " + (", ".join(sorted(allowed)) or "no extra options"))
    if strength is not None and not strength > 0:
        raise MedTorchInputError(f"strength {strength} is not positive", "use a strength > 0")
    s = float(strength) if strength is not None else DEFAULT_STRENGTH.get(method, 1.0)
    report(progress, cancel, 0.0, f"denoising ({method})")
    if method == "gaussian":
        out = gaussian(volume, s, progress=progress, cancel=cancel)
    elif method == "median":
        out = median(volume, s, progress=progress, cancel=cancel)
    elif method == "anisotropic":
        out = anisotropic(volume, s, progress=progress, cancel=cancel, **options)
    else:
        noise = _noise_for(volume, noise_model, noise_sigma)
        meta: dict[str, Any] = {"strength": s, **noise.as_metadata()}
        sub = SubProgress(progress, 0.02, 1.0, method)
        if method == "bilateral":
            arr = _bilateral(volume, noise, s, progress=sub, cancel=cancel, **options)
        elif method == "nlm":
            arr = _nlm(volume, noise, s, progress=sub, cancel=cancel, **options)
        elif method == "patch":
            arr = _patch(volume, noise, s, progress=sub, cancel=cancel, **options)
        elif method == "dct":
            arr = _dct(volume, noise, s, progress=sub, cancel=cancel, **options)
        elif method == "collab":
            from medtorch.enhance.selfsup_denoise import collaborative_denoise

            arr, meta["collab"] = collaborative_denoise(volume.array, noise, s, progress=sub, cancel=cancel,
                                                        h=options.get("h"), seed=int(seed))
        else:
            import torch

            from medtorch.enhance.selfsup_denoise import SelfSupDenoiseConfig, selfsup_denoise

            cfg = dataclasses.replace(options.get("config") or SelfSupDenoiseConfig(), seed=int(seed))
            if options.get("iterations") is not None:
                cfg = dataclasses.replace(cfg, iterations=int(options["iterations"]))
            with torch.random.fork_rng():  # seeded here, the caller's random state is left as it was
                torch.manual_seed(int(seed))
                arr, record = selfsup_denoise(volume.array, noise, s, cfg, device, sub, cancel)
            meta["selfsup"] = record
        out = _result(volume, arr, method, seed=int(seed), **meta)
    out.metadata.setdefault("seed", int(seed))
    report(progress, cancel, 1.0, "done")
    return cast_output(out, output_dtype, volume.array.dtype)


_METHODS: dict[str, Callable[..., Volume]] = {"gaussian": gaussian, "anisotropic": anisotropic, "median": median}
