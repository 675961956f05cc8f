"""An output node chosen equal to an input node (issue 21, part 1, in Slicer): the three
modules' Widgets ask first (``slicer.util.confirmOkCancelDisplay``, replaced here by a stand-in
that records the question and answers as told), Cancel changes nothing, OK replaces the input;
the Logic refuses it unless ``overwriteInput`` is given."""

from __future__ import annotations

import numpy as np
import pytest

from medtorch.errors import MedTorchInputError
from medtorch.phantoms import blob_phantom, oblique_geometry


class _Answer:
    """``slicer.util.confirmOkCancelDisplay``'s stand-in: records each question, answers ``ok``."""

    def __init__(self, ok: bool) -> None:
        self.ok = ok
        self.questions: list[str] = []

    def __call__(self, text, windowTitle=None, parent=None, **kwargs) -> bool:
        self.questions.append(text)
        return self.ok


@pytest.fixture
def answer(monkeypatch):
    import slicer

    def make(ok: bool) -> _Answer:
        a = _Answer(ok)
        monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", a)
        return a

    return make


def _widget(module_name):
    import slicer_testbed

    mod = slicer_testbed.load_module(module_name)
    widget = getattr(mod, module_name + "Widget")()
    widget.setup()
    return mod, widget


def _array(node):
    from medtorch.slicer import mrml

    return mrml.volume_from_node(node).array.copy()


def _run(w):
    import slicer_testbed

    assert slicer_testbed.run_events_until(lambda: w.runner.status != "running", timeout=120)
    assert w.runner.status == "done", w.ui.statusLabel.text


def test_enhance_output_equal_to_input_asks_first(scene, answer):
    from medtorch.slicer import mrml

    geom = oblique_geometry(size=(40, 36, 32))
    node = mrml.node_from_volume(blob_phantom(geom, noise=10.0, seed=3), "scan")
    before = _array(node)
    mod, w = _widget("EnhanceSR")
    p = w._parameterNode
    p.method = "gaussian"
    p.outputVolume = node
    # Cancel: nothing runs, the input is as it was, the panel says why
    no = answer(False)
    w.ui.applyButton.click()
    assert len(no.questions) == 1 and "'scan'" in no.questions[0] and "input volume" in no.questions[0]
    assert w.runner is None
    assert "Nothing done" in w.ui.statusLabel.text
    np.testing.assert_array_equal(_array(node), before)
    # OK: the input node receives the result
    yes = answer(True)
    w.ui.applyButton.click()
    assert len(yes.questions) == 1
    _run(w)
    assert w.runner.output is node and p.outputVolume is node
    after = _array(node)
    assert after.std() < before.std()  # smoothed
    # no question when the output is another node
    p.outputVolume = None
    other = answer(False)
    w.ui.applyButton.click()
    _run(w)
    assert other.questions == [] and p.outputVolume is not node
    # the Logic refuses without the user's agreement, and says what to do
    logic = mod.EnhanceSRLogic()
    with pytest.raises(MedTorchInputError, match="output volume is the input volume.*when Apply asks"):
        logic.denoise(node, "gaussian", 1.0, outputVolume=node)
    assert logic.denoise(node, "gaussian", 1.0, outputVolume=node, overwriteInput=True) is node


def test_fusion_output_equal_to_fixed_asks_first(scene, answer):
    from medtorch.slicer import mrml

    geom = oblique_geometry()
    fixed = mrml.node_from_volume(blob_phantom(geom), "fixed")
    moving = mrml.node_from_volume(blob_phantom(geom, noise=4.0, seed=5), "moving")
    before = _array(fixed)
    mod, w = _widget("FusionRegistration")
    p = w._parameterNode
    p.outputVolume = fixed
    no = answer(False)
    w.ui.applyButton.click()
    assert len(no.questions) == 1 and "fixed volume" in no.questions[0]
    assert w.runner is None and "Nothing done" in w.ui.statusLabel.text
    np.testing.assert_array_equal(_array(fixed), before)
    yes = answer(True)
    w.ui.applyButton.click()
    _run(w)
    assert yes.questions and p.outputVolume is fixed
    assert not np.array_equal(_array(fixed), before)
    # registration: the resampled volume chosen as the moving volume
    p.resampledVolume = moving
    moving_before = _array(moving)
    no = answer(False)
    w.ui.registerButton.click()
    assert len(no.questions) == 1 and "resampled volume 'moving' is also the moving volume" in no.questions[0]
    assert "Nothing done" in w.ui.statusLabel.text
    np.testing.assert_array_equal(_array(moving), moving_before)
    with pytest.raises(MedTorchInputError, match="resampled volume is the moving volume"):
        mod.FusionRegistrationLogic().registerJob(fixed, moving, resampledVolume=moving)


def test_segment_output_equal_to_seeds_asks_first(scene, answer):
    from medtorch.slicer import mrml
    from medtorch.segment.tumor_phantom import make_tumor_phantom, stroke_seeds, synthetic_tissue
    from medtorch.volume import Geometry

    geom = Geometry((40, 40, 32), origin=(-30.0, -30.0, -24.0), spacing=(1.5, 1.5, 1.5))
    ph = make_tumor_phantom(synthetic_tissue(geom, seed=1), noise=0.06, seed=2, core_radius_mm=6.0, rim_mm=3.0,
                            oedema_radius_mm=12.0)
    seeds = stroke_seeds(ph.truth, seed=0)
    flair = mrml.node_from_volume(ph.channels["FLAIR"], "FLAIR", scene)
    names = {1: "Necrosis", 2: "Edema", 3: "Enhancing tumor", 4: "Background"}
    seed_node = mrml.segmentation_from_label(seeds, names, "Seeds", reference_node=flair, scene=scene)
    mod, w = _widget("SegmentTumor")
    p = w._parameterNode
    w.ui.methodComboBox.setCurrentText("seeded")
    w.ui.seedSegmentationSelector.setCurrentNode(seed_node)
    p.outputSegmentation = seed_node
    no = answer(False)
    w.ui.applyButton.click()
    assert len(no.questions) == 1 and "seed segmentation" in no.questions[0]
    assert w.runner is None and "Nothing done" in w.ui.statusLabel.text
    assert seed_node.GetSegmentation().GetNumberOfSegments() == 4  # the seeds are untouched
    yes = answer(True)
    w.ui.applyButton.click()
    _run(w)
    assert yes.questions and w.runner.output is seed_node
    assert seed_node.GetSegmentation().GetNumberOfSegments() == 3  # the result: tumor classes, no background
    with pytest.raises(MedTorchInputError, match="output segmentation is the seed segmentation"):
        mod.SegmentTumorLogic().seeded([flair], seed_node, outputSegmentation=seed_node)
