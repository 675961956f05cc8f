"""Evaluation report over many cases: every method on every pair, metrics, plots and paired tests.

Several methods over several cases, a CSV of every metric, box plots, paired tests of each
method against a baseline, and figures of the two sources and each fused result side by
side -- written to one folder::

    out/metrics.csv              one row per case and method: every metric, seconds
    out/stats.csv                per metric and method: n, means, mean difference to the baseline,
                                 Wilcoxon signed-rank p and paired t-test p (scipy.stats), raw
                                 and Holm-Bonferroni adjusted (``*_p_holm``; the family is every
                                 method x metric test of one kind, named in ``correction``)
    out/figures/boxplots.png     one panel per metric, one box per method
    out/figures/example_grid.png rows = a few example pairs (one per pair type first), columns =
                                 the two sources and each method's fused image
    out/figures/case_<case>.png  sources and fused images side by side (middle axial slice of a volume)
    out/report.html, out/report.md

Pairs (:func:`discover_pairs`):

* a **list file** (CSV, ``#`` comments allowed): ``fixed,moving[,modality[,name]]`` per row,
  an optional header row starting with ``fixed``; paths relative to the list file;
  ``modality`` is the moving image's (CT, MR, PT, NM, or auto);
* a **folder with modality sub-folders** (the layout of the Harvard atlas pairs as they are
  usually shared): ``MRI/`` (or ``MR``, ``T1``, ``T2``) and one of ``CT/``, ``PET/``,
  ``SPECT/``, files matched by name; a folder of such folders (``CT-MRI/``, ``PET-MRI/``,
  ``SPECT-MRI/``) is searched one level down;
* a **flat folder** of ``<case>_<modality>.<ext>`` files, modality one of ``mri``, ``mr``,
  ``t1``, ``t2`` (anatomical) and ``ct``, ``pet``, ``pt``, ``spect``, ``nm``, or a second
  MR contrast (``t1`` + ``t2``: t1 is fixed).

The anatomical image is the fixed one. Files are volumes (NIfTI, NRRD, MHA, DICOM folders)
or 2D images (PNG, JPEG, BMP, TIFF). 2D grey images are read as 8-bit values / 255 (they
are display images already: no window, no percentiles); a 2D RGB image is a colour-coded
functional image and is fused by the YCbCr protocol (:mod:`medtorch.fusion.color`), its
metrics computed on the luminance. Volumes go through :func:`~medtorch.fusion.fuse.fuse_volumes`.
"""

from __future__ import annotations

import csv
import io
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medtorch.errors import MedTorchInputError
from medtorch.fusion.metrics import METRICS
from medtorch.progress import CancelToken, ProgressCallback, SubProgress, report

