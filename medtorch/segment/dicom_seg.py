"""Writing a segmentation as a DICOM SEG object, with a geometry check after every write.

:func:`write_dicom_seg` writes a label map (binary segments) or a probability map (one
fractional segment) as a DICOM Segmentation (``highdicom``, the optional ``dicom`` extra)
that references the DICOM series the segmentation was computed on:

* the source series is read with MedTorch's own DICOM reader (:mod:`medtorch.io.dicom`):
  the same grid, sorted by position along the slice normal, the same refusals (missing
  slices, gantry tilt, ...); the label map must lie on that grid, or it is refused. A
  series of single-frame images and one multi-frame (enhanced) image are both accepted;
  for the latter the SEG's frames follow the source's frame numbers;
* segments carry the standard terminology codes of :mod:`medtorch.segment.terminology`
  (the codes SegmentTumor assigns), looked up by the names given for the label values;
* the SEG gets a new SeriesInstanceUID and SOPInstanceUID, the source's Study, Patient and
  FrameOfReference, and references each source image it was computed on.

**The geometry check.** The file is written to a temporary file beside the target and read
back (pydicom for the positions, orientation, spacing and pixels; highdicom for the
object). In patient space (LPS mm) each segment's centroid and volume are computed from
what was read and compared with those of the segmentation that was meant to be written; a
centroid more than half a voxel away (along any grid axis) or a volume differing by more
than half a voxel refuses the output: :class:`DicomGeometryError` is raised and the
temporary file is removed, so a wrong file is never left behind. Only a file that passes
is renamed to the target.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from medtorch.errors import MedTorchInputError
from medtorch.io.dicom_write import DicomGeometryError
from medtorch.volume import Geometry, Volume

__all__ = [
    "DicomGeometryError",
    "SegmentCheck",
    "SegWriteResult",
    "MAX_SHIFT_VOXELS",
    "GRID_TOL_VOXELS",
    "write_dicom_seg",
    "check_dicom_seg",
    "seg_segment_stats",
    "ALGORITHM_TYPES",
    "parse_names",
]

#: A written segment whose centroid (along a grid axis) or volume differs from the intended
#: one by more than this many voxels refuses the output.
MAX_SHIFT_VOXELS = 0.5
#: The label map's grid may differ from the source series' grid by this many voxels (corners).
GRID_TOL_VOXELS = 0.01
#: Segment algorithm types of DICOM SEG (SegmentAlgorithmType).
ALGORITHM_TYPES = ("AUTOMATIC", "SEMIAUTOMATIC", "MANUAL")
_INSTALL_HINT = "install the DICOM extra: pip install 'highdicom>=0.22,<1' (or pip install medtorch[dicom])"


@dataclass(frozen=True)
class SegmentCheck:
    """One segment as intended and as read back from the written file (LPS mm, mm³)."""

    number: int
    label_value: int
    name: str
    intended_centroid: tuple[float, float, float]
    written_centroid: tuple[float, float, float] | None
    intended_volume_mm3: float
    written_volume_mm3: float
    shift_voxels: float  # largest centroid difference along a grid axis, in voxels (inf: missing)
    volume_diff_voxels: float

    @property
    def ok(self) -> bool:
        return self.shift_voxels <= MAX_SHIFT_VOXELS and self.volume_diff_voxels <= MAX_SHIFT_VOXELS


@dataclass(frozen=True)
class SegWriteResult:
    """What :func:`write_dicom_seg` wrote and what its geometry check found."""

    path: Path
    series_instance_uid: str
    sop_instance_uid: str
    source_series_uid: str
    segmentation_type: str
    segments: tuple[SegmentCheck, ...] = field(default_factory=tuple)


# -- the source series ---------------------------------------------------------------------


@dataclass
class _Source:
    datasets: list[Any]  # pydicom datasets (no pixel data), in the reader's slice order
    geometry: Geometry
    series_uid: str
    frame_numbers: list[int] | None = None  # multi-frame source: file frame index of each slice k


def _read_source(source: str | os.PathLike[str], series_uid: str | None) -> _Source:
    """The source series' images in MedTorch's reader order, and its grid."""
    from medtorch.io import dicom as d

    p = Path(source)
    if not p.exists():
        raise MedTorchInputError(f"the source series {p} does not exist",
                                 "give the DICOM folder (or file) of the series the segmentation was computed on")
    notes: list[str] = []
    headers = d._series_files(p, d._scan_folder(p), series_uid, notes) if p.is_dir() else d._headers_for_file(p, series_uid)
    uid = d._text(headers[0].ds, "SeriesInstanceUID")
    if any(d._sop_class_name(h.ds) == "Segmentation Storage" for h in headers):
        raise MedTorchInputError(f"the source series {uid} in {p} is itself a DICOM SEG",
                                 "give the image series (CT, MR, PET ...) the segmentation was computed on")
    frames = d._dedupe([f for h in sorted(headers, key=lambda h: str(h.path)) for f in d._frames_of(h)], notes)
    frames, geometry, _ = d._check_and_sort(frames, uid, from_folder=p.is_dir())
    if frames[0].samples != 1:
        raise MedTorchInputError(f"the source series {uid} is a colour image", "give a grey-scale image series")
    by_path = {h.path: h.ds for h in headers}
    if any(f.num_file_frames > 1 for f in frames):
        files = {f.path for f in frames}
        if len(files) > 1 or len(frames) != frames[0].num_file_frames:
            raise MedTorchInputError(
                f"the source series {uid} mixes multi-frame files ({len(files)} files)",
                "give one multi-frame file, or a series of single-frame images")
        # one multi-frame image: the SEG's frames follow the source's frame numbers
        return _Source([by_path[frames[0].path]], geometry, uid, [f.index for f in frames])
    return _Source([by_path[f.path] for f in frames], geometry, uid)


def _grid_problem(label: Geometry, source: Geometry) -> str | None:
    """Why ``label`` is not on ``source``'s grid, or None."""
    if tuple(label.size) != tuple(source.size):
        return (f"its size is {tuple(int(v) for v in label.size)} voxels (x, y, z) but the series has "
                f"{tuple(int(v) for v in source.size)}")
    ijk = source.physical_to_index(label.corners())
    want = source.physical_to_index(source.corners())
    worst = float(np.max(np.abs(ijk - want)))
    if worst > GRID_TOL_VOXELS:
        return (f"its corners lie up to {worst:.3g} voxels from the series' corners (origin "
                f"{np.round(label.origin, 3).tolist()} mm vs {np.round(source.origin, 3).tolist()} mm, spacing "
                f"{np.round(label.spacing, 4).tolist()} vs {np.round(source.spacing, 4).tolist()} mm, directions "
                f"{np.round(label.direction, 3).tolist()} vs {np.round(source.direction, 3).tolist()})")
    return None


