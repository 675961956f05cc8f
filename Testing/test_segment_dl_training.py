"""Training on a user's labelled cases (medtorch.segment.training), CI-sized.

A tiny SegResNet trains on small synthetic phantoms (a bright lesion of random size and
place inside a noisy 'organ'), writes a MONAI bundle, and that bundle -- loaded by
medtorch.segment.models like any user's bundle -- segments a held-out phantom far better
than chance. The bundle also runs under MONAI's own ``monai.bundle run``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medtorch.errors import MedTorchInputError
from medtorch.io import read_volume, write_volume
from medtorch.volume import Volume

LESION_VALUE = 3  # not 1: the bundle must give back the user's label values


def _phantom(seed: int, size: int = 32) -> tuple[Volume, Volume]:
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.arange(size, dtype=np.float32),) * 3, indexing="ij")
    c = size / 2
    organ = ((z - c) / 13) ** 2 + ((y - c) / 12) ** 2 + ((x - c) / 14) ** 2 <= 1
    r = rng.uniform(3.5, 6.5)
    centre = c + rng.uniform(-5, 5, 3)
    lesion = ((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= r * r) & organ
    img = 100.0 * organ + 80.0 * lesion + rng.normal(0, 12.0, organ.shape)
    spacing = (1.2, 1.2, 1.5)
    image = Volume.from_array(img.astype(np.float32), spacing=spacing, origin=(-20.0, 10.0, 5.0))
    label = Volume.from_array((lesion * LESION_VALUE).astype(np.uint8), spacing=spacing, origin=(-20.0, 10.0, 5.0),
                              kind="label")
    return image, label


def _dataset(root: Path, n: int, layout: str = "nnunet") -> Path:
    for i in range(n):
        image, label = _phantom(100 + i)
        if layout == "nnunet":
            write_volume(image, root / "imagesTr" / f"case{i:02d}_0000.nii.gz")
            write_volume(label, root / "labelsTr" / f"case{i:02d}.nii.gz")
        else:
            write_volume(image, root / f"case{i:02d}_image.nii.gz")
            write_volume(label, root / f"case{i:02d}_label.nrrd")
    if layout == "nnunet":
        (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"},
                                                       "labels": {"background": 0, "lesion": LESION_VALUE}}))
    return root


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2.0 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1))

def _nifti_io_available() -> bool:
    """MONAI's LoadImaged/SaveImaged read and write NIfTI with nibabel or ITK (MedTorch needs neither)."""
    for name in ("nibabel", "itk"):
        try:
            __import__(name)
            return True
        except ImportError:
            continue
    return False



def test_ci_sized_training_gives_a_bundle_that_segments_a_held_out_case(tmp_path):
    from medtorch.segment.inference import segment_with_model
    from medtorch.segment.models import load_model
    from medtorch.segment.training import train_segmentation

    data = _dataset(tmp_path / "data", 8)  # 6 epochs: val Dice ~0.84, about 35 CPU-seconds of training
    fractions = []
    res = train_segmentation(data, tmp_path / "bundle", network="segresnet", network_size="tiny", epochs=6,
                             patience=5, seed=7, roi_size=(32, 32, 32), batch_size=2, learning_rate=3e-3,
                             progress=lambda f, m: fractions.append(f))
    assert res.num_train == 6 and res.num_val == 2 and res.seed == 7
    assert res.label_values == [0, LESION_VALUE]
    assert res.best_val_dice > 0.6, res.history
    assert fractions[-1] == 1.0 and all(b >= a - 1e-9 for a, b in zip(fractions, fractions[1:]))
    meta = json.loads((res.bundle_dir / "configs" / "metadata.json").read_text())
    assert meta["medtorch"]["seed"] == 7 and meta["medtorch"]["label_values"] == [0, LESION_VALUE]
    assert meta["network_data_format"]["inputs"]["image"]["channel_def"] == {"0": "CT"}
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"]["1"] == "lesion"

    model = load_model(res.bundle_dir, use_cache=False)
    assert model.source == "bundle" and model.num_channels == 1 and model.channel_names == ["CT"]
    image, truth = _phantom(999)  # never seen in training
    label, info = segment_with_model(model, [image])
    assert set(np.unique(label.array)) <= {0, LESION_VALUE}
    fg = truth.array == LESION_VALUE
    dice = _dice(label.array == LESION_VALUE, fg)
    chance = 2 * fg.mean() / (1 + fg.mean())  # Dice of labelling every voxel lesion
    assert dice > 0.7 and dice > 5 * chance, (dice, chance)
    assert info["labels"] == {LESION_VALUE: "lesion"}

    # MONAI's own runner loads the same bundle and agrees (its NIfTI reader needs nibabel or itk)
    if not _nifti_io_available():
        return
    from monai.bundle import run

    case_dir = tmp_path / "held_out"
    write_volume(image, case_dir / "case.nii.gz")
    import torch

    with torch.enable_grad():  # the bundle's "initialize" turns gradients off for the whole process
        run(run_id="run", init_id="initialize", final_id=None,
            meta_file=str(res.bundle_dir / "configs" / "metadata.json"),
            config_file=str(res.bundle_dir / "configs" / "inference.json"), bundle_root=str(res.bundle_dir),
            dataset_dir=str(case_dir), output_dir=str(tmp_path / "eval"))
    ref = read_volume(next((tmp_path / "eval").glob("*_seg.nii*")))
    assert (ref.array == label.array).mean() >= 0.999
    assert _dice(ref.array == LESION_VALUE, label.array == LESION_VALUE) >= 0.99


