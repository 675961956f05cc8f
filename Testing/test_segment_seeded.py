"""Seeded segmentation (geodesic competition, the default, and localized region competition) on
small tumor phantoms, its CLI and its operation: accuracy, kept class values, several channels,
incremental re-runs, geometry, bad input, distractors, missing background, a box as background."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from medtorch.errors import Cancelled, MedTorchInputError
from medtorch.progress import CancelToken
from medtorch.segment.metrics import dice
from medtorch.segment.seeded import SeededOptions, SeededSegmenter, box_sum, check_seeds, seeded_segment
from medtorch.segment.tumor_phantom import make_tumor_phantom, stroke_seeds, synthetic_tissue
from medtorch.volume import Geometry, Volume
from medtorch.phantoms import oblique_geometry


def _phantom(geom: Geometry, noise: float = 0.08, seed: int = 2):
    tissue = synthetic_tissue(geom, seed=1)
    return make_tumor_phantom(tissue, noise=noise, seed=seed, core_radius_mm=7.0, rim_mm=3.5, oedema_radius_mm=14.0)


@pytest.fixture(scope="module")
def case():
    """A 2-channel tumor phantom (FLAIR, T1c) at 10 % noise with stroke seeds (1 NCR, 2 ED, 3 ET, 4 bg)."""
    geom = Geometry((64, 64, 56), origin=(-47.25, -47.25, -41.25), spacing=(1.5, 1.5, 1.5))
    ph = _phantom(geom, noise=0.10)
    seeds = stroke_seeds(ph.truth, seed=0)
    return ph, seeds


def _wt(label: np.ndarray, truth: np.ndarray) -> float:
    return dice(label > 0, truth > 0)


def test_two_channel_phantom_is_segmented_with_class_values_kept(case):
    ph, seeds = case
    res = seeded_segment([ph.channels["FLAIR"], ph.channels["T1c"]], seeds)
    lab, truth = res.label.array, ph.truth.array
    assert res.label.geometry == ph.truth.geometry and res.label.kind == "label"
    assert res.classes == [1, 2, 3, 4] and res.background == 4
    assert set(np.unique(lab)) == {0, 1, 2, 3}  # background written as 0
    assert _wt(lab, truth) > 0.93
    assert dice(lab == 3, truth == 3) > 0.85  # enhancing rim
    assert dice(np.isin(lab, [1, 3]), np.isin(truth, [1, 3])) > 0.85  # tumor core
    # outside the segmented region everything is 0
    (z0, y0, x0), (z1, y1, x1) = res.region
    outside = np.ones(lab.shape, bool)
    outside[z0:z1, y0:y1, x0:x1] = False
    assert not lab[outside].any()
    # volumes as counted by hand
    for c in (1, 2, 3):
        assert res.voxel_counts[c] == int((lab == c).sum())
        assert res.volumes_ml[c] == pytest.approx((lab == c).sum() * 1.5 ** 3 / 1000.0)
    # seeds are kept as painted
    s = seeds.array
    for c in (1, 2, 3):
        assert np.all(lab[s == c] == c)
    assert np.all(lab[s == 4] == 0)


def test_regions_beat_the_seeds_own_class_models(case):
    """The region competition improves on classifying every voxel by the seeds' class models alone."""
    ph, seeds = case
    chans = [ph.channels["FLAIR"], ph.channels["T1c"]]
    plain = seeded_segment(chans, seeds, method="competition", iterations=0, keep_seed_connected=False).label.array
    full = seeded_segment(chans, seeds, method="competition").label.array
    assert _wt(full, ph.truth.array) > _wt(plain, ph.truth.array) + 0.01


def test_second_channel_is_used(case):
    """FLAIR alone hardly sees the enhancing rim; with T1c it is found."""
    ph, seeds = case
    one = seeded_segment([ph.channels["FLAIR"]], seeds).label.array
    two = seeded_segment([ph.channels["FLAIR"], ph.channels["T1c"]], seeds).label.array
    truth = ph.truth.array
    assert dice(two == 3, truth == 3) > dice(one == 3, truth == 3) + 0.05


def test_brats_2021_values_and_background_value(case):
    ph, seeds = case
    arr = seeds.array.copy()
    arr[seeds.array == 3] = 4  # ET = 4 (BraTS 2021)
    arr[seeds.array == 4] = 7  # background: the largest value
    res = seeded_segment([ph.channels["FLAIR"], ph.channels["T1c"]], seeds.with_array(arr))
    assert res.classes == [1, 2, 4, 7] and res.background == 7
    assert set(np.unique(res.label.array)) == {0, 1, 2, 4}


