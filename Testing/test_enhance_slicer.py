"""EnhanceSR in (headless) Slicer: super-resolution and enhancement through the module's logic
and widget, new nodes on the right grid, before/after comparison volume and linked views."""

from __future__ import annotations

import numpy as np
import pytest

from medtorch.enhance.superres import output_geometry
from medtorch.phantoms import blob_phantom, oblique_geometry


def _widget(module_name):
    import slicer_testbed

    mod = slicer_testbed.load_module(module_name)
    widget = getattr(mod, module_name + "Widget")()
    widget.setup()
    return mod, widget


def test_logic_superres_makes_a_new_node_on_the_physical_grid(scene):
    import slicer

    from medtorch.slicer import mrml

    geom = oblique_geometry(size=(20, 18, 8), spacing=(0.9, 0.9, 3.0))
    node = mrml.node_from_volume(blob_phantom(geom), "thick")
    before = slicer.util.arrayFromVolume(node).copy()
    mod, _ = _widget("EnhanceSR")
    out = mod.EnhanceSRLogic().superres(node, "bspline", 3.0, "auto", comparison="checkerboard")
    assert out is not node and "SR x3" in out.GetName()
    result = mrml.volume_from_node(out)
    assert result.geometry.isclose(output_geometry(geom, (1, 1, 3)), atol=1e-5)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), before)
    board = slicer.mrmlScene.GetNodeByID(out.GetAttribute("MedTorch.comparisonNodeID"))
    assert board is not None and mrml.volume_from_node(board).geometry.isclose(result.geometry, atol=1e-5)
    assert out.GetAttribute("MedTorch.operation") == "superres"
    # before/after in linked views: the result behind, the input in front (faded out)
    comp = slicer.mrmlScene.GetNodeByID("vtkMRMLSliceCompositeNodeRed")
    assert comp.GetBackgroundVolumeID() == out.GetID() and comp.GetForegroundVolumeID() == node.GetID()
    assert comp.GetLinkedControl() == 1


def test_logic_enhance_with_histogram_reference(scene):
    from medtorch.slicer import mrml

    geom = oblique_geometry(size=(20, 18, 16), spacing=(1.0, 1.0, 1.2))
    node = mrml.node_from_volume(blob_phantom(geom, noise=2.0), "t1")
    ref = mrml.node_from_volume(blob_phantom(geom).with_array(blob_phantom(geom).array * 3.0 + 50.0), "ref")
    mod, _ = _widget("EnhanceSR")
    out = mod.EnhanceSRLogic().enhance(node, unsharp=True, referenceVolume=ref, comparison="difference")
    vol = mrml.volume_from_node(out)
    assert vol.geometry.isclose(geom, atol=1e-5)
    assert vol.array.mean() > mrml.volume_from_node(node).array.mean() + 20
    assert out.GetAttribute("MedTorch.steps") == str(["histogram_match", "unsharp"])
    with pytest.raises(Exception, match="output volume is the input"):
        mod.EnhanceSRLogic().enhance(node, unsharp=True, outputVolume=node)


def test_widget_runs_superres_in_the_background(scene):
    import slicer_testbed

    from medtorch.slicer import mrml

    geom = oblique_geometry(size=(16, 16, 6), spacing=(1.0, 1.0, 2.0))
    node = mrml.node_from_volume(blob_phantom(geom), "thick")
    mod, w = _widget("EnhanceSR")
    p = w._parameterNode
    w.ui.operationComboBox.setCurrentText("superres")
    w.ui.srMethodComboBox.setCurrentText("linear")
    w.ui.factorSpinBox.setValue(2.0)
    w.ui.comparisonComboBox.setCurrentText("difference")
    assert p.operation == "superres" and p.srMethod == "linear" and p.factor == 2.0 and p.comparison == "difference"
    w.ui.applyButton.click()
    assert slicer_testbed.run_events_until(lambda: w.runner.status != "running", timeout=120)
    assert w.runner.status == "done", w.ui.statusLabel.text
    out = p.outputVolume
    assert out is not None and out is not node
    assert mrml.volume_from_node(out).size == (16, 16, 12)
    assert "Super-resolved" in w.ui.statusLabel.text
