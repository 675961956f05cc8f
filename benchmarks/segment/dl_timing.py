"""Deep-learning inference timing: a BraTS-bundle-shaped SegResNet on a BraTS-sized study.

``python -m benchmarks.segment.dl_timing [--quick] [--out PATH] [--threads 2] [--workdir DIR]``

The model is MONAI's BraTS bundle as its model-zoo config defines it (``SegResNet``,
``blocks_down`` 1-2-2-4, ``blocks_up`` 1-1-1, 16 initial filters, 4 input channels T1c, T1,
T2, FLAIR; 3 sigmoid outputs TC, WT, ET; per-channel non-zero z-score normalisation; a
240x240x160 sliding window with overlap 0.5), with **random weights made here** (nothing is
downloaded; the weights change the numbers of neither the time nor the memory). The study is
BraTS-shaped: four channels of 240x240x155 voxels at 1 mm, made from the MNI152 2009a
template in ``Resources/SampleData`` with a synthetic tumor (``medtorch.segment.tumor_phantom``),
skull-stripped (zero outside the brain) as BraTS data are.

Every row runs in its own process (a clean peak RSS, ``ru_maxrss``) on the same files:

* ``medtorch`` -- :func:`medtorch.segment.inference.segment_with_model` on the loaded volumes,
  bundle semantics (one 240x240x160 window, as the bundle's own runner);
* ``medtorch, runner's memory layout`` -- the same with ``channels_last=False``: the default runs
  large windows channels-last on the CPU (less memory; float32 sums in another order), this row
  computes exactly as the runner does;
* ``medtorch, crop to brain`` -- the same with ``crop_foreground=True``: the window fitted to the
  non-zero voxels (the brain's bounding box);
* ``medtorch, bfloat16 on the CPU`` -- the same with ``cpu_bf16=True`` (autocast to bfloat16; this
  CPU has AVX512-BF16);
* ``medtorch, flip TTA`` -- the identity plus three flips (full run only: 4x the time);
* ``medtorch segment (CLI)`` -- ``medtorch segment --model``'s code path end to end: reading the
  four NIfTI files, inference, writing the label map;
* ``monai.bundle run`` (the peer) -- MONAI's own bundle runner on the same bundle and files:
  it loads the files, preprocesses, runs the inferer, inverts and saves; end to end.

Reported: wall time of the call (and of the whole end-to-end path where there is one), peak RSS
of the process, RSS before the call (imports), and the agreement of each label map with the
runner's. The machine's load average is recorded around each run: other jobs running on the
machine make the times longer, never shorter. No GPU here: AMP (CUDA only) is not measured.

Writes ``docs/benchmarks/segment_dl.md`` (``--quick``: ``<workdir>/segment_dl.md`` unless ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "benchmarks" / "segment_dl.md"

BRATS_NETWORK = {"_target_": "SegResNet", "blocks_down": [1, 2, 2, 4], "blocks_up": [1, 1, 1], "init_filters": 16,
                 "in_channels": 4, "out_channels": 3, "dropout_prob": 0.2}
CHANNELS = ("T1c", "T1", "T2", "FLAIR")
BRATS_LAMBDA = "$lambda x: torch.where(x[[2]] > 0, 4, torch.where(x[[0]] > 0, 1, torch.where(x[[1]] > 0, 2, 0)))"


# -- data and bundle ---------------------------------------------------------------------------------


def build_study(workdir: Path, shape: tuple[int, int, int], seed: int = 0) -> list[Path]:
    """Four NIfTI channels on a BraTS-like grid (``shape`` = i, j, k at 1 mm), zero outside the brain."""
    from medtorch.io import write_volume
    from medtorch.resample import resample
    from medtorch.volume import Geometry, Volume

    files = [workdir / f"study_{c.lower()}.nii.gz" for c in CHANNELS]
    if all(f.exists() for f in files):
        return files
    try:
        from medtorch.segment.tumor_phantom import make_tumor_phantom, mni_tissue

        tissue = mni_tissue()
        ph = make_tumor_phantom(tissue, noise=0.05, seed=seed)
        chans = {k: v for k, v in ph.channels.items()}
        brain = Volume(tissue.brain.astype(np.uint8), tissue.geometry, "label")
        source = "MNI152 2009a + medtorch.segment.tumor_phantom"
    except Exception as exc:  # the phantom module is missing or changed: a plain template study
        from medtorch.io import read_volume

        t1 = read_volume(REPO / "Resources" / "SampleData" / "MNI152_2009a_T1.nii.gz")
        gm = read_volume(REPO / "Resources" / "SampleData" / "MNI152_2009a_GM.nii.gz")
        wm = read_volume(REPO / "Resources" / "SampleData" / "MNI152_2009a_WM.nii.gz")
        mask = (gm.array.astype(np.float32) + wm.array.astype(np.float32)) > 60
        a = t1.array.astype(np.float32) * mask
        chans = {"T1c": t1.with_array(a), "T1": t1.with_array(a * 0.9), "T2": t1.with_array((a.max() - a) * mask),
                 "FLAIR": t1.with_array((0.6 * a.max() - 0.3 * a) * mask)}
        brain = Volume(mask.astype(np.uint8), t1.geometry, "label")
        source = f"MNI152 2009a template only ({type(exc).__name__})"
    g0 = brain.geometry
    target = Geometry(shape, origin=g0.center() - np.asarray(shape, float) / 2.0 + 0.5, spacing=(1.0, 1.0, 1.0))
    mask = resample(brain, target).array > 0
    for f, c in zip(files, CHANNELS):
        v = resample(chans[c], target)
        write_volume(v.with_array((v.array * mask).astype(np.float32)), f)
    (workdir / "study.json").write_text(json.dumps({"source": source, "shape": list(shape)}))
    return files


def build_bundle(workdir: Path, roi: list[int], seed: int = 0) -> Path:
    """The BraTS bundle's configs with random weights (an ignite-free ``run`` section)."""
    import torch
    from monai.networks.nets import SegResNet

    root = workdir / "brats_bundle"
    if (root / "models" / "model.pt").exists():
        return root
    (root / "configs").mkdir(parents=True, exist_ok=True)
    (root / "models").mkdir(exist_ok=True)
    meta = {"version": "0.0.0-random", "description": "BraTS-bundle-shaped SegResNet with RANDOM weights (timing only)",
            "network_data_format": {
                "inputs": {"image": {"type": "image", "num_channels": 4,
                                     "channel_def": {str(i): c for i, c in enumerate(CHANNELS)}}},
                "outputs": {"pred": {"type": "image", "num_channels": 3,
                                     "channel_def": {"0": "Tumor core", "1": "Whole tumor", "2": "Enhancing tumor"}}}}}
    cfg = {
        "bundle_root": ".", "output_dir": "./eval", "datalist": [],
        "device": "$torch.device('cpu')",
        "network_def": BRATS_NETWORK,
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image"},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True, "channel_wise": True}]},
        "dataset": {"_target_": "Dataset", "data": "@datalist", "transform": "@preprocessing"},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": roi, "sw_batch_size": 1, "overlap": 0.5},
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "sigmoid": True},
            {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
             "nearest_interp": False, "to_tensor": True},
            {"_target_": "AsDiscreted", "keys": "pred", "threshold": 0.5},
            {"_target_": "Lambdad", "keys": "pred", "func": BRATS_LAMBDA},
            {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_postfix": "seg",
             "output_dtype": "$np.uint8", "resample": False, "separate_folder": False}]},
        "initialize": ["$torch.set_grad_enabled(False)",
                       "$@network.load_state_dict(torch.load(@bundle_root + '/models/model.pt', weights_only=True))",
                       "$@network.eval()"],
        "run": ["$[@postprocessing(dict(d, pred=@inferer(d['image'][None].to(@device), @network)[0])) "
                "for d in @dataset]"],
    }
    (root / "configs" / "metadata.json").write_text(json.dumps(meta, indent=1))
    (root / "configs" / "inference.json").write_text(json.dumps(cfg, indent=1))
    torch.manual_seed(seed)
    net = SegResNet(**{k: v for k, v in BRATS_NETWORK.items() if k != "_target_"})
    torch.save(net.state_dict(), root / "models" / "model.pt")
    return root


