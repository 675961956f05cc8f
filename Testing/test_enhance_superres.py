"""Super-resolution (EnhanceSR core): the output grid lands on the right physical positions,
interpolation baselines, self-supervised SR beats B-spline on a thick-slice phantom, saved
models reload, the ONNX path matches torch, slice profiles, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medtorch.enhance.metrics import psnr
from medtorch.enhance.slice_profile import degrade_along, estimate_slice_fwhm
from medtorch.enhance.srnet import SRTrainConfig
from medtorch.enhance.superres import output_geometry, superres
from medtorch.enhance.weights import ONNX_TOLERANCE, OnnxRunner, export_onnx, load_model, quantize_onnx, save_model
from medtorch.errors import MedTorchInputError
from medtorch.phantoms import blob_phantom, oblique_geometry, physical_grid
from medtorch.volume import Geometry, Volume

TINY = SRTrainConfig(iterations=12, batch=4, patch=24, features=8, layers=3, seed=1)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny volumes: one thread is faster, and immune to a busy machine's thread contention."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("f", [2, 3, 4, 5])
def test_output_slice_centres_sit_symmetrically_inside_each_thick_slice(f):
    geom = oblique_geometry(size=(10, 9, 7), spacing=(0.8, 0.9, 3.0))
    out = output_geometry(geom, (1, 1, f))
    assert out.size == (10, 9, 7 * f)
    np.testing.assert_allclose(out.spacing, (0.8, 0.9, 3.0 / f), atol=1e-12)
    np.testing.assert_allclose(out.direction, geom.direction, atol=1e-12)
    # the first output slice centre is at the input's index -(f-1)/(2f) along k
    first = out.index_to_physical(np.zeros((1, 3)))[0]
    np.testing.assert_allclose(geom.physical_to_index(first[None])[0], [0, 0, -(f - 1) / (2 * f)], atol=1e-9)
    # the f output slices of each thick slice average to its centre, in physical space
    pts = out.index_to_physical(np.stack([np.zeros(7 * f), np.zeros(7 * f), np.arange(7 * f)], 1))
    centres = pts.reshape(7, f, 3).mean(axis=1)
    expected = geom.index_to_physical(np.stack([np.zeros(7), np.zeros(7), np.arange(7.0)], 1))
    np.testing.assert_allclose(centres, expected, atol=1e-9)
    # the outer slice edges coincide: the physical extent is kept
    lo_in = geom.index_to_physical(np.array([[0, 0, -0.5]]))[0]
    lo_out = out.index_to_physical(np.array([[0, 0, -0.5]]))[0]
    np.testing.assert_allclose(lo_in, lo_out, atol=1e-9)


def _ramp(geom: Geometry) -> Volume:
    """A volume linear in physical space: interpolation must reproduce it exactly inside."""
    p = physical_grid(geom)
    return Volume((2.0 * p[..., 0] - 3.0 * p[..., 1] + 5.0 * p[..., 2]).astype(np.float32), geom)


@pytest.mark.parametrize("method,tolerance", [("linear", 1e-3), ("bspline", 0.3), ("sinc", 1.5)])
def test_interpolated_output_lands_on_the_right_physical_positions(method, tolerance):
    # the ramp rises 5 per mm along S: an output grid off by half a thin slice (0.5 mm) along k
    # would be off by ~2.5; linear interpolation reproduces a ramp exactly, B-spline and
    # windowed sinc nearly (away from the mirrored edges)
    geom = oblique_geometry(size=(20, 18, 15), spacing=(1.0, 1.0, 3.0))
    out, model = superres(_ramp(geom), method, factor=3)
    assert model is None and out.array.dtype == np.float32
    expected = _ramp(out.geometry).array
    inner = (slice(9, -9), slice(4, -4), slice(4, -4))
    np.testing.assert_allclose(out.array[inner], expected[inner], atol=tolerance)


def test_spacing_target_and_isotropic_upsampling_grids():
    geom = oblique_geometry(size=(12, 10, 6), spacing=(1.0, 1.0, 2.5))
    out, _ = superres(blob_phantom(geom), "linear", spacing=(1.0, 1.0, 0.5))
    assert out.size == (12, 10, 30) and np.allclose(out.spacing, (1, 1, 0.5))
    iso = oblique_geometry(size=(8, 8, 8), spacing=(1.0, 1.0, 1.0))
    up, _ = superres(blob_phantom(iso), "bspline", factor=2, axis="all")
    assert up.size == (16, 16, 16) and np.allclose(up.spacing, 0.5)
    assert up.geometry.isclose(output_geometry(iso, (2, 2, 2)))


def test_bad_input_gets_a_clear_error():
    iso = oblique_geometry(size=(10, 10, 10), spacing=(1.0, 1.0, 1.0))
    vol = blob_phantom(iso)
    with pytest.raises(MedTorchInputError, match="isotropic"):
        superres(vol, "bspline", factor=2)  # axis auto on an isotropic volume
    with pytest.raises(MedTorchInputError, match="below 1"):
        superres(vol, "bspline", factor=0.5, axis="k")
    with pytest.raises(MedTorchInputError, match="factor below 1"):
        superres(vol, "linear", spacing=(1.0, 1.0, 2.0))
    flat = Volume.from_array(np.ones((1, 12, 12), np.float32) * np.arange(12), spacing=(1, 1, 3))
    with pytest.raises(MedTorchInputError, match="2D"):
        superres(flat, "bspline", factor=2)
    with pytest.raises(MedTorchInputError, match="unknown super-resolution method"):
        superres(vol, "srgan", factor=2, axis="k")
    with pytest.raises(MedTorchInputError, match="at least 2"):
        superres(vol, "selfsup", factor=1.0, axis="k")


@pytest.fixture(scope="module")
def thick_phantom():
    """A thin-slice phantom (1 mm) and its thick-slice version (x3 along k, Gaussian profile)."""
    geom = oblique_geometry(size=(36, 32, 30), spacing=(1.0, 1.0, 1.0), angles_deg=(5.0, 0.0, 10.0))
    thin = blob_phantom(geom)
    thick_arr = degrade_along(torch.from_numpy(thin.array), 0, 3, 3.0).numpy()
    thick_geom = Geometry((36, 32, 10), geom.index_to_physical(np.array([[0, 0, 1.0]]))[0], (1, 1, 3), geom.direction)
    return thin, Volume(thick_arr, thick_geom)


@pytest.fixture(scope="module")
def trained(thick_phantom):
    _, thick = thick_phantom
    return superres(thick, "selfsup", factor=3, fwhm_mm=3.0, config=TINY)


def test_selfsup_output_grid_is_the_thin_grid_and_beats_bspline(thick_phantom, trained):
    thin, thick = thick_phantom
    out, model = trained
    assert out.geometry.isclose(thin.geometry, atol=1e-6)  # simulation and SR grids agree
    assert model.metadata["factor"] == 3 and model.metadata["seed"] == 1 and model.metadata["fwhm_mm"] == 3.0
    bspline, _ = superres(thick, "bspline", factor=3)
    head = thin.array > 20
    assert psnr(out, thin, head) > psnr(bspline, thin, head) + 0.3


def test_saved_model_reloads_and_onnx_matches_torch(tmp_path, thick_phantom, trained):
    _, thick = thick_phantom
    out, model = trained
    path = save_model(model, tmp_path / "sr.pt")
    again = load_model(path)
    assert again.metadata["factor"] == 3 and again.metadata["method"] == "selfsup"
    np.testing.assert_array_equal(again.apply(thick).array, out.array)
    onnx_path = export_onnx(again.net, tmp_path / "sr.onnx")
    x = torch.from_numpy(np.random.default_rng(0).random((2, 1, 20, 9)).astype(np.float32))
    with torch.no_grad():
        ref = again.net(x)
    got = OnnxRunner(onnx_path)(x)
    assert got.shape == ref.shape == (2, 1, 20, 27)
    assert float((got - ref).abs().max()) <= ONNX_TOLERANCE
    quant = OnnxRunner(quantize_onnx(onnx_path, tmp_path / "sr_int8.onnx"))(x)
    assert quant.shape == ref.shape and float((quant - ref).abs().max()) < 0.1
    via_onnx = again.apply(thick, runner=OnnxRunner(onnx_path))
    assert float(np.abs(via_onnx.array - out.array).max()) <= ONNX_TOLERANCE * float(np.ptp(thick.array)) * 2


def test_model_file_errors(tmp_path):
    with pytest.raises(MedTorchInputError, match="does not exist"):
        load_model(tmp_path / "missing.pt")
    bogus = tmp_path / "bogus.pt"
    torch.save({"weights": torch.zeros(2)}, bogus)
    with pytest.raises(MedTorchInputError, match="not a MedTorch"):
        load_model(bogus)


def test_degrade_centres_thick_slices_and_profile_is_estimated():
    ramp = torch.arange(40, dtype=torch.float32)[:, None, None].expand(40, 3, 3).contiguous()
    thick = degrade_along(ramp, 0, 4, 4.0)
    # away from the mirrored ends a symmetric profile keeps a ramp: sample k sits at 4k + 1.5
    np.testing.assert_allclose(thick[2:-2, 1, 1].numpy(), 4 * np.arange(2, 8) + 1.5, atol=1e-4)
    # an isotropic random texture, thick slices with a known profile: the FWHM is recovered
    rng = np.random.default_rng(0)
    from scipy import ndimage

    tex = ndimage.gaussian_filter(rng.normal(size=(96, 64, 64)), 1.5).astype(np.float32)
    for fwhm in (3.0, 4.5):
        lr = degrade_along(torch.from_numpy(tex), 0, 3, fwhm).numpy()
        assert estimate_slice_fwhm(lr, 0, 3) == pytest.approx(fwhm, rel=0.15)


def test_adversarial_option_trains_a_discriminator_alongside(thick_phantom):
    _, thick = thick_phantom
    cfg = SRTrainConfig(iterations=3, batch=2, patch=24, features=8, layers=3, adversarial_weight=1e-3, seed=2)
    out, model = superres(thick, "selfsup", factor=3, fwhm_mm=3.0, config=cfg)
    assert model.metadata["train"]["adversarial_weight"] == 1e-3
    assert model.metadata["log"]["iterations_done"] == 3 and np.isfinite(out.array).all()


def test_selfsup_isotropic_upsampling_runs_on_the_right_grid():
    iso = oblique_geometry(size=(20, 20, 20), spacing=(1.0, 1.0, 1.0))
    cfg = SRTrainConfig(iterations=2, batch=2, patch=16, features=8, layers=3)
    out, model = superres(blob_phantom(iso), "selfsup", factor=2, axis="all", config=cfg)
    assert out.geometry.isclose(output_geometry(iso, (2, 2, 2)), atol=1e-6)
    assert model.metadata["kind"] == "isotropic" and model.metadata["axis"] == "all"
    assert np.isfinite(out.array).all()


def test_default_training_length_follows_the_factor():
    """400 f iterations (cost per iteration ~ 1 / f), also when the factor comes from a target spacing."""
    from medtorch.enhance.superres import factor_guess as _factor_guess
    from medtorch.enhance.srnet import default_iterations

    assert [default_iterations(f) for f in (1, 2, 4, 5)] == [800, 800, 1600, 2000]
    geom = Geometry((16, 16, 8), np.zeros(3), np.array([1.0, 1.0, 5.0]), np.eye(3))
    vol = Volume(np.zeros((8, 16, 16), np.float32), geom)
    assert _factor_guess(vol, None, (1.0, 1.0, 1.0)) == 5
    assert _factor_guess(vol, 2.5, None) == 3
    assert _factor_guess(vol, None, None) == 4


def test_linear_fit_builds_only_the_sampled_neighbourhoods():
    """fit_linear_branch draws its samples first and builds their 7 x 7 neighbourhoods only: the same rows as
    the whole design matrix indexed afterwards (which took ~0.7 GB on a 240^2 x 155 head)."""
    from medtorch.enhance.srnet import _linear_design

    low = torch.rand(3, 11, 9, generator=torch.Generator().manual_seed(0))
    idx = torch.randperm(low.numel(), generator=torch.Generator().manual_seed(1))[:50]
    idx = torch.cat([idx, torch.tensor([0, low.numel() - 1])])  # corners: replicate padding
    assert torch.equal(_linear_design(low, 7, 5, idx), _linear_design(low, 7, 5)[idx])


def test_channels_last_inference_gives_the_same_planes_and_leaves_the_model_as_it_was():
    from medtorch.enhance.srnet import AxisSRNet, apply_along_planes

    torch.manual_seed(0)
    net = AxisSRNet(3, features=8, layers=3).eval()
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.2)
    planes = torch.rand(5, 12, 7)
    with torch.no_grad():
        plain = net(planes[:, None])[:, 0]
    out = apply_along_planes(net, planes, batch=2)
    assert out.shape == (5, 12, 21)
    assert torch.allclose(out, plain, atol=1e-5)
    assert all(p.is_contiguous() for p in net.parameters())  # the caller's model is left in its layout


def test_patch_sampling_redraws_flat_background_patches():
    """patch_min_std: a patch of air (flat) is drawn again, so training sees the head; without it, air
    patches come in proportion to the air."""
    from medtorch.enhance.srnet import TrainingPairs

    gen = torch.Generator().manual_seed(0)
    high = torch.zeros(4, 64, 64)
    high[:, :, 32:] = torch.rand(4, 64, 32, generator=gen)  # half of each plane has signal
    low = high.reshape(4, 64, 16, 4).mean(-1)
    pairs = TrainingPairs([high], [low], 4)

    def flat(min_std: float) -> int:
        lo, hi = pairs.sample(64, 8, 2, torch.Generator().manual_seed(1), min_std=min_std)
        return int((hi.flatten(1).std(1) < 0.05).sum())

    # 7 of the 15 patch positions across the plane are air: about 30 of 64 patches; after 8 tries 0.2 %
    assert flat(0.0) > 15
    assert flat(0.05) <= 2
