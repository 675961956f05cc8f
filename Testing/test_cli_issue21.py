"""Issue 21's remaining parts, run as a user runs the command line: results that ``-q`` keeps,
hints that name what the user can do there (never a Python function), a 4D file's frame through
``medtorch convert --frame``, the help's rough cost per method from one table, the summed SSIM
named so, a greyscale PNG written grey, a masked image's noise level, and collab's parameter
search scaled to the volume."""

from __future__ import annotations

import argparse
import ast
import re
from pathlib import Path

import numpy as np
import pytest

from medtorch.cli import build_parser, main
from medtorch.io import read_volume, write_volume
from medtorch.volume import Geometry, Volume

REPO = Path(__file__).resolve().parent.parent


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


# -- part 6: -q silences progress and logs, never the result a command exists to print -------------------------


def test_seg_metrics_quiet_still_prints_the_metrics(tmp_path, capsys):
    g = Geometry((20, 20, 12))
    a = np.zeros(g.shape_zyx, np.uint8)
    a[3:9, 5:15, 5:15] = 1
    b = np.zeros_like(a)
    b[4:9, 5:16, 5:15] = 1
    write_volume(Volume(a, g, "label"), tmp_path / "pred.nrrd")
    write_volume(Volume(b, g, "label"), tmp_path / "ref.nrrd")
    assert main(["seg-metrics", "--pred", str(tmp_path / "pred.nrrd"), "--ref", str(tmp_path / "ref.nrrd"), "-q"]) == 0
    out, err = capsys.readouterr()
    assert "Dice" in out and err == ""
    dice = 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())
    assert f"{dice:.4f}" in out


# -- part 5: every hint names something the user can do at that place ----------------------------------------

#: Hints reached only by a Python caller (a Python API's own argument checks, the memory-map API):
#: there, naming a Python function is what the user can do.
PYTHON_ONLY = {
    "medtorch/registration/api.py": "register() called with something that is not a Volume",
    "medtorch/segment/metrics.py": "segmentation_metrics() called with something that is not a Volume",
    "medtorch/io/raw.py": "the memory-map API (medtorch.io.raw), which no command uses",
}
# Python code in a hint: a dotted API, a call, or an import statement ("import it" and the CLI's
# "medtorch models import" are a user's words)
_PY_API = re.compile(r"\bmedtorch\.[a-z_]+\.[a-z_]+|\b[a-z_]+\.[a-z_]+\(|\b(torch|np|sitk|pywt)\.[a-z_]+"
                     r"|\bfrom [a-z_][a-z_.]* import \w|\bimport (torch|numpy|SimpleITK|medtorch|slicer|monai|itk|pywt)\b")


