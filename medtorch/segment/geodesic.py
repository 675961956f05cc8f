"""Seeded segmentation by geodesic competition of seed-trained class models.

Every class (the tumor classes and the background, the last class) grows from its seeds
along the cheapest paths through the image; a voxel goes to the class whose seeds reach it
most cheaply. A path pays for

* every change of intensity it crosses (``|f_p - f_q|`` between neighbours, as in GrowCut:
  Vezhnevets and Konouchine 2005; the geodesic form of Criminisi et al.'s GeoS, 2008), and
* every millimetre it travels through voxels that look more like another class than its own:
  ``w * max(0, max_{j != k} log p_j(f) - log p_k(f))`` per mm, with ``p_k`` the density of
  class ``k``'s seed features (a kernel density estimate).

So a class cannot run through tissue its seeds never looked like (a far region that merely
has tumor-like intensities is reached only across background-like tissue or strong edges),
and where intensities alone are ambiguous, the nearest seeds decide.

Features (per region, cached by :class:`~medtorch.segment.seeded.SeededSegmenter`): every
channel Gaussian-smoothed at ``smoothing_mm``, and the first channel also at ``context_mm``
(the surroundings of a voxel: oedema is broadly bright, a grey-matter ribbon is thin). Each
channel is expressed in units of the contrast the seeds show: ``(x - m_bg) / max_k |m_k -
m_bg|`` with ``m`` the class medians of the seed voxels, so that every setting below means the
same thing in any scanner's units. Class models: a 2D kernel density of the first channel's
two scales, times 1D densities of the other channels, each weighted by how well it separates
the seeds' classes relative to the first channel (Fisher's ratio, at most 1): a channel in
which the classes look alike adds nothing.

Distances are computed exactly (Dijkstra, 6-connected) on the region's voxels when it holds
at most ``full_resolution_voxels`` (a small lesion), else on a grid of about ``grid_mm`` (block
means), then interpolated back to the voxel grid (trilinear) where the classes compete.
Defaults were chosen on the development half of the real-data benchmark
(``benchmarks/segment/real_bench.py``) and checked on its held-out half.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from medtorch.progress import CancelToken, ProgressCallback, report

__all__ = ["GeodesicSettings", "ClassDensities", "contrast_normalise", "fit_densities", "evidence_costs",
           "geodesic_competition", "coarse_factors"]

#: Feature range (in seed-contrast units) and bin step of the class densities.
_LO, _HI, _STEP = -4.0, 4.0, 0.05
_NBINS = int(round((_HI - _LO) / _STEP)) + 1
#: Path cost per mm of a tumor class where it may not go (far above any evidence cost).
_BARRIER_COST = 1.0e3


@dataclass(frozen=True)
class GeodesicSettings:
    """Settings of the geodesic competition (see the module docstring).

    Attributes:
        smoothing_mm: Gaussian sigma (mm) of every channel's feature.
        context_mm: Gaussian sigma (mm) of the first channel's context feature.
        bandwidth: kernel width of the class densities, in units of the seeds' contrast.
        evidence_weight: cost per mm of a voxel's evidence (in nats) against a class.
        grid_mm: spacing (mm) of the grid the distances are computed on, for a region of more
            than ``full_resolution_voxels`` voxels.
        full_resolution_voxels: a region of at most this many voxels is computed on its own
            voxels: the coarse grid only bounds the cost, and a small lesion (a few mm across) is
            only a few cells of it.
    """

    smoothing_mm: float = 1.0
    context_mm: float = 2.0
    bandwidth: float = 0.12
    evidence_weight: float = 0.1
    grid_mm: float = 2.0
    full_resolution_voxels: int = 400_000


def contrast_normalise(x: np.ndarray, seed_index: np.ndarray, n_classes: int) -> np.ndarray:
    """``x`` in units of the seeds' contrast: the background seeds' median at 0, the tumor
    class farthest from it at distance 1 (the robust range of ``x`` when the classes' medians
    coincide)."""
    bg = n_classes - 1
    med_bg = float(np.median(x[seed_index == bg]))
    scale = max(abs(float(np.median(x[seed_index == k])) - med_bg) for k in range(bg))
    if not np.isfinite(scale) or scale <= 1e-12:
        lo, hi = np.percentile(x, (1.0, 99.0))
        scale = float(hi - lo) if hi > lo else 1.0
    return ((x - med_bg) / scale).astype(np.float32, copy=False)


def _bins(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint((x - _LO) / _STEP), 0, _NBINS - 1).astype(np.intp)


def _fisher(x: np.ndarray, seed_index: np.ndarray, n_classes: int) -> float:
    """Mean over the tumor classes of ``(m_k - m_bg)^2 / ((var_k + var_bg) / 2)``."""
    bg = x[seed_index == n_classes - 1]
    out = []
    for k in range(n_classes - 1):
        v = x[seed_index == k]
        out.append((np.median(v) - np.median(bg)) ** 2 / (0.5 * (v.var() + bg.var()) + 1e-12))
    return float(np.mean(out))


@dataclass
class ClassDensities:
    """Log-densities of each class's seed features on fixed bins: ``joint`` ``[K, n, n]`` of the
    first channel's two scales, and ``(weight, [K, n])`` for each further channel."""

    joint: np.ndarray
    marginals: list[tuple[float, np.ndarray]]

    def log_likelihood(self, features: Sequence[np.ndarray]) -> np.ndarray:
        """``[K, ...]`` log-likelihood of every voxel under every class."""
        i, j = _bins(features[0]), _bins(features[1])
        ll = self.joint[:, i, j]
        for (w, table), f in zip(self.marginals, features[2:]):
            if w > 0:
                ll += w * table[:, _bins(f)]
        return ll


