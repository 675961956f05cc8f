"""The fusion methods by name, their parameters, and :func:`fuse_arrays` (tensor/array level).

========== ==================================================================================
method     what it does (module)
========== ==================================================================================
average    weighted average ``(1 - weight) a + weight b`` (:mod:`.rules`)
max        voxel-wise maximum, a reference rule (:mod:`.rules`)
pca        PCA-weighted average (Naidu & Raol 2008) (:mod:`.rules`)
dwt        DWT: mean approximation, max-abs details (:mod:`.wavelet`)
laplacian  Laplacian pyramid, area-based max selection (:mod:`.pyramid`)
gff        guided-filter fusion (Li, Kang & Hu 2013) (:mod:`.gff`)
gradient   gradient-domain fusion: max-magnitude Sobel gradients, reconstructed over a
           base (the pixel maximum or the guided-filter fusion) by the screened Poisson
           equation (least squares, kept in [0, 1] by ADMM on images) or robustly
           (``norm="l1"``: the mismatch's length, ADMM) (:mod:`.gradient`)
cnn        two-branch CNN trained on the pair itself (:mod:`.cnn`)
========== ==================================================================================

Inputs are two images (``[y, x]``) or volumes (``[z, y, x]``) of one shape with
intensities in [0, 1] (see :mod:`medtorch.fusion.prepare`); the output is float32 in
[0, 1] (clipped: wavelet and pyramid rules can overshoot by a few per cent).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from medtorch.errors import MedTorchInputError
from medtorch.progress import CancelToken, ProgressCallback, report

__all__ = ["METHODS", "MethodSpec", "check_params", "fuse_arrays", "fuse_tensors"]


@dataclass(frozen=True)
class MethodSpec:
    """A method's name, its parameters with their defaults, and a one-line description."""

    name: str
    params: dict[str, Any]
    description: str
    trains: bool = False


METHODS: dict[str, MethodSpec] = {
    "average": MethodSpec("average", {"weight": 0.5}, "weighted average of the two images"),
    "max": MethodSpec("max", {}, "voxel-wise maximum (reference rule)"),
    "pca": MethodSpec("pca", {}, "PCA-weighted average (Naidu & Raol 2008)"),
    "dwt": MethodSpec("dwt", {"wavelet": "haar", "levels": 3, "wavelet_mode": "symmetric"},
                      "DWT: mean approximation, max-abs details"),
    "laplacian": MethodSpec("laplacian", {"levels": 4, "activity_radius": 1},
                            "Laplacian pyramid, area-based max selection, averaged top level"),
    "gff": MethodSpec("gff", {"base_radius": 15, "saliency_radius": 5, "saliency_sigma": 5.0, "r1": 45, "eps1": 0.3,
                              "r2": 7, "eps2": 1e-6, "subsample": None},
                      "guided-filter fusion (Li, Kang & Hu 2013)"),
    "gradient": MethodSpec("gradient", {"lam": None, "window": 2, "pad": 32, "base": "max",
                                        "second_weight": 1.0, "box_iterations": None, "rho": 0.5,
                                        "norm": "l2", "edge_weight": 0.0, "l1_rho": 30.0},
                           "gradient-domain fusion: max-magnitude Sobel gradients, reconstructed over a base "
                           "(pixel maximum or guided-filter fusion) by least squares (screened Poisson) or robustly (norm l1)"),
    "cnn": MethodSpec("cnn", {"iterations": None, "features": 8, "patch_size": 32, "batch_size": 2,
                              "learning_rate": 2e-3, "seed": 0, "w_ssim": 1.0, "w_grad": 4.0, "w_int": 1.0,
                              "checkpoint": None, "save_checkpoint": None},
                      "two-branch CNN trained on the pair itself (unsupervised SSIM + gradient + intensity loss)",
                      trains=True),
}


def check_params(method: str, params: dict[str, Any] | None) -> dict[str, Any]:
    """The method's parameters: defaults updated with ``params`` (None values keep the default).

    Raises:
        MedTorchInputError: an unknown method or a parameter the method does not take.
    """
    key = str(method).strip().lower()
    if key not in METHODS:
        raise MedTorchInputError(f"unknown fusion method {method!r}", "use one of " + ", ".join(METHODS))
    spec = METHODS[key]
    merged = dict(spec.params)
    for k, v in (params or {}).items():
        if k not in spec.params:
            accepted = ", ".join(spec.params) or "none"
            raise MedTorchInputError(f"the {key} method takes no parameter {k!r}",
                                     f"its parameters are: {accepted}")
        if v is not None:
            merged[k] = v
    return merged


