"""Deep-learning segmentation with a user's model (medtorch.segment.models / .inference).

Bundles are built here with random weights (nothing is downloaded). Parity is checked
against MONAI's own bundle runner (``monai.bundle.run``) on the same bundle and files: it
loads the images itself, runs the bundle's preprocessing, inferer and postprocessing
(``Invertd`` on the class maps, then argmax / threshold, ``SaveImaged``), and its saved
label map is compared with ours voxel by voxel.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from medtorch.errors import Cancelled, MedTorchInputError
from medtorch.io import read_volume, write_volume
from medtorch.phantoms import blob_phantom, oblique_geometry
from medtorch.progress import CancelToken
from medtorch.volume import Geometry, Volume

GEOM = oblique_geometry(size=(36, 32, 24), spacing=(1.0, 1.2, 1.5))

NET_DEF = {"_target_": "SegResNet", "spatial_dims": 3, "init_filters": 8, "blocks_down": [1, 1], "blocks_up": [1],
           "in_channels": 2, "out_channels": 3}

BRATS_LAMBDA = "$lambda x: torch.where(x[[2]] > 0, 4, torch.where(x[[0]] > 0, 1, torch.where(x[[1]] > 0, 2, 0)))"


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2.0 * np.logical_and(a, b).sum() / s)

def _nifti_io_available() -> bool:
    """MONAI's LoadImaged/SaveImaged read and write NIfTI with nibabel or ITK (MedTorch needs neither)."""
    for name in ("nibabel", "itk"):
        try:
            __import__(name)
            return True
        except ImportError:
            continue
    return False



def _calibrate(net: torch.nn.Module, volumes: list[Volume]) -> None:
    """Shift the last layer's biases so that random weights give every class a share of the voxels
    (per-channel median of the logits on ``volumes`` moved to 0); the weights stay random."""
    x = np.stack([(v.array - v.array[v.array != 0].mean()) / v.array[v.array != 0].std() * (v.array != 0)
                  for v in volumes]).transpose(0, 3, 2, 1)
    last = [m for m in net.modules() if isinstance(m, torch.nn.Conv3d)][-1]
    with torch.no_grad():
        logits = net.eval()(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None])[0]
        last.bias -= logits.flatten(1).median(dim=1).values


