"""FusionRegistration's registration on the headless Slicer: widget binding, the Register button in
the background, and the Logic's MRML results (RAS/LPS, parent transforms, landmarks, harden)."""

from __future__ import annotations

import numpy as np
import pytest

from medtorch.registration.synthetic import synthetic_pair

FAST = {"iterations": [30, 25, 25], "samples": [2000, 5000, 10000]}


@pytest.fixture(scope="module")
def pair():
    return synthetic_pair("rigid", seed=1, size=40, spacing=2.4)


def _widget():
    import slicer_testbed

    mod = slicer_testbed.load_module("FusionRegistration")
    widget = mod.FusionRegistrationWidget()
    widget.setup()
    return mod, widget


def _markups(points_lps, name):
    import slicer

    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
    for p in points_lps:
        node.AddControlPoint(float(-p[0]), float(-p[1]), float(p[2]))  # LPS -> RAS
    return node


def test_register_button_runs_in_background_and_binds_parameters(scene, pair):
    import slicer_testbed

    from medtorch.slicer import mrml

    fixed = mrml.node_from_volume(pair.fixed, "fixed")
    moving = mrml.node_from_volume(pair.moving, "moving")
    mod, w = _widget()
    p = w._parameterNode
    assert p.fixedVolume is fixed and p.movingVolume is moving
    assert w.ui.registerButton.enabled and w.ui.applyButton.enabled
    # GUI -> parameter node, and back
    w.ui.modeComboBox.setCurrentText("affine")
    assert p.registrationMode == "affine"
    w.ui.metricComboBox.setCurrentText("mind")
    assert p.metric == "mind"
    p.metric = "mi"
    assert w.ui.metricComboBox.currentText == "mi"
    w.ui.seedSpinBox.setValue(5)
    assert p.seed == 5
    p.registrationMode = "rigid"
    with pytest.raises(ValueError):
        p.engine = "ants"
    # no moving volume: both actions disabled, with the same helpful tooltip
    w.ui.movingSelector.setCurrentNode(None)
    assert not w.ui.registerButton.enabled and "Select" in w.ui.registerButton.toolTip
    w.ui.movingSelector.setCurrentNode(moving)
    assert w.ui.registerButton.enabled

    w.ui.registerButton.click()
    assert w.runner.status == "running"
    assert not w.ui.registerButton.enabled and not w.ui.applyButton.enabled  # one run at a time
    assert slicer_testbed.run_events_until(lambda: w.runner.status != "running", timeout=180)
    assert w.runner.status == "done", w.ui.statusLabel.text
    assert p.outputTransform is not None and p.outputTransform.IsA("vtkMRMLLinearTransformNode")
    assert p.resampledVolume is not None
    assert moving.GetTransformNodeID() == p.outputTransform.GetID()
    assert "Registered (torch rigid)" in w.ui.statusLabel.text
    assert p.outputTransform.GetAttribute("MedTorch.seed") == "5"
    matrix = mrml.transform_between_volumes(fixed, moving)
    assert pair.tre(pair.landmarks @ matrix[:3, :3].T + matrix[:3, 3]).max() < 0.5


def test_logic_under_parent_transforms_with_landmarks(scene, pair):
    """The fixed volume under a linear transform, the moving under another: the result node goes
    under the fixed parent, landmark TRE is computed in local coordinates, the scene aligns."""
    import slicer

    from medtorch.slicer import mrml

    mod, _ = _widget()
    fixed = mrml.node_from_volume(pair.fixed, "fixed")
    moving = mrml.node_from_volume(pair.moving, "moving")
    parent = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "fixed parent")
    to_parent = np.eye(4)
    to_parent[:3, 3] = [15.0, -4.0, 7.0]  # RAS
    parent.SetMatrixTransformToParent(mrml.vtk_matrix_from_array(to_parent))
    fixed.SetAndObserveTransformNodeID(parent.GetID())
    # landmarks placed in the scene (world RAS): fixed points through the fixed parent
    world_fixed = pair.landmarks + np.array([-15.0, 4.0, 7.0])  # RAS shift in LPS
    truth_moving = pair.truth(pair.landmarks)
    f_markups = _markups(world_fixed, "F")
    m_markups = _markups(truth_moving, "M")
    out = mod.FusionRegistrationLogic().register(fixed, moving, mode="rigid", fixedFiducials=f_markups,
                                                 movingFiducials=m_markups, seed=0, options=FAST)
    assert out.report["init"] == "fiducials"
    assert out.report["tre_mean_mm"] < 0.3
    assert out.transformNode.GetParentTransformNode() is parent
    assert out.resampledNode.GetParentTransformNode() is parent
    matrix = mrml.transform_between_volumes(fixed, moving)  # fixed local -> moving local, through both
    assert pair.tre(pair.landmarks @ matrix[:3, :3].T + matrix[:3, 3]).max() < 0.3
    assert float(out.transformNode.GetAttribute("MedTorch.tre_mean_mm")) == pytest.approx(out.report["tre_mean_mm"])