def _run(method: str, a: torch.Tensor, b: torch.Tensor, p: dict[str, Any], spacing: Sequence[float] | None,
         progress: ProgressCallback | None, cancel: CancelToken | None) -> tuple[torch.Tensor, dict[str, object]]:
    if method == "average":
        from medtorch.fusion.rules import fuse_average

        return fuse_average(a, b, float(p["weight"]), progress, cancel)
    if method == "max":
        from medtorch.fusion.rules import fuse_max

        return fuse_max(a, b, progress, cancel)
    if method == "pca":
        from medtorch.fusion.rules import fuse_pca

        return fuse_pca(a, b, progress, cancel)
    if method == "dwt":
        from medtorch.fusion.wavelet import fuse_dwt

        return fuse_dwt(a, b, str(p["wavelet"]), int(p["levels"]), str(p["wavelet_mode"]), progress, cancel)
    if method == "laplacian":
        from medtorch.fusion.pyramid import fuse_laplacian

        return fuse_laplacian(a, b, int(p["levels"]), int(p["activity_radius"]), progress, cancel)
    if method == "gff":
        from medtorch.fusion.gff import fuse_gff

        sub = p["subsample"]
        return fuse_gff(a, b, spacing, float(p["base_radius"]), float(p["saliency_radius"]), float(p["saliency_sigma"]),
                        float(p["r1"]), float(p["eps1"]), float(p["r2"]), float(p["eps2"]),
                        None if sub is None else int(sub), progress, cancel)
    if method == "gradient":
        from medtorch.fusion.gradient import GRADIENT_BASES, GRADIENT_NORMS, fuse_gradient

        base = str(p["base"]).strip().lower()
        if base not in GRADIENT_BASES:
            raise MedTorchInputError(f"the gradient method's base must be one of {', '.join(GRADIENT_BASES)}, "
                                     f"got {base!r}", "use base 'max' (the pixel maximum) or 'gff' (guided-filter fusion)")
        # the [0, 1] constraint and the robust (l1) reconstruction cost one FFT solve per ADMM iteration: on
        # by default for images (a 2D image or a one-slice volume), off for volumes, where it would take seconds
        image = sum(n > 1 for n in a.shape) <= 2
        norm = str(p["norm"]).strip().lower()
        if norm not in GRADIENT_NORMS:
            raise MedTorchInputError(f"the gradient method's norm must be one of {', '.join(GRADIENT_NORMS)}, "
                                     f"got {p['norm']!r}", "use 'l2' (least squares) or 'l1' (robust)")
        box = p["box_iterations"]
        if box is None:
            box = GRADIENT_L1_ITERATIONS if norm == "l1" else (GRADIENT_BOX_ITERATIONS if image else 0)
        box = int(box)
        lam = p["lam"]
        lam = (GRADIENT_L1_LAM if norm == "l1" else GRADIENT_L2_LAM) if lam is None else float(lam)
        base_image = None
        if base == "gff":
            from medtorch.fusion.gff import fuse_gff

            g = METHODS["gff"].params
            base_image, _ = fuse_gff(a, b, spacing, float(g["base_radius"]), float(g["saliency_radius"]),
                                     float(g["saliency_sigma"]), float(g["r1"]), float(g["eps1"]), float(g["r2"]),
                                     float(g["eps2"]), None, None, cancel)
        out, info = fuse_gradient(a, b, lam, int(p["window"]), int(p["pad"]), progress, cancel,
                                  box, float(p["rho"]), base_image, float(p["second_weight"]), norm,
                                  float(p["edge_weight"]), float(p["l1_rho"]))
        return out, {**info, "base": base}
    if method == "cnn":
        from medtorch.fusion.cnn import fuse_cnn

        its = p["iterations"]
        return fuse_cnn(a, b, None if its is None else int(its), int(p["features"]), int(p["patch_size"]),
                        int(p["batch_size"]), float(p["learning_rate"]), int(p["seed"]), float(p["w_ssim"]),
                        float(p["w_grad"]), float(p["w_int"]), p["checkpoint"], p["save_checkpoint"], progress, cancel)
    raise MedTorchInputError(f"unknown fusion method {method!r}", "use one of " + ", ".join(METHODS))


#: ADMM iterations of the gradient method's [0, 1] constraint on images (``box_iterations`` None, ``l2``).
GRADIENT_BOX_ITERATIONS = 20
#: ADMM iterations of the robust (``l1``) reconstruction (``box_iterations`` None), over-relaxed
#: (:data:`medtorch.fusion.gradient.L1_RELAXATION`): 15 scored within 0.003 of 30 plain ones in
#: every Harvard training-pair mean (Qabf, VIF), and 60 plain ones changed none by more than 0.002.
GRADIENT_L1_ITERATIONS = 15
#: ``lam`` (the base's weight) by norm when not given: 1/32 for least squares, 0.3 for the robust
#: reconstruction, whose mismatch term grows linearly (chosen on the Harvard training pairs).
GRADIENT_L2_LAM = 1.0 / 32.0
GRADIENT_L1_LAM = 0.3