def _make_bundle(root: Path, *, sigmoid: bool = False, pixdim: list[float] | None = None, seed: int = 0,
                 roi: list[int] | None = None, network_def: dict | None = None,
                 calibrate: list[Volume] | None = None) -> Path:
    """A MONAI bundle with random weights whose config MONAI's runner can run (no ignite)."""
    from monai.bundle import ConfigParser

    root.mkdir(parents=True, exist_ok=True)
    (root / "configs").mkdir(exist_ok=True)
    (root / "models").mkdir(exist_ok=True)
    net_def = dict(network_def or NET_DEF)
    out_names = ({"0": "Tumor core", "1": "Whole tumor", "2": "Enhancing tumor"} if sigmoid
                 else {"0": "background", "1": "core", "2": "edema"})
    meta = {"version": "0.1.0", "description": "test bundle with random weights",
            "network_data_format": {
                "inputs": {"image": {"type": "image", "num_channels": 2, "channel_def": {"0": "T1c", "1": "FLAIR"}}},
                "outputs": {"pred": {"type": "image", "num_channels": 3, "channel_def": out_names}}}}
    pre = [{"_target_": "LoadImaged", "keys": "image"},
           {"_target_": "EnsureChannelFirstd", "keys": "image"},
           {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"}]
    if pixdim is not None:
        pre.append({"_target_": "Spacingd", "keys": "image", "pixdim": pixdim, "mode": "bilinear"})
    pre.append({"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True, "channel_wise": True})
    if sigmoid:
        post = [{"_target_": "Activationsd", "keys": "pred", "sigmoid": True},
                {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
                 "nearest_interp": False, "to_tensor": True},
                {"_target_": "AsDiscreted", "keys": "pred", "threshold": 0.5},
                {"_target_": "Lambdad", "keys": "pred", "func": BRATS_LAMBDA}]
    else:
        post = [{"_target_": "Activationsd", "keys": "pred", "softmax": True},
                {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
                 "nearest_interp": False, "to_tensor": True},
                {"_target_": "AsDiscreted", "keys": "pred", "argmax": True}]
    post.append({"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_postfix": "seg",
                 "output_dtype": "$np.uint8", "resample": False, "separate_folder": False, "output_ext": ".nii.gz"})
    cfg = {
        "bundle_root": ".", "output_dir": "./eval", "datalist": [],
        "device": "$torch.device('cpu')",
        "network_def": net_def,
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": pre},
        "dataset": {"_target_": "Dataset", "data": "@datalist", "transform": "@preprocessing"},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": roi or [32, 32, 16], "sw_batch_size": 1,
                    "overlap": 0.25},
        "postprocessing": {"_target_": "Compose", "transforms": post},
        "initialize": ["$torch.set_grad_enabled(False)",
                       "$@network.load_state_dict(torch.load(@bundle_root + '/models/model.pt', weights_only=True))",
                       "$@network.eval()"],
        "run": ["$[@postprocessing(dict(d, pred=@inferer(d['image'][None].to(@device), @network)[0])) "
                "for d in @dataset]"],
    }
    (root / "configs" / "inference.json").write_text(json.dumps(cfg, indent=1))
    (root / "configs" / "metadata.json").write_text(json.dumps(meta, indent=1))
    torch.manual_seed(seed)
    net = ConfigParser({"net": net_def}).get_parsed_content("net")
    if calibrate is not None:
        _calibrate(net, calibrate)
    torch.save(net.state_dict(), root / "models" / "model.pt")
    return root


def _monai_runner(bundle: Path, files: list[Path], out_dir: Path) -> Volume:
    """MONAI's own bundle runner on ``files`` (one study, one file per channel).

    Its LoadImaged / SaveImaged need nibabel (or ITK) for NIfTI; MedTorch itself does not.
    """
    if not _nifti_io_available():
        pytest.skip("MONAI's bundle runner needs nibabel (or itk) to read and write NIfTI: pip install nibabel")
    from monai.bundle import run

    logging.getLogger("monai").setLevel(logging.ERROR)
    with torch.enable_grad():  # the bundle's "initialize" turns gradients off for the whole process
        run(run_id="run", init_id="initialize", final_id=None, meta_file=str(bundle / "configs" / "metadata.json"),
            config_file=str(bundle / "configs" / "inference.json"), logging_file=None, bundle_root=str(bundle),
            datalist=[{"image": [str(f) for f in files]}], output_dir=str(out_dir))
    found = sorted(out_dir.glob("*_seg.nii.gz"))
    assert found, "the MONAI runner wrote nothing"
    return read_volume(found[0])


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    d = tmp_path_factory.mktemp("study")
    a = blob_phantom(GEOM, seed=1, noise=6.0)
    b = blob_phantom(GEOM, seed=2, noise=6.0, world_shift=(2.0, 0.0, -1.0))
    b = b.with_array((200.0 - b.array) * (b.array > 5))  # a second, different contrast
    files = [d / "t1c.nii.gz", d / "flair.nii.gz"]
    write_volume(a, files[0])
    write_volume(b, files[1])
    # what the runner reads back is what we segment (NIfTI stores float32 and the header exactly)
    return [read_volume(f) for f in files], files


@pytest.fixture(scope="module")
def softmax_bundle(tmp_path_factory, study):
    # one window covers the study: the tests that use this bundle run quickly
    return _make_bundle(tmp_path_factory.mktemp("bundle") / "softmax_bundle", calibrate=study[0], roi=[48, 32, 32])


# -- parity with MONAI's bundle runner ----------------------------------------------------------


@pytest.mark.parametrize("kind", ["softmax", "sigmoid-brats"])
def test_bundle_matches_monai_bundle_runner(kind, study, tmp_path):
    from medtorch.segment.inference import segment_with_model

    vols, files = study
    bundle = _make_bundle(tmp_path / "bundle", sigmoid=kind != "softmax", seed=3, calibrate=vols)
    before = [v.array.copy() for v in vols]
    ref = _monai_runner(bundle, files, tmp_path / "eval")
    label, info = segment_with_model(bundle, vols, label_convention="brats2021")
    assert label.kind == "label" and label.array.dtype == np.uint8
    assert label.geometry.isclose(vols[0].geometry, atol=1e-6)
    assert ref.geometry.isclose(label.geometry, atol=1e-4)
    values = [1, 2] if kind == "softmax" else [1, 2, 4]
    present = [v for v in values if (ref.array == v).sum() > 0.02 * ref.array.size]
    assert len(present) >= 2, f"random weights gave a trivial map {np.bincount(ref.array.ravel())}"
    for v in values:
        assert _dice(label.array == v, ref.array == v) >= 0.999, (v, np.bincount(label.array.ravel()),
                                                                  np.bincount(ref.array.ravel()))
    assert info["windows"] > 1  # the sliding window really slid
    for v, b in zip(vols, before):
        np.testing.assert_array_equal(v.array, b)  # inputs untouched
    if kind != "softmax":
        assert info["label_convention"] == "brats2021"
        assert set(info["labels"]) == {1, 2, 4}


def test_named_channels_are_ordered_by_metadata(study, softmax_bundle):
    from medtorch.segment.inference import segment_with_model

    vols, _ = study
    by_order, _ = segment_with_model(softmax_bundle, vols)
    by_name, info = segment_with_model(softmax_bundle, {"flair": vols[1], "T1-Gd": vols[0]})
    np.testing.assert_array_equal(by_order.array, by_name.array)
    assert info["channels"] == ["T1c", "FLAIR"]


def test_wrong_channel_count_is_a_clear_error(study, softmax_bundle):
    from medtorch.segment.inference import segment_with_model

    vols, _ = study
    with pytest.raises(MedTorchInputError) as exc:
        segment_with_model(softmax_bundle, vols[:1])
    msg = str(exc.value)
    assert "takes 2 input channel" in msg and "T1c" in msg and "FLAIR" in msg and "What to do" in msg
    with pytest.raises(MedTorchInputError, match="missing: FLAIR"):
        segment_with_model(softmax_bundle, {"T1c": vols[0], "T2": vols[1]})


# -- TorchScript --------------------------------------------------------------------------------


def test_torchscript_with_embedded_bundle_config_matches_the_bundle(study, softmax_bundle, tmp_path):
    from monai.data import save_net_with_metadata

    from medtorch.segment.inference import segment_with_model
    from medtorch.segment.models import load_model

    vols, _ = study
    model = load_model(softmax_bundle)
    traced = torch.jit.trace(model.network, torch.zeros(1, 2, 48, 32, 32))
    meta = json.loads((softmax_bundle / "configs" / "metadata.json").read_text())
    cfg = (softmax_bundle / "configs" / "inference.json").read_bytes()
    ts = tmp_path / "model.ts"
    save_net_with_metadata(traced, str(ts.with_suffix("")), meta_values=meta, more_extra_files={"inference.json": cfg})
    loaded = load_model(ts)
    assert loaded.source == "torchscript" and loaded.num_channels == 2 and loaded.roi_size == (48, 32, 32)
    a, _ = segment_with_model(softmax_bundle, vols)
    b, info = segment_with_model(ts, vols)
    np.testing.assert_array_equal(a.array, b.array)
    assert info["model"]["source"] == "torchscript"

    # a bundle holding only models/model.ts loads it too
    only_ts = tmp_path / "ts_bundle"
    (only_ts / "configs").mkdir(parents=True)
    (only_ts / "models").mkdir()
    (only_ts / "configs" / "metadata.json").write_bytes((softmax_bundle / "configs" / "metadata.json").read_bytes())
    (only_ts / "configs" / "inference.json").write_bytes(cfg)
    ts.rename(only_ts / "models" / "model.ts")
    c, info = segment_with_model(only_ts, vols)
    assert info["model"]["source"] == "bundle-torchscript"
    np.testing.assert_array_equal(a.array, c.array)


def test_bare_torchscript_file(study, tmp_path):
    from monai.networks.nets import SegResNet

    from medtorch.segment.inference import segment_with_model

    vols, _ = study
    torch.manual_seed(0)
    net = SegResNet(spatial_dims=3, init_filters=8, blocks_down=[1, 1], blocks_up=[1], in_channels=2, out_channels=2).eval()
    p = tmp_path / "bare.pt"
    torch.jit.save(torch.jit.trace(net, torch.zeros(1, 2, 16, 16, 16)), str(p))
    label, info = segment_with_model(p, vols)  # no metadata: whole image in one window, no preprocessing
    assert label.array.dtype == np.uint8 and label.geometry.isclose(vols[0].geometry)
    assert info["roi_size"] == [48, 32, 32]  # the image (36, 32, 24) rounded up to multiples of 16
    with pytest.raises(MedTorchInputError, match="network failed on the input"):
        segment_with_model(p, vols[:1])  # wrong channel count, found when the network runs


# -- safety -------------------------------------------------------------------------------------


class _Payload:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_checkpoint_holding_code_is_refused(softmax_bundle, tmp_path):
    from medtorch.segment.models import load_model, load_state_dict_safely

    bad = tmp_path / "bad_bundle"
    (bad / "configs").mkdir(parents=True)
    (bad / "models").mkdir()
    for name in ("metadata.json", "inference.json"):
        (bad / "configs" / name).write_bytes((softmax_bundle / "configs" / name).read_bytes())
    marker = tmp_path / "code_ran"
    sd = torch.load(softmax_bundle / "models" / "model.pt", weights_only=True)
    torch.save({"model": sd, "extra": _Payload(str(marker))}, bad / "models" / "model.pt")
    with pytest.raises(MedTorchInputError) as exc:
        load_model(bad, use_cache=False)
    assert "pickled Python objects" in str(exc.value) and "state dict" in str(exc.value)
    assert not marker.exists()
    # a whole pickled module (the usual torch.save(model)) is refused the same way
    torch.save(torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3)), tmp_path / "whole.pt")
    with pytest.raises(MedTorchInputError, match="pickled"):
        load_state_dict_safely(tmp_path / "whole.pt")
    # a state dict wrapped in a dict is fine
    torch.save({"state_dict": sd}, tmp_path / "wrapped.pt")
    assert set(load_state_dict_safely(tmp_path / "wrapped.pt")) == set(sd)


def test_bundle_config_code_is_refused_unless_trusted(tmp_path):
    from medtorch.segment.models import load_model

    marker = tmp_path / "code_ran"
    b = _make_bundle(tmp_path / "expr")
    cfg_path = b / "configs" / "inference.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["network_def"]["init_filters"] = f"$8 if open({str(marker)!r}, 'w') else 8"
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(MedTorchInputError, match="Python code"):
        load_model(b, use_cache=False)
    assert not marker.exists()
    assert load_model(b, trust_code=True, use_cache=False).network is not None
    assert marker.exists()

    cfg["network_def"] = {"_target_": "os.system", "command": "true"}
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(MedTorchInputError, match="not a MONAI or torch.nn component"):
        load_model(b, use_cache=False)
    cfg["network_def"] = {"_target_": "monai.transforms.ScaleIntensity"}  # MONAI, but not a network
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(MedTorchInputError, match="not a Module"):
        load_model(b, use_cache=False)


def test_zoo_style_config_loads_without_running_its_expressions(tmp_path):
    """A config in the model zoo's style has Python expressions in items MedTorch never uses
    (data lists, evaluator, handlers): they are not evaluated, and the model loads."""
    from monai.networks.nets import UNet

    from medtorch.segment.models import load_model

    marker = tmp_path / "code_ran"
    root = tmp_path / "zoo_like"
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    net_def = {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [8, 16, 32],
               "strides": [2, 2], "num_res_units": 1, "norm": "batch"}
    cfg = {
        "imports": ["$import glob", "$import os"],
        "bundle_root": ".", "output_dir": "$@bundle_root + '/eval'",
        "datalist": f"$open({str(marker)!r}, 'w') and list(sorted(glob.glob('/data/*.nii.gz')))",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": net_def, "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image"}, {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
            {"_target_": "Spacingd", "keys": "image", "pixdim": [1.5, 1.5, 2.0], "mode": "bilinear"},
            {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -57, "a_max": 164, "b_min": 0, "b_max": 1,
             "clip": True},
            {"_target_": "EnsureTyped", "keys": "image"}]},
        "dataset": {"_target_": "Dataset", "data": "$[{'image': i} for i in @datalist]", "transform": "@preprocessing"},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [96, 96, 96], "sw_batch_size": 4, "overlap": 0.5},
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True}]},
        "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "network": "@network"},
        "initialize": ["$monai.utils.set_determinism(seed=123)"], "run": ["$@evaluator.run()"],
    }
    (root / "configs" / "inference.json").write_text(json.dumps(cfg))
    (root / "configs" / "metadata.json").write_text(json.dumps({"network_data_format": {
        "inputs": {"image": {"num_channels": 1, "modality": "CT"}},
        "outputs": {"pred": {"num_channels": 2, "channel_def": {"0": "background", "1": "spleen"}}}}}))
    torch.save(UNet(**{k: v for k, v in net_def.items() if k != "_target_"}).state_dict(), root / "models" / "model.pt")
    model = load_model(root, use_cache=False)
    assert not marker.exists()
    assert model.num_channels == 1 and model.output_names == {0: "background", 1: "spleen"}
    assert model.output_mode == "softmax" and model.roi_size == (96, 96, 96) and model.overlap == 0.5
    assert [type(t).__name__ for t in model.preprocessing] == ["OrientToAxcodesd", "Spacingd", "ScaleIntensityRanged",
                                                               "EnsureTyped"]


