"""Seed protocols (medtorch.segment.seed_protocols): every protocol puts its seeds where a user
would (tumor seeds inside the truth with its class, background outside, on the protocol's
slices, inside the allowed mask), deterministically, and a correction stroke lands in the
largest error component with the truth's label there."""

from __future__ import annotations

import numpy as np
import pytest

from medtorch.segment import seed_protocols as sp
from medtorch.segment.tumor_phantom import make_tumor_phantom, stroke_seeds, synthetic_tissue
from medtorch.volume import Geometry, Volume


@pytest.fixture(scope="module")
def phantom():
    geom = Geometry((48, 48, 40), origin=(-35.25, -35.25, -29.25), spacing=(1.5, 1.5, 1.5))
    return make_tumor_phantom(synthetic_tissue(geom, seed=1), noise=0.05, seed=2, core_radius_mm=6.0, rim_mm=3.0,
                              oedema_radius_mm=11.0)


@pytest.fixture(scope="module")
def wt(phantom):
    return Volume((phantom.truth.array > 0).astype(np.uint8), phantom.truth.geometry, "label")


def _balls(shape=(30, 40, 60), spacing=(1.0, 1.0, 1.0), centres=((15, 20, 15), (15, 20, 45)), radii=(8.0, 5.0)):
    zz, yy, xx = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    sp_zyx = np.asarray(spacing)[::-1]
    t = np.zeros(shape, np.uint8)
    for c, r in zip(centres, radii):
        d = np.sqrt(((zz - c[0]) * sp_zyx[0]) ** 2 + ((yy - c[1]) * sp_zyx[1]) ** 2 + ((xx - c[2]) * sp_zyx[2]) ** 2)
        t[d <= r] = 1
    return Volume(t, Geometry(tuple(shape[::-1]), (0.0, 0.0, 0.0), spacing), "label")


def _planes(mask: np.ndarray) -> set[tuple[int, int]]:
    """(axis, index) of the orthogonal planes that hold every voxel of ``mask`` (greedy cover)."""
    pts = np.argwhere(mask)
    planes: set[tuple[int, int]] = set()
    while len(pts):
        best = max(((a, v) for a in range(3) for v in np.unique(pts[:, a])), key=lambda p: np.sum(pts[:, p[0]] == p[1]))
        planes.add((int(best[0]), int(best[1])))
        pts = pts[pts[:, best[0]] != best[1]]
    return planes


def _distance_out(truth: Volume) -> np.ndarray:
    from scipy import ndimage

    return ndimage.distance_transform_edt(truth.array == 0, sampling=np.asarray(truth.geometry.spacing)[::-1])


@pytest.mark.parametrize("background", sp.BACKGROUNDS)
@pytest.mark.parametrize("protocol", ["three_slice", "one_slice"])
def test_stroke_protocols_put_tumor_seeds_inside_and_background_outside(phantom, protocol, background):
    truth = phantom.truth
    ps = sp.make_protocol_seeds(protocol, truth, background=background, seed=5)
    s, t = ps.seeds.array, truth.array
    assert ps.box is None and ps.background == 4 == ps.seeds.metadata["background_value"]
    for c in (1, 2, 3):
        assert np.all(t[s == c] == c)  # every tumor seed lies in its own class
    assert (s == 2).any() and (s == 4).any()
    assert np.all(t[s == 4] == 0) and _distance_out(truth)[s == 4].min() >= 3.0 - 1e-6
    planes = ps.seeds.metadata["planes_zyx_axis_index"]
    assert len(planes) == (3 if protocol == "three_slice" else 1)
    on = np.zeros(s.shape, bool)
    for axis, index in planes:
        sl = [slice(None)] * 3
        sl[axis] = index
        on[tuple(sl)] = True
    assert np.all(on[s > 0])  # nothing off the protocol's slices
    if protocol == "one_slice":
        assert len(np.unique(np.argwhere(s > 0)[:, sp.axial_axis(truth.geometry)])) == 1


