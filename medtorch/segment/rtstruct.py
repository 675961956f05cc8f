"""Writing a segmentation as a DICOM RT Structure Set (RTSTRUCT), with a geometry check after every write.

:func:`write_rtstruct` writes a label map as an RTSTRUCT that references the DICOM series the
segmentation was computed on (read as :mod:`medtorch.segment.dicom_seg` reads it: the same
grid, the same refusals; a series of single-frame images or one multi-frame image). Each
segment becomes one ROI with the segment's name and colour (the names and colours of
:mod:`medtorch.segment.terminology`, as SegmentTumor assigns them).

**Contours.** An RTSTRUCT holds planar polygons, one set per image plane. MedTorch traces
each segment's outline on each slice along the voxel *edges* (no smoothing, no
simplification other than merging collinear points), so a contour passes half a voxel
outside the centres of the boundary voxels, holes are separate contours inside the outer
one (the even-odd rule that radiotherapy systems apply), and a reader that fills the
polygons by voxel centre -- SlicerRT and most planning systems do -- gets exactly the
voxels of the label map back. The enclosed volume equals the voxel count times the voxel
volume.

**The geometry check.** The file is written to a temporary file beside the target and read
back with pydicom. Every contour is taken to the source grid (from its own points in
patient space), must lie in one image plane, and is filled by voxel centre with the
even-odd rule; each ROI's centroid (placed at its contours' own positions) and enclosed
volume are compared with the segment's. A centroid more than half a voxel away (along any
grid axis) or an enclosed volume differing by more than half a voxel refuses the output
(:class:`~medtorch.io.dicom_write.DicomGeometryError`), and the temporary file is removed.
Since the contours follow the voxel edges, a correct file differs by 0 in both.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from medtorch.errors import MedTorchInputError
from medtorch.io.dicom_write import DicomGeometryError
from medtorch.segment.dicom_seg import ALGORITHM_TYPES, SegmentCheck, _source_of, _stats
from medtorch.volume import Geometry, Volume

__all__ = ["RoiCheck", "RtStructWriteResult", "write_rtstruct", "check_rtstruct", "slice_contours"]

RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
_STUDY_REFERENCE_CLASS = "1.2.840.10008.3.1.2.3.1"  # RT Referenced Study: Detached Study Management
_PATIENT_STUDY = ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "PatientAge",
                  "OtherPatientIDsSequence", "PatientIdentityRemoved", "DeidentificationMethod", "StudyInstanceUID",
                  "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName",
                  "StudyDescription", "SpecificCharacterSet")


@dataclass(frozen=True)
class RoiCheck(SegmentCheck):
    """One ROI as intended and as read back (LPS mm, mm³): a SEG segment's check plus its contours."""

    contours: int = 0
    differing_voxels: int = 0  # voxels filled from the contours that differ from the label map


@dataclass(frozen=True)
class RtStructWriteResult:
    path: Path
    series_instance_uid: str
    sop_instance_uid: str
    source_series_uid: str
    rois: tuple[RoiCheck, ...] = field(default_factory=tuple)


# -- contours ----------------------------------------------------------------------------------


def slice_contours(mask: np.ndarray) -> list[np.ndarray]:
    """Closed outlines of a 2D mask ``[row, column]`` along the pixel edges, as ``(N, 2)`` arrays of
    (column, row) pixel coordinates (corners at half-integers); holes are contours of their own."""
    m = np.pad(np.asarray(mask, bool), 1)
    inside = m[1:-1, 1:-1]
    edges: dict[tuple[int, int], list[tuple[int, int]]] = {}

    def add(sel: np.ndarray, start: tuple[int, int], end: tuple[int, int]) -> None:
        ys, xs = np.nonzero(sel)
        for y, x in zip(ys.tolist(), xs.tolist()):
            edges.setdefault((x + start[0], y + start[1]), []).append((x + end[0], y + end[1]))

    # corners (cx, cy) on the lattice: pixel (y, x) spans cx in [x, x+1], cy in [y, y+1]; inside on the right
    add(inside & ~m[:-2, 1:-1], (0, 0), (1, 0))  # top
    add(inside & ~m[1:-1, 2:], (1, 0), (1, 1))  # right
    add(inside & ~m[2:, 1:-1], (1, 1), (0, 1))  # bottom
    add(inside & ~m[1:-1, :-2], (0, 1), (0, 0))  # left
    loops: list[np.ndarray] = []
    while edges:
        start = next(iter(edges))
        loop = [start]
        point = start
        while True:
            ends = edges[point]
            nxt = ends.pop()
            if not ends:
                del edges[point]
            if nxt == start:
                break
            loop.append(nxt)
            point = nxt
        pts = np.array(loop, dtype=np.float64)
        # drop collinear points
        prev, nxt_pts = np.roll(pts, 1, axis=0), np.roll(pts, -1, axis=0)
        cross = (pts[:, 0] - prev[:, 0]) * (nxt_pts[:, 1] - pts[:, 1]) - (pts[:, 1] - prev[:, 1]) * (nxt_pts[:, 0] - pts[:, 0])
        loops.append(pts[cross != 0] - 0.5)
    return loops


