"""The demo's data and its known truth, which the benchmarks use too.

The MNI ICBM152 2009a template (``Resources/SampleData``: T1 and grey/white-matter maps) on
the demo's grid (:func:`load_sample_data`), a T2-like contrast synthesised from the tissue maps
and misaligned by a known rigid transform (:func:`synthesize_t2like`, :func:`rigid_matrix`,
:func:`make_misaligned`, :func:`write_truth_transform`), Rician noise, a tumor phantom with its
true outline, seed strokes a user would paint, and a thick-slice acquisition of a thin volume.
Every random choice comes from ``seed``, one independent stream per purpose.

Transform convention (as everywhere in MedTorch, :mod:`medtorch.resample`): the truth
transform ``T`` maps a point of the fixed (T1) space to the corresponding point of the
moving (T2-like) space, LPS millimetres. The misaligned image is made by resampling the
aligned one through ``T^-1`` (``moving(q) = aligned(T^-1 q)``), so resampling it through
``T`` onto the T1 grid gives the aligned image back (``moving(T p) = aligned(p)``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medtorch.errors import MedTorchInputError
from medtorch.io import read_volume, write_text_atomic
from medtorch.io.atomic import atomic_path
from medtorch.ops.fusion import FusionMethod
from medtorch.ops.registration import RegisterRequest
from medtorch.phantoms import physical_grid, rotation_matrix
from medtorch.progress import CancelToken, ProgressCallback, report
from medtorch.volume import Geometry, Volume


#: Environment variable that points at a folder holding the sample data.
SAMPLE_DATA_ENV = "MEDTORCH_SAMPLE_DATA"

#: Role -> (bundled file name, nilearn file name).
_SAMPLE_NAMES: dict[str, tuple[str, str]] = {
    "t1": ("MNI152_2009a_T1.nii.gz", "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"),
    "gm": ("MNI152_2009a_GM.nii.gz", "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz"),
    "wm": ("MNI152_2009a_WM.nii.gz", "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"),
}

# -- the demo's fixed settings (the truth the outputs are measured against) ----------------

#: Working resolution of the demo (mm).
DEMO_SPACING_MM = 2.0
#: Known misalignment of the T2-like volume: rotation about x, y, z (degrees, applied in
#: that order, about the head centre) and translation (LPS mm).
TRUTH_ROTATION_DEG = (8.0, -5.0, 10.0)
TRUTH_TRANSLATION_MM = (6.0, -4.0, 5.0)
#: T2-like contrast: weight of white matter, grey matter and CSF.
T2_WEIGHTS = {"wm": 0.35, "gm": 0.6, "csf": 1.0}
T2_SCALE = 1000.0
#: The misaligned T2-like volume lies on the T1's grid enlarged by this margin on every side
#: (a larger field of view, as a second acquisition often has), so the move loses no content.
MOVING_MARGIN_MM = 12.0
NUM_LANDMARKS = 10
#: Rician noise: its sigma as a fraction of the clean T1's maximum.
NOISE_FRACTION = 0.05
GAUSSIAN_SIGMA_MM = 1.0
ANISOTROPIC_CONDUCTANCE = 3.0
ANISOTROPIC_ITERATIONS = 5
#: Registration of the T2-like onto the T1: the torch engine, rigid, Mattes mutual information
#: (the seed and device are the run's).
REGISTRATION = RegisterRequest(mode="rigid", metric="mi", engine="torch")
#: Fusion methods shown after registration; DWT (mean approximation, max-abs details) is the baseline.
FUSION_METHODS: tuple[FusionMethod, ...] = ("average", "dwt", "gff")
#: Super-resolution: thick slices simulated at this factor along k (2 mm -> 6 mm), then
#: restored by cubic B-spline interpolation and by self-supervised SR (iterations of training).
SR_FACTOR = 3
SR_SELFSUP_ITERATIONS = 150
#: Tumor phantom: centre (LPS mm, right-hemisphere white matter), semi-axes (mm),
#: rotation of its axes (degrees), intensity relative to white matter, boundary width (mm)
#: and noise (standard deviation as a fraction of the white-matter intensity).
TUMOR_CENTER_LPS = (-26.0, 6.0, 30.0)
TUMOR_SEMI_AXES_MM = (9.0, 7.0, 8.0)
TUMOR_ROTATION_DEG = (0.0, 0.0, 20.0)
TUMOR_CONTRAST = 1.6
TUMOR_EDGE_MM = 2.0
TUMOR_TEXTURE_FRACTION = 0.06
TUMOR_NOISE_FRACTION = 0.04
#: The ROI box a user would draw: off-centre by this much, and this much larger than the tumor.
ROI_OFFSET_MM = (2.0, -2.0, 1.0)
ROI_MARGIN_MM = 8.0

# Independent random streams (``default_rng([seed, stream])``), so that a step's numbers
# do not depend on which other steps ran before it.
_STREAM_LANDMARKS = 1
_STREAM_RICIAN = 2
_STREAM_TUMOR = 3


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(stream)])


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2**63:
        raise MedTorchInputError(f"the seed must be a whole number >= 0, got {seed!r}", "give a seed such as 0 or 42")
    return int(seed)


# -- sample data -------------------------------------------------------------------------------


def _find_files(folder: Path) -> dict[str, Path] | None:
    for choice in (0, 1):
        files = {role: folder / names[choice] for role, names in _SAMPLE_NAMES.items()}
        if all(p.is_file() for p in files.values()):
            return files
    return None


def _candidate_dirs() -> list[tuple[str, Path]]:
    out: list[tuple[str, Path]] = []
    env = os.environ.get(SAMPLE_DATA_ENV, "").strip()
    if env:
        out.append((f"${SAMPLE_DATA_ENV}", Path(env).expanduser()))
    out.append(("the MedTorch source tree", Path(__file__).resolve().parents[2] / "Resources" / "SampleData"))
    try:
        import importlib.util

        spec = importlib.util.find_spec("nilearn")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.origin:
        out.append(("nilearn", Path(spec.origin).parent / "datasets" / "data"))
    return out


def sample_data_files() -> dict[str, Path]:
    """Paths of the sample T1, GM and WM files (keys ``t1``, ``gm``, ``wm``).

    Looked up, in order: the folder in ``$MEDTORCH_SAMPLE_DATA``; ``Resources/SampleData``
    of the MedTorch source tree (an editable or source install); the copy inside an
    installed ``nilearn`` package. Nothing is downloaded.

    Raises:
        MedTorchInputError: ``$MEDTORCH_SAMPLE_DATA`` is set but lacks the files, or no
            location has them.
    """
    env = os.environ.get(SAMPLE_DATA_ENV, "").strip()
    for source, folder in _candidate_dirs():
        files = _find_files(folder)
        if files is not None:
            return files
        if source.startswith("$"):
            names = ", ".join(n[0] for n in _SAMPLE_NAMES.values())
            raise MedTorchInputError(
                f"{SAMPLE_DATA_ENV} points at {env}, which does not hold the sample data ({names})",
                f"point {SAMPLE_DATA_ENV} at the folder holding those files, or unset it",
            )
    raise MedTorchInputError(
        "the MedTorch sample data (MNI152 2009a T1, GM and WM at 1 mm) was not found",
        "run the demo from a MedTorch source checkout (it ships Resources/SampleData), "
        f"or set {SAMPLE_DATA_ENV} to a folder holding MNI152_2009a_T1/_GM/_WM.nii.gz, "
        "or install nilearn (pip install nilearn), whose package includes the same template",
    )


def sample_data_dir() -> Path:
    """The folder holding the sample data (see :func:`sample_data_files` for the search order)."""
    return sample_data_files()["t1"].parent


@dataclass
class SampleData:
    """The sample head at the demo's resolution (all volumes on one LPS-aligned grid)."""

    t1: Volume  # float32, the template's units (0..255)
    gm: Volume  # float32 probability [0, 1]
    wm: Volume  # float32 probability [0, 1]
    head_mask: np.ndarray  # bool [z, y, x]: inside the (skull-stripped) head
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def geometry(self) -> Geometry:
        return self.t1.geometry


