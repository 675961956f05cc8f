"""One thread policy for every job: how many CPU threads torch, OpenMP and BLAS may use.

torch's default is one thread per core, and OpenMP threads spin while they wait at a
barrier. On a machine whose cores are shared (two jobs at once, a second user, Slicer
rendering), a spinning thread burns the core another job needs, and each barrier waits for
a thread that is not scheduled: a self-supervised denoising that takes a minute alone took
twelve beside one other torch job on two cores, and registration measured 10-15x slowdowns.

:func:`plan_threads` chooses the number of threads once, when a job starts:

* ``MEDTORCH_THREADS=N`` (N >= 1): N threads; ``MEDTORCH_THREADS=torch``: torch's and
  OpenMP's own defaults, untouched (the behaviour before this policy);
* else, for a job run inside a process that has already loaded torch (a script or a test
  calling the command line or the pipeline), the count that process has set: its host chose it;
* else ``OMP_NUM_THREADS`` when it is set (someone chose it);
* else ``threads = clamp(usable_cpus - round(others_load), 1, min(usable_cpus, MAX_THREADS))``
  where ``usable_cpus`` is what this process may run on (:func:`usable_cpus`: CPU affinity,
  and the cgroup CPU quota where one is readable) and ``others_load`` is the one-minute load
  average (scaled to those CPUs) less this process's own share (:func:`others_load`).

Whatever the count, OpenMP is told not to spin (``OMP_WAIT_POLICY=PASSIVE``,
``KMP_BLOCKTIME=0``, unless already set): that costs a job alone little and saves a job
beside another most of its slowdown. Those variables only act before OpenMP is loaded (when
torch is first imported), so :func:`child_environment` gives them to every process the
runtime starts, and :func:`applied` sets them in this process if torch is not loaded yet and
calls ``torch.set_num_threads`` either way.

Where it applies: the background worker (:mod:`medtorch.runtime.worker`), the command line
(:func:`medtorch.cli.main`), the pipeline (:func:`medtorch.pipeline.run.run_pipeline`) and each
case of a batch (:mod:`medtorch.pipeline.batch`, which shares the CPUs among its workers).
Algorithms that pin their own count inside (the torch registration engine's one thread on
the CPU, the seeded segmentation's single thread, the training-free fusion methods' one thread,
``MEDTORCH_FUSION_THREADS``) keep doing so. Thread counts can change the
order of floating-point sums, and so the last bits of a result; the policy only chooses the
count once per job, so a job's results do not change while it runs.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["MAX_THREADS", "THREADS_ENV_VAR", "ThreadPlan", "applied", "apply_for_process", "child_environment",
           "others_load", "plan_threads", "usable_cpus"]

#: Environment variable: a number of threads, or ``torch`` to leave torch's defaults alone.
THREADS_ENV_VAR = "MEDTORCH_THREADS"
#: No job gets more threads than this, however many CPUs are free (the work in MedTorch is
#: a few large tensor ops at a time: beyond this, more threads mostly add synchronisation).
MAX_THREADS = 16
#: What OpenMP is told in every job unless the environment says otherwise.
WAIT_POLICY = {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}
_COUNT_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass(frozen=True)
class ThreadPlan:
    """What :func:`plan_threads` chose, and why (recorded with a job's results).

    ``threads`` is None when the policy is off (``MEDTORCH_THREADS=torch``).
    """

    threads: int | None
    usable_cpus: int
    others_load: float | None
    source: str  # "load", "MEDTORCH_THREADS", "this process", "OMP_NUM_THREADS" or "torch default"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _cgroup_cpus() -> float | None:
    """CPUs allowed by the cgroup's CPU quota (v2 ``cpu.max``, v1 ``cfs_quota_us``), None if unlimited."""
    try:
        with open("/sys/fs/cgroup/cpu.max", encoding="ascii") as fh:
            quota, period = fh.read().split()[:2]
        if quota != "max" and int(period) > 0:
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    try:
        with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", encoding="ascii") as fh:
            quota_us = int(fh.read().strip())
        with open("/sys/fs/cgroup/cpu/cpu.cfs_period_us", encoding="ascii") as fh:
            period_us = int(fh.read().strip())
        if quota_us > 0 and period_us > 0:
            return quota_us / period_us
    except (OSError, ValueError):
        pass
    return None


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask (``os.sched_getaffinity``, else
    ``os.cpu_count()``), fewer if a cgroup CPU quota allows less (at least 1)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    quota = _cgroup_cpus()
    if quota is not None:
        n = min(n, max(1, int(quota + 0.5)))
    return max(1, n)


def _own_cpu_share() -> float:
    """This process's average CPU use (cores) since it started: its part of the load average."""
    try:
        import psutil

        proc = psutil.Process()
        times = proc.cpu_times()
        age = time.time() - proc.create_time()
        cpu = times.user + times.system
    except Exception:  # noqa: BLE001 - psutil missing or the process table unreadable
        try:
            with open("/proc/self/stat", encoding="ascii") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            ticks = os.sysconf("SC_CLK_TCK")
            cpu = (int(fields[11]) + int(fields[12])) / ticks
            with open("/proc/uptime", encoding="ascii") as fh:
                uptime = float(fh.read().split()[0])
            age = uptime - int(fields[19]) / ticks
        except (OSError, ValueError, IndexError, AttributeError):
            return 0.0
    # a job planning its threads has just started, so this is close to 0; for an older
    # process its lifetime average stands in for its share of the last minute
    return max(0.0, cpu / max(age, 1.0)) if age > 0 else 0.0


def others_load(cpus: int | None = None) -> float | None:
    """The one-minute load average of everything but this process, on ``cpus`` CPUs
    (None where the platform has no load average, e.g. Windows)."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
    cpus = usable_cpus() if cpus is None else cpus
    total = os.cpu_count() or cpus
    if total > cpus:  # the load average counts every CPU of the machine; scale it to ours
        load = load * cpus / total
    return max(0.0, load - _own_cpu_share())


def _positive_int(text: str | None) -> int | None:
    try:
        n = int(str(text).strip())
    except (TypeError, ValueError):
        return None
    return n if n >= 1 else None


def plan_threads(env: Mapping[str, str] | None = None, share: int = 1, in_this_process: bool = True) -> ThreadPlan:
    """Choose the number of threads for a job that starts now (the module docstring's rule).

    Args:
        env: the environment to read (default: this process's).
        share: how many equal jobs start together and share the CPUs (a batch's workers):
            each is planned ``usable_cpus // share`` CPUs.
        in_this_process: the job runs in this process (the command line, the pipeline), so a
            thread count already set on a loaded torch is kept; False for a job that another
            process will run (a worker, a batch case).
    """
    env = os.environ if env is None else env
    cpus = max(1, usable_cpus() // max(1, int(share)))
    setting = str(env.get(THREADS_ENV_VAR, "")).strip().lower()
    if setting in ("torch", "default", "off"):
        return ThreadPlan(None, cpus, None, "torch default")
    n = _positive_int(setting)
    if n is not None:
        return ThreadPlan(n, cpus, None, THREADS_ENV_VAR)
    if in_this_process and "torch" in sys.modules:
        return ThreadPlan(int(sys.modules["torch"].get_num_threads()), cpus, None, "this process")
    n = _positive_int(env.get("OMP_NUM_THREADS"))
    if n is not None:
        return ThreadPlan(n, cpus, None, "OMP_NUM_THREADS")
    load = others_load(usable_cpus())
    if load is not None and share > 1:
        load = load / share
    free = cpus - round(load or 0.0)
    return ThreadPlan(max(1, min(free, cpus, MAX_THREADS)), cpus, None if load is None else round(load, 2), "load")


def child_environment(plan: ThreadPlan) -> dict[str, str]:
    """Variables for a process the runtime starts: the wait policy (unless this environment
    sets it) and, when the plan has a count, that count for OpenMP, MKL and OpenBLAS and
    ``MEDTORCH_THREADS`` (so the child keeps the parent's choice)."""
    if plan.threads is None:
        return {THREADS_ENV_VAR: "torch"}
    out = {k: v for k, v in WAIT_POLICY.items() if k not in os.environ}
    for var in _COUNT_VARS:
        out[var] = str(plan.threads)
    out[THREADS_ENV_VAR] = str(plan.threads)
    return out


@contextlib.contextmanager
def applied(plan: ThreadPlan) -> Iterator[ThreadPlan]:
    """Run the block with ``plan``'s threads: the OpenMP/BLAS variables if torch is not loaded
    yet (they act when it loads), ``torch.set_num_threads`` if it is or once the block has
    imported it; both put back on exit (a command run inside a test or a script leaves
    nothing behind)."""
    if plan.threads is None:
        yield plan
        return
    saved_env = {k: os.environ.get(k) for k in (*_COUNT_VARS, *WAIT_POLICY)}
    torch_loaded = "torch" in sys.modules
    previous: int | None = None
    if not torch_loaded:
        for var in _COUNT_VARS:
            os.environ[var] = str(plan.threads)
        for var, value in WAIT_POLICY.items():
            os.environ.setdefault(var, value)
    else:
        import torch

        previous = torch.get_num_threads()
        torch.set_num_threads(plan.threads)
    try:
        yield plan
    finally:
        if previous is not None:
            import torch

            torch.set_num_threads(previous)
        for var, saved in saved_env.items():
            if saved is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = saved


def apply_for_process(plan: ThreadPlan) -> None:
    """:func:`applied` for the rest of this process (a worker that runs one job and exits)."""
    if plan.threads is None:
        return
    if "torch" not in sys.modules:
        for var in _COUNT_VARS:
            os.environ[var] = str(plan.threads)
        for var, value in WAIT_POLICY.items():
            os.environ.setdefault(var, value)
    else:
        import torch

        torch.set_num_threads(plan.threads)
