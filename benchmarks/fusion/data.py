"""Benchmark data: 3D fusion pairs made from the real MNI152 2009a template (Resources/SampleData).

The anatomical source is the template's T1 itself. The second modality of each pair is
synthesised from the template's own tissue maps (so both sources show one head, aligned):

* **CT-like** (Hounsfield units): air -1000 outside the head; brain tissue by partial
  volume (grey matter 40, white matter 28, CSF 8 HU); around the brain, by distance from
  its surface, 2 mm of CSF/dura (10 HU), a 7 mm skull (1000 HU at the inner and outer
  tables, 600 HU in the diploe) and 4 mm of scalp (40 HU); Gaussian noise of 8 HU, a
  0.6 mm blur. The skull is exactly what a CT adds to a skull-stripped T1.
* **PET-like** (FDG uptake, arbitrary units): grey matter 1.0, white matter 0.3, CSF 0.05,
  and a hypermetabolic sphere (radius 7 mm, 2.5) in the right frontal white matter;
  counting noise (Gaussian, variance 0.36 x activity) and then a 6 mm FWHM blur (PET
  resolution), so the noise is correlated as in reconstructed images; 0 outside the head.
* **SPECT-like** (perfusion): grey matter 1.0, white matter 0.45, CSF 0.05; noise of
  variance 1.0 x activity, then a 12 mm FWHM blur.

The volumes are cropped to the head's bounding box plus a 16 mm margin (the scoring cost
grows with the voxel count; the crop keeps every tissue and some air around it). All
random parts use fixed seeds (recorded in the report).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from medtorch.volume import Geometry, Volume

SEED = 20240601
FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))


@dataclass
class TemplatePair:
    name: str  # "CT-MRI", "PET-MRI", "SPECT-MRI"
    fixed: Volume  # T1 (MR)
    moving: Volume  # the synthetic modality
    moving_modality: str  # "CT", "PT", "NM"
    color_map: str | None


def _smooth(arr: np.ndarray, sigma_mm: float, spacing: float) -> np.ndarray:
    from scipy import ndimage

    return ndimage.gaussian_filter(arr.astype(np.float32), sigma_mm / spacing)


def _crop_box(mask: np.ndarray, margin: int) -> tuple[slice, slice, slice]:
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(axis=0) - margin, 0)
    hi = np.minimum(idx.max(axis=0) + margin + 1, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))  # type: ignore[return-value]


def _cropped_geometry(geom: Geometry, box: tuple[slice, slice, slice]) -> Geometry:
    start_ijk = np.array([box[2].start, box[1].start, box[0].start], dtype=float)
    origin = geom.index_to_physical(start_ijk)[0]
    size = (box[2].stop - box[2].start, box[1].stop - box[1].start, box[0].stop - box[0].start)
    return Geometry(size, origin, geom.spacing, geom.direction)


def template_pairs(spacing_mm: float = 1.0, margin_mm: float = 16.0) -> list[TemplatePair]:
    """The three template pairs (CT-MRI, PET-MRI, SPECT-MRI) at ``spacing_mm``."""
    from scipy import ndimage

    from medtorch.demo import load_sample_data

    data = load_sample_data(spacing_mm=spacing_mm)
    s = float(spacing_mm)
    brain = data.head_mask
    gm, wm = data.gm.array, data.wm.array
    csf = np.clip(brain.astype(np.float32) - gm - wm, 0.0, 1.0)
    box = _crop_box(brain, int(round(margin_mm / s)))
    geom = _cropped_geometry(data.geometry, box)
    rng = np.random.default_rng(SEED)

    # CT-like: tissue HU inside the brain, then layers by distance from the brain surface
    dist = ndimage.distance_transform_edt(~brain, sampling=(s, s, s))
    ct = np.full(brain.shape, -1000.0, np.float32)
    inside = brain
    ct[inside] = (40.0 * gm + 28.0 * wm + 8.0 * csf)[inside] / np.maximum((gm + wm + csf)[inside], 1e-3)
    layer = lambda lo, hi: (~brain) & (dist > lo) & (dist <= hi)
    ct[layer(0.0, 2.0)] = 10.0
    bone = layer(2.0, 9.0)
    depth = np.clip((dist - 2.0) / 7.0, 0.0, 1.0)
    ct[bone] = (600.0 + 400.0 * np.abs(2.0 * depth - 1.0))[bone]  # tables 1000 HU, diploe 600 HU
    ct[layer(9.0, 13.0)] = 40.0
    ct = _smooth(ct, 0.6, s) + rng.normal(0.0, 8.0, ct.shape).astype(np.float32)

    def functional(weights: tuple[float, float, float], fwhm: float, noise: float, lesion: bool) -> np.ndarray:
        act = weights[0] * gm + weights[1] * wm + weights[2] * csf
        if lesion:
            zyx = np.indices(brain.shape, dtype=np.float32)
            # right frontal white matter of the MNI template (LPS: right is -x, anterior is -y)
            centre_lps = np.array([-24.0, -30.0, 20.0])
            c_ijk = data.geometry.physical_to_index(centre_lps)[0]
            r2 = sum(((zyx[k] - c_ijk[2 - k]) * s) ** 2 for k in range(3))
            act = np.where(r2 <= 7.0 ** 2, 2.5, act)
        act = (act * brain).astype(np.float32)
        # counting noise (variance ~ activity) before the blur: correlated, like reconstructed PET/SPECT
        act = act + noise * np.sqrt(act) * rng.normal(0.0, 1.0, act.shape).astype(np.float32)
        act = _smooth(np.clip(act, 0.0, None), fwhm * FWHM_TO_SIGMA, s)
        return np.clip(act, 0.0, None)

    pet = functional((1.0, 0.3, 0.05), 6.0, 0.6, True)
    spect = functional((1.0, 0.45, 0.05), 12.0, 1.0, False)
    t1 = data.t1.array

    def vol(arr: np.ndarray, modality: str, what: str) -> Volume:
        return Volume(np.ascontiguousarray(arr[box], dtype=np.float32), geom, "scalar",
                      {"Modality": modality, "contrast": what, "seed": str(SEED)})

    fixed = vol(t1, "MR", "MNI152 2009a T1")
    return [
        TemplatePair("CT-MRI", fixed, vol(ct, "CT", "CT-like (synthetic, HU)"), "CT", None),
        TemplatePair("PET-MRI", fixed, vol(pet, "PT", "PET-like (synthetic FDG)"), "PT", "hot"),
        TemplatePair("SPECT-MRI", fixed, vol(spect, "NM", "SPECT-like (synthetic perfusion)"), "NM", "rainbow"),
    ]
