"""Seeded segmentation on REAL brain tumors: MedTorch beside ITK FastGrowCut (Slicer's *Grow from
seeds*), scikit-image's random walker and an oracle threshold, on the same seeds in the same run.

``python -m benchmarks.segment.real_bench --real-dir DIR [--quick] [--cases ID ...] [--out PATH]
[--workdir DIR] [--threads N] [--no-cli]`` (also run by ``python -m benchmarks.segment --real-dir DIR``).

Data
----
``DIR/<CaseID>/{flair,t1,t1ce,t2,seg}.nii.gz``: FLAIR and ``seg`` are required; the second channel is
T1, else T1ce. The whole tumor (WT = ``seg > 0``) is segmented, with binary seeds (tumor 1,
background 2). A ``SOURCES.md`` and a ``cases.csv`` in DIR are read and quoted in the report. The
data is never copied into the repository: no licence of the cases used here allows redistributing
them (the report says so). ``python -m benchmarks.segment.prepare_real`` writes the folder the
reports used, from clones of the three public repositories that hold the cases.

Split (fixed, independent of any result)
----------------------------------------
Within each source dataset (BraTS 2018 cases ``Brats18_*``, BRATS 2015 cases ``BRATS2015_*``; any
other prefix before the first ``_`` is a dataset of its own) the case IDs are sorted; even
positions (0, 2, 4, ...) are DEVELOPMENT, odd positions HELD-OUT (:func:`split_cases`). A ``split``
column in ``cases.csv`` (``dev``/``held-out``) overrides this per case: a data folder rebuilt with
other cases keeps the cases that chose parameters on the development side, and cases added later,
never seen while choosing, on the held-out side. The development half was used to choose parameters
(the random walker's beta is tuned on it in every run); the held-out half is the result.

Seed protocols (:mod:`medtorch.segment.seed_protocols`, seed = CRC-32 of the case ID)
-----------------------------------------------------------------------------------
``three_slice`` (the headline: strokes on the three orthogonal slices through each lesion's
centre, background ring), ``one_slice`` (the axial slice only), ``click_box`` (4 clicks painted as
2 mm balls and the tumor's bounding box + 7.5 mm; no background seeds: MedTorch gets the box as
``region_box``; the peers, which need background seeds, get the box's one-voxel boundary painted
as background, on the box plus 2 voxels: FastGrowCut leaves seeds on the outermost layer of its
image unused), ``missing_side`` (3-slice strokes, ring missing one half-space), ``scattered``
(3-slice strokes, scattered short background strokes), and three correction rounds from the
3-slice seeds (:func:`~medtorch.segment.seed_protocols.correct`: one stroke where each method's
own result is most wrong). Background seeds are painted inside the brain (FLAIR differs from its
corner value) only.

Methods
-------
* ``medtorch`` -- :class:`~medtorch.segment.seeded.SeededSegmenter` (what ``seeded_segment`` runs)
  on [FLAIR, second channel] with default :class:`~medtorch.segment.seeded.SeededOptions`, through
  one adapter (:func:`medtorch_segment`); rows for option variants (:data:`MEDTORCH_VARIANTS`) are
  added when ``SeededOptions`` has their fields. Correction rounds re-run the same segmenter
  (incremental: features kept), which is also the timed seed edit.
* ``FastGrowCut`` -- ``itk.FastGrowCut`` (itk-growcut, the filter of Slicer's *Grow from seeds*) on
  FLAIR, distance penalty 0, on the seeds' bounding box grown per side by 20 % of its extent (at
  least 3 voxels), which is what the effect does without a mask (``extentGrowthRatio = 0.2``).
  Correction rounds start again from the corrected seeds.
* ``random walker`` -- ``skimage.segmentation.random_walker`` on FLAIR (1st-99th percentile
  scaled) in the same region, ``mode='cg_j'``, ``tol=1e-3``; beta chosen on the development cases'
  3-slice seeds (:data:`RW_BETAS`); dropped for the rest of the run once one case takes more than
  :data:`RW_MAX_S` seconds. It runs on the 3-slice protocol only (``--rw-all-protocols``: all).
* ``oracle threshold`` -- the best single FLAIR threshold (either side) inside the seeds' region,
  chosen with the truth: an upper reference, not a method.

Writes ``docs/benchmarks/segment_real.md`` and ``segment_real.json`` (``--quick``: into the
workdir unless ``--out``).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "benchmarks" / "segment_real.md"

#: protocol key -> (label, seed protocol, background variant)
PROTOCOLS: dict[str, tuple[str, str, str]] = {
    "three_slice": ("3-slice strokes (ring background)", "three_slice", "ring"),
    "one_slice": ("1-slice strokes (axial, ring background)", "one_slice", "ring"),
    "click_box": ("4 clicks + box (tumor box + 7.5 mm)", "click_box", "ring"),
    "missing_side": ("3-slice strokes, ring missing one side", "three_slice", "ring_missing_side"),
    "scattered": ("3-slice strokes, scattered background strokes", "three_slice", "scattered"),
}
CORRECTION_ROUNDS = 3
#: MedTorch rows: name -> SeededOptions overrides (a row is skipped when a field does not exist)
MEDTORCH_VARIANTS: dict[str, dict[str, Any]] = {
    "medtorch": {},
    "medtorch (region competition)": {"method": "competition"},
    "medtorch (region not deepened)": {"region_aspect": 0.0},
    "medtorch (no background hull)": {"background_hull": False},
    "medtorch (GrowCut cavity)": {"growcut_cavity": True},
}
GROWCUT = "FastGrowCut"
RW = "random walker"
ORACLE = "oracle threshold"
RW_BETAS = (130.0, 1000.0, 4000.0)
RW_BETAS_QUICK = (130.0, 2000.0)
RW_MAX_S = 60.0
#: protocols the random walker runs on (it is slow; ``--rw-all-protocols`` runs it on all)
RW_PROTOCOLS = ("three_slice",)
SLICER_EXTENT_GROWTH = 0.2
CLICKS, CLICK_RADIUS_MM, BOX_MARGIN_MM = 4, 2.0, 7.5
TARGETS = {"margin_over_growcut": 0.03, "below_growcut_fraction": 0.1, "worst": 0.80, "first_s": 2.0,
           "edit_s": 0.5, "cli_s": 5.0}
DATASETS = {"Brats18_": "BraTS 2018", "BRATS2015_": "BRATS 2015"}


# -- cases -----------------------------------------------------------------------------------------


def dataset_of(case_id: str) -> str:
    """The source dataset of a case ID: BraTS 2018 (``Brats18_*``), BRATS 2015 (``BRATS2015_*``),
    else the text before the first ``_``."""
    for prefix, name in DATASETS.items():
        if case_id.startswith(prefix):
            return name
    return case_id.split("_", 1)[0]


def split_cases(case_ids: Sequence[str], fixed: Mapping[str, str] | None = None) -> dict[str, str]:
    """``{case: "dev" | "held-out"}``: a case named in ``fixed`` keeps the split given there (the
    ``split`` column of the data folder's ``cases.csv``, :func:`read_fixed_split`); the others, within
    each dataset, sorted, are development at even positions and held-out at odd positions."""
    fixed = fixed or {}
    out: dict[str, str] = {c: fixed[c] for c in case_ids if c in fixed}
    groups: dict[str, list[str]] = {}
    for c in case_ids:
        if c not in out:
            groups.setdefault(dataset_of(c), []).append(c)
    for ids in groups.values():
        for i, c in enumerate(sorted(ids)):
            out[c] = "dev" if i % 2 == 0 else "held-out"
    return out


def read_cases_csv(real_dir: Path) -> list[dict[str, str]]:
    """The rows of ``real_dir/cases.csv`` (``[]`` when there is none), the case ID under ``case_id``
    whether the file names that column ``case_id`` or ``case``."""
    cc = Path(real_dir) / "cases.csv"
    if not cc.exists():
        return []
    with open(cc, newline="", encoding="utf-8") as fh:
        return [dict(r, case_id=(r.get("case_id") or r.get("case") or "").strip()) for r in csv.DictReader(fh)]


def read_fixed_split(real_dir: Path) -> dict[str, str]:
    """The ``split`` column of ``real_dir/cases.csv`` (``dev`` or ``held-out`` per case; case column
    ``case_id`` or ``case``), or ``{}`` when there is none. A folder rebuilt with other cases keeps
    the cases that chose parameters on the development side this way, whatever their sorted position."""
    out: dict[str, str] = {}
    for r in read_cases_csv(real_dir):
        case, split = r["case_id"], (r.get("split") or "").strip()
        if not case or not split:
            continue
        if split not in ("dev", "held-out"):
            raise ValueError(f"{Path(real_dir) / 'cases.csv'}: case {case} has split {split!r}; "
                             "use 'dev' or 'held-out'")
        out[case] = split
    return out


def find_cases(real_dir: Path) -> list[str]:
    """Sub-folders of ``real_dir`` holding ``flair.nii.gz`` and ``seg.nii.gz``, sorted."""
    return sorted(p.name for p in Path(real_dir).iterdir()
                  if p.is_dir() and (p / "flair.nii.gz").exists() and (p / "seg.nii.gz").exists())


def case_seed(case_id: str) -> int:
    return int(zlib.crc32(case_id.encode("utf-8")) & 0x7FFFFFFF)


@dataclasses.dataclass
class Case:
    id: str
    dataset: str
    split: str
    flair: Any  # Volume
    second: Any  # Volume or None
    second_name: str | None
    truth: Any  # Volume, WT 0/1
    brain: np.ndarray

    @property
    def channels(self) -> list[Any]:
        return [self.flair] + ([self.second] if self.second is not None else [])


def load_case(real_dir: Path, case_id: str, split: str) -> Case:
    from medtorch.io import read_volume
    from medtorch.volume import Volume

    d = Path(real_dir) / case_id
    flair = read_volume(d / "flair.nii.gz")
    flair = Volume(np.asarray(flair.array, np.float32), flair.geometry, "scalar", {"channel": "flair"})
    second, name = None, None
    for ch in ("t1", "t1ce"):
        if (d / f"{ch}.nii.gz").exists():
            v = read_volume(d / f"{ch}.nii.gz")
            second, name = Volume(np.asarray(v.array, np.float32), v.geometry, "scalar", {"channel": ch}), ch
            break
    seg = read_volume(d / "seg.nii.gz", kind="label")
    wt = (np.asarray(seg.array) > 0.5).astype(np.uint8)
    if not wt.any():
        raise ValueError(f"{case_id}: the label map has no tumor voxel")
    a = flair.array
    brain = a != a[0, 0, 0]  # skull-stripped: the background is one constant value
    return Case(case_id, dataset_of(case_id), split, flair, second, name, Volume(wt, seg.geometry, "label"), brain)


# -- regions ---------------------------------------------------------------------------------------


def slicer_region(seeds: np.ndarray, ratio: float = SLICER_EXTENT_GROWTH, minimum: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Voxel bounds ``(lo, hi)`` (``[z, y, x]``, hi exclusive) of the seeds' bounding box grown per
    side by ``ratio`` of its extent, at least ``minimum`` voxels (Slicer's auto-complete effects:
    ``margin = int(max(3, extentGrowthRatio * (last - first)))``), clipped to the image."""
    idx = np.argwhere(seeds > 0)
    first, last = idx.min(0), idx.max(0)
    margin = np.array([int(max(minimum, ratio * (b - a))) for a, b in zip(first, last)])
    lo = np.maximum(first - margin, 0)
    hi = np.minimum(last + margin + 1, np.asarray(seeds.shape))
    return lo, hi


def box_region(box: Any, geometry: Any) -> tuple[np.ndarray, np.ndarray]:
    """Voxel bounds ``(lo, hi)`` (``[z, y, x]``, hi exclusive) of the voxels inside ``box``."""
    from medtorch.volume import Geometry

    signs = np.array([[a, b, c] for a in (-1, 1) for b in (-1, 1) for c in (-1, 1)], float)
    corners = np.asarray(box.center, float) + (signs * np.asarray(box.half_size, float)) @ np.asarray(box.axes, float).T
    ijk = geometry.physical_to_index(corners)
    size = np.asarray(geometry.size)
    lo = np.clip(np.floor(ijk.min(0)).astype(int) - 1, 0, size)
    hi = np.clip(np.ceil(ijk.max(0)).astype(int) + 2, 0, size)
    sub = Geometry(tuple(int(v) for v in hi - lo), geometry.index_to_physical(lo[None].astype(float))[0],
                   geometry.spacing, geometry.direction)
    idx = np.argwhere(box.mask(sub))
    return idx.min(0) + lo[::-1], idx.max(0) + 1 + lo[::-1]


def box_shell_seeds(seeds: np.ndarray, lo: np.ndarray, hi: np.ndarray, background: int) -> np.ndarray:
    """``seeds`` plus the one-voxel boundary of the region ``[lo, hi)`` painted as ``background``
    (what a method without a box needs to be given for the click-and-box protocol)."""
    out = seeds.copy()
    shell = np.zeros(seeds.shape, bool)
    sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    shell[sl] = True
    inner = tuple(slice(int(a) + 1, int(b) - 1) for a, b in zip(lo, hi))
    shell[inner] = False
    out[shell & (out == 0)] = background
    return out


# -- methods ---------------------------------------------------------------------------------------


def medtorch_variants() -> dict[str, dict[str, Any]]:
    """:data:`MEDTORCH_VARIANTS` whose option fields exist in today's ``SeededOptions``."""
    from medtorch.segment.seeded import SeededOptions

    names = {f.name for f in dataclasses.fields(SeededOptions)}
    return {k: v for k, v in MEDTORCH_VARIANTS.items() if set(v) <= names}


def medtorch_segment(channels: Sequence[Any], seeds: Any, box: Any = None, options: dict[str, Any] | None = None,
                     segmenter: Any = None) -> tuple[Any, Any, float]:
    """THE adapter every MedTorch row goes through: ``(result, segmenter, wall seconds)``.

    A first run makes a :class:`~medtorch.segment.seeded.SeededSegmenter` (as ``seeded_segment``
    does) with ``SeededOptions(**options)`` and ``region_box=box``; a run given ``segmenter``
    re-runs it (an edit: features kept)."""
    from medtorch.segment.seeded import SeededOptions, SeededSegmenter

    t0 = time.perf_counter()
    if segmenter is None:
        segmenter = SeededSegmenter(list(channels), SeededOptions(**(options or {})), region_box=box)
    res = segmenter.segment(seeds)
    return res, segmenter, time.perf_counter() - t0


def growcut_segment(flair: np.ndarray, seeds: np.ndarray, region: tuple[np.ndarray, np.ndarray],
                    spacing_zyx: Sequence[float]) -> tuple[np.ndarray, float]:
    """ITK FastGrowCut on ``flair`` in ``region`` (distance penalty 0, the region as Slicer's effect
    gives it: no padding): the voxels given class 1."""
    from medtorch.segment.growcut import fast_growcut

    t0 = time.perf_counter()
    sl = tuple(slice(int(a), int(b)) for a, b in zip(*region))
    out = np.zeros(seeds.shape, np.uint8)
    out[sl] = fast_growcut(flair[sl], seeds[sl], spacing_zyx, pad=0) == 1
    return out, time.perf_counter() - t0


def random_walker_segment(flair: np.ndarray, seeds: np.ndarray, region: tuple[np.ndarray, np.ndarray],
                          beta: float) -> tuple[np.ndarray, float]:
    from skimage.segmentation import random_walker

    t0 = time.perf_counter()
    sl = tuple(slice(int(a), int(b)) for a, b in zip(*region))
    a = flair[sl].astype(np.float32)
    p1, p99 = np.percentile(a, (1, 99))
    a = (a - p1) / max(float(p99 - p1), 1e-6)
    lab = random_walker(a, seeds[sl].astype(np.int32), beta=beta, mode="cg_j", tol=1e-3)
    out = np.zeros(seeds.shape, np.uint8)
    out[sl] = np.asarray(lab) == 1
    return out, time.perf_counter() - t0


def best_threshold(flair: np.ndarray, truth: np.ndarray, region: tuple[np.ndarray, np.ndarray]) -> tuple[float, float, str]:
    """The oracle: ``(Dice, threshold, side)`` of the best ``flair >= t`` (or ``<= t``) inside the
    region, against the whole truth (its voxels outside the region are misses)."""
    sl = tuple(slice(int(a), int(b)) for a, b in zip(*region))
    v = flair[sl].ravel()
    tf = truth[sl].ravel() > 0
    total = int((truth > 0).sum())
    order = np.argsort(v, kind="stable")
    v, tf = v[order], tf[order]
    n = len(v)
    # label = v >= v[i] for i where v changes (and v <= v[i])
    starts = np.flatnonzero(np.r_[True, v[1:] != v[:-1]])
    tp_suffix = np.cumsum(tf[::-1])[::-1]  # truth voxels in v[i:]
    tp_up = tp_suffix[starts]
    p_up = n - starts
    d_up = 2.0 * tp_up / np.maximum(p_up + total, 1)
    ends = np.r_[starts[1:], n]  # label = v <= v[end-1]
    tp_prefix = np.cumsum(tf)
    tp_dn = tp_prefix[ends - 1]
    d_dn = 2.0 * tp_dn / np.maximum(ends + total, 1)
    iu, idn = int(np.argmax(d_up)), int(np.argmax(d_dn))
    if d_up[iu] >= d_dn[idn]:
        return float(d_up[iu]), float(v[starts[iu]]), ">="
    return float(d_dn[idn]), float(v[ends[idn] - 1]), "<="


def dice(a: np.ndarray, b: np.ndarray) -> float:
    from medtorch.segment.metrics import dice as _dice

    return float(_dice(np.asarray(a) > 0, np.asarray(b) > 0))


# -- one case --------------------------------------------------------------------------------------


def _row(case: Case, protocol: str, method: str, **kw: Any) -> dict[str, Any]:
    return {"case": case.id, "dataset": case.dataset, "split": case.split, "protocol": protocol, "method": method, **kw}


def _err(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"


def protocol_seeds(case: Case, key: str) -> Any:
    from medtorch.segment import seed_protocols as sp

    _, protocol, background = PROTOCOLS[key]
    seed = case_seed(case.id)
    if protocol == "click_box":
        return sp.clicks_and_box(case.truth, n_clicks=CLICKS, radius_mm=CLICK_RADIUS_MM, margin_mm=BOX_MARGIN_MM, seed=seed)
    return sp.make_protocol_seeds(protocol, case.truth, background=background, seed=seed, within=case.brain)


def _verdict_of(res: Any) -> dict[str, Any]:
    """The result's verdict (status and the checks that warned or failed), where the method gives one."""
    v = getattr(res, "verdict", None)
    if v is None:
        return {}
    return {"verdict": v.status, "verdict_reasons": [c.name for c in v.reasons],
            "verdict_values": {c.name: c.value for c in v.checks}}


def _verdict_table(rows: list[dict[str, Any]], split: str) -> list[str]:
    """MedTorch's verdict against the truth's Dice: every MedTorch run of the split (first runs of every
    protocol and option row, and correction rounds)."""
    runs = [r for r in rows if r.get("split") == split and "verdict" in r and "dice" in r]
    if not runs:
        return ["No MedTorch run carried a verdict."]
    out = ["| verdict | runs | mean Dice | worst Dice | runs with Dice < 0.80 |", "| --- | ---: | ---: | ---: | ---: |"]
    for status in ("pass", "warn", "fail"):
        d = [r["dice"] for r in runs if r["verdict"] == status]
        out.append(f"| {status} | {len(d)} | {_fmt(float(np.mean(d)) if d else None)} | "
                   f"{_fmt(float(np.min(d)) if d else None)} | {sum(x < 0.8 for x in d)} |")
    bad = [r for r in runs if r["dice"] < 0.8]
    missed = [r for r in bad if r["verdict"] == "pass"]
    alarms = [r for r in runs if r["dice"] >= 0.85 and r["verdict"] != "pass"]
    out += ["", f"* Runs with Dice < 0.80: {len(bad)}, of which the verdict flagged {len(bad) - len(missed)} "
            f"(warn or fail) and passed {len(missed)}"
            + (": " + ", ".join(f"{r['case']} / {r['protocol']} / {r['method']} ({r['dice']:.3f})" for r in missed)
               if missed else "") + ".",
            f"* False alarms (Dice >= 0.85, yet warn or fail): {len(alarms)} of "
            f"{sum(r['dice'] >= 0.85 for r in runs)}"
            + (": " + ", ".join(f"{r['case']} / {r['protocol']} / {r['method']} ({r['dice']:.3f}; "
                                f"{', '.join(r.get('verdict_reasons', []))})" for r in alarms) if alarms else "") + "."]
    return out


def run_case(case: Case, protocols: Sequence[str], methods: Sequence[str], rw_beta: float | None,
             rounds: int = CORRECTION_ROUNDS, log: Any = print,
             rw_protocols: Sequence[str] = RW_PROTOCOLS) -> list[dict[str, Any]]:
    """Every (protocol, method) on one case, each guarded: a failure is a row with ``error``."""
    from medtorch.segment import seed_protocols as sp

    rows: list[dict[str, Any]] = []
    truth = case.truth.array
    flair = case.flair.array
    spacing = np.asarray(case.flair.geometry.spacing, float)[::-1]
    variants = {k: v for k, v in medtorch_variants().items() if k in methods}
    state: dict[str, Any] = {}  # 3-slice results for the correction rounds
    for key in protocols:
        try:
            ps = protocol_seeds(case, key)
        except Exception as e:  # noqa: BLE001 - a failure is a row
            rows.append(_row(case, key, "(seeds)", error=_err(e)))
            continue
        seeds = ps.seeds.array
        bgv = ps.background
        if ps.box is not None:
            box = box_region(ps.box, case.flair.geometry)
            peer_seeds = box_shell_seeds(seeds, box[0], box[1], bgv)
            # the peers' region: the box plus 2 voxels, so that the painted box boundary is not the edge
            # of the image FastGrowCut gets (it leaves seeds on its image's outermost layer unused)
            region = (np.maximum(box[0] - 2, 0), np.minimum(box[1] + 2, np.asarray(seeds.shape)))
        else:
            box = region = slicer_region(seeds)
            peer_seeds = seeds
        region_vox = int(np.prod(region[1] - region[0]))
        for name, opts in variants.items():
            try:
                res, segm, wall = medtorch_segment(case.channels, ps.seeds, ps.box, opts)
                lab = res.label.array
                rows.append(_row(case, key, name, dice=dice(lab, truth), seconds=float(res.seconds.get("total", np.nan)),
                                 wall=wall, steps={k: round(float(v), 3) for k, v in res.seconds.items()},
                                 region_voxels=int(np.prod(np.asarray(res.region[1]) - np.asarray(res.region[0]))),
                                 **_verdict_of(res)))
                if key == "three_slice":
                    state[name] = (segm, lab)
            except Exception as e:  # noqa: BLE001
                rows.append(_row(case, key, name, error=_err(e)))
        if GROWCUT in methods:
            try:
                lab, wall = growcut_segment(flair, peer_seeds, region, spacing)
                rows.append(_row(case, key, GROWCUT, dice=dice(lab, truth), seconds=wall, wall=wall, region_voxels=region_vox))
                if key == "three_slice":
                    state[GROWCUT] = (None, lab)
            except Exception as e:  # noqa: BLE001
                rows.append(_row(case, key, GROWCUT, error=_err(e)))
        if RW in methods and rw_beta is not None and key in rw_protocols:
            try:
                lab, wall = random_walker_segment(flair, peer_seeds, region, rw_beta)
                rows.append(_row(case, key, RW, dice=dice(lab, truth), seconds=wall, wall=wall, beta=rw_beta,
                                 region_voxels=region_vox))
            except Exception as e:  # noqa: BLE001
                rows.append(_row(case, key, RW, error=_err(e)))
        if ORACLE in methods:
            try:
                d, thr, side = best_threshold(flair, truth, box)
                rows.append(_row(case, key, ORACLE, dice=d, threshold=thr, side=side, region_voxels=region_vox))
            except Exception as e:  # noqa: BLE001
                rows.append(_row(case, key, ORACLE, error=_err(e)))
        log(f"[real] {case.id} {key}: " + ", ".join(
            f"{r['method']} {r['dice']:.3f}" if "dice" in r else f"{r['method']} ERROR" for r in rows
            if r["protocol"] == key))
    # -- correction rounds from the 3-slice seeds: one stroke where each method's own result is worst
    if rounds > 0 and "three_slice" in protocols:
        base = protocol_seeds(case, "three_slice").seeds
        for name in list(variants) + ([GROWCUT] if GROWCUT in methods else []):
            if name not in state:
                continue
            segm, lab = state[name]
            seeds = base
            rows.append(_row(case, "corrections", name, round=0, dice=dice(lab, truth)))
            for k in range(1, rounds + 1):
                try:
                    seeds = sp.correct(case.truth, seeds, lab)
                    if name == GROWCUT:
                        lab, wall = growcut_segment(flair, seeds.array, slicer_region(seeds.array), spacing)
                        rows.append(_row(case, "corrections", name, round=k, dice=dice(lab, truth), seconds=wall,
                                         wall=wall, correction=seeds.metadata.get("correction")))
                    else:
                        res, segm, wall = medtorch_segment(case.channels, seeds, None, None, segmenter=segm)
                        lab = res.label.array
                        rows.append(_row(case, "corrections", name, round=k, dice=dice(lab, truth),
                                         seconds=float(res.seconds.get("total", np.nan)), wall=wall,
                                         incremental=bool(res.incremental), correction=seeds.metadata.get("correction"),
                                         **_verdict_of(res)))
                except Exception as e:  # noqa: BLE001
                    rows.append(_row(case, "corrections", name, round=k, error=_err(e)))
                    break
            log(f"[real] {case.id} corrections {name}: " + " -> ".join(
                f"{r['dice']:.3f}" if "dice" in r else "ERROR" for r in rows
                if r["protocol"] == "corrections" and r["method"] == name))
    return rows


def tune_random_walker(cases: Sequence[Case], betas: Sequence[float], log: Any = print) -> dict[str, Any]:
    """Beta of the random walker: the best mean WT Dice over the development cases' 3-slice seeds."""
    scores: dict[float, list[float]] = {b: [] for b in betas}
    worst_s = 0.0
    for case in cases:
        ps = protocol_seeds(case, "three_slice")
        region = slicer_region(ps.seeds.array)
        for b in betas:
            lab, wall = random_walker_segment(case.flair.array, ps.seeds.array, region, b)
            scores[b].append(dice(lab, case.truth.array))
            worst_s = max(worst_s, wall)
            log(f"[real] tuning the random walker on {case.id}: beta {b:g} Dice {scores[b][-1]:.3f} ({wall:.1f} s)")
            if wall > RW_MAX_S:
                return {"beta": None, "scores": {str(k): v for k, v in scores.items()}, "worst_s": worst_s,
                        "skipped": f"a run took {wall:.0f} s (> {RW_MAX_S:.0f} s) on {case.id}"}
    best = max(betas, key=lambda b: (np.mean(scores[b]) if scores[b] else -1.0))
    return {"beta": best, "scores": {str(k): v for k, v in scores.items()}, "worst_s": worst_s,
            "cases": [c.id for c in cases]}


def time_cli(case: Case, work: Path, threads: int) -> dict[str, Any]:
    """Wall time of one ``medtorch segment --in FLAIR --in SECOND --seeds S`` in a subprocess
    (interpreter start, imports, reading and writing the files included)."""
    from medtorch.io import write_volume

    d = work / "cli"
    d.mkdir(parents=True, exist_ok=True)
    ps = protocol_seeds(case, "three_slice")
    paths = {"flair": d / "flair.nii.gz", "seeds": d / "seeds.nii.gz"}
    write_volume(case.flair, paths["flair"])
    write_volume(ps.seeds, paths["seeds"])
    cmd = [sys.executable, "-m", "medtorch", "segment", "--in", str(paths["flair"])]
    if case.second is not None:
        paths["second"] = d / f"{case.second_name}.nii.gz"
        write_volume(case.second, paths["second"])
        cmd += ["--in", str(paths["second"])]
    out = d / "tumor.nii.gz"
    cmd += ["--seeds", str(paths["seeds"]), "--out", str(out)]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["OMP_NUM_THREADS"] = str(threads)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - t0
    rec: dict[str, Any] = {"case": case.id, "wall": wall, "exit": proc.returncode,
                           "command": "medtorch segment --in flair.nii.gz" + (f" --in {case.second_name}.nii.gz"
                                                                              if case.second is not None else "")
                           + " --seeds seeds.nii.gz --out tumor.nii.gz"}
    if proc.returncode != 0:
        rec["error"] = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
    else:
        from medtorch.io import read_volume

        rec["dice"] = dice(read_volume(out, kind="label").array, case.truth.array)
    for p in list(paths.values()) + [out]:
        p.unlink(missing_ok=True)  # derived from the cases: not left behind
    return rec


# -- report ----------------------------------------------------------------------------------------


def _fmt(v: Any, nd: int = 3) -> str:
    return "–" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.{nd}f}"


def _methods_in(rows: list[dict[str, Any]]) -> list[str]:
    order = list(MEDTORCH_VARIANTS) + [GROWCUT, RW, ORACLE]
    have = {r["method"] for r in rows}
    return [m for m in order if m in have]


def _dice_table(rows: list[dict[str, Any]], split: str, protocol: str = "three_slice") -> tuple[list[str], dict[str, Any]]:
    mine = [r for r in rows if r["split"] == split and r["protocol"] == protocol]
    cases = sorted({r["case"] for r in mine})
    methods = _methods_in(mine)
    get = {(r["case"], r["method"]): r for r in mine}
    head = "| Case | dataset | " + " | ".join(methods) + " | medtorch compute / wall (s) | FastGrowCut (s) |"
    lines = [head, "| --- | --- | " + " | ".join("---:" for _ in methods) + " | ---: | ---: |"]
    for c in cases:
        cells = []
        for m in methods:
            r = get.get((c, m))
            cells.append("–" if r is None else ("error" if "error" in r else _fmt(r["dice"])))
        mt, gc = get.get((c, "medtorch"), {}), get.get((c, GROWCUT), {})
        lines.append(f"| {c} | {next(r['dataset'] for r in mine if r['case'] == c)} | " + " | ".join(cells)
                     + f" | {_fmt(mt.get('seconds'), 2)} / {_fmt(mt.get('wall'), 2)} | {_fmt(gc.get('wall'), 2)} |")
    stats: dict[str, Any] = {}
    for m in methods:
        d = [get[(c, m)]["dice"] for c in cases if (c, m) in get and "dice" in get[(c, m)]]
        below = [c for c in cases if (c, m) in get and (c, GROWCUT) in get and "dice" in get[(c, m)]
                 and "dice" in get[(c, GROWCUT)] and get[(c, m)]["dice"] < get[(c, GROWCUT)]["dice"]]
        errors = [c for c in cases if (c, m) in get and "error" in get[(c, m)]]
        stats[m] = {"n": len(d), "mean": float(np.mean(d)) if d else None, "worst": float(np.min(d)) if d else None,
                    "below_growcut": len(below), "errors": len(errors)}
    lines.append("| **mean** | | " + " | ".join(_fmt(stats[m]["mean"]) for m in methods) + " | | |")
    lines.append("| **worst** | | " + " | ".join(_fmt(stats[m]["worst"]) for m in methods) + " | | |")
    lines.append("| **cases below FastGrowCut** | | " + " | ".join(
        "–" if m == GROWCUT else f"{stats[m]['below_growcut']} of {stats[m]['n']}" for m in methods) + " | | |")
    if any(s["errors"] for s in stats.values()):
        lines.append("| **errors** | | " + " | ".join(str(stats[m]["errors"]) for m in methods) + " | | |")
    return lines, stats


def _protocol_table(rows: list[dict[str, Any]], split: str) -> tuple[list[str], dict[str, dict[str, Any]]]:
    mine = [r for r in rows if r["split"] == split and r["protocol"] in PROTOCOLS]
    methods = _methods_in(mine)
    lines = ["| Protocol | " + " | ".join(f"{m} mean (worst)" for m in methods) + " | medtorch below FastGrowCut |",
             "| --- | " + " | ".join("---:" for _ in methods) + " | ---: |"]
    means: dict[str, dict[str, Any]] = {}
    for key, (label, _, _) in PROTOCOLS.items():
        at = [r for r in mine if r["protocol"] == key]
        if not at:
            continue
        cells = []
        for m in methods:
            d = [r["dice"] for r in at if r["method"] == m and "dice" in r]
            e = sum(1 for r in at if r["method"] == m and "error" in r)
            means.setdefault(key, {})[m] = float(np.mean(d)) if d else None
            cell = f"{np.mean(d):.3f} ({np.min(d):.3f})" if d else "–"
            cells.append(cell + (f", {e} error(s)" if e else ""))
        by = {(r["case"], r["method"]): r.get("dice") for r in at}
        cs = sorted({r["case"] for r in at})
        below = sum(1 for c in cs if by.get((c, "medtorch")) is not None and by.get((c, GROWCUT)) is not None
                    and by[(c, "medtorch")] < by[(c, GROWCUT)])
        n = sum(1 for c in cs if by.get((c, "medtorch")) is not None and by.get((c, GROWCUT)) is not None)
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {below} of {n} |")
    return lines, means


def _corrections_table(rows: list[dict[str, Any]], split: str) -> list[str]:
    mine = [r for r in rows if r["split"] == split and r["protocol"] == "corrections"]
    methods = [m for m in _methods_in(mine)]
    if not mine:
        return ["(no correction rounds)"]
    lines = ["| Round | " + " | ".join(f"{m} mean (worst)" for m in methods) + " |",
             "| --- | " + " | ".join("---:" for _ in methods) + " |"]
    for k in range(CORRECTION_ROUNDS + 1):
        cells = []
        for m in methods:
            d = [r["dice"] for r in mine if r["method"] == m and r.get("round") == k and "dice" in r]
            e = sum(1 for r in mine if r["method"] == m and r.get("round") == k and "error" in r)
            cells.append((f"{np.mean(d):.3f} ({np.min(d):.3f})" if d else "–") + (f", {e} error(s)" if e else ""))
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return lines


def _quote_sources(real_dir: Path, used: Sequence[str]) -> list[str]:
    lines: list[str] = []
    src = real_dir / "SOURCES.md"
    if src.exists():
        text = src.read_text(encoding="utf-8", errors="replace")
        cut = text.find("## Per-case provenance")
        text = text[:cut] if cut > 0 else text
        lines += ["From `SOURCES.md` in the data folder (quoted up to its per-case provenance):", ""]
        lines += ["> " + ln if ln.strip() else ">" for ln in text.strip().splitlines()]
        lines.append("")
    else:
        lines += ["(no `SOURCES.md` in the data folder: the cases' origin is not documented there)", ""]
    recs = [r for r in read_cases_csv(real_dir) if r["case_id"] in set(used)]
    if recs:
        keys = [k for k in ("case_id", "split", "source_repo", "commit", "channels", "label_values", "wt_voxels", "dataset")
                if k in recs[0]]
        lines += ["From `cases.csv` (the cases used):", "", "| " + " | ".join(keys) + " |",
                  "| " + " | ".join("---" for _ in keys) + " |"]
        lines += ["| " + " | ".join(str(r.get(k, "")).replace("|", "/") for k in keys) + " |" for r in recs]
        lines.append("")
    return lines


def summarise(rows: list[dict[str, Any]], cli: dict[str, Any] | None) -> dict[str, Any]:
    _, held = _dice_table(rows, "held-out")
    _, dev = _dice_table(rows, "dev")
    _, pmeans = _protocol_table(rows, "held-out")
    out: dict[str, Any] = {"held_out_three_slice": held, "dev_three_slice": dev, "held_out_protocols": pmeans}
    mt = [r for r in rows if r["method"] == "medtorch" and r["split"] == "held-out"]
    first = [r for r in mt if r["protocol"] == "three_slice" and "seconds" in r]
    edits = [r for r in mt if r["protocol"] == "corrections" and r.get("round", 0) > 0 and "seconds" in r]
    out["medtorch_first_s"] = [r["seconds"] for r in first]
    out["medtorch_first_wall"] = [r["wall"] for r in first]
    out["medtorch_edit_s"] = [r["seconds"] for r in edits]
    out["medtorch_edit_wall"] = [r["wall"] for r in edits]
    out["cli"] = cli
    gc_best = max((v.get(GROWCUT) for v in pmeans.values() if v.get(GROWCUT) is not None), default=None)
    targets: dict[str, Any] = {}
    h_mt, h_gc = held.get("medtorch", {}), held.get(GROWCUT, {})
    if h_mt.get("mean") is not None and h_gc.get("mean") is not None:
        need = h_gc["mean"] + TARGETS["margin_over_growcut"]
        targets["mean_vs_growcut"] = (h_mt["mean"], need, h_mt["mean"] >= need)
        frac = h_mt["below_growcut"] / max(h_mt["n"], 1)
        targets["below_growcut"] = (f"{h_mt['below_growcut']} of {h_mt['n']}", TARGETS["below_growcut_fraction"],
                                    frac <= TARGETS["below_growcut_fraction"])
    if h_mt.get("worst") is not None:
        targets["worst"] = (h_mt["worst"], TARGETS["worst"], h_mt["worst"] >= TARGETS["worst"])
    cb = pmeans.get("click_box", {}).get("medtorch")
    targets["click_box_vs_growcut_best"] = (cb, gc_best, (cb is not None and gc_best is not None and cb >= gc_best))
    if first:
        v = float(np.max(out["medtorch_first_s"]))
        targets["first_s"] = (v, TARGETS["first_s"], v <= TARGETS["first_s"])
    if edits:
        v = float(np.median(out["medtorch_edit_s"]))
        targets["edit_s"] = (v, TARGETS["edit_s"], v <= TARGETS["edit_s"])
    if cli and "wall" in cli and cli.get("exit") == 0:
        targets["cli_s"] = (cli["wall"], TARGETS["cli_s"], cli["wall"] <= TARGETS["cli_s"])
    out["targets"] = targets
    out["growcut_best_protocol_mean"] = gc_best
    return out


def write_report(path: Path, rows: list[dict[str, Any]], meta: dict[str, Any], cli: dict[str, Any] | None) -> dict[str, Any]:
    summary = summarise(rows, cli)
    real_dir = Path(meta["real_dir"])
    split = meta["split"]
    dev_ids = sorted(c for c, s in split.items() if s == "dev")
    held_ids = sorted(c for c, s in split.items() if s == "held-out")
    quick = " (QUICK RUN: a subset of the cases, not the result)" if meta.get("quick") else ""
    lines = [
        "# Segmentation: seeded segmentation of real brain tumors" + quick,
        "",
        "Generated by `python -m benchmarks.segment.real_bench --real-dir DIR" + "".join(f" {a}" for a in meta["argv"])
        + "` (do not edit by hand).",
        "",
        "**The image data is NOT in this repository and must not be committed**: no licence of these cases allows "
        "redistribution (BraTS 2018 terms give no redistribution right; the BRATS 2015 copies are CC BY-NC-SA). Only "
        "per-case Dice values and times are reported here. Where the data came from:",
        "",
    ]
    lines += _quote_sources(real_dir, meta["cases"])
    lines += [
        "## Set-up",
        "",
        f"* Cases: {len(meta['cases'])} ({', '.join(f'{k}: {v}' for k, v in meta['datasets'].items())}); whole tumor "
        "(WT = label > 0) segmented from binary seeds (tumor 1, background 2). Channels: FLAIR and the second channel "
        "(T1 where the case has it, else T1ce).",
        ("* Split, fixed before any result and independent of them: the `split` column of the data folder's "
         "`cases.csv` (the cases on the development side when parameters were chosen stay development; cases added "
         "to the folder later, never seen while choosing, are held-out), and for cases it does not list, "
         if (meta.get("split_source") or ("cases.csv" if real_dir.is_dir() and read_fixed_split(real_dir) else ""))
         == "cases.csv" else "* Split, fixed before any result and independent of them: ")
        + "within each source dataset the sorted case IDs at "
        "even positions are DEVELOPMENT, at odd positions HELD-OUT. The development half was used to choose "
        "parameters (and tunes the random walker's beta in every run); **the held-out half is the result**.",
        f"  * development: {', '.join(dev_ids) or '–'}",
        f"  * held-out: {', '.join(held_ids) or '–'}",
        "* Seeds (`medtorch.segment.seed_protocols`, seed = CRC-32 of the case ID; background seeds inside the brain "
        "only): " + "; ".join(f"`{k}`: {v[0]}" for k, v in PROTOCOLS.items())
        + f"; `corrections`: {CORRECTION_ROUNDS} rounds from the 3-slice seeds, each adding one stroke (2 voxels wide) "
        "where the method's own result is most wrong (largest connected error, on the slice through its centroid), "
        "labelled with the truth.",
        "* Methods: `medtorch` = `SeededSegmenter` (as `seeded_segment`) on FLAIR + second channel, default options"
        + (", plus " + ", ".join(f"`{k}` ({', '.join(f'{a}={b!r}' for a, b in v.items())})"
                                 for k, v in meta["variants"].items() if v) if any(meta["variants"].values()) else "")
        + (f"; option rows skipped (no such `SeededOptions` field): {', '.join(meta['variants_skipped'])}"
           if meta["variants_skipped"] else "")
        + "; correction rounds re-run the same segmenter (features kept: the timed seed edit). "
        f"`{GROWCUT}` = `itk.FastGrowCut` (itk-growcut {meta['itk_growcut']}, Slicer's *Grow from seeds* filter) on "
        "FLAIR, distance penalty 0, on the seeds' bounding box grown per side by 20 % of its extent (at least 3 "
        "voxels), as the effect does without a mask; its correction runs start again from the corrected seeds. "
        f"`{RW}` = skimage `random_walker` on FLAIR in the same region (cg_j, tol 1e-3; protocols "
        f"{', '.join(meta['rw_protocols'])} only: it is slow), "
        + (f"beta {meta['rw']['beta']:g} chosen on the development cases among {meta['rw_betas']}"
           if meta.get("rw", {}).get("beta") is not None else f"not run ({meta.get('rw', {}).get('skipped', 'not requested')})")
        + (f" (then dropped: {meta['rw']['skipped_after']})" if meta.get("rw", {}).get("skipped_after") else "")
        + f". `{ORACLE}` = the best single FLAIR threshold inside the same region, chosen WITH the truth (an upper "
        "reference, not a method). Click-and-box: MedTorch gets the clicks and the box (`region_box`), no background "
        "seed; FastGrowCut and the random walker need background seeds and get the box's one-voxel boundary painted as "
        "background, on the box plus 2 voxels (FastGrowCut leaves seeds on the outermost layer of its image unused).",
        f"* Machine: {meta['cpu']}, {meta['cores']} cores, {meta['threads']} threads; torch {meta['torch']}, "
        f"itk {meta['itk']}, scikit-image {meta['skimage']}. 1-minute load average during the run: "
        f"{meta['load_min']:.1f} - {meta['load_max']:.1f}"
        + (" (a loaded machine: times are upper bounds)." if meta["load_max"] > meta["cores"] else "."),
        "",
        "## Held-out cases: 3-slice strokes (WT Dice) -- the result",
        "",
    ]
    held_lines, held = _dice_table(rows, "held-out")
    lines += held_lines
    t = summary["targets"]

    def verdict(key: str, fmt: str = "{:.3f}") -> str:
        if key not in t:
            return "not measured"
        v, target, ok = t[key]
        if v is None:
            return "no result (NOT met; see the failed runs)"
        vs = v if isinstance(v, str) else fmt.format(v)
        return f"{vs} ({'met' if ok else 'NOT met'})"

    gc_mean = held.get(GROWCUT, {}).get("mean")
    lines += [
        "",
        "## Targets (issue 14; held-out cases, `medtorch` row)",
        "",
        f"* 3-slice mean >= FastGrowCut + {TARGETS['margin_over_growcut']}"
        + (f" = {gc_mean + TARGETS['margin_over_growcut']:.3f}" if gc_mean is not None else "") + f": {verdict('mean_vs_growcut')}",
        f"* Below FastGrowCut on <= 1 case in 10: {verdict('below_growcut')}",
        f"* No case below {TARGETS['worst']:.2f}: worst {verdict('worst')}",
        "* Click-and-box mean >= FastGrowCut's mean with its own best protocol"
        + (f" ({summary['growcut_best_protocol_mean']:.3f})" if summary["growcut_best_protocol_mean"] is not None else "")
        + f": {verdict('click_box_vs_growcut_best')}",
        f"* <= {TARGETS['first_s']:g} s compute for a 240x240x155 head (3-slice first run, `result.seconds['total']`, "
        f"worst case): {verdict('first_s', '{:.2f} s')}; wall (segmenter made + run) median "
        f"{_fmt(float(np.median(summary['medtorch_first_wall'])) if summary['medtorch_first_wall'] else None, 2)} s",
        f"* <= {TARGETS['edit_s']:g} s per seed edit (one correction stroke, re-run of the kept `SeededSegmenter`, "
        f"median): {verdict('edit_s', '{:.2f} s')}; max "
        f"{_fmt(float(np.max(summary['medtorch_edit_s'])) if summary['medtorch_edit_s'] else None, 2)} s, wall median "
        f"{_fmt(float(np.median(summary['medtorch_edit_wall'])) if summary['medtorch_edit_wall'] else None, 2)} s",
        f"* `medtorch segment --in FLAIR --in T1 --seeds S` <= {TARGETS['cli_s']:g} s wall through the CLI (one "
        "subprocess, interpreter start, reading and writing the files included"
        + (f", case {cli['case']}, its Dice {_fmt(cli.get('dice'))}" if cli else "") + f"): {verdict('cli_s', '{:.2f} s')}"
        + (f" -- failed: {cli.get('error')}" if cli and "error" in cli else ""),
        "",
        "## Held-out cases: every protocol (WT Dice, mean (worst) over the cases)",
        "",
    ]
    lines += _protocol_table(rows, "held-out")[0]
    lines += ["", "## Held-out cases: correction rounds from the 3-slice seeds (WT Dice after each round)", ""]
    lines += _corrections_table(rows, "held-out")
    lines += ["", "## Held-out cases: does the verdict catch the poor results?", "",
              "Every MedTorch run carries a verdict (`medtorch.segment.seeded_verdict`: tumor on the segmented "
              "region's border, tumor apart from the strokes, nothing beyond the strokes); its thresholds were "
              "chosen on the development cases. The option rows (e.g. a region not deepened for one-slice strokes) "
              "are there to make poor results to catch.", ""]
    lines += _verdict_table(rows, "held-out")
    lines += ["", "## DEVELOPMENT cases (used to choose parameters: NOT the result)", "",
              "### 3-slice strokes (WT Dice)", ""]
    lines += _dice_table(rows, "dev")[0]
    lines += ["", "### Every protocol", ""] + _protocol_table(rows, "dev")[0]
    lines += ["", "### Correction rounds", ""] + _corrections_table(rows, "dev")
    lines += ["", "### The verdict", ""] + _verdict_table(rows, "dev")
    if meta.get("rw", {}).get("scores"):
        lines += ["", "### Random walker beta (development cases, 3-slice seeds)", "",
                  "| beta | mean Dice | cases |", "| ---: | ---: | ---: |"]
        for b, v in meta["rw"]["scores"].items():
            lines.append(f"| {float(b):g} | {_fmt(float(np.mean(v)) if v else None)} | {len(v)} |")
    errors = [r for r in rows if "error" in r]
    if errors:
        lines += ["", "## Failed runs", ""] + [f"* {r['case']} / {r['protocol']} / {r['method']}: {r['error']}"
                                                for r in errors]
    lines += ["", "<details><summary>Raw results</summary>", "", "```json",
              json.dumps({"rows": rows, "cli": cli}, indent=1, default=str), "```", "", "</details>", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines), encoding="utf-8")
    os.replace(tmp, path)
    js = path.with_suffix(".json")
    tmp = js.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"meta": meta, "summary": summary, "rows": rows, "cli": cli}, indent=1, default=str),
                   encoding="utf-8")
    os.replace(tmp, js)
    return summary


