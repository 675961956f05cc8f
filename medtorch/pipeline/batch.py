"""Cohorts on Dask distributed: the study pipeline over many cases.

``run_batch(manifest, config)`` reads a CSV manifest (one row per case: ``case_id``, then
the inputs, e.g. ``fixed`` and ``moving``; relative paths start at the manifest's folder)
and runs :func:`medtorch.pipeline.run.run_pipeline` for each case on a Dask cluster:

* a ``LocalCluster`` of worker *processes* by default, or an existing cluster given by
  its scheduler address (``tcp://host:8786``);
* GPU workers when present: one worker per GPU, each pinned to its own device, tasks
  asking for the ``GPU`` resource;
* resumable: a case whose ``run.json`` says ``done`` is skipped;
* a failing case is isolated: its error goes into its ``run.json`` and the summary, the
  other cases go on;
* ``summary.csv`` (one row per case: status, the verdict -- ``pass``/``warn``/``fail``, the
  worst of the case's steps, and ``verdict_reasons``, the checks that did not pass --, time,
  error, key values) is written atomically at the end, and after every finished case, so an
  interrupted batch leaves an accurate summary;
* the runtime's thread policy (:mod:`medtorch.runtime.threads`) in each case, the local
  workers sharing this machine's CPUs, with OpenMP told not to spin.
"""

from __future__ import annotations

import csv
import io
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medtorch.errors import Cancelled, MedTorchInputError
from medtorch.pipeline.config import load_config
from medtorch.pipeline.run import read_run_record
from medtorch.progress import CancelToken, ProgressCallback, report
from medtorch.runtime.threads import WAIT_POLICY

SUMMARY_FIELDS = ["case_id", "status", "verdict", "verdict_reasons", "seconds", "output_dir", "error", "worker",
                  "device"]


@dataclass
class Case:
    case_id: str
    overrides: dict[str, Any]
    output_dir: Path


def read_manifest(manifest: str | os.PathLike[str], out_root: Path) -> list[Case]:
    """Cases from a CSV manifest with a ``case_id`` column and input columns (``fixed``, ``moving``)."""
    path = Path(manifest)
    if not path.exists():
        raise MedTorchInputError(f"manifest {path} not found", "check the path of the CSV file")
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        fields = reader.fieldnames or []
        if "case_id" not in fields:
            raise MedTorchInputError(f"manifest {path.name} has no 'case_id' column (columns: {fields})",
                                     "add a header row: case_id,fixed,moving")
        rows = list(reader)
    if not rows:
        raise MedTorchInputError(f"manifest {path.name} lists no case", "add one row per case")
    cases, seen = [], set()
    for i, row in enumerate(rows, start=2):
        cid = (row.get("case_id") or "").strip()
        if not cid or cid in seen or any(c in cid for c in "/\\"):
            raise MedTorchInputError(f"manifest line {i}: case_id {cid!r} is empty, repeated or has a slash",
                                     "give every case a unique id without slashes")
        seen.add(cid)
        overrides: dict[str, Any] = {"study": cid}
        for key, value in row.items():
            if key == "case_id" or value in (None, ""):
                continue
            value = value.strip()
            if key in ("fixed", "moving"):
                p = Path(value)
                value = str(p if p.is_absolute() else (path.resolve().parent / p))
            overrides[key] = value
        out = out_root / cid
        overrides["output_dir"] = str(out)
        cases.append(Case(cid, overrides, out))
    return cases


def _run_case(config_path: str, overrides: dict[str, Any], gpu_count: int = 0, share: int = 1) -> dict[str, Any]:
    """Run one case on a worker; never raises (the error is returned and recorded). The case
    runs with the thread policy for one of ``share`` workers that divide the CPUs."""
    from medtorch.pipeline.run import run_pipeline
    from medtorch.runtime.threads import plan_threads

    start = time.perf_counter()
    row: dict[str, Any] = {"case_id": overrides["study"], "output_dir": overrides["output_dir"]}
    try:
        from dask.distributed import get_worker

        worker = get_worker()
        row["worker"] = worker.name
    except (ImportError, ValueError):
        worker = None
    try:
        if gpu_count and worker is not None:
            index = int(str(worker.name).split("-")[-1]) % gpu_count if str(worker.name).split("-")[-1].isdigit() else 0
            overrides = {**overrides, "device": f"cuda:{index}"}
        config = load_config(config_path, overrides)
        rec = run_pipeline(config, threads=plan_threads(share=share, in_this_process=False))
        row.update(status=rec.status, device=rec.record.get("device", {}).get("device", ""))
        if rec.record.get("verdict"):
            row["verdict"] = rec.record["verdict"]
            row["verdict_reasons"] = " ".join(f"{step}.{name}" for step, v in sorted(rec.record.get("verdicts", {}).items())
                                              for name in v.get("reasons", []))
        for step, values in rec.record.get("values", {}).items():
            for key, value in values.items():
                if isinstance(value, (int, float, str)) and not isinstance(value, bool):
                    row[f"{step}.{key}"] = value
    except Exception as exc:  # isolated: one bad case never stops the others
        row.update(status="failed", error=f"{type(exc).__name__}: {exc}".replace("\n", " ")[:500])
    row["seconds"] = round(time.perf_counter() - start, 3)
    return row