#: Intra-op CPU threads for the training-free methods (``MEDTORCH_FUSION_THREADS`` overrides).
#: They are chains of many short, memory-bound tensor operations (narrow, add, where, small
#: matrix products); with torch's default of one OpenMP thread per core every one of them
#: ends in a barrier, and on a machine whose cores are busy with other work a thread that
#: waits for a core stalls the whole operation: on the shared 2-core development machine the
#: Laplacian pyramid of a 1 Mvoxel pair took 1.6 s with two threads and 0.05 s with one (the
#: DWT 1.9 s vs 0.04 s, GFF 2.1 s vs 0.7 s). One thread costs little on an idle machine
#: (memory-bound work) and avoids that cliff; the CNN keeps torch's setting.
FUSION_THREADS_ENV = "MEDTORCH_FUSION_THREADS"


@contextmanager
def cpu_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads (``$MEDTORCH_FUSION_THREADS`` wins; None: unchanged)."""
    import os

    env = os.environ.get(FUSION_THREADS_ENV, "").strip()
    if env:
        try:
            n = max(1, int(env))
        except ValueError:
            raise MedTorchInputError(f"{FUSION_THREADS_ENV}={env!r} is not a number of threads",
                                     "set it to a positive integer, or unset it") from None
    if n is None or n == torch.get_num_threads():
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def fuse_tensors(
    a: torch.Tensor,
    b: torch.Tensor,
    method: str,
    params: dict[str, Any] | None = None,
    spacing: Sequence[float] | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> tuple[torch.Tensor, dict[str, object]]:
    """Fuse two float tensors of one shape (``[y, x]`` or ``[z, y, x]``, values in [0, 1]).

    ``spacing`` is the voxel size along the tensor's axes (``[z, y, x]`` order), used by
    methods with windows (gff). The result is clipped to [0, 1]; the info dict holds the
    parameters used and what the method reports (levels used, seed, ...).
    """
    key = str(method).strip().lower()
    p = check_params(key, params)
    if a.shape != b.shape:
        raise MedTorchInputError(f"the images to fuse differ in shape ({tuple(a.shape)} vs {tuple(b.shape)})",
                                 "resample one onto the other's grid first (or give the transform between them)")
    if a.ndim not in (2, 3):
        raise MedTorchInputError(f"images to fuse must be 2D or 3D, got shape {tuple(a.shape)}",
                                 "give [y, x] images or [z, y, x] volumes")
    two_d = a.ndim == 2
    x, y = (a.unsqueeze(0), b.unsqueeze(0)) if two_d else (a, b)
    sp = None if spacing is None else ([1.0] + list(spacing) if two_d and len(spacing) == 2 else list(spacing))
    with cpu_threads(1 if a.device.type == "cpu" and key != "cnn" else None):
        out, info = _run(key, x, y, p, sp, progress, cancel)
    out = out.clamp_(0.0, 1.0) if out.is_floating_point() else out
    report(progress, cancel, 1.0, f"{key} fusion done")
    info = {"method": key, **{k: v for k, v in p.items() if v is not None}, **info}
    return (out[0] if two_d else out), info


def fuse_arrays(
    a: np.ndarray | torch.Tensor,
    b: np.ndarray | torch.Tensor,
    method: str = "average",
    params: dict[str, Any] | None = None,
    spacing: Sequence[float] | None = None,
    device: str | torch.device | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> tuple[np.ndarray, dict[str, object]]:
    """:func:`fuse_tensors` on numpy arrays (or tensors): returns a float32 array in [0, 1].

    The inputs are copied to ``device`` (auto: ``$MEDTORCH_DEVICE``, CUDA, MPS, CPU) as
    float32; they are never modified.
    """
    from medtorch.device import select_device

    dev = select_device(device)
    ta = torch.as_tensor(np.asarray(a, dtype=np.float32) if not isinstance(a, torch.Tensor) else a)
    tb = torch.as_tensor(np.asarray(b, dtype=np.float32) if not isinstance(b, torch.Tensor) else b)
    ta = ta.to(dev, torch.float32).clone()
    tb = tb.to(dev, torch.float32).clone()
    for name, t in (("first", ta), ("second", tb)):
        if not torch.isfinite(t).all():
            raise MedTorchInputError(f"the {name} image contains NaN or infinite values", "replace them first")
    out, info = fuse_tensors(ta, tb, method, params, spacing, progress, cancel)
    info["device"] = str(dev)
    return out.detach().cpu().numpy().astype(np.float32), info
