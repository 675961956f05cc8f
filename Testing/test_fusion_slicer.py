"""Fusion in Slicer's scene on the headless test bed (slicer-core): overlays with colour maps,
volume rendering, the RGB output, metric tables and the box-plot chart, and a ``fuse``
operation's result applied to the scene."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medtorch.phantoms import blob_phantom, oblique_geometry
from medtorch.volume import Volume


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def pair(scene):
    from medtorch.slicer import mrml

    geom = oblique_geometry(size=(20, 18, 12))
    fixed = blob_phantom(geom)
    moving = blob_phantom(geom, noise=4.0, seed=3)
    return fixed, moving, mrml.node_from_volume(fixed, "fixed"), mrml.node_from_volume(moving, "moving")


def _composites(scene):
    return [scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
            for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode"))]


def test_overlay_with_a_colour_map_in_linked_views(scene, pair):
    from medtorch.fusion.color import color_map_lut
    from FusionRegistrationLib import fusion_scene as sf

    _, _, fixed_node, moving_node = pair
    cnode = sf.show_fusion_in_views(fixed_node, moving_node, opacity=0.35, color_map="hot")
    comps = _composites(scene)
    assert len(comps) == 3
    for c in comps:
        assert c.GetBackgroundVolumeID() == fixed_node.GetID()
        assert c.GetForegroundVolumeID() == moving_node.GetID()
        assert c.GetForegroundOpacity() == pytest.approx(0.35)
        assert c.GetLinkedControl() == 1
    assert moving_node.GetDisplayNode().GetColorNodeID() == cnode.GetID()
    lut = color_map_lut("hot")
    rgba = [0.0] * 4
    for i in (0, 100, 255):
        cnode.GetColor(i, rgba)
        np.testing.assert_allclose(rgba[:3], lut[i], atol=1e-6)
    assert sf.color_node("hot") is cnode  # made once per scene
    pet = sf.color_node("vtkMRMLPETProceduralColorNodePET-Heat")  # a Slicer colour node by ID
    assert pet.GetID() == "vtkMRMLPETProceduralColorNodePET-Heat"
    with pytest.raises(ValueError, match="unknown colour map"):
        sf.color_node("sepia")
    with pytest.raises(ValueError, match="opacity"):
        sf.show_fusion_in_views(fixed_node, moving_node, opacity=1.5)


def test_volume_rendering_of_the_fused_volume(scene, pair):
    import slicer

    from FusionRegistrationLib import fusion_scene as sf

    _, _, fixed_node, _ = pair
    disp = sf.show_volume_rendering(fixed_node)
    assert disp.GetVisibility()
    logic = slicer.modules.volumerendering.logic()
    assert logic.GetFirstVolumeRenderingDisplayNode(fixed_node) is disp
    opacity = disp.GetVolumePropertyNode().GetVolumeProperty().GetScalarOpacity()
    arr = slicer.util.arrayFromVolume(fixed_node)
    assert opacity.GetValue(float(arr.min())) == pytest.approx(0.0)
    assert opacity.GetValue(float(arr.max())) == pytest.approx(0.8)
    assert sf.show_volume_rendering(fixed_node) is disp  # no second display node


def test_rgb_node_metrics_table_and_box_plot(scene, pair):
    from medtorch.slicer import mrml
    from FusionRegistrationLib import fusion_scene as sf

    fixed, _, fixed_node, _ = pair
    rgb = np.zeros(fixed.array.shape + (3,), np.uint8)
    rgb[..., 0] = 255
    node = sf.rgb_volume_node(Volume(rgb, fixed.geometry, "vector"), "rgb", reference_node=fixed_node)
    assert node.GetClassName() == "vtkMRMLVectorVolumeNode"
    back = mrml.volume_from_node(node)
    np.testing.assert_array_equal(back.array, rgb)
    assert back.geometry.isclose(fixed.geometry, atol=1e-9)
    with pytest.raises(ValueError, match="3 components"):
        sf.rgb_volume_node(fixed, "not rgb")

    table = sf.metrics_table_node({"QABF": 0.5, "VIF": 0.25})
    t = table.GetTable()
    assert (t.GetNumberOfRows(), t.GetColumnName(0), t.GetColumnName(1)) == (2, "metric", "value")
    assert t.GetValue(1, 0).ToString() == "VIF" and t.GetValue(1, 1).ToDouble() == pytest.approx(0.25)

    rows = [{"case": f"c{i}", "method": m, "QABF": v} for i in range(5)
            for m, v in (("dwt", 0.5 + 0.01 * i), ("gff", 0.7 + 0.02 * i))]
    many = sf.metrics_table_node(rows, "all")
    assert many.GetTable().GetNumberOfRows() == 10 and many.GetTable().GetNumberOfColumns() == 3
    chart = sf.box_plot_chart(rows, "QABF")
    assert chart.GetClassName() == "vtkMRMLPlotChartNode" and chart.GetNumberOfPlotSeriesNodes() == 4
    box = chart.GetNthPlotSeriesNode(2)  # gff's box
    assert box.GetName() == "gff"
    tab = box.GetTableNode().GetTable()
    ys = [tab.GetColumnByName("gff box y").GetValue(i) for i in range(tab.GetNumberOfRows())]
    xs = {tab.GetColumnByName("gff box x").GetValue(i) for i in range(tab.GetNumberOfRows())}
    gff = np.array([0.7 + 0.02 * i for i in range(5)])
    assert min(ys) == pytest.approx(gff.min()) and max(ys) == pytest.approx(gff.max())
    assert np.median(gff) == pytest.approx(sorted(ys)[len(ys) // 2], abs=0.03)
    assert xs == {1.75, 2.0, 2.25}  # the box of method 2 spans x = 2 +- 0.25


def test_fuse_operation_result_into_the_scene(scene, pair):
    from medtorch.slicer import mrml
    from FusionRegistrationLib import fusion_scene as sf
    from medtorch.runtime import run_operation

    fixed, moving, fixed_node, moving_node = pair
    res = run_operation("fuse", {"fixed": fixed, "moving": moving},
                        {"method": "gff", "moving_modality": "PT", "color_map": "hot", "metrics": "3d",
                         "device": "cpu"})
    nodes = sf.add_fuse_result(res, fixed_node, moving_node, "fused", color_map="hot")
    fused = mrml.volume_from_node(nodes["fused"])
    assert fused.geometry.isclose(fixed.geometry, atol=1e-9) and 0.0 <= fused.array.min() <= fused.array.max() <= 1.0
    assert nodes["fused"].GetAttribute("MedTorch.method") == "gff"
    assert nodes["rgb"].GetClassName() == "vtkMRMLVectorVolumeNode"
    metrics = {nodes["table"].GetTable().GetValue(i, 0).ToString(): nodes["table"].GetTable().GetValue(i, 1).ToDouble()
               for i in range(nodes["table"].GetTable().GetNumberOfRows())}
    assert metrics["QABF"] == pytest.approx(res.values["metrics"]["QABF"])
    assert _composites(scene)[0].GetForegroundVolumeID() == moving_node.GetID()
    # the inputs are unchanged
    np.testing.assert_array_equal(mrml.volume_from_node(fixed_node).array, fixed.array)
