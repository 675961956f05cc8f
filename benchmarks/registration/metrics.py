"""Accuracy figures, computed the same way for every engine.

* TRE: ``|T_est(p) - T_true(p)|`` over the case's landmarks (mm): mean, 95th percentile, max.
* Folding: the share of fixed-grid voxels where the Jacobian determinant of
  ``p -> A(p + d(p))`` is ``<= 0``; ``det J = det(A) det(I + grad d)``, ``grad d`` by central
  differences (one-sided at the edges) converted to physical units through the grid's
  direction and spacing.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medtorch.volume import Volume


def map_points(affine: np.ndarray, displacement: Volume | None, points: np.ndarray) -> np.ndarray:
    """``A(p + d(p))`` for ``(N, 3)`` LPS points; ``d`` linear on its grid, zero outside it
    (as ``sitk.DisplacementFieldTransform`` and :func:`medtorch.resample.transform_points` do)."""
    from benchmarks.registration.cases import apply_transform

    return apply_transform(affine, displacement, points)


def tre_summary(errors: np.ndarray) -> dict[str, float]:
    e = np.asarray(errors, np.float64)
    return {"tre_mean_mm": float(e.mean()), "tre_p95_mm": float(np.percentile(e, 95)), "tre_max_mm": float(e.max())}


def jacobian_determinant(displacement: Volume, chunk: int = 16) -> np.ndarray:
    """``det(I + grad d)`` at every voxel of the field's grid (float32 ``[z, y, x]``)."""
    geom = displacement.geometry
    arr = np.asarray(displacement.array)
    inv = np.linalg.inv(geom.direction @ np.diag(geom.spacing))  # d(index)/d(LPS)
    nz = arr.shape[0]
    out = np.empty(arr.shape[:3], np.float32)
    for k0 in range(0, nz, chunk):
        k1 = min(k0 + chunk, nz)
        lo, hi = max(k0 - 1, 0), min(k1 + 1, nz)
        block = np.asarray(arr[lo:hi], np.float64)
        g = np.stack([np.gradient(block, axis=ax) for ax in (2, 1, 0)], axis=-1)  # [.., comp, (i, j, k)]
        g = g[k0 - lo:k0 - lo + (k1 - k0)]
        jac = g @ inv + np.eye(3)
        out[k0:k1] = np.linalg.det(jac).astype(np.float32)
    return out


def folding(affine: np.ndarray, displacement: Volume) -> dict[str, Any]:
    """``folding_percent`` and ``jacobian_min`` of ``p -> A(p + d(p))`` on the field's grid."""
    det = jacobian_determinant(displacement) * float(np.linalg.det(np.asarray(affine, float)[:3, :3]))
    return {"folding_percent": float(100.0 * np.mean(det <= 0)), "jacobian_min": float(det.min()),
            "jacobian_max": float(det.max())}
