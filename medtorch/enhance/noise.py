"""Noise models and noise-level estimates for denoising.

* :func:`estimate_noise` estimates the standard deviation ``sigma`` of the noise of a
  volume, and which model fits it (:data:`NOISE_MODELS`):

  - ``"rician"``: MRI magnitude images. A magnitude voxel is ``M = |A + n1 + i n2|`` with
    ``n1, n2 ~ N(0, sigma^2)``; where there is no signal (the air around the head) ``M`` is
    Rayleigh distributed and ``E[M^2] = 2 sigma^2``, which gives ``sigma`` directly
    (:func:`rayleigh_background_sigma`). In tissue, ``E[M^2] = A^2 + 2 sigma^2``: a
    denoiser that averages ``M`` is biased upwards in dark tissue; :func:`rician_unbias_mean`
    and :func:`rician_unbias_second_moment` correct it.
  - ``"gaussian"``: additive white Gaussian noise (reconstructed CT, scaled MRI without
    background). ``sigma`` from the median absolute deviation of the finest 3D Haar
    wavelet detail (``HHH``) over the object (Donoho's estimator; :func:`wavelet_mad_sigma`).
  - ``"poisson"``: photon-counting noise plus Gaussian read-out noise (low-dose CT
    projections, PET, microscopy): the variance grows linearly with the signal,
    ``var = gain * (x - offset) + sigma^2``; :func:`estimate_poisson_gaussian` fits it from
    local means and variances, and :func:`anscombe_forward` / :func:`anscombe_inverse`
    (the generalised Anscombe transform with its closed-form unbiased inverse, Makitalo
    and Foi 2013) make it Gaussian with unit variance for the denoisers.

Everything here works on numpy arrays ``[z, y, x]``, never modifies its input, and is
deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, get_args

import numpy as np

from medtorch.errors import MedTorchInputError
from medtorch.ops.enhance import NoiseModel

__all__ = [
    "NOISE_MODELS",
    "NoiseEstimate",
    "anscombe_forward",
    "anscombe_inverse",
    "estimate_noise",
    "estimate_poisson_gaussian",
    "haar_detail",
    "rayleigh_background_sigma",
    "rician_mean",
    "rician_unbias_mean",
    "rician_unbias_second_moment",
    "wavelet_mad_sigma",
]

#: Noise models the denoisers know (:data:`medtorch.ops.enhance.NoiseModel` defines them);
#: ``"auto"`` picks one with :func:`estimate_noise`.
NOISE_MODELS: tuple[str, ...] = get_args(NoiseModel)

#: Median of |N(0, 1)|: MAD / 0.6745 estimates a Gaussian's standard deviation.
_MAD_TO_SIGMA = 1.0 / 0.6744897501960817
#: Below this fraction of background voxels the Rayleigh estimate is not used.
_MIN_BACKGROUND_FRACTION = 0.02


@dataclass(frozen=True)
class NoiseEstimate:
    """A noise level and the model it belongs to.

    ``sigma`` is in the volume's intensity units (for ``"poisson"``: the Gaussian part);
    ``gain`` and ``offset`` describe the Poisson part (``var = gain * (x - offset) + sigma^2``).
    ``method`` says how ``sigma`` was obtained (for the record kept with results).
    """

    model: NoiseModel
    sigma: float
    method: str
    gain: float = 0.0
    offset: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    def as_metadata(self) -> dict[str, Any]:
        out: dict[str, Any] = {"noise_model": self.model, "noise_sigma": float(self.sigma),
                               "noise_estimator": self.method}
        if self.model == "poisson":
            out.update(noise_gain=float(self.gain), noise_offset=float(self.offset))
        return out


# -- wavelet (Donoho) ------------------------------------------------------------------------


def haar_detail(array: np.ndarray) -> np.ndarray:
    """The finest 3D Haar ``HHH`` detail coefficients (orthonormal), one per 2x2x2 block.

    For white noise of standard deviation ``sigma`` they are N(0, sigma^2); smooth
    anatomy contributes little to them.
    """
    a = np.asarray(array, dtype=np.float64)
    z, y, x = (s - s % 2 for s in a.shape)
    if min(z, y, x) < 2:
        raise MedTorchInputError(
            f"the volume of shape {a.shape} is too small to estimate its noise",
            "use a volume with at least 2 voxels along every axis",
        )
    b = a[:z, :y, :x]
    d = np.zeros((z // 2, y // 2, x // 2))
    for i in (0, 1):
        for j in (0, 1):
            for k in (0, 1):
                d += (-1) ** (i + j + k) * b[i::2, j::2, k::2]
    return d / np.sqrt(8.0)


def _block_mask(mask: np.ndarray) -> np.ndarray:
    """True for the 2x2x2 blocks that lie wholly inside ``mask``."""
    z, y, x = (s - s % 2 for s in mask.shape)
    m = mask[:z, :y, :x]
    out = np.ones((z // 2, y // 2, x // 2), dtype=bool)
    for i in (0, 1):
        for j in (0, 1):
            for k in (0, 1):
                out &= m[i::2, j::2, k::2]
    return out


def wavelet_mad_sigma(array: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Donoho's estimate of white Gaussian noise: ``median(|HHH|) / 0.6745``.

    Args:
        array: voxels ``[z, y, x]``.
        mask: where to measure (blocks wholly inside it); all voxels when ``None``.
            Blocks of exactly constant voxels (padding, a zeroed background) are skipped:
            they hold no noise.
    """
    d = haar_detail(array)
    a = np.asarray(array)
    z, y, x = (s - s % 2 for s in a.shape)
    b = a[:z, :y, :x]
    constant = (b[0::2, 0::2, 0::2] == b[1::2, 1::2, 1::2]) & (b[0::2, 0::2, 0::2] == b[1::2, 0::2, 1::2]) & (
        b[0::2, 1::2, 0::2] == b[1::2, 0::2, 0::2])
    keep = ~constant
    if mask is not None:
        keep &= _block_mask(np.asarray(mask, dtype=bool))
    values = np.abs(d[keep])
    if values.size < 64:
        values = np.abs(d.reshape(-1))
    return float(np.median(values) * _MAD_TO_SIGMA)


