"""Starting a worker process, and stopping it with every process it started.

:func:`launch` starts a command with stdout and stderr merged into one text pipe:

* inside Slicer (``slicer.app`` exists and ``slicer.util.launchConsoleProcess`` is there)
  through ``slicer.util.launchConsoleProcess``, as Slicer starts its own Python tools, so the
  worker gets Slicer's environment (the ``PythonSlicer`` launcher then sets up the rest);
* elsewhere through :class:`subprocess.Popen`, in a session of its own on POSIX (a process
  group led by the worker) or a new process group on Windows.

:func:`stop_tree` stops the process and all its descendants. Killing only the process that
was launched is not enough: inside Slicer that is the ``PythonSlicer`` launcher, and killing
a launcher leaves its child, the real worker, running. So the tree is listed first (psutil
where installed, else ``/proc`` on Linux), then asked to stop (SIGTERM to the process group
and to each process; the worker turns it into a cancel), then, after a grace period, killed
(SIGKILL; on Windows ``taskkill /F /T``), listing again to catch processes started meanwhile.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["descendants", "in_slicer", "launch", "python_executable", "stop_tree"]

_WINDOWS = os.name == "nt"


def in_slicer() -> bool:
    """True inside the Slicer application (its ``slicer.app`` and ``launchConsoleProcess`` exist)."""
    slicer = sys.modules.get("slicer")
    util = getattr(slicer, "util", None)
    return (slicer is not None and getattr(slicer, "app", None) is not None
            and callable(getattr(util, "launchConsoleProcess", None)))


def python_executable() -> str:
    """The Python that runs workers: ``MEDTORCH_PYTHON``, Slicer's ``PythonSlicer`` inside
    Slicer, else this interpreter."""
    import shutil

    env = os.environ.get("MEDTORCH_PYTHON")
    if env:
        return env
    if "slicer" in sys.modules and hasattr(sys.modules["slicer"], "app"):
        found = shutil.which("PythonSlicer")
        if found:
            return found
    return sys.executable


def launch(argv: Sequence[str], env_updates: Mapping[str, str], cwd: str | None = None) -> subprocess.Popen[str]:
    """Start ``argv`` with this environment plus ``env_updates``; stdout and stderr come
    merged on ``proc.stdout`` (text). ``proc.medtorch_group`` tells whether it leads a
    process group of its own (then :func:`stop_tree` signals the group too)."""
    args = [str(a) for a in argv]
    updates = {str(k): str(v) for k, v in env_updates.items()}
    if in_slicer():
        import slicer

        proc: subprocess.Popen[str] = _launch_console_process(slicer.util.launchConsoleProcess, args, updates, cwd)
        proc.medtorch_group = False  # type: ignore[attr-defined]
        return proc
    env = dict(os.environ)
    env.update(updates)
    kwargs: dict[str, Any] = {}
    if _WINDOWS:
        kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP  # type: ignore[attr-defined]
    else:
        kwargs["start_new_session"] = True
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd,
                            **kwargs)
    proc.medtorch_group = True  # type: ignore[attr-defined]
    return proc


def _launch_console_process(launch_console: Any, args: list[str], updates: dict[str, str],
                            cwd: str | None) -> subprocess.Popen[str]:
    """``slicer.util.launchConsoleProcess`` with Slicer's environment plus ``updates``.

    Slicer versions whose ``launchConsoleProcess`` has no ``updateEnvironment`` start the
    process in Slicer's current environment (``useStartupEnvironment=False``): ``updates`` are
    put into this process's environment for the call, then taken out again."""
    import inspect

    try:
        takes_updates = "updateEnvironment" in inspect.signature(launch_console).parameters
    except (TypeError, ValueError):
        takes_updates = True
    if takes_updates:
        return launch_console(args, useStartupEnvironment=False, updateEnvironment=updates, cwd=cwd)
    saved = {k: os.environ.get(k) for k in updates}
    os.environ.update(updates)
    try:
        return launch_console(args, useStartupEnvironment=False, cwd=cwd)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# -- the process tree -------------------------------------------------------------------------


def _proc_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, start time in clock ticks), from /proc (Linux)."""
    table: dict[int, tuple[int, int]] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return table
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", encoding="ascii", errors="replace") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            table[int(name)] = (int(fields[1]), int(fields[19]))
        except (OSError, IndexError, ValueError):
            continue
    return table


def descendants(pid: int) -> list[tuple[int, Any]]:
    """Every descendant of ``pid`` as ``(pid, identity)``; the identity (a psutil process or
    the start time) guards against signalling a pid that was reused meanwhile."""
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        try:
            return [(p.pid, p) for p in psutil.Process(pid).children(recursive=True)]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return []
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for child, (parent, _) in table.items():
        children.setdefault(parent, []).append(child)
    out: list[tuple[int, Any]] = []
    todo = list(children.get(pid, []))
    while todo:
        p = todo.pop()
        out.append((p, table[p][1]))
        todo.extend(children.get(p, []))
    return out


def _same_process(pid: int, identity: Any) -> bool:
    if identity is None:
        return True
    if isinstance(identity, int):  # a /proc start time
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
                return int(fh.read().rsplit(")", 1)[1].split()[19]) == identity
        except (OSError, IndexError, ValueError):
            return False
    try:
        return bool(identity.is_running())
    except Exception:  # noqa: BLE001 - a psutil process that is gone
        return False


def _signal(pid: int, identity: Any, sig: int) -> None:
    if not _same_process(pid, identity):
        return
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError, OSError):
        pass


def _signal_group(proc: subprocess.Popen[Any], sig: int) -> None:
    if _WINDOWS or not getattr(proc, "medtorch_group", False):
        return
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError, OSError):
        pass


def stop_tree(proc: subprocess.Popen[Any], grace: float = 1.0) -> None:
    """Stop ``proc`` and every process it started: ask them to stop (SIGTERM; on Windows
    CTRL_BREAK to its group), wait up to ``grace`` seconds for ``proc`` to end, then kill
    whatever of the tree is left. Returns once ``proc`` has ended (and is reaped)."""
    tree = [(proc.pid, None)] + descendants(proc.pid)
    if grace > 0 and proc.poll() is None:
        if _WINDOWS:
            if getattr(proc, "medtorch_group", False):
                try:
                    os.kill(proc.pid, signal.CTRL_BREAK_EVENT)  # type: ignore[attr-defined]
                except OSError:
                    pass
        else:
            _signal_group(proc, signal.SIGTERM)
            for pid, identity in tree:
                _signal(pid, identity, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
    if proc.poll() is None:
        tree += descendants(proc.pid)
    if _WINDOWS:
        if proc.poll() is None:
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(proc.pid)], capture_output=True, check=False)
        for pid, identity in tree[1:]:
            if _same_process(pid, identity):
                subprocess.run(["taskkill", "/F", "/T", "/PID", str(pid)], capture_output=True, check=False)
    else:
        _signal_group(proc, signal.SIGKILL)
        for pid, identity in tree:
            if pid == proc.pid:
                if proc.poll() is None:
                    proc.kill()
            else:
                _signal(pid, identity, signal.SIGKILL)
    proc.wait()
