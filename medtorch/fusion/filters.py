"""Separable filters on torch tensors, along any axis, for the fusion methods and metrics.

Every function works on a tensor whose last ``ndim`` axes are spatial (``[..., z, y, x]``
for volumes, ``[..., y, x]`` for images), on any device, and never modifies its input.

* :func:`pad_axis` extends one axis with numpy's boundary modes (``symmetric`` repeats the
  edge sample, ``reflect`` does not, ``periodic`` wraps, ``zero`` pads zeros, ``edge``
  repeats the edge value) from narrowed and flipped slices (a gather only for pads longer
  than the axis, which is slow on CPU along the fastest axis).
* :func:`correlate_axis` applies a 1D FIR filter along one axis (``'same'`` with a
  boundary mode, or ``'valid'``), optionally keeping every ``step``-th output only (filter
  and downsample in one pass). Filters of up to 5 taps run as sums of shifted, strided
  slices (a few passes over the data, no copy moves the axis last); longer ones as one
  matrix product along the axis (:func:`apply_matrix`, :func:`filter_matrix`): ``2 n``
  flops per sample, but one BLAS call (MKL, cuBLAS) that is several times faster on CPU
  than a cumulative sum along an outer axis, and exact to rounding.
* :func:`box_mean` is the mean over a ``(2r+1)`` window per axis, windows clipped at the
  border and divided by the number of voxels inside them, as the guided filter of He et
  al. (2013) does (a matrix product per axis; cumulative sums for axes over 1024).
* :func:`gaussian_kernel1d`, :func:`gaussian_filter`, :func:`sobel`, :func:`laplacian`,
  :func:`window_sum`, :func:`pool_mean` and :func:`upsample_linear` complete the set (the
  guided filter itself is in :mod:`medtorch.fusion.gff`).
"""

from __future__ import annotations

import functools

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from medtorch.errors import MedTorchInputError

__all__ = [
    "MATRIX_MAX_LENGTH",
    "BoundaryMode",
    "apply_matrix",
    "axis_radii",
    "box_matrix",
    "box_mean",
    "correlate_axis",
    "filter_matrix",
    "gaussian_filter",
    "gaussian_kernel1d",
    "laplacian",
    "pad_axis",
    "pad_index",
    "pool_mean",
    "separable",
    "sobel",
    "upsample_linear",
    "window_sum",
]

BoundaryMode = Literal["symmetric", "reflect", "periodic", "zero", "edge"]
_MODES = ("symmetric", "reflect", "periodic", "zero", "edge")


def pad_index(n: int, before: int, after: int, mode: BoundaryMode) -> np.ndarray | None:
    """Source index of every sample of an axis of length ``n`` extended by ``before``/``after``.

    Returns ``None`` for ``mode='zero'`` (the caller pads zeros). The rules are numpy's
    ``np.pad`` modes of the same names (``periodic`` is numpy's ``wrap``), applied again
    and again for pads longer than the axis, as PyWavelets does.
    """
    if mode not in _MODES:
        raise MedTorchInputError(f"unknown boundary mode {mode!r}", "use one of " + ", ".join(_MODES))
    if n < 1:
        raise MedTorchInputError("cannot pad an empty axis", "give a non-empty image")
    if mode == "zero":
        return None
    k = np.arange(-before, n + after, dtype=np.int64)
    if mode == "periodic":
        return np.mod(k, n)
    if mode == "edge":
        return np.clip(k, 0, n - 1)
    if mode == "symmetric":
        period = 2 * n
        m = np.mod(k, period)
        return np.where(m < n, m, period - 1 - m)
    # reflect (edge sample not repeated)
    if n == 1:
        return np.zeros_like(k)
    period = 2 * n - 2
    m = np.mod(k, period)
    return np.where(m < n, m, period - m)


def _dim(x: torch.Tensor, axis: int) -> int:
    d = axis if axis >= 0 else x.ndim + axis
    if not 0 <= d < x.ndim:
        raise MedTorchInputError(f"axis {axis} does not exist in a {x.ndim}D tensor", "pick an existing axis")
    return d


