"""The classic registration engines (SimpleITK, elastix) and the benchmark's case generator.

Small cases only (4 mm grids from the MNI152 template, ~140 kvoxels): accuracy targets and
timings live in the benchmark (``python -m benchmarks.registration``), not here.
"""

from __future__ import annotations

import importlib.util
import threading
import time
from dataclasses import replace

import numpy as np
import pytest

from benchmarks.registration import cases as C
from benchmarks.registration.engines import register_sitk_seed
from benchmarks.registration.metrics import folding, map_points
from medtorch.errors import Cancelled, MedTorchInputError
from medtorch.progress import CancelToken
from medtorch.registration import classic
from medtorch.registration.classic import SitkRecipe, register_elastix, register_sitk
from medtorch.volume import Volume

HAS_ELASTIX = importlib.util.find_spec("itk") is not None and classic.elastix_version() != "not installed"


def _tre(case: C.Case, affine: np.ndarray, disp: Volume | None = None) -> np.ndarray:
    return case.tre(map_points(affine, disp, case.landmarks))


@pytest.fixture(scope="module")
def rigid_case() -> C.Case:
    return C.build_case(C.small_spec("t-rigid", "rigid", "t2", seed=5, max_angle_deg=12.0, max_shift_mm=12.0))


@pytest.fixture(scope="module")
def deformable_case() -> C.Case:
    return C.build_case(C.small_spec("t-def", "deformable", "t2", seed=7, max_angle_deg=3.0, max_shift_mm=3.0,
                                     deform_max_mm=5.0))


@pytest.fixture(scope="module")
def affine_case() -> C.Case:
    return C.build_case(C.small_spec("t-affine", "affine", "t2", seed=6, max_angle_deg=8.0, max_shift_mm=8.0,
                                     max_scale=0.08, max_shear=0.05))


# -- the case generator -------------------------------------------------------------------


def _through_truth(case: C.Case) -> np.ndarray:
    """The moving volume resampled onto the fixed grid through the true transform."""
    import SimpleITK as sitk

    tx = C._sitk_affine(case.affine)
    if case.displacement is not None:
        d = case.displacement
        field = sitk.DisplacementFieldTransform(Volume(d.array.astype(np.float64), d.geometry, "vector").to_sitk())
        tx = sitk.CompositeTransform([tx, field])  # the field first, then the affine
    return C._resample(case.moving.array, case.moving.geometry, case.fixed.geometry, tx, float(case.moving.array.min()))


def _same_contrast_on_fixed(case: C.Case) -> np.ndarray:
    t = C.load_tissues()
    img = C.paint(t, case.spec.contrast)
    f = round(case.spec.fixed_spacing_mm)
    arr, geom = C._downsample(img, t.geometry, (f, f, f))
    assert geom.isclose(case.fixed.geometry)
    return arr


def test_case_truth_maps_moving_anatomy_onto_fixed(rigid_case):
    """Resampling the moving volume through the truth recovers the same-contrast anatomy on the
    fixed grid; a 3 mm error in the truth would not."""
    back = _through_truth(rigid_case)
    ref = _same_contrast_on_fixed(rigid_case)
    head = C._downsample(C.load_tissues().head, C.load_tissues().geometry, (4, 4, 4))[0] > 0.5
    r = np.corrcoef(back[head], ref[head])[0, 1]
    assert r > 0.93
    shifted = rigid_case.affine.copy()
    shifted[:3, 3] += [3.0, 0.0, 0.0]
    wrong = replace(rigid_case, affine=shifted)
    r_wrong = np.corrcoef(_through_truth(wrong)[head], ref[head])[0, 1]
    assert r_wrong < r - 0.05
    # Landmarks sit in the brain, and the truth moves them by about the case's start TRE.
    assert np.all(C.load_tissues().brain[tuple(np.round(C.load_tissues().geometry.physical_to_index(
        rigid_case.landmarks)[:, ::-1]).astype(int).T)] > 0.5)
    assert rigid_case.info["start_tre_mm"] > 5.0


def test_deformable_case_truth_is_invertible_and_consistent(deformable_case):
    case = deformable_case
    q = case.truth(case.landmarks)
    assert np.abs(case.inverse(q) - case.landmarks).max() < 0.05
    assert case.info["truth"]["deform_max_mm"] > 3.0
    assert folding(np.eye(4), case.displacement)["folding_percent"] == 0.0
    back = _through_truth(case)
    ref = _same_contrast_on_fixed(case)
    head = C._downsample(C.load_tissues().head, C.load_tissues().geometry, (4, 4, 4))[0] > 0.5
    assert np.corrcoef(back[head], ref[head])[0, 1] > 0.9


