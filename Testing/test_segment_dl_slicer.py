"""Slicer side of deep-learning segmentation and nodule detection, on the headless Slicer.

Nodules become a markups fiducial node (RAS positions, N1..., diameters as descriptions and a
``diameter`` measurement); a model's label map becomes a segmentation with named, coloured
segments; the jobs leave the scene untouched when they fail.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from medtorch.errors import MedTorchInputError


def test_markups_from_nodules_in_ras_with_diameters(scene):
    from SegmentTumorLib.model_scene import (
        markups_from_nodules,
        nodule_diameters,
    )

    nodules = [{"center_lps": (10.0, -20.0, 30.0), "diameter_mm": 12.5, "score": 0.9},
               {"center_lps": (-5.5, 7.0, -2.0), "diameter_mm": 6.0, "score": 0.7}]
    node = markups_from_nodules(nodules, "Nodules", scene)
    assert node.GetClassName() == "vtkMRMLMarkupsFiducialNode" and node.GetNumberOfControlPoints() == 2
    p = [0.0, 0.0, 0.0]
    node.GetNthControlPointPosition(0, p)
    np.testing.assert_allclose(p, [-10.0, 20.0, 30.0])  # LPS -> RAS
    node.GetNthControlPointPosition(1, p)
    np.testing.assert_allclose(p, [5.5, -7.0, -2.0])
    assert node.GetNthControlPointLabel(0) == "N1" and "12.5 mm" in node.GetNthControlPointDescription(0)
    assert nodule_diameters(node) == [12.5, 6.0]
    assert json.loads(node.GetAttribute("MedTorch.nodules"))[1]["diameter_mm"] == 6.0


def test_detect_nodules_job_on_a_phantom(scene):
    from medtorch.slicer import mrml
    from SegmentTumorLib.model_scene import (
        detect_nodules_job,
        nodule_diameters,
    )
    from medtorch.segment.nodules import lung_phantom

    ct, truth = lung_phantom(size=(80, 72, 40), spacing=(1.0, 1.0, 1.5), nodule_diameters_mm=(7.0, 12.0),
                             num_vessels=4, seed=5)
    ct_node = mrml.node_from_volume(ct, "chest CT", scene)
    markups, lungs = detect_nodules_job(ct_node, min_diameter_mm=4.0, max_diameter_mm=20.0,
                                        lung_segmentation=True, scene=scene).run_blocking()
    assert markups.GetNumberOfControlPoints() == len(truth)
    found = []
    for i in range(markups.GetNumberOfControlPoints()):
        p = [0.0, 0.0, 0.0]
        markups.GetNthControlPointPosition(i, p)
        found.append(np.array([-p[0], -p[1], p[2]]))
    for t, d in zip(truth, [None] * len(truth)):
        dist = [np.linalg.norm(f - np.asarray(t["center_lps"])) for f in found]
        j = int(np.argmin(dist))
        assert dist[j] < 2.0
        assert abs(nodule_diameters(markups)[j] - t["diameter_mm"]) <= 0.2 * t["diameter_mm"]
    assert lungs.GetSegmentation().GetNumberOfSegments() == 1


def test_segment_model_job_makes_named_segments(scene, tmp_path):
    import torch

    from medtorch.slicer import mrml
    from medtorch.slicer.jobs import scene_node_ids
    from SegmentTumorLib.model_scene import (
        describe_model_path,
        segment_model_job,
    )
    from medtorch.phantoms import blob_phantom, oblique_geometry

    # a one-layer "network": a fixed 1x1x1 convolution that says "lesion" where the image is bright
    bundle = tmp_path / "bundle"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "models").mkdir()
    (bundle / "configs" / "metadata.json").write_text(json.dumps({"network_data_format": {
        "inputs": {"image": {"num_channels": 1, "channel_def": {"0": "T1c"}}},
        "outputs": {"pred": {"num_channels": 2, "channel_def": {"0": "background", "1": "Enhancing tumor"}}}}}))
    (bundle / "configs" / "inference.json").write_text(json.dumps({
        "network_def": {"_target_": "torch.nn.Conv3d", "in_channels": 1, "out_channels": 2, "kernel_size": 1},
        "preprocessing": {"_target_": "Compose", "transforms": [{"_target_": "LoadImaged", "keys": "image"},
                                                                {"_target_": "EnsureChannelFirstd", "keys": "image"}]},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [32, 32, 32], "sw_batch_size": 1}}))
    net = torch.nn.Conv3d(1, 2, 1)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([0.0, 1.0]).reshape(2, 1, 1, 1, 1))
        net.bias.copy_(torch.tensor([150.0, 0.0]))
    torch.save(net.state_dict(), bundle / "models" / "model.pt")
    assert describe_model_path(str(bundle))["channel_names"] == ["T1c"]

    geom = oblique_geometry(size=(40, 36, 24))
    vol = blob_phantom(geom, noise=2.0, seed=3)
    node = mrml.node_from_volume(vol, "t1c", scene)
    seg = segment_model_job([node], str(bundle), scene=scene).run_blocking()
    segmentation = seg.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 1
    segment = segmentation.GetSegment(segmentation.GetNthSegmentID(0))
    assert segment.GetName() == "Enhancing tumor"
    from medtorch.segment.terminology import term

    np.testing.assert_allclose(segment.GetColor(), term("Enhancing tumor").color)
    import vtk

    entry = vtk.reference("")
    assert segment.GetTag("TerminologyEntry", entry)
    assert "Enhancing Lesion" in str(entry)
    exported = mrml.label_from_segmentation(seg, node).array > 0
    np.testing.assert_array_equal(exported, vol.array > 150.0)
    ml = json.loads(seg.GetAttribute("MedTorch.volumesMl"))["Enhancing tumor"]
    assert ml == pytest.approx((vol.array > 150.0).sum() * geom.voxel_volume_mm3 / 1000.0)
    assert seg.GetAttribute("MedTorch.model") == str(bundle)

    # a wrong channel count fails cleanly and adds nothing to the scene
    before = scene_node_ids(scene)
    with pytest.raises(MedTorchInputError, match="takes 1 input channel"):
        segment_model_job([node, node], str(bundle), scene=scene).run_blocking()
    assert scene_node_ids(scene) == before
    with pytest.raises(MedTorchInputError, match="no model"):
        segment_model_job([node], "", scene=scene)
