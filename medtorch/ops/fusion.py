"""Fusion operations.

* ``blend`` -- the original resample-and-average (:func:`~medtorch.fusion.blend.resample_and_blend`):
  inputs ``fixed``, ``moving`` and optionally ``displacement``. Volumes out: ``fused``,
  ``resampled``; values: ``overlap_fraction``.
* ``fuse`` -- :func:`~medtorch.fusion.fuse.fuse_volumes`: inputs ``fixed``, ``moving`` and
  optionally ``displacement`` (a field, applied after ``matrix`` in ITK order). Volumes out:
  ``fused`` (float32 [0, 1]), ``moving_prepared``, ``fixed_prepared`` and, for colour fusion,
  ``rgb`` (uint8 RGB vector). Values: ``overlap_fraction``, ``metrics`` ({name: value}),
  ``info`` (parameters, modalities, seed, timings); ``native`` is the
  :class:`~medtorch.fusion.fuse.FusionResult`.
* ``fuse_compare`` -- :func:`~medtorch.fusion.compare.compare_methods`: inputs as ``fuse``;
  values ``methods``, ``baseline``, ``rows`` (one per method: 3D metrics, seconds, seed),
  ``slices`` ({method: {metric: [value per scored slice]}}), ``slice_index``, ``stats``
  (paired tests against the baseline over the slices), ``info``.
* ``fusion_metrics`` -- inputs ``a``, ``b``, ``fused`` on one grid; values: the metrics, and
  with ``per_slice`` also ``slices`` ({name: [value per axial slice]}).
* ``fuse_eval`` -- the evaluation report over many pairs (no input volumes); values
  ``rows``, ``stats``, ``files`` (for a metrics table and a box plot in Slicer).

The choices defined here are those :mod:`medtorch.fusion` accepts; :data:`FusionMethod`
lists the names of :data:`medtorch.fusion.methods.METHODS` (a test keeps the two equal).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np

from medtorch.errors import MedTorchInputError
from medtorch.ops.base import Matrix, OperationResult, Request, need
from medtorch.progress import CancelToken, ProgressCallback
from medtorch.volume import Volume

#: Fusion methods, in the order the command line and the module offer them.
FusionMethod = Literal["average", "dwt", "laplacian", "gff", "gradient", "pca", "cnn", "max"]
#: How each source is brought to [0, 1] before fusion (``none``: raw intensities).
Normalization = Literal["auto", "percentile", "none"]
BlendNormalization = Literal["percentile", "none"]
#: Colour maps of colour fusion (:data:`medtorch.fusion.color.COLOR_MAPS`).
ColorMap = Literal["hot", "jet", "rainbow", "gray"]
#: Which source is the functional (PET/SPECT) image of colour fusion.
FunctionalSide = Literal["fixed", "moving"]
#: How fusion metrics are taken (:func:`medtorch.fusion.metrics.fusion_metrics`).
MetricMode = Literal["auto", "2d", "3d", "slices"]
MiUnit = Literal["bits", "nats"]
#: Which definitions the metrics follow: MedTorch's own, or the CDDFuse/VIFB evaluator's
#: (8-bit grey/Y inputs, MI in nats, SSIM as skimage's with data range 2; docs/fusion-metrics.md).
MetricSet = Literal["medtorch", "cddfuse"]
#: A CT window preset (:data:`medtorch.intensity.CT_WINDOWS`) or (width, level) in HU.
CtWindow = str | tuple[float, float]

DEFAULT_METHODS: tuple[FusionMethod, ...] = ("average", "dwt", "laplacian", "gff", "gradient", "pca")


@dataclass(frozen=True)
class BlendRequest(Request):
    """Resample and blend: ``weight`` is the moving volume's share; ``matrix`` (4x4 LPS,
    fixed -> moving) the transform, applied after an input ``displacement`` field."""

    operation: ClassVar[str] = "blend"

    weight: float = 0.5
    normalization: BlendNormalization = "percentile"
    device: str | None = None
    matrix: Matrix | None = None


@dataclass(frozen=True)
class FuseRequest(Request):
    """Parameters of :func:`medtorch.fusion.fuse.fuse_volumes` (``method_params``: the
    method's parameters, :data:`medtorch.fusion.methods.METHODS`; ``metrics``: score the
    result in that mode; ``matrix``: the transform, applied after an input ``displacement``)."""

    operation: ClassVar[str] = "fuse"

    method: FusionMethod = "average"
    method_params: dict[str, Any] = field(default_factory=dict)
    fixed_modality: str = "auto"
    moving_modality: str = "auto"
    normalization: Normalization = "auto"
    ct_window: CtWindow = "bone"
    color_map: ColorMap | None = None
    functional: FunctionalSide | bool | None = None
    assume_aligned: bool = False
    metrics: MetricMode | None = None
    mi_unit: MiUnit = "bits"
    metric_set: MetricSet = "medtorch"
    device: str | None = None
    matrix: Matrix | None = None


@dataclass(frozen=True)
class FuseCompareRequest(Request):
    """Every method of ``methods`` on the pair, scored in 3D and per slice, tested against
    ``baseline`` (:func:`medtorch.fusion.compare.compare_methods`)."""

    operation: ClassVar[str] = "fuse_compare"

    methods: tuple[FusionMethod, ...] = DEFAULT_METHODS
    baseline: FusionMethod = "dwt"
    method_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    fixed_modality: str = "auto"
    moving_modality: str = "auto"
    normalization: Normalization = "auto"
    ct_window: CtWindow = "bone"
    color_map: ColorMap | None = None
    assume_aligned: bool = False
    mi_unit: MiUnit = "bits"
    per_slice: bool = True
    device: str | None = None
    matrix: Matrix | None = None


@dataclass(frozen=True)
class FusionMetricsRequest(Request):
    """Fusion metrics of ``fused`` against the sources ``a`` and ``b`` (``data_range``: their
    intensity range)."""

    operation: ClassVar[str] = "fusion_metrics"

    mode: MetricMode = "3d"
    data_range: tuple[float, float] = (0.0, 1.0)
    mi_unit: MiUnit = "bits"
    metric_set: MetricSet = "medtorch"
    per_slice: bool = False


@dataclass(frozen=True)
class FuseEvalRequest(Request):
    """The evaluation report (:func:`medtorch.fusion.evaluate.evaluate`) of ``methods`` over
    the ``pairs`` (list file or folder), written into ``out_dir``."""

    operation: ClassVar[str] = "fuse_eval"

    pairs: str = ""
    out_dir: str = ""
    methods: tuple[FusionMethod, ...] = DEFAULT_METHODS
    baseline: FusionMethod = "dwt"
    method_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    metrics_mode: MetricMode = "3d"
    mi_unit: MiUnit = "bits"
    metric_set: MetricSet = "medtorch"
    color_map: ColorMap = "hot"
    assume_aligned: bool = False
    device: str | None = None


def _transform(inputs: dict[str, Volume], matrix: Matrix | None) -> Any:
    transform: list[Any] = []
    if matrix is not None:
        transform.append(np.asarray(matrix, dtype=np.float64))
    if "displacement" in inputs:
        transform.append(inputs["displacement"])
    return (transform[0] if len(transform) == 1 else transform) if transform else None


def _window(window: CtWindow) -> str | tuple[float, float]:
    return window if isinstance(window, str) else (float(window[0]), float(window[1]))


def _method_params(params: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]] | None:
    return {k: dict(v) for k, v in params.items()} if params else None


def run_blend(request: BlendRequest, inputs: dict[str, Volume], progress: ProgressCallback | None,
              cancel: CancelToken | None) -> OperationResult:
    from medtorch.fusion.blend import resample_and_blend

    res = resample_and_blend(
        need(inputs, "fixed"),
        need(inputs, "moving"),
        transform=_transform(inputs, request.matrix),
        weight=float(request.weight),
        normalization=request.normalization,
        device=request.device,
        progress=progress,
        cancel=cancel,
    )
    return OperationResult({"fused": res.fused, "resampled": res.resampled_moving},
                           {"overlap_fraction": res.overlap_fraction}, res)


def run_fuse(request: FuseRequest, inputs: dict[str, Volume], progress: ProgressCallback | None,
             cancel: CancelToken | None) -> OperationResult:
    from medtorch.fusion.fuse import fuse_volumes

    res = fuse_volumes(
        need(inputs, "fixed"),
        need(inputs, "moving"),
        request.method,
        _transform(inputs, request.matrix),
        params=dict(request.method_params),
        fixed_modality=request.fixed_modality,
        moving_modality=request.moving_modality,
        normalization=request.normalization,
        ct_window=_window(request.ct_window),
        color_map=request.color_map,
        functional=request.functional,
        assume_aligned=request.assume_aligned,
        metrics=request.metrics,
        mi_unit=request.mi_unit,
        metric_set=request.metric_set,
        device=request.device,
        progress=progress,
        cancel=cancel,
    )
    volumes = {"fused": res.fused, "moving_prepared": res.moving_prepared, "fixed_prepared": res.fixed_prepared}
    if res.rgb is not None:
        volumes["rgb"] = res.rgb
    return OperationResult(volumes, {"overlap_fraction": res.overlap_fraction, "metrics": res.metrics or {},
                                     "info": res.info}, res)


def run_fuse_compare(request: FuseCompareRequest, inputs: dict[str, Volume], progress: ProgressCallback | None,
                     cancel: CancelToken | None) -> OperationResult:
    from medtorch.fusion.compare import compare_methods

    res = compare_methods(
        need(inputs, "fixed"),
        need(inputs, "moving"),
        list(request.methods or DEFAULT_METHODS),
        _transform(inputs, request.matrix),
        baseline=request.baseline,
        method_params=_method_params(request.method_params),
        fixed_modality=request.fixed_modality,
        moving_modality=request.moving_modality,
        normalization=request.normalization,
        ct_window=_window(request.ct_window),
        color_map=request.color_map,
        assume_aligned=request.assume_aligned,
        mi_unit=request.mi_unit,
        per_slice=request.per_slice,
        device=request.device,
        progress=progress,
        cancel=cancel,
    )
    return OperationResult({}, {"methods": res.methods, "baseline": res.baseline, "rows": res.rows,
                                "slices": res.slices, "slice_index": res.slice_index, "stats": res.stats,
                                "info": res.info}, res)


def run_fusion_metrics(request: FusionMetricsRequest, inputs: dict[str, Volume], progress: ProgressCallback | None,
                       cancel: CancelToken | None) -> OperationResult:
    from medtorch.fusion.metrics import fusion_metrics, slice_metrics
    from medtorch.progress import report

    a, b, f = need(inputs, "a"), need(inputs, "b"), need(inputs, "fused")
    for name, v in (("b", b), ("fused", f)):
        if not v.geometry.isclose(a.geometry, atol=1e-4):
            raise MedTorchInputError(f"the {name} volume is not on the first source's grid",
                                     "score volumes on one grid (the fused volume's)")
    mode, rng, unit = request.mode, request.data_range, request.mi_unit
    report(progress, cancel, 0.1, f"scoring ({mode})")
    values: dict[str, Any] = dict(fusion_metrics(a.array, b.array, f.array, mode=mode, data_range=rng, mi_unit=unit,
                                                         metric_set=request.metric_set))
    if request.per_slice:
        report(progress, cancel, 0.6, "scoring every slice")
        per = slice_metrics(a.array, b.array, f.array, data_range=rng, mi_unit=unit)
        values["slices"] = {k: [float(x) for x in v] for k, v in per.items() if k != "informative"}
        values["slices"]["informative"] = [bool(x) for x in per["informative"]]
    values["mi_unit"] = unit
    report(progress, cancel, 1.0, "scored")
    return OperationResult({}, values)


def run_fuse_eval(request: FuseEvalRequest, inputs: dict[str, Volume], progress: ProgressCallback | None,
                  cancel: CancelToken | None) -> OperationResult:
    from medtorch.fusion.evaluate import evaluate

    for key in ("pairs", "out_dir"):
        if not getattr(request, key):
            raise MedTorchInputError(f"the evaluation needs '{key}'", "give the pairs (list or folder) and an output folder")
    res = evaluate(request.pairs, list(request.methods or DEFAULT_METHODS), request.out_dir, baseline=request.baseline,
                   method_params=_method_params(request.method_params), metrics_mode=request.metrics_mode,
                   mi_unit=request.mi_unit, metric_set=request.metric_set, color_map=request.color_map,
                   assume_aligned=request.assume_aligned,
                   device=request.device, progress=progress, cancel=cancel)
    return OperationResult({}, {"rows": res.rows, "stats": res.stats, "files": {k: str(v) for k, v in res.files.items()}},
                           res)
