"""Image-fusion quality metrics, on 2D images, 3D volumes and slice by slice.

MedTorch's own set (``metric_set='medtorch'``, the default) follows the papers' definitions
as the MATLAB toolkits implement them, in 2D and 3D. It is *not* numerically the Python
``Evaluator`` that CDDFuse and many later papers publish their tables with (SSIM window and
constants, MI unit, a QAB/F quirk differ; ``docs/fusion-metrics.md``): for numbers to put
beside a published table use ``metric_set='cddfuse'`` (:mod:`medtorch.fusion.evaluator`).

* Every image is first brought to the 8-bit scale the evaluators assume (they read PNG
  files): ``round(255 * (x - lo) / (hi - lo))`` clipped to [0, 255], with ``data_range =
  (lo, hi)`` (default (0, 1), MedTorch's fused output range). ``quantize=False`` keeps the
  scaled values unrounded (histogram metrics still bin them to integers).
* **EN** -- Shannon entropy of the 256-bin histogram of F, in bits.
* **SD** -- standard deviation of F (population, ``ddof=0``).
* **SF** -- spatial frequency ``sqrt(RF^2 + CF^2)``, ``RF^2`` the mean squared difference
  of horizontal neighbours and ``CF^2`` of vertical ones; in 3D the mean squared
  difference of neighbours along the slice axis is added.
* **AG** -- average gradient ``mean(sqrt((G_x^2 + G_y^2) / 2))`` with ``numpy.gradient``'s
  differences (central inside, one-sided at the border); in 3D ``/ 3`` over three terms.
* **MI** -- ``MI(F, A) + MI(F, B)`` from 256 x 256 joint histograms of the 8-bit values,
  in **bits** by default (``mi_unit='nats'`` for the natural logarithm, which is what
  ``sklearn.metrics.mutual_info_score`` -- used by the Python evaluator -- returns:
  ``MI_nats = MI_bits * ln 2``).
* **SSIM_sum** -- ``SSIM(A, F) + SSIM(B, F)`` (0..2: summed over both sources), Wang et al. (2004): Gaussian window
  ``sigma = 1.5`` (11 taps), ``K1 = 0.01``, ``K2 = 0.03``, ``L = 255``, mean over the
  positions where the window fits (``skimage.metrics.structural_similarity`` with
  ``gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255``).
* **QABF** -- Xydeas & Petrovic (2000) edge-preservation ``Q^{AB/F}``: 3x3 Sobel
  (zero padding), strength ``g`` and orientation ``alpha = atan(s_y / s_x)`` (pi/2 where
  ``s_x = 0``), ``G^{AF} = min(g_A, g_F) / max(g_A, g_F)`` (0 where both are 0),
  ``A^{AF} = 1 - |alpha_A - alpha_F| / (pi / 2)``, sigmoids with ``Gamma_g = 0.9994``,
  ``kappa_g = -15``, ``sigma_g = 0.5``, ``Gamma_a = 0.9879``, ``kappa_a = -22``,
  ``sigma_a = 0.8``, weights ``g^L`` with ``L = 1``. (The Python evaluator sets
  ``G^{AF} = g_F`` where ``g_A = g_F``; the paper's ratio 1 is used here. On 8-bit images
  non-zero Sobel magnitudes are >= 1, so both give a saturated sigmoid: the values differ
  by at most 6e-4 x Gamma_a at such pixels.)
* **VIF** -- ``VIF(A, F) + VIF(B, F)``, Sheikh & Bovik's pixel-domain VIF (``vifp``, as
  in the evaluator and the MATLAB ``vifp_mscale``): four scales, Gaussian windows of
  ``N = 17, 9, 5, 3`` samples with ``sd = N / 5``, 'valid' filtering, downsampling by two
  between scales, ``sigma_n^2 = 2``.

**Named metric sets.** ``fusion_metrics(..., metric_set='cddfuse')`` computes instead the
CDDFuse/VIFB evaluator's table (EN, SD, SF, MI in nats, SCD, VIF, Qabf, SSIM) exactly as that
evaluator does (:mod:`medtorch.fusion.evaluator`, where the differences from the definitions
above are listed): use it to put a number beside a published one.

3D versions (``mode='3d'``): the same definitions with 3D windows and differences; QABF
uses the 3x3x3 Sobel operator and, as orientation agreement, the angle ``theta`` in
[0, pi/2] between the two gradients' lines: ``A^{AF} = 1 - theta / (pi / 2)`` (in 2D the
literal ``|alpha_A - alpha_F|`` formula above is kept for comparability). Metrics are in
voxel units (no spacing), as in the literature. ``mode='slices'`` computes the 2D metrics
on every axial slice (``array[z]``) and averages them over the slices where either
source has a non-zero voxel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from medtorch.errors import MedTorchInputError
from medtorch.ops.fusion import MetricMode
from medtorch.fusion.filters import correlate_axis, gaussian_kernel1d, sobel

__all__ = [
    "METRICS",
    "MetricMode",
    "average_gradient",
    "entropy",
    "fusion_metrics",
    "mutual_information",
    "qabf",
    "slice_metrics",
    "spatial_frequency",
    "ssim",
    "standard_deviation",
    "to_8bit",
    "vif",
]

#: Metric names, in report order. Higher is better for all of them.
METRICS = ("EN", "SD", "SF", "AG", "MI", "SSIM_sum", "QABF", "VIF")
#: The fusion SSIM is summed over both sources (0..2, not 0..1), and named so wherever it is shown;
#: plain "SSIM" is accepted for it where metrics are chosen.
SSIM_SUM = "SSIM_sum"
ArrayLike = "np.ndarray | torch.Tensor"

_QABF = {"Tg": 0.9994, "kg": -15.0, "Dg": 0.5, "Ta": 0.9879, "ka": -22.0, "Da": 0.8}
_VIF_EPS = 1e-10
_VIF_SIGMA_NSQ = 2.0


# -- input handling ------------------------------------------------------------------------------


def to_8bit(x: np.ndarray | torch.Tensor, data_range: Sequence[float] = (0.0, 1.0), quantize: bool = True,
            device: torch.device | str | None = None) -> torch.Tensor:
    """``x`` on the evaluators' 8-bit scale [0, 255] as a float64 tensor (rounded if ``quantize``)."""
    lo, hi = (float(v) for v in data_range)
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        raise MedTorchInputError(f"the data range {tuple(data_range)} is empty or not finite",
                                 "give (lowest, highest) intensity, e.g. (0, 1)")
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if t.is_complex() or t.dtype == torch.bool:
        raise MedTorchInputError(f"images of type {t.dtype} cannot be scored", "give real-valued images")
    t = t.detach().to(device=device, dtype=torch.float64)
    if not torch.isfinite(t).all():
        raise MedTorchInputError("an image to score contains NaN or infinite values", "replace them first")
    t = ((t - lo) * (255.0 / (hi - lo))).clamp_(0.0, 255.0)
    return t.round_() if quantize else t


