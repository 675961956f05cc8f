"""``medtorch demo``: every operation MedTorch has today, end to end, on the bundled sample data.

The demo works on the MNI ICBM152 2009a template (a real T1-weighted MRI with its grey- and
white-matter maps, ``Resources/SampleData``), brought to a 2 mm grid so that the whole run
takes seconds on a laptop CPU. Every output comes with a **known truth**, so the report can
say how far each result is from it:

1. **Data** -- the T1 at 2 mm, and a second modality of the same head: a T2-like contrast
   synthesised from the tissue maps (CSF bright, grey matter intermediate, white matter
   dark, background 0) and then *misaligned* by a known rigid transform.
2. **Fuse** -- :func:`~medtorch.fusion.blend.resample_and_blend` of the T1 and the
   misaligned T2-like, once without a transform (what one gets with no registration) and
   once with the known transform (what a perfect registration would give; registration
   itself comes in a later release). Target registration error (TRE) on landmarks and
   the similarity of the two modalities measure the alignment.
3. **Enhance** -- Rician noise on the T1, then Gaussian and anisotropic-diffusion
   denoising; PSNR and SSIM against the clean T1.
4. **Segment** -- a bright ellipsoidal 'tumor' with a known outline inserted into the T1,
   segmented by threshold + largest component in an ROI box; Dice and volume error.
5. **Report** -- ``report.html`` with figures and tables (:mod:`medtorch.report`) and
   ``summary.json`` with every number, the seed, versions, device and timings.

Everything random derives from ``seed`` (one independent stream per purpose), so a run is
reproducible and the seed is recorded with its outputs.

Registration, fusion, denoising and segmentation (threshold and seeded) run through the
operations layer (:func:`medtorch.ops.run`), as the command line and Slicer run them;
super-resolution calls :func:`medtorch.enhance.superres.superres` with the training
configuration it reports.

Transform convention (as everywhere in MedTorch, :mod:`medtorch.resample`): the truth
transform ``T`` maps a point of the fixed (T1) space to the corresponding point of the
moving (T2-like) space, LPS millimetres. The misaligned image is made by resampling the
aligned one through ``T^-1`` (``moving(q) = aligned(T^-1 q)``), so resampling it through
``T`` onto the T1 grid gives the aligned image back (``moving(T p) = aligned(p)``); the
demo checks both this round trip and the centre of mass (``com(moving) = T com(aligned)``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from medtorch import ops
from medtorch.errors import MedTorchInputError
from medtorch.io import read_volume, write_text_atomic, write_volume
from medtorch.io.atomic import atomic_path
from medtorch.jsonvalue import plain
from medtorch.ops import Roi
from medtorch.ops.enhance import DenoiseRequest
from medtorch.ops.fusion import FuseRequest, FusionMethod
from medtorch.ops.registration import RegisterRequest
from medtorch.ops.segmentation import SeededRequest, ThresholdRequest
from medtorch.phantoms import physical_grid, rotation_matrix
from medtorch.progress import CancelToken, ProgressCallback, SubProgress, report
from medtorch.volume import Geometry, Volume

__all__ = [
    "SAMPLE_DATA_ENV",
    "SampleData",
    "add_rician_noise",
    "dice",
    "load_sample_data",
    "make_misaligned",
    "matrix_from_sitk",
    "normalized_mutual_information",
    "pearson_correlation",
    "psnr",
    "rigid_matrix",
    "run_demo",
    "sample_data_dir",
    "sample_data_files",
    "segment_tumor",
    "ssim3d",
    "synthesize_t2like",
    "target_registration_error",
    "tumor_phantom",
]

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
    out.append(("the MedTorch source tree", Path(__file__).resolve().parents[1] / "Resources" / "SampleData"))
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


# -- metrics ---------------------------------------------------------------------------------------


def target_registration_error(estimate: np.ndarray | Callable[[np.ndarray], np.ndarray], truth: np.ndarray,
                              landmarks: np.ndarray) -> np.ndarray:
    """Per-landmark distance (mm) between where ``estimate`` and ``truth`` map each fixed landmark.

    ``estimate`` is a 4x4 matrix or a function of ``(N, 3)`` points (e.g. a transform read
    back from a file); ``None``-like identity is ``np.eye(4)``.
    """
    pts = np.atleast_2d(np.asarray(landmarks, dtype=np.float64))
    mapped = estimate(pts) if callable(estimate) else apply_matrix(np.asarray(estimate), pts)
    return np.linalg.norm(np.asarray(mapped) - apply_matrix(truth, pts), axis=1)


def _masked(a: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return a[mask] if mask is not None else a.reshape(-1)


def pearson_correlation(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Pearson correlation of two images (inside ``mask``)."""
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


