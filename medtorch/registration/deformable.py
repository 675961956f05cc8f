"""Deformable registration on torch: a dense displacement (or velocity) field after the affine.

The transform is ``p_moving = A(p + d(p))`` with ``A`` from the linear stages; the field
``d`` is optimised against ``M(A(p + d(p)))``.

* **Mutual information** (``mi``, the default): the field lives on a control grid (LPS mm)
  refined level by level (default 16 mm at 2 mm, then 8 and 5 mm at the fixed spacing) and is
  interpolated trilinearly at random fixed samples (a pool of ``deformable_pool`` x
  ``deformable_points`` per level, a window of ``deformable_points`` per iteration, sorted
  for memory order); the moving values and their derivatives come from the moving volume
  through ``A`` (:class:`~medtorch.registration.linear.MovingSampler`), the similarity is the
  Parzen MI of :mod:`~medtorch.registration.similarity` (on equalised intensities), the
  step is normalised gradient descent (the largest control-point step is the step size).
* **Dense metrics** (``mind``, ``lncc``, ``mse``): the moving volume is first brought onto a
  working grid in fixed space through ``A`` (one resampling); MIND-SSC descriptors compared
  by MSE, local NCC, or intensity MSE; a control grid (``control_spacing`` mm, default twice
  the working spacing) upsampled trilinearly; with ``diffeomorphic=True`` it holds a
  stationary velocity field whose exponential (scaling and squaring, 7 steps) is the
  displacement: no folding. Momentum with one shared second moment, coarse then fine stage.
* **Regularisation**: ``diffusion`` (squared first differences, mm/mm) or ``bending``
  (squared second differences), weighted by ``regularization_weight``. Cancel is checked at
  every iteration.

The field returned is sampled on the fixed grid (LPS mm), as the ITK displacement field
of ``CompositeTransform([A, d])``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medtorch.errors import MedTorchInputError
from medtorch.progress import CancelToken, ProgressCallback, report
from medtorch.registration.pyramid import PyramidLevel
from medtorch.registration.similarity import feature_mse, lncc_loss, mind_ssc
from medtorch.resample import resample, warp
from medtorch.volume import Geometry, Volume

__all__ = [
    "bending_energy",
    "diffusion_energy",
    "exp_velocity",
    "identity_grid",
    "register_deformable",
    "warp_with_displacement",
]


def identity_grid(shape: tuple[int, int, int], device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """grid_sample coordinates (``align_corners=True``) of every voxel: ``[1, z, y, x, 3]`` (x, y, z)."""
    axes = [torch.linspace(-1.0, 1.0, n, device=device, dtype=dtype) if n > 1 else
            torch.zeros(1, device=device, dtype=dtype) for n in shape]
    zz, yy, xx = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([xx, yy, zz], dim=-1).unsqueeze(0)


def warp_with_displacement(image: torch.Tensor, u: torch.Tensor, grid: torch.Tensor,
                           padding: str = "border") -> torch.Tensor:
    """``image`` (``[1, C, z, y, x]``) at ``x + u(x)``; ``u`` in grid_sample units ``[1, 3 (x, y, z), z, y, x]``
    (a field on another grid of the same extent is upsampled trilinearly first)."""
    if tuple(u.shape[2:]) != tuple(grid.shape[1:4]):
        u = F.interpolate(u, size=tuple(grid.shape[1:4]), mode="trilinear", align_corners=True)
    return F.grid_sample(image, grid + u.permute(0, 2, 3, 4, 1), mode="bilinear", padding_mode=padding,
                         align_corners=True)


def exp_velocity(v: torch.Tensor, steps: int = 7) -> torch.Tensor:
    """Scaling and squaring: the displacement of the exponential of the stationary velocity
    field ``v`` (grid_sample units, ``[1, 3, z, y, x]``), on the same grid."""
    grid = identity_grid(tuple(v.shape[2:]), v.device, v.dtype)  # type: ignore[arg-type]
    u = v / (2 ** steps)
    for _ in range(steps):
        u = u + warp_with_displacement(u, u, grid)
    return u


def diffusion_energy(u_mm: torch.Tensor, spacing: torch.Tensor) -> torch.Tensor:
    """Mean squared first differences of ``u_mm`` (``[1, 3, z, y, x]``, mm) over ``spacing`` (i, j, k mm): (mm/mm)^2."""
    dz = (u_mm[:, :, 1:] - u_mm[:, :, :-1]) / spacing[2]
    dy = (u_mm[:, :, :, 1:] - u_mm[:, :, :, :-1]) / spacing[1]
    dx = (u_mm[:, :, :, :, 1:] - u_mm[:, :, :, :, :-1]) / spacing[0]
    return (dz ** 2).mean() + (dy ** 2).mean() + (dx ** 2).mean()


def bending_energy(u_mm: torch.Tensor, spacing: torch.Tensor) -> torch.Tensor:
    """Mean squared second differences of ``u_mm`` (``[1, 3, z, y, x]``, mm): (1/mm)^2 (cross terms left out)."""
    dzz = (u_mm[:, :, 2:] - 2 * u_mm[:, :, 1:-1] + u_mm[:, :, :-2]) / spacing[2] ** 2
    dyy = (u_mm[:, :, :, 2:] - 2 * u_mm[:, :, :, 1:-1] + u_mm[:, :, :, :-2]) / spacing[1] ** 2
    dxx = (u_mm[:, :, :, :, 2:] - 2 * u_mm[:, :, :, :, 1:-1] + u_mm[:, :, :, :, :-2]) / spacing[0] ** 2
    return (dzz ** 2).mean() + (dyy ** 2).mean() + (dxx ** 2).mean()


def _level_at(levels: list[PyramidLevel], image: torch.Tensor, geometry: Geometry, spacing: float,
              mask: torch.Tensor | None) -> PyramidLevel:
    """The pyramid level with this spacing, or one built from the full-resolution image."""
    for lv in levels:
        if abs(lv.spacing_mm - spacing) < 1e-6 or (np.allclose(lv.geometry.spacing, np.maximum(geometry.spacing, spacing))):
            return lv
    from medtorch.registration.pyramid import build_pyramid

    return build_pyramid(image, geometry, [spacing], mask)[0]


def _features(image: torch.Tensor, metric: str) -> torch.Tensor:
    """``[1, C, z, y, x]`` what the loss compares: MIND-SSC descriptors, or the image itself."""
    x = image.unsqueeze(0) if image.ndim == 4 else image
    if metric == "mind":
        return mind_ssc(x, radius=1, dilation=2)
    return x


def _loss(metric: str, fixed_f: torch.Tensor, warped: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if metric == "lncc":
        return lncc_loss(fixed_f, warped, radius=2, mask=mask)
    return feature_mse(fixed_f, warped, mask)


def _control_shape(shape: tuple[int, int, int], spacing: np.ndarray, control_mm: float) -> tuple[int, int, int]:
    """Control grid size (z, y, x) spanning a grid ``shape`` (z, y, x) with ``spacing`` (i, j, k) mm."""
    extent = (np.asarray(shape[::-1], float) - 1) * spacing  # i, j, k
    n = np.maximum(np.ceil(extent / control_mm).astype(int) + 1, 2)
    return int(n[2]), int(n[1]), int(n[0])


class _Stage:
    """One resolution of the deformable optimisation (see :func:`_optimise_stage`)."""

    def __init__(self, fixed_f: torch.Tensor, moving_f: torch.Tensor, mask: torch.Tensor | None,
                 spacing: np.ndarray, control_mm: float) -> None:
        self.fixed_f, self.moving_f, self.mask = fixed_f, moving_f, mask
        self.shape = tuple(int(n) for n in fixed_f.shape[2:])
        self.cshape = _control_shape(self.shape, spacing, control_mm)  # type: ignore[arg-type]
        dev, dtype = fixed_f.device, fixed_f.dtype
        # mm per grid_sample unit along x (i), y (j), z (k): the same on both grids (corners aligned)
        half = (np.asarray(self.shape[::-1], float) - 1) / 2.0 * spacing
        self.half_extent = torch.tensor(half, device=dev, dtype=dtype).view(1, 3, 1, 1, 1)
        cn = np.asarray(self.cshape[::-1], float)
        self.ctrl_spacing = torch.tensor(2.0 * half / np.maximum(cn - 1, 1), device=dev, dtype=dtype)
        #: a fixed starting field (grid_sample units on the stage grid) the optimised field is added to
        self.base: torch.Tensor | None = None


def _optimise_stage(stage: _Stage, ctrl0: torch.Tensor | None, metric: str, reg: str, reg_weight: float,
                    diffeomorphic: bool, iterations: int, step_mm: float, points: int | None,
                    rng: np.random.Generator, on_step: Any) -> torch.Tensor:
    """Adam on a control grid (grid_sample units) for one stage; returns the control grid.

    With ``points`` (and a point-wise metric), each iteration evaluates the loss at that many
    random voxels of the stage grid (inside the mask): the field there is the trilinear
    interpolation of the control grid, as on the dense grid, at a fraction of the cost.
    """
    dev, dtype = stage.fixed_f.device, stage.fixed_f.dtype
    if ctrl0 is None:
        ctrl = torch.zeros((1, 3) + stage.cshape, device=dev, dtype=dtype)
    else:
        ctrl = F.interpolate(ctrl0, size=stage.cshape, mode="trilinear", align_corners=True)
    ctrl.requires_grad_(True)
    energy = diffusion_energy if reg == "diffusion" else bending_energy
    lr0 = float(step_mm) / float(stage.half_extent.mean())
    m1 = torch.zeros_like(ctrl)
    v1 = torch.zeros((), device=dev, dtype=dtype)
    beta1, beta2 = 0.9, 0.99
    n_vox = int(np.prod(stage.shape))
    data_scale = 1.0
    channels = stage.fixed_f.shape[1]
    stochastic = points is not None and metric != "lncc" and points < n_vox
    if stochastic:
        cand = (torch.nonzero(stage.mask.reshape(-1)).reshape(-1).cpu().numpy() if stage.mask is not None
                else np.arange(n_vox))
        pool = torch.from_numpy(rng.permutation(cand)).to(dev)
        nz, ny, nx = stage.shape
        fixed_flat = stage.fixed_f.reshape(channels, -1)
        per = min(int(points), int(pool.numel()))  # type: ignore[arg-type]
    else:
        grid = identity_grid(stage.shape, dev, dtype)  # type: ignore[arg-type]
    for it in range(iterations):
        lr = lr0 * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * it / max(iterations, 1))))
        ctrl.grad = None
        field = exp_velocity(ctrl) if diffeomorphic else ctrl
        if stochastic:
            # sorted: neighbouring points read neighbouring memory (8x faster on a CPU than random order)
            idx = torch.sort(pool[(torch.arange(per, device=dev) + it * per) % pool.numel()]).values
            k = (idx // (ny * nx)).to(dtype)
            j = ((idx // nx) % ny).to(dtype)
            i = (idx % nx).to(dtype)
            g = torch.stack([i * (2.0 / max(nx - 1, 1)) - 1.0, j * (2.0 / max(ny - 1, 1)) - 1.0,
                             k * (2.0 / max(nz - 1, 1)) - 1.0], dim=-1).view(1, 1, 1, -1, 3)
            u = F.grid_sample(field, g, mode="bilinear", padding_mode="border", align_corners=True)
            if stage.base is not None:
                u = u + F.grid_sample(stage.base, g, mode="bilinear", padding_mode="border", align_corners=True)
            warped = F.grid_sample(stage.moving_f, g + u.permute(0, 2, 3, 4, 1), mode="bilinear",
                                   padding_mode="border", align_corners=True).reshape(channels, -1)
            data = ((warped - fixed_flat[:, idx]) ** 2).mean()
        else:
            full = field
            if stage.base is not None:
                full = F.interpolate(field, size=stage.shape, mode="trilinear", align_corners=True) + stage.base
            warped = warp_with_displacement(stage.moving_f, full, grid)
            data = _loss(metric, stage.fixed_f, warped, stage.mask)
        if it == 0:  # the data term is scaled to 1 at the start, so the weight is relative
            data_scale = 1.0 / max(float(data.detach()), 1e-12)
        loss = data * data_scale + reg_weight * energy(field * stage.half_extent, stage.ctrl_spacing)
        loss.backward()
        with torch.no_grad():
            # momentum with one shared second moment (RMS over the whole grid): unlike Adam's
            # per-parameter scaling, control points with little evidence (air, flat regions)
            # take small steps instead of full-size noisy ones
            g = ctrl.grad
            m1.mul_(beta1).add_(g, alpha=1 - beta1)
            v1.mul_(beta2).add_((g * g).mean(), alpha=1 - beta2)
            denom = torch.sqrt(v1 / (1 - beta2 ** (it + 1))) + 1e-12
            step = (m1 / (1 - beta1 ** (it + 1)) / denom).clamp_(-3.0, 3.0)
            ctrl.sub_(lr * step)
        on_step(it)
    return ctrl.detach()


def _mi_deformable(fixed: Volume, moving: Volume, affine: np.ndarray, f_img: torch.Tensor, m_img: torch.Tensor,
                   sample_mask: torch.Tensor | None, mmask: torch.Tensor | None, f_levels: list[PyramidLevel],
                   m_levels: list[PyramidLevel], device: torch.device, opts: Any, rng: np.random.Generator,
                   progress: ProgressCallback | None, cancel: CancelToken | None,
                   base: torch.Tensor | None = None) -> tuple[torch.Tensor, Geometry, dict[str, Any]]:
    """Mutual information with a control-grid field, on sampled points (see :func:`register_deformable`).

    Returns the control grid (``[1, 3, z, y, x]``, LPS mm, corners on the fixed grid's corner
    voxels), its geometry, and info.
    """
    from medtorch.registration.linear import MovingSampler, draw_samples
    from medtorch.registration.pyramid import build_pyramid, equalize
    from medtorch.registration.similarity import mutual_information

    # The deformable stage bins equalised intensities (each volume's foreground spread evenly
    # over the histogram): the local contrasts that drive a field (soft tissue in CT) then get
    # bins of their own. (The linear stages keep the percentile scaling, which measured better
    # for them.) The pyramid levels are rebuilt from the equalised volumes.
    if opts.intensity != "percentile_all":
        f_img = equalize(f_img, sample_mask)
        m_img = equalize(m_img, mmask)
        f_levels, m_levels = [], []
    s_fixed = float(np.median(fixed.spacing))
    # Default: a coarse level (2 mm, or twice the fixed spacing), then the fixed spacing twice,
    # the control grid refined 16 -> 8 -> 5 mm. Measured on the benchmark's CT-like pair: the
    # third level (a finer grid from the second's result) lowered the TRE from about 0.60 to
    # 0.56-0.58 mm; a coarser last level (1.5 or 2 mm) or blurring the moving volume raised it.
    # (with per-level iterations or control spacings but no levels given, their count sets the
    # number of levels: the coarse level, then the fixed spacing)
    given = opts.control_spacings if opts.control_spacings is not None else opts.deformable_iterations
    n_given = len(given) if given is not None and not isinstance(given, (int, np.integer)) else 3
    spacings = list(opts.deformable_levels) if opts.deformable_levels is not None else \
        ([max(2.0, 2.0 * s_fixed)] + [s_fixed] * (n_given - 1) if n_given > 1 else [s_fixed])
    n_lv = len(spacings)
    if opts.control_spacings is not None:
        controls = [float(c) for c in opts.control_spacings]
    elif opts.control_spacing is not None:
        controls = [float(opts.control_spacing)] * n_lv
    else:  # 16, 8, then 5 mm (at least 4, 4, 2.5 voxels of the level)
        controls = [max((16.0, 8.0, 5.0)[min(i, 2)], (4.0 if i < 2 else 2.5) * sp) for i, sp in enumerate(spacings)]
    iters = opts.deformable_iterations
    if iters is None:
        iters = ([60, 50, 50] + [40] * n_lv)[:n_lv]
    elif isinstance(iters, (int, np.integer)):
        iters = [int(iters)] * n_lv
    iters = [int(i) for i in iters]
    points = int(opts.deformable_points or 100_000)
    bins = int(opts.deformable_bins or 32)  # 32 measured better than 16, 24, 64 or 128 (CT-like pair)
    if len(controls) != n_lv or len(iters) != n_lv:
        raise MedTorchInputError("control_spacings and deformable_iterations need one value per deformable level",
                                 f"give {n_lv} values each (levels {spacings} mm)")
    reg_weight = float(opts.regularization_weight if opts.regularization_weight is not None else
                       (0.1 if opts.regularization == "diffusion" else 10.0))
    energy = diffusion_energy if opts.regularization == "diffusion" else bending_energy
    geom = fixed.geometry
    extent = (np.asarray(geom.size, float) - 1) * np.asarray(geom.spacing, float)  # i, j, k
    a_t = torch.tensor(affine, dtype=torch.float32, device=device).unsqueeze(0)
    ctrl: torch.Tensor | None = None
    total = sum(iters)
    done = 0
    info_levels = []
    for lv, (sp, cmm, n_it) in enumerate(zip(spacings, controls, iters)):
        fl = next((x for x in f_levels if abs(x.spacing_mm - sp) < 1e-6), None)
        ml = next((x for x in m_levels if abs(x.spacing_mm - sp) < 1e-6), None)
        if fl is None:
            fl = build_pyramid(f_img, geom, [sp], sample_mask)[0]
        if ml is None:
            ml = build_pyramid(m_img, moving.geometry, [sp], mmask)[0]
        sampler = MovingSampler(ml)
        pool = draw_samples(fl, max(points * int(opts.deformable_pool), 1), rng, bins, block=points)
        # fixed-grid (control-grid) coordinates of the samples: constant for the level
        to_norm = np.eye(4)
        to_norm[:3, :3] = np.diag(2.0 / np.maximum(np.asarray(geom.size, float) - 1, 1))
        to_norm[:3, 3] = -1.0
        m_norm = torch.tensor(to_norm @ geom.lps_to_ijk(), dtype=torch.float32, device=device)
        g_all = pool.points @ m_norm[:3, :3].T + m_norm[:3, 3]
        ub_all = None
        if base is not None:  # the starting field at the samples (LPS mm): constant for the level
            ub_all = F.grid_sample(base, g_all.view(1, 1, 1, -1, 3), mode="bilinear", padding_mode="border",
                                   align_corners=True).view(3, -1).T
        cshape_ijk = np.maximum(np.ceil(extent / cmm).astype(int) + 1, 2)
        cshape = (int(cshape_ijk[2]), int(cshape_ijk[1]), int(cshape_ijk[0]))
        cspacing = torch.tensor(extent / np.maximum(cshape_ijk - 1, 1), dtype=torch.float32, device=device)
        if ctrl is None:
            ctrl = torch.zeros((1, 3) + cshape, device=device)
        else:
            ctrl = F.interpolate(ctrl, size=cshape, mode="trilinear", align_corners=True)
        ctrl.requires_grad_(True)
        per = min(points, len(pool))
        n_pool = len(pool)
        # the largest control-point step (mm): default 2 mm at 2 mm, 1 mm at 1 mm (measured better
        # than half that, which left the weak-gradient brain interior short of converged)
        step0 = float(opts.deformable_step) * sp * 0.5
        mi0 = None
        for it in range(n_it):
            lr = step0 * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * it / max(n_it, 1))))
            ctrl.grad = None
            sel = torch.sort((torch.arange(per, device=device) + it * per) % n_pool).values
            g = g_all[sel].view(1, 1, 1, -1, 3)
            u = F.grid_sample(ctrl, g, mode="bilinear", padding_mode="border", align_corners=True)
            p = pool.points[sel] + u.view(3, -1).T
            if ub_all is not None:
                p = p + ub_all[sel]
            vals, w = sampler(p, a_t)
            mi = mutual_information(pool.bins[sel], vals[:, 0], w, bins)[0]  # type: ignore[index]
            if mi0 is None:
                mi0 = max(float(mi.detach()), 1e-6)
            loss = -mi / mi0 + reg_weight * energy(ctrl, cspacing)
            loss.backward()
            with torch.no_grad():  # normalised gradient descent: the largest control-point step is lr (mm)
                grad = ctrl.grad
                ctrl.sub_(grad * (lr / (float(grad.abs().max()) + 1e-12)))
            done += 1
            report(progress, cancel, 0.05 + 0.85 * done / total, f"deformable, {sp:g} mm")
        ctrl = ctrl.detach()
        info_levels.append({"spacing_mm": sp, "control_mm": cmm, "iterations": n_it})
    assert ctrl is not None
    n_ijk = np.asarray(ctrl.shape[2:][::-1])
    cgeom = Geometry(tuple(int(v) for v in n_ijk), geom.origin, extent / np.maximum(n_ijk - 1, 1), geom.direction)
    info = {"final_mi": float(mi.detach()) if total else None, "deformable_metric": "mi", "deformable_levels": info_levels, "deformable_points": points,
            "deformable_bins": bins, "regularization": opts.regularization, "regularization_weight": reg_weight}
    return ctrl, cgeom, info


def register_deformable(fixed: Volume, moving: Volume, affine: np.ndarray, metric: str, f_img: torch.Tensor,
                        m_img: torch.Tensor, fmask: torch.Tensor | None, mmask: torch.Tensor | None,
                        f_levels: list[PyramidLevel], m_levels: list[PyramidLevel], device: torch.device,
                        opts: Any, rng: np.random.Generator, progress: ProgressCallback | None,
                        cancel: CancelToken | None, base_field: Volume | None = None) -> tuple[Volume, dict[str, Any]]:
    """The deformable stage after ``affine``; returns (displacement on the fixed grid, info).

    ``base_field`` (LPS mm on the fixed grid, e.g. a network's prediction): the stage starts from
    it and optimises a smooth correction added to it (instance optimisation); the regulariser
    acts on the correction. The field returned is the sum.
    """
    dmetric = (opts.deformable_metric or metric).lower()
    if dmetric == "ncc":
        dmetric = "mse"
    if dmetric not in ("mi", "mind", "lncc", "mse"):
        raise MedTorchInputError(f"deformable_metric={dmetric!r} is not supported", "use mi, mind, lncc or mse")
    if dmetric == "mi":
        if opts.diffeomorphic:
            raise MedTorchInputError("diffeomorphic=True is available with the mind, lncc and mse metrics",
                                     "use deformable_metric='mind', or diffeomorphic=False")
        base_t = None if base_field is None else base_field.to_torch(device, torch.float32).unsqueeze(0)
        ctrl, cgeom, info = _mi_deformable(fixed, moving, affine, f_img, m_img, fmask, mmask, f_levels, m_levels,
                                           device, opts, rng, progress, cancel, base_t)
        report(progress, cancel, 0.92, "deformable: field on the fixed grid")
        with torch.no_grad():
            u = F.interpolate(ctrl, size=fixed.geometry.shape_zyx, mode="trilinear", align_corners=True)[0]
            if base_t is not None:
                u = u + base_t[0]
        field = Volume.from_torch(u.cpu(), fixed.geometry, kind="vector")
        field.metadata = {"what": "displacement field (LPS, mm), applied before the affine"}
        if base_t is None:
            # The same field on its control grid (corners on the fixed grid's corner voxels): sampling
            # it linearly at the fixed voxels gives exactly ``field``, at a fraction of the cost.
            info["_compact_field"] = Volume.from_torch(ctrl[0].cpu(), cgeom, kind="vector")
        info["final_similarity"] = info.pop("final_mi", None)
        report(progress, cancel, 1.0, "deformable done")
        return field, info
    s_fixed = float(np.median(fixed.spacing))
    work_mm = float(opts.deformable_spacing or max(2.0, s_fixed))
    control_mm = float(opts.control_spacing or 2.0 * work_mm)
    iters = opts.deformable_iterations
    if iters is None:
        iters = (80, 40)
    elif isinstance(iters, (int, np.integer)):
        iters = (int(iters), int(iters))
    iters = tuple(int(i) for i in iters)
    if len(iters) != 2:
        raise MedTorchInputError("deformable_iterations needs two values (coarse stage, fine stage)",
                                 "give e.g. (80, 40)")
    reg_weight = float(opts.regularization_weight if opts.regularization_weight is not None else
                       (0.5 if opts.regularization == "diffusion" else 50.0))
    report(progress, cancel, 0.0, "deformable: preparing features")

    fl = _level_at(f_levels, f_img, fixed.geometry, work_mm, fmask)
    work = fl.geometry
    ml = _level_at(m_levels, m_img, moving.geometry, work_mm, mmask)
    with torch.no_grad():
        m_aff = warp(ml.image, ml.geometry, work, torch.tensor(affine, dtype=torch.float32, device=device))
        fixed_f = _features(fl.image, dmetric)
        moving_f = _features(m_aff, dmetric)
        mask = (fl.mask > 0.5).unsqueeze(0) if fl.mask is not None else None
    report(progress, cancel, 0.15, "deformable: coarse stage")
    spacing = np.asarray(work.spacing, float)
    with torch.no_grad():  # coarse stage: features pooled by 2
        fixed_c = F.avg_pool3d(fixed_f, 2, ceil_mode=True)
        moving_c = F.avg_pool3d(moving_f, 2, ceil_mode=True)
        mask_c = (F.max_pool3d(mask.float(), 2, ceil_mode=True) > 0.5) if mask is not None else None
    spacing_c = spacing * (np.asarray(fixed_f.shape[2:][::-1], float) - 1) / np.maximum(
        np.asarray(fixed_c.shape[2:][::-1], float) - 1, 1)
    total = sum(iters)

    def stepper(offset: int, msg: str):
        def step(i: int) -> None:
            report(progress, cancel, 0.15 + 0.75 * (offset + i + 1) / total, msg)
        return step

    diffeo = bool(opts.diffeomorphic)
    base_n = None
    if base_field is not None:  # the starting field in grid_sample units (x, y, z) of the working grid
        with torch.no_grad():
            b = base_field if base_field.geometry.isclose(work, atol=1e-6) else resample(base_field, work, device=device)
            to_vox = torch.tensor(np.linalg.inv(work.direction @ np.diag(work.spacing)), dtype=torch.float32,
                                  device=device)
            b_vox = torch.einsum("rc,czyx->rzyx", to_vox, b.to_torch(device, torch.float32))
            half = (torch.tensor(fixed_f.shape[2:][::-1], device=device, dtype=torch.float32) - 1) / 2.0
            base_n = (b_vox / half.clamp(min=1.0).view(3, 1, 1, 1)).unsqueeze(0)
    coarse = _Stage(fixed_c, moving_c, mask_c, spacing_c, 2.0 * control_mm)
    if base_n is not None:
        coarse.base = F.interpolate(base_n, size=coarse.shape, mode="trilinear", align_corners=True)
    # steps (mm): half of deformable_step at the coarse stage, a quarter at the fine one
    ctrl = _optimise_stage(coarse, None, dmetric, opts.regularization, reg_weight, diffeo, iters[0],
                           float(opts.deformable_step) * 0.5, None, rng, stepper(0, f"deformable, {2 * work_mm:g} mm"))
    fine = _Stage(fixed_f, moving_f, mask, spacing, control_mm)
    fine.base = base_n
    ctrl = _optimise_stage(fine, ctrl, dmetric, opts.regularization, reg_weight, diffeo, iters[1],
                           float(opts.deformable_step) * 0.25, opts.deformable_points or 200_000, rng,
                           stepper(iters[0], f"deformable, {work_mm:g} mm"))
    report(progress, cancel, 0.92, "deformable: field on the fixed grid")
    with torch.no_grad():
        field_n = exp_velocity(ctrl) if diffeo else ctrl
        u_n = F.interpolate(field_n, size=fine.shape, mode="trilinear", align_corners=True)
        if base_n is not None:
            u_n = u_n + base_n
        final = _loss(dmetric, fixed_f, warp_with_displacement(moving_f, u_n, identity_grid(fine.shape, device)), mask)
        # grid_sample units (x, y, z) -> voxels (i, j, k) -> LPS mm
        u_vox = u_n * (torch.tensor(fine.shape[::-1], device=device, dtype=u_n.dtype).view(1, 3, 1, 1, 1) - 1) / 2.0
        m = torch.tensor(work.direction @ np.diag(work.spacing), dtype=torch.float32, device=device)
        u_lps = torch.einsum("rc,bczyx->brzyx", m, u_vox)[0]  # [3, z, y, x]
    field_work = Volume.from_torch(u_lps.cpu(), work, kind="vector")
    if work.isclose(fixed.geometry, atol=1e-6):
        field = field_work
    else:
        field = resample(field_work, fixed.geometry, device=device, cancel=cancel)
    field.metadata = {"what": "displacement field (LPS, mm), applied before the affine"}
    info = {"deformable_metric": dmetric, "deformable_spacing_mm": work_mm, "control_spacing_mm": control_mm,
            "deformable_iterations": list(iters), "regularization": opts.regularization,
            "regularization_weight": reg_weight, "diffeomorphic": diffeo,
            "deformable_points": opts.deformable_points}
    info["final_similarity"] = -float(final)
    info["similarity_metric"] = f"-{dmetric} loss"
    report(progress, cancel, 1.0, "deformable done")
    return field, info
