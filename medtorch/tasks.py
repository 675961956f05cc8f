"""Operations that Slicer and the command line run, blocking or in a background process.

Every Slicer-facing operation is registered by name (``@register("name")``) with a function
``op(inputs: dict[str, Volume], params: dict, progress, cancel) -> OperationResult``, in
the ``ops`` module of its subpackage (``medtorch/fusion/ops.py``, ...), found by
:func:`discover_operations`.

* :func:`run_operation` runs one in this process and blocks (scripts, tests, the CLI).
* :class:`BackgroundTask` runs one in a separate Python process (``python -m
  medtorch.worker job.json``): inputs travel as NRRD files, progress comes back as JSON
  lines on stdout, and :meth:`BackgroundTask.cancel` stops it within two seconds
  (SIGTERM, which the worker turns into a cancel, then a kill). The GUI never blocks and
  a cancelled or failed task leaves nothing behind but its temporary folder, which is
  removed.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from medtorch.errors import Cancelled, MedTorchError, MedTorchInputError
from medtorch.progress import CancelToken, ProgressCallback
from medtorch.volume import Volume

PROGRESS_PREFIX = "MEDTORCH_PROGRESS "
#: Seconds between SIGTERM and SIGKILL when cancelling a background task.
CANCEL_GRACE_SECONDS = 1.0


@dataclass
class OperationResult:
    """Volumes and plain values (numbers, strings) an operation produced."""

    volumes: dict[str, Volume] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)


Operation = Callable[[dict[str, Volume], dict[str, Any], "ProgressCallback | None", "CancelToken | None"], OperationResult]
OPERATIONS: dict[str, Operation] = {}
_DISCOVERED = False


def register(name: str) -> Callable[[Operation], Operation]:
    def deco(fn: Operation) -> Operation:
        OPERATIONS[name] = fn
        return fn

    return deco


def need(inputs: dict[str, Volume], name: str) -> Volume:
    """The input volume ``name``, or a clear error when it is missing."""
    if name not in inputs:
        raise MedTorchInputError(f"the {name} volume is missing", f"select a {name} volume")
    return inputs[name]


def discover_operations() -> dict[str, Operation]:
    """Import every ``medtorch.<subpackage>.ops`` module, which registers its operations."""
    global _DISCOVERED
    if not _DISCOVERED:
        import importlib
        import pkgutil

        import medtorch

        for info in pkgutil.iter_modules(medtorch.__path__):
            if info.ispkg and importlib.util.find_spec(f"medtorch.{info.name}.ops") is not None:
                importlib.import_module(f"medtorch.{info.name}.ops")
        _DISCOVERED = True
    return OPERATIONS


# -- running -----------------------------------------------------------------------------


def run_operation(name: str, inputs: dict[str, Volume], params: dict[str, Any] | None = None,
                  progress: ProgressCallback | None = None, cancel: CancelToken | None = None) -> OperationResult:
    """Run operation ``name`` in this process (blocking). Inputs are not modified."""
    ops = discover_operations()
    if name not in ops:
        raise MedTorchInputError(f"unknown operation {name!r}", "use one of " + ", ".join(sorted(ops)))
    return ops[name](inputs, dict(params or {}), progress, cancel)


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

        task = BackgroundTask("denoise", {"input": vol}, {"method": "anisotropic"})
        task.start()
        while task.poll().status == "running":   # from a GUI timer, or
            ...
        result = task.wait()                      # blocking
    """

    def __init__(self, operation: str, inputs: dict[str, Volume], params: dict[str, Any] | None = None,
                 progress: ProgressCallback | None = None) -> None:
        ops = discover_operations()
        if operation not in ops:
            raise MedTorchInputError(f"unknown operation {operation!r}", "use one of " + ", ".join(sorted(ops)))
        self.operation = operation
        self.inputs = inputs
        self.params = dict(params or {})
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
        job = {"operation": self.operation, "inputs": inputs_meta, "params": self.params,
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
