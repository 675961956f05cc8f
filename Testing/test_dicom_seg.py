"""DICOM SEG output with a geometry check after every write (issue 19, part 1).

Sources are DICOM series built from pydicom's real CT_small.dcm (new UIDs, positions along
a chosen slice normal, file names and InstanceNumber in no useful order): an axial one, an
oblique one, one with negated row and column directions and one with a negated column
direction (the front-to-back mirror of TotalSegmentator PR #598). Every written SEG is also
read back with highdicom's own volume reader, an implementation independent of MedTorch's
check, and compared with the intended segments in patient space. A deliberately mirrored
writer (rows flipped front to back, or the frame order reversed) must be caught, and the
refused file must not be left behind.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
hd = pytest.importorskip("highdicom", reason="pip install 'highdicom>=0.22,<1' (the dicom extra)")

from pydicom.data import get_testdata_file  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402

from medtorch.cli import main  # noqa: E402
from medtorch.errors import MedTorchInputError  # noqa: E402
from medtorch.io import write_volume  # noqa: E402
from medtorch.segment import dicom_seg  # noqa: E402
from medtorch.io.dicom import read_dicom_series  # noqa: E402
from medtorch.segment.dicom_seg import DicomGeometryError, parse_names, write_dicom_seg  # noqa: E402
from medtorch.volume import Volume  # noqa: E402

STEP = 2.5
N_SLICES = 7


def _rotation(deg_z: float, deg_x: float, deg_y: float) -> np.ndarray:
    z, x, y = (math.radians(a) for a in (deg_z, deg_x, deg_y))
    rz = np.array([[math.cos(z), -math.sin(z), 0], [math.sin(z), math.cos(z), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(x), -math.sin(x)], [0, math.sin(x), math.cos(x)]])
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    return rz @ rx @ ry


#: columns: row direction (i), column direction (j), slice normal (k) = i x j
SOURCES = {
    "axial": np.eye(3),
    "oblique": _rotation(30.0, 20.0, -10.0),
    "negated_row_and_column": np.diag([-1.0, -1.0, 1.0]),
    "negated_column_pr598": np.diag([1.0, -1.0, -1.0]),
}


def make_series(folder: Path, rotation: np.ndarray, origin=(-80.25, 40.5, 112.75), n: int = N_SLICES,
                step: float = STEP, seed: int = 0, series_uid: str | None = None, study_uid: str | None = None,
                frame_of_reference: str | None = None) -> str:
    """``n`` slices of CT_small.dcm at ``origin + k * step * normal``, in shuffled files; returns the series UID.

    CT_small's header keeps its SpacingBetweenSlices of 5 mm, which disagrees with the 2.5 mm
    step of the positions: the writer must take the step from the positions."""
    base = get_testdata_file("CT_small.dcm")
    if base is None:  # pragma: no cover
        pytest.skip("pydicom's CT_small.dcm is not available")
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    names = rng.sample(range(10000, 99999), n)
    numbers = rng.sample(range(1, 10 * n), n)
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    frame_of_reference = frame_of_reference or generate_uid()
    r, c, normal = rotation[:, 0], rotation[:, 1], rotation[:, 2]
    for k in range(n):
        ds = pydicom.dcmread(base)
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_of_reference
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = numbers[k]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in np.asarray(origin) + k * step * normal]
        ds.ImageOrientationPatient = [f"{v:.10f}" for v in np.concatenate([r, c])]
        if "SliceLocation" in ds:
            del ds.SliceLocation
        ds.save_as(folder / f"IM{names[k]}", enforce_file_format=True)
    return series_uid


def blobs(shape) -> np.ndarray:
    """Two asymmetric segments (labels 1 and 3), off-centre along every axis."""
    lab = np.zeros(shape, np.uint8)
    lab[1:3, 10:31, 40:52] = 1
    lab[2, 31:35, 40:44] = 1  # a tail: no mirror of the segment is the segment
    lab[3:6, 70:84, 6:25] = 3
    return lab


def intended(lab: np.ndarray, geometry) -> dict[int, tuple[np.ndarray, float]]:
    out = {}
    for value in (v for v in np.unique(lab) if v):
        z, y, x = np.nonzero(lab == value)
        pts = geometry.index_to_physical(np.stack([x, y, z], axis=1).astype(float))
        out[int(value)] = (pts.mean(axis=0), len(x) * geometry.voxel_volume_mm3)
    return out


def highdicom_segments(path: Path) -> dict[int, tuple[np.ndarray, float]]:
    """Each segment's centroid (LPS) and volume from highdicom's volume reader (not MedTorch's check)."""
    seg = hd.seg.segread(str(path))
    vol = seg.get_volume(combine_segments=True)
    affine = np.asarray(vol.affine)
    voxel = abs(float(np.linalg.det(affine[:3, :3])))
    out = {}
    for number in (int(v) for v in np.unique(vol.array) if v):
        idx = np.argwhere(vol.array == number).astype(float)  # (slice, row, column)
        pts = idx @ affine[:3, :3].T + affine[:3, 3]
        out[number] = (pts.mean(axis=0), len(idx) * voxel)
    return out


@pytest.fixture(params=sorted(SOURCES))
def source(request, tmp_path):
    folder = tmp_path / "source"
    uid = make_series(folder, SOURCES[request.param])
    vol = read_dicom_series(folder)
    return folder, uid, vol, request.param


def test_round_trip_on_every_source(source, tmp_path):
    folder, uid, vol, name = source
    assert np.allclose(vol.geometry.direction, SOURCES[name], atol=1e-6)
    lab = blobs(vol.array.shape)
    out = tmp_path / "out" / "seg.dcm"
    out.parent.mkdir()
    result = write_dicom_seg(Volume(lab, vol.geometry, "label"), folder, out,
                             names={1: "Necrosis", 3: "Enhancing tumor"}, algorithm_type="AUTOMATIC")
    assert out.is_file() and [p.name for p in out.parent.iterdir()] == ["seg.dcm"]
    want = intended(lab, vol.geometry)
    # MedTorch's own check: every segment within half a voxel (here: exactly in place)
    assert [(s.number, s.label_value) for s in result.segments] == [(1, 1), (2, 3)]
    for s in result.segments:
        assert s.shift_voxels < 1e-3 and s.volume_diff_voxels < 1e-6
        assert np.allclose(s.written_centroid, want[s.label_value][0], atol=1e-3)
    # an independent reader: highdicom's volume of the file, in patient space
    to_ijk = np.linalg.inv(vol.geometry.direction @ np.diag(vol.geometry.spacing))
    got = highdicom_segments(out)
    for number, value in ((1, 1), (2, 3)):
        shift = np.abs(to_ijk @ (got[number][0] - want[value][0]))
        assert shift.max() < 0.01, (name, number, shift)
        assert got[number][1] == pytest.approx(want[value][1], rel=1e-6)
    # the header: references, UIDs, codes, measured slice step
    ds = pydicom.dcmread(out)
    src = pydicom.dcmread(next(folder.iterdir()))
    assert ds.Modality == "SEG" and ds.SegmentationType == "BINARY"
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == uid
    assert len(ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence) == N_SLICES
    assert ds.FrameOfReferenceUID == src.FrameOfReferenceUID and ds.StudyInstanceUID == src.StudyInstanceUID
    assert ds.SeriesInstanceUID not in (uid, "") and ds.SeriesInstanceUID == result.series_instance_uid
    assert ds.SOPInstanceUID == result.sop_instance_uid
    assert float(ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].SpacingBetweenSlices) == pytest.approx(STEP, abs=1e-5)
    necrosis, enhancing = ds.SegmentSequence
    assert necrosis.SegmentLabel == "Necrosis" and enhancing.SegmentLabel == "Enhancing tumor"
    assert necrosis.SegmentedPropertyTypeCodeSequence[0].CodeValue == "6574001"
    assert enhancing.SegmentedPropertyTypeCodeSequence[0].CodeValue == "C113842"
    assert enhancing.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == "NCIt"
    assert necrosis.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
    assert necrosis.AnatomicRegionSequence[0].CodeValue == "12738006"
    assert necrosis.SegmentAlgorithmType == "AUTOMATIC"


