"""``python -m benchmarks.memory [--quick]``: peak memory of each module's main path.

Each case runs in its own process (so its peak RSS is its own): synthetic CT-like data of
the given size is made, the operation runs, and the process reports its peak resident set
size (``ru_maxrss``), the memory the input data alone takes, and the time. Results go to
``docs/benchmarks/memory.md``. ``--quick`` runs the 256³ cases only.

Cases whose operation is not available in this version are listed as such.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from medtorch.io import write_text_atomic

DOC = Path(__file__).resolve().parents[2] / "docs" / "benchmarks" / "memory.md"
SIZES = {"256³": (256, 256, 256), "512×512×400": (512, 512, 400)}
OPERATIONS = ["blend", "denoise_gaussian", "denoise_anisotropic", "threshold", "register_rigid",
              "register_deformable", "segment_seeded", "segment_model"]


def run_case(op: str, size_key: str, timeout: float) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.memory.one", op, *map(str, SIZES[size_key])]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                             cwd=Path(__file__).resolve().parents[2])
    except subprocess.TimeoutExpired:
        return {"status": f"timeout after {timeout:.0f} s"}
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        return {"status": "failed: " + (out.stderr.strip().splitlines() or ["no output"])[-1][:200]}
    return json.loads(lines[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="256³ only")
    parser.add_argument("--ops", nargs="*", default=OPERATIONS)
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per case")
    args = parser.parse_args()
    sizes = ["256³"] if args.quick else list(SIZES)
    rows = []
    for op in args.ops:
        for size in sizes:
            res = run_case(op, size, args.timeout)
            rows.append((op, size, res))
            print(op, size, res, flush=True)
    lines = [
        "# Peak memory of each module's main path",
        "",
        "Written by `python -m benchmarks.memory` (each case in its own process; peak RSS = `ru_maxrss`;",
        "'input' = RSS after the synthetic input was made, before the operation).",
        "",
        "| operation | size | status | peak RSS (GB) | input (GB) | time (s) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for op, size, r in rows:
        lines.append(f"| {op} | {size} | {r.get('status', '?')} | {r.get('peak_gb', '-')} | "
                     f"{r.get('input_gb', '-')} | {r.get('seconds', '-')} |")
    lines += ["", f"Machine: {platform.machine()}, Python {platform.python_version()}; "
              f"{datetime.now(timezone.utc):%Y-%m-%d}.", ""]
    DOC.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(DOC, "\n".join(lines))
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
