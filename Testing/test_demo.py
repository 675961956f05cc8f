"""The ``medtorch demo`` job (medtorch.demo) and the report writer (medtorch.report).

One demo run (module fixture) into a temporary folder; the tests then check its files,
its numbers against the known truth, the transform convention from the written files
alone, determinism, cancel and the report helpers.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from medtorch.errors import Cancelled, MedTorchInputError
from medtorch.io import read_volume
from medtorch.progress import CancelToken

SEED = 3

NRRD_OUTPUTS = [
    "t1.nrrd",
    "t2like_misaligned.nrrd",
    "t2like_aligned_truth.nrrd",
    "t2like_registered.nrrd",
    "fused_no_registration.nrrd",
    "fused_registered_average.nrrd",
    "fused_registered_dwt.nrrd",
    "fused_registered_gff.nrrd",
    "t1_noisy.nrrd",
    "t1_denoised_gaussian.nrrd",
    "t1_denoised_anisotropic.nrrd",
    "tumor_phantom.nrrd",
    "tumor_truth.nrrd",
    "tumor_segmentation.nrrd",
    "tumor_seeds.nrrd",
    "tumor_segmentation_seeded.nrrd",
]
#: Super-resolution outputs: on the thick grid, or on the 2 mm grid cropped to a multiple of the factor.
SR_OUTPUTS = ["t1_thick_slices.nrrd", "t1_sr_reference.nrrd", "t1_sr_bspline.nrrd", "t1_sr_selfsup.nrrd"]
FIGURES = ["registration.png", "fusion.png", "enhancement.png", "superres.png", "segmentation.png"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from medtorch.demo import run_demo

    out = tmp_path_factory.mktemp("demo") / "out"
    calls: list[tuple[float, str]] = []
    t0 = time.perf_counter()
    summary = run_demo(out, progress=lambda f, m="": calls.append((f, m)), seed=SEED)
    return {"out": out, "summary": summary, "calls": calls, "seconds": time.perf_counter() - t0}


def test_progress(demo: dict[str, Any]) -> None:
    fractions = [f for f, _ in demo["calls"]]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0
    assert all(0.0 <= f <= 1.0 for f in fractions)
    assert all(b >= a - 1e-9 for a, b in zip(fractions, fractions[1:])), "progress went backwards"
    assert all(isinstance(m, str) for _, m in demo["calls"])


def test_output_files(demo: dict[str, Any]) -> None:
    from PIL import Image

    out: Path = demo["out"]
    s = demo["summary"]
    assert (out / "report.html").is_file() and Path(s["report"]) == (out / "report.html").resolve()
    assert (out / "summary.json").is_file()
    for name in FIGURES:
        p = out / "figures" / name
        assert p.is_file(), name
        with Image.open(p) as im:
            assert im.format == "PNG" and min(im.size) >= 300, (name, im.size)
            assert np.asarray(im.convert("L")).std() > 10, f"{name} looks blank"
    t1 = read_volume(out / "t1.nrrd")
    assert t1.size == (99, 117, 95) and np.allclose(t1.spacing, 2.0)
    for name in NRRD_OUTPUTS:
        assert name in s["outputs"] and Path(s["outputs"][name]).is_file(), name
        vol = read_volume(out / name)
        if name != "t2like_misaligned.nrrd":  # the moving image has its own (larger) grid
            assert vol.geometry.isclose(t1.geometry), name
        assert np.isfinite(vol.array).all(), name
    ref = read_volume(out / "t1_sr_reference.nrrd")
    assert np.array_equal(ref.array, t1.array[: ref.geometry.size[2]]) and ref.geometry.size[2] % 3 == 0
    for name in SR_OUTPUTS[2:]:  # super-resolved onto the reference's grid exactly
        assert read_volume(out / name).geometry.isclose(ref.geometry, atol=1e-6), name
    thick = read_volume(out / "t1_thick_slices.nrrd")
    assert thick.geometry.size[2] * 3 == ref.geometry.size[2] and np.isclose(thick.spacing[2], 6.0)
    for name in ("tumor_truth.nrrd", "tumor_segmentation.nrrd", "tumor_segmentation_seeded.nrrd"):
        arr = read_volume(out / name).array
        assert set(np.unique(arr).tolist()) == {0, 1}, name
    # No temporary files are left behind by the atomic writes.
    assert not [p.name for p in out.rglob("*.part*")]


def test_summary_json_matches_and_metrics_are_sane(demo: dict[str, Any]) -> None:
    s = demo["summary"]
    on_disk = json.loads((demo["out"] / "summary.json").read_text())
    assert on_disk == s
    assert s["seed"] == SEED
    for key in ("medtorch", "torch", "SimpleITK", "numpy"):
        assert s["versions"][key]
    assert s["device"]["device"]
    assert set(s["timings_s"]) >= {"data", "register", "fuse", "enhance", "superres", "segment", "report", "total"}

    tre = s["registration"]["tre_mm"]
    assert tre["known_transform"]["max"] < 0.5
    assert tre["registered"]["max"] < 0.5, "the registration missed the known transform"
    assert s["registration"]["report"]["seed"] == SEED
    assert s["registration"]["verdict"]["status"] == "pass", s["registration"]["verdict"]["reasons"]
    assert s["registration"]["report"]["verdict"] == "pass"
    assert tre["no_registration"]["mean"] > 5.0
    assert len(s["registration"]["landmarks_lps_mm"]) == 10

    fus = s["fusion"]
    assert fus["known_transform"]["nmi_t1_vs_t2like"] > fus["no_registration"]["nmi_t1_vs_t2like"] + 0.05
    assert fus["known_transform"]["correlation_with_aligned_truth"] > 0.9
    assert fus["no_registration"]["correlation_with_aligned_truth"] < 0.5
    assert fus["known_transform"]["nmi_t1_vs_t2like"] <= fus["nmi_truth_t1_vs_aligned_t2like"] + 1e-6
    assert fus["registered_average"]["correlation_with_aligned_truth"] > 0.9
    gff, dwt = fus["registered_gff"]["metrics"], fus["registered_dwt"]["metrics"]
    assert gff["QABF"] > dwt["QABF"] and gff["VIF"] > dwt["VIF"], "GFF should beat DWT fusion (mean approximation, max-abs details)"
    assert fus["registered_average"]["metrics"]["QABF"] > fus["no_registration"]["metrics"]["QABF"]

    checks = s["truth"]["checks"]
    assert checks["round_trip_correlation"] > 0.98
    assert checks["center_of_mass_error_mm"] < 0.5
    assert checks["center_of_mass_error_if_inverted_mm"] > 5.0
    assert checks["tfm_readback_max_error_mm"] < 1e-6

    enh = s["enhance"]
    for method in ("gaussian", "anisotropic"):
        assert enh[method]["psnr_db"] > enh["noisy"]["psnr_db"] + 3.0, method
        assert enh[method]["ssim"] > enh["noisy"]["ssim"], method
        assert enh[method]["seconds"] >= 0.0
    assert 0.0 < enh["noisy"]["ssim"] < 1.0
    sr = enh["superres"]
    assert sr["selfsup"]["psnr_db"] > sr["bspline"]["psnr_db"] + 1.0, "self-supervised SR should beat B-spline"
    assert sr["selfsup"]["training"]["seed"] == SEED

    seg = s["segment"]
    assert seg["seeded"]["dice"] > 0.85
    assert seg["dice"] > 0.85
    assert abs(seg["volume_error_percent"]) < 15.0
    assert seg["truth_volume_ml"] == pytest.approx(seg["tumor"]["analytic_volume_ml"], rel=0.05)


def test_truth_transform_files_agree_and_align(demo: dict[str, Any]) -> None:
    """The .tfm and the JSON say the same; resampling through it aligns the moving image."""
    import SimpleITK as sitk

    from medtorch.registration.evaluation import pearson_correlation
    from medtorch.resample import resample

    out: Path = demo["out"]
    doc = json.loads((out / "truth_transform.json").read_text())
    m = np.array(doc["matrix_lps"])
    assert m.shape == (4, 4) and np.allclose(m[3], [0, 0, 0, 1])
    assert np.allclose(np.linalg.inv(m), doc["inverse_matrix_lps"])
    tx = sitk.ReadTransform(str(out / "truth_transform.tfm"))
    for p in ([0.0, 0.0, 0.0], [30.0, -20.0, 40.0], [-55.5, 70.25, -10.0]):
        assert np.allclose(tx.TransformPoint(p), m[:3, :3] @ np.array(p) + m[:3, 3], atol=1e-6)

    t1 = read_volume(out / "t1.nrrd")
    moving = read_volume(out / "t2like_misaligned.nrrd")
    aligned = read_volume(out / "t2like_aligned_truth.nrrd").array
    inside = aligned > 0.2 * aligned.max()
    good = resample(moving, t1.geometry, m).array
    wrong = resample(moving, t1.geometry, np.linalg.inv(m)).array
    assert pearson_correlation(good, aligned, inside) > 0.95
    assert pearson_correlation(wrong, aligned, inside) < 0.6


def test_report_html(demo: dict[str, Any]) -> None:
    text = (demo["out"] / "report.html").read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    for fig in FIGURES:
        assert f'src="figures/{fig}"' in text
    for needle in ("known transform (reference)", "MedTorch registration", "QAB/F", "self-supervised SR",
                   "seeded", f"Seed {SEED}", "Dice", "PSNR", "SSIM",
                   "TRE", "SimpleITK", "torch", "<table>", "Verdict without landmarks: PASS"):
        assert needle in text, needle


def test_report_shows_slicer_renders_or_says_why(demo: dict[str, Any]) -> None:
    """Where rendering works the report shows Slicer's 3D views of the fusion and the segmentation;
    where it does not, one line says why (the matplotlib figures stay either way)."""
    from PIL import Image

    from medtorch.demo import RENDERS

    text = (demo["out"] / "report.html").read_text(encoding="utf-8")
    renders = demo["summary"]["renders"]
    assert "renders" in demo["summary"]["timings_s"]
    if renders["unavailable"] is None:
        assert set(renders["files"]) == set(RENDERS)
        for name in RENDERS:
            assert f'src="figures/{name}"' in text, name
            with Image.open(demo["out"] / "figures" / name) as im:
                assert im.format == "PNG" and im.size[0] > 2 * 200, (name, im.size)  # two views side by side
                assert np.asarray(im.convert("L")).std() > 10, f"{name} looks blank"
        assert "are not in this report" not in text
    else:
        assert f"are not in this report: {renders['unavailable']}" in text
        assert not any(f"figures/{name}" in text for name in RENDERS)


def test_report_without_rendering_says_so_in_one_line(demo: dict[str, Any], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """MEDTORCH_NO_RENDER=1 (as on a machine without EGL): no render, no failure, one line in the report."""
    import shutil

    from medtorch import demo as demo_mod
    from medtorch.slicer import views

    monkeypatch.setenv(views.NO_RENDER_ENV, "1")
    out: Path = demo["out"]
    fused = {"no_registration": read_volume(out / "fused_no_registration.nrrd"),
             "registered_gff": read_volume(out / "fused_registered_gff.nrrd")}
    seg = {"phantom": read_volume(out / "tumor_phantom.nrrd"), "truth": read_volume(out / "tumor_truth.nrrd"),
           "seeded": {"segmentation": read_volume(out / "tumor_segmentation_seeded.nrrd")}}
    (tmp_path / "figures").mkdir()
    renders = demo_mod.render_views(tmp_path, fused, seg)
    assert renders == {"files": {}, "unavailable": "rendering is turned off (MEDTORCH_NO_RENDER=1)"}
    assert not list((tmp_path / "figures").iterdir())
    for name in FIGURES:
        shutil.copy(out / "figures" / name, tmp_path / "figures" / name)
    outputs = {k: v for k, v in demo["summary"]["outputs"].items() if k.removeprefix("figures/") not in demo_mod.RENDERS}
    summary = dict(demo["summary"], renders=renders, outputs=outputs)  # as a run without rendering writes it
    text = demo_mod.write_html(tmp_path, summary, {}).read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if "are not in this report" in line]
    assert len(lines) == 1 and "rendering is turned off (MEDTORCH_NO_RENDER=1)" in lines[0]
    assert not any(f"figures/{name}" in text for name in demo_mod.RENDERS)
    for name in FIGURES:
        assert f'src="figures/{name}"' in text


def test_deterministic_given_the_seed(demo: dict[str, Any]) -> None:
    """Same seed, same noise and segmentation (cheap: two steps rerun, not the whole demo)."""
    from medtorch.demo import add_rician_noise, load_sample_data, segment_tumor

    data = load_sample_data()
    saved_t1 = read_volume(demo["out"] / "t1.nrrd").array
    assert np.array_equal(data.t1.array, saved_t1)
    a = add_rician_noise(data.t1, seed=SEED).array
    b = add_rician_noise(data.t1, seed=SEED).array
    assert np.array_equal(a, b)
    assert np.array_equal(a, read_volume(demo["out"] / "t1_noisy.nrrd").array)
    assert not np.array_equal(a, add_rician_noise(data.t1, seed=SEED + 1).array)

    r1 = segment_tumor(data, seed=SEED)
    r2 = segment_tumor(data, seed=SEED)
    assert np.array_equal(r1["phantom"].array, r2["phantom"].array)
    assert np.array_equal(r1["segmentation"].array, r2["segmentation"].array)
    seg = demo["summary"]["segment"]
    for key in ("dice", "segmented_volume_ml", "truth_volume_ml", "threshold"):
        assert r1["metrics"][key] == r2["metrics"][key] == pytest.approx(seg[key], rel=1e-12, abs=1e-12), key
    assert np.array_equal(r1["segmentation"].array, read_volume(demo["out"] / "tumor_segmentation.nrrd").array)


def test_cancel_stops_the_demo(tmp_path: Path) -> None:
    from medtorch.demo import run_demo

    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        run_demo(tmp_path / "cancelled", cancel=token)
    assert not (tmp_path / "cancelled" / "report.html").exists()


def test_sample_data_lookup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from medtorch import demo as demo_mod

    files = demo_mod.sample_data_files()
    assert set(files) == {"t1", "gm", "wm"} and all(p.is_file() for p in files.values())
    assert demo_mod.sample_data_dir() == files["t1"].parent
    monkeypatch.setenv(demo_mod.SAMPLE_DATA_ENV, str(tmp_path))
    with pytest.raises(MedTorchInputError, match=demo_mod.SAMPLE_DATA_ENV):
        demo_mod.sample_data_files()
    monkeypatch.setenv(demo_mod.SAMPLE_DATA_ENV, str(files["t1"].parent))
    assert demo_mod.sample_data_files() == files


def test_metrics_on_known_cases() -> None:
    """The library's measures the demo reports, on cases with a known answer."""
    from medtorch.demo.data import apply_matrix
    from medtorch.enhance.metrics import psnr, ssim
    from medtorch.registration.evaluation import landmark_errors, normalized_mutual_information
    from medtorch.segment.metrics import dice

    rng = np.random.default_rng(0)
    x = rng.random((12, 14, 16))
    assert ssim(x, x) == pytest.approx(1.0)
    assert psnr(x, x) == float("inf")
    assert psnr(x + 0.1, x, peak=1.0) == pytest.approx(20.0)
    assert normalized_mutual_information(x, 3 * x + 1) == pytest.approx(2.0, abs=1e-6)
    assert normalized_mutual_information(x, rng.random(x.shape), bins=8) < 1.05
    a = np.zeros((5, 5, 5), bool)
    a[1:3] = True
    b = np.zeros_like(a)
    b[2:4] = True
    assert dice(a, a) == 1.0 and dice(a, b) == pytest.approx(0.5)
    shift = np.eye(4)
    shift[:3, 3] = [3.0, 4.0, 0.0]
    points = np.zeros((2, 3))
    assert np.allclose(landmark_errors(apply_matrix(np.eye(4), points), apply_matrix(shift, points)), 5.0)


