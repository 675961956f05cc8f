"""The FusionRegistration module's fusion on the headless Slicer: Logic (every method, through the
registration's transform, colour fusion, bad input), the evaluation's table and box plot, the
Fuse and Evaluate buttons in the background, Cancel, and the sample-data hook."""

from __future__ import annotations

import sys
import time
import types

import numpy as np
import pytest
import torch

from medtorch.phantoms import blob_phantom, oblique_geometry

METHODS = ["average", "dwt", "laplacian", "gff", "pca", "cnn"]
FAST_REGISTRATION = {"iterations": [30, 25, 25], "samples": [2000, 5000, 10000]}


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _module():
    import slicer_testbed

    return slicer_testbed.load_module("FusionRegistration")


def _widget():
    mod = _module()
    widget = mod.FusionRegistrationWidget()
    widget.setup()
    return mod, widget


@pytest.fixture
def pair(scene):
    from medtorch.slicer import mrml

    geom = oblique_geometry(size=(22, 20, 14))
    fixed = blob_phantom(geom)
    moving = blob_phantom(geom, noise=4.0, seed=3)
    return fixed, moving, mrml.node_from_volume(fixed, "fixed"), mrml.node_from_volume(moving, "moving")


def _small_params(logic, method):
    return logic.fusionMethodParams(method, weight=0.3, dwtLevels=2, laplacianLevels=2, gffR1=5, gffR2=2,
                                    cnnIterations=2, seed=7)


@pytest.mark.parametrize("method", METHODS)
def test_logic_fuses_each_method_into_a_new_node_on_the_fixed_grid(scene, pair, method):
    import slicer

    from medtorch.slicer import mrml

    fixed, moving, fixed_node, moving_node = pair
    logic = _module().FusionRegistrationLogic()
    out = logic.fuse(fixed_node, moving_node, method=method, methodParams=_small_params(logic, method),
                     showIn3D=(method == "gff"), device="cpu")
    node = out.fusedNode
    assert node not in (fixed_node, moving_node) and out.outputNode is node and out.rgbNode is None
    fused = mrml.volume_from_node(node)
    assert fused.geometry.isclose(fixed.geometry, atol=1e-6)
    assert 0.0 <= float(fused.array.min()) < float(fused.array.max()) <= 1.0
    assert node.GetAttribute("MedTorch.method") == method
    assert method in node.GetName() and "fused with" in node.GetName()
    assert out.metrics["QABF"] > 0.0 and out.tableNode.GetTable().GetNumberOfRows() == 8
    if method == "cnn":
        assert node.GetAttribute("MedTorch.seed") == "7"
    if method == "gff":
        disp = slicer.modules.volumerendering.logic().GetFirstVolumeRenderingDisplayNode(node)
        assert disp is not None and disp.GetVisibility()
    # the inputs are unchanged; fixed as background, moving as foreground in linked views
    np.testing.assert_array_equal(mrml.volume_from_node(fixed_node).array, fixed.array)
    np.testing.assert_array_equal(mrml.volume_from_node(moving_node).array, moving.array)
    comp = scene.GetNthNodeByClass(0, "vtkMRMLSliceCompositeNode")
    assert comp.GetBackgroundVolumeID() == fixed_node.GetID() and comp.GetForegroundVolumeID() == moving_node.GetID()
    assert comp.GetLinkedControl() == 1


def test_average_matches_the_core_and_output_node_is_reused_only_when_chosen(scene, pair):
    from medtorch.errors import MedTorchInputError
    from medtorch.fusion.fuse import fuse_volumes
    from medtorch.slicer import mrml

    fixed, moving, fixed_node, moving_node = pair
    logic = _module().FusionRegistrationLogic()
    first = logic.fuse(fixed_node, moving_node, method="average", weight=0.3, showIn3D=False).fusedNode
    expected = fuse_volumes(fixed, moving, "average", params={"weight": 0.3}).fused.array
    np.testing.assert_allclose(mrml.volume_from_node(first).array, expected, atol=1e-6)
    second = logic.fuse(fixed_node, moving_node, method="pca", showIn3D=False, computeMetrics=False)
    assert second.fusedNode is not first and second.tableNode is None
    third = logic.fuse(fixed_node, moving_node, method="pca", outputVolume=first, showIn3D=False).fusedNode
    assert third is first and first.GetAttribute("MedTorch.method") == "pca"
    with pytest.raises(MedTorchInputError, match="output volume is the (fixed|moving) volume"):
        logic.fuseJob(fixed_node, moving_node, outputVolume=fixed_node)


