"""Round trips of Volume/Geometry: numpy <-> SimpleITK <-> torch, and files.

Every round trip runs on an OBLIQUE (rotation of 20, -10, 35 degrees about x, y, z),
ANISOTROPIC (spacing 0.7, 1.1, 3.0 mm), NON-ZERO-ORIGIN volume with different sizes
along i, j and k, so that a swapped axis, a transposed direction or a lost origin shows.

Geometry tolerances:
* numpy <-> SimpleITK <-> torch: exact (geometry travels as float64 doubles).
* NRRD and MHA files: 1e-9 mm / 1e-9 (written as decimal text with full precision).
* NIfTI (.nii, .nii.gz): 1e-5 mm for origin and spacing, 1e-5 for direction cosines:
  NIfTI keeps the qform/sform in float32, whose rounding at |x| ~ 100 mm is ~4e-6 mm.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from medtorch.io import read_frames, read_volume, write_volume
from medtorch.volume import LPS_TO_RAS, Geometry, Volume

NIFTI_ATOL = 1e-5
TEXT_ATOL = 1e-9

SIZE = (9, 7, 5)  # i, j, k: all different
ORIGIN = (-120.37, 85.123456789, 40.987654321)
SPACING = (0.7, 1.1, 3.0)


def rotation_xyz(ax: float, ay: float, az: float) -> np.ndarray:
    """R = Rz(az) @ Ry(ay) @ Rx(ax), angles in degrees."""
    a, b, c = (math.radians(v) for v in (ax, ay, az))
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rz = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


DIRECTION = rotation_xyz(20.0, -10.0, 35.0)
GEOMETRY = Geometry(size=SIZE, origin=ORIGIN, spacing=SPACING, direction=DIRECTION)

CASES = ["float32", "int16", "uint8", "uint16", "label", "vector"]


def make_volume(case: str) -> Volume:
    """A volume of the given case on the oblique, anisotropic, offset grid."""
    rng = np.random.default_rng(CASES.index(case))
    shape = GEOMETRY.shape_zyx
    if case == "float32":
        arr = rng.normal(100.0, 30.0, shape).astype(np.float32)
        return Volume(arr, GEOMETRY, "scalar")
    if case == "int16":
        return Volume(rng.integers(-1024, 3000, shape).astype(np.int16), GEOMETRY, "scalar")
    if case == "uint8":
        return Volume(rng.integers(0, 256, shape).astype(np.uint8), GEOMETRY, "scalar")
    if case == "uint16":
        # values above 32767 catch a silent signed conversion
        return Volume(rng.integers(0, 65536, shape).astype(np.uint16), GEOMETRY, "scalar")
    if case == "label":
        return Volume(rng.integers(0, 4, shape).astype(np.uint8), GEOMETRY, "label")
    if case == "vector":
        return Volume(rng.normal(0.0, 1.0, shape + (3,)).astype(np.float32), GEOMETRY, "vector")
    raise AssertionError(case)


class Snapshot:
    """A deep copy of a volume's state, to check that a conversion did not modify it."""

    def __init__(self, vol: Volume) -> None:
        self.vol = vol
        self.array = vol.array.copy()
        self.geometry = vol.geometry
        self.origin = vol.geometry.origin.copy()
        self.spacing = vol.geometry.spacing.copy()
        self.direction = vol.geometry.direction.copy()
        self.kind = vol.kind
        self.metadata = copy.deepcopy(vol.metadata)

    def assert_unchanged(self) -> None:
        v = self.vol
        assert v.array.dtype == self.array.dtype
        np.testing.assert_array_equal(v.array, self.array)
        assert v.geometry is self.geometry
        np.testing.assert_array_equal(v.geometry.origin, self.origin)
        np.testing.assert_array_equal(v.geometry.spacing, self.spacing)
        np.testing.assert_array_equal(v.geometry.direction, self.direction)
        assert v.kind == self.kind
        assert v.metadata == self.metadata


def assert_geometry(actual: Geometry, expected: Geometry, atol: float) -> None:
    assert tuple(actual.size) == tuple(expected.size)
    np.testing.assert_allclose(actual.origin, expected.origin, rtol=0, atol=atol)
    np.testing.assert_allclose(actual.spacing, expected.spacing, rtol=0, atol=atol)
    np.testing.assert_allclose(actual.direction, expected.direction, rtol=0, atol=atol)


# -- the test grid itself ---------------------------------------------------------------------


