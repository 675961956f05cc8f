"""The torch registration engine on small synthetic pairs with known transforms.

Pairs come from :func:`medtorch.registration.synthetic.synthetic_pair`: the same anatomy in two
contrasts (a non-monotonic relabelling, as CT vs MRI) on two different oblique grids, moved by a
known ``T(p) = A(p + u(p))``. Accuracy targets on realistic data are the benchmark's business
(``python -m benchmarks.registration``); here each test checks what could break.
"""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch

from medtorch.errors import Cancelled, MedTorchInputError
from medtorch.progress import CancelToken
from medtorch.registration import RegistrationResult, register
from medtorch.registration.synthetic import synthetic_pair
from medtorch.volume import Geometry, Volume

FAST = {"iterations": [30, 25, 25], "samples": [2000, 5000, 10000]}


@pytest.fixture(scope="module")
def rigid_pair():
    return synthetic_pair("rigid", seed=1, size=40, spacing=2.4)


@pytest.fixture(scope="module")
def rigid_result(rigid_pair):
    return register(rigid_pair.fixed, rigid_pair.moving, mode="rigid", metric="mi", seed=0, **FAST)


# -- each mode recovers the transform ----------------------------------------------------------------


def test_rigid_mi_recovers_transform_across_contrasts(rigid_pair, rigid_result):
    start = rigid_pair.tre(rigid_pair.landmarks).mean()
    err = rigid_pair.tre(rigid_result.map_points(rigid_pair.landmarks))
    assert start > 5.0
    assert err.max() < 0.3, err
    lin = rigid_result.affine[:3, :3]
    np.testing.assert_allclose(lin.T @ lin, np.eye(3), atol=1e-5)  # rigid: a rotation
    assert rigid_result.displacement is None
    assert rigid_result.resampled.geometry.isclose(rigid_pair.fixed.geometry)
    rep = rigid_result.report
    for key in ("final_similarity", "metric", "mode", "engine", "jacobian_min", "folding_percent", "runtime_s",
                "device", "seed"):
        assert key in rep, key
    assert rep["folding_percent"] == 0.0 and rep["jacobian_min"] == pytest.approx(1.0, abs=1e-5)


def test_affine_recovers_scale_and_shear():
    pair = synthetic_pair("affine", seed=2, size=44, spacing=2.2)
    res = register(pair.fixed, pair.moving, mode="affine", metric="mi", seed=0, **FAST)
    err = pair.tre(res.map_points(pair.landmarks))
    assert err.mean() < 0.4, err
    scales = np.linalg.svd(res.affine[:3, :3], compute_uv=False)
    truth = np.linalg.svd(pair.affine[:3, :3], compute_uv=False)
    np.testing.assert_allclose(scales, truth, atol=0.01)


@pytest.mark.parametrize("metric", ["ncc", "mse", "lncc"])
def test_same_modality_metrics(metric):
    pair = synthetic_pair("rigid", seed=3, size=36, spacing=2.6, same_contrast=True)
    res = register(pair.fixed, pair.moving, mode="rigid", metric=metric, seed=0, **FAST)
    assert pair.tre(res.map_points(pair.landmarks)).max() < 0.4
    assert res.report["metric"] == metric


def test_deformable_mi_improves_on_affine_without_folding():
    pair = synthetic_pair("deformable", seed=8, size=40, spacing=2.4, deform_mm=5.0)
    opts = dict(FAST, deformable_iterations=[30, 25], deformable_points=20000)
    res = register(pair.fixed, pair.moving, mode="deformable", metric="mi", seed=0, **opts)
    assert res.displacement is not None and res.displacement.kind == "vector"
    assert res.displacement.geometry.isclose(pair.fixed.geometry)
    affine_only = pair.tre(pair.landmarks @ res.affine[:3, :3].T + res.affine[:3, 3])
    err = pair.tre(res.map_points(pair.landmarks))
    assert err.mean() < 0.75 * affine_only.mean(), (err.mean(), affine_only.mean())
    assert res.report["folding_percent"] == 0.0 and res.report["jacobian_min"] > 0
    # composition p_moving = A(p + d(p)), as documented
    p = pair.landmarks[:5]
    d = res.map_points(p)
    from medtorch.resample import transform_points

    u = transform_points(torch.from_numpy(p.copy()), res.displacement).numpy()
    np.testing.assert_allclose(d, u @ res.affine[:3, :3].T + res.affine[:3, 3], atol=1e-9)