def _log_density(samples: list[np.ndarray], bandwidth: float) -> np.ndarray:
    """Gaussian kernel density of the (1D or 2D) samples on the fixed bins, as log, with a
    floor (one part in 10^4 of uniform) so that no value is impossible."""
    from scipy import ndimage

    nd = len(samples)
    idx = [_bins(s) for s in samples]
    flat = idx[0] if nd == 1 else idx[0] * _NBINS + idx[1]
    h = np.bincount(flat, minlength=_NBINS ** nd).astype(np.float64).reshape((_NBINS,) * nd)
    h = ndimage.gaussian_filter(h, bandwidth / _STEP, mode="constant", truncate=4.0)
    h /= max(h.sum(), 1e-300)
    h += 1e-4 / h.size
    h /= h.sum()
    return np.log(h / _STEP ** nd).astype(np.float32)


def fit_densities(features: Sequence[np.ndarray], seed_index: np.ndarray, n_classes: int,
                  bandwidth: float) -> ClassDensities:
    """Class densities from the seed voxels (``seed_index`` ``k`` for class ``k``, -1 none);
    ``features``: the first channel at two scales, then the other channels."""
    joint = np.stack([_log_density([features[0][seed_index == k], features[1][seed_index == k]], bandwidth)
                      for k in range(n_classes)])
    f0 = _fisher(features[0], seed_index, n_classes)
    marginals = []
    for f in features[2:]:
        w = min(1.0, _fisher(f, seed_index, n_classes) / f0) if f0 > 0 else 1.0
        marginals.append((w, np.stack([_log_density([f[seed_index == k]], bandwidth) for k in range(n_classes)])))
    return ClassDensities(joint, marginals)


def evidence_costs(loglik: np.ndarray, weight: float) -> np.ndarray:
    """``[K, ...]`` per-mm cost of each class: ``weight * max(0, best other class - own)``."""
    k = loglik.shape[0]
    out = np.empty_like(loglik, dtype=np.float32)
    for c in range(k):
        others = [loglik[j] for j in range(k) if j != c]
        if not others:
            out[c] = 0.0
            continue
        best = others[0] if len(others) == 1 else np.maximum.reduce(others)
        np.subtract(best, loglik[c], out=out[c])
    np.maximum(out, 0.0, out=out)
    out *= np.float32(weight)
    return out


def coarse_factors(spacing_zyx: Sequence[float], grid_mm: float) -> tuple[int, int, int]:
    """Block size per axis giving a grid of about ``grid_mm`` (at least 1 voxel)."""
    return tuple(max(1, int(round(grid_mm / float(s)))) for s in spacing_zyx)  # type: ignore[return-value]


def _blocks(x: np.ndarray, f: Sequence[int]) -> np.ndarray:
    """Block means of ``x`` (``[..., z, y, x]``, edge-padded to multiples of ``f``)."""
    import torch
    import torch.nn.functional as F

    if all(int(b) == 1 for b in f):
        return np.asarray(x, dtype=np.float32)
    lead = x.shape[:-3]
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).reshape((1, -1) + x.shape[-3:])
    pad = [p for n, b in zip(reversed(x.shape[-3:]), reversed(list(f))) for p in (0, (-n) % int(b))]
    if any(pad):
        t = F.pad(t, pad, mode="replicate")
    out = F.avg_pool3d(t, kernel_size=tuple(int(b) for b in f))[0]
    return out.reshape(lead + tuple(out.shape[-3:])).numpy()


def _coarse_seeds(seed_index: np.ndarray, n_classes: int, f: Sequence[int]) -> np.ndarray:
    """Seed class of each block: the class with most seed voxels in it (-1: none); a class
    outvoted everywhere keeps the blocks where it has seeds."""
    onehot = np.stack([(seed_index == k).astype(np.float32) for k in range(n_classes)])
    counts = _blocks(onehot, f)
    out = np.where(counts.max(0) > 0, counts.argmax(0), -1)
    for k in range(n_classes):
        if not np.any(out == k):
            out[counts[k] > 0] = k
    return out


@dataclass
class _Grid:
    """The 6-connected graph of a grid: each axis's neighbour pairs ``(a, b)`` and a CSR pattern
    holding both directions of every pair, built once; ``order`` maps the CSR entries to the
    pairs (concatenated over the axes) so that each class only fills in its weights."""

    pairs: list[tuple[np.ndarray, np.ndarray]]
    indptr: np.ndarray
    indices: np.ndarray
    order: np.ndarray
    n: int