def test_register_then_fuse_uses_the_registration_transform(scene):
    from medtorch.slicer import mrml
    from medtorch.registration.synthetic import synthetic_pair

    pair = synthetic_pair("rigid", seed=1, size=40, spacing=2.4)
    fixed_node = mrml.node_from_volume(pair.fixed, "fixed")
    moving_node = mrml.node_from_volume(pair.moving, "moving")
    logic = _module().FusionRegistrationLogic()
    # Before registration the moving volume lies misaligned: a raw average with weight 1 is the
    # moving volume as it lies, far from the registered one.
    before = mrml.volume_from_node(logic.fuse(fixed_node, moving_node, method="average", weight=1.0,
                                                normalization="none", showIn3D=False).fusedNode).array
    reg = logic.register(fixed_node, moving_node, mode="rigid", metric="mi", seed=0, options=FAST_REGISTRATION)
    assert moving_node.GetTransformNodeID() == reg.transformNode.GetID()
    after = logic.fuse(fixed_node, moving_node, method="average", weight=1.0, normalization="none", showIn3D=False)
    fused = mrml.volume_from_node(after.fusedNode)
    resampled = mrml.volume_from_node(reg.resampledNode).array  # the registration's own resampling
    assert fused.geometry.isclose(pair.fixed.geometry, atol=1e-6)
    inside = resampled != 0
    assert float(np.abs(fused.array - resampled)[inside].mean()) < 0.02 * float(np.abs(resampled[inside]).mean())
    assert float(np.abs(before - resampled).mean()) > 10 * float(np.abs(fused.array - resampled).mean())
    assert "transform" in after.fusedNode.GetAttribute("MedTorch.movingPlacement")


def test_colour_fusion_gives_an_rgb_vector_node(scene, pair):
    import slicer

    from medtorch.slicer import mrml

    fixed, _, fixed_node, moving_node = pair
    moving_node.SetAttribute("DICOM.Modality", "PT")  # found by 'auto', as for a PET loaded from DICOM
    logic = _module().FusionRegistrationLogic()
    out = logic.fuse(fixed_node, moving_node, method="gff", methodParams=_small_params(logic, "gff"),
                     colorMap="hot", opacity=0.4, showIn3D=False)
    assert out.outputNode is out.rgbNode and out.rgbNode.GetClassName() == "vtkMRMLVectorVolumeNode"
    rgb = mrml.volume_from_node(out.rgbNode)
    assert rgb.array.shape == fixed.array.shape + (3,) and rgb.array.dtype == np.uint8
    assert rgb.geometry.isclose(fixed.geometry, atol=1e-6)
    assert np.any(rgb.array[..., 0] != rgb.array[..., 2])  # in colour, not grey
    assert out.info["moving_modality"] == "PT" and out.info["color_map"] == "hot"
    comp = scene.GetNthNodeByClass(0, "vtkMRMLSliceCompositeNode")
    assert comp.GetForegroundOpacity() == pytest.approx(0.4)
    cnode = slicer.mrmlScene.GetNodeByID(moving_node.GetDisplayNode().GetColorNodeID())
    assert cnode.GetAttribute("MedTorch.colorMap") == "hot"


def test_bad_input_gets_a_clear_error_and_leaves_the_scene(scene, pair):
    import slicer

    from medtorch.errors import MedTorchInputError
    from medtorch.slicer.jobs import scene_node_ids

    _, _, fixed_node, moving_node = pair
    logic = _module().FusionRegistrationLogic()
    before = scene_node_ids(slicer.mrmlScene)
    with pytest.raises(MedTorchInputError, match="neither volume is a functional image") as err:
        logic.fuseJob(fixed_node, moving_node, method="dwt", movingModality="MR", colorMap="hot")
    assert "Moving modality" in err.value.fix
    with pytest.raises(MedTorchInputError, match="same node"):
        logic.fuseJob(fixed_node, fixed_node)
    with pytest.raises(MedTorchInputError, match="checkpoint"):
        logic.fuseJob(fixed_node, moving_node, method="cnn", methodParams={"checkpoint": "/no/such/weights.pt"})
    with pytest.raises(MedTorchInputError, match="only make sense for 'average'"):
        logic.fuseJob(fixed_node, moving_node, method="gff", normalization="none")
    with pytest.raises(MedTorchInputError, match="unknown fusion method"):
        logic.evaluateJob(fixed_node, moving_node, methods="dwt,sepia")
    assert scene_node_ids(slicer.mrmlScene) == before