def test_deformable_diffeomorphic_mind_has_no_folding():
    pair = synthetic_pair("deformable", seed=5, size=36, spacing=2.6, deform_mm=2.5)
    opts = dict(FAST, deformable_iterations=[25, 10], deformable_points=20000, diffeomorphic=True)
    res = register(pair.fixed, pair.moving, mode="deformable", metric="mind", seed=0, **opts)
    assert res.report["diffeomorphic"] is True and res.report["deformable_metric"] == "mind"
    assert res.report["folding_percent"] == 0.0
    err = pair.tre(res.map_points(pair.landmarks))
    assert err.mean() < 0.5 * pair.tre(pair.landmarks).mean()


def test_large_misalignment_is_recovered_by_the_search():
    pair = synthetic_pair("rigid", seed=6, size=40, spacing=2.4, max_angle_deg=30.0, max_shift_mm=15.0)
    res = register(pair.fixed, pair.moving, mode="rigid", seed=0, **FAST)
    assert res.report["init"] == "search"
    assert pair.tre(res.map_points(pair.landmarks)).max() < 0.5


def test_fiducial_initialisation_and_tre_report(rigid_pair):
    truth_points = rigid_pair.truth(rigid_pair.landmarks)
    res = register(rigid_pair.fixed, rigid_pair.moving, mode="rigid", init="fiducials",
                   fixed_landmarks=rigid_pair.landmarks, moving_landmarks=truth_points, seed=0, **FAST)
    assert res.report["init"] == "fiducials"
    assert res.report["tre_mean_mm"] < 0.3 and res.report["tre_points"] == len(truth_points)
    assert res.report["tre_p95_mm"] >= res.report["tre_mean_mm"] - 1e-12


# -- written transforms agree with the engine -------------------------------------------------------------


@pytest.mark.parametrize("ext", [".tfm", ".h5"])
def test_linear_transform_file_maps_points_as_the_engine(tmp_path, rigid_result, rigid_pair, ext):
    import SimpleITK as sitk

    path = rigid_result.write_transform(tmp_path / f"reg{ext}")
    tx = sitk.ReadTransform(str(path))
    pts = rigid_pair.landmarks
    mapped = np.array([tx.TransformPoint(tuple(float(v) for v in p)) for p in pts])
    np.testing.assert_allclose(mapped, rigid_result.map_points(pts), atol=1e-6)
    with pytest.raises(MedTorchInputError):
        rigid_result.write_transform(tmp_path / "reg.nii.gz")


def _deformable_result() -> tuple[RegistrationResult, np.ndarray]:
    pair = synthetic_pair("deformable", seed=7, size=32, spacing=3.0)
    res = register(pair.fixed, pair.moving, mode="deformable", seed=0,
                   **dict(FAST, deformable_iterations=[10, 5], deformable_points=5000))
    return res, pair.landmarks


def test_deformable_files_map_points_as_the_engine(tmp_path):
    import SimpleITK as sitk

    from medtorch.registration.result import read_registration_transform
    from medtorch.resample import transform_points
    from medtorch.transform_io import read_transform

    res, pts = _deformable_result()
    expected = res.map_points(pts)
    h5 = res.write_transform(tmp_path / "reg.h5")
    tx = sitk.ReadTransform(str(h5))
    mapped = np.array([tx.TransformPoint(tuple(float(v) for v in p)) for p in pts])
    np.testing.assert_allclose(mapped, expected, atol=1e-4)
    back = read_registration_transform(h5)
    assert isinstance(back, list) and len(back) == 2
    np.testing.assert_allclose(transform_points(torch.from_numpy(pts.copy()), back).numpy(), expected, atol=1e-4)
    nii = res.write_transform(tmp_path / "reg.nii.gz")  # one field, the affine folded in
    field = read_transform(nii)
    assert isinstance(field, Volume) and field.kind == "vector"
    np.testing.assert_allclose(transform_points(torch.from_numpy(pts.copy()), field).numpy(), expected, atol=1e-3)
    with pytest.raises(MedTorchInputError, match="cannot be written"):
        res.write_transform(tmp_path / "reg.tfm")


# -- reproducibility, inputs untouched, cancel --------------------------------------------------------------


