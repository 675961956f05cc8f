"""Fusion methods and their building blocks: exactness against PyWavelets and SciPy, the
rules' defining properties, the CNN's determinism and checkpoints, colour fusion, the
volume pipeline's geometry and intensity handling, progress and cancel. Small inputs only."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from medtorch.errors import Cancelled, MedTorchInputError
from medtorch.fusion import fuse_arrays, fuse_volumes
from medtorch.fusion.filters import (
    box_mean,
    correlate_axis,
    gaussian_kernel1d,
    laplacian,
    pad_axis,
    pool_mean,
    upsample_linear,
)
from medtorch.phantoms import blob_phantom, oblique_geometry
from medtorch.progress import CancelToken
from medtorch.volume import Geometry, Volume


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """One torch thread for these small tensors: on a loaded 2-core machine every OpenMP
    region of a 2-thread run can stall for milliseconds; results do not depend on it."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _smooth_pair(shape=(12, 20, 18), seed=0):
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    a = ndimage.gaussian_filter(rng.random(shape), 1.5)
    b = ndimage.gaussian_filter(rng.random(shape), 1.0)
    norm = lambda x: ((x - x.min()) / (x.max() - x.min())).astype(np.float32)
    return norm(a), norm(b)


# -- filters ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode,np_mode", [("symmetric", "symmetric"), ("reflect", "reflect"), ("periodic", "wrap"),
                                          ("zero", "constant"), ("edge", "edge")])
def test_pad_axis_matches_numpy(mode, np_mode):
    x = torch.rand(5, 6, 7, dtype=torch.float64)
    for axis in range(3):
        for before, after in ((2, 3), (0, 4), (6, 9)):
            widths = [(0, 0)] * 3
            widths[axis] = (before, after)
            np.testing.assert_array_equal(pad_axis(x, axis, before, after, mode).numpy(),
                                          np.pad(x.numpy(), widths, mode=np_mode))


def test_correlate_and_box_and_laplacian_match_scipy():
    from scipy import ndimage

    x = torch.rand(6, 9, 13, dtype=torch.float64)
    taps = gaussian_kernel1d(2.0, 4)  # 9 taps: the matrix path
    for axis in range(3):
        np.testing.assert_allclose(correlate_axis(x, taps, axis, "reflect").numpy(),
                                   ndimage.correlate1d(x.numpy(), taps, axis=axis, mode="mirror"), atol=1e-12)
        np.testing.assert_allclose(correlate_axis(x, [1.0, 2.0, 1.0], axis, "zero").numpy(),
                                   ndimage.correlate1d(x.numpy(), [1.0, 2.0, 1.0], axis=axis, mode="constant"),
                                   atol=1e-12)
    xn = x.numpy()
    brute = np.zeros_like(xn)
    for i in range(6):
        for j in range(9):
            for k in range(13):
                brute[i, j, k] = xn[max(0, i - 1):i + 2, max(0, j - 3):j + 4, max(0, k - 2):k + 3].mean()
    np.testing.assert_allclose(box_mean(x, [1, 3, 2]).numpy(), brute, atol=1e-12)
    np.testing.assert_allclose(laplacian(x, 3).numpy(), ndimage.laplace(xn, mode="nearest"), atol=1e-12)


def test_pool_and_linear_upsampling_geometry():
    x = torch.arange(10, dtype=torch.float64).reshape(1, 10)
    pooled, sizes = pool_mean(x, 2, 1)
    np.testing.assert_allclose(pooled.numpy(), [[0.5, 2.5, 4.5, 6.5, 8.5]])
    up = upsample_linear(pooled, 2, sizes, 1)
    # a linear ramp comes back exactly where interpolation is inside the coarse samples
    np.testing.assert_allclose(up.numpy()[0, 1:-1], np.arange(1, 9, dtype=float), atol=1e-12)


# -- DWT: PyWavelets ------------------------------------------------------------------------------------


