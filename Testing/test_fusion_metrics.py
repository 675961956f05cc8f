"""Fusion metrics against values computed by hand, by closed forms, or by independent code
(scikit-image's SSIM, a loop-based QAB/F written here from the paper, numpy histograms).

Every image is on the 8-bit scale (``data_range=(0, 255)``) so the hand computations use the
values as written.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from medtorch.errors import MedTorchInputError
from medtorch.fusion.metrics import METRICS, fusion_metrics, slice_metrics

R255 = (0.0, 255.0)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """One torch thread for these small images: on a loaded 2-core machine every OpenMP
    region of a 2-thread run can stall for milliseconds; results do not depend on it."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _m(a, b, f, **kw):
    return fusion_metrics(np.asarray(a, float), np.asarray(b, float), np.asarray(f, float), data_range=R255, **kw)


# -- EN, SD, SF, AG, MI: hand-computed ----------------------------------------------------------------


def test_entropy_is_the_histogram_entropy_in_bits():
    f = np.zeros((8, 8))
    f[:, 4:] = 255  # two equally likely values: 1 bit
    assert _m(f, f, f, metrics=["EN"])["EN"] == pytest.approx(1.0, abs=1e-12)
    g = np.repeat(np.array([0, 10, 20, 30]), 16).reshape(8, 8)  # four equally likely values: 2 bits
    assert _m(g, g, g, metrics=["EN"])["EN"] == pytest.approx(2.0, abs=1e-12)
    h = np.zeros((4, 4))
    h[0, 0] = 7  # p = 1/16, 15/16
    expected = -(1 / 16 * math.log2(1 / 16) + 15 / 16 * math.log2(15 / 16))
    assert _m(h, h, h, metrics=["EN"])["EN"] == pytest.approx(expected, abs=1e-12)


def test_sd_sf_ag_by_hand():
    f = np.array([[0.0, 2.0, 4.0], [6.0, 8.0, 10.0]])
    m = _m(f, f, f, metrics=["SD", "SF", "AG"])
    assert m["SD"] == pytest.approx(np.sqrt(np.mean((f - 5.0) ** 2)), abs=1e-12)  # population SD
    # horizontal neighbours differ by 2, vertical by 6: SF = sqrt(2^2 + 6^2)
    assert m["SF"] == pytest.approx(math.sqrt(4.0 + 36.0), abs=1e-12)
    # gradients: 2 per column everywhere, 6 per row everywhere -> AG = sqrt((4 + 36) / 2)
    assert m["AG"] == pytest.approx(math.sqrt(20.0), abs=1e-12)


def test_sf_and_ag_in_3d_add_the_slice_axis():
    z, y, x = np.meshgrid(np.arange(3), np.arange(4), np.arange(5), indexing="ij")
    f = 1.0 * x + 2.0 * y + 3.0 * z
    m = _m(f, f, f, metrics=["SF", "AG"])
    assert m["SF"] == pytest.approx(math.sqrt(1 + 4 + 9), abs=1e-12)
    assert m["AG"] == pytest.approx(math.sqrt((1 + 4 + 9) / 3), abs=1e-12)


def test_mutual_information_by_hand_and_units():
    a = np.zeros((8, 8))
    a[:, 4:] = 200
    f_same = a.copy()
    f_indep = np.zeros((8, 8))
    f_indep[4:, :] = 100  # independent of a: every (a, f) combination equally likely
    assert _m(a, a, f_same, metrics=["MI"])["MI"] == pytest.approx(2.0, abs=1e-12)  # 1 bit + 1 bit
    assert _m(a, a, f_indep, metrics=["MI"])["MI"] == pytest.approx(0.0, abs=1e-12)
    nats = _m(a, a, f_same, metrics=["MI"], mi_unit="nats")["MI"]
    assert nats == pytest.approx(2.0 * math.log(2.0), abs=1e-12)
    # a random case against numpy's 2D histogram
    rng = np.random.default_rng(3)
    p = rng.integers(0, 6, (20, 20)).astype(float) * 40
    q = np.clip(p + rng.integers(0, 3, (20, 20)) * 40, 0, 255)
    joint = np.histogram2d(p.ravel(), q.ravel(), bins=[np.arange(257) - 0.5] * 2)[0] / p.size
    px, py = joint.sum(1), joint.sum(0)
    nz = joint > 0
    ref = float((joint[nz] * np.log2(joint[nz] / np.outer(px, py)[nz])).sum())
    assert _m(p, p, q, metrics=["MI"])["MI"] == pytest.approx(2 * ref, abs=1e-10)