# -- Rician ----------------------------------------------------------------------------------


def _local_mean(array: np.ndarray, radius: int = 1) -> np.ndarray:
    from scipy import ndimage

    return ndimage.uniform_filter(np.asarray(array, dtype=np.float64), size=2 * radius + 1, mode="nearest")


def rayleigh_background_sigma(array: np.ndarray, rough_sigma: float) -> tuple[float, np.ndarray]:
    """``sigma`` from the signal-free background of a magnitude image, and that background.

    Background voxels are those whose 3x3x3 local mean is below ``2.2 * rough_sigma``
    (a Rayleigh variable has mean ``1.2533 sigma``; tissue is far brighter), and whose
    local mean is not exactly zero (a zero-filled background holds no noise). There
    ``E[M^2] = 2 sigma^2``. Two refinements of the threshold with the new ``sigma``.
    """
    a = np.asarray(array, dtype=np.float64)
    local = _local_mean(a)
    sigma = float(rough_sigma)
    bg = np.zeros(a.shape, dtype=bool)
    for _ in range(3):
        if not sigma > 0:
            break
        bg = (local < 2.2 * sigma) & (local > 0)
        if bg.sum() < 64:
            break
        sigma = float(np.sqrt(np.mean(a[bg] ** 2) / 2.0))
    return sigma, bg


def rician_mean(amplitude: np.ndarray | float, sigma: float) -> np.ndarray:
    """``E[M]`` of a Rician magnitude with true amplitude ``A`` and noise ``sigma``:
    ``sigma sqrt(pi/2) L_1/2(-A^2 / 2 sigma^2)`` (written with scaled Bessel functions)."""
    from scipy.special import i0e, i1e

    t = np.asarray(amplitude, dtype=np.float64) ** 2 / (4.0 * float(sigma) ** 2)
    return float(sigma) * np.sqrt(np.pi / 2.0) * ((1.0 + 2.0 * t) * i0e(t) + 2.0 * t * i1e(t))


_RICIAN_TABLE: tuple[np.ndarray, np.ndarray] | None = None


def _rician_table() -> tuple[np.ndarray, np.ndarray]:
    global _RICIAN_TABLE
    if _RICIAN_TABLE is None:
        snr = np.concatenate([np.linspace(0.0, 8.0, 4001), np.linspace(8.0, 60.0, 2001)[1:]])
        _RICIAN_TABLE = (rician_mean(snr, 1.0), snr)
    return _RICIAN_TABLE


