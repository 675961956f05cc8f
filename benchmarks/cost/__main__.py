"""``python -m benchmarks.cost``: the rough cost per method that ``--help`` shows, measured.

Every method of ``denoise``, ``superres`` and ``fuse`` runs at growing sizes (``--sizes``, n^3
volumes; ``superres``: n x n x n/4 inputs made n^3 with factor 4) until a run takes ``--enough``
seconds, on the bundled MNI T1 (5 % Rician noise for denoising; the T1 and its grey-matter map
for fusion, aligned, metrics off), on 2 threads. A fixed plus per-voxel cost ``t = a + b V``
through the two largest sizes measured gives the figure for 256^3. Writes ``docs/benchmarks/cost.md`` (and ``.json``) and compares with the table
the help reads, :data:`medtorch.commands.costs.COST_256_2CORES`: ``--check`` exits 1 where a
figure is off by more than ``--tolerance`` times (3). ``--print-table`` prints the table to paste.
The machine is shared with other work, so the figures are approximate.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("MEDTORCH_THREADS", "2")
os.environ.setdefault("OMP_NUM_THREADS", "2")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TARGET = 256
#: A fit through sizes below this edge is not extrapolated to 256^3: there, padding and fixed work
#: outweigh the per-voxel cost (under heavy load a run timed nlm at 36 s at 40^3; 5 s at 128^3 in
#: docs/benchmarks/enhance.md).
MIN_FIT_EDGE = 72


def _mni(name: str = "T1") -> Any:
    from medtorch.io import read_volume

    return read_volume(REPO / "Resources" / "SampleData" / f"MNI152_2009a_{name}.nii.gz")


def _crop(arr: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """The centre of ``arr`` at ``shape`` (z, y, x), zero-padded where the volume is smaller."""
    out = np.zeros(shape, np.float32)
    src, dst = [], []
    for n, m in zip(arr.shape, shape):
        if n >= m:
            s = (n - m) // 2
            src.append(slice(s, s + m))
            dst.append(slice(0, m))
        else:
            s = (m - n) // 2
            src.append(slice(0, n))
            dst.append(slice(s, s + n))
    out[tuple(dst)] = arr[tuple(src)]
    return out


def _volume(arr: np.ndarray, spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> Any:
    from medtorch.volume import Volume

    return Volume.from_array(arr.astype(np.float32), spacing=spacing)


def cases(n: int) -> dict[str, dict[str, Callable[[], Any]]]:
    """Per command and method, a function that runs it once at size ``n``."""
    from medtorch.enhance.denoise import DENOISE_METHODS, denoise
    from medtorch.enhance.superres import SR_METHODS, superres
    from medtorch.fusion.fuse import fuse_volumes
    from medtorch.ops.fusion import FusionMethod
    from typing import get_args

    t1 = _mni("T1").array.astype(np.float32)
    t1 /= float(t1.max())
    clean = _crop(t1, (n, n, n))
    rng = np.random.default_rng(0)
    s = 0.05
    noisy = np.sqrt((clean + s * rng.standard_normal(clean.shape)) ** 2 + (s * rng.standard_normal(clean.shape)) ** 2)
    noisy_vol = _volume(noisy)
    thick = _volume(clean[::4], spacing=(1.0, 1.0, 4.0))
    gm = _crop(_mni("GM").array.astype(np.float32), (n, n, n))
    fixed, moving = _volume(clean), _volume(gm / max(float(gm.max()), 1e-6))
    out: dict[str, dict[str, Callable[[], Any]]] = {"denoise": {}, "superres": {}, "fuse": {}}
    for m in DENOISE_METHODS:
        out["denoise"][m] = lambda m=m: denoise(noisy_vol, m, seed=0)
    for m in SR_METHODS:
        out["superres"][m] = lambda m=m: superres(thick, m, factor=4.0, axis="k")
    for m in get_args(FusionMethod):
        out["fuse"][m] = lambda m=m: fuse_volumes(fixed, moving, m, metrics=None)
    return out


def _timed(fn: Callable[[], Any]) -> float:
    """Seconds of one run; the best of three for a run under a second (warm-up and jitter)."""
    t0 = time.perf_counter()
    fn()
    t = time.perf_counter() - t0
    if t < 1.0:
        for _ in range(2):
            t0 = time.perf_counter()
            fn()
            t = min(t, time.perf_counter() - t0)
    return t


def measure(sizes: tuple[int, ...], only: set[str] | None, log: Callable[[str], None],
            enough_s: float = 20.0, save: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Each method at growing sizes, until one run takes ``enough_s`` (or the last size); the
    two largest sizes measured give the fit."""
    results: dict[str, dict[str, Any]] = {}
    per_size: dict[int, Any] = {}
    first = cases(sizes[0])
    for command in first:
        for method in first[command]:
            if only and f"{command}:{method}" not in only and command not in only:
                continue
            measured: list[tuple[int, float]] = []
            for k, n in enumerate(sizes):
                if n not in per_size:
                    per_size[n] = first if n == sizes[0] else cases(n)
                measured.append((n, _timed(per_size[n][command][method])))
                if k >= 1 and measured[-1][1] >= enough_s:
                    break
            (n1, t1), (n2, t2) = measured[-2:]
            times = [t1, t2]
            r = fitted({"sizes": [n1, n2], "seconds": [round(t, 3) for t in times]})
            results.setdefault(command, {})[method] = r
            est = r["estimate_256_s"]
            if save is not None:  # what is measured so far, should the run be stopped
                save(results)
            log(f"{command} {method}: {', '.join(f'{t:.2f} s at {n}^3' for n, t in measured)} -> "
                f"~{est:.0f} s at {TARGET}^3")
    return results