__all__ = ["Case", "EvaluationResult", "discover_pairs", "evaluate", "example_cases", "example_grid", "holm",
           "load_pair", "paired_tests"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif")
VOLUME_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
ANATOMICAL = {"mri": "MR", "mr": "MR", "t1": "MR", "t2": "MR", "t1w": "MR", "t2w": "MR", "flair": "MR"}
OTHER = {"ct": "CT", "pet": "PT", "pt": "PT", "spect": "NM", "nm": "NM"}
PAIR_NAMES = {"CT": "CT-MRI", "PT": "PET-MRI", "NM": "SPECT-MRI", "MR": "MRI-MRI", "OT": "other"}


@dataclass
class Case:
    """One pair: the anatomical (fixed) image, the other (moving) one and the moving modality."""

    name: str
    fixed: Path
    moving: Path
    modality: str = "auto"
    fixed_modality: str = "MR"

    @property
    def pair(self) -> str:
        return PAIR_NAMES.get(self.modality.upper(), self.modality)


@dataclass
class EvaluationResult:
    """What :func:`evaluate` wrote and computed."""

    out_dir: Path
    rows: list[dict[str, Any]]
    stats: list[dict[str, Any]]
    files: dict[str, Path] = field(default_factory=dict)


# -- pairs ---------------------------------------------------------------------------------------


def _stem(p: Path) -> str:
    name = p.name
    for ext in VOLUME_EXTENSIONS + IMAGE_EXTENSIONS:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return p.stem


def _is_image_file(p: Path) -> bool:
    n = p.name.lower()
    return p.is_file() and any(n.endswith(e) for e in VOLUME_EXTENSIONS + IMAGE_EXTENSIONS)


def _from_list(path: Path) -> list[Case]:
    cases = []
    text = path.read_text(encoding="utf-8")
    rows = [r for r in csv.reader(io.StringIO(text)) if r and r[0].strip() and not r[0].strip().startswith("#")]
    if rows and rows[0][0].strip().lower() == "fixed":
        rows = rows[1:]
    for n, row in enumerate(rows, 1):
        cells = [c.strip() for c in row]
        if len(cells) < 2:
            raise MedTorchInputError(f"line {n} of {path.name} has {len(cells)} field(s)",
                                     "write fixed,moving[,modality[,name]] on every line")
        fixed, moving = (Path(c) if Path(c).is_absolute() else path.parent / c for c in cells[:2])
        modality = cells[2] if len(cells) > 2 and cells[2] else "auto"
        name = cells[3] if len(cells) > 3 and cells[3] else f"{_stem(moving)}"
        for p in (fixed, moving):
            if not p.exists():
                raise MedTorchInputError(f"{p} (line {n} of {path.name}) does not exist", "fix the path in the list")
        cases.append(Case(name, fixed, moving, modality.upper()))
    return cases


def _modality_dirs(folder: Path) -> tuple[Path, Path, str] | None:
    subs = {p.name.lower(): p for p in folder.iterdir() if p.is_dir()}
    anat = next((subs[k] for k in ("mri", "mr", "t1", "t1w", "t2", "t2w") if k in subs), None)
    other = next(((subs[k], OTHER[k]) for k in ("ct", "pet", "pt", "spect", "nm") if k in subs), None)
    if anat is None or other is None:
        return None
    return anat, other[0], other[1]


def _from_modality_dirs(folder: Path, prefix: str = "") -> list[Case]:
    found = _modality_dirs(folder)
    if found is None:
        return []
    anat, other, mod = found
    anat_files = {_stem(p): p for p in sorted(anat.iterdir()) if _is_image_file(p)}
    cases = []
    for p in sorted(other.iterdir()):
        if _is_image_file(p) and _stem(p) in anat_files:
            cases.append(Case(f"{prefix}{_stem(p)}", anat_files[_stem(p)], p, mod))
    return cases


def _from_flat(folder: Path) -> list[Case]:
    groups: dict[str, dict[str, Path]] = {}
    for p in sorted(folder.iterdir()):
        if not (_is_image_file(p) or (p.is_dir() and "_" in p.name)):
            continue
        stem = _stem(p)
        case, sep, mod = stem.rpartition("_")
        if sep and mod.lower() in {**ANATOMICAL, **OTHER}:
            groups.setdefault(case, {})[mod.lower()] = p
    cases = []
    for case, files in sorted(groups.items()):
        anat = [k for k in files if k in ANATOMICAL]
        other = [k for k in files if k in OTHER]
        if len(files) != 2:
            continue
        if other and anat:
            cases.append(Case(case, files[anat[0]], files[other[0]], OTHER[other[0]]))
        elif len(anat) == 2:
            first, second = sorted(anat, key=lambda k: ("t1" not in k, k))
            cases.append(Case(case, files[first], files[second], "MR"))
    return cases


def discover_pairs(source: str | os.PathLike[str]) -> list[Case]:
    """The cases of a list file or folder (see the module docstring for the conventions)."""
    src = Path(source)
    if not src.exists():
        raise MedTorchInputError(f"{src} does not exist", "give a list file (CSV) or a folder of pairs")
    if src.is_file():
        cases = _from_list(src)
    else:
        cases = _from_modality_dirs(src)
        if not cases:
            for sub in sorted(p for p in src.iterdir() if p.is_dir()):
                cases += _from_modality_dirs(sub, prefix=f"{sub.name}/")
        if not cases:
            cases = _from_flat(src)
    if not cases:
        raise MedTorchInputError(
            f"no image pairs found in {src}",
            "use a CSV list (fixed,moving[,modality]), modality sub-folders (MRI/ + CT/, PET/ or SPECT/ with "
            "matching file names) or files named <case>_<modality>.<ext> (e.g. 01_mri.nii.gz + 01_ct.nii.gz)",
        )
    return cases


# -- loading -------------------------------------------------------------------------------------


@dataclass
class LoadedPair:
    """A pair ready to fuse: 2D arrays in [0, 1] (with the functional chroma), or volumes."""

    case: Case
    two_d: bool
    a: np.ndarray | None = None  # 2D: anatomical in [0, 1]
    b: np.ndarray | None = None  # 2D: other in [0, 1] (luminance for RGB)
    chroma: np.ndarray | None = None  # 2D RGB input: [2, H, W] Cb, Cr
    volumes: tuple[Any, Any] | None = None


def _read_2d(path: Path) -> np.ndarray:
    import SimpleITK as sitk

    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise MedTorchInputError(f"{path.name} could not be read as an image ({str(exc).strip().splitlines()[-1]})",
                                 "give PNG, JPEG, BMP or TIFF images") from None
    arr = sitk.GetArrayFromImage(img)
    if arr.ndim == 3 and img.GetNumberOfComponentsPerPixel() == 1:
        if arr.shape[0] == 1:
            arr = arr[0]
        else:
            raise MedTorchInputError(f"{path.name} holds {arr.shape[0]} frames", "give single 2D images")
    return arr


def load_pair(case: Case) -> LoadedPair:
    """Read a case; 2D images are scaled to [0, 1] (RGB -> luminance + chroma), volumes read as they are."""
    from medtorch.fusion.color import rgb_to_ycbcr

    is_2d = any(str(p).lower().endswith(IMAGE_EXTENSIONS) for p in (case.fixed, case.moving))
    if not is_2d:
        from medtorch.io import read_volume

        return LoadedPair(case, False, volumes=(read_volume(case.fixed, allow_2d=True),
                                                read_volume(case.moving, allow_2d=True)))
    arrays = []
    for p in (case.fixed, case.moving):
        arr = _read_2d(p)
        scale = 255.0 if arr.dtype == np.uint8 else float(np.iinfo(arr.dtype).max) if np.issubdtype(arr.dtype, np.integer) else 1.0
        arrays.append(arr.astype(np.float64) / scale)
    fa, fb = arrays
    if fa.ndim == 3:  # an RGB anatomical image: use its luminance
        fa = rgb_to_ycbcr(torch.from_numpy(np.moveaxis(fa[..., :3], -1, 0)))[0].numpy()
    chroma = None
    if fb.ndim == 3:
        rgb = np.moveaxis(fb[..., :3], -1, 0)
        if np.allclose(rgb[0], rgb[1]) and np.allclose(rgb[1], rgb[2]):
            fb = rgb[0]
        else:
            ycc = rgb_to_ycbcr(torch.from_numpy(np.ascontiguousarray(rgb))).numpy()
            fb, chroma = ycc[0], ycc[1:]
    if fa.shape != fb.shape:
        raise MedTorchInputError(
            f"the images of case {case.name} differ in shape ({fa.shape} vs {fb.shape})",
            "give registered pairs of one size (resample or crop one of them first)",
        )
    return LoadedPair(case, True, np.clip(fa, 0, 1).astype(np.float32), np.clip(fb, 0, 1).astype(np.float32), chroma)


# -- statistics ------------------------------------------------------------------------------------

CORRECTION = "Holm-Bonferroni"
STATS_COLUMNS = ["metric", "method", "baseline", "n", "mean", "baseline_mean", "mean_difference", "wins",
                 "wilcoxon_p", "wilcoxon_p_holm", "ttest_p", "ttest_p_holm", "correction"]
GRID_ROWS = 3
GRID_TILE = 160  # pixels per image of the example grid
GRID_HEADER = 24  # pixels of the column-title strip


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (step-down, family-wise error rate), in the input order.

    The family is the finite p-values given; NaN stays NaN and is not counted. With the
    ``m`` finite p-values sorted ascending, ``p_(i)`` gets ``max_{j<=i} min(1, (m - j + 1) p_(j))``
    (Holm 1979; the same as ``statsmodels.stats.multitest.multipletests(method="holm")``).
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = ok.size
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(scaled)
    return out


def paired_tests(rows: list[dict[str, Any]], methods: Sequence[str], baseline: str,
                 metrics: Sequence[str] = METRICS) -> list[dict[str, Any]]:
    """Wilcoxon signed-rank and paired t-test of each method against ``baseline``, per metric.

    Cases are paired by name; p-values are two-sided (``scipy.stats.wilcoxon``,
    ``scipy.stats.ttest_rel``); NaN where fewer than two paired cases exist or all
    differences are zero. Each kind of test is corrected for multiple comparisons with
    :func:`holm` over all its method x metric tests (``wilcoxon_p_holm``, ``ttest_p_holm``;
    ``correction`` names the correction and the family size).
    """
    from scipy import stats

    by = {(r["case"], r["method"]): r for r in rows}
    cases = sorted({r["case"] for r in rows})
    out: list[dict[str, Any]] = []
    for metric in metrics:
        for m in methods:
            if m == baseline:
                continue
            pairs = [(by[(c, m)][metric], by[(c, baseline)][metric]) for c in cases
                     if (c, m) in by and (c, baseline) in by
                     and np.isfinite(by[(c, m)][metric]) and np.isfinite(by[(c, baseline)][metric])]
            x = np.array([p[0] for p in pairs], dtype=float)
            y = np.array([p[1] for p in pairs], dtype=float)
            n = len(pairs)
            w_p = t_p = float("nan")
            if n >= 2 and np.any(x != y):
                w_p = float(stats.wilcoxon(x, y).pvalue)
                t_p = float(stats.ttest_rel(x, y).pvalue)
            out.append({"metric": metric, "method": m, "baseline": baseline, "n": n,
                        "mean": float(x.mean()) if n else float("nan"),
                        "baseline_mean": float(y.mean()) if n else float("nan"),
                        "mean_difference": float((x - y).mean()) if n else float("nan"),
                        "wins": int((x > y).sum()), "wilcoxon_p": w_p, "ttest_p": t_p})
    for key in ("wilcoxon_p", "ttest_p"):
        adjusted = holm([float(r[key]) for r in out])
        for r, v in zip(out, adjusted):
            r[f"{key}_holm"] = float(v)
    family = {key: int(np.isfinite(np.array([float(r[key]) for r in out])).sum()) for key in ("wilcoxon_p", "ttest_p")}
    for r in out:
        r["correction"] = (f"{CORRECTION} over {family['wilcoxon_p']} Wilcoxon and {family['ttest_p']} "
                           "t tests (methods x metrics)")
    return out


# -- running -------------------------------------------------------------------------------------


def _fuse_case(pair: LoadedPair, method: str, params: dict[str, Any], opts: dict[str, Any],
               progress: ProgressCallback | None, cancel: CancelToken | None) -> dict[str, Any]:
    """Fuse one case with one method: the sources and fused image for scoring and drawing."""
    from medtorch.fusion.color import ycbcr_to_rgb
    from medtorch.fusion.methods import fuse_arrays

    if pair.two_d:
        assert pair.a is not None and pair.b is not None
        fused, info = fuse_arrays(pair.a, pair.b, method, params, device=opts.get("device"), progress=progress,
                                  cancel=cancel)
        rgb = None
        if pair.chroma is not None:
            ycc = torch.from_numpy(np.concatenate([fused[None].astype(np.float64), pair.chroma], axis=0))
            rgb = np.moveaxis(ycbcr_to_rgb(ycc).clamp(0, 1).numpy(), 0, -1)
        return {"a": pair.a, "b": pair.b, "fused": fused, "rgb": rgb, "info": info, "geometry": None}
    from medtorch.fusion.fuse import fuse_volumes

    fixed, moving = pair.volumes  # type: ignore[misc]
    case = pair.case
    cmap = opts.get("color_map") if case.modality in ("PT", "NM") else None
    res = fuse_volumes(fixed, moving, method, None, params=params, fixed_modality=opts.get("fixed_modality", "auto"),
                       moving_modality=case.modality if case.modality != "AUTO" else "auto",
                       ct_window=opts.get("ct_window", "bone"), color_map=cmap,
                       assume_aligned=opts.get("assume_aligned", False), device=opts.get("device"),
                       progress=progress, cancel=cancel)
    rgb = None if res.rgb is None else res.rgb.array.astype(np.float32) / 255.0
    return {"a": res.fixed_prepared.array, "b": res.moving_prepared.array, "fused": res.fused.array, "rgb": rgb,
            "info": res.info, "geometry": res.fused.geometry}


def _score(a: np.ndarray, b: np.ndarray, f: np.ndarray, mode: str, mi_unit: str,
           metric_set: str = "medtorch") -> dict[str, float]:
    from medtorch.fusion.metrics import fusion_metrics

    if a.ndim == 3 and a.shape[0] == 1:  # a 2D image stored as one slice
        a, b, f = a[0], b[0], f[0]
    m = "2d" if a.ndim == 2 else mode
    vals = fusion_metrics(a, b, f, mode=m, mi_unit=mi_unit, metric_set=metric_set)  # type: ignore[arg-type]
    cols = metric_names(metric_set)
    return {k: float(v) for k, v in vals.items() if k in cols}


def metric_names(metric_set: str = "medtorch") -> tuple[str, ...]:
    """The columns of a metric set: :data:`~medtorch.fusion.metrics.METRICS` or the evaluator's."""
    if str(metric_set).strip().lower() == "cddfuse":
        from medtorch.fusion.evaluator import EVALUATOR_METRICS

        return EVALUATOR_METRICS
    return METRICS


#: draws fused volumes in 3D into a PNG: (png path, [(method, volume), ...]) -> (the PNG or None, why not)
RenderViews = Callable[[Path, "list[tuple[str, Any]]"], "tuple[Path | None, str | None]"]


def evaluate(
    source: str | os.PathLike[str] | Sequence[Case],
    methods: Sequence[str],
    out_dir: str | os.PathLike[str],
    baseline: str = "dwt",
    method_params: dict[str, dict[str, Any]] | None = None,
    metrics_mode: str = "3d",
    mi_unit: str = "bits",
    metric_set: str = "medtorch",
    color_map: str = "hot",
    ct_window: str | tuple[float, float] = "bone",
    assume_aligned: bool = False,
    save_fused: bool = False,
    device: str | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    grid_rows: int = GRID_ROWS,
    render_views: RenderViews | None = None,
) -> EvaluationResult:
    """Run ``methods`` on every case of ``source`` and write the report folder ``out_dir``.

    Args:
        source: a list file or folder (:func:`discover_pairs`), or a list of :class:`Case`.
        methods: method names (:data:`medtorch.fusion.methods.METHODS`); the baseline is
            added if missing.
        baseline: the method the paired tests compare with (DWT: mean approximation, max-abs details, by default).
        method_params: per-method parameters, e.g. ``{"cnn": {"iterations": 50}}``.
        metrics_mode: '3d' or 'slices' for volumes (2D images use 2D metrics).
        metric_set: 'medtorch' (MedTorch's metrics) or 'cddfuse' (the CDDFuse/VIFB evaluator's
            EN, SD, SF, MI, SCD, VIF, Qabf, SSIM: numbers comparable with published tables).
        color_map: colour map for functional volumes (2D RGB images carry their colours).
        save_fused: also write every fused image (``fused/<case>_<method>.nrrd`` or ``.png``).
        grid_rows: how many example pairs the figure grid ``figures/example_grid.png`` shows
            (:func:`example_cases`).
        render_views: for volume pairs, draws each example case's fused volumes in 3D
            (``render_views(png_path, [(method, fused volume), ...])`` gives the PNG, or ``None``
            and why not); the front end passes Slicer's views (``medtorch.slicer.renders``). The
            report shows the renders, or says in one line why there are none.
    """
    from medtorch.fusion.methods import METHODS
    from medtorch.io import write_text_atomic

    cases = list(source) if isinstance(source, (list, tuple)) else discover_pairs(source)  # type: ignore[arg-type]
    names = [str(m).strip().lower() for m in methods]
    for m in names + [baseline]:
        if m not in METHODS:
            raise MedTorchInputError(f"unknown fusion method {m!r}", "use any of " + ", ".join(METHODS))
    if baseline not in names:
        names = [baseline] + names
    names = list(dict.fromkeys(names))
    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    params = {k.lower(): dict(v) for k, v in (method_params or {}).items()}
    opts = {"device": device, "color_map": color_map, "ct_window": ct_window, "assume_aligned": assume_aligned}
    rows: list[dict[str, Any]] = []
    case_figures: list[Path] = []
    renders: list[tuple[Path, str]] = []
    render_notes: list[str] = []
    examples = {c.name for c in example_cases(cases, grid_rows)}
    grid_images: list[tuple[Case, list[np.ndarray]]] = []
    total = len(cases) * len(names)
    step = 0
    for case in cases:
        report(progress, cancel, step / max(total, 1), f"reading {case.name}")
        pair = load_pair(case)
        shown: dict[str, Any] = {}
        for m in names:
            sp = SubProgress(progress, step / total, (step + 1) / total, f"{case.name}: {m}")
            t0 = time.perf_counter()
            res = _fuse_case(pair, m, params.get(m, {}), opts, sp, cancel)
            secs = time.perf_counter() - t0
            scores = _score(res["a"], res["b"], res["fused"], metrics_mode, mi_unit, metric_set)
            info = res["info"]
            seed = info.get("seed")
            if seed is None and isinstance(info.get("params"), dict):
                seed = info["params"].get("seed")
            rows.append({"case": case.name, "pair": case.pair, "method": m, "seconds": round(secs, 4), **scores,
                         "seed": seed if seed is not None else ""})
            shown[m] = res
            if save_fused:
                _save_fused(out, case, m, res)
            step += 1
        images = _views(names, shown)
        case_figures.append(_case_figure(out, case, names, images))
        if render_views is not None and case.name in examples and shown[names[0]]["geometry"] is not None:
            report(progress, cancel, step / max(total, 1), f"{case.name}: rendering the fused volumes in 3D")
            from medtorch.volume import Volume

            fused_volumes = [(m, Volume(np.asarray(shown[m]["fused"], np.float32), shown[m]["geometry"]))
                             for m in names]
            png, why = render_views(out / "figures" / f"case_{case.name.replace('/', '_')}_3d.png", fused_volumes)
            if png is not None:
                renders.append((Path(png), f"{case.name} ({case.pair}): the fused volume of each method, "
                                           f"left to right {', '.join(names)}, volume-rendered in Slicer's 3D view"))
            elif why:
                render_notes.append(why)
        if case.name in examples:
            grid_images.append((case, images))
    report(progress, cancel, 0.95, "statistics and plots")
    cols = metric_names(metric_set)
    stats = paired_tests(rows, names, baseline, cols)
    files = {
        "metrics_csv": _write_csv(out / "metrics.csv", rows, ["case", "pair", "method", "seconds", *cols, "seed"]),
        "stats_csv": _write_csv(out / "stats.csv", stats, STATS_COLUMNS),
        "boxplots": _boxplots(out / "figures" / "boxplots.png", rows, names, cols),
    }
    if grid_images:
        order = [c.name for c in example_cases(cases, grid_rows)]
        grid_images.sort(key=lambda item: order.index(item[0].name))
        files["example_grid"] = example_grid(out / "figures" / "example_grid.png", grid_images, names)
    grid = files.get("example_grid")
    for i, (png, _) in enumerate(renders):
        files[f"render_3d_{i}"] = png
    render_note = None
    if render_notes:
        render_note = (f"Slicer-view renders (the fused volumes in 3D) are not in this report: "
                       f"{'; '.join(dict.fromkeys(render_notes))}.")
    files["report_html"] = _write_html(out, rows, stats, names, baseline, mi_unit, metrics_mode, case_figures, cols,
                                       grid, renders, render_note)
    files["report_md"] = write_text_atomic(out / "report.md", _markdown(rows, stats, names, baseline, mi_unit,
                                                                         metrics_mode, case_figures, out, cols, grid))
    report(progress, cancel, 1.0, "report written")
    return EvaluationResult(out, rows, stats, files)


def _save_fused(out: Path, case: Case, method: str, res: dict[str, Any]) -> None:
    from medtorch.report import save_figure

    d = out / "fused"
    d.mkdir(exist_ok=True)
    safe = case.name.replace("/", "_")
    if res["geometry"] is None:
        plt = _pyplot()
        img = res["rgb"] if res["rgb"] is not None else res["fused"]
        fig = plt.figure(figsize=(img.shape[1] / 100, img.shape[0] / 100), dpi=100)
        fig.figimage(np.clip(img, 0, 1), cmap=None if img.ndim == 3 else "gray", vmin=0, vmax=1)
        save_figure(fig, d / f"{safe}_{method}.png")
    else:
        from medtorch.io import write_volume
        from medtorch.volume import Volume

        write_volume(Volume(res["fused"], res["geometry"], "scalar", {"method": method}), d / f"{safe}_{method}.nrrd")


def _pyplot() -> Any:
    from medtorch.report import _pyplot as pp

    return pp()


def _write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> Path:
    from medtorch.io import write_text_atomic

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    return write_text_atomic(path, buf.getvalue())


def _boxplots(path: Path, rows: list[dict[str, Any]], methods: list[str], cols: Sequence[str] = METRICS) -> Path:
    from medtorch.report import save_figure

    plt = _pyplot()
    ncols = 4
    nrows = int(math.ceil(len(cols) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 3.0 * nrows), squeeze=False)
    for ax, metric in zip(axes.ravel(), cols):
        data = [[r[metric] for r in rows if r["method"] == m and np.isfinite(r[metric])] for m in methods]
        ax.boxplot(data, showmeans=True)
        ax.set_xticks(range(1, len(methods) + 1))
        ax.set_xticklabels(methods, rotation=40, ha="right", fontsize=8)
        ax.set_title(metric, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    for ax in axes.ravel()[len(cols):]:
        ax.set_visible(False)
    fig.tight_layout()
    return save_figure(fig, path)




def example_cases(cases: Sequence[Case], rows: int = GRID_ROWS) -> list[Case]:
    """The example pairs of the figure grid: up to ``rows`` cases, taken in turn from each pair type
    (CT-MRI, PET-MRI, SPECT-MRI, ...) in the order the types first appear, each type's cases in order."""
    groups: dict[str, list[Case]] = {}
    for c in cases:
        groups.setdefault(c.pair, []).append(c)
    picked: list[Case] = []
    depth = 0
    while len(picked) < max(0, int(rows)) and any(depth < len(g) for g in groups.values()):
        for g in groups.values():
            if depth < len(g) and len(picked) < rows:
                picked.append(g[depth])
        depth += 1
    return picked


def _fit_tile(img: np.ndarray, tile: int) -> np.ndarray:
    """``img`` (grey [H, W] or RGB [H, W, 3], values in [0, 1]) resized to fit ``tile`` x ``tile``
    (aspect kept, bilinear) and centred on black, as RGB."""
    from scipy import ndimage

    arr = np.clip(np.nan_to_num(np.asarray(img, dtype=np.float32)), 0.0, 1.0)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    h, w = arr.shape[:2]
    scale = tile / max(h, w)
    nh, nw = max(1, min(tile, round(h * scale))), max(1, min(tile, round(w * scale)))
    res = ndimage.zoom(arr, (nh / h, nw / w, 1), order=1, grid_mode=True, mode="nearest")[:nh, :nw]
    canvas = np.zeros((tile, tile, 3), np.float32)
    y0, x0 = (tile - res.shape[0]) // 2, (tile - res.shape[1]) // 2
    canvas[y0:y0 + res.shape[0], x0:x0 + res.shape[1]] = np.clip(res, 0.0, 1.0)
    return canvas


def example_grid(path: str | os.PathLike[str], examples: Sequence[tuple[Case, Sequence[np.ndarray]]],
                 methods: Sequence[str], tile: int = GRID_TILE) -> Path:
    """A figure grid of example pairs: one row per ``(case, images)`` (images = the fixed source,
    the moving source, then one fused image per method), one column per image.

    The PNG is exactly ``(2 + len(methods)) * tile`` pixels wide and
    ``GRID_HEADER + len(examples) * tile`` high: column titles on top, the case name in each
    row's first image, every image fitted into a ``tile`` x ``tile`` square.
    """
    from medtorch.report import save_figure

    if not examples:
        raise MedTorchInputError("the example grid needs at least one pair", "evaluate at least one case")
    plt = _pyplot()
    ncols = 2 + len(methods)
    width, height = ncols * tile, GRID_HEADER + len(examples) * tile
    dpi = 100
    fig = plt.figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    fig.patch.set_facecolor("black")
    titles = ["fixed (anatomical)", "moving", *methods]
    for j, t in enumerate(titles):
        fig.text((j + 0.5) * tile / width, 1.0 - 0.5 * GRID_HEADER / height, t, color="white", ha="center",
                 va="center", fontsize=8)
    for i, (case, images) in enumerate(examples):
        if len(images) != ncols:
            raise ValueError(f"case {case.name}: {len(images)} images for {ncols} columns")
        for j, img in enumerate(images):
            ax = fig.add_axes((j * tile / width, 1.0 - (GRID_HEADER + (i + 1) * tile) / height, tile / width,
                               tile / height))
            ax.imshow(_fit_tile(img, tile), interpolation="nearest", aspect="auto")
            ax.set_axis_off()
            if j == 0:
                ax.text(3, 3, f"{case.name} ({case.pair})", color="yellow", fontsize=7, va="top", ha="left")
    return save_figure(fig, path, dpi=dpi)


def _views(methods: Sequence[str], shown: dict[str, Any]) -> list[np.ndarray]:
    """The 2D images drawn for one case: fixed, moving, then each method's fused image (its colour
    image where there is one); the middle axial slice of a volume, as a viewer shows it."""
    from medtorch.report import display_volume
    from medtorch.volume import Volume

    first = shown[methods[0]]
    geom = first["geometry"]

    def view(arr: np.ndarray) -> np.ndarray:
        if geom is None:
            return arr
        if arr.ndim == 4:  # RGB volume: each channel reoriented
            chans = [view(arr[..., c]) for c in range(3)]
            return np.stack(chans, axis=-1)
        dv = display_volume(Volume(arr.astype(np.float32), geom))
        return dv.slice("axial", geom.center())

    images = [view(first["a"]), view(first["b"])]
    for m in methods:
        r = shown[m]
        images.append(view(r["rgb"] if r["rgb"] is not None else r["fused"]))
    return images


def _case_figure(out: Path, case: Case, methods: list[str], images: list[np.ndarray]) -> Path:
    from medtorch.report import Panel, panel_figure

    titles = [f"{case.fixed_modality} (fixed)", f"{case.pair.split('-')[0]} (moving)", *methods]
    panels = [Panel(img, t, 0.0, 1.0) for img, t in zip(images, titles)]
    safe = case.name.replace("/", "_")
    return panel_figure(out / "figures" / f"case_{safe}.png", panels, ncols=min(len(panels), 5),
                        title=f"{case.name} ({case.pair})", panel_size=2.6)


def _summary_rows(rows: list[dict[str, Any]], methods: list[str], cols: Sequence[str] = METRICS) -> list[list[Any]]:
    table = []
    for m in methods:
        sel = [r for r in rows if r["method"] == m]
        table.append([m, len(sel)] + [float(np.nanmean([r[k] for r in sel])) if sel else float("nan")
                                      for k in cols] + [float(np.mean([r["seconds"] for r in sel])) if sel else 0.0])
    return table


def _write_html(out: Path, rows: list[dict[str, Any]], stats: list[dict[str, Any]], methods: list[str], baseline: str,
                mi_unit: str, mode: str, case_figures: list[Path], cols: Sequence[str] = METRICS,
                grid: Path | None = None, renders: Sequence[tuple[Path, str]] = (),
                render_note: str | None = None) -> Path:
    from medtorch import __version__
    from medtorch.report import Figure, Section, Table, write_report

    summary = Table("Mean of each metric per method (higher is better)", ["method", "cases", *cols, "seconds"],
                    _summary_rows(rows, methods, cols),
                    note=f"MI in {mi_unit}; volumes scored {mode}, 2D images in 2D; images on the 8-bit scale.")
    stat_rows = [[s["metric"], s["method"], s["n"], s["mean"], s["baseline_mean"], s["mean_difference"], s["wins"],
                  s["wilcoxon_p"], s["wilcoxon_p_holm"], s["ttest_p"], s["ttest_p_holm"]] for s in stats]
    tests = Table(f"Paired tests against the baseline ({baseline})",
                  ["metric", "method", "n", "mean", "baseline mean", "mean difference", "cases better", "Wilcoxon p",
                   f"Wilcoxon p ({CORRECTION})", "paired t p", f"paired t p ({CORRECTION})"], stat_rows,
                  note=_correction_note(stats))
    per_case = Table("Every case and method", ["case", "pair", "method", *cols, "seconds"],
                     [[r["case"], r["pair"], r["method"], *[r[k] for k in cols], r["seconds"]] for r in rows])
    sections = [
        Section("Summary", [f"{len({r['case'] for r in rows})} cases, {len(methods)} methods; baseline {baseline}."],
                [summary]),
        Section("Box plots", figures=[Figure("figures/boxplots.png", "Each metric per method over the cases")]),
        Section("Paired tests", tables=[tests]),
        *([Section("Example pairs", figures=[Figure(grid.relative_to(out).as_posix(),
                                                    "Rows: example pairs; columns: the two sources and each "
                                                    "method's fused image")])] if grid is not None else []),
        *([Section("Fused volumes in 3D", figures=[Figure(p.relative_to(out).as_posix(), caption)
                                                    for p, caption in renders])] if renders else []),
        Section("Sources and fused images", [render_note] if render_note else [],
                figures=[Figure(p.relative_to(out).as_posix(), p.stem) for p in case_figures]),
        Section("All values", tables=[per_case], paragraphs=["Also in metrics.csv and stats.csv."]),
    ]
    return write_report(out, "Fusion evaluation", sections,
                        intro=["Metrics as in the fusion literature's common evaluator (medtorch.fusion.metrics): "
                               "EN, SD, SF, AG of the fused image; MI and SSIM summed over both sources (SSIM_sum, 0..2); "
                               "QAB/F (Xydeas-Petrovic); VIF (Sheikh-Bovik pixel VIF, summed)."],
                        footer=f"medtorch {__version__}")


def _fmt(v: Any) -> str:
    from medtorch.report import format_value

    return format_value(v)


def _correction_note(stats: list[dict[str, Any]]) -> str:
    family = stats[0]["correction"] if stats else f"{CORRECTION} (no tests)"
    return ("Two-sided p-values, raw and adjusted for multiple comparisons: " + family + ", each kind of test "
            "its own family (Holm's step-down adjustment controls the family-wise error rate). "
            "NaN where fewer than two paired cases differ.")


def _markdown(rows: list[dict[str, Any]], stats: list[dict[str, Any]], methods: list[str], baseline: str, mi_unit: str,
              mode: str, case_figures: list[Path], out: Path, cols: Sequence[str] = METRICS,
              grid: Path | None = None) -> str:
    lines = ["# Fusion evaluation", "",
             f"{len({r['case'] for r in rows})} cases, {len(methods)} methods; baseline **{baseline}**. "
             f"MI in {mi_unit}; volumes scored {mode}.", "",
             "## Mean of each metric per method", "",
             "| method | cases | " + " | ".join(cols) + " | seconds |",
             "|---" * (len(cols) + 3) + "|"]
    for row in _summary_rows(rows, methods, cols):
        lines.append("| " + " | ".join(_fmt(v) for v in row) + " |")
    lines += ["", "![box plots](figures/boxplots.png)", "", f"## Paired tests against {baseline}", "",
              _correction_note(stats), "",
              "| metric | method | n | mean | baseline mean | difference | cases better | Wilcoxon p | "
              f"Wilcoxon p ({CORRECTION}) | paired t p | paired t p ({CORRECTION}) |",
              "|---" * 11 + "|"]
    for s in stats:
        lines.append("| " + " | ".join(_fmt(s[k]) for k in ("metric", "method", "n", "mean", "baseline_mean",
                                                            "mean_difference", "wins", "wilcoxon_p",
                                                            "wilcoxon_p_holm", "ttest_p", "ttest_p_holm")) + " |")
    if grid is not None:
        lines += ["", "## Example pairs", "", f"![example pairs]({grid.relative_to(out).as_posix()})"]
    lines += ["", "## Sources and fused images", ""]
    lines += [f"![{p.stem}]({p.relative_to(out).as_posix()})" for p in case_figures]
    lines += ["", "Every value: metrics.csv; tests: stats.csv.", ""]
    return "\n".join(lines)
