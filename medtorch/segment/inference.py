"""Automatic segmentation with a user's model, offline: sliding window, TTA, memory-aware output.

:func:`segment_with_model` runs a MONAI bundle, a TorchScript file or an nnU-Net v2 model
(see :mod:`medtorch.segment.models`) on one study (one volume per input channel) and
returns a label map on the grid of the first input volume.

Pipeline (MONAI bundles and TorchScript):

1. The channels are ordered by the model's metadata (:func:`~medtorch.segment.models.map_channels`);
   a wrong count is a clear error. Channels on another grid than the first are resampled
   onto it (linear, in physical space, :func:`medtorch.resample.resample`).
2. The channels become one ``MetaTensor`` ``[C, i, j, k]`` with its RAS affine, exactly as
   MONAI's ``LoadImaged`` + ``EnsureChannelFirstd`` would give them, and go through the
   bundle's own preprocessing transforms (orientation, spacing, cropping, normalisation,
   whatever its config lists), instantiated by MONAI.
3. ``monai.inferers.sliding_window_inference`` with the bundle's window (``roi_size``,
   overlap; ``overlap`` and ``roi_size`` may be overridden), mixed precision on CUDA
   (:func:`medtorch.device.autocast_context`), optional flip test-time augmentation (the
   identity plus a flip along each spatial axis, probabilities averaged).
4. **Memory-aware output**: the class maps are turned into one small integer label map
   (argmax for softmax models, ``> threshold`` for sigmoid models) at the network's
   resolution, the float maps are freed, and only that ``uint8`` label map is taken back to
   the input grid, with nearest-neighbour resampling through the affine the preprocessing
   left (so reorientation, resampling and crops are all undone exactly). A float map of
   every class is never made at the input resolution. Where the network ran on a coarser
   grid than the input's, ``output_interpolation="linear"`` gives smoother boundaries (those
   of MONAI's ``Invertd`` + argmax): the class probabilities are interpolated onto the input
   grid and discretised one slab of slices at a time, so still no whole float map exists.

BraTS conventions (:data:`BRATS_LABELS`): BraTS 2021 labels 1 (necrotic core, NCR),
2 (oedema, ED), 4 (enhancing tumor, ET); BraTS 2023 the same with ET = 3. Regions: tumor
core TC = NCR + ET, whole tumor WT = NCR + ED + ET, enhancing tumor ET. A sigmoid model
whose outputs are the TC, WT and ET regions (MONAI's BraTS bundle) is composed into one
label map in the convention asked for (as the bundle's own postprocessing does: ET where
ET, else NCR where TC, else ED where WT).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medtorch.errors import MedTorchInputError
from medtorch.ops.segmentation import OutputInterpolation
from medtorch.progress import CancelToken, ProgressCallback, SubProgress, report
from medtorch.segment.models import (
    LoadedModel,
    canonical_region,
    load_model,
    map_channels,
)
from medtorch.segment.orientation import orientation_transform
from medtorch.segment.postprocess import BRATS_LABELS, BRATS_REGIONS, LabelConvention
from medtorch.volume import Geometry, Volume, check_volume

__all__ = [
    "BRATS_LABELS",
    "BRATS_REGIONS",
    "LabelConvention",
    "brats_labels_from_regions",
    "brats_regions_from_labels",
    "convert_brats_labels",
    "flip_axes_for_tta",
    "label_volume_from_network_grid",
    "metatensor_from_volumes",
    "orientation_transform",
    "segment_with_model",
]

logger = logging.getLogger(__name__)

#: Names of the BraTS classes (segment names).
BRATS_CLASS_NAMES = {"NCR": "Necrotic tumor core", "ED": "Peritumoral edema", "ET": "Enhancing tumor"}

#: Rough working memory of a mid-size 3D U-Net per window voxel (bytes), for the early
#: memory check only (measured: MONAI SegResNet, 16 filters, float32, CPU: ~400 B/voxel).
_NETWORK_BYTES_PER_VOXEL = 200


# -- BraTS labels and regions (the post-processing module's, under the names used here) -----------


def brats_labels_from_regions(tc: np.ndarray, wt: np.ndarray, et: np.ndarray,
                              convention: LabelConvention = "brats2023") -> np.ndarray:
    """One BraTS label map (uint8) from the TC, WT and ET region masks.

    ET wins, then the rest of TC is necrosis (NCR), then the rest of WT oedema (ED) -- the
    order MONAI's BraTS bundle uses, so overlapping or inconsistent masks still give one class
    per voxel. (:func:`medtorch.segment.postprocess.compose_brats_label`.)
    """
    from medtorch.segment.postprocess import compose_brats_label

    return compose_brats_label(tc, wt, et, convention)


def brats_regions_from_labels(label: np.ndarray, convention: LabelConvention = "brats2023") -> dict[str, np.ndarray]:
    """The TC, WT and ET masks of a BraTS label map (:func:`medtorch.segment.postprocess.brats_regions`)."""
    from medtorch.segment.postprocess import brats_regions

    return brats_regions(np.asarray(label), convention)


def convert_brats_labels(label: np.ndarray, source: LabelConvention, target: LabelConvention) -> np.ndarray:
    """Relabel a BraTS label map between the 2021 (ET = 4) and 2023 (ET = 3) conventions.

    Raises:
        MedTorchInputError: the map holds a value the source convention does not have.
    """
    from medtorch.segment.postprocess import convert_brats_labels as convert

    return np.asarray(convert(np.asarray(label), source, target))


# -- helpers -----------------------------------------------------------------------------------


def flip_axes_for_tta(tta: bool | Sequence[Sequence[int]]) -> list[tuple[int, ...]]:
    """Spatial flips (axes of a ``[B, C, x, y, z]`` tensor) averaged by test-time augmentation.

    ``True``: the identity and one flip along each spatial axis (4 passes). A sequence gives
    the flips explicitly, e.g. ``[(), (2,), (3,), (4,), (2, 3)]``.
    """
    if tta is False or tta is None:
        return [()]
    if tta is True:
        return [(), (2,), (3,), (4,)]
    flips = [tuple(int(a) for a in f) for f in tta]  # type: ignore[union-attr]
    if any(a not in (2, 3, 4) for f in flips for a in f):
        raise MedTorchInputError("test-time flips must be along axes 2, 3 or 4 (the spatial axes)",
                                 "give flips such as (2,), (3,), (4,)")
    return flips or [()]


def _align_channels(volumes: Sequence[Volume], progress: ProgressCallback | None,
                    cancel: CancelToken | None) -> tuple[list[Volume], list[int]]:
    """Every channel on the first channel's grid (linear resampling where needed)."""
    from medtorch.resample import resample

    ref = volumes[0].geometry
    out = [volumes[0]]
    moved = []
    for i, v in enumerate(volumes[1:], start=1):
        if v.geometry.isclose(ref, atol=1e-4):
            out.append(v)
            continue
        lo, hi = v.geometry.bounds()
        rlo, rhi = ref.bounds()
        if np.any(hi < rlo) or np.any(lo > rhi):
            raise MedTorchInputError(
                f"input channel {i} does not overlap channel 0 in physical space",
                "give the channels of one study (co-registered volumes), or register them first",
            )
        out.append(resample(v, ref, interpolation="linear", cancel=cancel))
        moved.append(i)
        report(progress, cancel, i / len(volumes), f"resampled channel {i} onto channel 0")
    return out, moved


