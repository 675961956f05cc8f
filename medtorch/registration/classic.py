"""Classic registration engines beside the torch one: SimpleITK and elastix.

Both take the same arguments and return the same thing as the torch engine's core:
``(A, d, info)`` with ``A`` a 4x4 LPS matrix in ITK convention (fixed point -> moving point),
``d`` a displacement field on the fixed grid (``kind='vector'``, LPS mm) for deformable
registration (else ``None``), composed as ``p_moving = A(p + d(p))`` (see
:mod:`medtorch.registration.result`), and ``info`` a dict of figures of the run
(``final_metric``, ``iterations``, ``runtime_s``, ``engine``, ``seed``, ...).

SimpleITK (:func:`register_sitk`)
---------------------------------
The original MedTorch recipe -- Mattes mutual information, plain gradient descent with
learning rate 1, 100 iterations, from the identity -- ends further from the truth than it
starts on multimodal brain pairs 12 degrees and 12 mm apart: the step is in raw parameter
units (radians and millimetres alike), there is no initial alignment and no pyramid.
The corrected recipe (:class:`SitkRecipe`):

* start: ``CenteredTransformInitializer`` -- ``MOMENTS`` on foreground masks (voxels above
  10 % of the robust intensity range, or the given masks; intensity moments would be wrong
  for CT, whose air is -1000), or ``GEOMETRY``; then Mattes MI is evaluated at the coarsest
  level for 27 rotations (-30, 0, 30 degrees about each axis) and the best is kept, which
  brings starts of 30 degrees and more into the optimiser's reach. An ``initial`` matrix
  replaces both;
* metric: Mattes MI, 50 bins, random sampling seeded with ``seed`` (a fixed sample set per
  level), a percentage chosen per level for a target number of samples (20,000);
* optimiser: regular-step gradient descent with scales from physical shift (one unit of
  step = at most about one millimetre of voxel motion), so rotations and shifts move alike;
  first step 4 in the rigid stage, 0.5 in the affine stage;
* multi-resolution: shrink factors 4, 2, 1 with smoothing 2, 1, 0 mm;
* stages: rigid (``Euler3DTransform``); affine = rigid, then ``AffineTransform``;
  deformable = affine, then a cubic B-spline on the fixed grid (a 50 mm mesh refined once
  to about 25 mm, gradient descent with line search, shrink 2, 1) with the affine as the
  moving initial transform. ITK's Mattes MI costs time in proportion to samples times
  B-spline parameters, so finer meshes are out of reach on whole-head volumes.

Progress comes from the optimiser's iteration events; a cancel raises
:class:`~medtorch.errors.Cancelled` inside the next iteration, which stops ``Execute``.

elastix (:func:`register_elastix`)
----------------------------------
Through ``itk-elastix`` (``pip install itk-elastix``; imported only when used, it takes
several seconds to load the first time). elastix's default parameter maps: rigid
(``EulerTransform``), affine = rigid then ``AffineTransform``, deformable = rigid, affine,
then its default ``BSplineTransform`` map (10 mm final grid, bending-energy penalty). Each
map keeps elastix's defaults, with ``RandomSeed`` set from ``seed``, the result image not
written, and the first map starting from the images' geometric centres
(``AutomaticTransformInitialization``). elastix cannot be interrupted from Python and
reports no progress events, so when a ``cancel`` token is given (or ``isolate=True``) it
runs as a job of :mod:`medtorch.runtime` (a worker process): progress is read from its log
and a cancel ends the worker.
"""

from __future__ import annotations

import re
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from medtorch.errors import Cancelled, MedTorchInputError
from medtorch.ops.registration import Mode
from medtorch.optional import installed_version, itk_with
from medtorch.progress import (
    CancelToken,
    ProgressCallback,
    _quiet_cancel_tracebacks,
    report,
)
from medtorch.volume import Geometry, Volume, check_volume

__all__ = [
    "CLASSIC_MODES",
    "SitkRecipe",
    "elastix_parameter_maps",
    "elastix_version",
    "foreground_mask",
    "load_elastix",
    "register_elastix",
    "register_sitk",
]

CLASSIC_MODES: tuple[str, ...] = get_args(Mode)  # every mode of medtorch.ops.registration.Mode
ClassicResult = tuple[np.ndarray, "Volume | None", dict[str, Any]]


# -- shared checks ---------------------------------------------------------------------------


def _check_mode(mode: str) -> str:
    if mode not in CLASSIC_MODES:
        raise MedTorchInputError(f"unknown registration mode {mode!r}", "use 'rigid', 'affine' or 'deformable'")
    return mode


def _check_inputs(fixed: Volume, moving: Volume, fixed_mask: Volume | None, moving_mask: Volume | None,
                  initial: np.ndarray | None, seed: int) -> np.ndarray | None:
    check_volume(fixed, "fixed volume")
    check_volume(moving, "moving volume")
    for mask, name in ((fixed_mask, "fixed mask"), (moving_mask, "moving mask")):
        if mask is None:
            continue
        check_volume(mask, name, allow_constant=True)
        if not np.any(np.asarray(mask.array) > 0):
            raise MedTorchInputError(f"the {name} is empty (no voxel > 0)",
                                     "draw the mask over the region to register, or leave it out")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise MedTorchInputError(f"the seed must be a non-negative whole number, got {seed!r}", "give a seed such as 0")
    if initial is None:
        return None
    m = np.asarray(initial, dtype=np.float64)
    if m.shape != (4, 4) or not np.all(np.isfinite(m)) or np.abs(m[3] - [0, 0, 0, 1]).max() > 1e-9:
        raise MedTorchInputError(f"the initial transform must be a finite 4x4 affine matrix, got shape {m.shape}",
                                 "give a 4x4 LPS matrix (fixed point -> moving point) with last row 0 0 0 1")
    if abs(np.linalg.det(m[:3, :3])) < 1e-9:
        raise MedTorchInputError("the initial transform is singular", "check the initial transform")
    return m


