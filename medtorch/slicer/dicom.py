"""DICOM export from Slicer: the DICOM series a node came from, and nodes written as DICOM
through the ``export_dicom`` operation (:mod:`medtorch.ops.export`).

* :func:`source_series` -- a volume node that Slicer's DICOM module loaded carries the
  attribute ``DICOM.instanceUIDs`` (its images' SOPInstanceUIDs); the DICOM database
  (``slicer.dicomDatabase``) knows each image's file. The files' folder and series UID are
  the reference an export needs.
* :func:`export_segmentation` -- a segmentation node as DICOM SEG or RTSTRUCT on the grid of
  the volume it was made on, referencing that volume's DICOM series;
* :func:`export_volume` -- a volume node as a new derived DICOM series (the reference's
  patient and study, or a new patient with a patient ID).

Every file is read back and checked in patient space by the operation; one more than half a
voxel off is refused (:class:`~medtorch.io.dicom_write.DicomGeometryError`, which names the
problem and what to do) and nothing is left behind. Existing files are never replaced: each
export gets a new name in the output folder. Slicer is imported lazily, so this module
imports outside Slicer.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from medtorch.errors import MedTorchInputError

__all__ = ["DicomSource", "ExportResult", "export_segmentation", "export_volume", "output_path", "source_series"]

#: What Slicer's DICOM scalar volume plugin stores on a loaded volume: its images' SOPInstanceUIDs.
INSTANCE_UIDS_ATTRIBUTE = "DICOM.instanceUIDs"
_SUFFIX = {"seg": "_SEG.dcm", "rtstruct": "_RTSTRUCT.dcm", "series": "_DICOM"}
_WHAT = {"seg": "DICOM SEG", "rtstruct": "DICOM RTSTRUCT", "series": "DICOM series"}


@dataclass(frozen=True)
class DicomSource:
    """A DICOM series on disk: the folder of its files and its SeriesInstanceUID."""

    folder: str
    series_uid: str | None
    files: tuple[str, ...] = ()
    how: str = ""  # in words: where it was found


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote (``path``: the file, or the series' folder), the operation's values
    (``values``: UIDs, per-segment checks) and a sentence for the user (``message``)."""

    path: str
    values: dict[str, Any]
    message: str


def _database(database: Any) -> Any:
    if database is not None:
        return database
    try:
        import slicer
    except ImportError:  # pragma: no cover - outside Slicer
        return None
    return getattr(slicer, "dicomDatabase", None)


def _series_uid_of(path: str) -> str | None:
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
    except Exception:  # noqa: BLE001 - not readable: the export names the folder, the reader says why
        return None
    uid = getattr(ds, "SeriesInstanceUID", None)
    return str(uid) if uid else None


def source_series(node: Any, database: Any = None) -> DicomSource | None:
    """The DICOM series ``node`` was loaded from, or ``None`` when it was not loaded from the
    DICOM database (no ``DICOM.instanceUIDs`` attribute).

    Raises:
        MedTorchInputError: the node came from DICOM but its files cannot be found (the
            database is not open, or the files were moved or deleted).
    """
    if node is None:
        return None
    uids = (node.GetAttribute(INSTANCE_UIDS_ATTRIBUTE) or "").split()
    if not uids:
        return None
    db = _database(database)
    name = node.GetName()
    if db is None:
        raise MedTorchInputError(f"the volume {name} was loaded from DICOM, but the DICOM database is not open",
                                 "open the DICOM module once (its database), or choose the DICOM folder of the "
                                 "volume's series for the export")
    files = [str(db.fileForInstance(uid) or "") for uid in uids]
    missing = [u for u, f in zip(uids, files) if not f or not os.path.isfile(f)]
    if missing:
        raise MedTorchInputError(
            f"{len(missing)} of the {len(uids)} DICOM images the volume {name} was loaded from are not in the DICOM "
            "database's files any more (moved or deleted)",
            "import the series into the DICOM database again, or choose the DICOM folder of the volume's series "
            "for the export")
    folder = os.path.commonpath([os.path.dirname(os.path.abspath(f)) for f in files])
    return DicomSource(folder, _series_uid_of(files[0]), tuple(files), f"the DICOM series {name} was loaded from")