def test_the_demo_measures_with_the_library_only() -> None:
    """No metric is written in the demo package: it imports the library's."""
    import medtorch.demo.data as data
    import medtorch.demo.page as page
    import medtorch.demo.steps as steps

    own = {name for mod in (data, page, steps) for name, obj in vars(mod).items()
           if callable(obj) and getattr(obj, "__module__", "").startswith("medtorch.demo")}
    for metric in ("dice", "psnr", "ssim", "ssim3d", "pearson_correlation", "normalized_mutual_information",
                   "target_registration_error", "landmark_errors"):
        assert metric not in own, metric
    assert steps.dice.__module__ == "medtorch.segment.metrics"
    assert steps.psnr.__module__ == steps.ssim.__module__ == "medtorch.enhance.metrics"
    assert steps.landmark_errors.__module__ == "medtorch.registration.evaluation"


# -- medtorch.report ------------------------------------------------------------------------------


def test_display_orientation_does_not_depend_on_the_direction_matrix() -> None:
    """One physical object on an LPS grid and on a (-1, -1, 1) grid (as NIfTI from RAS) looks the same."""
    from medtorch.report import display_volume
    from medtorch.volume import Geometry, Volume

    rng = np.random.default_rng(1)
    arr = rng.random((6, 7, 8)).astype(np.float32)  # [z, y, x] on the identity grid
    g1 = Geometry(size=(8, 7, 6), origin=(-10.0, -20.0, 5.0), spacing=(1.0, 2.0, 3.0))
    # Same voxels, i and j axes reversed: voxel (i, j, k) of the flipped grid = (7 - i, 6 - j, k).
    origin2 = g1.index_to_physical(np.array([[7.0, 6.0, 0.0]]))[0]
    g2 = Geometry(size=(8, 7, 6), origin=origin2, spacing=(1.0, 2.0, 3.0), direction=np.diag([-1.0, -1.0, 1.0]))
    d1 = display_volume(Volume(arr, g1))
    d2 = display_volume(Volume(arr[:, ::-1, ::-1].copy(), g2))
    point = (-6.0, -10.0, 11.0)
    for plane in ("axial", "coronal", "sagittal"):
        assert np.array_equal(d1.slice(plane, point), d2.slice(plane, point)), plane
        assert d1.aspect(plane) == d2.aspect(plane)
    # Axial: top row is the most anterior (smallest P), left column the patient's right (smallest L).
    ax = d1.slice("axial", point)
    k = int(round((point[2] - 5.0) / 3.0))
    assert ax[0, 0] == arr[k, 0, 0] and ax.shape == (7, 8)
    # Coronal: top row is the most superior slice.
    co = d1.slice("coronal", point)
    assert np.array_equal(co[0], arr[-1, int(round((point[1] + 20.0) / 2.0))])
    # A pixel position of a point matches the slice it is drawn on.
    col, row = d1.to_pixels("axial", np.array([[-10.0 + 3.0, -20.0 + 4.0, 11.0]]))[0]
    assert (col, row) == (3.0, 2.0)


