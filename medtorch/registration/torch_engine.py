"""The torch registration engine: initialisation, rigid/affine pyramid, then deformable.

:func:`register_torch` is what :func:`medtorch.registration.register` runs for
``engine="torch"``. Options (keywords of ``register``; all optional):

Linear stages
    ``levels`` pyramid spacings in mm, coarse to fine (default: 8, 4, 2, ... down to the
    fixed spacing); ``iterations`` per level (an int or one per level; default, coarse to
    fine, 20/25/30 for rigid and 25/40/50 for affine); ``samples`` fixed samples per level
    (int or list; default 3000/6000/10000 for rigid, 3000/8000/20000 for affine);
    ``skip_fine_rigid`` (True: for affine, the rigid model stops one level above the finest);
    ``pool`` distinct fixed samples drawn per level, in multiples of ``samples`` (6 for rigid,
    12 for affine);
    ``bins`` MI histogram bins (32); ``step`` Adam step as a
    fraction of the level spacing (0.5); ``search`` the rotation search of ``init="auto"``
    (True); ``search_max_deg`` (40), ``search_step_deg`` (20), ``search_top`` (4 candidates
    refined).
Deformable stage (see :mod:`medtorch.registration.deformable`)
    ``deformable_spacing``, ``control_spacing``, ``deformable_iterations``,
    ``regularization`` ("diffusion" or "bending"), ``regularization_weight``,
    ``diffeomorphic`` (scaling and squaring of a stationary velocity field),
    ``deformable_metric``; for MI, ``deformable_levels``, ``control_spacings``,
    ``deformable_points`` (per iteration) and ``deformable_pool`` (distinct fixed samples
    per level, in multiples of ``deformable_points``), ``deformable_bins``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch

from medtorch.errors import MedTorchInputError
from medtorch.ops.registration import Init, Metric, Mode
from medtorch.progress import CancelToken, ProgressCallback, SubProgress, report
from medtorch.registration import initialization as init_mod
from medtorch.registration.linear import (
    LevelSchedule,
    MovingSampler,
    default_levels,
    draw_samples,
    linear_matrices,
    optimise_level,
    progress_stepper,
    score_candidates,
)
from medtorch.registration.pyramid import (
    PyramidLevel,
    build_pyramid,
    equalize,
    unit_range,
)
from medtorch.registration.similarity import mind_ssc
from medtorch.resample import reference_grid
from medtorch.volume import Volume

__all__ = ["RegistrationProblem", "TorchOptions", "prepare_images", "register_torch"]

#: Up to this many fixed + moving voxels the moving pyramid is built beside the fixed one.
PARALLEL_PYRAMID_VOXELS = 16 * 2**20


@dataclass(frozen=True, eq=False)
class RegistrationProblem:
    """What one run of the torch engine registers: the volumes (never modified), the
    transform model and similarity, optional masks (any grid) and ``(N, 3)`` LPS landmark pairs
    (checked by :func:`medtorch.registration.register`), the initialisation and an optional
    4x4 starting transform (fixed -> moving), the device, the seed of the sampling, and the
    engine options as given (see the module docstring; checked by :class:`TorchOptions`)."""

    fixed: Volume
    moving: Volume
    mode: Mode = "rigid"
    metric: Metric = "mi"
    fixed_mask: Volume | None = None
    moving_mask: Volume | None = None
    fixed_landmarks: np.ndarray | None = None
    moving_landmarks: np.ndarray | None = None
    init: Init = "auto"
    initial_transform: np.ndarray | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    #: where each volume holds usable values (bool ``[z, y, x]`` on its own grid; None: everywhere):
    #: voxels outside it (NaN/Inf, constant slices; see :mod:`medtorch.registration.verdict`) are
    #: treated as outside the image -- never sampled, and a sample mapped there has no weight.
    #: Their values must already be finite (any value: they are never compared).
    fixed_valid: np.ndarray | None = None
    moving_valid: np.ndarray | None = None
    #: the learned engine: called with the affine after the linear stages, returns the network's
    #: field (LPS mm, before the affine) on the fixed grid, the same field on the model grid, and
    #: info; the deformable stage then starts from it (``refine``) or is skipped
    field_predictor: Any = None
    refine: bool = False


@dataclass
class TorchOptions:
    levels: Sequence[float] | None = None
    iterations: int | Sequence[int] | None = None
    samples: int | Sequence[int] | None = None
    bins: int | Sequence[int] | None = None
    step: float = 0.5
    refine_step: float = 0.1
    search: bool = True
    search_max_deg: float = 40.0
    search_step_deg: float = 20.0
    search_top: int = 4
    search_samples: int = 3000
    pool: float | None = None
    bias_order: int | None = None
    intensity: str = "percentile"
    foreground_margin_mm: float | None = 6.0
    slice_profile: bool = True
    skip_fine_rigid: bool = True
    # deformable stage
    deformable_spacing: float | None = None
    control_spacing: float | None = None
    deformable_iterations: int | Sequence[int] | None = None
    regularization: str = "diffusion"
    regularization_weight: float | None = None
    diffeomorphic: bool = False
    deformable_metric: str | None = None
    deformable_step: float = 2.0
    deformable_levels: Sequence[float] | None = None
    control_spacings: Sequence[float] | None = None
    deformable_bins: int | None = None
    deformable_points: int | None = None
    deformable_pool: int = 16
    threads: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> TorchOptions:
        names = {f.name for f in fields(cls)} - {"extra"}
        unknown = sorted(set(options) - names)
        if unknown:
            raise MedTorchInputError(f"unknown registration option(s): {', '.join(unknown)}",
                                     "use only: " + ", ".join(sorted(names)))
        opts = cls(**options)
        if opts.bins is not None:
            values = [opts.bins] if isinstance(opts.bins, (int, np.integer)) else list(opts.bins)
            if not all(8 <= int(b) <= 256 for b in values):
                raise MedTorchInputError(f"bins={opts.bins} is out of range", "use 8 to 256 histogram bins")
        if opts.regularization not in ("diffusion", "bending"):
            raise MedTorchInputError(f"unknown regularization {opts.regularization!r}", "use 'diffusion' or 'bending'")
        if opts.step <= 0:
            raise MedTorchInputError(f"step={opts.step} must be positive", "give a fraction of the level spacing, e.g. 0.5")
        return opts


def _per_level(value: int | Sequence[int] | None, fine_first: Sequence[int], n: int, what: str) -> list[int]:
    """One value per level, coarse to fine. Defaults are given from the *finest* level up
    (the last one repeats for coarser levels). A user list is coarse to fine and aligned at
    the finest level: extra values are dropped from the coarse end, a short list repeats its
    first value for the coarser levels."""
    if value is None:
        base = list(fine_first)
        vals = [base[min(i, len(base) - 1)] for i in range(n)]
        return vals[::-1]
    if isinstance(value, (int, np.integer)):
        return [int(value)] * n
    vals = [int(v) for v in value]
    if not vals:
        raise MedTorchInputError(f"{what} is an empty list", f"give one {what} value per pyramid level")
    if len(vals) >= n:
        return vals[len(vals) - n:]
    return [vals[0]] * (n - len(vals)) + vals


def _masked_tensor(mask: Volume | None, like: Volume, device: torch.device, name: str) -> torch.Tensor | None:
    """The mask on its volume's grid, ``[1, z, y, x]`` float 0/1 (resampled nearest if on another grid)."""
    if mask is None:
        return None
    from medtorch.resample import resample

    m = mask
    if m.kind == "vector":
        raise MedTorchInputError(f"the {name} mask is a vector volume", "give a label map or a binary volume")
    if not m.geometry.isclose(like.geometry, atol=1e-4):
        m = resample(Volume(np.asarray(m.array) > 0, m.geometry, "label"), like.geometry, interpolation="nearest")
    arr = np.asarray(m.array) > 0
    if not arr.any():
        raise MedTorchInputError(f"the {name} mask is empty (no voxel is set" +
                                 (" where it overlaps its volume)" if m is not mask else ")"),
                                 f"give a {name} mask that marks the region to align, or no mask")
    return torch.from_numpy(arr.astype(np.float32)).unsqueeze(0).to(device)


