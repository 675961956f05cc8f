"""Segmentation operations for Slicer and background tasks (see :mod:`medtorch.tasks`).

* ``threshold``: input ``input``; params ``lower``, ``upper``, ``roi``, ``keep_largest``.
* ``seeded``: inputs ``channel0``, ``channel1``, ... (co-registered volumes) and ``seeds``
  (label map: 0 unlabelled, classes 1..., the largest value the background); params: the
  fields of :class:`~medtorch.segment.seeded.SeededOptions` (``margin_mm``,
  ``smoothing_mm``, ``radius_mm``, ``smoothness``, ``iterations``, ``device``, ``seed``
  ...), ``roi`` (optional box), post-processing ``min_size_mm3``, ``largest``,
  ``fill_holes``, and ``regions`` (``{"name": [values]}``) for the volumetry. Result: volume
  ``label`` (classes keep their values, background 0) and values ``classes``,
  ``background``, ``volumes_ml`` (``{"value": mL}``), ``regions_ml``, ``seconds``,
  ``iterations``, ``seed``.
* ``seg_metrics``: inputs ``pred`` and ``ref`` (label maps on one grid); params
  ``structures`` (``auto``, ``labels``, ``brats2021``, ``brats2023`` or a mapping),
  ``tolerance_mm``, ``lesion_wise``. Result: values ``report`` (see
  :meth:`~medtorch.segment.metrics.SegmentationReport.to_dict`).

Values are plain JSON types (string keys), as a background task returns them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medtorch.errors import MedTorchInputError
from medtorch.progress import CancelToken, ProgressCallback, SubProgress
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


def _channels(inputs: dict[str, Volume]) -> list[Volume]:
    idx = sorted(int(k[len("channel"):]) for k in inputs if k.startswith("channel") and k[len("channel"):].isdigit())
    if not idx:
        raise MedTorchInputError("no input volume was given", "select the volume(s) to segment")
    if idx != list(range(len(idx))):
        raise MedTorchInputError(f"input channels {idx} have gaps", "select the volumes in order, without gaps")
    return [inputs[f"channel{i}"] for i in idx]


def _box(roi: Any) -> Any:
    if roi is None:
        return None
    from medtorch.segment.threshold import Box

    return Box(np.asarray(roi["center"], float), np.asarray(roi["half_size"], float),
               np.asarray(roi.get("axes", np.eye(3).tolist()), float))


@register("seeded")
def _op_seeded(inputs: dict[str, Volume], params: dict[str, Any], progress: ProgressCallback | None,
               cancel: CancelToken | None) -> OperationResult:
    from dataclasses import fields

    from medtorch.segment.metrics import volumetry
    from medtorch.segment.postprocess import postprocess_label
    from medtorch.segment.seeded import SeededOptions, seeded_segment

    known = {f.name for f in fields(SeededOptions)}
    opts = SeededOptions(**{k: params[k] for k in known if k in params and params[k] is not None})
    res = seeded_segment(_channels(inputs), need(inputs, "seeds"), opts, region_box=_box(params.get("roi")),
                         progress=SubProgress(progress, 0.0, 0.95), cancel=cancel)
    label = res.label
    min_size = float(params.get("min_size_mm3", 0.0) or 0.0)
    if min_size > 0 or params.get("largest") or params.get("fill_holes"):
        label = postprocess_label(label, min_size, bool(params.get("largest", False)),
                                  bool(params.get("fill_holes", False)))
    regions = {str(k): [int(v) for v in vals] for k, vals in (params.get("regions") or {}).items()}
    tumour_classes = [c for c in res.classes if c != res.background]
    rows = volumetry(label, {c: f"class {c}" for c in tumour_classes}, regions)
    values = {
        "classes": res.classes, "background": res.background,
        "volumes_ml": {str(r.values[0]): r.volume_ml for r in rows if r.kind == "label"},
        "voxel_counts": {str(r.values[0]): r.voxels for r in rows if r.kind == "label"},
        "regions_ml": {r.name: r.volume_ml for r in rows if r.kind == "region"},
        "seconds": res.seconds, "iterations": res.iterations, "seed": int(res.options.get("seed", 0)),
        "region": [list(res.region[0]), list(res.region[1])],
    }
    return OperationResult({"label": label}, values)


@register("seg_metrics")
def _op_seg_metrics(inputs: dict[str, Volume], params: dict[str, Any], progress: ProgressCallback | None,
                    cancel: CancelToken | None) -> OperationResult:
    from medtorch.segment.metrics import evaluate_segmentation

    structures = params.get("structures", "auto")
    rep = evaluate_segmentation(need(inputs, "pred"), need(inputs, "ref"), structures,
                                float(params.get("tolerance_mm", 1.0)), bool(params.get("lesion_wise", True)),
                                progress=progress, cancel=cancel)
    return OperationResult({}, {"report": rep.to_dict()})


# The deep-learning and lung-nodule operations ("segment_model", "detect_nodules") live in
# dl_ops; importing it here registers them wherever operations are discovered (the
# background worker imports only this module).
from medtorch.segment import dl_ops  # noqa: E402,F401
