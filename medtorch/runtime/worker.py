"""The worker: ``python -m medtorch.runtime.worker job.json`` runs one job and exits.

It reads the job spec (:class:`~medtorch.runtime.serialize.JobSpec`), applies the job's
thread plan (:mod:`medtorch.runtime.threads`) before torch is loaded, and runs

* an ``operation`` job: the operation of :mod:`medtorch.ops` named in the spec, its request
  rebuilt from the params by :func:`~medtorch.ops.base.request_from_params`;
* a ``call`` job: the function ``module:function`` named in the spec, as
  ``f(volumes, params, progress, cancel) -> (volumes, values)``.

Outputs are written atomically into the job's output folder with a ``result.json``
manifest; progress goes to stdout as ``MEDTORCH_PROGRESS {"fraction": f, "message": m}``
lines and a failure as one ``MEDTORCH_PROGRESS {"error": {...}}`` line (a bad input as its
problem and fix). SIGTERM (on Windows CTRL_BREAK) sets the job's cancel token, so the work
stops at its next progress point.

Exit codes: 0 done, 2 bad input, 3 cancelled, 1 anything else.
"""

from __future__ import annotations

import importlib
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from medtorch.errors import Cancelled, MedTorchInputError
from medtorch.progress import CancelToken
from medtorch.runtime.serialize import JobSpec, error_payload, progress_line, read_volumes, write_result
from medtorch.runtime.threads import ThreadPlan, apply_for_process, plan_threads

EXIT_OK, EXIT_ERROR, EXIT_INPUT, EXIT_CANCELLED = 0, 1, 2, 3

_emit_lock = threading.Lock()


def _emit(payload: dict[str, Any]) -> None:
    with _emit_lock:  # a call job may report from a thread of its own
        sys.stdout.write(progress_line(payload))
        sys.stdout.flush()


def _progress(fraction: float, message: str = "") -> None:
    _emit({"fraction": float(fraction), "message": message})


def resolve(target: str) -> Any:
    """The function ``package.module:function`` names."""
    module_name, _, name = target.partition(":")
    return getattr(importlib.import_module(module_name), name)


def run_job(job_path: str | Path, cancel: CancelToken | None = None) -> int:
    """Run the job in ``job_path``; return the exit code."""
    spec = JobSpec.read(job_path)
    plan = ThreadPlan(**spec.threads) if spec.threads else plan_threads(in_this_process=False)
    apply_for_process(plan)
    try:
        inputs = read_volumes(spec.inputs)
        if spec.kind == "operation":
            from medtorch import ops

            request = ops.request_from_params(ops.operation(spec.target).request, spec.params)
            result = ops.run(request, inputs, progress=_progress, cancel=cancel)
            volumes, values = result.volumes, result.values
        elif spec.kind == "call":
            volumes, values = resolve(spec.target)(inputs, spec.params, _progress, cancel)
        else:
            raise ValueError(f"unknown job kind {spec.kind!r}")
        write_result(spec.output_dir, volumes, values, {"threads": plan.as_dict()})
        _progress(1.0, "done")
        return EXIT_OK
    except Cancelled as exc:
        _emit({"error": error_payload(exc)})
        return EXIT_CANCELLED
    except MedTorchInputError as exc:
        _emit({"error": error_payload(exc)})
        return EXIT_INPUT
    except Exception as exc:  # report, never hang the GUI
        import traceback

        traceback.print_exc()
        _emit({"error": error_payload(exc)})
        return EXIT_ERROR


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python -m medtorch.runtime.worker JOB.json\n")
        return EXIT_INPUT
    cancel = CancelToken()
    signal.signal(signal.SIGTERM, lambda *_: cancel.cancel())
    if hasattr(signal, "SIGBREAK"):  # Windows: CTRL_BREAK_EVENT from the parent's cancel
        signal.signal(signal.SIGBREAK, lambda *_: cancel.cancel())
    return run_job(args[0], cancel)


if __name__ == "__main__":
    sys.exit(main())
