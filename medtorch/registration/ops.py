"""Registration operation for Slicer and background tasks (see :mod:`medtorch.tasks`).

``register``: inputs ``fixed``, ``moving`` and optionally ``fixed_mask``, ``moving_mask``;
params ``mode``, ``metric``, ``engine``, ``init``, ``initial_transform`` (4x4 LPS list),
``fixed_landmarks``/``moving_landmarks`` (N x 3 LPS lists), ``device``, ``seed``,
``options`` (torch-engine options). Returns the volumes ``resampled`` and, for deformable
registration, ``displacement`` (the field in its compact control-grid form when the engine
has one -- the same transform, see :class:`~medtorch.registration.result.RegistrationResult`),
and the values ``affine`` (4x4 LPS, fixed -> moving) and ``report``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medtorch.progress import CancelToken, ProgressCallback
from medtorch.tasks import OperationResult, need, register
from medtorch.volume import Volume


def _points(value: Any) -> np.ndarray | None:
    if value is None:
        return None
    arr = np.asarray(value, dtype=np.float64)
    return arr.reshape(-1, 3) if arr.size else None


@register("register")
def _op_register(inputs: dict[str, Volume], params: dict[str, Any], progress: ProgressCallback | None,
                 cancel: CancelToken | None) -> OperationResult:
    from medtorch.registration import register as run_registration

    initial = params.get("initial_transform")
    res = run_registration(
        need(inputs, "fixed"),
        need(inputs, "moving"),
        mode=params.get("mode", "rigid"),
        metric=params.get("metric", "mi"),
        engine=params.get("engine", "torch"),
        fixed_mask=inputs.get("fixed_mask"),
        moving_mask=inputs.get("moving_mask"),
        fixed_landmarks=_points(params.get("fixed_landmarks")),
        moving_landmarks=_points(params.get("moving_landmarks")),
        init=params.get("init", "auto"),
        initial_transform=np.asarray(initial, dtype=np.float64) if initial is not None else None,
        device=params.get("device"),
        seed=int(params.get("seed", 0)),
        progress=progress,
        cancel=cancel,
        **dict(params.get("options") or {}),
    )
    volumes: dict[str, Volume] = {}
    if res.resampled is not None:
        volumes["resampled"] = res.resampled
    if res.displacement is not None:
        volumes["displacement"] = res.control_field if res.control_field is not None else res.displacement
    return OperationResult(volumes, {"affine": np.asarray(res.affine).tolist(), "report": res.report})