# -- what is meant to be written -------------------------------------------------------------



def _source_of(segmentation: Volume, source: Any, source_series_uid: str | None) -> Any:
    """The source series (:func:`_read_source`), refused unless the segmentation lies on its grid."""
    src = _read_source(source, source_series_uid)
    problem = _grid_problem(segmentation.geometry, src.geometry)
    if problem:
        raise MedTorchInputError(
            f"the segmentation is not on the grid of the source series {src.series_uid}: {problem}",
            "give the source series the segmentation was computed on (--source, and --source-series-uid for a "
            "folder of several series), or resample the segmentation onto that series first")
    return src

def _stats(weights: np.ndarray, geometry: Geometry) -> tuple[np.ndarray | None, float]:
    """Centroid (LPS) and volume (mm³) of a [z, y, x] weight array on ``geometry``."""
    total = float(weights.sum(dtype=np.float64))
    if total <= 0:
        return None, 0.0
    z, y, x = np.nonzero(weights)
    w = weights[z, y, x].astype(np.float64)
    mean_ijk = np.array([(x * w).sum(), (y * w).sum(), (z * w).sum()]) / total
    centroid = geometry.index_to_physical(mean_ijk[None, :])[0]
    return centroid, total * geometry.voxel_volume_mm3


def _mirror_free_frames(masks: np.ndarray) -> np.ndarray:
    """The SEG frames, [k, row, column, segment], in the source images' order: for the reader's
    ``array[z, y, x]`` of one slice, rows are y and columns are x. (Tests replace this function
    with a mirrored one to prove that the geometry check catches it.)"""
    return masks


_frames_for_writer: Callable[[np.ndarray], np.ndarray] = _mirror_free_frames


def _in_source_order(frames: np.ndarray, frame_numbers: Sequence[int] | None) -> np.ndarray:
    """Slices k (sorted along the normal) -> the frames of a multi-frame source, in its frame order."""
    if frame_numbers is None:
        return frames
    out = np.empty_like(frames)
    out[np.asarray(frame_numbers)] = frames
    return out


def _code(c: Any) -> Any:
    from highdicom.sr import CodedConcept

    return CodedConcept(value=c.value, scheme_designator=c.scheme, meaning=c.meaning)


# -- reading back ----------------------------------------------------------------------------


