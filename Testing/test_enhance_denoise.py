"""Denoising (EnhanceSR core): every method runs, keeps geometry, never worsens PSNR on a noisy
phantom; noise estimates, Rician and Poisson handling, output types, bad input, cancel."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medtorch.enhance import DENOISE_METHODS, denoise
from medtorch.enhance.metrics import psnr
from medtorch.enhance.noise import (
    anscombe_forward,
    anscombe_inverse,
    estimate_noise,
    rician_mean,
    rician_unbias_mean,
    rician_unbias_second_moment,
)
from medtorch.enhance.output import cast_output
from medtorch.enhance.patchwise import dct_matrix, nonlocal_means, sliding_dct_denoise
from medtorch.enhance.selfsup_denoise import SelfSupDenoiseConfig
from medtorch.errors import Cancelled, MedTorchInputError
from medtorch.phantoms import blob_phantom, oblique_geometry
from medtorch.progress import CancelToken
from medtorch.volume import Volume


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny volumes: one thread is faster, and immune to a busy machine's thread contention."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _rician(clean: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.sqrt((clean + rng.normal(0, sigma, clean.shape)) ** 2 + rng.normal(0, sigma, clean.shape) ** 2)


@pytest.fixture(scope="module")
def phantom():
    geom = oblique_geometry(size=(32, 30, 24), spacing=(1.0, 1.1, 1.4))
    clean = blob_phantom(geom)
    noisy = Volume(_rician(clean.array, 12.0, seed=4).astype(np.float32), geom)
    return clean, noisy


FAST = {"anisotropic": {"iterations": 5}, "patch": {"iterations": 1}, "nlm": {"search_radius": 2},
        "selfsup": {"config": SelfSupDenoiseConfig(iterations=3, patch=16, batch=2, features=(8, 8, 16, 16, 16, 8))}}


@pytest.mark.parametrize("method", DENOISE_METHODS)
def test_every_method_keeps_geometry_and_improves_psnr(method, phantom):
    clean, noisy = phantom
    before = noisy.array.copy()
    out = denoise(noisy, method, seed=3, **FAST.get(method, {}))
    assert out.geometry == noisy.geometry
    assert out.array.dtype == np.float32 and out.array.shape == noisy.array.shape
    np.testing.assert_array_equal(noisy.array, before)  # the input is not modified
    head = clean.array > 20
    assert psnr(out, clean, head) > psnr(noisy, clean, head) + 0.5, method
    assert out.metadata["method"] == method and out.metadata["seed"] == 3


def test_noise_aware_methods_record_the_noise_estimate(phantom):
    _, noisy = phantom
    out = denoise(noisy, "dct")
    assert out.metadata["noise_model"] == "rician"
    assert out.metadata["noise_sigma"] == pytest.approx(12.0, rel=0.1)


def test_rician_noise_level_from_background_and_gaussian_from_wavelets():
    geom = oblique_geometry(size=(40, 40, 32), spacing=(1.0, 1.0, 1.0))
    clean = blob_phantom(geom).array
    est = estimate_noise(_rician(clean, 5.0, seed=1))
    assert est.model == "rician" and est.sigma == pytest.approx(5.0, rel=0.05)
    ct = clean * 10 - 1000.0 + np.random.default_rng(2).normal(0, 20.0, clean.shape)
    est = estimate_noise(ct)
    assert est.model == "gaussian" and est.sigma == pytest.approx(20.0, rel=0.1)


def test_a_non_negative_crop_without_background_is_rician():
    """Magnitude data cropped inside the object (no air): still Rician, sigma from the tissue."""
    geom = oblique_geometry(size=(40, 40, 32), spacing=(1.0, 1.0, 1.0))
    clean = blob_phantom(geom).array[4:-4, 4:-4, 4:-4]
    tissue = 30.0 + clean  # no signal-free background anywhere
    est = estimate_noise(_rician(tissue, 5.0, seed=3))
    assert est.model == "rician" and est.sigma == pytest.approx(5.0, rel=0.15)
    shifted = tissue - 60.0 + np.random.default_rng(3).normal(0, 5.0, tissue.shape)  # negative values: not magnitude
    assert estimate_noise(shifted).model == "gaussian"


def test_rician_bias_corrections_invert_the_bias():
    a = np.array([0.0, 0.5, 1.0, 2.0, 5.0, 30.0])
    np.testing.assert_allclose(rician_unbias_mean(rician_mean(a, 2.0), 2.0), a, atol=2e-3)
    rng = np.random.default_rng(0)
    m = np.sqrt((3.0 + rng.normal(0, 1.0, 400_000)) ** 2 + rng.normal(0, 1.0, 400_000) ** 2)
    assert float(m.mean()) > 3.1  # the magnitude is biased upwards
    assert float(rician_unbias_second_moment(np.mean(m**2), 1.0)) == pytest.approx(3.0, abs=0.01)
    assert float(rician_unbias_mean(np.array([m.mean()]), 1.0)[0]) == pytest.approx(3.0, abs=0.02)


def test_anscombe_makes_poisson_noise_unit_variance_and_inverts_without_bias():
    rng = np.random.default_rng(0)
    for lam in (5.0, 20.0, 100.0):
        counts = rng.poisson(lam, 200_000).astype(np.float64) + rng.normal(0, 1.0, 200_000)
        z = anscombe_forward(counts, 1.0, 1.0)
        assert float(z.std()) == pytest.approx(1.0, abs=0.05)
        assert float(anscombe_inverse(np.array([z.mean()]), 1.0, 1.0)[0]) == pytest.approx(lam, rel=0.02)


def test_poisson_model_denoises_counts():
    geom = oblique_geometry(size=(28, 28, 20), spacing=(1.0, 1.0, 1.0))
    clean = blob_phantom(geom).array / 4.0 + 2.0
    noisy = Volume(np.random.default_rng(0).poisson(clean).astype(np.float32), geom)
    est = estimate_noise(noisy.array, "poisson")
    assert est.gain == pytest.approx(1.0, rel=0.35)
    out = denoise(noisy, "dct", noise_model="poisson")
    assert psnr(out, clean) > psnr(noisy, clean) + 3.0


def test_dct_matrix_is_orthonormal_and_dct_reduces_pure_noise():
    d = dct_matrix(8)
    torch.testing.assert_close(d @ d.T, torch.eye(8), atol=1e-6, rtol=0)
    noise = torch.from_numpy(np.random.default_rng(0).normal(0, 1.0, (24, 24, 24)).astype(np.float32))
    out = sliding_dct_denoise(noise, 1.0, 8, 2)
    assert float(out.std()) < 0.2
    const = torch.full((12, 10, 9), 7.0)
    torch.testing.assert_close(sliding_dct_denoise(const, 1.0, 8, 3), const, atol=1e-4, rtol=0)


def test_nlm_with_huge_h_is_the_window_mean():
    x = torch.from_numpy(np.random.default_rng(0).normal(0, 1.0, (9, 9, 9)).astype(np.float32))
    out = nonlocal_means(x, 1e6, search_radius=1, patch_radius=0)
    box = torch.nn.functional.avg_pool3d(x[None, None], 3, 1, 0)[0, 0]
    torch.testing.assert_close(out[1:-1, 1:-1, 1:-1], box, atol=1e-5, rtol=0)


def test_integer_input_gives_float_output_and_never_wraps(phantom):
    clean, _ = phantom
    as_uint8 = Volume(np.clip(clean.array, 0, 255).astype(np.uint8), clean.geometry)
    out = denoise(as_uint8, "gaussian", 1.0)
    assert out.array.dtype == np.float32
    hot = Volume(np.where(clean.array > 150, 255, 0).astype(np.uint8), clean.geometry)
    sharp = hot.with_array(hot.array.astype(np.float32) * 1.4 - 20)  # a result leaving 0..255
    with pytest.raises(MedTorchInputError, match="overflow"):
        cast_output(sharp, "uint8")
    widened = cast_output(sharp, "input", np.uint8)
    assert widened.array.dtype == np.int16
    assert widened.array.min() == -20 and widened.array.max() == 337
    kept = cast_output(hot.with_array(hot.array.astype(np.float32)), "input", np.uint8)
    assert kept.array.dtype == np.uint8


def test_bad_input_gets_a_clear_error(phantom):
    _, noisy = phantom
    flat = Volume.from_array(np.random.default_rng(0).normal(size=(1, 20, 20)).astype(np.float32))
    with pytest.raises(MedTorchInputError, match="2D"):
        denoise(flat, "nlm")
    with pytest.raises(MedTorchInputError, match="unknown denoising method"):
        denoise(noisy, "wiener")
    with pytest.raises(MedTorchInputError, match="not positive"):
        denoise(noisy, "collab", strength=-1)
    with pytest.raises(MedTorchInputError, match="do not apply"):
        denoise(noisy, "gaussian", iterations=3)
    with pytest.raises(MedTorchInputError, match="What to do"):
        denoise(noisy, "median", 0.1)


def test_cancel_stops_a_long_method(phantom):
    _, noisy = phantom
    token = CancelToken()
    calls = []

    def progress(fraction, message=""):
        calls.append(fraction)
        if len(calls) == 3:
            token.cancel()

    with pytest.raises(Cancelled):
        denoise(noisy, "collab", progress=progress, cancel=token)
    assert len(calls) <= 4


@pytest.mark.parametrize("sigma", [4.0, 25.0])
def test_sure_chooses_a_guided_nlm_h_close_to_the_best(sigma):
    """SURE, from the noisy data alone, picks an h whose true error is within 3 % of the best
    candidate's, at low and at high noise (where the best h differs)."""
    from medtorch.enhance.selfsup_denoise import SURE_H_CANDIDATES, _collab_estimate, sure_select_h

    clean = blob_phantom(oblique_geometry(size=(32, 32, 32), spacing=(1.0, 1.0, 1.0))).array.astype(np.float32)
    y = torch.from_numpy((clean + np.random.default_rng(5).normal(0, sigma, clean.shape)).astype(np.float32))
    h, record = sure_select_h(y, sigma, rician=False)
    assert record["h_chosen_by"] == "SURE" and min(SURE_H_CANDIDATES) <= h <= max(SURE_H_CANDIDATES)

    def mse(hh: float) -> float:
        return float(((_collab_estimate(y, sigma, False, None, None, hh)[1].numpy() - clean) ** 2).mean())

    true = {c: mse(c) for c in SURE_H_CANDIDATES}
    assert mse(h) <= 1.03 * min(true.values()), (h, record["sure_h"], true)
    # SURE ranks the candidates as their true errors do at the ends of the range
    sure = [record["sure_h"][f"{c:g}"] for c in SURE_H_CANDIDATES]
    worst = max(true, key=true.get)
    assert SURE_H_CANDIDATES[int(np.argmax(sure))] == worst


def test_collab_records_its_h_and_takes_a_given_one(phantom):
    _, noisy = phantom
    chosen = denoise(noisy, "collab")
    assert chosen.metadata["collab"]["h_chosen_by"] == "SURE" and chosen.metadata["collab"]["h"] > 0
    given = denoise(noisy, "collab", h=0.6)
    assert given.metadata["collab"] == {"h": 0.6, "h_chosen_by": "given"}
    with pytest.raises(MedTorchInputError, match="not positive"):
        denoise(noisy, "collab", h=0.0)
