"""medtorch.memory (budgets, estimates, refusals, chunk plans) and medtorch.io.raw (memory maps).

Memory-mapped volumes are checked against SimpleITK reading the same file: voxels equal,
origin/spacing/direction within 1e-6 (NIfTI stores float32; both read the same floats).
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from medtorch import memory
from medtorch.errors import MedTorchInputError, OutOfMemoryBudget
from medtorch.io.raw import memmap_volume, open_raw
from medtorch.memory import (
    BUDGET_ENV_VAR,
    available_memory_bytes,
    check_fits,
    estimate_bytes,
    format_bytes,
    memory_budget_bytes,
    parse_bytes,
    plan_chunks,
)
from medtorch.volume import Volume

GIB = 1024**3
GEOM_ATOL = 1e-6


# -- memory: sizes and budgets -----------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [("8G", 8 * GIB), ("512M", 512 * 1024**2), ("1.5GB", int(1.5 * GIB)), ("64KiB", 65536), ("2 t", 2 * 1024**4),
     ("1000", 1000), (4096, 4096), (1e9, 10**9), ("100B", 100)],
)
def test_parse_bytes(text: str | float, expected: int) -> None:
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["", "lots", "8X", "-1G", "0", "G", "8GI", True])
def test_parse_bytes_refuses(text: object) -> None:
    with pytest.raises(MedTorchInputError):
        parse_bytes(text)  # type: ignore[arg-type]


def test_format_bytes() -> None:
    assert format_bytes(12.3 * GIB) == "12.3 GB"
    assert format_bytes(512 * 1024**2) == "512.0 MB"
    assert format_bytes(3 * 1024) == "3.0 KB"
    assert format_bytes(12) == "12 bytes"


def test_budget_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(BUDGET_ENV_VAR, raising=False)
    monkeypatch.setattr(memory, "available_memory_bytes", lambda device=None: 3 * GIB)
    assert memory_budget_bytes() == 3 * GIB
    monkeypatch.setenv(BUDGET_ENV_VAR, "512M")
    assert memory_budget_bytes() == 512 * 1024**2
    assert memory_budget_bytes(budget="2G") == 2 * GIB  # the argument wins
    monkeypatch.setenv(BUDGET_ENV_VAR, "plenty")
    with pytest.raises(MedTorchInputError, match=BUDGET_ENV_VAR):
        memory_budget_bytes()


def test_check_fits_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(BUDGET_ENV_VAR, raising=False)
    monkeypatch.setattr(memory, "available_memory_bytes", lambda device=None: 8 * GIB)
    assert check_fits(7 * GIB, "resampling") == 8 * GIB
    with pytest.raises(OutOfMemoryBudget) as info:
        check_fits(12.3 * GIB, "resampling")
    assert str(info.value) == (
        "resampling needs 12.3 GB but 8.0 GB is available. What to do: crop the volume, downsample it, "
        "raise MEDTORCH_MEMORY_BUDGET, or use a machine with more memory."
    )
    assert isinstance(info.value, MedTorchInputError)
    assert info.value.required_bytes == int(12.3 * GIB) and info.value.budget_bytes == 8 * GIB  # type: ignore[attr-defined]
    monkeypatch.setenv(BUDGET_ENV_VAR, "4G")
    with pytest.raises(OutOfMemoryBudget, match="the memory budget set by MEDTORCH_MEMORY_BUDGET is 4.0 GB"):
        check_fits(5 * GIB, "resampling")
    with pytest.raises(OutOfMemoryBudget, match=r"on cuda:0 .*\(or run on the CPU\)"):
        check_fits(5 * GIB, "resampling", device="cuda:0", budget="1G")


def test_resample_refuses_under_env_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    from medtorch.resample import resample

    vol = Volume.from_array(np.random.default_rng(0).normal(size=(8, 9, 10)).astype(np.float32))
    shifted = np.eye(4)
    shifted[:3, 3] = 0.3
    monkeypatch.setenv(BUDGET_ENV_VAR, "2K")
    with pytest.raises(OutOfMemoryBudget, match=r"^resampling needs .*MEDTORCH_MEMORY_BUDGET is 2.0 KB"):
        resample(vol, vol.geometry, shifted)
    monkeypatch.setenv(BUDGET_ENV_VAR, "64M")
    assert resample(vol, vol.geometry, shifted).array.shape == vol.array.shape


def test_available_memory_is_plausible() -> None:
    avail = available_memory_bytes()
    total = None
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            total = int(line.split()[1]) * 1024
    assert 0 < avail <= (total or avail)
    assert available_memory_bytes("cpu") > 0


def test_available_memory_without_psutil(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_psutil(name: str, *args: object, **kwargs: object) -> object:
        if name == "psutil":
            raise ImportError("no psutil")
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", no_psutil)
    assert memory._host_available_bytes() > 0


def test_cgroup_limits(tmp_path: Path) -> None:
    # cgroup v2: limit 1,000,000, usage 400,000 of which 100,000 reclaimable cache.
    v2 = tmp_path / "v2"
    (v2 / "job").mkdir(parents=True)
    (v2 / "job" / "memory.max").write_text("1000000\n")
    (v2 / "job" / "memory.current").write_text("400000\n")
    (v2 / "job" / "memory.stat").write_text("anon 300000\ninactive_file 100000\n")
    (v2 / "memory.max").write_text("max\n")
    proc = tmp_path / "cgroup_v2"
    proc.write_text("0::/job\n")
    assert memory._cgroup_available_bytes(v2, proc) == 700_000
    # cgroup v1 with the "unlimited" sentinel at the root and a limit for the job.
    v1 = tmp_path / "v1"
    (v1 / "memory" / "job").mkdir(parents=True)
    (v1 / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    (v1 / "memory" / "job" / "memory.limit_in_bytes").write_text("2000000\n")
    (v1 / "memory" / "job" / "memory.usage_in_bytes").write_text("500000\n")
    (v1 / "memory" / "job" / "memory.stat").write_text("total_inactive_file 0\n")
    proc1 = tmp_path / "cgroup_v1"
    proc1.write_text("4:memory:/job\n1:cpu:/\n")
    assert memory._cgroup_available_bytes(v1, proc1) == 1_500_000
    (v1 / "memory" / "job" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    assert memory._cgroup_available_bytes(v1, proc1) is None


def test_estimate_bytes() -> None:
    assert estimate_bytes((10, 20, 30), 4) == 24_000
    assert estimate_bytes(6000, np.float32, copies=2.5) == 60_000
    assert estimate_bytes((10, 20, 30), torch.float64) == 48_000
    assert estimate_bytes((512, 512, 400), np.int16) == 512 * 512 * 400 * 2
    assert estimate_bytes((2, 3), "uint8") == 6


@settings(max_examples=200, deadline=None)
@given(num=st.integers(0, 600), per_slice=st.integers(1, 10**6), factor=st.floats(1.0, 700.0))
def test_plan_chunks_covers_and_fits(num: int, per_slice: int, factor: float) -> None:
    budget = int(per_slice * factor)
    chunks = plan_chunks(num, per_slice, budget)
    covered = [k for a, b in chunks for k in range(a, b)]
    assert covered == list(range(num))  # every slice once, in order
    assert all((b - a) * per_slice <= budget for a, b in chunks)
    if num:
        per = budget // per_slice
        assert len(chunks) == -(-num // per)  # as few chunks as fit
        sizes = [b - a for a, b in chunks]
        assert max(sizes) - min(sizes) <= 1  # balanced


def test_plan_chunks_refuses_when_a_slice_does_not_fit() -> None:
    with pytest.raises(OutOfMemoryBudget, match="one slice needs"):
        plan_chunks(10, 2 * 1024**2, "1M")
    assert plan_chunks(5, 0, 1) == [(0, 5)]


# -- raw: open_raw -----------------------------------------------------------------------------


def test_open_raw_big_endian_with_header(tmp_path: Path) -> None:
    arr = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6) - 50
    path = tmp_path / "vol.raw"
    path.write_bytes(b"H" * 100 + arr.astype(">i2").tobytes())
    d = Rotation.from_euler("xyz", (20, -10, 35), degrees=True).as_matrix()
    vol = open_raw(path, (4, 5, 6), "int16", byteorder="big", offset=100, spacing=(0.7, 1.1, 3.0),
                   origin=(1, 2, 3), direction=d)
    assert isinstance(vol.array, np.memmap) and not vol.array.flags.writeable
    np.testing.assert_array_equal(vol.array, arr)
    assert vol.size == (6, 5, 4) and np.allclose(vol.direction, d) and vol.metadata["memmap"]
    with pytest.raises(ValueError):
        vol.array[0, 0, 0] = 1
    # Fortran layout and vector voxels
    f = tmp_path / "f.raw"
    arr.tofile(f)
    vf = open_raw(f, (6, 5, 4), np.int16, order="F", kind="scalar")
    np.testing.assert_array_equal(np.asarray(vf.array), arr.ravel().reshape((6, 5, 4), order="F"))
    vv = open_raw(f, (4, 5, 2, 3), np.int16)
    assert vv.kind == "vector" and vv.num_components == 3


def test_open_raw_refusals(tmp_path: Path) -> None:
    path = tmp_path / "short.raw"
    path.write_bytes(b"\0" * 100)
    with pytest.raises(MedTorchInputError, match="truncated"):
        open_raw(path, (4, 5, 6), "int16")
    with pytest.raises(MedTorchInputError, match="3 values"):
        open_raw(path, (4, 5), "int16")
    with pytest.raises(MedTorchInputError, match="not found"):
        open_raw(tmp_path / "missing.raw", (1, 1, 1), "uint8")
    with pytest.raises(MedTorchInputError, match="byte order"):
        open_raw(path, (2, 2, 2), "int16", byteorder="middle")  # type: ignore[arg-type]


# -- raw: headers read like SimpleITK ---------------------------------------------------------------


@pytest.fixture(scope="module")
def oblique_image() -> sitk.Image:
    rng = np.random.default_rng(7)
    arr = rng.integers(-1000, 3000, size=(16, 24, 20)).astype(np.int16)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.7, 1.1, 3.0))
    img.SetOrigin((12.5, -30.25, 41.0))
    img.SetDirection(tuple(Rotation.from_euler("xyz", (20, -10, 35), degrees=True).as_matrix().ravel()))
    return img


def assert_same_as_sitk(vol: Volume, path: Path) -> None:
    img = sitk.ReadImage(str(path))
    assert isinstance(vol.array, np.memmap) or isinstance(vol.array.base, np.memmap)
    assert not vol.array.flags.writeable
    np.testing.assert_array_equal(vol.array, sitk.GetArrayFromImage(img))
    assert vol.size == img.GetSize()
    np.testing.assert_allclose(vol.origin, img.GetOrigin(), atol=GEOM_ATOL)
    np.testing.assert_allclose(vol.spacing, img.GetSpacing(), atol=GEOM_ATOL)
    np.testing.assert_allclose(vol.direction.ravel(), img.GetDirection(), atol=GEOM_ATOL)
    assert vol.kind == ("vector" if img.GetNumberOfComponentsPerPixel() > 1 else "scalar")


@pytest.mark.parametrize(
    "ext, pixel",
    [(ext, pixel) for ext in (".nrrd", ".nhdr", ".mha", ".mhd", ".nii", ".hdr")
     for pixel in ("int16", "uint8", "float64", "vector") if (ext, pixel) != (".hdr", "vector")],
)
def test_memmap_matches_sitk(tmp_path: Path, oblique_image: sitk.Image, ext: str, pixel: str) -> None:
    img = oblique_image
    if pixel == "vector":
        arr = sitk.GetArrayFromImage(img).astype(np.float32)
        vec = sitk.GetImageFromArray(np.stack([arr, -arr, arr * 0.5], -1), isVector=True)
        vec.CopyInformation(img)
        img = vec
    elif pixel != "int16":
        img = sitk.Cast(img, sitk.sitkUInt8 if pixel == "uint8" else sitk.sitkFloat64)
    path = tmp_path / f"vol{ext}"
    sitk.WriteImage(img, str(path), useCompression=False)
    vol = memmap_volume(path)
    assert_same_as_sitk(vol, path)
    if pixel != "vector":
        assert memmap_volume(path, kind="label").kind == "label"
    else:
        with pytest.raises(MedTorchInputError, match="components per voxel"):
            memmap_volume(path, kind="label")


def _nrrd_header(fields: list[str]) -> bytes:
    return ("NRRD0004\n# written by a test\n" + "\n".join(fields) + "\n").encode()


def test_nrrd_ras_big_endian_detached_with_byte_skip(tmp_path: Path) -> None:
    arr = np.random.default_rng(2).normal(size=(4, 5, 6)).astype(np.float32)
    (tmp_path / "data.raw").write_bytes(b"junk-header" + arr.astype(">f4").tobytes())
    fields = [
        "type: float", "dimension: 3", "space: right-anterior-superior", "sizes: 6 5 4",
        "space directions: (0.5,0.1,0) (-0.2,1.0,0) (0,0,2.5)", "kinds: domain domain domain",
        "endian: big", "encoding: raw", "space origin: (10,-20,30)", "byte skip: -1", "data file: data.raw",
        "my key:=my: value",
    ]
    path = tmp_path / "ras.nhdr"
    path.write_bytes(_nrrd_header(fields))
    vol = memmap_volume(path)
    assert_same_as_sitk(vol, path)
    np.testing.assert_allclose(vol.origin, (-10, 20, 30))  # RAS -> LPS
    # attached data, LAS space, line skip and spacings-free header
    fields2 = ["type: short", "dimension: 3", "space: left-anterior-superior", "sizes: 6 5 4",
               "space directions: (1,0,0) (0,1.5,0) (0,0,2)", "endian: little", "encoding: raw",
               "space origin: (1,2,3)", "line skip: 1"]
    ints = (np.arange(120, dtype=np.int16).reshape(4, 5, 6) * 7)
    p2 = tmp_path / "las.nrrd"
    p2.write_bytes(_nrrd_header(fields2) + b"\n" + b"a skipped line\n" + ints.tobytes())
    v2 = memmap_volume(p2)
    np.testing.assert_array_equal(v2.array, ints)
    np.testing.assert_allclose(v2.origin, (-1, 2, 3))
    np.testing.assert_allclose(v2.direction, np.diag([-1.0, 1.0, 1.0]))


def _nifti_set(path: Path, offset: int, fmt: str, *values: float) -> None:
    raw = bytearray(path.read_bytes())
    struct.pack_into("<" + fmt, raw, offset, *values)
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("case", ["sform_only", "qform_only", "qform_wins", "neither"])
def test_nifti_orientation_rules_match_sitk(tmp_path: Path, oblique_image: sitk.Image, case: str) -> None:
    path = tmp_path / "vol.nii"
    sitk.WriteImage(oblique_image, str(path))
    if case == "sform_only":
        _nifti_set(path, 252, "h", 0)
    elif case == "qform_only":
        _nifti_set(path, 254, "h", 0)
    elif case == "qform_wins":  # sform code 2 (aligned) with another rotation: ITK keeps the qform
        r = Rotation.from_euler("z", 30, degrees=True).as_matrix() * [0.7, 1.1, 3.0]
        _nifti_set(path, 254, "h", 2)
        _nifti_set(path, 280, "12f", *np.concatenate([r, [[1.0], [2.0], [3.0]]], 1).ravel())
    else:
        _nifti_set(path, 252, "hh", 0, 0)
    assert_same_as_sitk(memmap_volume(path), path)


def test_nifti2_matches_nifti1_read_by_sitk(tmp_path: Path, oblique_image: sitk.Image) -> None:
    src = tmp_path / "v1.nii"
    sitk.WriteImage(oblique_image, str(src))
    h1 = src.read_bytes()
    u = struct.unpack_from
    h2 = bytearray(544)
    struct.pack_into("<i", h2, 0, 540)
    h2[4:12] = b"n+2\0\r\n\x1a\n"
    struct.pack_into("<hh", h2, 12, *u("<hh", h1, 70))  # datatype, bitpix
    struct.pack_into("<8q", h2, 16, *u("<8h", h1, 40))  # dim
    struct.pack_into("<8d", h2, 104, *u("<8f", h1, 76))  # pixdim
    struct.pack_into("<q", h2, 168, 544)  # vox_offset
    struct.pack_into("<dd", h2, 176, 1.0, 0.0)  # scl_slope, scl_inter
    struct.pack_into("<ii", h2, 344, *u("<hh", h1, 252))  # qform_code, sform_code
    struct.pack_into("<6d", h2, 352, *u("<6f", h1, 256))  # quatern_b..d, qoffset_x..z
    struct.pack_into("<12d", h2, 400, *u("<12f", h1, 280))  # srow_x, srow_y, srow_z
    struct.pack_into("<i", h2, 500, h1[123])  # xyzt_units
    path = tmp_path / "v2.nii"
    path.write_bytes(bytes(h2) + h1[int(u("<f", h1, 108)[0]):])
    # SimpleITK 2.5 (ITK 5.4) does not read NIfTI-2: compare with its reading of the NIfTI-1 twin.
    vol = memmap_volume(path)
    assert vol.metadata["data_offset"] == 544
    assert_same_as_sitk(vol, src)


def test_nifti_scaled_needs_consent(tmp_path: Path, oblique_image: sitk.Image) -> None:
    path = tmp_path / "scaled.nii"
    sitk.WriteImage(oblique_image, str(path))
    _nifti_set(path, 112, "ff", 2.0, -5.0)
    with pytest.raises(MedTorchInputError, match="scaled"):
        memmap_volume(path)
    vol = memmap_volume(path, allow_scaled=True)
    assert vol.metadata["scl_slope"] == 2.0 and vol.metadata["scl_inter"] == -5.0
    stored = np.asarray(vol.array).astype(np.float64)
    np.testing.assert_allclose(stored * 2.0 - 5.0, sitk.GetArrayFromImage(sitk.ReadImage(str(path))), atol=1e-3)


@pytest.mark.parametrize("ext", [".nrrd", ".nhdr", ".mha", ".mhd", ".nii"])
def test_truncated_is_refused(tmp_path: Path, oblique_image: sitk.Image, ext: str) -> None:
    path = tmp_path / f"vol{ext}"
    sitk.WriteImage(oblique_image, str(path), useCompression=False)
    data = {".nhdr": path.with_suffix(".raw"), ".mhd": path.with_suffix(".raw")}.get(ext, path)
    data.write_bytes(data.read_bytes()[:-10])
    with pytest.raises(MedTorchInputError, match="truncated"):
        memmap_volume(path)


@pytest.mark.parametrize("name", ["vol.nrrd", "vol.mha", "vol.nii.gz", "vol.nii"])
def test_compressed_is_refused(tmp_path: Path, oblique_image: sitk.Image, name: str) -> None:
    path = tmp_path / name
    if name == "vol.nii":  # gzip data behind a .nii name
        sitk.WriteImage(oblique_image, str(tmp_path / "x.nii.gz"))
        path.write_bytes((tmp_path / "x.nii.gz").read_bytes())
    else:
        sitk.WriteImage(oblique_image, str(path), useCompression=True)
    with pytest.raises(MedTorchInputError, match="compressed.*What to do: decompress it first"):
        memmap_volume(path)


def test_4d_and_unknown_are_refused(tmp_path: Path) -> None:
    img = sitk.GetImageFromArray(np.zeros((3, 4, 5, 6), np.int16), isVector=False)
    for ext in (".nrrd", ".nii", ".mha"):
        path = tmp_path / f"t{ext}"
        sitk.WriteImage(img, str(path), useCompression=False)
        with pytest.raises(MedTorchInputError, match="not a 3D volume"):
            memmap_volume(path)
    other = tmp_path / "x.png"
    other.write_bytes(b"\x89PNG....")
    with pytest.raises(MedTorchInputError, match="unknown format"):
        memmap_volume(other)
    with pytest.raises(MedTorchInputError, match="not found"):
        memmap_volume(tmp_path / "missing.nrrd")