# -- main ------------------------------------------------------------------------------------------


def _shown_argv(argv: Sequence[str]) -> list[str]:
    shown, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("--workdir", "--out", "--real-dir"):
            skip = True
            continue
        if not a.startswith(("--workdir=", "--out=", "--real-dir=")):
            shown.append(a)
    return shown


def quick_cases(split: dict[str, str]) -> list[str]:
    """Two cases for ``--quick``: the first development and the first held-out case of the dataset with
    the most cases."""
    names = sorted({dataset_of(c) for c in split})
    first = max(names, key=lambda d: sum(1 for c in split if dataset_of(c) == d))
    ids = sorted(c for c in split if dataset_of(c) == first)
    return [c for c in (next((c for c in ids if split[c] == "dev"), None),
                        next((c for c in ids if split[c] == "held-out"), None)) if c]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.segment.real_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--real-dir", type=Path,
                   help="folder of cases DIR/<CaseID>/{flair,t1,t1ce,t2,seg}.nii.gz (never committed); required "
                        "unless --from-json")
    p.add_argument("--from-json", type=Path,
                   help="run nothing: write the report again from an earlier run's raw results (its .json)")
    p.add_argument("--quick", action="store_true", help="two cases (one development, one held-out), beta from 2 values")
    p.add_argument("--cases", nargs="+", help="only these case IDs (the split is still computed over all cases)")
    p.add_argument("--protocols", nargs="+", choices=list(PROTOCOLS), help="only these protocols")
    p.add_argument("--methods", nargs="+", help="only these methods (medtorch rows, FastGrowCut, 'random walker', "
                                                "'oracle threshold')")
    p.add_argument("--rounds", type=int, default=CORRECTION_ROUNDS, help="correction rounds (default 3)")
    p.add_argument("--no-cli", action="store_true", help="do not time the CLI")
    p.add_argument("--rw-all-protocols", action="store_true",
                   help="run the random walker on every protocol (default: " + ", ".join(RW_PROTOCOLS) + ")")
    p.add_argument("--workdir", type=Path, help="scratch folder (default: a new temporary folder)")
    p.add_argument("--out", type=Path, help=f"report (default: {DOC.relative_to(REPO)}; --quick: <workdir>/segment_real.md)")
    p.add_argument("--threads", type=int, default=2, help="threads (default 2)")
    args = p.parse_args(argv)
    if args.from_json is not None:
        raw = json.loads(Path(args.from_json).read_text(encoding="utf-8"))
        out = args.out or DOC
        write_report(out, raw["rows"], raw["meta"], raw.get("cli"))
        print(f"[real] report written again from {args.from_json} to {out}", flush=True)
        return 0
    if args.real_dir is None:
        p.error("--real-dir DIR is required (or --from-json PATH)")

    import torch

    from benchmarks.segment.dl_timing import _cpu_name

    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    try:
        import itk

        itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(args.threads)
        itk_version = itk.Version.GetITKVersion()
    except Exception:  # noqa: BLE001 - reported, the method's rows become errors
        itk_version = "not installed"
    real_dir = args.real_dir.resolve()
    if not real_dir.is_dir():
        print(f"[real] no such folder: {real_dir}", file=sys.stderr)
        return 2
    all_ids = find_cases(real_dir)
    if not all_ids:
        print(f"[real] no case (<CaseID>/flair.nii.gz + seg.nii.gz) in {real_dir}", file=sys.stderr)
        return 2
    fixed_split = read_fixed_split(real_dir)
    split = split_cases(all_ids, fixed_split)
    ids = args.cases or (quick_cases(split) if args.quick else all_ids)
    unknown = [c for c in ids if c not in split]
    if unknown:
        print(f"[real] unknown case(s): {unknown}", file=sys.stderr)
        return 2
    work = args.workdir or Path(tempfile.mkdtemp(prefix="medtorch-real-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    protocols = args.protocols or list(PROTOCOLS)
    variants = medtorch_variants()
    skipped = [k for k in MEDTORCH_VARIANTS if k not in variants]
    methods = args.methods or (list(variants) + [GROWCUT, RW, ORACLE])
    loads = [os.getloadavg()[0]]
    print(f"[real] data: {real_dir} (" + ", ".join(f"{n} {'found, quoted in the report' if (real_dir / n).exists() else 'absent'}"
                                                  for n in ("SOURCES.md", "cases.csv"))
          + "); the data is NOT committed (no licence allows redistribution)", flush=True)
    print(f"[real] {len(ids)} case(s) of {len(all_ids)} in {real_dir}; protocols {protocols}; methods {methods}"
          + (f"; skipped (no such SeededOptions field): {skipped}" if skipped else ""), flush=True)

    def log(msg: str) -> None:
        print(msg, flush=True)

    cases: dict[str, Case | None] = {}
    rows: list[dict[str, Any]] = []
    for c in ids:
        try:
            cases[c] = load_case(real_dir, c, split[c])
        except Exception as e:  # noqa: BLE001
            cases[c] = None
            rows.append({"case": c, "dataset": dataset_of(c), "split": split[c], "protocol": "(load)",
                         "method": "(load)", "error": _err(e)})
    rw: dict[str, Any] = {"beta": None, "skipped": "not requested"}
    betas = RW_BETAS_QUICK if args.quick else RW_BETAS
    if RW in methods:
        dev = [cs for c, cs in cases.items() if cs is not None and split[c] == "dev"]
        if not dev:
            rw = {"beta": None, "skipped": "no development case in this run to tune beta on"}
        else:
            try:
                rw = tune_random_walker(dev, betas, log)
            except Exception as e:  # noqa: BLE001
                rw = {"beta": None, "skipped": _err(e)}
        log(f"[real] random walker: {rw.get('beta') or rw.get('skipped')}")
    for c in ids:
        case = cases[c]
        if case is None:
            continue
        loads.append(os.getloadavg()[0])
        t0 = time.perf_counter()
        case_rows = run_case(case, protocols, methods, rw.get("beta"), args.rounds, log,
                             list(PROTOCOLS) if args.rw_all_protocols else RW_PROTOCOLS)
        slow = [r for r in case_rows if r["method"] == RW and r.get("wall", 0) > RW_MAX_S]
        if slow and rw.get("beta") is not None:
            rw["skipped_after"] = f"{c}: a run took {slow[0]['wall']:.0f} s (> {RW_MAX_S:.0f} s); dropped for the rest"
            rw["beta_used"] = rw["beta"]
            methods = [m for m in methods if m != RW]
        rows += case_rows
        loads.append(os.getloadavg()[0])
        log(f"[real] {c} done in {time.perf_counter() - t0:.0f} s (load {loads[-1]:.1f})")
    cli = None
    if not args.no_cli:
        held = [cases[c] for c in ids if cases[c] is not None and split[c] == "held-out"]
        target = held[0] if held else next((cs for cs in cases.values() if cs is not None), None)
        if target is not None:
            try:
                cli = time_cli(target, work, args.threads)
            except Exception as e:  # noqa: BLE001
                cli = {"case": target.id, "error": _err(e)}
            log(f"[real] CLI: {cli}")
    loads.append(os.getloadavg()[0])
    try:
        from importlib.metadata import version

        itk_growcut = version("itk-growcut")
    except Exception:  # noqa: BLE001
        itk_growcut = "?"
    import skimage

    datasets: dict[str, int] = {}
    for c in ids:
        datasets[dataset_of(c)] = datasets.get(dataset_of(c), 0) + 1
    meta = {"argv": _shown_argv(argv if argv is not None else sys.argv[1:]), "quick": args.quick,
            "real_dir": str(real_dir), "cases": ids, "split": {c: split[c] for c in ids}, "datasets": datasets,
            "split_source": "cases.csv" if fixed_split else "even/odd rule",
            "all_split": split, "protocols": protocols, "methods": methods,
            "variants": {k: v for k, v in variants.items()}, "variants_skipped": skipped, "rw": rw,
            "rw_betas": list(betas),
            "rw_protocols": list(PROTOCOLS) if args.rw_all_protocols else list(RW_PROTOCOLS), "threads": args.threads, "cores": os.cpu_count(),
            "cpu": _cpu_name() or platform.machine(), "torch": torch.__version__, "itk": itk_version,
            "itk_growcut": itk_growcut, "skimage": skimage.__version__, "load_min": float(min(loads)),
            "load_max": float(max(loads))}
    out = args.out or (work / "segment_real.md" if args.quick else DOC)
    write_report(out, rows, meta, cli)
    print(f"[real] report written to {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
