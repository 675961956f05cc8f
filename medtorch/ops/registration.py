"""The ``register`` operation: register a moving volume to a fixed one.

Inputs ``fixed``, ``moving`` and optionally ``fixed_mask``, ``moving_mask``. Result: the
volumes ``resampled`` (unless ``resample_output`` is off) and, for deformable registration,
``displacement`` (the field in its compact control-grid form when the engine has one -- the
same transform, see :class:`~medtorch.registration.result.RegistrationResult`); the values
``affine`` (4x4 LPS, fixed -> moving), ``report`` and ``verdict`` (pass/warn/fail with its
checks, :meth:`medtorch.verdict.Verdict.to_dict`; None when ``verdict`` is off); with
``similarity_map``, the volume ``similarity_map`` (the verdict's local similarity on the fixed
grid); ``native`` is the :class:`~medtorch.registration.result.RegistrationResult`.

The choices defined here (:data:`Mode`, :data:`Metric`, :data:`Engine`, :data:`Init`) are the
ones :mod:`medtorch.registration` accepts (its ``MODES``, ``METRICS``, ... are these).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np

from medtorch.jsonvalue import plain
from medtorch.ops.base import Matrix, OperationResult, Points, Request, need
from medtorch.progress import CancelToken, ProgressCallback
from medtorch.volume import Volume

Mode = Literal["rigid", "affine", "deformable"]
Metric = Literal["mi", "mind", "lncc", "ncc", "mse"]
Engine = Literal["torch", "sitk", "elastix", "learned"]
Init = Literal["auto", "geometry", "moments", "pax", "fiducials", "none"]


@dataclass(frozen=True)
class RegisterRequest(Request):
    """Parameters of :func:`medtorch.registration.register` (see it for their meaning).

    ``initial_transform``: 4x4 LPS (fixed -> moving); ``fixed_landmarks`` /
    ``moving_landmarks``: ``(N, 3)`` LPS points in pairs; ``options``: torch-engine options
    (:mod:`medtorch.registration.torch_engine`); ``resample_output``: off skips resampling
    the moving volume (no ``resampled`` volume); ``verdict``: judge the result without
    landmarks (:mod:`medtorch.registration.verdict`), with ``verdict_options`` (thresholds by
    name); ``similarity_map``: also return the verdict's local similarity as a volume.
    ``engine="learned"``: a trained network (``model``: the path of its model pack, written by
    ``medtorch train-reg``) predicts the deformable field after the torch engine's affine stage
    (the mode is then ``deformable``); ``refine``: then the torch engine's deformable stage
    refines the network's field (instance optimisation).
    """

    operation: ClassVar[str] = "register"

    mode: Mode = "rigid"
    metric: Metric = "mi"
    engine: Engine = "torch"
    init: Init = "auto"
    initial_transform: Matrix | None = None
    fixed_landmarks: Points | None = None
    moving_landmarks: Points | None = None
    device: str | None = None
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    resample_output: bool = True
    verdict: bool = True
    verdict_options: dict[str, Any] = field(default_factory=dict)
    similarity_map: bool = False
    model: str | None = None
    refine: bool = False


def _points(value: Points | None) -> np.ndarray | None:
    # an empty list stays an (empty) list of points, which the core refuses: no landmarks is None
    return None if value is None else np.asarray(value, dtype=np.float64).reshape(-1, 3)


def run_register(request: RegisterRequest, inputs: dict[str, Volume], progress: ProgressCallback | None,
                 cancel: CancelToken | None) -> OperationResult:
    from medtorch.registration import register as run_registration

    initial = request.initial_transform
    res = run_registration(
        need(inputs, "fixed"),
        need(inputs, "moving"),
        mode=request.mode,
        metric=request.metric,
        engine=request.engine,
        fixed_mask=inputs.get("fixed_mask"),
        moving_mask=inputs.get("moving_mask"),
        fixed_landmarks=_points(request.fixed_landmarks),
        moving_landmarks=_points(request.moving_landmarks),
        init=request.init,
        initial_transform=np.asarray(initial, dtype=np.float64) if initial is not None else None,
        device=request.device,
        seed=request.seed,
        progress=progress,
        cancel=cancel,
        resample_output=request.resample_output,
        verdict=request.verdict,
        verdict_options=dict(request.verdict_options),
        similarity_map=request.similarity_map,
        model=request.model,
        refine=request.refine,
        **dict(request.options),
    )
    volumes: dict[str, Volume] = {}
    if res.resampled is not None:
        volumes["resampled"] = res.resampled
    if res.displacement is not None:
        volumes["displacement"] = res.control_field if res.control_field is not None else res.displacement
    if res.similarity_map is not None:
        volumes["similarity_map"] = res.similarity_map
    values = {"affine": plain(np.asarray(res.affine)), "report": res.report,
              "verdict": res.verdict.to_dict() if res.verdict is not None else None}
    return OperationResult(volumes, values, res)
