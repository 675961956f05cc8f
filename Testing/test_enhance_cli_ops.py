"""EnhanceSR: command line (denoise, superres, enhance), operations for Slicer, contrast
steps, metrics (PSNR/SSIM against scikit-image), comparison volumes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medtorch.cli import main
from medtorch.enhance.compare import checkerboard, difference
from medtorch.enhance.contrast import EnhanceSteps, clahe, enhance, unsharp_mask
from medtorch.enhance.metrics import compare, per_slice, psnr, sharpness, ssim
from medtorch.errors import MedTorchInputError
from medtorch.io import read_volume, write_volume
from medtorch.phantoms import blob_phantom, oblique_geometry
from medtorch.runtime import run_operation
from medtorch.volume import Volume


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("enh")
    geom = oblique_geometry(size=(24, 22, 10), spacing=(1.0, 1.0, 3.0))
    noisy = blob_phantom(geom, noise=8.0, seed=1)
    noisy = noisy.with_array(np.clip(noisy.array, 0, None).astype(np.int16))
    write_volume(noisy, d / "thick.nrrd")
    iso = blob_phantom(oblique_geometry(size=(20, 20, 16), spacing=(1.0, 1.0, 1.0)), noise=5.0)
    write_volume(iso, d / "iso.nii.gz")
    return d


def test_cli_denoise_all_contract_methods(files, capsys):
    for method in ("gaussian", "median", "anisotropic", "nlm"):
        out = files / f"dn_{method}.nrrd"
        assert main(["denoise", "--in", str(files / "thick.nrrd"), "--out", str(out), "--method", method,
                     "--strength", "1", "--seed", "4", "-q"]) == 0
        vol = read_volume(out)
        assert vol.array.dtype == np.float32 and vol.size == (24, 22, 10)
    metrics = files / "noise.json"
    assert main(["denoise", "--in", str(files / "thick.nrrd"), "--out", str(files / "dct.nrrd"), "--method", "dct",
                 "--metrics", str(metrics), "-q"]) == 0
    info = json.loads(metrics.read_text())
    assert info["noise_sigma"] > 0 and info["seed"] == 0 and info["method"] == "dct"


def test_cli_superres_by_factor_and_spacing(files):
    out = files / "sr.nrrd"
    assert main(["superres", "--in", str(files / "thick.nrrd"), "--out", str(out), "--factor", "3",
                 "--method", "bspline", "-q"]) == 0
    vol = read_volume(out)
    assert vol.size == (24, 22, 30) and np.allclose(vol.spacing, (1, 1, 1))
    assert main(["superres", "--in", str(files / "thick.nrrd"), "--out", str(out), "--spacing", "1,1,1.5",
                 "--method", "sinc", "--axis", "k", "-q"]) == 0
    assert read_volume(out).size == (24, 22, 20)
    assert main(["superres", "--in", str(files / "iso.nii.gz"), "--out", str(out), "--factor", "2",
                 "--method", "linear", "--axis", "all", "-q"]) == 0
    assert read_volume(out).size == (40, 40, 32)


def test_cli_selfsup_superres_saves_and_reuses_a_model(files):
    model = files / "m.pt"
    out = files / "ss.nrrd"
    args = ["superres", "--in", str(files / "thick.nrrd"), "--out", str(out), "--factor", "3", "--method", "selfsup",
            "--train-iterations", "3", "--fwhm", "3", "--seed", "2", "-q"]
    assert main(args + ["--save-model", str(model), "--export-onnx", str(files / "m.onnx")]) == 0
    first = read_volume(out).array
    assert model.exists() and (files / "m.onnx").exists()
    assert main(["superres", "--in", str(files / "thick.nrrd"), "--out", str(out), "--factor", "3", "--method",
                 "selfsup", "--model", str(model), "-q"]) == 0
    np.testing.assert_allclose(read_volume(out).array, first, atol=1e-4)


def test_cli_bad_input_exits_2_with_a_message(files, capsys):
    assert main(["superres", "--in", str(files / "iso.nii.gz"), "--out", str(files / "x.nrrd"), "--factor", "2",
                 "-q"]) == 2
    assert "isotropic" in capsys.readouterr().err
    assert main(["superres", "--in", str(files / "thick.nrrd"), "--out", str(files / "x.nrrd"), "--factor", "0.5",
                 "-q"]) == 2
    assert "below 1" in capsys.readouterr().err
    assert main(["denoise", "--in", str(files / "thick.nrrd"), "--out", str(files / "x.nrrd"), "--method",
                 "gaussian", "--output-dtype", "uint8", "--strength", "0.3", "-q"]) in (0, 2)
    assert main(["enhance", "--in", str(files / "thick.nrrd"), "--out", str(files / "x.nrrd"), "-q"]) == 2
    assert "no enhancement step" in capsys.readouterr().err


def test_cli_enhance_steps(files):
    out = files / "enh.nrrd"
    bias = files / "bias.nrrd"
    assert main(["enhance", "--in", str(files / "iso.nii.gz"), "--out", str(out), "--n4", "--n4-shrink", "2",
                 "--bias-field", str(bias), "--clahe", "--unsharp", "-q"]) == 0
    assert read_volume(out).array.dtype == np.float32 and bias.exists()
    assert main(["enhance", "--in", str(files / "iso.nii.gz"), "--out", str(out), "--window", "80,40", "-q"]) == 0
    w = read_volume(out).array
    assert w.min() >= 0.0 and w.max() <= 1.0


def test_operations_return_outputs_and_comparisons():
    geom = oblique_geometry(size=(20, 18, 8), spacing=(1.0, 1.0, 2.5))
    vol = blob_phantom(geom, noise=6.0)
    res = run_operation("denoise", {"input": vol}, {"method": "dct", "comparison": "difference", "seed": 5})
    out = res.volumes["output"]
    np.testing.assert_allclose(res.volumes["comparison"].array, out.array - vol.array, atol=1e-4)
    assert res.values["seed"] == 5 and res.values["noise_sigma"] > 0
    res = run_operation("superres", {"input": vol}, {"method": "bspline", "factor": 2.5, "comparison": "checkerboard"})
    assert res.volumes["output"].size == (20, 18, 20)
    assert res.volumes["comparison"].geometry == res.volumes["output"].geometry
    ref = blob_phantom(geom).with_array(blob_phantom(geom).array * 2 + 10)
    res = run_operation("enhance", {"input": vol, "reference": ref}, {"unsharp": True})
    assert res.values["steps"] == ["histogram_match", "unsharp"]
    assert res.volumes["output"].array.mean() > vol.array.mean() + 5  # matched to the brighter reference


def test_contrast_steps_keep_geometry_and_do_what_they_say():
    geom = oblique_geometry(size=(24, 24, 20), spacing=(1.0, 1.0, 1.5))
    vol = blob_phantom(geom)
    sharp = unsharp_mask(vol, 1.0, 1.0)
    assert sharp.geometry == vol.geometry
    before, after = sharpness(vol), sharpness(sharp)
    assert after["gradient"] > before["gradient"] * 1.04 and after["hf_ratio"] > before["hf_ratio"] * 1.25
    eq = clahe(vol, 0.02, 16.0)
    assert eq.geometry == vol.geometry and eq.array.dtype == np.float32
    assert eq.array.min() >= vol.array.min() - 1e-3 and eq.array.max() <= vol.array.max() * 1.01
    with pytest.raises(MedTorchInputError, match="no enhancement step"):
        enhance(vol, EnhanceSteps())


def test_psnr_and_ssim_agree_with_scikit_image():
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    rng = np.random.default_rng(0)
    ref = blob_phantom(oblique_geometry(size=(30, 28, 26))).array.astype(np.float64)
    img = ref + rng.normal(0, 10.0, ref.shape)
    dr = float(ref.max() - ref.min())
    assert psnr(img, ref) == pytest.approx(peak_signal_noise_ratio(ref, img, data_range=dr), abs=1e-6)
    ours = ssim(img, ref, data_range=dr)
    theirs = structural_similarity(ref, img, data_range=dr, gaussian_weights=True, sigma=1.5,
                                   use_sample_covariance=False)
    assert ours == pytest.approx(theirs, abs=2e-3)
    assert psnr(ref, ref) == float("inf") and ssim(ref, ref) == pytest.approx(1.0)
    m = ref > 50
    assert ssim(img, ref, m) < ssim(ref + rng.normal(0, 2.0, ref.shape), ref, m)
    slices = per_slice("psnr", img, ref, m, axis=0)
    assert slices.shape == (26,) and np.nanmean(slices) == pytest.approx(psnr(img, ref, m), abs=1.0)
    assert ssim(img, ref, m, per_slice_axis=0) < 1.0
    no_ref = compare(img)
    assert no_ref["noise_sigma"] == pytest.approx(10.0, rel=0.15) and no_ref["sharpness_gradient"] > 0


def test_comparison_volumes():
    geom = oblique_geometry(size=(16, 16, 16), spacing=(1.0, 1.0, 1.0))
    a = Volume(np.zeros((16, 16, 16), np.float32), geom)
    b = a.with_array(np.ones((16, 16, 16), np.float32))
    assert np.all(difference(a, b).array == 1.0)
    board = checkerboard(a, b, squares=2).array
    assert board[0, 0, 0] == 0.0 and board[0, 0, 15] == 1.0 and board[15, 0, 15] == 0.0
    assert board.mean() == pytest.approx(0.5)
