"""Small synthetic registration pairs with a known transform (tests, self-tests, examples).

:func:`synthetic_pair` paints the same anatomy -- an ellipsoidal "head" holding eight
structures at asymmetric positions, so that no rotation maps it onto itself -- in two
contrasts on two grids: the fixed volume, and the moving volume seen through a known
transform ``T(p) = A(p + u(p))`` (ITK convention: fixed point -> moving point). The moving
contrast is a non-monotonic relabelling of the fixed one, as between CT and MRI, so only a
multimodal similarity (MI, MIND) can align them; ``same_contrast=True`` gives a
same-modality pair (for NCC, LNCC, MSE). Everything is deterministic given ``seed``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medtorch.volume import Geometry, Volume

__all__ = ["SyntheticPair", "synthetic_pair", "paint"]

#: Structures: centre (LPS mm, from the head centre), radii (mm).
_STRUCTURES = (
    ((10.0, -8.0, 6.0), (8.0, 6.0, 7.0)),
    ((-13.0, 6.0, -5.0), (6.0, 7.0, 5.0)),
    ((4.0, 16.0, -9.0), (7.0, 5.0, 6.0)),
    ((-7.0, -15.0, 11.0), (5.0, 5.0, 6.0)),
    ((17.0, 12.0, 10.0), (4.0, 6.0, 4.0)),
    ((-18.0, -6.0, 12.0), (3.5, 4.0, 5.0)),
    ((2.0, -24.0, -10.0), (6.0, 3.5, 4.0)),
    ((-4.0, 4.0, 16.0), (9.0, 4.0, 3.5)),
)
_HEAD_RADII = (30.0, 36.0, 27.0)
#: Intensities: background, head, then each structure.
_FIXED_VALUES = (0.0, 100.0, 200.0, 40.0, 150.0, 70.0, 180.0, 20.0, 130.0, 60.0)
_MOVING_VALUES = (0.0, 60.0, 20.0, 180.0, 90.0, 240.0, 120.0, 150.0, 30.0, 210.0)


@dataclass
class SyntheticPair:
    """A fixed and a moving volume, the truth ``T(p) = A(p + u(p))``, and landmarks in the fixed head."""

    fixed: Volume
    moving: Volume
    affine: np.ndarray
    displacement: Volume | None
    landmarks: np.ndarray

    def truth(self, points: np.ndarray) -> np.ndarray:
        """``T(p)`` for ``(N, 3)`` fixed LPS points."""
        p = np.asarray(points, float).reshape(-1, 3)
        if self.displacement is not None:
            p = p + _field_at(self.displacement, p)
        return p @ self.affine[:3, :3].T + self.affine[:3, 3]

    def tre(self, mapped: np.ndarray) -> np.ndarray:
        """Per-landmark error (mm) of estimated moving positions of :attr:`landmarks`."""
        return np.linalg.norm(np.asarray(mapped, float) - self.truth(self.landmarks), axis=1)


def _soft(d: np.ndarray, width: float = 0.8) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(d / width, -50, 50)))


def paint(points: np.ndarray, values: tuple[float, ...]) -> np.ndarray:
    """Intensities of the anatomy at ``(..., 3)`` points relative to the head centre (mm)."""
    r = np.linalg.norm(points / np.asarray(_HEAD_RADII), axis=-1)
    head = _soft((1.0 - r) * 30.0)
    out = values[0] + (values[1] - values[0]) * head
    for (c, radii), v in zip(_STRUCTURES, values[2:]):
        rr = np.linalg.norm((points - np.asarray(c)) / np.asarray(radii), axis=-1)
        inside = _soft((1.0 - rr) * 6.0) * head
        out = out + (v - values[1]) * inside
    return out


def _grid_points(geometry: Geometry) -> np.ndarray:
    k, j, i = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in geometry.shape_zyx), indexing="ij")
    ijk = np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1)
    return geometry.index_to_physical(ijk).reshape(geometry.shape_zyx + (3,))


def _field_at(field: Volume, points: np.ndarray) -> np.ndarray:
    import torch

    from medtorch.resample import transform_points

    pts = torch.from_numpy(np.asarray(points, float).reshape(-1, 3).copy())
    with torch.no_grad():
        return (transform_points(pts, field) - pts).numpy()


def _rotation(angles_deg: np.ndarray) -> np.ndarray:
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def synthetic_pair(mode: str = "rigid", seed: int = 0, size: int = 64, spacing: float = 1.6,
                   max_angle_deg: float = 10.0, max_shift_mm: float = 8.0, max_scale: float = 0.08,
                   deform_mm: float = 3.0, noise: float = 2.0, same_contrast: bool = False,
                   center: tuple[float, float, float] = (12.0, -20.0, 30.0)) -> SyntheticPair:
    """A fixed/moving pair with a known transform (see the module docstring).

    ``mode``: ``rigid`` (random rotation and shift), ``affine`` (plus scales/shears up to
    ``max_scale``) or ``deformable`` (plus a smooth field of up to ``deform_mm``). The fixed
    grid is ``size^3`` voxels of ``spacing`` mm, centred on ``center``; the moving grid is
    oblique, anisotropic and offset.
    """
    rng = np.random.default_rng(seed)
    c = np.asarray(center, float)
    n = int(size)
    fixed_geom = Geometry((n, n, n), c - spacing * (n - 1) / 2.0, (spacing,) * 3, np.eye(3))
    lin = _rotation(rng.uniform(-max_angle_deg, max_angle_deg, 3))
    if mode in ("affine", "deformable"):
        shear = np.eye(3)
        shear[0, 1], shear[0, 2], shear[1, 2] = rng.uniform(-max_scale / 2, max_scale / 2, 3)
        lin = lin @ shear @ np.diag(1.0 + rng.uniform(-max_scale, max_scale, 3))
    affine = np.eye(4)
    affine[:3, :3] = lin
    affine[:3, 3] = c + rng.uniform(-max_shift_mm, max_shift_mm, 3) - lin @ c
    field = None
    if mode == "deformable":
        fg = Geometry((12, 12, 12), c - 6.0 * (11) / 2.0 * spacing, (6.0 * spacing,) * 3, np.eye(3))
        pts = _grid_points(fg) - c
        disp = np.zeros(fg.shape_zyx + (3,))
        for _ in range(4):  # a few smooth Gaussian bumps
            mu = rng.uniform(-20, 20, 3)
            amp = rng.normal(0, 1, 3)
            disp += amp * np.exp(-np.sum((pts - mu) ** 2, axis=-1) / (2 * 14.0**2))[..., None]
        disp *= deform_mm / max(np.linalg.norm(disp, axis=-1).max(), 1e-9)
        field = Volume(disp, fg, "vector")

    # the moving grid: oblique, anisotropic, shifted; the anatomy seen through T^-1
    m_dir = _rotation(np.array([4.0, -3.0, 7.0]))
    m_spacing = np.array([spacing * 0.9, spacing, spacing * 1.3])
    m_size = np.round(np.array([n, n, n]) * spacing / m_spacing).astype(int) + 4
    m_center = affine[:3, :3] @ c + affine[:3, 3]
    moving_geom = Geometry(tuple(int(v) for v in m_size), m_center - m_dir @ (m_spacing * (m_size - 1) / 2.0),
                           m_spacing, m_dir)
    q = _grid_points(moving_geom).reshape(-1, 3)
    inv = np.linalg.inv(affine)
    p = q @ inv[:3, :3].T + inv[:3, 3]
    if field is not None:  # invert p + u(p) = A^-1 q by fixed-point iteration (|grad u| << 1)
        import torch

        from medtorch.resample import DisplacementField, sample

        df = DisplacementField.from_volume(field, dtype=torch.float64)
        target = torch.from_numpy(p.copy())
        pt = target.clone()
        with torch.no_grad():
            for _ in range(12):
                pt = target - sample(df.displacement, pt, df.geometry, "linear", 0.0).T
        p = pt.numpy()
    fixed_vals = paint(_grid_points(fixed_geom) - c, _FIXED_VALUES)
    moving_vals = paint(p.reshape(moving_geom.shape_zyx + (3,)) - c, _FIXED_VALUES if same_contrast else _MOVING_VALUES)
    if noise > 0:
        fixed_vals = fixed_vals + rng.normal(0, noise, fixed_vals.shape)
        moving_vals = moving_vals + rng.normal(0, noise, moving_vals.shape)
    fixed = Volume(fixed_vals.astype(np.float32), fixed_geom, "scalar", {"synthetic": "fixed", "seed": seed})
    moving = Volume(moving_vals.astype(np.float32), moving_geom, "scalar", {"synthetic": "moving", "seed": seed})
    landmarks = c + rng.uniform(-1, 1, (24, 3)) * np.asarray(_HEAD_RADII) * 0.55
    return SyntheticPair(fixed, moving, affine, field, landmarks)
