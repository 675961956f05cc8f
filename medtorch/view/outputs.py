"""What a MedTorch output folder holds, for the viewer: its cases and each case's files and records.

Three kinds of folder are read (nothing is computed, nothing is written):

* a ``medtorch batch`` output: ``summary.csv`` (one row per case) and one folder per case;
* a ``medtorch pipeline`` output: one study's folder with its ``run.json``;
* a ``medtorch demo`` output: one folder with ``summary.json`` and the demo's volumes.

A case lists its **volumes** (scalar images: the inputs named in ``run.json``'s configuration,
the registered, fused, denoised and super-resolved outputs), **segmentations** (integer label
maps whose names say so: segmentation, label, mask, seeds, tumor truth), **transforms**
(``.tfm``/``.h5``), its **metrics** (``run.json``'s ``values``, or the demo's numbers) and its
**verdicts** (each step's status and the checks that did not pass).
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medtorch.errors import MedTorchInputError
from medtorch.io import VOLUME_EXTENSIONS

SUMMARY_CSV = "summary.csv"
RUN_JSON = "run.json"
DEMO_SUMMARY = "summary.json"
TRANSFORM_EXTENSIONS = (".tfm", ".h5", ".hdf5", ".mat", ".txt")
#: words in a file or output name that, with an integer pixel type, mark a label map
_LABEL_WORDS = re.compile(r"segmentation|label|mask|seed|tumor_truth|lesion", re.IGNORECASE)


@dataclass
class FileEntry:
    """One file of a case: ``key`` is its name in the records (e.g. ``moving_registered``)."""

    key: str
    path: Path
    #: "volume", "segmentation", "rgb" (a colour volume, listed but not shown) or "transform"
    kind: str
    #: size (i, j, k) and spacing (mm) read from the header; empty for transforms
    size: tuple[int, ...] = ()
    spacing: tuple[float, ...] = ()
    description: str = ""


@dataclass
class Case:
    """One case of an output folder."""

    case_id: str
    folder: Path
    status: str = ""
    verdict: str = ""
    error: str = ""
    files: list[FileEntry] = field(default_factory=list)
    #: step -> name -> value (numbers and strings)
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: step -> the verdict's dict (status, reasons, checks) as ``run.json`` holds it
    verdicts: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: the case's row of summary.csv (batch outputs)
    summary: dict[str, str] = field(default_factory=dict)
    #: the key of the volume the segmentation step worked on (shown under the segments first)
    segmented: str = ""

    def of_kind(self, kind: str) -> list[FileEntry]:
        return [f for f in self.files if f.kind == kind]

    @property
    def volumes(self) -> list[FileEntry]:
        return self.of_kind("volume")

    @property
    def segmentations(self) -> list[FileEntry]:
        return self.of_kind("segmentation")

    @property
    def transforms(self) -> list[FileEntry]:
        return self.of_kind("transform")


@dataclass
class Output:
    """An output folder: what wrote it (``batch``, ``pipeline`` or ``demo``) and its cases."""

    root: Path
    kind: str
    cases: list[Case]
    summary_columns: list[str] = field(default_factory=list)


def _header(path: Path) -> tuple[str, tuple[int, ...], tuple[float, ...]] | None:
    """(pixel kind, size, spacing) from the file's header, or None when it is not an image."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    components = reader.GetNumberOfComponents()
    pixel = reader.GetPixelID()
    integer = pixel in (sitk.sitkUInt8, sitk.sitkInt8, sitk.sitkUInt16, sitk.sitkInt16, sitk.sitkUInt32,
                        sitk.sitkInt32, sitk.sitkUInt64, sitk.sitkInt64)
    kind = "rgb" if components > 1 else ("integer" if integer else "scalar")
    return kind, tuple(int(v) for v in reader.GetSize()), tuple(float(v) for v in reader.GetSpacing())


def classify(key: str, path: Path, description: str = "") -> FileEntry | None:
    """The entry for one output file, or None for a file the viewer does not show (figures, JSON)."""
    name = path.name.lower()
    if any(name.endswith(ext) for ext in (".tfm", ".h5", ".hdf5", ".mat")):
        return FileEntry(key, path, "transform", description=description)
    if not any(name.endswith(ext) for ext in VOLUME_EXTENSIONS) or not path.is_file():
        return None
    header = _header(path)
    if header is None:
        return None
    pixel, size, spacing = header
    if pixel == "rgb":
        kind = "rgb"
    elif pixel == "integer" and _LABEL_WORDS.search(f"{key} {name}"):
        kind = "segmentation"
    else:
        kind = "volume"
    return FileEntry(key, path, kind, size, spacing, description)


def _key_of(path: Path) -> str:
    name = path.name
    for ext in sorted(VOLUME_EXTENSIONS + TRANSFORM_EXTENSIONS, key=len, reverse=True):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def _local(path_text: str, folder: Path) -> Path:
    """A path recorded in a run record, found again when the output folder was moved (copied from
    a cluster): the recorded path if it exists, else the same path below the case's folder."""
    path = Path(path_text)
    if path.exists():
        return path
    parts = path.parts
    for i in range(len(parts)):
        candidate = folder.joinpath(*parts[i:])
        if candidate.exists():
            return candidate
    return path


