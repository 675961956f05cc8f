"""One job of the contention benchmark: ``python -m benchmarks.contention.one OUT.json -- medtorch ARGS``.

Runs the ``medtorch`` command line in this process, then writes its wall and CPU time and
the number of torch threads it ran with to ``OUT.json``.
"""

from __future__ import annotations

import json
import os
import sys
import time


def main(argv: list[str]) -> int:
    out_json, args = argv[0], argv[2:]
    from medtorch.cli import main as medtorch_main

    t0, c0 = time.perf_counter(), os.times()
    code = medtorch_main(args)
    seconds, c1 = time.perf_counter() - t0, os.times()
    import torch  # loaded by the command; its thread count is the one the job ran with

    with open(out_json, "w", encoding="utf-8") as fh:
        json.dump({"code": code, "seconds": seconds, "cpu_s": (c1.user + c1.system) - (c0.user + c0.system),
                   "torch_threads": torch.get_num_threads()}, fh)
    return int(code)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