def _reference(node: Any, reference_folder: str | None, database: Any) -> DicomSource | None:
    """The node's own DICOM series, else the folder the user chose, else ``None`` (a node from
    DICOM whose files cannot be found falls back to the chosen folder, or is refused saying so)."""
    try:
        found = source_series(node, database)
    except MedTorchInputError:
        if not reference_folder:
            raise
        found = None
    if found is not None:
        return found
    if reference_folder:
        p = Path(reference_folder)
        if not p.exists():
            raise MedTorchInputError(f"the DICOM folder {reference_folder} does not exist",
                                     "choose the folder that holds the DICOM files of the source series")
        return DicomSource(str(p), None, (), f"the DICOM folder {reference_folder}")
    return None


def safe_name(name: str) -> str:
    """``name`` as a file name on every system (no separators, reserved or control characters)."""
    text = re.sub(r'[\\/:*?"<>|\x00-\x1f]+', "_", str(name)).strip(" .")
    return text or "export"


def output_path(folder: str, name: str, export_as: Literal["seg", "rtstruct", "series"]) -> Path:
    """A new file (SEG, RTSTRUCT) or folder (series) for ``name`` in ``folder``: never one that
    exists (``name_SEG.dcm``, then ``name_SEG (2).dcm``, ...)."""
    if not folder:
        raise MedTorchInputError("no output folder is chosen for the DICOM export",
                                 "choose the folder the DICOM files go to (Output folder)")
    out = Path(folder)
    if out.exists() and not out.is_dir():
        raise MedTorchInputError(f"the DICOM output folder {folder} is a file", "choose a folder")
    out.mkdir(parents=True, exist_ok=True)
    suffix = _SUFFIX[export_as]
    stem, ext = (suffix[: -len(".dcm")], ".dcm") if suffix.endswith(".dcm") else (suffix, "")
    base = safe_name(name)
    n = 1
    while True:
        candidate = out / f"{base}{stem}{f' ({n})' if n > 1 else ''}{ext}"
        if not candidate.exists():
            return candidate
        n += 1


def _local_volume(node: Any, what: str) -> Any:
    from medtorch.slicer import mrml

    if node.GetParentTransformNode() is not None:
        raise MedTorchInputError(f"the {what} {node.GetName()} is under a transform, so its DICOM geometry would "
                                 "not be where it is shown",
                                 "harden the transform on it first (Transforms module), or export it without "
                                 "the transform")
    return mrml.volume_from_node(node)


def export_segmentation(segmentation_node: Any, volume_node: Any, folder: str,
                        export_as: Literal["seg", "rtstruct"] = "seg", reference_folder: str | None = None,
                        database: Any = None, description: str | None = None) -> ExportResult:
    """Write ``segmentation_node``'s segments, on ``volume_node``'s grid, as a DICOM SEG or an
    RTSTRUCT in ``folder``, referencing the DICOM series of ``volume_node`` (the one it was loaded
    from; else the series in ``reference_folder``). Segment names are kept (standard names get
    their standard terminology codes); empty segments are left out.

    Raises:
        MedTorchInputError: no segmentation or volume, no DICOM reference, a grid that is not
            the reference's, an empty segmentation.
        DicomGeometryError: the written file failed the geometry check (nothing was kept).
    """
    from medtorch import ops
    from medtorch.ops.export import ExportDicomRequest
    from medtorch.slicer import mrml

    if segmentation_node is None:
        raise MedTorchInputError("no segmentation is chosen for the DICOM export", "choose the segmentation to export")
    if volume_node is None:
        raise MedTorchInputError("no volume is chosen for the DICOM export",
                                 "choose the volume the segmentation was made on (the input volume)")
    if export_as not in ("seg", "rtstruct"):
        raise MedTorchInputError(f"a segmentation cannot be exported as {export_as!r}", "choose DICOM SEG or RTSTRUCT")
    _local_volume(volume_node, "input volume")  # a transform on it is refused
    ref = _reference(volume_node, reference_folder, database)
    if ref is None:
        raise MedTorchInputError(
            f"a {_WHAT[export_as]} must reference the DICOM series the segmentation was made on, and the volume "
            f"{volume_node.GetName()} was not loaded from DICOM",
            "choose the DICOM folder of that series (Source DICOM folder), or load the series through the DICOM "
            "module and segment that volume")
    seg_ids = list(segmentation_node.GetSegmentation().GetSegmentIDs())
    if not seg_ids:
        raise MedTorchInputError(f"the segmentation {segmentation_node.GetName()} has no segment",
                                 "choose a segmentation that has segments")
    label = mrml.label_from_segmentation(segmentation_node, volume_node, seg_ids)
    # the label map's value of a segment is its 1-based place (medtorch.slicer.mrml.label_from_segmentation)
    names = tuple(f"{i}={segmentation_node.GetSegmentation().GetSegment(sid).GetName().replace(',', ' ')}"
                  for i, sid in enumerate(seg_ids, start=1))
    target = output_path(folder, segmentation_node.GetName(), export_as)
    request = ExportDicomRequest(export_as=export_as, out=str(target), reference=ref.folder,
                                 reference_series_uid=ref.series_uid, names=names, algorithm_type="SEMIAUTOMATIC",
                                 description=description)
    values = ops.run(request, {"input": label}).values
    checks = values["checks"]
    worst = max((float(c["shift_voxels"]) for c in checks), default=0.0)
    noun = "segment" if export_as == "seg" else "ROI"
    message = (f"Wrote {target.name} ({_WHAT[export_as]}, {len(checks)} {noun}{'s' if len(checks) != 1 else ''}, "
               f"referencing {ref.how}); geometry check passed: centroids within {worst:.2f} voxel")
    return ExportResult(str(target), values, message)