def write_summary(path: Path, rows: list[dict[str, Any]]) -> Path:
    from medtorch.io import write_text_atomic

    extra = sorted({k for r in rows for k in r} - set(SUMMARY_FIELDS))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SUMMARY_FIELDS + extra, extrasaction="ignore")
    writer.writeheader()
    for r in sorted(rows, key=lambda r: r["case_id"]):
        writer.writerow(r)
    return write_text_atomic(path, buf.getvalue())


def run_batch(manifest: str | os.PathLike[str], config_path: str | os.PathLike[str], out_dir: str | os.PathLike[str],
              scheduler: str | None = None, n_workers: int = 2, progress: ProgressCallback | None = None,
              cancel: CancelToken | None = None, use_gpus: bool | None = None) -> list[dict[str, Any]]:
    """Run every case of ``manifest`` with ``config_path``; return the summary rows.

    Raises :class:`MedTorchInputError` before starting for a bad manifest or configuration
    (checked on the first case); a failing case only marks its row ``failed``.
    """
    from dask.distributed import Client, LocalCluster, as_completed

    out_root = Path(out_dir).resolve()
    out_root.mkdir(parents=True, exist_ok=True)
    cases = read_manifest(manifest, out_root)
    load_config(config_path, cases[0].overrides)  # a bad configuration fails here, before any work
    rows: dict[str, dict[str, Any]] = {}
    todo = []
    for case in cases:
        rec = read_run_record(case.output_dir)
        if rec is not None and rec.get("status") == "done":
            rows[case.case_id] = {"case_id": case.case_id, "status": "skipped (done)", "seconds": 0.0,
                                  "output_dir": str(case.output_dir), "verdict": rec.get("verdict", "")}
        else:
            todo.append(case)
    summary_path = out_root / "summary.csv"
    report(progress, cancel, 0.0, f"{len(todo)} case(s) to run, {len(cases) - len(todo)} already done")
    if not todo:
        write_summary(summary_path, list(rows.values()))
        return list(rows.values())

    gpu_count = 0
    if use_gpus is not False and scheduler is None:
        try:
            import torch

            gpu_count = torch.cuda.device_count()
        except ImportError:
            gpu_count = 0
    cluster = None
    if scheduler:
        client = Client(scheduler)
    else:
        workers = gpu_count or max(1, int(n_workers))
        # OpenMP must not spin in workers that share the cores (set before they load torch); the
        # dashboard on a free port (":0"): a fixed 8787 taken by another cluster made Dask warn
        env = {k: v for k, v in WAIT_POLICY.items() if k not in os.environ}
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                               resources={"GPU": 1} if gpu_count else None, env=env)
        client = Client(cluster)
    try:
        submit_opts = {"resources": {"GPU": 1}} if gpu_count else {}
        # the local workers divide this machine's CPUs; a remote worker plans from its own machine's load
        share = 1 if cluster is None else len(cluster.workers) or 1
        futures = [client.submit(_run_case, str(Path(config_path).resolve()), case.overrides, gpu_count, share,
                                 key=f"medtorch-case-{case.case_id}-{time.time_ns()}", pure=False, **submit_opts)
                   for case in todo]
        done = 0
        for future in as_completed(futures):
            if cancel is not None and cancel.cancelled:
                client.cancel(futures)
                raise Cancelled()
            row = future.result()
            rows[row["case_id"]] = row
            done += 1
            write_summary(summary_path, list(rows.values()))
            report(progress, cancel, done / len(todo), f"{row['case_id']}: {row['status']}")
    except Cancelled:
        for case in todo:
            rows.setdefault(case.case_id, {"case_id": case.case_id, "status": "cancelled",
                                           "output_dir": str(case.output_dir)})
        write_summary(summary_path, list(rows.values()))
        raise
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    write_summary(summary_path, list(rows.values()))
    return list(rows.values())
