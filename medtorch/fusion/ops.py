"""Fusion operations for Slicer and background tasks (see :mod:`medtorch.tasks`).

* ``blend`` -- the original resample-and-average (:func:`~medtorch.fusion.blend.resample_and_blend`).
* ``fuse`` -- :func:`~medtorch.fusion.fuse.fuse_volumes`: inputs ``fixed``, ``moving`` and
  optionally ``displacement`` (a field, applied after ``params['matrix']`` in ITK order);
  params ``method``, ``method_params`` (dict), ``fixed_modality``, ``moving_modality``,
  ``normalization``, ``ct_window``, ``color_map``, ``functional``, ``assume_aligned``,
  ``metrics`` (None, '3d', 'slices'), ``mi_unit``, ``device``. Volumes out: ``fused``
  (float32 [0, 1]), ``moving_prepared``, ``fixed_prepared`` and, for colour fusion,
  ``rgb`` (uint8 RGB vector). Values: ``overlap_fraction``, ``metrics`` ({name: value}),
  ``info`` (parameters, modalities, seed, timings).
* ``fusion_metrics`` -- inputs ``a``, ``b``, ``fused`` on one grid; params ``mode``
  ('3d', 'slices'), ``mi_unit``, ``data_range``; values: the metrics, and with
  ``per_slice=True`` also ``slices`` ({name: [value per axial slice]}).
* ``fuse_compare`` -- :func:`~medtorch.fusion.compare.compare_methods`: inputs as ``fuse``;
  params ``methods``, ``baseline``, ``method_params`` ({method: {...}}), the intensity
  options of ``fuse``, ``per_slice``; values ``rows`` (one per method: 3D metrics, seconds,
  seed), ``slices`` ({method: {metric: [value per scored slice]}}), ``slice_index``,
  ``stats`` (paired tests against the baseline over the slices), ``info``.
* ``fuse_eval`` -- the evaluation report over many pairs (no input volumes); values
  ``rows``, ``stats``, ``files`` (for a metrics table and a box plot in Slicer).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medtorch.errors import MedTorchInputError
from medtorch.progress import CancelToken, ProgressCallback
from medtorch.tasks import OperationResult, need, register
from medtorch.volume import Volume


def _transform(inputs: dict[str, Volume], params: dict[str, Any]) -> Any:
    transform: list[Any] = []
    if params.get("matrix") is not None:
        transform.append(np.asarray(params["matrix"], dtype=np.float64))
    if "displacement" in inputs:
        transform.append(inputs["displacement"])
    return (transform[0] if len(transform) == 1 else transform) if transform else None


@register("blend")
def _op_blend(inputs: dict[str, Volume], params: dict[str, Any], progress: ProgressCallback | None,
              cancel: CancelToken | None) -> OperationResult:
    from medtorch.fusion.blend import resample_and_blend

    res = resample_and_blend(
        need(inputs, "fixed"),
        need(inputs, "moving"),
        transform=_transform(inputs, params),
        weight=float(params.get("weight", 0.5)),
        normalization=params.get("normalization", "percentile"),
        device=params.get("device"),
        progress=progress,
        cancel=cancel,
    )
    return OperationResult({"fused": res.fused, "resampled": res.resampled_moving},
                           {"overlap_fraction": res.overlap_fraction})


@register("fuse")
def _op_fuse(inputs: dict[str, Volume], params: dict[str, Any], progress: ProgressCallback | None,
             cancel: CancelToken | None) -> OperationResult:
    from medtorch.fusion.fuse import fuse_volumes

    window = params.get("ct_window", "bone")
    if isinstance(window, (list, tuple)):
        window = (float(window[0]), float(window[1]))
    res = fuse_volumes(
        need(inputs, "fixed"),
        need(inputs, "moving"),
        str(params.get("method", "average")),
        _transform(inputs, params),
        params=dict(params.get("method_params") or {}),
        fixed_modality=str(params.get("fixed_modality", "auto")),
        moving_modality=str(params.get("moving_modality", "auto")),
        normalization=str(params.get("normalization", "auto")),
        ct_window=window,
        color_map=params.get("color_map") or None,
        functional=params.get("functional"),
        assume_aligned=bool(params.get("assume_aligned", False)),
        metrics=params.get("metrics") or None,
        mi_unit=str(params.get("mi_unit", "bits")),
        device=params.get("device"),
        progress=progress,
        cancel=cancel,
    )
    volumes = {"fused": res.fused, "moving_prepared": res.moving_prepared, "fixed_prepared": res.fixed_prepared}
    if res.rgb is not None:
        volumes["rgb"] = res.rgb
    return OperationResult(volumes, {"overlap_fraction": res.overlap_fraction, "metrics": res.metrics or {},
                                     "info": res.info})


@register("fuse_compare")
def _op_fuse_compare(inputs: dict[str, Volume], params: dict[str, Any], progress: ProgressCallback | None,
                     cancel: CancelToken | None) -> OperationResult:
    from medtorch.fusion.compare import compare_methods

    window = params.get("ct_window", "bone")
    if isinstance(window, (list, tuple)):
        window = (float(window[0]), float(window[1]))
    methods = params.get("methods") or ["average", "dwt", "laplacian", "gff", "pca"]
    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    res = compare_methods(
        need(inputs, "fixed"),
        need(inputs, "moving"),
        list(methods),
        _transform(inputs, params),
        baseline=str(params.get("baseline", "dwt")),
        method_params=params.get("method_params"),
        fixed_modality=str(params.get("fixed_modality", "auto")),
        moving_modality=str(params.get("moving_modality", "auto")),
        normalization=str(params.get("normalization", "auto")),
        ct_window=window,
        color_map=params.get("color_map") or None,
        assume_aligned=bool(params.get("assume_aligned", False)),
        mi_unit=str(params.get("mi_unit", "bits")),
        per_slice=bool(params.get("per_slice", True)),
        device=params.get("device"),
        progress=progress,
        cancel=cancel,
    )
    return OperationResult({}, {"methods": res.methods, "baseline": res.baseline, "rows": res.rows,
                                "slices": res.slices, "slice_index": res.slice_index, "stats": res.stats,
                                "info": res.info})


@register("fusion_metrics")
def _op_fusion_metrics(inputs: dict[str, Volume], params: dict[str, Any], progress: ProgressCallback | None,
                       cancel: CancelToken | None) -> OperationResult:
    from medtorch.fusion.metrics import fusion_metrics, slice_metrics
    from medtorch.progress import report

    a, b, f = need(inputs, "a"), need(inputs, "b"), need(inputs, "fused")
    for name, v in (("b", b), ("fused", f)):
        if not v.geometry.isclose(a.geometry, atol=1e-4):
            raise MedTorchInputError(f"the {name} volume is not on the first source's grid",
                                     "score volumes on one grid (the fused volume's)")
    mode = str(params.get("mode", "3d"))
    rng = tuple(params.get("data_range", (0.0, 1.0)))
    unit = str(params.get("mi_unit", "bits"))
    report(progress, cancel, 0.1, f"scoring ({mode})")
    values: dict[str, Any] = dict(fusion_metrics(a.array, b.array, f.array, mode=mode,  # type: ignore[arg-type]
                                                 data_range=rng, mi_unit=unit))
    if params.get("per_slice"):
        report(progress, cancel, 0.6, "scoring every slice")
        per = slice_metrics(a.array, b.array, f.array, data_range=rng, mi_unit=unit)
        values["slices"] = {k: [float(x) for x in v] for k, v in per.items() if k != "informative"}
        values["slices"]["informative"] = [bool(x) for x in per["informative"]]
    values["mi_unit"] = unit
    report(progress, cancel, 1.0, "scored")
    return OperationResult({}, values)


@register("fuse_eval")
def _op_fuse_eval(inputs: dict[str, Volume], params: dict[str, Any], progress: ProgressCallback | None,
                  cancel: CancelToken | None) -> OperationResult:
    """The evaluation report (:func:`medtorch.fusion.evaluate.evaluate`) as an operation: no
    input volumes; params ``pairs`` (list file or folder), ``methods``, ``out_dir`` and the
    options of ``evaluate``. Values: ``rows`` (every case and method), ``stats`` and ``files``."""
    from medtorch.fusion.evaluate import evaluate

    for key in ("pairs", "out_dir"):
        if not params.get(key):
            raise MedTorchInputError(f"the evaluation needs '{key}'", "give the pairs (list or folder) and an output folder")
    methods = params.get("methods") or ["average", "dwt", "laplacian", "gff", "pca"]
    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    res = evaluate(str(params["pairs"]), list(methods), str(params["out_dir"]),
                   baseline=str(params.get("baseline", "dwt")), method_params=params.get("method_params"),
                   metrics_mode=str(params.get("metrics_mode", "3d")), mi_unit=str(params.get("mi_unit", "bits")),
                   color_map=str(params.get("color_map", "hot")), assume_aligned=bool(params.get("assume_aligned", False)),
                   device=params.get("device"), progress=progress, cancel=cancel)
    return OperationResult({}, {"rows": res.rows, "stats": res.stats, "files": {k: str(v) for k, v in res.files.items()}})
