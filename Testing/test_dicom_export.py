"""DICOM out beyond SEG (issue 19, part 1): RTSTRUCT and derived image series, each checked after writing.

Sources are the ones of test_dicom_seg (pydicom's real CT_small.dcm placed as axial, oblique,
negated row+column and negated column -- the front-to-back mirror of TotalSegmentator PR #598 --
series), a gantry-tilted series made from the same file, and pydicom's enhanced multi-frame
eCT_Supplemental.dcm. A deliberately mirrored writer must be caught and leave nothing behind.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
sitk = pytest.importorskip("SimpleITK")

from pydicom.data import get_testdata_file  # noqa: E402
from test_dicom_seg import SOURCES, blobs, make_series  # noqa: E402

from medtorch.cli import main  # noqa: E402
from medtorch.errors import MedTorchInputError  # noqa: E402
from medtorch.io import dicom_write, write_volume  # noqa: E402
from medtorch.io.dicom import read_dicom_series  # noqa: E402
from medtorch.io.dicom_write import DicomGeometryError, read_reference, write_dicom_series  # noqa: E402
from medtorch.segment import rtstruct  # noqa: E402
from medtorch.segment.rtstruct import slice_contours, write_rtstruct  # noqa: E402
from medtorch.volume import Geometry, Volume  # noqa: E402


@pytest.fixture(params=sorted(SOURCES))
def source(request, tmp_path):
    folder = tmp_path / "source"
    uid = make_series(folder, SOURCES[request.param])
    return folder, uid, read_dicom_series(folder), request.param


def _derived(vol: Volume, seed: int = 0) -> Volume:
    """A float volume on the source grid, asymmetric so that no mirror of it is it."""
    rng = np.random.default_rng(seed)
    arr = vol.array.astype(np.float32) * 0.37 + rng.normal(scale=3.0, size=vol.array.shape).astype(np.float32)
    arr[1:3, 5:20, 60:90] += 500.0
    return Volume(arr, vol.geometry, "scalar")


def _sitk_volume(folder: Path) -> Volume:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return Volume.from_sitk(reader.Execute())


# -- derived series -----------------------------------------------------------------------------


def test_series_round_trip_on_every_source(source, tmp_path):
    folder, uid, vol, name = source
    derived = _derived(vol)
    out = tmp_path / "out" / "denoised"
    res = write_dicom_series(derived, out, reference=folder, derivation="denoised by MedTorch (collab)")
    files = sorted(out.iterdir())
    assert len(files) == vol.size[2] and [p.name for p in (tmp_path / "out").iterdir()] == ["denoised"]
    assert res.corner_shift_voxels < 1e-3 and 0 < res.value_difference <= res.precision
    assert res.precision == pytest.approx(res.slope / 2) and res.slope < 0.02
    # independent readings: MedTorch's reader and SimpleITK, in patient space
    for back in (read_dicom_series(out), _sitk_volume(out)):
        assert back.geometry.isclose(vol.geometry, atol=1e-4), name
        assert np.abs(back.array.astype(np.float64) - derived.array).max() <= res.precision + 1e-4  # + float32
    src = pydicom.dcmread(next(folder.iterdir()))
    source_sops = {pydicom.dcmread(p).SOPInstanceUID for p in folder.iterdir()}
    sops = set()
    for p in files:
        ds = pydicom.dcmread(p)
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2" and ds.Modality == "CT"  # the source's modality
        assert ds.StudyInstanceUID == src.StudyInstanceUID and ds.PatientID == src.PatientID
        assert ds.FrameOfReferenceUID == src.FrameOfReferenceUID
        assert ds.SeriesInstanceUID == res.series_instance_uid != uid
        assert ds.ImageType[0] == "DERIVED" and "collab" in ds.DerivationDescription
        assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == uid
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID in source_sops
        assert "RescaleSlope" in ds.ImageComments and "half a step" in ds.ImageComments
        assert float(ds.SliceThickness) == pytest.approx(vol.spacing[2])
        sops.add(ds.SOPInstanceUID)
    assert len(sops) == len(files) and not sops & source_sops


def test_oblique_anisotropic_left_handed_volume_without_reference(tmp_path):
    rot = SOURCES["oblique"].copy()
    rot[:, 2] *= -1  # a left-handed grid (NIfTI-like): slices go against the normal
    g = Geometry((23, 31, 9), (10.0, -5.0, 3.0), (0.7, 1.3, 3.1), rot)
    arr = np.random.default_rng(1).integers(-1000, 3000, size=g.shape_zyx).astype(np.int16)
    vol = Volume(arr, g, "scalar")
    with pytest.raises(MedTorchInputError, match="--patient-id"):
        write_dicom_series(vol, tmp_path / "a")
    with pytest.raises(MedTorchInputError, match="--modality"):
        write_dicom_series(vol, tmp_path / "a", patient_id="P-01")
    res = write_dicom_series(vol, tmp_path / "a", patient_id="P-01", modality="MR")
    assert res.slope == 1.0 and res.intercept == 0.0 and res.value_difference == 0 and "exactly" in res.storage
    back = _sitk_volume(tmp_path / "a")
    # SimpleITK reads a right-handed grid: the same corners and the same values at the same places
    assert np.allclose(np.sort(back.geometry.corners(), axis=0), np.sort(g.corners(), axis=0), atol=1e-4)
    assert np.array_equal(back.array[::-1], arr)
    ds = pydicom.dcmread(res.files[0])
    assert ds.PatientID == "P-01" and ds.PatientName == "" and ds.Modality == "MR"
    assert "SourceImageSequence" not in ds and "ReferencedSeriesSequence" not in ds
    with pytest.raises(MedTorchInputError, match="not empty"):
        write_dicom_series(vol, tmp_path / "a", patient_id="P-01", modality="MR")


def _tilted_series(folder: Path, degrees: float = 15.0) -> str:
    """CT_small slices whose positions drift along the column direction: a gantry tilt."""
    uid = make_series(folder, np.eye(3))
    tilt = math.tan(math.radians(degrees))
    for p in folder.iterdir():
        ds = pydicom.dcmread(p)
        pos = np.array([float(v) for v in ds.ImagePositionPatient])
        k = (pos[2] - 112.75) / 2.5
        pos[1] += k * 2.5 * tilt
        ds.ImagePositionPatient = [f"{v:.6f}" for v in pos]
        ds.save_as(p)
    return uid


def test_gantry_tilted_reference(tmp_path):
    """MedTorch's reader refuses a tilted series (not a rectangular grid); the volume resampled from it
    (here: an oblique grid tilted like the gantry) is written referencing it, patient and study kept."""
    uid = _tilted_series(tmp_path / "tilted")
    with pytest.raises(MedTorchInputError, match="gantry tilt"):
        read_dicom_series(tmp_path / "tilted")
    ref = read_reference(tmp_path / "tilted")
    assert ref.series_uid == uid and len(ref.images) == 7 and ref.modality == "CT"
    t = math.radians(15.0)
    direction = np.array([[1, 0, 0], [0, math.cos(t), math.sin(t)], [0, -math.sin(t), math.cos(t)]]).T
    g = Geometry((64, 64, 7), (-80.25, 40.5, 112.75), (0.66, 0.66, 2.5), direction)
    arr = np.linspace(-3.5, 7.25, num=int(np.prod(g.shape_zyx)), dtype=np.float32).reshape(g.shape_zyx)
    res = write_dicom_series(Volume(arr, g), tmp_path / "out", reference=ref, derivation="regularised")
    assert res.corner_shift_voxels < 1e-3 and res.value_difference <= res.precision
    ds = pydicom.dcmread(res.files[3])
    src = pydicom.dcmread(next((tmp_path / "tilted").iterdir()))
    assert ds.StudyInstanceUID == src.StudyInstanceUID and ds.ReferencedSeriesSequence[0].SeriesInstanceUID == uid
    assert len(ds.SourceImageSequence) >= 1


def test_multiframe_reference(tmp_path):
    path = get_testdata_file("eCT_Supplemental.dcm")
    if path is None:  # pragma: no cover
        pytest.skip("pydicom's eCT_Supplemental.dcm is not available")
    vol = read_dicom_series(path)
    res = write_dicom_series(_derived(vol), tmp_path / "mf", reference=path)
    assert len(res.files) == 2 and res.corner_shift_voxels < 1e-3
    src = pydicom.dcmread(path, stop_before_pixels=True)
    refs = [pydicom.dcmread(p).SourceImageSequence[0] for p in res.files]
    assert {r.ReferencedSOPInstanceUID for r in refs} == {src.SOPInstanceUID}
    assert {int(r.ReferencedFrameNumber) for r in refs} == {1, 2}
    assert read_dicom_series(tmp_path / "mf").geometry.isclose(vol.geometry, atol=1e-4)


def _rows_flipped(stored):
    return stored[:, ::-1]


def _slices_reversed(stored):
    return stored[::-1]


@pytest.mark.parametrize("mirror", [_rows_flipped, _slices_reversed], ids=["rows_flipped", "slices_reversed"])
def test_mirrored_series_writer_is_caught(source, tmp_path, monkeypatch, mirror):
    folder, _, vol, _ = source
    monkeypatch.setattr(dicom_write, "_slices", mirror)
    with pytest.raises(DicomGeometryError) as info:
        write_dicom_series(_derived(vol), tmp_path / "out" / "series", reference=folder)
    text = str(info.value)
    assert "failed its geometry check" in text and "pydicom" in text and "SimpleITK" in text and "What to do" in text
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_series_corner_check_threshold(tmp_path):
    folder = tmp_path / "source"
    make_series(folder, SOURCES["oblique"])
    vol = read_dicom_series(folder)
    res = write_dicom_series(_derived(vol), tmp_path / "s", reference=folder)
    back = read_dicom_series(tmp_path / "s")
    g = vol.geometry

    def moved(fraction):
        shifted = Geometry(g.size, g.origin + fraction * g.spacing[0] * g.direction[:, 0], g.spacing, g.direction)
        return Volume(back.array, shifted)

    dicom_write.check_dicom_series(tmp_path / "s", moved(0.4), res.precision + 1e9, res.series_instance_uid,
                                   res.study_instance_uid)
    with pytest.raises(DicomGeometryError, match="0.60 voxels away"):
        dicom_write.check_dicom_series(tmp_path / "s", moved(0.6), res.precision + 1e9, res.series_instance_uid,
                                       res.study_instance_uid)


def test_series_refusals(tmp_path):
    g = Geometry((4, 5, 3))
    with pytest.raises(MedTorchInputError, match="colour"):
        write_dicom_series(Volume(np.zeros((3, 5, 4, 3), np.uint8), g, "vector"), tmp_path / "x", patient_id="p")
    nan = np.zeros(g.shape_zyx, np.float32)
    nan[0, 0, 0] = np.nan
    with pytest.raises(MedTorchInputError, match="NaN"):
        write_dicom_series(Volume(nan, g), tmp_path / "x", patient_id="p", modality="CT")
    with pytest.raises(MedTorchInputError, match="together with a reference"):
        folder = tmp_path / "src"
        make_series(folder, np.eye(3))
        write_dicom_series(Volume(np.zeros(g.shape_zyx), g), tmp_path / "x", reference=folder, patient_id="p")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


# -- RTSTRUCT ----------------------------------------------------------------------------------


def test_slice_contours_follow_voxel_edges_with_holes():
    m = np.zeros((8, 8), bool)
    m[1:6, 1:6] = True
    m[3, 3] = False  # a hole
    m[6, 6] = True  # touches the square at a corner only
    loops = slice_contours(m)
    assert len(loops) == 3
    assert sorted(len(p) for p in loops) == [4, 4, 4]
    assert any(np.allclose(sorted(map(tuple, p)), [(0.5, 0.5), (0.5, 5.5), (5.5, 0.5), (5.5, 5.5)]) for p in loops)
    assert np.array_equal(rtstruct._fill(loops, m.shape), m)


def _roi_lab(shape):
    lab = blobs(shape)
    lab[2, 50:60, 50:60] = 2
    lab[2, 54:56, 54:56] = 0  # a hole
    return lab


def test_rtstruct_round_trip_on_every_source(source, tmp_path):
    folder, uid, vol, name = source
    lab = _roi_lab(vol.array.shape)
    out = tmp_path / "rt.dcm"
    res = write_rtstruct(Volume(lab, vol.geometry, "label"), folder, out, names={1: "Necrosis", 3: "Edema"},
                         algorithm_type="AUTOMATIC")
    assert [(r.number, r.label_value, r.name) for r in res.rois] == [(1, 1, "Necrosis"), (2, 2, "Class 2"), (3, 3, "Edema")]
    for r in res.rois:
        assert r.shift_voxels < 1e-6 and r.volume_diff_voxels == 0 and r.differing_voxels == 0, name
        assert r.written_volume_mm3 == pytest.approx((lab == r.label_value).sum() * vol.geometry.voxel_volume_mm3)
    ds = pydicom.dcmread(out)
    src = pydicom.dcmread(next(folder.iterdir()))
    assert ds.Modality == "RTSTRUCT" and ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.481.3"
    assert ds.StudyInstanceUID == src.StudyInstanceUID and ds.SeriesInstanceUID != uid
    ref_series = ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert ref_series.SeriesInstanceUID == uid and len(ref_series.ContourImageSequence) == vol.size[2]
    assert [r.ROIName for r in ds.StructureSetROISequence] == ["Necrosis", "Class 2", "Edema"]
    assert all(r.ROIGenerationAlgorithm == "AUTOMATIC" for r in ds.StructureSetROISequence)
    colours = [tuple(int(v) for v in rc.ROIDisplayColor) for rc in ds.ROIContourSequence]
    assert len(set(colours)) == 3
    hole_slice = [c for c in ds.ROIContourSequence[1].ContourSequence]
    assert len(hole_slice) == 2 and all(c.ContourGeometricType == "CLOSED_PLANAR" for c in hole_slice)
    # every contour lies in the plane of the image it references
    sop_z = {pydicom.dcmread(p).SOPInstanceUID: np.array([float(v) for v in pydicom.dcmread(p).ImagePositionPatient])
             for p in folder.iterdir()}
    normal = vol.geometry.direction[:, 2]
    for rc in ds.ROIContourSequence:
        for c in rc.ContourSequence:
            pts = np.array([float(v) for v in c.ContourData]).reshape(-1, 3)
            plane = sop_z[c.ContourImageSequence[0].ReferencedSOPInstanceUID]
            assert np.abs((pts - plane) @ normal).max() < 1e-4


def _contours_mirrored(points_ijk):
    out = points_ijk.copy()
    out[:, 1] = 127.0 - out[:, 1]  # front to back on the 128-row CT_small grid (PR #598)
    return out


def test_mirrored_rtstruct_writer_is_caught(source, tmp_path, monkeypatch):
    folder, _, vol, _ = source
    monkeypatch.setattr(rtstruct, "_contour_points", _contours_mirrored)
    (tmp_path / "rt.dcm").write_bytes(b"the previous export")
    with pytest.raises(DicomGeometryError) as info:
        write_rtstruct(Volume(_roi_lab(vol.array.shape), vol.geometry, "label"), folder, tmp_path / "rt.dcm",
                       names={1: "Necrosis"})
    text = str(info.value)
    assert "RTSTRUCT failed its geometry check" in text and "ROI 1 'Necrosis'" in text and "voxels off" in text
    assert (tmp_path / "rt.dcm").read_bytes() == b"the previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rt.dcm", "source"]


def test_rtstruct_multiframe_source(tmp_path):
    path = get_testdata_file("eCT_Supplemental.dcm")
    if path is None:  # pragma: no cover
        pytest.skip("pydicom's eCT_Supplemental.dcm is not available")
    vol = read_dicom_series(path)
    lab = np.zeros(vol.array.shape, np.uint8)
    lab[0, 100:150, 200:260] = 1
    lab[1, 300:310, 20:40] = 1
    res = write_rtstruct(Volume(lab, vol.geometry, "label"), path, tmp_path / "mf.dcm", names={1: "Tumor"})
    (roi,) = res.rois
    assert roi.shift_voxels < 1e-6 and roi.differing_voxels == 0 and roi.contours == 2
    ds = pydicom.dcmread(tmp_path / "mf.dcm")
    frames = {int(c.ContourImageSequence[0].ReferencedFrameNumber) for c in ds.ROIContourSequence[0].ContourSequence}
    assert frames == {1, 2}


def test_rtstruct_refuses_probabilities(tmp_path):
    folder = tmp_path / "source"
    make_series(folder, SOURCES["axial"])
    vol = read_dicom_series(folder)
    with pytest.raises(MedTorchInputError, match="not a label map"):
        write_rtstruct(Volume(np.full(vol.array.shape, 0.5, np.float32), vol.geometry), folder, tmp_path / "x.dcm")
    assert not (tmp_path / "x.dcm").exists()


# -- the command line --------------------------------------------------------------------------


def test_cli_export_dicom_rtstruct_and_series(tmp_path, capsys):
    folder = tmp_path / "ct"
    uid = make_series(folder, SOURCES["negated_column_pr598"])
    vol = read_dicom_series(folder)
    label = tmp_path / "tumor.seg.nrrd"
    write_volume(Volume(_roi_lab(vol.array.shape), vol.geometry, "label"), label)
    out = tmp_path / "export"
    assert main(["export-dicom", "--as", "rtstruct", "--seg", str(label), "--out", str(out), "-q"]) == 2
    assert "--as rtstruct needs --source" in capsys.readouterr().err
    rc = main(["export-dicom", "--as", "rtstruct", "--seg", str(label), "--source", str(folder), "--out", str(out),
               "--names", "1=GTV"])
    printed = capsys.readouterr().out
    assert rc == 0 and "RTSTRUCT, 3 ROIs" in printed and "ROI 1 'GTV'" in printed and "geometry check passed" in printed
    assert pydicom.dcmread(out / "tumor_RTSTRUCT.dcm").StructureSetROISequence[0].ROIName == "GTV"
    image = tmp_path / "t1_denoised.nii.gz"
    write_volume(_derived(vol), image)
    assert main(["export-dicom", "--as", "series", "--in", str(image), "--out", str(out), "-q"]) == 2
    assert "--patient-id" in capsys.readouterr().err
    rc = main(["export-dicom", "--as", "series", "--in", str(image), "--reference", str(folder), "--out", str(out),
               "--derivation", "denoised, collab"])
    printed = capsys.readouterr().out
    assert rc == 0 and "geometry check passed (pydicom and SimpleITK)" in printed and f"series {uid}" in printed
    ds = pydicom.dcmread(next((out / "t1_denoised_series").iterdir()))
    assert ds.DerivationDescription == "denoised, collab"
    rc = main(["export-dicom", "--as", "series", "--in", str(image), "--patient-id", "PHANTOM-01", "--modality", "MR",
               "--out", str(tmp_path / "new")])
    assert rc == 0 and "new patient and study" in capsys.readouterr().out


def test_cli_denoise_and_superres_format_dicom(tmp_path, capsys):
    folder = tmp_path / "ct"
    uid = make_series(folder, SOURCES["oblique"])
    out = tmp_path / "denoised"
    rc = main(["denoise", "--in", str(folder), "--out", str(out), "--format", "dicom", "--method", "gaussian"])
    printed = capsys.readouterr().out
    assert rc == 0 and "DICOM CT series, 7 files; geometry check passed" in printed
    ds = pydicom.dcmread(next(out.iterdir()))
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == uid and "gaussian" in ds.DerivationDescription
    assert read_dicom_series(out).geometry.isclose(read_dicom_series(folder).geometry, atol=1e-4)
    # superres from a volume file: no DICOM source, so a patient ID is needed
    src = tmp_path / "ct.nrrd"
    write_volume(read_dicom_series(folder), src)
    rc = main(["superres", "--in", str(src), "--out", str(tmp_path / "sr"), "--format", "dicom", "--factor", "2",
               "--method", "linear", "-q"])
    assert rc == 2 and "--patient-id" in capsys.readouterr().err and not (tmp_path / "sr").exists()
    rc = main(["superres", "--in", str(folder), "--out", str(tmp_path / "sr"), "--format", "dicom", "--factor", "2",
               "--method", "linear", "-q"])
    assert rc == 0
    back = read_dicom_series(tmp_path / "sr")
    assert back.size[2] == 14 and back.spacing[2] == pytest.approx(1.25, abs=1e-4)
    # the default stays a volume file
    rc = main(["denoise", "--in", str(folder), "--out", str(tmp_path / "d.nrrd"), "--method", "gaussian", "-q"])
    assert rc == 0 and (tmp_path / "d.nrrd").is_file()


def test_pipeline_output_format_dicom(tmp_path):
    from medtorch.pipeline.config import parse_config
    from medtorch.pipeline.run import run_pipeline

    folder = tmp_path / "ct"
    uid = make_series(folder, SOURCES["oblique"])
    with pytest.raises(MedTorchInputError, match="output_format"):
        parse_config({"inputs": {"fixed": str(folder)}, "output_format": "dcm"}, tmp_path)
    nrrd = tmp_path / "ct.nrrd"
    write_volume(read_dicom_series(folder), nrrd)
    with pytest.raises(MedTorchInputError, match="patient_id"):
        parse_config({"inputs": {"fixed": str(nrrd)}, "output_format": "dicom"}, tmp_path)
    config = parse_config({"study": "s", "inputs": {"fixed": str(folder)}, "output_format": "dicom",
                           "steps": {"denoise": {"method": "gaussian"}}}, tmp_path)
    record = run_pipeline(config).record
    written = Path(record["outputs"]["denoised_dicom"]["path"])
    assert Path(record["outputs"]["denoised"]["path"]).is_file() and len(list(written.iterdir())) == 7
    assert len(record["outputs"]["denoised_dicom"]["sha256"]) == 64
    assert pydicom.dcmread(next(written.iterdir())).ReferencedSeriesSequence[0].SeriesInstanceUID == uid


def test_pipeline_writes_the_segmentation_as_dicom_seg_or_says_why_not(tmp_path):
    """``output_format: dicom``: a label map becomes a DICOM SEG referencing the input series (read
    back here by highdicom and compared with the NRRD label map in patient space); from an input
    that is not DICOM it is not written, and the run's notes say why."""
    from test_dicom_seg import highdicom_segments, intended

    from medtorch.io import read_volume
    from medtorch.pipeline.config import parse_config
    from medtorch.pipeline.run import run_pipeline

    folder = tmp_path / "ct"
    uid = make_series(folder, SOURCES["negated_column_pr598"])
    lower = float(np.percentile(read_dicom_series(folder).array, 97))
    steps = {"denoise": {"method": "gaussian"}, "segment": {"method": "threshold", "lower": lower}}
    record = run_pipeline(parse_config({"study": "s", "inputs": {"fixed": str(folder)}, "output_format": "dicom",
                                        "steps": steps}, tmp_path / "out")).record
    seg_path = Path(record["outputs"]["segmentation_seg"]["path"])
    assert seg_path.name == "segmentation_SEG.dcm" and len(record["outputs"]["segmentation_seg"]["sha256"]) == 64
    ds = pydicom.dcmread(seg_path)
    assert ds.Modality == "SEG" and ds.ReferencedSeriesSequence[0].SeriesInstanceUID == uid
    label = read_volume(record["outputs"]["segmentation"]["path"])
    (centroid, volume), = intended(label.array, label.geometry).values()
    (got_centroid, got_volume), = highdicom_segments(seg_path).values()
    np.testing.assert_allclose(got_centroid, centroid, atol=0.25)
    assert got_volume == pytest.approx(volume, rel=1e-3)
    assert "denoised_dicom" in record["outputs"] and "notes" not in record

    nrrd = tmp_path / "ct.nrrd"
    write_volume(read_dicom_series(folder), nrrd)
    config = {"study": "n", "inputs": {"fixed": str(nrrd)}, "output_format": "dicom", "patient_id": "P1",
              "steps": steps}
    with pytest.raises(MedTorchInputError, match="modality: CT"):
        parse_config(config, tmp_path / "out2")
    record = run_pipeline(parse_config({**config, "modality": "ct"}, tmp_path / "out2")).record
    assert pydicom.dcmread(next(Path(record["outputs"]["denoised_dicom"]["path"]).iterdir())).Modality == "CT"
    assert "segmentation" in record["outputs"] and "segmentation_seg" not in record["outputs"]
    assert "denoised_dicom" in record["outputs"]
    note, = record["notes"]
    assert note.startswith("segmentation: not written as DICOM SEG") and "not a DICOM series" in note
    assert not list((tmp_path / "out2").rglob("*_SEG.dcm"))
