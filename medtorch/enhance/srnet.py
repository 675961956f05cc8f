"""The 2D network and its self-supervised training for through-plane super-resolution.

SMORE-style (Zhao et al. 2021; ECLARE, Remedios et al. 2023): the volume's own in-plane
slices are high resolution in both directions. Degrading one in-plane direction with the
slice profile and the factor ``f`` makes training pairs (thick-like line -> thin lines);
the trained 2D model is then applied to the planes that contain the thick axis.

:class:`AxisSRNet` works at the *low* resolution along the thick axis and writes ``f``
sub-pixel outputs per thick sample (ESPCN-style, along one axis only), so its cost does
not grow with ``f``. It has two branches:

* a linear one: one convolution whose weights are first set to the least-squares
  optimal linear predictor on the training pairs (:func:`fit_linear_branch`), a strong
  start that needs no iterations;
* a residual CNN (MONAI :class:`~monai.networks.blocks.Convolution` blocks) that learns what
  the linear predictor misses (edges). Its last layer starts at zero, so training starts
  from the linear predictor and only improves on it.

An optional adversarial loss (SRGAN-style, a small patch discriminator) is off by default.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterator, TypeVar

import numpy as np
import torch
from torch import nn

from medtorch.errors import MedTorchInputError
from medtorch.progress import CancelToken, ProgressCallback, report

__all__ = ["AxisSRNet", "SRTrainConfig", "TrainingPairs", "apply_along_planes", "default_iterations",
           "fit_linear_branch", "train_axis_sr"]


class AxisSRNet(nn.Module):
    """``[N, 1, H, W] -> [N, 1, H, W * factor]``: upsamples the last axis by ``factor``.

    Args:
        factor: integer upsampling factor of the last axis.
        features: channels of the CNN branch.
        layers: convolutions in the CNN branch (>= 2).
        linear_kernel: ``(kh, kw)`` of the linear branch (odd sizes).
    """

    def __init__(self, factor: int, features: int = 48, layers: int = 6,
                 linear_kernel: tuple[int, int] = (7, 7)) -> None:
        super().__init__()
        from monai.networks.blocks import Convolution

        if int(factor) < 1 or int(layers) < 2:
            raise MedTorchInputError(f"factor {factor} / layers {layers} are not usable",
                                     "use a factor >= 1 and at least 2 layers")
        self.factor = int(factor)
        self.features = int(features)
        self.layers = int(layers)
        self.linear_kernel = (int(linear_kernel[0]), int(linear_kernel[1]))
        kh, kw = self.linear_kernel
        self.linear = nn.Conv2d(1, self.factor, (kh, kw), padding=(kh // 2, kw // 2), padding_mode="replicate")
        body: list[nn.Module] = [Convolution(2, 1, self.features, kernel_size=3, act="relu", norm=None, bias=True)]
        for _ in range(self.layers - 2):
            body.append(Convolution(2, self.features, self.features, kernel_size=3, act="relu", norm=None, bias=True))
        last = Convolution(2, self.features, self.factor, kernel_size=3, conv_only=True, bias=True)
        body.append(last)
        self.body = nn.Sequential(*body)
        for p in last.parameters():
            nn.init.zeros_(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.linear(x) + self.body(x)  # [N, f, H, W]
        n, f, h, w = out.shape
        return out.permute(0, 2, 3, 1).reshape(n, 1, h, w * f)

    def config(self) -> dict[str, Any]:
        return {"factor": self.factor, "features": self.features, "layers": self.layers,
                "linear_kernel": list(self.linear_kernel)}


class PatchDiscriminator(nn.Module):
    """A small fully convolutional discriminator (SRGAN-style, for the optional adversarial loss)."""

    def __init__(self, features: int = 32) -> None:
        super().__init__()
        from monai.networks.blocks import Convolution

        chans = [1, features, features * 2, features * 2]
        blocks: list[nn.Module] = []
        for a, b in zip(chans[:-1], chans[1:]):
            blocks.append(Convolution(2, a, b, strides=2, kernel_size=3, act=("leakyrelu", {"negative_slope": 0.2}),
                                      norm=None))
        blocks.append(nn.Conv2d(chans[-1], 1, 3, padding=1))
        self.net = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@dataclass
class TrainingPairs:
    """High-resolution planes ``[S, H, W]`` and their degraded versions ``[S, H, W // f]``.

    Both are normalised intensities; several orientations may be concatenated.
    """

    high: list[torch.Tensor]
    low: list[torch.Tensor]
    factor: int

    def __post_init__(self) -> None:
        if not self.high or any(h.shape[-1] < self.factor * 4 or h.shape[-2] < 8 for h in self.high):
            raise MedTorchInputError("the volume is too small to learn super-resolution from its own slices",
                                     f"use a volume with at least {self.factor * 4} x 8 voxels in-plane")

    def sample(self, batch: int, patch_h: int, patch_w_low: int, gen: torch.Generator,
               weights: torch.Tensor | None = None, min_std: float = 0.0,
               tries: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch of random patches (random set, slice, position, flips): ``(low, high)``.

        ``min_std``: a patch whose high-resolution standard deviation is below it (air, flat
        background) is drawn again, up to ``tries`` times.
        """
        f = self.factor
        ph = min(patch_h, min(h.shape[1] for h in self.high))
        pw = min(patch_w_low, min(lo.shape[2] for lo in self.low))
        lows, highs = [], []
        for _ in range(batch):
            for _try in range(max(1, int(tries)) if min_std > 0 else 1):
                s = int(torch.randint(len(self.high), (1,), generator=gen))
                hi, lo = self.high[s], self.low[s]
                if weights is not None and s == 0:
                    k = int(torch.multinomial(weights, 1, generator=gen))
                else:
                    k = int(torch.randint(hi.shape[0], (1,), generator=gen))
                y0 = int(torch.randint(hi.shape[1] - ph + 1, (1,), generator=gen))
                x0 = int(torch.randint(lo.shape[2] - pw + 1, (1,), generator=gen))
                lp = lo[k, y0:y0 + ph, x0:x0 + pw]
                hp = hi[k, y0:y0 + ph, x0 * f:(x0 + pw) * f]
                if min_std <= 0 or float(hp.std()) >= min_std:
                    break
            if bool(torch.randint(2, (1,), generator=gen)):
                lp, hp = lp.flip(0), hp.flip(0)
            if bool(torch.randint(2, (1,), generator=gen)):
                lp, hp = lp.flip(1), hp.flip(1)
            lows.append(lp)
            highs.append(hp)
        return torch.stack(lows)[:, None], torch.stack(highs)[:, None]


def _linear_design(low: torch.Tensor, kh: int, kw: int, index: torch.Tensor | None = None) -> torch.Tensor:
    """Replicate-padded ``kh x kw`` neighbourhoods of low-resolution pixels: ``[S * H * W, kh*kw]``,
    or only of the pixels at the flat indices ``index`` (``[len(index), kh*kw]``, without building the rest)."""
    x = torch.nn.functional.pad(low[:, None], (kw // 2, kw // 2, kh // 2, kh // 2), mode="replicate")[:, 0]
    if index is None:
        p = x.unfold(1, kh, 1).unfold(2, kw, 1)
        return p.reshape(-1, kh * kw)
    _, h, w = low.shape
    s, rest = index // (h * w), index % (h * w)
    y, xx = rest // w, rest % w
    dy = torch.arange(kh).repeat_interleave(kw)
    dx = torch.arange(kw).repeat(kh)
    return x[s[:, None], y[:, None] + dy, xx[:, None] + dx]


def fit_linear_branch(net: AxisSRNet, pairs: TrainingPairs, max_samples: int = 400_000, seed: int = 0,
                      ridge: float = 1e-4) -> float:
    """Set ``net.linear`` to the least-squares linear predictor of the high-resolution lines.

    Fitted on up to ``max_samples`` random low-resolution pixels (their neighbourhoods only are
    built). Returns the root-mean-square training residual of that predictor.
    """
    kh, kw = net.linear_kernel
    f = net.factor
    gen = torch.Generator().manual_seed(int(seed))
    xs, ys = [], []
    total = sum(lo.numel() for lo in pairs.low)
    for hi, lo in zip(pairs.high, pairs.low):
        take = max(1, int(max_samples * lo.numel() / total))
        idx = torch.randperm(lo.numel(), generator=gen)[:take]
        xs.append(_linear_design(lo, kh, kw, idx))
        ys.append(hi[..., : lo.shape[2] * f].reshape(-1, f)[idx])
    x = torch.cat(xs).double()
    y = torch.cat(ys).double()
    x1 = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], 1)
    gram = x1.T @ x1
    gram += ridge * torch.trace(gram) / gram.shape[0] * torch.eye(gram.shape[0], dtype=gram.dtype)
    sol = torch.linalg.solve(gram, x1.T @ y)  # [(kh*kw)+1, f]
    with torch.no_grad():
        net.linear.weight.copy_(sol[:-1].T.reshape(f, 1, kh, kw).float())
        assert net.linear.bias is not None  # the layer is built with a bias
        net.linear.bias.copy_(sol[-1].float())
    return float(((x1 @ sol - y) ** 2).mean().sqrt())


@dataclass
class SRTrainConfig:
    """Training settings (recorded with the weights).

    ``patch_min_std``: a training patch whose high-resolution standard deviation (intensities
    scaled to the volume's 0.5-99.5 % range) is below it -- air, flat background -- is drawn
    again (up to 8 times): at 800 iterations it added +0.19 and +0.27 dB on two dev BraTS T1
    volumes at x4, at no cost (see :func:`default_iterations`). ``0`` samples uniformly.
    """

    iterations: int = 1600  # the default for factor 4; see default_iterations
    batch: int = 16
    patch: int = 64
    learning_rate: float = 1e-3
    features: int = 48
    layers: int = 6
    linear_kernel: tuple[int, int] = (7, 7)
    adversarial_weight: float = 0.0
    max_seconds: float | None = None
    seed: int = 0
    patch_min_std: float = 0.05  # redraw flat (air) patches: see TrainingPairs.sample
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["linear_kernel"] = list(self.linear_kernel)
        return d


def train_axis_sr(pairs: TrainingPairs, config: SRTrainConfig, device: Any = "cpu",
                  progress: ProgressCallback | None = None, cancel: CancelToken | None = None) -> tuple[AxisSRNet, dict[str, Any]]:
    """Train an :class:`AxisSRNet` on ``pairs``; return it (eval mode, on CPU) and a log.

    L1 loss; Adam with a one-cycle learning-rate schedule. Stops after
    ``config.iterations`` or ``config.max_seconds``, whichever comes first. With
    ``adversarial_weight > 0`` a patch discriminator is trained alongside (SRGAN-style,
    least-squares GAN loss) and its loss, times the weight, is added for the generator.
    """
    torch.manual_seed(int(config.seed))
    net = AxisSRNet(pairs.factor, config.features, config.layers, config.linear_kernel)
    report(progress, cancel, 0.0, "fitting the linear predictor")
    lin_rmse = fit_linear_branch(net, pairs, seed=config.seed)
    # channels-last convolutions (the same values) are about a quarter faster on CPU
    net = _with_memory_format(net.to(device), torch.channels_last)
    high = [h.to(device) for h in pairs.high]
    low = [lo.to(device) for lo in pairs.low]
    on_device = TrainingPairs(high, low, pairs.factor)
    iters = max(1, int(config.iterations))
    opt = torch.optim.Adam(net.parameters(), lr=config.learning_rate)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.learning_rate, total_steps=iters, pct_start=0.15)
    disc = None
    if config.adversarial_weight > 0:
        disc = PatchDiscriminator().to(device)
        opt_d = torch.optim.Adam(disc.parameters(), lr=config.learning_rate)
    gen = torch.Generator().manual_seed(int(config.seed) + 1)
    patch_low = max(4, config.patch // pairs.factor)
    start = time.monotonic()
    losses: list[float] = []
    done = 0
    net.train()
    for it in range(iters):
        report(progress, cancel, 0.02 + 0.98 * it / iters, f"training {it}/{iters}")
        if config.max_seconds is not None and time.monotonic() - start > config.max_seconds:
            break
        lo, hi = on_device.sample(config.batch, config.patch, patch_low, gen, min_std=config.patch_min_std)
        out = net(lo)
        loss = (out - hi).abs().mean()
        if disc is not None:
            adv = ((disc(out) - 1.0) ** 2).mean()
            loss = loss + config.adversarial_weight * adv
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if disc is not None:
            d_loss = ((disc(hi) - 1.0) ** 2).mean() + (disc(out.detach()) ** 2).mean()
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
        losses.append(float(loss.detach()))
        done = it + 1
    net.eval()
    net = _with_memory_format(net, torch.contiguous_format)
    log = {"iterations_done": done, "train_seconds": round(time.monotonic() - start, 2),
           "linear_rmse": lin_rmse, "final_loss": float(np.mean(losses[-20:])) if losses else None}
    return net.cpu(), log


_M = TypeVar("_M", bound=nn.Module)


def _with_memory_format(net: _M, fmt: torch.memory_format) -> _M:
    """``net`` with its 4D weights in ``fmt`` (as ``Module.to(memory_format=...)``; the same values)."""
    for p in net.parameters():
        if p.dim() == 4:
            p.data = p.data.contiguous(memory_format=fmt)
    return net


def _batches(n: int, size: int) -> Iterator[tuple[int, int]]:
    for a in range(0, n, size):
        yield a, min(a + size, n)


@torch.no_grad()
def apply_along_planes(net: nn.Module, low: torch.Tensor, batch: int = 8,
                       progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
                       runner: Any = None) -> torch.Tensor:
    """Run ``net`` on planes ``[S, H, W]`` (W the thick axis): ``[S, H, W * f]``.

    ``runner`` (e.g. an onnxruntime session wrapper) replaces ``net`` when given: any
    callable ``[N, 1, H, W] -> [N, 1, H, W f]`` tensor function.
    """
    call = runner if runner is not None else net
    if runner is None:  # channels-last convolutions: the same values, about a third faster on CPU
        _with_memory_format(net, torch.channels_last)
    outs = []
    n = low.shape[0]
    try:
        for a, b in _batches(n, batch):
            report(progress, cancel, a / max(n, 1), "applying the model")
            outs.append(call(low[a:b, None])[:, 0])
    finally:
        if runner is None:
            _with_memory_format(net, torch.contiguous_format)
    report(progress, cancel, 1.0, "applied")
    return torch.cat(outs)


#: Training iterations per unit of the factor (see :func:`default_iterations`).
ITERATIONS_PER_FACTOR = 400


def default_iterations(factor: int) -> int:
    """Training iterations for a factor: ``400 f`` (at least 800).

    An iteration's cost is proportional to the low-resolution patch width ``patch / f``,
    so ``400 f`` iterations cost about the same for every factor. Chosen (issue 22) on two
    ``dev`` BraTS 2018 T1 volumes (Brats18_CBICA_AQN_1, Brats18_CBICA_ASA_1; 240 x 240 x 155,
    1 mm), made thick at x4 with a 4 mm Gaussian profile, blind path (profile estimated),
    CPU seconds of the whole training and inference on one thread (a shared 2-core AMD EPYC),
    gain over cubic B-spline (AQN / ASA):

    ============================================  ===========  ===============
    setting (x4)                                   CPU s        gain (dB)
    ============================================  ===========  ===============
    2400 iterations, 48 features (before)          424 / 420    +2.29 / +2.42
    1600, 48 features, air patches redrawn         268 / 273    +2.19 / +2.28
    2400, 32 features, air patches redrawn         200 / 199    +2.14 / +2.24
    1600, 32 features                              149 / -      +1.92 / -
    800, 48 features                               160 / -      +1.77 / -
    800, 32 features, air patches redrawn           83 / 80     +1.66 / +1.79
    800, 32 features                                84 / 81     +1.47 / +1.52
    ============================================  ===========  ===============

    The default (the second row: 48 features, ``patch_min_std`` 0.05) loses 0.10-0.14 dB for
    about 0.63 of the CPU time; through the command line (``medtorch superres --spacing 1,1,1
    --method selfsup``, one thread) it took 269 CPU-seconds in all on AQN (+2.19 dB). No setting
    tried reached 150 CPU-seconds within 0.1 dB: the gain keeps growing with training. A higher
    learning rate (3e-3) made the network collapse to its linear branch (+0.85 dB at 800).
    The benchmark (``python -m benchmarks.enhance``) measures the defaults.
    """
    return max(800, ITERATIONS_PER_FACTOR * int(factor))