def export_volume(volume_node: Any, folder: str, reference_node: Any = None, reference_folder: str | None = None,
                  patient_id: str | None = None, modality: Literal["auto", "CT", "MR"] = "auto", database: Any = None,
                  description: str | None = None, derivation: str = "derived by MedTorch") -> ExportResult:
    """Write ``volume_node`` as a new DICOM series (a sub-folder of ``folder``), derived from the
    DICOM series of ``reference_node`` (the volume it was computed from, when that was loaded from
    DICOM; else the series in ``reference_folder``): the new series joins its patient and study.
    Without a reference a new patient and study are made, and ``patient_id`` is required.
    ``modality``: ``CT`` or ``MR`` (the images' class); ``auto``: the reference's (required without one).

    Raises:
        MedTorchInputError: no volume, no reference and no patient ID, a colour volume, a
            volume under a transform.
        DicomGeometryError: the written series failed the geometry check (nothing was kept).
    """
    from medtorch import ops
    from medtorch.ops.export import ExportDicomRequest

    if volume_node is None:
        raise MedTorchInputError("no volume is chosen for the DICOM export", "choose the volume to export (run first)")
    volume = _local_volume(volume_node, "volume")
    ref = _reference(reference_node if reference_node is not None else volume_node, reference_folder, database)
    if ref is None and reference_node is not None and reference_node is not volume_node:
        ref = source_series(volume_node, database)
    patient = (patient_id or "").strip()
    if ref is None and not patient:
        raise MedTorchInputError(
            f"the volume {volume_node.GetName()} has no DICOM source: it was not computed from a volume loaded from "
            "DICOM, no source DICOM folder is chosen and no patient ID is given",
            "enter a patient ID (a new patient and study are made), or choose the DICOM folder of the series it "
            "was derived from")
    if ref is None and modality not in ("CT", "MR"):
        raise MedTorchInputError(f"the volume {volume_node.GetName()} has no DICOM source to take the modality from",
                                 "choose the modality of the new series (CT or MR)")
    target = output_path(folder, volume_node.GetName(), "series")
    request = ExportDicomRequest(export_as="series", out=str(target), reference=ref.folder if ref else None,
                                 reference_series_uid=ref.series_uid if ref else None,
                                 patient_id=None if ref else patient, modality=modality, description=description,
                                 derivation=derivation)
    values = ops.run(request, {"input": volume}).values
    c = values["checks"]
    where = f"derived from {ref.how}" if ref else f"new patient {patient}"
    message = (f"Wrote {target.name} (DICOM {values['modality']} series, {len(values['paths'])} files, {where}); "
               f"geometry check passed: corners within {float(c['corner_shift_voxels']):.2g} voxel. "
               f"{values['storage']}")
    return ExportResult(str(target), values, message)