def test_write_report(tmp_path: Path) -> None:
    from medtorch.report import Figure, Panel, Section, Table, checkerboard, panel_figure, write_report

    img = np.outer(np.arange(20.0), np.ones(30))
    cb = checkerboard(img, -img, tiles=3)
    assert cb[0, 0] == img[0, 0] and cb[0, 10] == -img[0, 10]
    fig = panel_figure(tmp_path / "figures" / "a.png", [Panel(img, "ramp <b>", contours=[(img > 10, "red", "half")]),
                                                       Panel(cb, "checkerboard", colorbar=True)], ncols=2)
    assert fig.is_file()
    page = write_report(tmp_path, "Title & <test>", [
        Section("Part 1", ["a paragraph with <html>"], [Table("numbers", ["name", "value"],
                                                              [["pi", 3.14159265], ["n", 3], ["none", None]])],
                [Figure("figures/a.png", "a figure")]),
    ], intro=["intro"], footer="foot")
    text = page.read_text(encoding="utf-8")
    assert page == tmp_path / "report.html"
    assert "Title &amp; &lt;test&gt;" in text and "&lt;html&gt;" in text
    assert "3.142" in text and 'src="figures/a.png"' in text
    with pytest.raises(MedTorchInputError):
        write_report(tmp_path, "t", [Section("s", figures=[Figure("figures/missing.png")])])
    with pytest.raises(MedTorchInputError):
        write_report(tmp_path / "sub", "t", [Section("s", figures=[Figure(tmp_path / "figures" / "a.png")])])