def aligned_grid(geometry: Geometry, spacing_mm: float) -> Geometry:
    """An LPS-aligned grid of ``spacing_mm`` covering the voxel centres of ``geometry``."""
    lo, hi = geometry.bounds()
    size = tuple(int(math.floor((hi[m] - lo[m]) / spacing_mm + 1e-6)) + 1 for m in range(3))
    return Geometry(size=size, origin=lo, spacing=(spacing_mm,) * 3)  # type: ignore[arg-type]


def _smooth(volume: Volume, sigma_mm: float) -> Volume:
    import SimpleITK as sitk

    img = sitk.Cast(volume.to_sitk(), sitk.sitkFloat32)
    out = sitk.SmoothingRecursiveGaussian(img, float(sigma_mm))
    return Volume(sitk.GetArrayFromImage(out).astype(np.float32), volume.geometry, "scalar", dict(volume.metadata))


def _head_mask(t1: np.ndarray) -> np.ndarray:
    """Inside the head: T1 above 10 % of its 99th percentile, largest component, holes filled."""
    from scipy import ndimage

    fg = t1 > 0.1 * float(np.percentile(t1[t1 > 0], 99))
    labels, n = ndimage.label(fg)
    if n > 1:
        counts = np.bincount(labels.ravel())
        counts[0] = 0
        fg = labels == int(np.argmax(counts))
    return ndimage.binary_fill_holes(fg)


