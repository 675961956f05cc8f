"""Separable n-D discrete wavelet transform in torch, and DWT fusion (mean approximation, max-abs details).

The transform follows PyWavelets exactly (``pywt.dwt``/``idwt``, ``dwtn``/``idwtn``,
``wavedecn``/``waverecn`` with the boundary modes ``symmetric`` -- PyWavelets' default --,
``reflect``, ``periodic`` and ``zero``), so coefficients agree with PyWavelets to
floating-point rounding (``Testing/test_fusion_methods.py`` checks it on small volumes):

* analysis along one axis: the signal is extended by ``L - 1`` samples on each side,
  convolved with the decomposition filter and every second sample is kept from index 1,
  giving ``floor((N + L - 1) / 2)`` coefficients;
* synthesis: the coefficients are upsampled by two, convolved with the reconstruction
  filters and ``2 n - L + 2`` samples are kept from index ``L - 2``;
* the n-D transform applies the 1D one along each axis in turn; subband keys are
  PyWavelets' (``'aad'``: approximation along axes 0 and 1, detail along axis 2);
  multi-level reconstruction crops an approximation that is one sample longer than the
  details of the next level, as ``waverecn`` does.

Filter banks come from PyWavelets when it is installed (any of its discrete wavelets);
without it, the built-in table :data:`BUILTIN_WAVELETS` (Haar, Daubechies 2-5, Symlets
4-5, Coiflets 1-2; orthogonal, so the other three filters follow from the decomposition
low-pass) is used.

Fusion rule (:func:`fuse_dwt`, "DWT: mean approximation, max-abs details"; Li, Manjunath
& Mitra 1995): the coarsest approximations are
averaged, and every detail coefficient is taken from the source whose coefficient has the
larger magnitude (max-abs). Axes of length 1 (a 2D image stored as one slice) are not
transformed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from medtorch.errors import MedTorchInputError
from medtorch.fusion.filters import BoundaryMode, correlate_axis, pad_axis
from medtorch.progress import CancelToken, ProgressCallback, report

__all__ = [
    "BUILTIN_WAVELETS",
    "dwt_axis",
    "dwt_max_level",
    "dwtn",
    "fuse_dwt",
    "idwt_axis",
    "idwtn",
    "wavedecn",
    "wavelet_filters",
    "waverecn",
]

WAVELET_MODES = ("symmetric", "reflect", "periodic", "zero")

#: Decomposition low-pass filters of orthogonal wavelets (the values PyWavelets uses).
BUILTIN_WAVELETS: dict[str, tuple[float, ...]] = {
    "haar": (0.7071067811865476, 0.7071067811865476),
    "db1": (0.7071067811865476, 0.7071067811865476),
    "db2": (-0.12940952255126037, 0.2241438680420134, 0.8365163037378079, 0.48296291314453416),
    "db3": (0.03522629188570953, -0.08544127388202666, -0.13501102001025458, 0.45987750211849154,
            0.8068915093110925, 0.33267055295008263),
    "db4": (-0.010597401785069032, 0.0328830116668852, 0.030841381835560764, -0.18703481171909309,
            -0.027983769416859854, 0.6308807679298589, 0.7148465705529157, 0.2303778133088965),
    "db5": (0.0033357252854737712, -0.012580751999081999, -0.006241490212798274, 0.07757149384004572,
            -0.032244869584638375, -0.24229488706638203, 0.13842814590132074, 0.7243085284377729,
            0.6038292697971896, 0.16010239797419293),
    "sym2": (-0.12940952255126037, 0.2241438680420134, 0.8365163037378079, 0.48296291314453416),
    "sym3": (0.03522629188570953, -0.08544127388202666, -0.13501102001025458, 0.45987750211849154,
             0.8068915093110925, 0.33267055295008263),
    "sym4": (-0.07576571478927333, -0.02963552764599851, 0.49761866763201545, 0.8037387518059161,
             0.29785779560527736, -0.09921954357684722, -0.012603967262037833, 0.0322231006040427),
    "sym5": (0.027333068345077982, 0.029519490925774643, -0.039134249302383094, 0.1993975339773936,
             0.7234076904024206, 0.6339789634582119, 0.01660210576452232, -0.17532808990845047,
             -0.021101834024758855, 0.019538882735286728),
    "coif1": (-0.015655728135791993, -0.07273261951252645, 0.3848648468648578, 0.8525720202116004,
              0.3378976624574818, -0.07273261951252645),
    "coif2": (-0.000720549445520347, -0.0018232088709110323, 0.005611434819368834, 0.02368017194684777,
              -0.05943441864643109, -0.07648859907828076, 0.4170051844232391, 0.8127236354494135,
              0.3861100668227629, -0.0673725547237256, -0.04146493678687178, 0.01638733646320364),
}

Filters = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def wavelet_filters(name: str) -> Filters:
    """``(dec_lo, dec_hi, rec_lo, rec_hi)`` of a discrete wavelet (float64 arrays).

    Any discrete wavelet of PyWavelets when it is installed, else one of
    :data:`BUILTIN_WAVELETS`.
    """
    key = str(name).strip().lower()
    try:
        import pywt

        try:
            w = pywt.Wavelet(key)
        except ValueError:
            raise MedTorchInputError(
                f"unknown wavelet {name!r}",
                "use a discrete wavelet: haar, db1-db38, sym2-sym20, coif1-coif17, bior/rbio (e.g. bior2.2), dmey",
            ) from None
        return tuple(np.asarray(f, dtype=np.float64) for f in w.filter_bank)  # type: ignore[return-value]
    except ImportError:
        pass
    if key not in BUILTIN_WAVELETS:
        raise MedTorchInputError(
            f"the wavelet {name!r} needs PyWavelets, which is not installed",
            "use one of " + ", ".join(BUILTIN_WAVELETS) + ", or install PyWavelets (pip install PyWavelets)",
        )
    dec_lo = np.asarray(BUILTIN_WAVELETS[key], dtype=np.float64)
    k = np.arange(dec_lo.size)
    rec_lo = dec_lo[::-1].copy()
    rec_hi = ((-1.0) ** k) * dec_lo
    dec_hi = rec_hi[::-1].copy()
    return dec_lo, dec_hi, rec_lo, rec_hi


def _check_mode(mode: str) -> BoundaryMode:
    if mode not in WAVELET_MODES:
        raise MedTorchInputError(f"unknown wavelet boundary mode {mode!r}", "use one of " + ", ".join(WAVELET_MODES))
    return mode  # type: ignore[return-value]


def dwt_max_level(n: int, filter_length: int) -> int:
    """Deepest useful level for ``n`` samples (PyWavelets' ``dwt_max_level``)."""
    if filter_length < 2 or n < filter_length - 1 or n < 1:
        return 0
    return int(math.floor(math.log2(n / (filter_length - 1))))


def dwt_axis(x: torch.Tensor, dec_lo: np.ndarray, dec_hi: np.ndarray, axis: int,
             mode: str = "symmetric") -> tuple[torch.Tensor, torch.Tensor]:
    """One-level DWT along ``axis``: ``(approximation, detail)`` as ``pywt.dwt`` gives them."""
    length = len(dec_lo)
    ext = pad_axis(x, axis, length - 1, length - 1, _check_mode(mode))
    # convolution with h == correlation with h reversed; keep odd samples.
    lo = correlate_axis(ext, dec_lo[::-1], axis, "valid", step=2, start=1)
    hi = correlate_axis(ext, dec_hi[::-1], axis, "valid", step=2, start=1)
    return lo, hi


def idwt_axis(lo: torch.Tensor | None, hi: torch.Tensor | None, rec_lo: np.ndarray, rec_hi: np.ndarray,
              axis: int) -> torch.Tensor:
    """Inverse of :func:`dwt_axis` (``pywt.idwt`` for the non-periodization modes).

    Either input may be None (treated as zeros). Output length ``2 n - L + 2``.
    """
    ref = lo if lo is not None else hi
    if ref is None:
        raise MedTorchInputError("both wavelet coefficient arrays are missing", "give at least one of them")
    if lo is not None and hi is not None and lo.shape != hi.shape:
        raise MedTorchInputError(
            f"approximation and detail coefficients differ in shape ({tuple(lo.shape)} vs {tuple(hi.shape)})",
            "pass coefficients from one decomposition",
        )
    d = axis if axis >= 0 else ref.ndim + axis
    n = ref.shape[d]
    length = len(rec_lo)
    n_full = 2 * n + length - 1
    shape = list(ref.shape)
    shape[d] = n_full
    full = ref.new_zeros(shape)
    sl = [slice(None)] * ref.ndim
    for coeff, taps in ((lo, rec_lo), (hi, rec_hi)):
        if coeff is None:
            continue
        for j in range(length):
            w = float(taps[j])
            if w == 0.0:
                continue
            sl[d] = slice(j, j + 2 * n, 2)
            full[tuple(sl)].add_(coeff, alpha=w)
    n_out = 2 * n - length + 2
    if n_out < 1:
        raise MedTorchInputError(
            f"{n} coefficients are too few for a {length}-tap wavelet", "use fewer levels or a shorter wavelet"
        )
    return full.narrow(d, length - 2, n_out)


def dwtn(x: torch.Tensor, wavelet: str | Filters, axes: Sequence[int], mode: str = "symmetric") -> dict[str, torch.Tensor]:
    """Single-level n-D DWT over ``axes`` (``pywt.dwtn``): a dict ``{'aa..': ..., 'ad..': ...}``."""
    dec_lo, dec_hi, _, _ = wavelet_filters(wavelet) if isinstance(wavelet, str) else wavelet
    coeffs: list[tuple[str, torch.Tensor]] = [("", x)]
    for ax in axes:
        nxt = []
        for key, c in coeffs:
            lo, hi = dwt_axis(c, dec_lo, dec_hi, ax, mode)
            nxt += [(key + "a", lo), (key + "d", hi)]
        coeffs = nxt
    return dict(coeffs)


def idwtn(coeffs: dict[str, torch.Tensor | None], wavelet: str | Filters, axes: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`dwtn` (``pywt.idwtn``); missing or None subbands count as zeros."""
    _, _, rec_lo, rec_hi = wavelet_filters(wavelet) if isinstance(wavelet, str) else wavelet
    nd = len(axes)
    current: dict[str, torch.Tensor | None] = {k: v for k, v in coeffs.items()}
    for level, ax in enumerate(reversed(list(axes))):
        keys = {k[:-1] for k in current}
        merged: dict[str, torch.Tensor | None] = {}
        for key in keys:
            merged[key] = idwt_axis(current.get(key + "a"), current.get(key + "d"), rec_lo, rec_hi, ax)
        current = merged
        assert all(len(k) == nd - level - 1 for k in current)
    out = current[""]
    assert out is not None
    return out


def wavedecn(x: torch.Tensor, wavelet: str, level: int | None = None, mode: str = "symmetric",
             axes: Sequence[int] | None = None) -> list:
    """Multi-level n-D decomposition (``pywt.wavedecn``): ``[cA_n, {details n}, ..., {details 1}]``."""
    filt = wavelet_filters(wavelet)
    axes = list(range(x.ndim)) if axes is None else list(axes)
    if level is None:
        level = min(dwt_max_level(x.shape[a], len(filt[0])) for a in axes)
    if level < 0:
        raise MedTorchInputError(f"the wavelet level must be >= 0, got {level}", "give a level of 1 or more")
    details = []
    a = x
    for _ in range(level):
        c = dwtn(a, filt, axes, mode)
        a = c.pop("a" * len(axes))
        details.append(c)
    return [a] + details[::-1]


def _crop_to(a: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    return a[tuple(slice(0, s) for s in shape)]


def waverecn(coeffs: list, wavelet: str, mode: str = "symmetric", axes: Sequence[int] | None = None) -> torch.Tensor:
    """Inverse of :func:`wavedecn` (``pywt.waverecn``)."""
    _check_mode(mode)
    filt = wavelet_filters(wavelet)
    a, details = coeffs[0], coeffs[1:]
    axes = list(range(a.ndim)) if axes is None else list(axes)
    for idx, d in enumerate(details):
        any_d = next(iter(d.values()))
        if idx > 0:
            a = _crop_to(a, any_d.shape)
        full = dict(d)
        full["a" * len(axes)] = a
        a = idwtn(full, filt, axes)
    return a


def fuse_dwt(
    a: torch.Tensor,
    b: torch.Tensor,
    wavelet: str = "haar",
    levels: int = 3,
    mode: str = "symmetric",
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> tuple[torch.Tensor, dict[str, object]]:
    """DWT fusion: mean of the approximations, max-abs of every detail.

    ``a`` and ``b`` are images or volumes of one shape (axes of length 1 are not
    transformed). ``levels`` is capped at the deepest level the size and wavelet allow
    (PyWavelets' ``dwt_max_level``); the level used is returned in the info dict.
    """
    if a.shape != b.shape:
        raise MedTorchInputError(f"the images differ in shape ({tuple(a.shape)} vs {tuple(b.shape)})",
                                 "resample one onto the other's grid first")
    if int(levels) < 1:
        raise MedTorchInputError(f"the wavelet level must be at least 1, got {levels}", "give levels >= 1")
    mode = _check_mode(mode)
    filt = wavelet_filters(wavelet)
    axes = [d for d in range(a.ndim) if a.shape[d] > 1]
    if not axes:
        raise MedTorchInputError("the images have a single voxel", "give real images")
    max_level = min(dwt_max_level(a.shape[d], len(filt[0])) for d in axes)
    used = max(1, min(int(levels), max_level)) if max_level >= 1 else 1
    report(progress, cancel, 0.05, f"wavelet decomposition ({wavelet}, {used} levels)")
    # Both images in one tensor [2, ...]: half the number of (parallel) operations.
    both = torch.stack([a, b])
    coeffs = wavedecn(both, wavelet, used, mode, [d + 1 for d in axes])
    del both
    report(progress, cancel, 0.65, "fusing coefficients (mean approximation, max-abs details)")
    fused: list = [coeffs[0].mean(dim=0)]
    for level in coeffs[1:]:
        fused.append({k: torch.where(c[0].abs() >= c[1].abs(), c[0], c[1]) for k, c in level.items()})
    del coeffs
    report(progress, cancel, 0.8, "wavelet reconstruction")
    out = waverecn(fused, wavelet, mode, axes)
    out = _crop_to(out, a.shape)
    report(progress, cancel, 1.0, "wavelet fusion done")
    return out.contiguous(), {"wavelet": wavelet, "levels_used": used, "mode": mode}
