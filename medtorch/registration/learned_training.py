"""Training a deformable registration network without ground truth (VoxelMorph, SynthMorph).

:func:`train_registration` trains the network of :mod:`medtorch.registration.learned`
(MONAI's VoxelMorph) unsupervised and writes a model pack (:mod:`medtorch.models.pack`).

Data (a folder, any of ``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha``):

* **pairs**: ``<case>_fixed.nii.gz`` + ``<case>_moving.nii.gz``, optionally with
  ``<case>_fixed_label.nii.gz`` + ``<case>_moving_label.nii.gz``. Each moving volume is
  aligned to its fixed one by the torch engine (affine, Mattes MI) first, and both are brought
  onto the fixed volume's model grid.
* **images**: ``<name>.nii.gz`` (optionally ``<name>_label.nii.gz``): every image is aligned
  affinely to the first one, onto its model grid; training pairs are random ordered pairs.
* **synthetic** (no data; after SynthMorph, Hoffmann et al., IEEE TMI 2022): label maps --
  the bundled MNI152 template's tissue classes (``template``), each split at random into
  sub-regions, or (without a template) generated random shapes -- deformed by two random
  diffeomorphisms into a fixed and a moving map, each painted with random intensities per
  label, blurred, biased and noised. The loss compares labels only, so the model learns
  no contrast: a contrast-agnostic model for pairs of any modalities.

Loss: an image term (``lncc``: MONAI's local normalised cross-correlation; ``mi``: its global
mutual information; ``mind``: MIND-SSC descriptors by squared difference), plus
``dice_weight`` x MONAI's Dice loss of the warped moving labels against the fixed ones when
both have labels (synthetic mode: the Dice term alone), plus ``reg_weight`` x MONAI's bending
energy of the field. Held-out pairs are validated every ``val_every`` steps; training stops
after ``patience`` validations without improvement (or at ``steps``, or ``max_minutes``) and
keeps the best weights. The seed (numpy, torch), the data, the losses, the validation history
and the held-out result against the identity are recorded in the pack's ``config.json``.
"""

from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medtorch.errors import MedTorchInputError
from medtorch.progress import CancelToken, ProgressCallback, report
from medtorch.registration.learned import KIND, NETWORK_SIZES, LearnedConfig, build_network, model_grid, normalise, \
    quiet_monai, to_model_grid
from medtorch.volume import Geometry, Volume

__all__ = ["LOSSES", "Sample", "TrainRegResult", "find_training_data", "synthetic_labels_from_template",
           "train_registration"]

LOSSES = ("lncc", "mi", "mind")


@dataclass
class Sample:
    """One training or validation pair on a common grid: images ``[1, z, y, x]`` in [0, 1], labels (int) or None."""

    fixed: torch.Tensor
    moving: torch.Tensor
    fixed_label: torch.Tensor | None = None
    moving_label: torch.Tensor | None = None
    name: str = ""


@dataclass
class TrainRegResult:
    path: Path
    seconds: float
    steps_run: int
    best_step: int
    best_val_loss: float
    identity_val_loss: float
    stopped: str
    seed: int
    num_train: int
    num_val: int
    record: dict[str, Any] = field(default_factory=dict)


# -- data --------------------------------------------------------------------------------------------


def _stem(path: Path) -> str:
    from medtorch.io import VOLUME_EXTENSIONS

    name = path.name
    for ext in sorted(VOLUME_EXTENSIONS, key=len, reverse=True):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return path.stem


