"""Functions that the runtime's worker runs in tests (``call`` jobs by ``module:function``).

The worker imports this module by name, so the tests put ``Testing/`` on ``PYTHONPATH``.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from medtorch.errors import MedTorchInputError
from medtorch.volume import Volume


def spawn_and_hang(volumes: dict[str, Volume], params: dict[str, Any], progress: Any, cancel: Any) -> Any:
    """Start a ``sleep 60`` child, write ``worker_pid grandchild_pid`` to ``params["pid_file"]``,
    then hang without looking at the cancel token (as elastix does)."""
    child = subprocess.Popen(["sleep", "60"])
    tmp = Path(params["pid_file"] + ".tmp")
    tmp.write_text(f"{os.getpid()} {child.pid}")
    os.replace(tmp, params["pid_file"])
    progress(0.5, "hanging")
    while True:
        time.sleep(0.1)


def fake_elastix(volumes: dict[str, Volume], params: dict[str, Any], progress: Any, cancel: Any) -> Any:
    """Stands in for ``classic._elastix_job``: what elastix would give back, from its inputs."""
    fixed = volumes["fixed"]
    progress(0.5, "elastix: registering")
    time.sleep(0.5)  # long enough for the parent, polling every 50 ms, to see that progress
    if params["mode"] == "bad":
        raise MedTorchInputError("the fake elastix refuses mode 'bad'", "use a real mode")
    rng = np.random.default_rng(int(params["seed"]))
    matrix = np.eye(4)
    matrix[:3, :] += rng.normal(scale=1e-3, size=(3, 4)) / 3.0  # full float64 mantissas
    if params["initial"] is not None:
        matrix = np.asarray(params["initial"], dtype=np.float64) @ matrix
    out = {}
    if params["mode"] == "deformable":
        field = rng.normal(size=fixed.geometry.shape_zyx + (3,)).astype(np.float32)
        out["displacement"] = Volume(field, fixed.geometry, "vector", {"what": "displacement"})
    info = {"engine": "fake", "final_metric": -0.123456789012345, "iterations": 7, "seed": int(params["seed"]),
            "stages": [m.get("Transform", ["?"])[0] for m in params["maps"]], "masks": sorted(volumes)}
    return out, {"matrix": matrix, "info": info}
