"""DICOM series reader (medtorch.io.dicom) on pydicom's and pydicom-data's real files.

Multi-slice series are built in a temporary folder from one real slice (CT_small.dcm,
MR_small.dcm, ...) with new UIDs, positions stepped along an oblique slice normal and
shuffled file names; SimpleITK's ImageSeriesReader (GDCM) is the geometry reference.

Tolerances: origin 1e-3 mm, spacing 1e-4 mm, direction 1e-5, voxels 1e-3 (float32).
"""

from __future__ import annotations

import hashlib
import math
import random
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
sitk = pytest.importorskip("SimpleITK")

from pydicom.data import get_testdata_file  # noqa: E402
from pydicom.dataset import Dataset  # noqa: E402
from pydicom.sequence import Sequence as DicomSequence  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402

from medtorch.errors import MedTorchInputError  # noqa: E402
from medtorch.io.dicom import SeriesInfo, list_series, read_dicom_series  # noqa: E402

ORIGIN_ATOL = 1e-3
SPACING_ATOL = 1e-4
DIRECTION_ATOL = 1e-5
VOXEL_ATOL = 1e-3


def _data(name: str) -> Path:
    path = get_testdata_file(name)
    if path is None:  # pragma: no cover - pydicom-data not installed
        pytest.skip(f"pydicom test file {name} is not available")
    return Path(path)


def _rotation(deg_z: float = 30.0, deg_x: float = 20.0, deg_y: float = -10.0) -> np.ndarray:
    """A proper rotation: its columns are an oblique (row, column, normal) frame."""
    z, x, y = (math.radians(a) for a in (deg_z, deg_x, deg_y))
    rz = np.array([[math.cos(z), -math.sin(z), 0], [math.sin(z), math.cos(z), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(x), -math.sin(x)], [0, math.sin(x), math.cos(x)]])
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    return rz @ rx @ ry


OBLIQUE = _rotation()
ORIGIN = np.array([-80.25, 40.5, 112.75])


def _ds_list(values: Sequence[float], fmt: str) -> list[str]:
    return [format(float(v), fmt) for v in values]


def make_series(
    folder: Path,
    base: str = "CT_small.dcm",
    n: int = 6,
    step: float = 2.5,
    rotation: np.ndarray = OBLIQUE,
    origin: np.ndarray = ORIGIN,
    positions: Sequence[np.ndarray] | None = None,
    series_uid: str | None = None,
    description: str = "oblique test series",
    slope: str | None = None,
    intercept: str | None = None,
    seed: int = 0,
) -> tuple[list[Path], str]:
    """Write ``n`` slices made from the real file ``base`` into ``folder`` in shuffled order.

    Slice k lies at ``origin + k * step * normal`` (or ``positions[k]``) and holds the base
    pixels + 7 k, so its place in the volume can be checked. File names and InstanceNumber
    are shuffled so that only the positions give the order. Returns the files in slice
    order (k = 0, 1, ...) and the SeriesInstanceUID.
    """
    folder.mkdir(parents=True, exist_ok=True)
    template = pydicom.dcmread(_data(base))
    raw = template.pixel_array
    series_uid = series_uid or generate_uid()
    rng = random.Random(seed)
    names = [f"IM{v:05d}" for v in rng.sample(range(10000, 99999), n)]
    instance_numbers = rng.sample(range(1, 10 * n), n)
    r, c, normal = rotation[:, 0], rotation[:, 1], rotation[:, 2]
    files = []
    for k in range(n):
        ds = pydicom.dcmread(_data(base))
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesDescription = description
        ds.InstanceNumber = instance_numbers[k]
        pos = positions[k] if positions is not None else origin + k * step * normal
        ds.ImagePositionPatient = _ds_list(pos, ".6f")
        ds.ImageOrientationPatient = _ds_list(np.concatenate([r, c]), ".10f")
        if "SliceLocation" in ds:
            del ds.SliceLocation
        ds.PixelData = (raw.astype(np.int64) + 7 * k).astype(raw.dtype).tobytes()
        if slope is not None:
            ds.RescaleSlope = slope
        if intercept is not None:
            ds.RescaleIntercept = intercept
        path = folder / names[k]
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files, series_uid