def _batched(x: torch.Tensor, nd: int) -> torch.Tensor:
    """``[B, *spatial]`` view: one batch item unless the input has more dims than ``nd``."""
    return x.reshape((-1,) + tuple(x.shape[-nd:]))


def _spatial_dims(nd: int) -> tuple[int, ...]:
    return tuple(range(1, nd + 1))


# -- single-image metrics -------------------------------------------------------------------------


def _codes(q: torch.Tensor) -> np.ndarray:
    """``[B, N]`` int64 numpy array of the 8-bit values of each batch item."""
    return q.detach().reshape(q.shape[0], -1).clamp(0, 255).round().to(torch.int64).cpu().numpy()


def _histograms(q: torch.Tensor) -> np.ndarray:
    """``[B, 256]`` counts of the integer values 0..255 of each batch item (numpy bincount)."""
    codes = _codes(q)
    b = codes.shape[0]
    offs = (np.arange(b, dtype=np.int64) * 256)[:, None]
    return np.bincount((codes + offs).ravel(), minlength=b * 256).reshape(b, 256).astype(np.float64)


def _entropy_of(counts: np.ndarray, log: float) -> np.ndarray:
    p = counts / np.maximum(counts.sum(axis=-1, keepdims=True), 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return terms.sum(axis=-1) / log


def entropy(f: torch.Tensor, nd: int) -> torch.Tensor:
    """EN per batch item (bits) of 8-bit-scaled ``f`` (``[B, *spatial]``)."""
    return torch.from_numpy(_entropy_of(_histograms(_batched(f, nd)), math.log(2.0)))


def standard_deviation(f: torch.Tensor, nd: int) -> torch.Tensor:
    """SD per batch item (population standard deviation)."""
    fb = _batched(f, nd)
    return fb.reshape(fb.shape[0], -1).std(dim=1, unbiased=False)


def spatial_frequency(f: torch.Tensor, nd: int) -> torch.Tensor:
    """SF per batch item: ``sqrt`` of the sum over axes of the mean squared neighbour difference."""
    fb = _batched(f, nd)
    total = torch.zeros(fb.shape[0], dtype=fb.dtype, device=fb.device)
    for d in _spatial_dims(nd):
        n = fb.shape[d]
        if n < 2:
            continue
        diff = fb.narrow(d, 1, n - 1) - fb.narrow(d, 0, n - 1)
        total += (diff * diff).reshape(fb.shape[0], -1).mean(dim=1)
    return total.sqrt()


def average_gradient(f: torch.Tensor, nd: int) -> torch.Tensor:
    """AG per batch item: ``mean(sqrt(sum_k G_k^2 / nd))`` with ``numpy.gradient`` differences."""
    fb = _batched(f, nd)
    dims = [d for d in _spatial_dims(nd) if fb.shape[d] > 1]
    sq = torch.zeros_like(fb)
    for g in torch.gradient(fb, dim=dims):
        sq += g * g
    return (sq / nd).sqrt().reshape(fb.shape[0], -1).mean(dim=1)


def _joint_mi(a: torch.Tensor, f: torch.Tensor, log: float) -> torch.Tensor:
    """MI per batch item from 256 x 256 joint histograms (``a``, ``f``: ``[B, ...]``; numpy bincount)."""
    ca, cf = _codes(a), _codes(f)
    b = ca.shape[0]
    offs = (np.arange(b, dtype=np.int64) * 65536)[:, None]
    joint = np.bincount((offs + ca * 256 + cf).ravel(), minlength=b * 65536).reshape(b, 256, 256).astype(np.float64)
    p = joint / np.maximum(joint.sum(axis=(1, 2), keepdims=True), 1)
    pa = p.sum(axis=2, keepdims=True)
    pf = p.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0) / np.where(p > 0, pa * pf, 1.0)), 0.0)
    return torch.from_numpy(terms.sum(axis=(1, 2)) / log)