def _first(seq_parent: Any, keyword: str) -> Any:
    seq = getattr(seq_parent, keyword, None)
    return seq[0] if seq else None


def seg_segment_stats(path: str | os.PathLike[str]) -> tuple[dict[int, tuple[np.ndarray | None, float, str]], Any]:
    """Each segment of a written DICOM SEG, computed from the file alone: ``{segment number:
    (centroid in LPS mm or None when empty, volume in mm³, label)}``, and the dataset.

    Positions come from each frame's PlanePositionSequence, the axes from the shared
    PlaneOrientationSequence, spacing and slice step from PixelMeasuresSequence (a missing
    SpacingBetweenSlices is measured from the frames' positions)."""
    import pydicom

    ds = pydicom.dcmread(str(path))
    shared = ds.SharedFunctionalGroupsSequence[0]
    per_frame = ds.PerFrameFunctionalGroupsSequence
    orient = _first(shared, "PlaneOrientationSequence") or _first(per_frame[0], "PlaneOrientationSequence")
    measures = _first(shared, "PixelMeasuresSequence") or _first(per_frame[0], "PixelMeasuresSequence")
    iop = np.array([float(v) for v in orient.ImageOrientationPatient])
    row_cos, col_cos = iop[:3], iop[3:]
    normal = np.cross(row_cos, col_cos)
    row_spacing, col_spacing = (float(v) for v in measures.PixelSpacing)
    positions = np.array([[float(v) for v in _first(pf, "PlanePositionSequence").ImagePositionPatient]
                          for pf in per_frame])
    step = getattr(measures, "SpacingBetweenSlices", None)
    if step is None:
        along = np.unique(np.round(positions @ normal, 4))
        steps = np.diff(along)
        step = float(steps.min()) if steps.size else float(getattr(measures, "SliceThickness", 1.0))
    voxel_mm3 = row_spacing * col_spacing * float(step)
    pixels = ds.pixel_array
    if pixels.ndim == 2:
        pixels = pixels[None]
    if ds.SegmentationType == "FRACTIONAL":
        weights = pixels.astype(np.float64) / float(ds.MaximumFractionalValue)
    else:
        weights = (pixels > 0).astype(np.float64)
    rows = np.arange(weights.shape[1], dtype=np.float64)
    cols = np.arange(weights.shape[2], dtype=np.float64)
    sums: dict[int, list[Any]] = {int(s.SegmentNumber): [0.0, np.zeros(3), str(s.SegmentLabel)]
                                  for s in ds.SegmentSequence}
    for f, pf in enumerate(per_frame):
        ident = _first(pf, "SegmentIdentificationSequence") or _first(shared, "SegmentIdentificationSequence")
        number = int(ident.ReferencedSegmentNumber)  # shared when the SEG holds one segment
        w = weights[f]
        total = float(w.sum())
        if total == 0 or number not in sums:
            continue
        sr = float((w.sum(axis=1) * rows).sum())
        sc = float((w.sum(axis=0) * cols).sum())
        sums[number][0] += total
        sums[number][1] += total * positions[f] + sc * col_spacing * row_cos + sr * row_spacing * col_cos
    out = {n: ((s[1] / s[0]) if s[0] > 0 else None, s[0] * voxel_mm3, s[2]) for n, s in sums.items()}
    return out, ds


def _xyz(v: np.ndarray) -> tuple[float, float, float]:
    return (float(v[0]), float(v[1]), float(v[2]))


