"""A verdict on a registration without landmarks: can its result be trusted?

:func:`assess_registration` measures, at a coarse level of the images (the pyramid level
nearest 4 mm, the engine's own pyramid when it has one), what a careful reader would look at,
and :func:`medtorch.registration.register` attaches the :class:`~medtorch.verdict.Verdict`
to every result (``RegistrationResult.verdict``; pass / warn / fail, the worst of):

``local_similarity``
    The correlation ratio (how well the moving intensity is predicted by the fixed one within
    a block: a small-sample, local stand-in for mutual information, valid across modalities)
    in blocks of about 24 mm, after registration, before it (the volumes as they lie) and for
    a shuffled control (each fixed block against another block of the registered moving
    image). Interior blocks (at least 90 % fixed foreground) are judged when there are at least
    8 of them -- there the anatomy must match, not just the head's outline against the air,
    which fits many wrong alignments -- else every block with structure. Value: the mean after
    registration less the control's. A result no better than the control aligns nothing.
``inverse_consistency``
    The same engine registers back, from the moving volume to the fixed one, starting at the
    inverse of the result (a rigid motion refined on top of it, 15 iterations at the coarse
    level); composed with the result it should give the identity. Value: the mean residual
    (mm) over the fixed foreground. For a deformable result, of its linear part.
``overlap``
    The share of the fixed foreground that the transform maps inside the moving volume (onto
    usable voxels: not NaN, not a constant slice).
``scale``, ``shear``, ``rotation``
    Plausibility of the linear part: scales and shears (its QR factors, as the engine
    parametrises it) within configurable ranges (a mirroring transform fails); the rotation
    from how the volumes lie within 60 degrees (beyond: a warning -- flipped axes, a wrong
    start, prone against supine; a nearly symmetric anatomy matches as well turned round, so
    no similarity can tell such a result from the right one).
``folding``, ``jacobian``
    Deformable results: the share of voxels where the transform folds (Jacobian determinant
    <= 0) and the smallest determinant.
``convergence``
    The torch engine's metric trajectory: the net move of the parameters (mm) over the last
    30 % of the final level's iterations (the step has decayed by then: a large net move means
    the optimiser was still on its way); a first level that stalled at once warns too.
``start_stability``
    Two restarts from the result perturbed by 10 degrees and 8 mm, at the two coarsest levels:
    the larger mean distance (mm, over the fixed foreground) between where a restart ends and
    the result. Run only when another check of the alignment is borderline (its score at least
    ``borderline_score``; the overlap does not count), or always / never by option.

Findings about the inputs (:func:`inspect_inputs`) join the verdict as warnings:
``nan_inf_voxels_fixed|moving`` (NaN/Inf voxels: treated as outside the image),
``constant_slices_fixed|moving`` (slices of one value: treated as outside the image) and
``physical_overlap`` (the volumes' boxes do not meet where they lie; only the
initialisation brought them together).

The thresholds of the local similarity, inverse consistency, convergence and start stability
are checked on synthetic successes and failures with known truth (``python -m
benchmarks.registration --verdict``, results in ``docs/benchmarks/registration.md``): the
benchmark calibrates them by a fixed rule on a calibration split and reports, on a held-out
split, both its calibrated thresholds and the defaults of :class:`VerdictOptions` (stated
values, not copied from one calibration run: looser than the calibrated ones for the local
similarity and inverse consistency, so that data unlike the synthetic cases does not warn at
once, tighter for convergence and start stability; override them with ``verdict_options``).
The other ranges are stated defaults. Every graded check's
score is 0 at its warning threshold and 1 at its failing one; the verdict's score is the
largest. The measurements are deterministic given the seed, use no global random state and do
not change the registration.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import torch

from medtorch.errors import MedTorchInputError
from medtorch.verdict import Check, Verdict, grade
from medtorch.volume import Geometry, Volume

__all__ = ["InputFindings", "Measures", "VerdictOptions", "assess_registration", "inspect_inputs", "judge",
           "linear_factors", "measure_registration", "needs_restarts"]


@dataclass(frozen=True)
class VerdictOptions:
    """Thresholds and settings of the registration verdict (all may be overridden by name).

    Similarity and overlap: lower is worse; the others: higher is worse. Defaults: checked on
    the held-out synthetic cases (see the module docstring); the plausibility ranges are the
    stated defaults (scales
    0.67-1.5 and shears up to 0.15 pass; outside 0.5-2 and above 0.3 fail).
    """

    similarity_warn: float = 0.10
    similarity_fail: float = 0.04
    inverse_warn_mm: float = 1.5
    inverse_fail_mm: float = 4.0
    overlap_warn: float = 0.85
    overlap_fail: float = 0.2
    scale_min: float = 0.67
    scale_max: float = 1.5
    scale_fail_min: float = 0.5
    scale_fail_max: float = 2.0
    shear_max: float = 0.15
    shear_fail: float = 0.3
    #: a rotation beyond this (degrees, from how the volumes lie) warns: flipped axes, a wrong
    #: start, prone against supine -- or a header that does not say how the volume lies
    rotation_warn_deg: float = 60.0
    folding_warn_percent: float = 1e-6
    folding_fail_percent: float = 1.0
    jacobian_warn: float = 0.1
    jacobian_fail: float = 0.0
    convergence_warn: float = 0.5
    convergence_fail: float = 2.0
    stability_warn_mm: float = 3.0
    stability_fail_mm: float = 8.0
    #: "borderline" (restarts only when another check's score is above ``borderline_score``),
    #: "always" or "never"
    restarts: str = "borderline"
    borderline_score: float = -0.2
    restart_angle_deg: float = 10.0
    restart_shift_mm: float = 8.0
    #: the level the verdict works at (mm), the block edge (voxels of that level)
    level_mm: float = 4.0
    block_voxels: int = 6
    inverse_iterations: int = 15
    inverse_samples: int = 3000
    #: Adam's first step, as a fraction of the level's spacing (small: the run starts at the inverse,
    #: and Adam's first steps are about this long whatever the gradient)
    inverse_step: float = 0.1
    #: constant slices along an axis above this share of its slices warn
    constant_slices_warn: float = 0.1

    @classmethod
    def from_options(cls, options: dict[str, Any] | None) -> VerdictOptions:
        opts = dict(options or {})
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(opts) - names)
        if unknown:
            raise MedTorchInputError(f"unknown verdict option(s): {', '.join(unknown)}",
                                     "use only: " + ", ".join(sorted(names)))
        out = cls()
        for f in fields(cls):
            if f.name not in opts:
                continue
            v = opts[f.name]
            want = type(getattr(out, f.name))
            try:
                v = want(v) if want is not bool else bool(v)
            except (TypeError, ValueError) as exc:
                raise MedTorchInputError(f"verdict option {f.name}={v!r} is not a {want.__name__}",
                                         f"give {f.name} as a {want.__name__}") from exc
            opts[f.name] = v
        out = replace(out, **opts)
        if out.restarts not in ("borderline", "always", "never"):
            raise MedTorchInputError(f"verdict option restarts={out.restarts!r} is unknown",
                                     "use 'borderline', 'always' or 'never'")
        if not (0 < out.scale_fail_min <= out.scale_min <= 1.0 <= out.scale_max <= out.scale_fail_max):
            raise MedTorchInputError("the verdict's scale ranges are not nested around 1",
                                     "give 0 < scale_fail_min <= scale_min <= 1 <= scale_max <= scale_fail_max")
        if out.block_voxels < 3 or out.level_mm <= 0:
            raise MedTorchInputError("verdict option block_voxels must be at least 3 and level_mm positive",
                                     "e.g. block_voxels=6, level_mm=4")
        return out


# -- the inputs ---------------------------------------------------------------------------------


@dataclass
class InputFindings:
    """What :func:`inspect_inputs` found: volumes safe to compute with (non-finite voxels set
    to the volume's smallest finite value -- they are never compared), where each holds usable
    values (None: everywhere), and the findings as checks for the verdict."""

    fixed: Volume
    moving: Volume
    fixed_valid: np.ndarray | None
    moving_valid: np.ndarray | None
    checks: list[Check]


def _constant_slices(arr: np.ndarray, finite: np.ndarray | None) -> list[tuple[int, np.ndarray]]:
    """Per axis (i, j, k), a bool array over its slices: the slice holds one value only (NaN
    ignored; a slice without a finite voxel counts as constant)."""
    a = np.asarray(arr, dtype=np.float32)
    if finite is not None:
        lo_src = np.where(finite, a, np.inf)
        hi_src = np.where(finite, a, -np.inf)
    else:
        lo_src = hi_src = a
    out = []
    for axis, dims in ((0, (0, 1)), (1, (0, 2)), (2, (1, 2))):  # i: x (array dim 2), j: y, k: z
        lo = lo_src.min(axis=dims)
        hi = hi_src.max(axis=dims)
        out.append((axis, ~(hi > lo)))
    return out


def _slice_runs(flags: np.ndarray) -> str:
    """``[3, 4, 5, 9]`` -> ``"3-5, 9"``."""
    idx = np.flatnonzero(flags)
    runs, start = [], None
    for n, i in enumerate(idx):
        if start is None:
            start = i
        if n + 1 == len(idx) or idx[n + 1] != i + 1:
            runs.append(f"{start}" if start == i else f"{start}-{i}")
            start = None
    return ", ".join(runs[:6]) + (", ..." if len(runs) > 6 else "")


def _inspect_one(volume: Volume, name: str, options: VerdictOptions) -> tuple[Volume, np.ndarray | None, list[Check]]:
    arr = np.asarray(volume.array)
    checks: list[Check] = []
    finite: np.ndarray | None = None
    out = volume
    if np.issubdtype(arr.dtype, np.floating):
        fin = np.isfinite(arr)
        if not fin.all():
            n_bad = int(fin.size - fin.sum())
            if not fin.any():
                raise MedTorchInputError(f"the {name} volume has no finite voxel (all NaN or infinite)",
                                         "check that the right volume was selected and that it loaded completely")
            n_nan = int(np.isnan(arr).sum())
            fill = float(arr[fin].min())
            finite = fin
            out = Volume(np.where(fin, arr, fill).astype(arr.dtype, copy=False), volume.geometry, volume.kind,
                         dict(volume.metadata))
            share = 100.0 * n_bad / fin.size
            checks.append(Check(
                f"nan_inf_voxels_{name}", share, 0.0, "warn",
                f"the {name} volume has {n_nan} NaN and {n_bad - n_nan} infinite voxels ({share:.2g} % of it): they "
                "were treated as outside the image (never compared, never replaced in the output); check why "
                "they are there", "%", 0.0, None, True, None,
                details={"nan": n_nan, "inf": n_bad - n_nan}))
    vals = arr if finite is None else np.asarray(out.array)
    fvals = vals[finite] if finite is not None else vals
    if float(np.min(fvals)) == float(np.max(fvals)):
        raise MedTorchInputError(f"the {name} volume has one constant value ({float(np.min(fvals))}) in every "
                                 "usable voxel", "check that the right volume was selected and that it loaded completely")
    valid = finite
    flagged = []
    total_constant = 0
    for axis, flags in _constant_slices(vals, finite):
        n = int(flags.sum())
        if n == 0:
            continue
        total_constant = max(total_constant, n)
        sel = [slice(None)] * 3
        sel[2 - axis] = flags  # type: ignore[call-overload]
        if valid is None:
            valid = np.ones(vals.shape, dtype=bool)
        valid[tuple(sel)] = False
        share = n / flags.size
        flagged.append((axis, n, flags.size, share, _slice_runs(flags)))
    if flagged:
        worst = max(f[3] for f in flagged)
        where = "; ".join(f"{n} of {size} slices along {'ijk'[axis]} ({runs})" for axis, n, size, _, runs in flagged)
        status = "warn" if worst >= options.constant_slices_warn else "pass"
        msg = (f"the {name} volume has constant slices (one value, no information): {where}; they were treated as "
               "outside the image" + ("; a truncated or padded volume? check that it loaded completely"
                                      if status == "warn" else ""))
        checks.append(Check(f"constant_slices_{name}", 100.0 * worst, 100.0 * options.constant_slices_warn, status,
                            msg, "%", 100.0 * options.constant_slices_warn, None, True, None))
    if valid is not None and not valid.any():
        raise MedTorchInputError(f"the {name} volume has no usable voxel (every slice is constant or non-finite)",
                                 "check that the right volume was selected and that it loaded completely")
    return out, valid, checks


def _box_gap_mm(fixed: Geometry, moving: Geometry) -> float:
    """Distance (mm) between the volumes' bounding boxes as they lie in physical space (0: they meet)."""
    a, b = fixed.corners(), moving.corners()
    lo_a, hi_a, lo_b, hi_b = a.min(0), a.max(0), b.min(0), b.max(0)
    gap = np.maximum(0.0, np.maximum(lo_a - hi_b, lo_b - hi_a))
    return float(np.linalg.norm(gap))


def inspect_inputs(fixed: Volume, moving: Volume, options: VerdictOptions | None = None) -> InputFindings:
    """The input policies of registration (refusals raise :class:`MedTorchInputError`):

    * NaN / Inf voxels: treated as outside the image -- masked, never compared; the computation
      uses a finite copy, the caller's volumes and the resampled output keep them; a warning
      names how many. A volume with no finite voxel is refused.
    * constant slices (zero variance: every voxel of a slice has one value, e.g. a truncated
      or zero-padded volume): treated as outside the image; a warning when they are at least
      ``constant_slices_warn`` of the slices along an axis. A volume with no usable voxel, or
      one value everywhere, is refused.
    * physical extents that do not meet: a warning (the value is the gap in mm) that the
      volumes were only brought together by the initialisation (``register`` refuses it with
      ``init='none'`` or an initial transform that leaves them apart).
    """
    opts = options or VerdictOptions()
    f, f_valid, f_checks = _inspect_one(fixed, "fixed", opts)
    m, m_valid, m_checks = _inspect_one(moving, "moving", opts)
    checks = f_checks + m_checks
    gap = _box_gap_mm(fixed.geometry, moving.geometry)
    if gap > 0:
        checks.append(Check(
            "physical_overlap", gap, 0.0, "warn",
            f"the volumes do not overlap where they lie (their boxes are {gap:.0f} mm apart): only the "
            "initialisation brought them together -- check that they are the scans you meant to align", "mm",
            0.0, None, True, None))
    return InputFindings(f, m, f_valid, m_valid, checks)


# -- linear part ----------------------------------------------------------------------------------


def linear_factors(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Scales ``[3]``, shears ``[3]`` (xy, xz, yz) and determinant of a 3x3 (or 4x4) matrix
    ``L = R diag(s) (I + H)`` (rotation, scales, upper-triangular shears: the engine's
    parametrisation, from the QR factors of ``L``). A mirroring matrix (det < 0) is factored
    as a rotation times a reflection of the first axis."""
    lin = np.asarray(matrix, float)[:3, :3]
    det = float(np.linalg.det(lin))
    work = lin.copy()
    if det < 0:
        work[:, 0] = -work[:, 0]
    q, r = np.linalg.qr(work)
    sign = np.sign(np.diag(r))
    sign[sign == 0] = 1.0
    r = sign[:, None] * r
    scales = np.abs(np.diag(r))
    sh = np.array([r[0, 1] / r[0, 0], r[0, 2] / r[0, 0], r[1, 2] / r[1, 1]]) if np.all(scales > 0) else np.full(3, np.inf)
    return scales, sh, det


def rotation_angle_deg(matrix: np.ndarray) -> float:
    """The angle (degrees) of the rotation factor of a 3x3 (or 4x4) matrix (polar decomposition;
    for a mirroring matrix, of the rotation left after undoing one axis)."""
    lin = np.asarray(matrix, float)[:3, :3].copy()
    if np.linalg.det(lin) < 0:
        lin[:, 0] = -lin[:, 0]
    u, _, vt = np.linalg.svd(lin)
    r = u @ vt
    return float(np.degrees(np.arccos(np.clip((np.trace(r) - 1.0) / 2.0, -1.0, 1.0))))


def _scale_check(scales: np.ndarray, det: float, o: VerdictOptions) -> Check:
    logs = np.log(np.clip(scales, 1e-12, None))
    hi = (logs - math.log(o.scale_max)) / max(math.log(o.scale_fail_max) - math.log(o.scale_max), 1e-9)
    lo = (math.log(o.scale_min) - logs) / max(math.log(o.scale_min) - math.log(o.scale_fail_min), 1e-9)
    score = float(max(hi.max(), lo.max()))
    worst_scale = float(scales[int(np.argmax(np.abs(logs)))])
    limits = f"warn outside {o.scale_min:g}-{o.scale_max:g}, fail outside {o.scale_fail_min:g}-{o.scale_fail_max:g}"
    text = ", ".join(f"{s:.3f}" for s in scales)
    if det < 0:
        return Check("scale", worst_scale, None, "fail", f"the transform mirrors the volume (determinant {det:.3f}): "
                     "no body moves that way; the volumes may be flipped against each other", "", None, None, True,
                     max(score, 1.0), details={"scales": scales.tolist(), "limits": limits, "determinant": det})
    status = "fail" if score >= 1.0 else "warn" if score >= 0.0 else "pass"
    what = {"pass": "within", "warn": "outside", "fail": "far outside"}[status]
    msg = f"scales {text}: {what} the plausible range ({limits})"
    if status != "pass":
        msg += "; a body does not stretch that much -- the result may fit noise or the wrong anatomy"
    return Check("scale", worst_scale, None, status, msg, "", None, None, True, score,
                 details={"scales": scales.tolist(), "limits": limits, "determinant": det})


# -- coarse levels --------------------------------------------------------------------------------


def _prepared_pyramids(fixed: Volume, moving: Volume, fixed_valid: np.ndarray | None,
                       moving_valid: np.ndarray | None, spacings: list[float], device: torch.device) -> tuple[list[Any], list[Any]]:
    """Coarse levels of both volumes (intensities to [0, 1] by their 0.1-99.9 % quantiles) when
    the engine did not hand its own pyramids over (the classic engines)."""
    from medtorch.registration.pyramid import build_pyramid, unit_range
    from medtorch.registration.torch_engine import _valid_tensor, foreground_mask

    f = fixed.to_torch(device, torch.float32)
    m = moving.to_torch(device, torch.float32)
    fv, mv = _valid_tensor(fixed_valid, device), _valid_tensor(moving_valid, device)
    f, m = unit_range(f, 0.001, 0.999, mask=fv), unit_range(m, 0.001, 0.999, mask=mv)
    fmask = foreground_mask(f, fixed.geometry, 6.0)
    if fv is not None:
        fmask = fv if fmask is None else fmask * fv
    return build_pyramid(f, fixed.geometry, spacings, fmask), build_pyramid(m, moving.geometry, spacings, mv)


def _tight_foreground(image: torch.Tensor, region: torch.Tensor | None) -> torch.Tensor:
    """The foreground (3x3x3 mean above 15 % of the robust range) within ``region``: ``[z, y, x]`` bool."""
    from medtorch.registration.pyramid import quantiles

    lo, hi = quantiles(image, (0.01, 0.99))
    mean3 = torch.nn.functional.avg_pool3d(image.unsqueeze(0).float(), 3, stride=1, padding=1,
                                           count_include_pad=False)[0, 0]
    fg = mean3 > lo + 0.15 * (hi - lo) if hi > lo else torch.ones_like(mean3, dtype=torch.bool)
    if region is not None:
        fg = fg & (region[0] > 0.5)
    return fg


def _blocks(t: torch.Tensor, b: int) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """``[z, y, x]`` -> ``[n_blocks, b^3]`` (zero-padded to multiples of ``b``) and the block grid shape."""
    z, y, x = t.shape
    pz, py, px = (-z) % b, (-y) % b, (-x) % b
    tp = torch.nn.functional.pad(t.float().unsqueeze(0).unsqueeze(0), (0, px, 0, py, 0, pz))[0, 0]
    nz, ny, nx = tp.shape[0] // b, tp.shape[1] // b, tp.shape[2] // b
    blocks = tp.reshape(nz, b, ny, b, nx, b).permute(0, 2, 4, 1, 3, 5).reshape(nz * ny * nx, b ** 3)
    return blocks, (nz, ny, nx)


def _correlation_ratio(fbin: torch.Tensor, m: torch.Tensor, w: torch.Tensor, nbins: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the share of the (weighted) variance of ``m`` explained by the fixed bins
    ``fbin`` (long, ``[B, n]``), and the weighted variance of ``m`` (``[B]``)."""
    ws = w.sum(1).clamp_min(1e-9)
    mean = (w * m).sum(1) / ws
    var = (w * (m - mean[:, None]) ** 2).sum(1) / ws
    sw = torch.zeros(m.shape[0], nbins, dtype=m.dtype, device=m.device).scatter_add_(1, fbin, w)
    sm = torch.zeros_like(sw).scatter_add_(1, fbin, w * m)
    smm = torch.zeros_like(sw).scatter_add_(1, fbin, w * m * m)
    within = (smm - sm * sm / sw.clamp_min(1e-9)).sum(1) / ws
    cr = 1.0 - within / var.clamp_min(1e-12)
    return cr.clamp(0.0, 1.0), var


@dataclass
class _Mapped:
    """The fixed level's voxels and where the transform sends them."""

    points: torch.Tensor  # [z, y, x, 3] fixed LPS
    fixed: torch.Tensor  # [z, y, x] the fixed level's values
    offset: tuple[int, int, int]  # (k, j, i) of the first voxel within the fixed level (a crop of it)
    region: torch.Tensor  # [z, y, x] bool: where the verdict judges (the level's mask or everything)
    foreground: torch.Tensor  # [z, y, x] bool: tight fixed foreground within region
    values: torch.Tensor  # [z, y, x] moving values at T(p)
    usable: torch.Tensor  # [z, y, x] bool: T(p) inside the moving volume, on a usable voxel


def _lps_to_grid(geometry: Geometry) -> np.ndarray:
    """4x4: LPS mm -> ``grid_sample`` coordinates (align_corners: -1 and 1 at the end voxels' centres)."""
    size = np.asarray(geometry.size, float)
    to_norm = np.eye(4)
    to_norm[:3, :3] = np.diag(2.0 / np.maximum(size - 1, 1))
    to_norm[:3, 3] = -1.0
    return to_norm @ geometry.lps_to_ijk()


def _map_level(fl: Any, ml: Any, transform: Any, points: torch.Tensor, fixed: torch.Tensor,
               offset: tuple[int, int, int], region: torch.Tensor, foreground: torch.Tensor) -> _Mapped:
    """Sample the moving level at ``T(p)`` for every voxel ``p`` of the fixed level (one ``grid_sample``)."""
    import torch.nn.functional as F

    from medtorch.resample import transform_points

    dev = points.device
    flat = points.reshape(-1, 3)
    to_grid = _lps_to_grid(ml.geometry)
    with torch.no_grad():
        if isinstance(transform, np.ndarray):
            g = torch.tensor(to_grid @ transform, dtype=torch.float32, device=dev)
            grid = flat @ g[:3, :3].T + g[:3, 3]
        else:
            q = transform_points(flat, transform).to(torch.float32)
            g = torch.tensor(to_grid, dtype=torch.float32, device=dev)
            grid = q @ g[:3, :3].T + g[:3, 3]
        size = torch.tensor(ml.geometry.size, dtype=torch.float32, device=dev)
        half = 1.0 / (size - 1).clamp_min(1.0)  # half a voxel, in grid units
        inside = (grid.abs() <= 1.0 + half).all(-1)
        g5 = grid.reshape(1, 1, 1, -1, 3)
        vals = F.grid_sample(ml.image.unsqueeze(0).float(), g5, mode="bilinear", padding_mode="border",
                             align_corners=True).reshape(-1)
        if ml.mask is not None:
            mv = F.grid_sample(ml.mask.unsqueeze(0).float(), g5, mode="bilinear", padding_mode="zeros",
                               align_corners=True).reshape(-1)
            inside = inside & (mv > 0.5)
    shape = points.shape[:3]
    return _Mapped(points, fixed, offset, region, foreground, vals.reshape(shape), inside.reshape(shape))


@dataclass
class _LocalSimilarity:
    after: float
    control: float
    before: float | None
    blocks: int
    uninformative: float  # share of informative fixed blocks whose moving side holds no information
    block_values: torch.Tensor | None  # [n_blocks] (NaN where not judged)
    grid: tuple[int, int, int]
    interior: bool = False  # judged on the interior blocks only


#: The local similarity is judged on interior blocks (at least this share of the fixed foreground)
#: when there are at least MIN_INTERIOR_BLOCKS of them: there the anatomy, not the head's outline
#: against the air, has to match (an outline fits many wrong alignments).
INTERIOR_SHARE = 0.9
MIN_INTERIOR_BLOCKS = 8


def _local_similarity(fl: Any, mapped: _Mapped, before: _Mapped | None, block: int, nbins: int,
                      rng: np.random.Generator) -> _LocalSimilarity:
    b = _block_edge(block, mapped.region.shape)
    F, grid = _blocks(mapped.fixed, b)
    R, _ = _blocks(mapped.region, b)
    M, _ = _blocks(mapped.values, b)
    U, _ = _blocks(mapped.usable, b)
    FG, _ = _blocks(mapped.foreground, b)
    n_vox = b ** 3
    # fixed blocks worth judging: at least half inside the region, with structure
    fw = R
    fs = fw.sum(1).clamp_min(1e-9)
    fmean = (fw * F).sum(1) / fs
    fvar = (fw * (F - fmean[:, None]) ** 2).sum(1) / fs
    judged = (fs >= 0.5 * n_vox) & (fvar > 1e-5)
    interior = judged & (FG.mean(1) >= INTERIOR_SHARE)
    use_interior = int(interior.sum()) >= MIN_INTERIOR_BLOCKS
    if use_interior:
        judged = interior
    # fixed intensity bins within each block (its own range: the block's contrast)
    big = torch.finfo(F.dtype).max
    lo = torch.where(fw > 0, F, torch.full_like(F, big)).amin(1)
    hi = torch.where(fw > 0, F, torch.full_like(F, -big)).amax(1)
    fbin = ((F - lo[:, None]) / (hi - lo).clamp_min(1e-6)[:, None] * nbins).long().clamp_(0, nbins - 1)

    def score(mv: torch.Tensor, uw: torch.Tensor, pair: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = fw[pair[0]] * uw[pair[1]]
        cr, var = _correlation_ratio(fbin[pair[0]], mv[pair[1]], w, nbins)
        ok = (w.sum(1) >= 0.5 * n_vox) & (var > 1e-6)
        return cr, ok

    idx = torch.nonzero(judged).reshape(-1)
    if int(idx.numel()) == 0:
        return _LocalSimilarity(float("nan"), float("nan"), None, 0, float("nan"), None, grid, use_interior)
    same = torch.stack([idx, idx])
    cr_after, ok_after = score(M, U, same)
    uninformative = 1.0 - float(ok_after.float().mean())
    keep = idx[ok_after]
    if keep.numel() < 2:
        return _LocalSimilarity(float(cr_after[ok_after].mean()) if ok_after.any() else float("nan"), float("nan"),
                                None, int(keep.numel()), uninformative, None, grid, use_interior)
    after = float(cr_after[ok_after].mean())
    # control: each judged fixed block against another judged block of the registered moving image
    controls = []
    for _ in range(2):
        perm = keep[torch.from_numpy(rng.permutation(keep.numel())).to(keep.device)]
        clash = perm == keep
        perm[clash] = torch.roll(perm, 1)[clash]  # no block against itself
        cr_c, ok_c = score(M, U, torch.stack([keep, perm]))
        if ok_c.any():
            controls.append(float(cr_c[ok_c].mean()))
    control = float(np.mean(controls)) if controls else float("nan")
    before_value = None
    if before is not None:
        Mb, _ = _blocks(before.values, b)
        Ub, _ = _blocks(before.usable, b)
        cr_b, ok_b = score(Mb, Ub, same)
        if float(ok_b.float().mean()) >= 0.25:  # enough of the fixed foreground overlapped as they lay
            before_value = float(torch.where(ok_b, cr_b, torch.zeros_like(cr_b)).sum() / ok_b.float().sum())
    values = torch.full((F.shape[0],), float("nan"), dtype=F.dtype, device=F.device)
    values[keep] = cr_after[ok_after]
    return _LocalSimilarity(after, control, before_value, int(keep.numel()), uninformative, values, grid, use_interior)


def _block_edge(block: int, shape: Any) -> int:
    """The block edge (voxels): ``block``, smaller for a small grid (at least 3 blocks per axis), at least 3."""
    return max(3, min(block, *(max(3, int(s) // 3) for s in shape)))


def _similarity_map(values: torch.Tensor, grid: tuple[int, int, int], block: int, fl: Any, fixed: Volume,
                    offset: tuple[int, int, int] = (0, 0, 0)) -> Volume:
    """The block similarities as a volume on the fixed grid (each block's value, linearly
    interpolated between block centres; 0 where no block was judged)."""
    from medtorch.resample import resample

    nz, ny, nx = grid
    v = torch.nan_to_num(values, nan=0.0).reshape(nz, ny, nx).cpu().numpy().astype(np.float32)
    g = fl.geometry
    spacing = np.asarray(g.spacing, float) * block
    first = np.array([offset[2], offset[1], offset[0]], float) + (block - 1) / 2.0  # i, j, k of the first centre
    origin = g.origin + g.direction @ (np.asarray(g.spacing, float) * first)
    coarse = Volume(v, Geometry((nx, ny, nz), origin, spacing, g.direction), "scalar")
    out = resample(coarse, fixed.geometry, np.eye(4), interpolation="linear", default_value=0.0)
    out.metadata.update({"what": "local similarity (block correlation ratio) after registration, 0-1"})
    return out


def _foreground_points(mapped: _Mapped, limit: int, rng: np.random.Generator) -> torch.Tensor:
    pts = mapped.points[mapped.foreground]
    if pts.shape[0] == 0:
        pts = mapped.points[mapped.region]
    if pts.shape[0] > limit:
        pts = pts[torch.from_numpy(rng.choice(pts.shape[0], limit, replace=False)).to(pts.device)]
    return pts.double()


def _centre_radius(points: torch.Tensor) -> tuple[torch.Tensor, float]:
    c = points.mean(0)
    radius = float(torch.sqrt(((points - c) ** 2).sum(1).mean()).clamp_min(1.0))
    return c, radius


def _inverse_consistency(fl: Any, ml: Any, affine: np.ndarray, model_affine: bool, fixed_pts: torch.Tensor,
                         opts: VerdictOptions, rng: np.random.Generator) -> tuple[float, float]:
    """Register back (moving -> fixed) from the inverse of ``affine`` at this level; the mean
    and max of ``|B(A(p)) - p|`` (mm) over the fixed foreground points."""
    from medtorch.registration.linear import LevelSchedule, MovingSampler, draw_samples, linear_matrices, optimise_level
    from medtorch.registration.pyramid import PyramidLevel
    from medtorch.registration.torch_engine import foreground_mask

    dev = fl.image.device
    m_fg = foreground_mask(ml.image, ml.geometry, float(max(ml.geometry.spacing)))
    if ml.mask is not None:  # strictly inside the usable voxels: at a coarse level their edge is blurred
        inside = (ml.mask >= 0.99).float()
        m_fg = inside if m_fg is None else m_fg * inside
    bins = 32
    samples = draw_samples(PyramidLevel(ml.image, ml.geometry, m_fg), opts.inverse_samples * 4, rng, bins,
                           block=opts.inverse_samples)
    sampler = MovingSampler(PyramidLevel(fl.image, fl.geometry, None))
    inv = np.linalg.inv(affine)
    base = torch.tensor(inv, dtype=torch.float32, device=dev).unsqueeze(0)
    c_m, r_m = _centre_radius(samples.points.double())
    theta0 = torch.zeros(1, 12 if model_affine else 6, device=dev)
    step = float(opts.inverse_step) * float(np.median(ml.geometry.spacing))
    sched = LevelSchedule(int(opts.inverse_iterations), int(opts.inverse_samples), step)
    try:
        theta, _, _, _ = optimise_level(sampler, samples, base, theta0, c_m.float(), r_m, model_affine, "mi", bins,
                                        sched, min_overlap=0.0)
    except MedTorchInputError:
        return float("inf"), float("inf")
    with torch.no_grad():
        back = (base @ linear_matrices(theta, c_m.float(), r_m, model_affine))[0].double().cpu().numpy()
    p = fixed_pts.cpu().numpy()
    a = np.asarray(affine, float)
    q = p @ a[:3, :3].T + a[:3, 3]
    r = q @ back[:3, :3].T + back[:3, 3]
    d = np.linalg.norm(r - p, axis=1)
    return float(d.mean()), float(d.max())


def _rotation(axis: np.ndarray, angle_rad: float) -> np.ndarray:
    a = axis / np.linalg.norm(axis)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + math.sin(angle_rad) * k + (1 - math.cos(angle_rad)) * (k @ k)


def _start_stability(f_levels: list[Any], m_levels: list[Any], affine: np.ndarray, model_affine: bool,
                     fixed_pts: torch.Tensor, opts: VerdictOptions, rng: np.random.Generator,
                     n_restarts: int = 2) -> float:
    """Restart from the result perturbed (rotation about the fixed foreground's centre and a
    shift; opposite directions for the two restarts) on the coarsest levels given; the largest
    mean distance (mm, over the fixed foreground) between where a restart ends and the result."""
    from medtorch.registration.linear import LevelSchedule, MovingSampler, draw_samples, linear_matrices, optimise_level

    dev = f_levels[0].image.device
    c, radius = _centre_radius(fixed_pts)
    c_np = c.cpu().numpy()
    axis = rng.normal(size=3)
    shift = rng.normal(size=3)
    shift = shift / np.linalg.norm(shift) * opts.restart_shift_mm
    bases = []
    for k in range(n_restarts):
        sign = 1.0 if k % 2 == 0 else -1.0
        p = np.eye(4)
        p[:3, :3] = _rotation(axis if k < 2 else rng.normal(size=3), sign * math.radians(opts.restart_angle_deg))
        p[:3, 3] = c_np - p[:3, :3] @ c_np + sign * shift
        bases.append(np.asarray(affine, float) @ p)
    base = torch.tensor(np.stack(bases), dtype=torch.float32, device=dev)
    theta = torch.zeros(n_restarts, 6, device=dev)
    cf = c.float()
    for n, (fl, ml) in enumerate(zip(f_levels, m_levels)):
        samples = draw_samples(fl, 3000 * 4, rng, 32, block=3000)
        sampler = MovingSampler(ml)
        spacing = float(np.median(fl.geometry.spacing))
        sched = LevelSchedule(20 if n == 0 else 12, 3000, (0.5 if n == 0 else 0.25) * spacing)
        try:
            theta, _, _, _ = optimise_level(sampler, samples, base, theta, cf, radius, model_affine and n > 0, "mi",
                                            32, sched, min_overlap=0.0)
        except MedTorchInputError:
            return float("inf")
    with torch.no_grad():
        mats = (base @ linear_matrices(theta, cf, radius, theta.shape[1] == 12)).double().cpu().numpy()
    p = fixed_pts.cpu().numpy()
    a = np.asarray(affine, float)
    ref = p @ a[:3, :3].T + a[:3, 3]
    worst = 0.0
    for m in mats:
        q = p @ m[:3, :3].T + m[:3, 3]
        worst = max(worst, float(np.linalg.norm(q - ref, axis=1).mean()))
    return worst


def _convergence_numbers(conv: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    """The convergence measure from the engine's trajectory summary (None when there is none)."""
    if not conv:
        return None
    last, first = conv[-1], conv[0]
    step_sum = last.get("tail_path_mm", 0.0)
    return {
        "tail_net_mm": float(last["tail_net_mm"]), "tail_path_mm": float(step_sum),
        "final_level_mm": float(last["spacing_mm"]),
        "first_level_improvement": round(float(first["similarity_last"] - first["similarity_first"]), 5),
        "stalled_at_start": bool(first["iterations"] < min(10, first["planned"])
                                 and first["path_mm"] < 0.05 * first["spacing_mm"]),
        "iterations": [int(s["iterations"]) for s in conv], "planned": [int(s["planned"]) for s in conv],
    }


@dataclass
class Measures:
    """The verdict's raw measurements of one registration (before any threshold)."""

    mode: str
    level_mm: float
    overlap: float
    similarity_after: float
    similarity_control: float
    similarity_before: float | None
    similarity_blocks: int
    uninformative: float
    inverse_mean_mm: float
    inverse_max_mm: float
    scales: list[float]
    shears: list[float]
    determinant: float
    deformable: bool
    folding_percent: float | None
    jacobian_min: float | None
    jacobian_max: float | None
    convergence: dict[str, Any] | None
    stability_mm: float | None = None
    seconds: dict[str, float] | None = None
    similarity_interior: bool = False
    rotation_deg: float = 0.0

    @property
    def similarity_gain(self) -> float | None:
        if math.isfinite(self.similarity_after) and math.isfinite(self.similarity_control):
            return self.similarity_after - self.similarity_control
        return None

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        d = asdict(self)
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Measures:
        names = {f.name for f in fields(cls)}
        vals: dict[str, Any] = {k: (float("nan") if v is None and k in ("similarity_after", "similarity_control", "uninformative",
                                                         "inverse_mean_mm", "inverse_max_mm", "overlap") else v)
                for k, v in d.items() if k in names}
        return cls(**vals)


def _t(seconds: dict[str, float] | None, key: str) -> float | None:
    return None if not seconds or key not in seconds else seconds[key]


def judge(m: Measures, o: VerdictOptions | None = None, findings: list[Check] | None = None,
          with_stability: bool | None = None) -> Verdict:
    """The verdict of measurements ``m`` under thresholds ``o`` (plus the input ``findings``).

    ``with_stability``: count the start-stability check (default: when it was measured).
    """
    o = o or VerdictOptions()
    sec = m.seconds
    checks: list[Check] = list(findings or [])
    checks.append(grade(
        "overlap", m.overlap, warn_at=o.overlap_warn, fail_at=o.overlap_fail, higher_is_worse=False,
        seconds=_t(sec, "overlap"), details={"level_mm": m.level_mm},
        messages={"pass": "{value} of the fixed foreground maps inside the moving volume",
                  "warn": "only {value} of the fixed foreground maps inside the moving volume (warn below "
                          "{warn_at}): the moving volume covers part of it (a cropped field of view?), and "
                          "the rest is extrapolated",
                  "fail": "only {value} of the fixed foreground maps inside the moving volume (fail below "
                          "{fail_at}): most of the result is not supported by the images"}))
    gain = m.similarity_gain
    before_txt = f"{m.similarity_before:.3f}" if m.similarity_before is not None else "n/a (no overlap as they lay)"
    numbers = (f"block similarity {m.similarity_after:.3f} after registration, {before_txt} before, "
               f"{m.similarity_control:.3f} for a shuffled control") if gain is not None else ""
    sim_details = {"after": _r(m.similarity_after), "control": _r(m.similarity_control),
                   "before": None if m.similarity_before is None else _r(m.similarity_before),
                   "blocks": m.similarity_blocks, "interior_blocks_only": m.similarity_interior,
                   "uninformative_share": _r(m.uninformative), "measure": "block correlation ratio",
                   "level_mm": m.level_mm}
    sim = grade(
        "local_similarity", gain, warn_at=o.similarity_warn, fail_at=o.similarity_fail, higher_is_worse=False,
        seconds=_t(sec, "local_similarity"), details=sim_details,
        messages={"pass": numbers + ": the registered volumes agree locally well above chance (+{value})",
                  "warn": numbers + ": only {value} above the control (warn below {warn_at}) -- the alignment is "
                          "weak or partly wrong; look at it",
                  "fail": numbers + ": no better than the control ({value}, fail below {fail_at}) -- the volumes "
                          "do not match locally: a wrong result, noise, or different anatomy"})
    if gain is None:  # nothing to compare is itself a failure of the result
        sim = replace(sim, status="fail", score=2.0,
                      message="no block of the fixed foreground meets usable moving voxels after registration: "
                              "nothing supports the result")
    checks.append(sim)
    scales = np.asarray(m.scales, float)
    checks.append(_scale_check(scales, m.determinant, o))
    shears = np.asarray(m.shears, float)
    checks.append(grade("shear", float(np.max(np.abs(shears))), warn_at=o.shear_max, fail_at=o.shear_fail,
                        details={"shears": [round(float(v), 5) for v in shears]},
                        messages={"pass": "shears up to {value}: plausible",
                                  "warn": "a shear of {value} (warn above {warn_at}): bodies rarely shear that much; "
                                          "the result may fit noise or the wrong anatomy",
                                  "fail": "a shear of {value} (fail above {fail_at}): implausible for anatomy"}))
    checks.append(grade(
        "rotation", float(m.rotation_deg), warn_at=o.rotation_warn_deg, unit="deg", scale=o.rotation_warn_deg,
        messages={"pass": "the result turns the moving volume by {value} degrees from how it lies",
                  "warn": "the result turns the moving volume by {value} degrees from how it lies (warn above "
                          "{warn_at}): scans of one body rarely lie that differently -- a flipped axis, a wrong "
                          "start or another patient position (prone/supine)? An anatomy that is nearly symmetric "
                          "can be matched turned round; check the orientation"}))
    if m.deformable:
        fold = float(m.folding_percent or 0.0)
        jmin = float(m.jacobian_min if m.jacobian_min is not None else 1.0)
        jmax = float(m.jacobian_max if m.jacobian_max is not None else 1.0)
        checks.append(grade(
            "folding", fold, warn_at=o.folding_warn_percent, fail_at=o.folding_fail_percent, unit="%",
            details={"jacobian_min": jmin, "jacobian_max": jmax},
            messages={"pass": f"no folding (Jacobian determinant {jmin:.3f} to {jmax:.3f})",
                      "warn": "{value} % of the voxels fold (Jacobian determinant <= 0; smallest "
                              f"{jmin:.3f}): the field is not invertible there",
                      "fail": "{value} % of the voxels fold (fail above {fail_at} %; smallest Jacobian "
                              f"determinant {jmin:.3f}): the field tears the anatomy"}))
        checks.append(grade(
            "jacobian", jmin, warn_at=o.jacobian_warn, fail_at=o.jacobian_fail, higher_is_worse=False,
            details={"jacobian_max": jmax},
            messages={"pass": "the smallest Jacobian determinant is {value}: no voxel shrinks to nothing",
                      "warn": "the smallest Jacobian determinant is {value} (warn below {warn_at}): a region is "
                              "squeezed almost to nothing",
                      "fail": "the smallest Jacobian determinant is {value} (fail at {fail_at} or below): the "
                              "field folds"}))
    checks.append(_convergence_check(m.convergence, o))
    checks.append(grade(
        "inverse_consistency", m.inverse_mean_mm, warn_at=o.inverse_warn_mm, fail_at=o.inverse_fail_mm, unit="mm",
        seconds=_t(sec, "inverse_consistency"),
        details={"max_mm": m.inverse_max_mm if math.isfinite(m.inverse_max_mm) else None, "level_mm": m.level_mm,
                 "linear_part_only": m.deformable},
        messages={"pass": "registering back from the moving to the fixed volume returns to the start within "
                          "{value} mm on average",
                  "warn": "registering back from the moving to the fixed volume misses the start by {value} mm "
                          "on average (warn above {warn_at} mm): the optimum is not sharp",
                  "fail": "registering back from the moving to the fixed volume misses the start by {value} mm on "
                          "average (fail above {fail_at} mm): the result is not a consistent alignment",
                  "skip": "registering back could not start (no overlap from the inverse)"}))
    if not math.isfinite(m.inverse_mean_mm):
        checks[-1] = replace(checks[-1], status="fail", score=2.0,
                             message="registering back from the moving to the fixed volume could not start: the "
                                     "inverse of the result leaves no overlap")
    use_stability = (m.stability_mm is not None) if with_stability is None else with_stability
    if use_stability and m.stability_mm is not None:
        stab = grade(
            "start_stability", m.stability_mm, warn_at=o.stability_warn_mm, fail_at=o.stability_fail_mm, unit="mm",
            seconds=_t(sec, "start_stability"),
            details={"restarts": 2, "angle_deg": o.restart_angle_deg, "shift_mm": o.restart_shift_mm},
            messages={"pass": "restarts from perturbed starts come back to the result (within {value} mm)",
                      "warn": "restarts from perturbed starts end {value} mm from the result (warn above "
                              "{warn_at} mm): the optimum is shallow",
                      "fail": "restarts from perturbed starts end {value} mm from the result (fail above "
                              "{fail_at} mm): the result depends on where the search started"})
        if not math.isfinite(m.stability_mm):
            stab = replace(stab, status="fail", score=2.0, value=None,
                           message="restarts from perturbed starts lost all overlap: the result sits on an edge")
        checks.append(stab)
    else:
        checks.append(Check("start_stability", None, None, "skip",
                            "not run: every other check was clear of its thresholds"
                            if o.restarts == "borderline" else "not run (restarts=never)", "mm",
                            o.stability_warn_mm, o.stability_fail_mm))
    return Verdict.of(checks, "registration")


def needs_restarts(pre: Verdict, o: VerdictOptions) -> bool:
    """Whether the start-stability restarts run, given the verdict without them: with
    ``restarts="borderline"``, when a check of the alignment itself (any but ``overlap`` and
    the input findings, which restarts cannot clarify) scores at least ``borderline_score``."""
    if o.restarts == "always":
        return True
    if o.restarts == "never":
        return False
    scores = [c.score for c in pre.checks if c.name not in RESTARTS_IGNORE and c.status != "skip"
              and c.score is not None and math.isfinite(c.score)]
    return (max(scores) if scores else 0.0) >= o.borderline_score


#: Checks that do not decide whether the restarts run: a partial field of view (a cropped or
#: truncated scan) says nothing about how sharp the optimum is.
RESTARTS_IGNORE = frozenset({"overlap"})


def _r(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else round(float(v), 4)


def _convergence_check(conv: dict[str, Any] | None, o: VerdictOptions) -> Check:
    if not conv:
        return Check("convergence", None, None, "skip", "the engine does not report its metric's trajectory",
                     "mm", o.convergence_warn, o.convergence_fail)
    check = grade("convergence", conv["tail_net_mm"], warn_at=o.convergence_warn, fail_at=o.convergence_fail,
                  unit="mm", details=conv,
                  messages={
                      "pass": "the optimiser settled: over the last 30 % of the final level's iterations its "
                              "parameters moved {value} mm net",
                      "warn": "the optimiser was still moving when it stopped: {value} mm net over the last "
                              "iterations (warn above {warn_at} mm); more iterations may change the result",
                      "fail": "the optimiser had not converged: {value} mm net over the last iterations (fail "
                              "above {fail_at} mm); the result is where it stopped, not an optimum"})
    if conv.get("stalled_at_start") and check.status == "pass":
        check = replace(check, status="warn", score=max(check.score or 0.0, 0.0),
                        message="the optimiser stalled at the start (its parameters hardly moved on the first "
                                "level): the similarity gave it no direction -- nothing to align, or no overlap")
    return check


def measure_registration(fixed: Volume, moving: Volume, affine: np.ndarray, displacement: Volume | None, *,
                         mode: str, report: dict[str, Any],
                         pyramids: tuple[list[Any], list[Any]] | None = None,
                         fixed_valid: np.ndarray | None = None, moving_valid: np.ndarray | None = None,
                         options: VerdictOptions | None = None, seed: int = 0, device: torch.device | None = None,
                         similarity_map: bool = False, stability: bool | None = None,
                         findings: list[Check] | None = None) -> tuple[Measures, Volume | None]:
    """The verdict's measurements (see the module docstring); with ``similarity_map`` also the
    local similarity as a volume on the fixed grid. ``stability``: run the restarts (True),
    not (False), or as ``options.restarts`` says given the other checks (None; ``findings``
    count for that decision)."""
    o = options or VerdictOptions()
    dev = device if device is not None else torch.device("cpu")
    rng = np.random.default_rng([int(seed), 0x7E5D1C7])
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if pyramids is None:
        fine = float(np.median(fixed.geometry.spacing))
        spacings = sorted({max(2 * o.level_mm, fine), max(o.level_mm, fine)}, reverse=True)
        f_levels, m_levels = _prepared_pyramids(fixed, moving, fixed_valid, moving_valid, spacings, dev)
    else:
        f_levels, m_levels = pyramids
    spac = [float(np.median(lv.geometry.spacing)) for lv in f_levels]
    li = int(np.argmin([abs(math.log(max(s, 1e-6) / o.level_mm)) for s in spac]))
    fl, ml = f_levels[li], m_levels[li]
    affine = np.asarray(affine, float)
    transform: Any = affine if displacement is None else [affine, displacement]
    timings["levels"] = time.perf_counter() - t0

    t = time.perf_counter()
    from medtorch.resample import reference_grid

    region = (fl.mask[0] > 0.5) if fl.mask is not None else torch.ones(fl.image.shape[1:], dtype=torch.bool,
                                                                         device=fl.image.device)
    foreground = _tight_foreground(fl.image, fl.mask)
    # judge within the region's bounding box only (the air around a head is most of a grid)
    crop = tuple(slice(0, n) for n in region.shape)
    if bool(region.any()):
        nz = torch.nonzero(region)
        lo, hi = nz.min(0).values.tolist(), nz.max(0).values.tolist()
        crop = tuple(slice(a, b + 1) for a, b in zip(lo, hi))
    offset = (crop[0].start, crop[1].start, crop[2].start)
    points = reference_grid(fl.geometry, device=fl.image.device, dtype=torch.float32,
                            k_range=(crop[0].start, crop[0].stop))[:, crop[1], crop[2]]
    fixed_crop = fl.image[0][crop]
    region, foreground = region[crop], foreground[crop]
    mapped = _map_level(fl, ml, transform, points, fixed_crop, offset, region, foreground)
    fg = mapped.foreground if bool(mapped.foreground.any()) else mapped.region
    overlap = float((fg & mapped.usable).sum()) / max(int(fg.sum()), 1)
    timings["overlap"] = time.perf_counter() - t
    t = time.perf_counter()
    before = _map_level(fl, ml, np.eye(4), points, fixed_crop, offset, region, foreground)
    local = _local_similarity(fl, mapped, before, o.block_voxels, 8, rng)
    timings["local_similarity"] = time.perf_counter() - t

    t = time.perf_counter()
    scales, shears, det = linear_factors(affine)
    conv = _convergence_numbers(report.get("convergence"))
    timings["plausibility_convergence"] = time.perf_counter() - t

    t = time.perf_counter()
    pts = _foreground_points(mapped, 4000, rng)
    model_affine = False  # the reverse run and the restarts refine a rigid motion on top of the result
    inv_mean, inv_max = _inverse_consistency(fl, ml, affine, model_affine, pts, o, rng)
    timings["inverse_consistency"] = time.perf_counter() - t
    m = Measures(mode, spac[li], overlap, local.after, local.control, local.before, local.blocks,
                 local.uninformative, inv_mean, inv_max, scales.tolist(), shears.tolist(), det,
                 displacement is not None,
                 report.get("folding_percent") if displacement is not None else None,
                 report.get("jacobian_min") if displacement is not None else None,
                 report.get("jacobian_max") if displacement is not None else None, conv,
                 similarity_interior=local.interior, rotation_deg=rotation_angle_deg(affine))
    run = stability if stability is not None else needs_restarts(judge(m, o, findings, with_stability=False), o)
    if run:
        t = time.perf_counter()
        n_coarse = min(2, li + 1)
        m.stability_mm = _start_stability(f_levels[:n_coarse], m_levels[:n_coarse], affine, model_affine, pts, o, rng)
        timings["start_stability"] = time.perf_counter() - t
    smap = None
    if similarity_map and local.block_values is not None:
        t = time.perf_counter()
        smap = _similarity_map(local.block_values, local.grid, _block_edge(o.block_voxels, mapped.region.shape), fl,
                               fixed, mapped.offset)
        timings["similarity_map"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    m.seconds = {k: round(v, 4) for k, v in timings.items()}
    return m, smap


def assess_registration(fixed: Volume, moving: Volume, affine: np.ndarray, displacement: Volume | None, *,
                        mode: str, report: dict[str, Any], findings: list[Check] | None = None,
                        pyramids: tuple[list[Any], list[Any]] | None = None,
                        fixed_valid: np.ndarray | None = None, moving_valid: np.ndarray | None = None,
                        options: VerdictOptions | None = None, seed: int = 0, device: torch.device | None = None,
                        similarity_map: bool = False) -> tuple[Verdict, Volume | None]:
    """Judge a registration result (see the module docstring); returns the verdict and, with
    ``similarity_map``, the local similarity as a volume on the fixed grid (else None).

    ``fixed``/``moving`` must be finite (:func:`inspect_inputs` gives such copies);
    ``pyramids`` are the engine's coarse-to-fine levels (prepared intensities, the fixed
    levels' masks where it sampled); without them the verdict builds its own. Deterministic
    given ``seed``; uses no global random state. The measurements go into
    ``report["verdict_measures"]`` and their cost into ``report["verdict_timings_s"]``.
    """
    o = options or VerdictOptions()
    # one torch thread on the CPU, as the engine (torch_engine.register_torch): the measurements
    # are many small ops, where a second OpenMP thread costs more than it gives, and on a busy
    # machine much more
    on_cpu = device is None or torch.device(device).type == "cpu"
    previous = torch.get_num_threads()
    if on_cpu:
        torch.set_num_threads(1)
    try:
        m, smap = measure_registration(fixed, moving, affine, displacement, mode=mode, report=report,
                                       pyramids=pyramids, fixed_valid=fixed_valid, moving_valid=moving_valid,
                                       options=o, seed=seed, device=device, similarity_map=similarity_map,
                                       findings=findings)
    finally:
        torch.set_num_threads(previous)
    verdict = judge(m, o, findings)
    report["verdict_timings_s"] = dict(m.seconds or {})
    report["verdict_measures"] = m.to_dict()
    return verdict, smap
