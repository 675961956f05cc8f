"""Reading DICOM series into a :class:`~medtorch.volume.Volume`, refusing what is not a clean 3D grid.

``list_series(folder)`` lists the image series under a folder; ``read_dicom_series(path)``
reads one series (a folder) or one multi-frame file as a 3D volume.

Conventions (see :mod:`medtorch.volume`): DICOM patient coordinates are LPS, which is
MedTorch's physical space, so positions and orientations are used as they are. For a
stack of frames with row cosine ``r`` (the direction of increasing column index),
column cosine ``c`` and slice normal ``n = r x c``:

* frames are sorted by ``ImagePositionPatient . n`` (never by InstanceNumber or file name);
* ``origin`` is the ImagePositionPatient of the first sorted frame;
* ``direction`` has the columns ``r`` (i), ``c`` (j) and ``n`` (k);
* ``spacing`` is ``(PixelSpacing[1], PixelSpacing[0], measured slice step)``: DICOM's
  PixelSpacing is (row spacing, column spacing), i.e. (along j, along i).

Stacks that are not a regular grid (missing slices, uneven steps, gantry tilt, mixed
orientations or image sizes, several images at one position) raise
:class:`~medtorch.errors.MedTorchInputError`; nothing is stacked silently.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

from medtorch.errors import MedTorchInputError
from medtorch.volume import Geometry, Volume, VolumeKind

if TYPE_CHECKING:  # pragma: no cover
    from pydicom.dataset import Dataset

__all__ = [
    "SeriesInfo",
    "list_series",
    "read_dicom_series",
    "GAP_FACTOR",
    "STEP_RTOL",
    "STEP_ATOL_MM",
    "SHEAR_PIXEL_FRACTION",
    "ORIENTATION_TOL",
]

#: A step larger than this multiple of the median slice step is reported as missing slices.
GAP_FACTOR = 1.5
#: Slice steps may differ from the median step by this fraction of it ...
STEP_RTOL = 0.01
#: ... or by this many millimetres, whichever is larger.
STEP_ATOL_MM = 0.01
#: Sideways drift of slice positions allowed, as a fraction of the smallest pixel spacing
#: (never less than :data:`STEP_ATOL_MM`); more is reported as gantry tilt / shear.
SHEAR_PIXEL_FRACTION = 0.05
#: Largest difference between direction cosines of frames that count as one orientation.
ORIENTATION_TOL = 1e-3
#: Two frames closer than this along the normal (mm) are at the same position.
DUPLICATE_TOL_MM = 0.01

_HINT_FLAG: contextvars.ContextVar[str | None] = contextvars.ContextVar("medtorch_series_flag", default=None)


@contextlib.contextmanager
def series_hint(flag: str) -> Iterator[None]:
    """While active, a series choice is hinted as the front end's option ``flag`` (``--fixed-series-uid``)."""
    token = _HINT_FLAG.set(flag)
    try:
        yield
    finally:
        _HINT_FLAG.reset(token)


def _options_hint() -> str:
    flag = _HINT_FLAG.get()
    return f"{flag} UID" if flag else "series_uid=... (command line: --series-uid UID)"
_IMAGE_LIKE_SOP_CLASSES = ("Segmentation Storage", "RT Dose Storage", "Parametric Map Storage")


# -- public types ------------------------------------------------------------------------


@dataclass(frozen=True)
class SeriesInfo:
    """One image series found by :func:`list_series`.

    Attributes:
        series_uid: SeriesInstanceUID, the value to pass as ``series_uid``.
        modality: Modality (``"CT"``, ``"MR"``, ...), ``""`` when absent.
        description: SeriesDescription, ``""`` when absent.
        series_number: SeriesNumber, or ``None``.
        num_files: number of files of the series.
        num_frames: number of 2D images (frames) in those files.
        rows: Rows of the first file.
        columns: Columns of the first file.
        patient_id: PatientID.
        study_date: StudyDate (``YYYYMMDD``).
        study_uid: StudyInstanceUID.
        sop_class: name of the SOP class of the first file (e.g. ``"CT Image Storage"``).
        files: the series' files, sorted by path.
    """

    series_uid: str
    modality: str
    description: str
    series_number: int | None
    num_files: int
    num_frames: int
    rows: int
    columns: int
    patient_id: str
    study_date: str
    study_uid: str
    sop_class: str
    files: tuple[str, ...] = field(repr=False, default=())

    def summary(self) -> str:
        """One line for a listing: UID, modality, description, image count."""
        desc = f" '{self.description}'" if self.description else ""
        number = f" #{self.series_number}" if self.series_number is not None else ""
        images = f"{self.num_frames} image{'s' if self.num_frames != 1 else ''}"
        files = f"{self.num_files} file{'s' if self.num_files != 1 else ''}"
        return f"{self.series_uid} ({self.modality or '?'}{number}{desc}, {images} {self.columns}x{self.rows} in {files})"


# -- internal types ----------------------------------------------------------------------


@dataclass
class _Header:
    """A DICOM image file and its header (read without pixel data)."""

    path: Path
    ds: "Dataset"


@dataclass(frozen=True)
class _Broken:
    """A DICOM file that cannot be read, and its series when the header tells it."""

    path: Path
    reason: str
    series_uid: str | None = None


@dataclass
class _Scan:
    """What a folder holds: image files, and the files skipped for each reason."""

    headers: list[_Header] = field(default_factory=list)
    not_dicom: list[Path] = field(default_factory=list)
    non_image: list[Path] = field(default_factory=list)
    broken: list[_Broken] = field(default_factory=list)