def test_cases_are_deterministic(rigid_case):
    again = C.build_case(rigid_case.spec)
    assert np.array_equal(again.moving.array, rigid_case.moving.array)
    assert np.array_equal(again.landmarks, rigid_case.landmarks)
    ct = C.build_case(replace(rigid_case.spec, contrast="ct"))
    assert ct.moving.array.min() < -900 and ct.moving.array.max() > 800  # air and skull in HU


# -- SimpleITK ------------------------------------------------------------------------------


def test_sitk_recovers_rigid(rigid_case):
    fixed_before = rigid_case.fixed.array.copy()
    a, d, info = register_sitk(rigid_case.fixed, rigid_case.moving, "rigid", seed=3)
    assert d is None
    tre = _tre(rigid_case, a)
    assert tre.mean() < 1.0, tre.mean()
    assert np.allclose(a[:3, :3] @ a[:3, :3].T, np.eye(3), atol=1e-6)  # rigid
    assert np.array_equal(rigid_case.fixed.array, fixed_before)  # inputs untouched
    assert info["seed"] == 3 and info["iterations"] > 0 and info["engine"].startswith("SimpleITK")


def test_sitk_recovers_affine(affine_case):
    a, _, info = register_sitk(affine_case.fixed, affine_case.moving, "affine", seed=1)
    assert _tre(affine_case, a).mean() < 1.0
    assert [s["stage"] for s in info["stages"]] == ["rigid", "affine"]
    # The scales of the truth (up to 8 %) are recovered, which a rigid fit cannot do.
    assert np.allclose(np.linalg.svd(a[:3, :3])[1], np.linalg.svd(affine_case.affine[:3, :3])[1], atol=0.02)


def test_sitk_initial_transform_is_composed(rigid_case):
    a, _, info = register_sitk(rigid_case.fixed, rigid_case.moving, "rigid", initial=rigid_case.affine,
                               recipe=SitkRecipe(shrink_factors=(1,), smoothing_sigmas_mm=(0.0,)))
    assert info["init"] == "initial transform"
    assert _tre(rigid_case, a).mean() < 0.5


def test_corrected_recipe_beats_seed_recipe(rigid_case):
    start = rigid_case.info["start_tre_mm"]
    seed_a, _ = register_sitk_seed(rigid_case.fixed, rigid_case.moving, "rigid")
    ours, _, _ = register_sitk(rigid_case.fixed, rigid_case.moving, "rigid")
    seed_tre, our_tre = _tre(rigid_case, seed_a).mean(), _tre(rigid_case, ours).mean()
    assert our_tre < 1.0
    assert seed_tre > 5 * our_tre and seed_tre > 2.0, (seed_tre, start)


def test_sitk_masks(rigid_case):
    """A mask over the brain keeps the result; a mask over air alone leaves nothing to measure."""
    t = C.load_tissues()
    brain4, geom4 = C._downsample(t.brain, t.geometry, (4, 4, 4))
    fixed_mask = Volume((brain4 > 0.5).astype(np.uint8), geom4, "label")
    a, _, _ = register_sitk(rigid_case.fixed, rigid_case.moving, "rigid", fixed_mask=fixed_mask, seed=2)
    assert _tre(rigid_case, a).mean() < 1.0
    air = np.zeros(rigid_case.moving.array.shape, np.uint8)
    air[:2, :2, :2] = 1  # a corner of air
    with pytest.raises(MedTorchInputError, match="overlap"):
        register_sitk(rigid_case.fixed, rigid_case.moving, "rigid", moving_mask=Volume(air, rigid_case.moving.geometry,
                                                                                      "label"),
                      recipe=SitkRecipe(rotation_search_deg=()))
    with pytest.raises(MedTorchInputError, match="empty"):
        register_sitk(rigid_case.fixed, rigid_case.moving, "rigid", fixed_mask=Volume(air * 0, rigid_case.moving.geometry))


def test_sitk_deformable_small(deformable_case):
    case = deformable_case
    recipe = SitkRecipe(bspline_spacing_mm=60.0, bspline_iterations=6, bspline_refinements=(1,))
    a, d, info = register_sitk(case.fixed, case.moving, "deformable", recipe=recipe)
    assert d is not None and d.kind == "vector" and d.geometry == case.fixed.geometry
    assert d.array.dtype == np.float32 and np.abs(d.array).max() > 0.1
    assert _tre(case, a, d).mean() < case.info["start_tre_mm"]
    assert folding(a, d)["folding_percent"] == 0.0
    assert info["stages"][-1]["stage"] == "bspline"