def test_test_geometry_is_oblique_anisotropic_offset() -> None:
    d = GEOMETRY.direction
    np.testing.assert_allclose(d.T @ d, np.eye(3), atol=1e-12)
    assert np.linalg.det(d) == pytest.approx(1.0)
    assert np.abs(d - np.eye(3)).max() > 0.3  # really oblique
    assert len(set(GEOMETRY.spacing)) == 3
    assert np.all(GEOMETRY.origin != 0)
    GEOMETRY.validate()


# -- numpy <-> SimpleITK ------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_numpy_sitk_round_trip(case: str) -> None:
    vol = make_volume(case)
    snap = Snapshot(vol)
    img = vol.to_sitk()
    snap.assert_unchanged()

    assert img.GetSize() == SIZE
    assert img.GetOrigin() == ORIGIN
    assert img.GetSpacing() == SPACING
    assert img.GetDirection() == tuple(DIRECTION.reshape(-1))
    assert img.GetNumberOfComponentsPerPixel() == (3 if case == "vector" else 1)
    # index order: sitk (i, j, k) == array[k, j, i]
    i, j, k = 6, 2, 3
    expected = vol.array[k, j, i]
    np.testing.assert_array_equal(np.asarray(img.GetPixel(i, j, k)), expected)

    back = Volume.from_sitk(img, kind=vol.kind)
    snap.assert_unchanged()
    assert back.kind == vol.kind
    assert back.array.dtype == vol.array.dtype
    np.testing.assert_array_equal(back.array, vol.array)
    assert back.geometry == vol.geometry  # exact
    assert not np.may_share_memory(back.array, vol.array)


def test_sitk_image_not_modified_by_from_sitk() -> None:
    img = make_volume("float32").to_sitk()
    before = sitk.GetArrayFromImage(img).copy()
    geom = (img.GetOrigin(), img.GetSpacing(), img.GetDirection())
    vol = Volume.from_sitk(img)
    vol.array[...] = 0
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img), before)
    assert (img.GetOrigin(), img.GetSpacing(), img.GetDirection()) == geom


def test_bool_label_goes_to_sitk_as_uint8() -> None:
    arr = np.zeros(GEOMETRY.shape_zyx, dtype=bool)
    arr[1:3, 2:5, 3:7] = True
    vol = Volume(arr, GEOMETRY, "label")
    img = vol.to_sitk()
    assert img.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img), arr.astype(np.uint8))
    assert vol.array.dtype == bool


# -- numpy <-> torch ---------------------------------------------------------------------------------

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CASES)
def test_numpy_torch_round_trip(case: str, device: str) -> None:
    vol = make_volume(case)
    snap = Snapshot(vol)
    t = vol.to_torch(device=device)
    snap.assert_unchanged()

    assert t.device.type == device
    n_c = 3 if case == "vector" else 1
    assert tuple(t.shape) == (n_c,) + GEOMETRY.shape_zyx
    # index order: tensor[c, k, j, i] == array[k, j, i(, c)]
    i, j, k = 6, 2, 3
    if case == "vector":
        for c in range(3):
            assert t[c, k, j, i].item() == pytest.approx(float(vol.array[k, j, i, c]))
    else:
        assert t[0, k, j, i].item() == vol.array[k, j, i]
    if case == "uint16":
        assert t.dtype == torch.int32  # torch has no general uint16: widened, never wrapped
        assert int(t.max()) == int(vol.array.max()) > 32767

    back = Volume.from_torch(t, vol.geometry, kind=vol.kind, dtype=vol.array.dtype)
    snap.assert_unchanged()
    assert back.array.dtype == vol.array.dtype
    np.testing.assert_array_equal(back.array, vol.array)
    assert back.geometry == vol.geometry
    assert back.kind == vol.kind


@pytest.mark.parametrize("case", CASES)
def test_torch_tensor_never_aliases_the_volume(case: str) -> None:
    vol = make_volume(case)
    snap = Snapshot(vol)
    t = vol.to_torch()
    t.zero_() if t.dtype != torch.bool else t.fill_(False)
    snap.assert_unchanged()

    src = torch.ones((3 if case == "vector" else 1,) + GEOMETRY.shape_zyx)
    back = Volume.from_torch(src, GEOMETRY, kind=vol.kind)
    src.add_(5)
    assert float(back.array.max()) == 1.0


def test_to_torch_dtype_and_half_precision_back() -> None:
    vol = make_volume("float32")
    t = vol.to_torch(dtype=torch.float64)
    assert t.dtype == torch.float64
    half = vol.to_torch(dtype=torch.bfloat16)
    back = Volume.from_torch(half, vol.geometry)
    assert back.array.dtype == np.float32
    np.testing.assert_allclose(back.array, vol.array, rtol=1e-2)


