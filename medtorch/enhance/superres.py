"""Super-resolution: through-plane (thick slices) and isotropic, self-supervised or interpolated.

**Output grid.** Upsampling axis ``a`` (spacing ``s``, ``n`` voxels) by a factor ``f`` gives
``round(n f)`` voxels of spacing ``n s / round(n f)`` (``s / f`` for integer ``f``) that
tile the *same physical extent* as the input: the first output slice centre sits at the
input's continuous index ``-(f - 1) / (2 f)`` along ``a`` (half an output slice inside the
input's first slice edge), so the ``f`` output slices of each input slice sit symmetrically
around its centre. Origin and direction are moved accordingly; the other axes are kept.
:func:`output_geometry` computes it; the tests check it against physical positions.

**Methods** (:data:`SR_METHODS`):

* ``linear``, ``bspline`` (cubic B-spline), ``sinc`` (Hamming-windowed sinc, radius 3):
  SimpleITK interpolation onto the output grid (edge voxels extrapolated by nearest).
* ``selfsup``: self-supervised through-plane SR (SMORE family). A 2D model
  (:class:`~medtorch.enhance.srnet.AxisSRNet`) learns, from the volume's own in-plane
  slices degraded along one in-plane direction with the slice profile and factor, to
  restore the thin lines; it is applied to the planes containing the thick axis (two
  orientations, averaged). The slice profile is a Gaussian whose FWHM is given, or, on
  the blind path, a Gaussian or box whose shape and FWHM are estimated from the volume
  (:func:`~medtorch.enhance.slice_profile.estimate_slice_profile`).
  For isotropic upsampling (``axis="all"``) the model learns ``f s -> s`` from the volume
  degraded by ``f`` and is applied along each axis in turn (scale invariance, as in
  zero-shot SR). The trained model and its metadata can be saved and reused
  (:mod:`medtorch.enhance.weights`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, get_args

import numpy as np
import torch

from medtorch.errors import MedTorchInputError
from medtorch.ops.enhance import SrMethod
from medtorch.progress import CancelToken, ProgressCallback, SubProgress, report, run_sitk_filter
from medtorch.volume import Geometry, Volume, check_volume

__all__ = [
    "SR_METHODS",
    "SuperResolutionModel",
    "factor_guess",
    "factors_from_spacing",
    "output_geometry",
    "resolve_axis",
    "superres",
]

#: The methods (defined by the ``superres`` operation's request, :data:`medtorch.ops.enhance.SrMethod`).
SR_METHODS: tuple[str, ...] = get_args(SrMethod)
#: Spacing ratio (largest / smallest) under which a volume counts as isotropic.
ISOTROPIC_RATIO = 1.25
_AXIS_NAMES = {"i": 0, "j": 1, "k": 2, "x": 0, "y": 1, "z": 2, "0": 0, "1": 1, "2": 2}


# -- grids --------------------------------------------------------------------------------------


def output_geometry(geometry: Geometry, factors: Sequence[float] | np.ndarray) -> Geometry:
    """The super-resolved grid: see the module docstring. ``factors`` per axis (i, j, k), >= 1."""
    f = np.asarray([float(v) for v in factors], dtype=np.float64)
    if f.shape != (3,) or not np.all(np.isfinite(f)):
        raise MedTorchInputError(f"give one finite factor per axis (i, j, k), got {tuple(factors)}",
                                 "use e.g. (1, 1, 4)")
    if np.any(f < 1.0 - 1e-9):
        raise MedTorchInputError(f"an upsampling factor below 1 was asked for ({tuple(round(float(v), 4) for v in f)})",
                                 "super-resolution only refines: use factors >= 1 (downsample with a resampling tool)")
    size_in = np.asarray(geometry.size, dtype=np.float64)
    size_out = np.maximum(np.round(size_in * f), 1).astype(int)
    spacing_out = geometry.spacing * size_in / size_out
    # first centre: half an output voxel inside the input's first voxel edge (index -0.5)
    start_index = -0.5 + 0.5 * spacing_out / geometry.spacing
    origin = geometry.origin + geometry.direction @ (start_index * geometry.spacing)
    return Geometry(tuple(int(s) for s in size_out), origin, spacing_out, geometry.direction)


def factors_from_spacing(geometry: Geometry, spacing: Sequence[float]) -> np.ndarray:
    """Per-axis factors ``s_in / s_out`` for a target spacing (mm, i j k)."""
    s = np.asarray([float(v) for v in spacing], dtype=np.float64)
    if s.shape != (3,) or not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise MedTorchInputError(f"the target spacing {tuple(spacing)} is not three positive numbers",
                                 "give the output spacing in mm for i, j and k, e.g. 1,1,1")
    return geometry.spacing / s


def factor_guess(volume: Volume, factor: float | None, spacing: Sequence[float] | None) -> int:
    """The integer factor that sets the default training length (4 when it cannot be told)."""
    if factor:
        return max(1, math.ceil(float(factor) - 1e-6))
    if spacing is not None:
        try:
            return max(1, math.ceil(float(np.max(factors_from_spacing(volume.geometry, spacing))) - 1e-6))
        except MedTorchInputError:  # bad spacings are reported by superres itself
            return 4
    return 4


def resolve_axis(geometry: Geometry, axis: str | int = "auto") -> int | None:
    """The axis (0 = i, 1 = j, 2 = k) to super-resolve, or ``None`` for all three (``"all"``).

    ``auto`` is the axis of the largest spacing; it is an error for a volume whose spacing
    is (nearly) isotropic: there is no thick axis to find.
    """
    if isinstance(axis, (int, np.integer)):
        if not 0 <= int(axis) <= 2:
            raise MedTorchInputError(f"axis {axis} does not exist", "use 0, 1 or 2 (i, j, k), auto or all")
        return int(axis)
    key = str(axis).strip().lower()
    if key == "all":
        return None
    if key in _AXIS_NAMES:
        return _AXIS_NAMES[key]
    if key != "auto":
        raise MedTorchInputError(f"unknown axis {axis!r}", "use auto, i, j, k or all")
    sp = geometry.spacing
    if sp.max() / sp.min() < ISOTROPIC_RATIO:
        raise MedTorchInputError(
            f"the volume is (nearly) isotropic (spacing {tuple(round(float(v), 3) for v in sp)} mm): it has no "
            "thick-slice axis "
            "for through-plane super-resolution",
            "for isotropic upsampling choose the axis all (command line: --axis all; a study's superres step: "
            "axis: all), or name the axis to refine (i, j or k)",
        )
    return int(np.argmax(sp))


def _array_axis(ijk_axis: int) -> int:
    """Array axis ([z, y, x]) of an ITK axis (i, j, k)."""
    return 2 - int(ijk_axis)


# -- interpolation ----------------------------------------------------------------------------


def _sitk_interpolator(method: str) -> int:
    import SimpleITK as sitk

    return {"linear": sitk.sitkLinear, "bspline": sitk.sitkBSpline,
            "sinc": sitk.sitkHammingWindowedSinc}[method]


def interpolate(volume: Volume, geometry: Geometry, method: str = "bspline",
                progress: ProgressCallback | None = None, cancel: CancelToken | None = None) -> Volume:
    """Resample ``volume`` onto ``geometry`` with SimpleITK (float32 output)."""
    import SimpleITK as sitk

    if method not in ("linear", "bspline", "sinc"):
        raise MedTorchInputError(f"unknown interpolation {method!r}", "use linear, bspline or sinc")
    ref = sitk.Image([int(s) for s in geometry.size], sitk.sitkFloat32)
    ref.SetOrigin(tuple(float(v) for v in geometry.origin))
    ref.SetSpacing(tuple(float(v) for v in geometry.spacing))
    ref.SetDirection(tuple(float(v) for v in geometry.direction.reshape(-1)))
    filt = sitk.ResampleImageFilter()
    filt.SetReferenceImage(ref)
    filt.SetInterpolator(_sitk_interpolator(method))
    filt.SetOutputPixelType(sitk.sitkFloat32)
    filt.SetUseNearestNeighborExtrapolator(True)
    img = sitk.Cast(volume.to_sitk(), sitk.sitkFloat32)
    out = run_sitk_filter(filt, img, progress=progress, cancel=cancel, message=f"{method} interpolation")
    return Volume(sitk.GetArrayFromImage(out).astype(np.float32, copy=False), geometry, "scalar")


# -- self-supervised ----------------------------------------------------------------------------------


class SuperResolutionModel:
    """A trained :class:`~medtorch.enhance.srnet.AxisSRNet` with what is needed to reuse it.

    ``metadata``: method, factor, FWHM (mm and thick voxels), spacings, intensity scale,
    seed, training log. :meth:`apply` runs it on a (similar) volume without retraining.
    """

    def __init__(self, net: torch.nn.Module, metadata: dict[str, Any]) -> None:
        self.net = net
        self.metadata = dict(metadata)

    @property
    def factor(self) -> int:
        return int(self.metadata["factor"])

    def apply(self, volume: Volume, axis: str | int = "auto", progress: ProgressCallback | None = None,
              cancel: CancelToken | None = None, runner: Any = None) -> Volume:
        """Super-resolve ``volume`` with this model (through-plane, or ``axis='all'``)."""
        check_volume(volume, "the volume to super-resolve")
        ax = resolve_axis(volume.geometry, axis)
        lo, hi = _intensity_scale(volume.array)  # the volume's own robust range, as in training
        x = torch.from_numpy(np.ascontiguousarray((volume.array.astype(np.float32) - lo) / (hi - lo)))
        axes = [ax] if ax is not None else [2, 1, 0]
        geom = volume.geometry
        for n, a in enumerate(axes):
            sub = SubProgress(progress, n / len(axes), (n + 1) / len(axes), f"axis {'ijk'[a]}")
            x = _apply_axis(self.net, x, _array_axis(a), self.factor, sub, cancel, runner)
            f = [1.0, 1.0, 1.0]
            f[a] = float(self.factor)
            geom = output_geometry(geom, f)
        out = (x.numpy() * (hi - lo) + lo).astype(np.float32)
        meta = dict(volume.metadata)
        meta.update({"operation": "superres", "method": "selfsup", **{k: v for k, v in self.metadata.items()
                                                                       if k in ("factor", "fwhm_mm", "seed")}})
        return Volume(out, geom, "scalar", meta)


def _intensity_scale(array: np.ndarray, given: Sequence[float] | None = None) -> tuple[float, float]:
    if given is not None:
        return float(given[0]), float(given[1])
    a = np.asarray(array)
    sample = a.reshape(-1)[:: max(1, a.size // 2_000_000)].astype(np.float64)
    lo, hi = float(np.percentile(sample, 0.5)), float(np.percentile(sample, 99.5))
    if hi <= lo:
        lo, hi = float(sample.min()), float(sample.max())
    if hi <= lo:
        hi = lo + 1.0
    return lo, hi


def _apply_axis(net: torch.nn.Module, x: torch.Tensor, dim: int, factor: int, progress: ProgressCallback | None,
                cancel: CancelToken | None, runner: Any = None) -> torch.Tensor:
    """Upsample array axis ``dim`` of ``x [z, y, x]`` by ``factor``: mean of the two plane orientations."""
    from medtorch.enhance.srnet import apply_along_planes

    others = [d for d in range(3) if d != dim]
    result = None
    for n, keep in enumerate(others):
        stack = [d for d in others if d != keep][0]  # planes are stacked along this axis
        planes = x.permute(stack, keep, dim).contiguous()  # [S, H, W(thick)]
        sub = SubProgress(progress, n / 2, (n + 1) / 2, "planes")
        up = apply_along_planes(net, planes, progress=sub, cancel=cancel, runner=runner)
        # back to [z, y, x] order
        order = [stack, keep, dim]
        inverse = [order.index(d) for d in range(3)]
        up = up.permute(*inverse)
        result = up if result is None else result + up
    assert result is not None
    return (result / 2.0).contiguous()


def _training_pairs(x: torch.Tensor, dims_for_planes: Sequence[int], factor: int,
                    fwhm_voxels: float, spacing_zyx: np.ndarray, target_spacing: float, shape: str = "gaussian"):
    """Degraded/high-resolution plane pairs from the planes normal to each of ``dims_for_planes``.

    In each such plane both axes are thin; each one in turn is degraded (the other is
    the high-resolution "H" axis). Axes whose spacing differs from ``target_spacing`` by
    more than 10 % are first resampled to it (linear), so that training happens at the
    output resolution.
    """
    import torch.nn.functional as F

    from medtorch.enhance.slice_profile import degrade_along
    from medtorch.enhance.srnet import TrainingPairs

    highs, lows = [], []
    for normal in dims_for_planes:
        inplane = [d for d in range(3) if d != normal]
        for degrade in inplane:
            keep = [d for d in inplane if d != degrade][0]
            planes = x.permute(normal, keep, degrade).contiguous()  # [S, H, W]
            s = float(spacing_zyx[degrade])
            if abs(s - target_spacing) / target_spacing > 0.1:
                n_new = max(int(round(planes.shape[2] * s / target_spacing)), 4)
                planes = F.interpolate(planes[:, None], size=(planes.shape[1], n_new), mode="bilinear",
                                       align_corners=True)[:, 0]
            n = planes.shape[2] // factor * factor
            planes = planes[..., :n].contiguous()
            highs.append(planes)
            lows.append(degrade_along(planes, 2, factor, fwhm_voxels, shape))
    return TrainingPairs(highs, lows, factor)


def _foreground_planes(pairs: Any) -> Any:
    """Drop planes that hold almost no signal (air): they teach nothing."""
    from medtorch.enhance.srnet import TrainingPairs

    highs, lows = [], []
    for hi, lo in zip(pairs.high, pairs.low):
        energy = hi.reshape(hi.shape[0], -1).std(dim=1)
        keep = energy > 0.1 * energy.max()
        if keep.sum() >= 1:
            highs.append(hi[keep].contiguous())
            lows.append(lo[keep].contiguous())
    return TrainingPairs(highs, lows, pairs.factor) if highs else pairs


def train_selfsup_sr(volume: Volume, axis: int | None, factor: int, fwhm_mm: float | None = None,
                     config: Any = None, device: Any = "cpu", progress: ProgressCallback | None = None,
                     cancel: CancelToken | None = None, profile_shape: str = "gaussian") -> SuperResolutionModel:
    """Learn a through-plane (``axis`` i/j/k) or isotropic (``axis=None``) SR model from ``volume`` alone.

    ``profile_shape``: the slice profile's shape, ``gaussian`` or ``box`` (2D multi-slice
    acquisitions are close to a box), or ``auto``: the better-fitting of the two when the FWHM
    is estimated (a Gaussian when it is given). The two shapes fit a thick volume almost
    equally well, so ``auto`` gets the profile's width (second moment) right but its FWHM
    only as well as the shape is guessed; give the shape when it is known.
    """
    from medtorch.enhance.noise import estimate_noise
    from medtorch.enhance.slice_profile import PROFILE_SHAPES, estimate_slice_profile
    from medtorch.enhance.srnet import SRTrainConfig, default_iterations, train_axis_sr

    if profile_shape not in (*PROFILE_SHAPES, "auto"):
        raise MedTorchInputError(f"unknown slice profile shape {profile_shape!r}",
                                 "use one of " + ", ".join((*PROFILE_SHAPES, "auto")))
    shape = "gaussian" if profile_shape == "auto" else profile_shape

    f = int(factor)
    cfg = config if config is not None else SRTrainConfig(iterations=default_iterations(f))
    lo, hi = _intensity_scale(volume.array)
    x = torch.from_numpy(np.ascontiguousarray((volume.array.astype(np.float32) - lo) / (hi - lo)))
    spacing_zyx = volume.spacing[::-1].copy()
    report(progress, cancel, 0.0, "preparing training pairs")
    if axis is None:
        thick_spacing = float(volume.spacing.min()) * f  # learn f s -> s
        target = float(volume.spacing.min())
        planes_from = [0, 1, 2]
        profile_source = "given" if fwhm_mm is not None else "thick spacing (isotropic upsampling)"
        fwhm = float(fwhm_mm) if fwhm_mm is not None else thick_spacing
    else:
        dim = _array_axis(axis)
        thick_spacing = float(volume.spacing[axis])
        target = thick_spacing / f
        planes_from = [dim]
        if fwhm_mm is None:
            sigma = estimate_noise(volume.array).sigma / (hi - lo)
            fwhm_vox, shape = estimate_slice_profile(
                x.numpy(), dim, f, noise_sigma=sigma, shapes=PROFILE_SHAPES if profile_shape == "auto" else (profile_shape,),
                progress=SubProgress(progress, 0.0, 0.04, "slice profile"), cancel=cancel)
            fwhm = fwhm_vox * target
            profile_source = "estimated"
        else:
            fwhm = float(fwhm_mm)
            profile_source = "given"
    if not fwhm > 0:
        raise MedTorchInputError(f"the slice profile FWHM {fwhm} mm is not positive",
                                 "give a positive FWHM in mm (often the slice thickness), or let it be estimated")
    pairs = _training_pairs(x, planes_from, f, fwhm / target, spacing_zyx, target, shape)
    pairs = _foreground_planes(pairs)
    net, log = train_axis_sr(pairs, cfg, device=device, progress=SubProgress(progress, 0.05, 1.0, "training"),
                             cancel=cancel)
    meta = {
        "method": "selfsup", "kind": "through-plane" if axis is not None else "isotropic",
        "factor": f, "axis": "ijk"[axis] if axis is not None else "all",
        "fwhm_mm": round(float(fwhm), 4), "fwhm_source": profile_source, "profile_shape": shape,
        "input_spacing": [float(v) for v in volume.spacing], "output_spacing_mm": float(target) if axis is not None
        else float(volume.spacing.min()) / f,
        "intensity_scale": [lo, hi], "seed": int(cfg.seed), "train": cfg.as_dict(), "log": log,
        "network": net.config(),
    }
    return SuperResolutionModel(net, meta)


# -- the entry point --------------------------------------------------------------------------------


def superres(volume: Volume, method: str = "bspline", factor: float | None = None,
             spacing: Sequence[float] | None = None, axis: str | int = "auto", fwhm_mm: float | None = None,
             model: SuperResolutionModel | None = None, config: Any = None, device: Any = "cpu",
             progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
             profile_shape: str = "gaussian") -> tuple[Volume, SuperResolutionModel | None]:
    """Super-resolve ``volume`` (never modified) onto the grid of :func:`output_geometry`.

    Args:
        method: one of :data:`SR_METHODS`.
        factor: upsampling factor of the thick axis (or of every axis with ``axis="all"``).
        spacing: target spacing (mm, i j k) instead of ``factor``: the axes whose spacing
            changes are upsampled (``axis`` is then ignored).
        axis: ``auto`` (the thick axis), ``i``/``j``/``k``, or ``all`` (isotropic upsampling).
        fwhm_mm: slice profile FWHM for ``selfsup`` (estimated when ``None``).
        profile_shape: the slice profile's shape for ``selfsup``: ``gaussian``, ``box`` or
            ``auto`` (see :func:`train_selfsup_sr`).
        model: a trained model to apply instead of training (``selfsup``).
        config: :class:`~medtorch.enhance.srnet.SRTrainConfig` for ``selfsup``.

    Returns:
        ``(output, model)``: a float32 volume, and the trained model for ``selfsup``
        (``None`` otherwise).
    """
    check_volume(volume, "the volume to super-resolve")
    if method not in SR_METHODS:
        raise MedTorchInputError(f"unknown super-resolution method {method!r}", "use one of " + ", ".join(SR_METHODS))
    geom = volume.geometry
    if (factor is None) == (spacing is None) and model is None:
        raise MedTorchInputError("give either a factor or a target spacing", "e.g. --factor 4, or --spacing 1,1,1")
    if spacing is not None:
        factors = factors_from_spacing(geom, spacing)
        if np.any(factors < 1.0 - 1e-6):
            raise MedTorchInputError(
                f"the target spacing {tuple(spacing)} is coarser than the input's {tuple(round(float(v), 4) for v in geom.spacing)} "
                "along some axis (a factor below 1)",
                "give a spacing no larger than the input's on every axis")
        changed = [a for a in range(3) if factors[a] > 1.0 + 1e-6]
        if not changed:
            raise MedTorchInputError("the target spacing equals the input spacing", "give a finer spacing")
        axes: list[int] = changed
    else:
        if factor is None:
            factor = float(model.factor) if model is not None else 1.0
        if not float(factor) >= 1.0:
            raise MedTorchInputError(f"the upsampling factor {factor} is below 1",
                                     "use a factor of at least 1 (2 and 4 are typical)")
        ax = resolve_axis(geom, axis)
        factors = np.ones(3)
        axes = [0, 1, 2] if ax is None else [ax]
        factors[axes] = float(factor)
    out_geom = output_geometry(geom, factors)
    if method != "selfsup":
        out = interpolate(volume, out_geom, method, progress, cancel)
        out.metadata = {**volume.metadata, "operation": "superres", "method": method,
                        "factors": [float(v) for v in factors]}
        return out, None
    # self-supervised: integer factor per refined axis, all refined axes alike
    fs = {float(factors[a]) for a in axes}
    if len(fs) != 1:
        raise MedTorchInputError(f"selfsup refines all chosen axes by one factor, got {tuple(round(float(v), 4) for v in factors)}",
                                 "give one factor, or the same refinement on every axis")
    f_req = fs.pop()
    f_int = int(math.ceil(f_req - 1e-6))
    if f_int < 2:
        raise MedTorchInputError(f"self-supervised super-resolution needs a factor of at least 2, got {f_req:g}",
                                 "use an interpolation method for small factors, or a factor >= 2")
    iso = len(axes) == 3
    if len(axes) == 2:
        raise MedTorchInputError("selfsup refines one axis (through-plane) or all three (isotropic), not two",
                                 "give a spacing that changes one axis or all three")
    if model is None:
        model = train_selfsup_sr(volume, None if iso else axes[0], f_int, fwhm_mm, config, device,
                                 SubProgress(progress, 0.0, 0.8, "learning from the volume"), cancel,
                                 profile_shape=profile_shape)
    elif model.factor != f_int:
        raise MedTorchInputError(f"the model was trained for factor {model.factor}, not {f_int}",
                                 "train a model for this factor, or use its factor")
    out = model.apply(volume, "all" if iso else axes[0], SubProgress(progress, 0.8, 0.98, "super-resolving"), cancel)
    if not out.geometry.isclose(out_geom, atol=1e-6):
        # a non-integer factor: the integer result is resampled (linear) onto the requested grid
        out = interpolate(out, out_geom, "linear", None, cancel)
    out.metadata = {**volume.metadata, "operation": "superres", "method": "selfsup",
                    "factors": [float(v) for v in factors], "seed": model.metadata.get("seed"),
                    "fwhm_mm": model.metadata.get("fwhm_mm"), "fwhm_source": model.metadata.get("fwhm_source"),
                    "profile_shape": model.metadata.get("profile_shape", "gaussian")}
    report(progress, cancel, 1.0, "done")
    return out, model