def load_sample_data(spacing_mm: float = DEMO_SPACING_MM, progress: ProgressCallback | None = None,
                     cancel: CancelToken | None = None) -> SampleData:
    """Read the 1 mm sample T1, GM and WM and bring them to an LPS-aligned ``spacing_mm`` grid.

    Each volume is smoothed before resampling (Gaussian of FWHM ``sqrt(s^2 - s0^2)``, the
    blur that turns ``s0`` voxels into ``s`` voxels) so that the coarse grid does not alias.
    """
    from medtorch.resample import resample

    files = sample_data_files()
    vols: dict[str, Volume] = {}
    for n, (role, path) in enumerate(files.items()):
        report(progress, cancel, n / 6, f"reading {path.name}")
        vols[role] = read_volume(path)
    src = vols["t1"].geometry
    for role in ("gm", "wm"):
        if not vols[role].geometry.isclose(src, atol=1e-3):
            raise MedTorchInputError(
                f"the sample {role.upper()} map is not on the T1's grid", "restore the sample data files"
            )
    grid = aligned_grid(src, spacing_mm)
    fwhm = math.sqrt(max(spacing_mm**2 - float(np.min(src.spacing)) ** 2, 0.0))
    out: dict[str, Volume] = {}
    for n, role in enumerate(("t1", "gm", "wm")):
        report(progress, cancel, 0.5 + n / 6, f"resampling {role.upper()} to {spacing_mm:g} mm")
        v = vols[role].with_array(vols[role].array.astype(np.float32))
        if fwhm > 0:
            v = _smooth(v, fwhm / (2.0 * math.sqrt(2.0 * math.log(2.0))))
        out[role] = resample(v, grid, interpolation="linear")
    gm = np.clip(out["gm"].array / 255.0, 0.0, 1.0).astype(np.float32)
    wm = np.clip(out["wm"].array / 255.0, 0.0, 1.0).astype(np.float32)
    t1 = np.clip(out["t1"].array, 0.0, None).astype(np.float32)
    report(progress, cancel, 1.0, "sample data ready")
    return SampleData(
        t1=Volume(t1, grid, "scalar", {"source": str(files["t1"])}),
        gm=Volume(gm, grid, "scalar", {"source": str(files["gm"])}),
        wm=Volume(wm, grid, "scalar", {"source": str(files["wm"])}),
        head_mask=_head_mask(t1),
        files=files,
    )


# -- the second modality and its misalignment ----------------------------------------------------


def synthesize_t2like(data: SampleData, weights: dict[str, float] | None = None, scale: float = T2_SCALE,
                      smoothing_mm: float = 1.0) -> Volume:
    """A T2-weighted-like contrast of the same head, made from the tissue maps (SynthMorph-style).

    ``intensity = scale * clip(w_wm * WM + w_gm * GM + w_csf * CSF, 0, 1)`` with
    ``CSF = clip(head - GM - WM, 0, 1)`` (ventricles and sulci), 0 outside the head, then a
    mild Gaussian blur (``smoothing_mm`` sigma). CSF is bright, grey matter intermediate and
    white matter dark: the contrast of a T2, the reverse of the T1 in most tissues.
    """
    w = dict(T2_WEIGHTS if weights is None else weights)
    head = data.head_mask.astype(np.float32)
    gm, wm = data.gm.array, data.wm.array
    csf = np.clip(head - gm - wm, 0.0, 1.0)
    t2 = np.clip(w["wm"] * wm + w["gm"] * gm + w["csf"] * csf, 0.0, 1.0) * head * float(scale)
    vol = Volume(t2.astype(np.float32), data.geometry, "scalar", {"contrast": "T2-like (synthetic)"})
    return _smooth(vol, smoothing_mm) if smoothing_mm > 0 else vol


