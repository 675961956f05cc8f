"""Jobs: an operation (or a function) running in a worker process, with progress and a real cancel.

* :func:`run_operation` runs an operation in this process and blocks (scripts, tests).
* :class:`BackgroundJob` runs one in a worker process (``python -m medtorch.runtime.worker
  job.json``): the job spec names the operation and carries its request as params, inputs
  travel as NRRD files, progress comes back as JSON lines, and :meth:`BackgroundJob.cancel`
  stops the worker and every process it started within about a second (:func:`stop_tree`).
  Bad params fail when the job is made, before any process starts. A cancelled or failed job
  leaves nothing behind but its temporary folder, which is removed.
* :func:`call_in_worker` runs a *function* (``module:function``, taking and giving volumes
  and JSON values) the same way and waits for it: for work that cannot be interrupted from
  Python, such as elastix, so that a cancel can end it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medtorch.errors import Cancelled, MedTorchError
from medtorch.progress import CancelToken, ProgressCallback
from medtorch.runtime import process
from medtorch.runtime.serialize import (
    JOB_FILE,
    JobKind,
    JobSpec,
    error_from_payload,
    parse_progress_line,
    read_result,
    write_volumes,
)
from medtorch.runtime.threads import ThreadPlan, child_environment, plan_threads
from medtorch.volume import Volume

__all__ = ["CANCEL_GRACE_SECONDS", "BackgroundJob", "JobState", "WorkerJob", "call_in_worker", "run_operation"]

#: Seconds between asking a cancelled job's processes to stop and killing them.
CANCEL_GRACE_SECONDS = 1.0


def run_operation(operation: Any, inputs: Mapping[str, Volume], params: Mapping[str, Any] | None = None,
                  progress: ProgressCallback | None = None, cancel: CancelToken | None = None) -> Any:
    """Run an operation in this process (blocking): a request, or a name and its params
    (see :func:`medtorch.ops.run`). Inputs are not modified."""
    from medtorch import ops

    return ops.run(operation, inputs, params, progress, cancel)


@dataclass
class JobState:
    status: str  # "running", "done", "failed", "cancelled"
    fraction: float
    message: str


class WorkerJob:
    """A job spec run by ``python -m medtorch.runtime.worker`` (the one way MedTorch runs
    anything in the background). :class:`BackgroundJob` (operations) and
    :func:`call_in_worker` (functions) are made of it."""

    def __init__(self, kind: JobKind, target: str, inputs: Mapping[str, Volume], params: Mapping[str, Any],
                 progress: ProgressCallback | None = None, threads: ThreadPlan | None = None,
                 cancel_grace: float = CANCEL_GRACE_SECONDS) -> None:
        self.kind = kind
        self.target = target
        self.inputs = dict(inputs)
        self.params = dict(params)
        self.progress_callback = progress
        self.threads = threads
        self.cancel_grace = cancel_grace
        self._dir: Path | None = None
        self._proc: Any = None
        self._reader: threading.Thread | None = None
        self._lock = threading.Lock()
        self._fraction = 0.0
        self._message = "starting"
        self._error: dict[str, Any] | None = None
        self._cancel_requested = False
        self._outputs: tuple[dict[str, Volume], dict[str, Any], dict[str, Any]] | None = None
        self._finished = False
        self._log_tail: list[str] = []

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> WorkerJob:
        self._dir = Path(tempfile.mkdtemp(prefix=f"medtorch-{self.target.rsplit(':', 1)[-1]}-"))
        if self.threads is None:
            self.threads = plan_threads(in_this_process=False)
        spec = JobSpec(self.kind, self.target, self.params, write_volumes(self._dir, self.inputs, prefix="in_"),
                       str(self._dir / "out"), self.threads.as_dict())
        job_path = spec.write(self._dir / JOB_FILE)
        pkg_root = str(Path(__file__).resolve().parents[2])
        env = {**child_environment(self.threads), "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": pkg_root + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")}
        self._proc = process.launch([process.python_executable(), "-m", "medtorch.runtime.worker", str(job_path)], env)
        self._reader = threading.Thread(target=self._read_output, daemon=True)
        self._reader.start()
        return self

    @property
    def pid(self) -> int | None:
        """The launched process (inside Slicer, the launcher that starts the worker)."""
        return None if self._proc is None else int(self._proc.pid)

    def _read_output(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        for line in proc.stdout:
            msg = parse_progress_line(line)
            if msg is None:
                self._log_tail = (self._log_tail + [line.rstrip()])[-30:]
                continue
            with self._lock:
                if "fraction" in msg:
                    self._fraction = float(msg["fraction"])
                    self._message = str(msg.get("message", ""))
                if isinstance(msg.get("error"), dict):
                    self._error = msg["error"]

    def poll(self) -> JobState:
        """Non-blocking state; collects the outputs when the process has ended."""
        if self._proc is None:
            raise MedTorchError("the job was not started")
        with self._lock:
            fraction, message = self._fraction, self._message
        if self.progress_callback is not None and not self._finished:
            self.progress_callback(fraction, message)
        if self._proc.poll() is None:
            return JobState("running", fraction, message)
        self._finish()
        if self._cancel_requested:
            return JobState("cancelled", fraction, "cancelled")
        if self._outputs is not None:
            return JobState("done", 1.0, "done")
        return JobState("failed", fraction, self.error_message())

    def _finish(self) -> None:
        if self._finished:
            return
        assert self._proc is not None
        self._proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=2.0)
        self._finished = True
        try:
            if not self._cancel_requested and self._proc.returncode == 0 and self._error is None:
                assert self._dir is not None
                self._outputs = read_result(self._dir / "out")
        finally:
            self.cleanup()

    def error(self) -> MedTorchError:
        """The job's failure as the exception to raise here (a bad input keeps its problem and fix)."""
        if self._error is not None:
            return error_from_payload(self._error)
        return MedTorchError(self.error_message())

    def error_message(self) -> str:
        if self._error is not None:
            return str(error_from_payload(self._error))
        tail = "\n".join(self._log_tail[-10:])
        code = self._proc.returncode if self._proc is not None else None
        return f"the background process ended with code {code}" + (f":\n{tail}" if tail else "")

    def cancel(self) -> None:
        """Stop the job: the worker and every process it started (see
        :func:`medtorch.runtime.process.stop_tree`); returns once they are gone."""
        self._cancel_requested = True
        proc = self._proc
        if proc is None:
            return
        process.stop_tree(proc, self.cancel_grace)

    def wait_outputs(self, timeout: float | None = None, poll_interval: float = 0.05,
                     cancel: CancelToken | None = None) -> tuple[dict[str, Volume], dict[str, Any], dict[str, Any]]:
        """Block until the job ends (or ``cancel`` is set: then it is stopped); return
        ``(volumes, values, job)`` or raise what it raised."""
        start = time.monotonic()
        while True:
            if cancel is not None and cancel.cancelled and not self._cancel_requested:
                self.cancel()
            state = self.poll()
            if state.status != "running":
                break
            if timeout is not None and time.monotonic() - start > timeout:
                self.cancel()
                raise MedTorchError(f"the {self.target} job did not finish within {timeout} s")
            time.sleep(poll_interval)
        if state.status == "cancelled":
            raise Cancelled()
        if state.status == "failed":
            raise self.error()
        assert self._outputs is not None
        return self._outputs

    def cleanup(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            if self._proc is not None and self._proc.poll() is None:
                process.stop_tree(self._proc, 0.0)
            self.cleanup()
        except Exception:  # noqa: BLE001
            pass


class BackgroundJob(WorkerJob):
    """An operation of :mod:`medtorch.ops` running in a worker process.

    Usage::

        job = BackgroundJob(DenoiseRequest(method="anisotropic"), {"input": vol})
        # or BackgroundJob("denoise", {"input": vol}, {"method": "anisotropic"})
        job.start()
        while job.poll().status == "running":   # from a GUI timer, or
            ...
        result = job.wait()                      # blocking
    """

    def __init__(self, operation: Any, inputs: Mapping[str, Volume], params: Mapping[str, Any] | None = None,
                 progress: ProgressCallback | None = None, threads: ThreadPlan | None = None) -> None:
        from medtorch import ops
        from medtorch.ops.base import request_to_params

        self.request = ops.request_for(operation, params)  # bad params fail here, before a process starts
        self.operation = self.request.operation
        super().__init__("operation", self.operation, inputs, request_to_params(self.request), progress, threads)

    def start(self) -> BackgroundJob:
        super().start()
        return self

    def wait(self, timeout: float | None = None, poll_interval: float = 0.05) -> Any:
        """Block until the job ends; return its :class:`~medtorch.ops.base.OperationResult`
        or raise what it raised."""
        self.wait_outputs(timeout, poll_interval)
        result = self.result
        assert result is not None
        return result

    @property
    def result(self) -> Any:
        """The :class:`~medtorch.ops.base.OperationResult` once done (no ``native`` object:
        that stays in the worker), else None."""
        if self._outputs is None:
            return None
        from medtorch.ops.base import OperationResult

        volumes, values, _ = self._outputs
        return OperationResult(volumes, values)

    @property
    def worker_threads(self) -> dict[str, Any] | None:
        """The thread plan the worker ran with (from its result), once done."""
        return None if self._outputs is None else self._outputs[2].get("threads")


def call_in_worker(target: str, volumes: Mapping[str, Volume], params: Mapping[str, Any],
                   progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
                   cancel_grace: float = 0.0) -> tuple[dict[str, Volume], dict[str, Any]]:
    """Run ``target`` (``"package.module:function"``) in a worker process and wait for it.

    The function is called there as ``f(volumes, params, progress, cancel)`` and returns
    ``(volumes, values)``; volumes travel as NRRD files, params and values as JSON. Progress
    is reported through ``progress``; when ``cancel`` is set the worker and everything it
    started are stopped (after ``cancel_grace`` seconds, 0: at once) and
    :class:`~medtorch.errors.Cancelled` is raised. A bad input comes back as the same
    :class:`~medtorch.errors.MedTorchInputError` (problem and fix); other failures as a
    :class:`~medtorch.errors.MedTorchError` with the worker's message.
    """
    if ":" not in target:
        raise ValueError(f"{target!r} is not 'package.module:function'")
    job = WorkerJob("call", target, volumes, params, progress, cancel_grace=cancel_grace).start()
    out_volumes, values, _ = job.wait_outputs(cancel=cancel)
    return out_volumes, values
