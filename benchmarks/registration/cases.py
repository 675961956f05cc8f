"""Multimodal registration cases with a known truth, built from the real MNI152 2009a template.

Everything here is deterministic given a case's ``seed`` and uses only the template that
ships in ``Resources/SampleData`` (T1 plus grey- and white-matter maps, 1 mm).

How a case is made (SynthMorph-style: contrasts are painted from tissue classes):

* **Tissues.** Brain = the template's T1 support; grey and white matter from the maps;
  CSF = brain minus both. Outside the brain, shells at a fixed distance from it
  (computed once with a Euclidean distance transform): 0-3 mm extra-cerebral CSF, 3-9 mm
  skull, 9-15 mm scalp, then air.
* **Contrasts.** ``t1`` (the fixed image): the real template T1 in the brain, dark CSF
  rim and skull, bright scalp. ``t2``: CSF bright, grey matter mid, white matter dark.
  ``ct``: Hounsfield units, air -1000, CSF 8, white matter 28, grey matter 40, skull 1000,
  scalp 30. Each tissue value is jittered by up to 10 % per case; Gaussian noise is added.
* **Truth.** ``p_moving = A(p + u(p))`` (ITK convention, fixed point -> moving point, the
  composition :mod:`medtorch.registration` returns). ``A`` is rigid (random Euler angles
  and shifts up to the case's limits) or affine (plus up to 10 % scale and shear); ``u`` is
  zero, or the exponential of a smooth random stationary velocity field (scaling and
  squaring), whose inverse ``exp(-v)`` is known too, so the moving image is painted
  exactly: ``M(q) = C(T^-1(q))``, ``T^-1(q) = A^-1 q + e(A^-1 q)``.
* **Moving grid.** Axis-aligned LPS (the template is stored RAS-like, so fixed and moving
  directions differ), covering the transformed head with a random field-of-view offset.
  Painted on a 1 mm grid, blurred with a Gaussian slice profile (FWHM = the target spacing)
  and decimated: 2 mm isotropic, or 1 x 1 x 5 mm thick slices. Variants multiply a smooth
  random bias field (MR contrasts only) and crop the field of view (the top 20 % and the
  bottom 15 % of the head along S are cut away).
* **Landmarks.** Random points in the fixed brain (eroded by 2 mm), seeded; their truth is
  ``T(p)``; TRE is ``|T_est(p) - T(p)|`` in mm.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from scipy import ndimage

from medtorch.volume import Geometry, Volume

REPO = Path(__file__).resolve().parents[2]
SAMPLE_DATA = REPO / "Resources" / "SampleData"

Contrast = Literal["t1", "t2", "ct"]
Mode = Literal["rigid", "affine", "deformable"]

#: Tissue values of each contrast: (csf, grey matter, white matter, extra-cerebral csf, skull, scalp, air).
#: ``t1`` takes grey/white matter and CSF from the real template T1 instead (see :func:`paint`).
TISSUE_VALUES: dict[str, dict[str, float]] = {
    "t1": {"csf": 0.30, "gm": 0.75, "wm": 1.0, "rim": 0.12, "skull": 0.06, "scalp": 0.80, "air": 0.0},
    "t2": {"csf": 1.00, "gm": 0.55, "wm": 0.35, "rim": 1.00, "skull": 0.05, "scalp": 0.45, "air": 0.0},
    "ct": {"csf": 8.0, "gm": 40.0, "wm": 28.0, "rim": 8.0, "skull": 1000.0, "scalp": 30.0, "air": -1000.0},
}
#: Standard deviation of the Gaussian noise added to each contrast (its own units).
NOISE = {"t1": 0.015, "t2": 0.02, "ct": 4.0}
#: Distances (mm) outside the brain where the shells end: extra-cerebral CSF, skull, scalp.
SHELLS_MM = (3.0, 9.0, 15.0)


# -- the template and its tissues ------------------------------------------------------


@dataclass(frozen=True)
class Tissues:
    """Tissue maps on the template grid (1 mm), float32 in [0, 1], arrays ``[z, y, x]``."""

    geometry: Geometry
    t1: np.ndarray  # the real T1, scaled so that white matter is ~1
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    brain: np.ndarray  # soft brain mask
    rim: np.ndarray
    skull: np.ndarray
    scalp: np.ndarray

    @property
    def head(self) -> np.ndarray:
        return self.brain + self.rim + self.skull + self.scalp


def _read(name: str) -> Volume:
    import SimpleITK as sitk

    path = SAMPLE_DATA / f"MNI152_2009a_{name}.nii.gz"
    return Volume.from_sitk(sitk.ReadImage(str(path)))


def _soft(mask: np.ndarray, sigma: float = 0.6) -> np.ndarray:
    return np.clip(ndimage.gaussian_filter(mask.astype(np.float32), sigma), 0.0, 1.0)


@functools.lru_cache(maxsize=1)
def load_tissues() -> Tissues:
    """The template's tissues (cached; about 3 s and 0.5 GB the first time)."""
    t1v = _read("T1")
    t1 = t1v.array.astype(np.float32)
    gm = _read("GM").array.astype(np.float32) / 255.0
    wm = _read("WM").array.astype(np.float32) / 255.0
    support = ndimage.binary_fill_holes(ndimage.binary_closing(t1 > 0, iterations=2))
    brain = _soft(support)
    t1 = t1 / float(np.mean(t1[wm > 0.9]))
    csf = np.clip(brain - gm - wm, 0.0, 1.0)
    dist = ndimage.distance_transform_edt(~support, sampling=t1v.spacing[::-1]).astype(np.float32)
    a, b, c = SHELLS_MM
    outside = 1.0 - brain
    rim = _soft((dist > 0) & (dist <= a)) * outside
    skull = _soft((dist > a) & (dist <= b)) * outside
    scalp = _soft((dist > b) & (dist <= c)) * outside
    return Tissues(t1v.geometry, t1, gm, wm, csf, brain, rim, skull, scalp)