def test_training_is_deterministic_and_reads_the_flat_layout(tmp_path):
    import torch

    from medtorch.segment.training import find_cases, train_segmentation

    data = _dataset(tmp_path / "flat", 3, layout="flat")
    cases, dataset = find_cases(data)
    assert [c.name for c in cases] == ["case00", "case01", "case02"] and dataset == {}
    kw = dict(network="unet", network_size="tiny", epochs=1, patience=5, seed=3, roi_size=(16, 16, 16))
    a = train_segmentation(data, tmp_path / "a", **kw)
    b = train_segmentation(data, tmp_path / "b", **kw)
    sa = torch.load(a.bundle_dir / "models" / "model.pt", weights_only=True)
    sb = torch.load(b.bundle_dir / "models" / "model.pt", weights_only=True)
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]
    with pytest.raises(MedTorchInputError, match="exists and is not empty"):
        train_segmentation(data, tmp_path / "a", **kw)


def test_training_bad_input(tmp_path):
    from medtorch.segment.training import find_cases, train_segmentation

    with pytest.raises(MedTorchInputError, match="no training cases"):
        find_cases(tmp_path)
    img, lab = _phantom(1)
    write_volume(img, tmp_path / "imagesTr" / "a_0000.nii.gz")
    write_volume(img, tmp_path / "imagesTr" / "b_0000.nii.gz")
    write_volume(lab, tmp_path / "labelsTr" / "a.nii.gz")
    with pytest.raises(MedTorchInputError, match="without a label"):
        find_cases(tmp_path)
    (tmp_path / "imagesTr" / "b_0000.nii.gz").unlink()
    with pytest.raises(MedTorchInputError, match="at least two cases"):
        train_segmentation(tmp_path, tmp_path / "out", epochs=1)
    empty = tmp_path / "empty_labels"
    write_volume(img, empty / "a_image.nii.gz")
    write_volume(lab.with_array(np.zeros_like(lab.array)), empty / "a_label.nii.gz")
    write_volume(img, empty / "b_image.nii.gz")
    write_volume(lab.with_array(np.zeros_like(lab.array)), empty / "b_label.nii.gz")
    with pytest.raises(MedTorchInputError, match="only background"):
        train_segmentation(empty, tmp_path / "out2", epochs=1)


def test_cli_train_seg(tmp_path, capsys):
    from medtorch.cli import main

    data = _dataset(tmp_path / "data", 3)
    rc = main(["train-seg", "--data", str(data), "--out", str(tmp_path / "bundle"), "--network", "unet", "--size", "tiny",
               "--epochs", "1", "--roi-size", "16,16,16", "--seed", "5", "-q"])
    assert rc == 0
    assert (tmp_path / "bundle" / "models" / "model.pt").is_file()
    meta = json.loads((tmp_path / "bundle" / "configs" / "metadata.json").read_text())
    assert meta["medtorch"]["seed"] == 5 and meta["medtorch"]["epochs_run"] == 1
    rc = main(["train-seg", "--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "b2"), "-q"])
    assert rc == 2 and "What to do" in capsys.readouterr().err