def find_training_data(folder: str | os.PathLike[str]) -> tuple[str, list[dict[str, Path | None]]]:
    """``("pairs", [{fixed, moving, fixed_label, moving_label}])`` or ``("images", [{image, label}])``."""
    from medtorch.io import VOLUME_EXTENSIONS

    d = Path(folder)
    if not d.is_dir():
        raise MedTorchInputError(f"the training data folder {d} does not exist", "give a folder of volumes (--data)")
    files = {_stem(p): p for p in sorted(d.iterdir())
             if p.is_file() and any(p.name.lower().endswith(e) for e in VOLUME_EXTENSIONS)}
    pairs = []
    for stem, p in files.items():
        if stem.endswith("_fixed") and stem[:-6] + "_moving" in files:
            case = stem[:-6]
            pairs.append({"fixed": p, "moving": files[case + "_moving"], "fixed_label": files.get(case + "_fixed_label"),
                          "moving_label": files.get(case + "_moving_label")})
    if pairs:
        return "pairs", pairs
    images = [{"image": p, "label": files.get(stem + "_label")} for stem, p in files.items()
              if not stem.endswith("_label")]
    if len(images) < 3:
        raise MedTorchInputError(
            f"{d} holds {len(images)} image(s): training needs at least 3 (2 to train on, 1 held out)",
            "add images (<name>.nii.gz, optional <name>_label.nii.gz), or pairs (<case>_fixed.nii.gz + "
            "<case>_moving.nii.gz), or train on synthetic data (--synthetic)")
    return "images", images


def _affine(fixed: Volume, moving: Volume, seed: int, cancel: CancelToken | None) -> np.ndarray:
    from medtorch.registration.api import register

    res = register(fixed, moving, mode="affine", metric="mi", seed=seed, resample_output=False, verdict=False,
                   cancel=cancel)
    return np.asarray(res.affine, float)


def _load_real(kind: str, entries: list[dict[str, Path | None]], cfg: LearnedConfig, prealign: bool, seed: int,
               progress: ProgressCallback | None, cancel: CancelToken | None) -> tuple[list[Sample], list[Sample]]:
    """Pairs: (all pairs, []); images: (each image as a one-sided sample on the reference grid, [])."""
    from medtorch.io import read_volume

    out: list[Sample] = []
    ref: Volume | None = None
    grid: Geometry | None = None
    for n, e in enumerate(entries):
        report(progress, cancel, 0.1 * n / len(entries), f"preparing {n + 1}/{len(entries)} (affine pre-alignment)")
        if kind == "pairs":
            fixed, moving = read_volume(_path(e["fixed"])), read_volume(_path(e["moving"]))
            g = model_grid(fixed.geometry, cfg.spacing_mm, cfg.multiple)
            a = _affine(fixed, moving, seed, cancel) if prealign else np.eye(4)
            fl = read_volume(_path(e["fixed_label"]), kind="label") if e.get("fixed_label") else None
            ml = read_volume(_path(e["moving_label"]), kind="label") if e.get("moving_label") else None
            out.append(Sample(normalise(to_model_grid(fixed, g))[None], normalise(to_model_grid(moving, g, a))[None],
                              _label(fl, g), _label(ml, g, a), _stem(e["fixed"])[:-6]))  # type: ignore[arg-type]
        else:
            vol = read_volume(_path(e["image"]))
            lab = read_volume(_path(e["label"]), kind="label") if e.get("label") else None
            if ref is None:
                ref, a = vol, np.eye(4)
                grid = model_grid(vol.geometry, cfg.spacing_mm, cfg.multiple)
            else:
                a = _affine(ref, vol, seed, cancel) if prealign else np.eye(4)
            assert grid is not None
            img = normalise(to_model_grid(vol, grid, a))[None]
            out.append(Sample(img, img, _label(lab, grid, a), _label(lab, grid, a), _stem(e["image"])))  # type: ignore[arg-type]
    return out, []


def _path(p: Path | None) -> Path:
    assert p is not None
    return p


def _label(vol: Volume | None, grid: Geometry, affine: np.ndarray | None = None) -> torch.Tensor | None:
    if vol is None:
        return None
    return torch.from_numpy(to_model_grid(vol, grid, affine, label=True)).long()[None]


def _pair(a: Sample, b: Sample) -> Sample:
    """Image ``b`` moving onto image ``a`` (images mode)."""
    return Sample(a.fixed, b.moving, a.fixed_label, b.moving_label, f"{b.name}->{a.name}")