def _hints() -> list[tuple[str, int, str]]:
    found = []
    for path in sorted((REPO / "medtorch").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            if name in ("MedTorchInputError", "OutOfMemoryBudget") and len(node.args) >= 2:
                text = ast.unparse(node.args[1])
                found.append((rel, node.lineno, re.sub(r"\{[^}]*\}", "", text)))
    return found


def test_no_hint_names_a_python_function():
    for code in ("from medtorch.segment import seeded", "import torch first", "call medtorch.io.read_volume",
                 "use np.float32", "run seeded_segment.run("):
        assert _PY_API.search(code), code  # the pattern catches Python code
    for words in ("import it (medtorch models import PACK.zip)", "import a model pack first"):
        assert not _PY_API.search(words), words  # and leaves a user's words alone
    hints = _hints()
    assert len(hints) > 300  # the scan finds the hints
    bad = [f"{rel}:{line}: {text}" for rel, line, text in hints if _PY_API.search(text) and rel not in PYTHON_ONLY
           and "slicer.util.pip_install" not in text]  # Slicer's own Python console: a Slicer place
    assert not bad, "\n".join(bad)


# -- a 4D file: its hint names a command, and the command writes one frame ---------------------------------------


def test_a_4d_file_is_refused_with_a_command_that_takes_one_frame(tmp_path, capsys):
    import SimpleITK as sitk

    frames = np.stack([np.full((6, 7, 8), 10.0 * (t + 1), np.float32) for t in range(3)])
    img = sitk.JoinSeries([sitk.GetImageFromArray(f) for f in frames])
    img.SetSpacing((1.5, 1.5, 2.0, 1.0))
    sitk.WriteImage(img, str(tmp_path / "bold.nii.gz"))
    assert main(["denoise", "--in", str(tmp_path / "bold.nii.gz"), "--out", str(tmp_path / "x.nrrd")]) == 2
    err = capsys.readouterr().err
    assert "is 4D (3 frames)" in err and "'medtorch convert --in bold.nii.gz --frame N --out frame.nii.gz'" in err
    assert "(N from 0 to 2)" in err
    assert main(["convert", "--in", str(tmp_path / "bold.nii.gz"), "--frame", "2", "--out",
                 str(tmp_path / "f2.nii.gz"), "-q"]) == 0
    f2 = read_volume(tmp_path / "f2.nii.gz")
    assert f2.array.shape == (6, 7, 8) and np.all(f2.array == 30.0)
    np.testing.assert_allclose(f2.spacing, (1.5, 1.5, 2.0))
    assert main(["convert", "--in", str(tmp_path / "bold.nii.gz"), "--frame", "3", "--out",
                 str(tmp_path / "f3.nii.gz")]) == 2
    assert "give --frame from 0 to 2" in capsys.readouterr().err
    assert not (tmp_path / "f3.nii.gz").exists()


# -- part 7: the summed SSIM is named so; help shows each default once ------------------------------------------


def test_fuse_metrics_name_the_summed_ssim(tmp_path, capsys):
    import json

    from medtorch.phantoms import blob_phantom, oblique_geometry

    geom = oblique_geometry(size=(24, 22, 16))
    write_volume(blob_phantom(geom, noise=3.0, seed=0), tmp_path / "a.nrrd")
    write_volume(blob_phantom(geom, noise=3.0, seed=1), tmp_path / "b.nrrd")
    assert main(["fuse", "--fixed", str(tmp_path / "a.nrrd"), "--moving", str(tmp_path / "b.nrrd"),
                 "--assume-aligned", "--out", str(tmp_path / "f.nrrd"), "--metrics", str(tmp_path / "m.json")]) == 0
    out = capsys.readouterr().out
    assert "SSIM_sum " in out and "SSIM " not in out.replace("SSIM_sum ", "")
    metrics = json.loads((tmp_path / "m.json").read_text())["metrics"]
    assert "SSIM_sum" in metrics and "SSIM" not in metrics and 0.0 < metrics["SSIM_sum"] <= 2.0


def test_help_states_each_default_once():
    for name, sub in _subparsers().items():
        formatter = sub._get_formatter()
        for action in sub._actions:
            if not action.help or action.help == argparse.SUPPRESS:
                continue
            text = formatter._expand_help(action)
            own = action.help.replace("%(default)s", "").lower().count("default")  # the help's own words
            added = text.count("(default: ") - action.help.count("(default: ")  # what the formatter appended
            assert own + added <= 1, (name, action.dest, text)


def test_a_greyscale_png_stays_greyscale(tmp_path):
    import SimpleITK as sitk

    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        sitk.WriteImage(sitk.GetImageFromArray(rng.integers(0, 255, (32, 40), dtype=np.uint8)),
                        str(tmp_path / f"{name}.png"))
    assert main(["fuse", "--fixed", str(tmp_path / "a.png"), "--moving", str(tmp_path / "b.png"), "--assume-aligned",
                 "--out", str(tmp_path / "f.png"), "-q"]) == 0
    assert main(["convert", "--in", str(tmp_path / "a.png"), "--out", str(tmp_path / "c.png"), "-q"]) == 0
    for out in ("f.png", "c.png"):
        img = sitk.ReadImage(str(tmp_path / out))
        assert img.GetNumberOfComponentsPerPixel() == 1, out  # grey, not RGB(A)
        assert img.GetSize() == (40, 32)


# -- part 4: a masked image's noise level, and collab's search scaled to the volume ------------------------------


def test_a_masked_image_gets_a_noise_level_and_is_denoised(tmp_path, capsys):
    """A zero-filled background (a masked MRI) holds no noise: the level is measured in the
    tissue (it was 0, and nlm then failed with an error about h)."""
    from medtorch.enhance.noise import estimate_noise

    g = Geometry((40, 40, 24), spacing=(2.0, 2.0, 2.2))
    rng = np.random.default_rng(1)
    zz, yy, xx = np.mgrid[:24, :40, :40]
    inside = ((xx - 20) ** 2 + (yy - 20) ** 2) / 15**2 + ((zz - 12) / 10.0) ** 2 < 1
    a = np.where(inside, np.abs(400.0 + rng.normal(0, 8.0, inside.shape)), 0.0).astype(np.float32)
    est = estimate_noise(a)
    assert est.model == "rician" and 5.0 < est.sigma < 12.0 and "zero-filled" in est.method
    write_volume(Volume(a, g, "scalar"), tmp_path / "masked.nii.gz")
    assert main(["denoise", "--in", str(tmp_path / "masked.nii.gz"), "--out", str(tmp_path / "d.nrrd"),
                 "--method", "nlm"]) == 0
    assert "noise sigma" in capsys.readouterr().out
    d = read_volume(tmp_path / "d.nrrd").array
    assert d[inside].std() < a[inside].std()


def test_collab_parameter_search_scales_with_the_volume():
    """SURE's blocks hold at most an eighth of a small volume (a 56 x 56 x 48 crop searched
    eight overlapping 32^3 blocks, 1.7 times the crop), and are as before on a large one."""
    import torch

    from medtorch.enhance.selfsup_denoise import SURE_BLOCK, _sure_blocks

    def voxels(shape):
        blocks = _sure_blocks(torch.ones(shape), 0.01)
        return sum(int(np.prod([s.stop - s.start for s in b])) for b in blocks)

    small = (48, 56, 56)
    assert voxels(small) <= np.prod(small) / 8 + 1
    assert voxels((128, 128, 128)) == 8 * SURE_BLOCK**3


# -- part 8: selfsup against collab on real MRI noise; collab the default, and why ----------------------------


def test_collab_is_the_default_and_the_real_noise_measurement_says_why(capsys):
    """docs/benchmarks/denoise_real.md is its benchmark's output (rewritten here from its JSON):
    on a real repeated EPI, selfsup's error is not distinguishable from collab's at many times the
    time, gaussian's is far higher; so collab is the default of the command, the study and Slicer."""
    import json

    from benchmarks.denoise_real.__main__ import markdown
    from medtorch.ops.enhance import DenoiseRequest

    raw = json.loads((REPO / "docs" / "benchmarks" / "denoise_real.json").read_text())
    assert markdown(raw) == (REPO / "docs" / "benchmarks" / "denoise_real.md").read_text()
    res = raw["results"]
    assert abs(res["selfsup"]["minus_collab"]) <= 2 * res["selfsup"]["minus_collab_se"]
    assert res["gaussian 1 mm"]["repeat_mse"] > res["noisy (no denoising)"]["repeat_mse"] > res["collab"]["repeat_mse"]
    assert DenoiseRequest.method == "collab"
    with pytest.raises(SystemExit):
        main(["denoise", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "collab (the default)" in text and "docs/benchmarks/denoise_real.md" in text
