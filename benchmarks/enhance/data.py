"""Benchmark data: the MNI152 2009a T1 template shipped in Resources/SampleData (1 mm, uint8).

* Denoising: the central ``n^3`` of the template scaled to [0, 1], Rician noise of
  ``level * max`` (``M = |A + n1 + i n2|``, ``n1, n2 ~ N(0, sigma^2)``), seeded.
* Super-resolution: the whole template; thick slices along k (axial) simulated with a
  Gaussian slice profile of FWHM = the thick spacing (``factor`` mm), one thick slice per
  ``factor`` thin slices, centred on them (:func:`medtorch.enhance.slice_profile.degrade_along`);
  the reference is the thin volume on exactly the super-resolved grid (tested).
* Head mask: voxels of the clean volume above 5 % of its maximum, closed and hole-filled.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
T1 = REPO / "Resources" / "SampleData" / "MNI152_2009a_T1.nii.gz"
SEED = 20240607


def template() -> "object":
    from medtorch.io import read_volume

    return read_volume(T1)


def central_crop(size: int) -> np.ndarray:
    """Central ``size^3`` of the T1 template, float32 in [0, 1]."""
    a = np.asarray(template().array, dtype=np.float32) / 255.0
    starts = [(s - size) // 2 for s in a.shape]
    return np.ascontiguousarray(a[starts[0]:starts[0] + size, starts[1]:starts[1] + size, starts[2]:starts[2] + size])


def rician(clean: np.ndarray, level: float, seed: int = SEED) -> tuple[np.ndarray, float]:
    """Rician noise of ``level`` times the maximum; returns (noisy float32, sigma)."""
    rng = np.random.default_rng(seed)
    sigma = float(level) * float(clean.max())
    real = clean + rng.normal(0.0, sigma, clean.shape)
    imag = rng.normal(0.0, sigma, clean.shape)
    return np.sqrt(real**2 + imag**2).astype(np.float32), sigma


def head_mask(clean: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    m = clean > 0.05 * float(clean.max())
    m = ndimage.binary_closing(m, iterations=2)
    return ndimage.binary_fill_holes(m)


def thick_slices(factor: int, fwhm_mm: float | None = None, volume: "object | None" = None, shape: str = "gaussian"):
    """``(thick Volume, thin reference Volume)`` of the template (or ``volume``) along k.

    ``shape``: the slice profile, ``gaussian`` or ``box`` (of width ``fwhm_mm``).
    """
    import torch

    from medtorch.enhance.slice_profile import degrade_along
    from medtorch.volume import Geometry, Volume

    vol = volume if volume is not None else template()
    a = np.asarray(vol.array, dtype=np.float32)
    n = a.shape[0] // factor * factor
    thin = np.ascontiguousarray(a[:n])
    fwhm = float(factor) if fwhm_mm is None else float(fwhm_mm)
    thick = degrade_along(torch.from_numpy(thin), 0, factor, fwhm / float(vol.spacing[2]), shape).numpy()
    g = vol.geometry
    thin_geom = Geometry((g.size[0], g.size[1], n), g.origin, g.spacing, g.direction)
    # thick slice k is centred on thin slices f k .. f k + f - 1, i.e. on thin index f k + (f - 1) / 2
    origin = thin_geom.index_to_physical(np.array([[0.0, 0.0, (factor - 1) / 2.0]]))[0]
    spacing = np.array(g.spacing, dtype=float)
    spacing[2] *= factor
    thick_geom = Geometry((g.size[0], g.size[1], thick.shape[0]), origin, spacing, g.direction)
    return Volume(thick, thick_geom), Volume(thin, thin_geom)
