"""Slice profiles: the box kernel, and the blind estimate of a thick volume's profile (Gaussian and box,
with and without gaps between the slices) within 10 % of the true FWHM."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from medtorch.enhance.slice_profile import (PROFILE_SHAPES, degrade_along, estimate_slice_fwhm,
                                            estimate_slice_profile, profile_kernel)
from medtorch.enhance.superres import train_selfsup_sr
from medtorch.errors import MedTorchInputError


@pytest.fixture(scope="module")
def texture() -> np.ndarray:
    """An isotropic random texture with edges at several scales (like anatomy: a power-law spectrum)."""
    rng = np.random.default_rng(0)
    shape = (96, 72, 72)
    out = np.zeros(shape)
    for s, amp in ((1.0, 0.5), (2.5, 1.0), (6.0, 1.5)):
        out += amp * (ndimage.gaussian_filter(rng.normal(size=shape), s) > 0)
    return out.astype(np.float32)


def test_box_kernel_weights_sum_to_one_are_centred_and_differ_with_width():
    for f, width in ((4, 4.0), (4, 3.0), (2, 2.0), (3, 5.5)):
        w, reach = profile_kernel(f, width, "box")
        assert float(w.sum()) == pytest.approx(1.0, abs=1e-6)
        centre = float((w.double() * torch.arange(len(w), dtype=torch.float64)).sum()) - reach
        assert centre == pytest.approx((f - 1) / 2.0, abs=1e-6)
        np.testing.assert_allclose(w.numpy(), w.numpy()[::-1], atol=1e-7)  # symmetric
    # a box narrower than the spacing (a gap) is not the same as a contiguous one
    assert not torch.allclose(profile_kernel(4, 3.0, "box")[0], torch.full((4,), 0.25))
    assert not torch.equal(profile_kernel(2, 1.0, "box")[0], profile_kernel(2, 2.0, "box")[0])
    # the box keeps a ramp's samples at the thick slice centres, as the Gaussian does
    ramp = torch.arange(40, dtype=torch.float32)[:, None, None].expand(40, 2, 2).contiguous()
    np.testing.assert_allclose(degrade_along(ramp, 0, 4, 4.0, "box")[2:-2, 0, 0].numpy(),
                               4 * np.arange(2, 8) + 1.5, atol=1e-4)
    with pytest.raises(MedTorchInputError, match="unknown slice profile shape"):
        profile_kernel(4, 4.0, "triangle")


@pytest.mark.parametrize("shape,factor,fwhm", [
    ("gaussian", 4, 4.0), ("gaussian", 2, 2.0), ("gaussian", 4, 3.0),  # contiguous, and with gaps
    ("box", 4, 4.0), ("box", 2, 2.0), ("box", 4, 3.0),
])
def test_profile_estimate_within_10_percent_with_the_shape_known(texture, shape, factor, fwhm):
    thick = degrade_along(torch.from_numpy(texture), 0, factor, fwhm, shape).numpy()
    est, got_shape = estimate_slice_profile(thick, 0, factor, shapes=(shape,))
    assert got_shape == shape
    assert est == pytest.approx(fwhm, rel=0.10)


def test_profile_estimate_accounts_for_white_noise_and_any_axis(texture):
    thick = degrade_along(torch.from_numpy(texture), 0, 4, 4.0).numpy()
    sigma = 0.05 * float(thick.std())
    noisy = thick + np.random.default_rng(1).normal(0.0, sigma, thick.shape).astype(np.float32)
    assert estimate_slice_fwhm(noisy, 0, 4, noise_sigma=sigma) == pytest.approx(4.0, rel=0.10)
    # the same thick volume with the thick axis last (x): the same estimate
    moved = np.ascontiguousarray(np.moveaxis(noisy, 0, 2))
    assert estimate_slice_fwhm(moved, 2, 4, noise_sigma=sigma) == pytest.approx(
        estimate_slice_fwhm(noisy, 0, 4, noise_sigma=sigma), rel=0.02)
    # a wrong (too wide) profile is not what the data say: a contiguous box is told from a 1.5x wider one
    box = degrade_along(torch.from_numpy(texture), 0, 4, 6.0, "box").numpy()
    assert estimate_slice_profile(box, 0, 4, shapes=("box",))[0] == pytest.approx(6.0, rel=0.10)


def test_profile_estimate_refuses_bad_input(texture):
    with pytest.raises(MedTorchInputError, match="factor"):
        estimate_slice_profile(texture, 0, 1)
    with pytest.raises(MedTorchInputError, match="too small"):
        estimate_slice_profile(texture[:6], 0, 4)
    assert set(PROFILE_SHAPES) == {"gaussian", "box"}


def test_blind_training_records_the_estimated_profile_and_its_shape(texture):
    from medtorch.enhance.srnet import SRTrainConfig
    from medtorch.volume import Geometry, Volume

    thick = degrade_along(torch.from_numpy(texture), 0, 4, 4.0, "box").numpy()
    vol = Volume(thick, Geometry((72, 72, thick.shape[0]), (0.0, 0.0, 0.0), (1.0, 1.0, 4.0), np.eye(3)))
    cfg = SRTrainConfig(iterations=2, batch=2, patch=24, features=8, layers=3, seed=0)
    model = train_selfsup_sr(vol, 2, 4, None, cfg, profile_shape="box")
    assert model.metadata["fwhm_source"] == "estimated" and model.metadata["profile_shape"] == "box"
    assert model.metadata["fwhm_mm"] == pytest.approx(4.0, rel=0.15)
    with pytest.raises(MedTorchInputError, match="unknown slice profile shape"):
        train_selfsup_sr(vol, 2, 4, 4.0, cfg, profile_shape="sinc")
