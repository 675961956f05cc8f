"""Export to DICOM from the Slicer modules on the headless test bed (issue 19, part 1): SegmentTumor
writes a segmentation node as DICOM SEG and RTSTRUCT referencing the DICOM series its input volume
was loaded from, EnhanceSR writes an output volume as a derived series; the files are read back
here (highdicom, pydicom) and compared in patient space. A volume that did not come from DICOM
needs a source folder (or, for a series, a patient ID); without one the export is refused with
what to do, and a writer that mirrors the output is refused by the geometry check.

The DICOM sources are test_dicom_seg's (pydicom's real CT_small.dcm placed as an oblique series);
Slicer's DICOM database is stood in for by its one call that the export uses, ``fileForInstance``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
hd = pytest.importorskip("highdicom", reason="pip install 'highdicom>=0.22,<1' (the dicom extra)")

from test_dicom_seg import SOURCES, blobs, highdicom_segments, intended, make_series  # noqa: E402

from medtorch.errors import MedTorchInputError  # noqa: E402
from medtorch.io.dicom import read_dicom_series  # noqa: E402
from medtorch.io.dicom_write import DicomGeometryError  # noqa: E402
from medtorch.volume import Volume  # noqa: E402


class FakeDicomDatabase:
    """``slicer.dicomDatabase``'s ``fileForInstance(uid)``: the file of a SOPInstanceUID ('' if unknown)."""

    def __init__(self, folder: Path) -> None:
        self.files = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): str(p)
                      for p in Path(folder).iterdir()}

    def fileForInstance(self, uid: str) -> str:
        return self.files.get(uid, "")


@pytest.fixture
def dicom_volume(scene, tmp_path, monkeypatch):
    """A volume node as Slicer's DICOM module loads it (DICOM.instanceUIDs), the database, the
    series' folder and UID, and the volume as read by MedTorch."""
    import slicer

    from medtorch.slicer import mrml

    folder = tmp_path / "dicom" / "oblique"
    uid = make_series(folder, SOURCES["oblique"])
    vol = read_dicom_series(folder)
    node = mrml.node_from_volume(vol, "CT oblique")
    db = FakeDicomDatabase(folder)
    node.SetAttribute("DICOM.instanceUIDs", " ".join(db.files))
    monkeypatch.setattr(slicer, "dicomDatabase", db, raising=False)
    return node, folder, uid, vol


def _module(name):
    import slicer_testbed

    return slicer_testbed.load_module(name)


def _segmentation(vol: Volume, reference_node):
    """Segments "Necrosis" (value 1 of blobs) and "Edema" (value 3), as SegmentTumor makes them."""
    from medtorch.slicer import mrml

    lab = Volume(blobs(vol.array.shape), vol.geometry, "label")
    seg = mrml.segmentation_from_label(lab, {1: "Necrosis", 3: "Edema"}, "tumor", reference_node=reference_node)
    return seg, intended(lab.array, vol.geometry)


def test_segment_tumor_exports_seg_and_rtstruct_referencing_the_loaded_series(dicom_volume, tmp_path):
    node, folder, uid, vol = dicom_volume
    logic = _module("SegmentTumor").SegmentTumorLogic()
    seg, want = _segmentation(vol, node)
    out = tmp_path / "export"

    res = logic.exportToDicom(seg, node, str(out), "seg")
    path = Path(res.path)
    assert path.parent == out and path.name == "tumor_SEG.dcm" and "DICOM SEG, 2 segments" in res.message
    ds = pydicom.dcmread(path)
    assert ds.Modality == "SEG" and ds.ReferencedSeriesSequence[0].SeriesInstanceUID == uid
    labels = {int(s.SegmentNumber): str(s.SegmentLabel) for s in ds.SegmentSequence}
    assert sorted(labels.values()) == ["Edema", "Necrosis"]
    # read back by highdicom (not MedTorch's check): each segment where it was meant to be
    back = highdicom_segments(path)
    value_of = {"Necrosis": 1, "Edema": 3}
    for number, name in labels.items():
        centroid, volume = back[number]
        np.testing.assert_allclose(centroid, want[value_of[name]][0], atol=0.25)
        assert volume == pytest.approx(want[value_of[name]][1], rel=1e-3)
    # a second export never replaces the first
    first = path.read_bytes()
    again = logic.exportToDicom(seg, node, str(out), "seg")
    assert Path(again.path).name == "tumor_SEG (2).dcm" and path.read_bytes() == first

    rt = logic.exportToDicom(seg, node, str(out), "rtstruct")
    ds = pydicom.dcmread(rt.path)
    assert ds.Modality == "RTSTRUCT" and "DICOM RTSTRUCT, 2 ROIs" in rt.message
    ref_series = ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert ref_series.SeriesInstanceUID == uid
    assert sorted(str(r.ROIName) for r in ds.StructureSetROISequence) == ["Edema", "Necrosis"]
    assert all(c["shift_voxels"] <= 0.5 for c in rt.values["checks"])
    # the ROIs' contour points lie on the segments: their mean near each segment's centroid in-plane
    for roi, contours in zip(ds.StructureSetROISequence, ds.ROIContourSequence):
        pts = np.concatenate([np.asarray(c.ContourData, float).reshape(-1, 3) for c in contours.ContourSequence])
        centroid = want[value_of[str(roi.ROIName)]][0]
        assert np.linalg.norm(pts.mean(axis=0) - centroid) < 3.0
    assert sorted(p.name for p in out.iterdir()) == ["tumor_RTSTRUCT.dcm", "tumor_SEG (2).dcm", "tumor_SEG.dcm"]


