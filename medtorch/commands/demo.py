"""``medtorch demo``: the whole pipeline on the bundled sample data, with a report."""

from __future__ import annotations

import argparse
from pathlib import Path

from medtorch.commands import Command, progress_bar
from medtorch.progress import CancelToken


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="medtorch-demo", help="output folder (created if needed)")
    p.add_argument("--seed", type=int, default=0, help="random seed (recorded with the results)")


def run(args: argparse.Namespace, cancel: CancelToken) -> int:
    from medtorch.demo import run_demo

    summary = run_demo(Path(args.out), progress=progress_bar(args), cancel=cancel, seed=args.seed)
    report = summary.get("report") or str(Path(args.out) / "report.html")
    print(f"Demo finished: report at {report}")
    return 0


COMMANDS = [Command("demo", "run the whole pipeline on the bundled sample data and write a report",
                    "  medtorch demo\n  medtorch demo --out /tmp/medtorch-demo --seed 1", add_arguments, run)]