def rician_unbias_mean(mean_magnitude: np.ndarray, sigma: float) -> np.ndarray:
    """The amplitude ``A`` whose Rician mean is ``mean_magnitude`` (``E[M] -> A``), float32.

    Inverts :func:`rician_mean` by table: values below the noise floor
    ``sigma sqrt(pi/2)`` map to 0; very bright values use ``sqrt(E[M]^2 - sigma^2)``.
    """
    m = np.asarray(mean_magnitude, dtype=np.float64)
    if not sigma > 0:
        return m.astype(np.float32)
    means, snr = _rician_table()
    r = m / float(sigma)
    out = np.interp(r, means, snr, left=0.0)
    bright = r > means[-1]
    out[bright] = np.sqrt(r[bright] ** 2 - 1.0)
    return (out * float(sigma)).astype(np.float32)


def rician_unbias_second_moment(mean_square: Any, sigma: float) -> Any:
    """``A = sqrt(max(E[M^2] - 2 sigma^2, 0))``: exact for averages of squared magnitudes.

    Works on numpy arrays and torch tensors alike.
    """
    shifted = mean_square - 2.0 * float(sigma) ** 2
    if hasattr(shifted, "clamp_min"):
        return shifted.clamp_min(0.0).sqrt()
    return np.sqrt(np.maximum(shifted, 0.0))


# -- Poisson-Gaussian --------------------------------------------------------------------------