def test_to_torch_read_only_and_big_endian_arrays() -> None:
    arr = make_volume("float32").array.astype(">f4")
    arr.setflags(write=False)
    vol = Volume(arr, GEOMETRY)
    t = vol.to_torch()
    np.testing.assert_array_equal(t[0].numpy(), arr.astype(np.float32))


# -- files ----------------------------------------------------------------------------------------

FILE_FORMATS = [(".nrrd", TEXT_ATOL), (".nii", NIFTI_ATOL), (".nii.gz", NIFTI_ATOL), (".mha", TEXT_ATOL)]


@pytest.mark.parametrize("ext,atol", FILE_FORMATS, ids=[e for e, _ in FILE_FORMATS])
@pytest.mark.parametrize("case", CASES)
def test_file_round_trip(case: str, ext: str, atol: float, tmp_path: Path) -> None:
    vol = make_volume(case)
    snap = Snapshot(vol)
    path = write_volume(vol, tmp_path / f"vol{ext}")
    snap.assert_unchanged()
    assert path.exists()
    assert [p.name for p in tmp_path.iterdir()] == [f"vol{ext}"]  # no temporary left behind

    back = read_volume(path, kind="label" if case == "label" else None)
    assert back.kind == vol.kind
    assert back.array.dtype == vol.array.dtype
    np.testing.assert_array_equal(back.array, vol.array)
    assert_geometry(back.geometry, vol.geometry, atol)
    assert back.metadata["source"] == str(path)


@pytest.mark.parametrize("ext", [".nhdr", ".mhd"])
def test_detached_header_round_trip(ext: str, tmp_path: Path) -> None:
    vol = make_volume("int16")
    path = write_volume(vol, tmp_path / f"vol{ext}")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert f"vol{ext}" in names and len(names) == 2  # header + data file, nothing else
    assert all(n.startswith("vol.") for n in names)
    back = read_volume(path)
    np.testing.assert_array_equal(back.array, vol.array)
    assert_geometry(back.geometry, vol.geometry, TEXT_ATOL)


def test_seg_nrrd_reads_as_label(tmp_path: Path) -> None:
    vol = make_volume("label")
    back = read_volume(write_volume(vol, tmp_path / "x.seg.nrrd"))
    assert back.kind == "label"
    np.testing.assert_array_equal(back.array, vol.array)


def test_float_label_written_as_integers(tmp_path: Path) -> None:
    vol = Volume(make_volume("label").array.astype(np.float32), GEOMETRY, "label")
    back = read_volume(write_volume(vol, tmp_path / "x.nrrd"))
    assert back.array.dtype == np.int16
    np.testing.assert_array_equal(back.array, vol.array)


def test_new_file_permissions_follow_umask(tmp_path: Path) -> None:
    import os

    old = os.umask(0o022)
    try:
        p = write_volume(make_volume("uint8"), tmp_path / "perm.nrrd")
    finally:
        os.umask(old)
    assert p.stat().st_mode & 0o777 == 0o644


def test_read_frames_4d_nifti(tmp_path: Path) -> None:
    frames = [make_volume("float32").array + 1000.0 * t for t in range(3)]
    images = [Volume(a.astype(np.float32), GEOMETRY).to_sitk() for a in frames]
    img4 = sitk.JoinSeries(images)
    assert img4.GetDimension() == 4
    path = tmp_path / "series.nii.gz"
    sitk.WriteImage(img4, str(path))

    vols = read_frames(path)
    assert len(vols) == 3
    for t, v in enumerate(vols):
        assert v.metadata["frame"] == t
        np.testing.assert_array_equal(v.array, frames[t])
        assert_geometry(v.geometry, GEOMETRY, NIFTI_ATOL)


def test_read_frames_3d_file_is_one_frame(tmp_path: Path) -> None:
    vol = make_volume("int16")
    vols = read_frames(write_volume(vol, tmp_path / "x.mha"))
    assert len(vols) == 1
    np.testing.assert_array_equal(vols[0].array, vol.array)


# -- matrices ---------------------------------------------------------------------------------------