def test_three_slice_ring_is_todays_stroke_seeds(phantom):
    for seed in (0, 3):
        got = sp.three_slice_strokes(phantom.truth, seed=seed).seeds.array
        assert np.array_equal(got, stroke_seeds(phantom.truth, seed=seed).array)


def test_missing_side_ring_leaves_one_half_space_empty(wt):
    ps = sp.three_slice_strokes(wt, background="ring_missing_side", seed=7)
    meta = ps.seeds.metadata
    n, c = np.asarray(meta["missing_side_normal_lps"]), np.asarray(meta["missing_side_centre_lps"])
    bg = np.argwhere(ps.seeds.array == 2)
    side = (wt.geometry.index_to_physical(bg[:, ::-1].astype(float)) - c) @ n
    assert len(bg) > 20 and np.all(side < 0)
    # the full ring has seeds on both sides: the missing side is really missing
    full = sp.three_slice_strokes(wt, background="ring_missing_side", seed=8).seeds.metadata
    assert full["missing_side_normal_lps"] != meta["missing_side_normal_lps"]


def test_scattered_background_is_several_short_strokes_inside_the_allowed_mask(wt):
    from scipy import ndimage

    within = np.zeros(wt.array.shape, bool)
    within[:, :, : wt.array.shape[2] // 2 + 4] = True  # background allowed on one part of the image only
    ps = sp.three_slice_strokes(wt, background="scattered", seed=2, within=within)
    bg = ps.seeds.array == 2
    assert bg.any() and np.all(within[bg])
    d = _distance_out(wt)[bg]
    assert d.min() >= 2.0 - 1e-6 and d.max() <= 15.0 + 6.0 + 2 * 1.5 + 1e-6  # centres <= 15 mm out, half-length <= 6
    assert ndimage.label(bg, structure=np.ones((3, 3, 3)))[1] >= 3
    for bgv in ("ring", "ring_missing_side"):
        s = sp.one_slice_strokes(wt, background=bgv, seed=2, within=within).seeds.array
        assert np.all(within[s == 2])


def test_protocols_are_deterministic(wt):
    for protocol in sp.PROTOCOLS:
        for background in sp.BACKGROUNDS:
            a = sp.make_protocol_seeds(protocol, wt, background=background, seed=11)
            b = sp.make_protocol_seeds(protocol, wt, background=background, seed=11)
            assert np.array_equal(a.seeds.array, b.seeds.array)
            if a.box is not None:
                assert np.allclose(a.box.center, b.box.center) and np.allclose(a.box.half_size, b.box.half_size)
    a = sp.clicks_and_box(wt, seed=1).seeds.array
    b = sp.clicks_and_box(wt, seed=2).seeds.array
    assert not np.array_equal(a, b)


def test_clicks_and_box(phantom, wt):
    from scipy import ndimage

    ps = sp.clicks_and_box(wt, n_clicks=4, radius_mm=2.0, margin_mm=7.5, seed=3)
    s = ps.seeds.array
    assert set(np.unique(s)) == {0, 1} and ps.background == 2  # no background seed
    assert np.all(wt.array[s == 1] == 1)
    assert ndimage.label(s > 0, structure=np.ones((3, 3, 3)))[1] == 4  # four separate balls
    inside = ps.box.mask(wt.geometry)
    assert np.all(inside[wt.array > 0])  # the box contains the tumor
    # ... grown by the margin (7.5 mm = 5 voxels) on every side and no more
    lo, hi = np.argwhere(wt.array > 0).min(0), np.argwhere(wt.array > 0).max(0)
    blo, bhi = np.argwhere(inside).min(0), np.argwhere(inside).max(0)
    assert np.array_equal(blo, np.maximum(lo - 5, 0)) and np.array_equal(bhi, np.minimum(hi + 5, np.array(inside.shape) - 1))
    # multi-class truth: each click has the class of the truth at its centre
    mc = sp.clicks_and_box(phantom.truth, n_clicks=5, seed=3).seeds.array
    for c in (1, 2, 3):
        assert np.all(phantom.truth.array[mc == c] == c)
    assert (mc > 0).any()


def test_several_lesions_all_get_seeds():
    truth = _balls()
    small = np.zeros(truth.array.shape, bool)
    small[:, :, 35:] = True
    for protocol in sp.PROTOCOLS:
        s = sp.make_protocol_seeds(protocol, truth, seed=0).seeds.array
        assert (s[small] == 1).any() and (s[~small] == 1).any()
        assert np.all(truth.array[s == 1] == 1) and np.all(truth.array[s == 2] == 0)


def test_one_slice_on_a_thick_slice_grid():
    truth = _balls(shape=(14, 50, 50), spacing=(1.0, 1.0, 5.0), centres=((7, 25, 25),), radii=(15.0,))
    ps = sp.one_slice_strokes(truth, seed=0)
    s = ps.seeds.array
    assert len(np.unique(np.argwhere(s > 0)[:, 0])) == 1  # axial = the thick axis here
    assert (s == 1).any() and (s == 2).any() and np.all(truth.array[s == 1] == 1) and np.all(truth.array[s == 2] == 0)


def _correction_case():
    truth = _balls(shape=(40, 40, 40), centres=((20, 20, 20),), radii=(12.0,))
    t = truth.array
    result = t.copy()
    miss = np.zeros(t.shape, bool)
    miss[20:, 20:, :] = True
    miss &= t > 0
    result[miss] = 0  # a big miss: a quarter of the tumor
    fp = np.zeros(t.shape, bool)
    fp[2:6, 2:6, 2:6] = True  # a small false positive far away
    result[fp] = 1
    seeds = sp.three_slice_strokes(truth, seed=0).seeds
    return truth, seeds, result, miss, fp


def test_correction_stroke_lands_in_the_largest_error_with_the_truth_label():
    from scipy import ndimage

    truth, seeds, result, miss, fp = _correction_case()
    new = sp.correct(truth, seeds, result)
    added = new.array != seeds.array
    assert added.sum() >= 6 and np.all(miss[added]) and np.all(new.array[added] == 1)
    assert np.array_equal(seeds.array, sp.three_slice_strokes(truth, seed=0).seeds.array)  # input untouched
    assert len(_planes(added)) == 1 and ndimage.label(added, structure=np.ones((3, 3, 3)))[1] == 1
    info = new.metadata["correction"]
    assert info["kind"] == "miss" and info["label"] == 1
    # a 2-voxel-wide straight stroke: long and thin on its slice
    assert info["stroke_voxels"] >= 3 * 6
    # now the false positive is the largest error: the stroke is background, inside it
    result2 = truth.array.copy()
    big_fp = np.zeros(result2.shape, bool)
    big_fp[0:10, 0:10, 28:40] = True
    big_fp &= truth.array == 0
    result2[big_fp] = 1
    result2[miss & (np.arange(40)[None, None, :] < 22)] = 0  # a smaller miss
    assert big_fp.sum() > (miss & (np.arange(40)[None, None, :] < 22)).sum()
    new2 = sp.correct(truth, seeds, result2)
    added2 = new2.array != seeds.array
    assert added2.any() and np.all(big_fp[added2]) and np.all(new2.array[added2] == 2)
    assert new2.metadata["correction"]["kind"] == "false positive"


def test_three_correction_rounds_shrink_the_error_and_a_perfect_result_adds_nothing():
    truth, seeds, result, miss, fp = _correction_case()
    s = seeds
    for _ in range(3):
        nxt = sp.correct(truth, s, result)
        assert (nxt.array != s.array).sum() > 0
        s = nxt
        result = np.where(s.array == 1, 1, np.where(s.array == 2, 0, result))  # a method keeps its seeds
    assert s.metadata["corrections"] == 3
    same = sp.correct(truth, s, truth.array)
    assert np.array_equal(same.array, s.array) and same.metadata["correction"] is None
