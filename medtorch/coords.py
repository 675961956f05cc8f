"""RAS (Slicer) against LPS (ITK, DICOM, MedTorch): the one module where the sign flip lives.

Slicer's world is RAS (x to the Right, y Anterior, z Superior); ITK, DICOM and every array in
MedTorch are LPS (x Left, y Posterior). The two differ by the flip ``F = diag(-1, -1, 1)`` of the
first two axes, and ``F`` is its own inverse, so each function here converts both ways:

* points and vectors (displacements, axes given as rows): :func:`ras_from_lps` / :func:`lps_from_ras`;
* direction matrices and axes given as columns: :func:`flip_rows` (``F @ M``);
* 4x4 affine matrices that map points to points: :func:`flip_affine` (``F M F``);
* registration results: ITK's fixed-to-moving LPS matrix against the RAS *to-parent* matrix a
  Slicer transform node stores (:func:`to_parent_ras_from_itk` and back, :func:`itk_from_to_parent_ras`).

A sign flip written anywhere else is a bug waiting to happen; ``Testing/test_coords.py`` fails on one.
Also here: the signs that take each NRRD ``space`` to LPS (:data:`NRRD_SPACE_SIGNS`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "FLIP",
    "LPS_TO_RAS",
    "NRRD_SPACE_SIGNS",
    "flip_affine",
    "flip_rows",
    "itk_from_to_parent_ras",
    "lps_from_ras",
    "ras_from_lps",
    "to_parent_ras_from_itk",
]

#: The per-axis signs between RAS and LPS (either way).
FLIP = np.array([-1.0, -1.0, 1.0])
#: ``diag(-1, -1, 1, 1)``: a homogeneous point's RAS <-> LPS (either way).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

#: NRRD spaces and the per-axis signs that take them to LPS (as ITK's NrrdImageIO does).
NRRD_SPACE_SIGNS: dict[str, tuple[float, float, float]] = {
    "left-posterior-superior": (1.0, 1.0, 1.0),
    "lps": (1.0, 1.0, 1.0),
    "left-posterior-superior-time": (1.0, 1.0, 1.0),
    "lpst": (1.0, 1.0, 1.0),
    "right-anterior-superior": (-1.0, -1.0, 1.0),
    "ras": (-1.0, -1.0, 1.0),
    "right-anterior-superior-time": (-1.0, -1.0, 1.0),
    "rast": (-1.0, -1.0, 1.0),
    "left-anterior-superior": (-1.0, 1.0, 1.0),
    "las": (-1.0, 1.0, 1.0),
    "left-anterior-superior-time": (-1.0, 1.0, 1.0),
    "last": (-1.0, 1.0, 1.0),
}


def ras_from_lps(points: Any) -> np.ndarray:
    """Points or vectors ``(..., 3)`` (one point ``(3,)`` too) from LPS to RAS, as float64."""
    return np.asarray(points, dtype=np.float64) * FLIP


def lps_from_ras(points: Any) -> np.ndarray:
    """Points or vectors ``(..., 3)`` from RAS to LPS (the same flip as :func:`ras_from_lps`)."""
    return np.asarray(points, dtype=np.float64) * FLIP


def flip_rows(matrix: Any) -> np.ndarray:
    """``F @ M`` for a 3x3 matrix whose columns are directions (image axes, ROI axes): the same
    columns written in the other system."""
    return FLIP[:, None] * np.asarray(matrix, dtype=np.float64)


def flip_affine(matrix: Any) -> np.ndarray:
    """``F M F`` for a 4x4 matrix mapping points to points: the same mapping in the other system."""
    return LPS_TO_RAS @ np.asarray(matrix, dtype=np.float64) @ LPS_TO_RAS


def to_parent_ras_from_itk(matrix_lps: Any) -> np.ndarray:
    """A Slicer transform node's *to-parent* RAS matrix from ITK's fixed -> moving LPS matrix.

    ITK's registration matrix maps fixed points to moving points (the resampling direction);
    Slicer's to-parent matrix moves the moving volume onto the fixed one, which is its inverse."""
    return flip_affine(np.linalg.inv(np.asarray(matrix_lps, dtype=np.float64)))


def itk_from_to_parent_ras(to_parent_ras: Any) -> np.ndarray:
    """ITK's fixed -> moving LPS matrix from a Slicer transform node's to-parent RAS matrix."""
    return np.linalg.inv(flip_affine(to_parent_ras))