def test_bad_model_paths(tmp_path):
    from medtorch.segment.models import load_model

    with pytest.raises(MedTorchInputError, match="does not exist"):
        load_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MedTorchInputError, match="neither a MONAI bundle"):
        load_model(tmp_path / "empty")
    (tmp_path / "x.ts").write_bytes(b"not a model")
    with pytest.raises(MedTorchInputError, match="not a TorchScript model"):
        load_model(tmp_path / "x.ts")


# -- BraTS conventions ------------------------------------------------------------------------------


def test_brats_labels_and_regions():
    from medtorch.segment.inference import (
        brats_labels_from_regions,
        brats_regions_from_labels,
        convert_brats_labels,
    )

    def v(*values):
        return np.array(values).reshape(1, 1, -1)

    lab21 = v(0, 1, 2, 4, 4, 2, 1, 0).astype(np.uint8)
    r = brats_regions_from_labels(lab21, "brats2021")
    np.testing.assert_array_equal(r["TC"], v(0, 1, 0, 1, 1, 0, 1, 0))
    np.testing.assert_array_equal(r["WT"], v(0, 1, 1, 1, 1, 1, 1, 0))
    np.testing.assert_array_equal(r["ET"], v(0, 0, 0, 1, 1, 0, 0, 0))
    np.testing.assert_array_equal(brats_labels_from_regions(r["TC"], r["WT"], r["ET"], "brats2021"), lab21)
    lab23 = convert_brats_labels(lab21, "brats2021", "brats2023")
    np.testing.assert_array_equal(lab23, v(0, 1, 2, 3, 3, 2, 1, 0))
    r23 = brats_regions_from_labels(lab23, "brats2023")
    for k in ("TC", "WT", "ET"):
        np.testing.assert_array_equal(r23[k], r[k])
    np.testing.assert_array_equal(convert_brats_labels(lab23, "brats2023", "brats2021"), lab21)
    # inconsistent masks still give one class per voxel: ET wins, then TC (NCR), then WT (ED)
    np.testing.assert_array_equal(brats_labels_from_regions(v(1, 0, 1), v(0, 0, 1), v(0, 1, 0), "brats2023"),
                                  v(1, 3, 1))
    with pytest.raises(MedTorchInputError, match="\\[3\\]"):
        convert_brats_labels(lab23, "brats2021", "brats2023")
    with pytest.raises(MedTorchInputError, match="unknown BraTS label convention"):
        brats_regions_from_labels(lab21, "brats2019")  # type: ignore[arg-type]