def test_evaluate_gives_a_metrics_table_and_a_box_plot(scene, pair):
    import slicer

    from medtorch.fusion.metrics import METRICS

    _, _, fixed_node, moving_node = pair
    logic = _module().FusionRegistrationLogic()
    params = {m: _small_params(logic, m) for m in ("dwt", "gff")}
    out = logic.evaluate(fixed_node, moving_node, methods=["average", "gff", "pca"], baseline="dwt", metric="SSIM",
                         methodParams=params)
    table = out.tableNode.GetTable()
    assert out.methods == ["dwt", "average", "gff", "pca"]
    assert table.GetNumberOfRows() == 4
    columns = [table.GetColumnName(i) for i in range(table.GetNumberOfColumns())]
    assert columns[:2] == ["method", "seconds"] and all(m in columns for m in METRICS)
    assert "SSIM_sum" in columns and "SSIM" not in columns  # the summed SSIM says so (0..2)
    assert [table.GetValue(i, 0).ToString() for i in range(4)] == out.methods
    qabf = [table.GetValue(i, columns.index("QABF")).ToDouble() for i in range(4)]
    assert qabf == pytest.approx([r["QABF"] for r in out.rows]) and all(0.0 < q <= 1.0 for q in qabf)
    chart = out.chartNode
    assert chart.GetClassName() == "vtkMRMLPlotChartNode" and chart.GetYAxisTitle() == "SSIM_sum"
    series = {chart.GetNthPlotSeriesNode(i).GetName() for i in range(chart.GetNumberOfPlotSeriesNodes())}
    assert set(out.methods) <= series
    assert out.statsTableNode.GetTable().GetNumberOfRows() == 3 * len(METRICS)  # each method but the baseline
    n_slices = int(out.tableNode.GetAttribute("MedTorch.slicesScored"))
    assert 0 < n_slices <= 14
    assert all(s["n"] == n_slices for s in out.stats)
    # an existing table is reused when chosen
    again = logic.evaluate(fixed_node, moving_node, methods=["pca"], baseline="average", tableNode=out.tableNode,
                           showChart=False)
    assert again.tableNode is out.tableNode and out.tableNode.GetTable().GetNumberOfRows() == 2
    assert slicer.mrmlScene.GetNodeByID(out.chartNode.GetID()) is not None


def test_fuse_and_evaluate_buttons_run_in_the_background(scene, pair):
    import slicer
    import slicer_testbed

    _, _, fixed_node, moving_node = pair
    _mod, w = _widget()
    p = w._parameterNode
    for name in ("fusionMethodComboBox", "waveletComboBox", "dwtLevelsSpinBox", "laplacianLevelsSpinBox",
                 "gffR1SpinBox", "gffEps1SpinBox", "gffR2SpinBox", "gffEps2SpinBox", "cnnIterationsSpinBox",
                 "cnnCheckpointLineEdit", "fixedModalityComboBox", "movingModalityComboBox", "ctWindowComboBox",
                 "colorMapComboBox", "computeMetricsCheckBox", "foregroundOpacitySliderWidget", "showIn3DCheckBox",
                 "evaluationMethodsLineEdit", "evaluationBaselineComboBox", "boxPlotMetricComboBox",
                 "evaluationTableSelector", "evaluateButton"):
        assert hasattr(w.ui, name), name
    # GUI -> parameter node, and back
    w.ui.fusionMethodComboBox.setCurrentText("gff")
    assert p.fusionMethod == "gff"
    w.ui.gffR1SpinBox.setValue(5)
    w.ui.gffR2SpinBox.setValue(2)
    assert (p.gffR1, p.gffR2) == (5, 2)
    w.ui.foregroundOpacitySliderWidget.setValue(0.25)
    assert p.foregroundOpacity == pytest.approx(0.25)
    p.colorMap = "jet"
    assert w.ui.colorMapComboBox.currentText == "jet"
    p.colorMap = "none"
    assert w.ui.evaluateButton.enabled and w.ui.applyButton.enabled

    w.ui.applyButton.click()
    assert w.runner.status == "running"
    assert not w.ui.applyButton.enabled and not w.ui.evaluateButton.enabled  # one run at a time
    assert slicer_testbed.run_events_until(lambda: w.runner.status != "running", timeout=120)
    assert w.runner.status == "done", w.ui.statusLabel.text
    out = p.outputVolume
    assert out is not None and out not in (fixed_node, moving_node)
    assert out.GetAttribute("MedTorch.method") == "gff" and "Fused (gff)" in w.ui.statusLabel.text
    assert slicer.modules.volumerendering.logic().GetFirstVolumeRenderingDisplayNode(out) is not None
    comp = scene.GetNthNodeByClass(0, "vtkMRMLSliceCompositeNode")
    assert comp.GetForegroundOpacity() == pytest.approx(0.25)

    w.ui.evaluationMethodsLineEdit.setText("average,pca")
    p.evaluationMethods = "average,pca"
    p.evaluationBaseline = "average"
    w.ui.evaluateButton.click()
    assert slicer_testbed.run_events_until(lambda: w.runner.status != "running", timeout=120)
    assert w.runner.status == "done", w.ui.statusLabel.text
    assert p.evaluationTable is not None and p.evaluationTable.GetTable().GetNumberOfRows() == 2
    assert "Evaluated 2 methods" in w.ui.statusLabel.text


