"""Learned deformable registration: a VoxelMorph network predicts the field in one forward pass.

The network (MONAI's :class:`~monai.networks.nets.VoxelMorph` on a
:class:`~monai.networks.nets.VoxelMorphUNet` backbone) takes the moving volume, already
aligned by the torch engine's affine stage, and the fixed volume, both resampled onto the
*model grid* (the fixed volume's box and direction at the model's spacing, rounded up to a
size the network divides) and normalised (each volume's 0.5-99.5 percentiles to [0, 1]). It
returns a dense displacement field in voxels of that grid -- with ``diffeomorphic`` the
exponential of a stationary velocity field by scaling and squaring (MONAI's ``DVF2DDF``),
which does not fold. The field is turned into LPS millimetres and sampled on the fixed grid:
the transform is the engine's ``p_moving = A(p + d(p))``.

A model travels as a model pack (:mod:`medtorch.models.pack`) whose ``config.json`` holds
the :class:`LearnedConfig` (the network, its channels, the spacing contract, the normalisation,
the diffeomorphic flag) and the training record. A model refuses inputs outside its contract
(:func:`check_contract`): another number of channels per image, or voxels coarser than it was
trained for.

Training is in :mod:`medtorch.registration.learned_training`; the engine that uses a model
is ``register(..., engine="learned", model=...)`` (:mod:`medtorch.registration.api`).
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medtorch.errors import MedTorchInputError
from medtorch.volume import Geometry, Volume

__all__ = ["KIND", "NETWORK_SIZES", "LearnedConfig", "LearnedModel", "build_network", "check_contract",
           "field_to_lps", "load_model", "model_grid", "normalise", "predict_field", "quiet_monai", "to_model_grid"]

#: ``config["kind"]`` of a registration model pack.
KIND = "registration"
#: Network sizes: (UNet channels, in down/up pairs; final convolution channels).
INIT_STD = 1e-5  # VoxelMorph's initialisation of the flow layer: the untrained network is (almost) the identity
NETWORK_SIZES: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "tiny": ((8, 16, 16, 16), (8,)),
    "small": ((16, 32, 32, 32), (16,)),
    "default": ((16, 32, 32, 32, 32, 32), (16, 16)),
}


@dataclass(frozen=True)
class LearnedConfig:
    """What a registration network is and the contract of its inputs (the pack's ``config.json``).

    ``spacing_mm``: the model grid's spacing (the network sees both volumes at it);
    ``max_input_spacing_mm``: the coarsest voxel (largest spacing of either volume) the model
    accepts -- a thick-slice volume holds less detail than it learned from; ``image_channels``:
    channels per volume (the network takes moving and fixed: twice that); ``multiple``: the
    model grid's size is rounded up to it (the UNet halves the grid this many times, less one);
    ``contrast``: ``same`` (trained on one contrast) or ``any`` (synthetic training: random
    contrasts, for multimodal pairs).
    """

    network: str = "voxelmorph"
    channels: tuple[int, ...] = NETWORK_SIZES["tiny"][0]
    final_channels: tuple[int, ...] = NETWORK_SIZES["tiny"][1]
    image_channels: int = 1
    spacing_mm: float = 4.0
    max_input_spacing_mm: float = 6.0
    diffeomorphic: bool = True
    integration_steps: int = 7
    normalisation: str = "percentile"
    contrast: str = "same"
    loss: str = "lncc"

    @property
    def multiple(self) -> int:
        return 2 ** (len(self.channels) // 2 + 1)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["channels"], d["final_channels"] = list(self.channels), list(self.final_channels)
        d["multiple"] = self.multiple
        d["normalisation_detail"] = "each volume's 0.5-99.5 percentiles mapped to [0, 1], clipped"
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LearnedConfig:
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        for k in ("channels", "final_channels"):
            if k in kw:
                kw[k] = tuple(int(c) for c in kw[k])
        cfg = cls(**kw)
        if cfg.network != "voxelmorph":
            raise MedTorchInputError(f"the model's network {cfg.network!r} is not one this MedTorch runs",
                                     "use a model trained by medtorch train-reg (VoxelMorph)")
        if len(cfg.channels) < 2 or len(cfg.channels) % 2 or cfg.spacing_mm <= 0 or cfg.image_channels < 1:
            raise MedTorchInputError("the model's configuration is not valid (channels, spacing)",
                                     "use a model pack written by medtorch train-reg")
        return cfg


@contextmanager
def quiet_monai() -> Iterator[None]:
    """Silence MONAI's notes that say nothing to a user (its pure-PyTorch warp; an indexing deprecation)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="monai.networks.blocks.Warp: Using PyTorch native grid_sample")
        warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidimensional indexing")
        yield


@quiet_monai()
def build_network(cfg: LearnedConfig) -> torch.nn.Module:
    """The VoxelMorph network of ``cfg`` (untrained): ``net(moving, fixed) -> (warped, ddf)``."""
    from monai.networks.nets import VoxelMorph, VoxelMorphUNet

    backbone = VoxelMorphUNet(3, 2 * cfg.image_channels, cfg.channels[0], channels=cfg.channels,
                              final_conv_channels=cfg.final_channels)
    # the last convolution starts near zero: an untrained network predicts (almost) the identity
    head: Any = backbone.net[-1]
    last: Any = head.final_conv_out.conv
    torch.nn.init.normal_(last.weight, 0.0, INIT_STD)
    torch.nn.init.zeros_(last.bias)
    return VoxelMorph(backbone, integration_steps=cfg.integration_steps if cfg.diffeomorphic else 0)


def model_grid(geometry: Geometry, spacing_mm: float, multiple: int) -> Geometry:
    """The grid the network works on: ``geometry``'s box and direction at ``spacing_mm``, its size
    rounded up to ``multiple`` (the extra voxels shared on both sides)."""
    extent = (np.asarray(geometry.size, float) - 1) * np.asarray(geometry.spacing, float)
    n = np.ceil(extent / spacing_mm + 1 - 1e-6).astype(int)
    n = np.maximum(((n + multiple - 1) // multiple) * multiple, multiple)
    d = np.asarray(geometry.direction, float)
    origin = geometry.center() - d @ (spacing_mm * (n - 1) / 2.0)
    return Geometry(tuple(int(v) for v in n), origin, (spacing_mm,) * 3, d)


def normalise(array: np.ndarray | torch.Tensor) -> torch.Tensor:
    """The 0.5-99.5 percentiles of ``array`` to [0, 1], clipped (float32 tensor, same shape)."""
    t = torch.as_tensor(np.asarray(array) if not isinstance(array, torch.Tensor) else array).float()
    flat = t.reshape(-1)
    if flat.numel() > 2_000_000:
        flat = flat[torch.linspace(0, flat.numel() - 1, 2_000_000).long()]
    lo, hi = torch.quantile(flat, torch.tensor([0.005, 0.995]))
    if float(hi) <= float(lo):
        lo, hi = flat.min(), flat.max()
    return ((t - lo) / max(float(hi - lo), 1e-12)).clamp_(0.0, 1.0)


def to_model_grid(volume: Volume, grid: Geometry, transform: Any = None, label: bool = False) -> np.ndarray:
    """``volume`` on the model grid through ``transform`` (grid point -> volume point), float32 ``[z, y, x]``.

    Images are smoothed first where the grid is coarser (a Gaussian of FWHM ``sqrt(s^2 - s0^2)``)
    so that the coarse grid does not alias; label maps are sampled nearest.
    """
    from medtorch.resample import resample

    if label:
        v = Volume(np.asarray(volume.array).astype(np.int16), volume.geometry, "label")
        return resample(v, grid, transform, interpolation="nearest").array.astype(np.float32)
    arr = np.asarray(volume.array, dtype=np.float32)
    s0 = np.asarray(volume.geometry.spacing, float)
    s = float(np.min(grid.spacing))
    fwhm = np.sqrt(np.maximum(s ** 2 - s0 ** 2, 0.0))
    if float(fwhm.max()) > 0.3 * float(s0.min()):
        from scipy import ndimage

        sigma_vox = fwhm / (2.0 * math.sqrt(2.0 * math.log(2.0))) / s0  # i, j, k
        arr = ndimage.gaussian_filter(arr, sigma_vox[::-1], mode="nearest").astype(np.float32)
    return resample(Volume(arr, volume.geometry), grid, transform, interpolation="linear").array.astype(np.float32)


def field_to_lps(ddf: torch.Tensor, grid: Geometry) -> torch.Tensor:
    """A MONAI displacement ``[1, 3 (k, j, i), z, y, x]`` in voxels of ``grid`` -> LPS mm ``[3, z, y, x]``."""
    u_ijk = ddf[0].flip(0)  # (i, j, k)
    m = torch.tensor(np.asarray(grid.direction) @ np.diag(np.asarray(grid.spacing)), dtype=ddf.dtype, device=ddf.device)
    return torch.einsum("rc,czyx->rzyx", m, u_ijk)


def image_channels(volume: Volume) -> int:
    arr = np.asarray(volume.array)
    return int(arr.shape[-1]) if volume.kind == "vector" or arr.ndim == 4 else 1


def check_contract(cfg: LearnedConfig, fixed: Volume, moving: Volume, model_name: str = "the model") -> None:
    """Refuse inputs outside the model's contract (channels per volume, coarsest voxel), saying what to do."""
    for vol, name in ((fixed, "fixed"), (moving, "moving")):
        n = image_channels(vol)
        if n != cfg.image_channels:
            raise MedTorchInputError(
                f"{model_name} takes {cfg.image_channels} channel(s) per volume, but the {name} volume has {n}",
                f"give {cfg.image_channels}-channel volumes (convert a colour or multi-component volume to a scalar "
                f"one first), or use a model trained on {n}-channel volumes, or the torch engine")
        s = float(np.max(vol.geometry.spacing))
        if s > cfg.max_input_spacing_mm + 1e-6:
            raise MedTorchInputError(
                f"{model_name} was trained at {cfg.spacing_mm:g} mm and accepts voxels up to "
                f"{cfg.max_input_spacing_mm:g} mm, but the {name} volume has {s:g} mm voxels",
                f"use a model trained for this resolution (medtorch train-reg --spacing {math.ceil(s):g}), or the "
                "torch engine (--engine torch --mode deformable)")


@dataclass
class LearnedModel:
    """A loaded registration model: its configuration, the network (eval mode), the pack's record."""

    config: LearnedConfig
    network: torch.nn.Module
    path: Path | None = None
    sha256: str | None = None
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"the model {self.path.name}" if self.path is not None else "the model"


def load_model(path: str | os.PathLike[str], device: torch.device | str = "cpu") -> LearnedModel:
    """Verify and load a registration model pack (hashes checked first; weights with ``weights_only=True``)."""
    from medtorch.models.pack import read_pack

    pack = read_pack(path, kind=KIND)
    cfg = LearnedConfig.from_dict(dict(pack.config.get("network_config", {})))
    net = build_network(cfg)
    try:
        net.load_state_dict(pack.state_dict, strict=True)
    except RuntimeError as exc:
        raise MedTorchInputError(f"the weights in {pack.path.name} do not fit the network its config describes",
                                 "use a model pack written by medtorch train-reg, unchanged") from exc
    net.eval().to(device)
    record = {k: v for k, v in pack.config.items() if k != "network_config"}
    return LearnedModel(cfg, net, pack.path, pack.sha256, record)


def predict_field(model: LearnedModel, fixed: Volume, moving: Volume, affine: np.ndarray,
                  device: torch.device | str = "cpu") -> tuple[Volume, Volume, dict[str, Any]]:
    """One forward pass: the field ``d`` (LPS mm, before ``affine``) on the fixed grid, the same field
    on the model grid, and timings. ``affine`` (fixed -> moving) aligns the moving volume first."""
    cfg = model.config
    check_contract(cfg, fixed, moving, model.name)
    t0 = time.perf_counter()
    grid = model_grid(fixed.geometry, cfg.spacing_mm, cfg.multiple)
    f = normalise(to_model_grid(fixed, grid))
    m = normalise(to_model_grid(moving, grid, np.asarray(affine, float)))
    t1 = time.perf_counter()
    with torch.no_grad(), quiet_monai():
        _, ddf = model.network(m[None, None].to(device), f[None, None].to(device))
        u = field_to_lps(ddf.float(), grid).cpu()
    t2 = time.perf_counter()
    on_grid = Volume(u.permute(1, 2, 3, 0).numpy().astype(np.float32), grid, "vector",
                     {"what": "displacement field (LPS, mm), applied before the affine"})
    from medtorch.resample import resample

    on_fixed = resample(on_grid, fixed.geometry, interpolation="linear")
    on_fixed.metadata = dict(on_grid.metadata)
    info = {"network_input_s": round(t1 - t0, 4), "network_forward_s": round(t2 - t1, 4),
            "network_s": round(time.perf_counter() - t0, 4), "model_grid": list(grid.size),
            "model_spacing_mm": cfg.spacing_mm, "diffeomorphic": cfg.diffeomorphic}
    return on_fixed, on_grid, info
