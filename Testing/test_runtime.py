"""The runtime: jobs in a worker process, stopping a whole process tree, the thread policy."""

from __future__ import annotations

import os
import stat
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from medtorch.errors import Cancelled, MedTorchError, MedTorchInputError, OutOfMemoryBudget
from medtorch.phantoms import blob_phantom, oblique_geometry
from medtorch.progress import CancelToken
from medtorch.runtime import BackgroundJob, WorkerJob, call_in_worker, threads
from medtorch.runtime.serialize import error_from_payload, error_payload

TESTING = Path(__file__).resolve().parent
POSIX = os.name == "posix"


@pytest.fixture
def helpers_on_path(monkeypatch):
    """The worker imports ``runtime_helpers`` from Testing/."""
    old = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", str(TESTING) + (os.pathsep + old if old else ""))


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie (a zombie has ended; only its exit status is left)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _hang_and_cancel(tmp_path: Path) -> tuple[WorkerJob, list[int]]:
    pid_file = tmp_path / "pids.txt"
    job = WorkerJob("call", "runtime_helpers:spawn_and_hang", {}, {"pid_file": str(pid_file)}).start()
    deadline = time.monotonic() + 60
    while not pid_file.exists():
        assert job.poll().status == "running", job.error_message()
        assert time.monotonic() < deadline, "the worker did not start its child"
        time.sleep(0.05)
    pids = [int(p) for p in pid_file.read_text().split()]
    assert all(_alive(p) for p in pids)
    started = time.monotonic()
    job.cancel()
    while any(_alive(p) for p in pids) and time.monotonic() - started < 2.0:
        time.sleep(0.02)
    assert not any(_alive(p) for p in pids), f"still running 2 s after cancel: {[p for p in pids if _alive(p)]}"
    assert job.poll().status == "cancelled"
    return job, pids


@pytest.mark.skipif(not POSIX, reason="uses sleep and /proc")
def test_cancel_stops_the_worker_and_its_child(tmp_path, helpers_on_path):
    _hang_and_cancel(tmp_path)


def _launcher(tmp_path: Path) -> str:
    """A stand-in for Slicer's PythonSlicer: a launcher that runs Python as its *child*."""
    script = tmp_path / "PythonLauncher"
    script.write_text(f'#!/bin/sh\n"{sys.executable}" "$@"\nexit $?\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


@pytest.mark.skipif(not POSIX, reason="uses sh, sleep and /proc")
def test_cancel_through_a_launcher_stops_the_whole_tree(tmp_path, helpers_on_path, monkeypatch):
    monkeypatch.setenv("MEDTORCH_PYTHON", _launcher(tmp_path))
    job, (worker, grandchild) = _hang_and_cancel(tmp_path)
    assert job.pid not in (worker, grandchild)  # the launched process was the launcher


@pytest.mark.skipif(not POSIX, reason="uses sh, sleep and /proc")
@pytest.mark.parametrize("walker", ["psutil", "proc"])
def test_inside_slicer_jobs_start_with_launch_console_process(tmp_path, helpers_on_path, monkeypatch, walker):
    """Inside Slicer the worker is started by slicer.util.launchConsoleProcess (Slicer's own
    environment; no process group of its own), through a launcher, and a cancel still stops
    the launcher, the worker and the worker's child: the tree is walked with psutil, or with
    /proc where psutil is not installed."""
    import types

    from medtorch.runtime import process

    if walker == "proc":
        monkeypatch.setitem(sys.modules, "psutil", None)  # import psutil raises ImportError
    else:
        pytest.importorskip("psutil")

    calls = []
    real_popen = process.subprocess.Popen

    def launch_console_process(args, useStartupEnvironment=True, updateEnvironment=None, cwd=None):
        calls.append((list(args), useStartupEnvironment, dict(updateEnvironment or {})))
        env = dict(os.environ)
        env.update(updateEnvironment or {})
        return real_popen(args, env=env, stdout=process.subprocess.PIPE, stderr=process.subprocess.STDOUT,
                          universal_newlines=True, cwd=cwd)  # as Slicer's does: no new session

    fake = types.ModuleType("slicer")
    fake.app = object()  # type: ignore[attr-defined]
    fake.util = types.SimpleNamespace(launchConsoleProcess=launch_console_process)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "slicer", fake)
    monkeypatch.setenv("MEDTORCH_PYTHON", _launcher(tmp_path))
    assert process.in_slicer()
    job, _ = _hang_and_cancel(tmp_path)
    assert len(calls) == 1 and calls[0][0][1:3] == ["-m", "medtorch.runtime.worker"] and calls[0][1] is False
    assert "PYTHONPATH" in calls[0][2] and calls[0][2]["OMP_NUM_THREADS"]
    assert job._proc.medtorch_group is False


