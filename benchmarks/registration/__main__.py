"""Run the registration benchmark: ``python -m benchmarks.registration [--quick] [--cases ...] [--verdict]``.

Builds the cases (:mod:`benchmarks.registration.cases`), runs every engine on every case in
its own process (:mod:`benchmarks.registration.worker`), and writes the Markdown report to
``docs/benchmarks/registration.md`` (``--quick``: to ``<workdir>/report.md`` unless
``--out`` is given). Results are kept in ``<workdir>/results.json``; ``--resume`` reuses
finished runs from it.

``--verdict`` runs the verdict section instead (:mod:`benchmarks.registration.verdict`:
calibration on synthetic successes and failures, the held-out AUC, no false alarms on the
benchmark's own cases, the cost) and writes it into the same document between its markers,
leaving the other sections as they are; the main run keeps an existing verdict section.

Examples::

    python -m benchmarks.registration --quick
    python -m benchmarks.registration                      # the full run (25-40 min on 2 idle cores)
    python -m benchmarks.registration --cases 'rigid12-*' --engines medtorch sitk
    python -m benchmarks.registration --verdict --quick      # the verdict section, a few minutes
    python -m benchmarks.registration --verdict              # the full verdict section (10-20 min on 2 cores)
    python -m benchmarks.registration --verdict --workdir W --report-only   # re-render it from W, running nothing
    python -m benchmarks.registration --learned              # the learned section (about 45 min on 2 cores)

``--learned`` runs the learned-registration section (:mod:`benchmarks.registration.learned`) and
writes it between its own markers; the main run keeps it too.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.registration import cases as case_mod
from benchmarks.registration import engines, report
from benchmarks.registration.metrics import tre_summary

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "benchmarks" / "registration.md"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.registration", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="two small cases (4 mm), a minute or two")
    p.add_argument("--cases", nargs="+", metavar="PATTERN", help="only cases whose name matches (fnmatch patterns)")
    p.add_argument("--engines", nargs="+", choices=engines.ENGINES, default=list(engines.ENGINES),
                   help="engines to run (default: all)")
    p.add_argument("--workdir", type=Path, help="where cases and results go (default: a new temporary folder)")
    p.add_argument("--out", type=Path, help=f"report path (default: {DOC.relative_to(REPO)}; --quick: <workdir>/report.md)")
    p.add_argument("--threads", type=int, default=2, help="threads per engine (default 2)")
    p.add_argument("--seed", type=int, default=0, help="engine seed (default 0)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per run before it is stopped (default 1800)")
    p.add_argument("--resume", action="store_true", help="reuse cases and finished runs in --workdir")
    p.add_argument("--rerun", nargs="+", choices=engines.ENGINES, metavar="ENGINE",
                   help="with --resume: run these engines again (e.g. after changing one)")
    p.add_argument("--report-only", action="store_true",
                   help="write the report from the results already in --workdir, running nothing")
    p.add_argument("--verdict", action="store_true",
                   help="run the verdict section (calibration, held-out AUC, false alarms, cost) and write it into "
                        f"{DOC.relative_to(REPO)} (or --out) between its markers; with --quick: fewer cases")
    p.add_argument("--repeats", type=int, default=3, help="--verdict: timed runs per case for the cost (default 3)")
    p.add_argument("--learned", action="store_true",
                   help="run the learned-registration section (train a VoxelMorph model on template pairs, then network "
                        "only / network + refinement / optimiser only on held-out pairs) and write it into "
                        f"{DOC.relative_to(REPO)} (or --out) between its markers; with --quick: fewer pairs, shorter training")
    p.add_argument("--train-lr", type=float, default=1e-3, help="--learned: learning rate of the training (Adam)")
    p.add_argument("--train-minutes", type=float, default=None,
                   help="--learned: training budget in minutes (default 25; --quick 4); a model already in --workdir is reused")
    return p.parse_args(argv)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("medtorch", "torch", "SimpleITK", "itk-elastix", "antspyx", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _run_worker(case_dir: Path, engine: str, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"):
        env[var] = str(args.threads)
    cmd = [sys.executable, "-m", "benchmarks.registration.worker", str(case_dir), engine, str(out),
           "--seed", str(args.seed), "--threads", str(args.threads)]
    log = out.with_suffix(".log")
    t0 = time.perf_counter()
    with open(log, "w", encoding="utf-8") as fh:
        try:
            subprocess.run(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=args.timeout, check=False)
        except subprocess.TimeoutExpired:
            return {"engine": engine, "case": case_dir.name, "status": "timeout",
                    "error": f"stopped after {args.timeout:.0f} s"}
    if not out.exists():
        tail = log.read_text(encoding="utf-8", errors="replace")[-300:]
        return {"engine": engine, "case": case_dir.name, "status": "error", "error": f"no result: {tail}"}
    result = json.loads(out.read_text(encoding="utf-8"))
    result["process_s"] = round(time.perf_counter() - t0, 2)
    return result


def _score(result: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    if result.get("status") == "ok" and "mapped" in result:
        errors = np.linalg.norm(np.asarray(result["mapped"]) - np.asarray(meta["truth_points"]), axis=1)
        result.update(tre_summary(errors))
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.learned:
        from benchmarks.registration import learned

        workdir = args.workdir or Path(tempfile.mkdtemp(prefix="medtorch-bench-learned-"))
        learned.main(args.quick, workdir, args.out or DOC, train_minutes=args.train_minutes, threads=args.threads,
                     log=lambda m: print(m, flush=True), learning_rate=args.train_lr)
        return 0
    if args.verdict:
        from benchmarks.registration import verdict

        workdir = args.workdir or Path(tempfile.mkdtemp(prefix="medtorch-bench-verdict-"))
        verdict.main(args.quick, workdir, args.out or DOC, repeats=args.repeats,
                     log=lambda m: print(m, flush=True), report_only=args.report_only)
        return 0
    specs = case_mod.quick_specs() if args.quick else case_mod.standard_specs()
    if args.cases:
        specs = [s for s in specs if any(fnmatch.fnmatch(s.name, p) for p in args.cases)]
        if not specs:
            print("no case matches " + " ".join(args.cases), file=sys.stderr)
            return 2
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="medtorch-bench-registration-"))
    workdir.mkdir(parents=True, exist_ok=True)
    out_path = args.out or (workdir / "report.md" if args.quick else DOC)
    results_path = workdir / "results.json"
    previous: dict[tuple[str, str], dict[str, Any]] = {}
    if args.report_only:
        if not results_path.exists():
            print(f"no results in {workdir}", file=sys.stderr)
            return 2
        args.resume = True
    if args.resume and results_path.exists():
        for r in json.loads(results_path.read_text(encoding="utf-8"))["results"]:
            if r.get("status") == "ok" or args.report_only:
                previous[(r["case"], r["engine"])] = r
    unavailable = {e: why for e in args.engines if (why := engines.available(e))}
    run_engines = [e for e in args.engines if e not in unavailable]
    print(f"workdir {workdir}; engines {', '.join(run_engines)}"
          + (f"; not available: {unavailable}" if unavailable else ""), flush=True)

    results: list[dict[str, Any]] = []
    case_meta: dict[str, dict[str, Any]] = {}
    loads: list[float] = []
    started = time.perf_counter()
    for spec in specs:
        case_dir = workdir / spec.name
        if args.report_only and not (case_dir / "case.json").exists():
            continue
        if not (args.resume and (case_dir / "case.json").exists()):
            t0 = time.perf_counter()
            case = case_mod.build_case(spec)
            case.save(case_dir)
            print(f"[{spec.name}] built in {time.perf_counter() - t0:.1f} s: {spec.describe()}", flush=True)
            del case
        meta = json.loads((case_dir / "case.json").read_text(encoding="utf-8"))
        case_meta[spec.name] = meta
        for engine in run_engines:
            if not engines.supports(engine, spec.mode, spec.thick):
                continue
            key = (spec.name, engine)
            if key in previous and engine not in (args.rerun or []):
                results.append(_score(previous[key], meta))
                loads += [v for v in (previous[key].get("loadavg_before"), previous[key].get("loadavg_after"))
                          if v is not None]
                continue
            if args.report_only:
                continue
            res = _score(_run_worker(case_dir, engine, case_dir / f"{engine}.json", args), meta)
            loads += [v for v in (res.get("loadavg_before"), res.get("loadavg_after")) if v is not None]
            results.append(res)
            print(f"[{spec.name}] {engine:9s} {res.get('status'):7s} TRE {res.get('tre_mean_mm', float('nan')):7.3f} mm "
                  f"(p95 {res.get('tre_p95_mm', float('nan')):.3f}) time {res.get('time_s', float('nan')):7.2f} s "
                  f"peak {res.get('peak_rss_mb', float('nan')):.0f} MB {res.get('error', '')}", flush=True)
            results_path.write_text(json.dumps({"results": results}, indent=1), encoding="utf-8")
    results_path.write_text(json.dumps({"results": results}, indent=1), encoding="utf-8")

    spec_dicts = {s.name: asdict(s) for s in specs if s.name in case_meta}
    info = {name: m["info"] for name, m in case_meta.items()}
    date = report.today()
    if args.report_only:
        import datetime as dt

        date = dt.datetime.fromtimestamp(results_path.stat().st_mtime).strftime("%Y-%m-%d %H:%M")
    meta_out = {"date": date, "machine": report.machine_summary(), "threads": args.threads,
                "versions": _versions(), "unavailable": unavailable, "quick": args.quick,
                "loadavg_range": f"{min(loads):.1f} to {max(loads):.1f}" if loads else "not recorded",
                "total_s": round(time.perf_counter() - started, 1),
                "runs_s": round(sum(r.get("process_s", 0.0) for r in results), 1)}
    text = report.render(results, spec_dicts, info, meta_out)
    if out_path.exists():  # the verdict section is written by --verdict: keep it
        from benchmarks.registration.verdict import keep_section

        from benchmarks.registration.learned import keep_section as keep_learned

        old_text = out_path.read_text(encoding="utf-8")
        text = keep_learned(old_text, keep_section(old_text, text))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(".md.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out_path)
    print(f"report written to {out_path} ({meta_out['total_s']:.0f} s in all)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