def metatensor_from_volumes(volumes: Sequence[Volume]) -> Any:
    """``MetaTensor [C, i, j, k]`` with the RAS affine, as MONAI's ``LoadImaged`` +
    ``EnsureChannelFirstd`` give it (vector volumes add one channel per component).

    The volumes must share one grid (the first one's is used).
    """
    from monai.data import MetaTensor

    geom = volumes[0].geometry
    chans: list[np.ndarray] = []
    for v in volumes:
        if not v.geometry.isclose(geom, atol=1e-4):
            raise MedTorchInputError("the channels are not on one grid", "resample them onto the first channel first")
        a = np.asarray(v.array, dtype=np.float32)
        if v.kind == "vector":
            chans.extend(a[..., c].transpose(2, 1, 0) for c in range(a.shape[-1]))
        else:
            chans.append(a.transpose(2, 1, 0))
    arr = np.stack(chans)
    affine = torch.as_tensor(geom.ijk_to_ras(), dtype=torch.float64)
    meta = {"filename_or_obj": str(volumes[0].metadata.get("path", "input")), "original_channel_dim": 0,
            "spatial_shape": np.asarray(geom.size), "original_affine": geom.ijk_to_ras()}
    return MetaTensor(torch.from_numpy(np.ascontiguousarray(arr)), affine=affine, meta=meta)


_metatensor = metatensor_from_volumes


def _network_grid(affine_ras: Any, spatial_shape: Sequence[int]) -> Geometry:
    a = np.asarray(affine_ras.detach().cpu().numpy() if isinstance(affine_ras, torch.Tensor) else affine_ras,
                   dtype=np.float64)
    return Geometry.from_ijk_to_ras(a, tuple(int(s) for s in spatial_shape))


def label_volume_from_network_grid(label_ijk: np.ndarray, affine_ras: Any, target: Geometry,
                                   cancel: CancelToken | None = None) -> Volume:
    """Take a label map on the network's grid (``[i, j, k]`` with its RAS affine) to ``target``.

    Nearest-neighbour in physical space, so any reorientation, resampling, crop or pad the
    preprocessing did is undone exactly; voxels of ``target`` outside the network's grid get 0.
    The label map keeps its integer dtype: no float map is ever made here.
    """
    from medtorch.resample import resample

    if label_ijk.dtype.kind not in "biu":
        raise MedTorchInputError(f"a label map must be integer, got {label_ijk.dtype}",
                                 "discretise (argmax / threshold) before mapping back")
    grid = _network_grid(affine_ras, label_ijk.shape)
    vol = Volume(np.ascontiguousarray(label_ijk.transpose(2, 1, 0)), grid, "label")
    if grid.isclose(target, atol=1e-5):
        return Volume(vol.array, target, "label")
    return resample(vol, target, interpolation="nearest", default_value=0, cancel=cancel)


