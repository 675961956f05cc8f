"""Brain-tumor phantoms with known truth, and seed strokes as a user draws them.

A phantom is a multi-channel MRI-like study (T1, T1c, T2, FLAIR) of a brain holding a
glioma-like tumor with four compartments, as the BraTS challenge describes them:

* **necrosis** (dark in T1c, bright in T2) and **non-enhancing solid core**, which BraTS
  counts together as label 1 (NCR);
* an **enhancing rim** (bright in T1c), label 3 in BraTS 2023 (4 in 2021);
* **oedema** (bright in FLAIR and T2, slightly dark in T1), label 2, which spreads through
  the parenchyma but not into CSF.

The tissue around it is either the real MNI ICBM152 2009a template shipped in
``Resources/SampleData`` (:func:`mni_tissue`) or a small synthetic head
(:func:`synthetic_tissue`, for tests and self-tests). Images get a smooth multiplicative
bias field and Rician noise whose standard deviation is a fraction of the brightest
tissue's intensity (BrainWeb's convention: "10 % noise" is ``noise=0.10``).

:func:`stroke_seeds` draws seeds as a user would in Slicer's Segment Editor: strokes on
the three orthogonal slices through the tumor centre, inside each class and around the
tumor for the background.

Everything is deterministic given ``seed``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from medtorch.errors import MedTorchInputError
from medtorch.volume import Geometry, Volume

__all__ = [
    "CHANNELS",
    "COMPARTMENTS",
    "Tissue",
    "TumorPhantom",
    "mni_tissue",
    "synthetic_tissue",
    "make_tumor_phantom",
    "stroke_seeds",
    "SAMPLE_DATA",
    "FAMILY_RANGES",
    "random_tumor_phantom",
    "family_phantom",
    "phantom_family",
]

#: Where the MNI template lives in a checkout.
SAMPLE_DATA = Path(__file__).resolve().parents[2] / "Resources" / "SampleData"

CHANNELS = ("T1", "T1c", "T2", "FLAIR")
#: Compartment values of :attr:`TumorPhantom.compartments`.
COMPARTMENTS = {1: "necrosis", 2: "non-enhancing core", 3: "enhancing rim", 4: "oedema"}

# Intensities (arbitrary units, white matter of T1 ~ 0.8): tissue csf, gm, wm; tumor
# necrosis, non-enhancing core, enhancing, oedema. T1 and T1c tissue come from the
# template's own T1 when it is used.
_TISSUE = {"T1": (0.18, 0.6, 0.8), "T1c": (0.18, 0.6, 0.8), "T2": (1.0, 0.55, 0.4), "FLAIR": (0.1, 0.6, 0.45)}
_TUMOR = {"T1": (0.25, 0.45, 0.5, 0.55), "T1c": (0.25, 0.5, 1.1, 0.55), "T2": (0.95, 0.7, 0.65, 0.85),
           "FLAIR": (0.4, 0.8, 0.75, 0.95)}
# Oedema fades towards its outer edge (diffuse infiltration): its intensity there.
_OEDEMA_EDGE = {"T1": 0.62, "T1c": 0.62, "T2": 0.68, "FLAIR": 0.74}
#: Depth (mm) over which oedema reaches its full intensity, and the relative amplitude of
#: the smooth texture inside every tumor compartment.
_OEDEMA_FADE_MM = 8.0
_TEXTURE = 0.06


@dataclass
class Tissue:
    """Tissue probability maps ``[z, y, x]`` in [0, 1] on one grid, and optionally a T1 image."""

    geometry: Geometry
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    t1: np.ndarray | None = None  # a real T1 in [0, ~1] (WM ~ 0.8), else synthesised

    @property
    def brain(self) -> np.ndarray:
        return (self.gm + self.wm + self.csf) > 0.5


@dataclass
class TumorPhantom:
    """A phantom study: ``channels`` by name, the BraTS-2023 ``truth`` (1 NCR, 2 ED, 3 ET),
    the four ``compartments`` (see :data:`COMPARTMENTS`) and the tumor centre (LPS mm)."""

    channels: dict[str, Volume]
    truth: Volume
    compartments: Volume
    center_lps: np.ndarray
    parameters: dict[str, Any] = field(default_factory=dict)

    def crop(self, lo: Sequence[int], hi: Sequence[int]) -> "TumorPhantom":
        """The phantom inside voxel box ``[lo, hi)`` (``z, y, x``), on the matching sub-grid."""
        sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        g = self.truth.geometry
        origin = g.index_to_physical(np.array([[lo[2], lo[1], lo[0]]], float))[0]
        geom = Geometry((hi[2] - lo[2], hi[1] - lo[1], hi[0] - lo[0]), origin, g.spacing, g.direction)

        def sub(v: Volume) -> Volume:
            return Volume(np.ascontiguousarray(v.array[sl]), geom, v.kind, dict(v.metadata))

        return TumorPhantom({k: sub(v) for k, v in self.channels.items()}, sub(self.truth), sub(self.compartments),
                            self.center_lps.copy(), dict(self.parameters))


# -- tissue ----------------------------------------------------------------------------------------


def mni_tissue(folder: str | Path | None = None) -> Tissue:
    """The MNI ICBM152 2009a template at 1 mm (T1, GM, WM) as :class:`Tissue`.

    CSF is the rest of the (skull-stripped) T1's brain mask.
    """
    from scipy import ndimage

    from medtorch.io import read_volume

    d = Path(folder) if folder is not None else SAMPLE_DATA
    paths = {n: d / f"MNI152_2009a_{n}.nii.gz" for n in ("T1", "GM", "WM")}
    missing = [str(p) for p in paths.values() if not p.exists()]
    if missing:
        raise MedTorchInputError(f"the MNI template files are missing: {', '.join(missing)}",
                                 "run from a MedTorch checkout (Resources/SampleData) or give the folder")
    t1v = read_volume(paths["T1"])
    t1 = t1v.array.astype(np.float32)
    gm = read_volume(paths["GM"]).array.astype(np.float32) / 255.0
    wm = read_volume(paths["WM"]).array.astype(np.float32) / 255.0
    wm_level = float(np.median(t1[wm > 0.9]))
    head = ndimage.binary_fill_holes(ndimage.binary_closing(t1 > 0.1 * wm_level, iterations=2))
    csf = np.clip(head.astype(np.float32) - gm - wm, 0.0, 1.0)
    return Tissue(t1v.geometry, gm, wm, csf, (t1 / wm_level * 0.8).astype(np.float32))


def _smooth_field(shape: tuple[int, ...], sigma_vox: Sequence[float], rng: np.random.Generator) -> np.ndarray:
    """Gaussian-smoothed white noise, rescaled to zero mean and unit standard deviation."""
    from scipy import ndimage

    f = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_vox, mode="wrap")
    return ((f - f.mean()) / (f.std() + 1e-12)).astype(np.float32)


def synthetic_tissue(geometry: Geometry, seed: int = 0) -> Tissue:
    """A small synthetic head on ``geometry``: an ellipsoidal brain with a folded grey-matter
    ribbon, white matter inside, CSF around it and two ventricles. Deterministic in ``seed``."""
    from medtorch.phantoms import physical_grid

    rng = np.random.default_rng(seed)
    p = physical_grid(geometry) - geometry.center()
    ext = np.asarray(geometry.spacing) * (np.asarray(geometry.size) - 1) / 2.0
    semi = 0.92 * ext
    rr = np.sqrt(((p / semi) ** 2).sum(-1))
    fold = _smooth_field(geometry.shape_zyx, 2.5 / np.asarray(geometry.spacing)[::-1], rng)
    outer = np.clip((1.0 - rr) * 12.0, 0.0, 1.0)                      # inside the skull
    brain = np.clip((0.93 - rr + 0.02 * fold) * 12.0, 0.0, 1.0)
    white = np.clip((0.72 - rr + 0.08 * fold) * 10.0, 0.0, 1.0)
    vent_c = np.array([-0.25, 0.05, 0.1]) * semi
    vent = np.clip((1.0 - np.linalg.norm((p - vent_c) / (semi * np.array([0.12, 0.3, 0.12])), axis=-1)) * 4.0, 0, 1)
    vent2 = np.clip((1.0 - np.linalg.norm((p + vent_c * np.array([1, -1, -1])) / (semi * np.array([0.1, 0.25, 0.1])),
                                          axis=-1)) * 4.0, 0, 1)
    wm = white * (1.0 - np.maximum(vent, vent2))
    gm = np.clip(brain - white, 0.0, 1.0) * (1.0 - np.maximum(vent, vent2))
    csf = np.clip(outer - gm - wm, 0.0, 1.0)
    return Tissue(geometry, gm.astype(np.float32), wm.astype(np.float32), csf.astype(np.float32), None)


# -- the tumor ------------------------------------------------------------------------------------


def _bias_field(geometry: Geometry, strength: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth multiplicative field ``1 +- strength`` over the grid (linear + quadratic terms
    of the voxel coordinates scaled to [-1, 1], built separably)."""
    axes = [np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in geometry.shape_zyx]
    u = rng.standard_normal(3)
    u /= np.linalg.norm(u)
    a = rng.uniform(-1.0, 1.0, 3)
    f = np.zeros(geometry.shape_zyx, np.float32)
    shapes = [(-1, 1, 1), (1, -1, 1), (1, 1, -1)]
    for ax, x, shp in zip(range(3), axes, shapes):
        f += (0.6 * u[ax] * x + 0.4 * a[ax] * (x * x - 1.0 / 3.0)).reshape(shp)
    f /= np.abs(f).max() + 1e-12
    return (1.0 + strength * f).astype(np.float32)