def test_logic_harden_only_on_request_and_output_type_checked(scene, pair):
    import slicer

    from medtorch.errors import MedTorchInputError
    from medtorch.slicer import mrml

    mod, _ = _widget()
    logic = mod.FusionRegistrationLogic()
    fixed = mrml.node_from_volume(pair.fixed, "fixed")
    moving = mrml.node_from_volume(pair.moving, "moving")
    before = slicer.util.arrayFromVolume(moving).copy()
    out = logic.register(fixed, moving, placeUnderTransform=False, seed=0, options=FAST)
    assert moving.GetTransformNodeID() is None
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(moving), before)
    # harden: the moving node itself changes (its geometry now carries the transform)
    geom_before = mrml.geometry_from_node(moving)
    logic.register(fixed, moving, harden=True, seed=0, outputTransform=out.transformNode, options=FAST)
    assert moving.GetTransformNodeID() is None
    assert not mrml.geometry_from_node(moving).isclose(geom_before, atol=1e-3)
    grid = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLGridTransformNode", "wrong kind")
    with pytest.raises(MedTorchInputError, match="not a linear transform"):
        logic.register(fixed, moving, outputTransform=grid, seed=0, options=FAST)
    with pytest.raises(MedTorchInputError, match="only one of the volumes"):
        logic.registerJob(fixed, moving, fixedFiducials=_markups(pair.landmarks[:3], "lonely"))


def test_grid_transform_node_matches_the_field_in_lps(scene):
    """An LPS field as a grid transform node (RAS): Slicer maps fixed points exactly as ITK would."""
    import torch

    from medtorch.slicer import mrml
    from medtorch.slicer.mrml import registration_transform_node
    from medtorch.phantoms import blob_phantom, oblique_geometry
    from medtorch.registration.result import total_displacement
    from medtorch.resample import transform_points
    from medtorch.volume import Geometry, Volume

    g = oblique_geometry()
    fixed = mrml.node_from_volume(blob_phantom(g), "fixed")
    moving = mrml.node_from_volume(blob_phantom(g), "moving")
    a = np.eye(4)
    a[:3, :3] = [[0.98, 0.06, 0.0], [-0.05, 1.01, 0.03], [0.01, -0.02, 0.99]]
    a[:3, 3] = [4.0, -2.5, 1.0]
    cg = Geometry((5, 6, 4), g.origin, g.spacing * (np.array(g.size) - 1) / (np.array([5, 6, 4]) - 1), g.direction)
    field = Volume(np.random.default_rng(3).normal(0, 1.5, (4, 6, 5, 3)), cg, "vector")
    node = registration_transform_node(a, field, "reg")
    assert node.IsA("vtkMRMLGridTransformNode")
    moving.SetAndObserveTransformNodeID(node.GetID())
    through_scene = mrml.transform_between_volumes(fixed, moving)
    expected = total_displacement(a, field, g)
    np.testing.assert_allclose(through_scene.array, expected.array, atol=1e-3)
    pts = torch.from_numpy(g.index_to_physical(np.array([[3.0, 4.0, 5.0], [20.0, 11.0, 7.0]])))  # on the fixed grid, where the scene field is exact
    np.testing.assert_allclose(transform_points(pts, [a, field]).numpy(),
                               transform_points(pts, through_scene).numpy(), atol=1e-3)


def test_register_verdict_colours_the_status_fills_a_table_and_the_optional_map(scene, pair):
    """The verdict on the panel: the status line green for a pass (red for a fail), a table with a row per
    check, and the local-similarity map only when its checkbox is on."""
    import slicer_testbed

    from medtorch.slicer import mrml
    from medtorch.volume import Volume

    fixed = mrml.node_from_volume(pair.fixed, "fixed")
    moving = mrml.node_from_volume(pair.moving, "moving")
    mod, w = _widget()
    p = w._parameterNode
    assert p.similarityMap is False and w.ui.similarityMapCheckBox.checked is False
    w.ui.similarityMapCheckBox.setChecked(True)
    assert p.similarityMap is True
    w.ui.registerButton.click()
    assert slicer_testbed.run_events_until(lambda: w.runner.status != "running", timeout=180)
    assert w.runner.status == "done", w.ui.statusLabel.text
    assert "verdict: PASS" in w.ui.statusLabel.text
    assert w.VERDICT_COLORS["pass"] in w.ui.statusLabel.styleSheet
    table = p.verdictTable
    assert table is not None and table.GetAttribute("MedTorch.verdict") == "pass"
    t = table.GetTable()
    assert [t.GetColumn(i).GetName() for i in range(t.GetNumberOfColumns())] == [
        "check", "value", "threshold", "status", "message"]
    names = [t.GetColumn(0).GetValue(r) for r in range(t.GetNumberOfRows())]
    assert {"overlap", "local_similarity", "inverse_consistency", "scale", "shear"} <= set(names)
    assert p.similarityMapVolume is not None
    smap = mrml.volume_from_node(p.similarityMapVolume)
    assert smap.geometry.isclose(pair.fixed.geometry, atol=1e-3) and 0.3 < float(smap.array.max()) <= 1.0
    assert p.outputTransform.GetAttribute("MedTorch.verdict") == "pass"

    # a noise volume as the moving one, blocking, no map: the verdict fails; the same table is refilled
    g = pair.moving.geometry
    noise = mrml.node_from_volume(Volume(np.random.default_rng(0).normal(100, 30, g.shape_zyx).astype(np.float32),
                                           g), "noise")
    out = mod.FusionRegistrationLogic().register(fixed, noise, seed=0, verdictTable=table, options=FAST)
    assert out.verdict["status"] == "fail" and out.verdictTableNode is table and out.similarityMapNode is None
    assert table.GetAttribute("MedTorch.verdict") == "fail" and t.GetNumberOfRows() == len(out.verdict["checks"])
    w.onRegistered(out)
    assert "verdict: FAIL" in w.ui.statusLabel.text and "local_similarity" in w.ui.statusLabel.text
    assert w.VERDICT_COLORS["fail"] in w.ui.statusLabel.styleSheet
