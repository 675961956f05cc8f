"""Module widgets on the headless Slicer with the Qt stand-in: the .ui binds to the parameter
node both ways, Apply runs the job in a background process with progress, and Cancel
stops it and leaves the scene as it was."""

from __future__ import annotations

import time

import numpy as np
import pytest

from medtorch.phantoms import blob_phantom, oblique_geometry


def _widget(module_name):
    import slicer_testbed

    mod = slicer_testbed.load_module(module_name)
    widget = getattr(mod, module_name + "Widget")()
    widget.setup()
    return mod, widget


def test_fusion_widget_binds_parameters_and_applies_in_background(scene):
    import slicer
    import slicer_testbed

    from medtorch.slicer import mrml

    geom = oblique_geometry()
    fixed = mrml.node_from_volume(blob_phantom(geom), "fixed")
    moving = mrml.node_from_volume(blob_phantom(geom, noise=4.0, seed=5), "moving")
    mod, w = _widget("FusionRegistration")
    p = w._parameterNode
    # defaults picked by the widget, GUI and parameter node agree
    assert p.fixedVolume is fixed and p.movingVolume is moving
    assert w.ui.fixedSelector.currentNode() is fixed
    assert w.ui.applyButton.enabled
    # GUI -> parameter node
    w.ui.blendWeightSliderWidget.setValue(0.3)
    assert p.blendWeight == pytest.approx(0.3)
    w.ui.normalizationComboBox.setCurrentText("none")
    assert p.normalization == "none"
    # parameter node -> GUI
    p.blendWeight = 0.7
    assert w.ui.blendWeightSliderWidget.value == pytest.approx(0.7)
    with pytest.raises(ValueError):
        p.blendWeight = 1.5
    # no moving volume: Apply disabled with a helpful tooltip
    w.ui.movingSelector.setCurrentNode(None)
    assert not w.ui.applyButton.enabled and "Select" in w.ui.applyButton.toolTip
    w.ui.movingSelector.setCurrentNode(moving)

    w.ui.applyButton.click()
    assert w.runner.status == "running" and w.runner.dialog.visible
    assert not w.ui.applyButton.enabled  # no second run while one is going
    assert slicer_testbed.run_events_until(lambda: w.runner.status != "running", timeout=120)
    assert w.runner.status == "done"
    out = p.outputVolume
    assert out is not None and out not in (fixed, moving)
    assert "fused with" in out.GetName()
    assert w.ui.applyButton.enabled
    assert not w.runner.dialog.visible
    expected = mrml.volume_from_node(mod.FusionRegistrationLogic().blend(fixed, moving, 0.7, "none"))
    np.testing.assert_allclose(mrml.volume_from_node(out).array, expected.array, atol=1e-5)
    # the parameter node is saved with the scene: values are in the MRML node
    assert p.parameterNode.GetParameter("blendWeight") == "0.7"
    assert p.parameterNode.GetNodeReferenceID("outputVolume") == out.GetID()


def test_rerun_writes_into_chosen_output_only(scene):
    """Re-running never overwrites a user's node unless it was chosen as the output."""
    from medtorch.slicer import mrml

    geom = oblique_geometry()
    fixed = mrml.node_from_volume(blob_phantom(geom), "fixed")
    moving = mrml.node_from_volume(blob_phantom(geom, noise=4.0, seed=5), "moving")
    mod, _ = _widget("FusionRegistration")
    logic = mod.FusionRegistrationLogic()
    first = logic.blend(fixed, moving, 0.5)
    second = logic.blend(fixed, moving, 0.5)
    assert first is not second and first.GetName() != second.GetName()
    third = logic.blend(fixed, moving, 0.9, outputVolume=first)
    assert third is first
    from medtorch.errors import MedTorchInputError

    with pytest.raises(MedTorchInputError):
        logic.blend(fixed, moving, 0.5, outputVolume=fixed)