def make_tumor_phantom(
    tissue: Tissue,
    center_lps: Sequence[float] | None = None,
    noise: float = 0.10,
    bias: float = 0.15,
    seed: int = 0,
    core_radius_mm: float = 10.0,
    rim_mm: float = 4.0,
    oedema_radius_mm: float = 24.0,
    irregularity: float = 0.18,
    psf_mm: float = 0.6,
) -> TumorPhantom:
    """A tumor with necrosis, non-enhancing core, enhancing rim and oedema in ``tissue``.

    Args:
        tissue: the brain around the tumor (:func:`mni_tissue` or :func:`synthetic_tissue`).
        center_lps: tumor centre (LPS mm); default: the grid centre.
        noise: Rician noise standard deviation as a fraction of the brightest intensity.
        bias: amplitude of the multiplicative bias field (0.15: intensities vary +-15 %).
        seed: random seed for shape, bias and noise.
        core_radius_mm, rim_mm, oedema_radius_mm: mean sizes; shapes are made irregular
            by smooth random fields of relative amplitude ``irregularity``.
        psf_mm: Gaussian blur (standard deviation, mm) of the clean images (partial volume).

    Returns:
        A :class:`TumorPhantom`; channels are float32 scalar volumes on ``tissue.geometry``.
    """
    from scipy import ndimage

    from medtorch.phantoms import physical_grid

    if not 0.0 <= noise < 1.0 or not 0.0 <= bias < 1.0:
        raise MedTorchInputError(f"noise {noise} and bias {bias} must lie in [0, 1)", "give fractions, e.g. 0.1")
    g = tissue.geometry
    rng = np.random.default_rng(seed)
    c = g.center() if center_lps is None else np.asarray(center_lps, float)
    # the tumor lives in a box around its centre: shapes are computed there only
    reach = 2.0 * (oedema_radius_mm + 4.0)
    corners = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], float) * reach + c
    ijk = g.physical_to_index(corners)
    lo = np.clip(np.floor(ijk.min(0)).astype(int), 0, np.asarray(g.size) - 1)
    hi = np.clip(np.ceil(ijk.max(0)).astype(int) + 1, 1, np.asarray(g.size))
    if np.any(hi <= lo):
        raise MedTorchInputError("the tumor centre lies outside the volume", "give a centre inside the brain")
    box = (slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0]))
    sub = Geometry(tuple(int(v) for v in hi - lo), g.index_to_physical(lo[None].astype(float))[0], g.spacing,
                   g.direction)
    p = physical_grid(sub) - c
    r = np.linalg.norm(p, axis=-1).astype(np.float32)
    sig = 6.0 / np.asarray(g.spacing)[::-1]
    f1, f2, f3, f4 = (_smooth_field(sub.shape_zyx, sig, rng) for _ in range(4))
    f1, f2, f3 = (np.clip(f, -2.5, 2.5) for f in (f1, f2, f3))
    r_core = r * (1.0 + irregularity * f1)
    core = r_core < core_radius_mm
    enh = ~core & (r_core < core_radius_mm + rim_mm * (1.0 + 0.35 * f2))
    parenchyma = (tissue.gm[box] + tissue.wm[box]) > 0.5
    r_oed = r * (1.0 + 1.5 * irregularity * f3) - 4.0 * (tissue.wm[box] - 0.5)
    oed = (r_oed < oedema_radius_mm) & parenchyma & ~core & ~enh
    solid = core & (f4 > -0.2) & (r_core > 0.45 * core_radius_mm)
    sub_comp = np.zeros(sub.shape_zyx, np.uint8)
    sub_comp[core] = 1
    sub_comp[solid] = 2
    sub_comp[enh] = 3
    sub_comp[oed] = 4
    # keep the tumor one piece: the oedema component touching the rim, drop islands
    lab, n = ndimage.label(sub_comp > 0)
    if n > 1:
        keep = np.bincount(lab[(sub_comp == 1) | (sub_comp == 3)].ravel(), minlength=n + 1)
        keep[0] = 0
        sub_comp[(lab > 0) & (keep[lab] == 0)] = 0
    comp = np.zeros(g.shape_zyx, np.uint8)
    comp[box] = sub_comp
    # oedema depth below its outer edge (mm, approximate) and tumor texture, in the box
    fade = np.zeros(g.shape_zyx, np.float32)
    fade[box] = np.clip((oedema_radius_mm - r_oed) / _OEDEMA_FADE_MM, 0.0, 1.0)
    texture = np.ones(g.shape_zyx, np.float32)
    texture[box] = 1.0 + _TEXTURE * np.clip(_smooth_field(sub.shape_zyx, 3.0 / np.asarray(g.spacing)[::-1], rng),
                                            -2.5, 2.5)
    truth = np.zeros_like(comp)
    truth[(comp == 1) | (comp == 2)] = 1
    truth[comp == 4] = 2
    truth[comp == 3] = 3

    channels: dict[str, Volume] = {}
    for name in CHANNELS:
        csf_v, gm_v, wm_v = _TISSUE[name]
        if name in ("T1", "T1c") and tissue.t1 is not None:
            img = tissue.t1.astype(np.float32).copy()
        else:
            img = (csf_v * tissue.csf + gm_v * tissue.gm + wm_v * tissue.wm).astype(np.float32)
        for value, inten in zip((1, 2, 3, 4), _TUMOR[name]):
            m = comp == value
            if value == 4:
                edge = _OEDEMA_EDGE[name]
                img[m] = (edge + (inten - edge) * fade[m]) * texture[m]
            else:
                img[m] = inten * texture[m]
        if psf_mm > 0:
            img = ndimage.gaussian_filter(img, psf_mm / np.asarray(g.spacing)[::-1])
        img *= _bias_field(g, bias, rng)
        brightest = float(np.percentile(img[img > 0.05], 99.5)) if (img > 0.05).any() else 1.0
        sd = noise * brightest
        if sd > 0:
            a = img + rng.normal(0.0, sd, img.shape).astype(np.float32)
            b = rng.normal(0.0, sd, img.shape).astype(np.float32)
            img = np.sqrt(a * a + b * b)
        channels[name] = Volume(img.astype(np.float32), g, "scalar",
                                {"phantom": "tumor", "channel": name, "noise": noise, "seed": seed})
    params = {"noise": noise, "bias": bias, "seed": seed, "core_radius_mm": core_radius_mm, "rim_mm": rim_mm,
              "oedema_radius_mm": oedema_radius_mm}
    return TumorPhantom(channels, Volume(truth, g, "label", {"labels": "BraTS 2023: 1 NCR, 2 ED, 3 ET"}),
                        Volume(comp, g, "label"), c, params)


