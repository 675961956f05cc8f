"""Classical denoising filters on SimpleITK, with progress and cancel.

* ``gaussian``: Gaussian smoothing with sigma in millimetres (``strength``), honouring
  anisotropic spacing (``SmoothingRecursiveGaussian``).
* ``anisotropic``: curvature anisotropic diffusion, as Slicer's "Curvature Anisotropic
  Diffusion" module: edge-preserving; ``strength`` is the conductance, ``iterations``
  the number of diffusion steps, the time step is the stable one for 3D
  (``1 / 2**4 = 0.0625``, in voxel units) unless given.

The output is a new float32 volume on the input's grid; the input is never modified.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from medtorch.errors import MedTorchInputError
from medtorch.progress import CancelToken, ProgressCallback, report, run_sitk_filter
from medtorch.volume import Volume, check_volume

DENOISE_METHODS = ("gaussian", "anisotropic")


def gaussian(volume: Volume, sigma_mm: float = 1.0, progress: ProgressCallback | None = None,
             cancel: CancelToken | None = None) -> Volume:
    """Gaussian smoothing, sigma in mm (the same physical width along every axis)."""
    import SimpleITK as sitk

    if not sigma_mm > 0:
        raise MedTorchInputError(f"Gaussian sigma {sigma_mm} mm is not positive", "use a sigma > 0 mm, e.g. 1.0")
    filt = sitk.SmoothingRecursiveGaussianImageFilter()
    filt.SetSigma(float(sigma_mm))
    img = sitk.Cast(volume.to_sitk(), sitk.sitkFloat32)
    out = run_sitk_filter(filt, img, progress=progress, cancel=cancel, message="Gaussian smoothing")
    return Volume(sitk.GetArrayFromImage(out).astype(np.float32), volume.geometry, "scalar",
                  {"operation": "denoise", "method": "gaussian", "sigma_mm": sigma_mm})


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
            f"time step {dt} is unstable for spacing {tuple(volume.spacing)}",
            f"use a time step <= {stable_time_step(volume.spacing):.4g} (or leave it automatic)",
        )
    filt = sitk.CurvatureAnisotropicDiffusionImageFilter()
    filt.SetConductanceParameter(float(conductance))
    filt.SetNumberOfIterations(int(iterations))
    filt.SetTimeStep(dt)
    img = sitk.Cast(volume.to_sitk(), sitk.sitkFloat32)
    out = run_sitk_filter(filt, img, progress=progress, cancel=cancel, message="anisotropic diffusion")
    return Volume(sitk.GetArrayFromImage(out).astype(np.float32), volume.geometry, "scalar",
                  {"operation": "denoise", "method": "anisotropic", "conductance": conductance,
                   "iterations": int(iterations), "time_step": dt})


_METHODS: dict[str, Callable[..., Volume]] = {"gaussian": gaussian, "anisotropic": anisotropic}


def denoise(volume: Volume, method: str = "gaussian", strength: float | None = None,
            progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
            **options: Any) -> Volume:
    """Denoise with one of :data:`DENOISE_METHODS`.

    ``strength`` is the method's main knob: sigma in mm for ``gaussian`` (default 1.0),
    conductance for ``anisotropic`` (default 1.0). Extra ``options`` go to the method
    (``iterations``, ``time_step`` for ``anisotropic``).
    """
    check_volume(volume, "input volume")
    if method not in _METHODS:
        raise MedTorchInputError(f"unknown denoising method {method!r}", "use one of " + ", ".join(DENOISE_METHODS))
    report(progress, cancel, 0.0, f"denoising ({method})")
    if method == "gaussian":
        out = gaussian(volume, 1.0 if strength is None else strength, progress=progress, cancel=cancel)
    else:
        out = anisotropic(volume, 1.0 if strength is None else strength, progress=progress, cancel=cancel, **options)
    report(progress, cancel, 1.0, "done")
    return out
