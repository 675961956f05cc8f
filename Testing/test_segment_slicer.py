"""SegmentTumor's seeded segmentation on the headless Slicer: seeds from segments or markups,
named and coded segments with closed surfaces, volumetry and metrics tables, the widget."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medtorch.errors import MedTorchInputError
from medtorch.segment import metrics as M
from medtorch.segment.tumor_phantom import make_tumor_phantom, stroke_seeds, synthetic_tissue
from medtorch.volume import Geometry, Volume

NAMES = {1: "Necrosis", 2: "Edema", 3: "Enhancing tumor", 4: "Background"}


@pytest.fixture(scope="module")
def phantom():
    geom = Geometry((56, 56, 48), origin=(-40.0, -40.0, -35.0), spacing=(1.5, 1.5, 1.5))
    ph = make_tumor_phantom(synthetic_tissue(geom, seed=1), noise=0.06, seed=2, core_radius_mm=8.0, rim_mm=4.0,
                            oedema_radius_mm=17.0)
    return ph, stroke_seeds(ph.truth, seed=0)


def _module():
    import slicer_testbed

    return slicer_testbed.load_module("SegmentTumor")


def _nodes(scene, ph, seeds, names=NAMES, order=None):
    from medtorch.slicer import mrml

    flair = mrml.node_from_volume(ph.channels["FLAIR"], "FLAIR", scene)
    t1c = mrml.node_from_volume(ph.channels["T1c"], "T1c", scene)
    items = {v: names[v] for v in (order or sorted(names))}
    seed_node = mrml.segmentation_from_label(seeds, items, "Seeds", reference_node=flair, scene=scene)
    return flair, t1c, seed_node


def _wt(seg, ref_node, truth):
    from medtorch.slicer import mrml

    lab = mrml.label_from_segmentation(seg, ref_node).array > 0
    return M.dice(lab, truth > 0)


def test_seeded_from_segments_with_background_first(scene, phantom):
    mod = _module()
    ph, seeds = phantom
    # the Background segment comes first here: it is found by its name, not its place
    flair, t1c, seed_node = _nodes(scene, ph, seeds, order=[4, 1, 2, 3])
    seg = mod.SegmentTumorLogic().seeded([flair, t1c], seed_node)
    s = seg.GetSegmentation()
    assert [s.GetNthSegment(i).GetName() for i in range(s.GetNumberOfSegments())] == ["Necrosis", "Edema",
                                                                                       "Enhancing tumor"]
    assert _wt(seg, flair, ph.truth.array) > 0.9
    # standard terminology, recognised by Slicer's own terminology logic
    import slicer

    logic = slicer.modules.terminologies.logic()
    entry = slicer.vtkSlicerTerminologyEntry()
    assert logic.DeserializeTerminologyEntry(mod.terminologyOf(s.GetNthSegment(2)), entry)
    assert entry.GetTypeObject().GetCodeValue() == "C113842"
    assert entry.GetCategoryObject().GetCodeMeaning() == "Morphologically Altered Structure"
    assert s.ContainsRepresentation("Closed surface")
    assert seg.GetAttribute("MedTorch.seed") == "0"


def test_volumetry_table_matches_a_hand_count(scene, phantom):
    from medtorch.slicer import mrml

    mod = _module()
    ph, seeds = phantom
    flair, t1c, seed_node = _nodes(scene, ph, seeds)
    seg = mod.SegmentTumorLogic().seeded([flair, t1c], seed_node)
    table = scene.GetNodeByID(seg.GetAttribute("MedTorch.volumetryTableID"))
    t = table.GetTable()
    names = [t.GetValue(r, 0).ToString() for r in range(t.GetNumberOfRows())]
    assert names == ["Necrosis", "Edema", "Enhancing tumor", "Whole tumor"]
    s = seg.GetSegmentation()
    total = 0
    for r in range(3):
        lab = mrml.label_from_segmentation(seg, flair, [s.GetNthSegmentID(r)]).array > 0
        assert t.GetValue(r, 2).ToInt() == int(lab.sum())
        assert t.GetValue(r, 3).ToDouble() == pytest.approx(lab.sum() * 1.5 ** 3 / 1000.0, rel=1e-9)
        total += int(lab.sum())
    assert t.GetValue(3, 2).ToInt() == total
    assert float(seg.GetAttribute("MedTorch.volumeMl")) == pytest.approx(total * 1.5 ** 3 / 1000.0)


def test_seeds_from_markups_points(scene, phantom):
    mod = _module()
    ph, _ = phantom
    from medtorch.slicer import mrml

    flair = mrml.node_from_volume(ph.channels["FLAIR"], "FLAIR", scene)
    t1c = mrml.node_from_volume(ph.channels["T1c"], "T1c", scene)
    markups = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "seed points")
    truth = ph.truth.array
    g = ph.truth.geometry
    rng = np.random.default_rng(0)
    from scipy import ndimage

    for value, name in ((1, "Necrosis"), (2, "Edema"), (3, "Enhancing tumor")):
        inner = np.argwhere(ndimage.binary_erosion(truth == value, iterations=2 if value != 3 else 1))
        for zyx in inner[rng.choice(len(inner), 6, replace=False)]:
            lps = g.index_to_physical(np.array([zyx[::-1]], float))[0]
            markups.AddControlPoint(-lps[0], -lps[1], lps[2], name)
    dist = ndimage.distance_transform_edt(truth == 0, sampling=g.spacing[::-1])
    ring = np.argwhere((dist > 4) & (dist < 7))
    for zyx in ring[rng.choice(len(ring), 40, replace=False)]:
        lps = g.index_to_physical(np.array([zyx[::-1]], float))[0]
        markups.AddControlPoint(-lps[0], -lps[1], lps[2], "Background")
    logic = mod.SegmentTumorLogic()
    seeds, names, _ = logic.seedsFromMarkups(markups, flair, 2.0)
    assert names == {1: "Necrosis", 2: "Edema", 3: "Enhancing tumor", 4: "Background"}
    assert set(np.unique(seeds.array)) == {0, 1, 2, 3, 4}
    seg = logic.seeded([flair, t1c], seedMarkups=markups, seedRadiusMm=2.0)
    assert _wt(seg, flair, truth) > 0.85


def test_output_node_reuse_and_bad_seeds(scene, phantom):
    from medtorch.slicer.jobs import scene_node_ids

    mod = _module()
    ph, seeds = phantom
    flair, t1c, seed_node = _nodes(scene, ph, seeds)
    logic = mod.SegmentTumorLogic()
    out = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "my output")
    out.GetSegmentation().AddEmptySegment("old", "old")
    seg = logic.seeded([flair, t1c], seed_node, outputSegmentation=out)
    assert seg is out and out.GetSegmentation().GetNumberOfSegments() == 3
    assert out.GetSegmentation().GetSegmentIdBySegmentName("old") == ""
    before = scene_node_ids(scene)
    with pytest.raises(MedTorchInputError, match="is the seed segmentation"):
        logic.seeded([flair], seed_node, outputSegmentation=seed_node)
    # a background segment with no seed painted
    empty_bg = seeds.with_array(np.where(seeds.array == 4, 0, seeds.array).astype(np.uint8))
    from medtorch.slicer import mrml

    assert scene_node_ids(scene) == before
    bad = mrml.segmentation_from_label(empty_bg, NAMES, "bad seeds", reference_node=flair, scene=scene)
    before = scene_node_ids(scene)
    with pytest.raises(MedTorchInputError, match="has no seeds"):
        logic.seeded([flair], bad)
    assert scene_node_ids(scene) == before
    with pytest.raises(MedTorchInputError, match="no seeds are selected"):
        logic.seeded([flair])


def test_metrics_table_against_a_reference(scene, phantom):
    from medtorch.slicer import mrml

    mod = _module()
    ph, seeds = phantom
    flair, t1c, seed_node = _nodes(scene, ph, seeds)
    ref = mrml.segmentation_from_label(ph.truth, {1: "Necrosis", 2: "Edema", 3: "Enhancing tumor"}, "truth",
                                         reference_node=flair, scene=scene)
    seg = mod.SegmentTumorLogic().seeded([flair, t1c], seed_node, referenceSegmentation=ref)
    table = scene.GetNodeByID(seg.GetAttribute("MedTorch.metricsTableID"))
    t = table.GetTable()
    rows = {t.GetValue(r, 0).ToString(): r for r in range(t.GetNumberOfRows())}
    assert list(rows) == ["Necrosis", "Edema", "Enhancing tumor", "Whole tumor"]
    lab = mrml.label_from_segmentation(seg, flair).array
    truth = ph.truth.array
    r = rows["Whole tumor"]
    sp = tuple(ph.truth.geometry.spacing[::-1])
    assert t.GetValue(r, 1).ToDouble() == pytest.approx(M.dice(lab > 0, truth > 0), abs=1e-9)
    assert t.GetValue(r, 2).ToDouble() == pytest.approx(M.hausdorff_distance(lab > 0, truth > 0, 95.0, sp), abs=1e-6)
    e = rows["Edema"]
    assert t.GetValue(e, 1).ToDouble() == pytest.approx(M.dice(lab == 2, truth == 2), abs=1e-9)
    assert t.GetValue(e, 4).ToDouble() == pytest.approx(M.sensitivity(lab == 2, truth == 2), abs=1e-9)


def test_incremental_update_after_a_seed_edit(scene, phantom):
    from medtorch.slicer import mrml

    mod = _module()
    ph, seeds = phantom
    flair, t1c, seed_node = _nodes(scene, ph, seeds)
    logic = mod.SegmentTumorLogic()
    seg = logic.updateSeeded([flair, t1c], seed_node)
    assert seg.GetAttribute("MedTorch.incremental") == "false"
    # background painted over a block inside the oedema: that block leaves the tumor
    lab = mrml.label_from_segmentation(seg, flair).array
    oed = np.argwhere((lab == 2) & (ph.truth.array == 2))
    z, y, x = oed[len(oed) // 3]
    arr = seeds.array.copy()
    arr[z - 1:z + 2, y - 2:y + 3, x - 2:x + 3] = 4
    scene.RemoveNode(seed_node)
    edited = mrml.segmentation_from_label(seeds.with_array(arr), NAMES, "Seeds", reference_node=flair, scene=scene)
    again = logic.updateSeeded([flair, t1c], edited, outputSegmentation=seg)
    assert again is seg and seg.GetAttribute("MedTorch.incremental") == "true"
    lab2 = mrml.label_from_segmentation(seg, flair).array
    assert not lab2[z - 1:z + 2, y - 2:y + 3, x - 2:x + 3].any()


def test_widget_seeded_in_background_then_update(scene, phantom):
    import slicer_testbed

    ph, seeds = phantom
    flair, t1c, seed_node = _nodes(scene, ph, seeds)
    mod = _module()
    w = mod.SegmentTumorWidget()
    w.setup()
    p = w._parameterNode
    assert p.inputVolume is flair and p.method == "threshold"
    w.ui.methodComboBox.setCurrentText("seeded")
    assert p.method == "seeded"
    assert not w.ui.applyButton.enabled  # no seeds yet
    w.ui.secondVolumeSelector.setCurrentNode(t1c)
    w.ui.seedSegmentationSelector.setCurrentNode(seed_node)
    assert p.secondVolume is t1c and p.seedSegmentation is seed_node
    w.ui.smoothnessSliderWidget.setValue(0.7)
    assert p.smoothness == pytest.approx(0.7)
    assert w.ui.applyButton.enabled and w.ui.updateButton.enabled
    w.ui.applyButton.click()
    assert slicer_testbed.run_events_until(lambda: w.runner.status != "running", timeout=120)
    assert w.runner.status == "done", w.ui.statusLabel.text
    seg = w.runner.output
    assert p.outputSegmentation is seg and p.volumetryTable is not None
    assert w.ui.volumeValueLabel.text.endswith(" mL") and float(w.ui.volumeValueLabel.text.split()[0]) > 1.0
    assert _wt(seg, flair, ph.truth.array) > 0.9
    n_tables = scene.GetNumberOfNodesByClass("vtkMRMLTableNode")
    w.ui.updateButton.click()  # in this process, into the same output and table
    assert p.outputSegmentation is seg
    assert scene.GetNumberOfNodesByClass("vtkMRMLTableNode") == n_tables
    assert "Segmented into" in w.ui.statusLabel.text
    assert json.loads(seg.GetAttribute("MedTorch.verdict"))["status"] == "pass"
    assert w.ui.statusLabel.styleSheet == ""
    # a result whose verdict failed says so in the panel, with what to do
    from medtorch.verdict import Verdict, grade

    bad = Verdict.of([grade("region_border", 0.2, warn_at=0.02, fail_at=0.05,
                            messages={"fail": "the tumor covers {value} of the region's border: draw a larger box"})],
                     "segmentation")
    seg.SetAttribute("MedTorch.verdict", bad.to_json())
    w.onSeededDone(seg)
    assert "probably wrong" in w.ui.statusLabel.text and "draw a larger box" in w.ui.statusLabel.text
    assert "c00000" in w.ui.statusLabel.styleSheet
