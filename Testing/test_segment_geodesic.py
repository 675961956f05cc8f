"""Geodesic competition (the default seeded method): its path distances against a plain Dijkstra,
its invariance to intensity units, and the cases a user meets: a bright distractor away from the
seeds, background missing on one side, a box instead of background strokes, darker tumors."""

from __future__ import annotations

import heapq

import numpy as np
import pytest
from scipy import ndimage

from medtorch.segment import geodesic
from medtorch.segment.metrics import dice
from medtorch.segment.seeded import SeededOptions, seeded_segment
from medtorch.segment.threshold import Box
from medtorch.segment.tumor_phantom import make_tumor_phantom, stroke_seeds, synthetic_tissue
from medtorch.volume import Geometry, Volume


def _dijkstra(f0: np.ndarray, cost: np.ndarray, sources: np.ndarray, step: tuple[float, float, float]) -> np.ndarray:
    """Textbook Dijkstra on the 6-connected grid (the reference)."""
    dist = np.full(f0.shape, np.inf)
    heap = []
    for p in map(tuple, np.argwhere(sources)):
        dist[p] = 0.0
        heap.append((0.0, p))
    heapq.heapify(heap)
    while heap:
        d, p = heapq.heappop(heap)
        if d > dist[p]:
            continue
        for ax in range(3):
            for s in (-1, 1):
                q = list(p)
                q[ax] += s
                if not 0 <= q[ax] < f0.shape[ax]:
                    continue
                q = tuple(q)
                nd = d + abs(f0[p] - f0[q]) + 0.5 * step[ax] * (cost[p] + cost[q])
                if nd < dist[q] - 1e-12:
                    dist[q] = nd
                    heapq.heappush(heap, (nd, q))
    return dist


def test_path_distances_equal_a_textbook_dijkstra():
    rng = np.random.default_rng(0)
    f0 = ndimage.gaussian_filter(rng.random((7, 8, 9)), 1.0) * 5
    cost = rng.random((7, 8, 9)) * 0.3
    src = np.zeros(f0.shape, bool)
    src[3, 2, 1] = src[0, 7, 8] = True
    step = (2.0, 1.0, 1.5)
    got = geodesic._distances(f0, cost, src, step, geodesic._graph(f0.shape))
    np.testing.assert_allclose(got, _dijkstra(f0, cost, src, step), rtol=1e-5, atol=1e-5)


def test_block_means_and_trilinear_upsampling_line_up():
    """A linear ramp survives block means then trilinear upsampling (inside the padded edge)."""
    z, y, x = np.meshgrid(np.arange(9.0), np.arange(10.0), np.arange(11.0), indexing="ij")
    ramp = (0.5 * z + 0.25 * y - x).astype(np.float32)
    f = (2, 2, 3)
    up = geodesic._upsample(geodesic._blocks(ramp, f), f, ramp.shape)
    assert up.shape == ramp.shape
    np.testing.assert_allclose(up[1:-2, 1:-2, 1:-3], ramp[1:-2, 1:-2, 1:-3], atol=1e-5)


def test_evidence_costs_are_the_margin_to_the_best_other_class():
    ll = np.array([[0.0, -3.0], [-1.0, -1.0], [-5.0, 2.0]], np.float32)  # [K=3, N=2]
    c = geodesic.evidence_costs(ll, 2.0)
    np.testing.assert_allclose(c, [[0.0, 10.0], [2.0, 6.0], [10.0, 0.0]])


def _phantom(noise: float = 0.06, seed: int = 5):
    geom = Geometry((60, 60, 52), origin=(-45.0, -45.0, -39.0), spacing=(1.5, 1.5, 1.5))
    ph = make_tumor_phantom(synthetic_tissue(geom, seed=2), noise=noise, seed=seed, core_radius_mm=6.0, rim_mm=3.0,
                            oedema_radius_mm=13.0)
    wt = Volume((ph.truth.array > 0).astype(np.uint8), ph.truth.geometry, "label")
    return ph, wt