def _contours_for_writer(points_ijk: np.ndarray) -> np.ndarray:
    """A contour's points as written, in source-grid indices (i, j, k). (Tests replace this with a
    mirrored one to prove that the geometry check catches it.)"""
    return points_ijk


_contour_points: Callable[[np.ndarray], np.ndarray] = _contours_for_writer


def _fill(polygons: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Pixels ``[row, column]`` whose centres lie inside an odd number of the (column, row) polygons."""
    from matplotlib.path import Path as MplPath

    out = np.zeros(shape, bool)
    for poly in polygons:
        lo = np.clip(np.floor(poly.min(axis=0)).astype(int), 0, None)
        hi = np.minimum(np.ceil(poly.max(axis=0)).astype(int), [shape[1] - 1, shape[0] - 1])
        if np.any(hi < lo):
            continue
        xs, ys = np.meshgrid(np.arange(lo[0], hi[0] + 1), np.arange(lo[1], hi[1] + 1))
        inside = MplPath(np.vstack([poly, poly[:1]]), closed=True).contains_points(  # last vertex: the closing one
            np.column_stack([xs.ravel(), ys.ravel()]))
        out[ys.ravel()[inside], xs.ravel()[inside]] ^= True
    return out


# -- the check ---------------------------------------------------------------------------------


def check_rtstruct(path: str | os.PathLike[str], masks: Mapping[int, tuple[int, str, np.ndarray]],
                   geometry: Geometry, source_series_uid: str, frame_of_reference: str) -> tuple[RoiCheck, ...]:
    """Read the RTSTRUCT at ``path`` back, fill its contours on ``geometry`` and compare each ROI with
    the intended mask ``{ROI number: (label value, name, mask [z, y, x])}``; raise
    :class:`DicomGeometryError` when a centroid or the enclosed volume differs by more than half a voxel."""
    import pydicom

    try:
        ds = pydicom.dcmread(str(path))
        contours_by_roi = {int(rc.ReferencedROINumber): list(getattr(rc, "ContourSequence", []))
                           for rc in ds.ROIContourSequence}
        names = {int(r.ROINumber): str(r.ROIName) for r in ds.StructureSetROISequence}
        frame_refs = [str(f.FrameOfReferenceUID) for f in ds.ReferencedFrameOfReferenceSequence]
        series_refs = [str(s.SeriesInstanceUID) for f in ds.ReferencedFrameOfReferenceSequence
                       for st in f.RTReferencedStudySequence for s in st.RTReferencedSeriesSequence]
    except Exception as exc:  # noqa: BLE001 - an unreadable file is a failed check
        raise DicomGeometryError(f"the RTSTRUCT just written cannot be read back ({type(exc).__name__}: {exc}); "
                                 "it was not kept", "report this with the source series; nothing was written") from exc
    problems = []
    if frame_of_reference not in frame_refs:
        problems.append(f"it does not refer to the source's frame of reference {frame_of_reference} ({frame_refs})")
    if source_series_uid not in series_refs:
        problems.append(f"it does not reference the source series {source_series_uid} (it references {series_refs})")
    to_ijk = np.linalg.inv(geometry.direction @ np.diag(geometry.spacing))
    voxel = geometry.voxel_volume_mm3
    nx, ny, nz = geometry.size
    checks = []
    for number, (value, name, mask) in sorted(masks.items()):
        want_centroid, want_volume = _stats(mask.astype(np.float64), geometry)
        assert want_centroid is not None
        per_slice: dict[int, list[np.ndarray]] = {}
        plane_k: dict[int, list[float]] = {}
        for c in contours_by_roi.get(number, []):
            pts = np.array([float(v) for v in c.ContourData], dtype=np.float64).reshape(-1, 3)
            ijk = geometry.physical_to_index(pts)
            k = float(ijk[:, 2].mean())
            kr = int(round(k))
            if np.ptp(ijk[:, 2]) > 0.01 or not 0 <= kr < nz:
                problems.append(f"ROI {number} '{name}' has a contour that does not lie in an image plane of the "
                                f"source series (index {k:.2f} along the slice normal)")
                continue
            per_slice.setdefault(kr, []).append(ijk[:, :2])
            plane_k.setdefault(kr, []).append(k)
        filled = np.zeros(mask.shape, bool)
        total, moment = 0.0, np.zeros(3)
        for kr, polys in per_slice.items():
            plane = _fill(polys, (ny, nx))
            filled[kr] = plane
            ys, xs = np.nonzero(plane)
            if xs.size:
                k = float(np.mean(plane_k[kr]))  # the contours' own plane
                total += xs.size
                moment += np.array([xs.sum(), ys.sum(), k * xs.size], dtype=np.float64)
        got_centroid = geometry.index_to_physical((moment / total)[None])[0] if total else None
        got_volume = total * voxel
        shift = float("inf") if got_centroid is None else float(np.max(np.abs(to_ijk @ (got_centroid - want_centroid))))
        dv = abs(got_volume - want_volume) / voxel
        differing = int(np.count_nonzero(filled != mask))
        check = RoiCheck(number, value, name, _xyz(want_centroid), None if got_centroid is None else _xyz(got_centroid),
                         want_volume, got_volume, shift, dv, sum(len(p) for p in per_slice.values()), differing)
        checks.append(check)
        if names.get(number) != name:
            problems.append(f"ROI {number} is named {names.get(number)!r} instead of {name!r}")
        if got_centroid is None:
            problems.append(f"ROI {number} '{name}' (label {value}) has no contour in the file")
        elif not check.ok:
            problems.append(
                f"ROI {number} '{name}' (label {value}) has its centroid at {np.round(got_centroid, 2).tolist()} mm "
                f"instead of {np.round(want_centroid, 2).tolist()} mm ({shift:.2f} voxels off) and encloses "
                f"{got_volume:.1f} mm³ instead of {want_volume:.1f} mm³ ({dv:.2f} voxels off; {differing} voxels "
                "differ)")
    if problems:
        raise DicomGeometryError(
            "the RTSTRUCT failed its geometry check (tolerance: half a voxel for each ROI's centroid and enclosed "
            "volume) and was not kept: " + "; ".join(problems),
            "nothing was written; this is a defect of the writer or of the source series' geometry: report it "
            "with the source series (check it first with 'medtorch info FOLDER')")
    return tuple(checks)


def _xyz(v: np.ndarray) -> tuple[float, float, float]:
    return (float(v[0]), float(v[1]), float(v[2]))


# -- writing -------------------------------------------------------------------------------------


def write_rtstruct(
    segmentation: Volume,
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    source_series_uid: str | None = None,
    names: Mapping[int, str] | None = None,
    algorithm_type: str = "SEMIAUTOMATIC",
    series_description: str = "MedTorch structures",
    series_number: int = 302,
) -> RtStructWriteResult:
    """Write the label map ``segmentation`` as an RTSTRUCT file ``out`` referencing the series at ``source``.

    Args:
        segmentation: a label map on the source series' grid (0 background, each other value one ROI).
        source: the DICOM folder (or file) of the series the segmentation was computed on.
        out: the file to write (``.dcm``); replaced atomically, only after the check passes.
        source_series_uid: which series of a folder that holds several.
        names: label value -> ROI name (unnamed values are called ``Class <value>``); the colour
            is the segment's colour of :mod:`medtorch.segment.terminology`.
        algorithm_type: ROIGenerationAlgorithm: ``AUTOMATIC``, ``SEMIAUTOMATIC`` or ``MANUAL``.
        series_description, series_number: of the new RTSTRUCT series.

    Raises:
        MedTorchInputError: the source is not a usable image series; the segmentation is not on
            its grid, is empty or is not a label map.
        DicomGeometryError: the written file failed the geometry check (it was removed).
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence as DicomSequence
    from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

    import medtorch
    from medtorch.io.atomic import atomic_path
    from medtorch.segment.terminology import class_terms

    algorithm = str(algorithm_type).upper()
    if algorithm not in ALGORITHM_TYPES:
        raise MedTorchInputError(f"unknown ROI generation algorithm {algorithm_type!r}", "use " + ", ".join(ALGORITHM_TYPES))
    src = _source_of(segmentation, source, source_series_uid)
    array = np.asarray(segmentation.array)
    if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)) or array.min() < 0:
        raise MedTorchInputError("the segmentation is not a label map (it has negative, non-integer or NaN values)",
                                 "give a label map (0 = background, 1, 2 ... = structures); an RTSTRUCT holds "
                                 "outlines, not probabilities (a probability map can be written as a fractional SEG)")
    values = [int(v) for v in np.unique(array) if v != 0]
    if not values:
        raise MedTorchInputError("the segmentation is empty (no voxel belongs to a segment)",
                                 "check the label map: there is nothing to export")
    terms = class_terms(values, dict(names or {}))
    first = src.datasets[0]
    g = src.geometry
    # the image (and frame) each slice k of the grid comes from
    slice_refs: list[tuple[str, str, int | None]]
    if src.frame_numbers is None:
        slice_refs = [(str(ds.SOPClassUID), str(ds.SOPInstanceUID), None) for ds in src.datasets]
    else:
        slice_refs = [(str(first.SOPClassUID), str(first.SOPInstanceUID), n + 1) for n in src.frame_numbers]

    def image_ref(k: int) -> Any:
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID, frame = slice_refs[k]
        if frame is not None:
            item.ReferencedFrameNumber = frame
        return item

    now = datetime.datetime.now()
    series_uid, sop_uid = generate_uid(), generate_uid()
    frame_of_reference = str(getattr(first, "FrameOfReferenceUID", ""))
    ds = Dataset()
    for keyword in _PATIENT_STUDY:
        if keyword in first:
            ds.add(first[keyword])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(RTSTRUCT_SOP_CLASS)
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = RTSTRUCT_SOP_CLASS, sop_uid
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID, ds.SeriesNumber = series_uid, int(series_number)
    ds.SeriesDescription = series_description[:64]
    ds.Manufacturer = ds.ManufacturerModelName = "MedTorch"
    ds.SoftwareVersions = f"MedTorch {medtorch.__version__}"
    ds.InstanceNumber = 1
    ds.StructureSetLabel = series_description[:16]
    ds.StructureSetName = series_description[:64]
    ds.StructureSetDate, ds.StructureSetTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.SeriesDate, ds.SeriesTime = ds.StructureSetDate, ds.StructureSetTime
    series_item = Dataset()
    series_item.SeriesInstanceUID = src.series_uid
    series_item.ContourImageSequence = DicomSequence([image_ref(k) for k in range(len(slice_refs))])
    study_item = Dataset()
    study_item.ReferencedSOPClassUID = _STUDY_REFERENCE_CLASS
    study_item.ReferencedSOPInstanceUID = str(first.StudyInstanceUID)
    study_item.RTReferencedSeriesSequence = DicomSequence([series_item])
    for_item = Dataset()
    for_item.FrameOfReferenceUID = frame_of_reference
    for_item.RTReferencedStudySequence = DicomSequence([study_item])
    ds.ReferencedFrameOfReferenceSequence = DicomSequence([for_item])
    rois, roi_contours, observations = [], [], []
    masks: dict[int, tuple[int, str, np.ndarray]] = {}
    for number, value in enumerate(values, start=1):
        t = terms[value]
        mask = array == value
        masks[number] = (value, t.name, mask)
        roi = Dataset()
        roi.ROINumber, roi.ReferencedFrameOfReferenceUID = number, frame_of_reference
        roi.ROIName, roi.ROIGenerationAlgorithm = t.name[:64], algorithm
        rois.append(roi)
        contours = []
        for k in np.nonzero(mask.any(axis=(1, 2)))[0].tolist():
            for loop in slice_contours(mask[k]):
                ijk = _contour_points(np.column_stack([loop, np.full(len(loop), float(k))]))
                pts = g.index_to_physical(ijk)
                c = Dataset()
                c.ContourImageSequence = DicomSequence([image_ref(k)])
                c.ContourGeometricType = "CLOSED_PLANAR"
                c.NumberOfContourPoints = len(pts)
                c.ContourData = [f"{v:.10g}" for v in pts.ravel()]
                contours.append(c)
        rc = Dataset()
        rc.ReferencedROINumber = number
        rc.ROIDisplayColor = [int(round(255 * v)) for v in t.color]
        rc.ContourSequence = DicomSequence(contours)
        roi_contours.append(rc)
        obs = Dataset()
        obs.ObservationNumber, obs.ReferencedROINumber = number, number
        obs.RTROIInterpretedType = ""  # not known to MedTorch: the planner sets GTV, ORGAN ...
        obs.ROIInterpreter = ""
        observations.append(obs)
    ds.StructureSetROISequence = DicomSequence(rois)
    ds.ROIContourSequence = DicomSequence(roi_contours)
    ds.RTROIObservationsSequence = DicomSequence(observations)
    with atomic_path(out) as tmp:
        pydicom.dcmwrite(str(tmp), ds, enforce_file_format=True)
        checks = check_rtstruct(tmp, masks, g, src.series_uid, frame_of_reference)
    return RtStructWriteResult(Path(out), series_uid, sop_uid, src.series_uid, checks)