def paint(tissues: Tissues, contrast: Contrast, rng: np.random.Generator | None = None,
          jitter: float = 0.1) -> np.ndarray:
    """A noise-free image of ``contrast`` on the template grid, ``[z, y, x]`` float32.

    Each tissue's value is multiplied by ``1 + U(-jitter, jitter)`` when ``rng`` is given.
    """
    values = dict(TISSUE_VALUES[contrast])
    if rng is not None:
        for k in values:
            if k != "air":
                values[k] *= 1.0 + rng.uniform(-jitter, jitter)
    t = tissues
    if contrast == "t1":
        brain_part = t.t1 * (values["wm"] / TISSUE_VALUES["t1"]["wm"])
    else:
        brain_part = values["csf"] * t.csf + values["gm"] * t.gm + values["wm"] * t.wm
    out = (brain_part * (t.brain > 0) + values["rim"] * t.rim + values["skull"] * t.skull
           + values["scalp"] * t.scalp)
    air = np.clip(1.0 - t.brain - t.rim - t.skull - t.scalp, 0.0, 1.0)
    out = out + values["air"] * air
    return out.astype(np.float32)


# -- transforms ------------------------------------------------------------------------


def euler_matrix(angles_deg: np.ndarray) -> np.ndarray:
    """Rotation about L, then P, then S (degrees): 3x3."""
    ax, ay, az = np.deg2rad(np.asarray(angles_deg, float))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def random_affine(rng: np.random.Generator, center: np.ndarray, max_angle_deg: float, max_shift_mm: float,
                  max_scale: float = 0.0, max_shear: float = 0.0) -> tuple[np.ndarray, dict[str, Any]]:
    """A random 4x4 LPS matrix about ``center``: ``p -> L (p - c) + c + t``.

    ``L = R (I + shear) diag(scale)``: rotation angles uniform in +-``max_angle_deg`` per axis,
    shifts uniform in +-``max_shift_mm``, scales in ``1 +- max_scale``, shears (upper
    triangle) in +-``max_shear``. Returns the matrix and its parameters.
    """
    angles = rng.uniform(-max_angle_deg, max_angle_deg, 3)
    shift = rng.uniform(-max_shift_mm, max_shift_mm, 3)
    scale = 1.0 + rng.uniform(-max_scale, max_scale, 3)
    shear = np.eye(3)
    sh = rng.uniform(-max_shear, max_shear, 3)
    shear[0, 1], shear[0, 2], shear[1, 2] = sh
    lin = euler_matrix(angles) @ shear @ np.diag(scale)
    m = np.eye(4)
    m[:3, :3] = lin
    m[:3, 3] = center - lin @ center + shift
    params = {"angles_deg": angles.round(4).tolist(), "shift_mm": shift.round(4).tolist(),
              "scale": scale.round(5).tolist(), "shear": sh.round(5).tolist()}
    return m, params