def mutual_information(a: torch.Tensor, f: torch.Tensor, nd: int, unit: str = "bits") -> torch.Tensor:
    """MI(A, F) per batch item in ``unit`` ('bits' or 'nats') of 8-bit-scaled images."""
    return _joint_mi(_batched(a, nd), _batched(f, nd), _log_base(unit))


def _log_base(unit: str) -> float:
    if unit == "bits":
        return math.log(2.0)
    if unit == "nats":
        return 1.0
    raise MedTorchInputError(f"unknown MI unit {unit!r}", "use 'bits' or 'nats'")


# -- windowed metrics -----------------------------------------------------------------------------


def _valid_filter(x: torch.Tensor, taps: np.ndarray, nd: int, lead: int = 1) -> torch.Tensor:
    """'valid' filtering along the ``nd`` spatial axes that follow ``lead`` leading axes."""
    out = x
    for d in range(lead, lead + nd):
        if x.shape[d] == 1 and len(taps) > 1:  # a single slice: filter the plane only
            continue
        out = correlate_axis(out, taps, d, "valid")
    return out


def _ssim_maps(srcs: list[torch.Tensor], f: torch.Tensor, nd: int, data_range: float = 255.0) -> list[torch.Tensor]:
    """Mean SSIM(src, f) per batch item for each source, sharing F's statistics.

    The statistics run in float32 on data centred at ``data_range / 2`` (variances and
    covariances do not change with a shift; the means are shifted back), which keeps the
    rounding of ``E[x^2] - E[x]^2`` near 1e-3 grey levels^2, far below ``C2 = 58.5``.
    """
    taps = gaussian_kernel1d(1.5, 5)
    for d in _spatial_dims(nd):
        if f.shape[d] < taps.size and f.shape[d] != 1:
            raise MedTorchInputError(
                f"SSIM needs at least {taps.size} samples along every axis, the image has {tuple(f.shape[1:])}",
                "score larger images (or per slice for thin volumes)",
            )
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    shift = data_range / 2.0
    dt = torch.float32
    xs = [(x - shift).to(dt) for x in srcs]
    y = (f - shift).to(dt)
    quantities = xs + [y] + [x * x for x in xs] + [y * y] + [x * y for x in xs]
    k = len(xs)
    filt = _valid_filter(torch.stack(quantities), taps, nd, lead=2).to(torch.float64)
    mus, mu_y = filt[:k], filt[k]
    sq, sq_y, cross = filt[k + 1: 2 * k + 1], filt[2 * k + 1], filt[2 * k + 2:]
    vy = sq_y - mu_y * mu_y
    uy = mu_y + shift
    out = []
    for i in range(k):
        vx = sq[i] - mus[i] * mus[i]
        vxy = cross[i] - mus[i] * mu_y
        ux = mus[i] + shift
        m = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
        out.append(m.reshape(m.shape[0], -1).mean(dim=1))
    return out


