"""``python -m benchmarks.fusion [--quick] [--harvard-dir DIR]``: see :mod:`benchmarks.fusion`."""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.fusion.data import SEED, template_pairs
from medtorch.fusion.metrics import METRICS

METHODS = ["average", "max", "pca", "dwt", "laplacian", "gff", "gradient", "cnn"]
TRAINING_FREE = ["average", "max", "pca", "dwt", "laplacian", "gff", "gradient"]
#: Reference rules that can game MI and SSIM: reported, but not the candidates for the targets.
REFERENCE_RULES = ["average", "max"]
TARGET_SECONDS = 5.0


# -- measuring -------------------------------------------------------------------------------------


def _libc() -> Any:
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:  # pragma: no cover - not glibc
        return None


_LIBC = _libc()
if _LIBC is not None and hasattr(_LIBC, "mallopt"):
    # glibc: serve every allocation above 128 kB by mmap (no dynamic threshold), so freed
    # tensors go back to the OS and the resident size follows what each call really holds.
    _LIBC.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD


@contextmanager
def default_allocator() -> Iterator[None]:
    """glibc's allocation as an ordinary process has it while timing small images: the fixed
    128 kB mmap threshold above makes every mid-sized tensor a fresh mmap and its page faults, and
    a 256 x 256 gradient fusion took ~0.4 s under it against 0.14-0.2 s in a fresh process. The
    threshold is raised to glibc's dynamic ceiling on 64-bit (32 MB) inside, with the trim threshold
    at twice that as glibc's dynamic mode sets it (else the heap's top is handed back to the OS after
    every call, and faulted in again), and both are set back after."""
    if _LIBC is None or not hasattr(_LIBC, "mallopt"):
        yield
        return
    _LIBC.mallopt(-3, 32 * 1024 * 1024)  # M_MMAP_THRESHOLD
    _LIBC.mallopt(-1, 64 * 1024 * 1024)  # M_TRIM_THRESHOLD
    try:
        yield
    finally:
        _LIBC.mallopt(-3, 128 * 1024)
        _LIBC.mallopt(-1, 128 * 1024)


class PeakRSS:
    """Peak resident memory above the level at entry, sampled every 2 ms (psutil); process CPU time."""

    def __init__(self) -> None:
        import psutil

        self.proc = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()

    def __enter__(self) -> PeakRSS:
        gc.collect()
        if _LIBC is not None and hasattr(_LIBC, "malloc_trim"):
            _LIBC.malloc_trim(0)
        self.cpu0 = time.process_time()
        self.base = self.proc.memory_info().rss
        self.peak = self.base
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.002)

    def __exit__(self, *exc: object) -> None:
        self.cpu = time.process_time() - self.cpu0
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def extra_mb(self) -> float:
        return (self.peak - self.base) / 2**20


@contextmanager
def timer(out: dict[str, float], key: str) -> Iterator[None]:
    t0 = time.perf_counter()
    yield
    out[key] = time.perf_counter() - t0


def best_of(fn: Callable[[], Any], repeats: int) -> tuple[float, float, Any]:
    """(best wall seconds, peak extra MB of the first run, result of the last run).

    The process CPU seconds of the best run are available from :func:`last_cpu`.
    """
    global _LAST_CPU
    times = []
    cpus = []
    result = None
    mem = 0.0
    for r in range(repeats):
        with PeakRSS() as m:
            t0 = time.perf_counter()
            result = fn()
            times.append(time.perf_counter() - t0)
        cpus.append(m.cpu)
        if r == 0:
            mem = m.extra_mb
    _LAST_CPU = cpus[int(np.argmin(times))]
    return min(times), mem, result


_LAST_CPU = 0.0


def last_cpu() -> float:
    """Process CPU seconds (all threads) of the run :func:`best_of` last reported."""
    return _LAST_CPU


def environment(threads: int) -> dict[str, Any]:
    from medtorch import __version__
    from medtorch.device import device_summary

    dev = device_summary("cpu")
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": dev.get("name") or platform.processor() or "unknown CPU",
        "cores": os.cpu_count(),
        "torch_threads": threads,
        "torch": torch.__version__,
        "medtorch": __version__,
        "python": platform.python_version(),
        "load_start": os.getloadavg(),
        "gpu": "none (no CUDA device on this machine: no GPU timings)" if not torch.cuda.is_available()
        else torch.cuda.get_device_name(0),
    }


# -- template pairs ---------------------------------------------------------------------------------


def run_template(quick: bool, cnn_iterations: int, log: Callable[[str], None]) -> dict[str, Any]:
    from medtorch.fusion import fuse_volumes

    spacing = 2.0 if quick else 1.0
    log(f"template pairs at {spacing:g} mm")
    pairs = template_pairs(spacing)
    results: dict[str, Any] = {"spacing": spacing, "size": pairs[0].fixed.size, "pairs": {}, "figures": {}}
    for pair in pairs:
        rows = {}
        shown = {}
        for m in METHODS:
            params = {"iterations": cnn_iterations, "seed": 0} if m == "cnn" else None
            with PeakRSS() as mem:
                t0 = time.perf_counter()
                res = fuse_volumes(pair.fixed, pair.moving, m, params=params, moving_modality=pair.moving_modality,
                                   color_map=pair.color_map)
                secs = time.perf_counter() - t0
            from medtorch.fusion.metrics import fusion_metrics

            a, b, f = res.fixed_prepared.array, res.moving_prepared.array, res.fused.array
            t1 = time.perf_counter()
            m3 = fusion_metrics(a, b, f, mode="3d")
            ms = fusion_metrics(a, b, f, mode="slices")
            rows[m] = {"seconds": secs, "cpu_seconds": mem.cpu, "method_seconds": res.info["seconds"]["fuse"],
                       "memory_mb": mem.extra_mb,
                       "3d": m3, "slices": ms, "params": res.info["params"]}
            log(f"  {pair.name} {m}: {secs:.1f} s, scored in {time.perf_counter() - t1:.0f} s, "
                f"QABF {m3['QABF']:.3f} VIF {m3['VIF']:.3f}")
            z = a.shape[0] // 2 + int(round(10 / spacing))
            shown[m] = (res.rgb.array[z] / 255.0) if res.rgb is not None else f[z]
            shown["_a"], shown["_b"] = a[z], b[z]
        results["pairs"][pair.name] = rows
        results["figures"][pair.name] = shown
    # the fast guided filter (subsample 2) against the exact one, on the CT-MRI pair
    pair = pairs[0]
    exact = fuse_volumes(pair.fixed, pair.moving, "gff", params={"subsample": 1}, moving_modality="CT", metrics="3d")
    fast = fuse_volumes(pair.fixed, pair.moving, "gff", params={"subsample": 2}, moving_modality="CT", metrics="3d")
    results["gff_subsample"] = {
        "max_abs": float(np.abs(exact.fused.array - fast.fused.array).max()),
        "mean_abs": float(np.abs(exact.fused.array - fast.fused.array).mean()),
        "exact": exact.metrics, "fast": fast.metrics,
        "seconds_exact": exact.info["seconds"]["fuse"], "seconds_fast": fast.info["seconds"]["fuse"],
    }
    return results