def _valid_tensor(valid: np.ndarray | None, device: torch.device) -> torch.Tensor | None:
    """A validity map as a ``[1, z, y, x]`` float 0/1 tensor, or None where every voxel is valid."""
    if valid is None or bool(np.all(valid)):
        return None
    return torch.from_numpy(np.ascontiguousarray(valid, dtype=np.float32)).unsqueeze(0).to(device)


def prepare_images(fixed: Volume, moving: Volume, metric: str, fixed_mask: torch.Tensor | None,
                   device: torch.device, intensity: str = "percentile") -> tuple[torch.Tensor, torch.Tensor]:
    """Float tensors ``[1, z, y, x]`` on ``device``, with intensities prepared for ``metric``.

    MI and MIND: each volume's 0.1-99.9 percentiles mapped to [0, 1] and clipped (with
    ``intensity="equalize"``, MI bins equalised volumes instead:
    :func:`~medtorch.registration.pyramid.equalize`). NCC, LNCC
    and MSE: both volumes through the *same* linear map (the fixed volume's percentiles), so
    that equal intensities stay equal.
    """
    f = fixed.to_torch(device, torch.float32)
    m = moving.to_torch(device, torch.float32)
    if metric == "mi" and intensity == "equalize":  # "percentile"/"percentile_all": below
        return equalize(f, fixed_mask), equalize(m)
    if metric in ("mi", "mind"):  # 0.1-99.9 %: small bright structures keep their contrast
        return unit_range(f, 0.001, 0.999, mask=fixed_mask), unit_range(m, 0.001, 0.999)
    from medtorch.registration.pyramid import quantiles

    lo, hi = quantiles(f, (0.005, 0.995), fixed_mask)
    if hi <= lo:
        lo, hi = float(f.min()), float(f.max())
    scale = 1.0 / (hi - lo) if hi > lo else 1.0
    return (f - lo) * scale, (m - lo) * scale


