"""Learned registration (issue 20): training, the model pack, the learned engine, refinement, contracts, CLI.

Everything runs on tiny synthetic pairs (about 20^3 voxels, the network at 4 mm): a CI-sized
training of a few dozen steps, then the engine on a pair it never saw.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from medtorch.errors import MedTorchInputError
from medtorch.io import read_volume, write_volume
from medtorch.models.pack import read_pack, verify_pack, write_pack
from medtorch.registration import register
from medtorch.registration.synthetic import synthetic_pair

PAIR = dict(size=20, spacing=3.5, max_angle_deg=2.0, max_shift_mm=2.0, max_scale=0.0, deform_mm=6.0,
            same_contrast=True, noise=1.0)


def _pair(seed: int):
    return synthetic_pair("deformable", seed=seed, **PAIR)


def _write_pairs(folder: Path, seeds) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for s in seeds:
        p = _pair(s)
        write_volume(p.fixed, folder / f"c{s}_fixed.nii.gz")
        write_volume(p.moving, folder / f"c{s}_moving.nii.gz")
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A CI-sized training: 4 pairs (1 held out), 30 steps at 4 mm."""
    from medtorch.registration.learned_training import train_registration

    d = tmp_path_factory.mktemp("learned")
    data = _write_pairs(d / "pairs", range(4))
    torch.set_num_threads(1)
    res = train_registration(data, d / "model.zip", spacing_mm=4.0, steps=30, val_every=5, patience=8,
                             val_fraction=0.25, prealign=False, seed=3)
    return res


def test_training_beats_the_identity_on_a_held_out_pair_and_records_its_seed(trained):
    assert trained.num_train == 3 and trained.num_val == 1
    # the held-out pair matches better through the network's field than through the identity
    assert trained.best_val_loss < trained.identity_val_loss - 1e-3
    assert trained.best_step > 0
    pack = read_pack(trained.path, kind="registration")
    assert pack.config["seed"] == 3
    t = pack.config["training"]
    assert t["steps_run"] == trained.steps_run and t["history"] and t["best_val_loss"] < t["identity_val_loss"]
    net = pack.config["network_config"]
    assert net["network"] == "voxelmorph" and net["diffeomorphic"] is True and net["spacing_mm"] == 4.0
    assert "Licence" in pack.card and "VoxelMorph" in pack.card