def fitted(r: dict[str, Any]) -> dict[str, Any]:
    """``r`` with the fit ``t = a + b V`` through its two points and the figure for 256^3 (the
    measured time when the larger size is 256)."""
    (n1, n2), (t1, t2) = r["sizes"], r["seconds"]
    v1, v2 = float(n1) ** 3, float(n2) ** 3
    b = max(0.0, (t2 - t1) / (v2 - v1))
    a = max(0.0, t2 - b * v2)
    est = t2 if n2 == TARGET else a + b * float(TARGET) ** 3
    return {**r, "fixed_s": round(a, 3), "per_mvoxel_s": round(b * 1e6, 3), "estimate_256_s": round(est, 1),
            "extrapolated": n2 >= MIN_FIT_EDGE}


def check(results: dict[str, Any], tolerance: float) -> list[str]:
    """The table's figures that are off from the measurement by more than ``tolerance`` times."""
    from medtorch.commands.costs import COST_256_2CORES

    bad = []
    for command, methods in results.items():
        for method, r in methods.items():
            have = COST_256_2CORES.get(command, {}).get(method)
            est = max(r["estimate_256_s"], 0.1)
            if not r.get("extrapolated", True):
                if have is not None:
                    bad.append(f"{command} {method}: the table says {have:g} s, but the run reached only "
                               f"{r['sizes'][1]}^3, too small to extrapolate")
                continue
            if have is None:
                bad.append(f"{command} {method}: not in the table (measured ~{est:.0f} s)")
                continue
            elif not est / tolerance <= max(have, 0.1) <= est * tolerance:
                bad.append(f"{command} {method}: the table says {have:g} s, measured ~{est:.0f} s")
    return bad


def table_code(results: dict[str, Any]) -> str:
    """The table for medtorch/commands/costs.py: every method of each command, ``None`` where not measured."""
    from medtorch.commands.costs import COST_256_2CORES

    lines = ["COST_256_2CORES: dict[str, dict[str, float | None]] = {"]
    for command, methods in results.items():
        names = list(COST_256_2CORES.get(command) or {}) or list(methods)
        names += [m for m in methods if m not in names]
        body = ", ".join(f'"{m}": {max(methods[m]["estimate_256_s"], 0.1):g}'
                         if m in methods and methods[m].get("extrapolated", True) else f'"{m}": None' for m in names)
        lines.append(f'    "{command}": {{{body}}},')
    lines.append("}")
    return "\n".join(lines)


