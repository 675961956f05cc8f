"""Synthetic volumes with known geometry and content, for self-tests, tests and the demo.

Everything here is deterministic given its ``seed``.
"""

from __future__ import annotations

import numpy as np

from medtorch.volume import Geometry, Volume


def rotation_matrix(angles_deg: tuple[float, float, float]) -> np.ndarray:
    """Rotation about x, then y, then z (degrees), as a 3x3 matrix."""
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def oblique_geometry(size: tuple[int, int, int] = (40, 36, 24), spacing: tuple[float, float, float] = (1.0, 1.2, 2.0),
                     angles_deg: tuple[float, float, float] = (12.0, -8.0, 20.0),
                     center: tuple[float, float, float] = (10.0, -15.0, 30.0)) -> Geometry:
    """An oblique, anisotropic grid centred on ``center`` (LPS mm)."""
    direction = rotation_matrix(angles_deg)
    spacing_arr = np.asarray(spacing, float)
    half_extent = direction @ (spacing_arr * (np.asarray(size, float) - 1) / 2.0)
    return Geometry(size=size, origin=np.asarray(center, float) - half_extent, spacing=spacing_arr, direction=direction)


def physical_grid(geometry: Geometry) -> np.ndarray:
    """LPS coordinates of every voxel centre, shape ``[z, y, x, 3]``."""
    k, j, i = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in geometry.shape_zyx), indexing="ij")
    ijk = np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1)
    return geometry.index_to_physical(ijk).reshape(geometry.shape_zyx + (3,))


def blob_phantom(geometry: Geometry, center: tuple[float, float, float] | None = None, seed: int = 0,
                 noise: float = 0.0, world_shift: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> Volume:
    """A smooth head-like phantom: an ellipsoid 'head' holding a bright 'lesion' and a dark
    'ventricle', defined in physical space (so it looks the same on any grid).

    ``world_shift`` moves the whole object by that LPS vector (mm): a known misalignment.
    Intensities: background 0, head ~100, lesion ~200, ventricle ~30, plus Gaussian noise
    of ``noise`` standard deviation.
    """
    c = geometry.center() if center is None else np.asarray(center, float)
    p = physical_grid(geometry) - c - np.asarray(world_shift, float)

    def soft(inside_distance: np.ndarray, width: float = 1.0) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-inside_distance / width))

    head = soft(1.0 - np.sqrt((p[..., 0] / 16) ** 2 + (p[..., 1] / 14) ** 2 + (p[..., 2] / 18) ** 2), 0.05)
    lesion = soft(5.0 - np.linalg.norm(p - np.array([5.0, -3.0, 4.0]), axis=-1), 0.7)
    vent = soft(4.0 - np.linalg.norm((p - np.array([-4.0, 2.0, -3.0])) / np.array([1.0, 1.6, 1.0]), axis=-1), 0.7)
    arr = 100.0 * head + 100.0 * lesion * head - 70.0 * vent * head
    if noise > 0:
        arr = arr + np.random.default_rng(seed).normal(0.0, noise, arr.shape)
    return Volume(arr.astype(np.float32), geometry, "scalar", {"phantom": "blob", "seed": seed, "noise": noise})


def lesion_mask(geometry: Geometry, center: tuple[float, float, float] | None = None) -> np.ndarray:
    """Ground truth of :func:`blob_phantom`'s lesion (a 5 mm sphere), boolean ``[z, y, x]``."""
    c = geometry.center() if center is None else np.asarray(center, float)
    p = physical_grid(geometry) - c
    return np.linalg.norm(p - np.array([5.0, -3.0, 4.0]), axis=-1) <= 5.0
