"""Slicer side of deep-learning segmentation and lung-nodule detection (SegmentTumor).

What the module's Logic calls (all scene work is in the ``apply`` step of a
:class:`~medtorch.slicer.jobs.LogicJob`, so a cancel or an error leaves the scene
as it was):

* :func:`describe_model_path` -- the channels a model wants, for the input selectors;
* :func:`segment_model_job` -- volume nodes (one per channel) + a model path -> a job whose
  result is a new segmentation node: one named, coloured segment per label, closed surfaces,
  volumes (mL) as node attributes and a JSON attribute with the run's details;
* :func:`detect_nodules_job` -- a CT node -> a job whose result is a new
  ``vtkMRMLMarkupsFiducialNode``: one control point per nodule at its centre, labelled
  ``N1``, ``N2``..., its diameter in the description and as a ``diameter`` measurement (mm),
  plus a lung-mask segmentation when asked;
* :func:`markups_from_nodules`, :func:`segmentation_from_model_result` -- the two scene
  builders, usable on their own.

Coordinates: nodules are LPS millimetres in the core; markups take RAS (x and y negated).
Results are put under the input's parent transform, like the input itself.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from medtorch import coords
from medtorch.errors import MedTorchInputError
from medtorch.ops.segmentation import ModelConvention, OutputInterpolation
from medtorch.volume import Volume

#: Colours (RGB 0-1) by segment name (lower case) for names the standard tumor terms do not
#: cover; others get :data:`PALETTE`.
DEFAULT_COLORS: dict[str, tuple[float, float, float]] = {
    "necrotic tumor core": (0.55, 0.35, 0.20),
    "peritumoral edema": (0.35, 0.75, 0.35),
    "enhancing tumor": (0.90, 0.20, 0.20),
    "tumor core": (0.95, 0.60, 0.15),
    "whole tumor": (0.95, 0.85, 0.30),
    "lungs": (0.45, 0.70, 0.95),
}
PALETTE: tuple[tuple[float, float, float], ...] = (
    (0.90, 0.30, 0.25), (0.30, 0.65, 0.90), (0.95, 0.80, 0.25), (0.45, 0.80, 0.40),
    (0.70, 0.45, 0.85), (0.95, 0.55, 0.20), (0.35, 0.80, 0.80), (0.85, 0.45, 0.65),
)


def _slicer() -> Any:
    import slicer

    return slicer


def _ras(lps: Sequence[float]) -> tuple[float, float, float]:
    x, y, z = coords.ras_from_lps(lps)
    return (float(x), float(y), float(z))


def describe_model_path(model_path: str, trust_code: bool = False) -> dict[str, Any]:
    """Channels, outputs and window of a model (for the UI), without running it.

    Raises:
        MedTorchInputError: not a usable model (the message says why).
    """
    from medtorch.segment.models import describe_model

    if not model_path:
        raise MedTorchInputError("no model was chosen", "choose a MONAI bundle folder, a TorchScript file or an nnU-Net folder")
    return describe_model(model_path, trust_code=trust_code)


def segment_colors(labels: Mapping[int, str]) -> dict[int, tuple[float, float, float]]:
    """A colour per label value: the standard tumor terms' colours by name
    (:func:`medtorch.segment.terminology.class_terms`), else :data:`DEFAULT_COLORS`, else the
    :data:`PALETTE` in turn."""
    try:
        from medtorch.segment.terminology import class_terms

        terms = class_terms(sorted(int(v) for v in labels), {int(k): str(v) for k, v in labels.items()})
    except ImportError:  # pragma: no cover - the terminology module is part of the core
        terms = {}
    out: dict[int, tuple[float, float, float]] = {}
    for i, (value, name) in enumerate(sorted(labels.items())):
        t = terms.get(int(value))
        if t is not None and not t.key.startswith("class_"):
            out[int(value)] = tuple(float(c) for c in t.color)  # type: ignore[assignment]
        else:
            out[int(value)] = DEFAULT_COLORS.get(str(name).lower(), PALETTE[i % len(PALETTE)])
    return out


def _tag_terminology(seg_node: Any, labels: Mapping[int, str]) -> None:
    """Set each segment's ``TerminologyEntry`` tag (Slicer's format) from the standard terms."""
    try:
        from medtorch.segment.terminology import class_terms, slicer_terminology
    except ImportError:  # pragma: no cover
        return
    terms = class_terms(sorted(int(v) for v in labels), {int(k): str(v) for k, v in labels.items()})
    segmentation = seg_node.GetSegmentation()
    by_name = {str(v): terms[int(k)] for k, v in labels.items()}
    for i in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(i)
        t = by_name.get(segment.GetName())
        if t is not None:
            segment.SetTag("TerminologyEntry", slicer_terminology(t))


def segmentation_from_model_result(label: Volume, labels: Mapping[Any, str], name: str, reference_node: Any = None,
                                   scene: Any = None, colors: Mapping[int, tuple[float, float, float]] | None = None,
                                   volumes_ml: Mapping[str, float] | None = None, info: Mapping[str, Any] | None = None,
                                   closed_surface: bool = True) -> Any:
    """A new segmentation node with one named, coloured segment per label value.

    ``labels`` maps label values (ints, or their strings as a background job returns
    them) to segment names. Attributes: ``MedTorch.operation`` = ``segment_model``,
    ``MedTorch.volumesMl`` (JSON name -> mL), ``MedTorch.info`` (JSON details of the run).
    """
    from medtorch.slicer import mrml

    names = {int(k): str(v) for k, v in labels.items()}
    cols = dict(colors) if colors is not None else segment_colors(names)
    seg = mrml.segmentation_from_label(label, names, name, colors=cols, reference_node=reference_node, scene=scene)
    _tag_terminology(seg, names)
    seg.SetAttribute("MedTorch.operation", "segment_model")
    if volumes_ml is not None:
        seg.SetAttribute("MedTorch.volumesMl", json.dumps({str(k): float(v) for k, v in volumes_ml.items()}))
    if info is not None:
        seg.SetAttribute("MedTorch.info", json.dumps(info, default=str))
    if closed_surface:
        seg.CreateClosedSurfaceRepresentation()
    return seg


def markups_from_nodules(nodules: Sequence[Any], name: str = "Nodules", scene: Any = None) -> Any:
    """A new ``vtkMRMLMarkupsFiducialNode``: one control point per nodule (RAS), labelled
    ``N1``... in the order given, the diameter (and score) in its description, and a
    ``diameter`` measurement (mm) holding every point's diameter.

    ``nodules`` are :class:`~medtorch.segment.nodules.Nodule` objects or their dicts.
    """
    import vtk

    slicer = _slicer()
    scene = scene if scene is not None else slicer.mrmlScene
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
    try:
        node.CreateDefaultDisplayNodes()
        diameters = vtk.vtkDoubleArray()
        diameters.SetName("diameter")
        for i, n in enumerate(nodules):
            d = n if isinstance(n, Mapping) else n.as_dict()
            idx = node.AddControlPoint(vtk.vtkVector3d(*_ras(d["center_lps"])), f"N{i + 1}")
            node.SetNthControlPointDescription(
                idx, f"diameter {float(d['diameter_mm']):.1f} mm, score {float(d.get('score', 0.0)):.2f}")
            node.SetNthControlPointLocked(idx, True)
            diameters.InsertNextValue(float(d["diameter_mm"]))
        measurement = slicer.vtkMRMLStaticMeasurement()
        measurement.SetName("diameter")
        measurement.SetUnits("mm")
        measurement.SetDescription("equivalent-sphere diameter of each nodule")
        measurement.SetControlPointValues(diameters)
        node.AddMeasurement(measurement)
        node.SetAttribute("MedTorch.operation", "detect_nodules")
        node.SetAttribute("MedTorch.nodules", json.dumps([n if isinstance(n, Mapping) else n.as_dict() for n in nodules]))
        return node
    except Exception:
        scene.RemoveNode(node)
        raise


def nodule_diameters(markups_node: Any) -> list[float]:
    """The ``diameter`` measurement of a nodule markups node (mm, one per control point)."""
    for i in range(markups_node.GetNumberOfMeasurements()):
        m = markups_node.GetNthMeasurement(i)
        if m.GetName() == "diameter" and m.GetControlPointValues() is not None:
            arr = m.GetControlPointValues()
            return [arr.GetValue(j) for j in range(arr.GetNumberOfTuples())]
    return []


def segment_model_job(volume_nodes: Sequence[Any], model_path: str, *, overlap: float | None = None, tta: bool = False,
                      device: str | None = None, label_convention: ModelConvention = "auto",
                      output_interpolation: OutputInterpolation = "nearest", crop_foreground: bool = False,
                      trust_code: bool = False, segmentation_name: str | None = None, scene: Any = None) -> Any:
    """A :class:`LogicJob` running ``segment_model`` on ``volume_nodes`` (one per channel, in the
    model's order); its result is the new segmentation node.

    Raises:
        MedTorchInputError: no model, no volume, an empty selector, volumes under different
            transforms (they would not line up).
    """
    from medtorch.slicer import mrml
    from medtorch.slicer.jobs import LogicJob
    from medtorch.ops.segmentation import ModelRequest

    slicer = _slicer()
    scene = scene if scene is not None else slicer.mrmlScene
    if not model_path:
        raise MedTorchInputError("no model was chosen", "choose a MONAI bundle folder, a TorchScript file or an nnU-Net folder")
    nodes = list(volume_nodes)
    if not nodes or any(n is None for n in nodes):
        raise MedTorchInputError("an input channel has no volume selected", "select a volume for every input channel")
    parents = {n.GetTransformNodeID() for n in nodes}
    if len(parents) > 1:
        raise MedTorchInputError("the input volumes are under different transforms, so they would not line up",
                                 "put them under the same transform, or harden the transforms first")
    inputs = {f"channel{i}": mrml.volume_from_node(n) for i, n in enumerate(nodes)}
    request = ModelRequest(model=str(model_path), overlap=overlap, tta=bool(tta), device=device,
                           label_convention=label_convention, output_interpolation=output_interpolation,
                           crop_foreground=bool(crop_foreground), trust_code=bool(trust_code))
    reference = nodes[0]
    name = segmentation_name or scene.GenerateUniqueName(f"{reference.GetName()} model segmentation")

    def apply(result: Any) -> Any:
        seg = segmentation_from_model_result(result.volumes["label"], result.values["labels"], name,
                                             reference_node=reference, scene=scene,
                                             volumes_ml=result.values.get("volumes_ml"), info=result.values.get("info"))
        seg.SetAndObserveTransformNodeID(reference.GetTransformNodeID())
        seg.SetAttribute("MedTorch.model", str(model_path))
        return seg

    return LogicJob(request, inputs, apply, scene)


def detect_nodules_job(ct_node: Any, *, min_diameter_mm: float = 4.0, max_diameter_mm: float = 30.0,
                       score_threshold: float = 0.5, device: str | None = None, markups_name: str | None = None,
                       lung_segmentation: bool = False, scene: Any = None) -> Any:
    """A :class:`LogicJob` running ``detect_nodules`` on ``ct_node``; its result is the new
    markups node (``(markups, lung segmentation)`` when ``lung_segmentation``)."""
    from medtorch.slicer import mrml
    from medtorch.slicer.jobs import LogicJob
    from medtorch.ops.segmentation import NodulesRequest

    slicer = _slicer()
    scene = scene if scene is not None else slicer.mrmlScene
    if ct_node is None:
        raise MedTorchInputError("no CT volume is selected", "select the chest CT")
    inputs = {"input": mrml.volume_from_node(ct_node)}
    request = NodulesRequest(min_diameter_mm=float(min_diameter_mm), max_diameter_mm=float(max_diameter_mm),
                             score_threshold=float(score_threshold), device=device)
    name = markups_name or scene.GenerateUniqueName(f"{ct_node.GetName()} nodules")

    def apply(result: Any) -> Any:
        markups = markups_from_nodules(result.values["nodules"], name, scene)
        markups.SetAndObserveTransformNodeID(ct_node.GetTransformNodeID())
        markups.SetAttribute("MedTorch.numCandidates", str(result.values.get("num_candidates", "")))
        if not lung_segmentation:
            return markups
        lungs = mrml.segmentation_from_label(result.volumes["lung_mask"], {1: "Lungs"}, f"{name} lungs",
                                               colors={1: DEFAULT_COLORS["lungs"]}, reference_node=ct_node, scene=scene)
        lungs.SetAndObserveTransformNodeID(ct_node.GetTransformNodeID())
        return markups, lungs

    return LogicJob(request, inputs, apply, scene)
