"""The study configuration of ``medtorch pipeline``: a YAML file, checked before anything runs.

Example ``study.yaml`` (every step optional; paths relative to the YAML file)::

    study: patient001
    output_dir: out/patient001      # default: <yaml folder>/<study>
    device: auto                     # auto | cpu | cuda | mps
    seed: 0
    inputs:
      fixed: scans/t1                # a DICOM folder or a NIfTI/NRRD/MHA file
      moving: scans/ct
      fixed_series_uid: null         # when a DICOM folder holds several series
      moving_series_uid: null
    steps:
      register: {mode: rigid, metric: mi, engine: torch}
      fuse: {method: average, weight: 0.5}
      denoise: {input: fixed, method: anisotropic, strength: 1.0, iterations: 5}
      superres: {input: fixed, factor: 2, axis: k, method: bspline}   # axis auto: the thick axis
      segment: {input: fixed, method: threshold, lower: 150, upper: .inf}

A step is run when it is present and not ``enabled: false``. Every key of every step is
checked before anything runs (:mod:`medtorch.pipeline.schema`); ``docs/pipeline.md`` lists them.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medtorch.errors import MedTorchInputError

STEP_ORDER = ("register", "fuse", "denoise", "superres", "segment")
INPUT_NAMES = ("fixed", "moving")


@dataclass
class StudyConfig:
    """A validated study configuration (paths resolved to absolute)."""

    study: str
    output_dir: Path
    inputs: dict[str, Path]
    series_uids: dict[str, str | None]
    steps: dict[str, dict[str, Any]]
    device: str = "auto"
    seed: int = 0
    source: Path | None = None
    raw: dict[str, Any] = field(default_factory=dict)
    #: ``file`` (volume files) or ``dicom`` (each volume output also as a DICOM series folder):
    #: the choices of the commands' ``--format`` (:data:`medtorch.ops.export.OutputFormat`)
    output_format: str = "file"
    patient_id: str | None = None
    #: ``CT`` or ``MR``: the modality of DICOM series written without a DICOM input to take it from
    modality: str | None = None

    def enabled_steps(self) -> list[str]:
        return [s for s in STEP_ORDER if s in self.steps]

    def to_dict(self) -> dict[str, Any]:
        return {
            "study": self.study, "output_dir": str(self.output_dir), "device": self.device, "seed": self.seed,
            "inputs": {k: str(v) for k, v in self.inputs.items()}, "series_uids": dict(self.series_uids),
            "steps": copy.deepcopy(self.steps), "source": str(self.source) if self.source else None,
            "output_format": self.output_format, "patient_id": self.patient_id, "modality": self.modality,
        }


def _err(problem: str, fix: str) -> MedTorchInputError:
    return MedTorchInputError(f"study configuration: {problem}", fix)


def parse_config(data: dict[str, Any], base_dir: Path, source: Path | None = None,
                 overrides: dict[str, Any] | None = None) -> StudyConfig:
    """Validate a configuration mapping; relative paths are resolved against ``base_dir``.

    ``overrides`` (e.g. one row of a batch manifest) replace ``study``, ``output_dir`` and
    ``inputs.<name>`` entries.
    """
    if not isinstance(data, dict):
        raise _err("the file does not hold a mapping", "write 'study:', 'inputs:' and 'steps:' keys")
    data = copy.deepcopy(data)
    for key, value in (overrides or {}).items():
        if key in INPUT_NAMES or key.endswith("_series_uid"):
            data.setdefault("inputs", {})[key] = value
        else:
            data[key] = value
    unknown = set(data) - {"study", "output_dir", "device", "seed", "inputs", "steps", "output_format", "patient_id",
                      "modality"}
    if unknown:
        raise _err(f"unknown keys {sorted(unknown)}",
                   "use study, output_dir, device, seed, output_format, patient_id, modality, inputs and steps")
    from typing import get_args

    from medtorch.ops.export import OutputFormat

    output_format = str(data.get("output_format", "file")).strip().lower()
    if output_format not in get_args(OutputFormat):
        raise _err(f"output_format {data.get('output_format')!r} is unknown",
                   "use " + " or ".join(get_args(OutputFormat)) + " (the command line's --format)")
    patient_id = data.get("patient_id")
    modality = None if data.get("modality") is None else str(data.get("modality")).strip().upper()
    if modality is not None and modality not in ("CT", "MR"):
        raise _err(f"modality {data.get('modality')!r} is unknown", "use CT or MR (the class of the DICOM images written)")
    study = str(data.get("study") or (source.stem if source else "study"))
    inputs_raw = data.get("inputs") or {}
    if not isinstance(inputs_raw, dict) or "fixed" not in inputs_raw:
        raise _err("'inputs' must name at least the 'fixed' volume", "add inputs: {fixed: path/to/scan}")
    inputs: dict[str, Path] = {}
    uids: dict[str, str | None] = {}
    for name in INPUT_NAMES:
        value = inputs_raw.get(name)
        if value in (None, ""):
            continue
        path = Path(os.path.expanduser(str(value)))
        path = path if path.is_absolute() else (base_dir / path)
        if not path.exists():
            raise _err(f"the {name} input {path} does not exist", "fix the path (relative paths start at the YAML's folder)")
        inputs[name] = path.resolve()
        uids[name] = inputs_raw.get(f"{name}_series_uid")
    steps_raw = data.get("steps") or {}
    if not isinstance(steps_raw, dict):
        raise _err("'steps' must be a mapping", "write e.g. steps: {denoise: {method: gaussian}}")
    bad = set(steps_raw) - set(STEP_ORDER)
    if bad:
        raise _err(f"unknown steps {sorted(bad)}", "use " + ", ".join(STEP_ORDER))
    steps = {}
    for name in STEP_ORDER:
        if name not in steps_raw:
            continue
        params = steps_raw[name] or {}
        if not isinstance(params, dict):
            raise _err(f"step {name} must be a mapping of parameters", f"write {name}: {{...}} or {name}: {{}}")
        if params.get("enabled", True) is False:
            continue
        params = {k: v for k, v in params.items() if k != "enabled"}
        steps[name] = params
    if ("register" in steps or "fuse" in steps) and "moving" not in inputs:
        raise _err("register and fuse need a moving volume", "add inputs: {moving: path}, or disable those steps")
    for name in ("denoise", "superres", "segment"):
        if name in steps and steps[name].get("input", "fixed") not in inputs:
            raise _err(f"step {name} reads input {steps[name].get('input')!r}, which is not given",
                       "set its 'input' to fixed or moving")
    out = data.get("output_dir")
    out_dir = Path(os.path.expanduser(str(out))) if out else Path(study)
    out_dir = out_dir if out_dir.is_absolute() else base_dir / out_dir
    device = str(data.get("device", "auto"))
    if device not in ("auto", "cpu", "cuda", "mps") and not device.startswith("cuda:"):
        raise _err(f"unknown device {device!r}", "use auto, cpu, cuda or mps")
    try:
        seed = int(data.get("seed", 0))
    except (TypeError, ValueError) as exc:
        raise _err(f"seed {data.get('seed')!r} is not an integer", "use e.g. seed: 0") from exc
    # every step's every key, checked before anything runs (not when the step's turn comes)
    from medtorch.pipeline.schema import check_steps

    check_steps(steps, inputs, base_dir)
    seg = steps.get("segment")
    if seg is not None:  # file keys are relative to the YAML's folder, as the inputs are
        for key in ("seeds", "model"):
            if key in seg and not Path(os.path.expanduser(str(seg[key]))).is_absolute():
                seg[key] = str((base_dir / os.path.expanduser(str(seg[key]))).resolve())
    if output_format == "dicom" and not patient_id and not any(p.is_dir() for p in inputs.values()):
        raise _err("output_format dicom needs a patient: no input is a DICOM folder and no patient_id is given",
                   "give the fixed input as a DICOM folder (the series keep its patient and study), or add "
                   "patient_id: ID for a new patient and study")
    if output_format == "dicom" and not modality and not any(p.is_dir() for p in inputs.values()):
        raise _err("output_format dicom without a DICOM input needs the modality of the series it writes",
                   "add modality: CT or modality: MR")
    return StudyConfig(study, out_dir.resolve(), inputs, uids, steps, device, seed, source, data,
                       output_format=output_format, patient_id=None if patient_id is None else str(patient_id),
                       modality=modality)


def load_config(path: str | os.PathLike[str], overrides: dict[str, Any] | None = None) -> StudyConfig:
    """Read and validate a ``study.yaml``."""
    import yaml

    p = Path(path)
    if not p.exists():
        raise _err(f"{p} not found", "check the path of the YAML file")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise _err(f"{p.name} is not valid YAML ({exc})", "fix the YAML syntax (indentation, colons)") from exc
    return parse_config(data or {}, p.resolve().parent, p.resolve(), overrides)
