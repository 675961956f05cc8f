"""Deep-learning and nodule operations for Slicer and background tasks (see :mod:`medtorch.tasks`).

* ``segment_model``: inputs ``channel0``, ``channel1``, ... (one volume per model input
  channel, in the model's order); params ``model`` (bundle folder, TorchScript file or
  nnU-Net folder) and the options of :func:`medtorch.segment.inference.segment_with_model`
  (``overlap``, ``tta``, ``device``, ``roi_size``, ``sw_batch_size``, ``threshold``,
  ``label_convention``, ``crop_foreground``, ``output_interpolation``, ``trust_code``).
  Result: volume ``label`` (uint8) and values ``labels`` (``{"1": name, ...}``),
  ``volumes_ml`` and ``info``.
* ``detect_nodules``: input ``input`` (a chest CT in HU); params ``min_diameter_mm``,
  ``max_diameter_mm``, ``score_threshold``, ``device``. Result: volume ``lung_mask`` and
  values ``nodules`` (a list of dicts: ``center_lps``, ``diameter_mm``, ``score``, features)
  and ``num_candidates``.

Values are plain JSON types (string keys), as a background task returns them.
"""

from __future__ import annotations

import json
from typing import Any

from medtorch.errors import MedTorchInputError
from medtorch.progress import CancelToken, ProgressCallback
from medtorch.tasks import OperationResult, need, register
from medtorch.volume import Volume


def _json_safe(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def channel_inputs(inputs: dict[str, Volume]) -> list[Volume]:
    """``channel0``, ``channel1``, ... in order (clear error on gaps or no channel)."""
    idx = sorted(int(k[len("channel"):]) for k in inputs if k.startswith("channel") and k[len("channel"):].isdigit())
    if not idx:
        raise MedTorchInputError("no input volume was given", "select a volume for each of the model's input channels")
    if idx != list(range(len(idx))):
        raise MedTorchInputError(f"input channels {idx} have gaps", "select a volume for every channel, in order")
    return [inputs[f"channel{i}"] for i in idx]


@register("segment_model")
def _op_segment_model(inputs: dict[str, Volume], params: dict[str, Any], progress: ProgressCallback | None,
                      cancel: CancelToken | None) -> OperationResult:
    from medtorch.segment.inference import segment_with_model

    model = params.get("model")
    if not model:
        raise MedTorchInputError("no model was chosen", "choose a MONAI bundle folder, a TorchScript file or an nnU-Net folder")
    roi = params.get("roi_size")
    label, info = segment_with_model(
        str(model), channel_inputs(inputs),
        overlap=params.get("overlap"), tta=bool(params.get("tta", False)), device=params.get("device"),
        roi_size=[int(r) for r in roi] if roi else None, sw_batch_size=params.get("sw_batch_size"),
        amp=bool(params.get("amp", True)), cpu_bf16=bool(params.get("cpu_bf16", False)),
        channels_last=params.get("channels_last"), threshold=float(params.get("threshold", 0.5)),
        label_convention=str(params.get("label_convention", "auto")),
        crop_foreground=bool(params.get("crop_foreground", False)),
        output_interpolation=str(params.get("output_interpolation", "nearest")),  # type: ignore[arg-type]
        trust_code=bool(params.get("trust_code", False)), progress=progress, cancel=cancel,
    )
    info = _json_safe(info)
    return OperationResult({"label": label}, {"labels": info["labels"], "volumes_ml": info["volumes_ml"], "info": info})


@register("detect_nodules")
def _op_detect_nodules(inputs: dict[str, Volume], params: dict[str, Any], progress: ProgressCallback | None,
                       cancel: CancelToken | None) -> OperationResult:
    from medtorch.segment.nodules import detect_nodules

    res = detect_nodules(
        need(inputs, "input"), min_diameter_mm=float(params.get("min_diameter_mm", 4.0)),
        max_diameter_mm=float(params.get("max_diameter_mm", 30.0)),
        score_threshold=float(params.get("score_threshold", 0.5)), device=params.get("device"),
        progress=progress, cancel=cancel,
    )
    return OperationResult({"lung_mask": res.lung_mask},
                           {"nodules": [n.as_dict() for n in res.nodules], "num_candidates": res.info["num_candidates"],
                            "info": _json_safe(res.info)})