# -- timings at n^3 ---------------------------------------------------------------------------------


def _cube_pair(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The CT-MRI template pair's prepared sources interpolated onto an n^3 grid."""
    import torch.nn.functional as F

    from medtorch.fusion.prepare import prepare_intensity

    pair = template_pairs(2.0)[0]
    a, _ = prepare_intensity(pair.fixed.array, "MR")
    b, _ = prepare_intensity(pair.moving.array, "CT")
    out = []
    for x in (a, b):
        t = torch.from_numpy(x)[None, None]
        out.append(F.interpolate(t, size=(n, n, n), mode="trilinear", align_corners=False)[0, 0].contiguous())
    return out[0], out[1]


def _scipy_gff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Li et al.'s GFF written with scipy.ndimage (the exact, full-resolution reference)."""
    from scipy import ndimage

    def box(x: np.ndarray, r: int) -> np.ndarray:
        return ndimage.uniform_filter(x, 2 * r + 1, mode="constant") / ndimage.uniform_filter(
            np.ones_like(x), 2 * r + 1, mode="constant")

    def gf(i: np.ndarray, p: np.ndarray, r: int, eps: float) -> np.ndarray:
        mi, mp = box(i, r), box(p, r)
        cov = box(i * p, r) - mi * mp
        var = box(i * i, r) - mi * mi
        aa = cov / (np.maximum(var, 0) + eps)
        bb = mp - aa * mi
        return box(aa, r) * i + box(bb, r)

    x = [a.astype(np.float64), b.astype(np.float64)]
    base = [box(v, 15) for v in x]
    sal = [ndimage.gaussian_filter(np.abs(ndimage.laplace(v, mode="nearest")), 5.0, truncate=1.0, mode="mirror")
           for v in x]
    p0 = (sal[0] >= sal[1]).astype(np.float64)
    ps = [p0, 1.0 - p0]
    wb = [np.clip(gf(x[k], ps[k], 45, 0.3), 0, 1) for k in range(2)]
    wd = [np.clip(gf(x[k], ps[k], 7, 1e-6), 0, 1) for k in range(2)]
    sb, sd = wb[0] + wb[1], wd[0] + wd[1]
    wb0 = np.where(sb > 1e-6, wb[0] / np.maximum(sb, 1e-6), 0.5)
    wd0 = np.where(sd > 1e-6, wd[0] / np.maximum(sd, 1e-6), 0.5)
    fb = wb0 * base[0] + (1 - wb0) * base[1]
    fd = wd0 * (x[0] - base[0]) + (1 - wd0) * (x[1] - base[1])
    return fb + fd


def _pywt_dwt(a: np.ndarray, b: np.ndarray, wavelet: str = "haar", levels: int = 3) -> np.ndarray:
    """DWT fusion with PyWavelets (numpy): mean approximation, max-abs details."""
    import pywt

    ca = pywt.wavedecn(a, wavelet, level=levels)
    cb = pywt.wavedecn(b, wavelet, level=levels)
    fused = [(ca[0] + cb[0]) / 2]
    for da, db in zip(ca[1:], cb[1:]):
        fused.append({k: np.where(np.abs(da[k]) >= np.abs(db[k]), da[k], db[k]) for k in da})
    out = pywt.waverecn(fused, wavelet)
    return out[tuple(slice(0, s) for s in a.shape)]


def run_timings(n: int, cnn_iterations: int, peers: bool, log: Callable[[str], None]) -> dict[str, Any]:
    from medtorch.fusion.fuse import fuse_volumes
    from medtorch.fusion.methods import fuse_tensors
    from medtorch.fusion.wavelet import fuse_dwt
    from medtorch.volume import Geometry, Volume

    log(f"timings on {n}^3")
    a, b = _cube_pair(n)
    out: dict[str, Any] = {"n": n, "methods": {}, "peers": {}}
    grid = Geometry((n, n, n))
    vol_a = Volume(a.numpy(), grid, "scalar", {"Modality": "MR"})
    vol_b = Volume(b.numpy(), grid, "scalar", {"Modality": "MR"})
    for m in METHODS:
        if m == "cnn":
            # training cost does not grow with the volume (32^3 patches); inference does
            from medtorch.fusion.cnn import TrainConfig, infer, train_fusion_cnn

            with PeakRSS() as rss:
                t0 = time.perf_counter()
                model, _ = train_fusion_cnn(a, b, TrainConfig(iterations=cnn_iterations, seed=0))
                train_s = time.perf_counter() - t0
                t0 = time.perf_counter()
                with torch.no_grad():
                    infer(model, a, b)
                infer_s = time.perf_counter() - t0
            out["methods"][m] = {"seconds": train_s + infer_s, "cpu_seconds": rss.cpu, "memory_mb": rss.extra_mb,
                                 "train_seconds": train_s,
                                 "infer_seconds": infer_s, "pipeline_seconds": float("nan")}
            log(f"  cnn: training {train_s:.1f} s, inference {infer_s:.1f} s")
            continue
        secs, mem, _ = best_of(lambda: fuse_tensors(a, b, m), 2)
        cpu = last_cpu()
        pipe, pipe_mem, _ = best_of(lambda: fuse_volumes(vol_a, vol_b, m, fixed_modality="MR", moving_modality="MR"), 1)
        out["methods"][m] = {"seconds": secs, "cpu_seconds": cpu, "memory_mb": mem, "pipeline_seconds": pipe,
                             "pipeline_cpu_seconds": last_cpu(), "pipeline_memory_mb": pipe_mem}
        log(f"  {m}: {secs:.2f} s ({cpu:.2f} s CPU; pipeline {pipe:.2f} s), +{mem:.0f} MB")
    if peers:
        an, bn = a.numpy().astype(np.float64), b.numpy().astype(np.float64)
        import pywt
        import scipy

        t_pw, mem_pw, ref = best_of(lambda: _pywt_dwt(an, bn), 1)
        c_pw = last_cpu()
        t_ours, mem_ours, (ours, _) = best_of(lambda: fuse_dwt(a, b, "haar", 3), 2)
        out["peers"]["dwt"] = {"peer": f"PyWavelets {pywt.__version__} (numpy, float64)",
                               "peer_seconds": t_pw, "peer_cpu_seconds": c_pw, "peer_memory_mb": mem_pw,
                               "seconds": t_ours, "cpu_seconds": last_cpu(), "memory_mb": mem_ours,
                               "max_abs_difference": float(np.abs(ours.numpy().astype(np.float64) - ref).max())}
        log(f"  peer PyWavelets DWT: {t_pw:.1f} s vs {t_ours:.1f} s")
        del ref
        t_sp, mem_sp, ref = best_of(lambda: _scipy_gff(an, bn), 1)
        c_sp = last_cpu()
        from medtorch.fusion.gff import fuse_gff

        t_g1, mem_g1, (g1, _) = best_of(lambda: fuse_gff(a, b, subsample=1), 1)
        c_g1 = last_cpu()
        t_g2, mem_g2, (g2, _) = best_of(lambda: fuse_gff(a, b, subsample=2), 2)
        out["peers"]["gff"] = {
            "peer": f"SciPy {scipy.__version__} ndimage (float64, same steps, subsample 1)",
            "peer_seconds": t_sp, "peer_cpu_seconds": c_sp, "peer_memory_mb": mem_sp,
            "seconds_exact": t_g1, "cpu_exact": c_g1, "memory_exact_mb": mem_g1, "seconds_fast": t_g2,
            "cpu_fast": last_cpu(), "memory_fast_mb": mem_g2,
            "max_abs_difference_exact": float(np.abs(g1.numpy() - ref).max()),
            "max_abs_difference_fast": float(np.abs(g2.numpy() - ref).max()),
            "mean_abs_difference_fast": float(np.abs(g2.numpy() - ref).mean()),
        }
        log(f"  peer SciPy GFF: {t_sp:.1f} s vs {t_g1:.1f} s (s=1), {t_g2:.1f} s (s=2)")
    return out


# -- Harvard -----------------------------------------------------------------------------------------

#: (folder, other modality's folder, label) of CDDFuse's three MIF test sets.
HARVARD_TASKS = (("MRI_CT", "CT", "CT-MRI"), ("MRI_PET", "PET", "PET-MRI"), ("MRI_SPECT", "SPECT", "SPECT-MRI"))
#: The evaluator's columns (CDDFuse README order).
EV_METRICS = ("EN", "SD", "SF", "MI", "SCD", "VIF", "Qabf", "SSIM_sum")
#: CDDFuse's published MIF results (README of Zhaozixiang1228/MMIF-CDDFuse, "CDDFuse_MIF" rows; Table 5 of the paper).
CDDFUSE_MIF = {
    "MRI_CT": {"EN": 4.88, "SD": 79.17, "SF": 38.14, "MI": 2.61, "SCD": 1.41, "VIF": 0.61, "Qabf": 0.68, "SSIM_sum": 1.34},
    "MRI_PET": {"EN": 4.22, "SD": 70.74, "SF": 29.57, "MI": 2.03, "SCD": 1.69, "VIF": 0.71, "Qabf": 0.71, "SSIM_sum": 1.49},
    "MRI_SPECT": {"EN": 3.90, "SD": 58.31, "SF": 20.87, "MI": 2.49, "SCD": 1.35, "VIF": 0.97, "Qabf": 0.78, "SSIM_sum": 1.48},
}
#: Targets of the issue for one training-free method (mean over each test set, evaluator conventions).
HARVARD_QABF_TARGET = {"MRI_CT": 0.70, "MRI_PET": 0.73, "MRI_SPECT": 0.80}
HARVARD_VIF_TARGET = {k: v["VIF"] for k, v in CDDFUSE_MIF.items()}
HARVARD_METHODS = ["average", "max", "pca", "dwt", "laplacian", "gff", "gradient"]
#: The training-free method the targets are for, and the grid its parameters are chosen from (training split).
HARVARD_CANDIDATE = "gradient"
#: Every grid point runs with the method's other defaults (``l2``: lam 1/32, the result kept in [0, 1] by 20
#: ADMM iterations, see ``benchmarks/fusion/select_gradient.py`` for how those were chosen; ``l1``: lam 0.3,
#: 15 over-relaxed ADMM iterations, l1_rho 30). The ``l2`` points are the earlier grid; the ``l1`` ones the robust
#: reconstruction over the guided-filter base.
GRID_KEYS = ("norm", "base", "second_weight", "window", "edge_weight")
GRADIENT_GRID: list[dict[str, Any]] = (
    [{"norm": "l2", "base": base, "second_weight": w, "window": r, "edge_weight": 0.0}
     for base in ("max", "gff") for w in (1.0, 0.25) for r in (2, 3)]
    + [{"norm": "l1", "base": "gff", "second_weight": w, "window": r, "edge_weight": e}
       for w in (1.0, 0.5, 0.25) for r in (1, 2, 3) for e in (0.0, 0.5)])
HARVARD_SECONDS_TARGET = 0.1


def _harvard_names(folder: Path, task: str, other: str, split: str) -> list[str]:
    d = folder / task / split
    names = sorted(p.name for p in (d / "MRI").glob("*.png") if (d / other / p.name).exists())
    if not names:
        raise SystemExit(f"no {task} {split} pairs under {d} (expected MRI/ and {other}/ with matching PNG names)")
    return names


def _harvard_pair(folder: Path, task: str, other: str, split: str, name: str) -> tuple[Any, Any, np.ndarray, np.ndarray]:
    """(MRI volume, other volume, evaluator grey of the other, evaluator grey of the MRI)."""
    from medtorch.fusion.evaluator import evaluator_grey
    from medtorch.io import read_volume

    mri = read_volume(folder / task / split / "MRI" / name)
    oth = read_volume(folder / task / split / other / name)
    return mri, oth, evaluator_grey(oth.array[0]), evaluator_grey(mri.array[0])


def _score_fused(a_grey: np.ndarray, b_grey: np.ndarray, fused: np.ndarray, names: Any = None) -> dict[str, float]:
    """The evaluator's metrics of a fused image in [0, 1] as written to an 8-bit grey PNG."""
    from medtorch.fusion.evaluator import evaluator_metrics

    f8 = np.rint(np.clip(fused.astype(np.float64), 0.0, 1.0) * 255.0)
    return evaluator_metrics(a_grey, b_grey, f8, names)


def _task_score(task: str, q: float, v: float) -> float:
    """The selection criterion of one task: (Qabf / Qabf target + VIF / VIF target) / 2."""
    return (q / HARVARD_QABF_TARGET[task] + v / HARVARD_VIF_TARGET[task]) / 2


def select_gradient_params(folder: Path, per_task: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Choose the gradient method's parameters per task on the training split: over the
    :data:`GRADIENT_GRID`, the point with the best (Qabf / Qabf target + VIF / VIF target) / 2 on
    ``per_task`` training pairs of that task (drawn with :data:`SEED`)."""

    from medtorch.fusion import fuse_volumes

    rng = np.random.default_rng(SEED)
    sample = {}
    for task, other, _ in HARVARD_TASKS:
        names = _harvard_names(folder, task, other, "train")
        pick = sorted(rng.choice(len(names), min(per_task, len(names)), replace=False))
        sample[task] = [_harvard_pair(folder, task, other, "train", names[i]) for i in pick]
    grid = []
    for point in GRADIENT_GRID:
        params = dict(point)
        row: dict[str, Any] = dict(params)
        for task, _, _ in HARVARD_TASKS:
            vals = [_score_fused(ag, bg, fuse_volumes(mri, oth, HARVARD_CANDIDATE, params=params).fused.array[0],
                                 ["Qabf", "VIF"]) for mri, oth, ag, bg in sample[task]]
            q = float(np.mean([v["Qabf"] for v in vals]))
            v_ = float(np.mean([v["VIF"] for v in vals]))
            row[task] = {"Qabf": q, "VIF": v_, "score": _task_score(task, q, v_)}
        grid.append(row)
        log("  " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in params.items())
            + ": " + ", ".join(f"{t} {row[t]['score']:.4f}" for t, _, _ in HARVARD_TASKS))
    chosen = {}
    for task, _, _ in HARVARD_TASKS:
        best = max(grid, key=lambda r: r[task]["score"])
        chosen[task] = {k: best[k] for k in GRID_KEYS}
    return {"per_task": per_task, "seed": SEED, "grid": grid, "chosen": chosen}


def train_harvard_cnn(folder: Path, checkpoint: Path, iterations: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Train the two-branch CNN on the training split of all three tasks (one model) and save it."""
    import torch

    from medtorch.fusion.cnn import TrainConfig, save_checkpoint, train_on_pairs
    from medtorch.fusion.color import rgb_to_ycbcr

    pairs = []
    for task, other, _ in HARVARD_TASKS:
        for name in _harvard_names(folder, task, other, "train"):
            mri, oth, _, _ = _harvard_pair(folder, task, other, "train", name)
            a = torch.from_numpy(mri.array[0].astype(np.float32) / 255.0)
            if a.ndim == 3:
                a = a[..., 0]
            rgb = oth.array[0].astype(np.float32) / 255.0
            b = (rgb_to_ycbcr(torch.from_numpy(np.ascontiguousarray(np.moveaxis(rgb, -1, 0))))[0]
                 if rgb.ndim == 3 else torch.from_numpy(rgb))
            pairs.append((a.contiguous(), b.float().contiguous()))
    cfg = TrainConfig(iterations=iterations, patch_size=64, batch_size=8, learning_rate=2e-3, seed=0)
    log(f"training the CNN on {len(pairs)} training pairs ({iterations} iterations)")
    model, record = train_on_pairs(pairs, cfg, features=16)
    record["data"] = "Harvard training split, all three tasks (MRI first, CT/PET/SPECT luminance second)"
    save_checkpoint(checkpoint, model, {"training": record})
    log(f"  trained in {record['seconds']} s; saved {checkpoint}")
    return record


def run_harvard(folder: Path, params: dict[str, dict[str, Any]], log: Callable[[str], None],
                with_cnn: bool) -> dict[str, Any]:
    """Every method on every test pair of the three tasks, scored with the evaluator's metrics."""
    from medtorch.fusion import fuse_volumes

    methods = HARVARD_METHODS + (["cnn"] if with_cnn else [])
    out: dict[str, Any] = {"folder_layout": "<task>/test/{MRI,CT|PET|SPECT}/<name>.png", "tasks": {}}
    for task, other, label in HARVARD_TASKS:
        names = _harvard_names(folder, task, other, "test")
        per: dict[str, list[dict[str, float]]] = {m: [] for m in methods}
        for name in names:
            mri, oth, ag, bg = _harvard_pair(folder, task, other, "test", name)
            for m in methods:
                t0 = time.perf_counter()
                c0 = time.process_time()
                per_task = params.get("per_task", {}).get(m)
                res = fuse_volumes(mri, oth, m, params=per_task[task] if per_task else params.get(m))
                secs = time.perf_counter() - t0
                cpu = time.process_time() - c0
                vals = _score_fused(ag, bg, res.fused.array[0])
                vals["seconds"] = secs
                vals["cpu_seconds"] = cpu
                per[m].append(vals)
        means = {m: {k: float(np.mean([v[k] for v in rows])) for k in (*EV_METRICS, "seconds", "cpu_seconds")}
                 for m, rows in per.items()}
        for m in methods:
            means[m]["seconds_median"] = float(np.median([v["seconds"] for v in per[m]]))
        out["tasks"][task] = {"label": label, "pairs": len(names), "means": means}
        c = means[HARVARD_CANDIDATE]
        log(f"  {label} ({len(names)} pairs): {HARVARD_CANDIDATE} Qabf {c['Qabf']:.3f} VIF {c['VIF']:.3f}, "
            f"{c['seconds']:.3f} s/pair ({c['cpu_seconds']:.3f} CPU s)")
    return out


def harvard_section(folder: Path, args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    """Parameter choice (training split), CNN training (training split) and the test-split table."""
    start = time.perf_counter()
    env = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "torch_threads": torch.get_num_threads(),
           "load_start": os.getloadavg()}
    log(f"Harvard pairs from {folder}: choosing the {HARVARD_CANDIDATE} parameters on the training split")
    selection = select_gradient_params(folder, args.select_pairs, log)
    params: dict[str, Any] = {"per_task": {HARVARD_CANDIDATE: dict(selection["chosen"])}}
    cnn = None
    if args.cnn_checkpoint is not None:
        ckpt = Path(args.cnn_checkpoint)
        if ckpt.exists() and not args.retrain_cnn:
            from medtorch.fusion.cnn import load_checkpoint

            cnn = dict(load_checkpoint(ckpt)[1].get("training", {}))
            cnn["reused"] = True
            log(f"using the trained CNN {ckpt}")
        else:
            cnn = train_harvard_cnn(folder, ckpt, args.harvard_cnn_iterations, log)
        cnn["checkpoint"] = str(ckpt)
        params["cnn"] = {"checkpoint": str(ckpt), "iterations": 0}
    log("test split: every method on every pair")
    with default_allocator():
        res = run_harvard(folder, params, log, cnn is not None)
    env["load_end"] = os.getloadavg()
    res.update({"selection": selection, "params": params, "cnn": cnn, "environment": env,
                "seconds": time.perf_counter() - start})
    return res


# -- report ----------------------------------------------------------------------------------------


def _f(v: Any, d: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.{d}f}"
    return str(v)


def _figure(path: Path, template: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medtorch.io.atomic import atomic_path

    pairs = list(template["figures"])
    cols = ["_a", "_b"] + METHODS
    fig, axes = plt.subplots(len(pairs), len(cols), figsize=(2.0 * len(cols), 2.3 * len(pairs)), squeeze=False)
    fig.patch.set_facecolor("black")
    for i, p in enumerate(pairs):
        shown = template["figures"][p]
        for j, c in enumerate(cols):
            ax = axes[i, j]
            img = shown[c]
            ax.imshow(np.clip(img, 0, 1), cmap=None if img.ndim == 3 else "gray", vmin=0, vmax=1)
            title = {"_a": "T1 (fixed)", "_b": p.split("-")[0] + " (moving)"}.get(c, c)
            ax.set_title(title if i == 0 or c.startswith("_") else c, color="white", fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80, facecolor="black")
    plt.close(fig)


def _params_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}" for k, v in params.items())


def harvard_markdown(harvard: dict[str, Any] | None) -> list[str]:
    """The Harvard section of the report (also written alone by ``--harvard-only``)."""
    L = ["## Harvard test pairs (CDDFuse's MIF test sets), the CDDFuse evaluator's metrics", ""]
    if harvard is None or "tasks" not in harvard:
        return L + ["Not run: the Harvard whole-brain atlas pairs are not on this machine (and the benchmark never "
                    "downloads data). Point the benchmark at a local copy with `--harvard-dir DIR` "
                    "(`<task>/{test,train}/{MRI,CT|PET|SPECT}/<name>.png`, tasks `MRI_CT`, `MRI_PET`, `MRI_SPECT`).",
                    ""]
    env = harvard["environment"]
    sel = harvard["selection"]
    ch = sel["chosen"]
    L += [f"Run on {env['date']} with {env['torch_threads']} torch thread(s), in {harvard['seconds'] / 60:.1f} min; "
          f"load average at the start {tuple(round(x, 1) for x in env['load_start'])}, at the end "
          f"{tuple(round(x, 1) for x in env['load_end'])} (a shared 2-core machine: times are upper bounds).", "",
          "**Data** (local only; not in the repository and not redistributed: neither source repository has a "
          "licence and the images derive from the Harvard Whole Brain Atlas, http://www.med.harvard.edu/AANLIB/, "
          "© K. A. Johnson and J. A. Becker). Test split: CDDFuse's `test_img/{MRI_CT,MRI_PET,MRI_SPECT}` "
          "(Zhaozixiang1228/MMIF-CDDFuse at fd8da1f; 21, 42 and 73 pairs, 256 × 256 8-bit RGB PNGs). Training "
          "split: xianming-gu/Havard-Medical-Image-Fusion-Datasets (984d169), de-duplicated against the test "
          "split by grey-level correlation ≥ 0.99 of either image (163, 269 and 301 pairs). The benchmark reads "
          "a folder laid out as `<task>/{test,train}/{MRI,CT|PET|SPECT}/<name>.png` and downloads nothing; "
          "`python -m benchmarks.fusion.prepare_harvard --cddfuse CLONE --train CLONE --out DIR` builds it from "
          "local clones of the two repositories.", "",
          "**Protocol.** Each pair is fused by `fuse_volumes` as the files come (8-bit display images scaled by "
          "1/255; PET/SPECT pseudo-colour fused in YCbCr: the luminance Y is fused with the MRI, Cb/Cr kept), "
          "the fused grey/Y image rounded to 8 bits as a grey PNG holds it, and scored with "
          "`metric_set='cddfuse'` (`medtorch/fusion/evaluator.py`: CDDFuse's `utils/Evaluator.py` reproduced to "
          "1e-9, `Testing/test_fusion_2d.py`) against the sources as CDDFuse's `test_MIF.py` reads them (grey, "
          "PET/SPECT reduced to their rounded luma). Means over each whole test set, as CDDFuse's README "
          "reports them; its published CDDFuse_MIF row beside them (not rerun: its checkpoints are not in the "
          "snapshot). Seconds: `fuse_volumes` per pair (mean), including the colour conversion, timed with "
          "glibc's ordinary allocation (the 128 kB mmap threshold that the 3D sections set for their memory "
          "figures is lifted here: under it the gradient method took about twice as long).", "",
          f"**Parameters chosen on the training split** (never on the test split), per task: the "
          f"`{HARVARD_CANDIDATE}` method's grid over " + ", ".join(f"`{k}`" for k in GRID_KEYS) + " (the other "
          "parameters at their defaults: for `l2`, lam 1/32, the result kept in [0, 1] by 20 ADMM iterations, "
          "rho 0.5, `benchmarks/fusion/select_gradient.py` records how those were chosen; for `l1`, lam 0.3, "
          "15 ADMM iterations over-relaxed by 1.8 (as close to convergence as 25-30 plain ones), l1_rho 30, "
          "chosen on other training pairs of the same split) on "
          f"{sel['per_task']} training pairs per task (drawn with seed {sel['seed']}); criterion per task "
          "(Qabf / Qabf target + VIF / VIF target) / 2. `base`: the image the gradients are integrated over "
          "(`max`: the pixel maximum; `gff`: the guided-filter fusion); `second_weight`: the weight of the "
          "CT/PET/SPECT gradient energy when choosing which source's gradient to keep (below 1 favours the "
          "MRI's edges); `norm`: how the mismatch to the chosen gradients is penalised (`l2`: least squares, "
          "the screened Poisson equation; `l1`: its length, a robust reconstruction that keeps most edges exact "
          "and puts the disagreement of the two sources in few pixels); `edge_weight`: with `l1`, each pixel's "
          "mismatch weighted by the chosen gradient's strength to this power (0: all alike). Chosen: " + "; ".join(f"{label}: " + _params_text(ch[t]) for t, _, label in HARVARD_TASKS)
          + ".", "",
          "| " + " | ".join(GRID_KEYS) + " | CT-MRI Qabf | CT-MRI VIF | PET-MRI Qabf | PET-MRI VIF | SPECT-MRI Qabf "
          "| SPECT-MRI VIF |", "|---" * (len(GRID_KEYS) + 6) + "|"]
    for r in sel["grid"]:
        cells = []
        for t, _, _ in HARVARD_TASKS:
            mark = " **(chosen)**" if all(r[k] == ch[t][k] for k in GRID_KEYS) else ""
            cells.append(f"{r[t]['Qabf']:.3f}{mark} | {r[t]['VIF']:.3f}{mark}")
        L.append("| " + " | ".join(f"{r[k]:.4g}" if isinstance(r[k], float) else str(r[k]) for k in GRID_KEYS)
                 + " | " + " | ".join(cells) + " |")
    L.append("")
    cnn = harvard.get("cnn")
    if cnn:
        tr = cnn.get("train", {})
        L += [f"**CNN** (`cnn`, the two-branch network of `medtorch/fusion/cnn.py`, {cnn.get('features', '?')} "
              f"features): one model trained on the training split of all three tasks ({cnn.get('pairs')} pairs; "
              f"MRI first, CT/PET/SPECT luminance second), unsupervised loss (SSIM + gradient + intensity, weights "
              f"{tr.get('w_ssim')}, {tr.get('w_grad')}, {tr.get('w_int')}), {cnn.get('iterations')} Adam iterations "
              f"of {tr.get('batch_size')} random {tr.get('patch_size')}² patches, learning rate "
              f"{tr.get('learning_rate')}, seed {cnn.get('seed')}, {cnn.get('seconds')} s on this CPU"
              + (" (trained in an earlier run and reused)" if cnn.get("reused") else "") + ". The weights are a "
              "model derived from non-redistributable images: they are not in the repository; the run writes "
              "them to `--cnn-checkpoint PATH` (the format `FusionRegistration` loads, "
              "`torch.load(..., weights_only=True)`). Reproduce: `python -m benchmarks.fusion --harvard-only "
              "--harvard-dir DIR --cnn-checkpoint fusion_cnn_harvard.pt --retrain-cnn --threads 1`.", ""]
    for task, t in harvard["tasks"].items():
        L += [f"### {t['label']} ({t['pairs']} test pairs)", "",
              "| method | " + " | ".join(EV_METRICS) + " | s/pair (CPU s) |", "|---" * (len(EV_METRICS) + 2) + "|"]
        for m, r in t["means"].items():
            name = f"**{m}**" if m == HARVARD_CANDIDATE else m
            L.append(f"| {name} | " + " | ".join(_f(r[k], 2 if k in ('SD', 'SF') else 3) for k in EV_METRICS)
                     + f" | {r['seconds']:.3f}" + (f" ({r['cpu_seconds']:.3f})" if "cpu_seconds" in r else "") + " |")
        c = CDDFUSE_MIF[task]
        L.append("| CDDFuse_MIF (published) | " + " | ".join(f"{c[k]:.2f}" for k in EV_METRICS) + " | – |")
        L.append("")
    L += [f"**Targets** (one training-free method, `{HARVARD_CANDIDATE}`, its parameters chosen per task on the "
          "training split as above):", ""]
    for task, t in harvard["tasks"].items():
        r = t["means"][HARVARD_CANDIDATE]
        q_ok = r["Qabf"] >= HARVARD_QABF_TARGET[task]
        v_ok = r["VIF"] >= HARVARD_VIF_TARGET[task]
        L.append(f"- {t['label']}: Qabf {r['Qabf']:.3f} (target ≥ {HARVARD_QABF_TARGET[task]:.2f}: "
                 f"{'met' if q_ok else 'not met'}), VIF {r['VIF']:.3f} (CDDFuse {HARVARD_VIF_TARGET[task]:.2f}: "
                 f"{'met' if v_ok else 'not met'}); {r['seconds']:.3f} s per pair (median "
                 f"{r['seconds_median']:.3f} s; target ≤ {HARVARD_SECONDS_TARGET:g} s: "
                 f"{'met' if r['seconds'] <= HARVARD_SECONDS_TARGET else 'not met'})"
                 + (f", {r['cpu_seconds']:.3f} CPU s per pair (one thread, so about the wall time on an idle "
                    f"core; {'met' if r['cpu_seconds'] <= HARVARD_SECONDS_TARGET else 'not met'})"
                    if "cpu_seconds" in r else "") + ".")
    L.append("")
    return L


def write_markdown(path: Path, env: dict[str, Any], template: dict[str, Any], timings: dict[str, Any],
                   harvard: dict[str, Any] | None, quick: bool, cnn_iterations: int, total_s: float,
                   figure: Path) -> None:
    from medtorch.io import write_text_atomic

    n = timings["n"]
    L: list[str] = []
    L += ["# Fusion benchmark", "",
          f"Generated by `python -m benchmarks.fusion{' --quick' if quick else ''}"
          f"{' --threads ' + str(env['torch_threads']) if env.get('threads_flag') else ''}` on {env['date']}"
          + (f" in {total_s / 60:.1f} min" if total_s else "") + ". Do not edit by hand: rerun the benchmark"
          + (" (this page was rewritten from the run's raw results, `fusion.json`, by `--from-json`)"
             if env.get("from_json") else "") + "."
          + (f" The Harvard section was rerun alone (`--harvard-only`) on {harvard['environment']['date']}; the 3D "
             "sections are from the run above." if env.get("harvard_only") and harvard and "environment" in harvard
             else ""), "",
          "## Machine", "",
          f"- CPU: {env['cpu']}, {env['cores']} cores; torch {env['torch']} with {env['torch_threads']} threads; "
          f"medtorch {env['medtorch']}, Python {env['python']}.",
          f"- GPU: {env['gpu']}.",
          *([f"- torch ran with 1 thread (`--threads 1`): on this shared machine (load average around 10–15 on "
             f"{env['cores']} cores) two OpenMP threads stalled at every synchronisation and ran several times "
             "slower than one. On an idle 2-core machine two threads would be faster still."]
            if env["torch_threads"] == 1 else []),
          f"- Load average (1, 5, 15 min) at the start {tuple(round(x, 1) for x in env['load_start'])}, at the end "
          f"{tuple(round(x, 1) for x in env['load_end'])}: the machine is shared, so other jobs ran beside the "
          "benchmark and every time below is an upper bound of what an idle machine gives.", ""]
    L += ["## Data", "",
          f"Template pairs: the MNI152 2009a T1 (`Resources/SampleData`) as the anatomical source, at "
          f"{template['spacing']:g} mm, cropped to the head plus 16 mm (grid {template['size']}); the second "
          "source of each pair is synthesised from the template's own grey/white-matter maps "
          "(`benchmarks/fusion/data.py`): a CT-like volume in HU with skull and scalp (bone window), a "
          "PET-like FDG volume with a hot lesion (6 mm FWHM, colour map `hot`), a SPECT-like perfusion "
          f"volume (12 mm FWHM, colour map `rainbow`). Seeds: data {SEED}, CNN 0. Functional pairs are fused "
          "by the YCbCr protocol and scored on the luminance.", "",
          "Metrics: MedTorch's own set (`medtorch.fusion.metrics`, `metric_set='medtorch'`) on the 8-bit "
          "scale: EN (bits), SD, SF, AG of the fused image; MI (bits) and SSIM summed over both sources; QAB/F "
          "(Xydeas–Petrović); VIF (Sheikh–Bovik pixel VIF, summed over both sources). Higher is better for "
          "all. `3D`: the volume as a whole (3D windows, 3D Sobel); `per slice`: the 2D metrics averaged over "
          "the axial slices that hold a non-zero source voxel. These definitions differ from the CDDFuse "
          "evaluator's in SSIM, MI's unit and a QAB/F detail (`docs/fusion-metrics.md`); the Harvard section "
          "uses the evaluator's.", ""]
    for pair, rows in template["pairs"].items():
        for mode, label in (("3d", "3D"), ("slices", "per slice")):
            L += [f"### {pair}, {label}", "",
                  "| method | " + " | ".join(METRICS) + " | seconds (CPU) | peak extra memory (MB) |",
                  "|---" * (len(METRICS) + 3) + "|"]
            for m, r in rows.items():
                vals = r[mode]
                L.append(f"| {m} | " + " | ".join(_f(vals[k]) for k in METRICS) +
                         f" | {_f(r['seconds'], 2)} ({_f(r['cpu_seconds'], 2)}) | {_f(r['memory_mb'], 0)} |")
            L.append("")
    L += [f"![template pairs]({figure.name})", "",
          "Middle axial slices: the two sources (intensities as fused) and every method's result.", ""]
    g = template["gff_subsample"]
    L += ["### Fast guided filter (subsample 2) against the exact GFF (subsample 1), CT-MRI", "",
          f"Largest voxel difference {g['max_abs']:.4f}, mean {g['mean_abs']:.5f} (intensities in [0, 1]); "
          f"QAB/F {g['exact']['QABF']:.4f} exact vs {g['fast']['QABF']:.4f} fast, VIF {g['exact']['VIF']:.4f} vs "
          f"{g['fast']['VIF']:.4f}; {g['seconds_exact']:.2f} s vs {g['seconds_fast']:.2f} s.", ""]
    L += [f"## Time per {n}³ pair", "",
          f"The CT-MRI template pair (prepared intensities) interpolated onto {n}³ voxels. *Method*: the "
          "fusion of two float32 tensors (best of two runs); *pipeline*: `fuse_volumes` on two volumes on one "
          "grid (intensity preparation, copies, fusion). Wall-clock seconds, with the process CPU seconds (all "
          "threads) in brackets: on a loaded machine the wall time includes waiting for a core, the CPU time "
          "does not. Memory: peak resident memory above the level before the call (psutil, 2 ms sampling; "
          "glibc's mmap threshold fixed at 128 kB and `malloc_trim` before each call, so freed memory leaves "
          "the process and the peak is the call's own).", "",
          "| method | method, s (CPU s) | pipeline, s (CPU s) | peak extra memory (MB) | ≤ 5 s |",
          "|---|---|---|---|---|"]
    for m, r in timings["methods"].items():
        ok = "–" if m == "cnn" else ("yes" if r["seconds"] <= TARGET_SECONDS else "no")
        extra = f"; training {r['train_seconds']:.1f} s + inference {r['infer_seconds']:.1f} s" if m == "cnn" else ""
        pipe = "–" if m == "cnn" else f"{_f(r['pipeline_seconds'], 2)} ({_f(r['pipeline_cpu_seconds'], 2)})"
        L.append(f"| {m} | {_f(r['seconds'], 2)} ({_f(r['cpu_seconds'], 2)}{extra}) | {pipe} | "
                 f"{_f(r['memory_mb'], 0)} | {ok} |")
    L += ["", f"CNN: {cnn_iterations} training iterations on 32³ patches (cost independent of the volume size), "
          "then inference slab by slab. No GPU here: GPU timings are not measured.", ""]
    if timings["peers"]:
        L += [f"## Peers on the same {n}³ pair", "", "| task | peer | peer, s (CPU s) | peer memory (MB) | "
              "MedTorch, s (CPU s) | MedTorch memory (MB) | largest difference |", "|---|---|---|---|---|---|---|"]
        d = timings["peers"]["dwt"]
        L.append(f"| DWT rule (haar, 3 levels) | {d['peer']} | {_f(d['peer_seconds'], 2)} ({_f(d['peer_cpu_seconds'], 2)}) "
                 f"| {_f(d['peer_memory_mb'], 0)} | {_f(d['seconds'], 2)} ({_f(d['cpu_seconds'], 2)}) | "
                 f"{_f(d['memory_mb'], 0)} | {d['max_abs_difference']:.1e} |")
        gg = timings["peers"]["gff"]
        L.append(f"| GFF, exact (subsample 1) | {gg['peer']} | {_f(gg['peer_seconds'], 2)} ({_f(gg['peer_cpu_seconds'], 2)}) | "
                 f"{_f(gg['peer_memory_mb'], 0)} | {_f(gg['seconds_exact'], 2)} ({_f(gg['cpu_exact'], 2)}) | "
                 f"{_f(gg['memory_exact_mb'], 0)} | {gg['max_abs_difference_exact']:.1e} |")
        L.append(f"| GFF, fast (subsample 2, the default above 1 M voxels) | same | – | – | {_f(gg['seconds_fast'], 2)} "
                 f"({_f(gg['cpu_fast'], 2)}) | {_f(gg['memory_fast_mb'], 0)} "
                 f"| {gg['max_abs_difference_fast']:.1e} (mean {gg['mean_abs_difference_fast']:.1e}) |")
        L += ["", "Differences are on intensities in [0, 1]. The DWT difference comes from the max-abs rule: where two "
              "detail coefficients have (nearly) the same magnitude and opposite signs, float32 (MedTorch) and "
              "float64 (PyWavelets) can pick different ones; the transforms themselves agree to 1e-12 in float64 "
              "(`Testing/test_fusion_methods.py`). The fast GFF's difference is the approximation of the fast guided "
              "filter (see the CT-MRI comparison above)."]
        L.append("")
    L += harvard_markdown(harvard)
    L += ["## Targets", "",
          "The candidate for each pair is the training-free method with the highest QAB/F + VIF (3D), leaving out "
          "the reference rules (average, pixel maximum), which are reported above but can game the metrics "
          "(on the CT-MRI template pair the skull and the brain do not overlap, so the pixel maximum is "
          "nearly ideal there).", ""]
    for pair, rows in template["pairs"].items():
        candidates = [m for m in TRAINING_FREE if m not in REFERENCE_RULES and m != "dwt" and m in rows]
        best = max(candidates, key=lambda mm: rows[mm]["3d"]["QABF"] + rows[mm]["3d"]["VIF"])
        beats = all(rows[best][mode][k] > rows["dwt"][mode][k] for mode in ("3d", "slices") for k in ("QABF", "VIF"))
        L.append(f"- {pair} template pair: {best} vs DWT (mean approximation, max-abs details): QAB/F {rows[best]['3d']['QABF']:.3f} vs "
                 f"{rows['dwt']['3d']['QABF']:.3f}, VIF {rows[best]['3d']['VIF']:.3f} vs {rows['dwt']['3d']['VIF']:.3f} "
                 f"(3D); per slice QAB/F {rows[best]['slices']['QABF']:.3f} vs {rows['dwt']['slices']['QABF']:.3f}, VIF "
                 f"{rows[best]['slices']['VIF']:.3f} vs {rows['dwt']['slices']['VIF']:.3f}: "
                 f"{'beats it on both' if beats else 'does not beat it on both'}.")
    slow = [m for m, r in timings["methods"].items() if m != "cnn" and r["seconds"] > TARGET_SECONDS]
    L.append(f"- ≤ {TARGET_SECONDS:g} s per {n}³ pair for every method but the CNN (method time, "
             f"{env['torch_threads']} threads): " + ("met." if not slow else "not met by " + ", ".join(slow) + "."))
    if n != 256:
        L.append(f"- (Quick run: timings on {n}³, not 256³.)")
    L.append("- Harvard targets: " + ("see the Harvard section above." if harvard else
                                      "not measured here (no Harvard data on this machine)."))
    L.append("")
    write_text_atomic(path, "\n".join(L))


def _ssim_renamed(value: Any) -> Any:
    """Raw results written before the summed SSIM was named SSIM_sum, with the new name."""
    if isinstance(value, dict):
        return {("SSIM_sum" if k == "SSIM" else k): _ssim_renamed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_ssim_renamed(v) for v in value]
    return value


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.fusion", description=__doc__)
    p.add_argument("--quick", action="store_true", help="2 mm pairs, 128^3 timings, 20 CNN iterations")
    p.add_argument("--harvard-dir", type=Path, default=None,
                   help="local folder of the Harvard pairs: <task>/{test,train}/{MRI,CT|PET|SPECT}/<name>.png")
    p.add_argument("--harvard-only", action="store_true",
                   help="run only the Harvard section; the 3D sections are kept from the last run's fusion.json")
    p.add_argument("--select-pairs", type=int, default=15,
                   help="training pairs per task for choosing the gradient method's parameters (15)")
    p.add_argument("--cnn-checkpoint", type=Path, default=None,
                   help="Harvard CNN weights: trained on the training split and written here (reused if present)")
    p.add_argument("--retrain-cnn", action="store_true", help="train the Harvard CNN even if the checkpoint exists")
    p.add_argument("--harvard-cnn-iterations", type=int, default=3000, help="Harvard CNN training iterations (3000)")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks" / "fusion.md", help="Markdown report")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--cnn-iterations", type=int, default=None, help="CNN training iterations (100; quick 20)")
    p.add_argument("--size", type=int, default=None, help="timing grid n for n^3 (256; quick 128)")
    p.add_argument("--no-peers", action="store_true", help="skip the PyWavelets / SciPy peers")
    p.add_argument("--from-json", type=Path, default=None,
                   help="rewrite the Markdown from a run's raw results (the .json beside it) without rerunning")
    args = p.parse_args(argv)
    if args.from_json:
        raw = _ssim_renamed(json.loads(args.from_json.read_text()))
        env = raw["environment"]
        env["from_json"] = True
        # a Harvard section with its own environment was rerun alone (--harvard-only): still said so
        env["harvard_only"] = bool(isinstance(raw.get("harvard"), dict) and "environment" in raw["harvard"]
                                   and raw["harvard"]["environment"].get("date") != env.get("date"))
        out = args.out
        write_markdown(out, env, raw["template"], raw["timings"], raw["harvard"], bool(raw.get("quick", False)),
                       int(raw.get("cnn_iterations", 0)), float(raw.get("total_seconds", 0.0)),
                       out.with_name(out.stem + "_template.png"))
        print(f"wrote {out}")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.harvard_only:
        if args.harvard_dir is None:
            p.error("--harvard-only needs --harvard-dir")
        out = args.out
        raw_path = out.with_suffix(".json")
        if not raw_path.exists():
            p.error(f"--harvard-only keeps the 3D sections of {raw_path}, which does not exist: run the full benchmark")
        raw = _ssim_renamed(json.loads(raw_path.read_text()))
        t_start = time.perf_counter()

        def log_h(msg: str) -> None:
            print(f"[{time.perf_counter() - t_start:7.1f} s] {msg}", flush=True)

        raw["harvard"] = harvard_section(args.harvard_dir, args, log_h)
        env = dict(raw["environment"])
        env["from_json"] = False
        env["harvard_only"] = True
        write_markdown(out, env, raw["template"], raw["timings"], raw["harvard"], bool(raw.get("quick", False)),
                       int(raw.get("cnn_iterations", 0)), float(raw.get("total_seconds", 0.0)),
                       out.with_name(out.stem + "_template.png"))
        from medtorch.io import write_text_atomic

        write_text_atomic(raw_path, json.dumps(raw, indent=1, default=str))
        log_h(f"wrote {out} (Harvard section; 3D sections from the run of {env['date']})")
        return 0
    its = args.cnn_iterations if args.cnn_iterations is not None else (20 if args.quick else 100)
    n = args.size or (128 if args.quick else 256)
    env = environment(torch.get_num_threads())
    env["threads_flag"] = bool(args.threads)
    start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - start:7.1f} s] {msg}", flush=True)

    template = run_template(args.quick, its, log)
    timings = run_timings(n, its, not args.no_peers, log)
    harvard = harvard_section(args.harvard_dir, args, log) if args.harvard_dir else None
    env["load_end"] = os.getloadavg()
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    figure = out.with_name(out.stem + "_template.png")
    _figure(figure, template)
    write_markdown(out, env, template, timings, harvard, args.quick, its, time.perf_counter() - start, figure)
    raw = {k: v for k, v in template.items() if k != "figures"}
    from medtorch.io import write_text_atomic

    write_text_atomic(out.with_suffix(".json"), json.dumps({"environment": env, "template": raw, "timings": timings,
                                                            "harvard": harvard, "quick": args.quick,
                                                            "cnn_iterations": its,
                                                            "total_seconds": time.perf_counter() - start},
                                                           indent=1, default=str))
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
