"""Enhancement for EnhanceSR: denoising, contrast correction, super-resolution, quality measures.

* :mod:`~medtorch.enhance.denoise`: classical filters and self-supervised denoising
  (:func:`denoise`, :data:`DENOISE_METHODS`); noise models and estimates in
  :mod:`~medtorch.enhance.noise`; torch kernels in :mod:`~medtorch.enhance.patchwise`;
  the network pipeline in :mod:`~medtorch.enhance.selfsup_denoise`.
* :mod:`~medtorch.enhance.contrast`: N4, CLAHE, histogram matching, unsharp masking, CT windows.
* :mod:`~medtorch.enhance.superres`: through-plane and isotropic super-resolution
  (:func:`superres`, :data:`SR_METHODS`); slice profiles in :mod:`~medtorch.enhance.slice_profile`;
  the network in :mod:`~medtorch.enhance.srnet`; saving, ONNX and INT8 in :mod:`~medtorch.enhance.weights`.
* :mod:`~medtorch.enhance.metrics`: PSNR, SSIM, noise and sharpness; before/after volumes
  in :mod:`~medtorch.enhance.compare`; output types in :mod:`~medtorch.enhance.output`.
"""

from medtorch.enhance.denoise import DENOISE_METHODS, denoise
from medtorch.enhance.superres import SR_METHODS, output_geometry, superres

__all__ = ["DENOISE_METHODS", "SR_METHODS", "denoise", "output_geometry", "superres"]
