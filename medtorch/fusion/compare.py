"""Compare fusion methods on one pair of volumes: 3D metrics per method, per-slice metrics, paired tests.

:func:`compare_methods` is what the FusionRegistration module's *Evaluate methods* button
runs (the ``fuse_compare`` operation): every method fuses the same pair through
:func:`~medtorch.fusion.fuse.fuse_volumes` (same transform, same intensity preparation),
is scored on the volume (3D metrics, :func:`~medtorch.fusion.metrics.fusion_metrics`) and
on every axial slice that carries data (2D metrics,
:func:`~medtorch.fusion.metrics.slice_metrics`), and each method is compared with the
baseline over those slices (Wilcoxon signed-rank and paired t-test,
:func:`~medtorch.fusion.evaluate.paired_tests`, slices paired by index).

With one pair, the slices are the samples: the tests say whether a method scores higher
than the baseline slice by slice in this volume, not across patients (for that, run
``medtorch fuse-eval`` over many pairs).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medtorch.errors import MedTorchInputError
from medtorch.fusion.metrics import METRICS
from medtorch.progress import CancelToken, ProgressCallback, SubProgress, report
from medtorch.volume import Volume

__all__ = ["ComparisonResult", "compare_methods", "slice_rows"]


@dataclass
class ComparisonResult:
    """What :func:`compare_methods` computed.

    ``rows``: one dict per method (``method``, ``seconds``, every metric of
    :data:`~medtorch.fusion.metrics.METRICS` in 3D, ``seed``). ``slices``: ``{method:
    {metric: [value per scored slice]}}`` and ``slice_index`` (the axial indices ``z`` scored,
    those where a source has data). ``stats``: paired tests of each method against
    ``baseline`` per metric over the slices. ``info``: modalities, intensities, unit of MI.
    """

    methods: list[str]
    baseline: str
    rows: list[dict[str, Any]]
    slices: dict[str, dict[str, list[float]]]
    slice_index: list[int]
    stats: list[dict[str, Any]]
    info: dict[str, Any] = field(default_factory=dict)


def slice_rows(slices: dict[str, dict[str, list[float]]], slice_index: Sequence[int]) -> list[dict[str, Any]]:
    """Per-slice values as rows (``case`` = ``slice <z>``, ``method``, one key per metric)."""
    rows = []
    for method, per in slices.items():
        for i, z in enumerate(slice_index):
            rows.append({"case": f"slice {int(z)}", "method": method, **{k: float(v[i]) for k, v in per.items()}})
    return rows


def compare_methods(
    fixed: Volume,
    moving: Volume,
    methods: Sequence[str],
    transform: Any = None,
    *,
    baseline: str = "dwt",
    method_params: dict[str, dict[str, Any]] | None = None,
    fixed_modality: str = "auto",
    moving_modality: str = "auto",
    normalization: str = "auto",
    ct_window: str | tuple[float, float] = "bone",
    color_map: str | None = None,
    assume_aligned: bool = False,
    mi_unit: str = "bits",
    per_slice: bool = True,
    device: Any = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> ComparisonResult:
    """Fuse ``fixed`` and ``moving`` with every method and score each (see the module docstring).

    Args:
        methods: method names (:data:`medtorch.fusion.methods.METHODS`); the baseline is
            added first if missing; duplicates are dropped.
        baseline: the method the paired tests compare with (DWT: mean approximation, max-abs details, by default).
        method_params: per-method parameters, e.g. ``{"cnn": {"iterations": 50}}``.
        transform, fixed_modality, moving_modality, normalization, ct_window, color_map,
            assume_aligned, device: as :func:`~medtorch.fusion.fuse.fuse_volumes`.
        per_slice: also score every axial slice (the box plots and the paired tests).

    Raises:
        MedTorchInputError: an unknown method, or what :func:`fuse_volumes` refuses.
    """
    from medtorch.fusion.evaluate import paired_tests
    from medtorch.fusion.fuse import fuse_volumes
    from medtorch.fusion.methods import METHODS
    from medtorch.fusion.metrics import fusion_metrics, slice_metrics

    names = [str(m).strip().lower() for m in methods if str(m).strip()]
    base = str(baseline).strip().lower()
    if not names:
        raise MedTorchInputError("no fusion methods were given to compare", "give at least one, e.g. dwt,gff")
    for m in names + [base]:
        if m not in METHODS:
            raise MedTorchInputError(f"unknown fusion method {m!r}", "use any of " + ", ".join(METHODS))
    if base not in names:
        names = [base] + names
    names = list(dict.fromkeys(names))
    params = {str(k).lower(): dict(v or {}) for k, v in (method_params or {}).items()}
    rows: list[dict[str, Any]] = []
    slices: dict[str, dict[str, list[float]]] = {}
    keep: np.ndarray | None = None
    info: dict[str, Any] = {"mi_unit": mi_unit, "baseline": base}
    n = len(names)
    for k, m in enumerate(names):
        sp = SubProgress(progress, k / n, (k + 0.8) / n, m)
        report(progress, cancel, k / n, f"fusing with {m} ({k + 1}/{n})")
        t0 = time.perf_counter()
        res = fuse_volumes(fixed, moving, m, transform, params=params.get(m), fixed_modality=fixed_modality,
                           moving_modality=moving_modality, normalization=normalization, ct_window=ct_window,
                           color_map=color_map, assume_aligned=assume_aligned, device=device, progress=sp,
                           cancel=cancel)
        secs = time.perf_counter() - t0
        report(progress, cancel, (k + 0.8) / n, f"scoring {m}")
        a, b, f = res.fixed_prepared.array, res.moving_prepared.array, res.fused.array
        scores = fusion_metrics(a, b, f, mode="3d", mi_unit=mi_unit)
        seed = res.info.get("params", {}).get("seed", "")
        rows.append({"method": m, "seconds": round(secs, 4), **{q: float(scores[q]) for q in METRICS},
                     "seed": seed if seed is not None else ""})
        if per_slice and a.shape[0] > 1:
            report(progress, cancel, (k + 0.9) / n, f"scoring {m} slice by slice")
            per = slice_metrics(a, b, f, mi_unit=mi_unit)
            if keep is None:
                keep = np.asarray(per["informative"], dtype=bool)
            slices[m] = {q: [float(x) for x in np.asarray(per[q])[keep]] for q in METRICS}
        for key in ("fixed_modality", "moving_modality", "fixed_intensity", "moving_intensity", "moving_placement",
                    "overlap_fraction", "color_map", "functional", "device"):
            if key in res.info:
                info[key] = res.info[key]
    index = [int(z) for z in np.flatnonzero(keep)] if keep is not None else []
    stats = paired_tests(slice_rows(slices, index), names, base) if slices else []
    report(progress, cancel, 1.0, "methods compared")
    return ComparisonResult(names, base, rows, slices, index, stats, info)
