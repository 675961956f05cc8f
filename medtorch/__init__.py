"""MedTorch: the Slicer-free compute core of the MedTorch 3D Slicer extension.

Volumes with exact geometry (:mod:`medtorch.volume`), file and DICOM input/output
(:mod:`medtorch.io`), torch resampling (:mod:`medtorch.resample`), progress and cancel
(:mod:`medtorch.progress`) and the algorithms of the three Slicer modules. Nothing here
imports Slicer; :mod:`medtorch.slicer.mrml` converts to and from MRML nodes when Slicer
(or ``slicer-core``) is present.
"""

from medtorch.errors import Cancelled, MedTorchError, MedTorchInputError
from medtorch.volume import Geometry, Volume, check_volume

__version__ = "0.1.0"

__all__ = ["Cancelled", "Geometry", "MedTorchError", "MedTorchInputError", "Volume", "check_volume", "__version__"]