# -- one row, in its own process ---------------------------------------------------------------------


def _peak_mb() -> float:
    """Peak RSS of this process (``VmHWM``, which :func:`_reset_peak` resets; ``ru_maxrss``
    would also count the parent's peak, kept across fork and exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kB


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 1024**2


def _reset_peak() -> bool:
    """Reset the peak RSS: a child inherits its parent's high-water mark at fork (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def run_one(kind: str, bundle: Path, files: list[Path], out_dir: Path, threads: int) -> dict[str, Any]:
    rec_reset = _reset_peak()
    import torch

    torch.set_num_threads(threads)
    out_dir.mkdir(parents=True, exist_ok=True)
    rec: dict[str, Any] = {"kind": kind, "load_before": os.getloadavg()[0], "peak_reset": rec_reset,
                           "threads": threads}
    t_imp = time.perf_counter()
    import monai  # noqa: F401

    from medtorch.io import read_volume, write_volume

    rec["import_s"] = time.perf_counter() - t_imp
    label_path = out_dir / "label.nii.gz"
    if kind == "monai-runner":
        from monai.bundle import run

        rec["rss_before_mb"] = _rss_mb()
        c0, t0 = _cpu_s(), time.perf_counter()
        run(run_id="run", init_id="initialize", final_id=None, meta_file=str(bundle / "configs" / "metadata.json"),
            config_file=str(bundle / "configs" / "inference.json"), logging_file=None, bundle_root=str(bundle),
            datalist=[{"image": [str(f) for f in files]}], output_dir=str(out_dir))
        rec["end_to_end_s"] = time.perf_counter() - t0
        rec["cpu_s"] = _cpu_s() - c0
        found = sorted(out_dir.glob("*_seg.nii*"))
        os.replace(found[0], label_path)
    elif kind == "medtorch-cli":
        from medtorch.progress import CancelToken
        from medtorch.commands.segment import run_model_cli

        args = argparse.Namespace(model=str(bundle), input=[str(f) for f in files], out=str(label_path), overlap=None,
                                  tta=False, roi_size=None, device="cpu", quiet=True, label_convention="brats2021")
        rec["rss_before_mb"] = _rss_mb()
        c0, t0 = _cpu_s(), time.perf_counter()
        run_model_cli(args, CancelToken())
        rec["end_to_end_s"] = time.perf_counter() - t0
        rec["cpu_s"] = _cpu_s() - c0
    else:
        from medtorch.segment.inference import segment_with_model

        vols = [read_volume(f) for f in files]
        rec["rss_before_mb"] = _rss_mb()
        c0, t0 = _cpu_s(), time.perf_counter()
        label, info = segment_with_model(bundle, vols, device="cpu", label_convention="brats2021",
                                         crop_foreground=kind == "medtorch-crop", tta=kind == "medtorch-tta",
                                         cpu_bf16=kind == "medtorch-bf16",
                                         channels_last=False if kind == "medtorch-contiguous" else None)
        rec["call_s"] = time.perf_counter() - t0
        rec["cpu_s"] = _cpu_s() - c0
        rec["info"] = {k: info[k] for k in ("roi_size", "windows", "seconds", "network_grid", "cropped_to_foreground",
                                            "tta_flips")}
        write_volume(label, label_path)
    rec["peak_rss_mb"] = _peak_mb()
    rec["load_after"] = os.getloadavg()[0]
    rec["label"] = str(label_path)
    return rec


