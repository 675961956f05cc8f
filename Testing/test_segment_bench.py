"""The seeded-segmentation benchmark's harness on a small phantom: the seed-edit protocol, the
peers' adapters (Slicer's GrowCut from slicer-core, scikit-image's random walker) and the
accuracy figures, so that ``python -m benchmarks.segment`` measures what it says."""

from __future__ import annotations

import numpy as np
import pytest

from medtorch.segment.tumor_phantom import make_tumor_phantom, stroke_seeds, synthetic_tissue
from medtorch.volume import Geometry


@pytest.fixture(scope="module")
def case():
    geom = Geometry((48, 48, 40), origin=(-35.25, -35.25, -29.25), spacing=(1.5, 1.5, 1.5))
    ph = make_tumor_phantom(synthetic_tissue(geom, seed=1), noise=0.05, seed=2, core_radius_mm=6.0, rim_mm=3.0,
                            oedema_radius_mm=11.0)
    idx = np.argwhere(ph.truth.array > 0)  # the tumor plus 4 voxels: small and fast for every method
    ph = ph.crop(np.maximum(idx.min(0) - 4, 0), np.minimum(idx.max(0) + 5, ph.truth.array.shape))
    seeds = stroke_seeds(ph.truth, seed=0).array
    g = ph.truth.geometry
    data = {"flair": ph.channels["FLAIR"].array, "t1c": ph.channels["T1c"].array, "truth": ph.truth.array,
            "size": np.asarray(g.size), "origin": np.asarray(g.origin), "spacing": np.asarray(g.spacing),
            "direction": np.asarray(g.direction)}
    return ph, seeds, data


def test_edit_sequence_adds_a_stroke_then_erases_it(case):
    from benchmarks.segment.seeded_bench import edit_sequence

    ph, seeds, _ = case
    edits = edit_sequence(ph.truth, seeds, seed=0)
    assert len(edits) == 4
    for (name, added), value in zip(edits[0::2], (2, 3)):
        new = (added != seeds)
        assert new.any() and np.all(seeds[new] == 0) and np.all(added[new] == value)
        # the stroke lies inside its class in the truth (eroded strokes never cross a boundary)
        assert np.all(ph.truth.array[new] == value)
        # on one slice: the voxels added span a single index along one axis
        assert min(len(np.unique(ix)) for ix in np.nonzero(new)) == 1
    for _, erased in edits[1::2]:
        assert np.array_equal(erased, seeds)


@pytest.mark.parametrize("method", ["medtorch", "growcut-flair", "random-walker"])
def test_methods_segment_with_class_values_and_follow_an_edit(case, method):
    from benchmarks.segment.seeded_bench import BACKGROUND, _Runner, accuracy, edit_sequence

    ph, seeds, data = case
    runner = _Runner(method, data)
    label = runner.first(seeds)
    assert label.shape == seeds.shape and set(np.unique(label)) <= {0, 1, 2, 3}
    # painted seeds keep their class; background seeds are written as 0
    for c in (1, 2, 3):
        assert np.all(label[seeds == c] == c)
    assert not label[seeds == BACKGROUND].any()
    acc = accuracy(label, data["truth"])
    assert acc["WT"] > (0.85 if method == "medtorch" else 0.5), acc
    _, added = edit_sequence(ph.truth, seeds, seed=0)[0]
    again = runner.edit(added)
    assert np.all(again[added == 2] == 2)


def test_accuracy_regions_against_a_hand_count():
    from benchmarks.segment.seeded_bench import accuracy

    truth = np.zeros((4, 4, 4), np.uint8)
    truth[0, 0, :4] = [1, 2, 3, 3]
    pred = np.zeros_like(truth)
    pred[0, 0, :4] = [1, 2, 2, 3]
    pred[1, 1, 1] = 2
    a = accuracy(pred, truth)
    assert a["WT"] == pytest.approx(2 * 4 / (5 + 4))
    assert a["ET"] == pytest.approx(2 * 1 / (1 + 2))
    assert a["TC"] == pytest.approx(2 * 2 / (2 + 3))
    assert a["NCR"] == pytest.approx(1.0)
    assert a["ED"] == pytest.approx(2 * 1 / (3 + 1))