def _graph(shape: tuple[int, ...]) -> _Grid:
    from scipy import sparse

    n = int(np.prod(shape))
    idx = np.arange(n).reshape(shape)
    pairs = []
    for ax in range(3):
        a = [slice(None)] * 3
        b = [slice(None)] * 3
        a[ax] = slice(0, -1)
        b[ax] = slice(1, None)
        pairs.append((idx[tuple(a)].ravel(), idx[tuple(b)].ravel()))
    ia = np.concatenate([p[0] for p in pairs])
    ib = np.concatenate([p[1] for p in pairs])
    m = len(ia)
    ids = np.arange(1, 2 * m + 1, dtype=np.int64)  # 1-based: no explicit zero in the pattern
    pattern = sparse.csr_matrix((ids, (np.concatenate([ia, ib]), np.concatenate([ib, ia]))), shape=(n, n))
    pattern.sort_indices()
    return _Grid(pairs, pattern.indptr, pattern.indices, (pattern.data - 1) % m, n)


def _distances(f0: np.ndarray, cost: np.ndarray, sources: np.ndarray, step_mm: Sequence[float],
               grid: _Grid) -> np.ndarray:
    """Shortest-path distance from ``sources`` (bool) on the 6-connected grid; an edge between
    neighbours ``p, q`` along axis ``a`` costs ``|f0_p - f0_q| + (c_p + c_q) / 2 * step_a``."""
    from scipy import sparse
    from scipy.sparse import csgraph

    fr, cr = f0.ravel(), cost.ravel()
    w = np.concatenate([np.abs(fr[a] - fr[b]) + 0.5 * float(step) * (cr[a] + cr[b])
                        for (a, b), step in zip(grid.pairs, step_mm)]) + 1e-9
    g = sparse.csr_matrix((w[grid.order], grid.indices, grid.indptr), shape=(grid.n, grid.n))
    d = csgraph.dijkstra(g, directed=True, indices=np.flatnonzero(sources.ravel()), min_only=True)
    return d.reshape(f0.shape).astype(np.float32)


def _upsample(d: np.ndarray, f: Sequence[int], shape: tuple[int, ...]) -> np.ndarray:
    """Trilinear interpolation of block values ``d`` (``[..., z, y, x]``) back to the voxel grid
    of ``shape`` (``[z, y, x]``)."""
    import torch
    import torch.nn.functional as F

    if all(int(b) == 1 for b in f):
        return d
    lead = d.shape[:-3]
    t = torch.from_numpy(np.ascontiguousarray(d, dtype=np.float32)).reshape((1, -1) + d.shape[-3:])
    size = tuple(int(n) * int(b) for n, b in zip(d.shape[-3:], f))
    up = F.interpolate(t, size=size, mode="trilinear", align_corners=False)[0]
    return up[..., : shape[0], : shape[1], : shape[2]].reshape(lead + tuple(shape)).numpy()


def geodesic_competition(features: Sequence[np.ndarray], seed_index: np.ndarray, n_classes: int,
                         spacing_zyx: Sequence[float], settings: GeodesicSettings,
                         progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
                         outside: np.ndarray | None = None) -> np.ndarray:
    """Class index (``0 .. K-1``) of every voxel of the region.

    Args:
        features: smoothed channels of the region, in seed-contrast units: the first channel
            at ``smoothing_mm`` and at ``context_mm``, then the other channels at ``smoothing_mm``.
        seed_index: ``[z, y, x]`` class index of each seed voxel, -1 elsewhere.
        n_classes: number of classes (the background last).
        spacing_zyx: voxel size (mm).
        outside: where no tumor class may be (the background there, and no tumor path passes).
    """
    report(progress, cancel, 0.0, "class densities of the seeds")
    dens = fit_densities(features, seed_index, n_classes, settings.bandwidth)
    costs = evidence_costs(dens.log_likelihood(features), settings.evidence_weight)
    if outside is not None and outside.any():  # no tumor class passes there
        costs[: n_classes - 1] += np.float32(_BARRIER_COST) * outside.astype(np.float32)[None]
    small = seed_index.size <= settings.full_resolution_voxels
    f = (1, 1, 1) if small else coarse_factors(spacing_zyx, settings.grid_mm)
    f0c = _blocks(features[0], f)
    cc = _blocks(costs, f)
    seeds_c = _coarse_seeds(seed_index, n_classes, f)
    step = [float(s) * int(b) for s, b in zip(spacing_zyx, f)]
    grid = _graph(f0c.shape)
    dist = []
    for k in range(n_classes):
        report(progress, cancel, 0.2 + 0.7 * k / n_classes, f"paths of class {k + 1} of {n_classes}")
        dist.append(_distances(f0c, cc[k], seeds_c == k, step, grid))
    report(progress, cancel, 0.9, "competition")
    up = _upsample(np.stack(dist), f, seed_index.shape)
    labels = (up[1] < up[0]).astype(np.intp) if n_classes == 2 else np.argmin(up, axis=0)
    if outside is not None:
        labels[outside] = n_classes - 1
    seeded = seed_index >= 0
    labels[seeded] = seed_index[seeded]
    return labels