def ssim(a: torch.Tensor, f: torch.Tensor, nd: int, data_range: float = 255.0) -> torch.Tensor:
    """SSIM per batch item (Wang et al. 2004; see the module docstring)."""
    return _ssim_maps([_batched(a, nd)], _batched(f, nd), nd, data_range)[0]


def _sobel_parts(x: torch.Tensor, nd: int) -> list[torch.Tensor]:
    parts = sobel(x, nd)
    return parts


def qabf(a: torch.Tensor, b: torch.Tensor, f: torch.Tensor, nd: int) -> torch.Tensor:
    """Q^{AB/F} per batch item (Xydeas & Petrovic 2000; 3D variant for ``nd = 3``)."""
    ab, bb, fb = (_batched(x, nd).to(torch.float32) for x in (a, b, f))  # Sobel of 8-bit values: exact in float32
    c = _QABF
    grads = [[g.to(torch.float64) for g in _sobel_parts(x, nd)] for x in (ab, bb, fb)]
    mags = [torch.sqrt(torch.stack([g * g for g in gs]).sum(dim=0)) for gs in grads]
    half_pi = math.pi / 2

    def preservation(src: int) -> torch.Tensor:
        g_s, g_f = mags[src], mags[2]
        hi = torch.maximum(g_s, g_f)
        lo = torch.minimum(g_s, g_f)
        g_rel = torch.where(hi > 0, lo / hi.clamp_min(1e-300), torch.zeros_like(hi))
        if nd == 2:
            angles = []
            for gs in (grads[src], grads[2]):
                gy, gx = gs[0], gs[1]
                ang = torch.where(gx == 0, torch.full_like(gx, half_pi), torch.atan(gy / torch.where(gx == 0, torch.ones_like(gx), gx)))
                angles.append(ang)
            a_rel = 1.0 - (angles[0] - angles[1]).abs() / half_pi
        else:
            dot = torch.stack([p * q for p, q in zip(grads[src], grads[2])]).sum(dim=0).abs()
            denom = g_s * g_f
            cos = torch.where(denom > 0, (dot / denom.clamp_min(1e-300)).clamp(0.0, 1.0), torch.zeros_like(denom))
            a_rel = 1.0 - torch.arccos(cos) / half_pi
        q_g = c["Tg"] / (1.0 + torch.exp(c["kg"] * (g_rel - c["Dg"])))
        q_a = c["Ta"] / (1.0 + torch.exp(c["ka"] * (a_rel - c["Da"])))
        return q_g * q_a

    qaf, qbf = preservation(0), preservation(1)
    num = (qaf * mags[0] + qbf * mags[1]).reshape(ab.shape[0], -1).sum(dim=1, dtype=torch.float64)
    den = (mags[0] + mags[1]).reshape(ab.shape[0], -1).sum(dim=1, dtype=torch.float64)
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.full_like(den, float("nan")))