def sitk_series(folder: Path, series_uid: str) -> "sitk.Image":
    """The reference: SimpleITK/GDCM reading the same series."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder), series_uid))
    return reader.Execute()


def assert_matches_sitk(volume, image: "sitk.Image") -> None:
    assert volume.size == image.GetSize()
    np.testing.assert_allclose(volume.origin, image.GetOrigin(), atol=ORIGIN_ATOL)
    np.testing.assert_allclose(volume.spacing, image.GetSpacing(), atol=SPACING_ATOL)
    np.testing.assert_allclose(volume.direction.reshape(-1), image.GetDirection(), atol=DIRECTION_ATOL)
    np.testing.assert_allclose(volume.array, sitk.GetArrayFromImage(image), atol=VOXEL_ATOL)


def folder_checksum(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def expect_error(*needles: str, call) -> MedTorchInputError:
    with pytest.raises(MedTorchInputError) as info:
        call()
    text = str(info.value).lower()
    for needle in needles:
        assert needle.lower() in text, f"{needle!r} not in: {info.value}"
    return info.value


def _item(**values) -> Dataset:
    item = Dataset()
    for key, value in values.items():
        setattr(item, key, value)
    return item


def add_functional_groups(
    ds: Dataset,
    rotation: np.ndarray,
    origin: np.ndarray,
    step: float,
    frame_slots: Sequence[int],
    pixel_spacing: tuple[str, str] = ("0.9", "0.8"),
    slope: str | None = None,
    intercept: str | None = None,
) -> None:
    """Give an enhanced multi-frame dataset its geometry: frame i lies at slot ``frame_slots[i]``."""
    r, c, normal = rotation[:, 0], rotation[:, 1], rotation[:, 2]
    shared = Dataset()
    shared.PlaneOrientationSequence = DicomSequence(
        [_item(ImageOrientationPatient=_ds_list(np.concatenate([r, c]), ".10f"))]
    )
    shared.PixelMeasuresSequence = DicomSequence(
        [_item(PixelSpacing=list(pixel_spacing), SliceThickness=str(step))]
    )
    if slope is not None:
        shared.PixelValueTransformationSequence = DicomSequence(
            [_item(RescaleSlope=slope, RescaleIntercept=intercept or "0", RescaleType="US")]
        )
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    per_frame = []
    for slot in frame_slots:
        item = Dataset()
        item.PlanePositionSequence = DicomSequence(
            [_item(ImagePositionPatient=_ds_list(origin + slot * step * normal, ".6f"))]
        )
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)


# -- a classic oblique series -------------------------------------------------------------


@pytest.mark.parametrize("step", [2.5, -3.0])
def test_oblique_shuffled_series_matches_simpleitk(tmp_path: Path, step: float) -> None:
    """Shuffled files of an oblique CT series with a non-integer slope/intercept: sorted along
    the normal, rescaled to float32, and the same grid and voxels as SimpleITK."""
    files, uid = make_series(tmp_path, n=7, step=step, slope="0.5", intercept="-1024.25")
    vol = read_dicom_series(tmp_path)
    ref = sitk_series(tmp_path, uid)
    assert_matches_sitk(vol, ref)

    assert vol.array.dtype == np.float32
    assert vol.size == (128, 128, 7)
    # The grid by hand: k goes from the lowest to the highest position along r x c.
    r, c, normal = OBLIQUE[:, 0], OBLIQUE[:, 1], OBLIQUE[:, 2]
    first = 0 if step > 0 else 6
    np.testing.assert_allclose(vol.origin, ORIGIN + first * step * normal, atol=ORIGIN_ATOL)
    np.testing.assert_allclose(vol.direction, np.column_stack([r, c, normal]), atol=DIRECTION_ATOL)
    ps = pydicom.dcmread(_data("CT_small.dcm")).PixelSpacing  # [row spacing, column spacing]
    np.testing.assert_allclose(vol.spacing, [float(ps[1]), float(ps[0]), abs(step)], atol=SPACING_ATOL)
    raw = pydicom.dcmread(_data("CT_small.dcm")).pixel_array.astype(np.float64)
    for k in range(7):
        slot = k if step > 0 else 6 - k
        np.testing.assert_allclose(vol.array[k], (raw + 7 * slot) * 0.5 - 1024.25, atol=VOXEL_ATOL)


def test_integer_rescale_gives_signed_ints(tmp_path: Path) -> None:
    """Integer slope/intercept (CT_small: 1, -1024) give int16 HU; unsigned 16-bit MR without
    rescale and values above 32767 gives int32; signed MR without rescale stays int16."""
    make_series(tmp_path / "ct", n=3)
    ct = read_dicom_series(tmp_path / "ct")
    raw = pydicom.dcmread(_data("CT_small.dcm")).pixel_array.astype(np.int64)
    assert ct.array.dtype == np.int16
    np.testing.assert_array_equal(ct.array[2], raw + 14 - 1024)

    make_series(tmp_path / "mr", base="MR_small.dcm", n=3)
    mr = read_dicom_series(tmp_path / "mr")
    assert mr.array.dtype == np.int16
    assert mr.metadata["RescaleSlope"] == 1.0 and mr.metadata["RescaleIntercept"] == 0.0

    files, uid = make_series(tmp_path / "big", base="MR_small.dcm", n=3)
    for path in files:
        ds = pydicom.dcmread(path)
        values = ds.pixel_array.astype(np.int64) * 20  # up to ~43000: needs 16 unsigned bits
        ds.PixelRepresentation = 0
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelData = values.astype(np.uint16).tobytes()
        ds.save_as(path, enforce_file_format=True)
    big = read_dicom_series(tmp_path / "big")
    assert big.array.dtype == np.int32
    assert big.array.max() > 32767
    np.testing.assert_array_equal(big.array, sitk.GetArrayFromImage(sitk_series(tmp_path / "big", uid)))


# -- several series in one folder ---------------------------------------------------------


def _mixed_folder(root: Path) -> tuple[str, str]:
    """CT series in a sub-folder, MR series at the top, plus files that are not DICOM images."""
    _, ct_uid = make_series(root / "sub" / "ct", n=5, description="CT oblique")
    _, mr_uid = make_series(root, base="MR_small.dcm", n=4, step=1.5, description="MR axial-ish", seed=3)
    (root / "README.txt").write_text("not a DICOM file\n")
    (root / "noise.bin").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (root / "looks_like_dicom").write_bytes(b"\x08\x00" + b"garbage" * 50)
    shutil.copy(_data("rtplan.dcm"), root / "plan.dcm")  # DICOM, but not an image
    return ct_uid, mr_uid


def test_several_series_listed_chosen_and_refused_without_uid(tmp_path: Path) -> None:
    ct_uid, mr_uid = _mixed_folder(tmp_path)
    infos = list_series(tmp_path)
    assert all(isinstance(s, SeriesInfo) for s in infos)
    by_uid = {s.series_uid: s for s in infos}
    assert set(by_uid) == {ct_uid, mr_uid}
    ct, mr = by_uid[ct_uid], by_uid[mr_uid]
    assert (ct.modality, ct.num_files, ct.num_frames, ct.description) == ("CT", 5, 5, "CT oblique")
    assert (mr.modality, mr.num_files, mr.num_frames, mr.rows, mr.columns) == ("MR", 4, 4, 64, 64)
    template = pydicom.dcmread(_data("CT_small.dcm"))
    assert ct.patient_id == template.PatientID and ct.study_date == template.StudyDate
    assert ct_uid in ct.summary()

    err = expect_error("2 DICOM series", ct_uid, mr_uid, "series_uid", "--series-uid", call=lambda: read_dicom_series(tmp_path))
    assert "CT oblique" in err.problem and "MR axial-ish" in err.problem

    vol = read_dicom_series(tmp_path, series_uid=mr_uid)
    assert vol.metadata["Modality"] == "MR" and vol.size == (64, 64, 4)
    assert_matches_sitk(vol, sitk_series(tmp_path, mr_uid))
    vol = read_dicom_series(tmp_path, series_uid=ct_uid)
    assert vol.metadata["Modality"] == "CT" and vol.size == (128, 128, 5)

    expect_error("not in", ct_uid, call=lambda: read_dicom_series(tmp_path, series_uid="1.2.3.4"))


def test_read_volume_dispatches_dicom(tmp_path: Path) -> None:
    """medtorch.io.read_volume reads a DICOM folder (with series_uid) and a multi-frame file."""
    from medtorch.io import read_volume

    ct_uid, _ = _mixed_folder(tmp_path)
    assert read_volume(tmp_path, series_uid=ct_uid).size == (128, 128, 5)
    assert read_volume(_data("eCT_Supplemental.dcm")).size == (512, 512, 2)


@pytest.mark.parametrize("keep_meta", [True, False])
def test_files_without_preamble_are_read(tmp_path: Path, keep_meta: bool) -> None:
    """DICOM files written without the 128-byte preamble and 'DICM' (and, in the oldest
    style, without file meta: a bare implicit-VR dataset) are still found and read."""
    files, uid = make_series(tmp_path, n=4)
    for path in files:
        ds = pydicom.dcmread(path)
        ds.preamble = None
        if keep_meta:
            pydicom.dcmwrite(path, ds, enforce_file_format=False)
        else:
            del ds.file_meta
            pydicom.dcmwrite(path, ds, implicit_vr=True, little_endian=True, enforce_file_format=False)
        assert path.read_bytes()[128:132] != b"DICM"
        assert path.read_bytes()[:2] == (b"\x02\x00" if keep_meta else b"\x08\x00")
    assert [s.series_uid for s in list_series(tmp_path)] == [uid]
    assert read_dicom_series(tmp_path).size == (128, 128, 4)


def test_duplicate_copies_are_ignored_with_a_warning(tmp_path: Path) -> None:
    files, _ = make_series(tmp_path / "s", n=4)
    shutil.copy(files[1], tmp_path / "s" / "copy_of_slice_1")
    vol = read_dicom_series(tmp_path / "s")
    assert vol.size == (128, 128, 4)
    assert any("duplicate" in w for w in vol.metadata["warnings"])


# -- enhanced multi-frame and other multi-frame objects -----------------------------------


def test_enhanced_ct_geometry_matches_simpleitk_and_tags() -> None:
    """eCT_Supplemental.dcm (Enhanced CT, 2 frames, functional groups, intercept -1024)."""
    path = _data("eCT_Supplemental.dcm")
    vol = read_dicom_series(path)
    ds = pydicom.dcmread(path)

    # By hand from the functional groups.
    shared = ds.SharedFunctionalGroupsSequence[0]
    iop = np.array(shared.PlaneOrientationSequence[0].ImageOrientationPatient, dtype=float)
    r, c = iop[:3], iop[3:]
    normal = np.cross(r, c)
    ps = [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing]
    ipp = np.array(
        [f.PlanePositionSequence[0].ImagePositionPatient for f in ds.PerFrameFunctionalGroupsSequence], dtype=float
    )
    order = np.argsort(ipp @ normal)
    pvt = shared.PixelValueTransformationSequence[0]
    expected = ds.pixel_array[order].astype(np.int64) * int(float(pvt.RescaleSlope)) + int(float(pvt.RescaleIntercept))

    assert vol.size == (512, 512, 2)
    np.testing.assert_allclose(vol.origin, ipp[order[0]], atol=ORIGIN_ATOL)
    np.testing.assert_allclose(vol.direction, np.column_stack([r, c, normal]), atol=DIRECTION_ATOL)
    np.testing.assert_allclose(vol.spacing, [ps[1], ps[0], abs(np.diff(ipp @ normal)[0])], atol=SPACING_ATOL)
    assert vol.array.dtype == np.int16
    np.testing.assert_array_equal(vol.array, expected)
    assert vol.metadata["Modality"] == "CT" and vol.metadata["RescaleIntercept"] == -1024.0

    # SimpleITK keeps the file's frame order (a left-handed grid here); the same voxels must
    # sit at the same physical points.
    ref = sitk.ReadImage(str(path))
    ref_vol_points = [ref.TransformIndexToPhysicalPoint((5, 7, k)) for k in range(2)]
    ours = vol.geometry.index_to_physical(np.array([[5, 7, k] for k in range(2)]))
    np.testing.assert_allclose(ours, ref_vol_points[::-1], atol=ORIGIN_ATOL)
    np.testing.assert_allclose(vol.spacing, ref.GetSpacing(), atol=SPACING_ATOL)
    np.testing.assert_array_equal(vol.array[::-1], sitk.GetArrayFromImage(ref))


@pytest.mark.parametrize("name", ["emri_small.dcm", "emri_small_RLE.dcm", "emri_small_big_endian.dcm"])
def test_enhanced_mr_shuffled_frames(tmp_path: Path, name: str) -> None:
    """Enhanced MR (pydicom's emri_small*, 10 frames) given oblique functional groups with the
    frames stored out of order and a per-frame value transformation: frames are placed by
    PlanePositionSequence, scaled, and the grid is computed from the tags."""
    ds = pydicom.dcmread(_data(name))
    slots = [3, 0, 7, 9, 1, 5, 2, 8, 4, 6]
    add_functional_groups(ds, OBLIQUE, ORIGIN, 1.2, slots, slope="1.5", intercept="-10.5")
    path = tmp_path / "enhanced_mr.dcm"
    ds.save_as(path)
    vol = read_dicom_series(path)

    assert vol.size == (64, 64, 10)
    np.testing.assert_allclose(vol.origin, ORIGIN, atol=ORIGIN_ATOL)
    np.testing.assert_allclose(vol.direction, OBLIQUE, atol=DIRECTION_ATOL)
    np.testing.assert_allclose(vol.spacing, [0.8, 0.9, 1.2], atol=SPACING_ATOL)
    assert vol.array.dtype == np.float32
    raw = pydicom.dcmread(_data("emri_small.dcm")).pixel_array.astype(np.float64)
    for frame, slot in enumerate(slots):
        np.testing.assert_allclose(vol.array[slot], raw[frame] * 1.5 - 10.5, atol=VOXEL_ATOL)
    assert vol.metadata["NumberOfSlices"] == 10 and vol.metadata["NumberOfFiles"] == 1


def test_enhanced_mr_in_order_matches_simpleitk(tmp_path: Path) -> None:
    """With the frames in ascending order SimpleITK reads the same enhanced MR grid."""
    ds = pydicom.dcmread(_data("emri_small.dcm"))
    add_functional_groups(ds, OBLIQUE, ORIGIN, 1.2, list(range(10)))
    path = tmp_path / "enhanced_mr.dcm"
    ds.save_as(path)
    vol = read_dicom_series(path)
    assert_matches_sitk(vol, sitk.ReadImage(str(path)))
    assert vol.array.dtype == np.int16


def test_enhanced_mr_without_geometry_is_refused() -> None:
    """pydicom's emri_small.dcm carries no functional groups: its 3D geometry is unknown."""
    expect_error("ImagePositionPatient", "geometry", call=lambda: read_dicom_series(_data("emri_small.dcm")))


def test_rt_dose_grid_frame_offsets() -> None:
    """rtdose.dcm: 15 frames placed by GridFrameOffsetVector, scaled by DoseGridScaling (Gy)."""
    path = _data("rtdose.dcm")
    vol = read_dicom_series(path)
    ref = sitk.ReadImage(str(path))
    scaling = float(pydicom.dcmread(path).DoseGridScaling)
    assert vol.size == ref.GetSize() == (10, 10, 15)
    np.testing.assert_allclose(vol.origin, ref.GetOrigin(), atol=ORIGIN_ATOL)
    np.testing.assert_allclose(vol.spacing, ref.GetSpacing(), atol=SPACING_ATOL)
    np.testing.assert_allclose(vol.direction.reshape(-1), ref.GetDirection(), atol=DIRECTION_ATOL)
    np.testing.assert_allclose(vol.array, sitk.GetArrayFromImage(ref) * scaling, rtol=1e-6)


def test_segmentation_is_a_label_volume() -> None:
    """liver.dcm (DICOM SEG, 3 binary frames of one segment) reads as a label map."""
    path = _data("liver.dcm")
    vol = read_dicom_series(path)
    ds = pydicom.dcmread(path)
    ipp = [f.PlanePositionSequence[0].ImagePositionPatient for f in ds.PerFrameFunctionalGroupsSequence]
    ps = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
    assert vol.kind == "label" and vol.size == (512, 512, 3)
    np.testing.assert_allclose(vol.origin, np.array(ipp, dtype=float).min(axis=0), atol=ORIGIN_ATOL)
    np.testing.assert_allclose(vol.spacing, [float(ps[1]), float(ps[0]), 1.0], atol=SPACING_ATOL)
    assert set(np.unique(vol.array).tolist()) <= {0, 1} and vol.array.sum() > 0
    expect_error("2D image", call=lambda: read_dicom_series(_data("liver_1frame.dcm")))


def test_multi_segment_segmentation_is_refused(tmp_path: Path) -> None:
    ds = pydicom.dcmread(_data("liver.dcm"))
    second = Dataset()
    second.update(ds.SegmentSequence[0])
    second.SegmentNumber = 2
    second.SegmentLabel = "Tumor"
    ds.SegmentSequence.append(second)
    path = tmp_path / "two_segments.dcm"
    ds.save_as(path)
    expect_error("2 segments", "QuantitativeReporting", call=lambda: read_dicom_series(path))


def test_colour_series_is_a_vector_volume(tmp_path: Path) -> None:
    """SC_rgb.dcm (8-bit RGB) given a position per slice reads as a vector volume like SimpleITK's."""
    normal = OBLIQUE[:, 2]
    uid = generate_uid()
    for k in range(3):
        ds = pydicom.dcmread(_data("SC_rgb.dcm"))
        ds.SeriesInstanceUID = uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.ImagePositionPatient = _ds_list(ORIGIN + (2 - k) * 1.5 * normal, ".6f")
        ds.ImageOrientationPatient = _ds_list(np.concatenate([OBLIQUE[:, 0], OBLIQUE[:, 1]]), ".10f")
        ds.PixelSpacing = ["0.7", "0.6"]
        ds.save_as(tmp_path / f"rgb{k}.dcm", enforce_file_format=True)
    vol = read_dicom_series(tmp_path)
    assert vol.kind == "vector" and vol.array.shape == (3, 100, 100, 3) and vol.array.dtype == np.uint8
    raw = pydicom.dcmread(_data("SC_rgb.dcm")).pixel_array
    np.testing.assert_array_equal(vol.array[0], raw)
    ref = sitk_series(tmp_path, uid)
    assert ref.GetNumberOfComponentsPerPixel() == 3
    assert_matches_sitk(vol, ref)


# -- irregular stacks are refused ---------------------------------------------------------


def test_missing_slice_detected(tmp_path: Path) -> None:
    files, _ = make_series(tmp_path, n=8)
    files[4].unlink()
    expect_error("missing slices", "1 slice(s) missing", call=lambda: read_dicom_series(tmp_path))


def test_uneven_spacing_detected_small_jitter_accepted(tmp_path: Path) -> None:
    normal = OBLIQUE[:, 2]
    along = [0.0, 2.0, 4.0, 6.0, 8.3, 10.3, 12.3]
    make_series(tmp_path / "uneven", n=7, positions=[ORIGIN + a * normal for a in along])
    expect_error("uneven slice spacing", call=lambda: read_dicom_series(tmp_path / "uneven"))

    jitter = [0.0, 2.004, 3.998, 6.003, 8.0, 9.996, 12.0]  # within 1 % of the 2 mm step
    make_series(tmp_path / "jitter", n=7, positions=[ORIGIN + a * normal for a in jitter])
    vol = read_dicom_series(tmp_path / "jitter")
    assert abs(vol.spacing[2] - 2.0) < 1e-3


def test_gantry_tilt_detected(tmp_path: Path) -> None:
    """Slice positions that drift along the column direction (a 15 degree tilt)."""
    normal, col = OBLIQUE[:, 2], OBLIQUE[:, 1]
    tilt = math.tan(math.radians(15.0))
    positions = [ORIGIN + k * 2.5 * normal + k * 2.5 * tilt * col for k in range(6)]
    files, uid = make_series(tmp_path, n=6, positions=positions)
    expect_error("sheared", "gantry tilt of about 15.0 degrees", call=lambda: read_dicom_series(tmp_path))


def test_mixed_orientation_detected(tmp_path: Path) -> None:
    files, _ = make_series(tmp_path, n=5)
    ds = pydicom.dcmread(files[2])
    other = _rotation(deg_z=75.0)
    ds.ImageOrientationPatient = _ds_list(np.concatenate([other[:, 0], other[:, 1]]), ".10f")
    ds.save_as(files[2], enforce_file_format=True)
    expect_error("mixes 2 image orientations", call=lambda: read_dicom_series(tmp_path))


def test_mixed_image_sizes_detected(tmp_path: Path) -> None:
    files, _ = make_series(tmp_path, n=5)
    ds = pydicom.dcmread(files[3])
    ds.PixelData = np.ascontiguousarray(ds.pixel_array[:64, :96]).tobytes()
    ds.Rows, ds.Columns = 64, 96
    ds.save_as(files[3], enforce_file_format=True)
    expect_error("mixes image sizes", "128x128 (4 images)", "96x64 (1 image)", call=lambda: read_dicom_series(tmp_path))


def test_several_images_at_one_position_detected(tmp_path: Path) -> None:
    normal = OBLIQUE[:, 2]
    along = [0.0, 2.0, 2.0, 4.0, 6.0]  # e.g. two echoes at one position
    make_series(tmp_path, n=5, positions=[ORIGIN + a * normal for a in along])
    expect_error("more than one image", "time points", call=lambda: read_dicom_series(tmp_path))


# -- files that are no series -------------------------------------------------------------


def test_single_slice_refused(tmp_path: Path) -> None:
    expect_error("2D image", "3D volume", "folder", call=lambda: read_dicom_series(_data("CT_small.dcm")))
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(_data("MR_small.dcm"), one / "slice.dcm")
    expect_error("single 2D image", "3D volume", "whole series", call=lambda: read_dicom_series(one))


def test_truncated_files_refused(tmp_path: Path) -> None:
    # pixel data cut short at the end of the file
    files, _ = make_series(tmp_path / "cut", n=4)
    data = files[2].read_bytes()
    files[2].write_bytes(data[:-3000])
    expect_error("truncated", files[2].name, call=lambda: read_dicom_series(tmp_path / "cut"))

    # a file cut inside its header cannot be assigned to any series: the folder is refused
    files, _ = make_series(tmp_path / "header", n=4)
    files[0].write_bytes(files[0].read_bytes()[:600])
    expect_error("cannot be read", files[0].name, call=lambda: read_dicom_series(tmp_path / "header"))

    # pydicom's real truncated file (MR_truncated.dcm) as slices of a series
    files, _ = make_series(tmp_path / "real", base="MR_small.dcm", n=3)
    for k, path in enumerate(files):
        ds = pydicom.dcmread(_data("MR_truncated.dcm"))
        ref = pydicom.dcmread(path, stop_before_pixels=True)
        for keyword in ("SeriesInstanceUID", "SOPInstanceUID", "ImagePositionPatient", "ImageOrientationPatient"):
            setattr(ds, keyword, ref[keyword].value)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(path, enforce_file_format=True)
    expect_error("truncated", "pixel data", call=lambda: read_dicom_series(tmp_path / "real"))

    # a compressed multi-frame file whose fragments end early (emri_small_jpeg_2k_lossless_too_short)
    ds = pydicom.dcmread(_data("emri_small_jpeg_2k_lossless_too_short.dcm"), stop_before_pixels=True)
    add_functional_groups(ds, OBLIQUE, ORIGIN, 1.2, list(range(10)))
    short = tmp_path / "short.dcm"
    ds.save_as(short)
    pixel_bytes = _data("emri_small_jpeg_2k_lossless_too_short.dcm").read_bytes()
    start = pixel_bytes.rfind(b"\xe0\x7f\x10\x00")  # the (7FE0,0010) Pixel Data element onwards
    short.write_bytes(short.read_bytes() + pixel_bytes[start:])
    expect_error("truncated", call=lambda: read_dicom_series(short))


def test_folder_without_dicom_refused(tmp_path: Path) -> None:
    expect_error("does not exist", call=lambda: read_dicom_series(tmp_path / "nowhere"))
    empty = tmp_path / "empty"
    empty.mkdir()
    expect_error("no DICOM image", "empty", call=lambda: read_dicom_series(empty))
    assert list_series(empty) == []
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("hello")
    (junk / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    shutil.copy(_data("rtplan.dcm"), junk / "plan.dcm")
    expect_error("no DICOM image", "2 non-DICOM", "without an image", call=lambda: read_dicom_series(junk))
    expect_error("not a DICOM image", call=lambda: read_dicom_series(junk / "plan.dcm"))


def test_pydicom_file_set_tree() -> None:
    """pydicom's dicomdirtests tree as it is (read only): DICOMDIR files, three patients in
    nested folders, real localizers and stub files without pixels (TINY_ALPHA)."""
    root = _data("DICOMDIR").parent
    infos = {s.description: s for s in list_series(root)}
    assert len(list_series(root)) == 13
    smart = infos["SmartScore - Gated 0.5 sec"]
    assert (smart.modality, smart.num_files) == ("CT", 5)

    vol = read_dicom_series(root, series_uid=smart.series_uid)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(root), smart.series_uid, False, True))
    assert_matches_sitk(vol, reader.Execute())
    assert any("unreadable" in w for w in vol.metadata["warnings"])  # the TINY_ALPHA stubs

    expect_error("mixes 2 image orientations", call=lambda: read_dicom_series(root, series_uid=infos["Scout"].series_uid))
    pilot = infos["T/S/C RF FAST PILOT"].series_uid
    expect_error("mixes 3 image orientations", call=lambda: read_dicom_series(root, series_uid=pilot))
    brain = infos["Routine Brain"].series_uid
    expect_error("missing slices", call=lambda: read_dicom_series(root, series_uid=brain))
    expect_error("single 2D image", call=lambda: read_dicom_series(root, series_uid=infos["Cervical LAT"].series_uid))
    expect_error("13 DICOM series", "--series-uid", call=lambda: read_dicom_series(root))


