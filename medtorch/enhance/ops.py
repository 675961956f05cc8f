"""Enhancement operations for Slicer and background tasks (see :mod:`medtorch.tasks`)."""

from __future__ import annotations

from typing import Any

from medtorch.progress import CancelToken, ProgressCallback
from medtorch.tasks import OperationResult, need, register
from medtorch.volume import Volume


@register("denoise")
def _op_denoise(inputs: dict[str, Volume], params: dict[str, Any], progress: ProgressCallback | None,
                cancel: CancelToken | None) -> OperationResult:
    from medtorch.enhance.denoise import denoise

    options = {k: params[k] for k in ("iterations", "time_step") if params.get(k) is not None}
    if params.get("method", "gaussian") != "anisotropic":
        options = {}
    out = denoise(need(inputs, "input"), params.get("method", "gaussian"), params.get("strength"),
                  progress=progress, cancel=cancel, **options)
    return OperationResult({"output": out}, {})