@dataclass
class _Frame:
    """One 2D image of a series: where its pixels are and where it lies in LPS."""

    path: Path
    index: int
    num_file_frames: int
    rows: int
    columns: int
    samples: int
    position: np.ndarray | None
    orientation: np.ndarray | None
    pixel_spacing: np.ndarray | None
    slice_thickness: float | None
    slope: float
    intercept: float
    uid: str

    @property
    def label(self) -> str:
        """File name, plus the frame number for multi-frame files."""
        return self.path.name if self.num_file_frames == 1 else f"{self.path.name} frame {self.index + 1}"


# -- small helpers -----------------------------------------------------------------------


def _get(ds: Any, keyword: str) -> Any:
    """``ds.get(keyword)`` that returns ``None`` instead of raising on a malformed value."""
    if ds is None:
        return None
    try:
        return ds.get(keyword)
    except Exception:  # noqa: BLE001 - a bad value in a header must not stop the scan
        return None


def _text(ds: Any, keyword: str) -> str:
    value = _get(ds, keyword)
    return "" if value is None else str(value).strip()


def _int(value: Any, default: int | None = None) -> int | None:
    try:
        return int(value) if value is not None and str(value).strip() != "" else default
    except (TypeError, ValueError):
        return default


def _float(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _floats(value: Any, n: int) -> np.ndarray | None:
    """``n`` finite floats from a (multi-valued) DICOM value, else ``None``."""
    if value is None:
        return None
    items = [value] if isinstance(value, (str, bytes, int, float)) else value
    try:
        arr = np.array([float(v) for v in items], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if arr.shape != (n,) or not np.all(np.isfinite(arr)):
        return None
    return arr


def _first_item(ds: Any, keyword: str) -> Any:
    """First item of the sequence ``keyword`` in ``ds``, or ``None``."""
    seq = _get(ds, keyword)
    try:
        return seq[0] if seq is not None and len(seq) > 0 else None
    except (TypeError, IndexError):
        return None


def _functional(per_frame: Any, shared: Any, sequence: str, keyword: str) -> Any:
    """A value of a functional group macro: the per-frame item first, then the shared one."""
    for group in (per_frame, shared):
        item = _first_item(group, sequence)
        value = _get(item, keyword)
        if value is not None:
            return value
    return None


def _transfer_syntax(ds: Any) -> Any:
    """The dataset's TransferSyntaxUID (guessed from how it was read when the file has no meta)."""
    from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    ts = _get(meta, "TransferSyntaxUID")
    if ts:
        return UID(str(ts))
    encoding = getattr(ds, "original_encoding", None)  # pydicom >= 3
    if encoding is not None and encoding[0] is not None:
        implicit, little = bool(encoding[0]), bool(encoding[1])
    else:  # pragma: no cover - pydicom < 3
        implicit = bool(getattr(ds, "is_implicit_VR", True))
        little = bool(getattr(ds, "is_little_endian", True))
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def _sop_class_name(ds: Any) -> str:
    """Name of the SOP class (from the dataset, else from the file meta, as in a DICOMDIR)."""
    uid = _get(ds, "SOPClassUID")
    if uid is None:
        uid = _get(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID")
    if uid is None:
        return ""
    try:
        return str(uid.name)
    except AttributeError:
        return str(uid)


def _is_image_sop_class(name: str) -> bool:
    return "Image Storage" in name or name in _IMAGE_LIKE_SOP_CLASSES


def _fmt_mm(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".") + " mm"


# -- scanning ----------------------------------------------------------------------------


def _iter_files(folder: Path, recursive: bool) -> Iterator[Path]:
    """Regular files under ``folder`` in a stable order, skipping hidden files and folders."""
    if not recursive:
        yield from sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
        return
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                yield Path(root) / name


def _read_header(path: Path) -> tuple[str, Any]:
    """Classify one file: ``("image", ds)``, ``("non-image", None)``, ``("not-dicom", None)``
    or ``("broken", _Broken)``. Pixel data is not read.

    pydicom stops silently at the end of a file cut inside its header, so a file whose SOP
    class is an image but that lacks Rows/Columns or SeriesInstanceUID counts as broken.
    """
    import pydicom

    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError as exc:
        return "broken", _Broken(path, f"cannot be opened ({exc.strerror or exc})")
    has_magic = len(head) == 132 and head[128:132] == b"DICM"
    if not has_magic:
        # A DICOM stream without the preamble starts with group 0002 or 0008; anything
        # else is not DICOM (and is never force-parsed, which could read garbage).
        if len(head) < 8 or head[:2] not in (b"\x02\x00", b"\x08\x00", b"\x00\x08"):
            return "not-dicom", None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(
                str(path), stop_before_pixels=True, force=not has_magic, defer_size="256 KB"
            )
    except Exception as exc:  # noqa: BLE001 - any parse failure classifies the file
        if has_magic:
            return "broken", _Broken(path, f"the header cannot be parsed ({type(exc).__name__}: {str(exc)[:120]})")
        return "not-dicom", None
    sop_class = _sop_class_name(ds)
    has_image = _get(ds, "Rows") is not None and _get(ds, "Columns") is not None
    if not has_magic and not (sop_class and has_image):
        return "not-dicom", None
    series_uid = _text(ds, "SeriesInstanceUID") or None
    if has_image and series_uid is not None:
        return "image", ds
    if has_magic and (not sop_class or _is_image_sop_class(sop_class)):
        missing = "image size" if series_uid is not None else "image size or series UID"
        return "broken", _Broken(path, f"the header ends early (no {missing}): the file is truncated", series_uid)
    return "non-image", None


def _scan_folder(folder: Path, recursive: bool = True) -> _Scan:
    """Read the header of every file under ``folder``."""
    scan = _Scan()
    for path in _iter_files(folder, recursive):
        kind, value = _read_header(path)
        if kind == "image":
            scan.headers.append(_Header(path, value))
        elif kind == "non-image":
            scan.non_image.append(path)
        elif kind == "broken":
            scan.broken.append(value)
        else:
            scan.not_dicom.append(path)
    return scan


def _group_by_series(headers: Sequence[_Header]) -> dict[str, list[_Header]]:
    groups: dict[str, list[_Header]] = defaultdict(list)
    for h in headers:
        groups[str(_get(h.ds, "SeriesInstanceUID")).strip()].append(h)
    return dict(groups)


def _series_info(uid: str, headers: Sequence[_Header]) -> SeriesInfo:
    ds = headers[0].ds
    return SeriesInfo(
        series_uid=uid,
        modality=_text(ds, "Modality"),
        description=_text(ds, "SeriesDescription"),
        series_number=_int(_get(ds, "SeriesNumber")),
        num_files=len(headers),
        num_frames=sum(max(1, _int(_get(h.ds, "NumberOfFrames"), 1) or 1) for h in headers),
        rows=_int(_get(ds, "Rows"), 0) or 0,
        columns=_int(_get(ds, "Columns"), 0) or 0,
        patient_id=_text(ds, "PatientID"),
        study_date=_text(ds, "StudyDate"),
        study_uid=_text(ds, "StudyInstanceUID"),
        sop_class=_sop_class_name(ds),
        files=tuple(sorted(str(h.path) for h in headers)),
    )


def _check_folder(folder: Path) -> None:
    if not folder.exists():
        raise MedTorchInputError(f"{folder} does not exist", "check the path of the DICOM folder")
    if not folder.is_dir():
        raise MedTorchInputError(f"{folder} is not a folder", "give the folder that holds the DICOM series")


def list_series(folder: str | os.PathLike[str], recursive: bool = True) -> list[SeriesInfo]:
    """List the DICOM image series under ``folder``.

    Non-DICOM files, non-image DICOM objects (SR, RTSTRUCT, DICOMDIR, ...) and unreadable
    files are skipped. Only headers are read.

    Args:
        folder: folder to scan.
        recursive: also scan sub-folders.

    Returns:
        One :class:`SeriesInfo` per SeriesInstanceUID, sorted by study date, series number
        and UID; empty when the folder holds no DICOM image.
    """
    p = Path(folder)
    _check_folder(p)
    groups = _group_by_series(_scan_folder(p, recursive).headers)
    infos = [_series_info(uid, hs) for uid, hs in groups.items()]
    return sorted(
        infos, key=lambda s: (s.study_date, s.series_number if s.series_number is not None else 1 << 30, s.series_uid)
    )


# -- frames and their geometry -----------------------------------------------------------


@dataclass(frozen=True)
class _FileValues:
    """Values of a file's top-level header that its frames share or fall back on."""

    n_frames: int
    rows: int
    columns: int
    samples: int
    uid: str
    position: np.ndarray | None
    orientation: np.ndarray | None
    pixel_spacing: np.ndarray | None
    thickness: float | None
    slope: float | None
    intercept: float | None

    @classmethod
    def of(cls, header: _Header) -> "_FileValues":
        ds = header.ds
        slope = _float(_get(ds, "RescaleSlope"))
        if slope is None and _text(ds, "Modality") == "RTDOSE":
            slope = _float(_get(ds, "DoseGridScaling"))  # stored value x DoseGridScaling = Gy
        return cls(
            n_frames=max(1, _int(_get(ds, "NumberOfFrames"), 1) or 1),
            rows=_int(_get(ds, "Rows"), 0) or 0,
            columns=_int(_get(ds, "Columns"), 0) or 0,
            samples=_int(_get(ds, "SamplesPerPixel"), 1) or 1,
            uid=_text(ds, "SOPInstanceUID") or str(header.path),
            position=_floats(_get(ds, "ImagePositionPatient"), 3),
            orientation=_floats(_get(ds, "ImageOrientationPatient"), 6),
            pixel_spacing=_floats(_get(ds, "PixelSpacing"), 2),
            thickness=_float(_get(ds, "SliceThickness")),
            slope=slope,
            intercept=_float(_get(ds, "RescaleIntercept")),
        )


def _enhanced_frames(header: _Header, top: _FileValues, shared: Any, per_frame: Sequence[Any]) -> list[_Frame]:
    """Frames of an enhanced multi-frame file, placed by its functional groups."""
    frames = []
    for i in range(top.n_frames):
        item = per_frame[i] if i < len(per_frame) else None

        def fg(sequence: str, keyword: str) -> Any:
            return _functional(item, shared, sequence, keyword)

        position = _floats(fg("PlanePositionSequence", "ImagePositionPatient"), 3)
        if position is None and top.n_frames == 1:
            position = top.position
        if per_frame and i >= len(per_frame):
            position = None  # fewer per-frame items than frames: the frame cannot be placed
        orientation = _floats(fg("PlaneOrientationSequence", "ImageOrientationPatient"), 6)
        spacing = _floats(fg("PixelMeasuresSequence", "PixelSpacing"), 2)
        thickness = _float(fg("PixelMeasuresSequence", "SliceThickness"))
        slope = _float(fg("PixelValueTransformationSequence", "RescaleSlope"))
        intercept = _float(fg("PixelValueTransformationSequence", "RescaleIntercept"))
        frames.append(
            _Frame(
                header.path, i, top.n_frames, top.rows, top.columns, top.samples,
                position=position,
                orientation=orientation if orientation is not None else top.orientation,
                pixel_spacing=spacing if spacing is not None else top.pixel_spacing,
                slice_thickness=thickness if thickness is not None else top.thickness,
                slope=next(v for v in (slope, top.slope, 1.0) if v is not None),
                intercept=next(v for v in (intercept, top.intercept, 0.0) if v is not None),
                uid=f"{top.uid}#{i}",
            )
        )
    return frames


def _classic_positions(header: _Header, top: _FileValues) -> list[np.ndarray | None]:
    """Frame positions of a classic file: its ImagePositionPatient for one frame, else the
    GridFrameOffsetVector (RT dose) along the normal, else unknown."""
    if top.n_frames == 1:
        return [top.position]
    offsets = _floats(_get(header.ds, "GridFrameOffsetVector"), top.n_frames)
    if offsets is None or top.position is None or top.orientation is None:
        return [None] * top.n_frames
    normal = np.cross(top.orientation[:3], top.orientation[3:])
    normal /= max(float(np.linalg.norm(normal)), 1e-12)
    # First offset 0: offsets are relative to the position; otherwise they are coordinates
    # along the normal (DICOM PS3.3 C.8.8.3.2).
    base = 0.0 if offsets[0] == 0 else float(top.position @ normal)
    return [top.position + (off - base) * normal for off in offsets]


def _frames_of(header: _Header) -> list[_Frame]:
    """The 2D frames of one file with their position, orientation, spacing and rescale.

    Handles classic single-frame images, enhanced multi-frame images (functional groups:
    PlanePosition, PlaneOrientation, PixelMeasures, PixelValueTransformation) and classic
    multi-frame images placed by GridFrameOffsetVector (RT dose). Values the file does not
    give are ``None`` and are reported by :func:`_check_and_sort`.
    """
    top = _FileValues.of(header)
    shared = _first_item(header.ds, "SharedFunctionalGroupsSequence")
    per_frame = _get(header.ds, "PerFrameFunctionalGroupsSequence")
    if shared is not None or per_frame is not None:
        return _enhanced_frames(header, top, shared, list(per_frame) if per_frame is not None else [])
    return [
        _Frame(
            header.path, i, top.n_frames, top.rows, top.columns, top.samples,
            position=position,
            orientation=top.orientation,
            pixel_spacing=top.pixel_spacing,
            slice_thickness=top.thickness,
            slope=top.slope if top.slope is not None else 1.0,
            intercept=top.intercept if top.intercept is not None else 0.0,
            uid=f"{top.uid}#{i}",
        )
        for i, position in enumerate(_classic_positions(header, top))
    ]


def _orthonormal_axes(orientation: np.ndarray, series: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row cosine, column cosine and slice normal from ImageOrientationPatient."""
    r, c = orientation[:3].copy(), orientation[3:].copy()
    nr, nc = np.linalg.norm(r), np.linalg.norm(c)
    if nr < 1e-6 or nc < 1e-6 or abs(float(r @ c)) / (nr * nc) > ORIENTATION_TOL:
        raise MedTorchInputError(
            f"series {series} has an invalid ImageOrientationPatient {tuple(round(float(v), 6) for v in orientation)} "
            "(the row and column directions are not unit vectors at right angles)",
            "fix the orientation in the DICOM header, or export the series again from the scanner or PACS",
        )
    r /= nr
    c = c - (c @ r) * r
    c /= np.linalg.norm(c)
    return r, c, np.cross(r, c)


def _describe_counts(values: Sequence[str]) -> str:
    return ", ".join(f"{v} ({n} image{'s' if n != 1 else ''})" for v, n in Counter(values).most_common())


def _check_and_sort(
    frames: Sequence[_Frame], series: str, from_folder: bool = False
) -> tuple[list[_Frame], Geometry, list[str]]:
    """Sort the frames along the slice normal and build the grid; refuse irregular stacks.

    Args:
        frames: every frame of the series.
        series: SeriesInstanceUID, for messages.
        from_folder: the frames come from a folder (not from one file given by the user).

    Returns:
        The sorted frames, their geometry and a list of warnings for the metadata.
    """
    notes: list[str] = []
    if len(frames) == 1:
        f = frames[0]
        if from_folder:
            raise MedTorchInputError(
                f"series {series} is a single 2D image ({f.columns}x{f.rows}, file {f.path.name}): "
                "a 3D volume is needed",
                "give the folder that holds the whole series (all its slices); this folder holds only one "
                "image of it (a localizer or a 2D acquisition cannot be used as a volume)",
            )
        raise MedTorchInputError(
            f"{f.path.name} holds a single 2D image ({f.columns}x{f.rows}, series {series}): a 3D volume is needed",
            "give the folder that holds the whole series (all its slices) instead of one file",
        )
    sizes = [f"{f.columns}x{f.rows}" + (f"x{f.samples} samples" if f.samples > 1 else "") for f in frames]
    if len(set(sizes)) > 1:
        raise MedTorchInputError(
            f"series {series} mixes image sizes: {_describe_counts(sizes)}",
            "keep only the images of one size (move the others out of the folder), or choose another "
            "series ('medtorch info FOLDER' lists them)",
        )
    unplaced = [f for f in frames if f.position is None or f.orientation is None]
    if unplaced:
        raise MedTorchInputError(
            f"series {series} has {len(unplaced)} of {len(frames)} images without ImagePositionPatient/"
            f"ImageOrientationPatient (e.g. {unplaced[0].label}), so its 3D geometry is unknown",
            "export the series with its geometry (an image series from the scanner or PACS, not a screen "
            "capture or a stripped/anonymised copy that dropped the position tags)",
        )
    orientations = [f.orientation for f in frames if f.orientation is not None]
    base = orientations[0]
    if any(np.abs(o - base).max() > ORIENTATION_TOL for o in orientations):
        labels = [" ".join(f"{v:.3f}" for v in o) for o in orientations]
        raise MedTorchInputError(
            f"series {series} mixes {len(set(labels))} image orientations (e.g. a localizer in several planes): "
            f"{_describe_counts(labels)}",
            "keep only the images of one orientation (move the others out of the folder), or choose another "
            "series ('medtorch info FOLDER' lists them)",
        )
    spacings = [f.pixel_spacing for f in frames if f.pixel_spacing is not None]
    if len(spacings) < len(frames):
        raise MedTorchInputError(
            f"series {series} has no PixelSpacing, so the in-plane voxel size is unknown",
            "export the series with its PixelSpacing (an image series from the scanner or PACS)",
        )
    ps0 = spacings[0]
    if np.any(ps0 <= 0):
        raise MedTorchInputError(
            f"series {series} has a zero or negative PixelSpacing {tuple(ps0)}", "fix PixelSpacing in the header"
        )
    if any(np.abs(s - ps0).max() > max(1e-4, 1e-4 * ps0.max()) for s in spacings):
        raise MedTorchInputError(
            f"series {series} mixes pixel spacings: "
            + _describe_counts([" x ".join(f"{v:g}" for v in s) for s in spacings]),
            "keep only the images of one pixel spacing, or choose another series",
        )
    r, c, n = _orthonormal_axes(base, series)

    positions = np.array([f.position for f in frames], dtype=np.float64)
    along = positions @ n
    order = np.argsort(along, kind="stable")
    frames = [frames[i] for i in order]
    positions, along = positions[order], along[order]
    steps = np.diff(along)

    # Several images at one position: several volumes in one series.
    dup = steps < DUPLICATE_TOL_MM
    if dup.any():
        # runs of near-zero steps are groups of images at one position
        group_sizes = [len(run) for run in np.split(np.arange(len(frames)), np.nonzero(~dup)[0] + 1)]
        n_pos = sum(1 for g in group_sizes if g > 1)
        first = int(np.argmax(dup))
        raise MedTorchInputError(
            f"series {series} has {n_pos} slice position(s) holding more than one image (up to "
            f"{max(group_sizes)}; e.g. {frames[first].label} and {frames[first + 1].label}): it mixes several "
            "volumes (time points, echoes, cardiac phases, b-values) or holds duplicate copies",
            "read one volume at a time: put the files of one time point/echo in a folder of their own, or load "
            "the series in Slicer's DICOM module and pick one of its volumes",
        )

    # Positions must lie on a line along the normal; sideways drift is a gantry tilt / shear.
    rel = positions - positions[0]
    sideways = np.linalg.norm(rel - np.outer(rel @ n, n), axis=1)
    shear_tol = max(STEP_ATOL_MM, SHEAR_PIXEL_FRACTION * float(ps0.min()))
    if sideways.max() > shear_tol:
        k = int(np.argmax(sideways))
        angle = math.degrees(math.atan2(float(sideways[k]), float(along[k] - along[0])))
        raise MedTorchInputError(
            f"the slices of series {series} are sheared: the slice positions drift {sideways[k]:.2f} mm "
            f"sideways over {along[k] - along[0]:.1f} mm along the slice normal (gantry tilt of about "
            f"{abs(angle):.1f} degrees), so they do not form a rectangular grid",
            "resample the series onto a regular grid first, e.g. load it in Slicer with the DICOM setting "
            "'Acquisition geometry regularization' set to harden the transform and save the result, or ask for "
            "a reconstruction without gantry tilt",
        )

    median = float(np.median(steps))
    tol = max(STEP_ATOL_MM, STEP_RTOL * median)
    gaps = np.nonzero(steps > GAP_FACTOR * median)[0]
    if gaps.size:
        g = int(gaps[0])
        missing = int(sum(round(float(steps[i]) / median) - 1 for i in gaps))
        raise MedTorchInputError(
            f"series {series} has missing slices: the slice step is {_fmt_mm(median)} but between "
            f"{frames[g].label} and {frames[g + 1].label} it is {_fmt_mm(float(steps[g]))} "
            f"({gaps.size} gap(s), about {max(missing, 1)} slice(s) missing)",
            "copy or export the complete series again; if the gap is real (e.g. two separate stacks), "
            "load it in Slicer with 'Acquisition geometry regularization' and save a resampled volume",
        )
    mean_step = float(along[-1] - along[0]) / (len(frames) - 1)
    residual = np.abs(along - along[0] - mean_step * np.arange(len(frames)))
    if np.abs(steps - median).max() > tol or residual.max() > tol:
        raise MedTorchInputError(
            f"series {series} has uneven slice spacing: steps range from {_fmt_mm(float(steps.min()))} to "
            f"{_fmt_mm(float(steps.max()))} (median {_fmt_mm(median)}, tolerance {_fmt_mm(tol)})",
            "resample the series onto a regular grid first (e.g. Slicer's DICOM 'Acquisition geometry "
            "regularization'), or check that the folder does not mix two series",
        )

    thickness = frames[0].slice_thickness
    if thickness is not None and thickness > 0 and abs(thickness - mean_step) > max(tol, 0.05 * mean_step):
        notes.append(
            f"SliceThickness {thickness:g} mm differs from the slice step {mean_step:.4g} mm "
            "(overlapping or gapped slices); the step is used as spacing"
        )
    geometry = Geometry(
        size=(frames[0].columns, frames[0].rows, len(frames)),
        origin=positions[0],
        spacing=np.array([ps0[1], ps0[0], mean_step], dtype=np.float64),
        direction=np.column_stack([r, c, n]),
    ).validate(f"DICOM series {series}")
    return frames, geometry, notes


# -- pixel data --------------------------------------------------------------------------


def _decoder_hint(ts: Any) -> str:
    """Which package decodes transfer syntax ``ts``."""
    uid = str(ts)
    if uid in ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"):
        pkgs = "pyjpegls (or pylibjpeg pylibjpeg-libjpeg, or python-gdcm)"
    elif uid.startswith("1.2.840.10008.1.2.4.9") or uid.startswith("1.2.840.10008.1.2.4.20"):
        pkgs = "pylibjpeg pylibjpeg-openjpeg (or python-gdcm)"
    elif uid == "1.2.840.10008.1.2.5":
        pkgs = "pylibjpeg pylibjpeg-rle"
    elif uid.startswith("1.2.840.10008.1.2.4."):
        pkgs = "pylibjpeg pylibjpeg-libjpeg (or python-gdcm)"
    else:
        pkgs = "python-gdcm"
    return (
        f"install a decoder into the Python that runs MedTorch: pip install {pkgs} "
        "(inside Slicer: slicer.util.pip_install('...')), or convert the files to an uncompressed "
        "transfer syntax (e.g. dcmdjpeg, gdcmconv --raw)"
    )


def _ts_name(ts: Any) -> str:
    name = getattr(ts, "name", "") or ""
    return f"'{name}' ({ts})" if name and name != str(ts) else str(ts)


def _check_decoder(ts: Any, path: Path) -> None:
    """Raise when no installed plugin decodes compressed transfer syntax ``ts``."""
    try:
        from pydicom.pixels import get_decoder
    except ImportError:  # pragma: no cover - pydicom < 3: decoding errors are caught later
        return
    try:
        available = bool(get_decoder(ts).is_available)
    except (NotImplementedError, ValueError, KeyError):
        available = False
    if not available:
        raise MedTorchInputError(
            f"{path.name} is compressed with transfer syntax {_ts_name(ts)} and no installed package can "
            "decode it",
            _decoder_hint(ts),
        )


def _expected_pixel_bytes(ds: Any, n_frames: int, keyword: str = "PixelData") -> int:
    """Bytes that ``n_frames`` uncompressed frames of ``ds`` need in element ``keyword``."""
    rows = _int(_get(ds, "Rows"), 0) or 0
    cols = _int(_get(ds, "Columns"), 0) or 0
    samples = _int(_get(ds, "SamplesPerPixel"), 1) or 1
    bits = _int(_get(ds, "BitsAllocated"), 16) or 16
    n = rows * cols * samples * n_frames
    if keyword != "PixelData":  # FloatPixelData (32 bits) or DoubleFloatPixelData (64 bits)
        return n * (4 if keyword == "FloatPixelData" else 8)
    if _text(ds, "PhotometricInterpretation") == "YBR_FULL_422":
        n = n * 2 // 3
    return (n + 7) // 8 if bits == 1 else n * (bits // 8)


def _read_file_pixels(path: Path) -> np.ndarray:
    """All frames of one file as ``(frames, rows, columns[, samples])``, stored values."""
    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(str(path), force=True)
    except Exception as exc:  # noqa: BLE001
        raise MedTorchInputError(
            f"{path.name} cannot be read ({type(exc).__name__}: {str(exc)[:160]}); it is truncated or corrupt",
            "copy or export the file again, or remove it from the folder",
        ) from exc
    ts = _transfer_syntax(ds)
    if getattr(ds, "file_meta", None) is not None and _get(ds.file_meta, "TransferSyntaxUID") is None:
        ds.file_meta.TransferSyntaxUID = ts
    n_frames = max(1, _int(_get(ds, "NumberOfFrames"), 1) or 1)
    pixel_keyword = next((k for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData") if k in ds), None)
    if pixel_keyword is None:
        raise MedTorchInputError(
            f"{path.name} has no pixel data (the file is truncated, or it is not an image)",
            "copy or export the file again, or remove it from the folder",
        )
    compressed = bool(getattr(ts, "is_compressed", False))
    if compressed:
        _check_decoder(ts, path)
    else:
        expected = _expected_pixel_bytes(ds, n_frames, pixel_keyword)
        got = len(ds[pixel_keyword].value or b"")
        if got < expected:
            raise MedTorchInputError(
                f"{path.name} is truncated: its pixel data has {got} bytes but {n_frames} frame(s) of "
                f"{_get(ds, 'Columns')}x{_get(ds, 'Rows')} need {expected}",
                "copy or export the file again (the transfer was interrupted), or remove it from the folder",
            )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = np.asarray(ds.pixel_array)
    except MedTorchInputError:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder failure becomes a user-facing error
        if compressed:
            raise MedTorchInputError(
                f"the pixel data of {path.name} (transfer syntax {_ts_name(ts)}) could not be decoded "
                f"({type(exc).__name__}: {str(exc)[:160]})",
                "the file is probably truncated or corrupt: copy or export it again; if it is intact, "
                + _decoder_hint(ts),
            ) from exc
        raise MedTorchInputError(
            f"the pixel data of {path.name} could not be read ({type(exc).__name__}: {str(exc)[:160]})",
            "the file is truncated or its image tags (Rows, Columns, BitsAllocated) are wrong: export it again",
        ) from exc
    samples = _int(_get(ds, "SamplesPerPixel"), 1) or 1
    plane_ndim = 2 if samples == 1 else 3
    if arr.ndim == plane_ndim:
        arr = arr[np.newaxis]
    if arr.shape[0] != n_frames:
        raise MedTorchInputError(
            f"{path.name} declares {n_frames} frames but its pixel data holds {arr.shape[0]}",
            "the file is corrupt: export it again",
        )
    return arr


def _load_stack(frames: Sequence[_Frame]) -> list[np.ndarray]:
    """Stored pixel values of ``frames``, in their order (each file is decoded once)."""
    by_file: dict[Path, np.ndarray] = {}
    out = []
    for f in frames:
        if f.path not in by_file:
            by_file[f.path] = _read_file_pixels(f.path)
        data = by_file[f.path]
        if f.index >= data.shape[0] or data.shape[1:3] != (f.rows, f.columns):
            raise MedTorchInputError(
                f"the pixel data of {f.label} does not match its header ({f.columns}x{f.rows})",
                "the file is corrupt: export it again",
            )
        out.append(data[f.index])
    return out


def _is_integral(value: float) -> bool:
    return float(value).is_integer()


def _rescaled_volume_array(planes: Sequence[np.ndarray], frames: Sequence[_Frame], label: bool) -> np.ndarray:
    """Stack the planes and apply each frame's RescaleSlope/RescaleIntercept.

    The result is float32 when a slope or intercept is not an integer (or the stored values
    are floats), else the smallest of int16/int32/int64 that holds every value. Colour
    planes and label maps keep their stored type.
    """
    raw_dtype = np.result_type(*[p.dtype for p in planes])
    identity = all(f.slope == 1.0 and f.intercept == 0.0 for f in frames)
    if planes[0].ndim == 3 or (label and identity):
        return np.ascontiguousarray(np.stack(planes).astype(raw_dtype, copy=False))
    floats = raw_dtype.kind == "f" or not all(_is_integral(f.slope) and _is_integral(f.intercept) for f in frames)
    if floats:
        dtype: np.dtype = np.dtype(np.float64 if raw_dtype == np.float64 else np.float32)
    else:
        lo = hi = 0
        for p, f in zip(planes, frames):
            a, b = int(p.min()) * int(f.slope) + int(f.intercept), int(p.max()) * int(f.slope) + int(f.intercept)
            lo, hi = min(lo, a, b), max(hi, a, b)
        dtype = next(
            (np.dtype(t) for t in (np.int16, np.int32) if np.iinfo(t).min <= lo and hi <= np.iinfo(t).max),
            np.dtype(np.int64),
        )
    out = np.empty((len(planes),) + planes[0].shape, dtype=dtype)
    for k, (p, f) in enumerate(zip(planes, frames)):
        if floats:
            out[k] = p.astype(np.float64) * f.slope + f.intercept
        else:
            out[k] = p.astype(np.int64) * int(f.slope) + int(f.intercept)
    return out


# -- metadata ----------------------------------------------------------------------------


def _metadata(ds: Any, frames: Sequence[_Frame], geometry: Geometry, source: Path, notes: list[str]) -> dict[str, Any]:
    """The header values a user or a report needs, and the reader's warnings."""
    slopes = sorted({f.slope for f in frames})
    intercepts = sorted({f.intercept for f in frames})
    if len(slopes) > 1 or len(intercepts) > 1:
        notes.append(f"RescaleSlope/RescaleIntercept vary per slice ({len(slopes)} slopes, {len(intercepts)} intercepts)")
    if _text(ds, "PhotometricInterpretation") == "MONOCHROME1":
        notes.append("MONOCHROME1 image: low values display bright; voxel values are kept as stored")
    ps = frames[0].pixel_spacing
    meta: dict[str, Any] = {
        "source": str(source),
        "PatientID": _text(ds, "PatientID"),
        "Modality": _text(ds, "Modality"),
        "StudyDate": _text(ds, "StudyDate"),
        "StudyInstanceUID": _text(ds, "StudyInstanceUID"),
        "SeriesInstanceUID": _text(ds, "SeriesInstanceUID"),
        "SeriesDescription": _text(ds, "SeriesDescription"),
        "SeriesNumber": _int(_get(ds, "SeriesNumber")),
        "FrameOfReferenceUID": _text(ds, "FrameOfReferenceUID"),
        "Manufacturer": _text(ds, "Manufacturer"),
        "SOPClass": _sop_class_name(ds),
        "TransferSyntaxUID": str(_transfer_syntax(ds)),
        "PhotometricInterpretation": _text(ds, "PhotometricInterpretation"),
        "PixelSpacing": [float(v) for v in ps] if ps is not None else None,
        "SliceThickness": frames[0].slice_thickness,
        "SliceStep": float(geometry.spacing[2]),
        "RescaleSlope": slopes[0] if len(slopes) == 1 else slopes,
        "RescaleIntercept": intercepts[0] if len(intercepts) == 1 else intercepts,
        "NumberOfSlices": len(frames),
        "NumberOfFiles": len({f.path for f in frames}),
        "warnings": list(notes),
    }
    return meta


# -- reading -----------------------------------------------------------------------------


def _refuse_broken(folder: Path, broken: Sequence[_Broken], whose: str) -> None:
    """Raise for unreadable files that may belong to the series being read."""
    if not broken:
        return
    listing = "; ".join(f"{b.path.name}: {b.reason}" for b in broken[:5])
    more = f" (and {len(broken) - 5} more)" if len(broken) > 5 else ""
    raise MedTorchInputError(
        f"{len(broken)} DICOM file(s) {whose} in {folder} cannot be read: {listing}{more}",
        "copy or export those files again (they are truncated or corrupt), or remove them from the folder",
    )


def _choose_series(folder: Path, scan: _Scan, series_uid: str | None) -> list[_Header]:
    """The headers of the requested series, or an error that says how to choose.

    Unreadable files of an unknown series refuse the whole folder (they could belong to the
    chosen one); unreadable files of other series only add a note.
    """
    _refuse_broken(folder, [b for b in scan.broken if b.series_uid is None], "of unknown series")
    groups = _group_by_series(scan.headers)
    wanted = str(series_uid).strip() if series_uid is not None else None
    if wanted is not None and wanted not in groups:
        _refuse_broken(folder, [b for b in scan.broken if b.series_uid == wanted], f"of series {wanted}")
    if not groups:
        found = []
        if scan.not_dicom:
            found.append(f"{len(scan.not_dicom)} non-DICOM file(s)")
        if scan.non_image:
            found.append(f"{len(scan.non_image)} DICOM file(s) without an image (reports, structure sets, DICOMDIR)")
        raise MedTorchInputError(
            f"no DICOM image found in {folder}" + (f" (it holds {' and '.join(found)})" if found else " (it is empty)"),
            "give the folder that holds the DICOM image files of the series (e.g. as exported from the PACS)",
        )
    infos = sorted((_series_info(uid, hs) for uid, hs in groups.items()), key=lambda s: s.series_uid)
    listing = "\n".join("  - " + s.summary() for s in infos)
    if wanted is not None:
        if wanted not in groups:
            raise MedTorchInputError(
                f"series {wanted} is not in {folder}; it holds:\n{listing}",
                f"pass one of the UIDs above as {_options_hint()}",
            )
        return groups[wanted]
    if len(groups) > 1:
        raise MedTorchInputError(
            f"{folder} holds {len(groups)} DICOM series and none was chosen:\n{listing}",
            f"choose one with {_options_hint()}" + ("" if _HINT_FLAG.get() else
                                                   "; 'medtorch info FOLDER' lists them"),
        )
    return next(iter(groups.values()))


def _series_files(folder: Path, scan: _Scan, series_uid: str | None, notes: list[str]) -> list[_Header]:
    """:func:`_choose_series`, then refuse unreadable files of the chosen series."""
    headers = _choose_series(folder, scan, series_uid)
    uid = _text(headers[0].ds, "SeriesInstanceUID")
    _refuse_broken(folder, [b for b in scan.broken if b.series_uid == uid], f"of series {uid}")
    others = [b for b in scan.broken if b.series_uid is not None and b.series_uid != uid]
    if others:
        notes.append(f"{len(others)} unreadable DICOM file(s) of other series were skipped")
    return headers


def _headers_for_file(path: Path, series_uid: str | None) -> list[_Header]:
    kind, value = _read_header(path)
    if kind == "broken":
        raise MedTorchInputError(
            f"{path.name} cannot be read: {value.reason}", "copy or export the file again, or give the series folder"
        )
    if kind != "image":
        raise MedTorchInputError(
            f"{path.name} is not a DICOM image" + (" (it is a DICOM object without pixels)" if kind == "non-image" else ""),
            "give a DICOM image file or the folder of a DICOM series",
        )
    uid = _text(value, "SeriesInstanceUID")
    if series_uid is not None and uid != str(series_uid).strip():
        raise MedTorchInputError(
            f"{path.name} belongs to series {uid}, not {series_uid}",
            "give the folder that holds the wanted series, or leave out series_uid",
        )
    return [_Header(path, value)]


def _dedupe(frames: list[_Frame], notes: list[str]) -> list[_Frame]:
    """Drop repeated copies of one SOP instance (the same file copied twice)."""
    seen: set[str] = set()
    out = []
    for f in frames:
        if f.uid not in seen:
            seen.add(f.uid)
            out.append(f)
    if len(out) < len(frames):
        notes.append(f"{len(frames) - len(out)} duplicate copies of images (same SOPInstanceUID) were ignored")
    return out


def _volume_kind(ds: Any, samples: int) -> VolumeKind:
    if samples > 1:
        return "vector"
    return "label" if _sop_class_name(ds) == "Segmentation Storage" else "scalar"


def _check_segmentation(ds: Any, source: Path) -> None:
    """Only single-segment binary DICOM SEG objects are plain label volumes."""
    if _sop_class_name(ds) != "Segmentation Storage":
        return
    segments = _get(ds, "SegmentSequence")
    n = len(segments) if segments is not None else 0
    if n > 1 or _text(ds, "SegmentationType") == "FRACTIONAL":
        raise MedTorchInputError(
            f"{source.name} is a DICOM segmentation with {n} segments"
            + (" (fractional)" if _text(ds, "SegmentationType") == "FRACTIONAL" else ""),
            "load it in Slicer with the QuantitativeReporting extension (DICOM module), then export one "
            "label map per segment",
        )


def read_dicom_series(path: str | os.PathLike[str], series_uid: str | None = None) -> Volume:
    """Read a DICOM series folder, or one multi-frame DICOM file, as a 3D volume.

    Args:
        path: a folder (scanned recursively; non-DICOM and non-image files are skipped)
            or one DICOM file holding several frames (enhanced CT/MR, RT dose, ...).
        series_uid: SeriesInstanceUID to read when the folder holds several series
            (:func:`list_series` lists them).

    Returns:
        A volume in LPS: ``array[z, y, x]`` with RescaleSlope/Intercept applied (float32
        when they are not integers, else int16/int32), ``kind="label"`` for a DICOM SEG,
        ``"vector"`` for colour images, and ``metadata`` holding the main header values and
        the reader's ``"warnings"``.

    Raises:
        MedTorchInputError: several series and no ``series_uid``; no DICOM image; a single
            2D image; missing slices, uneven spacing, gantry tilt, mixed orientations, image
            sizes or volumes in one series; truncated/corrupt files; compressed pixel data
            without an installed decoder.
    """
    p = Path(path)
    if not p.exists():
        raise MedTorchInputError(f"{p} does not exist", "check the path of the DICOM file or folder")
    notes: list[str] = []
    if p.is_dir():
        headers = _series_files(p, _scan_folder(p), series_uid, notes)
    else:
        headers = _headers_for_file(p, series_uid)
    uid = _text(headers[0].ds, "SeriesInstanceUID")
    for h in headers:
        _check_segmentation(h.ds, h.path)
    frames = _dedupe([f for h in sorted(headers, key=lambda h: str(h.path)) for f in _frames_of(h)], notes)
    frames, geometry, geo_notes = _check_and_sort(frames, uid, from_folder=p.is_dir())
    notes.extend(geo_notes)
    first_ds = next(h.ds for h in headers if h.path == frames[0].path)
    planes = _load_stack(frames)
    kind = _volume_kind(first_ds, frames[0].samples)
    array = _rescaled_volume_array(planes, frames, label=kind == "label")
    meta = _metadata(first_ds, frames, geometry, p, notes)
    return Volume(array, geometry, kind, meta)