@pytest.mark.skipif(not POSIX, reason="uses sh, sleep and /proc")
def test_older_launch_console_process_without_update_environment(tmp_path, helpers_on_path, monkeypatch):
    """A Slicer whose launchConsoleProcess has no updateEnvironment: the worker still gets the
    job's variables (through Slicer's current environment during the call), this process's
    environment is as it was afterwards, and a cancel still stops the whole tree."""
    import types

    from medtorch.runtime import process

    seen = []
    real_popen = process.subprocess.Popen

    def launch_console_process(args, useStartupEnvironment=True, cwd=None):
        seen.append((useStartupEnvironment, dict(os.environ)))
        return real_popen(args, env=dict(os.environ), stdout=process.subprocess.PIPE,
                          stderr=process.subprocess.STDOUT, universal_newlines=True, cwd=cwd)

    fake = types.ModuleType("slicer")
    fake.app = object()  # type: ignore[attr-defined]
    fake.util = types.SimpleNamespace(launchConsoleProcess=launch_console_process)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "slicer", fake)
    monkeypatch.setenv("MEDTORCH_PYTHON", _launcher(tmp_path))
    monkeypatch.delenv("MEDTORCH_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = dict(os.environ)
    _hang_and_cancel(tmp_path)
    assert len(seen) == 1 and seen[0][0] is False
    assert seen[0][1].get("OMP_NUM_THREADS") and seen[0][1].get("MEDTORCH_THREADS")
    assert dict(os.environ) == before


def test_input_errors_cross_as_problem_and_fix():
    task = BackgroundJob("threshold", {"input": blob_phantom(oblique_geometry())}, {"lower": 9000.0}).start()
    with pytest.raises(MedTorchInputError) as exc:
        task.wait(timeout=120)
    assert "no voxel lies between" in exc.value.problem and exc.value.fix
    assert "What to do" not in exc.value.problem
    # the payload keeps the class and both parts
    again = error_from_payload(error_payload(OutOfMemoryBudget("too big", "use a smaller ROI")))
    assert type(again) is OutOfMemoryBudget and (again.problem, again.fix) == ("too big", "use a smaller ROI")
    assert isinstance(error_from_payload(error_payload(Cancelled())), Cancelled)
    other = error_from_payload(error_payload(ZeroDivisionError("x")))
    assert type(other) is MedTorchError and "ZeroDivisionError: x" in str(other)


def test_worker_records_its_thread_plan(monkeypatch):
    monkeypatch.setenv("MEDTORCH_THREADS", "1")
    job = BackgroundJob("denoise", {"input": blob_phantom(oblique_geometry())}, {"method": "gaussian"}).start()
    job.wait(timeout=120)
    assert job.worker_threads == {"threads": 1, "usable_cpus": threads.usable_cpus(), "others_load": None,
                                  "source": "MEDTORCH_THREADS"}


# -- elastix's path through the worker, without elastix -----------------------------------------


def _pair():
    geom = oblique_geometry(size=(20, 18, 12))
    return blob_phantom(geom, seed=1), blob_phantom(geom, noise=3.0, seed=2)


def test_elastix_job_runs_in_the_worker_and_gives_identical_results(helpers_on_path, monkeypatch):
    """register_elastix(isolate=True) is a call job of the runtime; a stand-in for the elastix
    function shows the matrix, the field, its geometry and the figures come back bit for bit."""
    from runtime_helpers import fake_elastix

    from medtorch.registration import classic

    monkeypatch.setattr(classic, "_ELASTIX_JOB", "runtime_helpers:fake_elastix")
    fixed, moving = _pair()
    mask = fixed.__class__((fixed.array > 100).astype(np.uint8), fixed.geometry, "label")
    initial = np.eye(4)
    initial[:3, 3] = (0.1, -0.2, 1.0 / 3.0)
    maps = [{"Transform": ["EulerTransform"]}, {"Transform": ["BSplineTransform"]}]
    seen = []
    matrix, disp, info = classic._elastix_child(fixed, moving, "deformable", mask, None, initial, 5, maps,
                                                lambda f, m="": seen.append((f, m)), CancelToken())
    params = {"mode": "deformable", "seed": 5, "maps": maps, "initial": initial}
    ref_vols, ref_values = fake_elastix({"fixed": fixed, "moving": moving, "fixed_mask": mask}, params,
                                        lambda *a: None, None)
    assert matrix.dtype == np.float64 and np.array_equal(matrix, ref_values["matrix"])
    assert disp is not None and disp.kind == "vector" and disp.array.dtype == np.float32
    assert np.array_equal(disp.array, ref_vols["displacement"].array)
    assert disp.geometry == fixed.geometry  # exact, not merely close
    assert disp.metadata == {"what": "displacement"}
    assert info == {**ref_values["info"], "masks": ["fixed", "fixed_mask", "moving"]}
    assert (0.5, "elastix: registering") in seen and seen[-1] == (1.0, "elastix: done")
    with pytest.raises(MedTorchInputError) as exc:
        classic._elastix_child(fixed, moving, "bad", None, None, None, 0, maps, None, CancelToken())
    assert (exc.value.problem, exc.value.fix) == ("the fake elastix refuses mode 'bad'", "use a real mode")


def test_elastix_job_function_adapts_the_in_process_call(monkeypatch):
    """The worker side: _elastix_job hands its volumes and JSON params to _elastix_in_process."""
    from medtorch.registration import classic

    got = {}

    def fake_in_process(fixed, moving, mode, fixed_mask, moving_mask, initial, seed, maps, log_dir, progress, cancel):
        got.update(mode=mode, initial=initial, seed=seed, maps=maps, masks=(fixed_mask, moving_mask),
                   log_dir_exists=Path(log_dir).is_dir(), progress=progress, cancel=cancel)
        return np.eye(4), None, {"engine": "x"}

    monkeypatch.setattr(classic, "_elastix_in_process", fake_in_process)
    fixed, moving = _pair()
    out, values = classic._elastix_job({"fixed": fixed, "moving": moving},
                                       {"mode": "rigid", "seed": 3, "maps": [{}], "initial": [[1.0, 0, 0, 0]] * 4},
                                       None, None)
    assert out == {} and np.array_equal(values["matrix"], np.eye(4)) and values["info"] == {"engine": "x"}
    assert got["initial"].dtype == np.float64 and got["seed"] == 3 and got["masks"] == (None, None)
    assert got["log_dir_exists"] and got["progress"] is None and got["cancel"] is None


def test_elastix_in_the_worker_without_elastix_is_the_clear_input_error():
    """The real elastix job, run by the worker where itk-elastix is missing: the worker's
    MedTorchInputError arrives with its problem and fix."""
    from medtorch.registration import classic

    try:
        classic.load_elastix()
        pytest.skip("itk-elastix is installed")
    except MedTorchInputError as exc:
        expected = (exc.problem, exc.fix)
    fixed, moving = _pair()
    with pytest.raises(MedTorchInputError) as err:
        classic._elastix_child(fixed, moving, "rigid", None, None, None, 0, [{}], None, CancelToken())
    assert (err.value.problem, err.value.fix) == expected


@pytest.mark.skipif(not POSIX, reason="uses sleep and /proc")
def test_a_cancelled_call_job_raises_cancelled_and_leaves_no_process(tmp_path, helpers_on_path):
    pid_file = tmp_path / "pids.txt"
    token = CancelToken()

    def progress(f, m=""):
        if pid_file.exists():
            token.cancel()

    started = time.monotonic()
    with pytest.raises(Cancelled):
        call_in_worker("runtime_helpers:spawn_and_hang", {}, {"pid_file": str(pid_file)}, progress, token)
    assert time.monotonic() - started < 60
    assert not any(_alive(int(p)) for p in pid_file.read_text().split())


# -- the thread policy --------------------------------------------------------------------------


def test_thread_plan_follows_the_settings_then_the_load(monkeypatch):
    import torch

    monkeypatch.setattr(threads, "usable_cpus", lambda: 8)
    assert threads.plan_threads({"MEDTORCH_THREADS": "3"}).threads == 3
    assert threads.plan_threads({"MEDTORCH_THREADS": "torch"}).threads is None
    # torch is loaded here: a job in this process keeps the count its host set
    assert threads.plan_threads({"OMP_NUM_THREADS": "5"}) == threads.ThreadPlan(torch.get_num_threads(), 8, None,
                                                                                "this process")
    plan = threads.plan_threads({"OMP_NUM_THREADS": "5"}, in_this_process=False)
    assert plan == threads.ThreadPlan(5, 8, None, "OMP_NUM_THREADS")
    for load, expected in ((0.0, 8), (0.4, 8), (2.6, 5), (7.5, 1), (30.0, 1)):
        monkeypatch.setattr(threads, "others_load", lambda cpus=None, v=load: v)
        plan = threads.plan_threads({}, in_this_process=False)
        assert (plan.threads, plan.source, plan.others_load) == (expected, "load", load)
    monkeypatch.setattr(threads, "others_load", lambda cpus=None: 0.0)
    monkeypatch.setattr(threads, "usable_cpus", lambda: 64)
    assert threads.plan_threads({}, in_this_process=False).threads == threads.MAX_THREADS
    assert threads.plan_threads({}, share=8, in_this_process=False).threads == 8  # a batch of 8: 64 / 8 CPUs each
    monkeypatch.setattr(threads, "others_load", lambda cpus=None: None)  # no load average (Windows)
    assert threads.plan_threads({}, in_this_process=False).threads == threads.MAX_THREADS


def test_usable_cpus_and_load_are_sane():
    n = threads.usable_cpus()
    assert 1 <= n <= (os.cpu_count() or 1)
    load = threads.others_load()
    assert load is None or load >= 0.0


def test_child_environment_and_applied_put_everything_back(monkeypatch):
    import torch

    plan = threads.ThreadPlan(1, 2, 0.0, "load")
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    env = threads.child_environment(plan)
    assert env["OMP_NUM_THREADS"] == env["MEDTORCH_THREADS"] == "1" and env["OMP_WAIT_POLICY"] == "PASSIVE"
    assert env["KMP_BLOCKTIME"] == "0" or "KMP_BLOCKTIME" in os.environ
    assert threads.child_environment(threads.ThreadPlan(None, 2, None, "torch default")) == {"MEDTORCH_THREADS": "torch"}
    before = torch.get_num_threads()
    omp_before = os.environ.get("OMP_NUM_THREADS")
    with threads.applied(threads.ThreadPlan(before + 1, 2, 0.0, "load")):
        assert torch.get_num_threads() == before + 1
    assert torch.get_num_threads() == before and os.environ.get("OMP_NUM_THREADS") == omp_before


def test_cli_applies_the_policy_and_restores_threads(tmp_path, monkeypatch, capsys):
    import torch

    from medtorch.cli import main
    from medtorch.io import write_volume

    seen = []
    from medtorch import ops

    real_run = ops.run

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real_run(*args, **kwargs)

    monkeypatch.setattr(ops, "run", spy)
    monkeypatch.setenv("MEDTORCH_THREADS", "1")
    write_volume(blob_phantom(oblique_geometry()), tmp_path / "in.nrrd")
    before = torch.get_num_threads()
    assert main(["denoise", "--in", str(tmp_path / "in.nrrd"), "--out", str(tmp_path / "out.nrrd"),
                 "--method", "gaussian", "-q"]) == 0
    assert seen == [1] and torch.get_num_threads() == before


def test_cli_puts_the_device_back(tmp_path, monkeypatch, capsys):
    """--device sets MEDTORCH_DEVICE for the command only: a refused --device cuda (or any
    --device) leaves the environment of the calling process as it was."""
    from medtorch.cli import main
    from medtorch.io import write_volume

    monkeypatch.delenv("MEDTORCH_DEVICE", raising=False)
    write_volume(blob_phantom(oblique_geometry()), tmp_path / "in.nrrd")
    for device in ("cpu", "cuda"):
        main(["denoise", "--in", str(tmp_path / "in.nrrd"), "--out", str(tmp_path / "out.nrrd"),
              "--method", "gaussian", "--device", device, "-q"])
        assert "MEDTORCH_DEVICE" not in os.environ
    monkeypatch.setenv("MEDTORCH_DEVICE", "cpu")
    main(["denoise", "--in", str(tmp_path / "in.nrrd"), "--out", str(tmp_path / "out2.nrrd"),
          "--method", "gaussian", "--device", "auto", "-q"])
    assert os.environ["MEDTORCH_DEVICE"] == "cpu"