def rigid_matrix(rotation_deg: Sequence[float], translation_mm: Sequence[float],
                 center: Sequence[float]) -> np.ndarray:
    """4x4 LPS matrix of ``p -> R (p - c) + c + t`` (``R`` from :func:`~medtorch.phantoms.rotation_matrix`)."""
    r = rotation_matrix(tuple(float(a) for a in rotation_deg))  # type: ignore[arg-type]
    c = np.asarray(center, dtype=np.float64)
    m = np.eye(4)
    m[:3, :3] = r
    m[:3, 3] = c + np.asarray(translation_mm, dtype=np.float64) - r @ c
    return m


def apply_matrix(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4x4 matrix to ``(N, 3)`` points."""
    p = np.atleast_2d(np.asarray(points, dtype=np.float64))
    return p @ matrix[:3, :3].T + matrix[:3, 3]


def padded_grid(geometry: Geometry, margin_mm: float) -> Geometry:
    """``geometry`` enlarged by at least ``margin_mm`` on every side (same spacing and direction)."""
    pad = np.ceil(float(margin_mm) / geometry.spacing).astype(int)
    size = tuple(int(n + 2 * p) for n, p in zip(geometry.size, pad))
    origin = geometry.index_to_physical(-pad.astype(np.float64))[0]
    return Geometry(size=size, origin=origin, spacing=geometry.spacing, direction=geometry.direction)  # type: ignore[arg-type]


def make_misaligned(aligned: Volume, truth: np.ndarray, grid: Geometry | None = None,
                    device: str | None = None) -> Volume:
    """The moving image of the truth transform: ``moving(q) = aligned(T^-1 q)`` on ``grid``.

    ``truth`` follows ITK (fixed point -> moving point), so resampling the result through
    ``truth`` onto the fixed grid gives ``aligned`` back. ``grid`` defaults to ``aligned``'s.
    """
    from medtorch.resample import resample

    out = resample(aligned, aligned.geometry if grid is None else grid, np.linalg.inv(truth),
                   interpolation="linear", default_value=0.0, device=device)
    out.metadata["misaligned_by"] = "truth_transform (fixed -> moving, ITK convention)"
    return out


def center_of_mass(volume: Volume, mask: np.ndarray | None = None) -> np.ndarray:
    """Intensity-weighted centre (LPS mm) of a non-negative volume."""
    w = np.clip(volume.array.astype(np.float64), 0.0, None)
    if mask is not None:
        w = w * mask
    k, j, i = np.indices(w.shape, dtype=np.float64)
    total = w.sum()
    ijk = np.array([(w * i).sum(), (w * j).sum(), (w * k).sum()]) / total
    return volume.geometry.index_to_physical(ijk)[0]


def write_truth_transform(matrix: np.ndarray, tfm_path: Path, json_path: Path, info: dict[str, Any]) -> None:
    """Write the truth transform as an ITK ``.tfm`` (AffineTransform, centre 0) and as JSON."""
    import SimpleITK as sitk

    tx = sitk.AffineTransform(3)
    tx.SetMatrix(tuple(float(v) for v in matrix[:3, :3].ravel()))
    tx.SetTranslation(tuple(float(v) for v in matrix[:3, 3]))
    tx.SetCenter((0.0, 0.0, 0.0))
    with atomic_path(tfm_path) as tmp:
        sitk.WriteTransform(tx, str(tmp))
    doc = {
        "description": "known rigid misalignment of t2like_misaligned.nrrd relative to t1.nrrd",
        "convention": "ITK: maps a fixed (T1) LPS point in mm to the corresponding moving (T2-like) LPS point; "
                      "p_moving = matrix[:3,:3] @ p_fixed + matrix[:3,3]. Resampling the moving image through it "
                      "onto the T1 grid aligns it. In Slicer (RAS, 'from parent' = this) flip the signs of the "
                      "first two rows and columns.",
        "matrix_lps": [[float(v) for v in row] for row in matrix],
        "inverse_matrix_lps": [[float(v) for v in row] for row in np.linalg.inv(matrix)],
        **info,
    }
    write_text_atomic(json_path, json.dumps(doc, indent=2) + "\n")


def matrix_from_sitk(transform: Any) -> np.ndarray:
    """4x4 LPS matrix of a SimpleITK affine-like transform (any centre).

    A composite of one transform (as ``sitk.ReadTransform`` may return) is unwrapped.
    """
    import SimpleITK as sitk

    tx = transform
    if isinstance(tx, sitk.CompositeTransform) or tx.GetName() == "CompositeTransform":
        comp = sitk.CompositeTransform(tx)
        if comp.GetNumberOfTransforms() != 1:
            raise MedTorchInputError("the transform file holds several transforms", "give a single affine transform")
        tx = comp.GetNthTransform(0)
    tx = sitk.AffineTransform(tx) if tx.GetName() == "AffineTransform" else tx
    m = np.asarray(tx.GetMatrix(), dtype=np.float64).reshape(3, 3)
    t = np.asarray(tx.GetTranslation(), dtype=np.float64)
    c = np.asarray(tx.GetCenter(), dtype=np.float64)
    out = np.eye(4)
    out[:3, :3] = m
    out[:3, 3] = t + c - m @ c
    return out


# -- enhancement and segmentation inputs -------------------------------------------------------------


def add_rician_noise(volume: Volume, fraction: float = NOISE_FRACTION, seed: int = 0) -> Volume:
    """Rician noise as in magnitude MRI: ``sqrt((x + n1)^2 + n2^2)``, ``n1, n2 ~ N(0, sigma)``.

    ``sigma = fraction * max(volume)``; deterministic given ``seed``.
    """
    x = volume.array.astype(np.float64)
    sigma = float(fraction) * float(x.max())
    rng = _rng(_check_seed(seed), _STREAM_RICIAN)
    n1 = rng.normal(0.0, sigma, x.shape)
    n2 = rng.normal(0.0, sigma, x.shape)
    out = np.sqrt((x + n1) ** 2 + n2**2).astype(np.float32)
    meta = {**volume.metadata, "noise": "rician", "noise_sigma": sigma, "seed": int(seed)}
    return Volume(out, volume.geometry, "scalar", meta)


def white_matter_intensity(data: SampleData) -> float:
    """Median T1 intensity of voxels that are white matter with probability > 0.9."""
    return float(np.median(data.t1.array[data.wm.array > 0.9]))


def tumor_phantom(data: SampleData, seed: int = 0, center: Sequence[float] = TUMOR_CENTER_LPS,
                   semi_axes: Sequence[float] = TUMOR_SEMI_AXES_MM,
                   rotation_deg: Sequence[float] = TUMOR_ROTATION_DEG, contrast: float = TUMOR_CONTRAST,
                   edge_mm: float = TUMOR_EDGE_MM, texture_fraction: float = TUMOR_TEXTURE_FRACTION,
                   noise_fraction: float = TUMOR_NOISE_FRACTION) -> tuple[Volume, Volume, dict[str, Any]]:
    """Insert a bright ellipsoid 'tumor' into the T1; return (phantom, truth label, facts).

    The tumor's mean intensity is ``contrast`` times the white-matter intensity, with a
    smooth random texture (a Gaussian random field of 3 mm correlation, standard deviation
    ``texture_fraction`` of the tumor intensity). Its boundary is a logistic ramp across
    the ellipsoid surface (signed distance along the ray from its centre) rising from 12 %
    to 88 % over ``edge_mm``, like partial volume. Gaussian noise of ``noise_fraction``
    times the white-matter intensity is added everywhere inside the head. The truth label is
    the set of voxel centres inside the ellipsoid. Deterministic given ``seed``.
    """
    from scipy.ndimage import gaussian_filter
    from scipy.special import expit

    geom = data.geometry
    wm_int = white_matter_intensity(data)
    tumor_int = float(contrast) * wm_int
    axes = rotation_matrix(tuple(float(a) for a in rotation_deg))  # type: ignore[arg-type]
    local = (physical_grid(geom) - np.asarray(center, dtype=np.float64)) @ axes  # coordinates along the tumor axes
    r = np.sqrt(((local / np.asarray(semi_axes, dtype=np.float64)) ** 2).sum(axis=-1))
    dist_from_centre = np.linalg.norm(local, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ray_radius = np.where(r > 0, dist_from_centre / np.where(r > 0, r, 1.0), float(np.min(semi_axes)))
    signed = ray_radius * (1.0 - r)  # > 0 inside, mm along the ray
    weight = expit(signed / max(float(edge_mm) / 4.0, 1e-6))
    truth = r <= 1.0
    rng = _rng(_check_seed(seed), _STREAM_TUMOR)
    field = gaussian_filter(rng.normal(0.0, 1.0, weight.shape), sigma=3.0 / geom.spacing[::-1], mode="nearest")
    field /= max(float(field[truth].std()), 1e-12) if truth.any() else 1.0
    t1 = data.t1.array.astype(np.float64)
    img = t1 * (1.0 - weight) + tumor_int * (1.0 + float(texture_fraction) * field) * weight
    sigma = float(noise_fraction) * wm_int
    img = img + rng.normal(0.0, sigma, img.shape) * data.head_mask
    img = np.clip(img, 0.0, None)
    truth_ml = float(truth.sum()) * geom.voxel_volume_mm3 / 1000.0
    facts = {
        "center_lps_mm": [float(v) for v in center],
        "semi_axes_mm": [float(v) for v in semi_axes],
        "rotation_deg": [float(v) for v in rotation_deg],
        "white_matter_intensity": wm_int,
        "tumor_intensity": tumor_int,
        "edge_width_mm": float(edge_mm),
        "texture_fraction": float(texture_fraction),
        "noise_sigma": sigma,
        "truth_volume_ml": truth_ml,
        "analytic_volume_ml": 4.0 / 3.0 * math.pi * float(np.prod(semi_axes)) / 1000.0,
        "seed": int(seed),
    }
    phantom = Volume(img.astype(np.float32), geom, "scalar", {"phantom": "tumor", "seed": int(seed)})
    label = Volume(truth.astype(np.uint8), geom, "label", {"phantom": "tumor truth"})
    return phantom, label, facts


def seed_strokes(truth: np.ndarray, center_zyx: Sequence[int], inside_erosion: int = 1,
                 ring: tuple[int, int] = (2, 4)) -> np.ndarray:
    """Seed label map a user would paint: strokes on the three orthogonal slices through
    ``center_zyx``: tumor (1) inside the truth shrunk by ``inside_erosion`` voxels, background
    (2, the last class) in a ring ``ring`` voxels outside it. ``uint8`` ``[z, y, x]``."""
    from scipy import ndimage

    inner = ndimage.binary_erosion(truth, iterations=inside_erosion) if inside_erosion > 0 else truth.copy()
    outer = ndimage.binary_dilation(truth, iterations=ring[1]) & ~ndimage.binary_dilation(truth, iterations=ring[0])
    planes = np.zeros(truth.shape, bool)
    z, y, x = (int(v) for v in center_zyx)
    planes[z, :, :] = planes[:, y, :] = planes[:, :, x] = True
    seeds = np.zeros(truth.shape, np.uint8)
    seeds[inner & planes] = 1
    seeds[outer & planes] = 2
    return seeds


def thick_slice_volume(thin: Volume, factor: int) -> tuple[Volume, Volume]:
    """Simulate a thick-slice acquisition of ``thin`` along its k axis: a Gaussian slice
    profile (FWHM = the thick spacing), one thick slice per ``factor`` thin slices, centred on
    them. Returns ``(thin_cropped, thick)``: the thin volume cropped to a multiple of
    ``factor`` slices, which lies exactly on the super-resolved grid of ``thick``."""
    from scipy import ndimage

    g = thin.geometry
    f = int(factor)
    nk = (g.size[2] // f) * f
    arr = np.asarray(thin.array[:nk], dtype=np.float32)
    cropped = Volume(arr, Geometry((g.size[0], g.size[1], nk), g.origin, g.spacing, g.direction), thin.kind)
    blurred = ndimage.gaussian_filter1d(arr, f / (2.0 * math.sqrt(2.0 * math.log(2.0))), axis=0, mode="nearest")
    if f % 2:
        thick_arr = blurred[(f - 1) // 2::f]
    else:  # the centre falls between two thin slices
        thick_arr = 0.5 * (blurred[f // 2 - 1::f] + blurred[f // 2::f])
    spacing = g.spacing.copy()
    spacing[2] *= f
    origin = g.origin + g.direction @ (np.array([0.0, 0.0, (f - 1) / 2.0]) * g.spacing)
    thick = Volume(np.ascontiguousarray(thick_arr, dtype=np.float32),
                   Geometry((g.size[0], g.size[1], nk // f), origin, spacing, g.direction), thin.kind,
                   {"simulated": f"{f}x thick slices, Gaussian profile FWHM {spacing[2]:g} mm"})
    return cropped, thick


