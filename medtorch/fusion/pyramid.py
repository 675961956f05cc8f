"""Laplacian pyramid fusion in 3D (Burt & Adelson 1983; Burt & Kolczynski 1993), in torch.

Pyramid: ``G_0`` is the image; ``G_{k+1} = REDUCE(G_k)`` (separable 5-tap binomial blur
``[1, 4, 6, 4, 1] / 16`` along every axis, then every second sample); the Laplacian levels
are ``L_k = G_k - EXPAND(G_{k+1})`` and the top is ``G_n``. ``EXPAND`` upsamples by two and
blurs with the same kernel (times two per axis), in polyphase form. Reconstruction
``G_k = L_k + EXPAND(G_{k+1})`` is exact whatever the boundary rule (symmetric here).

Fusion rule: the tops are averaged; at every Laplacian level the coefficient comes from the
source with the larger *activity*, the mean absolute coefficient over a ``(2 r + 1)``
window (``activity_radius`` r; 0 is the plain max-abs rule). A window makes neighbouring
voxels choose the same source, which keeps edges whole (Burt & Kolczynski's area-based
selection). Axes of length 1 (a 2D image stored as one slice) are not reduced.
"""

from __future__ import annotations

import math

import torch

from medtorch.errors import MedTorchInputError
from medtorch.fusion.filters import correlate_axis, window_sum
from medtorch.progress import CancelToken, ProgressCallback, report

__all__ = ["expand", "fuse_laplacian", "laplacian_pyramid", "max_pyramid_levels", "reconstruct", "reduce"]

_BINOMIAL = (1.0 / 16, 4.0 / 16, 6.0 / 16, 4.0 / 16, 1.0 / 16)
#: The coarsest level keeps at least this many samples along every transformed axis.
MIN_TOP_SIZE = 4


def reduce(x: torch.Tensor, ndim: int = 3) -> torch.Tensor:
    """Blur with the 5-tap binomial and keep every second sample, along each of the last ``ndim`` axes of length > 1."""
    out = x
    for k in range(ndim):
        d = x.ndim - ndim + k
        if out.shape[d] > 1:
            out = correlate_axis(out, _BINOMIAL, d, "symmetric", step=2, start=0)
    return out


def _upsample_axis(x: torch.Tensor, d: int, n: int) -> torch.Tensor:
    """EXPAND along one axis: ``n`` samples from the ``m`` of ``x`` (``n`` is ``2m`` or ``2m - 1``)."""
    m = x.shape[d]
    shape = list(x.shape)
    shape[d] = 2 * m
    out = x.new_empty(shape)
    sl_even = [slice(None)] * x.ndim
    sl_odd = [slice(None)] * x.ndim
    sl_even[d] = slice(0, 2 * m, 2)
    sl_odd[d] = slice(1, 2 * m, 2)
    even, odd = out[tuple(sl_even)], out[tuple(sl_odd)]
    if m == 1:
        even.copy_(x)
        odd.copy_(x)
        return out.narrow(d, 0, n)
    first, last = x.narrow(d, 0, 1), x.narrow(d, m - 1, 1)
    # odd samples: (x[i] + x[i+1]) / 2, and x[m-1] at the end (symmetric extension)
    torch.add(x.narrow(d, 0, m - 1), x.narrow(d, 1, m - 1), out=odd.narrow(d, 0, m - 1))
    odd.narrow(d, 0, m - 1).mul_(0.5)
    odd.narrow(d, m - 1, 1).copy_(last)
    # even samples: (x[i-1] + 6 x[i] + x[i+1]) / 8; at the ends (7 x[0] + x[1]) / 8, (x[m-2] + 7 x[m-1]) / 8
    if m > 2:
        mid = even.narrow(d, 1, m - 2)
        torch.add(x.narrow(d, 0, m - 2), x.narrow(d, 2, m - 2), out=mid)
        mid.add_(x.narrow(d, 1, m - 2), alpha=6.0).mul_(0.125)
    torch.add(x.narrow(d, 1, 1), first, alpha=7.0, out=even.narrow(d, 0, 1))
    even.narrow(d, 0, 1).mul_(0.125)
    torch.add(x.narrow(d, m - 2, 1), last, alpha=7.0, out=even.narrow(d, m - 1, 1))
    even.narrow(d, m - 1, 1).mul_(0.125)
    return out.narrow(d, 0, n)


