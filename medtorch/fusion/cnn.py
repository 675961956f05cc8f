"""A small two-branch CNN fusion network, trained on the pair itself (no labels, no downloads).

Network (:class:`TwoBranchFusionNet`, MONAI ``Convolution`` blocks): each source has its
own branch of two 3x3(x3) convolutions with LeakyReLU (``features`` channels); the two
feature maps are concatenated and two more convolutions produce a correction that is added
to the average of the sources (a residual start: an untrained network is the average).
Receptive field: 9 voxels (4 convolutions).

Training (:func:`train_fusion_cnn`): random patches of the pair itself, sampled where either
source is non-zero, with an unsupervised loss as in the unsupervised fusion literature
(e.g. U2Fusion, Xu et al. 2022; medical variants)::

    loss = w_ssim * (2 - SSIM(F, A) - SSIM(F, B)) / 2          (MONAI SSIMLoss, sigma 1.5)
         + w_grad * | |grad F| - max(|grad A|, |grad B|) |_1     (keep the strongest edges)
         + w_int  * | F - max(A, B) |_1                          (keep salient intensities)

Adam, a fixed number of iterations, everything seeded and run under
:func:`medtorch.device.deterministic`, so the same pair and seed give the same network and
output; the seed is returned with the result.

Checkpoints (:func:`save_checkpoint`, :func:`load_checkpoint`): a ``torch.save`` dict with
the format tag, the network configuration, the ``state_dict`` and metadata (seed, loss
weights, iterations, final loss); loaded with ``torch.load(..., weights_only=True)`` only.
A user's checkpoint is used as it is (or fine-tuned on the pair when iterations > 0).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medtorch.errors import MedTorchInputError
from medtorch.progress import CancelToken, ProgressCallback, report

__all__ = [
    "CHECKPOINT_FORMAT",
    "CnnConfig",
    "TrainConfig",
    "TwoBranchFusionNet",
    "fuse_cnn",
    "infer",
    "load_checkpoint",
    "save_checkpoint",
    "train_fusion_cnn",
    "train_on_pairs",
    "unsupervised_loss",
]

CHECKPOINT_FORMAT = "medtorch-fusion-cnn"
CHECKPOINT_VERSION = 1


@dataclass
class CnnConfig:
    """Network shape: ``spatial_dims`` 2 (images) or 3 (volumes), ``features`` channels per layer."""

    spatial_dims: int = 3
    features: int = 8


@dataclass
class TrainConfig:
    """Training schedule and loss weights (see the module docstring)."""

    iterations: int = 150
    patch_size: int = 32
    batch_size: int = 2
    learning_rate: float = 2e-3
    w_ssim: float = 1.0
    w_grad: float = 4.0
    w_int: float = 1.0
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class TwoBranchFusionNet(nn.Module):
    """Two convolutional branches (one per source), concatenated, then a fusion head."""

    def __init__(self, spatial_dims: int = 3, features: int = 8) -> None:
        super().__init__()
        from monai.networks.blocks import Convolution

        if spatial_dims not in (2, 3):
            raise MedTorchInputError(f"spatial_dims must be 2 or 3, got {spatial_dims}", "use 2 for images, 3 for volumes")
        if int(features) < 1:
            raise MedTorchInputError(f"features must be at least 1, got {features}", "use e.g. 8")
        f = int(features)
        act = ("leakyrelu", {"negative_slope": 0.1})

        def block(cin: int, cout: int, last: bool = False) -> nn.Module:
            return Convolution(spatial_dims, cin, cout, kernel_size=3, act=None if last else act, norm=None,
                               conv_only=last)

        self.config = CnnConfig(spatial_dims, f)
        self.branch_a = nn.Sequential(block(1, f), block(f, f))
        self.branch_b = nn.Sequential(block(1, f), block(f, f))
        self.head = nn.Sequential(block(2 * f, f), block(f, 1, last=True))
        # Start as the plain average: the last layer's weights and bias at zero.
        last: Any = self.head[-1].conv if hasattr(self.head[-1], "conv") else self.head[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    #: voxels on each side an output depends on (4 convolutions of size 3)
    halo = 4

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        feats = torch.cat([self.branch_a(a), self.branch_b(b)], dim=1)
        return 0.5 * (a + b) + self.head(feats)


# -- loss ---------------------------------------------------------------------------------------


def _gradient_magnitude(x: torch.Tensor, spatial_dims: int) -> torch.Tensor:
    """Central-difference gradient magnitude (replicate border) of ``[N, 1, *spatial]``."""
    sq = torch.zeros_like(x)
    for k in range(spatial_dims):
        d = 2 + k
        n = x.shape[d]
        if n < 3:
            continue
        nxt = torch.cat([x.narrow(d, 1, n - 1), x.narrow(d, n - 1, 1)], dim=d)
        prv = torch.cat([x.narrow(d, 0, 1), x.narrow(d, 0, n - 1)], dim=d)
        g = (nxt - prv) * 0.5
        sq = sq + g * g
    return torch.sqrt(sq + 1e-12)


def unsupervised_loss(f: torch.Tensor, a: torch.Tensor, b: torch.Tensor, spatial_dims: int,
                      cfg: TrainConfig) -> torch.Tensor:
    """The training loss of the module docstring for a batch ``[N, 1, *spatial]``."""
    from monai.losses import SSIMLoss

    ssim_loss = SSIMLoss(spatial_dims=spatial_dims, data_range=1.0, win_size=7, kernel_sigma=1.5)
    loss_ssim = 0.5 * (ssim_loss(f, a) + ssim_loss(f, b))
    g_f = _gradient_magnitude(f, spatial_dims)
    g_t = torch.maximum(_gradient_magnitude(a, spatial_dims), _gradient_magnitude(b, spatial_dims))
    loss_grad = (g_f - g_t).abs().mean()
    loss_int = (f - torch.maximum(a, b)).abs().mean()
    return cfg.w_ssim * loss_ssim + cfg.w_grad * loss_grad + cfg.w_int * loss_int


# -- training -----------------------------------------------------------------------------------


def _patch_starts(mask: np.ndarray, size: tuple[int, ...], count: int, rng: np.random.Generator) -> list[tuple[int, ...]]:
    """``count`` patch corners whose patch centre lies in ``mask`` (uniform where the mask is empty)."""
    shape = mask.shape
    hi = [max(n - s, 0) for n, s in zip(shape, size)]
    centres = np.argwhere(mask)
    starts = []
    for _ in range(count):
        if centres.size:
            c = centres[int(rng.integers(len(centres)))]
            st = tuple(int(np.clip(ci - s // 2, 0, h)) for ci, s, h in zip(c, size, hi))
        else:
            st = tuple(int(rng.integers(h + 1)) for h in hi)
        starts.append(st)
    return starts


def train_fusion_cnn(
    a: torch.Tensor,
    b: torch.Tensor,
    cfg: TrainConfig | None = None,
    model: TwoBranchFusionNet | None = None,
    features: int = 8,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> tuple[TwoBranchFusionNet, dict[str, Any]]:
    """Train (or fine-tune) a :class:`TwoBranchFusionNet` on patches of ``a`` and ``b``.

    ``a`` and ``b``: ``[z, y, x]`` (a 2D image is ``[1, y, x]``), intensities in [0, 1], on
    the device to train on. Returns the network (eval mode) and a record of the run.
    """
    from medtorch.device import deterministic

    cfg = cfg or TrainConfig()
    if cfg.iterations < 0 or cfg.patch_size < 8 or cfg.batch_size < 1 or not cfg.learning_rate > 0:
        raise MedTorchInputError(
            f"bad CNN training settings (iterations {cfg.iterations}, patch {cfg.patch_size}, batch {cfg.batch_size}, "
            f"learning rate {cfg.learning_rate})",
            "use iterations >= 0, patch size >= 8, batch size >= 1 and a positive learning rate",
        )
    spatial_dims = 2 if a.shape[0] == 1 else 3
    dev = a.device
    losses: list[float] = []
    with deterministic(cfg.seed) as seed:
        if model is None:
            model = TwoBranchFusionNet(spatial_dims, features)
        model = model.to(dev)
        sd = model.config.spatial_dims
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
        rng = np.random.default_rng(seed)
        if sd == 3 and a.shape[0] == 1 and cfg.iterations > 0:
            raise MedTorchInputError("a 3D network cannot be trained on a 2D image", "use a 2D checkpoint or none")
        # 3D: cubic patches; 2D: square patches from random slices
        size: tuple[int, ...] = (min(cfg.patch_size, a.shape[0]),) if sd == 3 else (1,)
        size = size + tuple(min(cfg.patch_size, n) for n in a.shape[1:])
        mask = ((a > 0.05) | (b > 0.05)).cpu().numpy()
        for it in range(cfg.iterations):
            if it % 5 == 0:
                report(progress, cancel, 0.9 * it / max(cfg.iterations, 1), f"training iteration {it + 1}/{cfg.iterations}")
            starts = _patch_starts(mask, size, cfg.batch_size, rng)
            sl = [tuple(slice(st_k, st_k + n) for st_k, n in zip(st, size)) for st in starts]
            pa = torch.stack([a[s] for s in sl]).unsqueeze(1)
            pb = torch.stack([b[s] for s in sl]).unsqueeze(1)
            if sd == 2:
                pa, pb = pa[:, :, 0], pb[:, :, 0]
            opt.zero_grad(set_to_none=True)
            out = model(pa, pb)
            loss = unsupervised_loss(out, pa, pb, sd, cfg)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            if not math.isfinite(losses[-1]):
                raise MedTorchInputError("the CNN training diverged (the loss is not finite)",
                                         "lower the learning rate or check the inputs for extreme values")
    model.eval()
    record = {"seed": seed, "iterations": cfg.iterations, "final_loss": losses[-1] if losses else None,
              "first_loss": losses[0] if losses else None, "train": asdict(cfg)}
    return model, record


def train_on_pairs(
    pairs: list[tuple[torch.Tensor, torch.Tensor]],
    cfg: TrainConfig | None = None,
    features: int = 8,
    time_limit_s: float | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> tuple[TwoBranchFusionNet, dict[str, Any]]:
    """Train one 2D :class:`TwoBranchFusionNet` on a training set of image pairs (not the pair to fuse).

    ``pairs``: ``(a, b)`` 2D tensors ``[y, x]`` in [0, 1] (any sizes of at least ``patch_size``),
    the same source order as at inference. Each iteration draws ``batch_size`` random pairs
    and a random ``patch_size`` square of each (centred where either source is non-zero),
    with the unsupervised loss of :func:`unsupervised_loss`; Adam, everything seeded (the seed
    is recorded). ``time_limit_s`` stops training early (the iterations done are recorded).
    """
    import time

    from medtorch.device import deterministic

    cfg = cfg or TrainConfig()
    if not pairs:
        raise MedTorchInputError("no training pairs were given", "give at least one (a, b) pair of 2D images")
    for a, b in pairs:
        if a.ndim != 2 or a.shape != b.shape or min(a.shape) < cfg.patch_size:
            raise MedTorchInputError(
                f"training pairs must be 2D images of one shape, at least {cfg.patch_size} pixels a side "
                f"(got {tuple(a.shape)} and {tuple(b.shape)})", "crop or skip the pair, or use a smaller patch size")
    losses: list[float] = []
    t0 = time.perf_counter()
    done = 0
    with deterministic(cfg.seed) as seed:
        model = TwoBranchFusionNet(2, features)
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
        rng = np.random.default_rng(seed)
        masks = [((a > 0.05) | (b > 0.05)).cpu().numpy() for a, b in pairs]
        size = (cfg.patch_size, cfg.patch_size)
        for it in range(cfg.iterations):
            if it % 20 == 0:
                report(progress, cancel, 0.95 * it / max(cfg.iterations, 1), f"training iteration {it + 1}/{cfg.iterations}")
            idx = rng.integers(len(pairs), size=cfg.batch_size)
            pa, pb = [], []
            for i in idx:
                st = _patch_starts(masks[i], size, 1, rng)[0]
                sl = (slice(st[0], st[0] + size[0]), slice(st[1], st[1] + size[1]))
                pa.append(pairs[i][0][sl])
                pb.append(pairs[i][1][sl])
            xa = torch.stack(pa).unsqueeze(1)
            xb = torch.stack(pb).unsqueeze(1)
            opt.zero_grad(set_to_none=True)
            loss = unsupervised_loss(model(xa, xb), xa, xb, 2, cfg)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            done = it + 1
            if not math.isfinite(losses[-1]):
                raise MedTorchInputError("the CNN training diverged (the loss is not finite)",
                                         "lower the learning rate or check the inputs for extreme values")
            if time_limit_s is not None and time.perf_counter() - t0 > time_limit_s:
                break
    model.eval()
    tail = losses[-50:] if losses else []
    record = {"seed": seed, "iterations": done, "iterations_asked": cfg.iterations, "pairs": len(pairs),
              "first_loss": losses[0] if losses else None, "final_loss_mean_last_50": float(np.mean(tail)) if tail else None,
              "seconds": round(time.perf_counter() - t0, 1), "train": asdict(cfg), "features": int(features)}
    return model, record


@torch.no_grad()
def infer(model: TwoBranchFusionNet, a: torch.Tensor, b: torch.Tensor, slab: int = 32,
          progress: ProgressCallback | None = None, cancel: CancelToken | None = None) -> torch.Tensor:
    """Run ``model`` on ``[z, y, x]`` sources slab by slab (with a halo, so no seams)."""
    model.eval()
    sd = model.config.spatial_dims
    n = a.shape[0]
    if sd == 2:  # slices as a batch
        out = torch.empty_like(a)
        for z0 in range(0, n, slab):
            report(progress, cancel, z0 / n, "applying the network")
            z1 = min(z0 + slab, n)
            out[z0:z1] = model(a[z0:z1].unsqueeze(1), b[z0:z1].unsqueeze(1))[:, 0]
        return out
    out = torch.empty_like(a)
    h = model.halo
    for z0 in range(0, n, slab):
        report(progress, cancel, z0 / n, "applying the network")
        z1 = min(z0 + slab, n)
        lo, hi = max(z0 - h, 0), min(z1 + h, n)
        res = model(a[lo:hi][None, None], b[lo:hi][None, None])[0, 0]
        out[z0:z1] = res[z0 - lo: z0 - lo + (z1 - z0)]
    return out


# -- checkpoints ---------------------------------------------------------------------------------


def save_checkpoint(path: str | os.PathLike[str], model: TwoBranchFusionNet, metadata: dict[str, Any] | None = None) -> Path:
    """Write the network and ``metadata`` atomically (``torch.save`` of plain types and tensors)."""
    from medtorch import __version__
    from medtorch.io.atomic import atomic_path

    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": asdict(model.config),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "metadata": _plain(dict(metadata or {}), medtorch=__version__),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def _plain(meta: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """Metadata reduced to what ``weights_only`` loading accepts (numbers, strings, lists, dicts)."""
    def conv(v: Any) -> Any:
        if isinstance(v, dict):
            return {str(k): conv(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, (bool, int, float, str)) or v is None:
            return v
        if isinstance(v, (np.integer, np.floating)):
            return v.item()
        return str(v)

    out = conv(meta)
    out.update(extra)
    return out


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[TwoBranchFusionNet, dict[str, Any]]:
    """Load a checkpoint written by :func:`save_checkpoint` (``weights_only=True``)."""
    p = Path(path)
    if not p.is_file():
        raise MedTorchInputError(f"the CNN checkpoint {p} does not exist", "give the path of a .pt file saved by MedTorch")
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors, truncated files, foreign objects
        raise MedTorchInputError(f"the CNN checkpoint {p} could not be read ({type(exc).__name__}: {exc})",
                                 "give a checkpoint saved by MedTorch's fusion CNN") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise MedTorchInputError(f"{p} is not a MedTorch fusion-CNN checkpoint",
                                 "give a checkpoint saved by 'medtorch fuse --method cnn --save-checkpoint'")
    cfg = payload.get("config", {})
    try:
        model = TwoBranchFusionNet(int(cfg.get("spatial_dims", 3)), int(cfg.get("features", 8)))
        model.load_state_dict(payload["state_dict"], strict=True)
    except (RuntimeError, KeyError, TypeError) as exc:
        raise MedTorchInputError(f"the CNN checkpoint {p} does not match the network ({exc})",
                                 "give a checkpoint saved by this MedTorch version") from None
    model.eval()
    return model, dict(payload.get("metadata", {}))


def fuse_cnn(
    a: torch.Tensor,
    b: torch.Tensor,
    iterations: int | None = None,
    features: int = 8,
    patch_size: int = 32,
    batch_size: int = 2,
    learning_rate: float = 2e-3,
    seed: int = 0,
    w_ssim: float = 1.0,
    w_grad: float = 4.0,
    w_int: float = 1.0,
    checkpoint: str | os.PathLike[str] | None = None,
    save_to: str | os.PathLike[str] | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> tuple[torch.Tensor, dict[str, object]]:
    """Two-branch CNN fusion: train on the pair (or load ``checkpoint``), then apply.

    ``iterations`` defaults to 150 without a checkpoint and 0 (no fine-tuning) with one.
    ``save_to`` writes the trained network as a checkpoint.
    """
    from medtorch.progress import SubProgress

    if a.shape != b.shape:
        raise MedTorchInputError(f"the images differ in shape ({tuple(a.shape)} vs {tuple(b.shape)})",
                                 "resample one onto the other's grid first")
    x_a = a if a.ndim == 3 else a.unsqueeze(0)
    x_b = b if b.ndim == 3 else b.unsqueeze(0)
    model = None
    info: dict[str, object] = {}
    if checkpoint is not None:
        model, meta = load_checkpoint(checkpoint)
        info["checkpoint"] = str(checkpoint)
        info["checkpoint_metadata"] = meta
    its = (0 if model is not None else 150) if iterations is None else int(iterations)
    cfg = TrainConfig(iterations=its, patch_size=int(patch_size), batch_size=int(batch_size),
                      learning_rate=float(learning_rate), w_ssim=float(w_ssim), w_grad=float(w_grad),
                      w_int=float(w_int), seed=int(seed))
    model, record = train_fusion_cnn(x_a, x_b, cfg, model, features, SubProgress(progress, 0.0, 0.8, "CNN"), cancel)
    info.update(record)
    if save_to is not None:
        save_checkpoint(save_to, model, {"training": record})
        info["saved_checkpoint"] = str(save_to)
    with torch.no_grad():
        out = infer(model, x_a, x_b, progress=SubProgress(progress, 0.8, 1.0, "CNN"), cancel=cancel)
    report(progress, cancel, 1.0, "CNN fusion done")
    return out.reshape(a.shape), info