def foreground_mask(volume: Volume, fraction: float = 0.1) -> np.ndarray:
    """Voxels above ``fraction`` of the robust range (0.5th to 99.5th percentile) above its low end.

    The head (with skull) of an MR or CT volume; used for the centre-of-mass start.
    """
    arr = np.asarray(volume.array, dtype=np.float32)
    sample = arr.reshape(-1)[:: max(1, arr.size // 200_000)]
    lo, hi = np.percentile(sample, [0.5, 99.5])
    mask = arr > lo + fraction * (hi - lo)
    if not mask.any():
        mask = arr > lo
    return mask


def _affine_of(transform: Any) -> np.ndarray:
    """4x4 matrix of a linear ITK/SimpleITK transform, measured by mapping points."""
    o = np.array(transform.TransformPoint((0.0, 0.0, 0.0)), dtype=np.float64)
    m = np.eye(4)
    for axis in range(3):
        e = [0.0, 0.0, 0.0]
        e[axis] = 1.0
        m[:3, axis] = np.array(transform.TransformPoint(e), dtype=np.float64) - o
    m[:3, 3] = o
    return m


# -- SimpleITK -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SitkRecipe:
    """The corrected SimpleITK recipe (see the module docstring). All fields have defaults.

    Attributes:
        bins: Mattes MI histogram bins.
        samples_per_level: target number of random metric samples per level (a percentage
            of the level's fixed voxels is derived from it, at most 100 %).
        shrink_factors, smoothing_sigmas_mm: the pyramid (fixed image shrink, Gaussian sigma).
        init: ``moments`` (centres of mass of the foreground masks) or ``geometry`` (centres
            of the images).
        rotation_search_deg: after the centred start, Mattes MI is evaluated at the coarsest
            level for every combination of these rotations about the three axes (27 starts
            by default) and the best start is kept; ``()`` turns the search off. Not done when
            an ``initial`` transform is given.
        learning_rate: first step of regular-step gradient descent in the rigid stage
            (scaled units ~ mm).
        min_step: the rigid stage stops at this step length.
        affine_learning_rate, affine_min_step: the same for the affine stage (larger first
            steps throw the 12 parameters off: from the true transform, a first step of 1
            ends 1 to 4 mm away on the benchmark's pairs).
        iterations: at most this many iterations per level and stage.
        relaxation: step shrink factor when the gradient turns.
        bspline_spacing_mm: control-point spacing of the coarsest B-spline mesh; refined
            by ``bspline_refinements`` (mesh multiplied per level; the default ends at about
            25 mm). ITK's Mattes MI costs time in proportion to samples x parameters for a
            B-spline (measured: 0.6 s per iteration for a 6^3 mesh and 20,000 samples,
            2.4 s for 12^3), which rules out finer meshes on whole-head volumes.
        bspline_iterations: gradient-descent (line search) iterations per level.
        bspline_samples_per_level: metric samples per level in the B-spline stage.
        bspline_learning_rate: upper limit of the line search (mm).
    """

    bins: int = 50
    samples_per_level: int = 20_000
    shrink_factors: tuple[int, ...] = (4, 2, 1)
    smoothing_sigmas_mm: tuple[float, ...] = (2.0, 1.0, 0.0)
    init: Literal["moments", "geometry"] = "moments"
    rotation_search_deg: tuple[float, ...] = (-30.0, 0.0, 30.0)
    learning_rate: float = 4.0
    min_step: float = 5e-3
    affine_learning_rate: float = 0.5
    affine_min_step: float = 1e-4
    iterations: int = 100
    relaxation: float = 0.7
    bspline_spacing_mm: float = 50.0
    bspline_refinements: tuple[int, ...] = (1, 2)
    bspline_iterations: int = 30
    bspline_samples_per_level: int = 20_000
    bspline_learning_rate: float = 5.0


def _to_sitk_float(volume: Volume) -> Any:
    import SimpleITK as sitk

    return sitk.Cast(volume.to_sitk(), sitk.sitkFloat32)


def _mask_image(mask: Volume | np.ndarray, like: Volume | None = None) -> Any:
    """A SimpleITK uint8 mask (1 inside) from a mask volume, or a boolean array on ``like``'s grid."""
    import SimpleITK as sitk

    if isinstance(mask, Volume):
        arr, geom = np.asarray(mask.array) > 0, mask.geometry
    else:
        assert like is not None
        arr, geom = np.asarray(mask, dtype=bool), like.geometry
    img = sitk.GetImageFromArray(arr.astype(np.uint8))
    img.SetOrigin(tuple(float(v) for v in geom.origin))
    img.SetSpacing(tuple(float(v) for v in geom.spacing))
    img.SetDirection(tuple(float(v) for v in geom.direction.reshape(-1)))
    return img


def _sitk_affine(m: np.ndarray) -> Any:
    """A SimpleITK ``AffineTransform`` of a 4x4 LPS matrix (fixed -> moving)."""
    import SimpleITK as sitk

    t = sitk.AffineTransform(3)
    t.SetMatrix(tuple(float(v) for v in m[:3, :3].reshape(-1)))
    t.SetTranslation(tuple(float(v) for v in m[:3, 3]))
    return t


def _initial_euler(fixed: Volume, moving: Volume, fixed_fg: Volume | np.ndarray,
                   moving_fg: Volume | np.ndarray, method: str) -> tuple[Any, np.ndarray]:
    """``CenteredTransformInitializer`` on the foreground masks: an ``Euler3DTransform`` and its centre."""
    import SimpleITK as sitk

    if method not in ("moments", "geometry"):
        raise MedTorchInputError(f"unknown SimpleITK initialisation {method!r}", "use 'moments' or 'geometry'")
    if method == "geometry":
        f, m = _to_sitk_float(fixed), _to_sitk_float(moving)
    else:
        f = sitk.Cast(_mask_image(fixed_fg, fixed), sitk.sitkFloat32)
        m = sitk.Cast(_mask_image(moving_fg, moving), sitk.sitkFloat32)
    kind = (sitk.CenteredTransformInitializerFilter.MOMENTS if method == "moments"
            else sitk.CenteredTransformInitializerFilter.GEOMETRY)
    tx = sitk.CenteredTransformInitializer(f, m, sitk.Euler3DTransform(), kind)
    euler = sitk.Euler3DTransform(tx)
    return euler, np.array(euler.GetCenter(), dtype=np.float64)


def _smooth_shrink(image: Any, sigma_mm: float, target_mm: float) -> Any:
    """Gaussian smoothing (sigma in mm) and integer shrink towards ``target_mm`` voxels."""
    import SimpleITK as sitk

    if sigma_mm > 0:
        image = sitk.SmoothingRecursiveGaussian(image, sigma_mm)
    factors = [max(1, round(target_mm / s)) for s in image.GetSpacing()]
    factors = [min(f, max(1, n // 4)) for f, n in zip(factors, image.GetSize())]
    return sitk.Shrink(image, factors) if max(factors) > 1 else image


def _rotation_search(euler: Any, fixed_img: Any, moving_img: Any, recipe: SitkRecipe, seed: int,
                     masks: tuple[Any, Any], cancel: CancelToken | None) -> dict[str, Any]:
    """Try every combination of ``recipe.rotation_search_deg`` about the centre of ``euler``
    (keeping its translation) at the coarsest level; set ``euler`` to the best. In place."""
    import itertools

    import SimpleITK as sitk

    angles = [float(a) for a in recipe.rotation_search_deg]
    if not angles:
        return {}
    level_mm = max(fixed_img.GetSpacing()) * recipe.shrink_factors[0]
    sigma = recipe.smoothing_sigmas_mm[0]
    f_small = _smooth_shrink(fixed_img, sigma, level_mm)
    m_small = _smooth_shrink(moving_img, sigma, level_mm)
    n = int(np.prod(f_small.GetSize()))
    reg = _new_method(recipe, [float(min(1.0, recipe.samples_per_level / max(n, 1)))], seed, masks[0], masks[1],
                      (1,), (0.0,))
    base = (euler.GetAngleX(), euler.GetAngleY(), euler.GetAngleZ())
    scores: list[tuple[float, tuple[float, ...]]] = []
    for combo in itertools.product(angles, repeat=3):
        report(None, cancel, 0.0)
        cand = sitk.Euler3DTransform(euler)
        cand.SetRotation(*(b + np.deg2rad(a) for b, a in zip(base, combo)))
        reg.SetInitialTransform(cand)
        try:
            value = float(reg.MetricEvaluate(f_small, m_small))
        except RuntimeError:  # too little overlap for this start
            continue
        scores.append((value, combo))
    if not scores:
        return {"rotation_search": "no start overlapped"}
    best_value, best = min(scores)
    euler.SetRotation(*(b + np.deg2rad(a) for b, a in zip(base, best)))
    return {"rotation_search_best_deg": list(best), "rotation_search_metric": best_value,
            "rotation_search_starts": len(scores)}


def _sampling_percentages(fixed: Volume, shrink: tuple[int, ...], target: int) -> list[float]:
    n = fixed.geometry.num_voxels
    return [float(min(1.0, target / max(1.0, n / float(s) ** 3))) for s in shrink]


class _Observer:
    """Progress and cancel through a registration method's events."""

    def __init__(self, reg: Any, progress: ProgressCallback | None, cancel: CancelToken | None,
                 start: float, stop: float, levels: int, iterations: int, name: str) -> None:
        import SimpleITK as sitk

        self.reg, self.progress, self.cancel = reg, progress, cancel
        self.start, self.stop, self.levels, self.iterations, self.name = start, stop, levels, iterations, name
        self.level = -1
        self.total_iterations = 0
        self._last = 0.0
        reg.AddCommand(sitk.sitkMultiResolutionIterationEvent, self.on_level)
        reg.AddCommand(sitk.sitkIterationEvent, self.on_iteration)

    def on_level(self) -> None:
        self.level += 1
        self._emit(0, force=True)

    def on_iteration(self) -> None:
        self.total_iterations += 1
        if self.cancel is not None and self.cancel.cancelled:
            raise Cancelled()
        self._emit(int(self.reg.GetOptimizerIteration()))

    def _emit(self, it: int, force: bool = False) -> None:
        if self.progress is None:
            return
        now = time.monotonic()
        if not force and now - self._last < 0.1:
            return
        self._last = now
        lvl = max(self.level, 0)
        frac = (lvl + min(it / max(self.iterations, 1), 1.0)) / max(self.levels, 1)
        self.progress(self.start + (self.stop - self.start) * min(frac, 1.0),
                      f"{self.name}: level {lvl + 1}/{self.levels}, iteration {it}")


def _execute(reg: Any, fixed_img: Any, moving_img: Any, cancel: CancelToken | None) -> None:
    report(None, cancel, 0.0)
    try:
        with _quiet_cancel_tracebacks():
            reg.Execute(fixed_img, moving_img)
    except RuntimeError as exc:
        if cancel is not None and cancel.cancelled:
            raise Cancelled() from None
        text = str(exc)
        if "outside" in text or "valid points" in text or "Joint PDF summed to zero" in text:
            raise MedTorchInputError(
                "the fixed and moving volumes (inside their masks) do not overlap enough to measure "
                "their similarity",
                "check that the right volumes and masks are selected, or start from a closer initial transform",
            ) from exc
        raise
    if cancel is not None and cancel.cancelled:
        raise Cancelled()


def _new_method(recipe: SitkRecipe, percentages: list[float], seed: int, fixed_mask_img: Any, moving_mask_img: Any,
                shrink: tuple[int, ...], sigmas: tuple[float, ...]) -> Any:
    import SimpleITK as sitk

    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=recipe.bins)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentagePerLevel(percentages, seed if seed > 0 else 1)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetShrinkFactorsPerLevel(list(shrink))
    reg.SetSmoothingSigmasPerLevel(list(sigmas))
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    if fixed_mask_img is not None:
        reg.SetMetricFixedMask(fixed_mask_img)
    if moving_mask_img is not None:
        reg.SetMetricMovingMask(moving_mask_img)
    return reg


def _linear_stage(transform: Any, fixed_img: Any, moving_img: Any, fixed: Volume, recipe: SitkRecipe, seed: int,
                  masks: tuple[Any, Any], initial_img_tx: Any, progress: ProgressCallback | None,
                  cancel: CancelToken | None, span: tuple[float, float], name: str) -> dict[str, Any]:
    pct = _sampling_percentages(fixed, recipe.shrink_factors, recipe.samples_per_level)
    reg = _new_method(recipe, pct, seed, masks[0], masks[1], recipe.shrink_factors, recipe.smoothing_sigmas_mm)
    lr, min_step = ((recipe.affine_learning_rate, recipe.affine_min_step) if name == "affine"
                    else (recipe.learning_rate, recipe.min_step))
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=lr, minStep=min_step, numberOfIterations=recipe.iterations,
        relaxationFactor=recipe.relaxation, gradientMagnitudeTolerance=1e-8)
    reg.SetOptimizerScalesFromPhysicalShift()
    if initial_img_tx is not None:
        reg.SetMovingInitialTransform(initial_img_tx)
    reg.SetInitialTransform(transform, inPlace=True)
    obs = _Observer(reg, progress, cancel, span[0], span[1], len(recipe.shrink_factors), recipe.iterations, name)
    _execute(reg, fixed_img, moving_img, cancel)
    return {"stage": name, "final_metric": float(reg.GetMetricValue()), "iterations": obs.total_iterations,
            "stop": reg.GetOptimizerStopConditionDescription(), "sampling_percentages": [round(p, 5) for p in pct]}


def _bspline_stage(fixed: Volume, fixed_img: Any, moving_img: Any, affine: np.ndarray, recipe: SitkRecipe, seed: int,
                   masks: tuple[Any, Any], progress: ProgressCallback | None, cancel: CancelToken | None,
                   span: tuple[float, float]) -> tuple[Any, dict[str, Any]]:
    import SimpleITK as sitk

    extent = np.asarray(fixed.size, float) * fixed.spacing
    mesh = [max(1, round(e / recipe.bspline_spacing_mm)) for e in extent]
    bsp = sitk.BSplineTransformInitializer(fixed_img, mesh, order=3)
    levels = len(recipe.bspline_refinements)
    shrink = tuple(recipe.shrink_factors[-levels:]) if len(recipe.shrink_factors) >= levels else (1,) * levels
    sigmas = tuple(recipe.smoothing_sigmas_mm[-levels:]) if len(recipe.smoothing_sigmas_mm) >= levels else (0.0,) * levels
    pct = _sampling_percentages(fixed, shrink, recipe.bspline_samples_per_level)
    reg = _new_method(recipe, pct, seed, masks[0], masks[1], shrink, sigmas)
    # L-BFGS-B is not used: SimpleITK keeps its level-1 scales when the mesh is refined
    # ("Size of scales must equal number of local parameters").
    reg.SetOptimizerAsGradientDescentLineSearch(
        learningRate=recipe.bspline_learning_rate, numberOfIterations=recipe.bspline_iterations,
        convergenceMinimumValue=1e-5, convergenceWindowSize=5, lineSearchMaximumIterations=5)
    reg.SetMovingInitialTransform(_sitk_affine(affine))
    reg.SetInitialTransformAsBSpline(bsp, inPlace=True, scaleFactors=list(recipe.bspline_refinements))
    obs = _Observer(reg, progress, cancel, span[0], span[1], levels, recipe.bspline_iterations, "B-spline")
    _execute(reg, fixed_img, moving_img, cancel)
    info = {"stage": "bspline", "final_metric": float(reg.GetMetricValue()), "iterations": obs.total_iterations,
            "stop": reg.GetOptimizerStopConditionDescription(), "sampling_percentages": [round(p, 5) for p in pct],
            "mesh_size": list(bsp.GetTransformDomainMeshSize()),
            "control_point_spacing_mm": [round(float(e) / n, 2) for e, n in zip(extent, bsp.GetTransformDomainMeshSize())]}
    return bsp, info


def _field_on_grid(transform: Any, geometry: Geometry, cancel: CancelToken | None, chunk: int = 32) -> Volume:
    """Displacement ``t(p) - p`` of a SimpleITK transform at the voxels of ``geometry`` (float32, in slabs)."""
    import SimpleITK as sitk

    out = np.empty(geometry.shape_zyx + (3,), dtype=np.float32)
    nk = geometry.size[2]
    for k0 in range(0, nk, chunk):
        report(None, cancel, 0.0)
        k1 = min(k0 + chunk, nk)
        origin = geometry.index_to_physical(np.array([[0.0, 0.0, float(k0)]]))[0]
        f = sitk.TransformToDisplacementField(
            transform, sitk.sitkVectorFloat64, [geometry.size[0], geometry.size[1], k1 - k0],
            tuple(float(v) for v in origin), tuple(float(v) for v in geometry.spacing),
            tuple(float(v) for v in geometry.direction.reshape(-1)))
        out[k0:k1] = sitk.GetArrayFromImage(f)
    return Volume(out, geometry, "vector", {"what": "displacement field (LPS, mm), applied before the affine"})


def register_sitk(fixed: Volume, moving: Volume, mode: str, fixed_mask: Volume | None = None,
                  moving_mask: Volume | None = None, initial: np.ndarray | None = None, seed: int = 0,
                  progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
                  recipe: SitkRecipe | None = None) -> ClassicResult:
    """Register with SimpleITK's Mattes MI and the corrected recipe (module docstring).

    Args:
        fixed, moving: scalar volumes on any grids (never modified).
        mode: ``rigid``, ``affine`` or ``deformable``.
        fixed_mask, moving_mask: optional mask volumes (voxels > 0 count), on any grid.
        initial: optional 4x4 LPS matrix (fixed -> moving) to start from instead of the
            centred initialiser.
        seed: seeds the random metric sampling (0 is replaced by 1: SimpleITK reads 0 as
            "seed from the clock").
        progress, cancel: see :mod:`medtorch.progress`.
        recipe: the recipe's settings (:class:`SitkRecipe`).

    Returns:
        ``(A, d, info)``: see the module docstring.
    """
    import SimpleITK as sitk

    t0 = time.perf_counter()
    _check_mode(mode)
    init_m = _check_inputs(fixed, moving, fixed_mask, moving_mask, initial, seed)
    r = recipe or SitkRecipe()
    report(progress, cancel, 0.0, "SimpleITK: preparing")
    fixed_img, moving_img = _to_sitk_float(fixed), _to_sitk_float(moving)
    masks = (None if fixed_mask is None else _mask_image(fixed_mask),
             None if moving_mask is None else _mask_image(moving_mask))

    # Start: the centred initialiser, or the given matrix as the moving initial transform.
    fixed_fg: Volume | np.ndarray = fixed_mask if fixed_mask is not None else foreground_mask(fixed)
    moving_fg: Volume | np.ndarray = moving_mask if moving_mask is not None else foreground_mask(moving)
    initial_tx = None
    search: dict[str, Any] = {}
    if init_m is None:
        euler, center = _initial_euler(fixed, moving, fixed_fg, moving_fg, r.init)
        init_name: str = r.init
        report(progress, cancel, 0.01, "SimpleITK: rotation search")
        search = _rotation_search(euler, fixed_img, moving_img, r, seed, masks, cancel)
        if search:
            init_name += " + rotation search"
    else:
        initial_tx = _sitk_affine(init_m)
        if isinstance(fixed_fg, Volume):
            fg_pts = fixed_fg.geometry.index_to_physical(np.argwhere(np.asarray(fixed_fg.array) > 0)[:, ::-1].astype(float))
        else:
            fg_pts = fixed.geometry.index_to_physical(np.argwhere(fixed_fg)[:, ::-1].astype(float))
        center = fg_pts.mean(axis=0)
        euler = sitk.Euler3DTransform()
        euler.SetCenter(tuple(float(v) for v in center))
        init_name = "initial transform"
    report(progress, cancel, 0.02, "SimpleITK: rigid")

    spans = {"rigid": [(0.02, 1.0)], "affine": [(0.02, 0.5), (0.5, 1.0)],
             "deformable": [(0.02, 0.2), (0.2, 0.35), (0.35, 0.97)]}[mode]
    stages = [_linear_stage(euler, fixed_img, moving_img, fixed, r, seed, masks, initial_tx, progress, cancel,
                            spans[0], "rigid")]
    m_opt = _affine_of(euler)
    if mode in ("affine", "deformable"):
        aff = sitk.AffineTransform(3)
        aff.SetCenter(euler.GetCenter())
        aff.SetMatrix(euler.GetMatrix())
        aff.SetTranslation(euler.GetTranslation())
        stages.append(_linear_stage(aff, fixed_img, moving_img, fixed, r, seed, masks, initial_tx, progress, cancel,
                                    spans[1], "affine"))
        m_opt = _affine_of(aff)
    matrix = (init_m @ m_opt) if init_m is not None else m_opt
    displacement = None
    if mode == "deformable":
        bsp, info_b = _bspline_stage(fixed, fixed_img, moving_img, matrix, r, seed, masks, progress, cancel, spans[2])
        stages.append(info_b)
        report(progress, cancel, 0.97, "SimpleITK: displacement field")
        displacement = _field_on_grid(bsp, fixed.geometry, cancel)
    report(progress, cancel, 1.0, "SimpleITK: done")
    info = {
        "engine": f"SimpleITK {sitk.Version.VersionString()}",
        "final_metric": stages[-1]["final_metric"],
        "final_similarity": -stages[-1]["final_metric"],
        "iterations": int(sum(s["iterations"] for s in stages)),
        "runtime_s": round(time.perf_counter() - t0, 3),
        "seed": int(seed),
        "init": init_name,
        **search,
        "stages": stages,
        "recipe": asdict(r),
    }
    return matrix, displacement, info


# -- elastix ---------------------------------------------------------------------------------


def load_elastix() -> Any:
    """Import ``itk`` with elastix; raise :class:`MedTorchInputError` when itk-elastix is missing.

    The first call loads ITK's and elastix's libraries (seconds); later calls are free.
    """
    return itk_with("itk-elastix", ("ElastixRegistrationMethod", "ParameterObject"), "pip install itk-elastix")


def elastix_version() -> str:
    """The installed itk-elastix version, or ``"not installed"``."""
    return installed_version("itk-elastix")


def elastix_parameter_maps(mode: str, seed: int = 0) -> list[dict[str, list[str]]]:
    """elastix's default maps for ``mode`` (see the module docstring) as plain dicts."""
    itk = load_elastix()
    _check_mode(mode)
    po = itk.ParameterObject.New()
    names = {"rigid": ["rigid"], "affine": ["rigid", "affine"], "deformable": ["rigid", "affine", "bspline"]}[mode]
    maps: list[dict[str, list[str]]] = []
    for i, name in enumerate(names):
        pm = po.GetDefaultParameterMap(name)
        d = {k: list(pm[k]) for k in pm.keys()}  # noqa: SIM118 - an ITK map
        d["RandomSeed"] = [str(int(seed) + 121212)]
        d["WriteResultImage"] = ["false"]
        if i == 0:
            d["AutomaticTransformInitialization"] = ["true"]
            d["AutomaticTransformInitializationMethod"] = ["GeometricalCenter"]
        maps.append(d)
    return maps


def _to_itk(volume: Volume, itk: Any, pixel: str = "float") -> Any:
    arr = np.asarray(volume.array)
    arr = np.ascontiguousarray(arr > 0, dtype=np.uint8) if pixel == "mask" else np.ascontiguousarray(arr, dtype=np.float32)
    img = itk.image_from_array(arr)
    img.SetOrigin([float(v) for v in volume.origin])
    img.SetSpacing([float(v) for v in volume.spacing])
    # A writable float64 copy: itk.matrix_from_array crashes on read-only arrays.
    img.SetDirection(itk.matrix_from_array(np.array(volume.direction, dtype=np.float64, copy=True)))
    return img


def _initial_map(m: np.ndarray, geometry: Geometry) -> dict[str, tuple[str, ...]]:
    """An elastix ``AffineTransform`` parameter map of the 4x4 matrix ``m`` (fixed -> moving)."""
    def fmt(values: Any) -> tuple[str, ...]:
        return tuple(repr(float(v)) for v in values)

    return {
        "Transform": ("AffineTransform",),
        "NumberOfParameters": ("12",),
        "TransformParameters": fmt(list(m[:3, :3].reshape(-1)) + list(m[:3, 3])),
        "CenterOfRotationPoint": ("0.0", "0.0", "0.0"),
        "InitialTransformParameterFileName": ("NoInitialTransform",),
        "HowToCombineTransforms": ("Compose",),
        "FixedImageDimension": ("3",),
        "MovingImageDimension": ("3",),
        "FixedInternalImagePixelType": ("float",),
        "MovingInternalImagePixelType": ("float",),
        "Size": tuple(str(int(v)) for v in geometry.size),
        "Index": ("0", "0", "0"),
        "Spacing": fmt(geometry.spacing),
        "Origin": fmt(geometry.origin),
        "Direction": fmt(geometry.direction.T.reshape(-1)),
        "UseDirectionCosines": ("true",),
    }


def _count_progress(log_text: str, maps: list[dict[str, list[str]]]) -> float:
    """Fraction done from an elastix log: finished resolutions plus iterations of the current one."""
    levels = [int(m.get("NumberOfResolutions", ["4"])[0]) for m in maps]
    iters = [int(m.get("MaximumNumberOfIterations", ["256"])[0]) for m in maps]
    total = float(sum(levels))
    res_starts = [mt.end() for mt in re.finditer(r"^Resolution: \d+", log_text, re.MULTILINE)]
    if not res_starts or total == 0:
        return 0.0
    done_levels = len(res_starts) - 1
    # Which map is running: count levels in order.
    stage, acc = 0, 0
    while stage < len(levels) - 1 and done_levels >= acc + levels[stage]:
        acc += levels[stage]
        stage += 1
    tail = log_text[res_starts[-1]:]
    its = len(re.findall(r"^\d+\t", tail, re.MULTILINE))
    return min((done_levels + min(its / max(iters[stage], 1), 1.0)) / total, 1.0)


def _elastix_in_process(fixed: Volume, moving: Volume, mode: str, fixed_mask: Volume | None,
                        moving_mask: Volume | None, initial: np.ndarray | None, seed: int,
                        maps: list[dict[str, list[str]]] | None, log_dir: str | None,
                        progress: ProgressCallback | None, cancel: CancelToken | None) -> ClassicResult:
    t0 = time.perf_counter()
    itk = load_elastix()
    maps = maps if maps is not None else elastix_parameter_maps(mode, seed)
    report(progress, cancel, 0.02, "elastix: preparing")
    po = itk.ParameterObject.New()
    for d in maps:
        po.AddParameterMap({k: tuple(str(x) for x in v) for k, v in d.items()})
    f_img, m_img = _to_itk(fixed, itk), _to_itk(moving, itk)
    method = itk.ElastixRegistrationMethod.New(f_img, m_img)
    method.SetParameterObject(po)
    if fixed_mask is not None:
        method.SetFixedMask(_to_itk(fixed_mask, itk, "mask"))
    if moving_mask is not None:
        method.SetMovingMask(_to_itk(moving_mask, itk, "mask"))
    if initial is not None:
        # As an elastix AffineTransform map, not SetExternalInitialTransform: elastix's
        # adapter for external transforms lacks the derivatives its B-spline penalty needs.
        init_po = itk.ParameterObject.New()
        init_po.AddParameterMap(_initial_map(initial, fixed.geometry))
        method.SetInitialTransformParameterObject(init_po)
    method.SetLogToConsole(False)
    if log_dir is not None:
        method.SetOutputDirectory(str(log_dir))
        method.SetLogToFile(True)
        method.SetLogFileName("elastix.log")
    report(progress, cancel, 0.05, "elastix: registering")
    try:
        method.Update()
    except RuntimeError as exc:
        detail = ""
        if log_dir is not None and Path(log_dir, "elastix.log").exists():
            lines = Path(log_dir, "elastix.log").read_text(errors="replace").splitlines()
            errors = [ln for ln in lines if "ERROR" in ln or "rror" in ln]
            detail = " | ".join((errors or lines)[-6:])
        if "overlap" in detail or "inside" in detail.lower() and "mask" in detail.lower():
            raise MedTorchInputError("elastix found too little overlap between the fixed and moving volumes",
                                     "check the volumes and masks, or start from a closer initial transform") from exc
        raise RuntimeError(f"elastix failed: {detail or exc}") from exc
    report(progress, cancel, 0.9, "elastix: reading the transform")
    combined = method.GetCombinationTransform()
    # elastix composes its maps as T = T_0 o T_1 o ... with GetNthTransform(0) the last map
    # (applied last) and the external initial transform the last one (applied first).
    n = int(method.GetNumberOfTransforms())
    linear = [method.GetNthTransform(i) for i in range(n)
              if "BSpline" not in str(method.GetNthTransform(i).GetNameOfClass())]
    displacement = None
    if mode == "deformable":
        matrix = np.eye(4)
        for t in linear:
            matrix = matrix @ _affine_of(t)
        displacement = _split_field(combined, matrix, f_img, fixed.geometry, itk, cancel)
    else:
        matrix = _affine_of(combined)
    composition_error = _composition_error(combined, matrix, displacement, fixed.geometry, seed)
    tpo = method.GetTransformParameterObject()
    last = tpo.GetParameterMap(tpo.GetNumberOfParameterMaps() - 1)
    final_metric = None
    if log_dir is not None:
        logs = re.findall(r"Final metric value\s*=\s*([-+0-9.eE]+)", Path(log_dir, "elastix.log").read_text(errors="replace"))
        if logs:
            final_metric = float(logs[-1])
    info = {
        "engine": f"elastix (itk-elastix {elastix_version()})",
        "final_metric": final_metric,
        "final_similarity": None if final_metric is None else -final_metric,
        "iterations": int(sum(int(m.get("MaximumNumberOfIterations", ["0"])[0]) * int(m.get("NumberOfResolutions", ["1"])[0])
                              for m in maps)),
        "runtime_s": round(time.perf_counter() - t0, 3),
        "seed": int(seed),
        "stages": [m.get("Transform", ["?"])[0] for m in maps],
        "transform": str(last["Transform"][0]) if "Transform" in last.keys() else None,  # noqa: SIM118 - an ITK map
        "composition_error_mm": composition_error,
    }
    report(progress, cancel, 1.0, "elastix: done")
    return matrix, displacement, info


def _composition_error(combined: Any, matrix: np.ndarray, displacement: Volume | None, geometry: Geometry,
                       seed: int, n: int = 32) -> float:
    """Largest distance (mm) between elastix's own mapping and ``A(p + d(p))`` at ``n`` voxel centres."""
    rng = np.random.default_rng(seed)
    ijk = np.stack([rng.integers(0, s, n) for s in geometry.size], axis=1)
    pts = geometry.index_to_physical(ijk.astype(np.float64))
    if displacement is not None:
        pts_d = pts + np.asarray(displacement.array, np.float64)[ijk[:, 2], ijk[:, 1], ijk[:, 0]]
    else:
        pts_d = pts
    ours = pts_d @ matrix[:3, :3].T + matrix[:3, 3]
    theirs = np.array([combined.TransformPoint([float(v) for v in p]) for p in pts])
    return float(np.linalg.norm(ours - theirs, axis=1).max())


def _split_field(combined: Any, matrix: np.ndarray, reference: Any, geometry: Geometry, itk: Any,
                 cancel: CancelToken | None, chunk: int = 16) -> Volume:
    """``d(p) = A^-1(T(p)) - p`` on ``geometry`` for the whole transform ``T`` (so that ``T = A(p + d(p))``)."""
    from medtorch.phantoms import physical_grid

    vector_image = itk.Image[itk.Vector[itk.F, 3], 3]
    filt = itk.TransformToDisplacementFieldFilter[vector_image, itk.D].New()
    filt.SetTransform(combined)
    filt.SetReferenceImage(reference)
    filt.SetUseReferenceImage(True)
    filt.Update()
    total = itk.array_view_from_image(filt.GetOutput())  # [z, y, x, 3]: T(p) - p
    inv = np.linalg.inv(matrix)
    out = np.empty(geometry.shape_zyx + (3,), dtype=np.float32)
    nk = geometry.size[2]
    for k0 in range(0, nk, chunk):
        report(None, cancel, 0.0)
        k1 = min(k0 + chunk, nk)
        sub = Geometry((geometry.size[0], geometry.size[1], k1 - k0),
                       geometry.index_to_physical(np.array([[0.0, 0.0, float(k0)]]))[0], geometry.spacing,
                       geometry.direction)
        pts = physical_grid(sub)
        mapped = pts + total[k0:k1]
        out[k0:k1] = (mapped @ inv[:3, :3].T + inv[:3, 3] - pts).astype(np.float32)
    del total, filt
    return Volume(out, geometry, "vector", {"what": "displacement field (LPS, mm), applied before the affine"})


def register_elastix(fixed: Volume, moving: Volume, mode: str, fixed_mask: Volume | None = None,
                     moving_mask: Volume | None = None, initial: np.ndarray | None = None, seed: int = 0,
                     progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
                     parameter_maps: list[dict[str, list[str]]] | None = None,
                     isolate: bool | None = None) -> ClassicResult:
    """Register with elastix (itk-elastix) and its default parameter maps (module docstring).

    Args: as :func:`register_sitk`, plus
        parameter_maps: elastix parameter maps to use instead of the defaults
            (:func:`elastix_parameter_maps` gives them as dicts to edit).
        isolate: run elastix in a worker process of :mod:`medtorch.runtime` (progress from
            its log, a cancel ends it within a fraction of a second). Default: when
            ``cancel`` is given.

    Raises:
        MedTorchInputError: itk-elastix is not installed (``pip install itk-elastix``).
    """
    _check_mode(mode)
    init_m = _check_inputs(fixed, moving, fixed_mask, moving_mask, initial, seed)
    report(progress, cancel, 0.0, "elastix: loading")
    load_elastix()
    maps = parameter_maps if parameter_maps is not None else elastix_parameter_maps(mode, seed)
    if init_m is not None:  # start from the given transform, not from the centres
        maps = [dict(m) for m in maps]
        maps[0]["AutomaticTransformInitialization"] = ["false"]
    if isolate is None:
        isolate = cancel is not None
    if not isolate:
        with tempfile.TemporaryDirectory(prefix="medtorch-elastix-") as log_dir:
            return _elastix_in_process(fixed, moving, mode, fixed_mask, moving_mask, init_m, seed, maps, log_dir,
                                       progress, cancel)
    return _elastix_child(fixed, moving, mode, fixed_mask, moving_mask, init_m, seed, maps, progress, cancel)


# -- elastix in a worker process --------------------------------------------------------------

#: The function the worker runs for an isolated elastix registration (a ``call`` job).
_ELASTIX_JOB = "medtorch.registration.classic:_elastix_job"


def _elastix_child(fixed: Volume, moving: Volume, mode: str, fixed_mask: Volume | None, moving_mask: Volume | None,
                   initial: np.ndarray | None, seed: int, maps: list[dict[str, list[str]]],
                   progress: ProgressCallback | None, cancel: CancelToken | None) -> ClassicResult:
    """elastix as a job of the runtime (:func:`medtorch.runtime.call_in_worker`, running
    :func:`_elastix_job`): volumes as NRRD files, the rest as JSON; a cancel stops the worker."""
    from medtorch.runtime.jobs import call_in_worker

    volumes = {"fixed": fixed, "moving": moving}
    if fixed_mask is not None:
        volumes["fixed_mask"] = fixed_mask
    if moving_mask is not None:
        volumes["moving_mask"] = moving_mask
    params = {"mode": mode, "seed": int(seed), "maps": maps,
              "initial": None if initial is None else np.asarray(initial, dtype=np.float64)}
    out, values = call_in_worker(_ELASTIX_JOB, volumes, params, progress, cancel)
    report(progress, cancel, 1.0, "elastix: done")
    return np.asarray(values["matrix"], dtype=np.float64), out.get("displacement"), dict(values["info"])


def _elastix_job(volumes: dict[str, Volume], params: dict[str, Any], progress: ProgressCallback | None,
                 cancel: CancelToken | None) -> tuple[dict[str, Volume], dict[str, Any]]:
    """The worker's side of :func:`_elastix_child`: elastix in this process, its progress
    read from its log by a thread (elastix reports none itself and cannot be interrupted)."""
    import threading

    maps = params["maps"]
    initial = None if params["initial"] is None else np.asarray(params["initial"], dtype=np.float64)
    with tempfile.TemporaryDirectory(prefix="medtorch-elastix-") as log_dir:
        done = threading.Event()

        def follow_log() -> None:
            log = Path(log_dir, "elastix.log")
            while not done.wait(0.1):
                if progress is not None and log.exists():
                    progress(0.05 + 0.85 * _count_progress(log.read_text(errors="replace"), maps), "elastix: registering")

        follower = threading.Thread(target=follow_log, daemon=True)
        follower.start()
        try:
            matrix, disp, info = _elastix_in_process(volumes["fixed"], volumes["moving"], params["mode"],
                                                     volumes.get("fixed_mask"), volumes.get("moving_mask"), initial,
                                                     int(params["seed"]), maps, log_dir, None, None)
        finally:
            done.set()
            follower.join()
    return ({} if disp is None else {"displacement": disp}), {"matrix": matrix, "info": info}