def expand(x: torch.Tensor, sizes: list[int], ndim: int = 3) -> torch.Tensor:
    """Upsample by two (cropped to ``sizes``) and blur with ``2 x [1, 4, 6, 4, 1] / 16`` per axis.

    Polyphase: even samples ``(x[i-1] + 6 x[i] + x[i+1]) / 8``, odd samples
    ``(x[i] + x[i+1]) / 2``, symmetric extension at the borders.
    """
    out = x
    for k, n in enumerate(sizes):
        d = x.ndim - ndim + k
        if n <= 1 or n == out.shape[d]:
            continue
        out = _upsample_axis(out, d, n)
    return out


def max_pyramid_levels(shape: tuple[int, ...] | torch.Size, ndim: int = 3) -> int:
    """Deepest level whose top keeps :data:`MIN_TOP_SIZE` samples along every axis of length > 1."""
    sizes = [n for n in list(shape)[-ndim:] if n > 1]
    if not sizes:
        return 0
    return max(0, int(math.floor(math.log2(min(sizes) / MIN_TOP_SIZE))))


def laplacian_pyramid(x: torch.Tensor, levels: int, ndim: int = 3) -> list[torch.Tensor]:
    """``[L_0, ..., L_{levels-1}, G_levels]`` of ``x`` (see the module docstring)."""
    pyr = []
    g = x
    for _ in range(levels):
        nxt = reduce(g, ndim)
        pyr.append(g - expand(nxt, list(g.shape[-ndim:]), ndim))
        g = nxt
    pyr.append(g)
    return pyr


def reconstruct(pyr: list[torch.Tensor], ndim: int = 3) -> torch.Tensor:
    """Inverse of :func:`laplacian_pyramid` (exact)."""
    g = pyr[-1]
    for lap in reversed(pyr[:-1]):
        g = lap + expand(g, list(lap.shape[-ndim:]), ndim)
    return g


def fuse_laplacian(
    a: torch.Tensor,
    b: torch.Tensor,
    levels: int = 4,
    activity_radius: int = 1,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> tuple[torch.Tensor, dict[str, object]]:
    """Laplacian pyramid fusion of two images or volumes of one shape (see the module docstring).

    ``levels`` is capped so that the top keeps :data:`MIN_TOP_SIZE` samples per axis;
    the level used is returned in the info dict.
    """
    if a.shape != b.shape:
        raise MedTorchInputError(f"the images differ in shape ({tuple(a.shape)} vs {tuple(b.shape)})",
                                 "resample one onto the other's grid first")
    if int(levels) < 1:
        raise MedTorchInputError(f"the pyramid needs at least 1 level, got {levels}", "give levels >= 1")
    if int(activity_radius) < 0:
        raise MedTorchInputError(f"the activity radius must be >= 0, got {activity_radius}", "give 0, 1 or 2")
    ndim = a.ndim
    used = max(1, min(int(levels), max_pyramid_levels(a.shape, ndim)))
    report(progress, cancel, 0.05, f"Laplacian pyramids ({used} levels)")
    pyr = laplacian_pyramid(torch.stack([a, b]), used, ndim)
    fused: list[torch.Tensor] = []
    r = int(activity_radius)
    for k, lap in enumerate(pyr[:-1]):
        report(progress, cancel, 0.4 + 0.4 * k / used, f"selecting level {k} coefficients")
        # activity(a) >= activity(b)  <=>  window sum of (|L_a| - |L_b|) >= 0: one filter, not two
        diff = lap[0].abs() - lap[1].abs()
        if r > 0:
            diff = window_sum(diff, [r if n > 1 else 0 for n in lap.shape[-ndim:]])
        fused.append(torch.where(diff >= 0, lap[0], lap[1]))
        pyr[k] = lap[:0]  # free the level
    fused.append(pyr[-1].mean(dim=0))
    report(progress, cancel, 0.85, "reconstructing")
    out = reconstruct(fused, ndim)
    report(progress, cancel, 1.0, "Laplacian pyramid fusion done")
    return out.contiguous(), {"levels_used": used, "activity_radius": r}