def test_segment_tumor_export_of_a_volume_not_from_dicom_needs_the_source_folder(dicom_volume, tmp_path):
    from medtorch.slicer import mrml

    _, folder, uid, vol = dicom_volume
    logic = _module("SegmentTumor").SegmentTumorLogic()
    plain = mrml.node_from_volume(vol, "CT from NRRD")  # the same grid, no DICOM.instanceUIDs
    seg, _ = _segmentation(vol, plain)
    out = tmp_path / "export"
    with pytest.raises(MedTorchInputError) as exc:
        logic.exportToDicom(seg, plain, str(out), "seg")
    assert "was not loaded from DICOM" in exc.value.problem and "DICOM folder" in exc.value.fix
    assert not out.exists() or not any(out.iterdir())
    res = logic.exportToDicom(seg, plain, str(out), "seg", referenceFolder=str(folder))
    assert pydicom.dcmread(res.path).ReferencedSeriesSequence[0].SeriesInstanceUID == uid
    assert "the DICOM folder" in res.message


def test_a_mirroring_writer_is_refused_with_problem_and_fix(dicom_volume, tmp_path, monkeypatch):
    from medtorch.segment import dicom_seg

    node, _, _, vol = dicom_volume
    mod = _module("SegmentTumor")
    w = mod.SegmentTumorWidget()
    w.setup()
    seg, _ = _segmentation(vol, node)
    out = tmp_path / "export"
    p = w._parameterNode
    p.inputVolume = node
    p.dicomSegmentation = seg
    w.ui.exportFolderButton.directory = str(out)
    writer = dicom_seg._frames_for_writer
    monkeypatch.setattr(dicom_seg, "_frames_for_writer", lambda masks: writer(masks)[:, ::-1])  # front to back
    with pytest.raises(DicomGeometryError) as exc:
        w.ui.exportDicomButton.click()
    assert "failed its geometry check" in exc.value.problem and exc.value.fix
    text = w.ui.exportStatusLabel.text
    assert text.startswith("Not exported:") and "geometry check" in text and "What to do" in text
    assert list(out.iterdir()) == []  # nothing was kept
    monkeypatch.setattr(dicom_seg, "_frames_for_writer", writer)
    w.ui.exportAsComboBox.setCurrentText("RTSTRUCT")
    assert p.dicomExportAs == "RTSTRUCT"
    w.ui.exportDicomButton.click()
    assert [f.name for f in out.iterdir()] == ["tumor_RTSTRUCT.dcm"]
    assert w.ui.exportStatusLabel.text.startswith("Wrote tumor_RTSTRUCT.dcm")


def test_enhance_sr_exports_its_output_as_a_series_derived_from_the_input(dicom_volume, tmp_path):
    node, folder, uid, vol = dicom_volume
    mod = _module("EnhanceSR")
    logic = mod.EnhanceSRLogic()
    out_node = logic.denoise(node, "gaussian", 1.0, showResult=False)
    out = tmp_path / "export"
    res = logic.exportToDicom(out_node, str(out), inputVolume=node)
    folder_out = Path(res.path)
    files = sorted(folder_out.iterdir())
    assert folder_out.parent == out and len(files) == vol.array.shape[0]
    first = pydicom.dcmread(files[0])
    src = pydicom.dcmread(next(folder.iterdir()), stop_before_pixels=True)
    assert first.ReferencedSeriesSequence[0].SeriesInstanceUID == uid
    assert first.StudyInstanceUID == src.StudyInstanceUID and first.SeriesInstanceUID != uid
    assert "gaussian" in str(first.DerivationDescription) and "denoised" in str(first.DerivationDescription)
    back = read_dicom_series(folder_out)
    from medtorch.slicer import mrml

    want = mrml.volume_from_node(out_node)
    assert back.geometry.isclose(want.geometry, atol=1e-3)
    np.testing.assert_allclose(back.array, want.array, atol=float(res.values["checks"]["precision"]) + 1e-3)
    assert "derived from the DICOM series" in res.message


def test_enhance_sr_export_without_a_source_needs_a_patient_id(scene, tmp_path):
    from medtorch.phantoms import blob_phantom, oblique_geometry
    from medtorch.slicer import mrml

    mod = _module("EnhanceSR")
    w = mod.EnhanceSRWidget()
    w.setup()
    geom = oblique_geometry(size=(16, 14, 6), spacing=(1.0, 1.0, 2.0))
    node = mrml.node_from_volume(blob_phantom(geom), "phantom")
    out_node = w.logic.denoise(node, "gaussian", 1.0, showResult=False)
    p = w._parameterNode
    p.inputVolume, p.outputVolume = node, out_node
    out = tmp_path / "export"
    w.ui.exportFolderButton.directory = str(out)
    with pytest.raises(MedTorchInputError) as exc:
        w.ui.exportDicomButton.click()
    assert "has no DICOM source" in exc.value.problem and "patient ID" in exc.value.fix
    assert "Not exported" in w.ui.exportStatusLabel.text and "patient ID" in w.ui.exportStatusLabel.text
    assert not out.exists() or not any(out.iterdir())
    w.ui.exportPatientIdLineEdit.signal("textChanged").emit("PHANTOM-01")
    assert p.dicomPatientId == "PHANTOM-01"
    with pytest.raises(MedTorchInputError, match="choose the modality"):
        w.ui.exportDicomButton.click()
    w.ui.exportModalityComboBox.setCurrentText("MR")
    w.ui.exportDicomButton.click()
    written = next(out.iterdir())
    ds = pydicom.dcmread(next(written.iterdir()))
    assert ds.PatientID == "PHANTOM-01" and ds.Modality == "MR" and "new patient PHANTOM-01" in w.ui.exportStatusLabel.text
    assert read_dicom_series(written).geometry.isclose(geom, atol=1e-3)
