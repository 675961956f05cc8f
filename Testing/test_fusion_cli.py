"""``medtorch fuse`` (every method, colour fusion, metrics, errors), ``medtorch fuse-eval``
(the report folder from PNG pairs and from a CSV list of volumes) and the ``fuse`` /
``fusion_metrics`` operations, including one run in a background process."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medtorch.cli import main
from medtorch.io import read_volume, write_volume
from medtorch.phantoms import blob_phantom, oblique_geometry
from medtorch.volume import Volume


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuse")
    geom = oblique_geometry(size=(20, 18, 12))
    fixed = blob_phantom(geom)
    moving = blob_phantom(geom, noise=4.0, seed=5)
    write_volume(fixed, d / "fixed.nrrd")
    write_volume(moving, d / "moving.nii.gz")
    other = blob_phantom(oblique_geometry(size=(22, 18, 12), spacing=(1.1, 1.2, 2.0)), seed=6)
    write_volume(other, d / "other.nrrd")
    return d, fixed


@pytest.mark.parametrize("method", ["average", "dwt", "laplacian", "gff", "pca", "cnn"])
def test_fuse_every_method(files, method):
    d, fixed = files
    extra = ["--iterations", "2", "--param", "patch_size=8", "--param", "features=2"] if method == "cnn" else []
    out, m = d / f"{method}.nrrd", d / f"{method}.json"
    assert main(["fuse", "--fixed", str(d / "fixed.nrrd"), "--moving", str(d / "moving.nii.gz"), "--method", method,
                 "--out", str(out), "--metrics", str(m), "-q", "--device", "cpu", *extra]) == 0
    fused = read_volume(out)
    assert fused.geometry.isclose(fixed.geometry, atol=1e-5)
    assert fused.array.dtype == np.float32 and 0.0 <= fused.array.min() and fused.array.max() <= 1.0
    figures = json.loads(m.read_text())
    assert figures["method"] == method and figures["output_range"] == "[0, 1]"
    assert set(figures["metrics"]) >= {"EN", "SD", "SF", "AG", "MI", "SSIM_sum", "QABF", "VIF"}
    assert figures["mi_unit"] == "bits"
    if method == "cnn":
        assert figures["seed"] == 0 and figures["params"]["iterations"] == 2


def test_fuse_colour_fusion_writes_rgb(files):
    d, fixed = files
    rc = main(["fuse", "--fixed", str(d / "fixed.nrrd"), "--moving", str(d / "moving.nii.gz"), "--method", "gff",
               "--moving-modality", "PT", "--color-map", "hot", "--out", str(d / "rgb.nrrd"),
               "--out-luminance", str(d / "y.nrrd"), "--metrics", str(d / "rgb.json"), "--metrics-mode", "slices",
               "-q", "--device", "cpu"])
    assert rc == 0
    rgb = read_volume(d / "rgb.nrrd")
    assert rgb.kind == "vector" and rgb.num_components == 3 and rgb.array.dtype == np.uint8
    assert read_volume(d / "y.nrrd").array.dtype == np.float32
    figures = json.loads((d / "rgb.json").read_text())
    assert figures["color_map"] == "hot" and figures["metrics"]["slices_scored"] > 0


def test_fuse_bad_input_is_one_clear_message(files, capsys):
    d, _ = files
    base = ["fuse", "--fixed", str(d / "fixed.nrrd"), "--out", str(d / "x.nrrd"), "--device", "cpu"]
    assert main(base + ["--moving", str(d / "moving.nii.gz"), "--color-map", "hot"]) == 2
    err = capsys.readouterr().err
    assert "neither volume is a functional image" in err and "What to do" in err and "Traceback" not in err
    assert main(base + ["--moving", str(d / "other.nrrd"), "--method", "dwt"]) == 2
    assert "different geometry" in capsys.readouterr().err
    assert main(base + ["--moving", str(d / "other.nrrd"), "--method", "dwt", "--assume-aligned", "-q"]) == 0
    assert main(base + ["--moving", str(d / "moving.nii.gz"), "--method", "gff", "--wavelet", "db2"]) == 2
    assert "does not apply to the gff method" in capsys.readouterr().err
    assert not (d / "never.nrrd").exists()


def _png_pairs(root: Path) -> None:
    import SimpleITK as sitk

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:40, :40]
    for pair, mod in (("CT-MRI", "CT"), ("PET-MRI", "PET")):
        (root / pair / "MRI").mkdir(parents=True)
        (root / pair / mod).mkdir(parents=True)
        for i in range(2):
            mri = np.clip(120 + 60 * np.sin(xx / (4.0 + i)) + rng.normal(0, 4, (40, 40)), 0, 255).astype(np.uint8)
            disc = (((xx - 20) ** 2 + (yy - 20) ** 2) < (9 + i) ** 2) * 200
            sitk.WriteImage(sitk.GetImageFromArray(mri), str(root / pair / "MRI" / f"{i}.png"))
            if mod == "CT":
                img = sitk.GetImageFromArray(disc.astype(np.uint8))
            else:
                rgb = np.zeros((40, 40, 3), np.uint8)
                rgb[..., 0] = disc
                rgb[..., 1] = disc // 2
                img = sitk.GetImageFromArray(rgb, isVector=True)
            sitk.WriteImage(img, str(root / pair / mod / f"{i}.png"))


def test_fuse_eval_writes_the_report_folder(tmp_path):
    _png_pairs(tmp_path / "pairs")
    out = tmp_path / "report"
    assert main(["fuse-eval", "--pairs", str(tmp_path / "pairs"), "--methods", "average,gff,laplacian",
                 "--out", str(out), "-q", "--device", "cpu"]) == 0
    for name in ("metrics.csv", "stats.csv", "report.html", "report.md", "figures/boxplots.png",
                 "figures/case_CT-MRI_0.png", "figures/case_PET-MRI_1.png"):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert len(rows) == 4 * 4  # 4 cases x (3 methods + the dwt baseline)
    # the summed SSIM (0..2) is named so in every output (issue 21, part 7)
    assert "SSIM_sum" in rows[0] and "SSIM" not in rows[0]
    assert "| SSIM_sum |" in (out / "report.md").read_text()
    assert {r["pair"] for r in rows} == {"CT-MRI", "PET-MRI"}
    stats = list(csv.DictReader((out / "stats.csv").open()))
    gff_q = next(s for s in stats if s["method"] == "gff" and s["metric"] == "QABF")
    assert gff_q["baseline"] == "dwt" and int(gff_q["n"]) == 4
    assert 0.0 < float(gff_q["wilcoxon_p"]) <= 1.0 and 0.0 <= float(gff_q["ttest_p"]) <= 1.0
    # Holm-Bonferroni over the methods x metrics of each test: adjusted >= raw, named in the CSV
    from medtorch.fusion.evaluate import GRID_HEADER, GRID_TILE, holm

    for kind in ("wilcoxon_p", "ttest_p"):
        raw = np.array([float(s[kind]) for s in stats])
        adj = np.array([float(s[f"{kind}_holm"]) for s in stats])
        np.testing.assert_allclose(adj, holm(raw), rtol=1e-5)  # the CSV holds 6 significant digits
        ok = np.isfinite(raw)
        assert ok.sum() > 1 and np.all(adj[ok] >= raw[ok]) and np.all(adj[ok] <= 1.0)
    assert gff_q["correction"].startswith("Holm-Bonferroni over ")
    html = (out / "report.html").read_text()
    assert "Paired tests against the baseline (dwt)" in html and "figures/boxplots.png" in html
    assert "Holm-Bonferroni" in html and "Holm-Bonferroni" in (out / "report.md").read_text()
    # the figure grid: 3 example pairs (one per pair type first), columns = 2 sources + 4 methods
    import SimpleITK as sitk

    assert "figures/example_grid.png" in html
    grid = sitk.ReadImage(str(out / "figures" / "example_grid.png"))
    assert grid.GetSize() == ((2 + 4) * GRID_TILE, GRID_HEADER + 3 * GRID_TILE)
    arr = sitk.GetArrayFromImage(grid)
    # every tile holds an image (not a blank canvas)
    for i in range(3):
        for j in range(6):
            tile = arr[GRID_HEADER + i * GRID_TILE:GRID_HEADER + (i + 1) * GRID_TILE, j * GRID_TILE:(j + 1) * GRID_TILE]
            assert tile[..., :3].max() > 50, (i, j)
    # the same as an operation (what Slicer runs in the background): rows for a table and a box plot
    from medtorch.runtime import run_operation

    res = run_operation("fuse_eval", {}, {"pairs": str(tmp_path / "pairs" / "CT-MRI"), "methods": "average",
                                          "out_dir": str(tmp_path / "op"), "device": "cpu"})
    assert [r["method"] for r in res.values["rows"]] == ["dwt", "average"] * 2
    assert Path(res.values["files"]["report_html"]).is_file()


def test_holm_bonferroni_against_a_hand_worked_example():
    from medtorch.fusion.evaluate import example_cases, holm, Case

    # p = (0.01, 0.04, 0.03, 0.005), m = 4: sorted 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06,
    # 0.04 x 1 = 0.04 -> raised to the running maximum 0.06; NaN is outside the family
    np.testing.assert_allclose(holm([0.01, 0.04, float("nan"), 0.03, 0.005]),
                               [0.03, 0.06, np.nan, 0.06, 0.02])
    # capped at 1, ties keep their order
    np.testing.assert_allclose(holm([0.5, 0.5, 0.2]), [1.0, 1.0, 0.6])
    assert np.isnan(holm([float("nan")])).all() and holm([]).size == 0
    cases = [Case(f"{p}{i}", Path("a"), Path("b"), p) for p in ("CT", "PT") for i in range(3)]
    assert [c.name for c in example_cases(cases, 3)] == ["CT0", "PT0", "CT1"]
    assert len(example_cases(cases, 10)) == 6


def test_fuse_eval_from_a_csv_list_of_volumes(tmp_path, capsys):
    geom = oblique_geometry(size=(20, 18, 12))
    lines = ["fixed,moving,modality"]
    for i in range(2):
        write_volume(blob_phantom(geom, seed=i), tmp_path / f"t1_{i}.nrrd")
        ct = blob_phantom(geom, noise=3.0, seed=10 + i)
        write_volume(Volume(ct.array * 10 - 500, ct.geometry), tmp_path / f"ct_{i}.nrrd")
        lines.append(f"t1_{i}.nrrd,ct_{i}.nrrd,CT")
    (tmp_path / "pairs.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "eval"
    assert main(["fuse-eval", "--pairs", str(tmp_path / "pairs.csv"), "--methods", "pca", "--baseline", "average",
                 "--out", str(out), "-q", "--device", "cpu"]) == 0
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [r["method"] for r in rows] == ["average", "pca"] * 2 and {r["pair"] for r in rows} == {"CT-MRI"}
    _check_3d_renders(out, ["ct_0", "ct_1"])
    (tmp_path / "bad.csv").write_text("t1_0.nrrd\n")
    assert main(["fuse-eval", "--pairs", str(tmp_path / "bad.csv"), "--out", str(out)]) == 2
    assert "fixed,moving" in capsys.readouterr().err


def _check_3d_renders(out, cases):
    """The report shows each example volume case's fused volumes in Slicer's 3D view, or says in
    one line why not (no slicer-core, no EGL, MEDTORCH_NO_RENDER=1)."""
    html = (out / "report.html").read_text()
    try:
        from medtorch.slicer import views

        reason = views.rendering_unavailable()
    except ImportError as exc:
        reason = str(exc)
    notes = [line for line in html.splitlines() if "are not in this report" in line]
    if reason is None:
        from PIL import Image

        assert not notes
        for case in cases:
            name = f"figures/case_{case}_3d.png"
            assert f'src="{name}"' in html, name
            with Image.open(out / name) as im:
                assert im.size[0] > 2 * 200 and np.asarray(im.convert("L")).std() > 10, name
    else:
        assert len(notes) == 1 and reason in notes[0], notes
        assert "_3d.png" not in html


def test_fuse_eval_report_without_rendering_says_so(tmp_path, monkeypatch):
    from medtorch.slicer import views

    monkeypatch.setenv(views.NO_RENDER_ENV, "1")
    geom = oblique_geometry(size=(20, 18, 12))
    write_volume(blob_phantom(geom, seed=0), tmp_path / "t1_0.nrrd")
    write_volume(blob_phantom(geom, noise=3.0, seed=1), tmp_path / "ct_0.nrrd")
    (tmp_path / "pairs.csv").write_text("fixed,moving,modality\nt1_0.nrrd,ct_0.nrrd,CT\n")
    out = tmp_path / "eval"
    assert main(["fuse-eval", "--pairs", str(tmp_path / "pairs.csv"), "--methods", "average", "--out", str(out), "-q",
                 "--device", "cpu"]) == 0
    _check_3d_renders(out, ["ct_0"])
    assert "rendering is turned off (MEDTORCH_NO_RENDER=1)" in (out / "report.html").read_text()
    assert (out / "figures" / "case_ct_0.png").is_file()  # the matplotlib figure stays


def test_fuse_eval_refuses_pairs_of_different_shapes(tmp_path, capsys):
    import SimpleITK as sitk

    for sub, shape in (("MRI", (30, 30)), ("CT", (30, 32))):
        (tmp_path / sub).mkdir()
        sitk.WriteImage(sitk.GetImageFromArray(np.zeros(shape, np.uint8)), str(tmp_path / sub / "a.png"))
    assert main(["fuse-eval", "--pairs", str(tmp_path), "--methods", "average", "--out", str(tmp_path / "o")]) == 2
    assert "differ in shape" in capsys.readouterr().err


def test_fuse_and_metrics_operations_in_a_background_process(files):
    from medtorch.runtime import BackgroundJob, run_operation

    d, fixed = files
    moving = read_volume(d / "moving.nii.gz")
    params = {"method": "laplacian", "metrics": "3d", "device": "cpu"}
    blocking = run_operation("fuse", {"fixed": fixed, "moving": moving}, params)
    background = BackgroundJob("fuse", {"fixed": fixed, "moving": moving}, params).start().wait(timeout=300)
    np.testing.assert_allclose(background.volumes["fused"].array, blocking.volumes["fused"].array, atol=1e-6)
    assert background.values["metrics"]["QABF"] == pytest.approx(blocking.values["metrics"]["QABF"], abs=1e-9)
    scores = run_operation("fusion_metrics", {"a": blocking.volumes["fixed_prepared"],
                                              "b": blocking.volumes["moving_prepared"],
                                              "fused": blocking.volumes["fused"]}, {"per_slice": True})
    assert scores.values["QABF"] == pytest.approx(blocking.values["metrics"]["QABF"], abs=1e-12)
    assert len(scores.values["slices"]["QABF"]) == fixed.array.shape[0]


def test_help_has_examples(capsys):
    for cmd in ("fuse", "fuse-eval"):
        with pytest.raises(SystemExit) as exc:
            main([cmd, "--help"])
        assert exc.value.code == 0
        assert f"medtorch {cmd}" in capsys.readouterr().out