# -- seeds -----------------------------------------------------------------------------------------


def _disk_line_mask(shape: tuple[int, int], p0: np.ndarray, p1: np.ndarray, width: float) -> np.ndarray:
    """2D mask of the segment p0-p1 (row, col), ``width`` pixels thick."""
    rr, cc = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    d = p1 - p0
    length2 = float(d @ d) + 1e-12
    t = np.clip(((rr - p0[0]) * d[0] + (cc - p0[1]) * d[1]) / length2, 0.0, 1.0)
    dist = np.hypot(rr - (p0[0] + t * d[0]), cc - (p0[1] + t * d[1]))
    return dist <= width / 2.0


def stroke_seeds(
    truth: Volume,
    classes: Sequence[int] | None = None,
    center_zyx: Sequence[int] | np.ndarray | None = None,
    strokes_per_class: int = 3,
    background_margin_mm: tuple[float, float] = (4.0, 8.0),
    erode_mm: float = 1.5,
    width: float = 2.0,
    seed: int = 0,
) -> Volume:
    """Seed strokes on the axial, coronal and sagittal slices through the tumor centre.

    For each tumor class (the non-zero values of ``truth``, or ``classes``) a few straight
    strokes are drawn inside the class (eroded by ``erode_mm``, so a stroke never crosses a
    boundary); the background gets an arc-like stroke in a band ``background_margin_mm``
    outside the tumor plus a few short strokes. The background is the last class, value
    ``max(classes) + 1``, as :func:`~medtorch.segment.seeded.seeded_segment` expects.

    Returns:
        A label volume on ``truth``'s grid: 0 unlabelled, class values, background last.
    """
    from scipy import ndimage

    t = truth.array
    vals = sorted(int(v) for v in (classes if classes is not None else np.unique(t[t > 0])))
    if not vals:
        raise MedTorchInputError("the truth has no labelled voxel", "give a label map with the tumor")
    bg_value = max(vals) + 1
    rng = np.random.default_rng(seed)
    sp = np.asarray(truth.geometry.spacing)[::-1]  # z, y, x
    tumor = t > 0
    if center_zyx is None:
        center_zyx = np.round(ndimage.center_of_mass(tumor)).astype(int)
    cz = [int(v) for v in center_zyx]
    dist_out = ndimage.distance_transform_edt(~tumor, sampling=sp)
    mid_margin = 0.5 * (background_margin_mm[0] + background_margin_mm[1])
    ring = np.abs(dist_out - mid_margin) <= max(width * float(sp.min()), 0.5 * (background_margin_mm[1] - background_margin_mm[0])) / 2.0
    out = np.zeros(t.shape, np.uint8)
    for axis in range(3):
        sl = [slice(None)] * 3
        sl[axis] = slice(cz[axis], cz[axis] + 1)
        plane_sp = np.delete(sp, axis)
        tslice = t[tuple(sl)].squeeze(axis)
        seeds2d = np.zeros(tslice.shape, np.uint8)
        for v in vals:
            region = tslice == v
            r_px = np.maximum(np.round(erode_mm / plane_sp).astype(int), 0)
            if r_px.max() > 0:
                st = np.zeros((2 * r_px[0] + 1, 2 * r_px[1] + 1), bool)
                yy, xx = np.ogrid[-r_px[0]:r_px[0] + 1, -r_px[1]:r_px[1] + 1]
                st[(yy / max(r_px[0], 1)) ** 2 + (xx / max(r_px[1], 1)) ** 2 <= 1.0] = True
                inner = ndimage.binary_erosion(region, st)
            else:
                inner = region
            if inner.sum() < 3:
                inner = region
            pts = np.argwhere(inner)
            if len(pts) == 0:
                continue
            for _ in range(strokes_per_class):
                a = pts[rng.integers(len(pts))].astype(float)
                # the farthest point of the region from a, along a random direction cone
                d = pts - a
                ang = rng.uniform(0, np.pi)
                u = np.array([np.cos(ang), np.sin(ang)])
                along = d @ u
                ok = np.abs(d @ np.array([-u[1], u[0]])) <= 1.0
                cand = pts[ok & (along > 0)]
                b = cand[np.argmax((cand - a) @ u)].astype(float) if len(cand) else a
                line = _disk_line_mask(tslice.shape, a, b, width) & inner
                seeds2d[line & (seeds2d == 0)] = v
        rslice = ring[tuple(sl)].squeeze(axis)
        pts = np.argwhere(rslice)
        if len(pts):
            # an arc: ring points within a random angular sector, thinned to a stroke
            ctr = np.array([c for i, c in enumerate(cz) if i != axis], float)
            ang = np.arctan2(pts[:, 0] - ctr[0], pts[:, 1] - ctr[1])
            start = rng.uniform(-np.pi, np.pi)
            keep = np.mod(ang - start, 2 * np.pi) < 1.4 * np.pi
            arc = np.zeros(tslice.shape, bool)
            arc[tuple(pts[keep].T)] = True
            seeds2d[arc & (seeds2d == 0)] = bg_value
        out[tuple(sl)] = np.expand_dims(seeds2d, axis)
    return Volume(out, truth.geometry, "label",
                  {"seeds": "strokes on three orthogonal slices", "background_value": bg_value, "seed": seed})