def test_sitk_progress_and_cancel(rigid_case):
    seen: list[float] = []
    register_sitk(rigid_case.fixed, rigid_case.moving, "rigid", progress=lambda f, m="": seen.append(f),
                  recipe=SitkRecipe(shrink_factors=(2, 1), smoothing_sigmas_mm=(1.0, 0.0)))
    assert seen[0] == 0.0 and seen[-1] == 1.0 and len(seen) > 5
    token = CancelToken()
    timer = threading.Timer(0.3, token.cancel)
    timer.start()
    t0 = time.monotonic()
    with pytest.raises(Cancelled):
        register_sitk(rigid_case.fixed, rigid_case.moving, "rigid", cancel=token,
                      recipe=SitkRecipe(iterations=100_000, min_step=1e-12, shrink_factors=(1,),
                                        smoothing_sigmas_mm=(0.0,)))
    assert time.monotonic() - t0 < 0.3 + 1.0


def test_bad_input_messages(rigid_case):
    with pytest.raises(MedTorchInputError, match="mode"):
        register_sitk(rigid_case.fixed, rigid_case.moving, "elastic")
    with pytest.raises(MedTorchInputError, match="seed"):
        register_sitk(rigid_case.fixed, rigid_case.moving, "rigid", seed=-1)
    with pytest.raises(MedTorchInputError, match="initial"):
        register_sitk(rigid_case.fixed, rigid_case.moving, "rigid", initial=np.zeros((3, 3)))
    const = rigid_case.moving.with_array(np.zeros_like(rigid_case.moving.array))
    with pytest.raises(MedTorchInputError):
        register_sitk(rigid_case.fixed, const, "rigid")


def test_missing_elastix_is_a_clear_error(without_itk, rigid_case):
    with pytest.raises(MedTorchInputError, match="itk-elastix is not installed") as err:
        register_elastix(rigid_case.fixed, rigid_case.moving, "rigid")
    assert "pip install itk-elastix" in str(err.value)


# -- elastix (when installed) -----------------------------------------------------------------


@pytest.mark.skipif(not HAS_ELASTIX, reason="itk-elastix is not installed")
def test_elastix_recovers_rigid_and_affine(rigid_case, affine_case):
    t = C.load_tissues()
    brain4, geom4 = C._downsample(t.brain, t.geometry, (4, 4, 4))
    mask = Volume((brain4 > 0.5).astype(np.uint8), geom4, "label")
    a, d, info = register_elastix(rigid_case.fixed, rigid_case.moving, "rigid", fixed_mask=mask, seed=1)
    assert d is None and _tre(rigid_case, a).mean() < 1.0
    assert info["stages"] == ["EulerTransform"] and info["final_metric"] is not None
    assert info["composition_error_mm"] < 1e-6
    a, _, info = register_elastix(affine_case.fixed, affine_case.moving, "affine", seed=1)
    assert _tre(affine_case, a).mean() < 1.0
    assert info["stages"] == ["EulerTransform", "AffineTransform"]


@pytest.mark.skipif(not HAS_ELASTIX, reason="itk-elastix is not installed")
def test_elastix_deformable_field_composes_with_the_affine(deformable_case):
    """The returned (A, d) reproduce elastix's own transform: A(p + d(p)) = T(p)."""
    case = deformable_case
    maps = classic.elastix_parameter_maps("deformable", seed=0)
    for m in maps[:2]:  # shortened: the composition is under test, not elastix's accuracy
        m["NumberOfResolutions"] = ["2"]
        m["MaximumNumberOfIterations"] = ["60"]
    maps[2].update({"NumberOfResolutions": ["1"], "GridSpacingSchedule": ["1"], "MaximumNumberOfIterations": ["15"],
                    "FinalGridSpacingInPhysicalUnits": ["30"]})
    init = np.eye(4)
    init[:3, 3] = [1.0, -1.0, 0.5]
    a, d, info = register_elastix(case.fixed, case.moving, "deformable", parameter_maps=maps, initial=init)
    assert d is not None and d.geometry == case.fixed.geometry
    assert _tre(case, a, d).mean() < case.info["start_tre_mm"]
    # elastix's own T(p) (its maps and the initial transform) at voxel centres:
    assert info["composition_error_mm"] < 1e-3


@pytest.mark.skipif(not HAS_ELASTIX, reason="itk-elastix is not installed")
def test_elastix_cancel_and_progress(rigid_case):
    token = CancelToken()
    seen: list[float] = []
    timer = threading.Timer(1.0, token.cancel)
    timer.start()
    t0 = time.monotonic()
    with pytest.raises(Cancelled):
        register_elastix(rigid_case.fixed, rigid_case.moving, "deformable", cancel=token,
                         progress=lambda f, m="": seen.append(f))
    assert time.monotonic() - t0 < 1.0 + 1.0
    assert seen and seen[0] == 0.0