# -- synthetic data (SynthMorph) --------------------------------------------------------------------


def synthetic_labels_from_template(template: dict[str, Path], spacing_mm: float, multiple: int) -> torch.Tensor:
    """Tissue labels of the MNI template on its model grid: 0 outside, 1 other head tissue/CSF, 2 GM, 3 WM."""
    from scipy import ndimage

    from medtorch.io import read_volume

    t1 = read_volume(template["t1"])
    grid = model_grid(t1.geometry, spacing_mm, multiple)
    t1a = to_model_grid(t1, grid)
    gm = to_model_grid(read_volume(template["gm"]), grid)
    wm = to_model_grid(read_volume(template["wm"]), grid)
    scale = 255.0 if max(float(gm.max()), float(wm.max())) > 1.5 else 1.0
    gm, wm = gm / scale, wm / scale
    head = ndimage.binary_fill_holes(t1a > 0.1 * float(np.percentile(t1a[t1a > 0], 99)))
    lab = np.zeros(t1a.shape, np.int64)
    lab[head] = 1
    lab[(gm > 0.5) & (gm >= wm)] = 2
    lab[(wm > 0.5) & (wm > gm)] = 3
    return torch.from_numpy(lab)


def _smooth_noise(shape: tuple[int, ...], coarse: int, gen: torch.Generator, channels: int = 1) -> torch.Tensor:
    """Smooth random fields ``[1, channels, *shape]``: normal noise on a ``coarse``-ish grid, upsampled."""
    cs = tuple(max(2, int(math.ceil(s / coarse))) for s in shape)
    noise = torch.randn((1, channels) + cs, generator=gen)
    return F.interpolate(noise, size=shape, mode="trilinear", align_corners=True)


def generated_labels(shape: tuple[int, int, int], gen: torch.Generator) -> torch.Tensor:
    """Random label map without a template: an ellipsoid split into 3 classes by smooth noise (0 outside)."""
    zz, yy, xx = torch.meshgrid(*(torch.linspace(-1, 1, s) for s in shape), indexing="ij")
    inside = (zz / 0.85) ** 2 + (yy / 0.85) ** 2 + (xx / 0.85) ** 2 < 1.0
    lab = _smooth_noise(shape, 6, gen, 3)[0].argmax(0) + 1
    return torch.where(inside, lab, torch.zeros_like(lab))


class SynthGenerator:
    """Pairs of synthetic images from one label map (see the module docstring); deterministic in ``seed``."""

    def __init__(self, labels: torch.Tensor | None, shape: tuple[int, int, int], seed: int,
                 max_displacement_vox: float = 3.0) -> None:
        self.base = labels
        self.shape = shape
        self.gen = torch.Generator().manual_seed(seed)
        self.max_disp = max_displacement_vox

    def _rand(self, lo: float = 0.0, hi: float = 1.0) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=self.gen))

    def _deform(self) -> torch.Tensor:
        from monai.networks.blocks import DVF2DDF

        v = _smooth_noise(self.shape, 8, self.gen, 3) * self._rand(0.2, 1.0) * self.max_disp / 2.0
        return DVF2DDF(num_steps=5)(v)

    def _paint(self, labels: torch.Tensor) -> torch.Tensor:
        n = int(labels.max()) + 1
        lut = torch.rand(n, generator=self.gen)
        lut[0] = self._rand(0.0, 0.2)
        img = lut[labels].float()[None, None]
        sigma = self._rand(0.0, 1.0)
        if sigma > 0.3:  # a 3x3x3 blur, once or twice
            for _ in range(1 + int(sigma > 0.7)):
                img = F.avg_pool3d(img, 3, stride=1, padding=1, count_include_pad=False)
        bias = torch.exp(_smooth_noise(self.shape, 16, self.gen) * self._rand(0.0, 0.3))
        img = img * bias + torch.randn(img.shape, generator=self.gen) * self._rand(0.0, 0.05)
        return normalise(img[0])

    def sample(self) -> Sample:
        from monai.networks.blocks import Warp

        base = self.base if self.base is not None else generated_labels(self.shape, self.gen)
        # each tissue class split at random into 1-3 sub-regions: more edges, random shapes
        sub = base.clone()
        nxt = int(base.max()) + 1
        noise = _smooth_noise(self.shape, 5, self.gen, 3)[0]
        for lab in range(1, int(base.max()) + 1):
            k = 1 + int(torch.randint(0, 3, (), generator=self.gen))
            if k > 1:
                part = noise[:k].argmax(0)
                for j in range(1, k):
                    sub[(base == lab) & (part == j)] = nxt
                    nxt += 1
        warp = Warp(mode="nearest", padding_mode="zeros")
        imgs, labs = [], []
        for _ in range(2):
            ddf = self._deform()
            s = warp(sub[None, None].float(), ddf)[0, 0].round().long()
            t = warp(base[None, None].float(), ddf)[0, 0].round().long()
            imgs.append(self._paint(s))
            labs.append(t[None])
        fixed = imgs[0].reshape((1,) + self.shape)
        moving = imgs[1].reshape((1,) + self.shape)
        return Sample(fixed, moving, labs[0], labs[1], "synthetic")