def test_same_seed_same_result_and_inputs_untouched(rigid_pair):
    f_before, m_before = rigid_pair.fixed.array.copy(), rigid_pair.moving.array.copy()
    a = register(rigid_pair.fixed, rigid_pair.moving, seed=7, resample_output=False, **FAST)
    b = register(rigid_pair.fixed, rigid_pair.moving, seed=7, resample_output=False, **FAST)
    np.testing.assert_array_equal(a.affine, b.affine)
    assert a.report["seed"] == 7 and a.resampled is None
    np.testing.assert_array_equal(rigid_pair.fixed.array, f_before)
    np.testing.assert_array_equal(rigid_pair.moving.array, m_before)


def test_cancel_stops_within_a_fraction_of_a_second(rigid_pair):
    import time

    token = CancelToken()
    seen: list[float] = []

    def progress(fraction: float, message: str = "") -> None:
        seen.append(time.monotonic())
        if fraction > 0.2 and not token.cancelled:
            token.cancel()
            seen.append(-time.monotonic())

    with pytest.raises(Cancelled):
        register(rigid_pair.fixed, rigid_pair.moving, seed=0, progress=progress, cancel=token, **FAST)
    cancelled_at = -min(v for v in seen if v < 0)
    assert time.monotonic() - cancelled_at < 1.0


def test_progress_is_monotonic_and_reaches_one(rigid_pair):
    fractions: list[float] = []
    register(rigid_pair.fixed, rigid_pair.moving, seed=0, progress=lambda f, m="": fractions.append(f),
             resample_output=False, **FAST)
    assert fractions[-1] == 1.0
    assert all(b >= a - 1e-9 for a, b in zip(fractions, fractions[1:]))


# -- bad input: one clear error each --------------------------------------------------------------------------


def test_no_overlap_is_a_clear_error(rigid_pair):
    far = Volume(rigid_pair.moving.array, Geometry(rigid_pair.moving.size, rigid_pair.moving.origin + 1000.0,
                                                    rigid_pair.moving.spacing, rigid_pair.moving.direction))
    with pytest.raises(MedTorchInputError, match="do not overlap"):
        register(rigid_pair.fixed, far, init="none")


def test_empty_mask_two_d_and_constant_volumes_are_clear_errors(rigid_pair):
    empty = Volume(np.zeros(rigid_pair.fixed.array.shape, np.uint8), rigid_pair.fixed.geometry, "label")
    with pytest.raises(MedTorchInputError, match="fixed mask is empty"):
        register(rigid_pair.fixed, rigid_pair.moving, fixed_mask=empty)
    flat = Volume.from_array(np.random.default_rng(0).random((1, 30, 30)).astype(np.float32))
    with pytest.raises(MedTorchInputError, match="2D"):
        register(flat, rigid_pair.moving)
    constant = rigid_pair.fixed.with_array(np.full(rigid_pair.fixed.array.shape, 7.0, np.float32))
    with pytest.raises(MedTorchInputError, match="constant"):
        register(constant, rigid_pair.moving)


@pytest.mark.parametrize("kwargs, match", [
    ({"metric": "cc"}, "unknown similarity metric"),
    ({"mode": "bspline"}, "unknown registration mode"),
    ({"engine": "ants"}, "unknown registration engine"),
    ({"no_such_option": 1}, "unknown registration option"),
    ({"fixed_landmarks": np.zeros((4, 3))}, "only one of the volumes"),
    ({"fixed_landmarks": np.zeros((4, 3)), "moving_landmarks": np.zeros((3, 3))}, "do not make pairs"),
    ({"initial_transform": np.zeros((3, 3))}, "4x4"),
    ({"init": "fiducials"}, "needs landmark pairs"),
])
def test_bad_arguments_are_clear_errors(rigid_pair, kwargs, match):
    with pytest.raises(MedTorchInputError, match=match) as err:
        register(rigid_pair.fixed, rigid_pair.moving, **kwargs)
    assert "What to do" in str(err.value)


# -- building blocks --------------------------------------------------------------------------------------------


