"""Image registration: a torch engine (rigid, affine, deformable) and classic engines beside it.

Conventions (see :mod:`medtorch.volume` and :mod:`medtorch.resample`): points are LPS
millimetres; a transform maps **fixed** (reference) points to **moving** points, as ITK does.

The result of :func:`register` is a :class:`RegistrationResult`:

* ``affine`` -- a 4x4 LPS matrix ``A``;
* ``displacement`` -- for deformable registration, a displacement field ``d`` (a
  ``kind='vector'`` :class:`~medtorch.volume.Volume`, LPS mm, on the fixed grid), else ``None``.

The full transform is ``p_moving = A(p + d(p))``: the field is applied first, then the
affine -- ITK's ``CompositeTransform([A, d])`` order, and the list ``[A, d]`` that
:func:`medtorch.resample.resample` takes.

Engines:

* ``"torch"`` (:mod:`.linear`, :mod:`.deformable`): multi-resolution pyramids, Mattes-style
  mutual information by scatter (:mod:`.similarity`), MIND-SSC, LNCC, NCC, MSE; a robust
  initialisation search (:mod:`.initialization`); Adam; a dense displacement field or a
  stationary velocity field (scaling and squaring) with diffusion or bending energy.
* ``"sitk"`` and ``"elastix"`` (:mod:`.classic`): SimpleITK's Mattes MI with a corrected
  multi-resolution recipe, and elastix through ``itk-elastix``.
"""

from __future__ import annotations

# the torch engine's modules are loaded with the package (as a library is), not on the first call
from medtorch.registration import jacobian as _jacobian  # noqa: F401
from medtorch.registration import torch_engine as _torch_engine  # noqa: F401
from medtorch.registration.api import ENGINES, INITS, METRICS, MODES, register
from medtorch.registration.result import RegistrationResult

__all__ = ["ENGINES", "INITS", "METRICS", "MODES", "RegistrationResult", "register"]
