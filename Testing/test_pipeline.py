"""``medtorch pipeline`` on NIfTI and on a DICOM folder made from pydicom's files, and
``medtorch batch`` on a Dask LocalCluster of 2 workers: isolation of a failing case and resume."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from medtorch.cli import main
from medtorch.errors import MedTorchInputError
from medtorch.io import read_volume, write_volume
from medtorch.phantoms import blob_phantom, lesion_mask, oblique_geometry
from medtorch.pipeline import load_config, run_pipeline


def _study(tmp_path: Path, steps: dict, fixed: str = "fixed.nii.gz", moving: str | None = "moving.nii.gz") -> Path:
    cfg = {"study": "p001", "output_dir": "out", "seed": 3, "inputs": {"fixed": fixed}, "steps": steps}
    if moving:
        cfg["inputs"]["moving"] = moving
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture
def nifti_pair(tmp_path):
    geom = oblique_geometry()
    write_volume(blob_phantom(geom, noise=4.0, seed=1), tmp_path / "fixed.nii.gz")
    write_volume(blob_phantom(geom, noise=4.0, seed=2), tmp_path / "moving.nii.gz")
    return geom


def test_pipeline_on_nifti_writes_outputs_and_run_record(tmp_path, nifti_pair):
    path = _study(tmp_path, {"fuse": {"method": "average", "weight": 0.4},
                             "denoise": {"input": "fixed", "method": "gaussian", "strength": 1.0},
                             "segment": {"input": "fixed", "method": "threshold", "lower": 150}})
    before = hashlib.sha256((tmp_path / "fixed.nii.gz").read_bytes()).hexdigest()
    assert main(["pipeline", "--config", str(path), "-q"]) == 0
    out = tmp_path / "out"
    text = (out / "run.json").read_text()

    def no_constants(c):
        raise AssertionError(f"run.json is not strict JSON: {c}")

    rec = json.loads(text, parse_constant=no_constants)
    assert rec["status"] == "done" and rec["seed"] == 3 and rec["study"] == "p001"
    assert {"medtorch", "torch", "SimpleITK", "numpy"} <= set(rec["versions"])
    assert rec["device"]["device"] == "cpu"
    assert set(rec["timings_s"]) == {"read_inputs", "fuse", "denoise", "segment"}
    assert rec["parameters"]["fuse"]["weight"] == 0.4
    for key in ("fused", "denoised", "segmentation"):
        entry = rec["outputs"][key]
        assert hashlib.sha256(Path(entry["path"]).read_bytes()).hexdigest() == entry["sha256"]
        assert read_volume(entry["path"]).geometry.isclose(nifti_pair, atol=1e-4)
    seg = read_volume(rec["outputs"]["segmentation"]["path"])
    truth = lesion_mask(nifti_pair)
    assert 2 * np.logical_and(seg.array > 0, truth).sum() / ((seg.array > 0).sum() + truth.sum()) > 0.8
    assert rec["values"]["segment"]["volumes_ml"]["1"] > 0
    assert hashlib.sha256((tmp_path / "fixed.nii.gz").read_bytes()).hexdigest() == before  # input untouched
    assert not [p for p in out.rglob("*") if ".part" in p.name]  # no temporary files left


def test_pipeline_on_a_dicom_folder(tmp_path):
    from test_dicom import make_series

    files, uid = make_series(tmp_path / "dicom", n=8, step=2.0)
    path = _study(tmp_path, {"denoise": {"method": "anisotropic", "strength": 1.0, "iterations": 2},
                             "segment": {"method": "threshold", "lower": 100}}, fixed="dicom", moving=None)
    config = load_config(path)
    rec = run_pipeline(config)
    assert rec.status == "done"
    dicom_vol = read_volume(tmp_path / "dicom")
    den = read_volume(rec.record["outputs"]["denoised"]["path"])
    assert den.geometry.isclose(dicom_vol.geometry, atol=1e-4)
    assert den.array.dtype == np.float32
    assert rec.record["config"]["inputs"]["fixed"] == str((tmp_path / "dicom").resolve())


def test_bad_configuration_is_a_clear_error(tmp_path, nifti_pair):
    with pytest.raises(MedTorchInputError, match="unknown steps"):
        load_config(_study(tmp_path, {"sharpen": {}}))
    with pytest.raises(MedTorchInputError, match="does not exist"):
        load_config(_study(tmp_path, {"denoise": {}}, fixed="nope.nii.gz"))
    with pytest.raises(MedTorchInputError, match="need a moving volume"):
        load_config(_study(tmp_path, {"fuse": {}}, moving=None))
    (tmp_path / "bad.yaml").write_text("steps: [\n")
    with pytest.raises(MedTorchInputError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")


def test_failing_step_records_the_error(tmp_path, nifti_pair):
    path = _study(tmp_path, {"segment": {"method": "threshold", "lower": 99999}})
    assert main(["pipeline", "--config", str(path), "-q"]) == 2
    rec = json.loads((tmp_path / "out" / "run.json").read_text())
    assert rec["status"] == "failed" and "no voxel" in rec["error"]["message"]


def test_batch_on_local_cluster_isolates_failures_and_resumes(tmp_path, capsys):
    geom = oblique_geometry(size=(24, 22, 16))
    rows = ["case_id,fixed,moving"]
    for i in range(3):
        write_volume(blob_phantom(geom, noise=3.0, seed=i), tmp_path / f"f{i}.nrrd")
        write_volume(blob_phantom(geom, noise=3.0, seed=10 + i), tmp_path / f"m{i}.nrrd")
        rows.append(f"c{i},f{i}.nrrd,m{i}.nrrd")
    (tmp_path / "broken.nrrd").write_text("not an image")
    rows.append("bad,broken.nrrd,m0.nrrd")
    (tmp_path / "cases.csv").write_text("\n".join(rows) + "\n")
    cfg = tmp_path / "study.yaml"
    cfg.write_text(yaml.safe_dump({"inputs": {"fixed": "f0.nrrd", "moving": "m0.nrrd"},
                                   "steps": {"fuse": {"method": "average"},
                                             "denoise": {"method": "gaussian", "strength": 1.0}}}))
    out = tmp_path / "cohort"
    args = ["batch", "--manifest", str(tmp_path / "cases.csv"), "--config", str(cfg), "--out", str(out),
            "--workers", "2", "-q"]
    assert main(args) == 4  # one case failed, the others went on: the batch's own exit status
    err = capsys.readouterr().err  # a failed case is named on stderr, with -q too
    assert "medtorch batch: case bad failed: " in err and "could not be read" in err
    summary = {r["case_id"]: r for r in _csv(out / "summary.csv")}
    assert [summary[c]["status"] for c in ("c0", "c1", "c2")] == ["done"] * 3
    assert summary["bad"]["status"] == "failed" and "could not be read" in summary["bad"]["error"]
    assert {summary[c]["worker"] for c in ("c0", "c1", "c2")} <= {"0", "1"}
    mtime = {c: (out / c / "run.json").stat().st_mtime_ns for c in ("c0", "c1", "c2")}

    # an interrupted run: case c1 never finished
    (out / "c1" / "run.json").unlink()
    assert main(args) == 4
    summary = {r["case_id"]: r for r in _csv(out / "summary.csv")}
    assert summary["c0"]["status"] == summary["c2"]["status"] == "skipped (done)"
    assert summary["c1"]["status"] == "done"
    assert (out / "c0" / "run.json").stat().st_mtime_ns == mtime["c0"]
    assert (out / "c2" / "run.json").stat().st_mtime_ns == mtime["c2"]


def _csv(path):
    import csv

    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_pipeline_runs_every_step_register_fuse_denoise_superres_seeded(tmp_path):
    """All five steps in one study: the moving scan is shifted by a known vector, registration
    recovers it, fusion uses the transform, SR lands on the finer grid and seeded segmentation
    finds the lesion from a seed label map (last class = background)."""
    from scipy import ndimage

    from medtorch.volume import Volume

    geom = oblique_geometry(size=(40, 36, 24))
    shift = (3.0, -2.0, 1.5)
    write_volume(blob_phantom(geom, noise=2.0, seed=1), tmp_path / "fixed.nii.gz")
    write_volume(blob_phantom(geom, noise=2.0, seed=2, world_shift=shift), tmp_path / "moving.nii.gz")
    lesion = lesion_mask(geom)
    seeds = np.zeros(lesion.shape, np.uint8)
    seeds[ndimage.binary_erosion(lesion, iterations=2)] = 1
    ring = ndimage.binary_dilation(lesion, iterations=4) & ~ndimage.binary_dilation(lesion, iterations=2)
    seeds[ring] = 2
    write_volume(Volume(seeds, geom, "label"), tmp_path / "seeds.nrrd")
    path = _study(tmp_path, {
        "register": {"mode": "rigid", "metric": "mse"},
        "fuse": {"method": "gff"},
        "denoise": {"input": "fixed", "method": "gaussian", "strength": 1.0},
        "superres": {"input": "fixed", "method": "bspline", "factor": 2},
        "segment": {"input": "fixed", "method": "seeded", "seeds": str(tmp_path / "seeds.nrrd")},
    })
    assert main(["pipeline", "--config", str(path), "-q"]) == 0
    rec = json.loads((tmp_path / "out" / "run.json").read_text())
    assert rec["status"] == "done"
    assert set(rec["timings_s"]) == {"read_inputs", "register", "fuse", "denoise", "superres", "segment"}
    assert set(rec["verdicts"]) == {"register", "segment"}  # the registration's and the seeded segmentation's
    assert rec["verdict"] == max((v["status"] for v in rec["verdicts"].values()), key=["pass", "warn", "fail"].index)
    import SimpleITK as sitk

    tx = sitk.ReadTransform(rec["outputs"]["transform"]["path"])
    p = geom.center()
    np.testing.assert_allclose(np.array(tx.TransformPoint(tuple(float(v) for v in p))) - p, shift, atol=0.5)
    assert 0.0 < rec["values"]["fuse"]["QABF"] <= 1.0
    sr = read_volume(rec["outputs"]["superres"]["path"])
    assert sr.geometry.spacing[2] == pytest.approx(geom.spacing[2] / 2)
    seg = read_volume(rec["outputs"]["segmentation"]["path"]).array > 0
    assert 2 * np.logical_and(seg, lesion).sum() / (seg.sum() + lesion.sum()) > 0.8


def test_a_study_whose_output_is_its_input_is_refused_and_the_input_kept(tmp_path, nifti_pair):
    """The command line's rule in the pipeline too: an output never replaces an input."""
    (tmp_path / "out" / "enhance").mkdir(parents=True)
    src = tmp_path / "out" / "enhance" / "denoised_gaussian.nrrd"
    write_volume(read_volume(tmp_path / "fixed.nii.gz"), src)
    before = hashlib.sha256(src.read_bytes()).hexdigest()
    path = _study(tmp_path, {"denoise": {"input": "fixed", "method": "gaussian", "strength": 1.0}},
                  fixed="out/enhance/denoised_gaussian.nrrd", moving=None)
    assert main(["pipeline", "--config", str(path), "-q"]) != 0
    assert hashlib.sha256(src.read_bytes()).hexdigest() == before
    rec = json.loads((tmp_path / "out" / "run.json").read_text())
    assert rec["status"] != "done" and "would replace the input" in json.dumps(rec)


def test_batch_quiet_silences_dask_too(tmp_path):
    """``-q`` in a real process: Dask's INFO lines (33 of them before) are gone, the summary is written."""
    import subprocess
    import sys

    geom = oblique_geometry(size=(16, 14, 12))
    write_volume(blob_phantom(geom, noise=3.0, seed=0), tmp_path / "f0.nrrd")
    write_volume(blob_phantom(geom, noise=3.0, seed=1), tmp_path / "m0.nrrd")
    (tmp_path / "cases.csv").write_text("case_id,fixed,moving\nc0,f0.nrrd,m0.nrrd\n")
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({"inputs": {"fixed": "f0.nrrd", "moving": "m0.nrrd"},
                                                     "steps": {"fuse": {"method": "average"}}}))
    r = subprocess.run([sys.executable, "-m", "medtorch", "batch", "--manifest", "cases.csv", "--config", "s.yaml",
                        "--out", "o", "--workers", "1", "-q"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip() == "" and r.stdout.strip() == "", r.stderr
    assert (tmp_path / "o" / "summary.csv").exists()
