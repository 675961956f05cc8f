"""Segmentation operations for Slicer and background tasks (see :mod:`medtorch.tasks`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from medtorch.progress import CancelToken, ProgressCallback
from medtorch.tasks import OperationResult, need, register
from medtorch.volume import Volume


@register("threshold")
def _op_threshold(inputs: dict[str, Volume], params: dict[str, Any], progress: ProgressCallback | None,
                  cancel: CancelToken | None) -> OperationResult:
    from medtorch.segment.threshold import Box, threshold_largest_component

    roi = params.get("roi")
    box = None if roi is None else Box(np.asarray(roi["center"], float), np.asarray(roi["half_size"], float),
                                       np.asarray(roi.get("axes", np.eye(3).tolist()), float))
    res = threshold_largest_component(
        need(inputs, "input"), float(params["lower"]), float(params.get("upper", float("inf"))), box,
        keep_largest=bool(params.get("keep_largest", True)), progress=progress, cancel=cancel,
    )
    return OperationResult({"label": res.label}, {"volume_ml": res.volume_ml, "voxel_count": res.voxel_count,
                                                 "num_components": res.num_components})
