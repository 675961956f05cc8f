"""One module per ``medtorch`` sub-command, discovered by :mod:`medtorch.cli`.

A command module defines ``COMMANDS``: a list of :class:`Command` objects, each with a
``name``, a ``help`` line, ``examples`` (shown in ``--help``), an ``add_arguments(parser)``
function and a ``run(args, cancel) -> int`` function. Heavy imports go inside ``run``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Callable

from medtorch.progress import CancelToken, ConsoleProgressBar


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    examples: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, CancelToken], int]


def triple_arg(cast: Callable[[str], Any], noun: str, one_for_all: bool = False) -> Callable[[str], tuple[Any, Any, Any]]:
    """argparse type: three comma-separated values (``noun`` names them in errors), each through
    ``cast``; with ``one_for_all`` a single value is used for every axis."""

    def parse(text: str) -> tuple[Any, Any, Any]:
        parts = [p for p in text.replace(" ", "").split(",") if p]
        if one_for_all and len(parts) == 1:
            parts = parts * 3
        if len(parts) != 3:
            count = "one or three" if one_for_all else "three"
            raise argparse.ArgumentTypeError(f"expected {count} comma-separated {noun}, got {text!r}")
        try:
            return (cast(parts[0]), cast(parts[1]), cast(parts[2]))
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"not {noun}: {text!r}") from exc

    return parse


#: argparse type: three comma-separated numbers.
vec3 = triple_arg(float, "numbers")


def ct_window_arg(text: str) -> str | tuple[float, float]:
    """argparse type: a CT window preset name or ``WIDTH,LEVEL`` in HU."""
    if "," in text:
        parts = text.split(",")
        try:
            return (float(parts[0]), float(parts[1]))
        except (ValueError, IndexError) as exc:
            raise argparse.ArgumentTypeError(f"expected WIDTH,LEVEL in HU, got {text!r}") from exc
    return text


def progress_bar(args: argparse.Namespace) -> ConsoleProgressBar:
    """The progress bar a command shows (silent with ``--quiet``)."""
    return ConsoleProgressBar(quiet=getattr(args, "quiet", False))


def device_of(args: argparse.Namespace) -> str:
    """The torch device chosen by ``--device`` / ``$MEDTORCH_DEVICE`` / auto."""
    from medtorch.device import select_device

    return str(select_device(getattr(args, "device", None)))


def add_format_argument(p: argparse.ArgumentParser, outputs: str = "--out") -> None:
    """``--format file|dicom`` for a command's volume output(s) (the choices of
    :data:`medtorch.ops.export.OutputFormat`, which the pipeline's ``output_format`` shares)."""
    from typing import get_args

    from medtorch.ops.export import OutputFormat

    p.add_argument("--format", dest="output_format", default="file", choices=get_args(OutputFormat),
                   help=f"file (the default): {outputs} is a volume file (.nrrd, .nii.gz, .mha); dicom: {outputs} is a "
                        "new or empty folder that receives a DICOM series (one file per slice), which keeps the "
                        "patient and study of the input when the input was a DICOM series (without one, give "
                        "--patient-id); every series is read back and checked in patient space before it is kept")
    p.add_argument("--patient-id", default=None,
                   help="with --format dicom and an input that is not DICOM: the patient ID of the new patient and "
                        "study (nothing is invented: there is no default)")


def write_output(args: argparse.Namespace, volume: Any, path: str, reference: str | None,
                 reference_series_uid: str | None, derivation: str, description: str) -> str:
    """Write ``volume`` to ``path`` as ``--format`` says: a volume file, or a DICOM series in the folder
    ``path`` (referencing ``reference`` when that is a DICOM series); returns what was written, in words."""
    from pathlib import Path

    from medtorch.io import write_volume

    if getattr(args, "output_format", "file") != "dicom":
        write_volume(volume, path)
        return str(path)
    from medtorch import ops
    from medtorch.ops.export import ExportDicomRequest

    ref = reference if reference and _is_dicom(Path(reference)) else None
    request = ExportDicomRequest(export_as="series", out=str(path), reference=ref,
                                 reference_series_uid=reference_series_uid if ref else None,
                                 patient_id=None if ref else getattr(args, "patient_id", None),
                                 derivation=derivation, description=description)
    values = ops.run(request, {"input": volume}).values
    checks = values["checks"]
    return (f"{path} (DICOM {values['modality']} series, {len(values['paths'])} files; geometry check passed: corners "
            f"{checks['corner_shift_voxels']:.2g} voxels, values within {checks['value_difference']:.3g})")


def _is_dicom(p: Any) -> bool:
    """A DICOM folder, or a file that starts like DICOM."""
    if p.is_dir():
        return True
    try:
        with open(p, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM"
