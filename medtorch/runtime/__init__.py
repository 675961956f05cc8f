"""The runtime: one way to run MedTorch's work in the background.

Words used throughout: an **operation** is what can be done (``register``, ``denoise``...,
:mod:`medtorch.ops`), a **request** is its parameters (a frozen dataclass), and a **job** is
one running instance, here in a worker process.

* :mod:`.serialize`: the job spec (``job.json``: operation name + request params, or a
  function and its JSON params; input volumes as NRRD files; the output folder), the result
  (``result.json``), progress lines and errors as ``{problem, fix}`` data;
* :mod:`.worker`: ``python -m medtorch.runtime.worker job.json`` runs one job;
* :mod:`.jobs`: :class:`BackgroundJob` (an operation in a worker: start, poll, cancel, wait),
  :func:`call_in_worker` (a function in a worker, e.g. elastix), :func:`run_operation`
  (blocking, in this process);
* :mod:`.process`: starting the worker (``slicer.util.launchConsoleProcess`` inside Slicer,
  ``subprocess.Popen`` in a session of its own elsewhere) and stopping its whole process tree;
* :mod:`.threads`: the thread policy every job runs with.

Importing this package imports neither torch nor an algorithm (Slicer imports it at start-up).
"""

from __future__ import annotations

from medtorch.runtime.jobs import (
    CANCEL_GRACE_SECONDS,
    BackgroundJob,
    JobState,
    WorkerJob,
    call_in_worker,
    run_operation,
)
from medtorch.runtime.process import python_executable
from medtorch.runtime.threads import ThreadPlan, plan_threads

__all__ = ["CANCEL_GRACE_SECONDS", "BackgroundJob", "JobState", "ThreadPlan", "WorkerJob", "call_in_worker",
           "plan_threads", "python_executable", "run_operation"]
