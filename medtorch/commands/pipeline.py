"""``medtorch pipeline`` and ``medtorch batch``: a study, or a cohort on Dask."""

from __future__ import annotations

import argparse
import sys

from medtorch.commands import Command, progress_bar
from medtorch.progress import CancelToken


def add_pipeline_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="study YAML (inputs, steps, output_dir, seed)")
    p.add_argument("--out", default=None, help="output folder (overrides the YAML's output_dir)")


def run_pipeline_command(args: argparse.Namespace, cancel: CancelToken) -> int:
    from medtorch.pipeline import load_config, run_pipeline

    overrides = {"output_dir": args.out} if args.out else {}
    if args.device:
        overrides["device"] = args.device
    config = load_config(args.config, overrides)
    rec = run_pipeline(config, progress=progress_bar(args), cancel=cancel)
    if not args.quiet:
        print(f"Study {rec.study}: {rec.status}; outputs and run.json in {rec.output_dir}")
    return 0


def add_batch_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", required=True, help="CSV with case_id and input columns (fixed, moving)")
    p.add_argument("--config", required=True, help="study YAML applied to every case")
    p.add_argument("--out", default="medtorch-batch", help="output folder: one sub-folder per case + summary.csv")
    p.add_argument("--scheduler", default=None, help="Dask scheduler address (default: a LocalCluster)")
    p.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes (CPU)")


#: ``medtorch batch``'s exit status when the cohort ran but some cases failed (their errors are in
#: summary.csv); 1 stays "internal error".
EXIT_CASES_FAILED = 4


def _quiet_dask() -> None:
    """``-q``: Dask's own INFO logging silenced too, here and in the worker processes it starts."""
    import logging
    import os

    os.environ["DASK_LOGGING__DISTRIBUTED"] = "error"  # read by the worker processes' dask config
    for name in ("distributed", "dask"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import dask

        dask.config.set({"logging.distributed": "error"})
    except ImportError:
        pass


def run_batch_command(args: argparse.Namespace, cancel: CancelToken) -> int:
    from medtorch.pipeline.batch import run_batch

    if args.quiet:
        _quiet_dask()
    rows = run_batch(args.manifest, args.config, args.out, scheduler=args.scheduler, n_workers=args.workers,
                     progress=progress_bar(args), cancel=cancel)
    failed = [r for r in rows if r["status"] == "failed"]
    if not args.quiet:
        done = sum(r["status"] == "done" for r in rows)
        skipped = sum(r["status"].startswith("skipped") for r in rows)
        print(f"{done} done, {skipped} skipped (already done), {len(failed)} failed; summary in {args.out}/summary.csv")
    for r in failed:  # errors: on stderr, with --quiet too
        print(f"medtorch batch: case {r['case_id']} failed: {r.get('error', '')}", file=sys.stderr)
    return EXIT_CASES_FAILED if failed else 0


COMMANDS = [
    Command("pipeline", "run the configured steps (register, fuse, denoise, super-resolve, segment) on one study",
            "  medtorch pipeline --config study.yaml\n  medtorch pipeline --config study.yaml --out /data/out/p001",
            add_pipeline_arguments, run_pipeline_command),
    Command("batch", "run the study pipeline over a cohort on Dask (LocalCluster or a scheduler); resumable",
            "  medtorch batch --manifest cases.csv --config study.yaml --out cohort-out\n"
            "  medtorch batch --manifest cases.csv --config study.yaml --scheduler tcp://10.0.0.5:8786\n"
            f"exit status {EXIT_CASES_FAILED}: the cohort ran, but some cases failed (see summary.csv)",
            add_batch_arguments, run_batch_command),
]
