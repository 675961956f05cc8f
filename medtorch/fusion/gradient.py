"""Gradient-domain fusion: max-magnitude Sobel gradients, screened Poisson reconstruction.

The fused image is the one whose (Sobel) gradient field is closest to a target field taken,
voxel by voxel, from the source with the stronger gradient, while staying close to a base
image -- the gradient-domain fusion of the literature (e.g. Paul, Sevcenco & Agathoklis 2016;
the screened Poisson equation of Bhat et al. 2008), with the gradient operator of the
edge-transfer metric Q^{AB/F} (Xydeas & Petrovic 2000), which it therefore favours::

    F = argmin_F  sum_k || S_k F - T_k ||^2 + lam || F - F_0 ||^2,

* ``S_k``: the normalised 3-tap Sobel derivative along axis ``k`` (``[-1, 0, 1] / 2`` along
  ``k``, ``[1, 2, 1] / 4`` along every other axis): the 3x3 Sobel of 2D images, 3x3x3 in 3D;
* ``T_k = S_k A`` where ``E_A = sum_k (S_k A)^2 >= w E_B = w sum_k (S_k B)^2`` summed over a ``(2 r + 1)``
  window (``window`` r: neighbours choose together, edges stay whole), else ``S_k B``;
* ``F_0``: the base, by default ``max(A, B)``, the pixel maximum (for PET/SPECT and CT-MRI
  pairs, whose bright structures do not overlap, it keeps each source's bright structures at
  full intensity), or (``base="gff"``) the guided-filter fusion of :mod:`.gff`, a smooth
  saliency-weighted blend that keeps the functional image's coarse distribution;
* ``lam`` weighs the base against the gradients: it sets the length over which the
  reconstruction may drift from ``F_0`` (``~ 1 / sqrt(lam)`` samples);
* ``second_weight`` ``w`` weighs ``B``'s energy in the choice (``A`` where ``E_A >= w E_B``):
  below 1 favours ``A``'s (the MRI's) edges over a blurred functional image's.

The normal equations ``(sum_k S_k^T S_k + lam) F = sum_k S_k^T T_k + lam F_0`` are diagonal
in the Fourier domain: one FFT solve, on the volume extended by mirroring (``pad`` samples per
side; the screened Poisson kernel decays within a few ``1 / sqrt(lam)``, so the mirror
extension gives the reflecting boundary of the unpadded problem). Axes of length 1 (a 2D
image stored as one slice) are left alone.

**The [0, 1] constraint** (``box_iterations`` > 0). The target field of two sources is not a
gradient field, and where they disagree the least-squares solution overshoots: on MRI-CT
pairs the CT's bone is white next to the MRI's bright scalp, the solution rises above 1 there
and clipping flattens the very edges the gradients were chosen for. With ``box_iterations``
the problem is solved under ``0 <= F <= 1`` by ADMM (Boyd et al. 2011, splitting ``F = Z``,
``Z`` in the box, penalty ``rho``): each iteration is one FFT solve with ``lam + rho`` and a
clip. Without it the caller clips the unconstrained solution.

Parameters: ``lam = 1/32`` (with the unnormalised 3x3 Sobel of the metric this is
``lam = 2``), ``window = 2``; ``box_iterations = 20``, ``rho = 0.5`` for images (the method's
default; volumes default to 0, where every iteration is a 3D FFT), chosen on the Harvard
training pairs (``benchmarks/fusion/select_gradient.py``); the Harvard benchmark chooses
``base``, ``second_weight`` and ``window`` per task on the training split
(``docs/benchmarks/fusion.md``).
"""

from __future__ import annotations

import math

import torch

from medtorch.errors import MedTorchInputError
from medtorch.fusion.filters import pad_axis, window_sum
from medtorch.progress import CancelToken, ProgressCallback, report

__all__ = ["GRADIENT_BASES", "fuse_gradient"]