def _edge_piece(x: torch.Tensor, d: int, count: int, mode: BoundaryMode, side: str) -> torch.Tensor:
    """The ``count`` samples that extend axis ``d`` of ``x`` before (``side='before'``) or after it.

    Built from narrowed (and flipped) slices and ``cat`` rather than a gather, which is
    slow on CPU along the fastest axis. Only for ``count <= n`` (``n - 1`` for reflect).
    """
    n = x.shape[d]
    if mode == "zero":
        shape = list(x.shape)
        shape[d] = count
        return x.new_zeros(shape)
    if mode == "edge":
        edge = x.narrow(d, 0, 1) if side == "before" else x.narrow(d, n - 1, 1)
        shape = list(x.shape)
        shape[d] = count
        return edge.expand(shape)
    if mode == "periodic":
        return x.narrow(d, n - count, count) if side == "before" else x.narrow(d, 0, count)
    if mode == "symmetric":
        piece = x.narrow(d, 0, count) if side == "before" else x.narrow(d, n - count, count)
    else:  # reflect
        piece = x.narrow(d, 1, count) if side == "before" else x.narrow(d, n - 1 - count, count)
    return piece.flip(d)


def pad_axis(x: torch.Tensor, axis: int, before: int, after: int, mode: BoundaryMode = "symmetric") -> torch.Tensor:
    """``x`` extended along ``axis`` by ``before`` and ``after`` samples (a new tensor unless no padding)."""
    d = _dim(x, axis)
    n = x.shape[d]
    if before == 0 and after == 0:
        return x
    if mode not in _MODES:
        raise MedTorchInputError(f"unknown boundary mode {mode!r}", "use one of " + ", ".join(_MODES))
    limit = n - 1 if mode == "reflect" else n
    if before > limit or after > limit or (mode == "reflect" and n == 1):
        idx = pad_index(n, before, after, mode)
        if idx is None:
            return torch.cat([_edge_piece(x, d, before, mode, "before"), x,
                              _edge_piece(x, d, after, mode, "after")], dim=d)
        return x.index_select(d, torch.from_numpy(idx).to(x.device))
    parts = []
    if before:
        parts.append(_edge_piece(x, d, before, mode, "before"))
    parts.append(x)
    if after:
        parts.append(_edge_piece(x, d, after, mode, "after"))
    return torch.cat(parts, dim=d)


#: Axes up to this length are filtered by one matrix product (BLAS) rather than by
#: shifted sums or cumulative sums: ``2 n`` flops per sample, but a single, well-threaded
#: kernel, and no cumulative-sum rounding.
MATRIX_MAX_LENGTH = 1024


def filter_matrix(
    n: int,
    taps: Sequence[float],
    mode: BoundaryMode | Literal["valid"] = "reflect",
    origin: int | None = None,
    step: int = 1,
    start: int = 0,
) -> np.ndarray:
    """The ``(n_out, n)`` matrix of :func:`correlate_axis` on an axis of ``n`` samples (float64)."""
    t = np.asarray(taps, dtype=np.float64).reshape(-1)
    length = t.size
    if mode == "valid":
        n_out = n - length + 1
        rows = np.arange(start, n_out, step)
        m = np.zeros((rows.size, n))
        for j in range(length):
            m[np.arange(rows.size), rows + j] += t[j]
        return m
    o = length // 2 if origin is None else int(origin)
    rows = np.arange(start, n, step)
    m = np.zeros((rows.size, n))
    idx = pad_index(n, o, length - 1 - o, mode)  # source of extended sample e is idx[e]
    for j in range(length):
        ext = rows + j  # extended index of the sample tap j reads
        if idx is None:
            src = ext - o
            ok = (src >= 0) & (src < n)
            np.add.at(m, (np.arange(rows.size)[ok], src[ok]), t[j])
        else:
            np.add.at(m, (np.arange(rows.size), idx[ext]), t[j])
    return m