def test_enhance_widget_cancel_leaves_scene_as_it_was(scene):
    import slicer
    import slicer_testbed

    from medtorch.slicer import mrml
    from medtorch.slicer.jobs import scene_node_ids

    geom = oblique_geometry(size=(96, 96, 80), spacing=(1.0, 1.0, 1.0))
    node = mrml.node_from_volume(blob_phantom(geom, noise=10.0), "big")
    mod, w = _widget("EnhanceSR")
    p = w._parameterNode
    assert p.inputVolume is node
    w.ui.methodComboBox.setCurrentText("anisotropic")
    w.ui.iterationsSpinBox.setValue(100)
    assert p.method == "anisotropic" and p.iterations == 100
    before = scene_node_ids(slicer.mrmlScene)
    w.ui.applyButton.click()
    assert slicer_testbed.run_events_until(lambda: w.runner.dialog.value > 0, timeout=60), "no progress shown"
    pressed = time.monotonic()
    w.runner.dialog.cancel()  # the dialog's Cancel button
    assert slicer_testbed.run_events_until(lambda: w.runner.status != "running", timeout=10)
    assert time.monotonic() - pressed < 2.0
    assert w.runner.status == "cancelled"
    assert scene_node_ids(slicer.mrmlScene) == before
    assert p.outputVolume is None
    assert w.ui.applyButton.enabled


def test_segment_widget_reports_volume(scene):
    import slicer_testbed

    from medtorch.slicer import mrml

    geom = oblique_geometry(spacing=(0.8, 0.9, 1.2), size=(48, 44, 36))
    mrml.node_from_volume(blob_phantom(geom, noise=5.0, seed=2), "phantom")
    mod, w = _widget("SegmentTumor")
    w.ui.lowerSpinBox.setValue(150.0)
    w.ui.segmentNameLineEdit.text = "Lesion"
    w._parameterNode.segmentName = "Lesion"
    w.ui.applyButton.click()
    assert slicer_testbed.run_events_until(lambda: w.runner.status != "running", timeout=120)
    assert w.runner.status == "done", w.ui.statusLabel.text
    seg = w.runner.output
    assert seg.GetSegmentation().GetNthSegment(0).GetName() == "Lesion"
    assert w.ui.volumeValueLabel.text.endswith(" mL")
    assert float(w.ui.volumeValueLabel.text.split()[0]) > 0.3


def test_background_error_is_reported_not_raised(scene):
    import slicer_testbed

    from medtorch.slicer import mrml

    geom = oblique_geometry()
    mrml.node_from_volume(blob_phantom(geom), "phantom")
    mod, w = _widget("SegmentTumor")
    w.ui.lowerSpinBox.setValue(9000.0)  # no voxel that bright
    w.ui.applyButton.click()
    assert slicer_testbed.run_events_until(lambda: w.runner.status != "running", timeout=120)
    assert w.runner.status == "failed"
    assert "What to do" in w.ui.statusLabel.text


def test_enhance_widget_slice_profile_shape_reaches_the_superres_request(scene):
    """The panel's slice-profile shape (selfsup) is the request's choice: bound both ways and passed to
    the superres operation, whose trained model records it."""
    import slicer

    from medtorch.ops.base import choices, default_of
    from medtorch.ops.enhance import SuperresRequest
    from medtorch.slicer import mrml

    geom = oblique_geometry(size=(40, 40, 8), spacing=(1.0, 1.0, 4.0))
    node = mrml.node_from_volume(blob_phantom(geom, noise=2.0, seed=3), "thick")
    mod, w = _widget("EnhanceSR")
    p = w._parameterNode
    combo = w.ui.profileShapeComboBox
    # the panel offers exactly the request's shapes, the request's default first and selected
    assert list(mod.SR_PROFILE_SHAPES) == list(choices(SuperresRequest, "profile_shape"))
    assert combo.items[0] == default_of(SuperresRequest, "profile_shape") == p.profileShape
    assert sorted(combo.items) == sorted(mod.SR_PROFILE_SHAPES)
    assert "box" in combo.toolTip and "2D multi-slice" in combo.toolTip
    # GUI -> parameter node -> request
    w.ui.operationComboBox.setCurrentText("superres")
    w.ui.srMethodComboBox.setCurrentText("selfsup")
    combo.setCurrentText("box")
    assert p.profileShape == "box"
    job = w.logic.jobFromParameters(p)
    assert job.request.operation == "superres" and job.request.profile_shape == "box"
    # parameter node -> GUI
    p.profileShape = "auto"
    assert combo.currentText == "auto"
    assert w.logic.jobFromParameters(p).request.profile_shape == "auto"
    # the shape reaches the training: the output records the box the model was trained with
    out = w.logic.superres(node, "selfsup", 4.0, "auto", profileShape="box", trainIterations=2)
    assert out.GetAttribute("MedTorch.profile_shape") == "box"
    assert out.GetAttribute("MedTorch.fwhm_source") == "estimated"
    assert slicer.mrmlScene.GetNodeByID(out.GetID()) is out