@pytest.mark.parametrize("wavelet,level", [("haar", 2), ("db2", 1), ("sym4", 1), ("coif1", 1)])
@pytest.mark.parametrize("mode", ["symmetric", "reflect", "periodic", "zero"])
def test_wavedecn_waverecn_match_pywavelets(wavelet, level, mode):
    pywt = pytest.importorskip("pywt")
    from medtorch.fusion.wavelet import wavedecn, waverecn

    x = np.random.default_rng(0).random((9, 12, 11))
    ref = pywt.wavedecn(x, wavelet, mode=mode, level=level)
    got = wavedecn(torch.from_numpy(x), wavelet, level, mode)
    np.testing.assert_allclose(got[0].numpy(), ref[0], atol=1e-12)
    for d_ref, d_got in zip(ref[1:], got[1:]):
        assert set(d_ref) == set(d_got)
        for k in d_ref:
            np.testing.assert_allclose(d_got[k].numpy(), d_ref[k], atol=1e-12)
    rec = waverecn(got, wavelet, mode)
    np.testing.assert_allclose(rec.numpy(), pywt.waverecn(ref, wavelet, mode=mode), atol=1e-12)
    np.testing.assert_allclose(rec.numpy()[:9, :12, :11], x, atol=1e-12)  # perfect reconstruction


def test_builtin_filter_table_equals_pywavelets(monkeypatch):
    pywt = pytest.importorskip("pywt")
    import builtins

    from medtorch.fusion import wavelet as wv

    real_import = builtins.__import__

    def no_pywt(name, *args, **kwargs):
        if name == "pywt":
            raise ImportError("hidden for this test")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pywt)
    for name in wv.BUILTIN_WAVELETS:
        for ours, theirs in zip(wv.wavelet_filters(name), pywt.Wavelet(name).filter_bank):
            np.testing.assert_allclose(ours, theirs, atol=1e-15)
    with pytest.raises(MedTorchInputError, match="needs PyWavelets"):
        wv.wavelet_filters("db8")


def test_dwt_fusion_is_the_seeds_rule_on_pywavelets_coefficients():
    pywt = pytest.importorskip("pywt")
    a, b = _smooth_pair((16, 20, 18))
    ca = pywt.wavedecn(a.astype(np.float64), "db2", level=2)
    cb = pywt.wavedecn(b.astype(np.float64), "db2", level=2)
    fused = [(ca[0] + cb[0]) / 2] + [{k: np.where(np.abs(da[k]) >= np.abs(db[k]), da[k], db[k]) for k in da}
                                     for da, db in zip(ca[1:], cb[1:])]
    ref = np.clip(pywt.waverecn(fused, "db2")[:16, :20, :18], 0, 1)
    out, info = fuse_arrays(a, b, "dwt", {"wavelet": "db2", "levels": 2}, device="cpu")
    np.testing.assert_allclose(out, ref, atol=2e-6)  # float32 arithmetic
    assert info["levels_used"] == 2
    deep, info = fuse_arrays(a, b, "dwt", {"levels": 9}, device="cpu")  # capped at what the size allows
    assert info["levels_used"] == 4  # haar on 16 samples: pywt.dwt_max_level(16, 2)


# -- rules --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["average", "max", "pca", "dwt", "laplacian", "gff", "gradient"])
def test_fusing_an_image_with_itself_gives_it_back(method):
    a, _ = _smooth_pair((8, 24, 20))
    out, _ = fuse_arrays(a, a, method, device="cpu")
    np.testing.assert_allclose(out, a, atol=2e-5)


def test_average_max_and_pca_weights():
    a, b = _smooth_pair((6, 10, 12))
    avg, _ = fuse_arrays(a, b, "average", {"weight": 0.25}, device="cpu")
    np.testing.assert_allclose(avg, 0.75 * a + 0.25 * b, atol=1e-6)
    mx, _ = fuse_arrays(a, b, "max", device="cpu")
    np.testing.assert_array_equal(mx, np.maximum(a, b))
    b_loud = np.clip(0.5 + 3.0 * (b - 0.5), 0, 1).astype(np.float32)  # more variance: more weight
    pca, info = fuse_arrays(a, b_loud, "pca", device="cpu")
    cov = np.cov(np.stack([a.ravel(), b_loud.ravel()]).astype(np.float64))
    vals, vecs = np.linalg.eigh(cov)
    v = np.abs(vecs[:, np.argmax(vals)])
    assert info["weight_a"] == pytest.approx(v[0] / v.sum(), abs=1e-9)
    assert info["weight_b"] > info["weight_a"]
    np.testing.assert_allclose(pca, np.clip(info["weight_a"] * a + info["weight_b"] * b_loud, 0, 1), atol=1e-6)