def foreground_mask(image: torch.Tensor, geometry: Any, margin_mm: float, threshold: float = 0.15) -> torch.Tensor | None:
    """Where the fixed samples are drawn when no fixed mask is given: the foreground (above
    ``threshold`` of the robust range) dilated by ``margin_mm``; ``[1, z, y, x]`` float.

    Samples far out in the air carry no information but make the similarity depend on
    how much of the fixed grid falls inside the moving volume, which biases scale (and,
    with a cropped moving volume, position) towards larger overlap.
    """
    from medtorch.registration.pyramid import quantiles

    lo, hi = quantiles(image, (0.01, 0.99))
    if hi <= lo:
        return None
    # threshold a 3x3x3 mean, not the voxels: isolated noise voxels above the threshold would
    # otherwise grow into a mask of the whole grid. The mean is taken at every other voxel and
    # the mask dilated on that half-resolution grid, then brought back (nearest): the sampling
    # region needs no finer edge than a voxel of margin, and this is 8x less work.
    shape = image.shape[1:]
    mean3 = torch.nn.functional.avg_pool3d(image.unsqueeze(0).float(), 3, stride=2, padding=1,
                                           count_include_pad=False)
    grown = (mean3 > lo + threshold * (hi - lo)).float()  # [1, 1, z/2, y/2, x/2]
    if float(grown.mean()) > 0.9:
        return None
    spacing = np.asarray(geometry.spacing, float) * 2
    radius = [max(0, int(round(margin_mm / s))) for s in spacing]  # i, j, k
    for axis, r in enumerate(radius):  # separable: a box dilation is three 1D dilations
        if r == 0:
            continue
        # a running sum (cumsum) counts the foreground voxels in each window: 4x cheaper than
        # a 1D max filter of the same width on the CPU
        dim = 4 - axis
        pad = [0] * 6
        pad[2 * axis], pad[2 * axis + 1] = r + 1, r
        csum = torch.cumsum(torch.nn.functional.pad(grown, pad), dim)
        n = grown.shape[dim]
        grown = (csum.narrow(dim, 2 * r + 1, n) - csum.narrow(dim, 0, n) > 0.5).to(grown.dtype)
    grown = torch.nn.functional.interpolate(grown, scale_factor=2, mode="nearest")[:, :, : shape[0], : shape[1], : shape[2]]
    return grown[0].contiguous()


def slice_profile(fixed_geometry: Any, moving_geometry: Any, transform: np.ndarray) -> tuple[np.ndarray, float] | None:
    """(direction in fixed LPS, sigma mm) of the extra blur that gives the fixed samples the
    resolution of a thick-slice moving volume along its slices, or None when the moving
    volume is not coarser along one axis than the fixed level.

    The slice profile is taken as a Gaussian of FWHM = slice spacing (less the fixed level's
    own, FWHM = its spacing): ``sigma = sqrt(s_moving^2 - s_fixed^2) / 2.355``.
    """
    ms = np.asarray(moving_geometry.spacing, float)
    axis = int(np.argmax(ms))
    others = np.delete(ms, axis)
    if ms[axis] < 1.5 * float(others.max()):
        return None
    s_fixed = float(np.median(fixed_geometry.spacing))
    if ms[axis] <= s_fixed:
        return None
    d_moving = moving_geometry.direction[:, axis]
    d_fixed = np.linalg.solve(np.asarray(transform, float)[:3, :3], d_moving)
    norm = float(np.linalg.norm(d_fixed))
    # a moving-space length L along the slice normal is L / norm in fixed space
    sigma = np.sqrt(ms[axis] ** 2 - s_fixed ** 2) / 2.3548 / max(norm, 1e-6)
    return d_fixed / max(norm, 1e-12), float(sigma)


