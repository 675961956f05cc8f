"""Patch-based denoising kernels on torch: sliding 3D DCT shrinkage and (guided) non-local means.

These work on plain tensors ``[z, y, x]`` (float32, any device) in voxel units; the
volume-level methods in :mod:`medtorch.enhance.denoise` wrap them.

* :func:`sliding_dct_denoise`: every ``b x b x b`` block (at every ``step``-th position)
  is transformed with an orthonormal 3D DCT; coefficients are hard-thresholded at
  ``lam * sigma`` (first pass) or shrunk by the empirical Wiener gain
  ``P^2 / (P^2 + sigma^2)`` of a pilot estimate ``P`` (second pass), transformed back and
  averaged where blocks overlap, each block weighted by the inverse of its retained
  energy, as in BM3D's aggregation (Dabov et al. 2007; Yu and Sapiro 2011 for the sliding
  DCT). The block transforms are separable: ``unfold`` + a small matrix product per axis,
  and ``fold`` for the overlap-add, so no block is ever copied out one by one.
* :func:`nonlocal_means`: each voxel becomes a weighted mean of the voxels of a search
  window, weighted by ``exp(-d / h^2)`` with ``d`` the mean squared difference of the
  patches around them (Buades et al. 2005). With a ``guide`` the patch distances are
  measured on the guide (a pilot estimate, nearly noise-free) while the *noisy* values
  are averaged ("prefiltered" NLM, Manjon et al. 2012). Each pair of voxels is visited
  once (the weight is symmetric), so a window of ``(2r+1)^3`` costs ``((2r+1)^3 - 1) / 2``
  passes over the volume.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from medtorch.errors import MedTorchInputError
from medtorch.memory import check_fits
from medtorch.progress import CancelToken, ProgressCallback, report

__all__ = ["dct_matrix", "nonlocal_means", "sliding_dct_denoise"]

#: Coefficients held at once per chunk of the sliding DCT (sets its working memory).
DCT_CHUNK_COEFFICIENTS = 8_000_000


def dct_matrix(size: int, dtype: torch.dtype = torch.float32, device: Any = None) -> torch.Tensor:
    """Orthonormal DCT-II matrix ``D`` (``D @ D.T = I``): row ``u`` is the ``u``-th basis vector."""
    n = torch.arange(size, dtype=torch.float64)
    d = torch.cos(math.pi * (2 * n[None, :] + 1) * n[:, None] / (2 * size)) * math.sqrt(2.0 / size)
    d[0] /= math.sqrt(2.0)
    return d.to(dtype=dtype, device=device)


def _analysis(x: torch.Tensor, d: torch.Tensor, dim: int, step: int) -> torch.Tensor:
    """Sliding transform along ``dim`` (length n -> (n - b) // step + 1); coefficients appended last."""
    return x.unfold(dim, d.shape[0], step) @ d.T


def _synthesis(c: torch.Tensor, d: torch.Tensor, dim: int, step: int) -> torch.Tensor:
    """Adjoint of :func:`_analysis`: inverse transform of the last axis, overlap-added along ``dim``."""
    b = d.shape[0]
    t = (c @ d).movedim(dim, -1)  # [..., b, n']
    lead, length = t.shape[:-2], t.shape[-1]
    n = (length - 1) * step + b
    out = F.fold(t.reshape(-1, b, length), output_size=(1, n), kernel_size=(1, b), stride=(1, step))
    return out.reshape(*lead, n).movedim(-1, dim)


def _pad_for_blocks(x: torch.Tensor, block: int, step: int) -> torch.Tensor:
    """Replicate-pad the far end of each axis so that blocks at ``step`` tile it exactly."""
    pads: list[int] = []
    for n in reversed(x.shape):
        extra = (-(n - block)) % step if n >= block else block - n
        pads += [0, extra]
    if not any(pads):
        return x
    return F.pad(x[None, None], pads, mode="replicate")[0, 0]


def sliding_dct_denoise(
    noisy: torch.Tensor,
    sigma: float,
    block: int = 8,
    step: int = 2,
    threshold: float = 2.7,
    pilot: torch.Tensor | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> torch.Tensor:
    """Sliding-window 3D DCT denoising of a ``[z, y, x]`` tensor with white noise ``sigma``.

    Args:
        noisy: the noisy voxels (not modified).
        sigma: noise standard deviation, in the voxels' units.
        block: block edge in voxels (4 to 16).
        step: distance between block positions in voxels (1 = every position; 2 is 8x
            faster and loses little).
        threshold: hard threshold in units of ``sigma`` (first pass, without ``pilot``).
        pilot: a first estimate; when given, empirical Wiener shrinkage is used instead.

    Returns:
        The estimate, float32, the shape of ``noisy``.
    """
    if noisy.ndim != 3:
        raise MedTorchInputError(f"sliding DCT denoising needs a 3D tensor, got shape {tuple(noisy.shape)}",
                                 "give the voxels [z, y, x]")
    if not 2 <= int(block) <= 16 or not 1 <= int(step) <= int(block):
        raise MedTorchInputError(f"block {block} / step {step} are not usable",
                                 "use a block of 2 to 16 voxels and a step between 1 and the block size")
    block, step = int(block), int(step)
    shape = noisy.shape
    if not sigma > 0:
        return noisy.to(torch.float32).clone()
    y = _pad_for_blocks(noisy.to(torch.float32), block, step)
    p = _pad_for_blocks(pilot.to(torch.float32), block, step) if pilot is not None else None
    d = dct_matrix(block, device=y.device)
    nz, ny, nx = y.shape
    n_blocks_z = (nz - block) // step + 1
    per_plane = ((ny - block) // step + 1) * ((nx - block) // step + 1) * block**3
    chunk = max(1, DCT_CHUNK_COEFFICIENTS // per_plane)
    check_fits(4 * (6 * min(chunk, n_blocks_z) * per_plane + 3 * y.numel()), "sliding DCT denoising", y.device)
    num = torch.zeros_like(y)
    den = torch.zeros_like(y)
    ones = torch.ones(1, 1, block, block, block, device=y.device)
    sigma2 = float(sigma) ** 2

    def forward(v: torch.Tensor, z0: int, z1: int) -> torch.Tensor:
        t = _analysis(v[z0:z1], d, 2, step)
        t = _analysis(t, d, 1, step)
        return _analysis(t, d, 0, step)  # [bz, by, bx, w, v, u]

    for k0 in range(0, n_blocks_z, chunk):
        report(progress, cancel, k0 / n_blocks_z, "sliding DCT" + (" (Wiener)" if p is not None else ""))
        k1 = min(k0 + chunk, n_blocks_z)
        z0, z1 = k0 * step, (k1 - 1) * step + block
        coef = forward(y, z0, z1)
        if p is None:
            keep = coef.abs() > float(threshold) * float(sigma)
            keep[..., 0, 0, 0] = True  # the block mean is always kept
            coef = coef * keep
            weight = 1.0 / keep.sum(dim=(-1, -2, -3)).to(torch.float32)
            del keep
        else:
            ref = forward(p, z0, z1).square_()
            gain = ref.div_(ref + sigma2)
            coef = coef * gain
            weight = 1.0 / gain.square_().sum(dim=(-1, -2, -3)).clamp_min(1e-6)
            del gain, ref
        coef = coef * weight[..., None, None, None]
        t = _synthesis(coef, d, 0, step)
        del coef
        t = _synthesis(t, d, 1, step)
        t = _synthesis(t, d, 2, step)
        num[z0:z1] += t
        den[z0:z1] += F.conv_transpose3d(weight[None, None], ones, stride=step)[0, 0]
    report(progress, cancel, 1.0, "sliding DCT done")
    out = num / den.clamp_min(1e-12)
    return out[: shape[0], : shape[1], : shape[2]].contiguous()


def _pair_slices(shape: tuple[int, ...], offset: tuple[int, int, int]) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Slices ``a`` and ``b`` of an array of ``shape`` such that ``b`` is ``a`` moved by ``offset``."""
    a, b = [], []
    for n, o in zip(shape, offset):
        a.append(slice(max(0, -o), n - max(0, o)))
        b.append(slice(max(0, o), n - max(0, -o)))
    return tuple(a), tuple(b)


def nonlocal_means(
    values: torch.Tensor,
    h: float,
    guide: torch.Tensor | None = None,
    search_radius: int = 3,
    patch_radius: int = 1,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> torch.Tensor:
    """Non-local means of a ``[z, y, x]`` tensor; weights from ``guide`` (or ``values``).

    Args:
        values: what is averaged (the noisy voxels, or their squares for Rician data).
        h: filtering parameter in the guide's units: weight ``exp(-d / h^2)`` with ``d`` the
            mean squared difference of two ``(2 patch_radius + 1)^3`` patches.
        guide: where patch distances are measured; ``values`` when ``None``.
        search_radius: the search window is ``(2 r + 1)^3`` voxels.
        patch_radius: the patch is ``(2 p + 1)^3`` voxels.

    The centre voxel gets the largest weight any other voxel of its window got (so that
    it does not dominate its own mean), as in Buades' NLM. Borders are replicated.
    """
    if values.ndim != 3:
        raise MedTorchInputError(f"non-local means needs a 3D tensor, got shape {tuple(values.shape)}",
                                 "give the voxels [z, y, x]")
    if not h > 0:
        raise MedTorchInputError(f"the NLM filtering parameter h={h} is not positive", "give a positive h (a study's denoise step: h: 0.8), or leave h out and it is chosen from the data")
    r, pr = int(search_radius), int(patch_radius)
    if not 1 <= r <= 10 or not 0 <= pr <= 5:
        raise MedTorchInputError(f"search radius {r} / patch radius {pr} are not usable",
                                 "use a search radius of 1 to 10 voxels and a patch radius of 0 to 5")
    v = values.to(torch.float32)
    g = v if guide is None else guide.to(torch.float32)
    if g.shape != v.shape:
        raise MedTorchInputError("the NLM guide and the values differ in shape", "give a guide on the same grid")
    check_fits(4 * 8 * (v.numel() + 8 * r * v[0].numel()), "non-local means", v.device)
    pad = (r,) * 6
    gp = F.pad(g[None, None], pad, mode="replicate")[0, 0]
    vp = F.pad(v[None, None], pad, mode="replicate")[0, 0]
    num = torch.zeros_like(vp)
    den = torch.zeros_like(vp)
    wmax = torch.zeros_like(vp)
    inv_h2 = -1.0 / float(h) ** 2
    offsets = [(a, b, c) for a in range(-r, r + 1) for b in range(-r, r + 1) for c in range(-r, r + 1) if (a, b, c) > (0, 0, 0)]
    for n, off in enumerate(offsets):
        if n % 8 == 0:
            report(progress, cancel, n / len(offsets), "non-local means")
        sa, sb = _pair_slices(gp.shape, off)
        dist = (gp[sa] - gp[sb]).square_()
        if pr > 0:
            dist = F.avg_pool3d(dist[None, None], 2 * pr + 1, 1, pr, count_include_pad=False)[0, 0]
        w = dist.mul_(inv_h2).exp_()
        num[sa] += w * vp[sb]
        den[sa] += w
        num[sb] += w * vp[sa]
        den[sb] += w
        torch.maximum(wmax[sa], w, out=wmax[sa])
        torch.maximum(wmax[sb], w, out=wmax[sb])
    core = (slice(r, r + v.shape[0]), slice(r, r + v.shape[1]), slice(r, r + v.shape[2]))
    wc = wmax[core].clamp_min(1e-12)
    report(progress, cancel, 1.0, "non-local means done")
    return (num[core] + wc * v) / (den[core] + wc)
