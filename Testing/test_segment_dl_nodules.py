"""Lung-nodule mode (medtorch.segment.nodules) on a synthetic chest CT with known nodules."""

from __future__ import annotations

import numpy as np
import pytest

from medtorch.errors import MedTorchInputError
from medtorch.volume import Volume


@pytest.fixture(scope="module")
def phantom():
    from medtorch.segment.nodules import lung_phantom

    return lung_phantom(size=(100, 88, 52), spacing=(0.9, 0.9, 1.5), nodule_diameters_mm=(5.0, 9.0, 14.0),
                        num_vessels=8, seed=3)


def test_nodules_of_known_diameters_are_found(phantom):
    from medtorch.segment.nodules import detect_nodules

    ct, truth = phantom
    before = ct.array.copy()
    res = detect_nodules(ct, min_diameter_mm=4.0, max_diameter_mm=20.0)
    np.testing.assert_array_equal(ct.array, before)
    assert res.info["num_candidates"] > len(truth)  # vessels give candidates too ...
    assert len(res.nodules) == len(truth), [(n.center_lps, n.diameter_mm, n.score) for n in res.candidates[:8]]
    for t in truth:  # ... but only the nodules pass the scorer, each once, with its diameter
        d = [np.linalg.norm(np.subtract(n.center_lps, t["center_lps"])) for n in res.nodules]
        best = res.nodules[int(np.argmin(d))]
        assert min(d) < 0.25 * t["diameter_mm"] + 1.0
        assert abs(best.diameter_mm - t["diameter_mm"]) <= 0.2 * t["diameter_mm"], (best.diameter_mm, t)
        assert 0.5 <= best.score <= 1.0 and best.sphericity > 0.8
    assert res.lung_mask.kind == "label" and res.lung_mask.geometry == ct.geometry
    # the lung mask holds the nodules (they are holes in the air) and not the body
    for t in truth:
        ijk = np.round(ct.geometry.physical_to_index(np.array(t["center_lps"]))[0]).astype(int)
        assert res.lung_mask.array[ijk[2], ijk[1], ijk[0]] == 1
    assert res.lung_mask.array[ct.array > 0].mean() < 0.2


def test_blob_scale_matches_ball_diameter():
    """The scale-normalised LoG of a ball of diameter d peaks at sigma = d / (2 sqrt 3)."""
    from medtorch.segment.nodules import blob_candidates

    n = 40
    z, y, x = np.meshgrid(*(np.arange(n, dtype=np.float32),) * 3, indexing="ij")
    for d in (6.0, 12.0):
        ball = np.sqrt((z - 20) ** 2 + (y - 20) ** 2 + (x - 20) ** 2) <= d / 2
        img = np.where(ball, 0.0, -900.0).astype(np.float32)
        ct = Volume.from_array(img)
        c = blob_candidates(ct, np.ones(img.shape, bool), min_diameter_mm=3.0, max_diameter_mm=20.0, num_scales=10)
        ijk, sigma, resp = c[0]
        np.testing.assert_allclose(ijk, [20, 20, 20], atol=1.0)
        assert abs(2 * np.sqrt(3) * sigma - d) <= 0.25 * d
        assert resp > 0.3 * 900


def test_nodule_bad_input():
    from medtorch.segment.nodules import detect_nodules, lung_mask

    flat = Volume.from_array(np.full((20, 20, 20), 40, np.int16) + np.arange(20, dtype=np.int16)[:, None, None])
    with pytest.raises(MedTorchInputError, match="no voxel below"):
        lung_mask(flat)
    air_everywhere = Volume.from_array(np.full((20, 20, 20), -1000, np.int16) + np.arange(20, dtype=np.int16)[:, None, None])
    with pytest.raises(MedTorchInputError, match="no air region inside the body"):
        detect_nodules(air_everywhere)
    with pytest.raises(MedTorchInputError, match="not a range"):
        from medtorch.segment.nodules import blob_candidates

        blob_candidates(flat, np.ones((20, 20, 20), bool), min_diameter_mm=10, max_diameter_mm=5)


def test_detect_nodules_runs_in_a_background_worker(phantom):
    """The operation is registered where the worker discovers operations (as Slicer runs it)."""
    from medtorch.runtime import BackgroundJob

    ct, truth = phantom
    res = BackgroundJob("detect_nodules", {"input": ct}, {"min_diameter_mm": 4.0, "max_diameter_mm": 20.0}).start()
    out = res.wait(timeout=600)
    assert len(out.values["nodules"]) == len(truth)
    assert out.volumes["lung_mask"].geometry.isclose(ct.geometry, atol=1e-5)
    found = sorted(n["diameter_mm"] for n in out.values["nodules"])
    for d, t in zip(found, sorted(t["diameter_mm"] for t in truth)):
        assert abs(d - t) <= 0.2 * t