def test_same_seed_same_result(case):
    ph, seeds = case
    a = seeded_segment([ph.channels["FLAIR"]], seeds, seed=3).label.array
    b = seeded_segment([ph.channels["FLAIR"]], seeds, seed=3).label.array
    assert np.array_equal(a, b)
    assert seeded_segment([ph.channels["FLAIR"]], seeds, seed=3).label.metadata["seed"] == 3


def test_incremental_rerun_reuses_features_and_follows_the_edit(case):
    """Region competition: a re-run starts from the previous labels."""
    ph, seeds = case
    seg = SeededSegmenter([ph.channels["FLAIR"], ph.channels["T1c"]], SeededOptions(method="competition"))
    first = seg.segment(seeds)
    assert not first.incremental
    # the same seeds again: warm start from the previous labels, same answer
    again = seg.segment(seeds)
    assert again.incremental and again.iterations < first.iterations
    assert np.mean(again.label.array != first.label.array) < 1e-3
    # an edit: background painted over a block of oedema -> that block becomes background
    arr = seeds.array.copy()
    oed = np.argwhere((first.label.array == 2) & (ph.truth.array == 2))
    z, y, x = oed[len(oed) // 2]
    arr[z - 1:z + 2, y - 2:y + 3, x - 2:x + 3] = 4
    edited = seg.segment(seeds.with_array(arr))
    assert edited.incremental
    assert np.all(edited.label.array[z - 1:z + 2, y - 2:y + 3, x - 2:x + 3] == 0)
    assert edited.seconds["features"] < first.seconds["features"] + 0.05
    # a fresh run with the edited seeds agrees with the warm-started one almost everywhere
    fresh = seeded_segment([ph.channels["FLAIR"], ph.channels["T1c"]], seeds.with_array(arr),
                           method="competition").label.array
    assert np.mean(fresh != edited.label.array) < 0.01


def test_geodesic_rerun_reuses_features_and_equals_a_fresh_run(case):
    """Geodesic competition: an edit re-uses the region's features, follows the new stroke and
    gives exactly what a fresh run on the same region gives."""
    ph, seeds = case
    chans = [ph.channels["FLAIR"], ph.channels["T1c"]]
    seg = SeededSegmenter(chans)
    first = seg.segment(seeds)
    assert not first.incremental and "geodesic" in first.seconds
    arr = seeds.array.copy()
    oed = np.argwhere((first.label.array == 2) & (ph.truth.array == 2))
    z, y, x = oed[len(oed) // 2]
    arr[z - 1:z + 2, y - 2:y + 3, x - 2:x + 3] = 4
    edited = seg.segment(seeds.with_array(arr))
    assert edited.incremental and edited.region == first.region
    assert np.all(edited.label.array[z - 1:z + 2, y - 2:y + 3, x - 2:x + 3] == 0)
    assert np.array_equal(edited.label.array, seeded_segment(chans, seeds.with_array(arr)).label.array)


def test_oblique_anisotropic_grid_and_seeds_on_another_grid():
    geom = oblique_geometry(size=(56, 52, 36), spacing=(1.3, 1.4, 2.0), angles_deg=(10.0, -6.0, 15.0))
    ph = make_tumor_phantom(synthetic_tissue(geom, seed=3), noise=0.06, seed=4, core_radius_mm=7.0, rim_mm=3.5,
                            oedema_radius_mm=13.0)
    seeds = stroke_seeds(ph.truth, seed=1)
    res = seeded_segment([ph.channels["FLAIR"], ph.channels["T1c"]], seeds)
    assert res.label.geometry == geom
    assert _wt(res.label.array, ph.truth.array) > 0.85
    # the same seeds on a finer grid (as painted on another volume) are resampled onto the input grid
    from medtorch.resample import resample

    fine = Geometry((112, 104, 72), geom.origin - geom.direction @ (np.asarray(geom.spacing) / 4),
                    np.asarray(geom.spacing) / 2, geom.direction)
    seeds_fine = resample(seeds, fine, interpolation="nearest")
    res2 = seeded_segment([ph.channels["FLAIR"], ph.channels["T1c"]], seeds_fine)
    assert res2.label.geometry == geom
    assert dice(res2.label.array > 0, res.label.array > 0) > 0.95


def test_channels_on_other_grids_are_resampled_or_refused(case, caplog):
    ph, seeds = case
    flair, t1c = ph.channels["FLAIR"], ph.channels["T1c"]
    from medtorch.resample import resample

    # T1c on a coarser grid covering the same head: resampled onto the FLAIR grid, still works
    g = flair.geometry
    coarse = Geometry((48, 48, 42), g.origin, np.asarray(g.spacing) * 2.0 * 64 / 48 / 2.0, g.direction)
    t1c_coarse = resample(t1c, coarse, interpolation="linear")
    with caplog.at_level("WARNING", logger="medtorch"):
        res = seeded_segment([flair, t1c_coarse], seeds)
    assert "input volume 2 is on another grid" in caplog.text and "resampled (linear)" in caplog.text  # said so
    assert res.label.geometry == g
    assert _wt(res.label.array, ph.truth.array) > 0.9
    # a channel elsewhere in space: refused with a clear message
    far = Volume(t1c.array, Geometry(g.size, np.asarray(g.origin) + 500.0, g.spacing, g.direction))
    with pytest.raises(MedTorchInputError, match="covers only"):
        seeded_segment([flair, far], seeds)


@pytest.mark.parametrize("make, message", [
    (lambda s: np.zeros_like(s), "empty"),
    (lambda s: np.where(s > 0, 2, 0), "one class only"),
    (lambda s: np.where(s > 0, s, 0).astype(np.float32) + 0.5 * (s > 0), "fractional"),
    (lambda s: np.where(s == 4, -1, s.astype(np.int16)), "negative"),
    (lambda s: np.arange(s.size).reshape(s.shape) % 100, "not an image"),
])
def test_bad_seed_maps_are_refused_with_a_fix(case, make, message):
    ph, seeds = case
    bad = Volume(make(seeds.array), seeds.geometry, "label")
    with pytest.raises(MedTorchInputError) as err:
        seeded_segment([ph.channels["FLAIR"]], bad)
    text = str(err.value)
    assert message in text or message.replace(" only", "") in text
    assert "What to do" in text


def test_other_bad_input(case):
    ph, seeds = case
    with pytest.raises(MedTorchInputError, match="no input volume"):
        seeded_segment([], seeds)
    with pytest.raises(MedTorchInputError, match="radius_mm"):
        seeded_segment([ph.channels["FLAIR"]], seeds, radius_mm=0.0)
    with pytest.raises(MedTorchInputError, match="unknown seeded-segmentation setting"):
        seeded_segment([ph.channels["FLAIR"]], seeds, radius=3.0)
    nan = ph.channels["FLAIR"].array.copy()
    nan[0, 0, 0] = np.nan
    with pytest.raises(MedTorchInputError, match="NaN"):
        seeded_segment([ph.channels["FLAIR"].with_array(nan)], seeds)
    assert check_seeds(seeds) == ([1, 2, 3, 4], 4)


def test_inputs_are_not_modified(case):
    ph, seeds = case
    before = [ph.channels["FLAIR"].array.copy(), seeds.array.copy()]
    seeded_segment([ph.channels["FLAIR"]], seeds)
    assert np.array_equal(before[0], ph.channels["FLAIR"].array) and np.array_equal(before[1], seeds.array)


@pytest.mark.parametrize("method, where", [("geodesic", "paths of class 2"), ("competition", "iteration 2")])
def test_progress_and_cancel(case, method, where):
    ph, seeds = case
    seen: list[float] = []
    seeded_segment([ph.channels["FLAIR"]], seeds, method=method, progress=lambda f, m="": seen.append(f))
    assert seen and seen[-1] == 1.0 and all(0.0 <= f <= 1.0 for f in seen)
    cancel = CancelToken()
    calls = []

    def stop_in_the_middle(f: float, m: str = "") -> None:
        calls.append(m)
        if where in m:
            cancel.cancel()

    start = time.perf_counter()
    with pytest.raises(Cancelled):
        seeded_segment([ph.channels["FLAIR"]], seeds, method=method, progress=stop_in_the_middle, cancel=cancel)
    assert time.perf_counter() - start < 10.0
    assert any(where in m for m in calls)


def test_box_sum_matches_a_brute_force_window_sum():
    from scipy import ndimage

    x = torch.rand(3, 9, 10, 11, dtype=torch.float64)
    got = box_sum(x, (2, 1, 3)).numpy()
    ref = np.stack([ndimage.uniform_filter(a.numpy(), size=(5, 3, 7), mode="constant") * 105 for a in x])
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-10)


def test_region_box_limits_the_region(case):
    ph, seeds = case
    from medtorch.segment.threshold import Box

    g = ph.truth.geometry
    box = Box(g.center(), np.array([20.0, 20.0, 20.0]))
    res = seeded_segment([ph.channels["FLAIR"]], seeds, region_box=box)
    inside = box.mask(g)
    assert not res.label.array[~inside].any()
    far = Box(g.center() + 200.0, np.array([5.0, 5.0, 5.0]))
    with pytest.raises(MedTorchInputError, match="does not contain any voxel"):
        seeded_segment([ph.channels["FLAIR"]], seeds, region_box=far)


def test_region_of_an_oblique_box_matches_its_mask():
    """The region bounds, computed on the box's index-space bounding box only, equal the
    bounds of the box's mask on the whole grid (oblique grid, rotated boxes, clipped boxes)."""
    from scipy.spatial.transform import Rotation

    from medtorch.segment.seeded import _region_from_box
    from medtorch.segment.threshold import Box

    g = oblique_geometry(size=(30, 26, 20), spacing=(1.3, 1.1, 2.0), angles_deg=(10.0, -6.0, 15.0))
    rng = np.random.default_rng(0)
    checked = 0
    for t in range(12):
        box = Box(g.center() + rng.normal(0, 12, 3), rng.uniform(2, 18, 3), Rotation.random(random_state=t).as_matrix())
        idx = np.argwhere(box.mask(g))
        if len(idx) == 0:
            continue
        lo, hi = _region_from_box(box, g)
        assert np.array_equal(lo, idx.min(0)) and np.array_equal(hi, idx.max(0) + 1)
        checked += 1
    assert checked >= 8


# -- the operation and the command line ---------------------------------------------------------------


def test_seeded_operation_reports_volumes(case):
    from medtorch.runtime import run_operation

    ph, seeds = case
    res = run_operation("seeded", {"channel0": ph.channels["FLAIR"], "channel1": ph.channels["T1c"], "seeds": seeds},
                        {"smoothness": 0.5, "regions": {"WT": [1, 2, 3]}, "min_size_mm3": 20.0, "seed": 5})
    lab = res.volumes["label"].array
    vox_ml = 1.5 ** 3 / 1000.0
    for c in ("1", "2", "3"):
        assert res.values["volumes_ml"][c] == pytest.approx((lab == int(c)).sum() * vox_ml)
    assert res.values["regions_ml"]["WT"] == pytest.approx((lab > 0).sum() * vox_ml)
    assert res.values["seed"] == 5 and res.values["background"] == 4
    json.dumps(res.values)  # plain JSON, as a background task returns it


def test_cli_seeds_form(case, tmp_path):
    from medtorch.cli import main
    from medtorch.io import read_volume, write_volume

    ph, seeds = case
    write_volume(ph.channels["FLAIR"], tmp_path / "flair.nii.gz")
    write_volume(ph.channels["T1c"], tmp_path / "t1c.nrrd")
    write_volume(seeds, tmp_path / "seeds.nrrd")
    out = tmp_path / "seg.nrrd"
    rc = main(["segment", "--in", str(tmp_path / "flair.nii.gz"), "--in", str(tmp_path / "t1c.nrrd"),
               "--seeds", str(tmp_path / "seeds.nrrd"), "--out", str(out), "--names", "1=Necrosis,2=Edema,3=Enhancing",
               "--regions", "brats2023", "--volumes-csv", str(tmp_path / "v.csv"), "--info", str(tmp_path / "i.json"),
               "--quiet"])
    assert rc == 0
    lab = read_volume(out)
    # the contract: each class keeps its seed value, the last class (background, 4) is written as 0
    assert lab.geometry.isclose(ph.truth.geometry) and set(np.unique(lab.array)) == {0, 1, 2, 3}
    for c in (1, 2, 3):
        assert np.all(lab.array[seeds.array == c] == c)
    assert np.all(lab.array[seeds.array == 4] == 0)
    assert _wt(lab.array, ph.truth.array) > 0.93
    rows = (tmp_path / "v.csv").read_text().splitlines()
    assert rows[0] == "name,values,voxels,volume_ml" and rows[1].startswith("Necrosis,1,")
    wt = next(r for r in rows if r.startswith("WT,"))
    assert int(wt.split(",")[2]) == int((lab.array > 0).sum())
    info = json.loads((tmp_path / "i.json").read_text())
    assert info["seed"] == 0 and info["classes"] == [1, 2, 3, 4]


def test_cli_refuses_both_or_neither_form(case, tmp_path, capsys):
    from medtorch.cli import main
    from medtorch.io import write_volume

    ph, seeds = case
    write_volume(ph.channels["FLAIR"], tmp_path / "f.nrrd")
    assert main(["segment", "--in", str(tmp_path / "f.nrrd"), "--out", str(tmp_path / "o.nrrd")]) == 2
    assert "neither --seeds nor --model" in capsys.readouterr().err
    assert main(["segment", "--in", str(tmp_path / "f.nrrd"), "--seeds", "s.nrrd", "--model", "m",
                 "--out", str(tmp_path / "o.nrrd")]) == 2
    assert "both --seeds and --model" in capsys.readouterr().err
    one = seeds.with_array(np.where(seeds.array > 0, 1, 0).astype(np.uint8))
    write_volume(one, tmp_path / "one.nrrd")
    assert main(["segment", "--in", str(tmp_path / "f.nrrd"), "--seeds", str(tmp_path / "one.nrrd"),
                 "--out", str(tmp_path / "o.nrrd")]) == 2
    err = capsys.readouterr().err
    assert "one class only" in err and "Traceback" not in err
    assert not (tmp_path / "o.nrrd").exists()


def test_region_larger_than_the_memory_budget_is_refused_before_starting(case, monkeypatch):
    from medtorch.errors import OutOfMemoryBudget

    ph, seeds = case
    monkeypatch.setenv("MEDTORCH_MEMORY_BUDGET", "64K")
    with pytest.raises(OutOfMemoryBudget, match="MEDTORCH_MEMORY_BUDGET"):
        seeded_segment([ph.channels["FLAIR"], ph.channels["T1c"]], seeds)


def _rings_and_bridge(n: int = 64, ring_mm: float = 12.0, seed: int = 0):
    """A bright lesion (radius 8 mm) joined by a bright bridge along the diagonal to a bright blob
    beyond the background strokes; background strokes: rings on three orthogonal slices."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.arange(n, dtype=float),) * 3, indexing="ij")
    c = n / 2.0
    lesion = (z - c) ** 2 + (y - c) ** 2 + (x - c) ** 2 <= 8.0 ** 2
    t = ((z - c) + (y - c) + (x - c)) / 3.0  # position along the diagonal
    off = np.sqrt((z - c - t) ** 2 + (y - c - t) ** 2 + (x - c - t) ** 2)
    bridge = (off <= 3.5) & (t >= 0) & (t <= 13.0)
    blob = (z - c - 13) ** 2 + (y - c - 13) ** 2 + (x - c - 13) ** 2 <= 5.0 ** 2
    img = np.where(lesion | bridge | blob, 1.0, 0.2) + 0.05 * rng.standard_normal((n, n, n))
    seeds = np.zeros((n, n, n), np.uint8)
    ci = int(c)
    for ax in range(3):
        plane = [z, y, x][ax] == ci
        r = np.sqrt(sum(((g - c) ** 2) for k, g in enumerate((z, y, x)) if k != ax))
        seeds[plane & (np.abs(r - ring_mm) <= 0.7)] = 2
        seeds[plane & (r <= 4.0)] = 1
    g = Geometry((n, n, n), spacing=(1.0, 1.0, 1.0))
    return Volume(img.astype(np.float32), g, "scalar"), Volume(seeds, g, "label"), lesion, blob


def test_a_tumor_like_region_beyond_the_background_ring_is_not_taken():
    """The background strokes surround the lesion: a bright blob beyond them, joined to the lesion
    by a bright bridge (so connectivity does not remove it), is not tumor; without the rule it is
    taken, so the scene does test the rule."""
    img, seeds, lesion, blob = _rings_and_bridge()
    with_hull = seeded_segment(img, seeds).label.array > 0
    without = seeded_segment(img, seeds, SeededOptions(background_hull=False)).label.array > 0
    assert without[blob].mean() > 0.5  # the scene's trap works
    assert with_hull[blob].mean() == 0.0
    assert dice(with_hull, lesion) > 0.85


def test_the_background_hull_applies_only_when_the_strokes_surround_the_tumor():
    from medtorch.segment.seeded import _outside_background_hull

    _, seeds, lesion, blob = _rings_and_bridge()
    s = seeds.array.astype(np.int64)
    index = np.where(s == 1, 0, np.where(s == 2, 1, -1))
    out = _outside_background_hull(index, 2, (1.0, 1.0, 1.0), 0.3)
    assert out is not None and out[blob].all() and not out[lesion].any()
    flat = index.copy()
    flat[(flat == 1) & (np.arange(64)[:, None, None] != 32)] = -1  # the axial ring only: a flat hull
    assert _outside_background_hull(flat, 2, (1.0, 1.0, 1.0), 0.3) is None
    outside = index.copy()
    outside[2, 2, 2] = 0  # a tumor seed beyond the background strokes: they do not surround it
    assert _outside_background_hull(outside, 2, (1.0, 1.0, 1.0), 0.3) is None
    far = _outside_background_hull(index, 2, (1.0, 1.0, 1.0), 3.0)  # a margin of 3 hull radii
    assert far is None or not far[blob].any()


def _cavity_at_the_brain_edge(cavity_value: float = 0.45, n: int = 48):
    """A tumor with a bright rim around a dark cavity (a resection cavity) that opens onto the
    space outside the brain (0) on one side; tissue 0.3. The cavity looks more like the
    background than like the rim and touches the outside, so it is neither taken by the competition
    nor filled as a hole; FastGrowCut gives it to the tumor (its steps from the rim are the smaller)."""
    rng = np.random.default_rng(0)
    z, y, x = np.meshgrid(*(np.arange(n, dtype=float),) * 3, indexing="ij")
    c = n / 2.0
    r = np.sqrt((z - c) ** 2 + (y - c) ** 2 + (x - c) ** 2)
    brain = x <= c + 5.0
    lesion = (r <= 12.0) & brain
    cavity = (r <= 7.5) & brain
    img = np.where(lesion, 1.0, 0.3)
    img[cavity] = cavity_value
    img[~brain] = 0.0
    img = img + 0.04 * rng.standard_normal(img.shape) * brain
    seeds = np.zeros((n, n, n), np.uint8)
    for ax in range(3):  # strokes on the rim and a background ring (inside the brain) on three slices
        plane = [z, y, x][ax] == int(c)
        rr = np.sqrt(sum(((g - c) ** 2) for k, g in enumerate((z, y, x)) if k != ax))
        seeds[plane & (np.abs(rr - 17.0) <= 0.7) & brain] = 2
        seeds[plane & (np.abs(rr - 10.0) <= 0.7) & (x <= c + 3.0)] = 1
    g = Geometry((n, n, n), spacing=(1.0, 1.0, 1.0))
    return Volume(img.astype(np.float32), g, "scalar"), Volume(seeds, g, "label"), lesion, cavity


def test_a_dark_cavity_inside_the_tumor_is_taken_with_the_growcut_rule():
    """The rule adds the cavity FastGrowCut gives the tumor, and nothing outside the lesion."""
    pytest.importorskip("itk", reason="the cavity rule runs FastGrowCut (the optional extra 'growcut')")
    img, seeds, lesion, cavity = _cavity_at_the_brain_edge()
    with_rule = seeded_segment(img, seeds, SeededOptions(growcut_cavity=True))
    without = seeded_segment(img, seeds, SeededOptions(growcut_cavity=False)).label.array > 0
    a = with_rule.label.array > 0
    assert without[cavity].mean() < 0.7  # the scene's trap works: the cavity is largely missed
    assert a[cavity].mean() > 0.85
    assert dice(a, lesion) > dice(without, lesion) + 0.04
    assert a[~lesion].sum() <= without[~lesion].sum()  # nothing added outside the lesion
    assert "growcut_cavity" in with_rule.seconds


def test_the_growcut_rule_without_itk_growcut_is_a_clear_error(without_itk):
    img, seeds, _, _ = _cavity_at_the_brain_edge()
    with pytest.raises(MedTorchInputError) as exc:
        seeded_segment(img, seeds, SeededOptions(growcut_cavity=True))
    assert "itk-growcut" in str(exc.value) and "growcut_cavity=False" in str(exc.value)
    # off (the default), the rule needs nothing
    assert seeded_segment(img, seeds).label.array.any()