def test_mutual_information_histogram_and_gradient():
    from medtorch.registration.similarity import fixed_bin_index, joint_histogram, mutual_information

    rng = np.random.default_rng(0)
    f = torch.from_numpy(rng.random(5000).astype(np.float32))
    fb = fixed_bin_index(f, 32)
    h = joint_histogram(fb, f.unsqueeze(0), None, 32)
    assert h.sum().item() == pytest.approx(5000, rel=1e-5)  # B-spline weights sum to one
    m = torch.stack([f, torch.from_numpy(rng.random(5000).astype(np.float32)), 1.0 - f]).requires_grad_(True)
    mi = mutual_information(fb, m, None, 32)
    assert mi[0] > 5 * mi[1] and mi[2] > 5 * mi[1]  # dependent (even inverted) >> independent
    mi[0].backward()
    assert torch.isfinite(m.grad).all() and m.grad.abs().sum() > 0


def test_analytic_mi_gradient_equals_autograd():
    """The linear stages' hot loop differentiates MI by hand: the same value and derivative as
    autograd through :func:`mutual_information`, with weights and values outside [0, 1]."""
    from medtorch.registration.similarity import fixed_bin_index, mutual_information, mutual_information_and_gradient

    rng = np.random.default_rng(2)
    f = torch.from_numpy(rng.random(4000)).double()
    fb = fixed_bin_index(f, 24)
    m = torch.stack([0.8 * f + 0.1 + 0.05 * torch.from_numpy(rng.normal(size=4000)), 1.1 - f.sqrt()]).double()
    m[0, :20], m[1, :20] = -0.2, 1.3  # clamped: no derivative there
    w = torch.from_numpy((rng.random((2, 4000)) > 0.1).astype(np.float64))
    leaf = m.clone().requires_grad_(True)
    # a tiny eps: the hand derivative is that of MI itself, autograd's that of the eps-regularised sum
    mi = mutual_information(fb, leaf, w, 48, eps=1e-30)
    mi.sum().backward()
    value, grad = mutual_information_and_gradient(fb, m, w, 48, eps=1e-30)
    torch.testing.assert_close(value, mi.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, leaf.grad, rtol=1e-6, atol=1e-9)
    assert float(grad[:, :20].abs().max()) == 0.0 and float(grad[:, 20:].abs().max()) > 0.0