def _mirror_rows(masks):  # front to back for an axial series: the PR #598 defect
    return masks[:, ::-1]


def _reverse_frames(masks):  # frames written against the wrong source images
    return masks[::-1]


@pytest.mark.parametrize("mirror", [_mirror_rows, _reverse_frames], ids=["rows_flipped", "frames_reversed"])
def test_mirrored_writer_is_caught_and_leaves_nothing(source, tmp_path, monkeypatch, mirror):
    folder, _, vol, _ = source
    monkeypatch.setattr(dicom_seg, "_frames_for_writer", mirror)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "seg.dcm").write_bytes(b"the previous export")
    with pytest.raises(DicomGeometryError) as info:
        write_dicom_seg(Volume(blobs(vol.array.shape), vol.geometry, "label"), folder, out_dir / "seg.dcm",
                        names={1: "Necrosis", 3: "Edema"})
    message = str(info.value)
    assert "failed its geometry check" in message and "voxels off" in message and "What to do" in message
    assert "segment 1 'Necrosis'" in message
    # the refused file is gone and the previous export is untouched
    assert [p.name for p in out_dir.iterdir()] == ["seg.dcm"]
    assert (out_dir / "seg.dcm").read_bytes() == b"the previous export"


def test_check_catches_a_half_voxel_shift(tmp_path):
    """The threshold itself: a centroid 0.6 voxel away fails, 0.4 voxel passes."""
    folder = tmp_path / "source"
    uid = make_series(folder, SOURCES["oblique"])
    vol = read_dicom_series(folder)
    lab = blobs(vol.array.shape)
    out = tmp_path / "seg.dcm"
    write_dicom_seg(Volume(lab, vol.geometry, "label"), folder, out)
    ds = pydicom.dcmread(folder / next(p.name for p in folder.iterdir()))
    want = intended(lab, vol.geometry)
    g = vol.geometry
    along_j = g.direction[:, 1] * g.spacing[1]

    def expect(fraction):
        return {n: (v, f"Class {v}", want[v][0] + fraction * along_j, want[v][1]) for n, v in ((1, 1), (2, 3))}

    dicom_seg.check_dicom_seg(out, expect(0.4), g, uid, ds.FrameOfReferenceUID)
    with pytest.raises(DicomGeometryError, match="0.60 voxels off"):
        dicom_seg.check_dicom_seg(out, expect(0.6), g, uid, ds.FrameOfReferenceUID)
    with pytest.raises(DicomGeometryError, match="does not reference the source series"):
        dicom_seg.check_dicom_seg(out, expect(0.0), g, generate_uid(), ds.FrameOfReferenceUID)
    bigger = {n: (v, name, c, vol_mm3 + g.voxel_volume_mm3) for n, (v, name, c, vol_mm3) in expect(0.0).items()}
    with pytest.raises(DicomGeometryError, match="1.00 voxels off"):
        dicom_seg.check_dicom_seg(out, bigger, g, uid, ds.FrameOfReferenceUID)