def test_cancel_leaves_the_scene_as_it_was(scene, pair):
    import slicer
    import slicer_testbed

    from medtorch.slicer.jobs import scene_node_ids

    _mod, w = _widget()
    p = w._parameterNode
    p.fusionMethod = "cnn"
    p.cnnIterations = 20000
    before = scene_node_ids(slicer.mrmlScene)
    w.ui.applyButton.click()
    assert slicer_testbed.run_events_until(lambda: w.runner.dialog.value > 0, timeout=60), "no progress shown"
    pressed = time.monotonic()
    w.runner.dialog.cancel()
    assert slicer_testbed.run_events_until(lambda: w.runner.status != "running", timeout=10)
    assert time.monotonic() - pressed < 2.0
    assert w.runner.status == "cancelled"
    assert scene_node_ids(slicer.mrmlScene) == before
    assert p.outputVolume is None and w.ui.applyButton.enabled


def test_sample_data_is_registered_at_startup(headless_slicer, monkeypatch):
    import slicer

    mod = _module()
    assert mod.registerSampleData in slicer.app.signals.get("startupCompleted()", [])
    calls = []
    fake = types.SimpleNamespace(SampleDataLogic=types.SimpleNamespace(
        registerCustomSampleDataSource=lambda **kw: calls.append(kw)))
    monkeypatch.setitem(sys.modules, "SampleData", fake)
    assert mod.registerSampleData() == 3
    assert {c["category"] for c in calls} == {"MedTorch"}
    assert all(c["uris"].startswith("file://") and "FusionRegistration" in c["uris"] for c in calls)


def test_compare_methods_core_slices_and_paired_tests():
    """The core of Evaluate (no Slicer): 3D rows, per-slice values on the informative slices, and
    the paired tests equal scipy's on those values."""
    from scipy import stats

    from medtorch.fusion.compare import compare_methods
    from medtorch.fusion.fuse import fuse_volumes
    from medtorch.fusion.metrics import fusion_metrics

    geom = oblique_geometry(size=(20, 18, 12))
    fixed, moving = blob_phantom(geom), blob_phantom(geom, noise=4.0, seed=3)
    res = compare_methods(fixed, moving, ["pca", "average", "pca"], baseline="average", device="cpu")
    assert res.methods == ["pca", "average"] and [r["method"] for r in res.rows] == res.methods  # duplicates dropped
    pca = fuse_volumes(fixed, moving, "pca", device="cpu")
    direct = fusion_metrics(pca.fixed_prepared.array, pca.moving_prepared.array, pca.fused.array, mode="3d")
    assert res.rows[0]["QABF"] == pytest.approx(direct["QABF"], rel=1e-6)
    n = len(res.slice_index)
    assert 0 < n <= 12 and all(len(v) == n for per in res.slices.values() for v in per.values())
    row = next(s for s in res.stats if s["metric"] == "SSIM_sum" and s["method"] == "pca")
    x, y = np.array(res.slices["pca"]["SSIM_sum"]), np.array(res.slices["average"]["SSIM_sum"])
    assert row["n"] == n and row["wilcoxon_p"] == pytest.approx(stats.wilcoxon(x, y).pvalue)
    assert row["ttest_p"] == pytest.approx(stats.ttest_rel(x, y).pvalue)
