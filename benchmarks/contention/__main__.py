"""``python -m benchmarks.contention [--quick]``: see :mod:`benchmarks.contention`."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TEMPLATE = REPO / "Resources" / "SampleData" / "MNI152_2009a_T1.nii.gz"
#: Target: a job beside an equal job takes at most this many times its time alone.
TARGET = 2.5
#: The environment of each behaviour (variables set; the thread and wait-policy variables of
#: the caller's environment are removed first, so that each behaviour is what it says).
MODES = {
    "old (torch default threads, OpenMP spins)": {"MEDTORCH_THREADS": "torch"},
    "new (runtime thread policy, OpenMP passive)": {},
}
_CLEARED = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_WAIT_POLICY", "KMP_BLOCKTIME",
            "MEDTORCH_THREADS", "MEDTORCH_DEVICE")


def make_data(folder: Path, size: int) -> dict[str, Path]:
    """A ``size``^3 crop of the MNI template's centre, and a copy rotated by 6 degrees and shifted
    by (4, -2, 1) mm, 4.6 mm (the moving volume of the registration)."""
    import numpy as np
    import SimpleITK as sitk

    from medtorch.io import read_volume, write_volume
    from medtorch.volume import Geometry, Volume

    t1 = read_volume(TEMPLATE)
    nx, ny, nz = t1.geometry.size
    lo = [max(0, (n - size) // 2) for n in (nx, ny, nz)]
    arr = np.ascontiguousarray(t1.array[lo[2]:lo[2] + size, lo[1]:lo[1] + size, lo[0]:lo[0] + size], dtype=np.float32)
    origin = t1.geometry.index_to_physical(np.array([[float(lo[0]), float(lo[1]), float(lo[2])]]))[0]
    fixed = Volume(arr, Geometry(arr.shape[::-1], origin, t1.geometry.spacing, t1.geometry.direction))
    img = fixed.to_sitk()
    euler = sitk.Euler3DTransform()
    centre = img.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2.0 for s in img.GetSize()])
    euler.SetCenter(centre)
    euler.SetRotation(0.0, 0.0, float(np.deg2rad(6.0)))
    euler.SetTranslation((4.0, -2.0, 1.0))
    moving = Volume.from_sitk(sitk.Resample(img, img, euler, sitk.sitkLinear, 0.0, sitk.sitkFloat32))
    paths = {"fixed": folder / "fixed.nrrd", "moving": folder / "moving.nrrd"}
    write_volume(fixed, paths["fixed"])
    write_volume(moving, paths["moving"])
    return paths


def workloads(data: dict[str, Path], out: Path, quick: bool) -> dict[str, list[str]]:
    return {
        "denoise selfsup": ["denoise", "--in", str(data["fixed"]), "--out", str(out / "den.nrrd"), "--method", "selfsup",
                            "--seed", "1", "--device", "cpu", "-q"]
                           + (["--train-iterations", "30"] if quick else []),
        "register rigid": ["register", "--fixed", str(data["fixed"]), "--moving", str(data["moving"]), "--mode", "rigid",
                           "--out-transform", str(out / "t.tfm"), "--seed", "1", "--device", "cpu", "-q"],
    }


def _env(mode_env: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _CLEARED}
    env.update(mode_env)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def run_together(args: list[str], n: int, env: dict[str, str], work: Path) -> list[dict[str, Any]]:
    """Start ``n`` equal jobs at once; their records (wall and CPU time, torch threads)."""
    procs = []
    for i in range(n):
        rec = work / f"job{i}.json"
        rec.unlink(missing_ok=True)
        argv = [sys.executable, "-m", "benchmarks.contention.one", str(rec), "--", *[a.replace("{i}", str(i)) for a in args]]
        procs.append((subprocess.Popen(argv, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                       text=True), rec))
    out = []
    for proc, rec in procs:
        _, err = proc.communicate()
        if proc.returncode != 0 or not rec.exists():
            raise RuntimeError(f"job failed ({proc.returncode}): {err[-2000:]}")
        out.append(json.loads(rec.read_text()))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.contention", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="64^3 crop, 30 training iterations (a smoke run)")
    ap.add_argument("--size", type=int, default=None, help="crop size in voxels (default 112, quick 64)")
    ap.add_argument("--out", default=str(REPO / "docs" / "benchmarks" / "contention.md"))
    ap.add_argument("--json", default=None, help="also write the raw records here")
    a = ap.parse_args(argv)
    size = a.size or (64 if a.quick else 112)
    rows = []
    with tempfile.TemporaryDirectory(prefix="medtorch-contention-") as tmp:
        work = Path(tmp)
        data = make_data(work, size)
        jobs = workloads(data, work / "{i}", a.quick)
        for i in range(2):
            (work / str(i)).mkdir()
        for wname, args in jobs.items():
            for mname, menv in MODES.items():
                env = _env(menv)
                load_alone = os.getloadavg()[0]
                alone = run_together(args, 1, env, work)[0]
                time.sleep(2.0)
                load_pair = os.getloadavg()[0]
                pair = run_together(args, 2, env, work)
                time.sleep(2.0)
                mean_pair = sum(r["seconds"] for r in pair) / len(pair)
                row = {"workload": wname, "mode": mname, "alone_s": alone["seconds"], "pair_s": [r["seconds"] for r in pair],
                       "slowdown": mean_pair / alone["seconds"], "threads_alone": alone["torch_threads"],
                       "threads_pair": [r["torch_threads"] for r in pair], "cpu_alone_s": alone["cpu_s"],
                       "cpu_pair_s": [r["cpu_s"] for r in pair], "load_before_alone": load_alone,
                       "load_before_pair": load_pair}
                rows.append(row)
                print(f"{wname:16s} {mname:45s} alone {alone['seconds']:7.2f} s  pair {mean_pair:7.2f} s  "
                      f"x{row['slowdown']:.2f}  threads {row['threads_alone']}/{row['threads_pair']}  "
                      f"load {load_alone:.2f}/{load_pair:.2f}", flush=True)
    write_markdown(Path(a.out), rows, size, a.quick)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2), encoding="utf-8")
    return 0


def write_markdown(path: Path, rows: list[dict[str, Any]], size: int, quick: bool) -> None:
    import torch

    from medtorch.runtime.threads import usable_cpus

    lines = [
        "# Contention: a job beside an equal job",
        "",
        "Written by `python -m benchmarks.contention" + (" --quick" if quick else "") + "` on "
        + datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC") + "; do not edit by hand.",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs ({usable_cpus()} usable), "
        f"Python {platform.python_version()}, torch {torch.__version__}. Data: a {size}^3 crop of the MNI template "
        "(1 mm); registration: the crop against a copy rotated 6 degrees and shifted 4.6 mm."
        + (" Quick run: 30 training iterations of the self-supervised network." if quick else ""),
        "",
        "Each job is a fresh `medtorch` process. *Slowdown* = mean wall time of two equal jobs started together "
        f"/ wall time of one alone; target at most {TARGET}. *Load* is the 1-minute load average just before "
        "the run (alone / pair): figures taken on a busy machine (load well above 0) say little.",
        "",
        "| workload | behaviour | alone (s) | together (s) | slowdown | target | torch threads (alone; together) | load |",
        "| --- | --- | ---: | ---: | ---: | --- | --- | --- |",
    ]
    for r in rows:
        ok = "met" if r["slowdown"] <= TARGET else "missed"
        pair = " / ".join(f"{s:.1f}" for s in r["pair_s"])
        lines.append(f"| {r['workload']} | {r['mode']} | {r['alone_s']:.1f} | {pair} | {r['slowdown']:.2f} | {ok} | "
                     f"{r['threads_alone']}; {', '.join(str(t) for t in r['threads_pair'])} | "
                     f"{r['load_before_alone']:.2f} / {r['load_before_pair']:.2f} |")
    lines += [
        "",
        "The old behaviour: torch takes one thread per core and OpenMP threads spin at barriers, so two jobs "
        "on shared cores burn each other's time. The runtime's policy (`medtorch/runtime/threads.py`) takes "
        "threads = clamp(usable CPUs - round(load of the others), 1, min(usable CPUs, 16)) when a job starts "
        "and sets `OMP_WAIT_POLICY=PASSIVE`, `KMP_BLOCKTIME=0`. The torch registration engine runs one "
        "thread on the CPU in both behaviours.",
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