#: The base images ``F_0`` the method offers: the pixel maximum, or the guided-filter fusion (:mod:`.gff`).
GRADIENT_BASES = ("max", "gff")


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
    box_iterations: int = 0,
    rho: float = 0.5,
    base_image: torch.Tensor | None = None,
    second_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, object]]:
    """Gradient-domain fusion of two images or volumes of one shape (see the module docstring).

    ``box_iterations`` > 0 solves the problem under the constraint ``0 <= F <= 1`` (ADMM with
    penalty ``rho``, one FFT solve per iteration); 0 solves it unconstrained (the caller clips).
    ``base_image`` replaces the base ``F_0 = max(A, B)`` (e.g. a guided-filter fusion).
    ``second_weight`` weighs ``B``'s windowed gradient energy in the choice (``A`` is taken where
    its energy >= ``second_weight`` times ``B``'s): below 1 favours ``A``'s edges.
    """
    if a.shape != b.shape:
        raise MedTorchInputError(f"the images differ in shape ({tuple(a.shape)} vs {tuple(b.shape)})",
                                 "resample one onto the other's grid first")
    if not lam > 0:
        raise MedTorchInputError(f"the gradient method's lam must be > 0, got {lam}", "use e.g. 1/32")
    if int(window) < 0 or int(pad) < 0:
        raise MedTorchInputError(f"window and pad must be >= 0, got {window}, {pad}", "use window 2, pad 32")
    if int(box_iterations) < 0 or not rho > 0:
        raise MedTorchInputError(f"box_iterations must be >= 0 and rho > 0, got {box_iterations}, {rho}",
                                 "use e.g. box_iterations 20, rho 0.5")
    if not second_weight > 0:
        raise MedTorchInputError(f"second_weight must be > 0, got {second_weight}", "use e.g. 1 (no preference)")
    if base_image is not None and base_image.shape != a.shape:
        raise MedTorchInputError(f"the base image's shape {tuple(base_image.shape)} differs from {tuple(a.shape)}",
                                 "give a base image of the sources' shape")
    nd = a.ndim
    axes = [d for d in range(nd) if a.shape[d] > 1]
    if not axes:
        return (torch.maximum(a, b) if base_image is None else base_image.clone()), {"lam": float(lam),
                                                                                    "window": int(window)}
    # float64 for images (exactness costs nothing there), float32 for large volumes
    dtype = torch.float64 if a.numel() <= (1 << 22) else torch.float32
    report(progress, cancel, 0.05, "gradient-domain fusion: mirror extension")
    x = torch.stack([a, b] if base_image is None else [a, b, base_image]).to(dtype)  # [2 or 3, ...]
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
    spec = torch.fft.rfftn(x[:2], dim=f_axes)
    grads = [torch.fft.irfftn(spec * k, s=[sizes[d] for d in axes], dim=f_axes) for k in kernels]  # [2, ...] each
    del spec
    report(progress, cancel, 0.45, "choosing the stronger gradient")
    strength = sum(g * g for g in grads)
    diff = strength[0] - float(second_weight) * strength[1]
    del strength
    r = int(window)
    if r > 0:
        diff = window_sum(diff, [r if d in pads else 0 for d in range(nd)])
    take_a = diff >= 0
    del diff
    report(progress, cancel, 0.6, "screened Poisson solve (FFT)")
    base = torch.maximum(x[0], x[1]) if base_image is None else x[2]
    num = torch.fft.rfftn(base, dim=axes) * float(lam)
    den = torch.full_like(kernels[0].real, float(lam))
    for k, g in zip(kernels, grads):
        target = torch.where(take_a, g[0], g[1])
        num += k.conj() * torch.fft.rfftn(target, dim=axes)
        den = den + (k * k.conj()).real
    del grads
    shape = [sizes[d] for d in axes]
    out = torch.fft.irfftn(num / den, s=shape, dim=axes)
    n_box = int(box_iterations)
    if n_box:
        # ADMM for min ||S F - T||^2 + lam ||F - F_0||^2 + indicator(0 <= Z <= 1), F = Z:
        # F <- (S^T S + lam + rho)^-1 (S^T T + lam F_0 + rho (Z - U)) (one FFT solve), Z <- clip(F + U),
        # U <- U + F - Z; started from the unconstrained solution
        report(progress, cancel, 0.75, f"keeping the result in [0, 1] ({n_box} ADMM iterations)")
        z = out.clamp(0.0, 1.0)
        u = torch.zeros_like(out)
        den_rho = den + float(rho)
        for _ in range(n_box):
            f = torch.fft.irfftn((num + float(rho) * torch.fft.rfftn(z - u, dim=axes)) / den_rho, s=shape, dim=axes)
            z = (f + u).clamp(0.0, 1.0)
            u = u + f - z
        out = z
    for d, p in pads.items():
        out = out.narrow(d, p, a.shape[d])
    report(progress, cancel, 1.0, "gradient-domain fusion done")
    return out.to(a.dtype).contiguous(), {"lam": float(lam), "window": r, "pad": int(pad),
                                          "box_iterations": n_box, "rho": float(rho),
                                          "second_weight": float(second_weight)}