# -- SSIM: scikit-image -------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(23, 31), (13, 16, 14)])
def test_ssim_matches_scikit_image(shape):
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, shape).astype(float)
    b = rng.integers(0, 256, shape).astype(float)
    f = np.round((a + b) / 2)
    kw = {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False, "data_range": 255}
    ref = structural_similarity(a, f, **kw) + structural_similarity(b, f, **kw)
    assert _m(a, b, f, metrics=["SSIM"])["SSIM_sum"] == pytest.approx(ref, abs=1e-6)
    assert _m(a, a, a, metrics=["SSIM"])["SSIM_sum"] == pytest.approx(2.0, abs=1e-9)


# -- QAB/F: the paper, by hand and by a loop implementation ------------------------------------------------


_TG, _KG, _DG, _TA, _KA, _DA = 0.9994, -15.0, 0.5, 0.9879, -22.0, 0.8


def _qabf_loops(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> float:
    """Xydeas & Petrovic (2000) written out pixel by pixel, 3x3 Sobel with zero padding."""
    def sobel(img):
        p = np.pad(img, 1)
        h, w = img.shape
        sx = np.zeros_like(img)
        sy = np.zeros_like(img)
        for i in range(h):
            for j in range(w):
                win = p[i:i + 3, j:j + 3]
                sx[i, j] = (win[:, 2] - win[:, 0]) @ np.array([1.0, 2.0, 1.0])
                sy[i, j] = (win[2, :] - win[0, :]) @ np.array([1.0, 2.0, 1.0])
        g = np.sqrt(sx**2 + sy**2)
        alpha = np.where(sx == 0, math.pi / 2, np.arctan(sy / np.where(sx == 0, 1, sx)))
        return g, alpha

    ga, aa = sobel(a)
    gb, ab = sobel(b)
    gf, af = sobel(f)
    num = den = 0.0
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            for gs, als, in ((ga, aa), (gb, ab)):
                s, t = gs[i, j], gf[i, j]
                g_rel = 0.0 if max(s, t) == 0 else min(s, t) / max(s, t)
                a_rel = 1 - abs(als[i, j] - af[i, j]) / (math.pi / 2)
                q = _TG / (1 + math.exp(_KG * (g_rel - _DG))) * _TA / (1 + math.exp(_KA * (a_rel - _DA)))
                num += q * s
                den += s
    return num / den


def test_qabf_identical_images_by_hand():
    rng = np.random.default_rng(2)
    a = rng.integers(0, 256, (12, 12)).astype(float)
    expected = _TG / (1 + math.exp(_KG * (1 - _DG))) * _TA / (1 + math.exp(_KA * (1 - _DA)))
    assert _m(a, a, a, metrics=["QABF"])["QABF"] == pytest.approx(expected, abs=1e-9)
    vol = rng.integers(0, 256, (6, 7, 8)).astype(float)
    assert _m(vol, vol, vol, metrics=["QABF"])["QABF"] == pytest.approx(expected, abs=1e-9)
    # a flat fused image keeps no edge at all
    assert _m(a, a, np.zeros_like(a), metrics=["QABF"])["QABF"] < 0.01


def test_qabf_matches_loop_implementation():
    rng = np.random.default_rng(4)
    a = rng.integers(0, 256, (9, 10)).astype(float)
    b = rng.integers(0, 256, (9, 10)).astype(float)
    f = np.round(0.7 * a + 0.3 * b)
    assert _m(a, b, f, metrics=["QABF"])["QABF"] == pytest.approx(_qabf_loops(a, b, f), abs=1e-9)


# -- VIF: closed form on a checkerboard -----------------------------------------------------------------


def _vif_checkerboard(ndim: int, gain: float, amp: float, shape: tuple[int, ...]) -> tuple[float, np.ndarray, np.ndarray]:
    """VIF(A, F) for A = 128 + amp * checker, F = 128 + gain * amp * checker.

    Only the first scale contributes (the downsampled checkerboard is constant); there every
    window sees local variance amp^2 (1 - s^(2 ndim)) with s = sum_i w_i (-1)^i of the
    normalised 17-tap Gaussian (sd 17/5), and F's is gain^2 times it, with no noise:
    VIF = log10(1 + gain^2 v / 2) / log10(1 + v / 2).
    """
    xs = np.arange(17) - 8.0
    w = np.exp(-xs**2 / (2 * (17 / 5) ** 2))
    w /= w.sum()
    s = float(np.sum(w * (-1.0) ** np.arange(17)))
    v = amp**2 * (1 - s ** (2 * ndim))
    checker = (np.indices(shape).sum(axis=0) % 2) * 2.0 - 1.0
    a = 128 + amp * checker
    f = 128 + gain * amp * checker
    return math.log10(1 + gain**2 * v / 2.0) / math.log10(1 + v / 2.0), a, f


@pytest.mark.parametrize("ndim,shape", [(2, (40, 44)), (3, (20, 22, 24))])
def test_vif_closed_form_and_identity(ndim, shape):
    expected, a, f = _vif_checkerboard(ndim, 2.0, 50.0, shape)
    got = _m(a, a, f, metrics=["VIF"])["VIF"]
    assert got == pytest.approx(2 * expected, rel=1e-9)  # summed over the two (identical) sources
    assert expected > 1.0  # a contrast gain counts as more information, as in Sheikh & Bovik
    assert _m(a, a, a, metrics=["VIF"])["VIF"] == pytest.approx(2.0, abs=1e-9)


# -- slices, quantisation, errors ---------------------------------------------------------------------------


def test_slice_mode_is_the_mean_of_2d_metrics_over_informative_slices():
    rng = np.random.default_rng(5)
    a = rng.random((5, 20, 21))
    b = rng.random((5, 20, 21))
    a[0] = 0.0
    b[0] = 0.0  # an empty slice: not scored
    f = 0.5 * (a + b)
    per = slice_metrics(a, b, f)
    assert per["informative"].tolist() == [False, True, True, True, True]
    summary = fusion_metrics(a, b, f, mode="slices")
    assert summary["slices_scored"] == 4
    for k in METRICS:
        two_d = [fusion_metrics(a[z], b[z], f[z])[k] for z in range(1, 5)]
        assert summary[k] == pytest.approx(float(np.mean(two_d)), rel=1e-6, abs=1e-9), k  # SSIM: float32 statistics
        np.testing.assert_allclose(per[k][1:], two_d, rtol=1e-6, atol=1e-9)


def test_unit_range_images_are_scored_as_8_bit():
    rng = np.random.default_rng(6)
    a = rng.random((24, 24)).astype(np.float32)
    b = rng.random((24, 24)).astype(np.float32)
    f = 0.5 * (a + b)
    unit = fusion_metrics(a, b, f)  # default range [0, 1]
    eight = _m(np.round(a * 255.0), np.round(b * 255.0), np.round(f * 255.0))
    for k in METRICS:
        assert unit[k] == pytest.approx(eight[k], rel=1e-6, abs=1e-9), k


def test_bad_inputs_are_refused():
    a = np.zeros((20, 20))
    with pytest.raises(MedTorchInputError, match="differ in shape"):
        fusion_metrics(a, a, np.zeros((20, 21)))
    with pytest.raises(MedTorchInputError, match="2D or 3D"):
        fusion_metrics(np.zeros(5), np.zeros(5), np.zeros(5))
    bad = a.copy()
    bad[0, 0] = np.nan
    with pytest.raises(MedTorchInputError, match="NaN"):
        fusion_metrics(a, a, bad)
    with pytest.raises(MedTorchInputError, match="unknown metric"):
        fusion_metrics(a, a, a, metrics=["PSNR"])
    with pytest.raises(MedTorchInputError, match="MI unit"):
        fusion_metrics(a, a, a, mi_unit="bans")
    with pytest.raises(MedTorchInputError, match="at least 11"):
        fusion_metrics(np.zeros((5, 30)), np.zeros((5, 30)), np.zeros((5, 30)), metrics=["SSIM"])