def _spawn(kind: str, bundle: Path, files: list[Path], out_dir: Path, threads: int, timeout: float) -> dict[str, Any]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    res = out_dir / f"{kind}.json"
    cmd = [sys.executable, "-m", "benchmarks.segment.dl_timing", "--one", kind, "--bundle", str(bundle),
           "--result", str(res), "--threads", str(threads), "--files", *map(str, files)]
    log = out_dir / f"{kind}.log"
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(log, "w", encoding="utf-8") as fh:
        try:
            proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"kind": kind, "error": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0 or not res.exists():
        tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-5:]
        return {"kind": kind, "error": f"exit {proc.returncode}: " + " | ".join(tail)}
    return json.loads(res.read_text())


# -- report ------------------------------------------------------------------------------------------


def _agreement(a_path: str, b_path: str) -> dict[str, float]:
    from medtorch.io import read_volume

    a, b = read_volume(a_path).array, read_volume(b_path).array
    out = {"equal_voxels": float((a == b).mean())}
    for v in (1, 2, 4):
        s = (a == v).sum() + (b == v).sum()
        out[f"dice_{v}"] = float(2 * np.logical_and(a == v, b == v).sum() / s) if s else float("nan")
    return out


LABELS = {"medtorch": "MedTorch `segment_with_model` (bundle window)",
          "medtorch-contiguous": "MedTorch, runner's memory layout (`channels_last=False`)",
          "medtorch-crop": "MedTorch, crop to brain (`crop_foreground`)",
          "medtorch-bf16": "MedTorch, bfloat16 on the CPU (`cpu_bf16`)",
          "medtorch-tta": "MedTorch, flip TTA (4 passes)",
          "medtorch-cli": "MedTorch `medtorch segment --model` (read + infer + write)",
          "monai-runner": "MONAI `monai.bundle run` (peer; read + infer + invert + write)"}


def _fmt(v: Any, nd: int = 1) -> str:
    return "–" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.{nd}f}"