# -- losses ------------------------------------------------------------------------------------------


class _Loss:
    def __init__(self, image_loss: str, reg_weight: float, dice_weight: float, n_labels: int, image_weight: float) -> None:
        from monai.losses import BendingEnergyLoss, DiceLoss, GlobalMutualInformationLoss, \
            LocalNormalizedCrossCorrelationLoss
        from monai.networks.blocks import Warp

        self.kind = image_loss
        if image_loss == "lncc":
            self.image: Any = LocalNormalizedCrossCorrelationLoss(spatial_dims=3, kernel_size=5, kernel_type="rectangular")
        elif image_loss == "mi":
            self.image = GlobalMutualInformationLoss(num_bins=23)
        else:
            self.image = None
        self.bending = BendingEnergyLoss(normalize=True)
        self.dice = DiceLoss(include_background=False, to_onehot_y=False, softmax=False)
        self.warp = Warp(mode="bilinear", padding_mode="border")
        self.reg_weight, self.dice_weight, self.image_weight = reg_weight, dice_weight, image_weight
        self.n_labels = n_labels

    def image_term(self, fixed: torch.Tensor, warped: torch.Tensor) -> torch.Tensor:
        if self.kind == "mind":
            from medtorch.registration.similarity import mind_ssc

            return ((mind_ssc(fixed) - mind_ssc(warped)) ** 2).mean() * 10.0
        return self.image(warped, fixed)

    def __call__(self, s: Sample, warped: torch.Tensor, ddf: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        parts: dict[str, torch.Tensor] = {}
        if self.image_weight > 0:
            parts["image"] = self.image_weight * self.image_term(s.fixed[None], warped)
        if s.fixed_label is not None and s.moving_label is not None and self.dice_weight > 0:
            n = self.n_labels
            fo = F.one_hot(s.fixed_label[0].clamp(0, n - 1), n).permute(3, 0, 1, 2)[None].float()
            mo = F.one_hot(s.moving_label[0].clamp(0, n - 1), n).permute(3, 0, 1, 2)[None].float()
            parts["dice"] = self.dice_weight * self.dice(self.warp(mo, ddf), fo)
        parts["bending"] = self.reg_weight * self.bending(ddf)
        total = sum(parts.values(), torch.zeros(()))
        return total, {k: float(v.detach()) for k, v in parts.items()}


def _folding_percent(ddf: torch.Tensor) -> float:
    """Share of voxels (%) where ``x + ddf(x)`` folds (det of its Jacobian <= 0); ``ddf`` ``[1, 3, z, y, x]`` in voxels."""
    u = ddf[0].float()
    jac = torch.stack([torch.stack(torch.gradient(u[c])) for c in range(3)]) + torch.eye(3).view(3, 3, 1, 1, 1)
    det = torch.linalg.det(jac.permute(2, 3, 4, 0, 1))
    return float((det <= 0).float().mean() * 100.0)


# -- training ----------------------------------------------------------------------------------------


def _model_card(cfg: LearnedConfig, record: dict[str, Any]) -> str:
    t = record["training"]
    if t["mode"] == "synthetic":
        source = ("synthetic images generated from the tissue classes of the MNI ICBM152 2009a template "
                  "(Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, MNI, McGill University; "
                  "redistribution permitted with this notice, provided 'as is' without warranty)"
                  if t.get("template") else "synthetic images generated from random label maps")
    else:
        source = f"the user's data in {t.get('data')} ({t['num_train']} training and {t['num_val']} held-out items)"
    return "\n".join([
        "# MedTorch registration model (VoxelMorph)",
        "",
        "Unsupervised deformable registration network (MONAI VoxelMorph), trained with `medtorch train-reg`.",
        "",
        f"* Trained on: {source}.",
        f"* Mode: {t['mode']}; image loss: {t['image_loss']}; Dice weight {t['dice_weight']}; bending-energy weight "
        f"{t['reg_weight']}; {t['steps_run']} steps; seed {record['seed']}.",
        f"* Input contract: {cfg.image_channels} channel(s) per volume; works at {cfg.spacing_mm:g} mm; accepts voxels "
        f"up to {cfg.max_input_spacing_mm:g} mm; contrast: {cfg.contrast}; "
        f"{'diffeomorphic (scaling and squaring, ' + str(cfg.integration_steps) + ' steps)' if cfg.diffeomorphic else 'displacement field'}.",
        f"* Held-out result: loss {t['best_val_loss']:.4f} against {t['identity_val_loss']:.4f} for the identity.",
        "* Intended use: research. Not a medical device; check every result (the registration verdict, by eye).",
        "* Licence: the weights carry the terms of the data they were trained on; the code that made them is MedTorch's "
        "(see its LICENSE).",
        "",
    ])


@quiet_monai()
def train_registration(
    data: str | os.PathLike[str] | None,
    out: str | os.PathLike[str],
    *,
    synthetic: bool = False,
    template: dict[str, Path] | None = None,
    network_size: str = "tiny",
    spacing_mm: float = 4.0,
    max_input_spacing_mm: float | None = None,
    diffeomorphic: bool = True,
    image_loss: str = "lncc",
    reg_weight: float = 0.1,
    dice_weight: float = 1.0,
    steps: int = 2000,
    val_every: int = 50,
    patience: int = 5,
    val_fraction: float = 0.2,
    val_pairs: int = 4,
    learning_rate: float = 1e-3,
    seed: int = 0,
    max_minutes: float | None = None,
    prealign: bool = True,
    synthetic_shape: tuple[int, int, int] | None = None,
    max_displacement_mm: float = 12.0,
    device: str | None = None,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> TrainRegResult:
    """Train a registration network and write its model pack to ``out`` (see the module docstring).

    ``synthetic``: no ``data``; label maps from ``template`` (``{"t1", "gm", "wm"}`` paths) or
    generated (``synthetic_shape`` voxels, else 48^3). Returns what was run and the held-out result.
    """
    from medtorch.device import select_device
    from medtorch.models.pack import write_pack

    start = time.perf_counter()
    out_path = Path(out)
    if out_path.exists() and not overwrite:
        raise MedTorchInputError(f"{out_path} exists", "give a new file name for the model, or --overwrite")
    if not out_path.name.lower().endswith(".zip"):
        raise MedTorchInputError(f"the model pack {out_path.name} must be a .zip file", "name it e.g. model.zip")
    if network_size not in NETWORK_SIZES:
        raise MedTorchInputError(f"unknown network size {network_size!r}", "use " + ", ".join(NETWORK_SIZES))
    if image_loss not in LOSSES:
        raise MedTorchInputError(f"unknown image loss {image_loss!r}", "use " + ", ".join(LOSSES))
    if steps < 1 or val_every < 1 or patience < 1 or spacing_mm <= 0:
        raise MedTorchInputError("steps, --val-every and --patience must be at least 1, the spacing positive",
                                 "give positive values")
    if synthetic == (data is not None):
        raise MedTorchInputError("give either a data folder or synthetic training, not both or neither",
                                 "use --data DIR, or --synthetic")
    dev = select_device(device)
    np_rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    ch, fc = NETWORK_SIZES[network_size]
    cfg = LearnedConfig(channels=ch, final_channels=fc, spacing_mm=float(spacing_mm),
                        max_input_spacing_mm=float(max_input_spacing_mm or 1.5 * spacing_mm),
                        diffeomorphic=bool(diffeomorphic), contrast="any" if synthetic else "same",
                        loss="dice" if synthetic else image_loss)
    report(progress, cancel, 0.0, "preparing the data")
    gen_val: list[Sample]
    train_items: list[Sample]
    synth: SynthGenerator | None = None
    if synthetic:
        if template is not None:
            base = synthetic_labels_from_template(template, spacing_mm, cfg.multiple)
            shape: tuple[int, int, int] = tuple(int(s) for s in base.shape)  # type: ignore[assignment]
        else:
            shape = tuple(int(s) for s in (synthetic_shape or (48, 48, 48)))  # type: ignore[assignment]
            shape = tuple(((s + cfg.multiple - 1) // cfg.multiple) * cfg.multiple for s in shape)  # type: ignore[assignment]
            base = None
        synth = SynthGenerator(base, shape, seed, max_displacement_mm / spacing_mm)
        val_gen = SynthGenerator(base, shape, seed + 1_000_003, max_displacement_mm / spacing_mm)
        gen_val = [val_gen.sample() for _ in range(max(1, val_pairs))]
        train_items, mode, n_labels = [], "synthetic", 4
        num_train, num_val = 0, len(gen_val)
    else:
        mode, entries = find_training_data(data)  # type: ignore[arg-type]
        items, _ = _load_real(mode, entries, cfg, prealign, seed, progress, cancel)
        order = np_rng.permutation(len(items))
        n_val = max(1, int(round(val_fraction * len(items))))
        if len(items) - n_val < (1 if mode == "pairs" else 2):
            raise MedTorchInputError(f"{len(items)} {mode} leave too few to train on after {n_val} held out",
                                     "add data, or lower --val-fraction")
        val_items = [items[i] for i in order[:n_val]]
        train_items = [items[i] for i in order[n_val:]]
        if mode == "pairs":
            gen_val = val_items
        else:  # held-out images against training images, both ways
            gen_val = []
            for k, v in enumerate(val_items):
                t = train_items[k % len(train_items)]
                gen_val += [_pair(t, v), _pair(v, t)]
            gen_val = gen_val[: max(2, val_pairs)]
        labelled = [s for s in items if s.fixed_label is not None]
        n_labels = int(max((int(s.fixed_label.max()) for s in labelled), default=0)) + 1  # type: ignore[union-attr]
        n_labels = max(n_labels, int(max((int(s.moving_label.max()) for s in labelled if s.moving_label is not None),
                                         default=0)) + 1)
        num_train, num_val = len(train_items), len(val_items)
    loss_fn = _Loss(image_loss, reg_weight, dice_weight, n_labels, 0.0 if synthetic else 1.0)
    net = build_network(cfg).to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=learning_rate)

    def next_sample() -> Sample:
        if synth is not None:
            return synth.sample()
        if mode == "pairs":
            return train_items[int(np_rng.integers(len(train_items)))]
        i, j = np_rng.choice(len(train_items), 2, replace=False)
        return _pair(train_items[int(i)], train_items[int(j)])

    def to_dev(s: Sample) -> Sample:
        return Sample(s.fixed.to(dev), s.moving.to(dev), None if s.fixed_label is None else s.fixed_label.to(dev),
                      None if s.moving_label is None else s.moving_label.to(dev), s.name)

    def validate() -> tuple[float, dict[str, float]]:
        net.eval()
        total, fold = 0.0, 0.0
        parts_sum: dict[str, float] = {}
        with torch.no_grad():
            for s in gen_val:
                s = to_dev(s)
                warped, ddf = net(s.moving[None], s.fixed[None])
                loss, parts = loss_fn(s, warped, ddf)
                total += float(loss) - parts.get("bending", 0.0)  # held-out: how well the pair matches
                for k, v in parts.items():
                    parts_sum[k] = parts_sum.get(k, 0.0) + v / len(gen_val)
                fold += _folding_percent(ddf.cpu()) / len(gen_val)
        net.train()
        parts_sum["folding_percent"] = fold
        return total / len(gen_val), parts_sum

    identity_loss, _ = validate()  # the untrained network predicts (almost) zero: the identity
    best_loss, best_step, best_state, best_parts = identity_loss, 0, copy.deepcopy(net.state_dict()), {}
    history: list[dict[str, Any]] = []
    stale, step, stopped = 0, 0, "steps"
    train_start = time.perf_counter()
    net.train()
    for step in range(1, steps + 1):
        if cancel is not None and cancel.cancelled:
            from medtorch.errors import Cancelled

            raise Cancelled()
        s = to_dev(next_sample())
        warped, ddf = net(s.moving[None], s.fixed[None])
        loss, parts = loss_fn(s, warped, ddf)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        report(progress, cancel, 0.1 + 0.85 * step / steps, f"step {step}/{steps}, loss {float(loss.detach()):.4f}")
        if step % val_every == 0 or step == steps:
            val_loss, val_parts = validate()
            history.append({"step": step, "train_loss": round(float(loss.detach()), 5), "val_loss": round(val_loss, 5),
                            **{f"val_{k}": round(v, 5) for k, v in val_parts.items()}})
            if val_loss < best_loss - 1e-5:
                best_loss, best_step, best_parts, stale = val_loss, step, val_parts, 0
                best_state = copy.deepcopy(net.state_dict())
            else:
                stale += 1
                if stale >= patience:
                    stopped = "early stop"
                    break
        if max_minutes is not None and time.perf_counter() - train_start > 60.0 * max_minutes:
            stopped = "time limit"
            break
    seconds = time.perf_counter() - start
    import monai

    record: dict[str, Any] = {
        "kind": KIND,
        "format_version": 1,
        "network_config": cfg.to_dict(),
        "seed": int(seed),
        "training": {
            "mode": mode, "data": None if data is None else str(data),
            "template": sorted(str(p.name) for p in template.values()) if template else None,
            "image_loss": "none (label Dice only)" if synthetic else image_loss, "dice_weight": dice_weight,
            "reg_weight": reg_weight, "regulariser": "bending energy (MONAI BendingEnergyLoss, normalised)",
            "learning_rate": learning_rate, "optimizer": "Adam", "steps": steps, "steps_run": step,
            "stopped": stopped, "val_every": val_every, "patience": patience, "best_step": best_step,
            "best_val_loss": round(best_loss, 6), "identity_val_loss": round(identity_loss, 6),
            "best_val_parts": {k: round(v, 6) for k, v in best_parts.items()}, "history": history,
            "num_train": num_train, "num_val": num_val, "val_pairs": len(gen_val),
            "prealign": "torch engine, affine, Mattes MI" if (prealign and not synthetic) else None,
            "seconds": round(seconds, 1), "train_s": round(time.perf_counter() - train_start, 1), "device": str(dev), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "monai": monai.__version__,
            "max_displacement_mm": max_displacement_mm if synthetic else None,
        },
    }
    report(progress, cancel, 0.97, "writing the model pack")
    write_pack(out_path, best_state, record, _model_card(cfg, record))
    report(progress, cancel, 1.0, "trained")
    return TrainRegResult(out_path, round(seconds, 1), step, best_step, best_loss, identity_loss, stopped, int(seed),
                          num_train, num_val, record)
