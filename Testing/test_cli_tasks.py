"""Command line, operations, background tasks and in-Slicer dependency handling."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from medtorch.cli import main
from medtorch.errors import Cancelled, MedTorchInputError
from medtorch.io import read_volume, write_volume
from medtorch.phantoms import blob_phantom, lesion_mask, oblique_geometry
from medtorch.progress import CancelToken
from medtorch.runtime import BackgroundJob, run_operation
from medtorch.transform_io import read_transform, write_affine


@pytest.fixture
def phantom_files(tmp_path):
    geom = oblique_geometry()
    fixed = blob_phantom(geom)
    moving = blob_phantom(geom, noise=6.0, seed=7)
    write_volume(fixed, tmp_path / "fixed.nrrd")
    write_volume(moving, tmp_path / "moving.nii.gz")
    return tmp_path, fixed, moving


def _psnr(a, ref):
    return 10 * np.log10(float(ref.max() - ref.min()) ** 2 / float(np.mean((a - ref) ** 2)))


def test_cli_fuse_writes_outputs_and_metrics(phantom_files, capsys):
    d, fixed, _ = phantom_files
    a = np.eye(4)
    a[:3, 3] = (1.0, 0.0, 0.0)
    write_affine(a, d / "t.tfm")
    rc = main(["fuse", "--fixed", str(d / "fixed.nrrd"), "--moving", str(d / "moving.nii.gz"), "--method", "average",
               "--transform", str(d / "t.tfm"), "--out", str(d / "fused.nrrd"), "--metrics", str(d / "m.json"), "-q"])
    assert rc == 0
    fused = read_volume(d / "fused.nrrd")
    assert fused.geometry.isclose(fixed.geometry, atol=1e-5)
    assert 0.0 <= fused.array.min() and fused.array.max() <= 1.0
    m = json.loads((d / "m.json").read_text())
    assert m["method"] == "average" and 0.9 < m["overlap_fraction"] <= 1.0


def test_cli_denoise_and_threshold(phantom_files):
    d, fixed, _ = phantom_files
    assert main(["denoise", "--in", str(d / "moving.nii.gz"), "--out", str(d / "den.nrrd"), "--method", "anisotropic",
                 "--strength", "1", "--iterations", "5", "--seed", "3", "-q"]) == 0
    den = read_volume(d / "den.nrrd")
    noisy = read_volume(d / "moving.nii.gz")
    assert _psnr(den.array, fixed.array) > _psnr(noisy.array, fixed.array) + 3
    assert main(["threshold-seg", "--in", str(d / "fixed.nrrd"), "--lower", "150", "--out", str(d / "seg.nrrd"), "-q"]) == 0
    seg = read_volume(d / "seg.nrrd")
    truth = lesion_mask(fixed.geometry)
    dice = 2 * np.logical_and(seg.array > 0, truth).sum() / ((seg.array > 0).sum() + truth.sum())
    assert dice > 0.85


def test_cli_user_error_is_a_message_not_a_traceback(tmp_path, capsys):
    (tmp_path / "broken.nrrd").write_text("not an image")
    rc = main(["denoise", "--in", str(tmp_path / "broken.nrrd"), "--out", str(tmp_path / "o.nrrd"), "-q"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "What to do" in err and "Traceback" not in err
    assert not (tmp_path / "o.nrrd").exists()


def test_cli_bad_roi_arguments(phantom_files, capsys):
    d, _, _ = phantom_files
    rc = main(["threshold-seg", "--in", str(d / "fixed.nrrd"), "--lower", "1", "--roi-center", "1,2,3", "--out",
               str(d / "s.nrrd")])
    assert rc == 2 and "go together" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["threshold-seg", "--in", "x", "--lower", "1", "--roi-center", "1,2", "--roi-size", "1,2,3", "--out", "y"])
    assert exc.value.code == 2


@pytest.mark.parametrize("command", ["demo", "fuse", "denoise", "threshold-seg", "info"])
def test_every_command_has_help_with_examples(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and f"medtorch {command}" in out and "--device" in out


def test_python_dash_m_and_console_script_are_the_same(tmp_path):
    out = subprocess.run([sys.executable, "-m", "medtorch", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("medtorch ")


def test_cli_info_prints_geometry(phantom_files, capsys):
    d, fixed, _ = phantom_files
    assert main(["info", str(d / "fixed.nrrd")]) == 0
    info = json.loads(capsys.readouterr().out)
    np.testing.assert_allclose(info["spacing_mm"], fixed.spacing)
    assert info["size_ijk"] == list(fixed.size)


def test_cli_ctrl_c_cancels_cleanly(tmp_path):
    """SIGINT during a long run: exit code 130, message, and no output file."""
    import signal

    geom = oblique_geometry(size=(96, 96, 80), spacing=(1.0, 1.0, 1.0))
    write_volume(blob_phantom(geom, noise=5.0), tmp_path / "big.nrrd")
    proc = subprocess.Popen([sys.executable, "-m", "medtorch", "denoise", "--in", str(tmp_path / "big.nrrd"),
                             "--out", str(tmp_path / "out.nrrd"), "--method", "anisotropic", "--iterations", "200"],
                            stderr=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stderr:  # wait until the filter is really running (progress is printed)
        seen.append(line)
        if "anisotropic" in line:
            break
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=30)
    err = "".join(seen) + rest
    assert proc.returncode == 130, err
    assert "cancelled" in err
    assert not (tmp_path / "out.nrrd").exists()
    assert not list(tmp_path.glob(".out*"))


def test_transform_files_round_trip(tmp_path):
    import SimpleITK as sitk

    a = np.eye(4)
    a[:3, :3] = np.array([[0.96, -0.2, 0.1], [0.21, 0.97, -0.05], [-0.09, 0.07, 0.99]])
    a[:3, 3] = (3.0, -2.0, 7.5)
    write_affine(a, tmp_path / "a.tfm")
    np.testing.assert_allclose(read_transform(tmp_path / "a.tfm"), a, atol=1e-10)
    p = (1.0, 2.0, 3.0)
    np.testing.assert_allclose(sitk.ReadTransform(str(tmp_path / "a.tfm")).TransformPoint(p), (a @ [*p, 1.0])[:3], atol=1e-12)
    euler = sitk.Euler3DTransform((5.0, 5.0, 5.0), 0.1, -0.2, 0.3, (1.0, 2.0, 3.0))
    sitk.WriteTransform(euler, str(tmp_path / "e.tfm"))
    m = read_transform(tmp_path / "e.tfm")
    np.testing.assert_allclose((m @ [*p, 1.0])[:3], euler.TransformPoint(p), atol=1e-9)


def test_run_operation_in_process_and_unknown():
    geom = oblique_geometry()
    res = run_operation("threshold", {"input": blob_phantom(geom)}, {"lower": 150.0})
    assert res.values["volume_ml"] > 0 and res.volumes["label"].kind == "label"
    with pytest.raises(MedTorchInputError):
        run_operation("nope", {}, {})


def test_operations_never_modify_inputs():
    geom = oblique_geometry()
    vol = blob_phantom(geom, noise=3.0)
    before = vol.array.copy()
    run_operation("denoise", {"input": vol}, {"method": "gaussian", "strength": 1.0})
    run_operation("blend", {"fixed": vol, "moving": vol}, {"weight": 0.5})
    run_operation("threshold", {"input": vol}, {"lower": 150.0})
    np.testing.assert_array_equal(vol.array, before)


def test_in_process_cancel_raises():
    geom = oblique_geometry(size=(64, 64, 48))
    token = CancelToken()
    calls = []

    def progress(f, m=""):
        calls.append(f)
        if f > 0.0:
            token.cancel()

    with pytest.raises(Cancelled):
        run_operation("denoise", {"input": blob_phantom(geom)}, {"method": "anisotropic", "iterations": 50},
                      progress, token)


def test_background_task_reports_input_errors_as_such():
    geom = oblique_geometry()
    task = BackgroundJob("threshold", {"input": blob_phantom(geom)}, {"lower": 9000.0}).start()
    with pytest.raises(MedTorchInputError) as exc:
        task.wait(timeout=120)
    assert "no voxel lies between" in str(exc.value)


def test_background_task_result_matches_in_process():
    geom = oblique_geometry()
    vol = blob_phantom(geom, noise=5.0, seed=9)
    seen = []
    task = BackgroundJob("denoise", {"input": vol}, {"method": "gaussian", "strength": 1.2},
                          progress=lambda f, m="": seen.append(f)).start()
    res = task.wait(timeout=120)
    ref = run_operation("denoise", {"input": vol}, {"method": "gaussian", "strength": 1.2})
    np.testing.assert_array_equal(res.volumes["output"].array, ref.volumes["output"].array)
    assert res.volumes["output"].geometry.isclose(geom, atol=1e-9)
    assert seen and max(seen) <= 1.0


# -- dependencies inside Slicer --------------------------------------------------------------


def test_requirements_files_are_parsed_and_satisfied():
    from medtorch.slicer.dependencies import missing_requirements, read_requirements

    repo = Path(__file__).resolve().parent.parent
    for module in ("FusionRegistration", "EnhanceSR", "SegmentTumor"):
        reqs = read_requirements(repo / module / "Resources" / "requirements.txt")
        assert reqs and all("torch" not in r for r in reqs)  # torch comes from the PyTorch extension
        assert missing_requirements(reqs) == []
    assert missing_requirements(["surely-not-installed-pkg>=1"]) == ["surely-not-installed-pkg>=1"]
    assert missing_requirements(["numpy>=999"]) == ["numpy>=999"]


def test_missing_package_asks_first_and_declining_is_a_clear_error(tmp_path, monkeypatch):
    from medtorch.slicer import dependencies

    req = tmp_path / "requirements.txt"
    req.write_text("# comment\nsurely-not-installed-pkg>=1\n")
    installed = []
    monkeypatch.setattr(dependencies, "_pip_install", lambda reqs, requester: installed.append(reqs))
    questions = []
    with pytest.raises(MedTorchInputError) as exc:
        dependencies.ensure_dependencies(req, "Test", ask=lambda q: questions.append(q) or False, with_torch=False)
    assert questions and "surely-not-installed-pkg" in questions[0]
    assert installed == [] and "What to do" in str(exc.value)
    dependencies.ensure_dependencies(req, "Test", ask=lambda q: True, with_torch=False)
    assert installed == [["surely-not-installed-pkg>=1"]]


def test_module_import_installs_nothing():
    """Importing a module file must not import torch/SimpleITK or install anything (Slicer must start)."""
    repo = Path(__file__).resolve().parent.parent
    code = (
        "import sys; sys.path[:0] = [%r, %r, %r]\n"
        "import slicer_testbed; slicer_testbed.install()\n"
        "before = set(sys.modules)\n"
        "import FusionRegistration, EnhanceSR, SegmentTumor\n"
        "new = set(sys.modules) - before\n"
        "heavy = [m for m in new if m.split('.')[0] in ('torch', 'SimpleITK', 'scipy', 'monai', 'pip')]\n"
        "print(heavy)\n"
    ) % (str(repo), str(repo / "Testing"), str(repo / "Testing"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
