"""One engine on one case, in its own process: ``python -m benchmarks.registration.worker CASE_DIR ENGINE OUT.json``.

A fresh process per run gives each engine a clean peak memory (``ru_maxrss``) and no
state left by another engine. Reported (JSON): the landmarks mapped by the estimated
transform, wall and CPU time of the registration call alone, the time to load the
engine's libraries, peak RSS and RSS just before the call, folding of the estimated
field, the engine's own figures, and the load average around the run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
import traceback
from pathlib import Path
from typing import Any


def _set_threads(threads: int) -> None:
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS",
                "ANTS_NUM_THREADS"):
        os.environ[var] = str(threads)


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 1024**2


def _peak_mb() -> float:
    """Peak resident memory of this process (MB).

    ``VmHWM`` from ``/proc/self/status``: unlike ``ru_maxrss``, which Linux carries over
    from the parent's memory at ``fork``/``exec``, it covers this program alone.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _json_safe(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist() if obj.size <= 64 else f"array{obj.shape}"
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def run_one(case_dir: Path, engine: str, seed: int, threads: int) -> dict[str, Any]:
    _set_threads(threads)
    import numpy as np
    import SimpleITK as sitk

    from benchmarks.registration import engines, metrics
    from medtorch.volume import Volume

    out: dict[str, Any] = {"engine": engine, "case": case_dir.name, "seed": seed, "threads": threads,
                           "loadavg_before": os.getloadavg()[0]}
    meta = json.loads((case_dir / "case.json").read_text(encoding="utf-8"))
    mode = meta["spec"]["mode"]
    t0 = time.perf_counter()
    engines.preload(engine, threads)
    out["load_s"] = round(time.perf_counter() - t0, 3)
    fixed = Volume.from_sitk(sitk.ReadImage(str(case_dir / "fixed.mha")))
    moving = Volume.from_sitk(sitk.ReadImage(str(case_dir / "moving.mha")))
    landmarks = np.asarray(meta["landmarks"], np.float64)
    marks: dict[str, tuple[float, float, float]] = {}

    def timer(what: str) -> None:
        marks[what] = (time.perf_counter(), _cpu_s(), _rss_mb())

    res = engines.run(engine, fixed, moving, mode, seed, case_dir / "fixed.mha", case_dir / "moving.mha", timer)
    peak = _peak_mb()
    (w0, c0, rss0), (w1, c1, _) = marks["start"], marks["stop"]
    out.update({"time_s": round(w1 - w0, 3), "cpu_s": round(c1 - c0, 3), "peak_rss_mb": round(peak, 1),
                "rss_before_mb": round(rss0, 1), "peak_delta_mb": round(peak - rss0, 1),
                "loadavg_after": os.getloadavg()[0]})
    out["mapped"] = metrics.map_points(res.affine, res.displacement, landmarks).tolist()
    out["affine"] = np.asarray(res.affine).tolist()
    if res.displacement is not None:
        out.update(metrics.folding(res.affine, res.displacement))
    out["info"] = _json_safe({k: v for k, v in res.info.items() if k not in ("recipe",)})
    out["version"] = engines.engine_version(engine)
    out["status"] = "ok"
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("case_dir", type=Path)
    p.add_argument("engine")
    p.add_argument("out", type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    try:
        result = run_one(a.case_dir, a.engine, a.seed, a.threads)
    except Exception as exc:  # noqa: BLE001 - reported in the table
        traceback.print_exc()
        result = {"engine": a.engine, "case": a.case_dir.name, "status": "error",
                  "error": f"{type(exc).__name__}: {str(exc)[:300]}", "peak_rss_mb": round(_peak_mb(), 1)}
    tmp = a.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result), encoding="utf-8")
    os.replace(tmp, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
