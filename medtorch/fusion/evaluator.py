"""The CDDFuse/VIFB evaluator's metric set (``metric_set="cddfuse"``), reproduced exactly.

Most deep-learning fusion papers since 2022 publish their tables with the Python
``Evaluator`` of CDDFuse (Zhao et al., CVPR 2023; repository Zhaozixiang1228/MMIF-CDDFuse,
``utils/Evaluator.py``, last changed in commit 40de058, driven by ``test_MIF.py``). Its
definitions differ from MedTorch's own set (:mod:`medtorch.fusion.metrics`) in several
places, so a number is only comparable with a published table when it is computed the
evaluator's way. This module does that, on 2D images of 8-bit grey values (0..255, float64):

========= ====================================================================================
EN        entropy (bits) of the 256-bin histogram of ``round(F)``
SD        ``std(F)`` (population)
SF        ``sqrt(mean(dx^2) + mean(dy^2))``, first differences, no padding
MI        ``MI(F, A) + MI(F, B)`` in **nats** (``sklearn.metrics.mutual_info_score`` on the grey
          values as labels = a 256 x 256 joint histogram, natural logarithm)
SCD       ``corr(A, F - B) + corr(B, F - A)`` (Pearson)
VIF       ``VIFp(A, F) + VIFp(B, F)``: Sheikh-Bovik pixel VIF, 4 scales, Gaussian windows
          ``N = 17, 9, 5, 3`` with ``sd = N / 5``, 'valid' filtering, ``sigma_n^2 = 2``; a NaN
          ratio counts as 1.0
Qabf      Xydeas-Petrovic Q^{AB/F} with the evaluator's quirk: where ``g_A == g_F`` the
          strength ratio is ``g_F`` (not 1); Sobel by ``scipy.signal.convolve2d(..., 'same')``
          (zero padding), angle ``arctan(s_y / s_x)`` (``pi/2`` where ``s_x = 0``)
SSIM_sum  ``SSIM(F, A) + SSIM(F, B)`` with ``skimage.metrics.structural_similarity``'s
          defaults of scikit-image 0.19.2 (the evaluator's pinned version) on float input:
          7 x 7 uniform window, sample covariance (``N / (N - 1)``), ``K1 = 0.01``,
          ``K2 = 0.03`` and **data_range = 2** (float's ``dtype_range``), so ``C1 = 4e-4``,
          ``C2 = 3.6e-3`` on 0..255 data; mean over the image cropped by 3 pixels
========= ====================================================================================

Inputs as ``test_MIF.py`` builds them: every image read with OpenCV's
``cvtColor(BGR2GRAY)`` on float32 and rounded -- grey images unchanged, colour (PET/SPECT
pseudo-colour) images reduced to their rounded luma ``Y = 0.299 R + 0.587 G + 0.114 B``
(:func:`evaluator_grey` reproduces it in float32 as OpenCV computes it, ties included).

Where MedTorch's own set differs (see ``docs/fusion-metrics.md``): MI in bits by default;
SSIM with an 11-tap Gaussian window, population covariance and ``L = 255``; QABF with the
paper's ratio 1 where ``g_A = g_F``; AG, which this set lacks; SCD, which MedTorch's lacks.

All computations are float64 torch (CPU or GPU) and match the evaluator run on float64
arrays to ~1e-12 (its float32 run, the published numbers' path, to ~1e-6).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from medtorch.errors import MedTorchInputError

__all__ = ["EVALUATOR", "EVALUATOR_METRICS", "evaluator_grey", "evaluator_metrics"]

#: Metric names of the evaluator's table, in its column order (CDDFuse README).
EVALUATOR_METRICS = ("EN", "SD", "SF", "MI", "SCD", "VIF", "Qabf", "SSIM_sum")
#: Provenance of the definitions reproduced here.
EVALUATOR = {
    "repository": "Zhaozixiang1228/MMIF-CDDFuse",
    "commit": "fd8da1f39d8d403b7343e577bd5a30cba38c7b7b",
    "file": "utils/Evaluator.py (last changed in 40de0585034a57b33d3e293b6807b29f247921b6)",
    "driver": "test_MIF.py: Evaluator.X(fused, ir, vi), images read with image_read_cv2(path, 'GRAY')",
    "ssim": "scikit-image 0.19.2 defaults on float input (data_range 2)",
}
_QABF = (0.9994, -15.0, 0.5, 0.9879, -22.0, 0.8)  # Tg, kg, Dg, Ta, ka, Da


def evaluator_grey(rgb: np.ndarray) -> np.ndarray:
    """8-bit ``[..., 3]`` RGB -> the evaluator's grey values (float64, integers 0..255).

    OpenCV's ``cvtColor(img_BGR.astype(float32), COLOR_BGR2GRAY)`` then ``np.round``: the
    luma in float32 with fused multiply-adds, ``Y = fma(R, 0.299f, fma(B, 0.114f, G *
    0.587f))``, rounded half to even. The order of the float32 operations only matters at
    exact ties (``299 R + 587 G + 114 B = 1000 k + 500``, a few pixels per image); this
    order reproduces the evaluator's grey images of the parity pairs at every pixel.
    A grey image (2D array) is returned as it is (as float64).
    """
    arr = np.asarray(rgb)
    if arr.ndim == 2:
        return arr.astype(np.float64)
    if arr.shape[-1] not in (3, 4):
        raise MedTorchInputError(f"a colour image needs 3 channels last, got shape {arr.shape}", "give [..., 3] RGB")
    r, g, b = (arr[..., k].astype(np.float64) for k in range(3))
    c_r, c_g, c_b = (float(np.float32(v)) for v in (0.299, 0.587, 0.114))
    t = (g * c_g).astype(np.float32).astype(np.float64)  # g * cg, rounded to float32
    t = (b * c_b + t).astype(np.float32).astype(np.float64)  # fma: one rounding
    y = (r * c_r + t).astype(np.float32)  # fma: one rounding
    return np.round(y).astype(np.float64)


# -- the metrics (2D float64 tensors on the 8-bit scale) ---------------------------------------------


def _en(f: torch.Tensor) -> float:
    codes = torch.round(f).clamp(0, 255).to(torch.int64).reshape(-1)
    h = torch.bincount(codes, minlength=256).to(torch.float64) / codes.numel()
    return float(-(h * torch.log2(h + (h == 0).to(h.dtype))).sum())


def _sf(f: torch.Tensor) -> float:
    dx = f[:, 1:] - f[:, :-1]
    dy = f[1:, :] - f[:-1, :]
    return float(torch.sqrt((dx * dx).mean() + (dy * dy).mean()))


def _mi_nats(x: torch.Tensor, y: torch.Tensor) -> float:
    """``sklearn.metrics.mutual_info_score(x, y)``: MI of the joint label histogram, in nats."""
    cx = torch.round(x).to(torch.int64).reshape(-1)
    cy = torch.round(y).to(torch.int64).reshape(-1)
    lo = int(min(cx.min(), cy.min()))
    cx, cy = cx - lo, cy - lo
    n = int(max(cx.max(), cy.max())) + 1
    joint = torch.bincount(cx * n + cy, minlength=n * n).reshape(n, n).to(torch.float64)
    # sklearn's arithmetic: c/N * (log c - log N) + c/N * (log N_x + log N_y - log(c_x c_y))
    total = joint.sum()
    px = joint.sum(dim=1)
    py = joint.sum(dim=0)
    ix, iy = torch.nonzero(joint, as_tuple=True)
    c = joint[ix, iy]
    outer = px[ix] * py[iy]
    log_outer = -torch.log(outer) + torch.log(px.sum()) + torch.log(py.sum())
    terms = c / total * (torch.log(c) - torch.log(total)) + c / total * log_outer
    return float(terms.sum().clamp_min(0.0))


def _corr(x: torch.Tensor, y: torch.Tensor) -> float:
    xc = x - x.mean()
    yc = y - y.mean()
    return float((xc * yc).sum() / torch.sqrt((xc * xc).sum() * (yc * yc).sum()))


def _conv_valid(x: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """``scipy.signal.convolve2d(x, rot90(win, 2), 'valid')`` (= correlation with ``win``) for a
    separable window ``win = outer(taps, taps)``, as two 1D passes (``x``: ``[..., H, W]``)."""
    lead = x.shape[:-2]
    y = x.reshape(-1, 1, *x.shape[-2:])
    k = taps.reshape(1, 1, 1, -1)
    y = torch.nn.functional.conv2d(y, k)
    y = torch.nn.functional.conv2d(y, k.reshape(1, 1, -1, 1))
    return y.reshape(*lead, *y.shape[-2:])


def _vif_window(n: int, dtype: torch.dtype, device: Any) -> torch.Tensor:
    """1D taps of the evaluator's ``N x N`` Gaussian window (``sd = N / 5``, normalised).

    The evaluator builds the 2D window ``exp(-(x^2 + y^2) / 2 sd^2)``, zeroes values below
    ``eps * max`` and normalises; for ``N <= 17`` nothing falls below ``eps * max`` (the
    smallest corner value is 4e-3 of the peak), so the window is exactly the outer product of
    these normalised 1D taps.
    """
    sd = n / 5.0
    m = (n - 1.0) / 2.0
    ax = np.arange(-m, m + 1)
    h2 = np.exp(-(ax[:, None] ** 2 + ax[None, :] ** 2) / (2.0 * sd * sd))
    assert (h2 >= np.finfo(h2.dtype).eps * h2.max()).all()
    h = np.exp(-(ax ** 2) / (2.0 * sd * sd))
    return torch.as_tensor(h / h.sum(), dtype=dtype, device=device)


def _vifp(ref: torch.Tensor, dist: torch.Tensor) -> float:
    sigma_nsq, eps = 2.0, 1e-10
    num = torch.zeros((), dtype=torch.float64, device=ref.device)
    den = torch.zeros((), dtype=torch.float64, device=ref.device)
    for scale in range(1, 5):
        n = 2 ** (4 - scale + 1) + 1
        win = _vif_window(n, ref.dtype, ref.device)
        if scale > 1:
            ref, dist = _conv_valid(torch.stack([ref, dist]), win)[:, ::2, ::2]
        mu1, mu2, e11, e22, e12 = _conv_valid(torch.stack([ref, dist, ref * ref, dist * dist, ref * dist]), win)
        s1 = e11 - mu1 * mu1
        s2 = e22 - mu2 * mu2
        s12 = e12 - mu1 * mu2
        s1 = s1.clamp_min(0.0)
        s2 = s2.clamp_min(0.0)
        g = s12 / (s1 + eps)
        sv = s2 - g * s12
        low1 = s1 < eps
        g = torch.where(low1, torch.zeros_like(g), g)
        sv = torch.where(low1, s2, sv)
        s1 = torch.where(low1, torch.zeros_like(s1), s1)
        low2 = s2 < eps
        g = torch.where(low2, torch.zeros_like(g), g)
        sv = torch.where(low2, torch.zeros_like(sv), sv)
        neg = g < 0
        sv = torch.where(neg, s2, sv)
        g = torch.where(neg, torch.zeros_like(g), g)
        sv = torch.where(sv <= eps, torch.full_like(sv, eps), sv)
        num = num + torch.log10(1 + g * g * s1 / (sv + sigma_nsq)).sum()
        den = den + torch.log10(1 + s1 / sigma_nsq).sum()
    v = float(num / den)
    return 1.0 if math.isnan(v) else v


def _sobel(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``convolve2d(x, h3, 'same')`` and ``convolve2d(x, h1, 'same')`` (zero padding)."""
    h1 = torch.tensor([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], dtype=x.dtype, device=x.device)
    h3 = torch.tensor([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=x.dtype, device=x.device)
    xp = torch.nn.functional.pad(x[None, None], (1, 1, 1, 1))
    # convolution = correlation with the kernel rotated by 180 degrees
    sx = torch.nn.functional.conv2d(xp, torch.flip(h3, (0, 1))[None, None])[0, 0]
    sy = torch.nn.functional.conv2d(xp, torch.flip(h1, (0, 1))[None, None])[0, 0]
    return sx, sy


def _qabf(a: torch.Tensor, b: torch.Tensor, f: torch.Tensor) -> float:
    tg, kg, dg, ta, ka, da = _QABF

    def arrays(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sx, sy = _sobel(x)
        g = torch.sqrt(sx * sx + sy * sy)
        ang = torch.where(sx == 0, torch.full_like(sx, math.pi / 2),
                          torch.atan(sy / torch.where(sx == 0, torch.ones_like(sx), sx)))
        return g, ang

    (ga, aa), (gb, ab), (gf, af) = arrays(a), arrays(b), arrays(f)

    def q(gs: torch.Tensor, as_: torch.Tensor) -> torch.Tensor:
        ratio = torch.where(gs > gf, gf / torch.where(gs > gf, gs, torch.ones_like(gs)),
                            torch.where(gs < gf, gs / torch.where(gs < gf, gf, torch.ones_like(gf)), gf))
        arel = 1 - torch.abs(as_ - af) / (math.pi / 2)
        return ta / (1 + torch.exp(ka * (arel - da))) * (tg / (1 + torch.exp(kg * (ratio - dg))))

    num = (q(ga, aa) * ga + q(gb, ab) * gb).sum()
    den = (ga + gb).sum()
    return float(num / den)


def _ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0, win: int = 7) -> float:
    """``structural_similarity(x, y)`` (scikit-image's defaults; ``data_range`` as given)."""
    taps = torch.full((win,), 1.0 / win, dtype=x.dtype, device=x.device)
    # 'valid' windows = the region scikit-image keeps after cropping (win - 1) / 2 pixels
    ux, uy, uxx, uyy, uxy = _conv_valid(torch.stack([x, y, x * x, y * y, x * y]), taps)
    cov = win * win / (win * win - 1.0)
    vx = cov * (uxx - ux * ux)
    vy = cov * (uyy - uy * uy)
    vxy = cov * (uxy - ux * uy)
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return float(s.mean())


def evaluator_metrics(a: Any, b: Any, f: Any, metrics: tuple[str, ...] | list[str] | None = None,
                      device: torch.device | str | None = None) -> dict[str, float]:
    """The evaluator's metrics of fused ``f`` against sources ``a``, ``b`` (2D, 8-bit grey values).

    ``a``, ``b``, ``f``: 2D arrays or tensors of one shape on the 0..255 scale (as the
    evaluator reads PNG files; pass :func:`evaluator_grey` of colour images). Returns
    ``{name: value}`` for :data:`EVALUATOR_METRICS` (or the subset ``metrics``).
    """
    ts = [torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).detach().to(
        device=device, dtype=torch.float64) for x in (a, b, f)]
    ta, tb, tf = ts
    if not (ta.shape == tb.shape == tf.shape) or ta.ndim != 2:
        raise MedTorchInputError(
            f"the evaluator's metrics need three 2D images of one shape, got {[tuple(t.shape) for t in ts]}",
            "score 2D images (or a volume slice by slice)")
    if min(ta.shape) < 7:
        raise MedTorchInputError(f"images of {tuple(ta.shape)} pixels are too small for the evaluator's SSIM (7 x 7)",
                                 "score images of at least 7 x 7 pixels")
    names = list(EVALUATOR_METRICS) if metrics is None else list(metrics)
    out: dict[str, float] = {}
    for name in names:
        if name == "EN":
            out[name] = _en(tf)
        elif name == "SD":
            out[name] = float(tf.std(unbiased=False))
        elif name == "SF":
            out[name] = _sf(tf)
        elif name == "MI":
            out[name] = _mi_nats(tf, ta) + _mi_nats(tf, tb)
        elif name == "SCD":
            out[name] = _corr(ta, tf - tb) + _corr(tb, tf - ta)
        elif name == "VIF":
            out[name] = _vifp(ta, tf) + _vifp(tb, tf)
        elif name == "Qabf":
            out[name] = _qabf(ta, tb, tf)
        elif name == "SSIM_sum":
            out[name] = _ssim(tf, ta) + _ssim(tf, tb)
        else:
            raise MedTorchInputError(f"unknown metric {name!r} of the cddfuse set",
                                     "use any of " + ", ".join(EVALUATOR_METRICS))
    return out