def check_dicom_seg(path: str | os.PathLike[str], intended: Mapping[int, tuple[int, str, np.ndarray, float]],
                    geometry: Geometry, source_series_uid: str, frame_of_reference: str) -> tuple[SegmentCheck, ...]:
    """Compare the SEG at ``path`` with what was meant to be written; raise :class:`DicomGeometryError`
    when a segment's centroid or volume differs by more than :data:`MAX_SHIFT_VOXELS` voxels.

    ``intended``: ``{segment number: (label value, name, centroid LPS, volume mm³)}``."""
    import highdicom as hd

    try:
        found, ds = seg_segment_stats(path)
        hd.seg.segread(str(path))  # highdicom must accept what it wrote
    except Exception as exc:  # noqa: BLE001 - an unreadable file is a failed check
        raise DicomGeometryError(f"the DICOM SEG just written cannot be read back ({type(exc).__name__}: {exc}); "
                                 "it was not kept", "report this with the source series; nothing was written") from exc
    problems = []
    if str(getattr(ds, "FrameOfReferenceUID", "")) != frame_of_reference:
        problems.append(f"its FrameOfReferenceUID {getattr(ds, 'FrameOfReferenceUID', None)} is not the source's "
                        f"{frame_of_reference}")
    refs = [str(s.SeriesInstanceUID) for s in getattr(ds, "ReferencedSeriesSequence", [])]
    if source_series_uid not in refs:
        problems.append(f"it does not reference the source series {source_series_uid} (it references {refs})")
    to_ijk = np.linalg.inv(geometry.direction @ np.diag(geometry.spacing))
    voxel = geometry.voxel_volume_mm3
    checks = []
    for number, (value, name, centroid, volume) in sorted(intended.items()):
        got_centroid, got_volume, _ = found.get(number, (None, 0.0, ""))
        if got_centroid is None:
            shift = float("inf")
        else:
            shift = float(np.max(np.abs(to_ijk @ (got_centroid - centroid))))
        dv = abs(got_volume - volume) / voxel
        check = SegmentCheck(number, value, name, _xyz(centroid), None if got_centroid is None else _xyz(got_centroid),
                             float(volume), float(got_volume), shift, float(dv))
        checks.append(check)
        if got_centroid is None:
            problems.append(f"segment {number} '{name}' (label {value}) is missing or empty in the file")
        elif not check.ok:
            problems.append(
                f"segment {number} '{name}' (label {value}) has its centroid at "
                f"{np.round(got_centroid, 2).tolist()} mm instead of {np.round(centroid, 2).tolist()} mm "
                f"({shift:.2f} voxels off) and a volume of {got_volume:.1f} mm³ instead of {volume:.1f} mm³ "
                f"({dv:.2f} voxels off)")
    extra = sorted(set(found) - set(intended))
    if extra:
        problems.append(f"it holds segments {extra} that were not meant to be written")
    if problems:
        raise DicomGeometryError(
            "the DICOM SEG failed its geometry check (tolerance: half a voxel) and was not kept: "
            + "; ".join(problems),
            "nothing was written; this is a defect of the writer or of the source series' geometry: "
            "report it with the source series (check it first with 'medtorch info FOLDER')")
    return tuple(checks)


# -- writing ---------------------------------------------------------------------------------