def test_fractional_segment(tmp_path):
    folder = tmp_path / "source"
    make_series(folder, SOURCES["negated_column_pr598"])
    vol = read_dicom_series(folder)
    prob = np.zeros(vol.array.shape, np.float32)
    prob[2:5, 20:40, 30:45] = 0.3
    prob[3, 25:35, 33:40] = 0.9
    out = tmp_path / "prob.dcm"
    result = write_dicom_seg(Volume(prob, vol.geometry, "scalar"), folder, out, fractional=True, names={1: "Tumor"})
    assert result.segmentation_type == "FRACTIONAL"
    ds = pydicom.dcmread(out)
    assert ds.SegmentationType == "FRACTIONAL" and int(ds.MaximumFractionalValue) == 255
    assert ds.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "108369006"
    (check,) = result.segments
    q = np.round(prob.astype(np.float64) * 255) / 255
    assert check.written_volume_mm3 == pytest.approx(q.sum() * vol.geometry.voxel_volume_mm3, rel=1e-9)
    assert check.shift_voxels < 1e-3
    with pytest.raises(MedTorchInputError, match="between 0 and 1"):
        write_dicom_seg(Volume(prob * 3, vol.geometry, "scalar"), folder, tmp_path / "bad.dcm", fractional=True)


def test_refusals(tmp_path):
    folder = tmp_path / "source"
    make_series(folder, SOURCES["oblique"])
    vol = read_dicom_series(folder)
    lab = blobs(vol.array.shape)
    g = vol.geometry
    moved = type(g)(g.size, g.origin + 3 * g.direction[:, 0] * g.spacing[0], g.spacing, g.direction)
    out = tmp_path / "out.dcm"
    with pytest.raises(MedTorchInputError, match="not on the grid of the source series.*3 voxels"):
        write_dicom_seg(Volume(lab, moved, "label"), folder, out)
    with pytest.raises(MedTorchInputError, match=r"size is \(128, 128, 6\) voxels"):
        write_dicom_seg(Volume(lab[:-1], g.with_size_spacing((128, 128, 6), g.spacing), "label"), folder, out)
    with pytest.raises(MedTorchInputError, match="empty"):
        write_dicom_seg(Volume(np.zeros_like(lab), g, "label"), folder, out)
    with pytest.raises(MedTorchInputError, match="not a label map"):
        write_dicom_seg(Volume(lab.astype(np.float32) * 0.5, g, "scalar"), folder, out)
    with pytest.raises(MedTorchInputError, match="algorithm type"):
        write_dicom_seg(Volume(lab, g, "label"), folder, out, algorithm_type="GUESSED")
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["source"]
    with pytest.raises(MedTorchInputError, match="VALUE=NAME"):
        parse_names(["1:Necrosis"])
    assert parse_names(["1=Necrosis,2=Edema", "4=Enhancing tumor"]) == {1: "Necrosis", 2: "Edema", 4: "Enhancing tumor"}