def test_ijk_to_ras_on_a_point_computed_by_hand() -> None:
    # i runs along +P (LPS y), j along -L (LPS -x), k along +S; spacing 2, 3, 4; origin (10, 20, 30).
    g = Geometry(size=(4, 5, 6), origin=(10, 20, 30), spacing=(2, 3, 4), direction=[[0, -1, 0], [1, 0, 0], [0, 0, 1]])
    # ijk (1, 2, 3): LPS = (10 - 2*3, 20 + 1*2, 30 + 3*4) = (4, 22, 42); RAS = (-4, -22, 42)
    ijk = np.array([1.0, 2.0, 3.0, 1.0])
    np.testing.assert_allclose(g.ijk_to_lps() @ ijk, [4.0, 22.0, 42.0, 1.0], atol=1e-12)
    np.testing.assert_allclose(g.ijk_to_ras() @ ijk, [-4.0, -22.0, 42.0, 1.0], atol=1e-12)
    np.testing.assert_allclose(g.ijk_to_ras(), np.diag([-1.0, -1.0, 1.0, 1.0]) @ g.ijk_to_lps(), atol=0)
    np.testing.assert_array_equal(LPS_TO_RAS, np.diag([-1.0, -1.0, 1.0, 1.0]))


def test_ijk_to_ras_relation_on_oblique_grid() -> None:
    np.testing.assert_allclose(GEOMETRY.ijk_to_ras(), np.diag([-1.0, -1.0, 1.0, 1.0]) @ GEOMETRY.ijk_to_lps(), atol=0)


def test_from_ijk_to_ras_inverts_ijk_to_ras() -> None:
    g2 = Geometry.from_ijk_to_ras(GEOMETRY.ijk_to_ras(), GEOMETRY.size)
    assert_geometry(g2, GEOMETRY, 1e-12)
    g3 = Geometry.from_ijk_to_lps(GEOMETRY.ijk_to_lps(), GEOMETRY.size)
    assert_geometry(g3, GEOMETRY, 1e-12)
    np.testing.assert_allclose(GEOMETRY.lps_to_ijk() @ GEOMETRY.ijk_to_lps(), np.eye(4), atol=1e-12)


def test_index_to_physical_matches_sitk() -> None:
    img = make_volume("float32").to_sitk()
    rng = np.random.default_rng(3)
    ijk = rng.uniform(-1.0, 10.0, size=(20, 3))
    ours = GEOMETRY.index_to_physical(ijk)
    theirs = np.array([img.TransformContinuousIndexToPhysicalPoint(tuple(p)) for p in ijk])
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-9)
    back = GEOMETRY.physical_to_index(ours)
    np.testing.assert_allclose(back, ijk, rtol=0, atol=1e-9)
    theirs_idx = np.array([img.TransformPhysicalPointToContinuousIndex(tuple(p)) for p in ours])
    np.testing.assert_allclose(back, theirs_idx, rtol=0, atol=1e-9)


def test_corners_center_bounds() -> None:
    corners = GEOMETRY.corners()
    assert corners.shape == (8, 3)
    np.testing.assert_allclose(corners[0], ORIGIN)
    np.testing.assert_allclose(GEOMETRY.center(), corners.mean(axis=0), atol=1e-9)
    lo, hi = GEOMETRY.bounds()
    np.testing.assert_allclose(lo, corners.min(axis=0))
    np.testing.assert_allclose(hi, corners.max(axis=0))
    assert GEOMETRY.voxel_volume_mm3 == pytest.approx(0.7 * 1.1 * 3.0)
    assert GEOMETRY.num_voxels == 9 * 7 * 5


# -- Geometry value semantics -------------------------------------------------------------------------


def test_geometry_does_not_alias_caller_arrays() -> None:
    origin = np.array(ORIGIN)
    direction = DIRECTION.copy()
    g = Geometry(size=SIZE, origin=origin, spacing=SPACING, direction=direction)
    origin[0] = 0.0
    direction[0, 0] = 5.0
    np.testing.assert_array_equal(g.origin, ORIGIN)
    np.testing.assert_array_equal(g.direction, DIRECTION)
    with pytest.raises(ValueError):
        g.origin[0] = 1.0  # read-only


def test_geometry_equality_and_hash() -> None:
    g1 = Geometry(size=SIZE, origin=ORIGIN, spacing=SPACING, direction=DIRECTION)
    g2 = Geometry(size=SIZE, origin=list(ORIGIN), spacing=list(SPACING), direction=DIRECTION.tolist())
    assert g1 == g2 and hash(g1) == hash(g2)
    assert g1 != g1.with_size_spacing((9, 7, 6), SPACING)
    assert Geometry((2, 2, 2), origin=(-0.0, 0, 0)) == Geometry((2, 2, 2))
    assert hash(Geometry((2, 2, 2), origin=(-0.0, 0, 0))) == hash(Geometry((2, 2, 2)))
    assert len({g1, g2}) == 1