def psnr(reference: np.ndarray, test: np.ndarray, mask: np.ndarray | None = None,
         data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio (dB) of ``test`` against ``reference`` inside ``mask``.

    ``data_range`` defaults to the reference's maximum minus its minimum (whole volume).
    """
    ref = np.asarray(reference, dtype=np.float64)
    rng = float(ref.max() - ref.min()) if data_range is None else float(data_range)
    mse = float(np.mean((_masked(ref, mask) - _masked(test, mask)) ** 2))
    return float("inf") if mse == 0 else 10.0 * math.log10(rng * rng / mse)


def ssim3d(reference: np.ndarray, test: np.ndarray, mask: np.ndarray | None = None,
           data_range: float | None = None, sigma: float = 1.5) -> float:
    """Mean structural similarity (Wang et al. 2004) in 3D with a Gaussian window.

    Local means, variances and covariance use an isotropic Gaussian window of ``sigma``
    voxels (truncated at 3.5 sigma: 11 voxels wide for 1.5, as in the original 2D index);
    ``K1 = 0.01``, ``K2 = 0.03`` and ``L = data_range`` (default: the reference's range).
    The SSIM map is averaged over ``mask`` (all voxels if None).
    """
    from scipy.ndimage import gaussian_filter

    x = np.asarray(reference, dtype=np.float64)
    y = np.asarray(test, dtype=np.float64)
    rng = float(x.max() - x.min()) if data_range is None else float(data_range)
    c1, c2 = (0.01 * rng) ** 2, (0.03 * rng) ** 2

    def blur(a: np.ndarray) -> np.ndarray:
        return gaussian_filter(a, sigma=sigma, truncate=3.5, mode="nearest")

    mx, my = blur(x), blur(y)
    vx = blur(x * x) - mx * mx
    vy = blur(y * y) - my * my
    cxy = blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(_masked(s, mask).mean())


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap ``2 |A & B| / (|A| + |B|)`` of two masks (1 when both are empty)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


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


def segment_tumor(data: SampleData, seed: int = 0, progress: ProgressCallback | None = None,
                   cancel: CancelToken | None = None) -> dict[str, Any]:
    """Make the tumor phantom and segment it by threshold + largest component in an ROI box.

    The threshold is halfway between the white-matter and the tumor intensity; the ROI is
    the box a user would draw around the tumor (off-centre by :data:`ROI_OFFSET_MM`, with
    :data:`ROI_MARGIN_MM` margin). Returns the volumes and the metrics against the truth.
    """
    report(progress, cancel, 0.0, "making the tumor phantom")
    phantom, truth, facts = tumor_phantom(data, seed)
    threshold = 0.5 * (facts["white_matter_intensity"] + facts["tumor_intensity"])
    half = float(np.max(TUMOR_SEMI_AXES_MM)) + ROI_MARGIN_MM
    center = np.asarray(TUMOR_CENTER_LPS) + np.asarray(ROI_OFFSET_MM)
    roi_request = Roi((float(center[0]), float(center[1]), float(center[2])), (half, half, half))
    roi = roi_request.box()
    report(progress, cancel, 0.3, "thresholding")
    t0 = time.perf_counter()
    res = ops.run(ThresholdRequest(lower=threshold, roi=roi_request), {"input": phantom},
                  progress=SubProgress(progress, 0.3, 0.9), cancel=cancel).native
    seconds = time.perf_counter() - t0
    seg = res.label.array.astype(bool)
    truth_mask = truth.array.astype(bool)
    truth_ml = facts["truth_volume_ml"]
    metrics = {
        "threshold": threshold,
        "roi_center_lps_mm": [float(v) for v in roi.center],
        "roi_half_size_mm": [float(v) for v in roi.half_size],
        "dice": dice(seg, truth_mask),
        "truth_volume_ml": truth_ml,
        "segmented_volume_ml": res.volume_ml,
        "volume_error_ml": res.volume_ml - truth_ml,
        "volume_error_percent": 100.0 * (res.volume_ml - truth_ml) / truth_ml,
        "false_positive_voxels": int((seg & ~truth_mask).sum()),
        "false_negative_voxels": int((~seg & truth_mask).sum()),
        "num_components": res.num_components,
        "seconds": seconds,
    }
    report(progress, cancel, 1.0, "segmented")
    return {"phantom": phantom, "truth": truth, "segmentation": res.label, "roi": roi, "facts": facts,
            "metrics": metrics}


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


def segment_tumor_seeded(phantom: Volume, truth: Volume, progress: ProgressCallback | None = None,
                          cancel: CancelToken | None = None) -> dict[str, Any]:
    """Seeded segmentation (the ``seeded`` operation, default settings) of the tumor phantom
    from :func:`seed_strokes` on the three orthogonal slices through its centre."""
    truth_mask = truth.array.astype(bool)
    center = np.round(np.argwhere(truth_mask).mean(axis=0)).astype(int)
    seeds = Volume(seed_strokes(truth_mask, center), phantom.geometry, "label", {"seeds": "strokes on 3 slices"})
    t0 = time.perf_counter()
    res = ops.run(SeededRequest(), {"channel0": phantom, "seeds": seeds}, progress=progress, cancel=cancel)
    seconds = time.perf_counter() - t0
    seg = res.volumes["label"].array > 0
    truth_ml = float(truth_mask.sum()) * phantom.geometry.voxel_volume_mm3 / 1000.0
    seg_ml = float(seg.sum()) * phantom.geometry.voxel_volume_mm3 / 1000.0
    metrics = {
        "dice": dice(seg, truth_mask),
        "segmented_volume_ml": seg_ml,
        "volume_error_ml": seg_ml - truth_ml,
        "volume_error_percent": 100.0 * (seg_ml - truth_ml) / truth_ml,
        "seed_voxels": {"tumor": int((seeds.array == 1).sum()), "background": int((seeds.array == 2).sum())},
        "seconds": seconds,
    }
    return {"seeds": seeds, "segmentation": Volume(seg.astype(np.uint8), phantom.geometry, "label"),
            "metrics": metrics}


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


# -- the demo ----------------------------------------------------------------------------------------


def _versions() -> dict[str, str]:
    import scipy
    import SimpleITK as sitk
    import torch

    import medtorch

    out = {
        "medtorch": medtorch.__version__,
        "torch": torch.__version__,
        "SimpleITK": sitk.Version_VersionString() if hasattr(sitk, "Version_VersionString") else sitk.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "python": platform.python_version(),
    }
    try:
        import matplotlib

        out["matplotlib"] = matplotlib.__version__
    except ImportError:  # pragma: no cover
        pass
    return out


def _stats(values: np.ndarray) -> dict[str, float]:
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "median": float(np.median(v)), "max": float(v.max())}


class _Timer:
    def __init__(self, store: dict[str, float], name: str) -> None:
        self.store, self.name = store, name

    def __enter__(self) -> _Timer:
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.store[self.name] = time.perf_counter() - self.t0


def run_demo(out_dir: Path, progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
             seed: int = 0, *, device: str | None = None) -> dict:
    """Run the whole demo into ``out_dir``; return the summary (also in ``out_dir/summary.json``).

    Args:
        out_dir: output folder (created if needed); existing outputs of an earlier run are
            replaced, each atomically.
        progress, cancel: see :mod:`medtorch.progress`.
        seed: seeds every random choice (noise, landmarks); recorded in the outputs.
        device: torch device for resampling (``None``: ``MEDTORCH_DEVICE`` or automatic).

    Returns:
        A JSON-friendly dict: ``seed``, ``versions``, ``device``, per-step metrics
        (``truth``, ``registration``, ``fusion``, ``enhance``, ``segment``), ``timings_s``,
        ``outputs`` (absolute paths of every file written) and ``report`` (the HTML page).

    Raises:
        MedTorchInputError: sample data missing, output folder not writable.
        Cancelled: ``cancel`` was set.
    """
    import SimpleITK as sitk
    from scipy import ndimage

    from medtorch.device import device_summary, select_device
    from medtorch.resample import resample

    seed = _check_seed(seed)
    t_start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "figures").mkdir(exist_ok=True)
    dev = select_device(device)
    dev_str = str(dev)
    timings: dict[str, float] = {}
    outputs: dict[str, str] = {}

    def save(vol: Volume, name: str) -> None:
        outputs[name] = str(write_volume(vol, out / name).resolve())

    report(progress, cancel, 0.0, "starting the demo")

    # 1. data ------------------------------------------------------------------------------------
    with _Timer(timings, "data"):
        sp = SubProgress(progress, 0.0, 0.2, "data")
        data = load_sample_data(DEMO_SPACING_MM, progress=SubProgress(sp, 0.0, 0.5), cancel=cancel)
        geom = data.geometry
        head = data.head_mask
        report(sp, cancel, 0.55, "synthesising the T2-like contrast")
        t2_aligned = synthesize_t2like(data)
        head_center = geom.index_to_physical(np.argwhere(head)[:, ::-1].mean(axis=0))[0]
        truth = rigid_matrix(TRUTH_ROTATION_DEG, TRUTH_TRANSLATION_MM, head_center)
        report(sp, cancel, 0.65, "misaligning the T2-like volume by the known transform")
        moving = make_misaligned(t2_aligned, truth, padded_grid(geom, MOVING_MARGIN_MM), device=dev_str)
        # Checks of the transform convention: round trip and centre of mass.
        back = resample(moving, geom, truth, interpolation="linear", device=dev_str)
        interior = ndimage.binary_erosion(head, iterations=2)
        round_trip_r = pearson_correlation(back.array, t2_aligned.array, interior)
        com_fixed = center_of_mass(t2_aligned)
        com_moving = center_of_mass(moving)
        com_error = float(np.linalg.norm(com_moving - apply_matrix(truth, com_fixed)[0]))
        com_shift_if_inverted = float(np.linalg.norm(com_moving - apply_matrix(np.linalg.inv(truth), com_fixed)[0]))
        report(sp, cancel, 0.8, "writing the data")
        save(data.t1, "t1.nrrd")
        save(moving, "t2like_misaligned.nrrd")
        save(t2_aligned, "t2like_aligned_truth.nrrd")
        tfm_path, json_path = out / "truth_transform.tfm", out / "truth_transform.json"
        write_truth_transform(truth, tfm_path, json_path, {
            "rotation_deg_xyz": list(TRUTH_ROTATION_DEG),
            "rotation_order": "about x, then y, then z (R = Rz Ry Rx), about center_lps_mm",
            "translation_mm": list(TRUTH_TRANSLATION_MM),
            "center_lps_mm": [float(v) for v in head_center],
            "seed": seed,
        })
        outputs["truth_transform.tfm"] = str(tfm_path.resolve())
        outputs["truth_transform.json"] = str(json_path.resolve())
        read_back = sitk.ReadTransform(str(tfm_path))
        rng = _rng(seed, _STREAM_LANDMARKS)
        deep = ndimage.binary_erosion(head, iterations=4)  # >= 8 mm inside the brain
        candidates = np.argwhere(deep)  # (k, j, i)
        pick = np.sort(rng.choice(len(candidates), size=NUM_LANDMARKS, replace=False))
        landmarks = geom.index_to_physical(candidates[pick][:, ::-1].astype(np.float64))
        from_tfm = np.array([read_back.TransformPoint(tuple(float(v) for v in p)) for p in landmarks])
        tfm_error = float(np.abs(from_tfm - apply_matrix(truth, landmarks)).max())
        report(sp, cancel, 1.0, "data ready")

    truth_info = {
        "matrix_lps": truth,
        "rotation_deg_xyz": list(TRUTH_ROTATION_DEG),
        "translation_mm": list(TRUTH_TRANSLATION_MM),
        "center_lps_mm": head_center,
        "checks": {
            "round_trip_correlation": round_trip_r,
            "center_of_mass_error_mm": com_error,
            "center_of_mass_error_if_inverted_mm": com_shift_if_inverted,
            "tfm_readback_max_error_mm": tfm_error,
        },
    }

    # 2. register --------------------------------------------------------------------------------
    with _Timer(timings, "register"):
        sp = SubProgress(progress, 0.2, 0.3, "registration")
        t0 = time.perf_counter()
        request = dataclasses.replace(REGISTRATION, seed=seed, device=dev_str)
        reg = ops.run(request, {"fixed": data.t1, "moving": moving},
                      progress=SubProgress(sp, 0.0, 0.85, "registering T2-like to T1"), cancel=cancel).native
        reg_seconds = time.perf_counter() - t0
        report(sp, cancel, 0.9, "writing the registration")
        reg_tfm = out / "registration_transform.tfm"
        reg.write_transform(reg_tfm)
        outputs["registration_transform.tfm"] = str(reg_tfm.resolve())
        reg_read = sitk.ReadTransform(str(reg_tfm))
        save(reg.resampled, "t2like_registered.nrrd")
        est = matrix_from_sitk(read_back)
        tre_identity = target_registration_error(np.eye(4), truth, landmarks)
        tre_known = target_registration_error(
            lambda pts: np.array([read_back.TransformPoint(tuple(float(v) for v in p)) for p in pts]), truth, landmarks)
        tre_reg = target_registration_error(
            lambda pts: np.array([reg_read.TransformPoint(tuple(float(v) for v in p)) for p in pts]), truth, landmarks)
        registration = {
            "method": {"mode": request.mode, "metric": request.metric, "engine": request.engine, "seed": seed,
                       "device": dev_str},
            "report": {k: v for k, v in reg.report.items() if isinstance(v, (int, float, str, bool))},
            "seconds": reg_seconds,
            "note": "TRE of the registration is measured through registration_transform.tfm as read back by "
                    "SimpleITK; 'known transform (reference)' is the truth transform read back from "
                    "truth_transform.tfm",
            "landmarks_lps_mm": landmarks,
            "tre_mm": {"no_registration": _stats(tre_identity), "registered": _stats(tre_reg),
                       "known_transform": _stats(tre_known)},
            "tre_per_landmark_mm": {"no_registration": tre_identity, "registered": tre_reg,
                                    "known_transform": tre_known},
            "verdict": reg.verdict.to_dict() if reg.verdict is not None else None,
        }
        report(sp, cancel, 1.0, "registration done")

    # 3. fuse --------------------------------------------------------------------------------------
    with _Timer(timings, "fuse"):
        sp = SubProgress(progress, 0.3, 0.45, "fusion")
        cases: list[tuple[str, FusionMethod, Any]] = [("no_registration", "average", None)]
        cases += [(f"registered_{m}", m, reg.affine) for m in FUSION_METHODS]
        cases.append(("known_transform", "average", est))
        fusion: dict[str, Any] = {"methods": list(FUSION_METHODS), "baseline": "dwt"}
        fused: dict[str, Volume] = {}
        resampled: dict[str, Volume] = {}
        for n, (name, method, tx) in enumerate(cases):
            t0 = time.perf_counter()
            # the known-transform case is a reference for the alignment measures only: no fusion metrics
            fuse = FuseRequest(method=method, assume_aligned=tx is None,
                               metrics=None if name == "known_transform" else "3d", device=dev_str,
                               matrix=None if tx is None else tuple(tuple(float(v) for v in row) for row in tx))
            res = ops.run(fuse, {"fixed": data.t1, "moving": moving}, cancel=cancel,
                          progress=SubProgress(sp, 0.9 * n / len(cases), 0.9 * (n + 1) / len(cases),
                                               f"{method} fusion, {name.replace('_', ' ')}")).native
            fused[name] = res.fused
            resampled[name] = res.moving_resampled if res.moving_resampled is not None else res.moving_prepared
            fusion[name] = {
                "method": method,
                "seconds": time.perf_counter() - t0,
                "metrics": {k: float(v) for k, v in (res.metrics or {}).items()},
                "nmi_t1_vs_t2like": normalized_mutual_information(data.t1.array, resampled[name].array, head),
                "correlation_with_aligned_truth": pearson_correlation(resampled[name].array, t2_aligned.array,
                                                                      head),
                "overlap_fraction": res.overlap_fraction,
            }
        fusion["nmi_truth_t1_vs_aligned_t2like"] = normalized_mutual_information(data.t1.array, t2_aligned.array,
                                                                                 head)
        fusion["output_range"] = "[0, 1] (each source normalised: 1st-99th percentile of the MRI)"
        report(sp, cancel, 0.95, "writing the fused volumes")
        save(fused["no_registration"], "fused_no_registration.nrrd")
        for m in FUSION_METHODS:
            save(fused[f"registered_{m}"], f"fused_registered_{m}.nrrd")
        report(sp, cancel, 1.0, "fusion done")

    # 4. enhance ----------------------------------------------------------------------------------
    with _Timer(timings, "enhance"):
        sp = SubProgress(progress, 0.45, 0.55, "denoising")
        clean = data.t1
        peak = float(clean.array.max())
        noisy = add_rician_noise(clean, NOISE_FRACTION, seed)
        report(sp, cancel, 0.1, "denoising (Gaussian)")
        t0 = time.perf_counter()
        den_g = ops.run(DenoiseRequest(method="gaussian", strength=GAUSSIAN_SIGMA_MM), {"input": noisy},
                        progress=SubProgress(sp, 0.1, 0.3), cancel=cancel).volumes["output"]
        sec_g = time.perf_counter() - t0
        report(sp, cancel, 0.3, "denoising (anisotropic diffusion)")
        t0 = time.perf_counter()
        den_a = ops.run(DenoiseRequest(method="anisotropic", strength=ANISOTROPIC_CONDUCTANCE,
                                       iterations=ANISOTROPIC_ITERATIONS), {"input": noisy},
                        progress=SubProgress(sp, 0.3, 0.6), cancel=cancel).volumes["output"]
        sec_a = time.perf_counter() - t0
        report(sp, cancel, 0.6, "measuring PSNR and SSIM")
        enhance: dict[str, Any] = {
            "noise": {"type": "rician", "fraction_of_max": NOISE_FRACTION, "sigma": noisy.metadata["noise_sigma"],
                      "seed": seed},
            "data_range": peak,
            "mask": "head mask",
        }
        for n, (name, vol, sec, params) in enumerate((
            ("noisy", noisy, None, {}),
            ("gaussian", den_g, sec_g, {"sigma_mm": GAUSSIAN_SIGMA_MM}),
            ("anisotropic", den_a, sec_a, {"conductance": ANISOTROPIC_CONDUCTANCE,
                                           "iterations": ANISOTROPIC_ITERATIONS}),
        )):
            report(sp, cancel, 0.6 + 0.1 * n, f"metrics of {name}")
            entry: dict[str, Any] = {
                "psnr_db": psnr(clean.array, vol.array, head, peak),
                "ssim": ssim3d(clean.array, vol.array, head, peak),
                **params,
            }
            if sec is not None:
                entry["seconds"] = sec
            enhance[name] = entry
        for name in ("gaussian", "anisotropic"):
            enhance[name]["psnr_gain_db"] = enhance[name]["psnr_db"] - enhance["noisy"]["psnr_db"]
            enhance[name]["ssim_gain"] = enhance[name]["ssim"] - enhance["noisy"]["ssim"]
        report(sp, cancel, 0.95, "writing the denoised volumes")
        save(noisy, "t1_noisy.nrrd")
        save(den_g, "t1_denoised_gaussian.nrrd")
        save(den_a, "t1_denoised_anisotropic.nrrd")
        report(sp, cancel, 1.0, "denoising done")

    with _Timer(timings, "superres"):
        from medtorch.enhance.srnet import SRTrainConfig
        from medtorch.enhance.superres import superres

        sp = SubProgress(progress, 0.55, 0.85, "super-resolution")
        thin, thick = thick_slice_volume(clean, SR_FACTOR)
        sr_mask = head[: thin.geometry.size[2]]
        sr: dict[str, Any] = {"factor": SR_FACTOR, "axis": "k", "thick_spacing_mm": float(thick.geometry.spacing[2]),
                              "profile": "Gaussian, FWHM = thick spacing (given to the methods)",
                              "reference": "the 2 mm T1 (t1_sr_reference.nrrd), on the super-resolved grid"}
        sr_out: dict[str, Volume] = {}
        for n, (name, sr_method, cfg) in enumerate((
            ("bspline", "bspline", None),
            ("selfsup", "selfsup", SRTrainConfig(iterations=SR_SELFSUP_ITERATIONS, seed=seed)),
        )):
            t0 = time.perf_counter()
            vol, _model = superres(thick, sr_method, factor=SR_FACTOR, axis="k", fwhm_mm=float(thick.geometry.spacing[2]),
                                   config=cfg, device=dev_str,
                                   progress=SubProgress(sp, (0.0, 0.02)[n], (0.02, 0.95)[n],
                                                        f"{name} super-resolution"),
                                   cancel=cancel)
            sr_out[name] = vol
            sr[name] = {"psnr_db": psnr(thin.array, vol.array, sr_mask, peak),
                        "ssim": ssim3d(thin.array, vol.array, sr_mask, peak),
                        "seconds": time.perf_counter() - t0}
            if cfg is not None:
                sr[name]["training"] = cfg.as_dict()
        sr["selfsup"]["psnr_gain_over_bspline_db"] = sr["selfsup"]["psnr_db"] - sr["bspline"]["psnr_db"]
        enhance["superres"] = sr
        report(sp, cancel, 0.96, "writing the super-resolved volumes")
        save(thick, "t1_thick_slices.nrrd")
        save(thin, "t1_sr_reference.nrrd")
        save(sr_out["bspline"], "t1_sr_bspline.nrrd")
        save(sr_out["selfsup"], "t1_sr_selfsup.nrrd")
        report(sp, cancel, 1.0, "super-resolution done")

    # 5. segment ----------------------------------------------------------------------------------
    with _Timer(timings, "segment"):
        sp = SubProgress(progress, 0.85, 0.9, "segmentation")
        seg = segment_tumor(data, seed, progress=SubProgress(sp, 0.0, 0.5), cancel=cancel)
        seeded = segment_tumor_seeded(seg["phantom"], seg["truth"], progress=SubProgress(sp, 0.5, 0.9),
                                       cancel=cancel)
        seg["seeded"] = seeded
        report(sp, cancel, 0.9, "writing the segmentation")
        save(seg["phantom"], "tumor_phantom.nrrd")
        save(seg["truth"], "tumor_truth.nrrd")
        save(seg["segmentation"], "tumor_segmentation.nrrd")
        save(seeded["seeds"], "tumor_seeds.nrrd")
        save(seeded["segmentation"], "tumor_segmentation_seeded.nrrd")
        report(sp, cancel, 1.0, "segmentation done")
    segment = {"tumor": seg["facts"], **seg["metrics"], "seeded": seeded["metrics"]}

    # 5. report ----------------------------------------------------------------------------------------
    with _Timer(timings, "report"):
        sp = SubProgress(progress, 0.9, 1.0, "report")
        figures = _draw_figures(out, data, t2_aligned, resampled, fused, clean, noisy, den_g, den_a, seg,
                                head_center, enhance, fusion, sp, cancel, sr=(thin, thick, sr_out))
        for name, path in figures.items():
            outputs[f"figures/{name}"] = str(path.resolve())
    with _Timer(timings, "renders"):
        report(sp, cancel, 0.85, "rendering Slicer's views")
        renders = render_views(out, fused, seg)
        for name, path_text in renders["files"].items():
            outputs[f"figures/{name}"] = path_text
    timings["total"] = time.perf_counter() - t_start

    summary: dict[str, Any] = {
        "demo": "medtorch demo",
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seed": seed,
        "versions": _versions(),
        "device": device_summary(dev),
        "sample_data": {"files": {k: str(v) for k, v in data.files.items()},
                        "description": "MNI ICBM152 2009a nonlinear symmetric template (1 mm), see NOTICE.md"},
        "grid": {"size_ijk": list(geom.size), "spacing_mm": list(geom.spacing), "origin_lps_mm": list(geom.origin),
                 "direction": geom.direction.ravel()},
        "truth": truth_info,
        "registration": registration,
        "fusion": fusion,
        "enhance": enhance,
        "segment": segment,
        "renders": renders,
        "timings_s": timings,
        "outputs": outputs,
    }
    summary["report"] = str((out / "report.html").resolve())
    summary["summary_json"] = str((out / "summary.json").resolve())
    summary = plain(summary, nonfinite="str")
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    report(sp, cancel, 0.9, "writing report.html")
    _write_html(out, summary, figures)
    report(progress, cancel, 1.0, "demo finished")
    return summary


# -- figures and the HTML page -----------------------------------------------------------------------


def _robust01(a: np.ndarray, mask: np.ndarray | None = None, lo_pct: float = 1.0, hi_pct: float = 99.0) -> np.ndarray:
    vals = a[mask] if mask is not None and mask.any() else a.reshape(-1)
    lo, hi = np.percentile(vals, [lo_pct, hi_pct])
    return np.clip((a - lo) / max(hi - lo, 1e-12), 0.0, 1.0)


#: the Slicer-view renders of the report (figures/ files) and what each shows
RENDERS = {
    "fusion-3d.png": "Slicer's 3D view: the T1 and T2-like volume averaged without registration (left) and fused by "
                     "guided filtering after it (right), volume-rendered; misalignment doubles the head's outline.",
    "segmentation-3d.png": "Slicer's views: the tumor phantom with the seeded segmentation (yellow, filled) and the "
                           "truth (green outline) in the Red view, zoomed on the tumor; their surfaces in 3D over a "
                           "faint volume rendering of the head.",
}


def render_views(out: Path, fused: dict[str, Volume], seg: dict[str, Any], size: int = 256) -> dict[str, Any]:
    """The report's Slicer-view renders (:data:`RENDERS`) into ``out/figures``, when rendering is
    available (:mod:`medtorch.slicer.views`; ``MEDTORCH_NO_RENDER=1`` turns it off).

    Returns ``{"files": {name: path}, "unavailable": why or None}``; never raises for want of
    rendering: the report then says why in one line and keeps its matplotlib figures.
    """
    try:
        from medtorch.slicer import renders
    except ImportError as exc:  # pragma: no cover - medtorch.slicer imports numpy only
        return {"files": {}, "unavailable": f"medtorch.slicer cannot be imported ({exc})"}

    fig_dir = out / "figures"
    files: dict[str, str] = {}
    problems: list[str] = []
    jobs: list[tuple[str, Callable[..., Path], tuple[Any, ...]]] = [
        ("fusion-3d.png", renders.volumes_in_3d,
         ([("average, no registration", fused["no_registration"]), ("gff, registered", fused["registered_gff"])],
          fig_dir / "fusion-3d.png", size)),
    ]
    if "seeded" in seg:
        segments = [renders.Segment(seg["seeded"]["segmentation"], "tumor (seeded)", (1.0, 0.85, 0.1)),
                    renders.Segment(seg["truth"], "tumor (truth)", (0.2, 0.9, 0.3), surface=False)]
        jobs.append(("segmentation-3d.png", renders.segments_in_views,
                     (seg["phantom"], segments, fig_dir / "segmentation-3d.png", size)))
    for name, render, args in jobs:
        path, why = renders.try_render(render, *args)
        if path is not None:
            files[name] = str(path.resolve())
        elif why is not None and why not in problems:
            problems.append(why)
    return {"files": files, "unavailable": "; ".join(problems) or None}


def _render_line(renders: dict[str, Any] | None) -> str | None:
    """The report's one line on missing Slicer-view renders, or None when all were made."""
    if renders is None or not renders.get("unavailable"):
        return None
    return (f"Slicer-view renders (3D views of the fusion and the segmentation) are not in this report: "
            f"{renders['unavailable']}. The figures below are matplotlib slices.")


def _draw_figures(out: Path, data: SampleData, t2_aligned: Volume, resampled: dict[str, Volume],
                  fused: dict[str, Volume], clean: Volume, noisy: Volume, den_g: Volume, den_a: Volume,
                  seg: dict[str, Any], head_center: np.ndarray, enhance: dict[str, Any], fusion: dict[str, Any],
                  progress: ProgressCallback | None, cancel: CancelToken | None,
                  sr: tuple[Volume, Volume, dict[str, Volume]] | None = None) -> dict[str, Path]:
    from medtorch.report import Panel, checkerboard, display_volume, panel_figure

    fig_dir = out / "figures"
    geom = data.geometry
    head = data.head_mask
    centre = np.asarray(head_center, dtype=np.float64)
    files: dict[str, Path] = {}

    def disp(a: np.ndarray) -> Any:
        return display_volume(np.asarray(a), geom)

    # -- registration: T1 vs T2-like without and with the transform ------------------------------
    report(progress, cancel, 0.0, "drawing the registration figure")
    t1n = _robust01(data.t1.array, head)
    d_t1 = disp(t1n)
    d_head = disp(head.astype(np.float32))
    orient = d_t1.labels("axial")
    # One window for every T2-like image: that of the aligned truth inside the head.
    t2_lo, t2_hi = np.percentile(t2_aligned.array[head], [1.0, 99.0])

    def t2_window(a: np.ndarray) -> np.ndarray:
        return np.clip((a - t2_lo) / max(t2_hi - t2_lo, 1e-12), 0.0, 1.0)

    panels = []
    for name, label in (("no_registration", "no registration"), ("registered_average", "registered")):
        d_m = disp(t2_window(resampled[name].array))
        for plane in ("axial", "coronal"):
            a, b = d_t1.slice(plane, centre), d_m.slice(plane, centre)
            outline = d_head.slice(plane, centre) > 0.5
            panels.append(Panel(b, f"T2-like, {label}\n(green: T1 brain outline)", 0, 1, aspect=d_t1.aspect(plane),
                                contours=[(outline, "#00ff66", "")], orientation=d_t1.labels(plane)))
            panels.append(Panel(checkerboard(a, b, 10), f"checkerboard T1 / T2-like\n{label}", 0, 1,
                                aspect=d_t1.aspect(plane), orientation=d_t1.labels(plane)))
    files["registration.png"] = panel_figure(
        fig_dir / "registration.png", panels, ncols=4,
        title="T1 (fixed) and T2-like (moving): without registration (top) and registered by MedTorch (bottom)")

    # -- fusion: fused volumes -------------------------------------------------------------------------------
    report(progress, cancel, 0.25, "drawing the fusion figure")
    panels = []
    rows = [("no_registration", "average, no registration")]
    rows += [(f"registered_{m}", f"{m}, registered") for m in FUSION_METHODS]
    for name, label in rows:
        d_f = disp(fused[name].array)
        m = fusion[name]["metrics"]
        caption = f"{label}\nQAB/F {m.get('QABF', float('nan')):.3f}, VIF {m.get('VIF', float('nan')):.3f}"
        for plane in ("axial", "coronal"):
            panels.append(Panel(d_f.slice(plane, centre), caption, 0, 1, aspect=d_f.aspect(plane),
                                orientation=d_f.labels(plane)))
    files["fusion.png"] = panel_figure(fig_dir / "fusion.png", panels, ncols=4,
                                       title="Fused T1 + T2-like (output range [0, 1]): without registration, "
                                             "then registered with each fusion method")

    # -- enhancement -----------------------------------------------------------------------------------------
    report(progress, cancel, 0.5, "drawing the enhancement figure")
    vmax = float(np.percentile(clean.array[head], 99.5))
    rows = [("clean T1 (truth)", clean, None), ("Rician noise 5 %", noisy, "noisy"),
            ("Gaussian, sigma 1 mm", den_g, "gaussian"), ("anisotropic diffusion", den_a, "anisotropic")]
    panels = []
    zoom: list[Panel] = []
    d0 = disp(clean.array)
    sl0 = d0.slice("axial", centre)
    r0, r1 = int(sl0.shape[0] * 0.25), int(sl0.shape[0] * 0.6)
    c0, c1 = int(sl0.shape[1] * 0.3), int(sl0.shape[1] * 0.7)
    for title, vol, key in rows:
        d = disp(vol.array)
        sl = d.slice("axial", centre)
        if key is not None:
            title = f"{title}\nPSNR {enhance[key]['psnr_db']:.1f} dB, SSIM {enhance[key]['ssim']:.3f}"
        else:
            title = f"{title}\n(reference)"
        panels.append(Panel(sl, title, 0, vmax, aspect=d.aspect("axial"), orientation=orient,
                            rectangles=[(c0 - 0.5, r0 - 0.5, c1 - 0.5, r1 - 0.5, "#ffcc00")]))
        zoom.append(Panel(sl[r0:r1, c0:c1], "zoom (dashed box)", 0, vmax, aspect=d.aspect("axial")))
    files["enhancement.png"] = panel_figure(fig_dir / "enhancement.png", panels + zoom, ncols=4,
                                            title="Denoising the T1 (same window in every panel)")

    # -- super-resolution ------------------------------------------------------------------------------------
    if sr is not None:
        report(progress, cancel, 0.65, "drawing the super-resolution figure")
        thin, thick, sr_out = sr
        g_thin = thin.geometry
        vmax_sr = float(np.percentile(thin.array[head[: g_thin.size[2]]], 99.5))
        info = enhance["superres"]
        sr_rows = [("2 mm T1 (reference)", thin, None),
                   (f"{info['thick_spacing_mm']:g} mm slices (input)", thick, None),
                   ("cubic B-spline", sr_out["bspline"], "bspline"),
                   ("self-supervised SR", sr_out["selfsup"], "selfsup")]
        panels = []
        for title, vol, key in sr_rows:
            d = display_volume(np.asarray(vol.array), vol.geometry)
            if key is not None:
                title = f"{title}\nPSNR {info[key]['psnr_db']:.1f} dB, SSIM {info[key]['ssim']:.3f}"
            for plane in ("coronal", "sagittal"):
                panels.append(Panel(d.slice(plane, centre), f"{title}", 0, vmax_sr, aspect=d.aspect(plane),
                                    orientation=d.labels(plane)))
        files["superres.png"] = panel_figure(fig_dir / "superres.png", panels, ncols=4,
                                             title=f"Through-plane super-resolution x{info['factor']} "
                                                   "(coronal and sagittal slices; same window in every panel)")

    # -- segmentation -------------------------------------------------------------------------------------------
    report(progress, cancel, 0.75, "drawing the segmentation figure")
    tc = np.asarray(TUMOR_CENTER_LPS, dtype=np.float64)
    d_p = disp(seg["phantom"].array)
    d_t = disp(seg["truth"].array.astype(np.float32))
    d_s = disp(seg["segmentation"].array.astype(np.float32))
    d_sd = disp(seg["seeded"]["segmentation"].array.astype(np.float32)) if "seeded" in seg else None
    roi = seg["roi"]
    vmax_p = 1.15 * float(seg["facts"]["tumor_intensity"])
    panels = []
    for plane in ("axial", "coronal", "sagittal"):
        lo_c = roi.center - roi.half_size
        hi_c = roi.center + roi.half_size
        corners = d_p.to_pixels(plane, np.array([lo_c, hi_c]))
        rect = (float(corners[:, 0].min()), float(corners[:, 1].min()), float(corners[:, 0].max()),
                float(corners[:, 1].max()), "#ffcc00")
        truth_sl, seg_sl = d_t.slice(plane, tc), d_s.slice(plane, tc)
        img = d_p.slice(plane, tc)
        contours = [(truth_sl, "#00ff66", ""), (seg_sl, "#ff3030", "", "dashed")]
        if d_sd is not None:
            contours.append((d_sd.slice(plane, tc), "#30a0ff", "", "dotted"))
        panels.append(Panel(img, f"tumor phantom, {plane}", 0, vmax_p, aspect=d_p.aspect(plane),
                            contours=contours, rectangles=[rect], orientation=d_p.labels(plane)))
    # zoom on the axial slice
    plane = "axial"
    px = d_p.to_pixels(plane, tc[None])[0]
    half = int(round((float(np.max(TUMOR_SEMI_AXES_MM)) + ROI_MARGIN_MM + 4.0) / float(d_p.spacing[0])))
    c_lo, r_lo = max(int(px[0]) - half, 0), max(int(px[1]) - half, 0)
    img = d_p.slice(plane, tc)[r_lo:r_lo + 2 * half, c_lo:c_lo + 2 * half]
    tsl = d_t.slice(plane, tc)[r_lo:r_lo + 2 * half, c_lo:c_lo + 2 * half]
    ssl = d_s.slice(plane, tc)[r_lo:r_lo + 2 * half, c_lo:c_lo + 2 * half]
    m = seg["metrics"]
    zoom_contours = [(tsl, "#00ff66", "truth"), (ssl, "#ff3030", "threshold", "dashed")]
    title = f"zoom: Dice {m['dice']:.3f} (threshold)"
    if d_sd is not None:
        zoom_contours.append((d_sd.slice(plane, tc)[r_lo:r_lo + 2 * half, c_lo:c_lo + 2 * half], "#30a0ff", "seeded",
                              "dotted"))
        title += f", {seg['seeded']['metrics']['dice']:.3f} (seeded)"
    panels.append(Panel(img, title, 0, vmax_p, aspect=d_p.aspect(plane), contours=zoom_contours, orientation=orient))
    files["segmentation.png"] = panel_figure(fig_dir / "segmentation.png", panels, ncols=4,
                                             title="Tumor phantom: truth (green), threshold segmentation (red, "
                                                   "dashed), seeded segmentation (blue, dotted); ROI box (yellow)")
    report(progress, cancel, 0.85, "figures done")
    return files


_OUTPUT_DESCRIPTIONS = {
    "t1.nrrd": "the sample T1 at 2 mm (fixed image; the clean reference for enhancement)",
    "t2like_misaligned.nrrd": "synthetic T2-like image of the same head, moved by the truth transform (moving image)",
    "t2like_aligned_truth.nrrd": "the T2-like image before the move (truth for the fusion metrics)",
    "truth_transform.tfm": "the truth transform, ITK/SimpleITK format (fixed -> moving, LPS)",
    "truth_transform.json": "the truth transform as a 4x4 LPS matrix, its inverse and its parameters",
    "registration_transform.tfm": "the transform MedTorch's registration found (ITK convention, fixed -> moving)",
    "t2like_registered.nrrd": "the T2-like image resampled onto the T1 grid through the registration",
    "fused_no_registration.nrrd": "T1 + T2-like averaged without registration",
    "fused_registered_average.nrrd": "T1 + T2-like fused after registration: weighted average",
    "fused_registered_dwt.nrrd": "T1 + T2-like fused after registration: Haar DWT, mean approximation, max-abs details",
    "fused_registered_gff.nrrd": "T1 + T2-like fused after registration: guided-filter fusion (Li 2013)",
    "t1_noisy.nrrd": "T1 with Rician noise",
    "t1_denoised_gaussian.nrrd": "noisy T1 after Gaussian smoothing",
    "t1_denoised_anisotropic.nrrd": "noisy T1 after curvature anisotropic diffusion",
    "tumor_phantom.nrrd": "T1 with the inserted tumor and noise",
    "tumor_truth.nrrd": "label map of the inserted tumor (truth)",
    "tumor_segmentation.nrrd": "label map from threshold + largest component",
    "tumor_seeds.nrrd": "seed strokes on three orthogonal slices (1 tumor, 2 background)",
    "tumor_segmentation_seeded.nrrd": "label map from seeded segmentation (region competition)",
    "t1_thick_slices.nrrd": "the T1 with simulated 6 mm slices (Gaussian slice profile)",
    "t1_sr_reference.nrrd": "the 2 mm T1 on the super-resolved grid (truth for super-resolution)",
    "t1_sr_bspline.nrrd": "thick-slice T1 super-resolved by cubic B-spline interpolation",
    "t1_sr_selfsup.nrrd": "thick-slice T1 super-resolved by self-supervised SR trained on itself",
    "figures/superres.png": "super-resolution",
    "figures/registration.png": "alignment without and with the transform",
    "figures/fusion.png": "fused volumes",
    "figures/enhancement.png": "denoising",
    "figures/segmentation.png": "tumor truth and segmentation outlines",
    "figures/fusion-3d.png": "fused volumes in Slicer's 3D view (a Slicer-view render)",
    "figures/segmentation-3d.png": "tumor segmentation in Slicer's slice and 3D views (a Slicer-view render)",
}


def _verdict_line(verdict: dict[str, Any] | None) -> str:
    """The registration verdict in one sentence (the checks that did not pass, if any)."""
    if not verdict:
        return "Verdict: not computed."
    checks = {c["name"]: c for c in verdict.get("checks", [])}
    passed = [c for c in checks.values() if c["status"] == "pass"]
    text = (f"Verdict without landmarks: {verdict['status'].upper()} ({len(passed)} of "
            f"{len([c for c in checks.values() if c['status'] != 'skip'])} checks passed")
    if verdict.get("reasons"):
        text += "; " + "; ".join(f"{n}: {checks[n]['message']}" for n in verdict["reasons"] if n in checks)
    sim = checks.get("local_similarity", {}).get("details") or {}
    if sim.get("after") is not None:
        text += (f"; local similarity {sim['after']:.3f} after registration, "
                 f"{sim['before'] if sim.get('before') is not None else 'n/a'} before, {sim['control']:.3f} for a "
                 "shuffled control")
    inv = checks.get("inverse_consistency", {})
    if inv.get("value") is not None:
        text += f"; inverse consistency {inv['value']:.2f} mm"
    return text + ")."


def _write_html(out: Path, s: dict[str, Any], figures: dict[str, Path]) -> Path:
    from medtorch.report import Figure, Section, Table, write_report

    reg, fus, enh, seg, tr = s["registration"], s["fusion"], s["enhance"], s["segment"], s["truth"]
    tre_n, tre_r, tre_k = (reg["tre_mm"][k] for k in ("no_registration", "registered", "known_transform"))
    methods = fus["methods"]
    srd = enh["superres"]
    sd = seg["seeded"]
    fm = {m: fus[f"registered_{m}"]["metrics"] for m in methods}
    accuracy = Table(
        "How far each output is from its known truth",
        ["output", "measure", "value", "what 'good' looks like"],
        [
            ["t2like_misaligned.nrrd, no registration", "mean TRE (mm)", tre_n["mean"],
             "large: the known misalignment"],
            ["registration_transform.tfm (MedTorch, rigid, MI)", "mean / max TRE (mm)",
             f"{tre_r['mean']:.3f} / {tre_r['max']:.3f}", "well below the 2 mm voxel"],
            ["fused_registered_gff.nrrd", "QAB/F / VIF",
             f"{fm['gff'].get('QABF', float('nan')):.3f} / {fm['gff'].get('VIF', float('nan')):.3f}",
             f"above DWT fusion ({fm['dwt'].get('QABF', float('nan')):.3f} / "
             f"{fm['dwt'].get('VIF', float('nan')):.3f})"],
            ["t1_noisy.nrrd", "PSNR (dB) / SSIM", f"{enh['noisy']['psnr_db']:.2f} / {enh['noisy']['ssim']:.4f}",
             "the starting point"],
            ["t1_denoised_anisotropic.nrrd", "PSNR (dB) / SSIM",
             f"{enh['anisotropic']['psnr_db']:.2f} / {enh['anisotropic']['ssim']:.4f}", "higher than noisy"],
            ["t1_sr_bspline.nrrd", "PSNR (dB) / SSIM",
             f"{srd['bspline']['psnr_db']:.2f} / {srd['bspline']['ssim']:.4f}", "the interpolation baseline"],
            ["t1_sr_selfsup.nrrd", "PSNR (dB) / SSIM",
             f"{srd['selfsup']['psnr_db']:.2f} / {srd['selfsup']['ssim']:.4f}", "higher than B-spline"],
            ["tumor_segmentation.nrrd (threshold)", "Dice", seg["dice"], "1 is perfect"],
            ["tumor_segmentation_seeded.nrrd (seeded)", "Dice", sd["dice"], "1 is perfect"],
        ],
    )
    overview = Section(
        "Overview",
        [
            "This report was written by 'medtorch demo'. It runs MedTorch's pipeline end to end -- register, fuse, "
            "denoise and super-resolve, segment -- on the bundled sample head (the MNI ICBM152 2009a template: a "
            "real T1-weighted MRI with grey- and white-matter maps), brought to a 2 mm grid. Each output has a "
            "known truth, so every number below says how far the result is from it.",
            f"Seed {s['seed']} (every random choice derives from it; the same seed gives the same numbers). "
            f"Grid {tuple(s['grid']['size_ijk'])} voxels of {s['grid']['spacing_mm'][0]:g} mm, LPS-aligned. "
            "Figures show axial slices with anterior up and the patient's right on the viewer's left "
            "(radiological convention, as in Slicer); coronal slices superior up.",
            *([line] if (line := _render_line(s.get("renders"))) else []),
        ],
        [accuracy],
    )
    rendered = set((s.get("renders") or {}).get("files") or {})

    def render_figures(name: str) -> list[Figure]:
        return [Figure(f"figures/{name}", RENDERS[name])] if name in rendered else []

    truth_tab = Table(
        "Known misalignment of the T2-like volume (truth_transform.json / .tfm)",
        ["quantity", "value"],
        [
            ["rotation about x, y, z (deg)", ", ".join(f"{v:g}" for v in tr["rotation_deg_xyz"])],
            ["translation (mm, LPS)", ", ".join(f"{v:g}" for v in tr["translation_mm"])],
            ["rotation centre (mm, LPS; head centre)", ", ".join(f"{v:.1f}" for v in tr["center_lps_mm"])],
            ["check: round trip, correlation of the re-aligned with the aligned T2-like",
             tr["checks"]["round_trip_correlation"]],
            ["check: centre of mass of the moving image vs truth transform applied (mm)",
             tr["checks"]["center_of_mass_error_mm"]],
            ["check: .tfm read back by SimpleITK vs the JSON matrix (max mm)",
             tr["checks"]["tfm_readback_max_error_mm"]],
        ],
        note="Convention (ITK): the matrix maps a fixed (T1) point to the moving (T2-like) point, LPS mm; "
             "resampling the moving image through it onto the T1 grid aligns it.",
    )
    data_sec = Section(
        "1. Data and the known truth",
        [
            "The second modality is a T2-like contrast synthesised from the tissue maps "
            "(0.35 x white matter + 0.6 x grey matter + 1.0 x CSF, CSF = head minus grey minus white matter, "
            "then a 1 mm Gaussian blur): CSF bright, grey matter intermediate, white matter dark. It was then "
            "moved by a known rigid transform and resampled onto its own, larger grid, so "
            "t2like_misaligned.nrrd is truly displaced; t2like_aligned_truth.nrrd is the same image before the move.",
        ],
        [truth_tab],
    )
    rep = reg["report"]
    tre_rows = [
        ["no registration (identity)", tre_n["mean"], tre_n["median"], tre_n["max"]],
        ["MedTorch registration", tre_r["mean"], tre_r["median"], tre_r["max"]],
        ["known transform (reference)", tre_k["mean"], tre_k["median"], tre_k["max"]],
    ]
    reg_sec = Section(
        "2. Registration",
        [
            f"The T2-like volume was registered to the T1 by MedTorch's torch engine ({reg['method']['mode']}, "
            f"Mattes mutual information, multi-resolution, Adam; seed {reg['method']['seed']}, device "
            f"{reg['method']['device']}) in {reg['seconds']:.1f} s. The transform was written to "
            "registration_transform.tfm and read back by SimpleITK; the target registration error (TRE) below is "
            f"measured through that file on {len(reg['landmarks_lps_mm'])} landmarks (voxel centres at least "
            "8 mm inside the brain, drawn with the seed), against the known truth transform.",
            _verdict_line(reg.get("verdict")),
        ],
        [
            Table("Target registration error (mm)", ["transform", "mean", "median", "max"], tre_rows),
            Table("Registration report", ["quantity", "value"], [[k, v] for k, v in rep.items()]),
        ],
        [Figure("figures/registration.png", "T2-like with the T1's brain outline (green), and T1/T2-like "
                                            "checkerboards: misaligned without registration, aligned after it.")],
    )
    metric_names = [k for k in ("QABF", "VIF", "MI", "SSIM_sum", "EN", "SD", "SF", "AG") if k in fm[methods[0]]]
    fus_metric_rows = [[f"{m} (registered)", *[fm[m][k] for k in metric_names], fus[f"registered_{m}"]["seconds"]]
                       for m in methods]
    nr = fus["no_registration"]
    fus_metric_rows.insert(0, ["average (no registration)", *[nr["metrics"].get(k) for k in metric_names],
                               nr["seconds"]])
    sim_rows = [
        [label, fus[k]["nmi_t1_vs_t2like"], fus[k]["correlation_with_aligned_truth"], fus[k]["overlap_fraction"]]
        for k, label in (("no_registration", "no registration"), ("registered_average", "MedTorch registration"),
                         ("known_transform", "known transform (reference)"))
    ]
    sim_rows.append(["aligned truth (upper bound)", fus["nmi_truth_t1_vs_aligned_t2like"], 1.0, None])
    fusion_sec = Section(
        "3. Fusion",
        [
            "The T1 and the T2-like volume were fused on the T1's grid after registration (each source "
            f"percentile-normalised; output range {fus['output_range']}), with each method, and once without "
            "registration. Fusion metrics follow the fusion literature's common evaluator (3D versions: "
            "QAB/F of Xydeas and Petrovic with 3D Sobel edges, VIF, MI in bits summed over both sources, SSIM "
            "summed, EN, SD, SF, AG on the 8-bit-scaled fused volume). DWT fusion (mean approximation, max-abs details) is the baseline; "
            "average fusion can game MI and SSIM, which is why every metric and the images are shown.",
        ],
        [
            Table("Fusion metrics (3D) and time", ["fusion", *metric_names, "time (s)"], fus_metric_rows),
            Table("Similarity of the T1 and the resampled T2-like inside the head",
                  ["case", "NMI (T1, T2-like)", "correlation with the aligned truth", "overlap fraction"], sim_rows,
                  note="NMI: Studholme's normalised mutual information (H(A)+H(B))/H(A,B), 64 bins. Even with "
                       "the exact transform both stay below the aligned truth: the T2-like image was interpolated "
                       "twice on the 2 mm grid (when misaligned, then when re-aligned)."),
        ],
        [Figure("figures/fusion.png", "Fused volumes: averaged without registration (top), then fused after "
                                      "registration by each method."), *render_figures("fusion-3d.png")],
    )
    enh_rows = []
    for key, label in (("noisy", "noisy (Rician, 5 % of max)"), ("gaussian", "Gaussian, sigma 1 mm"),
                       ("anisotropic", "anisotropic diffusion, conductance 3, 5 iterations")):
        e = enh[key]
        enh_rows.append([label, e["psnr_db"], e.get("psnr_gain_db"), e["ssim"], e.get("ssim_gain"), e.get("seconds")])
    sr_rows = [[label, srd[key]["psnr_db"], srd[key]["ssim"], srd[key]["seconds"]]
               for key, label in (("bspline", "cubic B-spline interpolation"),
                                  ("selfsup", f"self-supervised SR ({srd['selfsup']['training']['iterations']} "
                                              "training iterations)"))]
    enh_sec = Section(
        "4. Enhancement: denoising and super-resolution",
        [f"Denoising: Rician noise of sigma {enh['noise']['sigma']:.2f} (5 % of the T1's maximum) was added to the "
         "clean T1, then removed. PSNR (peak = the clean T1's maximum) and 3D SSIM (Gaussian window, sigma 1.5 "
         "voxels) are measured inside the head against the clean T1.",
         f"Super-resolution: the T1 was reduced to {srd['thick_spacing_mm']:g} mm slices along k (a Gaussian slice "
         f"profile, one thick slice per {srd['factor']} thin ones) and restored x{srd['factor']} by cubic B-spline "
         "interpolation and by self-supervised SR, which learns from the thick volume alone (in-plane slices "
         "degraded to the through-plane resolution). The output grid lies exactly on the 2 mm T1's slice centres, "
         f"the reference; the self-supervised SR gains {srd['selfsup']['psnr_gain_over_bspline_db']:+.2f} dB over "
         "B-spline here."],
        [Table("Denoising against the clean T1", ["volume", "PSNR (dB)", "PSNR gain (dB)", "SSIM", "SSIM gain",
                                                   "time (s)"], enh_rows),
         Table(f"Super-resolution x{srd['factor']} against the 2 mm T1", ["method", "PSNR (dB)", "SSIM", "time (s)"],
               sr_rows)],
        [Figure("figures/enhancement.png", "Clean, noisy and denoised T1, one window for all; bottom row: zoom."),
         Figure("figures/superres.png", "Reference, thick-slice input and the two super-resolved volumes.")],
    )
    t = seg["tumor"]
    seg_sec = Section(
        "5. Tumor segmentation",
        [f"A bright ellipsoid (semi-axes {', '.join(f'{v:g}' for v in t['semi_axes_mm'])} mm, intensity "
         f"{t['tumor_intensity']:.0f} = 1.6 x white matter, {t['edge_width_mm']:g} mm soft edge, noise sigma "
         f"{t['noise_sigma']:.1f}) was inserted at LPS ({', '.join(f'{v:g}' for v in t['center_lps_mm'])}) mm. "
         f"It was segmented twice: by threshold ({seg['threshold']:.1f}, halfway between white matter and tumor) "
         "and largest connected component inside an ROI box around it; and by seeded segmentation (region "
         f"competition) from strokes on the three orthogonal slices through it ({sd['seed_voxels']['tumor']} "
         f"tumor and {sd['seed_voxels']['background']} background seed voxels, tumor_seeds.nrrd)."],
        [Table("Segmentation against the truth", ["measure", "threshold", "seeded"], [
            ["Dice", seg["dice"], sd["dice"]],
            ["truth volume (mL; voxelised)", seg["truth_volume_ml"], seg["truth_volume_ml"]],
            ["segmented volume (mL)", seg["segmented_volume_ml"], sd["segmented_volume_ml"]],
            ["volume error (mL)", seg["volume_error_ml"], sd["volume_error_ml"]],
            ["volume error (%)", seg["volume_error_percent"], sd["volume_error_percent"]],
            ["time (s)", seg["seconds"], sd["seconds"]],
        ], note=f"Analytic ellipsoid volume: {t['analytic_volume_ml']:.2f} mL.")],
        [Figure("figures/segmentation.png", "Tumor phantom with the truth (green), threshold (red) and seeded "
                                            "(blue) outlines and the ROI box."), *render_figures("segmentation-3d.png")],
    )
    out_rows = [[k, _OUTPUT_DESCRIPTIONS.get(k, "")] for k in s["outputs"]]
    out_rows += [["summary.json", "every number of this report, the seed, versions, device, timings and paths"],
                 ["report.html", "this page"]]
    versions = s["versions"]
    dev = s["device"]
    run_sec = Section(
        "Run",
        [f"Device: {dev.get('device')} ({dev.get('name') or platform.processor() or 'CPU'}), "
         f"{dev.get('num_threads')} threads; platform {dev.get('platform')}."],
        [
            Table("Versions", ["package", "version"], [[k, v] for k, v in versions.items()]),
            Table("Timings (s)", ["step", "seconds"], [[k, v] for k, v in s["timings_s"].items()]),
            Table("Outputs (in this folder)", ["file", "content"], out_rows),
        ],
    )
    return write_report(out, "MedTorch demo report",
                        [overview, data_sec, reg_sec, fusion_sec, enh_sec, seg_sec, run_sec],
                        footer=f"medtorch {versions['medtorch']}, seed {s['seed']}, {s['created_utc']}. Sample data: "
                               "MNI ICBM152 2009a, Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging "
                               "Centre, Montreal Neurological Institute, McGill University (see NOTICE.md).")