# -- a varied family of phantoms -------------------------------------------------------------------

#: The ranges :func:`random_tumor_phantom` draws from (see its docstring). They are chosen NOT to be
#: the setting the seeded method was tuned on (:func:`make_tumor_phantom` with its defaults:
#: one 24 mm-radius tumor, 4-10 % Rician noise, a +-15 % polynomial bias).
FAMILY_RANGES: dict[str, Any] = {
    "n_lesions": (1, 3),  # 1 (70 %), 2 (20 %) or 3 (10 %)
    "diameter_mm": (5.0, 40.0),  # equivalent diameter of each lesion's whole tumor, log-uniform
    "shape": ("ellipsoid", "lobes", "field"),
    "noise": (0.02, 0.12),  # of the brightest intensity
    "noise_kind": ("gaussian", "rician"),
    "bias": (0.0, 0.35),
    "bias_kind": ("polynomial", "smooth"),
    "flair_contrast_bright": (1.15, 1.9),  # the lesion's FLAIR over its surroundings'
    "flair_contrast_dark": (0.45, 0.8),  # dark lesions (20 %)
    "oedema_mm": (1.5, 8.0),  # oedema thickness (50 % of the phantoms)
    "rim_mm": (1.0, 3.0),  # a thin rim around a near-isointense interior (30 %)
    "near_csf_flair": (0.2, 1.6),  # CSF's FLAIR level over white matter's next to a near-CSF lesion
    "slice_mm": 5.0,  # anisotropic phantoms (25 %): thick slices along the k axis
    "psf_mm": (0.5, 1.0),
    "texture": (0.02, 0.10),
}
_FAMILY_P = {"dark": 0.2, "oedema": 0.5, "rim": 0.3, "necrosis": 0.25, "near_csf": 0.3, "anisotropic": 0.25}
_TISSUE_MAPS: dict[int, tuple[Any, np.ndarray, np.ndarray]] = {}  # the last tissue's maps


