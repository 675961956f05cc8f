"""Pixel-level fusion rules: weighted average, pixel maximum and PCA weighting.

All take two tensors of one shape with intensities in [0, 1] and return the fused tensor
(same shape and device) and an info dict. They are the references every other method is
compared with: the average and the pixel maximum can score well on MI and SSIM while
blurring or losing detail, which is why reports show every metric and the images.
"""

from __future__ import annotations

import torch

from medtorch.errors import MedTorchInputError
from medtorch.progress import CancelToken, ProgressCallback, report

__all__ = ["fuse_average", "fuse_max", "fuse_pca", "pca_weights"]


def _same_shape(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise MedTorchInputError(f"the images differ in shape ({tuple(a.shape)} vs {tuple(b.shape)})",
                                 "resample one onto the other's grid first")


def fuse_average(a: torch.Tensor, b: torch.Tensor, weight: float = 0.5, progress: ProgressCallback | None = None,
                 cancel: CancelToken | None = None) -> tuple[torch.Tensor, dict[str, object]]:
    """``(1 - weight) * a + weight * b`` (``weight`` is the share of the second image, in [0, 1])."""
    _same_shape(a, b)
    w = float(weight)
    if not 0.0 <= w <= 1.0:
        raise MedTorchInputError(f"blend weight {weight} is outside [0, 1]", "choose a weight between 0 and 1")
    report(progress, cancel, 0.5, "weighted average")
    out = torch.lerp(a, b, w)
    report(progress, cancel, 1.0, "done")
    return out, {"weight": w}


def fuse_max(a: torch.Tensor, b: torch.Tensor, progress: ProgressCallback | None = None,
             cancel: CancelToken | None = None) -> tuple[torch.Tensor, dict[str, object]]:
    """Voxel-wise maximum."""
    _same_shape(a, b)
    report(progress, cancel, 0.5, "pixel maximum")
    return torch.maximum(a, b), {}


def pca_weights(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[float, float]:
    """Weights from the principal eigenvector of the 2 x 2 covariance of ``(a, b)`` (Naidu & Raol 2008).

    The eigenvector of the largest eigenvalue, taken with non-negative components, is
    normalised to sum to one. Computed in float64 over all voxels (or those in ``mask``).
    """
    x = a.reshape(-1) if mask is None else a[mask]
    y = b.reshape(-1) if mask is None else b[mask]
    x = x.to(torch.float64)
    y = y.to(torch.float64)
    if x.numel() < 2:
        return 0.5, 0.5
    cx, cy = x - x.mean(), y - y.mean()
    n = float(x.numel() - 1)
    cov = torch.tensor([[float((cx * cx).sum()) / n, float((cx * cy).sum()) / n],
                        [float((cx * cy).sum()) / n, float((cy * cy).sum()) / n]], dtype=torch.float64)
    vals, vecs = torch.linalg.eigh(cov)
    v = vecs[:, int(torch.argmax(vals))].abs()
    total = float(v.sum())
    if not total > 0:
        return 0.5, 0.5
    return float(v[0]) / total, float(v[1]) / total


def fuse_pca(a: torch.Tensor, b: torch.Tensor, progress: ProgressCallback | None = None,
             cancel: CancelToken | None = None) -> tuple[torch.Tensor, dict[str, object]]:
    """PCA-weighted average ``w_a a + w_b b`` with :func:`pca_weights`."""
    _same_shape(a, b)
    report(progress, cancel, 0.2, "principal component of the two images")
    wa, wb = pca_weights(a, b)
    report(progress, cancel, 0.7, f"weighting {wa:.3f} / {wb:.3f}")
    out = torch.lerp(a, b, wb)
    report(progress, cancel, 1.0, "done")
    return out, {"weight_a": wa, "weight_b": wb}
