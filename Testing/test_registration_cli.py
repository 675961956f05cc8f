"""``medtorch register`` end to end: DICOM folders in, progress shown, bad input refused clearly.

And the speed-ups of the linear stages (sorted sample blocks, the gather sampler, the cheap
foreground dilation, numpy quantiles) checked against the plain computations they replace.
Small synthetic pairs only (fast); accuracy and timing targets are the benchmark's business.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medtorch.registration.synthetic import synthetic_pair
from medtorch.volume import Geometry, Volume

FAST = ["--option", "iterations=[30,25,25]", "--option", "samples=[2000,5000,10000]"]


@pytest.fixture(scope="module")
def pair():
    return synthetic_pair("rigid", seed=1, size=40, spacing=2.4)


def write_dicom_series(volume: Volume, folder: Path, modality: str = "CT") -> Path:
    """One DICOM file per slice (k), int16 with a rescale slope: a minimal CT/MR image series."""
    pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (
        CTImageStorage,
        ExplicitVRLittleEndian,
        MRImageStorage,
        generate_uid,
    )

    folder.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(volume.array, np.float64)
    slope = max(float(np.abs(arr).max()), 1e-6) / 30000.0
    pixels = np.round(arr / slope).astype(np.int16)
    g = volume.geometry
    d = g.direction
    sop_class = CTImageStorage if modality == "CT" else MRImageStorage
    study, series = generate_uid(), generate_uid()
    for k in range(arr.shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.Modality = modality
        ds.PatientID = "registration-test"
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [f"{v:.6f}" for v in g.index_to_physical(np.array([[0.0, 0.0, k]]))[0]]
        ds.ImageOrientationPatient = [f"{v:.10f}" for v in np.concatenate([d[:, 0], d[:, 1]])]
        ds.PixelSpacing = [f"{g.spacing[1]:.6f}", f"{g.spacing[0]:.6f}"]  # row (j), column (i) spacing
        ds.SliceThickness = f"{g.spacing[2]:.6f}"
        ds.Rows, ds.Columns = int(arr.shape[1]), int(arr.shape[2])
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:.10g}", "0"
        ds.PixelData = pixels[k].tobytes()
        ds.save_as(folder / f"slice{k:03d}.dcm", enforce_file_format=True)
    return folder


def _cli(args: list[str]) -> int:
    from medtorch.cli import main

    return main(["register"] + args)


# -- DICOM folders in, progress out ----------------------------------------------------------------------


def test_cli_registers_dicom_folders_and_shows_progress(tmp_path, pair, capsys):
    import SimpleITK as sitk

    from medtorch.io import read_volume

    fixed_dir = write_dicom_series(pair.fixed, tmp_path / "fixed_dicom", "MR")
    moving_dir = write_dicom_series(pair.moving, tmp_path / "moving_dicom", "CT")
    read_back = read_volume(moving_dir)
    assert read_back.geometry.isclose(pair.moving.geometry, atol=1e-4)  # the folder is the moving volume
    out = tmp_path / "reg.h5"
    code = _cli(["--fixed", str(fixed_dir), "--moving", str(moving_dir), "--out-transform", str(out),
                 "--out-volume", str(tmp_path / "res.nii.gz"), "--seed", "2"] + FAST)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    # progress: the bar's lines on a non-terminal stream (one per 10 % step), up to 100 %
    assert "100" in captured.err and "%" in captured.err and captured.err.count("\n") >= 5
    assert "Registered (torch rigid, mi)" in captured.out
    report = json.loads((tmp_path / "reg.json").read_text())
    assert report["seed"] == 2 and report["device"] and report["runtime_s"] > 0
    a = np.asarray(report["affine_lps"])
    mapped = pair.landmarks @ a[:3, :3].T + a[:3, 3]
    assert pair.tre(mapped).max() < 0.5  # started at several mm
    assert pair.tre(pair.landmarks).mean() > 3.0
    tx = sitk.ReadTransform(str(out))
    np.testing.assert_allclose([tx.TransformPoint(tuple(p)) for p in pair.landmarks[:5]], mapped[:5], atol=1e-5)
    assert read_volume(tmp_path / "res.nii.gz").geometry.isclose(pair.fixed.geometry)


# -- bad input: exit code 2, the problem and what to do, no output written ---------------------------------


def _bad_cases(pair: object, tmp: Path) -> dict[str, tuple[list[str], str]]:
    from medtorch.io import write_volume

    fixed, moving = pair.fixed, pair.moving  # type: ignore[attr-defined]
    f, m = tmp / "fixed.nrrd", tmp / "moving.nrrd"
    write_volume(fixed, f)
    write_volume(moving, m)
    far = Volume(moving.array, Geometry(moving.size, moving.origin + 1000.0, moving.spacing, moving.direction))
    write_volume(far, tmp / "far.nrrd")
    write_volume(Volume(np.zeros(fixed.array.shape, np.uint8), fixed.geometry, "label"), tmp / "empty.nrrd")
    write_volume(Volume.from_array(np.random.default_rng(0).random((1, 30, 30)).astype(np.float32)), tmp / "flat.nrrd")
    write_volume(fixed.with_array(np.full(fixed.array.shape, 7.0, np.float32)), tmp / "constant.nrrd")
    base = ["--out-transform", str(tmp / "out.tfm"), "--quiet"]
    return {
        "no overlap": (["--fixed", str(f), "--moving", str(tmp / "far.nrrd"), "--init", "none"] + base,
                       "do not overlap"),
        "empty fixed mask": (["--fixed", str(f), "--moving", str(m), "--fixed-mask", str(tmp / "empty.nrrd")] + base,
                             "fixed mask is empty"),
        "empty moving mask": (["--fixed", str(f), "--moving", str(m), "--moving-mask", str(tmp / "empty.nrrd")]
                              + base, "mask is empty"),
        "2D fixed": (["--fixed", str(tmp / "flat.nrrd"), "--moving", str(m)] + base, "2D"),
        "constant fixed": (["--fixed", str(tmp / "constant.nrrd"), "--moving", str(m)] + base, "constant"),
    }


@pytest.mark.parametrize("what", ["no overlap", "empty fixed mask", "empty moving mask", "2D fixed", "constant fixed"])
def test_cli_bad_input_is_a_clear_error(tmp_path, pair, capsys, what):
    args, needle = _bad_cases(pair, tmp_path)[what]
    assert _cli(args) == 2
    err = capsys.readouterr().err
    assert needle in err and "What to do" in err
    assert not (tmp_path / "out.tfm").exists() and not (tmp_path / "out.json").exists()


def test_core_refuses_an_empty_moving_mask_and_a_constant_moving_volume(pair):
    from medtorch.errors import MedTorchInputError
    from medtorch.registration import register

    empty = Volume(np.zeros(pair.moving.array.shape, np.uint8), pair.moving.geometry, "label")
    with pytest.raises(MedTorchInputError, match="moving mask is empty"):
        register(pair.fixed, pair.moving, moving_mask=empty)
    constant = pair.moving.with_array(np.zeros(pair.moving.array.shape, np.float32))
    with pytest.raises(MedTorchInputError, match="constant"):
        register(pair.fixed, constant)


# -- the speed-ups compute what they replace ----------------------------------------------------------------


def test_gather_sampler_matches_grid_sample_values_and_gradients():
    from medtorch.registration.linear import _GatherWithGradient, trilinear_gather

    torch.manual_seed(0)
    img = torch.rand(7, 9, 11, dtype=torch.float64)
    grid = (torch.rand(400, 3, dtype=torch.float64) * 2.4 - 1.2).requires_grad_(True)  # some outside
    ref = F.grid_sample(img[None, None], grid.view(1, 1, 1, -1, 3), mode="bilinear", padding_mode="border",
                        align_corners=True).reshape(-1)
    w = torch.rand(400, dtype=torch.float64)
    (ref * w).sum().backward()
    value, grad = trilinear_gather(img.reshape(-1), (7, 9, 11), grid.detach(), True)
    torch.testing.assert_close(value, ref.detach())
    torch.testing.assert_close(grad * w[:, None], grid.grad)  # the interpolant's exact derivative
    # the autograd function: the same values, and the analytic derivative as its gradient
    g2 = grid.detach().clone().requires_grad_(True)
    v2 = _GatherWithGradient.apply(g2, img.reshape(-1), (7, 9, 11))
    torch.testing.assert_close(v2, ref.detach())
    (v2 * w).sum().backward()
    torch.testing.assert_close(g2.grad, grid.grad)


def test_sample_blocks_are_sorted_random_subsets():
    from medtorch.registration.linear import draw_samples
    from medtorch.registration.pyramid import PyramidLevel

    g = Geometry((20, 18, 16), (0.0, 0.0, 0.0), (2.0, 2.0, 2.0))
    level = PyramidLevel(torch.rand(1, 16, 18, 20), g, None, 2.0)
    plain = draw_samples(level, 3000, np.random.default_rng(5), 32, jitter=False)
    blocked = draw_samples(level, 3000, np.random.default_rng(5), 32, jitter=False, block=1000)
    idx = g.physical_to_index(blocked.points.double().numpy()).round().astype(int)
    flat = (idx[:, 2] * 18 + idx[:, 1]) * 20 + idx[:, 0]
    for b in range(3):  # each block in memory order, and each block a different random subset
        assert np.all(np.diff(flat[b * 1000:(b + 1) * 1000]) > 0)
    idx_plain = g.physical_to_index(plain.points.double().numpy()).round().astype(int)
    flat_plain = (idx_plain[:, 2] * 18 + idx_plain[:, 1]) * 20 + idx_plain[:, 0]
    for b in range(3):  # the same voxels as without sorting, block by block
        np.testing.assert_array_equal(np.sort(flat_plain[b * 1000:(b + 1) * 1000]), flat[b * 1000:(b + 1) * 1000])
    # values and bins follow their points
    torch.testing.assert_close(blocked.values[0], level.image[0].reshape(-1)[torch.from_numpy(flat)])


def test_foreground_dilation_and_quantiles_match_the_plain_operations():
    from medtorch.registration.pyramid import quantiles
    from medtorch.registration.torch_engine import foreground_mask

    rng = np.random.default_rng(3)
    img = torch.zeros(1, 40, 42, 44)
    img[0, 5:25, 6:26, 7:27] = 1.0
    img[0, 3, 4, 5] = 1.0  # an isolated voxel: removed by the 3x3x3 mean, not grown
    g = Geometry((44, 42, 40), spacing=(1.0, 1.0, 1.0))
    img[0, 37, 39, 41] = 1.0  # and one far from the object
    mask = foreground_mask(img, g, margin_mm=3.0)
    mean3 = F.avg_pool3d(img.unsqueeze(0), 3, stride=1, padding=1, count_include_pad=False)[0]
    fg = (mean3 > 0.15).float().unsqueeze(0)
    # built on a half-resolution grid: the margin is at least the 3 mm asked for, at most 3 mm
    # more, and lone bright voxels do not grow into the mask
    inner = F.max_pool3d(fg, 7, stride=1, padding=3)[0]
    outer = F.max_pool3d(fg, 13, stride=1, padding=6)[0]
    assert mask.shape == img.shape
    assert bool((mask >= inner).all()) and bool((mask <= outer).all())
    assert float(mask[0, 37, 39, 41]) == 0.0 and float(mask.sum()) < float(outer.sum())
    t = torch.from_numpy(rng.normal(size=50_000).astype(np.float32))
    qs = (0.001, 0.25, 0.5, 0.999)
    np.testing.assert_allclose(quantiles(t, qs), torch.quantile(t, torch.tensor(qs)).numpy(), rtol=1e-5, atol=1e-5)


def test_deformable_mi_defaults_refine_the_control_grid_in_three_levels():
    from medtorch.registration import register

    pair = synthetic_pair("deformable", seed=8, size=32, spacing=2.0, deform_mm=4.0)
    res = register(pair.fixed, pair.moving, mode="deformable", seed=0, deformable_points=8000,
                   deformable_iterations=[20, 15, 15], resample_output=False)
    levels = res.report["deformable_levels"]
    assert [lv["spacing_mm"] for lv in levels] == [4.0, 2.0, 2.0]  # coarse, then the fixed spacing twice
    assert [lv["control_mm"] for lv in levels] == [16.0, 8.0, 5.0]
    affine_only = pair.tre(pair.landmarks @ res.affine[:3, :3].T + res.affine[:3, 3])
    assert pair.tre(res.map_points(pair.landmarks)).mean() < 0.8 * affine_only.mean()
    assert res.report["folding_percent"] == 0.0


def test_cli_device_option_does_not_leak_into_the_callers_environment(monkeypatch, tmp_path):
    """``--device`` reaches the command through $MEDTORCH_DEVICE; an in-process caller gets its
    environment back (a refused ``--device cuda`` once left every later registration refused)."""
    import os

    from medtorch.cli import main

    monkeypatch.delenv("MEDTORCH_DEVICE", raising=False)
    main(["info", str(tmp_path / "missing.nrrd"), "--device", "cpu", "-q"])
    assert "MEDTORCH_DEVICE" not in os.environ
    monkeypatch.setenv("MEDTORCH_DEVICE", "cpu")
    main(["info", str(tmp_path / "missing.nrrd"), "--device", "auto", "-q"])
    assert os.environ["MEDTORCH_DEVICE"] == "cpu"
