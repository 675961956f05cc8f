"""Fusion operations for Slicer and background tasks (see :mod:`medtorch.tasks`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from medtorch.progress import CancelToken, ProgressCallback
from medtorch.tasks import OperationResult, need, register
from medtorch.volume import Volume


@register("blend")
def _op_blend(inputs: dict[str, Volume], params: dict[str, Any], progress: ProgressCallback | None,
              cancel: CancelToken | None) -> OperationResult:
    from medtorch.fusion.blend import resample_and_blend

    transform: list[Any] = []
    if params.get("matrix") is not None:
        transform.append(np.asarray(params["matrix"], dtype=np.float64))
    if "displacement" in inputs:
        transform.append(inputs["displacement"])
    res = resample_and_blend(
        need(inputs, "fixed"),
        need(inputs, "moving"),
        transform=(transform[0] if len(transform) == 1 else transform) if transform else None,
        weight=float(params.get("weight", 0.5)),
        normalization=params.get("normalization", "percentile"),
        device=params.get("device"),
        progress=progress,
        cancel=cancel,
    )
    return OperationResult({"fused": res.fused, "resampled": res.resampled_moving},
                           {"overlap_fraction": res.overlap_fraction})
