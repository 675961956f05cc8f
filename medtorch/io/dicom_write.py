"""Writing a derived volume (registered, fused, denoised, super-resolved) as a new DICOM series,
with a geometry check after every write.

:func:`write_dicom_series` writes one file per slice as CT Image Storage or MR Image Storage
(the classes every PACS takes with a 3D geometry):

* **geometry** from the volume's LPS grid: ImagePositionPatient of each slice, the row and
  column directions as ImageOrientationPatient, PixelSpacing (row spacing, column spacing),
  SliceThickness and SpacingBetweenSlices (the slice step). The grid must be rectangular
  (DICOM image planes cannot describe a sheared grid).
* **a reference series** (the DICOM series the volume was derived from, e.g. the input of
  ``denoise`` or the fixed image of ``register``), when there is one: its Patient and Study
  modules and its FrameOfReferenceUID are kept (the volume must lie in that series' patient
  space), each slice lists the source image nearest to it (SourceImageSequence) and the
  series is named in ReferencedSeriesSequence; DerivationDescription says how the volume
  was made. Only the reference's headers are read: a gantry-tilted or multi-frame series
  can be a reference.
* **no reference**: a new patient and study; the patient ID must be given (nothing is
  invented: PatientName is left empty unless given), and the series gets a new
  FrameOfReferenceUID.
* **new UIDs**: a new SeriesInstanceUID and one new SOPInstanceUID per slice.
* **values**: integer volumes that fit 16 bits are stored as they are. Other values (float
  data) are stored as 16-bit integers with one RescaleSlope and RescaleIntercept for the
  whole series (``value = stored * slope + intercept``, the range of the volume spread over
  the 65536 steps); each value then lies within half a step of the computed one, and the
  series' ImageComments says so with the numbers.

**The geometry check.** The files are written to a temporary folder beside the target and
read back twice: with pydicom (positions, orientation, spacing and rescaled pixels, sorted
along the slice normal here) and with SimpleITK's DICOM series reader (GDCM). For each
reading the 8 corner voxels of the volume are compared in patient space with the intended
ones, and every voxel's value with the intended value at the same place. A corner more than
half a voxel away (along any grid axis), or a value differing by more than the stated
storage precision, refuses the output: :class:`DicomGeometryError` is raised and the
temporary folder removed. Only a series that passes is moved to the target folder.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from medtorch.errors import MedTorchError, MedTorchInputError
from medtorch.volume import Geometry, Volume

__all__ = [
    "DicomGeometryError",
    "MAX_SHIFT_VOXELS",
    "MODALITIES",
    "SeriesWriteResult",
    "ReferenceSeries",
    "read_reference",
    "write_dicom_series",
    "check_dicom_series",
    "prepare_output_folder",
]

#: A corner more than this many voxels (along a grid axis) from where it was meant to be refuses the output.
MAX_SHIFT_VOXELS = 0.5
#: The modalities (and so the SOP classes) a derived series is written as.
MODALITIES = ("CT", "MR")
_SOP_CLASS = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4"}
#: Patient and study attributes copied from the reference series (when present there).
_PATIENT_STUDY = (
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "PatientAge",
    "PatientWeight", "PatientSize", "OtherPatientIDsSequence", "PatientIdentityRemoved", "DeidentificationMethod",
    "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName",
    "StudyDescription", "PositionReferenceIndicator", "SpecificCharacterSet",
)


class DicomGeometryError(MedTorchError):
    """A DICOM file just written does not hold what was meant to be written; it was removed."""

    def __init__(self, problem: str, fix: str) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}. What to do: {fix}.")


@dataclass(frozen=True)
class ReferenceSeries:
    """The headers of the DICOM series a volume was derived from."""

    series_uid: str
    first: Any  # pydicom dataset (no pixels) of the first image
    modality: str
    # each source image (or frame): (SOPClassUID, SOPInstanceUID, frame number or None, position LPS, normal)
    images: tuple[tuple[str, str, int | None, np.ndarray, np.ndarray], ...]


@dataclass(frozen=True)
class SeriesWriteResult:
    """What :func:`write_dicom_series` wrote and what its geometry check found."""

    folder: Path
    files: tuple[Path, ...]
    series_instance_uid: str
    study_instance_uid: str
    reference_series_uid: str | None
    modality: str
    slope: float
    intercept: float
    precision: float  # largest difference between a stored and a computed value (0: exact)
    storage: str  # how the values were stored, in words (also the series' ImageComments)
    corner_shift_voxels: float  # worst of the pydicom and SimpleITK readings
    value_difference: float


# -- the reference series -----------------------------------------------------------------------


def read_reference(path: str | os.PathLike[str], series_uid: str | None = None) -> ReferenceSeries:
    """The headers of a DICOM series (folder or file) for its patient, study and image references."""
    from medtorch.io import dicom as d

    p = Path(path)
    if not p.exists():
        raise MedTorchInputError(f"the reference series {p} does not exist",
                                 "give the DICOM folder (or file) of the series the volume was derived from")
    notes: list[str] = []
    headers = d._series_files(p, d._scan_folder(p), series_uid, notes) if p.is_dir() else d._headers_for_file(p, series_uid)
    first = headers[0].ds
    uid = d._text(first, "SeriesInstanceUID")
    if any(d._sop_class_name(h.ds) == "Segmentation Storage" for h in headers):
        raise MedTorchInputError(f"the reference series {uid} in {p} is a DICOM SEG",
                                 "give the image series (CT, MR, PET ...) the volume was derived from")
    images = []
    for h in sorted(headers, key=lambda h: str(h.path)):
        for f in d._frames_of(h):
            if f.position is None or f.orientation is None:
                continue
            normal = np.cross(f.orientation[:3], f.orientation[3:])
            images.append((str(h.ds.SOPClassUID), str(h.ds.SOPInstanceUID),
                           f.index + 1 if f.num_file_frames > 1 else None, np.asarray(f.position, float), normal))
    return ReferenceSeries(uid, first, d._text(first, "Modality").upper(), tuple(images))


# -- values ------------------------------------------------------------------------------------


def _storage(array: np.ndarray) -> tuple[np.ndarray, float, float, float, str]:
    """Stored 16-bit pixels, slope, intercept, precision (largest error) and the words for it."""
    a = np.asarray(array)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    integral = np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.bool_) or bool(np.all(a == np.round(a)))
    if integral and lo >= -32768 and hi <= 32767:
        return a.astype(np.int16), 1.0, 0.0, 0.0, f"{a.dtype} values stored exactly as 16-bit integers"
    if integral and lo >= 0 and hi <= 65535:
        return a.astype(np.uint16), 1.0, 0.0, 0.0, f"{a.dtype} values stored exactly as unsigned 16-bit integers"
    slope = (hi - lo) / 65535.0 if hi > lo else 1.0
    # DICOM DS holds 16 characters: round slope and intercept as written, then quantize with those
    slope = float(f"{slope:.10g}")
    intercept = float(f"{lo + 32768.0 * slope:.10g}")
    stored = np.clip(np.round((a.astype(np.float64) - intercept) / slope), -32768, 32767).astype(np.int16)
    precision = float(np.abs(stored.astype(np.float64) * slope + intercept - a).max()) if a.size else 0.0
    words = (f"{a.dtype} values stored as 16-bit integers, value = stored x RescaleSlope {slope:.6g} + "
             f"RescaleIntercept {intercept:.6g}; each value within {max(precision, slope / 2):.3g} "
             f"(half a step) of the computed one, range {lo:.6g} to {hi:.6g}")
    return stored, slope, intercept, max(precision, slope / 2), words


# -- writing -----------------------------------------------------------------------------------


def _slices_for_writer(stored: np.ndarray) -> np.ndarray:
    """The stored slices [k, row, column]: for the volume's ``array[z, y, x]`` rows are y and columns
    x. (Tests replace this function with a mirrored one to prove that the geometry check catches it.)"""
    return stored


_slices: Callable[[np.ndarray], np.ndarray] = _slices_for_writer


def _ds_text(value: float) -> str:
    return f"{value:.10g}"


def _nearest_sources(ref: ReferenceSeries, centre: np.ndarray) -> list[tuple[str, str, int | None]]:
    """The source image(s) whose plane is nearest to ``centre`` (a derived slice's centre)."""
    if not ref.images:
        return []
    dist = np.array([abs(float((centre - pos) @ n)) for (_, _, _, pos, n) in ref.images])
    best = float(dist.min())
    return [(c, s, f) for (c, s, f, _, _), dd in zip(ref.images, dist) if dd <= best + 1e-3][:4]


def prepare_output_folder(folder: str | os.PathLike[str], protected: Sequence[str | os.PathLike[str]] = ()) -> Path:
    """Check that ``folder`` can receive a new series: absent or empty, and not one of ``protected``."""
    out = Path(folder)
    for p in protected:
        with contextlib.suppress(OSError):
            if out.resolve() == Path(p).resolve() or Path(p).resolve() in out.resolve().parents:
                raise MedTorchInputError(f"the DICOM output folder {out} would be inside the input {p}",
                                         "choose another output folder")
    if out.exists() and not out.is_dir():
        raise MedTorchInputError(f"the DICOM output {out} is a file", "give a folder for the DICOM series")
    if out.is_dir() and any(out.iterdir()):
        raise MedTorchInputError(f"the DICOM output folder {out} is not empty",
                                 "give a new or empty folder: a DICOM series is written as one file per slice")
    return out


def write_dicom_series(
    volume: Volume,
    out: str | os.PathLike[str],
    *,
    reference: str | os.PathLike[str] | ReferenceSeries | None = None,
    reference_series_uid: str | None = None,
    patient_id: str | None = None,
    patient_name: str | None = None,
    modality: str | None = None,
    series_description: str = "MedTorch derived volume",
    derivation: str = "derived by MedTorch",
    series_number: int = 301,
) -> SeriesWriteResult:
    """Write ``volume`` as a new DICOM series (one file per slice) into the folder ``out``.

    Args:
        volume: a scalar 3D volume (LPS grid).
        out: a new or empty folder; the files appear only after the geometry check passed.
        reference: the DICOM series the volume was derived from (folder, file or
            :func:`read_reference`'s result); its patient, study and frame of reference are kept.
        reference_series_uid: which series of a reference folder that holds several.
        patient_id, patient_name: for a volume without a reference: a new patient and study
            (``patient_id`` is then required). Ignored (refused) with a reference.
        modality: ``CT`` or ``MR`` (the SOP class); default: the reference's modality when it
            is one of those.
        series_description, derivation, series_number: of the new series (``derivation``
            becomes DerivationDescription).

    Raises:
        MedTorchInputError: a colour or 2D volume, non-finite values, a sheared grid, no
            reference and no patient ID, a modality that cannot be chosen, a folder that is not empty.
        DicomGeometryError: the written series failed the geometry check (nothing was kept).
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence as DicomSequence
    from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

    import medtorch

    if volume.kind == "vector" or volume.array.ndim != 3:
        raise MedTorchInputError("a colour (vector) or 2D volume cannot be written as a DICOM image series here",
                                 "write a grey-scale 3D volume (for a colour fusion: the fused luminance)")
    g = volume.geometry.validate("the volume to write as DICOM")
    array = np.asarray(volume.array)
    if not np.all(np.isfinite(array)):
        raise MedTorchInputError("the volume holds NaN or infinite values, which DICOM pixels cannot hold",
                                 "replace them first (e.g. write the volume to NRRD and fill them), or check the "
                                 "operation that made it")
    row, col, axis_k = g.direction[:, 0], g.direction[:, 1], g.direction[:, 2]
    normal = np.cross(row, col)
    if abs(abs(float(normal @ axis_k)) - 1.0) > 1e-4:
        raise MedTorchInputError("the volume's slice axis is not perpendicular to its slices (a sheared grid)",
                                 "resample it onto a rectangular grid first; DICOM image planes cannot describe it")
    ref: ReferenceSeries | None
    if reference is None:
        ref = None
        if not patient_id:
            raise MedTorchInputError(
                "a DICOM series needs a patient: no reference series and no patient ID were given",
                "give the DICOM series the volume was derived from as reference (--reference DICOMDIR), which "
                "keeps its patient and study, or a patient ID for a new patient and study (--patient-id ID)")
    else:
        ref = reference if isinstance(reference, ReferenceSeries) else read_reference(reference, reference_series_uid)
        if patient_id or patient_name:
            raise MedTorchInputError("a patient ID or name was given together with a reference series",
                                     "leave them out: the series keeps the reference's patient and study")
    mod = (modality or (ref.modality if ref is not None and ref.modality in MODALITIES else "")).upper()
    if mod not in MODALITIES:
        found = f"the reference series is {ref.modality or 'of unknown modality'}" if ref is not None else "there is no reference"
        raise MedTorchInputError(
            f"the modality of the new series cannot be chosen ({found})",
            "give --modality CT or --modality MR (derived series are written as CT or MR images, the classes "
            "PACS and viewers take with 3D geometry)")
    out_dir = prepare_output_folder(out)

    stored, slope, intercept, precision, words = _storage(array)
    slices = _slices(stored)
    now = datetime.datetime.now()
    date, time_ = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    series_uid = generate_uid()
    study_uid = str(ref.first.StudyInstanceUID) if ref is not None else generate_uid()
    frame_of_reference = (str(getattr(ref.first, "FrameOfReferenceUID", "")) if ref is not None else "") or generate_uid()
    base = Dataset()
    if ref is not None:
        for keyword in _PATIENT_STUDY:
            if keyword in ref.first:
                base.add(ref.first[keyword])
    else:
        base.PatientName = patient_name or ""
        base.PatientID = str(patient_id)
        base.PatientBirthDate = ""
        base.PatientSex = ""
        base.StudyInstanceUID = study_uid
        base.StudyDate, base.StudyTime = date, time_
        base.StudyID = ""
        base.AccessionNumber = ""
        base.ReferringPhysicianName = ""
        base.PositionReferenceIndicator = ""
    base.Modality = mod
    base.SeriesInstanceUID = series_uid
    base.SeriesNumber = int(series_number)
    base.SeriesDescription = series_description[:64]
    base.SeriesDate, base.SeriesTime = date, time_
    base.FrameOfReferenceUID = frame_of_reference
    base.Manufacturer = "MedTorch"
    base.ManufacturerModelName = "MedTorch"
    base.SoftwareVersions = f"MedTorch {medtorch.__version__}"
    base.ImageType = ["DERIVED", "SECONDARY"]
    base.DerivationDescription = derivation[:1024]
    base.ImageComments = words[:10240]
    base.ImageOrientationPatient = [_ds_text(v) for v in np.concatenate([row, col])]
    base.PixelSpacing = [_ds_text(g.spacing[1]), _ds_text(g.spacing[0])]  # row spacing (along y), column spacing
    base.SliceThickness = _ds_text(g.spacing[2])
    base.SpacingBetweenSlices = _ds_text(g.spacing[2])
    base.SamplesPerPixel = 1
    base.PhotometricInterpretation = "MONOCHROME2"
    base.Rows, base.Columns = int(g.size[1]), int(g.size[0])
    base.BitsAllocated = base.BitsStored = 16
    base.HighBit = 15
    base.PixelRepresentation = 1 if stored.dtype == np.int16 else 0
    base.RescaleSlope, base.RescaleIntercept = _ds_text(slope), _ds_text(intercept)
    if mod == "CT":
        base.RescaleType = "HU" if ref is not None and ref.modality == "CT" and slope == 1.0 else "US"
        base.KVP = ref.first.get("KVP", "") if ref is not None else ""
    else:
        base.ScanningSequence, base.SequenceVariant, base.ScanOptions = "RM", "NONE", ""
        base.MRAcquisitionType = ""
        base.EchoTime = base.RepetitionTime = base.EchoTrainLength = ""
    if ref is not None:
        item = Dataset()
        item.SeriesInstanceUID = ref.series_uid
        item.StudyInstanceUID = study_uid
        base.ReferencedSeriesSequence = DicomSequence([item])
    lo, hi = float(stored.min()), float(stored.max())
    centre_value = (lo + hi) / 2 * slope + intercept
    base.WindowCenter = _ds_text(centre_value)
    base.WindowWidth = _ds_text(max((hi - lo) * slope, 1e-6))

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".part", dir=out_dir.parent))
    files: list[Path] = []
    try:
        for k in range(g.size[2]):
            ds = Dataset()
            ds.update(base)
            sop_uid = generate_uid()
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = UID(_SOP_CLASS[mod])
            meta.MediaStorageSOPInstanceUID = sop_uid
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.file_meta = meta
            ds.SOPClassUID = _SOP_CLASS[mod]
            ds.SOPInstanceUID = sop_uid
            ds.InstanceNumber = k + 1
            position = g.origin + k * g.spacing[2] * axis_k
            ds.ImagePositionPatient = [_ds_text(v) for v in position]
            ds.SliceLocation = _ds_text(float(position @ normal))
            ds.ContentDate, ds.ContentTime = date, time_
            if ref is not None:
                centre = g.index_to_physical(np.array([[(g.size[0] - 1) / 2, (g.size[1] - 1) / 2, k]]))[0]
                sources = []
                for cls, inst, frame in _nearest_sources(ref, centre):
                    src = Dataset()
                    src.ReferencedSOPClassUID, src.ReferencedSOPInstanceUID = cls, inst
                    if frame is not None:
                        src.ReferencedFrameNumber = frame
                    sources.append(src)
                if sources:
                    ds.SourceImageSequence = DicomSequence(sources)
            ds.PixelData = np.ascontiguousarray(slices[k]).tobytes()
            path = tmp / f"IM{k + 1:05d}.dcm"
            pydicom.dcmwrite(path, ds, enforce_file_format=True)
            files.append(path)
        shift, diff = check_dicom_series(tmp, volume, precision, series_uid, study_uid)
        if out_dir.is_dir():
            out_dir.rmdir()  # empty (checked above)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return SeriesWriteResult(out_dir, tuple(out_dir / p.name for p in files), series_uid, study_uid,
                             ref.series_uid if ref is not None else None, mod, slope, intercept, precision, words,
                             shift, diff)


# -- the check ---------------------------------------------------------------------------------


def _pydicom_reading(folder: Path) -> tuple[Geometry, np.ndarray, list[Any]]:
    """The series in ``folder`` as pydicom gives it: sorted along the normal, rescale applied."""
    import pydicom

    dss = [pydicom.dcmread(p) for p in sorted(folder.iterdir())]
    iop = np.array([float(v) for v in dss[0].ImageOrientationPatient])
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    dss.sort(key=lambda ds: float(np.array([float(v) for v in ds.ImagePositionPatient]) @ normal))
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in dss])
    along = positions @ normal
    step = float(along[-1] - along[0]) / (len(dss) - 1) if len(dss) > 1 else float(dss[0].SliceThickness)
    row_spacing, col_spacing = (float(v) for v in dss[0].PixelSpacing)
    geometry = Geometry((int(dss[0].Columns), int(dss[0].Rows), len(dss)), positions[0],
                        (col_spacing, row_spacing, step), np.column_stack([row, col, normal]))
    values = np.stack([ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
                       for ds in dss])
    return geometry, values, dss


def _sitk_reading(folder: Path, series_uid: str) -> tuple[Geometry, np.ndarray]:
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    names = reader.GetGDCMSeriesFileNames(str(folder), series_uid)
    reader.SetFileNames(names)
    image = reader.Execute()
    read = Volume.from_sitk(image)
    return read.geometry, np.asarray(read.array, dtype=np.float64)


def _compare(intended: Volume, geometry: Geometry, values: np.ndarray, precision: float, who: str) -> tuple[float, float, list[str]]:
    """Worst corner shift (voxels of the intended grid) and worst value difference of one reading."""
    g = intended.geometry
    to_ijk = np.linalg.inv(g.direction @ np.diag(g.spacing))
    want, got = g.corners(), geometry.corners()
    shifts = [float(np.min(np.max(np.abs((got - c) @ to_ijk.T), axis=1))) for c in want]
    shift = max(shifts)
    problems = []
    if tuple(sorted(geometry.size)) != tuple(sorted(g.size)) or shift > MAX_SHIFT_VOXELS:
        worst = int(np.argmax(shifts))
        problems.append(f"{who} places the volume's corner {np.round(want[worst], 2).tolist()} mm up to {shift:.2f} "
                        f"voxels away (size read {tuple(geometry.size)}, meant {tuple(g.size)})")
        return shift, float("inf"), problems
    # the read grid's index -> the intended grid's index: a signed permutation of the axes
    m = g.lps_to_ijk() @ geometry.ijk_to_lps()
    perm = np.round(m[:3, :3])
    offset = np.round(m[:3, 3])
    # read voxel (i, j, k) lies at intended index perm @ (i, j, k) + offset; gather the read values in
    # the intended order: for each intended axis b, the read axis a with perm[b, a] = +-1
    read_zyx = values
    index: list[np.ndarray] = [np.empty(0, int)] * 3
    source_axis = [0, 0, 0]
    for b in range(3):
        a = int(np.argmax(np.abs(perm[b])))
        s = perm[b, a]
        source_axis[b] = a
        # intended index n_b = s * read index + offset[b]  ->  read index = s * (n_b - offset[b])
        index[b] = (s * (np.arange(g.size[b]) - offset[b])).astype(int)
        if index[b].min() < 0 or index[b].max() >= geometry.size[a]:
            problems.append(f"{who} reads a grid that does not cover the intended one")
            return shift, float("inf"), problems
    # read array axes are (z, y, x) = read axes (2, 1, 0); move read axis a to intended axis b
    moved = np.moveaxis(read_zyx, [2 - source_axis[b] for b in (2, 1, 0)], [0, 1, 2])
    gathered = moved[np.ix_(index[2], index[1], index[0])]
    diff = float(np.abs(gathered - np.asarray(intended.array, dtype=np.float64)).max())
    tol = precision * (1 + 1e-6) + 1e-6 * max(1.0, float(np.abs(intended.array).max()))
    if diff > tol:
        problems.append(f"{who} reads values that differ from the intended ones by up to {diff:.4g} (stored "
                        f"precision {precision:.3g}): the pixels are not where they belong (mirrored or shuffled)")
    return shift, diff, problems


def check_dicom_series(folder: str | os.PathLike[str], intended: Volume, precision: float, series_uid: str,
                       study_uid: str) -> tuple[float, float]:
    """Read the series in ``folder`` back with pydicom and SimpleITK and compare it with ``intended``;
    raise :class:`DicomGeometryError` when a corner is more than half a voxel away or a value
    differs by more than ``precision``. Returns the worst corner shift (voxels) and value difference."""
    folder = Path(folder)
    problems: list[str] = []
    shift = diff = 0.0
    try:
        geometry, values, dss = _pydicom_reading(folder)
        readings = [("pydicom", geometry, values)]
        sitk_geometry, sitk_values = _sitk_reading(folder, series_uid)
        readings.append(("SimpleITK", sitk_geometry, sitk_values))
    except Exception as exc:  # noqa: BLE001 - an unreadable series is a failed check
        raise DicomGeometryError(f"the DICOM series just written cannot be read back ({type(exc).__name__}: {exc}); "
                                 "it was not kept", "report this with the volume; nothing was written") from exc
    if {str(ds.SeriesInstanceUID) for ds in dss} != {series_uid} or {str(ds.StudyInstanceUID) for ds in dss} != {study_uid}:
        problems.append("its files do not all carry the new series' and the study's UIDs")
    if len({str(ds.SOPInstanceUID) for ds in dss}) != len(dss):
        problems.append("two of its files share a SOPInstanceUID")
    for who, geo, vals in readings:
        s, dv, found = _compare(intended, geo, vals, precision, who)
        shift, diff = max(shift, s), max(diff, dv)
        problems.extend(found)
    if problems:
        raise DicomGeometryError(
            "the DICOM series failed its geometry check (tolerance: half a voxel at the corners, the stored "
            "precision for values) and was not kept: " + "; ".join(problems),
            "nothing was written; this is a defect of the writer or of the volume's geometry: report it with "
            "the volume (check its geometry first with 'medtorch info FILE')")
    return shift, diff
