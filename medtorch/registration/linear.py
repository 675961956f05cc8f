"""Rigid and affine registration on torch: sampled similarity, pyramid, Adam, multi-start search.

How it works (all in LPS mm; the transform maps fixed points to moving points):

* **Samples.** At every pyramid level a seeded random subset of the fixed level's voxels
  (inside the fixed mask) is drawn once, jittered by up to half a voxel (which removes the
  interpolation artefacts of grid-aligned sampling); the fixed values there are fixed for
  the level, so the objective is deterministic and smooth for Adam.
* **Transform.** ``T(p) = B (L (p - c) + c + t)``, with ``B`` the initial transform, ``c``
  the fixed foreground's centre of mass, ``L = R(r) diag(exp(s)) (I + H)`` (rotation vector
  ``r``; for affine also log-scales ``s`` and shears ``H``, upper triangular). Every
  parameter is scaled to millimetres of displacement at the radius of gyration of the
  fixed foreground, so a single Adam step size (a fraction of the level's spacing) suits them all.
* **Search.** ``init="auto"`` scores a grid of rotations (every 20 degrees up to 40 about
  each axis), plus the principal-axes candidates, all about the centres of mass, by the
  similarity at the coarsest level in one batched evaluation; the best few are refined
  together (a batch of independent Adam runs) and the best of those carries on. This is
  what survives 30 degrees and 40 mm of misalignment.
* **Moving values** come from ``grid_sample`` at the mapped points, split into one batch item
  per CPU thread; samples that map outside the moving volume (or its mask) get weight 0.
* **Gradients.** For MI (the default) the derivative is written out: MI with respect to each
  moving value (Parzen histogram), the value with respect to its grid position (gradient
  image or interpolant), the grid with respect to the matrix, and the matrix with respect to
  the parameters (float64 Jacobian); no autograd graph is built in the loop, whose cost was
  mostly per-op overhead on a few thousand samples.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from medtorch.errors import MedTorchInputError
from medtorch.progress import CancelToken, ProgressCallback, report
from medtorch.registration.pyramid import PyramidLevel
from medtorch.registration.similarity import (
    fixed_bin_index,
    mse,
    mutual_information,
    mutual_information_and_gradient,
    ncc,
)
from medtorch.resample import sample

__all__ = [
    "LevelSchedule",
    "MovingSampler",
    "SampleSet",
    "bias_basis",
    "draw_samples",
    "linear_matrices",
    "optimise_level",
    "rotation_matrices",
    "score_candidates",
    "similarity_of",
    "trilinear_gather",
]


@dataclass
class SampleSet:
    """Fixed samples of one level: LPS ``points`` ``[N, 3]``, values ``[C, N]`` and MI bins ``[N]``."""

    points: torch.Tensor
    values: torch.Tensor
    bins: torch.Tensor | None

    def __len__(self) -> int:
        return int(self.points.shape[0])

    def window(self, start: int, n: int) -> SampleSet:
        """``n`` consecutive samples from ``start`` (wrapping); the pool is in random order, so
        each window is a random subset."""
        total = len(self)
        start %= total
        if start + n <= total:  # a contiguous run: views, no copy
            return SampleSet(self.points[start:start + n], self.values[:, start:start + n],
                             self.bins[start:start + n] if self.bins is not None else None)
        idx = (torch.arange(n, device=self.points.device) + start) % total
        return SampleSet(self.points[idx], self.values[:, idx],
                         self.bins[idx] if self.bins is not None else None)


@dataclass
class LevelSchedule:
    """Iterations, samples and Adam step (mm) of one level."""

    iterations: int
    samples: int
    step_mm: float


#: Fixed-image bins as a share of the moving image's: the joint histogram stays denser (less
#: noisy) for the same number of samples; mutual information keeps all of the moving volume's
#: intensity resolution (CT soft tissue is a few bins wide out of -1000..1000 HU).
FIXED_BIN_FRACTION = 0.5


def draw_samples(level: PyramidLevel, n: int, rng: np.random.Generator, bins: int | None,
                 jitter: bool = True, features: torch.Tensor | None = None,
                 profile: tuple[np.ndarray, float] | None = None, block: int | None = None) -> SampleSet:
    """Draw ``n`` fixed samples (all voxels if fewer) inside the level's mask, in random order.

    ``block``: the samples are sorted by voxel (memory) order within consecutive blocks of
    that many, so that each block -- the window an iteration uses -- is still a random subset,
    but reads the images in memory order (interpolating at random points misses the CPU
    caches: sorted, ``grid_sample`` measured 3-5x faster on a 1 Mvoxel level).

    ``features`` (``[C, z, y, x]`` on the level grid) are sampled instead of the image when given.
    ``profile = (direction, sigma_mm)`` blurs the fixed values along a unit LPS direction
    with a Gaussian (5-point Gauss-Hermite quadrature, exact for polynomials up to degree
    9 along the line; it matched 9 taps over +-3 sigma within 2e-4 of the unit range on the
    benchmark's thick-slice pairs at 55 % of their cost): the slice profile of a thick-slice moving
    volume, so that both sides of the similarity see the same resolution along its slices.
    """
    img = level.image
    dev = img.device
    shape = img.shape[1:]
    if level.mask is not None:
        cand = torch.nonzero(level.mask.reshape(-1) > 0.5).reshape(-1).cpu().numpy()
    else:
        cand = np.arange(int(np.prod(shape)))
    if cand.size == 0:
        raise MedTorchInputError("the fixed mask is empty at this resolution",
                                 "give a fixed mask that covers the region to align (or no mask)")
    if cand.size > n:
        cand = rng.choice(cand, size=n, replace=False)
    else:
        cand = rng.permutation(cand)
    if block is not None and block > 0:
        b = int(block)
        cand = np.concatenate([np.sort(cand[s:s + b]) for s in range(0, cand.size, b)])
    nz, ny, nx = shape
    k = cand // (ny * nx)
    j = (cand // nx) % ny
    i = cand % nx
    ijk = np.stack([i, j, k], axis=1).astype(np.float64)
    if jitter:
        ijk = ijk + rng.uniform(-0.5, 0.5, size=ijk.shape)
        upper = np.array([nx - 1, ny - 1, nz - 1], float)
        ijk = np.clip(ijk, 0.0, upper)
    m = torch.from_numpy(level.geometry.ijk_to_lps())  # (a BLAS product: numpy's (N,3)@(3,3) is 10x slower)
    points = (torch.from_numpy(ijk) @ m[:3, :3].T + m[:3, 3]).to(device=dev, dtype=torch.float32)
    src = features if features is not None else img
    with torch.no_grad():
        if profile is None or profile[1] <= 0.05 * float(min(level.geometry.spacing)):
            values = sample(src, points, level.geometry, "linear", 0.0)  # [C, N]
        else:
            direction = torch.tensor(np.asarray(profile[0], float), dtype=torch.float32, device=dev)
            nodes, weights = np.polynomial.hermite_e.hermegauss(5)  # for the weight exp(-x^2 / 2)
            taps, weights = nodes, weights / weights.sum()
            values = sum(float(w) * sample(src, points + float(t * profile[1]) * direction, level.geometry,
                                           "linear", 0.0) for t, w in zip(taps, weights))
    fb = fixed_bin_index(values[0], max(8, int(bins * FIXED_BIN_FRACTION))) if bins is not None else None
    return SampleSet(points, values, fb)


def _index_gradient(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Central difference along ``dim`` (one-sided at the ends)."""
    n = t.shape[dim]
    out = torch.empty_like(t)
    fwd = t.narrow(dim, 1, n - 1) - t.narrow(dim, 0, n - 1)
    out.narrow(dim, 0, 1).copy_(fwd.narrow(dim, 0, 1))
    out.narrow(dim, n - 1, 1).copy_(fwd.narrow(dim, n - 2, 1))
    if n > 2:
        out.narrow(dim, 1, n - 2).copy_((t.narrow(dim, 2, n - 2) - t.narrow(dim, 0, n - 2)) * 0.5)
    return out


class _SampleWithGradientImage(torch.autograd.Function):
    """``grid_sample`` of an image whose channels are ``[value, d/dx, d/dy, d/dz]`` (derivatives in
    grid_sample units): returns the value; the gradient with respect to the grid is the sampled
    derivative image (ITK's approach: a central-difference gradient image), which spares the
    costly backward pass of ``grid_sample``."""

    @staticmethod
    def forward(ctx, grid: torch.Tensor, image: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=True)
        ctx.save_for_backward(out[:, 1:4])
        return out[:, :1]

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        (deriv,) = ctx.saved_tensors  # [B, 3, 1, 1, n]
        return (grad_out * deriv).permute(0, 2, 3, 4, 1), None


#: Above this many voxels a single-channel moving level is interpolated by :func:`trilinear_gather`
#: instead of ``grid_sample`` on a value-and-derivatives image: four channels of a large
#: volume no longer fit in the CPU caches, and ``grid_sample`` then measured 3x slower per
#: point than eight gathers of the one channel (64^3 is about the crossover). The gradient
#: is then the exact derivative of the interpolant rather than ITK's central-difference
#: image: on the benchmark it measured as accurate for rigid and better for the deformable
#: stage (CT-like TRE 0.61 against 0.64 mm), but less robust for the affine model, which
#: keeps the gradient image (``MovingSampler(..., gather=False)``).
GATHER_VOXELS = 64**3


def _corners(flat: torch.Tensor, shape: tuple[int, int, int], grid: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The eight corner values ``[N, 8]`` of each ``grid`` point (``[N, 3]``, grid_sample units,
    border padding), the fractions ``[N, 3]``, where the point is inside (``[N, 3]``, per axis)
    and the per-axis voxels per grid unit ``[3]``."""
    nz, ny, nx = shape
    dev, dtype = grid.device, grid.dtype
    upper = torch.tensor([nx - 1, ny - 1, nz - 1], device=dev, dtype=dtype)
    raw = (grid + 1.0) * (0.5 * upper)
    v = raw.clamp(min=0.0).minimum(upper)
    i0 = v.floor().minimum((upper - 1.0).clamp(min=0.0))
    sx, sy, sz = (1 if nx > 1 else 0), (nx if ny > 1 else 0), (nx * ny if nz > 1 else 0)
    base = (i0.long() * torch.tensor([1, nx, nx * ny], device=dev)).sum(1)
    off = torch.tensor([0, sx, sy, sy + sx, sz, sz + sx, sz + sy, sz + sy + sx], device=dev)
    return flat[base.unsqueeze(1) + off], v - i0, raw == v, 0.5 * upper


def _interpolate(c: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Trilinear value ``[N]`` from corners ``[N, 8]`` ((x0,x1) x (y0,y1) x (z0,z1), x fastest)."""
    fx, fy, fz = f.unbind(1)
    cx = torch.lerp(c[:, 0::2], c[:, 1::2], fx.unsqueeze(1))
    cy = torch.lerp(cx[:, 0::2], cx[:, 1::2], fy.unsqueeze(1))
    return torch.lerp(cy[:, 0], cy[:, 1], fz)


def _interpolant_gradient(c: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Derivatives ``[N, 3]`` (x, y, z; per voxel) of the trilinear interpolant of corners ``[N, 8]``."""
    fx, fy, fz = f.unbind(1)
    dx = c[:, 1::2] - c[:, 0::2]  # along x at (y0z0, y1z0, y0z1, y1z1)
    cx = c[:, 0::2] + fx.unsqueeze(1) * dx
    dy = cx[:, 1::2] - cx[:, 0::2]  # along y at z0, z1
    cy = cx[:, 0::2] + fy.unsqueeze(1) * dy
    dxy = torch.lerp(dx[:, 0::2], dx[:, 1::2], fy.unsqueeze(1))
    return torch.stack([torch.lerp(dxy[:, 0], dxy[:, 1], fz), torch.lerp(dy[:, 0], dy[:, 1], fz),
                        cy[:, 1] - cy[:, 0]], dim=1)


def trilinear_gather(flat: torch.Tensor, shape: tuple[int, int, int], grid: torch.Tensor,
                     with_gradient: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Trilinear interpolation of a ``[z, y, x]`` volume (``flat``: its values, flattened) at
    ``grid`` (``[N, 3]``, ``grid_sample`` units, ``align_corners=True``, border padding).

    Returns the values ``[N]`` and, with ``with_gradient``, their exact derivatives with
    respect to the grid coordinates ``[N, 3]`` (x, y, z): the derivative of the interpolant
    itself (piecewise linear), from the same eight corner values; zero across the border.
    """
    c, f, inside, per_unit = _corners(flat, shape, grid)
    value = _interpolate(c, f)
    if not with_gradient:
        return value, None
    return value, _interpolant_gradient(c, f) * per_unit * inside.to(grid.dtype)


class _GatherWithGradient(torch.autograd.Function):
    """:func:`trilinear_gather` whose backward pass is the interpolant's analytic derivative
    (computed with the values in the forward pass: no autograd graph through the gathers)."""

    @staticmethod
    def forward(ctx, grid: torch.Tensor, flat: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:  # type: ignore[override]
        value, grad = trilinear_gather(flat, shape, grid.detach(), True)
        ctx.save_for_backward(grad)
        return value

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        return grad_out.unsqueeze(1) * grad, None, None


class MovingSampler:
    """Moving values (and weights) at mapped points: ``grid_sample`` on a pyramid level.

    For a single-channel image the derivative image is precomputed (see
    :class:`_SampleWithGradientImage`), or, above :data:`GATHER_VOXELS`, the values and
    their derivatives come from :func:`trilinear_gather`; feature maps (MIND) use autograd
    through ``grid_sample``.
    """

    def __init__(self, level: PyramidLevel, features: torch.Tensor | None = None, gather: bool | None = None) -> None:
        src = features if features is not None else level.image
        self.channels = int(src.shape[0])
        self.gather = self.channels == 1 and (src[0].numel() > GATHER_VOXELS if gather is None else bool(gather))
        if self.gather:
            self.shape = tuple(int(n) for n in src.shape[1:])
        if self.channels == 1 and not self.gather:
            size = level.geometry.size
            derivs = [_index_gradient(src[0], 2 - axis) * ((size[axis] - 1) / 2.0) for axis in range(3)]
            src = torch.cat([src, torch.stack(derivs)], dim=0)
        # [1, C, z, y, x]; several channels are stored channels-last, so that the eight corners
        # of a point hold all their channels together: grid_sample of the value-and-derivatives
        # image measured 3x faster so on a 1 Mvoxel level (the same numbers)
        self.image = src.unsqueeze(0).contiguous(
            memory_format=torch.channels_last_3d if src.shape[0] > 1 else torch.contiguous_format)
        self.mask = level.mask.unsqueeze(0) if level.mask is not None else None
        self.geometry = level.geometry
        size_arr = np.asarray(level.geometry.size, float)
        to_norm = np.eye(4)
        to_norm[:3, :3] = np.diag(2.0 / (size_arr - 1))
        to_norm[:3, 3] = -1.0
        self.lps_to_norm = torch.tensor(to_norm @ level.geometry.lps_to_ijk(), dtype=torch.float32,
                                        device=src.device)
        self.threads = torch.get_num_threads() if src.device.type == "cpu" else 1

    def __call__(self, points: torch.Tensor, matrices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Values ``[K, C, N]`` and weights ``[K, N]`` at ``matrices`` (``[K, 4, 4]``) applied to ``points``."""
        g = self.lps_to_norm.unsqueeze(0) @ matrices  # [K, 4, 4]
        grid = points.unsqueeze(0) @ g[:, :3, :3].transpose(1, 2) + g[:, None, :3, 3]  # [K, N, 3]
        inside = grid.detach().abs().amax(dim=-1) <= 1.0
        self.last_grid = grid.detach()
        values = self._sample(self.image, grid, self.channels == 1)
        weights = inside.to(values.dtype)
        if self.mask is not None:
            weights = weights * (self._sample(self.mask, grid.detach(), False)[:, 0] > 0.5).to(values.dtype)
        return values, weights

    @torch.no_grad()
    def values_and_gradients(self, points: torch.Tensor, matrices: torch.Tensor
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Single-channel images only: values ``[K, N]``, their derivatives with respect to the
        grid coordinates ``[K, N, 3]`` (x, y, z; the gradient image's, or the interpolant's with
        ``gather``: the same derivatives :meth:`__call__`'s autograd would give), weights
        ``[K, N]`` and the grid ``[K, N, 3]`` -- with no autograd graph."""
        if self.channels != 1:
            raise ValueError("values_and_gradients needs a single-channel moving image")
        g = self.lps_to_norm.unsqueeze(0) @ matrices
        grid = points.unsqueeze(0) @ g[:, :3, :3].transpose(1, 2) + g[:, None, :3, 3]  # [K, N, 3]
        k, n = grid.shape[:2]
        if self.gather:
            v, d = trilinear_gather(self.image.reshape(-1), self.shape, grid.reshape(k * n, 3), True)
            values, derivs = v.reshape(k, n), d.reshape(k, n, 3)  # type: ignore[union-attr]
        else:
            out = self._sample(self.image, grid, False)  # [K, 4, N]: value and its derivatives
            values, derivs = out[:, 0], out[:, 1:4].transpose(1, 2)
        weights = (grid.abs().amax(dim=-1) <= 1.0).to(values.dtype)
        if self.mask is not None:
            weights = weights * (self._sample(self.mask, grid, False)[:, 0] > 0.5).to(values.dtype)
        self.last_grid = grid
        return values, derivs, weights, grid

    def _sample(self, image: torch.Tensor, grid: torch.Tensor, with_gradient_image: bool) -> torch.Tensor:
        k, n = grid.shape[:2]
        if with_gradient_image and self.gather and grid.requires_grad:
            v = _GatherWithGradient.apply(grid.reshape(k * n, 3), self.image.reshape(-1), self.shape)
            return v.reshape(k, 1, n)
        nb = 1
        if self.threads > 1 and k < self.threads:
            nb = max(1, self.threads // k)
            while n % nb:
                nb -= 1
        g = grid.reshape(k * nb, 1, 1, n // nb, 3)
        img = image.expand(k * nb, -1, -1, -1, -1)
        if with_gradient_image and g.requires_grad:
            v = _SampleWithGradientImage.apply(g, img)
        elif with_gradient_image:
            v = F.grid_sample(img[:, :1], g, mode="bilinear", padding_mode="border", align_corners=True)
        else:
            v = F.grid_sample(img, g, mode="bilinear", padding_mode="border", align_corners=True)
        c = v.shape[1]
        return v.reshape(k, nb, c, n // nb).permute(0, 2, 1, 3).reshape(k, c, n)


def _skew(r: torch.Tensor) -> torch.Tensor:
    z = torch.zeros_like(r[:, 0])
    return torch.stack([
        torch.stack([z, -r[:, 2], r[:, 1]], -1),
        torch.stack([r[:, 2], z, -r[:, 0]], -1),
        torch.stack([-r[:, 1], r[:, 0], z], -1),
    ], 1)


def rotation_matrices(r: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``[K, 3, 3]`` of rotation vectors ``r`` ``[K, 3]`` (radians).

    Rodrigues' formula ``R = I + a [r]x + b [r]x^2`` with ``t = |r|``, ``a = sin(t) / t`` and
    ``b = (1 - cos(t)) / t^2``, computed as ``(sin(t/2) / (t/2))^2 / 2`` (no cancellation in
    float32); power series in ``t^2`` below ``t^2 = 1e-4``, so the derivative is exact at 0.
    The same as ``matrix_exp([r]x)`` (tested) for a small fraction of its cost and of its
    backward pass, which the optimisation loops pay every iteration."""
    x = (r * r).sum(-1)
    small = x < 1e-4
    xs = torch.where(small, torch.ones_like(x), x)
    th = xs.sqrt()
    a = torch.where(small, 1.0 - x / 6.0 + x * x / 120.0, torch.sin(th) / th)
    b = torch.where(small, 0.5 - x / 24.0 + x * x / 720.0, 0.5 * (torch.sin(0.5 * th) / (0.5 * th)) ** 2)
    kx = _skew(r)
    eye = torch.eye(3, dtype=r.dtype, device=r.device)
    return eye + a[:, None, None] * kx + b[:, None, None] * (kx @ kx)


def linear_matrices(theta: torch.Tensor, center: torch.Tensor, radius: float, affine: bool) -> torch.Tensor:
    """``[K, 4, 4]`` matrices of ``T(p) = L (p - c) + c + t`` from parameters in mm ``[K, 6|12]``
    (rotation vector * radius, translation, [log-scale * radius, shear * radius])."""
    k = theta.shape[0]
    r = theta[:, 0:3] / radius
    t = theta[:, 3:6]
    lin = rotation_matrices(r)
    if affine:
        s = torch.exp(theta[:, 6:9] / radius)
        h = theta[:, 9:12] / radius
        shear = torch.eye(3, dtype=theta.dtype, device=theta.device).expand(k, 3, 3).clone()
        shear[:, 0, 1] = h[:, 0]
        shear[:, 0, 2] = h[:, 1]
        shear[:, 1, 2] = h[:, 2]
        lin = lin @ (s.unsqueeze(-1) * shear)
    out = torch.zeros(k, 4, 4, dtype=theta.dtype, device=theta.device)
    out[:, :3, :3] = lin
    out[:, :3, 3] = center + t - (lin @ center.unsqueeze(-1)).squeeze(-1)
    out[:, 3, 3] = 1.0
    return out


def similarity_of(metric: str, samples: SampleSet, values: torch.Tensor, weights: torch.Tensor, bins: int) -> torch.Tensor:
    """Similarity ``[K]`` (higher is better) of moving ``values`` ``[K, C, N]`` with the fixed samples."""
    if metric == "mi":
        assert samples.bins is not None
        return mutual_information(samples.bins, values[:, 0], weights, bins)
    if metric in ("ncc", "lncc"):
        return ncc(samples.values[0], values[:, 0], weights)
    if metric == "mse":
        return -mse(samples.values[0], values[:, 0], weights)
    if metric == "mind":
        diff = ((values - samples.values.unsqueeze(0)) ** 2).mean(1)  # [K, N]
        return -(diff * weights).sum(-1) / weights.sum(-1).clamp_min(1.0)
    raise MedTorchInputError(f"unknown metric {metric!r}", "use mi, mind, lncc, ncc or mse")


def score_candidates(sampler: MovingSampler, samples: SampleSet, matrices: torch.Tensor, metric: str, bins: int,
                     chunk: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Similarity and overlap fraction ``[K]`` of each candidate matrix (no gradients)."""
    sims, overlaps = [], []
    with torch.no_grad():
        for k0 in range(0, matrices.shape[0], chunk):
            vals, w = sampler(samples.points, matrices[k0:k0 + chunk])
            sims.append(similarity_of(metric, samples, vals, w, bins))
            overlaps.append(w.mean(-1))
    return torch.cat(sims), torch.cat(overlaps)


def bias_basis(grid: torch.Tensor, order: int) -> torch.Tensor:
    """Polynomial basis ``[K, N, P]`` of moving-space grid coordinates in ``[-1, 1]`` (no constant):
    order 1 gives x, y, z; order 2 adds the six second-order terms."""
    x, y, z = grid.unbind(-1)
    terms = [x, y, z]
    if order >= 2:
        third = 1.0 / 3.0
        terms += [x * x - third, y * y - third, z * z - third, x * y, x * z, y * z]
    return torch.stack(terms, dim=-1)


#: Millimetres of Adam step per unit of log-intensity bias coefficient.
BIAS_SCALE = 50.0


def _step_size(lr0: float, it: int, n_it: int) -> float:
    """Adam's step at iteration ``it`` of ``n_it``: cosine decay from ``lr0`` to 2 % of it."""
    return lr0 * (0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * it / n_it)))


def _check_overlap(weights: torch.Tensor, min_overlap: float) -> None:
    """Refuse a start where no candidate has ``min_overlap`` of its samples inside the moving volume."""
    if float(weights.mean(-1).max()) < min_overlap:
        raise MedTorchInputError(
            "the fixed and moving volumes do not overlap at the start of the registration",
            "check that the right volumes are selected; use init='auto' or 'moments' (or give an initial "
            "transform or landmark pairs) to bring them together",
        )


def optimise_level(sampler: MovingSampler, samples: SampleSet, base: torch.Tensor, theta0: torch.Tensor,
                   center: torch.Tensor, radius: float, affine: bool, metric: str, bins: int,
                   schedule: LevelSchedule, on_step: Callable[[int], None] | None = None,
                   min_overlap: float = 0.02, bias0: torch.Tensor | None = None,
                   analytic_small_math: bool = True, trace: list[tuple[np.ndarray, np.ndarray]] | None = None,
                   ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, int]:
    """Adam on ``K`` independent candidates at one level.

    ``base`` (``[K, 4, 4]``) is each candidate's initial transform; the full transform is
    ``base @ T(theta)``. The step decays from ``schedule.step_mm`` to 2 % of it (cosine);
    the level ends early once no parameter moved more than 0.1 % of the step for 8
    iterations. When the pool of samples is larger than ``schedule.samples``, each
    iteration takes a new random window of it and the result is the mean of the last 30 %
    of the iterates (averaging out the sampling noise).

    ``bias0`` (``[K, P]``, MI only): coefficients of a smooth multiplicative intensity bias of
    the moving volume, ``m * exp(sum_p b_p phi_p(q))`` (:func:`bias_basis`), optimised with the
    transform; ``None`` for no bias model.

    With MI, no bias model and a single-channel image, the loop runs without autograd
    (:func:`_optimise_mi_analytic`; measured 25-35 % faster per registration on the
    benchmark's pairs, the same TRE within its run-to-run spread) unless
    ``analytic_small_math=False``, which keeps the autograd loop (tests compare the two).

    ``trace``: a list that receives, per iteration, the similarity of each candidate on that
    iteration's samples (``[K]``, before the step) and the step taken (``[K, P]``, parameters
    in mm): the metric's trajectory (the registration's convergence check reads it).

    Returns (theta ``[K, 6|12]``, bias or None, similarity ``[K]``, iterations run).
    """
    # MI without a bias model: the similarity's derivative is analytic (no autograd graph
    # through the samples), and the parameters' small algebra runs in float64 numpy.
    if analytic_small_math and metric == "mi" and bias0 is None and sampler.channels == 1 and samples.bins is not None:
        return _optimise_mi_analytic(sampler, samples, base, theta0, center, radius, affine, bins, schedule,
                                     on_step, min_overlap, trace)
    n_par = 12 if affine else 6
    theta = torch.zeros(theta0.shape[0], n_par, dtype=torch.float32, device=theta0.device)
    theta[:, : min(theta0.shape[1], n_par)] = theta0[:, :n_par]
    leaves = [theta]
    bias_t = None
    order = 0
    if bias0 is not None:
        bias_t = (bias0.detach().clone() * BIAS_SCALE).to(theta.dtype)
        order = 1 if bias0.shape[1] == 3 else 2
        leaves.append(bias_t)
    for leaf in leaves:
        leaf.requires_grad_(True)
    lr0 = float(schedule.step_mm)
    beta1, beta2, eps = 0.9, 0.99, 1e-8
    moments = [(torch.zeros_like(leaf), torch.zeros_like(leaf)) for leaf in leaves]
    still = 0
    n_it = max(1, int(schedule.iterations))
    per_iter = min(int(schedule.samples), len(samples))
    stochastic = per_iter < len(samples)
    avg_from = int(n_it * 0.7) if stochastic else n_it
    avgs = [torch.zeros_like(leaf.detach()) for leaf in leaves]
    n_avg = 0
    it = 0

    def evaluate(params: list[torch.Tensor], batch: SampleSet) -> tuple[torch.Tensor, torch.Tensor]:
        mats = base @ linear_matrices(params[0], center, radius, affine)
        vals, w = sampler(batch.points, mats)
        if len(params) > 1:
            phi = bias_basis(sampler.last_grid, order)  # [K, N, P]
            vals = vals * torch.exp(phi @ (params[1] / BIAS_SCALE).unsqueeze(-1)).transpose(1, 2)
        return similarity_of(metric, batch, vals, w, bins), w

    for it in range(n_it):
        lr = _step_size(lr0, it, n_it)
        before = theta.detach().clone()
        for leaf in leaves:
            leaf.grad = None
        batch = samples.window(it * per_iter, per_iter) if stochastic else samples
        sim, w = evaluate(leaves, batch)
        if it == 0:
            _check_overlap(w, min_overlap)
        (-sim.sum()).backward()
        with torch.no_grad():  # Adam
            for leaf, (m1, m2) in zip(leaves, moments):
                g = leaf.grad
                m1.mul_(beta1).add_(g, alpha=1 - beta1)
                m2.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                denom = (m2 / (1 - beta2 ** (it + 1))).sqrt_().add_(eps)
                leaf.addcdiv_(m1, denom, value=-lr / (1 - beta1 ** (it + 1)))
        if trace is not None:
            trace.append((sim.detach().double().cpu().numpy(), (theta.detach() - before).double().cpu().numpy()))
        if it >= avg_from:
            for a, leaf in zip(avgs, leaves):
                a += leaf.detach()
            n_avg += 1
        if on_step is not None:
            on_step(it)
        moved = float((theta.detach() - before).abs().max())
        still = still + 1 if moved < 1e-3 * lr0 else 0
        if still >= 8:
            break
    final = [a / n_avg for a in avgs] if n_avg > 0 else [leaf.detach() for leaf in leaves]
    with torch.no_grad():
        sim, _ = evaluate(final, samples)
    bias_out = final[1] / BIAS_SCALE if bias_t is not None else None
    return final[0], bias_out, sim, it + 1


def _skew_np(r: np.ndarray) -> np.ndarray:
    k = np.zeros(r.shape[:-1] + (3, 3))
    k[..., 0, 1], k[..., 0, 2], k[..., 1, 2] = -r[..., 2], r[..., 1], -r[..., 0]
    k[..., 1, 0], k[..., 2, 0], k[..., 2, 1] = r[..., 2], -r[..., 1], r[..., 0]
    return k


def linear_matrices_np(theta: np.ndarray, center: np.ndarray, radius: float, affine: bool) -> np.ndarray:
    """:func:`linear_matrices` in float64 numpy for ``theta`` ``[..., 6|12]`` (the optimisation's
    small algebra: a few microseconds per op where torch takes tens)."""
    r = theta[..., 0:3] / radius
    x = (r * r).sum(-1)
    small = x < 1e-4
    th = np.sqrt(np.where(small, 1.0, x))
    a = np.where(small, 1.0 - x / 6.0 + x * x / 120.0, np.sin(th) / th)
    b = np.where(small, 0.5 - x / 24.0 + x * x / 720.0, 0.5 * (np.sin(0.5 * th) / (0.5 * th)) ** 2)
    kx = _skew_np(r)
    lin = np.eye(3) + a[..., None, None] * kx + b[..., None, None] * (kx @ kx)
    if affine:
        s = np.exp(theta[..., 6:9] / radius)
        h = theta[..., 9:12] / radius
        shear = np.broadcast_to(np.eye(3), lin.shape).copy()
        shear[..., 0, 1], shear[..., 0, 2], shear[..., 1, 2] = h[..., 0], h[..., 1], h[..., 2]
        lin = lin @ (s[..., :, None] * shear)
    out = np.zeros(theta.shape[:-1] + (4, 4))
    out[..., :3, :3] = lin
    out[..., :3, 3] = center + theta[..., 3:6] - (lin @ center[:, None])[..., 0]
    out[..., 3, 3] = 1.0
    return out


def linear_jacobian_np(theta: np.ndarray, center: np.ndarray, radius: float, affine: bool,
                       step: float = 1e-4) -> np.ndarray:
    """``d linear_matrices / d theta`` ``[K, P, 3, 4]`` by central differences in float64 (the
    map is smooth, parameters are in mm: truncation about ``step^2 / radius^2``, i.e. 1e-12)."""
    n_par = theta.shape[1]
    d = np.eye(n_par) * step
    both = np.concatenate([theta[:, None, :] + d, theta[:, None, :] - d], axis=1)  # [K, 2P, P]
    m = linear_matrices_np(both, center, radius, affine)
    return (m[:, :n_par, :3, :] - m[:, n_par:, :3, :]) / (2.0 * step)


def _optimise_mi_analytic(sampler: MovingSampler, samples: SampleSet, base: torch.Tensor, theta0: torch.Tensor,
                          center: torch.Tensor, radius: float, affine: bool, bins: int, schedule: LevelSchedule,
                          on_step: Callable[[int], None] | None, min_overlap: float,
                          trace: list[tuple[np.ndarray, np.ndarray]] | None = None,
                          ) -> tuple[torch.Tensor, None, torch.Tensor, int]:
    """:func:`optimise_level` for MI without a bias model: the same Adam, schedule, stopping
    rule and iterate averaging, with the derivative of MI with respect to each moving value
    by hand (:func:`~medtorch.registration.similarity.mutual_information_and_gradient`), through
    the sampler's value derivatives to the matrices, and from the matrices to the parameters
    by their float64 Jacobian (:func:`linear_jacobian_np`). Only the per-sample work is torch;
    the per-iteration algebra on a dozen numbers is numpy, where each op costs microseconds."""
    dev = base.device
    n_par = 12 if affine else 6
    k = theta0.shape[0]
    theta = np.zeros((k, n_par))
    theta[:, : min(theta0.shape[1], n_par)] = theta0[:, :n_par].detach().double().cpu().numpy()
    base_np = base.double().cpu().numpy()
    c_np = center.double().cpu().numpy()
    norm3 = sampler.lps_to_norm[:3, :3].double().cpu().numpy()
    lr0 = float(schedule.step_mm)
    beta1, beta2, eps = 0.9, 0.99, 1e-8
    m1, m2 = np.zeros_like(theta), np.zeros_like(theta)
    n_it = max(1, int(schedule.iterations))
    per_iter = min(int(schedule.samples), len(samples))
    stochastic = per_iter < len(samples)
    avg_from = int(n_it * 0.7) if stochastic else n_it
    avg, n_avg, still, it = np.zeros_like(theta), 0, 0, 0
    for it in range(n_it):
        lr = _step_size(lr0, it, n_it)
        batch = samples.window(it * per_iter, per_iter) if stochastic else samples
        mats = base_np @ linear_matrices_np(theta, c_np, radius, affine)
        vals, derivs, w, _ = sampler.values_and_gradients(batch.points, torch.from_numpy(mats).to(dev, torch.float32))
        if it == 0:
            _check_overlap(w, min_overlap)
        sim_it, dsim = mutual_information_and_gradient(batch.bins, vals, w, bins)  # type: ignore[arg-type]
        g = dsim.unsqueeze(-1) * derivs  # d sim / d grid, [K, N, 3]
        d_grid = torch.cat([g.transpose(1, 2) @ batch.points, g.sum(1).unsqueeze(-1)], dim=2)  # [K, 3, 4]
        d_mats = norm3.T[None] @ d_grid.double().cpu().numpy()  # d sim / d mats[:, :3, :]
        jac = base_np[:, None, :3, :3] @ linear_jacobian_np(theta, c_np, radius, affine)  # [K, P, 3, 4]
        grad = -(jac * d_mats[:, None]).sum(axis=(2, 3))  # of the loss -sim
        m1 = beta1 * m1 + (1 - beta1) * grad
        m2 = beta2 * m2 + (1 - beta2) * grad * grad
        move = (lr / (1 - beta1 ** (it + 1))) * m1 / (np.sqrt(m2 / (1 - beta2 ** (it + 1))) + eps)
        theta = theta - move
        if trace is not None:
            trace.append((sim_it.double().cpu().numpy(), -move))
        if it >= avg_from:
            avg += theta
            n_avg += 1
        if on_step is not None:
            on_step(it)
        still = still + 1 if float(np.abs(move).max()) < 1e-3 * lr0 else 0
        if still >= 8:
            break
    final = torch.from_numpy(avg / n_avg if n_avg > 0 else theta).to(dev, torch.float32)
    with torch.no_grad():
        vals, w = sampler(samples.points, base @ linear_matrices(final, center, radius, affine))
        sim = similarity_of("mi", samples, vals, w, bins)
    return final, None, sim, it + 1


def default_levels(fixed_spacing: Sequence[float], coarsest: float = 8.0,
                   fixed_size: Sequence[int] | None = None) -> list[float]:
    """Pyramid spacings (mm, coarse to fine) ending at the fixed volume's own spacing.

    The coarsest level is 8 mm, or less for a small field of view (at least 20 voxels across
    its shortest side), and never below twice the fixed spacing.
    """
    sp = np.asarray(fixed_spacing, float)
    s0 = float(np.median(sp))
    top = float(coarsest)
    if fixed_size is not None:
        extent = float(np.min((np.asarray(fixed_size, float) - 1) * sp))
        top = min(top, extent / 20.0)
    top = max(top, 2.0 * s0)
    levels = []
    s = top
    while s > s0 * 1.25:
        levels.append(s)
        s /= 2.0
    levels.append(s0)
    return levels


def progress_stepper(progress: ProgressCallback | None, cancel: CancelToken | None, start: float, stop: float,
                     total: int, message: str) -> Callable[[int], None]:
    """``on_step(i)`` for :func:`optimise_level`: reports ``start..stop`` and checks cancel."""

    def step(i: int) -> None:
        report(progress, cancel, start + (stop - start) * min(i + 1, total) / max(total, 1), message)

    return step
