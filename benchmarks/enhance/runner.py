"""Run one method in a fresh process and measure it: wall time, CPU time, peak memory.

Each call starts a new Python process (``multiprocessing`` spawn), so that every method
starts from the same state and its peak resident memory (``ru_maxrss`` of that process)
is its own. The process loads its input (``.npy`` or a volume file), records its resident
size (psutil) as the baseline, runs the method once and reports:

* ``seconds``: wall-clock time of the method call alone (no imports, no loading);
* ``cpu_seconds``: user + system CPU time of the call (all threads);
* ``peak_mb``: peak resident memory of the process minus the baseline, in MB (what the
  method itself needed above the loaded data and libraries). The peak is ``VmHWM``, reset
  to the current size after loading (``/proc/self/clear_refs``), not ``ru_maxrss``, which
  Linux carries over from the parent process.

The output array is written to ``out`` (``.npy``); extra values come back in ``info``.
"""

from __future__ import annotations

import importlib
import multiprocessing as mp
import os
import resource
import time
import traceback
from pathlib import Path
from typing import Any


def _reset_peak_rss() -> None:
    """Reset this process's peak resident size to its current size (Linux >= 4.0), if possible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:  # pragma: no cover - not Linux, or not allowed
        pass


def _peak_rss(usage: Any) -> int:
    """Peak resident size in bytes: ``VmHWM`` of this process's memory map.

    ``ru_maxrss`` is not used when ``VmHWM`` can be read: on Linux it is inherited through
    fork and exec, so a child would report its parent's peak when that is higher.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover
        pass
    return int(usage.ru_maxrss) * 1024  # kB on Linux


def _child(spec: dict[str, Any], queue: Any) -> None:
    try:
        import numpy as np
        import psutil

        threads = int(spec.get("threads", 2))
        try:
            import torch

            torch.set_num_threads(threads)
        except ImportError:  # pragma: no cover
            pass
        module, _, name = spec["function"].rpartition(".")
        fn = getattr(importlib.import_module(module), name)
        prepared = fn(None, spec["params"], prepare=True)  # imports and loads, untimed
        proc = psutil.Process()
        _reset_peak_rss()
        baseline = proc.memory_info().rss
        usage0 = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        out, info = fn(prepared, spec["params"], prepare=False)
        seconds = time.perf_counter() - start
        usage1 = resource.getrusage(resource.RUSAGE_SELF)
        peak = _peak_rss(usage1)
        cpu = (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime)
        if spec.get("out"):
            np.save(spec["out"], np.asarray(out, dtype=np.float32))
        queue.put({"ok": True, "seconds": seconds, "cpu_seconds": cpu,
                   "peak_mb": max(peak - baseline, 0) / 1024**2, "info": info})
    except BaseException as exc:  # report, never hang the parent
        queue.put({"ok": False, "error": f"{exc.__class__.__name__}: {exc}", "traceback": traceback.format_exc()})


def run_isolated(function: str, params: dict[str, Any], out: Path | None, threads: int = 2,
                 timeout: float | None = None) -> dict[str, Any]:
    """Run ``function(prepared, params, prepare)`` in a new process; see the module docstring."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    env_before = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    for k in env_before:
        os.environ[k] = str(threads)
    try:
        proc = ctx.Process(target=_child, args=({"function": function, "params": params, "threads": threads,
                                                 "out": str(out) if out else None}, queue))
        proc.start()
        try:
            result = queue.get(timeout=timeout)
        except Exception:
            proc.kill()
            result = {"ok": False, "error": f"timed out after {timeout} s"}
        proc.join(timeout=30)
        if proc.is_alive():
            proc.kill()
    finally:
        for k, v in env_before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return result