# -- the command line ------------------------------------------------------------------------


def test_cli_export_dicom(tmp_path, capsys):
    folder = tmp_path / "study"
    uid_a = make_series(folder / "a", SOURCES["oblique"], seed=1)
    uid_b = make_series(folder / "b", SOURCES["negated_row_and_column"], seed=2)
    vol = read_dicom_series(folder / "b")
    label = tmp_path / "tumor.seg.nrrd"
    write_volume(Volume(blobs(vol.array.shape), vol.geometry, "label"), label)
    out = tmp_path / "export"
    # a folder of two series, none chosen: refused with the command's own flag
    rc = main(["export-dicom", "--seg", str(label), "--source", str(folder), "--out", str(out), "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and "--source-series-uid" in err and uid_a in err and uid_b in err
    assert not out.exists() or not any(out.iterdir())
    # the wrong series: refused, it is not the label map's grid
    rc = main(["export-dicom", "--seg", str(label), "--source", str(folder), "--source-series-uid", uid_a,
               "--out", str(out), "-q"])
    assert rc == 2 and "not on the grid" in capsys.readouterr().err
    # the right one
    rc = main(["export-dicom", "--seg", str(label), "--source", str(folder), "--source-series-uid", uid_b,
               "--out", str(out), "--names", "1=Necrosis,3=Edema", "--algorithm-type", "AUTOMATIC"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    written = out / "tumor_SEG.dcm"
    assert written.is_file() and "geometry check passed" in printed and "'Edema' (label 3)" in printed
    ds = pydicom.dcmread(written)
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == uid_b
    assert [s.SegmentLabel for s in ds.SegmentSequence] == ["Necrosis", "Edema"]
    assert ds.SegmentSequence[1].SegmentedPropertyTypeCodeSequence[0].CodeValue == "79654002"
    # an output folder that is the source folder is refused before any work
    rc = main(["export-dicom", "--seg", str(label), "--source", str(folder / "b"), "--out", str(folder / "b"), "-q"])
    assert rc == 2 and "would replace your input" in capsys.readouterr().err


def test_cli_mirrored_writer_exits_with_error(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "source"
    make_series(folder, SOURCES["negated_column_pr598"])
    vol = read_dicom_series(folder)
    label = tmp_path / "tumor.nii.gz"
    write_volume(Volume(blobs(vol.array.shape), vol.geometry, "label"), label)
    monkeypatch.setattr(dicom_seg, "_frames_for_writer", _mirror_rows)
    out = tmp_path / "export"
    rc = main(["export-dicom", "--seg", str(label), "--source", str(folder), "--out", str(out), "-q"])
    err = capsys.readouterr().err
    assert rc == 1 and "failed its geometry check" in err
    assert list(out.iterdir()) == []


def test_cli_registers_its_paths_and_series_option():
    import argparse

    from medtorch.cli import build_parser
    from medtorch.commands.paths import PATH_OPTIONS, SERIES_OPTIONS

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parser = sub.choices["export-dicom"]
    dests = {a.dest for a in parser._actions}
    assert PATH_OPTIONS["export-dicom"] == (("seg", "source"), ("out",))
    assert SERIES_OPTIONS["export-dicom"] == {"source": "--source-series-uid"}
    assert {"seg", "source", "out", "source_series_uid", "overwrite_input", "names", "fractional"} <= dests
    help_text = parser.format_help()
    assert help_text.count("default: SEMIAUTOMATIC") == 1 and "medtorch export-dicom --seg" in help_text


def test_multiframe_source_real_file(tmp_path, monkeypatch):
    """pydicom's enhanced CT eCT_Supplemental.dcm: one file, two frames stored against the slice order
    (frame 1 lies before frame 0 along the normal), negated row and normal directions."""
    path = get_testdata_file("eCT_Supplemental.dcm")
    if path is None:  # pragma: no cover
        pytest.skip("pydicom's eCT_Supplemental.dcm is not available")
    vol = read_dicom_series(path)
    lab = np.zeros(vol.array.shape, np.uint8)
    lab[0, 100:150, 200:260] = 1
    lab[1, 300:310, 20:40] = 2
    lab[0, 300:302, 20:24] = 2
    out = tmp_path / "mf.dcm"
    result = write_dicom_seg(Volume(lab, vol.geometry, "label"), path, out, names={1: "Tumor", 2: "Edema"})
    assert all(s.shift_voxels < 1e-3 and s.volume_diff_voxels == 0 for s in result.segments)
    ds = pydicom.dcmread(out)
    src = pydicom.dcmread(path, stop_before_pixels=True)
    assert ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    want = intended(lab, vol.geometry)
    to_ijk = np.linalg.inv(vol.geometry.direction @ np.diag(vol.geometry.spacing))
    got = highdicom_segments(out)
    for number in (1, 2):
        assert np.abs(to_ijk @ (got[number][0] - want[number][0])).max() < 0.01
        assert got[number][1] == pytest.approx(want[number][1], rel=1e-6)
    monkeypatch.setattr(dicom_seg, "_frames_for_writer", _reverse_frames)
    with pytest.raises(DicomGeometryError, match="voxels off"):
        write_dicom_seg(Volume(lab, vol.geometry, "label"), path, tmp_path / "mirrored.dcm")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mf.dcm"]