def _tissue_maps(tissue: Tissue) -> tuple[np.ndarray, np.ndarray]:
    """Depth inside the brain (mm) and distance to inner CSF (mm) on the tissue grid (cached)."""
    from scipy import ndimage

    key = id(tissue)
    hit = _TISSUE_MAPS.get(key)
    if hit is not None and hit[0] is tissue:
        return hit[1], hit[2]
    sp = np.asarray(tissue.geometry.spacing, float)[::-1]
    brain = tissue.brain
    depth = ndimage.distance_transform_edt(brain, sampling=sp).astype(np.float32)
    inner_csf = (tissue.csf > 0.5) & (depth >= 6.0)  # ventricles and deep sulci, not the outer CSF rim
    dist_csf = (ndimage.distance_transform_edt(~inner_csf, sampling=sp).astype(np.float32) if inner_csf.any()
                else np.full(brain.shape, np.inf, np.float32))
    _TISSUE_MAPS.clear()
    _TISSUE_MAPS[key] = (tissue, depth, dist_csf)
    return depth, dist_csf


def _loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    return q * np.sign(np.diag(r))


def _shape_field(p: np.ndarray, kind: str, radius: float, rng: np.random.Generator, spacing_zyx: np.ndarray) -> np.ndarray:
    """A shape function of the LPS offsets ``p`` from a lesion's centre: about ``|p| / radius``
    for a ball, < 1 inside. Rescaled later to the lesion's volume."""
    if kind == "ellipsoid":
        semi = radius * rng.uniform(0.6, 1.4, 3)
        semi *= radius / np.prod(semi) ** (1 / 3)
        return np.linalg.norm((p @ _random_rotation(rng)) / semi, axis=-1).astype(np.float32)
    if kind == "lobes":
        s = np.full(p.shape[:-1], np.inf, np.float32)
        for i in range(int(rng.integers(2, 6))):
            off = np.zeros(3) if i == 0 else _random_rotation(rng)[:, 0] * radius * rng.uniform(0.35, 0.75)
            semi = radius * (0.75 if i == 0 else rng.uniform(0.35, 0.6)) * rng.uniform(0.7, 1.3, 3)
            s = np.minimum(s, np.linalg.norm(((p - off) @ _random_rotation(rng)) / semi, axis=-1))
        return s
    amp = rng.uniform(0.15, 0.45)
    f = np.clip(_smooth_field(p.shape[:-1], rng.uniform(2.5, 6.0) / spacing_zyx, rng), -2.5, 2.5)
    return (np.linalg.norm(p, axis=-1) / radius / np.maximum(1.0 + amp * f, 0.3)).astype(np.float32)


def _slab_mean(a: np.ndarray, k: int) -> np.ndarray:
    n = a.shape[0] // k
    return a[: n * k].reshape((n, k) + a.shape[1:]).mean(axis=1)