def _vif_terms(refs: list[torch.Tensor], dist: torch.Tensor, nd: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Numerator and denominator sums of Sheikh's multiscale pixel VIF(ref, dist), per batch
    item, for each reference (the distorted image's statistics are shared). float64."""
    bsz = dist.shape[0]
    k = len(refs)
    sums = [(torch.zeros(bsz, dtype=torch.float64, device=dist.device),
             torch.zeros(bsz, dtype=torch.float64, device=dist.device)) for _ in refs]
    eps = _VIF_EPS
    imgs = torch.stack([r.to(torch.float64) for r in refs] + [dist.to(torch.float64)])  # [k+1, B, ...]
    for scale in range(1, 5):
        n = 2 ** (4 - scale + 1) + 1
        xs = np.arange(n) - (n - 1) / 2.0
        taps = np.exp(-(xs**2) / (2.0 * (n / 5.0) ** 2))
        taps = taps / taps.sum()

        def fits(x: torch.Tensor) -> bool:
            return all(x.shape[d] >= n or x.shape[d] == 1 for d in range(2, 2 + nd))

        if scale > 1:
            if not fits(imgs):
                break
            imgs = _valid_filter(imgs, taps, nd, lead=2)
            sl = [slice(None), slice(None)] + [slice(None, None, 2) if imgs.shape[d] > 1 else slice(None)
                                               for d in range(2, 2 + nd)]
            imgs = imgs[tuple(sl)]
        if not fits(imgs):
            break
        refs_s, d_s = imgs[:k], imgs[k]
        stack = torch.cat([imgs, refs_s * refs_s, (d_s * d_s).unsqueeze(0), refs_s * d_s.unsqueeze(0)])
        filt = _valid_filter(stack, taps, nd, lead=2)
        mu_r, mu_d = filt[:k], filt[k]
        sq_r, sq_d, cross = filt[k + 1: 2 * k + 1], filt[2 * k + 1], filt[2 * k + 2:]
        s2_all = (sq_d - mu_d * mu_d).clamp_min(0.0)
        for i in range(k):
            s1 = (sq_r[i] - mu_r[i] * mu_r[i]).clamp_min(0.0)
            s2 = s2_all
            s12 = cross[i] - mu_r[i] * mu_d
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
            sv = sv.clamp_min(eps)
            num, den = sums[i]
            num += torch.log10(1.0 + g * g * s1 / (sv + _VIF_SIGMA_NSQ)).reshape(bsz, -1).sum(dim=1)
            den += torch.log10(1.0 + s1 / _VIF_SIGMA_NSQ).reshape(bsz, -1).sum(dim=1)
    return sums


def _vif_ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.full_like(den, float("nan")))


def vif(ref: torch.Tensor, dist: torch.Tensor, nd: int) -> torch.Tensor:
    """VIF(ref, dist) per batch item (Sheikh & Bovik's multiscale pixel-domain VIF)."""
    (num, den), = _vif_terms([_batched(ref, nd)], _batched(dist, nd), nd)
    return _vif_ratio(num, den)


# -- all metrics ------------------------------------------------------------------------------------


def _squeeze_single_slice(x: Any) -> Any:
    """A one-slice volume ``[1, y, x]`` (how 2D images are stored) as the image ``[y, x]``."""
    shape = tuple(x.shape) if isinstance(x, torch.Tensor) else tuple(np.shape(x))
    if len(shape) == 3 and shape[0] == 1 and min(shape[1:]) > 1:
        return x[0]
    return x


def _check_inputs(a: Any, b: Any, f: Any) -> tuple[tuple[int, ...], int]:
    shapes = [tuple(np.shape(x)) if not isinstance(x, torch.Tensor) else tuple(x.shape) for x in (a, b, f)]
    if len(set(shapes)) != 1:
        raise MedTorchInputError(
            f"the images to score differ in shape (source A {shapes[0]}, source B {shapes[1]}, fused {shapes[2]})",
            "score the fused image against the two sources on its own grid",
        )
    shape = shapes[0]
    if len(shape) not in (2, 3):
        raise MedTorchInputError(f"images to score must be 2D or 3D, got shape {shape}",
                                 "give [y, x] images or [z, y, x] volumes (one channel: score the luminance)")
    return shape, len(shape)


def _all_metrics(a: torch.Tensor, b: torch.Tensor, f: torch.Tensor, nd: int, log: float,
                 names: Sequence[str]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    if "EN" in names:
        out["EN"] = entropy(f, nd)
    if "SD" in names:
        out["SD"] = standard_deviation(f, nd)
    if "SF" in names:
        out["SF"] = spatial_frequency(f, nd)
    if "AG" in names:
        out["AG"] = average_gradient(f, nd)
    if "MI" in names:
        out["MI"] = _joint_mi(a, f, log) + _joint_mi(b, f, log)
    if SSIM_SUM in names:
        sa, sb = _ssim_maps([a, b], f, nd)
        out[SSIM_SUM] = sa + sb
    if "QABF" in names:
        out["QABF"] = qabf(a, b, f, nd)
    if "VIF" in names:
        (na, da), (nb, db) = _vif_terms([a, b], f, nd)
        out["VIF"] = _vif_ratio(na, da) + _vif_ratio(nb, db)
    return out


#: Peak working memory of the windowed metrics per voxel scored at once (float64 statistics
#: of VIF and QAB/F), and of the three 8-bit float64 copies every mode holds.
SCORE_BYTES_PER_VOXEL = 200
COPY_BYTES_PER_VOXEL = 24


def _check_memory(shape: tuple[int, ...], mode: str, device: Any, batch: int = 32) -> None:
    from medtorch.memory import check_fits

    n = int(np.prod(shape))
    at_once = n if mode != "slices" else int(np.prod(shape[1:])) * min(batch, shape[0])
    check_fits(n * COPY_BYTES_PER_VOXEL + at_once * SCORE_BYTES_PER_VOXEL, "scoring the fusion", device)


def _names(metrics: Sequence[str] | None) -> list[str]:
    if metrics is None:
        return list(METRICS)
    lookup = {metric_key(m): m for m in METRICS}
    bad = [m for m in metrics if metric_key(m) not in lookup]
    if bad:
        raise MedTorchInputError(f"unknown metric(s) {', '.join(bad)}", "use any of " + ", ".join(METRICS))
    return [lookup[metric_key(m)] for m in metrics]


def metric_key(name: str) -> str:
    """A metric name as compared when chosen: upper case, without '/' and '_'; plain SSIM is the
    summed SSIM (:data:`SSIM_SUM`), the only SSIM the fusion metrics have."""
    key = str(name).strip().upper().replace("/", "").replace("_", "")
    return "SSIMSUM" if key == "SSIM" else key


def fusion_metrics(
    a: np.ndarray | torch.Tensor,
    b: np.ndarray | torch.Tensor,
    f: np.ndarray | torch.Tensor,
    mode: MetricMode = "auto",
    data_range: Sequence[float] = (0.0, 1.0),
    mi_unit: str = "bits",
    quantize: bool = True,
    metrics: Sequence[str] | None = None,
    device: torch.device | str | None = None,
    metric_set: str = "medtorch",
) -> dict[str, float]:
    """Every metric of fused ``f`` against sources ``a`` and ``b`` (see the module docstring).

    Args:
        a, b, f: images ``[y, x]`` or volumes ``[z, y, x]`` of one shape, in ``data_range``.
            A one-slice volume ``[1, y, x]`` (a 2D image as MedTorch stores it) is scored
            as the image ``[y, x]``, whatever ``mode`` says.
        mode: ``'2d'`` for images, ``'3d'`` for volumes, ``'slices'`` for the mean of the 2D
            metrics over the axial slices of a volume that hold a non-zero source voxel;
            ``'auto'`` picks 2d or 3d from the number of axes.
        mi_unit: ``'bits'`` or ``'nats'`` for MI (MedTorch's set; the cddfuse set is in nats).
        metrics: a subset of the set's names (default all).
        metric_set: ``'medtorch'`` (:data:`METRICS`, this module's definitions) or
            ``'cddfuse'`` (:data:`medtorch.fusion.evaluator.EVALUATOR_METRICS`: EN, SD, SF,
            MI, SCD, VIF, Qabf, SSIM exactly as the CDDFuse/VIFB evaluator computes them, on
            the 8-bit values; 2D images, or volumes with ``mode='slices'``).

    Returns:
        ``{name: value}``; in ``'slices'`` mode also ``'slices_scored'`` (how many).

    Raises:
        MedTorchInputError: shapes that differ, images that are not 2D/3D, NaN values,
            windows larger than the image.
    """
    squeezed = [_squeeze_single_slice(x) for x in (a, b, f)]
    if any(x is not y for x, y in zip(squeezed, (a, b, f))):
        mode = "2d"  # one-slice volumes are 2D images: '3d' and 'slices' both mean the image itself
    a, b, f = squeezed
    if str(metric_set).strip().lower() not in ("medtorch", "cddfuse"):
        raise MedTorchInputError(f"unknown metric set {metric_set!r}", "use 'medtorch' or 'cddfuse'")
    if str(metric_set).strip().lower() == "cddfuse":
        return _evaluator_set(a, b, f, mode, data_range, quantize, metrics, device)
    shape, ndim = _check_inputs(a, b, f)
    names = _names(metrics)
    log = _log_base(mi_unit)
    if mode == "auto":
        mode = "2d" if ndim == 2 else "3d"
    _check_memory(shape, mode, device)
    if mode not in ("2d", "3d", "slices"):
        raise MedTorchInputError(f"unknown metric mode {mode!r}", "use 'auto', '2d', '3d' or 'slices'")
    if mode == "3d" and ndim != 3:
        raise MedTorchInputError("3D metrics need a volume [z, y, x]", "use mode '2d' for images")
    if mode == "2d" and ndim != 2:
        raise MedTorchInputError("2D metrics need an image [y, x]", "use mode '3d' or 'slices' for volumes")
    if mode == "slices":
        per = slice_metrics(a, b, f, data_range=data_range, mi_unit=mi_unit, quantize=quantize, metrics=names,
                            device=device)
        keep = per.pop("informative")
        result = {k: float(np.nanmean(v[keep])) if keep.any() else float("nan") for k, v in per.items()}
        result["slices_scored"] = int(keep.sum())
        return result
    nd = 2 if mode == "2d" else 3
    ta, tb, tf = (to_8bit(x, data_range, quantize, device).unsqueeze(0) for x in (a, b, f))
    vals = _all_metrics(ta, tb, tf, nd, log, names)
    return {k: float(v[0]) for k, v in vals.items()}


def _evaluator_set(a: Any, b: Any, f: Any, mode: str, data_range: Sequence[float], quantize: bool,
                   metrics: Sequence[str] | None, device: Any) -> dict[str, float]:
    """The cddfuse metric set (:mod:`medtorch.fusion.evaluator`) on 8-bit-scaled images."""
    from medtorch.fusion.evaluator import EVALUATOR_METRICS, evaluator_metrics

    shape, ndim = _check_inputs(a, b, f)
    names = list(EVALUATOR_METRICS) if metrics is None else [str(m).strip() for m in metrics]
    lookup = {metric_key(m): m for m in EVALUATOR_METRICS}
    bad = [m for m in names if metric_key(m) not in lookup]
    if bad:
        raise MedTorchInputError(f"unknown metric(s) {', '.join(bad)} of the cddfuse set",
                                 "use any of " + ", ".join(EVALUATOR_METRICS))
    names = [lookup[metric_key(m)] for m in names]
    ta, tb, tf = (to_8bit(x, data_range, quantize, device) for x in (a, b, f))
    if ndim == 2 and mode in ("auto", "2d"):
        return evaluator_metrics(ta, tb, tf, names)
    if ndim == 3 and mode == "slices":
        keep = [z for z in range(shape[0]) if bool((ta[z] > 0).any() or (tb[z] > 0).any())]
        per = [evaluator_metrics(ta[z], tb[z], tf[z], names) for z in keep]
        out = {k: float(np.mean([p[k] for p in per])) if per else float("nan") for k in names}
        out["slices_scored"] = len(keep)
        return out
    raise MedTorchInputError(f"the cddfuse metric set is defined on 2D images (got {ndim}D, mode {mode!r})",
                             "score 2D images, or volumes slice by slice (mode 'slices')")


def slice_metrics(
    a: np.ndarray | torch.Tensor,
    b: np.ndarray | torch.Tensor,
    f: np.ndarray | torch.Tensor,
    data_range: Sequence[float] = (0.0, 1.0),
    mi_unit: str = "bits",
    quantize: bool = True,
    metrics: Sequence[str] | None = None,
    device: torch.device | str | None = None,
    batch: int = 32,
) -> dict[str, np.ndarray]:
    """The 2D metrics of every axial slice ``[z]`` of three volumes: ``{name: array[z]}``.

    Also ``'informative'``: a boolean array, True for slices where either source has a
    non-zero voxel (the ones :func:`fusion_metrics` averages in ``'slices'`` mode).
    Slices are scored ``batch`` at a time.
    """
    shape, ndim = _check_inputs(a, b, f)
    if ndim != 3:
        raise MedTorchInputError("per-slice metrics need volumes [z, y, x]", "use fusion_metrics for 2D images")
    names = _names(metrics)
    log = _log_base(mi_unit)
    ta, tb, tf = (to_8bit(x, data_range, quantize, device) for x in (a, b, f))
    out: dict[str, list[np.ndarray]] = {k: [] for k in names}
    for z0 in range(0, shape[0], batch):
        sl = slice(z0, min(z0 + batch, shape[0]))
        vals = _all_metrics(ta[sl], tb[sl], tf[sl], 2, log, names)
        for k, v in vals.items():
            out[k].append(v.cpu().numpy())
    result = {k: np.concatenate(v) for k, v in out.items()}
    informative = ((ta > 0) | (tb > 0)).reshape(shape[0], -1).any(dim=1).cpu().numpy()
    result["informative"] = informative
    return result