def markdown(raw: dict[str, Any]) -> str:
    from medtorch.commands.costs import COST_256_2CORES

    env = raw["environment"]
    lines = ["# Cost per method", "",
             f"Generated by `python -m benchmarks.cost` on {env['date']} in {env['total_seconds'] / 60:.1f} min"
             + (f" ({env['parts']} runs merged by `--from-json`: each method's row from one run)" if env.get("parts") else "")
             + f" ({env['cores']} cores shared with other work: load {env['load_start']:.1f} at the start, "
             f"{env['load_end']:.1f} at the end; {env['threads']} threads). Do not edit by hand: rerun the benchmark.",
             "",
             f"Each method ran at growing sizes n^3 ({', '.join(str(n) for n in raw['sizes'])}) until a run took "
             f"{raw['enough_s']:g} s (runs under a second: the best of three); `superres`: n x n x n/4 inputs, "
             "factor 4; `fuse`: the MNI T1 (cropped or zero-padded to n^3) and its grey-matter map, aligned, no "
             "metrics. `t = a + b V` through the two largest sizes measured gives the figure for 256^3 (measured "
             "there when it was reached). A method that took 20 s before "
             f"{MIN_FIT_EDGE}^3 is not extrapolated: at such sizes padding and fixed work (selfsup's and cnn's "
             "training) outweigh the per-voxel cost, so the help says 'not measured yet' for it. The help's table "
             "(`medtorch.commands.costs.COST_256_2CORES`) is checked against the last column by `--check` "
             f"(within {raw['tolerance']:g} times). Times on a shared machine: approximate.", "",
             "| command | method | sizes measured | seconds | fixed (s) | per million voxels (s) | 256^3 (s) "
             "| help's table (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for command in raw["results"]:
        for method in COST_256_2CORES.get(command) or {}:
            if method not in raw["results"][command]:
                lines.append(f"| {command} | {method} | not measured (the run was stopped before it) |  |  |  |  |  |")
    for command, methods in raw["results"].items():
        for method, r in methods.items():
            have = COST_256_2CORES.get(command, {}).get(method)
            sz = ", ".join(f"{n}^3" for n in r["sizes"])
            est = (f"{r['estimate_256_s']:.0f}" if r.get("extrapolated", True)
                   else f"not extrapolated (only up to {r['sizes'][1]}^3)")
            lines.append(f"| {command} | {method} | {sz} | {r['seconds'][0]:.2f}, {r['seconds'][1]:.2f} | {r['fixed_s']:.2f} "
                         f"| {r['per_mvoxel_s']:.2f} | {est} | {'' if have is None else f'{have:g}'} |")
    bad = raw.get("mismatches") or []
    lines += ["", "Check: " + ("the help's table agrees with these measurements." if not bad else
                               "the help's table is off for " + "; ".join(bad) + "."), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cost", description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="24,40,72,128,192,256", help="growing edge lengths n (n^3 voxels)")
    p.add_argument("--enough", type=float, default=20.0, help="stop growing once a run takes this many seconds")
    p.add_argument("--only", default=None, help="comma-separated commands or command:method to measure")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks" / "cost.md")
    p.add_argument("--tolerance", type=float, default=3.0)
    p.add_argument("--check", action="store_true", help="exit 1 where the help's table is off")
    p.add_argument("--print-table", action="store_true", help="print the table for medtorch/commands/costs.py")
    p.add_argument("--from-json", type=Path, nargs="+", default=None,
                   help="rewrite the Markdown from runs' .json files (several: parts run side by side, e.g. "
                        "--only denoise / superres / fuse, merged)")
    args = p.parse_args(argv)
    if args.from_json:
        parts = [json.loads(f.read_text()) for f in args.from_json]
        raw = parts[0]
        for part in parts[1:]:  # parts run side by side: their results merged, the environment's extremes kept
            for command, methods in part["results"].items():
                raw["results"].setdefault(command, {}).update(methods)
            env, other = raw["environment"], part["environment"]
            env["load_start"] = max(env["load_start"], other["load_start"])
            env["load_end"] = max(env["load_end"], other["load_end"])
            env["total_seconds"] = max(env["total_seconds"], other["total_seconds"])
            env["parts"] = env.get("parts", 1) + other.get("parts", 1)  # a merged run counts its own runs
        order = ("denoise", "superres", "fuse")
        raw["results"] = {c: {m: fitted(r) for m, r in raw["results"][c].items()}
                          for c in sorted(raw["results"], key=lambda c: order.index(c) if c in order else 9)}
    else:
        import torch

        from medtorch.runtime.threads import applied, plan_threads

        sizes = tuple(int(v) for v in args.sizes.split(","))
        assert len(sizes) >= 2 and list(sizes) == sorted(set(sizes)), "--sizes takes increasing sizes"
        t_start = time.perf_counter()
        load_start = os.getloadavg()[0]
        partial = args.out.with_suffix(".partial.json")

        def save(results: dict[str, Any]) -> None:
            partial.write_text(json.dumps({"sizes": list(sizes), "enough_s": args.enough, "results": results},
                                          indent=2) + "\n")

        args.out.parent.mkdir(parents=True, exist_ok=True)
        with applied(plan_threads()):
            torch.set_num_threads(2)
            results = measure(sizes, set(args.only.split(",")) if args.only else None,
                              lambda m: print(f"[{time.perf_counter() - t_start:7.1f} s] {m}", flush=True), args.enough,
                              save)
        partial.unlink(missing_ok=True)
        env = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "threads": 2,
               "load_start": load_start, "load_end": os.getloadavg()[0],
               "total_seconds": round(time.perf_counter() - t_start, 1)}
        raw = {"environment": env, "sizes": list(sizes), "enough_s": args.enough, "tolerance": args.tolerance,
               "results": results}
    raw["mismatches"] = check(raw["results"], args.tolerance)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(raw, indent=2) + "\n")
    args.out.write_text(markdown(raw))
    print(f"wrote {args.out}")
    if args.print_table:
        print(table_code(raw["results"]))
    for line in raw["mismatches"]:
        print("table off: " + line)
    return 1 if args.check and raw["mismatches"] else 0


if __name__ == "__main__":
    sys.exit(main())
