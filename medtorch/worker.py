"""Background worker: ``python -m medtorch.worker job.json``.

Runs one operation of :mod:`medtorch.ops` (its request rebuilt from the job's params by
:func:`~medtorch.ops.base.request_from_params`) on inputs stored as files, writes its outputs
atomically into the job's output folder with a ``result.json`` manifest, and reports
progress on stdout as ``MEDTORCH_PROGRESS {"fraction": f, "message": m}`` lines.
SIGTERM sets the cancel token, so the algorithm stops at its next progress point.

Exit codes: 0 done, 2 bad input (message in an ``{"error": ..., "kind": "input"}`` line),
3 cancelled, 1 anything else.
"""

from __future__ import annotations

import json
import signal
import sys
import traceback
from pathlib import Path
from typing import Any

from medtorch.errors import Cancelled, MedTorchInputError
from medtorch.progress import CancelToken

PREFIX = "MEDTORCH_PROGRESS "


def _emit(payload: dict[str, Any]) -> None:
    sys.stdout.write(PREFIX + json.dumps(payload) + "\n")
    sys.stdout.flush()


def run_job(job_path: str | Path, cancel: CancelToken | None = None) -> int:
    from medtorch import ops
    from medtorch.io import read_volume, write_text_atomic, write_volume
    from medtorch.tasks import _json_default

    job = json.loads(Path(job_path).read_text(encoding="utf-8"))
    out_dir = Path(job["output_dir"])
    try:
        inputs = {name: read_volume(info["path"], kind=info["kind"]) for name, info in job["inputs"].items()}
        request = ops.request_from_params(ops.operation(job["operation"]).request, job.get("params", {}))
        result = ops.run(request, inputs, progress=lambda f, m="": _emit({"fraction": f, "message": m}), cancel=cancel)
        out_dir.mkdir(parents=True, exist_ok=True)
        manifest: dict[str, Any] = {"volumes": {}, "values": result.values}
        for name, vol in result.volumes.items():
            path = out_dir / f"{name}.nrrd"
            write_volume(vol, path, compress=False)
            manifest["volumes"][name] = {"path": str(path), "kind": vol.kind, "metadata": vol.metadata}
        write_text_atomic(out_dir / "result.json", json.dumps(manifest, default=_json_default))
        _emit({"fraction": 1.0, "message": "done"})
        return 0
    except Cancelled:
        _emit({"error": "cancelled", "kind": "cancelled"})
        return 3
    except MedTorchInputError as exc:
        _emit({"error": str(exc), "kind": "input"})
        return 2
    except Exception as exc:  # report, never hang the GUI
        traceback.print_exc()
        _emit({"error": f"{type(exc).__name__}: {exc}", "kind": "error"})
        return 1


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python -m medtorch.worker JOB.json\n")
        return 2
    cancel = CancelToken()
    signal.signal(signal.SIGTERM, lambda *_: cancel.cancel())
    return run_job(args[0], cancel)


if __name__ == "__main__":
    sys.exit(main())