#: what ``segment_with_model`` and ``medtorch segment --model`` run without options
DEFAULT_KIND = "medtorch"
TARGET_S, TARGET_GB = 30.0, 4.0


def default_statement(rows: list[dict[str, Any]], quick: bool = False) -> str:
    """The sentence naming MedTorch's default configuration for a full volume and whether its
    measured row meets the targets (wall time and CPU time / threads; peak RSS in GB = 1e9 bytes)."""
    head = ("**MedTorch's default for a full volume** (`segment_with_model(...)` and `medtorch segment --model` "
            "without options) is the row \"" + LABELS[DEFAULT_KIND] + "\": the bundle's own window and overlap, "
            "float32, channels-last on the CPU for large windows, no crop, no TTA, labels thresholded/argmaxed "
            "before resampling back (no full-resolution float map of every class).")
    row = next((r for r in rows if r.get("kind") == DEFAULT_KIND and "error" not in r), None)
    if row is None:
        return head + " It was not measured in this run."
    peak_gb = row["peak_rss_mb"] * 1024**2 / 1e9
    threads = max(int(row.get("threads", 2) or 2), 1)
    cpu_wall = row.get("cpu_s", float("nan")) / threads
    where = " Measured (--quick: a small study, not the full volume the targets are about):" if quick else " Measured:"
    return (head + where + f" {row['call_s']:.1f} s wall (CPU time / {threads} threads: {cpu_wall:.1f} s; target "
            f"{TARGET_S:.0f} s: {'met' if row['call_s'] <= TARGET_S else 'met in CPU time only' if cpu_wall <= TARGET_S else 'NOT met'}), "
            f"peak RSS {peak_gb:.2f} GB ({row['peak_rss_mb'] / 1024:.2f} GiB; memory rule <= {TARGET_GB:.0f} GB: "
            f"{'met' if peak_gb <= TARGET_GB else 'NOT met'}).")