def _foreground(level: PyramidLevel, fixed: bool) -> tuple[np.ndarray, np.ndarray]:
    """LPS points and weights of a level's voxels, for moments (foreground: above 10 % of range)."""
    pts = reference_grid(level.geometry, device="cpu", dtype=torch.float64).reshape(-1, 3).numpy()
    img = level.image[0].reshape(-1).double().cpu().numpy()
    lo, hi = np.percentile(img, [1.0, 99.0])
    w = (img > lo + 0.1 * (hi - lo)).astype(np.float64)
    if level.mask is not None:
        w = w * (level.mask.reshape(-1).cpu().numpy() > 0.5)
        if w.sum() == 0:
            w = (level.mask.reshape(-1).cpu().numpy() > 0.5).astype(np.float64)
    if w.sum() == 0:
        w = np.ones_like(img)
    return pts, w


def register_torch(problem: RegistrationProblem, progress: ProgressCallback | None = None,
                   cancel: CancelToken | None = None) -> tuple[np.ndarray, Volume | None, dict[str, Any]]:
    """Run the torch engine on ``problem``; returns (affine 4x4, displacement or None, info).

    On the CPU the work runs with ``threads`` torch threads (option; default 1): the
    optimisation loops work on batches of 10^4-10^5 samples, where thread start-up costs
    about what it saves, and on a busy machine (more runnable threads than cores) two
    OpenMP threads measured 10-15x *slower* than one (each barrier waits for a descheduled
    thread). The previous thread count is restored afterwards.
    """
    opts = TorchOptions.from_options(problem.options)
    on_cpu = problem.device.type == "cpu"
    n_threads = int(opts.threads) if opts.threads is not None else (1 if on_cpu else torch.get_num_threads())
    if n_threads < 1:
        raise MedTorchInputError(f"threads={opts.threads} must be at least 1", "give a positive number of threads")
    previous = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    try:
        affine, displacement, info = _register_torch(problem, opts, progress, cancel)
    finally:
        torch.set_num_threads(previous)
    info["threads"] = n_threads
    return affine, displacement, info


def _register_torch(problem: RegistrationProblem, opts: TorchOptions, progress: ProgressCallback | None,
                    cancel: CancelToken | None) -> tuple[np.ndarray, Volume | None, dict[str, Any]]:
    # One helper thread works beside the main one (see _register_torch_with); it is always
    # shut down, also on errors and cancel.
    helper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="medtorch-registration")
    try:
        return _register_torch_with(helper, problem, opts, progress, cancel)
    finally:
        helper.shutdown(wait=True, cancel_futures=True)


def _split_work(helper: ThreadPoolExecutor, parallel: bool, count: int, run: Any) -> list[Any]:
    """``[run(slice of the first half, True), run(slice of the second half, False)]`` with the second
    half in ``helper`` when ``parallel`` (else ``[run(all, True)]``); the flag says which call
    reports progress (the main thread's)."""
    if not parallel or count < 2:
        return [run(slice(0, count), True)]
    half = count // 2
    other = helper.submit(run, slice(half, count), False)
    mine = run(slice(0, half), True)
    return [mine, other.result()]