def random_tumor_phantom(rng: np.random.Generator | int, tissue: Tissue | None = None,
                         channels: Sequence[str] = CHANNELS, margin_mm: float = 24.0) -> TumorPhantom:
    """A brain-tumor phantom drawn from wide ranges (:data:`FAMILY_RANGES`), on a crop of ``tissue``.

    Drawn, and recorded in ``parameters``:

    * 1-3 lesions (the others 3-25 mm from the first), each with an equivalent whole-tumor
      diameter of 5-40 mm (log-uniform) and a shape: a random ellipsoid, a union of 2-5
      ellipsoids (multi-lobed) or a ball deformed by a smooth random field;
    * the lesion's FLAIR contrast against its surroundings (the mean of the tissue 2-6 mm
      around it): brighter (x1.15-1.9) or, in 20 % of the phantoms, DARKER (x0.45-0.8); T1
      darker, T2 brighter, T1c enhancing where there is a rim;
    * optional oedema (1.5-8 mm, fading towards its edge, in parenchyma only), a thin rim
      (1-3 mm) around a near-isointense interior, or a necrotic core;
    * placement deep in the brain or (30 %) touching inner CSF (ventricles, deep sulci), whose
      FLAIR is then drawn from poorly suppressed to bright (0.2-1.6 x white matter);
    * Gaussian or Rician noise of 2-12 % of the brightest intensity, a polynomial or smooth
      random bias field of strength 0-0.35, a Gaussian PSF of 0.5-1 mm, texture 2-10 %;
    * 25 % anisotropic: slabs of 5 mm along the grid's k axis (1x1x5 mm on the 1 mm template),
      made by averaging the fine grid's slices (partial volume) before bias and noise.

    Args:
        rng: a generator or a seed.
        tissue: the brain (default: :func:`mni_tissue`).
        channels: the channels to make (subset of :data:`CHANNELS`).
        margin_mm: the crop around the lesions.

    Returns:
        A :class:`TumorPhantom` on the crop (1 core/necrosis and solid tumor, 2 oedema, 3 rim:
        BraTS-like values; the whole tumor is ``truth > 0``); ``parameters`` holds every draw and
        the subgroup flags ``small`` (largest lesion < 15 mm), ``dark``, ``anisotropic``,
        ``multi_lesion`` and ``near_csf``.
    """
    from scipy import ndimage

    from medtorch.phantoms import physical_grid

    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(int(rng))
    bad = [c for c in channels if c not in CHANNELS]
    if bad or not channels:
        raise MedTorchInputError(f"unknown channel(s) {bad}", "use " + ", ".join(CHANNELS))
    tissue = tissue if tissue is not None else _default_tissue()
    g = tissue.geometry
    sp = np.asarray(g.spacing, float)[::-1]
    R = FAMILY_RANGES
    n_les = int(rng.choice([1, 2, 3], p=[0.7, 0.2, 0.1]))
    diam = [_loguniform(rng, *R["diameter_mm"]) for _ in range(n_les)]
    shape_kind = str(rng.choice(R["shape"], p=[0.2, 0.4, 0.4]))
    dark = bool(rng.random() < _FAMILY_P["dark"])
    oedema = bool(rng.random() < _FAMILY_P["oedema"]) and not dark
    rim = bool(rng.random() < _FAMILY_P["rim"])
    necrosis = (not rim) and bool(rng.random() < _FAMILY_P["necrosis"])
    near_csf = bool(rng.random() < _FAMILY_P["near_csf"])
    aniso = bool(rng.random() < _FAMILY_P["anisotropic"])
    noise = float(rng.uniform(*R["noise"]))
    noise_kind = str(rng.choice(R["noise_kind"]))
    bias = float(rng.uniform(*R["bias"]))
    bias_kind = str(rng.choice(R["bias_kind"]))
    psf = float(rng.uniform(*R["psf_mm"]))
    tex = float(rng.uniform(*R["texture"]))
    flair_c = float(rng.uniform(*(R["flair_contrast_dark"] if dark else R["flair_contrast_bright"])))
    oed_mm = float(rng.uniform(*R["oedema_mm"])) if oedema else 0.0
    rim_mm = float(max(rng.uniform(*R["rim_mm"]), 1.01 * sp.min())) if rim else 0.0
    csf_flair = float(rng.uniform(*R["near_csf_flair"])) if near_csf else _TISSUE["FLAIR"][0] / _TISSUE["FLAIR"][2]
    contrast = {"FLAIR": flair_c, "T1": float(rng.uniform(0.55, 0.95)), "T2": float(rng.uniform(1.2, 1.9)),
                "T1c": float(rng.uniform(0.6, 1.0))}
    rim_c = {"FLAIR": flair_c * float(rng.uniform(1.05, 1.3)), "T1": contrast["T1"], "T2": contrast["T2"],
             "T1c": float(rng.uniform(1.4, 1.9))}
    interior_c = {k: float(rng.uniform(0.9, 1.25)) if rim else float(rng.uniform(0.55, 0.9))
                  for k in CHANNELS}  # rim interior: near-isointense; necrosis: darker than the solid part

    # -- placement (on the tissue grid) ---------------------------------------------------------
    depth, dist_csf = _tissue_maps(tissue)
    parenchyma = (tissue.gm + tissue.wm) > 0.5
    r0 = diam[0] / 2.0
    ok = parenchyma & (depth >= r0 + 3.0)
    if near_csf:
        ok_near = ok & (dist_csf >= max(r0 - 2.0, 0.5)) & (dist_csf <= r0 + 1.5)
        if ok_near.any():
            ok = ok_near
        else:
            near_csf = False
    cand = np.argwhere(ok)
    if len(cand) == 0:  # the lesion is too big for the brain here: its deepest voxels
        cand = np.argwhere(depth >= np.percentile(depth[depth > 0], 99.5))
    centres = [cand[rng.integers(len(cand))].astype(float)]
    for d in diam[1:]:
        for _ in range(60):
            u = _random_rotation(rng)[:, 0]
            dist = r0 + d / 2.0 + rng.uniform(3.0, 25.0)
            c = centres[0] + u * dist / sp
            ci = np.round(c).astype(int)
            if np.all(ci >= 0) and np.all(ci < depth.shape) and parenchyma[tuple(ci)] and depth[tuple(ci)] >= d / 2 + 2:
                centres.append(c)
                break
    diam = diam[: len(centres)]
    # -- the crop -------------------------------------------------------------------------------
    reach = np.array([(d / 2.0) * 1.6 + oed_mm + margin_mm for d in diam])
    lo = np.min([c - r / sp for c, r in zip(centres, reach)], axis=0)
    hi = np.max([c + r / sp for c, r in zip(centres, reach)], axis=0)
    lo = np.clip(np.floor(lo).astype(int), 0, np.asarray(depth.shape) - 1)
    hi = np.clip(np.ceil(hi).astype(int) + 1, lo + 1, np.asarray(depth.shape))
    slab = max(2, int(round(R["slice_mm"] / sp[0]))) if aniso else 1
    if slab > 1:
        n = hi[0] - lo[0]
        n_up = int(np.ceil(n / slab)) * slab
        grow = n_up - n
        lo[0] = max(0, lo[0] - grow // 2)
        hi[0] = min(depth.shape[0], lo[0] + n_up)
        hi[0] = lo[0] + ((hi[0] - lo[0]) // slab) * slab
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    sub = Geometry(tuple(int(v) for v in (hi - lo)[::-1]), g.index_to_physical(lo[::-1][None].astype(float))[0],
                   g.spacing, g.direction)
    pts = physical_grid(sub)
    gm, wm, csf = tissue.gm[box], tissue.wm[box], tissue.csf[box]
    brain = (gm + wm + csf) > 0.5
    paren = (gm + wm) > 0.5
    # -- shapes ---------------------------------------------------------------------------------
    voxel = float(np.prod(sp))
    comp = np.zeros(sub.shape_zyx, np.uint8)  # 1 interior, 2 oedema, 3 rim, 4 solid
    fade = np.zeros(sub.shape_zyx, np.float32)
    for c, d in zip(centres, diam):
        c_lps = g.index_to_physical(c[::-1][None])[0]
        s = _shape_field(pts - c_lps, shape_kind, d / 2.0, rng, sp)
        target = int(round(np.pi / 6.0 * d ** 3 / voxel))
        flat = np.sort(s[brain].ravel())
        if len(flat) == 0:
            continue
        s = s / max(float(flat[min(max(target, 1), len(flat)) - 1]), 1e-6) * (1.0 + 1e-6)
        radius = d / 2.0
        o = oed_mm / radius
        w = rim_mm / radius
        inside = (s < 1.0) & brain
        les = np.zeros(sub.shape_zyx, np.uint8)
        les[inside] = 4
        if oedema:
            oz = inside & (s >= 1.0 - o)
            les[oz] = 2
            les[oz & ~paren] = 0  # oedema spreads through parenchyma, not CSF
            fade = np.maximum(fade, np.where(oz, np.clip((1.0 - s) / max(o, 1e-6), 0, 1), 0).astype(np.float32))
        if rim:
            rz = inside & (s < 1.0 - o) & (s >= 1.0 - o - w)
            les[rz] = 3
            les[inside & (s < 1.0 - o - w)] = 1
        elif necrosis:
            les[inside & (s < (1.0 - o) * float(rng.uniform(0.3, 0.6)))] = 1
        put = (les > 0) & ((comp == 0) | (comp == 2))
        comp[put] = les[put]
    # keep each lesion one piece: oedema islands not touching a solid part are dropped
    lab, n = ndimage.label(comp > 0)
    if n > 1:
        keep = np.bincount(lab[(comp != 2) & (comp > 0)].ravel(), minlength=n + 1)
        keep[0] = 0
        comp[(lab > 0) & (keep[lab] == 0)] = 0
    truth = np.zeros(comp.shape, np.uint8)
    truth[(comp == 1) | (comp == 4)] = 1
    truth[comp == 2] = 2
    truth[comp == 3] = 3
    tumor = truth > 0
    # -- images ---------------------------------------------------------------------------------
    dist_out = ndimage.distance_transform_edt(~tumor, sampling=sp) if tumor.any() else np.full(comp.shape, np.inf)
    shell = (dist_out >= 2.0) & (dist_out <= 6.0) & brain
    tex_f = 1.0 + tex * np.clip(_smooth_field(sub.shape_zyx, 2.0 / sp, rng), -2.5, 2.5)
    if bias_kind == "polynomial":
        bias_f = _bias_field(sub, bias, rng)
    else:
        sm = _smooth_field(sub.shape_zyx, rng.uniform(30.0, 60.0) / sp, rng)
        bias_f = (1.0 + bias * sm / (np.abs(sm).max() + 1e-12)).astype(np.float32)
    t1 = tissue.t1[box] if tissue.t1 is not None else None
    out: dict[str, Volume] = {}
    out_geom = sub
    if slab > 1:
        origin = sub.index_to_physical(np.array([[0.0, 0.0, (slab - 1) / 2.0]]))[0]
        out_geom = Geometry((sub.size[0], sub.size[1], sub.size[2] // slab), origin,
                            (g.spacing[0], g.spacing[1], g.spacing[2] * slab), g.direction)
        fr = [_slab_mean((truth == v).astype(np.float32), slab) for v in (1, 2, 3)]
        tot = fr[0] + fr[1] + fr[2]
        truth = np.where(tot >= 0.5, np.argmax(np.stack(fr), axis=0) + 1, 0).astype(np.uint8)
        bias_f = _slab_mean(bias_f, slab)
    for name in channels:
        csf_v, gm_v, wm_v = _TISSUE[name]
        if name == "FLAIR":
            csf_v = csf_flair * wm_v
        if name in ("T1", "T1c") and t1 is not None:
            img = t1.astype(np.float32).copy()
        else:
            img = (csf_v * csf + gm_v * gm + wm_v * wm).astype(np.float32)
        ref = float(img[shell].mean()) if shell.any() else wm_v
        level = contrast[name] * ref
        img[comp == 4] = level
        img[comp == 1] = interior_c[name] * (ref if rim else level)
        img[comp == 3] = rim_c[name] * ref
        oz = comp == 2
        if oz.any():
            oed_level = ref + 0.7 * (level - ref)
            img[oz] = img[oz] + (oed_level - img[oz]) * (0.35 + 0.65 * fade[oz])
        img[tumor] *= tex_f[tumor]
        if psf > 0:
            img = ndimage.gaussian_filter(img, psf / sp)
        if slab > 1:
            img = _slab_mean(img, slab)
        img = img * bias_f
        brightest = float(np.percentile(img[img > 0.05], 99.5)) if (img > 0.05).any() else 1.0
        sd = noise * brightest
        if noise_kind == "rician":
            a = img + rng.normal(0.0, sd, img.shape).astype(np.float32)
            b = rng.normal(0.0, sd, img.shape).astype(np.float32)
            img = np.sqrt(a * a + b * b)
        else:
            img = img + rng.normal(0.0, sd, img.shape).astype(np.float32)
        out[name] = Volume(img.astype(np.float32), out_geom, "scalar",
                           {"phantom": "tumor family", "channel": name, "noise": noise})
    comp_out = comp if slab == 1 else np.where(truth > 0, 1, 0).astype(np.uint8)
    centre_lps = g.index_to_physical(centres[0][::-1][None])[0]
    eq_d = [float(v) for v in diam]
    params: dict[str, Any] = {
        "family": "random_tumor_phantom", "n_lesions": len(centres), "diameters_mm": eq_d,
        "max_diameter_mm": max(eq_d), "shape": shape_kind, "dark": dark, "flair_contrast": flair_c,
        "contrast": contrast, "oedema": oedema, "oedema_mm": oed_mm, "rim": rim, "rim_mm": rim_mm,
        "necrosis": necrosis, "near_csf": near_csf, "csf_flair_over_wm": csf_flair, "anisotropic": slab > 1,
        "slice_mm": float(out_geom.spacing[2]), "spacing_mm": [float(v) for v in out_geom.spacing],
        "noise": noise, "noise_kind": noise_kind, "bias": bias, "bias_kind": bias_kind, "psf_mm": psf,
        "texture": tex, "truth_voxels": int((truth > 0).sum()),
        "small": max(eq_d) < 15.0, "multi_lesion": len(centres) > 1,
    }
    return TumorPhantom(out, Volume(truth, out_geom, "label", {"labels": "1 core/necrosis, 2 oedema, 3 rim"}),
                        Volume(comp_out, out_geom, "label"), centre_lps, params)


_DEFAULT_TISSUE: list[Tissue] = []


def _default_tissue() -> Tissue:
    if not _DEFAULT_TISSUE:
        _DEFAULT_TISSUE.append(mni_tissue())
    return _DEFAULT_TISSUE[0]


def family_phantom(index: int, seed: int = 0, tissue: Tissue | None = None,
                   channels: Sequence[str] = CHANNELS) -> TumorPhantom:
    """Phantom ``index`` of the family ``seed``: :func:`random_tumor_phantom` with the generator
    ``default_rng([seed, index])``; ``parameters`` also hold ``family_seed`` and ``index``."""
    ph = random_tumor_phantom(np.random.default_rng([int(seed), int(index)]), tissue, channels)
    ph.parameters["family_seed"] = int(seed)
    ph.parameters["index"] = int(index)
    return ph


def phantom_family(n: int, seed: int = 0, tissue: Tissue | None = None,
                   channels: Sequence[str] = CHANNELS) -> Iterator[TumorPhantom]:
    """``n`` phantoms (:func:`family_phantom` 0 to n-1), made one at a time; a family's first
    phantoms do not depend on ``n``."""
    for i in range(int(n)):
        yield family_phantom(i, seed, tissue, channels)