def _sample_field(field: np.ndarray, geometry: Geometry, points: np.ndarray) -> np.ndarray:
    """Linear interpolation of a ``[z, y, x, 3]`` field at ``(N, 3)`` LPS points (0 outside),
    as ``sitk.DisplacementFieldTransform`` does."""
    idx = geometry.physical_to_index(points)  # (N, 3) i, j, k
    coords = idx[:, ::-1].T  # k, j, i
    out = np.empty((len(points), 3))
    for c in range(3):
        out[:, c] = ndimage.map_coordinates(field[..., c], coords, order=1, mode="constant", cval=0.0)
    inside = np.all((idx >= -0.5) & (idx < np.asarray(geometry.size) - 0.5), axis=1)
    out[~inside] = 0.0
    return out


def apply_transform(affine: np.ndarray, displacement: Volume | None, points: np.ndarray) -> np.ndarray:
    """``A(p + d(p))`` for ``(N, 3)`` LPS points; ``d`` linear on its grid, zero outside it."""
    p = np.asarray(points, np.float64).reshape(-1, 3)
    if displacement is not None:
        p = p + _sample_field(np.asarray(displacement.array), displacement.geometry, p)
    a = np.asarray(affine, np.float64)
    return p @ a[:3, :3].T + a[:3, 3]


def exp_velocity(velocity: np.ndarray, geometry: Geometry, steps: int = 8) -> np.ndarray:
    """Scaling and squaring: the displacement ``u`` of ``exp(v)`` on the grid of ``v``.

    ``velocity`` is ``[z, y, x, 3]`` (LPS mm); the result is the same shape (float64).
    """
    from medtorch.phantoms import physical_grid

    pts = physical_grid(geometry).reshape(-1, 3)
    u = velocity.astype(np.float64) / 2**steps
    for _ in range(steps):
        u = u + _sample_field(u, geometry, pts + u.reshape(-1, 3)).reshape(u.shape)
    return u


def random_velocity(rng: np.random.Generator, geometry: Geometry, max_mm: float, smooth_mm: float,
                    support: np.ndarray | None = None) -> np.ndarray:
    """A smooth random stationary velocity field on ``geometry`` with ``max |v| = max_mm``."""
    sigma = smooth_mm / geometry.spacing[::-1]
    v = np.stack([ndimage.gaussian_filter(rng.standard_normal(geometry.shape_zyx), sigma) for _ in range(3)], -1)
    if support is not None:
        v *= support[..., None]
    return v * (max_mm / np.linalg.norm(v, axis=-1).max())


# -- the cases -------------------------------------------------------------------------


@dataclass(frozen=True)
class CaseSpec:
    """What to build. Angles in degrees, shifts and displacements in mm."""

    name: str
    mode: Mode
    contrast: Contrast
    seed: int
    max_angle_deg: float = 12.0
    max_shift_mm: float = 12.0
    max_scale: float = 0.0
    max_shear: float = 0.0
    fixed_spacing_mm: float = 2.0
    moving_spacing_mm: tuple[float, float, float] = (2.0, 2.0, 2.0)
    bias: bool = False  # MR-like contrasts only (CT has no bias field)
    crop: bool = False
    deform_max_mm: float = 0.0
    fixed_size: tuple[int, int, int] | None = None  # None: the template's box at fixed_spacing_mm
    fov_offset_mm: float = 6.0
    n_landmarks: int = 40

    @property
    def thick(self) -> bool:
        return max(self.moving_spacing_mm) >= 4.0

    def describe(self) -> str:
        parts = [self.mode, self.contrast.upper() + "-like", f"+-{self.max_angle_deg:g} deg/+-{self.max_shift_mm:g} mm"]
        if self.max_scale or self.max_shear:
            parts.append(f"scale/shear +-{max(self.max_scale, self.max_shear) * 100:g} %")
        if self.deform_max_mm:
            parts.append(f"field max {self.deform_max_mm:g} mm")
        parts.append("x".join(f"{s:g}" for s in self.moving_spacing_mm) + " mm moving")
        if self.bias and self.contrast != "ct":
            parts.append("bias")
        if self.crop:
            parts.append("cropped FOV")
        return ", ".join(parts)