def _register_torch_with(helper: ThreadPoolExecutor, problem: RegistrationProblem, opts: TorchOptions,
                         progress: ProgressCallback | None,
                         cancel: CancelToken | None) -> tuple[np.ndarray, Volume | None, dict[str, Any]]:
    """The engine. On the CPU with one torch thread, independent work runs in ``helper`` at the
    same time as the main thread's (each op is too small for two OpenMP threads to pay, but
    two independent streams of them keep both cores busy): the moving pyramid beside the
    fixed one (for volumes up to :data:`PARALLEL_PYRAMID_VOXELS`), half of the rotation search's candidates, and the next levels' samples while
    a level is optimised. (The Adam loops themselves gain nothing from a second thread:
    their many small ops hold the interpreter lock for most of their time.) Random draws
    all happen in one thread, in a fixed order, so results do not depend on timing."""
    fixed, moving, mode, metric, device = problem.fixed, problem.moving, problem.mode, problem.metric, problem.device
    init, initial_transform, seed = problem.init, problem.initial_transform, problem.seed
    fixed_landmarks, moving_landmarks = problem.fixed_landmarks, problem.moving_landmarks
    parallel = device.type == "cpu" and torch.get_num_threads() == 1
    rng = np.random.default_rng(seed)
    info: dict[str, Any] = {}
    t0 = time.perf_counter()
    lin_share = 1.0 if mode != "deformable" else 0.3
    report(progress, cancel, 0.0, "preparing")

    fmask = _masked_tensor(problem.fixed_mask, fixed, device, "fixed")
    mmask = _masked_tensor(problem.moving_mask, moving, device, "moving")
    f_valid = _valid_tensor(problem.fixed_valid, device)
    m_valid = _valid_tensor(problem.moving_valid, device)
    if m_valid is not None:
        mmask = m_valid if mmask is None else mmask * m_valid
    lin_metric = metric if metric != "lncc" else "ncc"
    if opts.intensity not in ("equalize", "percentile", "percentile_all"):
        raise MedTorchInputError(f"unknown intensity option {opts.intensity!r}",
                                 "use 'percentile' (linear stages percentile, deformable stage equalised), "
                                 "'equalize' (all stages equalised) or 'percentile_all'")
    f_img, m_img = prepare_images(fixed, moving, lin_metric, fmask, device, opts.intensity)
    spacings = list(opts.levels) if opts.levels is not None else default_levels(fixed.spacing, fixed_size=fixed.size)
    if mode == "deformable" and opts.levels is None:
        # the deformable stage refines below 2 mm: the affine stages stop at the working resolution
        spacings = [s for s in spacings if s >= 2.0 - 1e-6] or spacings[-1:]
    spacings = sorted({float(s) for s in spacings}, reverse=True)
    # the two pyramids at once only for volumes of up to 16 Mvoxels together: their smoothing
    # copies then coexist (at 512 x 512 x 400 that raised the peak from 10.3 to 17.2 GB for
    # a gain of a second or two)
    together = parallel and f_img.numel() + m_img.numel() <= PARALLEL_PYRAMID_VOXELS
    m_pyramid = helper.submit(build_pyramid, m_img.clone(), moving.geometry, spacings, mmask) if together else None
    sample_mask = fmask
    if sample_mask is None and opts.foreground_margin_mm is not None:
        sample_mask = foreground_mask(f_img, fixed.geometry, opts.foreground_margin_mm)
    if f_valid is not None:
        sample_mask = f_valid if sample_mask is None else sample_mask * f_valid
        if not bool((sample_mask > 0.5).any()):
            raise MedTorchInputError("no usable fixed voxel is left to compare (the fixed mask or foreground "
                                     "holds only NaN/Inf voxels or constant slices)",
                                     "check that the right fixed volume was selected and that it loaded completely")
    f_levels = build_pyramid(f_img.clone(), fixed.geometry, spacings, sample_mask)
    m_levels = m_pyramid.result() if m_pyramid is not None else build_pyramid(m_img.clone(), moving.geometry,
                                                                                 spacings, mmask)
    report(progress, cancel, 0.05 * lin_share, "pyramids built")
    n_lv = len(spacings)
    # Defaults, finest level first. A rigid model settles with fewer samples and iterations at
    # the finest level (measured on the benchmark's cases: mean TRE stays within a third of the
    # targets at 40 % less time); the affine model needs the denser finest level (with the
    # rigid defaults it missed the targets on CT-like pairs).
    # The coarsest level (its few refined candidates at once) settles in 20-25 iterations: 30
    # and 40 gave the same TRE on the benchmark's cases, 10-15 % slower overall.
    if mode == "rigid":
        iters = _per_level(opts.iterations, [30, 25, 20], n_lv, "iterations")
        samples = _per_level(opts.samples, [10000, 6000, 3000], n_lv, "samples")
    else:
        iters = _per_level(opts.iterations, [50, 40, 25], n_lv, "iterations")
        samples = _per_level(opts.samples, [20000, 8000, 3000], n_lv, "samples")
    bins_lv = _per_level(opts.bins, [96, 64, 32], n_lv, "bins")
    bins = bins_lv[0]
    affine_mode = mode in ("affine", "deformable")

    feats: list[tuple[torch.Tensor | None, torch.Tensor | None]] = []
    for fl, ml in zip(f_levels, m_levels):
        if lin_metric == "mind":
            feats.append((mind_ssc(fl.image.unsqueeze(0))[0], mind_ssc(ml.image.unsqueeze(0))[0]))
        else:
            feats.append((None, None))

    # -- fixed centre, radius; moments ------------------------------------------------------------
    c_pts, c_w = _foreground(f_levels[0], True)
    c_fixed, cov_fixed = init_mod.foreground_moments(c_pts, c_w)
    radius = float(np.sqrt(max(np.trace(cov_fixed), 1.0)))
    center = torch.tensor(c_fixed, dtype=torch.float32, device=device)
    m_pts, m_w = _foreground(m_levels[0], False)
    c_moving, cov_moving = init_mod.foreground_moments(m_pts, m_w)

    # -- initial candidates ---------------------------------------------------------------------------
    candidates: list[np.ndarray]
    chosen: str = init
    if initial_transform is not None and init in ("auto", "none"):
        candidates = [np.asarray(initial_transform, float)]
        chosen = "initial_transform"
    elif init == "none":
        candidates = [np.eye(4)]
    elif init == "geometry":
        candidates = [init_mod.geometry_init(fixed.geometry, moving.geometry)]
    elif init == "moments":
        candidates = [init_mod.moments_init(c_fixed, c_moving)]
    elif init == "pax":
        candidates = init_mod.principal_axes_candidates(c_fixed, cov_fixed, c_moving, cov_moving)
    elif init == "fiducials":
        if fixed_landmarks is None or moving_landmarks is None:
            raise MedTorchInputError("init='fiducials' needs landmark pairs",
                                     "give fixed_landmarks and moving_landmarks (N x 3 LPS mm), or another init")
        candidates = [init_mod.fiducial_init(fixed_landmarks, moving_landmarks)]
    else:  # auto
        if fixed_landmarks is not None and moving_landmarks is not None:
            candidates = [init_mod.fiducial_init(fixed_landmarks, moving_landmarks)]
            chosen = "fiducials"
        elif opts.search:
            rots = init_mod.rotation_grid(opts.search_max_deg, opts.search_step_deg)
            candidates = [init_mod.rotation_about(r, c_fixed, c_moving) for r in rots]
            candidates += init_mod.principal_axes_candidates(c_fixed, cov_fixed, c_moving, cov_moving)
            candidates.append(init_mod.geometry_init(fixed.geometry, moving.geometry))
            chosen = "search"
        else:
            candidates = [init_mod.moments_init(c_fixed, c_moving)]
            chosen = "moments"
    info["init"] = chosen
    base = torch.tensor(np.stack(candidates), dtype=torch.float32, device=device)

    # -- coarsest level: score the candidates, refine the best few together -------------------------------
    fl, ml = f_levels[0], m_levels[0]
    sampler = MovingSampler(ml, feats[0][1])
    samp = draw_samples(fl, samples[0], rng, bins if lin_metric == "mi" else None, features=feats[0][0],
                        block=samples[0])
    if base.shape[0] > 1:
        search_samp = samp if samples[0] <= opts.search_samples else draw_samples(
            fl, opts.search_samples, rng, bins if lin_metric == "mi" else None, features=feats[0][0],
            block=opts.search_samples)
        scored = _split_work(helper, parallel, base.shape[0],
                             lambda sl, _main: score_candidates(sampler, search_samp, base[sl], lin_metric, bins))
        sims, overlaps = torch.cat([a for a, _ in scored]), torch.cat([b for _, b in scored])
        sims = torch.where(overlaps > 0.05, sims, torch.full_like(sims, -1e9))
        order = torch.argsort(sims, descending=True).tolist()
        keep = order[: max(1, int(opts.search_top))]
        if 0 not in keep:  # the first candidate (no rotation about the centres of mass) is always refined
            keep = keep[:-1] + [0] if len(keep) > 1 else keep + [0]
        base = base[torch.tensor(keep, device=base.device)]
        info["search_candidates"] = len(candidates)
    report(progress, cancel, 0.1 * lin_share, "initialised")

    # Rigid down the pyramid, then (affine, deformable) the affine model on the last two
    # levels: scales and shears are only freed once the rotation and shift are settled, which
    # keeps a 12-parameter search out of spurious optima (it measured more robust than
    # starting the affine model at the coarsest level, for about the same time). With
    # ``skip_fine_rigid`` (default) the rigid model stops one level above the finest, since
    # the affine model refines there anyway (same accuracy, a third less time).
    first_affine_lv = max(1 if n_lv > 1 else 0, n_lv - 2)
    rigid_top = n_lv if not (affine_mode and opts.skip_fine_rigid) else max(first_affine_lv + 1, n_lv - 1)
    steps = [(lv, False) for lv in range(1, rigid_top)]
    if affine_mode:
        steps += [(lv, True) for lv in range(first_affine_lv, n_lv)]
    total_iters = iters[0] + sum(iters[lv] for lv, _ in steps)
    done = 0
    start_frac = 0.1 * lin_share

    def stepper(n: int, msg: str):
        nonlocal done
        a = start_frac + (lin_share - start_frac) * done / total_iters
        b = start_frac + (lin_share - start_frac) * (done + n) / total_iters
        done += n
        return progress_stepper(progress, cancel, a, b, n, msg)

    theta = torch.zeros(base.shape[0], 6, device=device)
    bias_order = int(opts.bias_order or 0)
    if bias_order not in (0, 1, 2):
        raise MedTorchInputError(f"bias_order={bias_order} is not supported", "use 0 (none), 1 or 2")
    if bias_order and lin_metric != "mi":
        raise MedTorchInputError("the intensity bias model works with metric='mi' only", "set bias_order=0")
    bias = torch.zeros(base.shape[0], 3 if bias_order == 1 else 9, device=device) if bias_order else None
    sched0 = LevelSchedule(iters[0], samples[0], opts.step * spacings[0])
    ran: list[int] = []
    traces: list[list[tuple[np.ndarray, np.ndarray]]] = [[]]
    theta, bias, sims, n = optimise_level(sampler, samp, base, theta, center, radius, False, lin_metric, bins, sched0,
                                          stepper(iters[0], f"rigid, {spacings[0]:g} mm"), bias0=bias,
                                          trace=traces[0])
    ran.append(n)
    if base.shape[0] > 1 and n_lv > 1:
        # Choose among the refined candidates at the finest level: near-symmetric shapes (a head
        # turned by 180 degrees) can tie at the coarsest level, where the details are smoothed away.
        fine_f, fine_m = f_levels[-1], m_levels[-1]
        fine_samples = draw_samples(fine_f, samples[-1], rng, bins_lv[-1] if lin_metric == "mi" else None,
                                    features=feats[-1][0], block=samples[-1])
        with torch.no_grad():
            mats = base @ linear_matrices(theta, center, radius, False)
        sims, _ = score_candidates(MovingSampler(fine_m, feats[-1][1]), fine_samples, mats, lin_metric, bins_lv[-1])
    best = int(torch.argmax(sims))
    traces[0] = [(sim[best:best + 1], step[best:best + 1]) for sim, step in traces[0]]
    info["search_refined"] = int(base.shape[0])
    base = base[best:best + 1]
    theta = theta[best:best + 1]
    bias = bias[best:best + 1] if bias is not None else None
    # The samples (and moving samplers) of the remaining steps are prepared in the helper
    # thread while the optimisation runs (drawing a thick-slice pair's finest pool through its
    # slice profile took about as long as optimising the level before it). The slice profile's direction comes from the
    # transform after the coarsest level (what the next level would use; a degree of later
    # rotation changes it negligibly), and ``rng`` is used by that thread alone, in step
    # order, so the result does not depend on timing.
    with torch.no_grad():
        current = (base @ linear_matrices(theta, center, radius, theta.shape[1] == 12))[0].double().cpu().numpy()
    # Each level draws a pool of ``pool`` x its per-iteration samples once; every iteration takes
    # the next window of it. The rigid model is content with a pool of 6 (benchmark: the same
    # TRE within its spread, and a thick-slice pair's finest pool, blurred through the slice
    # profile, no longer outlasts the level before it); the affine model keeps 12.
    pool = float(opts.pool) if opts.pool is not None else (6.0 if mode == "rigid" else 12.0)

    def prepare_step(lv: int, use_affine: bool) -> tuple[MovingSampler, Any]:
        fl, ml = f_levels[lv], m_levels[lv]
        # the affine model keeps ITK's central-difference gradient image: with the derivative of
        # the interpolant (the gather sampler) it measured less robust on CT-like pairs
        sampler = MovingSampler(ml, feats[lv][1], gather=False if use_affine else None)
        profile = slice_profile(fl.geometry, ml.geometry, current) if opts.slice_profile else None
        samp = draw_samples(fl, int(samples[lv] * max(pool, 1.0)), rng,
                            bins_lv[lv] if lin_metric == "mi" else None, features=feats[lv][0], profile=profile,
                            block=samples[lv])
        return sampler, samp

    if parallel:
        prepared: list[Any] = [helper.submit(prepare_step, lv, use_affine) for lv, use_affine in steps]
    else:
        prepared = [_Ready(prepare_step, lv, use_affine) for lv, use_affine in steps]
    theta, bias, sims = _run_steps(steps, prepared, base, theta, bias, sims, center, radius, lin_metric, bins_lv,
                                   iters, samples, spacings, opts, stepper, ran, traces)
    with torch.no_grad():
        affine_t = (base @ linear_matrices(theta, center, radius, affine_mode))[0]
    affine = affine_t.double().cpu().numpy()
    affine[3] = [0.0, 0.0, 0.0, 1.0]
    info["linear_similarity"] = float(sims[0])
    info["final_similarity"] = float(sims[0])
    info["similarity_metric"] = lin_metric
    info["levels_mm"] = spacings
    info["iterations"] = ran
    info["convergence"] = convergence_summary(traces, [(0, False), *steps], spacings, iters, radius)
    if bias is not None:
        info["bias_coefficients"] = [round(float(v), 5) for v in bias[0].cpu()]
    info["linear_runtime_s"] = round(time.perf_counter() - t0, 3)
    # the pyramids, for the verdict (medtorch.registration.verdict): it judges the result at a
    # coarse level of them rather than building its own (register() pops this key)
    info["_pyramids"] = (f_levels, m_levels)

    displacement = None
    if mode == "deformable":
        from medtorch.registration.deformable import register_deformable

        base = None
        if problem.field_predictor is not None:
            report(progress, cancel, lin_share, "network: predicting the field")
            base, on_model_grid, pinfo = problem.field_predictor(affine)
            info.update(pinfo)
            if not problem.refine:
                info["_compact_field"] = on_model_grid  # the field on the model grid: linear at the fixed voxels
                report(progress, cancel, 1.0, "network done")
                return affine, base, info
        t_def = time.perf_counter()
        sub = SubProgress(progress, lin_share, 1.0, "deformable" if base is None else "refining the network's field")
        displacement, dinfo = register_deformable(
            fixed, moving, affine, metric, f_img, m_img, sample_mask, mmask, f_levels, m_levels, device, opts, rng, sub,
            cancel, base_field=base)
        info.update(dinfo)
        if base is not None:
            info["refinement_s"] = round(time.perf_counter() - t_def, 3)
    return affine, displacement, info