def write_report(path: Path, rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    runner = next((r for r in rows if r.get("kind") == "monai-runner" and "error" not in r), None)
    lines = [
        "# Segmentation: deep-learning inference timing",
        "",
        "Generated by `python -m benchmarks.segment.dl_timing"
        + (" --quick" if meta["quick"] else "") + "` (do not edit by hand).",
        "",
        f"* Model: MONAI BraTS bundle's network (SegResNet 1-2-2-4 / 1-1-1, 16 filters, 4 channels in, 3 sigmoid out), "
        f"**random weights** made locally; window {meta['roi']}, overlap 0.5, sw_batch_size 1.",
        f"* Study: 4 channels of {meta['shape']} voxels (1 mm), {meta['source']}; zero outside the brain "
        f"(brain bounding box {meta['brain_box']}).",
        f"* Machine: {meta['cpu']}, {meta['threads']} threads per run, {meta['cores']} cores, no GPU "
        "(AMP and GPU timings are not measured here). torch "
        f"{meta['torch']}, MONAI {meta['monai']}.",
        "* Each row is one cold run in its own process; peak = the process's peak RSS (`VmHWM`), including "
        "the imports (RSS before the call in its own column). `load` = the machine's 1-minute load average before / "
        "after the run: the machine is shared, and a load above the thread count makes every wall time longer. CPU "
        "time (user + system, both threads) of the same span is less sensitive to other jobs: on an otherwise idle "
        "machine the wall time of a well-parallelised run approaches CPU time / threads.",
        "",
        "| Run | call (s) | of which network (s) | end to end (s) | CPU time (s) | peak RSS (GiB) | RSS before call (GiB) | "
        "windows | agreement with runner (equal voxels / Dice ET, NCR, ED) | load |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for r in rows:
        name = LABELS.get(r["kind"], r["kind"])
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error'][:120]} | | | | | | | | |")
            continue
        agree = "–"
        if runner is not None and r["kind"] != "monai-runner":
            a = _agreement(r["label"], runner["label"])
            agree = (f"{a['equal_voxels'] * 100:.3f} % / {_fmt(a['dice_4'], 4)}, {_fmt(a['dice_1'], 4)}, "
                     f"{_fmt(a['dice_2'], 4)}")
        windows = r.get("info", {}).get("windows", "–")
        net_s = r.get("info", {}).get("seconds", {}).get("network")
        lines.append(f"| {name} | {_fmt(r.get('call_s'))} | {_fmt(net_s)} | {_fmt(r.get('end_to_end_s'))} | "
                     f"{_fmt(r.get('cpu_s'))} | "
                     f"{r['peak_rss_mb'] / 1024:.2f} | {r['rss_before_mb'] / 1024:.2f} | {windows} | {agree} | "
                     f"{r['load_before']:.1f} / {r['load_after']:.1f} |")
    lines += ["", default_statement(rows, bool(meta.get("quick")))]
    lines += [
        "",
        "Targets (issue #7): full-volume DL inference <= 30 s and <= 4 GB peak memory on 2 CPU cores. Quoted in the "
        "issue, not measured here: one 240x240x160 window 21.5 s and 3.65 GB; SlicerMONAIAuto3DSeg lists 51.8 s on CPU.",
        "",
        "Notes: random weights make the label maps meaningless but not the timings; the agreement column compares label "
        "maps of the same random network (the tests check parity on bundles whose outputs are not trivial). A random "
        "network's sigmoid outputs sit at the 0.5 threshold almost everywhere, the worst case for float32 rounding: "
        "the channels-last default differs from the runner there by that rounding only (the row with the runner's "
        "layout shows the same arithmetic giving the same labels). "
        "`crop to brain` runs the window on the brain's bounding box only: faster, but the network then sees less "
        "zero background than the bundle's runner gives it, so its labels may differ from the runner's near the edges "
        "of the box.",
        "",
    ]
    if meta.get("details"):
        lines += ["<details><summary>Raw results</summary>", "", "```json",
                  json.dumps(meta["details"], indent=1, default=str), "```", "", "</details>", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines), encoding="utf-8")
    os.replace(tmp, path)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.segment.dl_timing", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a 128x128x80 study and window, no TTA (about two minutes)")
    p.add_argument("--workdir", type=Path, help="where data, bundle and results go (default: a new temporary folder)")
    p.add_argument("--out", type=Path, help=f"report (default: {DOC.relative_to(REPO)}; --quick: <workdir>/segment_dl.md)")
    p.add_argument("--threads", type=int, default=2, help="torch threads per run (default 2)")
    p.add_argument("--timeout", type=float, default=1200.0, help="seconds per run before it is stopped")
    p.add_argument("--runs", nargs="+", choices=list(LABELS), help="only these rows")
    p.add_argument("--report-only", action="store_true",
                   help="rewrite the report from the results already in --workdir (no new runs)")
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--bundle", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--files", nargs="+", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.one:  # child process: one row
        rec = run_one(args.one, args.bundle, args.files, args.result.parent / args.one, args.threads)
        args.result.write_text(json.dumps(rec, default=str))
        return 0

    import monai
    import torch

    work = args.workdir or Path(tempfile.mkdtemp(prefix="medtorch-dl-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    shape = (128, 128, 80) if args.quick else (240, 240, 155)
    roi = [128, 128, 80] if args.quick else [240, 240, 160]
    print(f"[dl_timing] building the study {shape} and the bundle in {work}", flush=True)
    files = build_study(work, shape)
    bundle = build_bundle(work, roi)
    from medtorch.io import read_volume

    nz = np.nonzero(read_volume(files[0]).array)
    brain_box = [int(a.max() - a.min() + 1) for a in nz[::-1]]
    kinds = args.runs or (["medtorch", "medtorch-contiguous", "medtorch-crop", "medtorch-bf16", "medtorch-cli",
                           "monai-runner"]
                          + ([] if args.quick else ["medtorch-tta"]))
    rows = []
    for kind in kinds:
        if args.report_only:
            rows.append(json.loads((work / "runs" / f"{kind}.json").read_text()))
            continue
        stale = work / "runs" / f"{kind}.json"
        if stale.exists():
            stale.unlink()
        print(f"[dl_timing] {kind} ...", flush=True)
        r = _spawn(kind, bundle, files, work / "runs", args.threads, args.timeout)
        print(f"[dl_timing] {kind}: " + json.dumps({k: v for k, v in r.items() if k not in ("info", "label")}, default=str),
              flush=True)
        rows.append(r)
    study = json.loads((work / "study.json").read_text())
    meta = {"quick": args.quick, "shape": "x".join(map(str, shape)), "roi": "x".join(map(str, roi)),
            "source": study["source"], "brain_box": "x".join(map(str, brain_box)), "threads": args.threads,
            "cores": os.cpu_count(), "cpu": _cpu_name(), "torch": torch.__version__,
            "monai": monai.__version__, "details": [{k: v for k, v in r.items() if k != "label"} for r in rows]}
    out = args.out or (work / "segment_dl.md" if args.quick else DOC)
    write_report(out, rows, meta)
    print(f"[dl_timing] report written to {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