def _num_windows(shape: Sequence[int], roi: Sequence[int], overlap: float) -> int:
    n = 1
    for s, r in zip(shape, roi):
        r = min(r, s) if s > 0 else r
        if s <= r:
            continue
        step = max(int(r * (1 - overlap)), 1)
        n *= math.ceil((s - r) / step) + 1
    return n


def _fit_roi(roi: Sequence[int] | None, shape: Sequence[int], divisor: int = 16) -> tuple[int, ...]:
    """The window: the bundle's (or the user's), or the image rounded up to ``divisor``."""
    if roi is None:
        return tuple(int(math.ceil(s / divisor) * divisor) for s in shape)
    r = [int(v) for v in roi]
    if len(r) == 1:
        r = r * len(shape)
    if len(r) != len(shape) or any(v <= 0 for v in r):
        raise MedTorchInputError(f"the window size {tuple(r)} does not fit a {len(shape)}D image",
                                 "give three positive numbers (voxels), e.g. 128,128,128")
    return tuple(r)


def _foreground_box(x: torch.Tensor, margin: int, divisor: int) -> tuple[slice, ...] | None:
    """Bounding box of voxels that are non-zero in any channel, with a margin; None if empty."""
    fg = (x != 0).any(dim=0)
    if not bool(fg.any()):
        return None
    box = []
    for d in range(fg.ndim):
        other = tuple(a for a in range(fg.ndim) if a != d)
        idx = torch.nonzero(fg.any(dim=other), as_tuple=False).flatten()
        lo = max(int(idx.min()) - margin, 0)
        hi = min(int(idx.max()) + 1 + margin, fg.shape[d])
        # widen to a multiple of the divisor where the image allows it (fewer padded voxels)
        need = int(math.ceil((hi - lo) / divisor) * divisor)
        extra = min(need, fg.shape[d]) - (hi - lo)
        lo = max(lo - extra // 2, 0)
        hi = min(lo + max(need, hi - lo), fg.shape[d])
        box.append(slice(lo, hi))
    return tuple(box)


def _estimate_bytes(n_in: int, n_out: int, shape: Sequence[int], roi: Sequence[int], sw_batch: int, tta: int) -> int:
    n = int(np.prod(shape))
    w = int(np.prod(roi)) * sw_batch
    out = n_out * n * 4 * (2 if tta > 1 else 1)
    return int(n_in * n * 4 + out + n * 4 + w * _NETWORK_BYTES_PER_VOXEL)


def _brats_region_channels(output_names: Mapping[int, str]) -> dict[str, int] | None:
    regions = {canonical_region(n): i for i, n in output_names.items()}
    if {"TC", "WT", "ET"} <= set(regions):
        return {k: regions[k] for k in ("TC", "WT", "ET")}  # type: ignore[index]
    return None


def _brats_class_channels(output_names: Mapping[int, str]) -> dict[str, int] | None:
    """Softmax models whose classes are NCR, ED and ET by name."""
    found: dict[str, int] = {}
    for i, n in output_names.items():
        key = "".join(ch for ch in n.lower() if ch.isalnum())
        if key in ("ncr", "necrosis", "necrotic", "necrotictumorcore", "necrotictumorcore", "ncrnet", "necroticcore"):
            found["NCR"] = i
        elif key in ("ed", "edema", "oedema", "peritumoraledema", "peritumoraloedema", "snfh"):
            found["ED"] = i
        elif key in ("et", "enhancing", "enhancingtumor", "enhancingtumor"):
            found["ET"] = i
    return found if len(found) == 3 else None


# -- the main entry point -------------------------------------------------------------------------


def segment_with_model(
    model_path: str | Path | LoadedModel,
    inputs: Sequence[Volume] | Mapping[str, Volume],
    *,
    overlap: float | None = None,
    tta: bool | Sequence[Sequence[int]] = False,
    device: str | torch.device | None = None,
    roi_size: Sequence[int] | None = None,
    sw_batch_size: int | None = None,
    amp: bool = True,
    cpu_bf16: bool = False,
    channels_last: bool | None = None,
    threshold: float = 0.5,
    label_convention: str = "auto",
    crop_foreground: bool = False,
    output_interpolation: OutputInterpolation = "nearest",
    trust_code: bool = False,
    memory_budget: str | int | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> tuple[Volume, dict[str, Any]]:
    """Segment one study with a user's model; a ``uint8`` label map on the first input's grid.

    Args:
        model_path: a MONAI bundle folder, a TorchScript file, an nnU-Net v2 model folder
            (see :func:`~medtorch.segment.models.load_model`), or a model already loaded.
        inputs: one volume per input channel, in the model's order, or a mapping from channel
            name (as the model's metadata names them: ``"FLAIR"``, ``"T1c"``...) to volume.
            Inputs are never modified.
        overlap: sliding-window overlap (0 to <1); default: the bundle's, else 0.25.
        tta: flip test-time augmentation: ``True`` for the identity plus one flip per axis
            (4x the time), or explicit flips (see :func:`flip_axes_for_tta`).
        device: ``auto``, ``cpu``, ``cuda``... (:func:`medtorch.device.select_device`).
        roi_size: window size (voxels of the preprocessed image); default: the bundle's,
            else the whole image (rounded up to a multiple of 16).
        sw_batch_size: windows per network call (default: the bundle's, else 1).
        amp: mixed precision on CUDA (no effect on the CPU).
        cpu_bf16: bfloat16 autocast on the CPU too (off by default: much faster on CPUs with
            native bfloat16 -- AVX512-BF16, AMX -- but slower on others, and the class maps
            differ from float32 by bfloat16 rounding; see the DL timing benchmark).
        channels_last: run a convolution network channels-last on the CPU: ``None`` (default)
            for windows of at least :data:`CHANNELS_LAST_MIN_VOXELS` voxels (~10-15 % less peak
            memory, same speed), ``False`` for the bundle runner's exact arithmetic.
        threshold: probability above which a sigmoid output channel is "on".
        label_convention: for BraTS models: ``"brats2021"`` (ET = 4), ``"brats2023"``
            (ET = 3) or ``"auto"`` (the model's metadata, else 2021 as MONAI's BraTS bundle).
        crop_foreground: run the network only on the bounding box of the non-zero voxels
            (skull-stripped MRI), with the window fitted to it: faster, but not what the
            bundle's own runner does (its window sees the zero background too).
        output_interpolation: how the result goes back to the input grid when the network
            ran on another grid (a bundle with ``Spacingd``, say). ``"nearest"`` (default): the
            label map is made at the network's resolution and resampled nearest-neighbour --
            the least memory and time. ``"linear"``: the class probabilities are interpolated
            linearly onto the input grid one slab of slices at a time and discretised there,
            as MONAI's ``Invertd`` + argmax does, so boundaries are as smooth as the runner's;
            only one slab of float maps exists at a time.
        trust_code: allow Python expressions in the bundle config (see ``load_model``).
        memory_budget: overrides ``MEDTORCH_MEMORY_BUDGET`` / the available memory.
        progress, cancel: see :mod:`medtorch.progress`.

    Returns:
        ``(label, info)``: the label map (``kind='label'``, ``uint8``, background 0) and a
        dict of plain values: model description, channel order, label names
        (``labels``: value -> name), BraTS convention, window, overlap, TTA flips,
        resampled channels, device, timings (s) and volume (mL) per label.

    Raises:
        MedTorchInputError: bad model, wrong channel count, inputs that do not overlap, a
            step that would not fit in memory.
    """
    from medtorch.device import select_device

    t0 = time.perf_counter()
    dev = select_device(device)
    report(progress, cancel, 0.0, "loading the model")
    model = model_path if isinstance(model_path, LoadedModel) else load_model(model_path, device=dev, trust_code=trust_code)
    if model.device != dev and model.source != "nnunet":
        model.network = model.network.to(dev)
        model.device = dev
    volumes = map_channels(model, inputs)
    for i, v in enumerate(volumes):
        check_volume(v, f"input channel {i}" + (f" ({model.channel_names[i]})" if i < len(model.channel_names) and model.channel_names[i] else ""))
    t_load = time.perf_counter() - t0
    volumes, moved = _align_channels(volumes, SubProgress(progress, 0.0, 0.05, "channels"), cancel)
    target = volumes[0].geometry
    if overlap is not None and not 0.0 <= float(overlap) < 1.0:
        raise MedTorchInputError(f"the window overlap must be from 0 to below 1, got {overlap}", "use e.g. 0.25 or 0.5")

    info: dict[str, Any] = {"model": model.describe(), "channels": list(model.channel_names) or [f"channel {i}" for i in range(len(volumes))],
                            "resampled_channels": moved, "device": str(dev)}
    if model.source == "nnunet":
        label_arr, labels = _run_nnunet(model, volumes, overlap, tta, SubProgress(progress, 0.05, 0.95, "nnU-Net"), cancel)
        label = Volume(label_arr, target, "label")
        info.update({"labels": labels, "label_convention": None, "tta_flips": bool(tta), "overlap": overlap})
    else:
        label, extra = _run_monai(model, volumes, target, overlap=overlap, tta=tta, dev=dev, roi_size=roi_size,
                                  sw_batch_size=sw_batch_size, amp=amp, cpu_bf16=cpu_bf16,
                                  channels_last=channels_last, threshold=threshold,
                                  label_convention=label_convention, crop_foreground=crop_foreground,
                                  output_interpolation=output_interpolation, memory_budget=memory_budget, progress=SubProgress(progress, 0.05, 0.97, "inference"),
                                  cancel=cancel)
        info.update(extra)
    report(progress, cancel, 0.98, "volumetry")
    counts = np.bincount(label.array.ravel(), minlength=1)
    vox_ml = target.voxel_volume_mm3 / 1000.0
    info["volumes_ml"] = {str(info["labels"].get(v, f"label {v}")): float(c * vox_ml)
                          for v, c in enumerate(counts) if v > 0 and c > 0}
    info["voxel_counts"] = {int(v): int(c) for v, c in enumerate(counts) if v > 0 and c > 0}
    info["seconds"] = {"load": round(t_load, 3), "total": round(time.perf_counter() - t0, 3), **info.get("seconds", {})}
    label.metadata = {"operation": "segment_model", "model": str(model.path), "model_source": model.source,
                      "label_convention": str(info.get("label_convention")), "tta": str(bool(tta))}
    report(progress, cancel, 1.0, "done")
    return label, info


#: Windows of at least this many voxels run channels-last on the CPU (see :func:`_use_channels_last`).
CHANNELS_LAST_MIN_VOXELS = 2_000_000


def _use_channels_last(net: Any, dev: torch.device, window_voxels: int) -> bool:
    """Channels-last (NDHWC) activations for 3D convolution networks on the CPU: oneDNN's native
    layout, measured ~10-15 % less peak memory for MONAI's BraTS SegResNet on a 240x240x160
    window at the same speed. Only for large windows (:data:`CHANNELS_LAST_MIN_VOXELS`), where
    the memory matters: the other layout sums in another order, so the class maps differ from
    the bundle runner's by float32 rounding (a voxel in a million may flip at a tie). Not for
    TorchScript modules (their layout is fixed when exported)."""
    if window_voxels < CHANNELS_LAST_MIN_VOXELS:
        return False
    if dev.type != "cpu" or not isinstance(net, torch.nn.Module) or isinstance(net, torch.jit.ScriptModule):
        return False
    return any(isinstance(m, torch.nn.Conv3d) for m in net.modules())


def _cancel_hooks(net: Any, cancel: CancelToken | None) -> list[Any]:
    """Check ``cancel`` before every layer, so that a cancel stops even one large window within
    a fraction of a second (TorchScript modules take no hooks: there it waits for the window)."""
    if cancel is None or not isinstance(net, torch.nn.Module) or isinstance(net, torch.jit.ScriptModule):
        return []

    def check(module: Any, args: Any) -> None:
        cancel.raise_if_cancelled()

    return [m.register_forward_pre_hook(check) for m in net.modules() if not list(m.children())]


class _removing:
    """Context manager removing hook handles on exit."""

    def __init__(self, handles: list[Any]) -> None:
        self.handles = handles

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        for h in self.handles:
            h.remove()


def _run_monai(model: LoadedModel, volumes: list[Volume], target: Geometry, *, overlap: float | None, tta: Any,
               dev: torch.device, roi_size: Sequence[int] | None, sw_batch_size: int | None, amp: bool,
               cpu_bf16: bool, channels_last: bool | None,
               threshold: float, label_convention: str, crop_foreground: bool, output_interpolation: str,
               memory_budget: str | int | None,
               progress: ProgressCallback | None, cancel: CancelToken | None) -> tuple[Volume, dict[str, Any]]:
    from monai.inferers import sliding_window_inference

    from medtorch.device import autocast_context
    from medtorch.memory import check_fits

    t0 = time.perf_counter()
    report(progress, cancel, 0.0, "preprocessing")
    data: dict[str, Any] = {model.image_key: _metatensor(volumes)}
    for t in model.preprocessing:
        report(progress, cancel, 0.02, f"preprocessing: {type(t).__name__}")
        try:
            data = t(data)
        except Exception as exc:
            raise MedTorchInputError(
                f"the model's preprocessing step {type(t).__name__} failed on the input ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:200] if str(exc) else ''})",
                "check that the inputs are the volumes the model expects",
            ) from None
    img = data[model.image_key]
    affine = getattr(img, "affine", None)
    if affine is None:
        raise MedTorchInputError("the model's preprocessing lost the image's position (no affine)",
                                 "keep MetaTensor outputs in the bundle's preprocessing")
    affine = torch.as_tensor(affine, dtype=torch.float64).clone()
    x = torch.as_tensor(img.as_tensor() if hasattr(img, "as_tensor") else img).float()
    del data, img
    if x.ndim != 4:
        raise MedTorchInputError(f"the preprocessed image has shape {tuple(x.shape)}, not [C, x, y, z]",
                                 "use a 3D model with channel-first preprocessing")
    if model.num_channels is not None and x.shape[0] != model.num_channels:
        raise MedTorchInputError(
            f"after preprocessing the image has {x.shape[0]} channel(s) but the model takes {model.num_channels}",
            "check the number of input volumes and the bundle's preprocessing",
        )
    t_pre = time.perf_counter() - t0

    full_shape = tuple(int(s) for s in x.shape[1:])
    full_affine = affine.clone()
    box = None
    roi_pref = roi_size if roi_size is not None else model.roi_size
    if crop_foreground:
        box = _foreground_box(x, margin=4, divisor=16)
        if box is not None:
            x = x[(slice(None), *box)].contiguous()
            shift = torch.tensor([float(s.start) for s in box] + [1.0], dtype=torch.float64)
            affine[:, 3] = affine @ shift
            # the window never needs to be larger than the cropped image
            fitted = _fit_roi(None, x.shape[1:])
            roi_pref = tuple(min(a, b) for a, b in zip(_fit_roi(roi_pref, x.shape[1:]), fitted)) if roi_pref else fitted
    roi = _fit_roi(roi_pref, x.shape[1:])
    ov = float(overlap if overlap is not None else (model.overlap if model.overlap is not None else 0.25))
    swb = int(sw_batch_size or model.sw_batch_size or 1)
    flips = flip_axes_for_tta(tta)
    n_out = len(model.output_names) or None
    check_fits(_estimate_bytes(x.shape[0], n_out or 4, x.shape[1:], roi, swb, len(flips)),
               "running the model", None, memory_budget)
    agg_device = dev
    if dev.type == "cuda":
        try:
            check_fits(_estimate_bytes(x.shape[0], n_out or 4, x.shape[1:], roi, swb, len(flips)),
                       "running the model", dev, memory_budget)
        except MedTorchInputError:
            agg_device = torch.device("cpu")  # windows on the GPU, the whole-image maps in host memory

    total = _num_windows(x.shape[1:], roi, ov) * len(flips)
    done = [0]
    net = model.network
    channels_last = _use_channels_last(net, dev, int(np.prod(roi)) * swb if channels_last is None
                                       else (CHANNELS_LAST_MIN_VOXELS if channels_last else 0))
    if isinstance(net, torch.nn.Module) and not isinstance(net, torch.jit.ScriptModule):
        net.to(memory_format=torch.channels_last_3d if channels_last else torch.contiguous_format)

    def predictor(window: torch.Tensor) -> torch.Tensor:
        report(progress, cancel, 0.05 + 0.85 * done[0] / max(total, 1), f"window {done[0] + 1} of {total}")
        if channels_last:
            window = window.contiguous(memory_format=torch.channels_last_3d)
        with autocast_context(dev, enabled=amp or cpu_bf16, allow_cpu=cpu_bf16):
            y = net(window)
        if isinstance(y, Mapping):
            y = next(iter(y.values()))
        if isinstance(y, (list, tuple)):  # deep supervision: the full-resolution head comes first
            y = y[0]
        done[0] += int(window.shape[0])
        return y.float()

    mode = model.sw_mode or "constant"
    acc: torch.Tensor | None = None
    t1 = time.perf_counter()
    hooks = _cancel_hooks(net, cancel)
    with torch.inference_mode(), _removing(hooks):
        for flip in flips:
            xin = x if not flip else torch.flip(x, [a - 1 for a in flip])
            try:
                out = sliding_window_inference(xin[None], roi, swb, predictor, overlap=ov, mode=mode,
                                               sw_device=dev, device=agg_device)
            except (RuntimeError, ValueError) as exc:
                if cancel is not None and cancel.cancelled:
                    raise
                lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
                key = [ln for ln in lines if "channels" in ln or "size mismatch" in ln or "shape" in ln]
                text = (key[-1] if key else (lines[0] if lines else type(exc).__name__))[:240]
                if key:
                    raise MedTorchInputError(
                        f"the network failed on the input ({text})",
                        f"check the number of input volumes (the model may need {model.num_channels or 'another number of'} "
                        "channels) and the window size",
                    ) from None
                raise
            out = torch.as_tensor(out.as_tensor() if hasattr(out, "as_tensor") else out)[0]
            if flip:
                out = torch.flip(out, [a - 1 for a in flip])
            if len(flips) > 1:
                out = torch.softmax(out, dim=0) if model.output_mode == "softmax" else torch.sigmoid(out)
            if acc is None:
                acc = out
            else:
                acc += out
            del out
        assert acc is not None
        t_net = time.perf_counter() - t1
        report(progress, cancel, 0.92, "discretising")
        if len(flips) > 1:
            acc /= len(flips)
        decoder = _LabelDecoder(model, int(acc.shape[0]), probabilities=len(flips) > 1, threshold=threshold,
                                label_convention=label_convention)
        if output_interpolation == "nearest":
            lab_net = decoder(acc).cpu().numpy()
            del acc
            if box is not None:  # back into the uncropped network grid (cheap: integers)
                full = np.zeros(full_shape, dtype=lab_net.dtype)
                full[box] = lab_net
                lab_net, affine = full, full_affine
            net_size = list(_network_grid(affine, lab_net.shape).size)
            report(progress, cancel, 0.95, "mapping back to the input grid")
            label = label_volume_from_network_grid(lab_net, affine, target, cancel=cancel)
        elif output_interpolation == "linear":
            net_size = list(_network_grid(affine, acc.shape[1:]).size)
            report(progress, cancel, 0.95, "mapping back to the input grid")
            label = _labels_by_slabs(acc, affine, target, decoder, SubProgress(progress, 0.95, 1.0), cancel)
            del acc
        else:
            raise MedTorchInputError(f"unknown output interpolation {output_interpolation!r}", "use 'nearest' or 'linear'")
        labels, convention = decoder.labels, decoder.convention
    extra = {
        "labels": labels,
        "label_convention": convention,
        "output_mode": model.output_mode,
        "roi_size": list(roi),
        "overlap": ov,
        "sw_batch_size": swb,
        "tta_flips": [list(f) for f in flips],
        "network_grid": {"size": net_size},
        "output_interpolation": output_interpolation,
        "cropped_to_foreground": box is not None,
        "windows": total,
        "amp": bool(amp and dev.type == "cuda"),
        "cpu_bf16": bool(cpu_bf16 and dev.type == "cpu"),
        "channels_last": channels_last,
        "seconds": {"preprocess": round(t_pre, 3), "network": round(t_net, 3)},
    }
    return label, extra


class _LabelDecoder:
    """Turns class scores ``[C, ...]`` (logits, or probabilities after TTA) into labels ``[...]``.

    Softmax models: argmax (BraTS classes named NCR/ED/ET get the convention's values).
    Sigmoid models: ``> threshold`` per channel; TC/WT/ET regions are composed into BraTS
    labels, other channels give label ``c + 1`` (later channels win where they overlap).
    """

    def __init__(self, model: LoadedModel, n_out: int, *, probabilities: bool, threshold: float,
                 label_convention: str) -> None:
        self.mode = model.output_mode
        self.n_out = n_out
        self.probabilities = probabilities
        self.threshold = float(threshold)
        if not 0.0 < self.threshold < 1.0:
            raise MedTorchInputError(f"the probability threshold must be between 0 and 1, got {threshold}",
                                     "use e.g. 0.5")
        names = dict(model.output_names) if model.output_names else {i: f"class {i}" for i in range(n_out)}
        conv: LabelConvention | None = _resolve_convention(label_convention, model)
        self.regions = _brats_region_channels(names) if self.mode == "sigmoid" and n_out >= 3 else None
        self.classes = (_brats_class_channels(names) if self.mode == "softmax" and n_out > 1
                        and label_convention != "none" else None)
        self.remap: torch.Tensor | None = None
        if self.regions is not None:
            values = BRATS_LABELS[conv]  # type: ignore[index]
            self.labels = {values[c]: BRATS_CLASS_NAMES[c] for c in ("NCR", "ED", "ET")}
        elif self.classes is not None:
            values = BRATS_LABELS[conv]  # type: ignore[index]
            remap = torch.arange(max(n_out, 5), dtype=torch.uint8)
            for c, ch in self.classes.items():
                remap[ch] = values[c]
            self.remap = remap
            self.labels = {values[c]: BRATS_CLASS_NAMES[c] for c in ("NCR", "ED", "ET")}
        elif self.mode == "sigmoid":
            self.labels = {c + 1: names.get(c, f"class {c}") for c in range(n_out)}
            conv = None
        elif n_out == 1:
            self.labels = {1: names.get(0, "foreground")}
            conv = None
        else:
            self.labels = {i: names.get(i, f"class {i}") for i in range(1, n_out)}
            conv = None
            med = model.metadata.get("medtorch") if isinstance(model.metadata, Mapping) else None
            values = med.get("label_values") if isinstance(med, Mapping) else None
            if (isinstance(values, list) and len(values) == n_out and all(isinstance(v, int) and v >= 0 for v in values)
                    and values != list(range(n_out))):
                # a bundle trained on label values that were not 0..K-1 (e.g. 0/1/2/4)
                self.remap = torch.tensor(values, dtype=torch.int16 if max(values) > 255 else torch.uint8)
                self.labels = {int(values[i]): names.get(i, f"class {i}") for i in range(1, n_out)}
        self.convention = conv
        self.dtype = torch.uint8 if max(self.labels, default=0) <= 255 else torch.int16
        if self.remap is not None:
            self.remap = self.remap.to(self.dtype)

    def _cut(self, probabilities: bool) -> float:
        t = self.threshold
        return t if probabilities else math.log(t / (1.0 - t))

    def __call__(self, scores: torch.Tensor, probabilities: bool | None = None) -> torch.Tensor:
        probs = self.probabilities if probabilities is None else probabilities
        if self.mode == "sigmoid":
            on = scores > self._cut(probs)
            if self.regions is not None:
                values = BRATS_LABELS[self.convention]  # type: ignore[index]
                out = torch.zeros(scores.shape[1:], dtype=self.dtype, device=scores.device)
                out[on[self.regions["WT"]]] = values["ED"]
                out[on[self.regions["TC"]]] = values["NCR"]
                out[on[self.regions["ET"]]] = values["ET"]
                return out
            out = torch.zeros(scores.shape[1:], dtype=self.dtype, device=scores.device)
            for c in range(self.n_out):
                out[on[c]] = c + 1
            return out
        if self.n_out == 1:
            return (scores[0] > self._cut(probs)).to(self.dtype)
        lab = torch.argmax(scores, dim=0)
        if self.remap is not None:
            return self.remap.to(lab.device)[lab]
        return lab.to(self.dtype)

    def activate(self, scores: torch.Tensor) -> torch.Tensor:
        """Probabilities from logits, in place where possible."""
        if self.probabilities:
            return scores
        if self.mode == "sigmoid" or self.n_out == 1:
            return scores.sigmoid_()
        return torch.softmax(scores, dim=0)


#: Working memory of one slab of :func:`_labels_by_slabs` (bytes).
_SLAB_BYTES = 64 * 1024**2


def _labels_by_slabs(scores: torch.Tensor, affine_ras: Any, target: Geometry, decoder: _LabelDecoder,
                     progress: ProgressCallback | None, cancel: CancelToken | None) -> Volume:
    """Interpolate class probabilities linearly onto ``target`` one slab of slices at a time and
    discretise each slab at once: as smooth as resampling the class maps (what MONAI's
    ``Invertd`` does before the argmax), but only one slab of float maps exists at a time."""
    from medtorch.resample import reference_grid, sample

    probs = decoder.activate(scores)
    grid = _network_grid(affine_ras, probs.shape[1:])
    moving = probs.permute(0, 3, 2, 1)  # [C, i, j, k] -> [C, k, j, i] (= [C, z, y, x])
    out = np.zeros(target.shape_zyx, dtype=np.uint8 if decoder.dtype == torch.uint8 else np.int16)
    per_slice = target.size[0] * target.size[1] * (probs.shape[0] * 4 * 2 + 3 * 4 * 2)
    step = max(1, min(target.size[2], _SLAB_BYTES // max(per_slice, 1)))
    for k0 in range(0, target.size[2], step):
        k1 = min(k0 + step, target.size[2])
        report(progress, cancel, k0 / target.size[2], "mapping back to the input grid")
        pts = reference_grid(target, probs.device, torch.float32, (k0, k1))
        vals = sample(moving, pts, grid, "linear", 0.0)  # [C, nk, J, I]; 0 outside: background
        out[k0:k1] = decoder(vals, probabilities=True).cpu().numpy()
    return Volume(out, target, "label")


def _resolve_convention(choice: str, model: LoadedModel) -> LabelConvention:
    if choice in ("brats2021", "brats2023"):
        return choice  # type: ignore[return-value]
    if choice not in ("auto", "none", None):
        raise MedTorchInputError(f"unknown label convention {choice!r}", "use auto, brats2021 or brats2023")
    if model.label_convention in ("brats2021", "brats2023"):
        return model.label_convention  # type: ignore[return-value]
    return "brats2021"


def _run_nnunet(model: LoadedModel, volumes: list[Volume], overlap: float | None, tta: Any,
                progress: ProgressCallback | None, cancel: CancelToken | None) -> tuple[np.ndarray, dict[int, str]]:
    """nnU-Net's own preprocessing, sliding window and export, on arrays (no files)."""
    predictor = model.nnunet
    predictor.use_mirroring = bool(tta)
    if overlap is not None:
        predictor.tile_step_size = max(1.0 - float(overlap), 0.05)
    report(progress, cancel, 0.0, "nnU-Net prediction")
    img = np.stack([np.asarray(v.array, dtype=np.float32) for v in volumes])  # [c, z, y, x] as nnU-Net reads it
    props = {"spacing": [float(s) for s in volumes[0].spacing[::-1]]}
    seg = predictor.predict_single_npy_array(img, props, None, None, False)
    report(progress, cancel, 1.0, "nnU-Net done")
    seg = np.asarray(seg)
    dtype = np.uint8 if seg.max(initial=0) <= 255 else np.int16
    labels = {v: n for v, n in model.output_names.items() if v > 0}
    return np.ascontiguousarray(seg.astype(dtype)), labels
