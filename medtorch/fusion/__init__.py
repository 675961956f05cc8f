"""Image fusion: combine two aligned volumes into one (FusionRegistration).

* :func:`fuse_volumes` -- the whole pipeline on :class:`~medtorch.volume.Volume` s: the
  moving volume onto the fixed grid (through a transform), intensities to [0, 1] by
  modality, fusion by one of :data:`METHODS`, optional colour fusion for PET/SPECT and
  metrics (:mod:`medtorch.fusion.fuse`).
* :func:`fuse_arrays` / :func:`fuse_tensors` -- the methods on arrays or tensors of one
  shape (2D images or 3D volumes) (:mod:`medtorch.fusion.methods`).
* :func:`fusion_metrics` / :func:`slice_metrics` -- EN, SD, SF, AG, MI, SSIM, QAB/F, VIF
  (:mod:`medtorch.fusion.metrics`); ``metric_set='cddfuse'`` gives the CDDFuse/VIFB
  evaluator's table instead (:mod:`medtorch.fusion.evaluator`).
* 2D images (PNG, JPEG, TIFF, BMP, 2D NIfTI) are one-slice volumes (:mod:`medtorch.io.images`)
  and go through the same pipeline; RGB PET/SPECT images are fused in YCbCr.
* :func:`resample_and_blend` -- the original resample-and-average (:mod:`medtorch.fusion.blend`).
* The evaluation report over many cases is :mod:`medtorch.fusion.evaluate`.
"""

from medtorch.fusion.blend import BlendResult, resample_and_blend
from medtorch.fusion.fuse import FusionResult, fuse_volumes
from medtorch.fusion.methods import METHODS, fuse_arrays, fuse_tensors
from medtorch.fusion.metrics import METRICS, fusion_metrics, slice_metrics

__all__ = [
    "METHODS",
    "METRICS",
    "BlendResult",
    "FusionResult",
    "fuse_arrays",
    "fuse_tensors",
    "fuse_volumes",
    "fusion_metrics",
    "resample_and_blend",
    "slice_metrics",
]
