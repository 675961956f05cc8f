"""Fuse two volumes: bring the moving one onto the fixed grid, prepare intensities, fuse, score.

:func:`fuse_volumes` is what the command line (``medtorch fuse``), the Slicer operation
(``fuse``) and the evaluation report run:

1. **geometry** -- the output has exactly the fixed volume's grid. The moving volume is
   resampled onto it (linear) through ``transform`` (ITK convention: fixed point -> moving
   point; a 4x4 LPS matrix, a displacement field or a list of them). Volumes on one grid
   need no transform. Volumes on different grids with no transform are refused unless
   ``assume_aligned`` says they already share physical space (then the identity is used);
2. **intensities** -- each source to [0, 1] by its modality (:mod:`medtorch.fusion.prepare`:
   CT windowed, the rest percentile-normalised); outside the moving volume's overlap the
   moving source is 0;
3. **colour** -- with ``color_map``, the functional source (PET/SPECT) goes through the
   colour map to RGB and YCbCr, its luminance is fused, and the result goes back to RGB
   (:mod:`medtorch.fusion.color`); a colour map for a pair without a functional image is
   refused;
4. **fusion** by ``method`` (:mod:`medtorch.fusion.methods`); output float32 in [0, 1];
5. optional **metrics** of the fused volume against the two prepared sources
   (:mod:`medtorch.fusion.metrics`).

**2D images** (PNG, JPEG, TIFF, BMP, 2D NIfTI/NRRD: one-slice volumes, see
:mod:`medtorch.io.images`) go through the same steps and give a one-slice (2D) output:
two 2D images of one size are fused pixel for pixel (on one grid, or with
``assume_aligned``); a 2D image and a 3D volume are refused. Display images (integer pixels
read from an image file) are scaled by their full scale (``/ 255``) under ``normalization
= 'auto'`` -- no window, no percentiles: they are display values already. **RGB inputs**: an
RGB image whose channels are equal is grey; a colour one (a pseudo-colour PET/SPECT image,
as the Harvard atlas pairs are stored) is fused by the YCbCr protocol with its *own*
colours: its luminance Y is fused with the other (grey) source and its Cb, Cr are kept
(no colour map is applied; :mod:`medtorch.fusion.color`).

Inputs are never modified; everything random (the CNN) is seeded and the seed recorded.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from medtorch.errors import MedTorchInputError
from medtorch.ops.fusion import FunctionalSide
from medtorch.progress import CancelToken, ProgressCallback, SubProgress, report
from medtorch.volume import Volume, check_volume, is_single_slice

__all__ = ["FUSION_BYTES_PER_VOXEL", "FusionResult", "estimate_fusion_bytes", "fuse_volumes", "resolve_functional"]


#: Peak working memory of each method per voxel of the output grid (bytes), rounded up from
#: the peaks measured on 256^3 volumes by ``benchmarks/fusion`` (resident memory above the
#: level before the call).
FUSION_BYTES_PER_VOXEL = {"average": 8, "max": 8, "pca": 40, "dwt": 32, "laplacian": 28, "gff": 64, "gradient": 160, "cnn": 32}
#: What the pipeline holds beside the method: the prepared sources (numpy and torch), the
#: resampled moving volume, the overlap mask and the output.
PIPELINE_BYTES_PER_VOXEL = 28
#: Extra for colour fusion: the RGB and YCbCr images of the functional source and the RGB output.
COLOR_BYTES_PER_VOXEL = 40


def estimate_fusion_bytes(num_voxels: int, method: str, color: bool = False) -> int:
    """Bytes :func:`fuse_volumes` needs for ``num_voxels`` output voxels (metrics not included)."""
    per = FUSION_BYTES_PER_VOXEL.get(method, 64) + PIPELINE_BYTES_PER_VOXEL + (COLOR_BYTES_PER_VOXEL if color else 0)
    return int(num_voxels) * per


@dataclass
class FusionResult:
    """Outputs of :func:`fuse_volumes` (all on the fixed volume's grid).

    ``fused``: float32 scalar volume in [0, 1] (for colour fusion: the fused luminance).
    ``rgb``: colour fusion's RGB vector volume (uint8, 3 components), else None.
    ``moving_resampled``: the moving volume's own intensities on the fixed grid (float32,
    0 outside the overlap).
    ``fixed_prepared`` / ``moving_prepared``: the two sources as fused, in [0, 1] (for
    colour fusion the functional source's luminance ``Y``). ``overlap_fraction``: share of
    fixed voxels the moving volume covers. ``info``: parameters, modalities, normalisation,
    seed, timings. ``metrics``: ``{name: value}`` when asked for.
    """

    fused: Volume
    fixed_prepared: Volume
    moving_prepared: Volume
    overlap_fraction: float
    moving_resampled: Volume | None = None
    rgb: Volume | None = None
    info: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] | None = None


def resolve_functional(fixed_modality: str, moving_modality: str, functional: bool | str | None,
                       color_map: str | None) -> FunctionalSide | None:
    """Which source is the functional image for colour fusion (None: no colour fusion).

    ``functional``: True (the moving volume), 'fixed', 'moving', False, or None (from the
    modalities). A colour map without a functional image is an error.
    """
    from medtorch.fusion.prepare import is_functional

    if color_map is None or str(color_map).strip() == "":
        return None
    side: FunctionalSide | None
    if functional is True or functional == "moving":
        side = "moving"
    elif functional == "fixed":
        side = "fixed"
    elif functional in (None, "auto"):
        side = "moving" if is_functional(moving_modality) else ("fixed" if is_functional(fixed_modality) else None)
    elif functional is False or functional == "none":
        side = None
    else:
        raise MedTorchInputError(f"functional must be 'fixed', 'moving', true or false, got {functional!r}",
                                 "say which volume is the PET/SPECT")
    if side is None:
        raise MedTorchInputError(
            f"a colour map ({color_map}) was asked for, but neither volume is a functional image "
            f"(fixed: {fixed_modality}, moving: {moving_modality})",
            "leave the colour map out for anatomical pairs (CT, MRI); for PET or SPECT set the moving "
            "volume's modality (--moving-modality PT or NM) or mark it functional",
        )
    return side


def _resample_moving(fixed: Volume, moving: Volume, transform: Any, assume_aligned: bool, device: torch.device,
                     progress: ProgressCallback | None, cancel: CancelToken | None) -> tuple[np.ndarray, np.ndarray, str]:
    """Moving voxels on the fixed grid, the overlap mask and how they got there."""
    from medtorch.resample import resample

    same_grid = fixed.geometry.isclose(moving.geometry, atol=1e-4)
    if transform is None and same_grid:
        return np.asarray(moving.array, dtype=np.float32), np.ones(fixed.geometry.shape_zyx, bool), "same grid"
    if transform is None and assume_aligned and is_single_slice(fixed.geometry) and is_single_slice(moving.geometry) \
            and tuple(fixed.size) == tuple(moving.size):
        # two 2D images of one size: pixel for pixel (their origins and spacings are often
        # arbitrary, e.g. PNG files that carry none)
        return np.asarray(moving.array, dtype=np.float32), np.ones(fixed.geometry.shape_zyx, bool), \
            "pixel for pixel (2D images of one size, assumed aligned)"
    if transform is None and not assume_aligned:
        raise MedTorchInputError(
            f"the fixed and moving volumes have different geometry (size {fixed.size} vs {moving.size}, spacing "
            f"{tuple(round(float(v), 4) for v in fixed.spacing)} vs {tuple(round(float(v), 4) for v in moving.spacing)}) and no transform was given",
            "give the transform between them (e.g. from registration: --transform), or say that they already share "
            "physical space (--assume-aligned) to resample the moving volume as it lies",
        )
    moved = resample(moving, fixed.geometry, transform, interpolation="linear", default_value=0.0, device=device,
                     progress=SubProgress(progress, 0.0, 0.7, "resampling"), cancel=cancel)
    support = resample(moving.with_array(np.ones(moving.geometry.shape_zyx, dtype=np.float32), "scalar"), fixed.geometry,
                       transform, interpolation="linear", default_value=0.0, device=device,
                       progress=SubProgress(progress, 0.7, 1.0, "overlap"), cancel=cancel)
    inside = support.array > 0.5
    how = "resampled through the transform" if transform is not None else "resampled as it lies (assumed aligned)"
    keep = inside[..., None] if moved.array.ndim == 4 else inside
    return np.where(keep, moved.array, 0.0).astype(np.float32), inside, how


def _colour_kind(vol: Volume, name: str) -> str:
    """'scalar', 'grey' (an RGB image whose channels are equal) or 'colour' (RGB)."""
    from medtorch.io.images import is_grey_rgb

    if vol.kind != "vector":
        return "scalar"
    if vol.num_components not in (3, 4):
        raise MedTorchInputError(
            f"the {name} has {vol.num_components} components per voxel",
            "give a scalar volume or an RGB colour image (3 components)")
    return "grey" if is_grey_rgb(vol) else "colour"


def _display_scale(vol: Volume) -> float | None:
    """1 / full scale for display values: a 2D image read from a PNG/JPEG/... file, or an RGB
    colour volume (e.g. a PNG loaded in Slicer), of unsigned integer type; else None."""
    arr = vol.array
    if (vol.metadata.get("image_format") or vol.kind == "vector") and arr.dtype.kind == "u":
        return 1.0 / float(np.iinfo(arr.dtype).max)
    return None


def _prepare_source(vol: Volume, arr: np.ndarray, kind: str, modality: str, normalization: str,
                    ct_window: Any, lo_p: float, hi_p: float, mask: np.ndarray | None
                    ) -> tuple[np.ndarray, np.ndarray | None, str]:
    """One source in [0, 1] (colour images: the luminance Y) and, for colour, its Cb, Cr ``[2, ...]``."""
    from medtorch.fusion.color import rgb_to_ycbcr
    from medtorch.fusion.prepare import prepare_intensity

    scale = _display_scale(vol)
    if kind != "scalar":
        rgb = arr[..., :3].astype(np.float32)
        if scale is not None:
            rgb = rgb * np.float32(scale)
        how_scale = f"{vol.array.dtype} display image: values / {1 / scale:g}" if scale else "RGB values as they are"
        if kind == "grey":
            y = np.clip(rgb[..., 0], 0.0, 1.0)
            if mask is not None:
                y = np.where(mask, y, 0.0)
            return np.ascontiguousarray(y, np.float32), None, how_scale + " (grey: R = G = B)"
        ycc = rgb_to_ycbcr(torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.clip(rgb, 0.0, 1.0), -1, 0))))
        y = ycc[0].numpy()
        if mask is not None:
            y = np.where(mask, y, 0.0)
        return np.ascontiguousarray(y, np.float32), ycc[1:].numpy(), how_scale + "; colour: luminance Y fused (YCbCr)"
    if scale is not None and normalization == "auto":
        out = np.clip(arr.astype(np.float32) * np.float32(scale), 0.0, 1.0)
        if mask is not None:
            out = np.where(mask, out, 0.0)
        return np.ascontiguousarray(out, np.float32), None, f"{vol.array.dtype} display image: values / {1 / scale:g}"
    out, how = prepare_intensity(arr, modality, normalization, ct_window, lo_p, hi_p, mask=mask)  # type: ignore[arg-type]
    return out, None, how


def fuse_volumes(
    fixed: Volume,
    moving: Volume,
    method: str = "average",
    transform: Any = None,
    *,
    params: dict[str, Any] | None = None,
    fixed_modality: str = "auto",
    moving_modality: str = "auto",
    normalization: str = "auto",
    ct_window: str | tuple[float, float] = "bone",
    lower_percentile: float = 1.0,
    upper_percentile: float = 99.0,
    color_map: str | None = None,
    functional: bool | str | None = None,
    assume_aligned: bool = False,
    metrics: str | None = None,
    mi_unit: str = "bits",
    metric_set: str = "medtorch",
    device: str | torch.device | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> FusionResult:
    """Fuse ``moving`` into ``fixed``'s grid with ``method`` (see the module docstring).

    Args:
        method, params: a method of :data:`medtorch.fusion.methods.METHODS` and its
            parameters (unknown ones are refused).
        transform: ITK convention (fixed LPS point -> moving LPS point), or None.
        fixed_modality, moving_modality: ``auto`` (DICOM Modality, else other), CT, MR, PT, NM, OT.
        normalization: ``auto`` (by modality), ``percentile`` (all percentile) or ``none``
            (raw; only with ``average``, the output is then in the inputs' units).
        ct_window: CT window preset or ``(width, level)`` in HU.
        color_map: colour map for a functional source (hot, jet, rainbow, gray), or None.
        functional: which source is the PET/SPECT: 'fixed', 'moving'/True, or None (modalities).
        assume_aligned: resample volumes on different grids without a transform.
        metrics: None, ``'3d'`` or ``'slices'``: score the result (2D images: always in 2D).
        metric_set: ``'medtorch'`` or ``'cddfuse'`` (the evaluator's definitions,
            :func:`medtorch.fusion.metrics.fusion_metrics`).
        device: torch device (auto: ``$MEDTORCH_DEVICE``, CUDA, MPS, CPU).

    Raises:
        MedTorchInputError: bad volumes, different grids without a transform, no overlap,
            a colour map for a non-functional pair, unknown method or parameters.
    """
    from medtorch.device import select_device
    from medtorch.fusion.color import apply_color_map, rgb_to_ycbcr, ycbcr_to_rgb
    from medtorch.fusion.methods import check_params, fuse_tensors
    from medtorch.fusion.prepare import modality_of

    t0 = time.perf_counter()
    check_volume(fixed, "fixed volume", allow_2d=True, allow_vector=True)
    check_volume(moving, "moving volume", allow_2d=True, allow_vector=True)
    two_d = is_single_slice(fixed.geometry)
    if two_d != is_single_slice(moving.geometry):
        raise MedTorchInputError(
            f"one input is a 2D image and the other a 3D volume (fixed size {fixed.size}, moving {moving.size})",
            "fuse two 2D images or two volumes (pick the matching slice of the volume first)")
    kind_f, kind_m = _colour_kind(fixed, "fixed volume"), _colour_kind(moving, "moving volume")
    if kind_f == "colour" and kind_m == "colour":
        raise MedTorchInputError("both inputs are colour (RGB) images",
                                 "fuse a colour functional image (PET/SPECT) with a grey anatomical one")
    key = str(method).strip().lower()
    p = check_params(key, params)
    if normalization == "none" and key != "average":
        raise MedTorchInputError(f"raw intensities (normalization 'none') only make sense for 'average', not {key}",
                                 "use normalization 'auto' or 'percentile'")
    if normalization == "none" and "colour" in (kind_f, kind_m):
        raise MedTorchInputError("raw intensities (normalization 'none') cannot be used with a colour image",
                                 "use normalization 'auto'")
    mod_f, mod_m = modality_of(fixed, fixed_modality), modality_of(moving, moving_modality)
    own_colour: FunctionalSide | None = "fixed" if kind_f == "colour" else ("moving" if kind_m == "colour" else None)
    side = own_colour if own_colour is not None else resolve_functional(mod_f, mod_m, functional, color_map)
    dev = select_device(device)
    from medtorch.memory import check_fits

    check_fits(estimate_fusion_bytes(fixed.geometry.num_voxels, key, side is not None), f"fusing with {key}", dev)

    report(progress, cancel, 0.0, f"bringing the moving volume onto the fixed grid ({dev})")
    from medtorch.fusion.methods import cpu_threads

    with cpu_threads(1 if dev.type == "cpu" else None):  # short memory-bound ops: see methods.FUSION_THREADS_ENV
        moving_arr, inside, how = _resample_moving(fixed, moving, transform, assume_aligned, dev,
                                                   SubProgress(progress, 0.0, 0.25, "resampling"), cancel)
    overlap = float(inside.mean())
    if overlap == 0.0:
        raise MedTorchInputError(
            "the moving volume does not overlap the fixed volume at all",
            "check the transform (or the volumes' origins); align them roughly first, e.g. by registration",
        )
    t_resample = time.perf_counter() - t0

    report(progress, cancel, 0.27, "preparing intensities")
    a_np, chroma_a, how_a = _prepare_source(fixed, np.asarray(fixed.array), kind_f, mod_f, normalization, ct_window,
                                            lower_percentile, upper_percentile, None)
    b_np, chroma_b, how_b = _prepare_source(moving, moving_arr, kind_m, mod_m, normalization, ct_window,
                                            lower_percentile, upper_percentile, inside)
    a = torch.from_numpy(a_np).to(dev)
    b = torch.from_numpy(b_np).to(dev)
    chroma = None
    if own_colour is not None:
        chroma = torch.from_numpy(chroma_a if own_colour == "fixed" else chroma_b).to(dev)  # type: ignore[arg-type]
    elif side is not None:
        func = b if side == "moving" else a
        ycc = rgb_to_ycbcr(apply_color_map(func, str(color_map)))
        chroma = ycc[1:]
        if side == "moving":
            b = ycc[0].contiguous()
        else:
            a = ycc[0].contiguous()
    spacing_zyx = list(np.asarray(fixed.spacing, dtype=float)[::-1])
    t1 = time.perf_counter()
    fused_t, minfo = fuse_tensors(a, b, key, p, spacing_zyx, SubProgress(progress, 0.3, 0.9, key), cancel)
    t_fuse = time.perf_counter() - t1
    if normalization == "none":  # raw blend (the legacy 'average' of two raw volumes): no clipping
        fused_t = torch.lerp(a, b, float(p["weight"]))
    rgb_vol = None
    info: dict[str, Any] = {
        "operation": "fuse", "method": key, "params": {k: v for k, v in minfo.items() if k != "method"},
        "fixed_modality": mod_f, "moving_modality": mod_m, "fixed_intensity": how_a, "moving_intensity": how_b,
        "normalization": normalization, "moving_placement": how, "overlap_fraction": overlap, "device": str(dev),
        "output_range": "[0, 1]" if normalization != "none" else "input units",
    }
    if two_d:
        info["spatial_dims"] = 2
    if chroma is not None:
        rgb = ycbcr_to_rgb(torch.cat([fused_t.unsqueeze(0), chroma.to(fused_t.dtype)], dim=0)).clamp_(0.0, 1.0)
        rgb_u8 = (rgb * 255.0).round_().to(torch.uint8).movedim(0, -1).cpu().numpy()
        info.update({"color_map": str(color_map) if own_colour is None else "the input's own colours (RGB image)",
                     "functional": side, "rgb_range": "uint8 0..255 per channel (RGB)",
                     "fused_is": "luminance Y of the colour fusion (Cb, Cr of the colour source kept)"})
        rgb_vol = Volume(np.ascontiguousarray(rgb_u8), fixed.geometry, "vector", _meta(info, "rgb"))
    fused_np = fused_t.detach().cpu().numpy().astype(np.float32)
    a_out = a.detach().cpu().numpy().astype(np.float32)
    b_out = b.detach().cpu().numpy().astype(np.float32)
    scores = None
    if metrics:
        from medtorch.fusion.metrics import fusion_metrics

        report(progress, cancel, 0.92, f"scoring ({metrics})")
        rng = (0.0, 1.0) if normalization != "none" else (float(min(a_out.min(), b_out.min())),
                                                          float(max(a_out.max(), b_out.max(), 1e-6)))
        mode = "2d" if two_d else metrics
        scores = fusion_metrics(a_out, b_out, fused_np, mode=mode, mi_unit=mi_unit,  # type: ignore[arg-type]
                                data_range=rng, metric_set=metric_set)
        info["metrics_mode"] = mode
        info["metric_set"] = metric_set
        info["mi_unit"] = mi_unit
    info["seconds"] = {"resample": round(t_resample, 4), "fuse": round(t_fuse, 4),
                       "total": round(time.perf_counter() - t0, 4)}
    report(progress, cancel, 1.0, "fusion done")
    return FusionResult(
        fused=Volume(fused_np, fixed.geometry, "scalar", _meta(info, "fused")),
        fixed_prepared=Volume(a_out, fixed.geometry, "scalar", {"operation": "fusion source (fixed)", "how": how_a}),
        moving_prepared=Volume(b_out, fixed.geometry, "scalar", {"operation": "fusion source (moving)", "how": how_b}),
        overlap_fraction=overlap,
        moving_resampled=Volume(moving_arr, fixed.geometry, "vector" if moving_arr.ndim == 4 else "scalar",
                                {"operation": "resample", "how": how}),
        rgb=rgb_vol,
        info=info,
        metrics=scores,
    )


def _meta(info: dict[str, Any], what: str) -> dict[str, Any]:
    """Flat string-friendly metadata for an output volume (written into NRRD headers)."""
    import json

    meta: dict[str, Any] = {"operation": f"fuse ({what})", "method": info["method"],
                            "output_range": info.get("rgb_range") if what == "rgb" else info["output_range"],
                            "parameters": json.dumps(info["params"], default=str, sort_keys=True)}
    if "seed" in info["params"]:
        meta["seed"] = str(info["params"]["seed"])
    if info.get("spatial_dims") == 2:
        meta["spatial_dims"] = "2"
    return meta
