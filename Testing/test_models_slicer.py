"""SegmentTumor's Models section on the headless Slicer: the Logic lists, imports (the license
shown once through the confirm dialog) and removes installed models, and the deep-learning
segmentation takes an installed model by name, keeping the channel contract; the widget's list
sets the model to segment with."""

from __future__ import annotations

import numpy as np
import pytest

from medtorch.errors import MedTorchInputError
from medtorch.phantoms import oblique_geometry
from medtorch.volume import Volume
from test_models_store import BRATS, LICENSE_TEXT, _bundle


@pytest.fixture
def pack(tmp_path, monkeypatch):
    from medtorch.models.segmentation import pack_bundle

    monkeypatch.setenv("MEDTORCH_MODELS_DIR", str(tmp_path / "store"))
    (tmp_path / "LICENSE.txt").write_text(LICENSE_TEXT)
    return pack_bundle(_bundle(tmp_path / "bundle"), tmp_path / "brats_test.zip", name="brats_test",
                       license_file=tmp_path / "LICENSE.txt")


def _logic():
    import slicer_testbed

    mod = slicer_testbed.load_module("SegmentTumor")
    return mod, mod.SegmentTumorLogic()


def test_logic_imports_with_the_license_asked_once_lists_and_removes(scene, pack):
    _, logic = _logic()
    shown = []
    assert logic.installedModels() == []
    assert logic.importModelPack(str(pack), confirm=lambda text: shown.append(text) or False) is None
    assert logic.installedModels() == [] and len(shown) == 1 and LICENSE_TEXT.strip() in shown[0]
    model = logic.importModelPack(str(pack), confirm=lambda text: shown.append(text) or True)
    assert model["name"] == "brats_test" and model["input_channels"] == BRATS and len(shown) == 2
    logic.importModelPack(str(pack), confirm=lambda text: shown.append(text) or True)
    assert len(shown) == 2  # agreed once: not asked again
    assert [m["name"] for m in logic.installedModels()] == ["brats_test"]
    assert logic.removeModel("brats_test")["name"] == "brats_test" and logic.installedModels() == []
    with pytest.raises(MedTorchInputError, match="no model named"):
        logic.removeModel("brats_test")


def test_the_model_job_takes_an_installed_model_by_name(scene, pack):
    from medtorch.slicer import mrml as bridge

    _, logic = _logic()
    logic.importModelPack(str(pack), confirm=lambda text: True)
    g = oblique_geometry(size=(12, 10, 8))
    rng = np.random.default_rng(0)
    nodes = [bridge.node_from_volume(Volume(rng.normal(100, 10, g.shape_zyx).astype(np.float32), g, "scalar"), n,
                                     scene) for n in BRATS]
    with pytest.raises(MedTorchInputError) as exc:
        logic.modelJob(nodes[:1], "brats_test", device="cpu").run_blocking()
    assert "takes 4 input channel" in str(exc.value) and "0: T1c, 1: T1, 2: T2, 3: FLAIR" in str(exc.value)
    seg = logic.modelJob(nodes, "brats_test", device="cpu").run_blocking()
    assert seg.GetClassName() == "vtkMRMLSegmentationNode" and seg.GetAttribute("MedTorch.model") == "brats_test"


def test_the_widget_lists_installed_models_and_chooses_one(scene, pack):
    mod, logic = _logic()
    logic.importModelPack(str(pack), confirm=lambda text: True)
    w = mod.SegmentTumorWidget()
    w.setup()
    combo = w.ui.installedModelComboBox
    assert combo.items[1:] == ["brats_test (T1c, T1, T2, FLAIR)"] and w.ui.removeModelButton.enabled
    combo.setCurrentIndex(1)
    assert w._parameterNode.modelPath == "brats_test" and w._parameterNode.method == "model"