@dataclass
class Case:
    """A built case: the images, the truth and the landmarks."""

    spec: CaseSpec
    fixed: Volume
    moving: Volume
    affine: np.ndarray  # truth A (4x4 LPS), p_moving = A(p + u(p))
    displacement: Volume | None  # truth u (fixed space, LPS mm) or None
    inverse_displacement: Volume | None  # e: p + e(p) inverts p + u(p)
    landmarks: np.ndarray  # (N, 3) fixed LPS points in the brain
    info: dict[str, Any] = field(default_factory=dict)

    def truth(self, points: np.ndarray) -> np.ndarray:
        """``T(p) = A(p + u(p))`` for ``(N, 3)`` fixed points."""
        return apply_transform(self.affine, self.displacement, points)

    def inverse(self, points: np.ndarray) -> np.ndarray:
        """``T^-1(q) = A^-1 q + e(A^-1 q)`` for ``(N, 3)`` moving points."""
        inv = np.linalg.inv(self.affine)
        p = np.asarray(points, np.float64).reshape(-1, 3) @ inv[:3, :3].T + inv[:3, 3]
        if self.inverse_displacement is not None:
            p = p + _sample_field(self.inverse_displacement.array, self.inverse_displacement.geometry, p)
        return p

    def tre(self, mapped: np.ndarray) -> np.ndarray:
        """Per-landmark error (mm) of estimated moving points ``mapped`` (N, 3)."""
        return np.linalg.norm(np.asarray(mapped, np.float64) - self.truth(self.landmarks), axis=1)

    # -- files ----------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Write the images (``.mha``), truth and landmarks into ``folder``; returns it."""
        import SimpleITK as sitk

        d = Path(folder)
        d.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(self.fixed.to_sitk(), str(d / "fixed.mha"))
        sitk.WriteImage(self.moving.to_sitk(), str(d / "moving.mha"))
        if self.displacement is not None:
            sitk.WriteImage(self.displacement.to_sitk(), str(d / "truth_displacement.mha"))
        meta = {"spec": asdict(self.spec), "affine": self.affine.tolist(), "landmarks": self.landmarks.tolist(),
                "truth_points": self.truth(self.landmarks).tolist(), "info": self.info,
                "has_displacement": self.displacement is not None}
        (d / "case.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
        return d


def _downsample(arr: np.ndarray, geometry: Geometry, factors: tuple[int, int, int]) -> tuple[np.ndarray, Geometry]:
    """Gaussian slice profile (FWHM = the new spacing) and decimation by integer ``factors`` (i, j, k)."""
    f = np.asarray(factors, float)
    sigma_mm = np.sqrt(np.maximum((f * geometry.spacing) ** 2 - geometry.spacing**2, 0.0)) / 2.3548
    sigma_vox = sigma_mm / geometry.spacing
    if np.any(sigma_vox > 0):
        arr = ndimage.gaussian_filter(arr, sigma_vox[::-1], mode="nearest")
    fi, fj, fk = factors
    out = np.ascontiguousarray(arr[::fk, ::fj, ::fi])
    size = (out.shape[2], out.shape[1], out.shape[0])
    return out, Geometry(size, geometry.origin, geometry.spacing * f, geometry.direction)


def _resample(image: np.ndarray, geometry: Geometry, reference: Geometry, transform: Any, default: float) -> np.ndarray:
    import SimpleITK as sitk

    img = Volume(image, geometry).to_sitk()
    ref = sitk.Image(list(reference.size), sitk.sitkUInt8)
    ref.SetOrigin(tuple(reference.origin))
    ref.SetSpacing(tuple(reference.spacing))
    ref.SetDirection(tuple(reference.direction.reshape(-1)))
    out = sitk.Resample(img, ref, transform, sitk.sitkLinear, float(default), sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)


def _sitk_affine(m: np.ndarray) -> Any:
    import SimpleITK as sitk

    t = sitk.AffineTransform(3)
    t.SetMatrix(tuple(float(v) for v in m[:3, :3].reshape(-1)))
    t.SetTranslation(tuple(float(v) for v in m[:3, 3]))
    return t


def _inverse_transform(affine: np.ndarray, inverse_field: Volume | None) -> Any:
    """SimpleITK transform of ``T^-1(q) = A^-1 q + e(A^-1 q)`` (moving point -> fixed point)."""
    import SimpleITK as sitk

    ainv = _sitk_affine(np.linalg.inv(affine))
    if inverse_field is None:
        return ainv
    f = Volume(inverse_field.array.astype(np.float64), inverse_field.geometry, "vector").to_sitk()
    return sitk.CompositeTransform([sitk.DisplacementFieldTransform(f), ainv])  # ainv first


def _bias_field(rng: np.random.Generator, shape: tuple[int, int, int], strength: float = 0.25) -> np.ndarray:
    """A smooth multiplicative field: exp of a random 4x4x4 grid, cubic-upsampled; ~+-strength."""
    coarse = rng.normal(0.0, strength / 2.0, (4, 4, 4))
    zoom = [s / 4.0 for s in shape]
    field = ndimage.zoom(coarse, zoom, order=3, mode="nearest")[: shape[0], : shape[1], : shape[2]]
    return np.exp(field).astype(np.float32)


def _template_grid(tissues: Tissues, spec: CaseSpec) -> Geometry:
    g = tissues.geometry
    if spec.fixed_size is None:
        return g
    size = np.asarray(spec.fixed_size)
    center = g.center()
    origin = center - g.direction @ (g.spacing * (size - 1) / 2.0)
    return Geometry(tuple(int(s) for s in size), origin, g.spacing, g.direction)


def _landmarks(tissues: Tissues, rng: np.random.Generator, n: int) -> np.ndarray:
    core = ndimage.binary_erosion(tissues.brain > 0.5, iterations=2)
    kji = np.argwhere(core)
    pick = kji[rng.choice(len(kji), size=n, replace=False)]
    ijk = pick[:, ::-1].astype(np.float64) + rng.uniform(-0.5, 0.5, (n, 3))
    return tissues.geometry.index_to_physical(ijk)


def build_case(spec: CaseSpec) -> Case:
    """Build one case (a few seconds; deformable 256^3 cases take longer)."""
    t = load_tissues()
    rng = np.random.default_rng(spec.seed)
    brain_center = t.geometry.index_to_physical(
        np.argwhere(t.brain > 0.5).mean(axis=0)[::-1][None])[0]

    # -- truth --------------------------------------------------------------------
    affine, params = random_affine(rng, brain_center, spec.max_angle_deg, spec.max_shift_mm,
                                   spec.max_scale, spec.max_shear)
    disp = inv_disp = None
    if spec.deform_max_mm > 0:
        fixed_1mm = _template_grid(t, spec)
        step = max(2.0, spec.fixed_spacing_mm)  # the field's grid: 2 mm, or the fixed spacing if coarser
        fsize = np.ceil(np.asarray(fixed_1mm.size) * fixed_1mm.spacing / step).astype(int) + 1
        field_grid = Geometry(tuple(int(s) for s in fsize), fixed_1mm.origin, (step,) * 3, fixed_1mm.direction)
        v = random_velocity(rng, field_grid, spec.deform_max_mm, smooth_mm=10.0)
        u = exp_velocity(v, field_grid)
        e = exp_velocity(-v, field_grid)
        disp = Volume(u.astype(np.float32), field_grid, "vector", {"what": "truth displacement u"})
        inv_disp = Volume(e.astype(np.float32), field_grid, "vector", {"what": "truth inverse displacement e"})
        params["deform_max_mm"] = float(np.linalg.norm(u, axis=-1).max())

    # -- fixed image (T1) -----------------------------------------------------------
    fixed_img = paint(t, "t1", rng)
    fixed_geom_1mm = _template_grid(t, spec)
    if fixed_geom_1mm != t.geometry:
        fixed_img = _resample(fixed_img, t.geometry, fixed_geom_1mm, _sitk_affine(np.eye(4)), 0.0)
    ff = round(spec.fixed_spacing_mm / fixed_geom_1mm.spacing[0])
    fixed_arr, fixed_geom = _downsample(fixed_img, fixed_geom_1mm, (ff, ff, ff))
    fixed_arr = fixed_arr + rng.normal(0.0, NOISE["t1"], fixed_arr.shape).astype(np.float32)

    # -- moving grid: axis-aligned LPS, covering the transformed head ----------------
    head = t.head > 0.5
    kji = np.argwhere(head)[:: 23]
    head_pts = t.geometry.index_to_physical(kji[:, ::-1].astype(float))
    moved = apply_transform(affine, disp, head_pts)
    lo, hi = moved.min(axis=0) - 4.0, moved.max(axis=0) + 4.0
    offset = rng.uniform(-spec.fov_offset_mm, spec.fov_offset_mm, 3)
    lo, hi = lo + offset, hi + offset
    if spec.crop:
        ext = hi[2] - lo[2]
        lo[2] += 0.15 * ext
        hi[2] -= 0.20 * ext
    spacing = np.asarray(spec.moving_spacing_mm, float)
    fine = np.array([1.0, 1.0, 1.0])
    factors = tuple(round(s) for s in spacing / fine)
    n_coarse = np.ceil((hi - lo) / spacing).astype(int) + 1
    n_fine = (n_coarse - 1) * np.asarray(factors) + 1
    fine_geom = Geometry(tuple(int(s) for s in n_fine), lo, fine, np.eye(3))

    # -- moving image ---------------------------------------------------------------
    contrast = paint(t, spec.contrast, rng)
    air = TISSUE_VALUES[spec.contrast]["air"]
    moving_fine = _resample(contrast, t.geometry, fine_geom, _inverse_transform(affine, inv_disp), air)
    moving_arr, moving_geom = _downsample(moving_fine, fine_geom, factors)  # type: ignore[arg-type]
    del moving_fine
    if spec.bias and spec.contrast != "ct":
        moving_arr = moving_arr * _bias_field(rng, moving_arr.shape)
    moving_arr = moving_arr + rng.normal(0.0, NOISE[spec.contrast], moving_arr.shape).astype(np.float32)

    landmarks = _landmarks(t, rng, spec.n_landmarks)
    info = {"truth": params, "brain_center_lps": brain_center.round(3).tolist(),
            "fixed_size": list(fixed_geom.size), "moving_size": list(moving_geom.size),
            "fixed_voxels": fixed_geom.num_voxels, "moving_voxels": moving_geom.num_voxels,
            "description": spec.describe()}
    case = Case(spec, Volume(fixed_arr.astype(np.float32), fixed_geom, metadata={"contrast": "t1"}),
                Volume(moving_arr.astype(np.float32), moving_geom, metadata={"contrast": spec.contrast}),
                affine, disp, inv_disp, landmarks, info)
    case.info["start_tre_mm"] = float(np.mean(np.linalg.norm(case.truth(landmarks) - landmarks, axis=1)))
    if inv_disp is not None:
        q = case.truth(landmarks)
        case.info["truth_inverse_error_mm"] = float(np.abs(case.inverse(q) - landmarks).max())
    return case


# -- the benchmark's case list ---------------------------------------------------------


def standard_specs() -> list[CaseSpec]:
    """The full benchmark: rigid and affine at 2 mm (~1 Mvoxel), two seeds each, both
    contrasts, +-12 deg/+-12 mm isotropic and +-30 deg/+-40 mm thick-slice/bias/cropped;
    deformable 256^3 at 1 mm, both contrasts."""
    specs: list[CaseSpec] = []
    seed = 100
    contrasts: tuple[Contrast, ...] = ("t2", "ct")
    modes: tuple[Mode, ...] = ("rigid", "affine")
    for contrast in contrasts:
        for draw in range(2):
            for mode in modes:
                aff: dict[str, Any] = {"max_scale": 0.1, "max_shear": 0.1} if mode == "affine" else {}
                seed += 1
                specs.append(CaseSpec(f"{mode}12-{contrast}-{draw}", mode, contrast, seed, 12.0, 12.0, **aff))
                seed += 1
                specs.append(CaseSpec(f"{mode}30-thick-{contrast}-{draw}", mode, contrast, seed, 30.0, 40.0,
                                      moving_spacing_mm=(1.0, 1.0, 5.0), bias=True, crop=True, fov_offset_mm=10.0,
                                      **aff))
    for contrast in contrasts:
        seed += 1
        specs.append(CaseSpec(f"deformable-{contrast}", "deformable", contrast, seed, 5.0, 5.0,
                              fixed_spacing_mm=1.0, moving_spacing_mm=(1.0, 1.0, 1.0), deform_max_mm=6.0,
                              fixed_size=(256, 256, 256), fov_offset_mm=5.0))
    return specs


def quick_specs() -> list[CaseSpec]:
    """``--quick``: one +-12 deg rigid T2-like pair at 4 mm and one +-30 deg thick-slice CT-like pair."""
    return [
        CaseSpec("quick-rigid12-t2", "rigid", "t2", 11, 12.0, 12.0, fixed_spacing_mm=4.0,
                 moving_spacing_mm=(4.0, 4.0, 4.0)),
        CaseSpec("quick-rigid30-thick-ct", "rigid", "ct", 12, 30.0, 40.0, fixed_spacing_mm=4.0,
                 moving_spacing_mm=(2.0, 2.0, 5.0), crop=True, fov_offset_mm=10.0),
    ]


def small_spec(name: str = "small", mode: Mode = "rigid", contrast: Contrast = "t2", seed: int = 0,
               **kwargs: Any) -> CaseSpec:
    """A 4 mm case (about 140 kvoxel) for tests."""
    base = CaseSpec(name, mode, contrast, seed, fixed_spacing_mm=4.0, moving_spacing_mm=(4.0, 4.0, 4.0))
    return replace(base, **kwargs)
