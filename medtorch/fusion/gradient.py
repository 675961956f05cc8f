"""Gradient-domain fusion: max-magnitude Sobel gradients, screened Poisson reconstruction.

The fused image is the one whose (Sobel) gradient field is closest to a target field taken,
voxel by voxel, from the source with the stronger gradient, while staying close to a base
image -- the gradient-domain fusion of the literature (e.g. Paul, Sevcenco & Agathoklis 2016;
the screened Poisson equation of Bhat et al. 2008), with the gradient operator of the
edge-transfer metric Q^{AB/F} (Xydeas & Petrovic 2000), which it therefore favours::

    F = argmin_F  sum_k || S_k F - T_k ||^2 + lam || F - F_0 ||^2,

* ``S_k``: the normalised 3-tap Sobel derivative along axis ``k`` (``[-1, 0, 1] / 2`` along
  ``k``, ``[1, 2, 1] / 4`` along every other axis): the 3x3 Sobel of 2D images, 3x3x3 in 3D;
* ``T_k = S_k A`` where ``sum_k (S_k A)^2 >= sum_k (S_k B)^2`` summed over a ``(2 r + 1)``
  window (``window`` r: neighbours choose together, edges stay whole), else ``S_k B``;
* ``F_0 = max(A, B)``, the pixel maximum (for PET/SPECT and CT-MRI pairs, whose bright
  structures do not overlap, it keeps each source's bright structures at full intensity);
* ``lam`` weighs the base against the gradients: it sets the length over which the
  reconstruction may drift from ``F_0`` (``~ 1 / sqrt(lam)`` samples).

The normal equations ``(sum_k S_k^T S_k + lam) F = sum_k S_k^T T_k + lam F_0`` are diagonal
in the Fourier domain: one FFT solve, on the volume extended by mirroring (``pad`` samples per
side; the screened Poisson kernel decays within a few ``1 / sqrt(lam)``, so the mirror
extension gives the reflecting boundary of the unpadded problem). Axes of length 1 (a 2D
image stored as one slice) are left alone. The result is clipped to [0, 1] by the caller.

Parameters (chosen on the Harvard training pairs, see ``docs/benchmarks/fusion.md``):
``lam = 1/32`` (with the unnormalised 3x3 Sobel of the metric this is ``lam = 2``),
``window = 2``.
"""

from __future__ import annotations

import math

import torch

from medtorch.errors import MedTorchInputError
from medtorch.fusion.filters import pad_axis, window_sum
from medtorch.progress import CancelToken, ProgressCallback, report

__all__ = ["fuse_gradient"]


def _transfer(sizes: list[int], axes: list[int], ndim: int, dtype: torch.dtype,
              device: torch.device) -> list[torch.Tensor]:
    """Fourier transfer functions of the normalised Sobel derivatives along ``axes`` (rfftn layout)."""
    freqs = []
    for j, d in enumerate(axes):
        n = sizes[d]
        f = (torch.fft.rfftfreq(n, dtype=dtype, device=device) if j == len(axes) - 1
             else torch.fft.fftfreq(n, dtype=dtype, device=device)) * (2 * math.pi)
        shape = [1] * ndim
        shape[d] = f.numel()
        freqs.append(f.reshape(shape))
    out = []
    for k in range(len(axes)):
        # correlation with [-1, 0, 1] / 2: (e^{iw} - e^{-iw}) / 2 = i sin(w); smoothing [1, 2, 1] / 4: (1 + cos w) / 2
        t: torch.Tensor = 1j * torch.sin(freqs[k])
        for j in range(len(axes)):
            if j != k:
                t = t * (0.5 + 0.5 * torch.cos(freqs[j]))
        out.append(t)
    return out


def _fft_size(n: int) -> int:
    """The smallest 5-smooth integer (2^a 3^b 5^c) >= n: FFT lengths with large prime factors
    are several times slower (a 161-sample axis took 7 s in a 1 Mvoxel volume, 1 s padded to 162)."""
    m = n
    while True:
        k = m
        for f in (2, 3, 5):
            while k % f == 0:
                k //= f
        if k == 1:
            return m
        m += 1


def fuse_gradient(
    a: torch.Tensor,
    b: torch.Tensor,
    lam: float = 1.0 / 32.0,
    window: int = 2,
    pad: int = 32,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> tuple[torch.Tensor, dict[str, object]]:
    """Gradient-domain fusion of two images or volumes of one shape (see the module docstring)."""
    if a.shape != b.shape:
        raise MedTorchInputError(f"the images differ in shape ({tuple(a.shape)} vs {tuple(b.shape)})",
                                 "resample one onto the other's grid first")
    if not lam > 0:
        raise MedTorchInputError(f"the gradient method's lam must be > 0, got {lam}", "use e.g. 1/32")
    if int(window) < 0 or int(pad) < 0:
        raise MedTorchInputError(f"window and pad must be >= 0, got {window}, {pad}", "use window 2, pad 32")
    nd = a.ndim
    axes = [d for d in range(nd) if a.shape[d] > 1]
    if not axes:
        return torch.maximum(a, b), {"lam": float(lam), "window": int(window)}
    # float64 for images (exactness costs nothing there), float32 for large volumes
    dtype = torch.float64 if a.numel() <= (1 << 22) else torch.float32
    report(progress, cancel, 0.05, "gradient-domain fusion: mirror extension")
    x = torch.stack([a, b]).to(dtype)  # [2, ...]
    pads = {}
    for d in axes:
        n = a.shape[d]
        p = min(int(pad), n - 1)
        # mirror p samples before; after, p more plus what makes the length FFT-friendly
        after = min(_fft_size(n + 2 * p) - n - p, n)
        pads[d] = p
        x = pad_axis(x, d + 1, p, after, "symmetric")
    sizes = list(x.shape[1:])
    f_axes = [d + 1 for d in axes]
    kernels = _transfer(sizes, axes, nd, dtype, x.device)
    report(progress, cancel, 0.2, "source gradients (Sobel)")
    spec = torch.fft.rfftn(x, dim=f_axes)
    grads = [torch.fft.irfftn(spec * k, s=[sizes[d] for d in axes], dim=f_axes) for k in kernels]  # [2, ...] each
    del spec
    report(progress, cancel, 0.45, "choosing the stronger gradient")
    strength = sum(g * g for g in grads)
    diff = strength[0] - strength[1]
    del strength
    r = int(window)
    if r > 0:
        diff = window_sum(diff, [r if d in pads else 0 for d in range(nd)])
    take_a = diff >= 0
    del diff
    report(progress, cancel, 0.6, "screened Poisson solve (FFT)")
    num = torch.fft.rfftn(torch.maximum(x[0], x[1]), dim=axes) * float(lam)
    den = torch.full_like(kernels[0].real, float(lam))
    for k, g in zip(kernels, grads):
        target = torch.where(take_a, g[0], g[1])
        num += k.conj() * torch.fft.rfftn(target, dim=axes)
        den = den + (k * k.conj()).real
    del grads
    out = torch.fft.irfftn(num / den, s=[sizes[d] for d in axes], dim=axes)
    for d, p in pads.items():
        out = out.narrow(d, p, a.shape[d])
    report(progress, cancel, 1.0, "gradient-domain fusion done")
    return out.to(a.dtype).contiguous(), {"lam": float(lam), "window": r, "pad": int(pad)}