def test_pack_round_trip_and_a_tampered_pack_is_refused_before_loading(trained, tmp_path, monkeypatch):
    from medtorch.registration.learned import load_model

    model = load_model(trained.path)
    pack = read_pack(trained.path)
    for k, v in model.network.state_dict().items():
        assert torch.equal(v, pack.state_dict[k]), k
    # change one byte of the weights, keep the manifest: the SHA-256 check fails, and nothing is unpickled
    members = {i.filename: zipfile.ZipFile(trained.path).read(i.filename) for i in zipfile.ZipFile(trained.path).infolist()}
    weights = bytearray(members["weights.pt"])
    weights[len(weights) // 2] ^= 0xFF
    bad = tmp_path / "tampered.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, bytes(weights) if name == "weights.pt" else data)

    def no_load(*a, **k):
        raise AssertionError("torch.load was called on an unverified pack")

    monkeypatch.setattr(torch, "load", no_load)
    with pytest.raises(MedTorchInputError, match="SHA-256"):
        read_pack(bad)
    with pytest.raises(MedTorchInputError, match="SHA-256"):
        load_model(bad)
    # an extra file, and a whole-file hash that is not the published one, are refused too
    extra = tmp_path / "extra.zip"
    with zipfile.ZipFile(extra, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        zf.writestr("payload.py", b"print('hello')")
    with pytest.raises(MedTorchInputError, match="does not list"):
        verify_pack(extra)
    with pytest.raises(MedTorchInputError, match="expected SHA-256"):
        verify_pack(trained.path, expected_sha256="0" * 64)
    assert set(verify_pack(trained.path)) == {"weights.pt", "config.json", "MODEL_CARD.md"}


def test_learned_engine_gives_a_deformable_result_and_refinement_improves_on_the_network(trained):
    tre_net, tre_ref = [], []
    for seed in (12, 13):  # pairs never seen in training
        p = _pair(seed)
        net = register(p.fixed, p.moving, engine="learned", model=str(trained.path), seed=0)
        ref = register(p.fixed, p.moving, engine="learned", model=str(trained.path), refine=True, seed=0)
        for res in (net, ref):
            assert res.displacement is not None and res.displacement.geometry == p.fixed.geometry
            assert res.report["mode"] == "deformable" and res.report["engine"] == "learned"
            assert res.report["folding_percent"] == 0.0 and res.verdict is not None
            assert res.report["model_sha256"] == read_pack(trained.path).sha256
        assert net.report["network_s"] > 0 and not net.report["refine"] and ref.report["refine"]
        assert net.control_field is not None  # the network's own grid: the compact form of the field
        assert not np.allclose(net.displacement.array, 0.0)
        tre_net.append(float(p.tre(net.map_points(p.landmarks)).mean()))
        tre_ref.append(float(p.tre(ref.map_points(p.landmarks)).mean()))
    # instance optimisation from the network's field lowers the landmark error
    assert np.mean(tre_ref) < np.mean(tre_net) - 0.15, (tre_net, tre_ref)


def test_a_model_outside_its_contract_is_refused_with_what_to_do(tmp_path):
    from medtorch.registration.learned import KIND, LearnedConfig, build_network

    cfg = LearnedConfig(image_channels=2, spacing_mm=4.0, max_input_spacing_mm=6.0)
    pack = write_pack(tmp_path / "two_channel.zip", build_network(cfg).state_dict(),
                      {"kind": KIND, "network_config": cfg.to_dict(), "seed": 0}, "test model")
    p = _pair(12)
    with pytest.raises(MedTorchInputError, match="2 channel") as err:
        register(p.fixed, p.moving, engine="learned", model=str(pack))
    assert "What to do" in str(err.value)
    one = LearnedConfig(spacing_mm=4.0, max_input_spacing_mm=6.0)
    pack1 = write_pack(tmp_path / "one_channel.zip", build_network(one).state_dict(),
                       {"kind": KIND, "network_config": one.to_dict(), "seed": 0}, "test model")
    coarse = synthetic_pair("deformable", seed=12, size=10, spacing=8.0)
    with pytest.raises(MedTorchInputError, match="trained at 4 mm") as err:
        register(coarse.fixed, coarse.moving, engine="learned", model=str(pack1))
    assert "train-reg --spacing" in str(err.value)
    with pytest.raises(MedTorchInputError, match="needs a model"):
        register(p.fixed, p.moving, engine="learned")
    # a pack of another kind is not a registration model
    other = write_pack(tmp_path / "seg.zip", {}, {"kind": "segmentation"}, "x")
    with pytest.raises(MedTorchInputError, match="not a registration model"):
        register(p.fixed, p.moving, engine="learned", model=str(other))


def test_cli_train_reg_then_register_with_the_learned_engine(tmp_path, capsys):
    from medtorch.cli import main

    data = _write_pairs(tmp_path / "pairs", range(20, 23))
    model = tmp_path / "m.zip"
    rc = main(["train-reg", "--data", str(data), "--out", str(model), "--steps", "6", "--val-every", "3",
               "--val-fraction", "0.34", "--seed", "5", "-q"])
    assert rc == 0 and model.exists()
    cfg = read_pack(model).config
    assert cfg["seed"] == 5 and cfg["training"]["prealign"] and cfg["training"]["num_val"] == 1
    assert main(["train-reg", "--data", str(data), "--out", str(model), "-q"]) == 2  # exists: not replaced
    p = _pair(30)
    write_volume(p.fixed, tmp_path / "f.nii.gz")
    write_volume(p.moving, tmp_path / "m.nii.gz")
    out = tmp_path / "reg.h5"
    rc = main(["register", "--fixed", str(tmp_path / "f.nii.gz"), "--moving", str(tmp_path / "m.nii.gz"),
               "--engine", "learned", "--model", str(model), "--refine", "--out-transform", str(out),
               "--out-volume", str(tmp_path / "moved.nii.gz")])
    assert rc == 0, capsys.readouterr().err
    assert "learned deformable" in capsys.readouterr().out
    report = json.loads((tmp_path / "reg.json").read_text())
    assert report["engine"] == "learned" and report["mode"] == "deformable" and report["refine"] is True
    assert report["model_sha256"] and report["verdict"]["status"] in ("pass", "warn")
    assert read_volume(tmp_path / "moved.nii.gz").geometry.isclose(p.fixed.geometry, atol=1e-3)
    from medtorch.registration.result import read_registration_transform

    assert isinstance(read_registration_transform(out), list)
    # the learned engine without a model, and a model without the learned engine, are usage errors
    args = ["register", "--fixed", str(tmp_path / "f.nii.gz"), "--moving", str(tmp_path / "m.nii.gz"),
            "--out-transform", str(tmp_path / "x.h5"), "-q"]
    assert main(args + ["--engine", "learned"]) == 2
    assert main(args + ["--model", str(model)]) == 2
    assert "--engine learned" in capsys.readouterr().err


def test_synthetic_training_makes_a_contrast_agnostic_pack(tmp_path):
    from medtorch.registration.learned_training import SynthGenerator, train_registration

    a, b = SynthGenerator(None, (16, 16, 16), 4).sample(), SynthGenerator(None, (16, 16, 16), 4).sample()
    assert torch.equal(a.fixed, b.fixed) and torch.equal(a.moving_label, b.moving_label)  # seeded
    assert not torch.equal(a.fixed_label, a.moving_label)  # two different deformations of one label map
    res = train_registration(None, tmp_path / "s.zip", synthetic=True, synthetic_shape=(16, 16, 16), steps=3,
                             val_every=3, val_pairs=1, seed=2)
    cfg = read_pack(res.path).config
    assert cfg["network_config"]["contrast"] == "any" and cfg["training"]["mode"] == "synthetic"
    assert cfg["training"]["image_loss"].startswith("none")


def test_template_labels_are_the_tissue_classes():
    from medtorch.registration.learned_training import synthetic_labels_from_template

    sample = Path(__file__).resolve().parents[1] / "Resources" / "SampleData"
    files = {k: sample / f"MNI152_2009a_{n}.nii.gz" for k, n in (("t1", "T1"), ("gm", "GM"), ("wm", "WM"))}
    if not all(f.exists() for f in files.values()):
        pytest.skip("sample data not present")
    lab = synthetic_labels_from_template(files, 8.0, 8)
    counts = torch.bincount(lab.reshape(-1), minlength=4)
    assert lab.max() == 3 and all(int(c) > 50 for c in counts)  # background, other tissue, GM, WM
    assert all(s % 8 == 0 for s in lab.shape)


def test_benchmark_learned_section_is_replaced_in_place_and_kept_by_the_main_run(tmp_path):
    from benchmarks.registration import learned

    doc = tmp_path / "registration.md"
    doc.write_text("# Registration benchmark\n\nmain rows\n")
    learned.write_section(doc, f"{learned.BEGIN}\nfirst\n{learned.END}\n")
    learned.write_section(doc, f"{learned.BEGIN}\nsecond\n{learned.END}\n")
    text = doc.read_text()
    assert "main rows" in text and "second" in text and "first" not in text and text.count(learned.BEGIN) == 1
    rewritten = learned.keep_section(text, "# Registration benchmark\n\nnew main rows\n")
    assert "new main rows" in rewritten and "second" in rewritten and "main rows\n\n" not in rewritten.split("new")[0]
    rows = [{"row": k, "pair": 0, "network_s": 0.5, "network_forward_s": 0.2, "folding_percent": 0.0,
             "tre_mean_mm": t, "wall_s": w} for k, t, w in (("network", 2.0, 5.0), ("network+refine", 0.9, 8.0),
                                                             ("torch", 1.0, 20.0))]
    verdicts = [v for _, v, _ in learned.targets(rows)]
    assert verdicts[:4] == ["MET", "MET", "MET", "MET"] and verdicts[-1] == "NOT MEASURED"  # GPU
    rows[1]["wall_s"] = 15.0
    assert learned.targets(rows)[3][1] == "NOT MET"