def test_rotation_matrices_equal_the_matrix_exponential_and_its_derivative():
    from medtorch.registration.linear import _skew, rotation_matrices

    rng = np.random.default_rng(4)
    for scale in (0.0, 1e-3, 0.05, 0.7, 2.5):
        r = torch.from_numpy(rng.normal(size=(3, 3)) * scale)
        torch.testing.assert_close(rotation_matrices(r), torch.linalg.matrix_exp(_skew(r)), rtol=0, atol=1e-12)
        jac = torch.autograd.functional.jacobian(rotation_matrices, r)
        ref = torch.autograd.functional.jacobian(lambda x: torch.linalg.matrix_exp(_skew(x)), r)
        torch.testing.assert_close(jac, ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("gather", [True, False])
def test_linear_step_gradient_equals_autograd(gather):
    """The analytic path (values and derivatives from the sampler, MI by hand, autograd only
    from the matrices to the parameters) gives the parameters' gradient autograd gives."""
    from medtorch.registration.linear import MovingSampler, draw_samples, linear_matrices, similarity_of
    from medtorch.registration.pyramid import PyramidLevel
    from medtorch.registration.similarity import mutual_information_and_gradient

    pair = synthetic_pair("affine", size=32, spacing=3.0, seed=3)
    fix = PyramidLevel(torch.from_numpy(pair.fixed.array).float()[None] / float(pair.fixed.array.max()),
                       pair.fixed.geometry, None, 3.0)
    mov = PyramidLevel(torch.from_numpy(pair.moving.array).float()[None] / float(pair.moving.array.max()),
                       pair.moving.geometry, None, 3.0)
    sampler = MovingSampler(mov, gather=gather)
    samples = draw_samples(fix, 4000, np.random.default_rng(0), 32)
    center = torch.tensor(pair.fixed.geometry.index_to_physical(np.array([[16.0, 16.0, 16.0]]))[0], dtype=torch.float32)
    base = torch.eye(4).repeat(2, 1, 1)
    theta0 = torch.from_numpy(np.random.default_rng(1).normal(0, 2, (2, 12))).float()
    a = theta0.clone().requires_grad_(True)
    values, weights = sampler(samples.points, base @ linear_matrices(a, center, 40.0, True))
    similarity_of("mi", samples, values, weights, 32).sum().backward()
    b = theta0.clone().requires_grad_(True)
    mats = base @ linear_matrices(b, center, 40.0, True)
    vals, derivs, w, _ = sampler.values_and_gradients(samples.points, mats.detach())
    _, dsim = mutual_information_and_gradient(samples.bins, vals, w, 32)
    g = dsim.unsqueeze(-1) * derivs
    d_norm = torch.zeros_like(mats)
    d_norm[:, :3, :3] = g.transpose(1, 2) @ samples.points
    d_norm[:, :3, 3] = g.sum(1)
    mats[:, :3, :].backward(sampler.lps_to_norm[:3, :3].T.unsqueeze(0) @ d_norm[:, :3, :])
    torch.testing.assert_close(b.grad, a.grad, rtol=1e-3, atol=1e-4 * float(a.grad.abs().max()))


def test_numpy_matrices_and_jacobian_equal_torch_and_autograd():
    from medtorch.registration.linear import linear_jacobian_np, linear_matrices, linear_matrices_np

    rng = np.random.default_rng(8)
    center = np.array([3.0, -20.0, 12.0])
    for affine in (False, True):
        theta = rng.normal(0, 8, (3, 12 if affine else 6))
        theta[0] = 0.0  # the start of every level
        t = torch.from_numpy(theta)
        ref = linear_matrices(t, torch.from_numpy(center), 70.0, affine)
        np.testing.assert_allclose(linear_matrices_np(theta, center, 70.0, affine), ref.numpy(), atol=1e-12)
        jac = torch.autograd.functional.jacobian(
            lambda x: linear_matrices(x, torch.from_numpy(center), 70.0, affine)[:, :3, :], t)  # [K, 3, 4, K, P]
        ref_jac = torch.stack([jac[k, :, :, k, :] for k in range(3)]).permute(0, 3, 1, 2).numpy()
        np.testing.assert_allclose(linear_jacobian_np(theta, center, 70.0, affine), ref_jac, atol=1e-8)


def test_fast_linear_loop_reaches_the_autograd_loops_result():
    """The analytic MI loop (numpy parameter algebra) and the autograd loop optimise the same
    objective: on a synthetic pair they end within 0.05 mm of each other over the volume."""
    from medtorch.registration.linear import LevelSchedule, MovingSampler, draw_samples, linear_matrices, optimise_level
    from medtorch.registration.pyramid import PyramidLevel

    pair = synthetic_pair("rigid", size=32, spacing=3.0, seed=4, max_angle_deg=6.0, max_shift_mm=5.0)
    fix = PyramidLevel(torch.from_numpy(pair.fixed.array).float()[None] / float(pair.fixed.array.max()),
                       pair.fixed.geometry, None, 3.0)
    mov = PyramidLevel(torch.from_numpy(pair.moving.array).float()[None] / float(pair.moving.array.max()),
                       pair.moving.geometry, None, 3.0)
    samples = draw_samples(fix, 6000, np.random.default_rng(0), 32)
    center = torch.tensor(pair.fixed.geometry.index_to_physical(np.array([[16.0, 16.0, 16.0]]))[0], dtype=torch.float32)
    base = torch.eye(4)[None]
    out = []
    for fast in (True, False):
        theta, _, _, _ = optimise_level(MovingSampler(mov), samples, base, torch.zeros(1, 6), center, 40.0, False, "mi",
                                        32, LevelSchedule(60, 6000, 1.5), analytic_small_math=fast)
        out.append((base @ linear_matrices(theta, center, 40.0, False))[0].double().numpy())
    corners = pair.fixed.geometry.index_to_physical(np.array([[i, j, k] for i in (0, 31) for j in (0, 31) for k in (0, 31)], float))
    moved = [corners @ m[:3, :3].T + m[:3, 3] for m in out]
    assert np.abs(moved[0] - corners).max() > 2.0  # both did move the corners (by several mm)
    assert np.abs(moved[0] - moved[1]).max() < 0.05


def test_registration_is_reproducible_with_its_helper_thread():
    """The torch engine prepares samples in a helper thread: the same seed gives the same transform."""
    pair = synthetic_pair("rigid", size=40, spacing=2.5, seed=6)
    runs = [register(pair.fixed, pair.moving, mode="affine", device="cpu", seed=3, resample_output=False).affine
            for _ in range(2)]
    np.testing.assert_array_equal(runs[0], runs[1])


def test_mind_descriptors_ignore_intensity_scale():
    from medtorch.registration.similarity import mind_ssc

    img = torch.from_numpy(synthetic_pair("rigid", size=24, spacing=4.0).fixed.array).float()[None, None]
    a = mind_ssc(img)
    b = mind_ssc(3.0 * img + 10.0)
    assert a.shape == (1, 12) + tuple(img.shape[2:])
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_fiducial_least_squares_and_principal_axes():
    from medtorch.registration.initialization import euler_matrix, fiducial_init, principal_axes_candidates

    rng = np.random.default_rng(1)
    p = rng.normal(0, 20, (12, 3)) * np.array([3.0, 2.0, 1.0])
    m = np.eye(4)
    m[:3, :3] = euler_matrix((40.0, -70.0, 120.0))
    m[:3, 3] = [5.0, -8.0, 30.0]
    q = p @ m[:3, :3].T + m[:3, 3]
    np.testing.assert_allclose(fiducial_init(p, q), m, atol=1e-9)
    np.testing.assert_allclose(fiducial_init(p, q, affine=True), m, atol=1e-9)
    cands = principal_axes_candidates(p.mean(0), np.cov(p.T), q.mean(0), np.cov(q.T))
    assert len(cands) == 4
    assert min(np.abs(c[:3, :3] - m[:3, :3]).max() for c in cands) < 0.05
    with pytest.raises(MedTorchInputError, match="collinear"):
        fiducial_init(np.array([[0, 0, 0], [1, 1, 1], [2, 2, 2.0]]), np.zeros((3, 3)))


def test_jacobian_of_a_linear_field_is_exact():
    from medtorch.phantoms import oblique_geometry, physical_grid
    from medtorch.registration.jacobian import folding_report, jacobian_determinant

    g = oblique_geometry((12, 10, 8), (1.0, 1.3, 2.0))
    b = np.array([[0.1, 0.05, 0.0], [-0.02, -0.1, 0.03], [0.0, 0.04, 0.2]])
    field = Volume((physical_grid(g) @ b.T).astype(np.float32), g, "vector")
    a = np.diag([1.1, 0.9, 1.0, 1.0])
    det = jacobian_determinant(field, a)
    np.testing.assert_allclose(det, np.linalg.det(np.eye(3) + b) * 0.99, rtol=1e-5)
    folded = Volume((physical_grid(g) @ np.diag([-2.0, 0.0, 0.0]).T).astype(np.float32), g, "vector")
    assert folding_report(np.eye(4), folded)["folding_percent"] == 100.0


def test_landmark_files(tmp_path):
    from medtorch.registration.landmarks import read_landmarks

    pts = np.array([[1.0, 2.0, 3.0], [-4.0, 5.5, 6.0], [7.0, -8.0, 9.25]])
    (tmp_path / "a.mrk.json").write_text(json.dumps({"markups": [{"coordinateSystem": "RAS", "controlPoints": [
        {"position": list(p * [-1, -1, 1])} for p in pts]}]}))
    np.testing.assert_allclose(read_landmarks(tmp_path / "a.mrk.json"), pts)
    (tmp_path / "b.fcsv").write_text("# Markups fiducial file version = 4.11\n# CoordinateSystem = LPS\n"
                                     + "".join(f"id{i},{p[0]},{p[1]},{p[2]},0,0,0,1,1,1,0,F,,\n" for i, p in enumerate(pts)))
    np.testing.assert_allclose(read_landmarks(tmp_path / "b.fcsv"), pts)
    np.savetxt(tmp_path / "c.csv", pts, delimiter=",", header="x,y,z")
    np.testing.assert_allclose(read_landmarks(tmp_path / "c.csv"), pts)
    (tmp_path / "d.txt").write_text("")
    with pytest.raises(MedTorchInputError, match="no points"):
        read_landmarks(tmp_path / "d.txt")


# -- the operation, the classic engines through the dispatcher, the command line ---------------------------


def test_register_operation(rigid_pair):
    from medtorch.runtime import run_operation

    out = run_operation("register", {"fixed": rigid_pair.fixed, "moving": rigid_pair.moving},
                        {"mode": "rigid", "seed": 0, "options": FAST})
    affine = np.asarray(out.values["affine"])
    pts = rigid_pair.landmarks
    assert rigid_pair.tre(pts @ affine[:3, :3].T + affine[:3, 3]).max() < 0.3
    assert out.volumes["resampled"].geometry.isclose(rigid_pair.fixed.geometry)
    json.dumps(out.values)  # what the background worker sends back


def test_sitk_engine_through_the_dispatcher(rigid_pair):
    pytest.importorskip("medtorch.registration.classic")
    res = register(rigid_pair.fixed, rigid_pair.moving, engine="sitk", mode="rigid", seed=0)
    assert res.report["engine"] == "sitk"
    # (accuracy of the classic engines is tested in test_registration_classic.py and the benchmark)
    assert rigid_pair.tre(res.map_points(rigid_pair.landmarks)).mean() < 0.5 * rigid_pair.tre(rigid_pair.landmarks).mean()
    with pytest.raises(MedTorchInputError, match="takes no options"):
        register(rigid_pair.fixed, rigid_pair.moving, engine="sitk", samples=10)


def test_command_line_register(tmp_path, rigid_pair, capsys):
    import SimpleITK as sitk

    from medtorch.cli import main
    from medtorch.io import read_volume, write_volume

    write_volume(rigid_pair.fixed, tmp_path / "fixed.nii.gz")
    write_volume(rigid_pair.moving, tmp_path / "moving.nrrd")
    np.savetxt(tmp_path / "f.csv", rigid_pair.landmarks, delimiter=",")
    np.savetxt(tmp_path / "m.csv", rigid_pair.truth(rigid_pair.landmarks), delimiter=",")
    args = ["register", "--fixed", str(tmp_path / "fixed.nii.gz"), "--moving", str(tmp_path / "moving.nrrd"),
            "--out-transform", str(tmp_path / "reg.tfm"), "--out-volume", str(tmp_path / "res.nrrd"),
            "--fixed-landmarks", str(tmp_path / "f.csv"), "--moving-landmarks", str(tmp_path / "m.csv"),
            "--init", "moments", "--seed", "3", "--quiet",
            "--option", "iterations=[30,25,25]", "--option", "samples=[2000,5000,10000]"]
    assert main(args) == 0
    report = json.loads((tmp_path / "reg.json").read_text())
    assert report["seed"] == 3 and report["tre_mean_mm"] < 0.3 and report["init"] == "moments"
    tx = sitk.ReadTransform(str(tmp_path / "reg.tfm"))
    a = np.asarray(report["affine_lps"])
    p = rigid_pair.landmarks[0]
    np.testing.assert_allclose(tx.TransformPoint(tuple(p)), p @ a[:3, :3].T + a[:3, 3], atol=1e-6)
    assert read_volume(tmp_path / "res.nrrd").geometry.isclose(rigid_pair.fixed.geometry)
    # a deformable transform cannot go into a .tfm: refused before any work, exit code 2
    bad = ["register", "--fixed", str(tmp_path / "fixed.nii.gz"), "--moving", str(tmp_path / "moving.nrrd"),
           "--out-transform", str(tmp_path / "d.tfm"), "--mode", "deformable", "--quiet"]
    assert main(bad) == 2
    assert "What to do" in capsys.readouterr().err


def test_threads_option_is_restored(rigid_pair):
    before = torch.get_num_threads()
    res = register(rigid_pair.fixed, rigid_pair.moving, seed=0, threads=1, resample_output=False, **FAST)
    assert res.report["threads"] == 1
    assert torch.get_num_threads() == before


def test_background_thread_cancel_leaves_no_result(rigid_pair):
    token = CancelToken()
    result: dict[str, object] = {}

    def work() -> None:
        try:
            result["value"] = register(rigid_pair.fixed, rigid_pair.moving, seed=0, cancel=token,
                                       iterations=[400, 400, 400])
        except Cancelled:
            result["cancelled"] = True

    t = threading.Thread(target=work)
    t.start()
    token.cancel()
    t.join(timeout=10)
    assert result == {"cancelled": True}


def test_registration_over_the_memory_budget_is_refused_before_starting(monkeypatch):
    from medtorch.errors import OutOfMemoryBudget
    from medtorch.phantoms import blob_phantom, oblique_geometry
    from medtorch.registration import register

    g = oblique_geometry()
    calls = []
    monkeypatch.setenv("MEDTORCH_MEMORY_BUDGET", "1M")
    with pytest.raises(OutOfMemoryBudget, match="MEDTORCH_MEMORY_BUDGET"):
        register(blob_phantom(g), blob_phantom(g, seed=1), mode="deformable", progress=lambda f, m="": calls.append(f))
    assert calls == []  # nothing started