@pytest.fixture(scope="module")
def binary_case():
    ph, wt = _phantom()
    return ph, wt, stroke_seeds(wt, classes=[1], seed=0)


def test_intensity_units_do_not_matter(binary_case):
    """The same image in other units (scale and offset) gives the same segmentation."""
    ph, wt, seeds = binary_case
    flair = ph.channels["FLAIR"]
    a = seeded_segment([flair], seeds).label.array
    b = seeded_segment([flair.with_array(flair.array * 731.0 + 40.0)], seeds).label.array
    assert dice(a, b) > 0.999
    assert dice(a, wt.array) > 0.85


def test_a_darker_tumor_is_found(binary_case):
    """Contrast inverted (the tumor darker than its surroundings): as good as the bright one."""
    ph, wt, seeds = binary_case
    flair = ph.channels["FLAIR"]
    bright = seeded_segment([flair], seeds).label.array
    dark = seeded_segment([flair.with_array(flair.array.max() - flair.array)], seeds).label.array
    assert dice(dark, wt.array) > dice(bright, wt.array) - 0.02


@pytest.mark.parametrize("connected_post", [True, False])
def test_a_bright_distractor_away_from_the_seeds_is_not_taken(binary_case, connected_post):
    """A blob as bright as the tumor, inside the segmented region but apart from the tumor (off
    the seeded slices), stays background -- by the paths alone, without the connectivity rule too."""
    ph, wt, seeds = binary_case
    flair = ph.channels["FLAIR"].array.copy()
    t = wt.array > 0
    res0 = seeded_segment([ph.channels["FLAIR"]], seeds)
    (z0, y0, x0), (z1, y1, x1) = res0.region
    dist = ndimage.distance_transform_edt(~t, sampling=ph.truth.geometry.spacing[::-1])
    centre = np.round(ndimage.center_of_mass(t)).astype(int)
    # a ball 6 mm across where the region's corner lies 8-14 mm off the tumor, off the seeded planes
    zz, yy, xx = np.meshgrid(np.arange(flair.shape[0]), np.arange(flair.shape[1]), np.arange(flair.shape[2]),
                             indexing="ij")
    inside = (zz >= z0) & (zz < z1) & (yy >= y0) & (yy < y1) & (xx >= x0) & (xx < x1)
    off_planes = (zz != centre[0]) & (yy != centre[1]) & (xx != centre[2])
    cand = np.argwhere(inside & off_planes & (dist > 8.0) & (dist < 14.0) & (seeds.array == 0))
    assert len(cand), "the test needs room for a distractor inside the region"
    c = cand[len(cand) // 2]
    ball = (zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= 2 ** 2
    flair[ball] = np.median(ph.channels["FLAIR"].array[t])
    res = seeded_segment([ph.channels["FLAIR"].with_array(flair)], seeds, keep_seed_connected=connected_post)
    assert not res.label.array[ball].any()
    assert dice(res.label.array, wt.array) > 0.85


def test_background_missing_on_one_side_does_not_run_away(binary_case):
    ph, wt, seeds = binary_case
    arr = seeds.array.copy()
    t = wt.array > 0
    cx = int(round(ndimage.center_of_mass(t)[2]))
    arr[:, :, cx:][arr[:, :, cx:] == 2] = 0  # no background seed on the right half
    res = seeded_segment([ph.channels["FLAIR"]], seeds.with_array(arr))
    lab = res.label.array > 0
    far = ndimage.distance_transform_edt(~t, sampling=ph.truth.geometry.spacing[::-1]) > 6.0
    assert lab.sum() < 1.3 * t.sum()
    assert not (lab & far).any()
    assert dice(lab, t) > 0.8


def test_a_box_with_clicks_is_enough(binary_case):
    """Clicks in the tumor and a box around it: the box's border is the background."""
    ph, wt, _ = binary_case
    t = wt.array > 0
    g = wt.geometry
    rng = np.random.default_rng(3)
    inner = np.argwhere(ndimage.binary_erosion(t, iterations=3))
    clicks = np.zeros(t.shape, np.uint8)
    for p in inner[rng.choice(len(inner), 4, replace=False)]:
        clicks[tuple(slice(max(v - 1, 0), v + 2) for v in p)] = 1
    idx = np.argwhere(t)
    lo, hi = g.index_to_physical(idx.min(0)[::-1][None].astype(float))[0], g.index_to_physical(idx.max(0)[::-1][None].astype(float))[0]
    box = Box((lo + hi) / 2, np.abs(hi - lo) / 2 + 6.0)
    res = seeded_segment([ph.channels["FLAIR"]], Volume(clicks, g, "label"), region_box=box)
    assert res.classes == [1, 2] and res.background == 2
    assert dice(res.label.array, t) > 0.85


def test_one_class_without_a_box_is_still_refused(binary_case):
    from medtorch.errors import MedTorchInputError

    ph, wt, seeds = binary_case
    with pytest.raises(MedTorchInputError, match="one class only"):
        seeded_segment([ph.channels["FLAIR"]], seeds.with_array((seeds.array == 1).astype(np.uint8)))


def test_strokes_on_one_slice_get_a_region_as_deep_as_it_is_wide(binary_case):
    """One-slice strokes give a flat seed box; region_aspect grows it across slices so the
    tumor above and below the slice is segmented too (off: a slab a few slices thick)."""
    from medtorch.segment.seeded import SeededOptions, _region_from_seeds

    ph, wt, seeds = binary_case
    t = wt.array > 0
    zc = int(round(ndimage.center_of_mass(t)[0]))
    flat = np.zeros_like(seeds.array)
    flat[zc] = seeds.array[zc]
    g = wt.geometry
    sp = np.asarray(g.spacing)[::-1]
    lo, hi = _region_from_seeds(flat, g, 5.0, 0.2, region_aspect=1.0)
    ext = (hi - lo) * sp
    assert ext[0] >= 0.95 * (np.ptp(np.argwhere(flat > 0), axis=0) * sp).max()
    lo0, hi0 = _region_from_seeds(flat, g, 5.0, 0.2, region_aspect=0.0)
    assert (hi0 - lo0)[0] < (hi - lo)[0]
    on = seeded_segment([ph.channels["FLAIR"]], seeds.with_array(flat))
    off = seeded_segment([ph.channels["FLAIR"]], seeds.with_array(flat), SeededOptions(region_aspect=0.0))
    assert dice(on.label.array, t) > dice(off.label.array, t) + 0.1
    assert dice(on.label.array, t) > 0.8


def test_a_small_region_is_segmented_on_its_own_voxels() -> None:
    """A lesion of 6 mm is three cells of the 2 mm grid: a region small enough is computed on its
    voxels (``full_resolution_voxels``), which recovers the lesion's boundary; forced onto the
    2 mm grid the same seeds lose much of it."""
    rng = np.random.default_rng(5)
    zz, yy, xx = np.mgrid[:40, :40, :40]
    lesion = (zz - 20.3) ** 2 + (yy - 19.6) ** 2 + (xx - 20.2) ** 2 <= 3.2 ** 2
    img = np.where(lesion, 1.0, 0.4) + rng.normal(scale=0.03, size=lesion.shape)
    seeds = np.zeros(lesion.shape, np.uint8)
    seeds[20, 19:21, 19:22] = 1
    ring = ((yy - 20) ** 2 + (xx - 20) ** 2 >= 9 ** 2) & ((yy - 20) ** 2 + (xx - 20) ** 2 <= 10 ** 2)
    seeds[(zz == 20) & ring] = 2
    g = Geometry((40, 40, 40), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), np.eye(3))
    vol = Volume(img.astype(np.float32), g)
    sv = Volume(seeds, g, "label")
    fine = seeded_segment([vol], sv).label.array > 0
    coarse = seeded_segment([vol], sv, SeededOptions(full_resolution_voxels=0)).label.array > 0
    assert dice(fine, lesion) >= 0.85
    assert dice(fine, lesion) > dice(coarse, lesion) + 0.05
