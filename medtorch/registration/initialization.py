"""Initial transforms for registration (ITK convention: 4x4 LPS, fixed point -> moving point).

* :func:`geometry_init` -- the centres of the two grids coincide;
* :func:`moments_init` -- the centres of mass of the foregrounds coincide;
* :func:`principal_axes_candidates` -- principal axes of the foregrounds aligned, one candidate
  per admissible sign flip of the axes (4 proper rotations);
* :func:`fiducial_init` -- least-squares rigid (Kabsch) or affine fit to landmark pairs;
* :func:`rotation_grid` -- a grid of rotations for a search that
  :mod:`medtorch.registration.linear` scores by the similarity at the coarsest level.
"""

from __future__ import annotations

import itertools

import numpy as np

from medtorch.errors import MedTorchInputError
from medtorch.volume import Geometry

__all__ = [
    "euler_matrix",
    "fiducial_init",
    "foreground_moments",
    "geometry_init",
    "moments_init",
    "principal_axes_candidates",
    "rotation_about",
    "rotation_grid",
    "translation_matrix",
]


def translation_matrix(t: np.ndarray) -> np.ndarray:
    m = np.eye(4)
    m[:3, 3] = np.asarray(t, float)
    return m


def rotation_about(rotation: np.ndarray, fixed_center: np.ndarray, moving_center: np.ndarray) -> np.ndarray:
    """4x4 map ``p -> R (p - c_fixed) + c_moving``."""
    m = np.eye(4)
    m[:3, :3] = rotation
    m[:3, 3] = np.asarray(moving_center, float) - rotation @ np.asarray(fixed_center, float)
    return m


def euler_matrix(angles_deg: tuple[float, float, float]) -> np.ndarray:
    """Rotation about x, then y, then z (degrees)."""
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def geometry_init(fixed: Geometry, moving: Geometry) -> np.ndarray:
    """Translation that maps the fixed grid's centre onto the moving grid's centre."""
    return translation_matrix(moving.center() - fixed.center())


def foreground_moments(points: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted centre of mass ``(3,)`` and covariance ``(3, 3)`` of LPS ``points`` ``(N, 3)``."""
    w = np.asarray(weights, float)
    total = w.sum()
    if total <= 0:
        raise MedTorchInputError("the volume has no foreground to compute moments from",
                                 "check the volume (it looks empty), or use init='geometry'")
    c = (points * w[:, None]).sum(0) / total
    d = points - c
    cov = (d * w[:, None]).T @ d / total
    return c, cov


def moments_init(fixed_center: np.ndarray, moving_center: np.ndarray) -> np.ndarray:
    """Translation that maps the fixed centre of mass onto the moving one."""
    return translation_matrix(np.asarray(moving_center, float) - np.asarray(fixed_center, float))


def principal_axes_candidates(fixed_center: np.ndarray, fixed_cov: np.ndarray, moving_center: np.ndarray,
                              moving_cov: np.ndarray) -> list[np.ndarray]:
    """Transforms aligning the principal axes (sorted by variance) of fixed and moving, one per
    proper sign flip (an eigenvector's sign is arbitrary): 4 candidates."""
    _, ef = np.linalg.eigh(fixed_cov)
    _, em = np.linalg.eigh(moving_cov)
    out = []
    for signs in itertools.product((1.0, -1.0), repeat=3):
        r = em @ np.diag(signs) @ ef.T  # fixed axis i -> moving axis i
        if np.linalg.det(r) > 0:
            out.append(rotation_about(r, fixed_center, moving_center))
    return out


def rotation_grid(max_deg: float = 40.0, step_deg: float = 20.0) -> list[np.ndarray]:
    """Rotations on a regular grid of Euler angles in ``[-max, max]`` (identity first)."""
    n = int(round(max_deg / step_deg))
    values = [step_deg * i for i in range(-n, n + 1)]
    rots = [np.eye(3)]
    for a in itertools.product(values, repeat=3):
        if a == (0.0, 0.0, 0.0) or a == (0, 0, 0):
            continue
        rots.append(euler_matrix(a))
    return rots


def _check_landmarks(fixed_points: np.ndarray, moving_points: np.ndarray, minimum: int) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(fixed_points, float)
    m = np.asarray(moving_points, float)
    if f.ndim != 2 or f.shape[1] != 3 or m.ndim != 2 or m.shape[1] != 3:
        raise MedTorchInputError(f"landmarks must be (N, 3) arrays, got {f.shape} and {m.shape}",
                                 "give one LPS point (mm) per row")
    if len(f) != len(m):
        raise MedTorchInputError(f"{len(f)} fixed landmarks but {len(m)} moving landmarks",
                                 "give the landmarks in pairs: the same number, in the same order")
    if len(f) < minimum:
        raise MedTorchInputError(f"{len(f)} landmark pairs are too few (at least {minimum} are needed)",
                                 f"place at least {minimum} corresponding points in both volumes")
    if not (np.all(np.isfinite(f)) and np.all(np.isfinite(m))):
        raise MedTorchInputError("landmarks contain NaN or infinite coordinates", "check the landmark positions")
    return f, m


def fiducial_init(fixed_points: np.ndarray, moving_points: np.ndarray, affine: bool = False) -> np.ndarray:
    """Least-squares transform (fixed -> moving) from landmark pairs.

    Rigid (Kabsch, at least 3 non-collinear pairs), or affine with ``affine=True`` (at least 4
    non-coplanar pairs).
    """
    f, m = _check_landmarks(fixed_points, moving_points, 4 if affine else 3)
    cf, cm = f.mean(0), m.mean(0)
    df, dm = f - cf, m - cm
    if np.linalg.matrix_rank(df, tol=1e-6 * max(1.0, float(np.abs(df).max()))) < (3 if affine else 2):
        raise MedTorchInputError("the landmarks are collinear" if not affine else "the landmarks are coplanar",
                                 "place the points so that they span the volume (not on one line or plane)")
    if affine:
        sol, *_ = np.linalg.lstsq(df, dm, rcond=None)
        lin = sol.T
    else:
        u, _, vt = np.linalg.svd(dm.T @ df)
        d = np.sign(np.linalg.det(u @ vt)) or 1.0
        lin = u @ np.diag([1.0, 1.0, d]) @ vt
    out = np.eye(4)
    out[:3, :3] = lin
    out[:3, 3] = cm - lin @ cf
    return out