def _decoder_available(transfer_syntax: str) -> bool:
    from pydicom.pixels import get_decoder

    return bool(get_decoder(pydicom.uid.UID(transfer_syntax)).is_available)


@pytest.mark.parametrize(
    "name, syntax",
    [("MR_small_jpeg_ls_lossless.dcm", "1.2.840.10008.1.2.4.80"), ("MR_small_jp2klossless.dcm", "1.2.840.10008.1.2.4.90")],
)
def test_compressed_series(tmp_path: Path, name: str, syntax: str) -> None:
    """A compressed series decodes to the uncompressed values when a decoder is installed;
    without one the error names the transfer syntax and the package to install."""
    files, _ = make_series(tmp_path, base="MR_small.dcm", n=3)
    for path in files:
        ref = pydicom.dcmread(path, stop_before_pixels=True)
        ds = pydicom.dcmread(_data(name))
        for keyword in ("SeriesInstanceUID", "SOPInstanceUID", "ImagePositionPatient", "ImageOrientationPatient"):
            setattr(ds, keyword, ref[keyword].value)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(path, enforce_file_format=True)
    if _decoder_available(syntax):
        vol = read_dicom_series(tmp_path)
        raw = pydicom.dcmread(_data("MR_small.dcm")).pixel_array
        np.testing.assert_array_equal(vol.array, np.stack([raw] * 3))
        assert vol.metadata["TransferSyntaxUID"] == syntax
    else:
        err = expect_error("transfer syntax", syntax, "pip install", call=lambda: read_dicom_series(tmp_path))
        assert "pylibjpeg" in err.fix or "gdcm" in err.fix


