"""The seeded segmentation's verdict (medtorch.segment.seeded_verdict): each check on made-up
results, then on real runs: a good phantom run passes, a run whose region cuts the tumor off
fails, and the CLI says so on stderr and in --info."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from medtorch.segment.seeded import SeededOptions, seeded_segment
from medtorch.segment.seeded_verdict import seeded_verdict
from medtorch.segment.tumor_phantom import make_tumor_phantom, stroke_seeds, synthetic_tissue
from medtorch.volume import Geometry, Volume

SHAPE = (40, 40, 40)


def _ball(c, r):
    z, y, x = np.ogrid[:SHAPE[0], :SHAPE[1], :SHAPE[2]]
    return (z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 <= r * r


def _seeds(tumor: np.ndarray) -> np.ndarray:
    s = np.zeros(SHAPE, np.uint8)
    s[ndimage.binary_erosion(tumor, iterations=3)] = 1
    shell = ndimage.binary_dilation(tumor, iterations=4) & ~ndimage.binary_dilation(tumor, iterations=2)
    s[shell] = 2
    return s


REGION = ((5, 5, 5), (35, 35, 35))


def test_a_tumor_inside_its_region_passes():
    t = _ball((20, 20, 20), 7)
    v = seeded_verdict(t.astype(np.uint8), _seeds(t), REGION, 2)
    assert v.status == "pass", v.summary()
    assert {c.name for c in v.checks} == {"empty", "region_border", "disconnected"}
    assert v.check("region_border").value == 0.0


def test_a_tumor_filling_the_region_fails_and_says_what_to_do():
    t = np.zeros(SHAPE, bool)
    t[5:35, 5:35, 5:35] = True  # the whole region: ran into everything
    v = seeded_verdict(t.astype(np.uint8), _seeds(_ball((20, 20, 20), 7)), REGION, 2)
    c = v.check("region_border")
    assert v.status == "fail" and c.status == "fail" and c.value == 1.0
    assert "larger box" in c.message and "background strokes" in c.message


def test_the_volume_edge_is_not_the_region_border():
    """A region that reaches the volume's edge: a tumor touching the edge is no sign of anything."""
    t = _ball((20, 20, 0), 7)
    v = seeded_verdict(t.astype(np.uint8), _seeds(t), ((5, 5, 0), (35, 35, 35)), 2)
    assert v.check("region_border").status == "pass"
    v = seeded_verdict(t.astype(np.uint8), _seeds(t), ((5, 5, 1), (35, 35, 35)), 2)
    assert v.check("region_border").status != "pass"


def test_tumor_away_from_the_strokes_warns():
    t = _ball((20, 20, 20), 6)
    far = _ball((10, 10, 30), 5)
    v = seeded_verdict((t | far).astype(np.uint8), _seeds(t), REGION, 2)
    c = v.check("disconnected")
    r = tuple(slice(a, b) for a, b in zip(*REGION))
    assert c.status == "warn" and c.value == pytest.approx(far[r].sum() / (t | far)[r].sum())
    assert v.status == "warn"


def test_nothing_beyond_the_strokes_fails():
    t = _ball((20, 20, 20), 7)
    s = _seeds(t)
    v = seeded_verdict((s == 1).astype(np.uint8), s, REGION, 2)
    assert v.check("empty").status == "fail" and v.status == "fail"
    assert "paint" in v.check("empty").message


@pytest.fixture(scope="module")
def phantom():
    geom = Geometry((60, 60, 52), origin=(-45.0, -45.0, -39.0), spacing=(1.5, 1.5, 1.5))
    ph = make_tumor_phantom(synthetic_tissue(geom, seed=2), noise=0.06, seed=5, core_radius_mm=6.0, rim_mm=3.0,
                            oedema_radius_mm=13.0)
    wt = Volume((ph.truth.array > 0).astype(np.uint8), ph.truth.geometry, "label")
    return ph, wt, stroke_seeds(wt, classes=[1], seed=0)


def _one_slice(wt, seeds):
    zc = int(round(ndimage.center_of_mass(wt.array > 0)[0]))
    flat = np.zeros_like(seeds.array)
    flat[zc] = seeds.array[zc]
    return seeds.with_array(flat)


def test_real_runs_a_good_one_passes_a_cut_off_one_fails(phantom):
    ph, wt, seeds = phantom
    good = seeded_segment([ph.channels["FLAIR"]], seeds)
    assert good.verdict is not None and good.verdict.status == "pass", good.verdict.summary()
    # strokes on one slice in a region a few slices thick: the region cuts the tumor off
    cut = seeded_segment([ph.channels["FLAIR"]], _one_slice(wt, seeds), SeededOptions(region_aspect=0.0))
    assert cut.verdict.check("region_border").status in ("warn", "fail"), cut.verdict.summary()
    assert cut.verdict.status != "pass"
    assert "verdict" in cut.seconds


def test_cli_says_so_on_stderr_and_in_info(phantom, tmp_path, capsys):
    from medtorch.cli import main
    from medtorch.io import write_volume

    ph, wt, seeds = phantom
    write_volume(ph.channels["FLAIR"], tmp_path / "flair.nii.gz")
    write_volume(_one_slice(wt, seeds), tmp_path / "seeds.nrrd")
    rc = main(["segment", "--in", str(tmp_path / "flair.nii.gz"), "--seeds", str(tmp_path / "seeds.nrrd"),
               "--out", str(tmp_path / "seg.nrrd"), "--region-aspect", "0", "--info", str(tmp_path / "i.json"),
               "--quiet"])
    assert rc == 0  # the label is written: the user decides
    err = capsys.readouterr().err
    assert "segmentation verdict: " in err and "region_border" in err
    info = json.loads((tmp_path / "i.json").read_text())
    assert info["verdict"]["status"] in ("warn", "fail") and "region_border" in info["verdict"]["reasons"]