def _run_steps(steps: list[tuple[int, bool]], prepared: list[Any], base: torch.Tensor, theta: torch.Tensor,
               bias: torch.Tensor | None, sims: torch.Tensor, center: torch.Tensor, radius: float, lin_metric: str,
               bins_lv: list[int], iters: list[int], samples: list[int], spacings: list[float], opts: TorchOptions,
               stepper: Any, ran: list[int], traces: list[list[tuple[np.ndarray, np.ndarray]]] | None = None,
               ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """The linear steps after the coarsest level (rigid, then affine), with their prepared samples
    (each step's metric trajectory appended to ``traces``)."""
    first_affine = True
    for (lv, use_affine), job in zip(steps, prepared):
        sampler, samp = job.result()
        bins = bins_lv[lv]
        # the first affine level starts with the large step: scales and shears may be far off
        big = lv == 0 or (use_affine and first_affine)
        first_affine = first_affine and not use_affine
        step_mm = (opts.step if big else opts.refine_step) * spacings[lv]
        sched = LevelSchedule(iters[lv], samples[lv], step_mm)
        kind = "affine" if use_affine else "rigid"
        trace: list[tuple[np.ndarray, np.ndarray]] = []
        theta, bias, sims, n = optimise_level(sampler, samp, base, theta, center, radius, use_affine, lin_metric,
                                              bins, sched, stepper(iters[lv], f"{kind}, {spacings[lv]:g} mm"),
                                              bias0=bias, trace=trace)
        ran.append(n)
        if traces is not None:
            traces.append(trace)
    return theta, bias, sims


def convergence_summary(traces: list[list[tuple[np.ndarray, np.ndarray]]], steps: list[tuple[int, bool]],
                        spacings: list[float], iters: list[int], radius: float) -> list[dict[str, Any]]:
    """Each linear step's metric trajectory in a few numbers (plain JSON), for the verdict.

    Per step: the pyramid spacing, the model, iterations run and planned, the similarity on the
    first and the last three iterations' samples (each iteration sees a new window of the
    pool, so single values are noisy), the path length of the parameters (mm at the radius of
    gyration), and over the last 30 % of the iterations the net move and the path length (mm):
    a net move close to the path length means the parameters were still moving in one
    direction when the step ended; far below it, they were jittering about an optimum.
    """
    out = []
    for (lv, affine), trace in zip(steps, traces):
        if not trace:
            continue
        sims = np.array([float(np.asarray(s).reshape(-1)[0]) for s, _ in trace])
        moves = np.stack([np.asarray(m, float).reshape(-1) for _, m in trace])  # [it, P], mm
        n = len(trace)
        tail = moves[int(n * 0.7):] if n >= 4 else moves
        out.append({
            "spacing_mm": float(spacings[lv]), "model": "affine" if affine else "rigid", "iterations": n,
            "planned": int(iters[lv]),
            "similarity_first": round(float(sims[: min(3, n)].mean()), 6),
            "similarity_last": round(float(sims[-min(3, n):].mean()), 6),
            "path_mm": round(float(np.linalg.norm(moves, axis=1).sum()), 5),
            "net_mm": round(float(np.linalg.norm(moves.sum(0))), 5),
            "tail_net_mm": round(float(np.linalg.norm(tail.sum(0))), 5),
            "tail_path_mm": round(float(np.linalg.norm(tail, axis=1).sum()), 5),
        })
    return out


class _Ready:
    """A deferred call with a future's ``result()`` (run in the calling thread when asked)."""

    def __init__(self, fn: Any, *args: Any) -> None:
        self.fn, self.args = fn, args

    def result(self) -> Any:
        return self.fn(*self.args)