def box_matrix(n: int, r: int) -> np.ndarray:
    """``(n, n)`` matrix of the clipped box mean of radius ``r`` (rows sum to one)."""
    i = np.arange(n)
    m = (np.abs(i[:, None] - i[None, :]) <= r).astype(np.float64)
    return m / m.sum(axis=1, keepdims=True)


#: Box matrices for axes up to this length are kept (:func:`_box_matrix_tensor`): a 2D image's
#: guided filter asks for the same few (n, r) 26 times, and building one cost as much as using it.
BOX_MATRIX_CACHE_LENGTH = 512


@functools.lru_cache(maxsize=16)
def _cached_box_matrix(n: int, r: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    return torch.as_tensor(box_matrix(n, r)).to(device=device, dtype=dtype)


def _box_matrix_tensor(n: int, r: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor | np.ndarray:
    """:func:`box_matrix` as a tensor of ``dtype`` on ``device``, cached for short axes (read-only use)."""
    if n <= BOX_MATRIX_CACHE_LENGTH:
        return _cached_box_matrix(n, r, dtype, str(device))
    return box_matrix(n, r)


def apply_matrix(x: torch.Tensor, matrix: np.ndarray | torch.Tensor, axis: int) -> torch.Tensor:
    """``out[..., i, ...] = sum_k matrix[i, k] x[..., k, ...]`` along ``axis`` (one matrix product)."""
    d = _dim(x, axis)
    m = torch.as_tensor(np.ascontiguousarray(matrix)) if isinstance(matrix, np.ndarray) else matrix
    m = m.to(device=x.device, dtype=x.dtype)
    if m.shape[1] != x.shape[d]:
        raise MedTorchInputError(
            f"a filter matrix for {m.shape[1]} samples cannot filter an axis of {x.shape[d]}", "build it for this axis"
        )
    if d == x.ndim - 1:
        return torch.matmul(x, m.t())
    before = int(np.prod(x.shape[:d])) if d > 0 else 1
    after = int(np.prod(x.shape[d + 1:]))
    out = torch.matmul(m, x.reshape(before, x.shape[d], after))
    shape = list(x.shape)
    shape[d] = m.shape[0]
    return out.reshape(shape)


def correlate_axis(
    x: torch.Tensor,
    taps: Sequence[float] | np.ndarray | torch.Tensor,
    axis: int,
    mode: BoundaryMode | Literal["valid"] = "reflect",
    origin: int | None = None,
    step: int = 1,
    start: int = 0,
) -> torch.Tensor:
    """Correlate ``x`` with ``taps`` along ``axis``: ``out[i] = sum_j taps[j] * x_ext[i + j]``.

    Args:
        taps: the 1D filter (applied as correlation; flip it for a convolution).
        mode: a boundary mode for a ``'same'``-size output (``x_ext`` is ``x`` padded by
            ``origin`` before and ``len(taps) - 1 - origin`` after), or ``'valid'`` for the
            ``n - len(taps) + 1`` outputs that need no padding.
        origin: index of the tap aligned with the output sample (default ``len // 2``).
        step, start: keep outputs ``start, start + step, ...`` only (filter + downsample).
    """
    d = _dim(x, axis)
    if isinstance(taps, torch.Tensor):
        t = [float(v) for v in taps.detach().cpu().reshape(-1).tolist()]
    else:
        t = [float(v) for v in np.asarray(taps, dtype=np.float64).reshape(-1)]
    length = len(t)
    if length == 0:
        raise MedTorchInputError("an empty filter was given", "give at least one filter tap")
    n = x.shape[d]
    if mode == "valid":
        ext = x
        n_out = n - length + 1
        if n_out < 1:
            raise MedTorchInputError(
                f"an axis of {n} samples is shorter than the {length}-tap filter",
                "use a larger image or a smaller window",
            )
    else:
        o = length // 2 if origin is None else int(origin)
        ext = pad_axis(x, d, o, length - 1 - o, mode)  # type: ignore[arg-type]
        n_out = n
    if length > 5 and n <= MATRIX_MAX_LENGTH and x.is_floating_point():
        return apply_matrix(x, filter_matrix(n, t, mode, origin, step, start), d)
    idx = list(range(start, n_out, step))
    count = len(idx)
    if count == 0:
        shape = list(x.shape)
        shape[d] = 0
        return x.new_zeros(shape)
    out: torch.Tensor | None = None
    for j in range(length):
        w = t[j]
        if w == 0.0:
            continue
        piece = ext.narrow(d, start + j, (count - 1) * step + 1)
        if step > 1:
            piece = _stride(piece, d, step)
        out = piece * w if out is None else out.add_(piece, alpha=w)
    if out is None:
        shape = list(x.shape)
        shape[d] = count
        return x.new_zeros(shape)
    return out


def _stride(x: torch.Tensor, d: int, step: int) -> torch.Tensor:
    sl = [slice(None)] * x.ndim
    sl[d] = slice(None, None, step)
    return x[tuple(sl)]


def separable(
    x: torch.Tensor,
    taps: Sequence[Sequence[float] | np.ndarray | None],
    mode: BoundaryMode | Literal["valid"] = "reflect",
) -> torch.Tensor:
    """Apply one 1D filter per trailing axis (``taps[k]`` along axis ``k - len(taps)``; None skips it)."""
    out = x
    nd = len(taps)
    for k, tk in enumerate(taps):
        if tk is None:
            continue
        out = correlate_axis(out, tk, k - nd, mode)
    return out


def gaussian_kernel1d(sigma: float, radius: int | None = None, truncate: float = 4.0) -> np.ndarray:
    """Normalised Gaussian taps ``exp(-x^2 / 2 sigma^2)`` for ``x = -radius .. radius``.

    ``radius`` defaults to ``int(truncate * sigma + 0.5)`` (scipy's rule). ``sigma = 0``
    gives the identity filter ``[1]``.
    """
    if not (sigma >= 0 and math.isfinite(sigma)):
        raise MedTorchInputError(f"a Gaussian sigma must be >= 0, got {sigma}", "give a non-negative width")
    if sigma == 0:
        return np.ones(1)
    r = int(truncate * sigma + 0.5) if radius is None else int(radius)
    x = np.arange(-r, r + 1, dtype=np.float64)
    g = np.exp(-0.5 * (x / sigma) ** 2)
    return g / g.sum()


def gaussian_filter(
    x: torch.Tensor,
    sigma: float | Sequence[float],
    ndim: int = 3,
    radius: int | Sequence[int] | None = None,
    mode: BoundaryMode | Literal["valid"] = "reflect",
    truncate: float = 4.0,
) -> torch.Tensor:
    """Separable Gaussian over the last ``ndim`` axes (sigma and radius in samples, per axis)."""
    sig = [float(sigma)] * ndim if isinstance(sigma, (int, float)) else [float(s) for s in sigma]
    rad: list[int | None] = ([radius] * ndim if radius is None or isinstance(radius, int)
                             else [int(r) for r in radius])
    if len(sig) != ndim or len(rad) != ndim:
        raise MedTorchInputError(f"give one sigma per axis ({ndim})", "pass a number or one value per axis")
    taps = []
    for s, r in zip(sig, rad):
        taps.append(None if s == 0 and mode != "valid" else gaussian_kernel1d(s, r, truncate))
    return separable(x, taps, mode)


def axis_radii(radius: float, spacing: Sequence[float] | None, shape: Sequence[int]) -> list[int]:
    """A radius given in samples of the finest axis, per axis of a grid of ``spacing`` (mm).

    Physically isotropic windows on anisotropic grids: ``r_k = round(r * min(spacing) / spacing_k)``;
    axes of length 1 (a 2D image stored as one slice) get 0.
    """
    nd = len(shape)
    sp = [1.0] * nd if spacing is None else [float(s) for s in spacing]
    if len(sp) != nd:
        raise MedTorchInputError(f"{len(sp)} spacings for a {nd}D image", "give one spacing per axis")
    finest = min(s for s, n in zip(sp, shape) if n > 1) if any(n > 1 for n in shape) else 1.0
    return [0 if n <= 1 else max(0, int(math.floor(radius * finest / s + 0.5))) for s, n in zip(sp, shape)]


def _clamped_window(c: torch.Tensor, d: int, offset: int, n: int) -> torch.Tensor:
    """``out[i] = c[clamp(i + offset, 0, len(c) - 1)]`` for ``i = 0 .. n-1`` along axis ``d`` (no gather)."""
    m = c.shape[d]
    parts = []
    lo_rep = min(max(-offset, 0), n)  # indices below 0
    if lo_rep:
        shape = list(c.shape)
        shape[d] = lo_rep
        parts.append(c.narrow(d, 0, 1).expand(shape))
    first = max(offset, 0) if lo_rep == 0 else 0
    count = min(n - lo_rep, m - first)
    if count > 0:
        parts.append(c.narrow(d, first, count))
    rest = n - lo_rep - max(count, 0)
    if rest > 0:
        shape = list(c.shape)
        shape[d] = rest
        parts.append(c.narrow(d, m - 1, 1).expand(shape))
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=d)


def box_mean(
    x: torch.Tensor,
    radius: Sequence[int],
    accumulate: torch.dtype | None = None,
) -> torch.Tensor:
    """Mean over a ``(2 r_k + 1)`` window along each of the last ``len(radius)`` axes.

    Windows are clipped at the border and divided by the number of samples they hold (the
    box filter of He et al.'s guided filter). Axes up to :data:`MATRIX_MAX_LENGTH` samples
    are filtered by one matrix product each; longer ones by a cumulative sum and a
    difference (cost independent of the radius). ``accumulate`` (e.g. ``torch.float64``)
    sets the type the sums run in; the result has ``x``'s type.
    """
    out = x if accumulate is None else x.to(accumulate)
    nd = len(radius)
    for k, r in enumerate(radius):
        r = int(r)
        if r <= 0:
            continue
        d = x.ndim - nd + k
        n = out.shape[d]
        if n <= MATRIX_MAX_LENGTH:
            out = apply_matrix(out, _box_matrix_tensor(n, r, out.dtype, out.device), d)
            continue
        shape = list(out.shape)
        shape[d] = 1
        c = torch.cat([out.new_zeros(shape), torch.cumsum(out, dim=d)], dim=d)  # c[i] = sum x[:i]
        i = np.arange(n)
        cnt = (np.minimum(i + r + 1, n) - np.maximum(i - r, 0)).astype(np.float64)
        view = [1] * out.ndim
        view[d] = n
        inv = torch.from_numpy(1.0 / cnt).to(out.device, out.dtype).view(view)
        out = (_clamped_window(c, d, r + 1, n) - _clamped_window(c, d, -r, n)) * inv
    return out if accumulate is None else out.to(x.dtype)


def window_sum(x: torch.Tensor, radius: Sequence[int]) -> torch.Tensor:
    """Sum over a ``(2 r_k + 1)`` window per trailing axis (zero outside), by shifted adds.

    For small radii (1 or 2) this is cheaper than :func:`box_mean`'s cumulative sums.
    """
    nd = len(radius)
    out = x
    for k, r in enumerate(radius):
        if int(r) > 0:
            out = correlate_axis(out, [1.0] * (2 * int(r) + 1), x.ndim - nd + k, "zero")
    return out


def sobel(x: torch.Tensor, ndim: int = 2) -> list[torch.Tensor]:
    """Sobel derivatives along each of the last ``ndim`` axes (zero padding, 'same' size).

    Axis ``k``'s derivative is the central difference ``[-1, 0, 1]`` along it (as a
    correlation) times the smoothing ``[1, 2, 1]`` along every other axis: in 2D the
    classic 3x3 Sobel pair, in 3D the 3x3x3 Sobel operator. The sign convention does not
    matter to the magnitude or to ``atan(g_y / g_x)``.
    """
    outs = []
    for k in range(ndim):
        taps: list[Sequence[float] | None] = [[1.0, 2.0, 1.0]] * ndim
        taps = list(taps)
        taps[k] = [-1.0, 0.0, 1.0]
        outs.append(separable(x, taps, "zero"))
    return outs


def laplacian(x: torch.Tensor, ndim: int = 3) -> torch.Tensor:
    """The ``2 ndim + 1``-point Laplacian (sum of second differences) over the last ``ndim`` axes.

    Border samples repeat (edge extension), so a constant image gives 0 everywhere. Axes of
    length 1 contribute nothing (a 2D image stored as one slice gets the 5-point Laplacian
    of its plane). Computed with in-place shifted adds (no padded copy).
    """
    axes = [x.ndim - ndim + k for k in range(ndim) if x.shape[x.ndim - ndim + k] > 1]
    out = x * (-2.0 * len(axes))
    for d in axes:
        n = x.shape[d]
        out.narrow(d, 0, n - 1).add_(x.narrow(d, 1, n - 1))
        out.narrow(d, 1, n - 1).add_(x.narrow(d, 0, n - 1))
        out.narrow(d, 0, 1).add_(x.narrow(d, 0, 1))
        out.narrow(d, n - 1, 1).add_(x.narrow(d, n - 1, 1))
    return out


def pool_mean(x: torch.Tensor, factor: int, ndim: int = 3) -> tuple[torch.Tensor, list[int]]:
    """Mean over non-overlapping ``factor``-blocks of the last ``ndim`` axes (edge-padded).

    Axes of length 1 are left alone. Returns the pooled tensor and the original sizes.
    """
    sizes = list(x.shape[-ndim:])
    out = x
    for k, n in enumerate(sizes):
        if n <= 1 or factor == 1:
            continue
        d = x.ndim - ndim + k
        extra = (-n) % factor
        if extra:
            out = pad_axis(out, d, 0, extra, "edge")
        shape = list(out.shape)
        shape[d: d + 1] = [shape[d] // factor, factor]
        out = out.reshape(shape).mean(dim=d + 1)
    return out, sizes


def upsample_linear(x: torch.Tensor, factor: int, sizes: Sequence[int], ndim: int = 3) -> torch.Tensor:
    """Inverse grid of :func:`pool_mean`: linear interpolation (cell centres aligned), cropped to ``sizes``.

    Fine sample ``i`` lies at ``(i + 0.5) / factor - 0.5`` on the coarse axis; values
    beyond the first/last coarse sample are held constant. Each output phase is a blend
    of two shifted copies written straight into its strided slots (no gather, no stack).
    """
    out = x
    for k, n in enumerate(sizes):
        if n <= 1 or factor == 1:
            continue
        d = x.ndim - ndim + k
        m = out.shape[d]
        shape = list(out.shape)
        shape[d] = m * factor
        res = out.new_empty(shape)
        sl = [slice(None)] * out.ndim
        for p in range(factor):
            delta = (p + 0.5) / factor - 0.5
            sl[d] = slice(p, m * factor, factor)
            dst = res[tuple(sl)]
            if m == 1 or delta == 0:
                dst.copy_(out)
            elif delta < 0:  # blend with the previous sample (the first one repeats)
                torch.lerp(out.narrow(d, 1, m - 1), out.narrow(d, 0, m - 1), -delta, out=dst.narrow(d, 1, m - 1))
                dst.narrow(d, 0, 1).copy_(out.narrow(d, 0, 1))
            else:  # blend with the next sample (the last one repeats)
                torch.lerp(out.narrow(d, 0, m - 1), out.narrow(d, 1, m - 1), delta, out=dst.narrow(d, 0, m - 1))
                dst.narrow(d, m - 1, 1).copy_(out.narrow(d, m - 1, 1))
        out = res.narrow(d, 0, n)
    return out
