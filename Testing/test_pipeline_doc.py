"""docs/pipeline.md: its key tables are the schema's own (generated), its YAML examples run, and
a study is checked whole before anything runs (issue 21, part 3)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import ndimage

from medtorch.cli import main
from medtorch.io import write_volume
from medtorch.phantoms import blob_phantom, lesion_mask, oblique_geometry
from medtorch.pipeline.config import parse_config
from medtorch.pipeline.schema import reference_markdown
from medtorch.volume import Volume

DOC = Path(__file__).resolve().parents[1] / "docs" / "pipeline.md"


def _examples() -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)


@pytest.fixture
def scans(tmp_path):
    g = oblique_geometry(size=(28, 26, 14))
    write_volume(blob_phantom(g, noise=3.0, seed=1), tmp_path / "fixed.nii.gz")
    write_volume(blob_phantom(g, noise=3.0, seed=2, world_shift=(1.5, -1.0, 0.5)), tmp_path / "moving.nii.gz")
    lesion = lesion_mask(g)
    seeds = np.zeros(lesion.shape, np.uint8)
    seeds[ndimage.binary_erosion(lesion, iterations=1)] = 1
    ring = ndimage.binary_dilation(lesion, iterations=4) & ~ndimage.binary_dilation(lesion, iterations=2)
    seeds[ring] = 2
    write_volume(Volume(seeds, g, "label"), tmp_path / "seeds.nrrd")
    return tmp_path


def test_the_key_tables_are_generated_from_the_schema():
    assert reference_markdown() in DOC.read_text(encoding="utf-8"), \
        "docs/pipeline.md is stale: regenerate its tables with python -m medtorch.pipeline.schema"


@pytest.mark.parametrize("index", range(2))
def test_every_example_runs(index, scans):
    examples = _examples()
    assert len(examples) == 2
    cfg = scans / "study.yaml"
    cfg.write_text(examples[index])
    assert main(["pipeline", "--config", str(cfg), "-q"]) == 0
    study = yaml.safe_load(examples[index])
    rec = json.loads((scans / study["output_dir"] / "run.json").read_text())
    assert rec["status"] == "done" and set(rec["timings_s"]) >= set(study["steps"])


@pytest.mark.parametrize("steps, words", [
    ({"segment": {"method": "seeded", "seeds": "seeds.nrrd", "margin": 5}}, ["step segment", "margin", "margin_mm"]),
    ({"denoise": {"method": "gaussian", "iterations": 3}}, ["step denoise", "iterations", "gaussian method"]),
    ({"fuse": {"method": "wavelets"}}, ["step fuse", "'wavelets'", "laplacian"]),
    ({"register": {"mode": "similarity"}}, ["step register", "mode", "rigid"]),
    ({"register": {"iteration": 3}}, ["step register", "iteration", "iterations"]),
    ({"superres": {"factor": 2, "spacing": [1, 1, 1]}}, ["step superres", "exactly one of factor and spacing"]),
    ({"segment": {"method": "seeded", "seeds": "nowhere.nrrd"}}, ["step segment", "nowhere.nrrd"]),
])
def test_a_bad_key_in_any_step_is_refused_before_anything_runs(steps, words, scans, capsys):
    """Earlier steps (denoise first) must not have written anything when a later step's key is bad."""
    all_steps = {"denoise": {"method": "gaussian"}, **steps}
    cfg = scans / "study.yaml"
    cfg.write_text(yaml.safe_dump({"study": "s", "output_dir": "out", "inputs": {"fixed": "fixed.nii.gz",
                                                                             "moving": "moving.nii.gz"},
                                   "steps": all_steps}))
    assert main(["pipeline", "--config", str(cfg), "-q"]) == 2
    err = capsys.readouterr().err
    for w in words:
        assert w in err, err
    assert not (scans / "out").exists() or not any((scans / "out").rglob("*.nrrd"))


def test_seed_and_model_paths_are_relative_to_the_yaml(scans):
    c = parse_config({"inputs": {"fixed": "fixed.nii.gz"},
                      "steps": {"segment": {"method": "seeded", "seeds": "seeds.nrrd"}}}, scans)
    assert Path(c.steps["segment"]["seeds"]) == (scans / "seeds.nrrd").resolve()
