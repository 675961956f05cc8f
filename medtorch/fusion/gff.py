"""Guided-filter fusion (GFF; Li, Kang & Hu, IEEE TIP 22(7), 2013) in 3D, in torch.

The paper's steps, on images or volumes:

1. two-scale decomposition: base ``B_n`` = mean over a ``(2 r_b + 1)`` box (``r_b = 15``:
   the paper's 31 x 31 average filter), detail ``D_n = I_n - B_n``;
2. saliency ``S_n = |Laplacian(I_n)| * Gaussian(r_g = 5, sigma_g = 5)``;
3. binary weight maps ``P_n = 1`` where ``S_n`` is the largest;
4. weights refined by guided filtering with the source as guide:
   ``W_n^B = GF(P_n, I_n; r_1 = 45, eps_1 = 0.3)``, ``W_n^D = GF(P_n, I_n; r_2 = 7, eps_2 = 1e-6)``,
   each pair normalised to sum to one (negative filter overshoot clipped to 0 first);
5. ``F = sum_n W_n^B B_n + W_n^D D_n``.

Radii are in samples of the finest axis and scaled per axis by the spacing (a
physically isotropic window on an anisotropic grid, :func:`~medtorch.fusion.filters.axis_radii`).
The 3x3 Laplacian becomes the 7-point Laplacian in 3D.

Speed (``subsample``): with ``s = 1`` every step runs at full resolution, exactly as
above. With ``s > 1`` (the default for volumes above 1 M voxels, about 100³) the smooth quantities
are computed on pooled volumes: the saliency's Gaussian, the binary maps and the detail
weights' guided-filter coefficients at ``1/s`` (He & Sun's *fast guided filter*, 2015: the
refined weights still follow the full-resolution guide's edges), and the two smoothest
steps -- the base layer (any smooth base gives a valid two-scale split ``I = B + D``) and
the base-layer weights (``r_1 = 45``, ``eps_1 = 0.3``: smooth by construction, computed and
normalised coarse) -- at ``1/(2s)``, then interpolated back. The benchmark reports how far
``s = 2`` is from ``s = 1``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from medtorch.errors import MedTorchInputError
from medtorch.fusion.filters import (
    axis_radii,
    box_mean,
    gaussian_kernel1d,
    laplacian,
    pool_mean,
    separable,
    upsample_linear,
)
from medtorch.progress import CancelToken, ProgressCallback, report

__all__ = ["AUTO_SUBSAMPLE_VOXELS", "fuse_gff", "guided_coefficients"]

#: Volumes with more voxels than this use ``subsample = 2`` unless told otherwise.
AUTO_SUBSAMPLE_VOXELS = 1 << 20


def guided_coefficients(guide: torch.Tensor, src: torch.Tensor, radius: Sequence[int], eps: float,
                        accumulate: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """He et al.'s guided filter as its averaged linear coefficients: ``q = mean_a * I + mean_b``.

    Box means are matrix products (no cumulative-sum rounding), so float32 holds the
    variance to ~1e-7 for intensities in [0, 1], well below ``eps = 1e-6``; axes longer
    than 1024 samples fall back to cumulative sums, which then run in float64.
    ``accumulate`` forces a type; the coefficients come back in ``guide``'s type.
    """
    from medtorch.fusion.filters import MATRIX_MAX_LENGTH

    if accumulate is None:
        accumulate = torch.float64 if max(guide.shape[-len(radius):]) > MATRIX_MAX_LENGTH else guide.dtype
    g = guide.to(accumulate)
    p = src.to(accumulate)
    mean_i = box_mean(g, radius)
    mean_p = box_mean(p, radius)
    cov_ip = box_mean(g * p, radius) - mean_i * mean_p
    var_i = box_mean(g * g, radius) - mean_i * mean_i
    a = cov_ip / (var_i.clamp_min(0.0) + float(eps))
    b = mean_p - a * mean_i
    return box_mean(a, radius).to(guide.dtype), box_mean(b, radius).to(guide.dtype)


def _normalised_first(w: torch.Tensor) -> torch.Tensor:
    """Weight of source 0 after clipping both weights to [0, 1] and normalising their sum to 1."""
    w = w.clamp(0.0, 1.0)
    total = w[0] + w[1]
    return torch.where(total > 1e-6, w[0] / total.clamp_min(1e-6), torch.full_like(total, 0.5))


def fuse_gff(
    a: torch.Tensor,
    b: torch.Tensor,
    spacing: Sequence[float] | None = None,
    base_radius: float = 15,
    saliency_radius: float = 5,
    saliency_sigma: float = 5.0,
    r1: float = 45,
    eps1: float = 0.3,
    r2: float = 7,
    eps2: float = 1e-6,
    subsample: int | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> tuple[torch.Tensor, dict[str, object]]:
    """Guided-filter fusion of two images or volumes of one shape, intensities in [0, 1].

    Args:
        spacing: voxel size per axis (mm), to make windows physically isotropic; None: isotropic.
        base_radius, saliency_radius, saliency_sigma, r1, eps1, r2, eps2: the paper's
            parameters (radii in samples of the finest axis; ``eps`` for intensities in [0, 1]).
        subsample: ``s`` for the coarse steps (see the module docstring); None picks 1 up
            to :data:`AUTO_SUBSAMPLE_VOXELS` voxels and 2 above.
    """
    if a.shape != b.shape:
        raise MedTorchInputError(f"the images differ in shape ({tuple(a.shape)} vs {tuple(b.shape)})",
                                 "resample one onto the other's grid first")
    for name, v in (("base_radius", base_radius), ("r1", r1), ("r2", r2), ("saliency_radius", saliency_radius)):
        if not v >= 1:
            raise MedTorchInputError(f"the GFF {name} must be at least 1, got {v}", "use the paper's values (15, 45, 7, 5)")
    for name, v in (("eps1", eps1), ("eps2", eps2), ("saliency_sigma", saliency_sigma)):
        if not v > 0:
            raise MedTorchInputError(f"the GFF {name} must be > 0, got {v}", "use the paper's values (0.3, 1e-6, 5)")
    nd = a.ndim
    shape = list(a.shape)
    s = (1 if a.numel() <= AUTO_SUBSAMPLE_VOXELS else 2) if subsample is None else int(subsample)
    if s < 1:
        raise MedTorchInputError(f"subsample must be 1 or more, got {subsample}", "use 1 (exact) or 2 (fast)")

    def radii(r: float, factor: int = 1) -> list[int]:
        full = axis_radii(r, spacing, shape)
        return [0 if rk == 0 else max(1, int(rk / factor + 0.5)) for rk in full]

    x = torch.stack([a, b])
    sb = 1 if s == 1 else 2 * s  # the smooth base-layer steps go one level coarser still
    report(progress, cancel, 0.05, "saliency (Laplacian)")
    sal = laplacian(x, nd).abs_()
    small, sizes = pool_mean(sal, s, nd) if s > 1 else (sal, shape)
    del sal
    report(progress, cancel, 0.2, "saliency (Gaussian)")
    taps = [None if rg == 0 else gaussian_kernel1d(saliency_sigma * rg / max(saliency_radius, 1e-9), rg)
            for rg in radii(saliency_radius, s)]
    small = separable(small, taps, "reflect")
    p0 = (small[0] >= small[1]).to(a.dtype)
    weights_p = torch.stack([p0, 1.0 - p0])
    del small, p0
    guide_small = pool_mean(x, s, nd)[0] if s > 1 else x

    report(progress, cancel, 0.35, "base-layer weights (guided filter r1)")
    if s > 1:
        # smooth by construction: computed and normalised at 1/sb resolution, then interpolated
        guide_b = pool_mean(guide_small, 2, nd)[0]
        p_b = pool_mean(weights_p, 2, nd)[0]
        ab, bb = guided_coefficients(guide_b, p_b, radii(r1, sb), eps1)
        w_base = _normalised_first(ab * guide_b + bb)
        w_base = upsample_linear(upsample_linear(w_base, 2, list(guide_small.shape[-nd:]), nd), s, sizes, nd)
        base = upsample_linear(upsample_linear(box_mean(guide_b, radii(base_radius, sb)), 2,
                                               list(guide_small.shape[-nd:]), nd), s, sizes, nd)
        del guide_b, p_b
    else:
        ab, bb = guided_coefficients(guide_small, weights_p, radii(r1, s), eps1)
        w_base = _normalised_first(ab * x + bb)
        base = box_mean(x, radii(base_radius))
    del ab, bb

    report(progress, cancel, 0.55, "detail-layer weights (guided filter r2)")
    ad, bd = guided_coefficients(guide_small, weights_p, radii(r2, s), eps2)
    if s > 1:
        ad = upsample_linear(ad, s, sizes, nd)
        bd = upsample_linear(bd, s, sizes, nd)
    w_detail = _normalised_first(torch.addcmul(bd, ad, x))
    del ad, bd, weights_p

    del guide_small
    report(progress, cancel, 0.9, "combining")
    detail = x - base
    fused_base = torch.lerp(base[1], base[0], w_base)
    fused = fused_base.add_(torch.lerp(detail[1], detail[0], w_detail))
    report(progress, cancel, 1.0, "guided-filter fusion done")
    return fused.contiguous(), {"subsample": s}