def test_laplacian_pyramid_reconstructs_and_selects_the_stronger_detail():
    from medtorch.fusion.pyramid import laplacian_pyramid, reconstruct

    x = torch.rand(2, 11, 17, 9, dtype=torch.float64)
    np.testing.assert_allclose(reconstruct(laplacian_pyramid(x, 2)).numpy(), x.numpy(), atol=1e-12)
    flat = np.full((1, 32, 32), 0.5, np.float32)
    edge = flat.copy()
    edge[:, :, 16:] = 0.9
    out, _ = fuse_arrays(flat, edge, "laplacian", device="cpu")
    avg, _ = fuse_arrays(flat, edge, "average", device="cpu")
    step = out[0, 16, 16] - out[0, 16, 15]
    assert step > 0.3 and avg[0, 16, 16] - avg[0, 16, 15] == pytest.approx(0.2)  # the edge keeps most of its 0.4


def _gff_reference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Li et al.'s GFF with scipy.ndimage (2D, the paper's parameters)."""
    from scipy import ndimage

    def box(x, r):
        return ndimage.uniform_filter(x, 2 * r + 1, mode="constant") / ndimage.uniform_filter(
            np.ones_like(x), 2 * r + 1, mode="constant")

    def gf(i, p, r, eps):
        mi, mp = box(i, r), box(p, r)
        aa = (box(i * p, r) - mi * mp) / (np.maximum(box(i * i, r) - mi * mi, 0) + eps)
        return box(aa, r) * i + box(mp - aa * mi, r)

    x = [a.astype(np.float64), b.astype(np.float64)]
    base = [box(v, 15) for v in x]
    sal = [ndimage.gaussian_filter(np.abs(ndimage.laplace(v, mode="nearest")), 5.0, truncate=1.0, mode="mirror")
           for v in x]
    p0 = (sal[0] >= sal[1]).astype(np.float64)
    wb = [np.clip(gf(x[0], p0, 45, 0.3), 0, 1), np.clip(gf(x[1], 1 - p0, 45, 0.3), 0, 1)]
    wd = [np.clip(gf(x[0], p0, 7, 1e-6), 0, 1), np.clip(gf(x[1], 1 - p0, 7, 1e-6), 0, 1)]
    wb0 = wb[0] / (wb[0] + wb[1])
    wd0 = wd[0] / (wd[0] + wd[1])
    return wb0 * base[0] + (1 - wb0) * base[1] + wd0 * (x[0] - base[0]) + (1 - wd0) * (x[1] - base[1])


def test_gff_matches_a_scipy_implementation_of_the_paper():
    a, b = _smooth_pair((1, 48, 40), seed=3)
    out, info = fuse_arrays(a[0], b[0], "gff", device="cpu")
    assert info["subsample"] == 1
    ref = np.clip(_gff_reference(a[0], b[0]), 0, 1)
    np.testing.assert_allclose(out, ref, atol=2e-4)
    fast, info = fuse_arrays(a[0], b[0], "gff", {"subsample": 2}, device="cpu")
    assert info["subsample"] == 2 and np.abs(fast - ref).mean() < 0.02


# -- CNN ------------------------------------------------------------------------------------------------


def test_cnn_is_deterministic_saves_and_loads_checkpoints(tmp_path):
    from medtorch.fusion.cnn import load_checkpoint

    a, b = _smooth_pair((10, 16, 16), seed=5)
    params = {"iterations": 2, "patch_size": 8, "batch_size": 1, "features": 4, "seed": 11,
              "save_checkpoint": str(tmp_path / "net.pt")}
    first, info = fuse_arrays(a, b, "cnn", params, device="cpu")
    again, _ = fuse_arrays(a, b, "cnn", {k: v for k, v in params.items() if k != "save_checkpoint"}, device="cpu")
    np.testing.assert_array_equal(first, again)
    assert info["seed"] == 11 and np.isfinite(info["final_loss"])
    model, meta = load_checkpoint(tmp_path / "net.pt")
    assert model.config.features == 4 and meta["training"]["seed"] == 11
    loaded, info2 = fuse_arrays(a, b, "cnn", {"checkpoint": str(tmp_path / "net.pt")}, device="cpu")
    assert info2["iterations"] == 0
    np.testing.assert_allclose(loaded, first, atol=1e-6)
    untrained, _ = fuse_arrays(a, b, "cnn", {"iterations": 0, "features": 4}, device="cpu")
    np.testing.assert_allclose(untrained, 0.5 * (a + b), atol=1e-6)  # the residual start is the average
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(MedTorchInputError, match="could not be read"):
        fuse_arrays(a, b, "cnn", {"checkpoint": str(tmp_path / "bad.pt")}, device="cpu")
    torch.save({"format": "something else"}, tmp_path / "other.pt")
    with pytest.raises(MedTorchInputError, match="not a MedTorch fusion-CNN checkpoint"):
        fuse_arrays(a, b, "cnn", {"checkpoint": str(tmp_path / "other.pt")}, device="cpu")


def test_cnn_trains_on_2d_images():
    a, b = _smooth_pair((1, 24, 24), seed=6)
    out, info = fuse_arrays(a[0], b[0], "cnn", {"iterations": 2, "patch_size": 16, "features": 4}, device="cpu")
    assert out.shape == (24, 24) and info["train"]["iterations"] == 2


# -- colour -------------------------------------------------------------------------------------------


def test_ycbcr_is_bt601_and_invertible():
    from medtorch.fusion.color import color_map_lut, rgb_to_ycbcr, ycbcr_to_rgb

    rgb = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 0.0, 1.0], [0.0, 0.0, 1.0, 1.0]], dtype=torch.float64)
    ycc = rgb_to_ycbcr(rgb)
    np.testing.assert_allclose(ycc[0].numpy(), [0.299, 0.587, 0.114, 1.0], atol=1e-12)
    np.testing.assert_allclose(ycc[1:, 3].numpy(), [0.5, 0.5], atol=1e-12)  # white has no chroma
    np.testing.assert_allclose(ycc[2, 0].item(), 0.5 + 0.713 * (1 - 0.299), atol=1e-12)  # Cr of red
    x = torch.rand(3, 5, 4, dtype=torch.float64)
    np.testing.assert_allclose(ycbcr_to_rgb(rgb_to_ycbcr(x)).numpy(), x.numpy(), atol=1e-12)
    hot = color_map_lut("hot")
    np.testing.assert_allclose(hot[[0, -1]], [[0, 0, 0], [1, 1, 1]])
    assert color_map_lut("rainbow")[0].tolist() == [0, 0, 0] and color_map_lut("rainbow")[-1].tolist() == [1, 0, 0]


def _volumes(same_grid=True):
    geom = oblique_geometry(size=(20, 18, 12))
    fixed = blob_phantom(geom)
    other = geom if same_grid else oblique_geometry(size=(22, 18, 12), spacing=(1.1, 1.2, 2.0))
    moving = blob_phantom(other, noise=4.0, seed=2)
    return fixed, moving


def test_colour_fusion_keeps_the_colour_and_fuses_the_luminance():
    from medtorch.fusion.color import apply_color_map, rgb_to_ycbcr

    fixed, moving = _volumes()
    moving.metadata["Modality"] = "PT"
    res = fuse_volumes(fixed, moving, "laplacian", color_map="hot", metrics="3d")
    assert res.rgb is not None and res.rgb.kind == "vector" and res.rgb.array.dtype == np.uint8
    assert res.rgb.array.shape == fixed.array.shape + (3,)
    # the RGB result's luminance is the fused image; its chroma is the PET colour map's
    ycc = rgb_to_ycbcr(torch.from_numpy(np.moveaxis(res.rgb.array, -1, 0).astype(np.float64) / 255.0))
    inside = (res.fused.array > 0.02) & (res.fused.array < 0.98)
    assert np.abs(ycc[0].numpy()[inside] - res.fused.array[inside]).max() < 0.03
    pet_rgb = apply_color_map(torch.from_numpy(res.moving_prepared.array.astype(np.float64)), "hot")
    assert res.info["functional"] == "moving" and res.info["color_map"] == "hot"
    assert res.metrics is not None and set(res.metrics) >= {"QABF", "VIF"}
    assert pet_rgb.shape[0] == 3


def test_colour_map_for_an_anatomical_pair_is_refused():
    fixed, moving = _volumes()
    moving.metadata["Modality"] = "CT"
    with pytest.raises(MedTorchInputError, match="neither volume is a functional image"):
        fuse_volumes(fixed, moving, "gff", color_map="hot")
    res = fuse_volumes(fixed, moving, "average", color_map="hot", functional=True)  # explicitly marked PET
    assert res.rgb is not None


# -- the volume pipeline ------------------------------------------------------------------------------


def test_volume_pipeline_range_geometry_and_inputs_untouched():
    fixed, moving = _volumes()
    before = (fixed.array.copy(), moving.array.copy())
    res = fuse_volumes(fixed, moving, "gff")
    assert res.fused.geometry == fixed.geometry and res.fused.array.dtype == np.float32
    assert res.fused.array.min() >= 0.0 and res.fused.array.max() <= 1.0
    assert res.info["output_range"] == "[0, 1]" and res.overlap_fraction == 1.0
    np.testing.assert_array_equal(fixed.array, before[0])
    np.testing.assert_array_equal(moving.array, before[1])


def test_ct_is_windowed_and_mri_normalised():
    geom = Geometry((16, 16, 12))
    rng = np.random.default_rng(0)
    ct = Volume(rng.uniform(-1000, 1500, geom.shape_zyx).astype(np.float32), geom, "scalar", {"Modality": "CT"})
    mr = Volume(rng.uniform(0, 900, geom.shape_zyx).astype(np.float32), geom, "scalar", {"Modality": "MR"})
    res = fuse_volumes(mr, ct, "average", ct_window="brain")
    lo, hi = 0.0, 80.0  # brain window W80 L40
    expected = np.clip((ct.array - lo) / (hi - lo), 0, 1)
    np.testing.assert_allclose(res.moving_prepared.array, expected, atol=1e-6)
    p1, p99 = np.percentile(mr.array, [1, 99])
    np.testing.assert_allclose(res.fixed_prepared.array, np.clip((mr.array - p1) / (p99 - p1), 0, 1), atol=1e-5)
    assert "CT window brain" in res.info["moving_intensity"]


def test_different_grids_need_a_transform_or_assume_aligned():
    fixed, moving = _volumes(same_grid=False)
    with pytest.raises(MedTorchInputError, match="different geometry.*no transform"):
        fuse_volumes(fixed, moving, "dwt")
    res = fuse_volumes(fixed, moving, "dwt", assume_aligned=True)
    assert res.fused.geometry == fixed.geometry and 0.5 < res.overlap_fraction <= 1.0
    shift = np.eye(4)
    shift[:3, 3] = (2.0, 0.0, 0.0)
    res2 = fuse_volumes(fixed, moving, "dwt", shift)
    assert res2.fused.geometry == fixed.geometry


def test_shape_mismatch_and_bad_parameters_are_clear_errors():
    a, b = _smooth_pair((6, 10, 12))
    with pytest.raises(MedTorchInputError, match="differ in shape"):
        fuse_arrays(a, b[:, :, :11], "gff", device="cpu")
    with pytest.raises(MedTorchInputError, match="takes no parameter 'radius'"):
        fuse_arrays(a, b, "gff", {"radius": 3}, device="cpu")
    with pytest.raises(MedTorchInputError, match="unknown fusion method"):
        fuse_arrays(a, b, "magic", device="cpu")
    with pytest.raises(MedTorchInputError, match="outside"):
        fuse_arrays(a, b, "average", {"weight": 1.5}, device="cpu")
    with pytest.raises(MedTorchInputError, match="unknown wavelet"):
        fuse_arrays(a, b, "dwt", {"wavelet": "nope"}, device="cpu")
    fixed, moving = _volumes()
    with pytest.raises(MedTorchInputError, match="only make sense for 'average'"):
        fuse_volumes(fixed, moving, "gff", normalization="none")


def test_progress_is_reported_and_cancel_stops_the_fusion():
    a, b = _smooth_pair((24, 40, 40))
    seen: list[float] = []
    fuse_arrays(a, b, "gff", device="cpu", progress=lambda f, m="": seen.append(f))
    assert seen and seen == sorted(seen) and seen[-1] == 1.0
    token = CancelToken()
    calls = []

    def progress(f, m=""):
        calls.append(f)
        if len(calls) == 2:
            threading.Thread(target=token.cancel).start()
            threading.Event().wait(0.05)

    with pytest.raises(Cancelled):
        fuse_arrays(a, b, "laplacian", device="cpu", progress=progress, cancel=token)
    with pytest.raises(Cancelled):
        fuse_arrays(a, b, "cnn", {"iterations": 50, "patch_size": 8, "features": 2}, device="cpu",
                    progress=progress, cancel=token)