# -- memory-aware path, resampled grids, TTA, cancel ----------------------------------------------------


SMOOTH_NET = {"_target_": "torch.nn.Conv3d", "in_channels": 2, "out_channels": 3, "kernel_size": 5, "padding": 2}


def _smooth_bundle(root: Path, vols: list[Volume]) -> Path:
    """A bundle that resamples to 1.6 mm (Spacingd) and whose network is a random mix of
    5-voxel mean filters: smooth class maps, like a trained model's, unlike random SegResNets'."""
    bundle = _make_bundle(root, pixdim=[1.6, 1.6, 1.6], network_def=SMOOTH_NET)
    net = torch.nn.Conv3d(2, 3, 5, padding=2)
    mix = torch.randn(3, 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        net.weight.copy_(mix[:, :, None, None, None] * torch.ones(3, 2, 5, 5, 5) / 125.0)
    _calibrate(net, vols)
    torch.save(net.state_dict(), bundle / "models" / "model.pt")
    return bundle


def test_only_integer_label_maps_are_resampled_back(study, tmp_path, monkeypatch):
    """With a Spacingd step the network grid differs from the input grid. The default path takes
    one integer label map back to the input grid, never a float map of every class; the "linear"
    path interpolates the class probabilities one slab at a time. Both are compared with MONAI's
    runner, which inverts the full-resolution probability maps and then takes the argmax."""
    import medtorch.resample as rs
    from medtorch.segment import inference

    vols, files = study
    bundle = _smooth_bundle(tmp_path / "spacing_bundle", vols)
    seen: list[tuple[str, np.dtype, tuple]] = []
    sampled: list[tuple[torch.dtype, int]] = []
    real_resample, real_sample = rs.resample, rs.sample

    def spy_resample(volume, reference, *a, **k):
        seen.append((volume.kind, volume.array.dtype, volume.array.shape))
        return real_resample(volume, reference, *a, **k)

    def spy_sample(moving, points, *a, **k):
        sampled.append((moving.dtype, int(points[..., 0].numel())))
        return real_sample(moving, points, *a, **k)

    monkeypatch.setattr(rs, "resample", spy_resample)
    monkeypatch.setattr(rs, "sample", spy_sample)
    label, info = inference.segment_with_model(bundle, vols)
    assert seen, "the label map should have been resampled back to the input grid"
    for kind, dtype, shape in seen:
        assert kind == "label" and np.dtype(dtype).kind in "iu" and len(shape) == 3
    assert not sampled
    assert label.array.dtype == np.uint8 and label.geometry.isclose(vols[0].geometry)
    assert info["network_grid"]["size"] != list(vols[0].geometry.size)

    monkeypatch.setattr(inference, "_SLAB_BYTES", 256 * 1024)  # force several slabs on this small grid
    smooth, info_l = inference.segment_with_model(bundle, vols, output_interpolation="linear")
    assert info_l["output_interpolation"] == "linear" and smooth.array.dtype == np.uint8
    assert len(sampled) > 1 and max(n for _, n in sampled) < vols[0].geometry.num_voxels

    monkeypatch.setattr(rs, "resample", real_resample)
    monkeypatch.setattr(rs, "sample", real_sample)
    ref = _monai_runner(bundle, files, tmp_path / "eval")
    fg = [v for v in (1, 2) if (ref.array == v).sum() > 0.02 * ref.array.size]
    assert fg
    assert (smooth.array == ref.array).mean() >= 0.995
    assert (label.array == ref.array).mean() >= 0.95  # blockier: made at 1.6 mm
    for v in fg:
        assert _dice(smooth.array == v, ref.array == v) >= 0.98
        assert _dice(label.array == v, ref.array == v) > 0.75  # measured 0.81 and 0.97


def test_channels_on_another_grid_are_resampled(study, softmax_bundle):
    from medtorch.resample import resample
    from medtorch.segment.inference import segment_with_model

    vols, _ = study
    other = vols[1].geometry.with_size_spacing((30, 27, 20), (1.2, 1.44, 1.8))
    moved = resample(vols[1], other)
    label, info = segment_with_model(softmax_bundle, [vols[0], moved])
    assert info["resampled_channels"] == [1]
    assert label.geometry.isclose(vols[0].geometry)
    g = vols[1].geometry
    far = Volume(vols[1].array, Geometry(g.size, g.origin + 1000.0, g.spacing, g.direction))
    with pytest.raises(MedTorchInputError, match="does not overlap"):
        segment_with_model(softmax_bundle, [vols[0], far])


def test_tta_crop_and_cancel(study, softmax_bundle):
    from medtorch.segment.inference import segment_with_model

    vols, _ = study
    plain, info0 = segment_with_model(softmax_bundle, vols)
    tta, info = segment_with_model(softmax_bundle, vols, tta=True, overlap=0.5)
    assert len(info["tta_flips"]) == 4 and info["windows"] > info0["windows"] * 4 - 1
    assert info["overlap"] == 0.5 and tta.array.dtype == np.uint8
    assert (tta.array == plain.array).mean() > 0.5  # same model, same input: mostly the same answer
    cropped, info_c = segment_with_model(softmax_bundle, vols, crop_foreground=True)
    assert info_c["cropped_to_foreground"] and cropped.geometry.isclose(vols[0].geometry)
    assert (vols[0].array[cropped.array > 0] != 0).mean() > 0.5

    token = CancelToken()
    messages = []

    def progress(f, m):
        messages.append(m)
        if m.startswith("inference: window 1"):
            token.cancel()

    with pytest.raises(Cancelled):
        segment_with_model(softmax_bundle, vols, progress=progress, cancel=token)
    assert any("window" in m for m in messages)


def test_cli_segment_with_model(study, softmax_bundle, tmp_path, capsys):
    import argparse

    from medtorch.commands.segment import run_model_cli
    from medtorch.segment.inference import segment_with_model

    vols, files = study
    args = argparse.Namespace(model=str(softmax_bundle), input=[f"FLAIR={files[1]}", f"T1c={files[0]}"],
                              out=str(tmp_path / "seg.nrrd"), overlap=None, tta=False, roi_size=None,
                              device="cpu", quiet=False, info=str(tmp_path / "info.json"),
                              volumes_csv=str(tmp_path / "v.csv"), threshold=None, label_convention=None)
    assert run_model_cli(args, CancelToken()) == 0
    written = read_volume(tmp_path / "seg.nrrd")
    expected, _ = segment_with_model(softmax_bundle, vols)
    np.testing.assert_array_equal(written.array, expected.array)
    assert written.geometry.isclose(vols[0].geometry, atol=1e-5)
    info = json.loads((tmp_path / "info.json").read_text())
    assert info["channels"] == ["T1c", "FLAIR"]
    vox_ml = vols[0].geometry.voxel_volume_mm3 / 1000.0
    assert info["volumes_ml"]["core"] == pytest.approx((expected.array == 1).sum() * vox_ml)  # a hand count
    csv = (tmp_path / "v.csv").read_text().splitlines()
    assert csv[0] == "name,values,voxels,volume_ml" and csv[1].startswith(f"core,1,{(expected.array == 1).sum()},")
    assert "Segmented with bundle model" in capsys.readouterr().out

    # through the command line itself, with post-processing
    from medtorch.cli import main

    rc = main(["segment", "--model", str(softmax_bundle), "--in", str(files[0]), "--in", str(files[1]),
               "--out", str(tmp_path / "seg2.nii.gz"), "--largest", "-q"])
    assert rc == 0
    largest = read_volume(tmp_path / "seg2.nii.gz").array
    assert 0 < (largest > 0).sum() <= (expected.array > 0).sum()
    rc = main(["segment", "--model", str(softmax_bundle), "--in", str(files[0]), "--out", str(tmp_path / "x.nrrd"), "-q"])
    assert rc == 2 and "takes 2 input channel" in capsys.readouterr().err


NNUNET_PLANS = {
    "dataset_name": "Dataset999_Test", "plans_name": "nnUNetPlans",
    "original_median_spacing_after_transp": [1.5, 1.2, 1.0], "original_median_shape_after_transp": [24, 32, 36],
    "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
    "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
    "foreground_intensity_properties_per_channel": {"0": {"max": 300.0, "mean": 100.0, "median": 100.0, "min": 0.0,
                                                          "percentile_00_5": 0.0, "percentile_99_5": 250.0,
                                                          "std": 50.0}},
    "configurations": {"3d_fullres": {
        "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
        "patch_size": [16, 32, 32], "median_image_size_in_voxels": [24, 32, 36], "spacing": [1.5, 1.2, 1.0],
        "normalization_schemes": ["ZScoreNormalization"], "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
        "architecture": {
            "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {"n_stages": 3, "features_per_stage": [8, 16, 32], "conv_op": "torch.nn.modules.conv.Conv3d",
                            "kernel_sizes": [[3, 3, 3]] * 3, "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
                            "n_conv_per_stage": [2, 2, 2], "n_conv_per_stage_decoder": [2, 2], "conv_bias": True,
                            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                            "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None,
                            "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
        "batch_dice": False}},
}


@pytest.mark.skipif(not __import__("importlib").util.find_spec("nnunetv2"), reason="nnunetv2 is not installed")
def test_nnunet_folder_matches_nnunets_own_predictor(study, tmp_path):
    """An nnU-Net v2 trained-model folder (random weights) gives what nnU-Net's own predictor gives;
    its checkpoint (tensors, numpy values in the training log) loads with weights_only=True."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    from medtorch.segment.inference import segment_with_model
    from medtorch.segment.models import load_model

    vols, _ = study
    root = tmp_path / "Dataset999_Test" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    (root / "fold_0").mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T1c"}, "labels": {"background": 0, "lesion": 1},
                                                   "numTraining": 1, "file_ending": ".nii.gz"}))
    (root / "plans.json").write_text(json.dumps(NNUNET_PLANS))
    arch = NNUNET_PLANS["configurations"]["3d_fullres"]["architecture"]
    torch.manual_seed(0)
    net = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"], 1, 2,
                                 allow_init=True, deep_supervision=False)
    torch.save({"network_weights": net.state_dict(), "optimizer_state": {}, "trainer_name": "nnUNetTrainer",
                "init_args": {"configuration": "3d_fullres", "fold": 0},
                "inference_allowed_mirroring_axes": (0, 1, 2), "current_epoch": 1,
                "logging": {"ema_fg_dice": [np.float64(0.5)], "dice_per_class": [np.array([0.5])]}},
               root / "fold_0" / "checkpoint_final.pth")
    model = load_model(root, use_cache=False)
    assert model.source == "nnunet" and model.num_channels == 1 and model.channel_names == ["T1c"]
    mine, info = segment_with_model(root, vols[:1])
    ref_pred = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False, device=torch.device("cpu"),
                               allow_tqdm=False)
    ref_pred.initialize_from_trained_model_folder(str(root), use_folds=(0,))
    ref = ref_pred.predict_single_npy_array(vols[0].array[None].astype(np.float32),
                                            {"spacing": list(vols[0].spacing[::-1])}, None, None, False)
    assert mine.array.shape == ref.shape and mine.geometry.isclose(vols[0].geometry)
    assert 0.02 < (ref == 1).mean() < 0.98
    assert _dice(mine.array == 1, ref == 1) >= 0.999
    assert info["labels"] == {1: "lesion"}
    with pytest.raises(MedTorchInputError, match="takes 1 input channel"):
        segment_with_model(root, vols)


def test_cancel_reaches_inside_one_window():
    """A cancel is checked before every layer: one large window does not delay it."""
    from monai.networks.nets import SegResNet

    from medtorch.segment.inference import _cancel_hooks, _removing

    net = SegResNet(init_filters=8, blocks_down=[1, 1], blocks_up=[1], in_channels=1, out_channels=2).eval()
    token = CancelToken()
    calls = []
    net.conv_final.register_forward_hook(lambda *a: calls.append(1))
    token.cancel()
    with pytest.raises(Cancelled), torch.inference_mode(), _removing(_cancel_hooks(net, token)):
        net(torch.zeros(1, 1, 16, 16, 16))
    assert not calls  # stopped before the last layer
    assert all(not m._forward_pre_hooks for m in net.modules())  # and the hooks are gone