def write_dicom_seg(
    segmentation: Volume,
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    source_series_uid: str | None = None,
    names: Mapping[int, str] | None = None,
    fractional: bool = False,
    algorithm_type: str = "SEMIAUTOMATIC",
    series_description: str = "MedTorch segmentation",
    series_number: int = 300,
) -> SegWriteResult:
    """Write ``segmentation`` as a DICOM SEG file ``out`` referencing the series at ``source``.

    Args:
        segmentation: a label map on the source series' grid (integer values; 0 is
            background, each other value one segment), or with ``fractional=True`` a
            probability map (values in [0, 1]), written as one fractional segment.
        source: the DICOM folder (or file) of the series the segmentation was computed on.
        out: the file to write (``.dcm``); replaced atomically, only after the check passes.
        source_series_uid: which series of a folder that holds several.
        names: label value -> segment name; standard names (``"Necrosis"``, ``"Edema"``,
            ``"Enhancing tumor"``, ``"Tumor"``, BraTS ``"TC"``/``"WT"``/``"ET"``, aliases)
            get their standard codes, others are coded as *Neoplasm* under their own name.
        fractional: write a FRACTIONAL (probability) segmentation.
        algorithm_type: ``AUTOMATIC``, ``SEMIAUTOMATIC`` or ``MANUAL``.
        series_description, series_number: of the new SEG series.

    Returns:
        A :class:`SegWriteResult` with the new UIDs and each segment's check.

    Raises:
        MedTorchInputError: highdicom missing; the source is not a usable image series;
            the segmentation is not on its grid, is empty, or has values that are not labels
            (or not probabilities).
        DicomGeometryError: the written file failed the geometry check (it was removed).
    """
    try:
        import highdicom as hd
        from pydicom.sr.codedict import codes
        from pydicom.uid import generate_uid
    except ImportError as exc:
        raise MedTorchInputError("writing DICOM SEG needs the highdicom package, which is not installed",
                                 _INSTALL_HINT) from exc
    import medtorch
    from medtorch.io.atomic import atomic_path
    from medtorch.segment.terminology import class_terms

    algorithm = str(algorithm_type).upper()
    if algorithm not in ALGORITHM_TYPES:
        raise MedTorchInputError(f"unknown segment algorithm type {algorithm_type!r}",
                                 "use " + ", ".join(ALGORITHM_TYPES))
    src = _source_of(segmentation, source, source_series_uid)
    array = np.asarray(segmentation.array)
    if not np.all(np.isfinite(array)):
        raise MedTorchInputError("the segmentation holds NaN or infinite values", "give a label map or probability map")
    if fractional:
        if array.min() < 0 or array.max() > 1:
            raise MedTorchInputError(
                f"a fractional segmentation needs values between 0 and 1; this one spans {array.min():g} to "
                f"{array.max():g}", "give a probability map, or leave out --fractional for a label map")
        max_value = 255
        quantized = np.round(array.astype(np.float64) * max_value) / max_value  # what the file can hold
        values = [1]
        weights = {1: quantized}
        masks: np.ndarray = quantized.astype(np.float32)[..., None]
    else:
        if not np.all(array == np.round(array)) or array.min() < 0:
            raise MedTorchInputError(
                "the segmentation is not a label map (it has negative or non-integer values)",
                "give a label map (0 = background, 1, 2 ... = segments), or add --fractional for a probability map")
        values = [int(v) for v in np.unique(array) if v != 0]
        weights = {v: (array == v).astype(np.float64) for v in values}
        masks = np.stack([array == v for v in values], axis=-1) if values else np.zeros(array.shape + (0,), bool)
    if not values or all(w.sum() == 0 for w in weights.values()):
        raise MedTorchInputError("the segmentation is empty (no voxel belongs to a segment)",
                                 "check the label map: there is nothing to export")
    given = dict(names or {})
    if fractional and 1 not in given and given:
        given = {1: next(iter(given.values()))}
    terms = class_terms(values, given)

    descriptions = []
    intended: dict[int, tuple[int, str, np.ndarray, float]] = {}
    algo_id = None
    if algorithm != "MANUAL":
        algo_id = hd.AlgorithmIdentificationSequence(name="MedTorch", version=medtorch.__version__,
                                                     family=codes.cid7162.ArtificialIntelligence)
    for number, value in enumerate(values, start=1):
        t = terms[value]
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=t.name[:64],
            segmented_property_category=_code(t.category), segmented_property_type=_code(t.type),
            algorithm_type=algorithm, algorithm_identification=algo_id,
            anatomic_regions=[_code(t.region)] if t.region else None,
            display_color=hd.color.CIELabColor.from_rgb(*(int(round(255 * c)) for c in t.color)),
        ))
        centroid, volume = _stats(weights[value], src.geometry)
        if centroid is None:
            raise MedTorchInputError(f"segment {value} is empty", "check the probability map")
        intended[number] = (value, t.name, centroid, volume)

    first = src.datasets[0]
    seg_type = "FRACTIONAL" if fractional else "BINARY"
    series_uid, sop_uid = generate_uid(), generate_uid()
    seg = hd.seg.Segmentation(
        source_images=src.datasets,
        pixel_array=_in_source_order(_frames_for_writer(masks), src.frame_numbers),
        segmentation_type=seg_type,
        segment_descriptions=descriptions,
        series_instance_uid=series_uid,
        series_number=int(series_number),
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer="MedTorch",
        manufacturer_model_name="MedTorch",
        software_versions=f"MedTorch {medtorch.__version__}, highdicom {hd.__version__}",
        device_serial_number="0",
        max_fractional_value=255,
        content_description=series_description[:64],
        content_label="SEGMENTATION",
    )
    seg.SeriesDescription = series_description[:64]
    # highdicom copies PixelMeasures from the source header; a source's SpacingBetweenSlices
    # may disagree with its positions (the reader measures the step from the positions).
    for item in seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence:
        item.SpacingBetweenSlices = f"{float(src.geometry.spacing[2]):.10g}"
    frame_of_reference = str(getattr(first, "FrameOfReferenceUID", ""))
    with atomic_path(out) as tmp:
        seg.save_as(str(tmp))
        checks = check_dicom_seg(tmp, intended, src.geometry, src.series_uid, frame_of_reference)
    return SegWriteResult(Path(out), series_uid, sop_uid, src.series_uid, seg_type, checks)


def parse_names(items: Sequence[str] | None) -> dict[int, str]:
    """``["1=Necrosis", "2=Edema"]`` (or one ``"1=Necrosis,2=Edema"``) -> ``{1: "Necrosis", 2: "Edema"}``."""
    out: dict[int, str] = {}
    for item in items or []:
        for part in str(item).split(","):
            if not part.strip():
                continue
            value, sep, name = part.partition("=")
            try:
                key = int(value.strip())
            except ValueError:
                key = -1
            if not sep or key < 0 or not name.strip():
                raise MedTorchInputError(f"cannot read the segment name {part!r}",
                                         "write VALUE=NAME, e.g. 1=Necrosis,2=Edema,3=Enhancing tumor")
            out[key] = name.strip()
    return out
