"""Jacobian determinant of a registration transform, and folding.

For ``T(p) = A(p + d(p))`` the Jacobian is ``A_lin (I + grad d)``, so
``det J = det(A_lin) * det(I + grad d)``. ``grad d`` is taken by central differences on the
field's grid (one-sided at the edges), converted from index to physical derivatives
through the grid's direction and spacing. Folding is the share of voxels with ``det J <= 0``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from medtorch.volume import Volume

__all__ = ["jacobian_determinant", "folding_report"]


def _index_gradient(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Central difference along ``dim`` (one-sided at both ends); ``t`` has that axis >= 2 long."""
    n = t.shape[dim]
    out = torch.empty_like(t)
    if n < 2:
        return out.zero_()
    fwd = t.narrow(dim, 1, n - 1) - t.narrow(dim, 0, n - 1)
    out.narrow(dim, 0, 1).copy_(fwd.narrow(dim, 0, 1))
    out.narrow(dim, n - 1, 1).copy_(fwd.narrow(dim, n - 2, 1))
    if n > 2:
        out.narrow(dim, 1, n - 2).copy_((t.narrow(dim, 2, n - 2) - t.narrow(dim, 0, n - 2)) * 0.5)
    return out


def _det3(j: torch.Tensor) -> torch.Tensor:
    """Determinants of ``[..., 3, 3]`` matrices by the explicit formula (faster than LU for many small ones)."""
    return (j[..., 0, 0] * (j[..., 1, 1] * j[..., 2, 2] - j[..., 1, 2] * j[..., 2, 1])
            - j[..., 0, 1] * (j[..., 1, 0] * j[..., 2, 2] - j[..., 1, 2] * j[..., 2, 0])
            + j[..., 0, 2] * (j[..., 1, 0] * j[..., 2, 1] - j[..., 1, 1] * j[..., 2, 0]))


def jacobian_determinant(displacement: Volume, affine: np.ndarray | None = None, chunk_slices: int = 32) -> np.ndarray:
    """``det J`` of ``p -> A(p + d(p))`` at every voxel of the field's grid: float32 ``[z, y, x]``.

    Computed in single precision, a slab of slices at a time (with a one-slice halo).
    """
    geom = displacement.geometry
    arr = np.asarray(displacement.array)
    inv = np.linalg.inv(geom.direction @ np.diag(geom.spacing))  # d(ijk)/d(lps)
    inv_t = torch.tensor(inv, dtype=torch.float32)
    det_a = float(np.linalg.det(np.asarray(affine, float)[:3, :3])) if affine is not None else 1.0
    nz = arr.shape[0]
    out = np.empty(arr.shape[:3], dtype=np.float32)
    eye = torch.eye(3, dtype=torch.float32)
    for k0 in range(0, nz, chunk_slices):
        k1 = min(k0 + chunk_slices, nz)
        lo, hi = max(k0 - 1, 0), min(k1 + 1, nz)
        block = torch.from_numpy(np.ascontiguousarray(arr[lo:hi], dtype=np.float32))  # [z, y, x, 3]
        grads = [_index_gradient(block, dim).narrow(0, k0 - lo, k1 - k0) for dim in (2, 1, 0)]  # d/di, d/dj, d/dk
        g_idx = torch.stack(grads, dim=-1)  # [z, y, x, 3 (component), 3 (i, j, k)]
        jac = g_idx @ inv_t + eye
        out[k0:k1] = (_det3(jac) * det_a).numpy()
    return out


def folding_report(affine: np.ndarray, displacement: Volume | None) -> dict[str, Any]:
    """``jacobian_min``, ``jacobian_max`` and ``folding_percent`` (share of voxels with ``det J <= 0``)."""
    det_a = float(np.linalg.det(np.asarray(affine, float)[:3, :3]))
    if displacement is None:
        return {"jacobian_min": det_a, "jacobian_max": det_a, "folding_percent": 0.0 if det_a > 0 else 100.0}
    det = jacobian_determinant(displacement, affine)
    return {"jacobian_min": float(det.min()), "jacobian_max": float(det.max()),
            "folding_percent": float((det <= 0).mean() * 100.0)}