def read_pipeline_case(folder: Path, case_id: str | None = None) -> Case:
    """A study's folder (``run.json``, the step folders); a folder without ``run.json`` gives a
    case whose status says so (a case still running, or one that failed before starting)."""
    folder = Path(folder)
    record: dict[str, Any] = {}
    run_json = folder / RUN_JSON
    if run_json.is_file():
        try:
            record = json.loads(run_json.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            record = {"status": "unreadable run.json"}
    case = Case(case_id or str(record.get("study") or folder.name), folder,
                status=str(record.get("status") or ("no run.json" if not run_json.exists() else "")),
                verdict=str(record.get("verdict") or ""))
    error = record.get("error")
    if isinstance(error, dict):
        case.error = f"{error.get('type', '')}: {error.get('message', '')}".strip(": ")
    seen: set[Path] = set()
    config = record.get("config") or {}
    segment_step = (config.get("steps") or {}).get("segment")
    if isinstance(segment_step, dict) and segment_step.get("enabled", True) is not False:
        case.segmented = str(segment_step.get("input") or "fixed")
    inputs = config.get("inputs") or {}
    for key, path_text in inputs.items():
        path = _local(str(path_text), folder)
        entry = classify(str(key), path, f"input '{key}'")
        if entry is not None:
            case.files.append(entry)
            seen.add(path.resolve())
    for key, info in (record.get("outputs") or {}).items():
        path_text = info.get("path") if isinstance(info, dict) else info
        if not path_text:
            continue
        path = _local(str(path_text), folder)
        entry = classify(str(key), path, f"output of {str(key).split('_')[0]}")
        if entry is not None and path.resolve() not in seen:
            case.files.append(entry)
            seen.add(path.resolve())
    # files a run wrote but did not record (a failed run records the outputs it wrote too)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.resolve() in seen or path.name.endswith(".part"):
            continue
        entry = classify(_key_of(path), path, "in the case's folder")
        if entry is not None:
            case.files.append(entry)
            seen.add(path.resolve())
    for step, values in (record.get("values") or {}).items():
        if isinstance(values, dict):
            case.metrics[str(step)] = dict(values)
    case.metrics.update({"timings (s)": dict(record.get("timings_s") or {})} if record.get("timings_s") else {})
    for step, verdict in (record.get("verdicts") or {}).items():
        if isinstance(verdict, dict):
            case.verdicts[str(step)] = verdict
    return case


def _flat_numbers(section: Any, prefix: str = "", out: dict[str, Any] | None = None) -> dict[str, Any]:
    out = {} if out is None else out
    if isinstance(section, dict):
        for key, value in section.items():
            _flat_numbers(value, f"{prefix}.{key}" if prefix else str(key), out)
    elif isinstance(section, (int, float)) and not isinstance(section, bool):
        out[prefix] = section
    return out


def read_demo_case(folder: Path, summary: dict[str, Any]) -> Case:
    """``medtorch demo``'s folder as one case: its volumes, transforms and numbers."""
    case = Case("demo", folder, status="done", segmented="tumor_phantom")  # the demo segments its tumor phantom
    outputs = summary.get("outputs") or {}
    for key, path_text in outputs.items():
        path = _local(str(path_text), folder)
        entry = classify(_key_of(Path(key)), path)
        if entry is not None:
            case.files.append(entry)
    for section in ("registration", "fusion", "enhance", "segment"):
        numbers = _flat_numbers(summary.get(section))
        if numbers:
            case.metrics[section] = numbers
    return case


def read_output(root: str | Path) -> Output:
    """The cases of a batch, pipeline or demo output folder.

    Raises :class:`MedTorchInputError` for a folder that is none of these."""
    root = Path(root)
    if not root.is_dir():
        raise MedTorchInputError(f"{root} is not a folder",
                                 "give the output folder of medtorch batch, pipeline or demo (its --out)")
    summary_csv = root / SUMMARY_CSV
    if summary_csv.is_file():
        with open(summary_csv, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            columns = list(reader.fieldnames or [])
        if "case_id" in columns:
            cases = []
            for row in rows:
                case_id = row.get("case_id") or ""
                folder = root / case_id
                if not folder.is_dir() and row.get("output_dir"):
                    folder = Path(row["output_dir"])
                case = read_pipeline_case(folder, case_id)
                case.summary = {k: v for k, v in row.items() if k is not None and v not in (None, "")}
                case.status = row.get("status") or case.status
                case.verdict = row.get("verdict") or case.verdict
                case.error = row.get("error") or case.error
                cases.append(case)
            return Output(root, "batch", cases, columns)
    if (root / RUN_JSON).is_file():
        return Output(root, "pipeline", [read_pipeline_case(root)])
    demo = root / DEMO_SUMMARY
    if demo.is_file():
        try:
            summary = json.loads(demo.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise MedTorchInputError(f"{demo} could not be read ({exc})", "run medtorch demo again") from exc
        if isinstance(summary, dict) and "outputs" in summary:
            return Output(root, "demo", [read_demo_case(root, summary)])
    raise MedTorchInputError(
        f"{root} holds no MedTorch output (no summary.csv with a case_id column, run.json or demo summary.json)",
        "give the folder that medtorch batch, pipeline or demo wrote (their --out)")
