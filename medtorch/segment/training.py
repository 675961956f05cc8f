"""Training a segmentation network on a user's labelled cases; the result is a MONAI bundle.

:func:`train_segmentation` takes a folder of images and label maps, trains a MONAI
``SegResNet`` or ``UNet`` with a Dice + cross-entropy loss and augmentation, keeps the
weights with the best validation Dice (early stop after ``patience`` validations without
improvement) and writes a MONAI-bundle folder that :func:`medtorch.segment.models.load_model`
(and MONAI's own ``monai.bundle run``) loads::

    BUNDLE_DIR/
      configs/metadata.json    network_data_format (channels, classes), the run's seed, history,
                               best validation Dice, label values
      configs/inference.json   network_def, preprocessing, inferer, postprocessing, and a
                               "run" section for ``python -m monai.bundle run``
      models/model.pt          the best weights: a state dict (``torch.load(weights_only=True)``)
      docs/README.md           what was trained, on what, with which result

Data layouts (:func:`find_cases`), any of ``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha``:

* **nnU-Net / Medical Segmentation Decathlon**: ``imagesTr/<case>_0000.nii.gz`` (then
  ``_0001``... for more channels) and ``labelsTr/<case>.nii.gz``; an optional
  ``dataset.json`` names the channels (``channel_names`` or ``modality``) and the labels
  (``labels``: ``{"background": 0, "tumor": 1}`` or ``{"0": "background", "1": "tumor"}``).
  ``imagesTr/<case>.nii.gz`` without a channel suffix (one file, possibly 4D) also works.
* **flat**: ``<case>_image.nii.gz`` (or ``<case>_image_0000.nii.gz``, ``_0001``... for
  several channels) next to ``<case>_label.nii.gz``.

Label values may be any non-negative integers (e.g. BraTS 0/1/2/4); they are trained as
classes 0..K-1 and the bundle records the values (``metadata.json`` → ``medtorch`` →
``label_values``), so inference writes the original values back.

Augmentation (the original MedTorch list): random rotation (±15°) and shift (±10 % of the
window) with scaling (±10 %) through one ``RandAffined``, flips along every axis, random
intensity scaling and shifting (±10 %). Everything random is seeded: the same data and seed
give the same weights (on the CPU).
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from medtorch.errors import MedTorchInputError
from medtorch.io.atomic import replace_folder
from medtorch.progress import CancelToken, ProgressCallback, report

__all__ = ["Case", "TrainingResult", "find_cases", "train_segmentation", "write_bundle"]

_EXTS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
NetworkName = Literal["segresnet", "unet"]


@dataclass(frozen=True)
class Case:
    """One training case: its name, one image file per channel, and its label map."""

    name: str
    images: tuple[Path, ...]
    label: Path


@dataclass
class TrainingResult:
    """What :func:`train_segmentation` did. ``history`` holds one dict per epoch."""

    bundle_dir: Path
    best_val_dice: float
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    seed: int
    num_train: int
    num_val: int
    label_values: list[int]
    channel_names: list[str]
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "history"}
        d["bundle_dir"] = str(self.bundle_dir)
        return d


# -- data -------------------------------------------------------------------------------------


def _strip_ext(name: str) -> str | None:
    low = name.lower()
    for ext in _EXTS:
        if low.endswith(ext):
            return name[: -len(ext)]
    return None


def _files(folder: Path) -> dict[str, Path]:
    out = {}
    if folder.is_dir():
        for p in sorted(folder.iterdir()):
            stem = _strip_ext(p.name)
            if stem is not None and p.is_file():
                out[stem] = p
    return out


def find_cases(data_dir: str | os.PathLike[str]) -> tuple[list[Case], dict[str, Any]]:
    """The training cases in ``data_dir`` and its ``dataset.json`` (``{}`` if none).

    Raises:
        MedTorchInputError: no recognised layout, images without labels (or the reverse),
            or cases with different numbers of channels.
    """
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise MedTorchInputError(f"the data folder {root} does not exist", "give the folder of training images and labels")
    dataset: dict[str, Any] = {}
    if (root / "dataset.json").is_file():
        try:
            dataset = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise MedTorchInputError(f"{root / 'dataset.json'} is not valid JSON ({exc})", "fix or remove it") from None
    cases: list[Case] = []
    if (root / "imagesTr").is_dir() or (root / "labelsTr").is_dir():
        images = _files(root / "imagesTr")
        labels = _files(root / "labelsTr")
        by_case: dict[str, dict[int, Path]] = {}
        for stem, p in images.items():
            m = re.fullmatch(r"(.+)_(\d{4})", stem)
            if m and m.group(1) in labels:
                by_case.setdefault(m.group(1), {})[int(m.group(2))] = p
            elif stem in labels:
                by_case.setdefault(stem, {})[0] = p
        unlabelled = sorted({re.sub(r"_\d{4}$", "", s) for s in images} - set(by_case))
        if unlabelled:
            raise MedTorchInputError(
                f"imagesTr has {len(unlabelled)} case(s) without a label in labelsTr (e.g. {unlabelled[0]})",
                "name each label labelsTr/<case>.nii.gz for images imagesTr/<case>_0000.nii.gz, ...",
            )
        for name in sorted(by_case):
            chans = by_case[name]
            if sorted(chans) != list(range(len(chans))):
                raise MedTorchInputError(f"case {name} has channels {sorted(chans)}, not 0..{len(chans) - 1}",
                                         "number the channel files _0000, _0001, ... without gaps")
            cases.append(Case(name, tuple(chans[i] for i in range(len(chans))), labels[name]))
    else:
        files = _files(root)
        for stem, p in files.items():
            m = re.fullmatch(r"(.+)_label", stem)
            if not m:
                continue
            name = m.group(1)
            chans: dict[int, Path] = {}
            if f"{name}_image" in files:
                chans[0] = files[f"{name}_image"]
            for s2, p2 in files.items():
                m2 = re.fullmatch(re.escape(name) + r"_image_(\d{4})", s2)
                if m2:
                    chans[int(m2.group(1))] = p2
            if not chans:
                raise MedTorchInputError(f"{p.name} has no image ({name}_image.nii.gz or {name}_image_0000.nii.gz)",
                                         "put each case's image next to its label")
            cases.append(Case(name, tuple(chans[i] for i in sorted(chans)), p))
    if not cases:
        raise MedTorchInputError(
            f"no training cases found in {root}",
            "use imagesTr/<case>_0000.nii.gz + labelsTr/<case>.nii.gz (nnU-Net/MSD layout) or "
            "<case>_image.nii.gz + <case>_label.nii.gz",
        )
    n = {len(c.images) for c in cases}
    if len(n) > 1:
        raise MedTorchInputError(f"the cases have different numbers of channels: {sorted(n)}",
                                 "give every case the same channels")
    return cases, dataset


def _channel_names(dataset: dict[str, Any], n: int) -> list[str]:
    src = dataset.get("channel_names") or dataset.get("modality") or {}
    names = {}
    if isinstance(src, dict):
        for k, v in src.items():
            try:
                names[int(k)] = str(v)
            except ValueError:
                continue
    return [names.get(i, f"channel {i}") for i in range(n)]


def _label_names(dataset: dict[str, Any], values: Sequence[int]) -> dict[int, str]:
    src = dataset.get("labels") or {}
    names: dict[int, str] = {}
    if isinstance(src, dict):
        for k, v in src.items():
            if isinstance(v, int):  # nnU-Net v2: {"background": 0, "tumor": 1}
                names[v] = str(k)
            else:  # MSD: {"0": "background", "1": "tumor"}
                try:
                    names[int(k)] = str(v)
                except (TypeError, ValueError):
                    continue
    return {v: names.get(v, "background" if v == 0 else f"label {v}") for v in values}


def _label_values(cases: Sequence[Case], progress: ProgressCallback | None, cancel: CancelToken | None) -> list[int]:
    from medtorch.io import read_volume

    values: set[int] = set()
    for i, c in enumerate(cases):
        report(progress, cancel, 0.02 * i / len(cases), f"reading labels ({c.name})")
        a = read_volume(c.label).array
        if a.dtype.kind == "f" and not np.all(np.mod(a, 1) == 0):
            raise MedTorchInputError(f"the label map {c.label.name} holds non-integer values",
                                     "give label maps with whole-number class values")
        u = np.unique(a).astype(np.int64)
        if u.min() < 0:
            raise MedTorchInputError(f"the label map {c.label.name} holds negative values", "use 0 for background and 1, 2, ... for classes")
        values |= set(int(v) for v in u)
    values.add(0)
    if len(values) < 2:
        raise MedTorchInputError("every label map is empty (only background)", "label at least one structure in the training cases")
    if len(values) > 64:
        raise MedTorchInputError(f"the label maps hold {len(values)} different values", "check that the labels are label maps, not images")
    return sorted(values)


# -- configs --------------------------------------------------------------------------------------


def _network_def(network: str, in_channels: int, out_channels: int, size: str | dict[str, Any]) -> dict[str, Any]:
    if isinstance(size, dict):
        return {"_target_": "SegResNet" if network == "segresnet" else "UNet", "spatial_dims": 3,
                "in_channels": in_channels, "out_channels": out_channels, **size}
    if network == "segresnet":
        if size == "tiny":
            arch = {"init_filters": 8, "blocks_down": [1, 1, 1], "blocks_up": [1, 1]}
        elif size == "small":
            arch = {"init_filters": 16, "blocks_down": [1, 2, 2], "blocks_up": [1, 1]}
        else:
            arch = {"init_filters": 16, "blocks_down": [1, 2, 2, 4], "blocks_up": [1, 1, 1], "dropout_prob": 0.2}
        return {"_target_": "SegResNet", "spatial_dims": 3, "in_channels": in_channels, "out_channels": out_channels,
                **arch}
    if network == "unet":
        channels = {"tiny": [8, 16, 32], "small": [16, 32, 64, 128]}.get(size, [16, 32, 64, 128, 256])
        return {"_target_": "UNet", "spatial_dims": 3, "in_channels": in_channels, "out_channels": out_channels,
                "channels": channels, "strides": [2] * (len(channels) - 1), "num_res_units": 2, "norm": "batch"}
    raise MedTorchInputError(f"unknown network {network!r}", "use 'segresnet' or 'unet'")


def _preprocessing_def(target_spacing: Sequence[float] | None, keys: list[str]) -> list[dict[str, Any]]:
    k = keys if len(keys) > 1 else keys[0]
    pre: list[dict[str, Any]] = [
        {"_target_": "LoadImaged", "keys": k, "image_only": True},
        {"_target_": "EnsureChannelFirstd", "keys": k},
        {"_target_": "Orientationd", "keys": k, "axcodes": "RAS"},
    ]
    if target_spacing is not None:
        modes = ["bilinear", "nearest"][: len(keys)] if len(keys) > 1 else "bilinear"
        pre.append({"_target_": "Spacingd", "keys": k, "pixdim": [float(s) for s in target_spacing], "mode": modes})
    pre.append({"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True, "channel_wise": True})
    return pre


def _inference_config(network_def: dict[str, Any], target_spacing: Sequence[float] | None, roi: Sequence[int],
                      label_values: Sequence[int]) -> dict[str, Any]:
    post: list[dict[str, Any]] = [
        {"_target_": "Activationsd", "keys": "pred", "softmax": True},
        {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
         "nearest_interp": False, "to_tensor": True},
        {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
    ]
    if list(label_values) != list(range(len(label_values))):
        post.append({"_target_": "MapLabelValued", "keys": "pred", "orig_labels": list(range(len(label_values))),
                     "target_labels": [int(v) for v in label_values]})
    post.append({"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_postfix": "seg",
                 "output_dtype": "$np.uint8", "resample": False, "separate_folder": False})
    return {
        "bundle_root": ".",
        "output_dir": "$@bundle_root + '/eval'",
        "dataset_dir": "$@bundle_root + '/data'",
        "datalist": "$[{'image': f} for f in sorted(glob.glob(@dataset_dir + '/*.nii*'))]",
        "imports": ["$import glob"],
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "network_def": network_def,
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": _preprocessing_def(target_spacing, ["image"])},
        "dataset": {"_target_": "Dataset", "data": "@datalist", "transform": "@preprocessing"},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [int(r) for r in roi], "sw_batch_size": 1,
                    "overlap": 0.25},
        "postprocessing": {"_target_": "Compose", "transforms": post},
        "initialize": ["$monai.utils.set_determinism(0)", "$torch.set_grad_enabled(False)",
                       "$@network.load_state_dict(torch.load(@bundle_root + '/models/model.pt', "
                       "map_location=@device, weights_only=True))",
                       "$@network.eval()"],
        "run": ["$[@postprocessing(dict(d, pred=@inferer(d['image'][None].to(@device), @network)[0])) "
                "for d in @dataset]"],
    }


def write_bundle(out_dir: str | os.PathLike[str], *, network_def: dict[str, Any], state_dict: dict[str, torch.Tensor],
                 channel_names: Sequence[str], label_names: dict[int, str], label_values: Sequence[int],
                 roi_size: Sequence[int], target_spacing: Sequence[float] | None = None,
                 extra_metadata: dict[str, Any] | None = None, readme: str = "", overwrite: bool = False) -> Path:
    """Write a MONAI bundle folder atomically (a temporary folder beside it, then a rename).

    Raises:
        MedTorchInputError: ``out_dir`` exists and is not empty (unless ``overwrite``), or
            cannot be written.
    """
    out = Path(out_dir).expanduser()
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise MedTorchInputError(f"the output folder {out} exists and is not empty",
                                 "choose a new folder, or allow overwriting (--overwrite)")
    import monai

    n_out = len(label_values)
    meta: dict[str, Any] = {
        "version": "0.1.0",
        "changelog": {"0.1.0": "trained with medtorch train-seg"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "task": "segmentation",
        "description": "A segmentation model trained with MedTorch (medtorch train-seg) on the user's labelled cases",
        "authors": "MedTorch user",
        "copyright": "the user",
        "intended_use": "research; not for diagnostic use",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "magnitude", "num_channels": len(channel_names),
                                 "spatial_shape": [int(r) for r in roi_size], "dtype": "float32", "value_range": [],
                                 "is_patch_data": True,
                                 "channel_def": {str(i): n for i, n in enumerate(channel_names)}}},
            "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": n_out,
                                 "spatial_shape": [int(r) for r in roi_size], "dtype": "float32", "value_range": [0, 1],
                                 "is_patch_data": True,
                                 "channel_def": {str(i): label_names.get(v, f"label {v}")
                                                 for i, v in enumerate(label_values)}}},
        },
        "medtorch": {"label_values": [int(v) for v in label_values], **(extra_metadata or {})},
    }
    config = _inference_config(network_def, target_spacing, roi_size, label_values)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (tmp / "configs").mkdir()
        (tmp / "models").mkdir()
        (tmp / "docs").mkdir()
        (tmp / "configs" / "metadata.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        (tmp / "configs" / "inference.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
        torch.save({k: v.detach().cpu() for k, v in state_dict.items()}, tmp / "models" / "model.pt")
        (tmp / "docs" / "README.md").write_text(readme or "Trained with `medtorch train-seg`.\n", encoding="utf-8")
        replace_folder(tmp, out)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise MedTorchInputError(f"the bundle could not be written to {out} ({exc.strerror or exc})",
                                 "choose a folder you can write to, with free space") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


# -- training ---------------------------------------------------------------------------------------


def _load_volumes_transform(keys: Sequence[str]) -> Any:
    """A MONAI dictionary transform that reads files with :func:`medtorch.io.read_volume`
    (SimpleITK: NIfTI, NRRD, MHA, DICOM) into ``MetaTensor [C, i, j, k]`` with the RAS affine,
    exactly as ``LoadImaged`` + ``EnsureChannelFirstd`` do, without needing nibabel or ITK."""
    from monai.transforms import MapTransform

    from medtorch.io import read_volume
    from medtorch.segment.inference import metatensor_from_volumes

    class LoadVolumesd(MapTransform):
        def __call__(self, data: Any) -> Any:
            d = dict(data)
            grid = None
            for key in self.key_iterator(d):
                paths = d[key] if isinstance(d[key], (list, tuple)) else [d[key]]
                vols = [read_volume(p) for p in paths]
                for p, v in zip(paths, vols):
                    v.metadata["path"] = str(p)
                g = vols[0].geometry
                if any(not v.geometry.isclose(g, atol=1e-3) for v in vols[1:]) or (
                        grid is not None and not g.isclose(grid, atol=1e-3)):
                    raise MedTorchInputError(
                        f"the files of case {Path(str(paths[0])).name} are not on one grid (image channels and label "
                        "must share size, spacing, origin and direction)",
                        "resample every channel and the label onto one grid first",
                    )
                grid = g
                d[key] = metatensor_from_volumes(vols)
            return d

    return LoadVolumesd(list(keys))


def _transforms(target_spacing: Sequence[float] | None, roi: Sequence[int], label_values: Sequence[int],
                augment: bool, samples_per_case: int) -> tuple[Any, Any]:
    from monai.bundle import ConfigParser
    from monai.transforms import (
        Compose,
        EnsureTyped,
        MapLabelValued,
        RandAffined,
        RandCropByPosNegLabeld,
        RandFlipd,
        RandScaleIntensityd,
        RandShiftIntensityd,
        SpatialPadd,
    )

    pre_cfg = [c for c in _preprocessing_def(target_spacing, ["image", "label"])
               if c["_target_"] not in ("LoadImaged", "EnsureChannelFirstd")]
    from medtorch.segment.orientation import orient_to_axcodes_transform as _orient_to_axcodes_transform

    pre = [_load_volumes_transform(["image", "label"])]
    for c in pre_cfg:  # Orientationd needs nibabel; this equivalent does not
        pre.append(_orient_to_axcodes_transform(c["keys"], c["axcodes"]) if c["_target_"] == "Orientationd"
                   else ConfigParser({"t": c}).get_parsed_content("t"))
    mapping = []
    if list(label_values) != list(range(len(label_values))):
        mapping = [MapLabelValued("label", orig_labels=list(label_values), target_labels=list(range(len(label_values))))]
    base = pre + mapping + [SpatialPadd(["image", "label"], spatial_size=list(roi)),
                            EnsureTyped(["image", "label"], track_meta=False)]
    train = list(base)
    train.append(RandCropByPosNegLabeld(["image", "label"], label_key="label", spatial_size=list(roi), pos=1.0, neg=1.0,
                                        num_samples=samples_per_case, image_key="image", image_threshold=0.0))
    if augment:
        train += [
            RandAffined(["image", "label"], prob=0.5, rotate_range=[math.radians(15)] * 3,
                        translate_range=[0.1 * r for r in roi], scale_range=[0.1] * 3,
                        mode=["bilinear", "nearest"], padding_mode="zeros"),
            RandFlipd(["image", "label"], prob=0.5, spatial_axis=0),
            RandFlipd(["image", "label"], prob=0.5, spatial_axis=1),
            RandFlipd(["image", "label"], prob=0.5, spatial_axis=2),
            RandScaleIntensityd("image", factors=0.1, prob=0.5),
            RandShiftIntensityd("image", offsets=0.1, prob=0.5),
        ]
    return Compose(train), Compose(base)


def train_segmentation(
    data_dir: str | os.PathLike[str],
    out_bundle_dir: str | os.PathLike[str],
    *,
    network: NetworkName = "segresnet",
    network_size: str | dict[str, Any] = "default",
    epochs: int = 100,
    patience: int = 10,
    seed: int = 0,
    roi_size: Sequence[int] = (96, 96, 96),
    batch_size: int = 2,
    samples_per_case: int = 1,
    val_fraction: float = 0.2,
    val_interval: int = 1,
    learning_rate: float = 1e-3,
    target_spacing: Sequence[float] | None = None,
    augment: bool = True,
    device: str | torch.device | None = None,
    amp: bool = True,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> TrainingResult:
    """Train a 3D segmentation network on ``data_dir`` and write a MONAI bundle to ``out_bundle_dir``.

    Args:
        data_dir: the cases (layouts: see the module docstring and :func:`find_cases`).
        out_bundle_dir: the bundle folder to write (must be new or empty unless ``overwrite``).
        network: ``"segresnet"`` (MONAI ``SegResNet``) or ``"unet"`` (MONAI ``UNet``).
        network_size: ``"tiny"`` (CI), ``"small"``, ``"default"``, or explicit network arguments.
        epochs: the most epochs to run (one epoch = every training case once).
        patience: stop after this many validations without a better validation Dice.
        seed: seeds Python, numpy, torch and every random transform; recorded in the bundle.
        roi_size: training patch and inference window (voxels after preprocessing).
        batch_size: patches per optimisation step.
        samples_per_case: patches drawn per case per epoch (half around labelled voxels).
        val_fraction: share of the cases kept for validation (at least one).
        val_interval: epochs between validations.
        learning_rate: AdamW's learning rate (cosine decay over ``epochs``).
        target_spacing: resample every case to this spacing (mm) first (default: as stored).
        augment: rotation, shift, scaling, flips, intensity scaling and shift.
        device: ``auto``/``cpu``/``cuda``...; mixed precision on CUDA when ``amp``.
        overwrite: replace an existing bundle folder.
        progress, cancel: see :mod:`medtorch.progress` (cancel works within one step).

    Returns:
        A :class:`TrainingResult` (the bundle's path, best validation Dice, history, seed...).

    Raises:
        MedTorchInputError: no usable cases, fewer than two cases, labels that are not
            label maps, an output folder that exists.
    """
    from monai.data import CacheDataset, DataLoader
    from monai.inferers import sliding_window_inference
    from monai.losses import DiceCELoss
    from monai.metrics import DiceMetric
    from monai.networks.utils import one_hot
    from monai.utils import set_determinism

    from medtorch.device import autocast_context, deterministic, select_device

    t_start = time.perf_counter()
    out = Path(out_bundle_dir).expanduser()
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise MedTorchInputError(f"the output folder {out} exists and is not empty",
                                 "choose a new folder, or allow overwriting (--overwrite)")
    if epochs < 1 or patience < 1 or batch_size < 1 or val_interval < 1 or samples_per_case < 1:
        raise MedTorchInputError("epochs, patience, batch size, validation interval and samples per case must be >= 1",
                                 "give positive numbers")
    if not 0.0 < val_fraction < 1.0:
        raise MedTorchInputError(f"the validation fraction must be between 0 and 1, got {val_fraction}", "use e.g. 0.2")
    roi = tuple(int(r) for r in roi_size)
    if len(roi) != 3 or any(r < 8 for r in roi):
        raise MedTorchInputError(f"the patch size {roi} is not three sizes of at least 8 voxels", "use e.g. 96,96,96")
    dev = select_device(device)
    cases, dataset = find_cases(data_dir)
    if len(cases) < 2:
        raise MedTorchInputError(f"only {len(cases)} labelled case found", "give at least two cases (one is kept for validation)")
    report(progress, cancel, 0.0, f"{len(cases)} cases found")
    label_values = _label_values(cases, progress, cancel)
    n_cls = len(label_values)
    n_in = len(cases[0].images)
    channel_names = _channel_names(dataset, n_in)
    label_names = _label_names(dataset, label_values)

    with deterministic(seed, warn_only=True) as used_seed:
        set_determinism(seed=used_seed)
        rng = random.Random(used_seed)
        order = list(range(len(cases)))
        rng.shuffle(order)
        n_val = max(1, int(round(val_fraction * len(cases))))
        val_cases = [cases[i] for i in order[:n_val]]
        train_cases = [cases[i] for i in order[n_val:]]
        train_tf, val_tf = _transforms(target_spacing, roi, label_values, augment, samples_per_case)
        train_tf.set_random_state(seed=used_seed)

        def items(cs: Sequence[Case]) -> list[dict[str, Any]]:
            return [{"image": [str(p) for p in c.images], "label": str(c.label)} for c in cs]

        report(progress, cancel, 0.03, "loading and preprocessing the cases")
        try:
            train_ds = CacheDataset(items(train_cases), train_tf, cache_rate=1.0, num_workers=0, progress=False)
            val_ds = CacheDataset(items(val_cases), val_tf, cache_rate=1.0, num_workers=0, progress=False)
        except Exception as exc:  # a file that cannot be read, images and labels of different sizes...
            cause: BaseException | None = exc
            while cause is not None:  # MONAI wraps errors raised inside transforms
                if isinstance(cause, MedTorchInputError):
                    raise cause from None
                cause = cause.__cause__ or cause.__context__
            raise MedTorchInputError(f"the training data could not be prepared ({type(exc).__name__}: "
                                     f"{str(exc).splitlines()[-1][:200] if str(exc) else ''})",
                                     "check that every image and label opens and that they share one grid") from None
        gen = torch.Generator().manual_seed(used_seed)
        loader = DataLoader(train_ds, batch_size=batch_size, shuffle=True, num_workers=0, generator=gen)

        net_def = _network_def(network, n_in, n_cls, network_size)
        from monai.bundle import ConfigParser

        net = ConfigParser({"net": net_def}).get_parsed_content("net").to(dev)
        loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
        opt = torch.optim.AdamW(net.parameters(), lr=learning_rate, weight_decay=1e-5)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
        dice_metric = DiceMetric(include_background=False, reduction="mean", ignore_empty=False)
        scaler = torch.amp.GradScaler("cuda") if (dev.type == "cuda" and amp) else None

        history: list[dict[str, float]] = []
        best, best_epoch, best_state = -1.0, 0, copy.deepcopy(net.state_dict())
        since_best = 0
        stopped_early = False
        steps_per_epoch = max(1, len(loader))
        epoch = 0
        grad = torch.enable_grad()  # a bundle runner in the same process may have turned it off
        grad.__enter__()
        for epoch in range(1, epochs + 1):
            net.train()
            losses = []
            for step, batch in enumerate(loader):
                report(progress, cancel, 0.05 + 0.9 * ((epoch - 1) + step / steps_per_epoch) / epochs,
                       f"epoch {epoch}/{epochs}")
                x, y = batch["image"].to(dev), batch["label"].to(dev)
                opt.zero_grad(set_to_none=True)
                with autocast_context(dev, enabled=amp):
                    loss = loss_fn(net(x), y)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(opt)
                    scaler.update()
                else:
                    loss.backward()
                    opt.step()
                losses.append(float(loss.detach()))
            sched.step()
            rec: dict[str, float] = {"epoch": float(epoch), "train_loss": float(np.mean(losses)) if losses else float("nan")}
            if epoch % val_interval == 0 or epoch == epochs:
                net.eval()
                dice_metric.reset()
                with torch.inference_mode():
                    for item in val_ds:
                        report(progress, cancel, 0.05 + 0.9 * epoch / epochs, f"epoch {epoch}/{epochs}: validation")
                        x = item["image"][None].to(dev)
                        with autocast_context(dev, enabled=amp):
                            logits = sliding_window_inference(x, roi, 1, net, overlap=0.25)
                        pred = one_hot(torch.argmax(logits.float(), dim=1, keepdim=True), n_cls)
                        ref = one_hot(item["label"][None].to(dev).long(), n_cls)
                        dice_metric(pred, ref)
                val = float(dice_metric.aggregate().item())
                rec["val_dice"] = val
                if val > best + 1e-6:
                    best, best_epoch, since_best = val, epoch, 0
                    best_state = copy.deepcopy(net.state_dict())
                else:
                    since_best += 1
            history.append(rec)
            if since_best >= patience:
                stopped_early = True
                break
        epochs_run = epoch
        grad.__exit__(None, None, None)

    report(progress, cancel, 0.96, "writing the bundle")
    seconds = time.perf_counter() - t_start
    extra = {
        "seed": used_seed, "network": network, "best_val_dice": best, "best_epoch": best_epoch,
        "epochs_run": epochs_run, "stopped_early": stopped_early, "train_cases": [c.name for c in train_cases],
        "val_cases": [c.name for c in val_cases], "roi_size": list(roi), "learning_rate": learning_rate,
        "batch_size": batch_size, "augment": augment, "target_spacing": list(target_spacing) if target_spacing else None,
        "history": history, "seconds": round(seconds, 2),
    }
    readme = (f"# Segmentation model trained with MedTorch\n\n"
              f"* network: MONAI {net_def['_target_']} ({network_size if isinstance(network_size, str) else 'custom'})\n"
              f"* inputs: {', '.join(channel_names)}\n"
              f"* classes: {', '.join(f'{v} = {label_names[v]}' for v in label_values)}\n"
              f"* cases: {len(train_cases)} training, {len(val_cases)} validation; seed {used_seed}\n"
              f"* best validation Dice (mean over foreground classes): {best:.4f} at epoch {best_epoch} "
              f"of {epochs_run}{' (early stop)' if stopped_early else ''}\n\n"
              "Load it in 3D Slicer's SegmentTumor module or with `medtorch segment --model <this folder>`.\n")
    write_bundle(out, network_def=net_def, state_dict=best_state, channel_names=channel_names, label_names=label_names,
                 label_values=label_values, roi_size=roi, target_spacing=target_spacing, extra_metadata=extra,
                 readme=readme, overwrite=overwrite)
    report(progress, cancel, 1.0, "done")
    return TrainingResult(bundle_dir=out, best_val_dice=best, best_epoch=best_epoch, epochs_run=epochs_run,
                          stopped_early=stopped_early, seed=used_seed, num_train=len(train_cases), num_val=len(val_cases),
                          label_values=label_values, channel_names=channel_names, seconds=seconds, history=history)
