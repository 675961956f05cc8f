"""What crosses a job's process boundary, and how: JSON files, NRRD volumes, progress lines.

* the **job spec** (:class:`JobSpec`, ``job.json``): what to run -- an operation of
  :mod:`medtorch.ops` by name with its request as params (:func:`medtorch.ops.request_to_params`),
  or a function by ``module:function`` with JSON keyword params -- its input volumes (NRRD
  files), the output folder, and the thread plan;
* the **result** (``result.json`` in the output folder): output volumes (NRRD files, with
  their kind and metadata) and plain JSON values;
* **progress** on the worker's stdout, one line each: ``MEDTORCH_PROGRESS {json}`` with
  ``fraction`` and ``message``, or ``error`` (:func:`error_payload`) when the job fails;
* **errors** as structured payloads: a :class:`~medtorch.errors.MedTorchInputError` travels as
  its two parts, ``problem`` and ``fix``, and comes back as the same class.

JSON conversion of numpy values is :mod:`medtorch.jsonvalue`'s (the one place for it).
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from medtorch import errors
from medtorch.errors import Cancelled, MedTorchError, MedTorchInputError
from medtorch.jsonvalue import dumps, plain
from medtorch.volume import Volume

__all__ = ["JOB_FILE", "PROGRESS_PREFIX", "RESULT_FILE", "JobKind", "JobSpec", "error_from_payload", "error_payload",
           "parse_progress_line", "progress_line", "read_result", "read_volumes", "write_result", "write_volumes"]

JOB_FILE = "job.json"
RESULT_FILE = "result.json"
PROGRESS_PREFIX = "MEDTORCH_PROGRESS "

#: ``operation``: an operation of :mod:`medtorch.ops` by name; ``call``: a function
#: ``f(volumes, params, progress, cancel) -> (volumes, values)`` named ``module:function``.
JobKind = Literal["operation", "call"]


@dataclass(frozen=True)
class JobSpec:
    """One job, as the worker reads it from ``job.json``."""

    kind: JobKind
    target: str  # the operation's name, or "package.module:function"
    params: dict[str, Any]
    inputs: dict[str, dict[str, str]]  # name -> {"path": NRRD file, "kind": volume kind}
    output_dir: str
    threads: dict[str, Any] | None = None  # a ThreadPlan's as_dict(); None: the worker plans its own
    extra: dict[str, Any] = field(default_factory=dict)

    def write(self, path: str | Path) -> Path:
        target = Path(path)
        target.write_text(dumps(asdict(self)), encoding="utf-8")
        return target

    @classmethod
    def read(cls, path: str | Path) -> JobSpec:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls(**data)


# -- volumes ----------------------------------------------------------------------------------


def write_volumes(folder: str | Path, volumes: Mapping[str, Volume], prefix: str = "") -> dict[str, dict[str, Any]]:
    """Write each volume as an uncompressed NRRD file in ``folder``; return its entries
    (``path``, ``kind``, ``metadata`` and the exact ``geometry``) for a job spec or a result.

    NRRD keeps spacing times direction, whose split back into spacing and direction can
    differ in the last bit; the entry's JSON geometry (floats written exactly) is what
    :func:`read_volumes` gives back, so a volume arrives as it left."""
    from medtorch.io import write_volume

    out: dict[str, dict[str, Any]] = {}
    for name, vol in volumes.items():
        path = Path(folder) / f"{prefix}{name}.nrrd"
        write_volume(vol, path, compress=False)
        g = vol.geometry
        out[name] = {"path": str(path), "kind": vol.kind, "metadata": plain(vol.metadata, other="str"),
                     "geometry": plain({"size": g.size, "origin": g.origin, "spacing": g.spacing,
                                        "direction": g.direction})}
    return out


def read_volumes(entries: Mapping[str, Mapping[str, Any]]) -> dict[str, Volume]:
    """The volumes :func:`write_volumes` wrote, with their kind, metadata and geometry."""
    from medtorch.io import read_volume
    from medtorch.volume import Geometry

    out = {}
    for name, info in entries.items():
        vol = read_volume(info["path"], kind=info["kind"])
        if "geometry" in info:
            g = info["geometry"]
            exact = Geometry(g["size"], g["origin"], g["spacing"], g["direction"])
            if exact.size == vol.geometry.size and exact.isclose(vol.geometry, atol=1e-6):
                vol = Volume(vol.array, exact, vol.kind, vol.metadata)
        if "metadata" in info:
            vol.metadata = dict(info["metadata"])
        out[name] = vol
    return out


def write_result(output_dir: str | Path, volumes: Mapping[str, Volume], values: Mapping[str, Any],
                 job: Mapping[str, Any] | None = None) -> Path:
    """Write a job's outputs: the volumes, then ``result.json`` (atomically, last)."""
    from medtorch.io import write_text_atomic

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"volumes": write_volumes(out, volumes), "values": plain(values, other="str"), "job": dict(job or {})}
    return write_text_atomic(out / RESULT_FILE, dumps(manifest))


def read_result(output_dir: str | Path) -> tuple[dict[str, Volume], dict[str, Any], dict[str, Any]]:
    """``(volumes, values, job)`` of a finished job's output folder."""
    manifest = json.loads((Path(output_dir) / RESULT_FILE).read_text(encoding="utf-8"))
    return read_volumes(manifest["volumes"]), manifest.get("values", {}), manifest.get("job", {})


# -- progress and errors ----------------------------------------------------------------------


def progress_line(payload: Mapping[str, Any]) -> str:
    return PROGRESS_PREFIX + dumps(payload) + "\n"


def parse_progress_line(line: str) -> dict[str, Any] | None:
    """The payload of a progress line, None for any other line (a log line, a traceback)."""
    if not line.startswith(PROGRESS_PREFIX):
        return None
    try:
        payload = json.loads(line[len(PROGRESS_PREFIX):])
    except json.JSONDecodeError:
        return None
    return payload if isinstance(payload, dict) else None


def error_payload(exc: BaseException) -> dict[str, Any]:
    """An exception as data: ``kind`` (``input``, ``cancelled``, ``error``), ``type``, and
    ``problem`` + ``fix`` for a bad input, ``message`` (+ ``traceback``) otherwise."""
    if isinstance(exc, Cancelled):
        return {"kind": "cancelled", "type": type(exc).__name__, "message": str(exc)}
    if isinstance(exc, MedTorchInputError):
        return {"kind": "input", "type": type(exc).__name__, "problem": exc.problem, "fix": exc.fix}
    return {"kind": "error", "type": type(exc).__name__, "message": f"{type(exc).__name__}: {exc}",
            "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-4000:]}


def error_from_payload(payload: Mapping[str, Any]) -> MedTorchError:
    """The exception an :func:`error_payload` describes, to raise in the parent: the same
    :class:`~medtorch.errors.MedTorchInputError` class with its problem and fix, a
    :class:`~medtorch.errors.Cancelled`, or a :class:`~medtorch.errors.MedTorchError` with the message."""
    kind = payload.get("kind")
    if kind == "input":
        cls = getattr(errors, str(payload.get("type", "")), MedTorchInputError)
        if not (isinstance(cls, type) and issubclass(cls, MedTorchInputError)):
            cls = MedTorchInputError
        return cls(str(payload.get("problem", "")), str(payload.get("fix", "")))
    if kind == "cancelled":
        return Cancelled()
    return MedTorchError(str(payload.get("message", "the background job failed")))
