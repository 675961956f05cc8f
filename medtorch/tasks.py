"""Running an operation of :mod:`medtorch.ops` blocking, or in a background process.

* :func:`run_operation` runs one in this process and blocks (scripts, tests).
* :class:`BackgroundTask` runs one in a separate Python process (``python -m
  medtorch.worker job.json``): the job names the operation and carries its request as
  params (:func:`~medtorch.ops.base.request_to_params`), inputs travel as NRRD files,
  progress comes back as JSON lines on stdout, and :meth:`BackgroundTask.cancel` stops it
  within two seconds (SIGTERM, which the worker turns into a cancel, then a kill). The GUI
  never blocks and a cancelled or failed task leaves nothing behind but its temporary
  folder, which is removed. Bad params fail when the task is made, before any process starts.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medtorch import ops
from medtorch.errors import Cancelled, MedTorchError, MedTorchInputError
from medtorch.ops.base import OperationResult, Request, request_to_params
from medtorch.progress import CancelToken, ProgressCallback
from medtorch.volume import Volume

PROGRESS_PREFIX = "MEDTORCH_PROGRESS "
#: Seconds between SIGTERM and SIGKILL when cancelling a background task.
CANCEL_GRACE_SECONDS = 1.0


def run_operation(operation: str | Request, inputs: Mapping[str, Volume], params: Mapping[str, Any] | None = None,
                  progress: ProgressCallback | None = None, cancel: CancelToken | None = None) -> OperationResult:
    """Run an operation in this process (blocking): a request, or a name and its params
    (see :func:`medtorch.ops.run`). Inputs are not modified."""
    return ops.run(operation, inputs, params, progress, cancel)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    return str(obj)


def python_executable() -> str:
    """The Python that runs background tasks: ``MEDTORCH_PYTHON``, Slicer's ``PythonSlicer``
    when running inside Slicer, else this interpreter."""
    env = os.environ.get("MEDTORCH_PYTHON")
    if env:
        return env
    if "slicer" in sys.modules and hasattr(sys.modules["slicer"], "app"):
        found = shutil.which("PythonSlicer")
        if found:
            return found
    return sys.executable


@dataclass
class TaskState:
    status: str  # "running", "done", "failed", "cancelled"
    fraction: float
    message: str


class BackgroundTask:
    """Run an operation in a separate process with progress and a real cancel.

    Usage::

        task = BackgroundTask(DenoiseRequest(method="anisotropic"), {"input": vol})
        # or BackgroundTask("denoise", {"input": vol}, {"method": "anisotropic"})
        task.start()
        while task.poll().status == "running":   # from a GUI timer, or
            ...
        result = task.wait()                      # blocking
    """

    def __init__(self, operation: str | Request, inputs: Mapping[str, Volume], params: Mapping[str, Any] | None = None,
                 progress: ProgressCallback | None = None) -> None:
        self.request = ops.request_for(operation, params)  # bad params fail here, before a process starts
        self.operation = self.request.operation
        self.inputs = dict(inputs)
        self.progress_callback = progress
        self._dir: Path | None = None
        self._proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self._lock = threading.Lock()
        self._fraction = 0.0
        self._message = "starting"
        self._error: str | None = None
        self._error_kind: str | None = None
        self._cancel_requested = False
        self._result: OperationResult | None = None
        self._finished = False
        self._stderr_tail: list[str] = []

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> "BackgroundTask":
        from medtorch.io import write_volume

        self._dir = Path(tempfile.mkdtemp(prefix=f"medtorch-{self.operation}-"))
        inputs_meta = {}
        for name, vol in self.inputs.items():
            path = self._dir / f"in_{name}.nrrd"
            write_volume(vol, path, compress=False)
            inputs_meta[name] = {"path": str(path), "kind": vol.kind}
        job = {"operation": self.operation, "inputs": inputs_meta, "params": request_to_params(self.request),
               "output_dir": str(self._dir / "out")}
        job_path = self._dir / "job.json"
        job_path.write_text(json.dumps(job, default=_json_default), encoding="utf-8")
        env = dict(os.environ)
        pkg_root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["PYTHONUNBUFFERED"] = "1"
        self._proc = subprocess.Popen(
            [python_executable(), "-m", "medtorch.worker", str(job_path)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        self._reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._reader.start()
        threading.Thread(target=self._read_stderr, daemon=True).start()
        return self

    def _read_stdout(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            if not line.startswith(PROGRESS_PREFIX):
                continue
            try:
                msg = json.loads(line[len(PROGRESS_PREFIX):])
            except json.JSONDecodeError:
                continue
            with self._lock:
                if "fraction" in msg:
                    self._fraction = float(msg["fraction"])
                    self._message = str(msg.get("message", ""))
                if "error" in msg:
                    self._error = str(msg["error"])
                    self._error_kind = str(msg.get("kind", "error"))

    def _read_stderr(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        for line in self._proc.stderr:
            self._stderr_tail = (self._stderr_tail + [line.rstrip()])[-30:]

    def poll(self) -> TaskState:
        """Non-blocking state; collects the result when the process has ended."""
        if self._proc is None:
            raise MedTorchError("the task was not started")
        with self._lock:
            fraction, message = self._fraction, self._message
        if self.progress_callback is not None and not self._finished:
            self.progress_callback(fraction, message)
        if self._proc.poll() is None:
            return TaskState("running", fraction, message)
        self._finish()
        if self._cancel_requested:
            return TaskState("cancelled", fraction, "cancelled")
        if self._result is not None:
            return TaskState("done", 1.0, "done")
        return TaskState("failed", fraction, self.error_message())

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
                self._result = self._load_result()
        finally:
            self.cleanup()

    def _load_result(self) -> OperationResult:
        from medtorch.io import read_volume

        assert self._dir is not None
        out_dir = self._dir / "out"
        manifest = json.loads((out_dir / "result.json").read_text(encoding="utf-8"))
        volumes = {}
        for name, info in manifest["volumes"].items():
            vol = read_volume(info["path"], kind=info["kind"])
            vol.metadata = dict(info.get("metadata", {}))
            volumes[name] = vol
        return OperationResult(volumes, manifest.get("values", {}))

    def error_message(self) -> str:
        if self._error:
            return self._error
        tail = "\n".join(self._stderr_tail[-10:])
        code = self._proc.returncode if self._proc is not None else None
        return f"the background process ended with code {code}" + (f":\n{tail}" if tail else "")

    def cancel(self) -> None:
        """Stop the task: SIGTERM (the worker cancels cleanly), then kill after a grace period."""
        self._cancel_requested = True
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=CANCEL_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def wait(self, timeout: float | None = None, poll_interval: float = 0.05) -> OperationResult:
        """Block until the task ends; return its result or raise what it raised."""
        start = time.monotonic()
        while True:
            state = self.poll()
            if state.status != "running":
                break
            if timeout is not None and time.monotonic() - start > timeout:
                self.cancel()
                raise MedTorchError(f"the {self.operation} task did not finish within {timeout} s")
            time.sleep(poll_interval)
        if state.status == "cancelled":
            raise Cancelled()
        if state.status == "failed":
            if self._error_kind == "input":
                raise MedTorchInputError.from_message(self.error_message())
            raise MedTorchError(self.error_message())
        assert self._result is not None
        return self._result

    @property
    def result(self) -> OperationResult | None:
        return self._result

    def cleanup(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            if self._proc is not None and self._proc.poll() is None:
                self._proc.kill()
            self.cleanup()
        except Exception:
            pass
