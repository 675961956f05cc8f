"""Measures of an alignment, for evaluating a registration (numpy; not costs to optimise):

* :func:`landmark_errors` -- the target registration error (TRE) of each landmark: the distance
  (mm) between where a transform maps it and where it truly lies
  (:func:`medtorch.registration.api.target_registration_error` summarises them);
* :func:`pearson_correlation` -- Pearson's correlation of two images' voxel values (same contrast);
* :func:`normalized_mutual_information` -- Studholme's normalised mutual information of two
  images (any intensity relation: two modalities).

Each image measure takes an optional ``mask`` (the voxels to compare, e.g. the head).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["landmark_errors", "normalized_mutual_information", "pearson_correlation"]


def landmark_errors(mapped: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Distance (mm) between each mapped landmark and its true position: ``(N, 3)`` -> ``(N,)``."""
    return np.linalg.norm(np.asarray(mapped, float) - np.asarray(truth, float), axis=1)


def _masked(a: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return a[mask] if mask is not None else a.reshape(-1)


def pearson_correlation(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Pearson correlation of two images (inside ``mask``); 0 when either is constant there."""
    x, y = _masked(a, mask), _masked(b, mask)
    x = x - x.mean()
    y = y - y.mean()
    den = math.sqrt(float((x * x).sum()) * float((y * y).sum()))
    return float((x * y).sum() / den) if den > 0 else 0.0


def normalized_mutual_information(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None,
                                  bins: int = 64) -> float:
    """Studholme's normalised mutual information ``(H(A) + H(B)) / H(A, B)``, in [1, 2].

    1 means independent intensities, 2 a one-to-one relation (perfect alignment of
    modalities related by any intensity mapping). Histograms of ``bins`` equal bins between
    each image's minimum and maximum inside ``mask``.
    """
    x, y = _masked(a, mask), _masked(b, mask)
    joint, _, _ = np.histogram2d(x, y, bins=bins)
    p = joint / joint.sum()
    px, py = p.sum(axis=1), p.sum(axis=0)

    def entropy(q: np.ndarray) -> float:
        q = q[q > 0]
        return float(-(q * np.log(q)).sum())

    hxy = entropy(p.ravel())
    return (entropy(px) + entropy(py)) / hxy if hxy > 0 else 2.0
