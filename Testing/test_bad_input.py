"""The core's bad-input table: every case raises MedTorchInputError naming the problem and the fix.

| case                               | where it is caught                          |
|------------------------------------|---------------------------------------------|
| empty volume                       | check_volume / Geometry.validate, read (0 B)|
| constant volume                    | check_volume                                |
| NaN / Inf voxels                   | check_volume                                |
| 2D where 3D is needed              | Volume.from_array, check_volume, read_volume|
| 4D where 3D is needed              | Volume.from_array, read_volume              |
| zero / negative spacing            | check_volume (Geometry.validate)            |
| non-orthonormal direction          | check_volume (Geometry.validate)            |
| a file that is not an image        | read_volume                                 |
| a truncated file                   | read_volume                                 |
| unwritable output path             | write_volume (check_writable)               |
| disk full during a write           | write_volume (atomic_path)                  |
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk

import medtorch.io as mio
from medtorch.errors import MedTorchInputError
from medtorch.io import read_volume, write_volume
from medtorch.io.atomic import write_text_atomic
from medtorch.volume import Geometry, Volume, check_volume


def assert_user_error(excinfo: pytest.ExceptionInfo[MedTorchInputError], *words: str) -> None:
    """The message names the problem (every one of ``words``, case-insensitive) and says what to do."""
    msg = str(excinfo.value)
    assert "What to do" in msg, msg
    for w in words:
        assert re.search(w, msg, flags=re.IGNORECASE), f"{w!r} not in {msg!r}"
    assert excinfo.value.problem and excinfo.value.fix


def good_array(shape: tuple[int, int, int] = (6, 7, 8)) -> np.ndarray:
    return np.random.default_rng(0).normal(100.0, 10.0, shape).astype(np.float32)


def good_volume(**kw: Any) -> Volume:
    return Volume.from_array(good_array(), origin=(1.0, -2.0, 3.0), spacing=(0.7, 1.1, 3.0), **kw)


def write_sitk(arr: np.ndarray, path: Path, compress: bool = True) -> Path:
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(path), useCompression=compress)
    return path


# -- voxels --------------------------------------------------------------------------------------


def test_empty_volume() -> None:
    vol = Volume.from_array(np.zeros((0, 4, 4), np.float32))
    with pytest.raises(MedTorchInputError) as ei:
        check_volume(vol)
    assert_user_error(ei, "empty")


def test_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.nrrd"
    p.write_bytes(b"")
    with pytest.raises(MedTorchInputError) as ei:
        read_volume(p)
    assert_user_error(ei, "empty", "0 bytes")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MedTorchInputError) as ei:
        read_volume(tmp_path / "nope.nii.gz")
    assert_user_error(ei, "not found")


def test_constant_volume() -> None:
    vol = Volume.from_array(np.full((5, 6, 7), 42, np.int16))
    with pytest.raises(MedTorchInputError) as ei:
        check_volume(vol)
    assert_user_error(ei, "constant", "42")
    assert check_volume(vol, allow_constant=True) is vol


def test_nan_voxels() -> None:
    arr = good_array()
    arr[2, 3, 4] = np.nan
    with pytest.raises(MedTorchInputError) as ei:
        check_volume(Volume.from_array(arr))
    assert_user_error(ei, "1 NaN")


def test_inf_voxels() -> None:
    arr = good_array()
    arr[0, 0, 0] = np.inf
    arr[1, 1, 1] = -np.inf
    with pytest.raises(MedTorchInputError) as ei:
        check_volume(Volume.from_array(arr))
    assert_user_error(ei, "2 infinite")


def test_2d_array_where_3d_is_needed() -> None:
    with pytest.raises(MedTorchInputError) as ei:
        Volume.from_array(np.zeros((6, 7), np.float32))
    assert_user_error(ei, "3D", "2D")


def test_single_slice_volume_is_2d() -> None:
    vol = Volume.from_array(good_array((1, 7, 8)))
    with pytest.raises(MedTorchInputError) as ei:
        check_volume(vol)
    assert_user_error(ei, "2D")


def test_2d_file_where_3d_is_needed(tmp_path: Path) -> None:
    p = write_sitk(good_array()[0], tmp_path / "slice.nrrd")
    assert sitk.ReadImage(str(p)).GetDimension() == 2
    with pytest.raises(MedTorchInputError) as ei:
        read_volume(p)
    assert_user_error(ei, "2D", "3D")


def test_4d_array_where_3d_is_needed() -> None:
    with pytest.raises(MedTorchInputError) as ei:
        Volume.from_array(np.zeros((2, 3, 4, 5), np.float32))
    assert_user_error(ei, "3D", "4D")


def test_4d_file_where_3d_is_needed(tmp_path: Path) -> None:
    frames = [sitk.GetImageFromArray(good_array() + t) for t in range(3)]
    p = tmp_path / "series.nii.gz"
    sitk.WriteImage(sitk.JoinSeries(frames), str(p))
    with pytest.raises(MedTorchInputError) as ei:
        read_volume(p)
    assert_user_error(ei, "4D", "3 frames", "medtorch convert", "--frame N")


def test_vector_volume_where_scalar_is_needed() -> None:
    vol = Volume.from_array(np.random.default_rng(0).random((4, 5, 6, 3)), kind="vector")
    with pytest.raises(MedTorchInputError) as ei:
        check_volume(vol)
    assert_user_error(ei, "3 components")


def test_array_shape_not_matching_geometry() -> None:
    with pytest.raises(MedTorchInputError) as ei:
        Volume(np.zeros((4, 5, 6)), Geometry(size=(4, 5, 6)))
    assert_user_error(ei, "shape")


# -- geometry --------------------------------------------------------------------------------------


def test_zero_spacing() -> None:
    vol = Volume.from_array(good_array(), spacing=(1.0, 0.0, 1.0))
    with pytest.raises(MedTorchInputError) as ei:
        check_volume(vol)
    assert_user_error(ei, "spacing", "0")


def test_negative_spacing() -> None:
    vol = Volume.from_array(good_array(), spacing=(1.0, 1.0, -2.5))
    with pytest.raises(MedTorchInputError) as ei:
        check_volume(vol)
    assert_user_error(ei, "negative", "spacing", "-2.5")


def test_non_finite_spacing() -> None:
    vol = Volume.from_array(good_array(), spacing=(1.0, np.nan, 1.0))
    with pytest.raises(MedTorchInputError) as ei:
        check_volume(vol)
    assert_user_error(ei, "spacing")


def test_non_orthonormal_direction() -> None:
    sheared = np.array([[1.0, 0.3, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # gantry-tilt-like shear
    vol = Volume.from_array(good_array(), direction=sheared)
    with pytest.raises(MedTorchInputError) as ei:
        check_volume(vol)
    assert_user_error(ei, "non-orthonormal", "direction")


def test_direction_with_wrong_number_of_values() -> None:
    with pytest.raises(MedTorchInputError) as ei:
        Geometry(size=(2, 2, 2), direction=np.eye(2))
    assert_user_error(ei, "direction", "4 values")


def test_origin_with_wrong_number_of_values() -> None:
    with pytest.raises(MedTorchInputError) as ei:
        Geometry(size=(2, 2, 2), origin=(1.0, 2.0))
    assert_user_error(ei, "origin", "2")


# -- files that are not (whole) images ------------------------------------------------------------------


def test_text_file_named_nrrd(tmp_path: Path) -> None:
    p = tmp_path / "x.nrrd"
    p.write_text("this is a shopping list, not an image\n")
    with pytest.raises(MedTorchInputError) as ei:
        read_volume(p)
    assert_user_error(ei, "x.nrrd", "could not be read")


def test_random_bytes_named_nii_gz(tmp_path: Path) -> None:
    p = tmp_path / "x.nii.gz"
    p.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(MedTorchInputError) as ei:
        read_volume(p)
    assert_user_error(ei, "x.nii.gz")


def test_gzip_of_random_bytes_named_nii_gz(tmp_path: Path) -> None:
    import gzip

    p = tmp_path / "y.nii.gz"
    p.write_bytes(gzip.compress(np.random.default_rng(2).integers(0, 256, 4096, dtype=np.uint8).tobytes()))
    with pytest.raises(MedTorchInputError) as ei:
        read_volume(p)
    assert_user_error(ei, "y.nii.gz")


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    "name,compress",
    [
        ("t.nrrd", True),
        ("t.nrrd", False),
        ("t.nii.gz", True),
        ("t.nii", False),
        ("t.mha", True),
        ("t.mha", False),
    ],
)
def test_truncated_file(tmp_path: Path, name: str, compress: bool) -> None:
    # ITK's NIfTI reader silently zero-fills a truncated file; MedTorch must not.
    p = write_sitk(good_array((20, 20, 20)), tmp_path / name, compress=compress)
    read_volume(p)  # the complete file reads
    _truncate(p)
    with pytest.raises(MedTorchInputError) as ei:
        read_volume(p)
    assert_user_error(ei, name, "truncated")
    assert "No such file" not in str(ei.value)


# -- output ----------------------------------------------------------------------------------------


def test_unwritable_output_path(tmp_path: Path) -> None:
    # Tests may run as root, for whom a read-only folder is still writable: use a
    # path whose "folder" is an existing regular file instead.
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("I am a file")
    with pytest.raises(MedTorchInputError) as ei:
        write_volume(good_volume(), blocker / "out.nrrd")
    assert_user_error(ei, "output folder", "not_a_folder")
    assert blocker.read_text() == "I am a file"


def test_output_path_is_a_folder(tmp_path: Path) -> None:
    d = tmp_path / "out.nrrd"
    d.mkdir()
    with pytest.raises(MedTorchInputError) as ei:
        write_volume(good_volume(), d)
    assert_user_error(ei, "folder")


def test_unknown_output_format(tmp_path: Path) -> None:
    with pytest.raises(MedTorchInputError) as ei:
        write_volume(good_volume(), tmp_path / "out.png")
    assert_user_error(ei, "format", "out.png")


@pytest.fixture
def existing_target(tmp_path: Path) -> tuple[Path, bytes]:
    """An output path that already holds a valid file."""
    target = tmp_path / "result.nii.gz"
    write_volume(Volume.from_array(np.arange(60, dtype=np.int16).reshape(3, 4, 5)), target)
    return target, target.read_bytes()


def _assert_nothing_partial(target: Path, before: bytes) -> None:
    assert target.read_bytes() == before  # the old file is intact
    leftovers = [p.name for p in target.parent.iterdir() if p.name != target.name]
    assert leftovers == [], leftovers  # no temporary or partial file anywhere
    np.testing.assert_array_equal(read_volume(target).array, np.arange(60, dtype=np.int16).reshape(3, 4, 5))


def test_disk_full_inside_write(monkeypatch: pytest.MonkeyPatch, existing_target: tuple[Path, bytes]) -> None:
    target, before = existing_target
    real_write = sitk.WriteImage

    def write_half_then_fail(image: Any, filename: str, *a: Any, **kw: Any) -> None:
        real_write(image, filename, *a, **kw)
        _truncate(Path(filename))  # a partial file is on disk ...
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)  # ... when the disk fills

    monkeypatch.setattr(sitk, "WriteImage", write_half_then_fail)
    with pytest.raises(MedTorchInputError) as ei:
        write_volume(good_volume(), target)
    assert_user_error(ei, "disk filled up", "result.nii.gz")
    monkeypatch.undo()
    _assert_nothing_partial(target, before)


def test_disk_full_at_rename(monkeypatch: pytest.MonkeyPatch, existing_target: tuple[Path, bytes]) -> None:
    target, before = existing_target

    def no_space(src: Any, dst: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", no_space)
    with pytest.raises(MedTorchInputError) as ei:
        write_volume(good_volume(), target)
    assert_user_error(ei, "disk filled up")
    monkeypatch.undo()
    _assert_nothing_partial(target, before)


def test_disk_full_reported_by_itk(monkeypatch: pytest.MonkeyPatch, existing_target: tuple[Path, bytes]) -> None:
    # On a real full disk ITK raises a RuntimeError that has lost the errno.
    target, before = existing_target
    real_write = sitk.WriteImage

    def itk_fails(image: Any, filename: str, *a: Any, **kw: Any) -> None:
        real_write(image, filename, *a, **kw)
        _truncate(Path(filename))
        raise RuntimeError(
            "Exception thrown in SimpleITK ImageFileWriter_Execute: ITK ERROR: NiftiImageIO: Could not write data"
        )

    class Usage:
        total, used, free = 10**9, 10**9, 0

    monkeypatch.setattr(sitk, "WriteImage", itk_fails)
    monkeypatch.setattr(mio.shutil, "disk_usage", lambda p: Usage())
    with pytest.raises(MedTorchInputError) as ei:
        write_volume(good_volume(), target)
    assert_user_error(ei, "disk filled up")
    monkeypatch.undo()
    _assert_nothing_partial(target, before)


def test_itk_write_error_with_free_space(monkeypatch: pytest.MonkeyPatch, existing_target: tuple[Path, bytes]) -> None:
    target, before = existing_target

    def itk_fails(image: Any, filename: str, *a: Any, **kw: Any) -> None:
        raise RuntimeError("ITK ERROR: NiftiImageIO(0x1): Could not write data")

    monkeypatch.setattr(sitk, "WriteImage", itk_fails)
    with pytest.raises(MedTorchInputError) as ei:
        write_volume(good_volume(), target)
    assert_user_error(ei, "could not be written", "Could not write data")
    monkeypatch.undo()
    _assert_nothing_partial(target, before)


def test_disk_full_detached_format(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def no_space(*a: Any, **kw: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(sitk, "WriteImage", no_space)
    with pytest.raises(MedTorchInputError) as ei:
        write_volume(good_volume(), tmp_path / "x.nhdr")
    assert_user_error(ei, "disk filled up")
    assert list(tmp_path.iterdir()) == []


def test_disk_full_text_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    target.write_text("old")

    def no_space(self: Path, *a: Any, **kw: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_text", no_space)
    with pytest.raises(MedTorchInputError) as ei:
        write_text_atomic(target, "new")
    assert_user_error(ei, "disk filled up")
    monkeypatch.undo()
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_permission_denied_at_rename(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def denied(src: Any, dst: Any) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(os, "replace", denied)
    with pytest.raises(MedTorchInputError) as ei:
        write_volume(good_volume(), tmp_path / "x.mha")
    assert_user_error(ei, "no permission", "x.mha")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


# -- inputs stay as they were ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: good_volume(),
        lambda: Volume.from_array(np.full((4, 5, 6), 7.0)),
        lambda: Volume.from_array(np.where(np.eye(6)[None, :5, :] > 0, np.nan, 1.0).repeat(4, axis=0)),
        lambda: Volume.from_array(good_array(), spacing=(1.0, -1.0, 1.0)),
    ],
)
def test_check_volume_does_not_modify_its_input(make: Any) -> None:
    vol = make()
    arr_before = vol.array.copy()
    geom_before = vol.geometry
    origin, spacing, direction = (vol.origin.copy(), vol.spacing.copy(), vol.direction.copy())
    meta_before = dict(vol.metadata)
    try:
        out = check_volume(vol)
        assert out is vol
    except MedTorchInputError:
        pass
    np.testing.assert_array_equal(vol.array, arr_before)  # NaN == NaN here
    assert vol.array.dtype == arr_before.dtype
    assert vol.geometry is geom_before
    np.testing.assert_array_equal(vol.origin, origin)
    np.testing.assert_array_equal(vol.spacing, spacing)
    np.testing.assert_array_equal(vol.direction, direction)
    assert vol.metadata == meta_before
    assert vol.kind == "scalar"