# -- metadata and side effects ------------------------------------------------------------


def test_metadata(tmp_path: Path) -> None:
    _, uid = make_series(tmp_path, n=4, slope="0.5", intercept="-1024.25", description="meta test")
    vol = read_dicom_series(tmp_path)
    template = pydicom.dcmread(_data("CT_small.dcm"))
    meta = vol.metadata
    assert meta["SeriesInstanceUID"] == uid
    assert meta["StudyInstanceUID"] == template.StudyInstanceUID
    assert meta["PatientID"] == template.PatientID
    assert meta["Modality"] == "CT"
    assert meta["StudyDate"] == template.StudyDate
    assert meta["SeriesDescription"] == "meta test"
    assert meta["Manufacturer"] == template.Manufacturer
    assert meta["PixelSpacing"] == [float(v) for v in template.PixelSpacing]
    assert meta["SliceThickness"] == float(template.SliceThickness)
    assert meta["RescaleSlope"] == 0.5 and meta["RescaleIntercept"] == -1024.25
    assert meta["NumberOfSlices"] == 4 and meta["NumberOfFiles"] == 4
    assert meta["source"] == str(tmp_path)
    # CT_small's 5 mm SliceThickness differs from the 2.5 mm step: reported, not hidden
    assert any("SliceThickness" in w for w in meta["warnings"])


def test_inputs_are_not_modified(tmp_path: Path) -> None:
    ct_uid, _ = _mixed_folder(tmp_path)
    before = folder_checksum(tmp_path)
    list_series(tmp_path)
    read_dicom_series(tmp_path, series_uid=ct_uid)
    with pytest.raises(MedTorchInputError):
        read_dicom_series(tmp_path)
    assert folder_checksum(tmp_path) == before
