"""Segmentation operations.

* ``threshold``: input ``input``. Result: volume ``label``; values ``volume_ml``,
  ``voxel_count``, ``num_components``.
* ``seeded``: inputs ``channel0``, ``channel1``, ... (co-registered volumes) and ``seeds``
  (label map: 0 unlabelled, classes 1..., the largest value the background). Result: volume
  ``label`` (classes keep their values, background 0) and values ``classes``, ``background``,
  ``volumes_ml`` (``{"value": mL}``), ``voxel_counts``, ``regions_ml``, ``seconds``,
  ``iterations``, ``seed``, ``region``, ``verdict`` (whether the result stayed with the seeds:
  :mod:`medtorch.segment.seeded_verdict`, as a dict); ``native`` is the
  :class:`~medtorch.segment.seeded.SeededResult`.
* ``seg_metrics``: inputs ``pred`` and ``ref`` (label maps on one grid). Result: values
  ``report`` (see :meth:`~medtorch.segment.metrics.SegmentationReport.to_dict`); ``native``
  is the report.
* ``segment_model``: inputs ``channel0``, ``channel1``, ... (one volume per model input
  channel, in the model's order). Result: volume ``label`` (uint8) and values ``labels``
  (``{"1": name, ...}``), ``volumes_ml`` and ``info``.
* ``detect_nodules``: input ``input`` (a chest CT in HU). Result: volume ``lung_mask`` and
  values ``nodules`` (a list of dicts: ``center_lps``, ``diameter_mm``, ``score``, features),
  ``num_candidates`` and ``info``.

Values are plain JSON types (string keys), as a background job returns them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Literal, cast

from medtorch.errors import MedTorchInputError
from medtorch.ops.base import OperationResult, Request, Roi, need
from medtorch.progress import CancelToken, ProgressCallback, SubProgress, report
from medtorch.volume import Volume

#: Structures that :func:`medtorch.segment.metrics.evaluate_segmentation` scores by name.
Structures = Literal["auto", "labels", "brats2021", "brats2023"]
#: Seeded segmentation methods (:class:`medtorch.segment.seeded.SeededOptions`).
SeededMethod = Literal["geodesic", "competition"]
#: BraTS label conventions (:data:`medtorch.segment.postprocess.BRATS_LABELS`).
LabelConvention = Literal["brats2021", "brats2023"]
#: The label values a model's output gets: ``auto`` (the model's own), or a BraTS convention.
ModelConvention = Literal["auto"] | LabelConvention
#: How model labels go back onto the input grid.
OutputInterpolation = Literal["nearest", "linear"]


@dataclass(frozen=True)
class ThresholdRequest(Request):
    """Threshold plus largest connected component (:func:`medtorch.segment.threshold.threshold_largest_component`):
    voxels in ``[lower, upper]`` inside the optional ``roi`` box."""

    operation: ClassVar[str] = "threshold"

    lower: float
    upper: float = math.inf
    roi: Roi | None = None
    keep_largest: bool = True


@dataclass(frozen=True)
class SeededRequest(Request):
    """Seeded segmentation: the settings of :class:`medtorch.segment.seeded.SeededOptions`
    (same names and defaults), an optional ``roi`` box to segment instead of the seeds' box
    plus margin, post-processing (``min_size_mm3``, ``largest``, ``fill_holes``) and the
    ``regions`` (``{"name": [label values]}``) of the volumetry."""

    operation: ClassVar[str] = "seeded"

    method: SeededMethod = "geodesic"
    margin_mm: float = 5.0
    margin_fraction: float = 0.2
    region_aspect: float = 1.0
    smoothing_mm: float = 1.0
    radius_mm: float = 2.0
    smoothness: float = 0.3
    iterations: int = 16
    components: int = 6
    keep_seed_connected: bool = True
    connect_mm: float = 2.0
    plausible_gap: float = math.inf
    global_weight: float = 0.5
    outlier_p: float = 0.0
    context_mm: float = 2.0
    bandwidth: float = 0.12
    evidence_weight: float = 0.1
    grid_mm: float = 2.0
    full_resolution_voxels: int = 400_000
    background_hull: bool = True
    hull_margin: float = 0.3
    growcut_cavity: bool = False
    growcut_cavity_mm: float = 2.0
    device: str | None = None
    seed: int = 0
    roi: Roi | None = None
    min_size_mm3: float = 0.0
    largest: bool = False
    fill_holes: bool = False
    regions: dict[str, tuple[int, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class SegMetricsRequest(Request):
    """Scores of a segmentation against a reference (:func:`medtorch.segment.metrics.evaluate_segmentation`):
    ``structures`` by name or as a mapping ``{name: [label values]}``."""

    operation: ClassVar[str] = "seg_metrics"

    structures: Structures | dict[str, tuple[int, ...]] = "auto"
    tolerance_mm: float = 1.0
    lesion_wise: bool = True


@dataclass(frozen=True)
class ModelRequest(Request):
    """Segmentation with a trained model (:func:`medtorch.segment.inference.segment_with_model`):
    ``model`` is a bundle folder, a TorchScript file, an nnU-Net folder, or the name of an installed
    model (:mod:`medtorch.models.store`, checked against its hashes before it is used)."""

    operation: ClassVar[str] = "segment_model"

    model: str = ""
    overlap: float | None = None
    tta: bool = False
    device: str | None = None
    roi_size: tuple[int, int, int] | None = None
    sw_batch_size: int | None = None
    amp: bool = True
    cpu_bf16: bool = False
    channels_last: bool | None = None
    threshold: float = 0.5
    label_convention: ModelConvention = "auto"
    crop_foreground: bool = False
    output_interpolation: OutputInterpolation = "nearest"
    trust_code: bool = False


@dataclass(frozen=True)
class NodulesRequest(Request):
    """Lung nodule detection (:func:`medtorch.segment.nodules.detect_nodules`)."""

    operation: ClassVar[str] = "detect_nodules"

    min_diameter_mm: float = 4.0
    max_diameter_mm: float = 30.0
    score_threshold: float = 0.5
    device: str | None = None


def channel_inputs(inputs: dict[str, Volume], none_fix: str = "select the volume(s) to segment",
                   gaps_fix: str = "select the volumes in order, without gaps") -> list[Volume]:
    """``channel0``, ``channel1``, ... in order (a clear error on gaps or no channel)."""
    idx = sorted(int(k[len("channel"):]) for k in inputs if k.startswith("channel") and k[len("channel"):].isdigit())
    if not idx:
        raise MedTorchInputError("no input volume was given", none_fix)
    if idx != list(range(len(idx))):
        raise MedTorchInputError(f"input channels {idx} have gaps", gaps_fix)
    return [inputs[f"channel{i}"] for i in idx]


def _json_safe(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def run_threshold(request: ThresholdRequest, inputs: dict[str, Volume], progress: ProgressCallback | None,
                  cancel: CancelToken | None) -> OperationResult:
    from medtorch.segment.threshold import threshold_largest_component

    res = threshold_largest_component(
        need(inputs, "input"), float(request.lower), float(request.upper),
        None if request.roi is None else request.roi.box(), keep_largest=request.keep_largest,
        progress=progress, cancel=cancel,
    )
    return OperationResult({"label": res.label}, {"volume_ml": res.volume_ml, "voxel_count": res.voxel_count,
                                                 "num_components": res.num_components}, res)


def run_seeded(request: SeededRequest, inputs: dict[str, Volume], progress: ProgressCallback | None,
               cancel: CancelToken | None) -> OperationResult:
    from medtorch.segment.metrics import volumetry
    from medtorch.segment.postprocess import postprocess_label
    from medtorch.segment.seeded import SeededOptions, seeded_segment

    opts = SeededOptions(**{f.name: getattr(request, f.name) for f in fields(SeededOptions)})
    res = seeded_segment(channel_inputs(inputs), need(inputs, "seeds"), opts,
                         region_box=None if request.roi is None else request.roi.box(),
                         progress=SubProgress(progress, 0.0, 0.95), cancel=cancel)
    label = res.label
    if request.min_size_mm3 > 0 or request.largest or request.fill_holes:  # a volume in, a volume out
        label = cast(Volume, postprocess_label(label, float(request.min_size_mm3), request.largest,
                                               request.fill_holes))
    regions = {str(k): [int(v) for v in vals] for k, vals in request.regions.items()}
    tumor_classes = [c for c in res.classes if c != res.background]
    rows = volumetry(label, {c: f"class {c}" for c in tumor_classes}, regions)
    values = {
        "classes": res.classes, "background": res.background,
        "volumes_ml": {str(r.values[0]): r.volume_ml for r in rows if r.kind == "label"},
        "voxel_counts": {str(r.values[0]): r.voxels for r in rows if r.kind == "label"},
        "regions_ml": {r.name: r.volume_ml for r in rows if r.kind == "region"},
        "seconds": res.seconds, "iterations": res.iterations, "seed": int(res.options.get("seed", 0)),
        "region": [list(res.region[0]), list(res.region[1])],
        "verdict": None if res.verdict is None else res.verdict.to_dict(),
    }
    report(progress, None, 1.0, "segmented")
    return OperationResult({"label": label}, values, res)


def run_seg_metrics(request: SegMetricsRequest, inputs: dict[str, Volume], progress: ProgressCallback | None,
                    cancel: CancelToken | None) -> OperationResult:
    from medtorch.segment.metrics import evaluate_segmentation

    structures = request.structures if isinstance(request.structures, str) else {
        k: list(v) for k, v in request.structures.items()}
    rep = evaluate_segmentation(need(inputs, "pred"), need(inputs, "ref"), structures, float(request.tolerance_mm),
                                request.lesion_wise, progress=progress, cancel=cancel)
    return OperationResult({}, {"report": rep.to_dict()}, rep)


def run_segment_model(request: ModelRequest, inputs: dict[str, Volume], progress: ProgressCallback | None,
                      cancel: CancelToken | None) -> OperationResult:
    from medtorch.models.store import ModelStore
    from medtorch.segment.inference import segment_with_model

    if not request.model:
        raise MedTorchInputError("no model was chosen", "choose an installed model, a MONAI bundle folder, a TorchScript "
                                 "file or an nnU-Net folder")
    roi = request.roi_size
    label, info = segment_with_model(
        ModelStore().resolve(str(request.model)), channel_inputs(inputs, "select a volume for each of the model's input channels",
                                           "select a volume for every channel, in order"),
        overlap=request.overlap, tta=request.tta, device=request.device,
        roi_size=[int(r) for r in roi] if roi else None, sw_batch_size=request.sw_batch_size,
        amp=request.amp, cpu_bf16=request.cpu_bf16, channels_last=request.channels_last,
        threshold=float(request.threshold), label_convention=request.label_convention,
        crop_foreground=request.crop_foreground, output_interpolation=request.output_interpolation,
        trust_code=request.trust_code, progress=progress, cancel=cancel,
    )
    info = _json_safe(info)
    return OperationResult({"label": label}, {"labels": info["labels"], "volumes_ml": info["volumes_ml"], "info": info})


def run_detect_nodules(request: NodulesRequest, inputs: dict[str, Volume], progress: ProgressCallback | None,
                       cancel: CancelToken | None) -> OperationResult:
    from medtorch.segment.nodules import detect_nodules

    res = detect_nodules(
        need(inputs, "input"), min_diameter_mm=float(request.min_diameter_mm),
        max_diameter_mm=float(request.max_diameter_mm), score_threshold=float(request.score_threshold),
        device=request.device, progress=progress, cancel=cancel,
    )
    return OperationResult({"lung_mask": res.lung_mask},
                           {"nodules": [n.as_dict() for n in res.nodules], "num_candidates": res.info["num_candidates"],
                            "info": _json_safe(res.info)}, res)
