"""``python -m benchmarks.fuzz [--minutes N]``: the CI fuzz properties, run for N minutes.

Writes ``docs/benchmarks/fuzz.md`` with the number of examples tried and the outcome.
"""

from __future__ import annotations

import argparse
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

from medtorch.fuzzing import run_fuzz
from medtorch.io import write_text_atomic

DOC = Path(__file__).resolve().parents[2] / "docs" / "benchmarks" / "fuzz.md"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to fuzz")
    parser.add_argument("--no-doc", action="store_true", help="do not write docs/benchmarks/fuzz.md")
    args = parser.parse_args()
    start = time.monotonic()
    outcome = "no crash found"
    try:
        counts = run_fuzz(args.minutes)
    except Exception as exc:  # a finding: report it, fail the command
        counts = {}
        outcome = f"FAILED: {type(exc).__name__}: {exc}"
    elapsed = time.monotonic() - start
    lines = [
        "# Fuzzing: file readers and geometry conversions",
        "",
        "Written by `python -m benchmarks.fuzz --minutes N` (Hypothesis; properties in `medtorch/fuzzing.py`).",
        "",
        "| property | examples | outcome |",
        "| --- | --- | --- |",
        f"| corrupted/truncated NRRD, NIfTI, MHA never crash the reader | {counts.get('reader', '-')} | {outcome} |",
        f"| geometry round trips (RAS/LPS, SimpleITK, files) on random oblique grids | {counts.get('geometry', '-')} | {outcome} |",
        "",
        f"Run: {elapsed / 60:.1f} min on {platform.machine()} ({platform.python_version()}), "
        f"{datetime.now(timezone.utc):%Y-%m-%d}.",
        "",
    ]
    print("\n".join(lines))
    if not args.no_doc:
        DOC.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(DOC, "\n".join(lines))
    return 0 if outcome == "no crash found" else 1


if __name__ == "__main__":
    raise SystemExit(main())