def estimate_poisson_gaussian(array: np.ndarray, mask: np.ndarray | None = None, bins: int = 32) -> tuple[float, float, float]:
    """Fit ``var = gain * (x - offset) + sigma^2`` from local means and variances.

    The variance of each 2x2x2 block is measured by its Haar ``HHH`` coefficient (noise
    only, for smooth anatomy), its level by the block mean; a robust line through the
    per-bin median of squared coefficients against the bin's mean level gives ``gain``
    and the intercept. ``offset`` is the lowest level (the signal where counts are zero,
    e.g. -1000 HU for air in CT). Returns ``(gain, sigma, offset)``; ``gain`` >= 0.
    """
    a = np.asarray(array, dtype=np.float64)
    d = haar_detail(a) ** 2
    z, y, x = (s - s % 2 for s in a.shape)
    b = a[:z, :y, :x]
    level = np.asarray(sum(b[i::2, j::2, k::2] for i in (0, 1) for j in (0, 1) for k in (0, 1)) / 8.0)
    keep = np.ones(level.shape, dtype=bool) if mask is None else _block_mask(np.asarray(mask, dtype=bool))
    lv, dv = level[keep].ravel(), d[keep].ravel()
    offset = float(np.percentile(lv, 0.5))
    edges = np.unique(np.percentile(lv, np.linspace(0, 100, bins + 1)))
    xs, ys = [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (lv >= lo) & (lv < hi)
        if sel.sum() >= 50:
            xs.append(float(np.median(lv[sel])) - offset)
            # median of a chi-square(1) sample is 0.4549 of its mean
            ys.append(float(np.median(dv[sel])) / 0.454936)
    if len(xs) < 2:
        var = float(np.median(dv) / 0.454936)
        return 0.0, float(np.sqrt(var)), offset
    gain, intercept = np.polyfit(np.asarray(xs), np.asarray(ys), 1)
    gain = max(float(gain), 0.0)
    sigma2 = max(float(intercept), 1e-12 * max(ys))
    return gain, float(np.sqrt(sigma2)), offset


def anscombe_forward(array: Any, gain: float, sigma: float, offset: float = 0.0) -> Any:
    """Generalised Anscombe transform: Poisson-Gaussian -> unit-variance Gaussian.

    ``f(x) = 2/gain * sqrt(max(gain*(x-offset) + 3/8 gain^2 + sigma^2, 0))``. With
    ``gain == 0`` it reduces to ``(x - offset) / sigma``.
    """
    if gain <= 0:
        return (array - offset) / sigma
    inner = gain * (array - offset) + 0.375 * gain**2 + sigma**2
    if hasattr(inner, "clamp_min"):
        return 2.0 / gain * inner.clamp_min(0.0).sqrt()
    return 2.0 / gain * np.sqrt(np.maximum(inner, 0.0))


def anscombe_inverse(values: Any, gain: float, sigma: float, offset: float = 0.0) -> Any:
    """Closed-form approximation of the exact unbiased inverse of :func:`anscombe_forward`
    (Makitalo and Foi, IEEE TIP 2013, eq. 13 rescaled for gain and offset)."""
    if gain <= 0:
        return values * sigma + offset
    lib = values if hasattr(values, "clamp_min") else None
    d = values.clamp_min(1e-6) if lib is not None else np.maximum(values, 1e-6)
    s = sigma / gain
    y = 0.25 * d**2 + 0.25 * np.sqrt(1.5) / d - 1.375 / d**2 + 0.625 * np.sqrt(1.5) / d**3 - 0.125 - s**2
    y = y.clamp_min(0.0) if lib is not None else np.maximum(y, 0.0)
    return y * gain + offset


# -- the estimate ---------------------------------------------------------------------------------


def _foreground(array: np.ndarray, sigma: float) -> np.ndarray:
    """Voxels well above the noise floor (their local mean exceeds 3 sigma)."""
    local = _local_mean(array)
    fg = local > 3.0 * sigma
    return fg if fg.sum() >= 512 else np.ones(array.shape, dtype=bool)


def estimate_noise(array: np.ndarray, model: str = "auto", mask: np.ndarray | None = None) -> NoiseEstimate:
    """Estimate the noise level and, with ``model="auto"``, the noise model.

    ``auto``: values below -100 suggest CT in HU (``"gaussian"``); a non-negative image
    is a magnitude image (``"rician"``: Gaussian noise on a signal-free background would
    have made negative values), whether or not it has 2 % signal-free background (Rayleigh
    statistics); anything else (negative values) is treated as ``"gaussian"``. ``"poisson"``
    is used only when asked for.

    Rician: ``sigma`` from the background (:func:`rayleigh_background_sigma`) when there
    is enough of it, else from the wavelet MAD over the tissue (also when the background is
    zero-filled, as in a masked image: it holds no noise to measure). Gaussian: wavelet MAD over
    ``mask`` (or the whole volume).
    """
    a = np.asarray(array)
    if not np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_:
        raise MedTorchInputError(f"voxels of type {a.dtype} have no noise level", "give a numeric volume")
    model = str(model).lower()
    if model not in ("auto",) + NOISE_MODELS:
        raise MedTorchInputError(f"unknown noise model {model!r}", "use auto, " + ", ".join(NOISE_MODELS))
    af = a.astype(np.float64, copy=False)
    rough = wavelet_mad_sigma(af, mask)
    if model == "poisson":
        gain, sigma, offset = estimate_poisson_gaussian(af, mask)
        return NoiseEstimate("poisson", sigma, "local mean-variance fit of Haar HHH", gain, offset)
    if model == "gaussian" or (model == "auto" and float(af.min()) < -100.0):
        return NoiseEstimate("gaussian", rough, "wavelet MAD (Haar HHH)")
    if rough <= 0:
        return NoiseEstimate("gaussian" if model == "auto" else "rician", 0.0, "wavelet MAD (Haar HHH)")
    sigma_bg, bg = rayleigh_background_sigma(af, rough)
    enough_bg = bg.mean() >= _MIN_BACKGROUND_FRACTION and bg.sum() >= 500 and float(af.min()) >= 0.0
    if model == "auto" and not enough_bg and float(af.min()) < 0.0:
        return NoiseEstimate("gaussian", rough, "wavelet MAD (Haar HHH)")
    zero_filled = bool(bg.any()) and float(np.mean(af[bg] == 0.0)) > 0.5
    if enough_bg and sigma_bg > 0 and not zero_filled:
        return NoiseEstimate("rician", sigma_bg, "Rayleigh background statistics",
                             details={"background_fraction": float(bg.mean())})
    if zero_filled:
        # a masked (zero-filled) background holds no noise: the level comes from the tissue
        fg_sigma = wavelet_mad_sigma(af, (af > 0) if mask is None else mask)
        return NoiseEstimate("rician", fg_sigma, "wavelet MAD (Haar HHH) in tissue: the background is zero-filled",
                             details={"background_fraction": float(bg.mean())})
    # a non-negative image without background (e.g. a crop inside the head): a magnitude
    # image, Rician; where the signal is well above the noise this is the same as Gaussian
    fg_sigma = wavelet_mad_sigma(af, _foreground(af, rough) if mask is None else mask)
    return NoiseEstimate("rician", fg_sigma, "wavelet MAD (Haar HHH) in tissue")
