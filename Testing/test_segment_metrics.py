"""Segmentation metrics against independent implementations (MONAI, counts by hand),
volumetry against a hand count, post-processing, BraTS regions and terminology strings."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medtorch.errors import MedTorchInputError
from medtorch.segment import metrics as M
from medtorch.segment import postprocess as P
from medtorch.segment.terminology import TERMS, class_terms, find_term, slicer_terminology, term
from medtorch.volume import Geometry, Volume


def _blobs(seed: int, shape=(28, 36, 32)) -> tuple[np.ndarray, np.ndarray]:
    """Two overlapping irregular masks (smoothed noise thresholded)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    a = ndimage.gaussian_filter(rng.standard_normal(shape), 3.0)
    b = a + 0.4 * ndimage.gaussian_filter(rng.standard_normal(shape), 2.0) * a.std()
    return a > 0.5 * a.std(), b > 0.6 * a.std()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_overlap_and_surface_metrics_match_monai(seed):
    from monai.metrics import DiceMetric, compute_hausdorff_distance, compute_surface_dice

    p, r = _blobs(seed)
    spacing = (2.0, 0.8, 1.1)  # z, y, x
    P_, R_ = (torch.from_numpy(m)[None, None].float() for m in (p, r))
    dm = DiceMetric(include_background=True, reduction="mean")
    dm(P_, R_)
    assert M.dice(p, r) == pytest.approx(float(dm.aggregate()), abs=1e-6)
    hd = float(compute_hausdorff_distance(P_, R_, include_background=True, percentile=95, spacing=spacing))
    assert M.hausdorff_distance(p, r, 95.0, spacing) == pytest.approx(hd, rel=1e-5)
    hd100 = float(compute_hausdorff_distance(P_, R_, include_background=True, spacing=spacing))
    assert M.hausdorff_distance(p, r, 100.0, spacing) == pytest.approx(hd100, rel=1e-5)
    for tol in (0.5, 1.5, 3.0):
        nsd = float(compute_surface_dice(P_, R_, [tol], include_background=True, spacing=spacing))
        assert M.surface_dice(p, r, tol, spacing) == pytest.approx(nsd, abs=1e-6)


def test_confusion_rates_by_hand():
    # a 10x10x10 grid, reference a 4x4x4 cube, prediction a 4x4x5 box shifted by one voxel
    ref = np.zeros((10, 10, 10), bool)
    ref[2:6, 2:6, 2:6] = True
    pred = np.zeros_like(ref)
    pred[3:7, 2:6, 2:7] = True
    tp = 3 * 4 * 4
    fp = 4 * 4 * 5 - tp
    fn = 64 - tp
    tn = 1000 - tp - fp - fn
    assert M.confusion_counts(pred, ref) == {"tp": tp, "fp": fp, "fn": fn, "tn": tn}
    assert M.sensitivity(pred, ref) == pytest.approx(tp / 64)
    assert M.precision(pred, ref) == pytest.approx(tp / 80)
    assert M.specificity(pred, ref) == pytest.approx(tn / (tn + fp))
    assert M.dice(pred, ref) == pytest.approx(2 * tp / (64 + 80))
    # specificity inside a mask (e.g. the brain) counts only the voxels in it
    brain = np.zeros_like(ref)
    brain[1:8, 1:8, 1:8] = True
    c = M.confusion_counts(pred, ref, brain)
    assert c["tn"] == int(brain.sum()) - tp - fp - fn
    # the cube shifted by one voxel in z: surfaces at most one z step (2 mm) apart
    shifted = np.zeros_like(ref)
    shifted[3:7, 2:6, 2:6] = True
    assert M.hausdorff_distance(shifted, ref, 100.0, (2.0, 1.0, 1.0)) == pytest.approx(2.0)


def test_empty_masks_follow_the_stated_conventions():
    e = np.zeros((5, 6, 7), bool)
    f = e.copy()
    f[2, 3, 3] = True
    assert M.dice(e, e) == 1.0 and M.dice(f, e) == 0.0
    assert M.hausdorff_distance(e, e) == 0.0 and M.hausdorff_distance(f, e) == float("inf")
    assert M.surface_dice(e, e) == 1.0 and M.surface_dice(f, e) == 0.0
    assert np.isnan(M.sensitivity(f, e)) and np.isnan(M.precision(e, f))
    with pytest.raises(MedTorchInputError, match="differ in shape"):
        M.dice(e, np.zeros((5, 6, 8), bool))


def test_lesion_wise_scores_on_a_constructed_case():
    ref = np.zeros((40, 40, 40), bool)
    ref[5:10, 5:10, 5:10] = True          # lesion A: found exactly
    ref[25:30, 25:30, 25:30] = True       # lesion B: missed
    ref[5:7, 30:32, 30:32] = True         # lesion C: 8 voxels, below the 50 mm^3 threshold
    pred = np.zeros_like(ref)
    pred[5:10, 5:10, 5:10] = True
    pred[30:34, 2:6, 20:24] = True        # a false positive far from every lesion
    lw = M.lesion_wise(pred, ref)
    assert lw.reference_lesions == 2 and lw.detected == 1 and lw.false_positives == 1
    assert lw.dice == pytest.approx((1.0 + 0.0) / 3)
    assert lw.hd95 == pytest.approx((0.0 + 374.0 + 374.0) / 3)
    # two lesions 2 voxels apart merge into one (their 3-voxel dilations touch)
    ref2 = np.zeros((30, 30, 30), bool)
    ref2[5:10, 5:10, 5:10] = True
    ref2[5:10, 5:10, 12:17] = True
    lw2 = M.lesion_wise(ref2, ref2)
    assert lw2.reference_lesions == 1 and lw2.dice == 1.0 and lw2.hd95 == 0.0
    # nothing anywhere: perfect
    none = np.zeros((8, 8, 8), bool)
    assert M.lesion_wise(none, none).dice == 1.0


def test_volumetry_against_a_hand_count():
    rng = np.random.default_rng(3)
    arr = rng.integers(0, 4, size=(9, 11, 13)).astype(np.uint8)
    geom = Geometry((13, 11, 9), spacing=(0.7, 1.3, 2.5), direction=np.eye(3))
    vol = Volume(arr, geom, "label")
    rows = M.volumetry(vol, {1: "Necrosis", 2: "Edema", 3: "Enhancing"}, {"WT": [1, 2, 3], "TC": [1, 3]})
    mm3 = 0.7 * 1.3 * 2.5
    by = {r.name: r for r in rows}
    for name, v in (("Necrosis", 1), ("Edema", 2), ("Enhancing", 3)):
        n = sum(1 for val in arr.ravel() if val == v)  # counted one by one
        assert by[name].voxels == n and by[name].volume_ml == pytest.approx(n * mm3 / 1000.0)
    assert by["WT"].voxels == int((arr > 0).sum()) and by["WT"].kind == "region"
    assert by["TC"].volume_ml == pytest.approx(((arr == 1) | (arr == 3)).sum() * mm3 / 1000.0)


def test_evaluate_segmentation_report_and_brats_regions(tmp_path):
    geom = Geometry((20, 18, 16), spacing=(1.0, 1.0, 1.0))
    ref = np.zeros(geom.shape_zyx, np.uint8)
    ref[4:12, 4:14, 4:16] = 2
    ref[6:10, 6:12, 6:14] = 1
    ref[7:9, 8:10, 8:12] = 3
    pred = ref.copy()
    pred[4, 4:14, 4:16] = 0  # one slice of oedema missed
    rep = M.evaluate_segmentation(Volume(pred, geom, "label"), Volume(ref, geom, "label"), "auto")
    assert rep.convention == "brats2023" and [s.name for s in rep.structures] == ["TC", "WT", "ET"]
    wt = rep.structures[1]
    assert wt.dice == pytest.approx(M.dice(pred > 0, ref > 0))
    assert wt.hd95_mm == pytest.approx(M.hausdorff_distance(pred > 0, ref > 0, 95.0))
    assert rep.structures[0].dice == 1.0 and rep.structures[2].dice == 1.0
    assert wt.volume_ref_ml == pytest.approx((ref > 0).sum() / 1000.0)
    json.dumps(rep.to_dict())
    assert rep.to_csv().splitlines()[0].startswith("name,values,dice")
    assert "WT" in rep.to_text()
    labels = M.evaluate_segmentation(Volume(pred, geom, "label"), Volume(ref, geom, "label"), "labels")
    assert [s.name for s in labels.structures] == ["label 1", "label 2", "label 3", "foreground"]
    with pytest.raises(MedTorchInputError, match="does not have"):
        M.evaluate_segmentation(Volume(pred, geom, "label"), Volume(ref * 2, geom, "label"), "brats2023")
    other = Geometry((20, 18, 16), spacing=(2.0, 1.0, 1.0))
    with pytest.raises(MedTorchInputError, match="different grids"):
        M.evaluate_segmentation(Volume(pred, other, "label"), Volume(ref, geom, "label"))


def test_seg_metrics_command(tmp_path, capsys):
    from medtorch.cli import main
    from medtorch.io import write_volume

    geom = Geometry((20, 18, 16), spacing=(1.2, 1.0, 0.9))
    ref = np.zeros(geom.shape_zyx, np.uint8)
    ref[4:12, 4:14, 4:12] = 1
    pred = np.zeros_like(ref)
    pred[5:12, 4:14, 4:13] = 1
    write_volume(Volume(pred, geom, "label"), tmp_path / "p.nrrd")
    write_volume(Volume(ref, geom, "label"), tmp_path / "r.nii.gz")
    rc = main(["seg-metrics", "--pred", str(tmp_path / "p.nrrd"), "--ref", str(tmp_path / "r.nii.gz"),
               "--json", str(tmp_path / "m.json"), "--csv", str(tmp_path / "m.csv"), "--tolerance", "1.5"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "label 1" in out and "Dice" in out
    got = json.loads((tmp_path / "m.json").read_text())["structures"][0]
    assert got["dice"] == pytest.approx(M.dice(pred, ref))
    assert got["surface_dice"] == pytest.approx(M.surface_dice(pred, ref, 1.5, (0.9, 1.0, 1.2)))
    assert got["hd95_mm"] == pytest.approx(M.hausdorff_distance(pred, ref, 95.0, (0.9, 1.0, 1.2)))


# -- post-processing -----------------------------------------------------------------------------------


def test_small_components_by_physical_size():
    arr = np.zeros((10, 10, 10), np.uint8)
    arr[1:5, 1:5, 1:5] = 1   # 64 voxels
    arr[7:9, 7:9, 7] = 1     # 4 voxels
    arr[7, 1, 1] = 2         # 1 voxel of another label
    geom = Geometry((10, 10, 10), spacing=(2.0, 2.0, 2.0))  # 8 mm^3 per voxel
    vol = Volume(arr, geom, "label")
    out = P.remove_small_components(vol, 40.0)  # mm^3: drops 4 voxels (32 mm^3) and 1 voxel
    assert isinstance(out, Volume) and out.geometry == geom
    assert int((out.array == 1).sum()) == 64 and int((out.array == 2).sum()) == 0
    assert np.array_equal(vol.array, arr)  # input untouched
    kept = P.remove_small_components(vol, 32.0)  # exactly 32 mm^3 is kept
    assert int((kept.array == 1).sum()) == 68
    assert int((P.remove_small_components(arr, 4).astype(bool)).sum()) == 68  # arrays: voxel counts


def test_largest_component_and_holes():
    arr = np.zeros((12, 12, 12), np.uint8)
    arr[1:8, 1:8, 1:8] = 2
    arr[3:5, 3:5, 3:5] = 0      # a cavity
    arr[2:4, 2:4, 2:4] = 1      # another class inside, touching the oedema
    arr[10, 10, 10] = 2         # a far speck
    largest = P.keep_largest_component(arr)
    assert largest[10, 10, 10] == 0 and (largest[1:8, 1:8, 1:8] > 0).sum() == (arr[1:8, 1:8, 1:8] > 0).sum()
    filled = P.fill_holes(largest)
    assert (arr[3:5, 3:5, 3:5] == 0).sum() == 7  # the cavity, less the corner the class-1 block took
    assert np.all(filled[3:5, 3:5, 3:5] > 0)
    assert set(np.unique(filled[3:5, 3:5, 3:5])) <= {1, 2}
    per = P.fill_holes(largest, per_label=True)
    assert np.all(per[3:5, 3:5, 3:5] > 0)
    both = P.postprocess_label(arr, min_size=2, largest=True, fill=True)
    assert both[10, 10, 10] == 0 and np.all(both[3:5, 3:5, 3:5] > 0)


def test_brats_regions_composition_and_conversion():
    lab23 = np.array([0, 1, 2, 3, 3, 2], np.uint8).reshape(1, 2, 3)
    r = P.brats_regions(lab23)
    assert r["WT"].tolist() == (lab23 > 0).tolist()
    assert r["TC"].tolist() == np.isin(lab23, [1, 3]).tolist() and r["ET"].tolist() == (lab23 == 3).tolist()
    lab21 = P.convert_brats_labels(lab23, "brats2023", "brats2021")
    assert lab21.ravel().tolist() == [0, 1, 2, 4, 4, 2]
    assert P.detect_brats_convention(lab21) == "brats2021"
    assert np.array_equal(P.convert_brats_labels(lab21, "brats2021", "brats2023"), lab23)
    again = P.compose_brats_label(r["TC"], r["WT"], r["ET"], "brats2023")
    assert np.array_equal(again, lab23)
    # inconsistent masks still give one class per voxel: ET wins, TC over WT
    tc = np.array([[[1, 0, 0]]], bool)
    wt = np.array([[[0, 1, 0]]], bool)
    et = np.array([[[0, 0, 1]]], bool)
    assert P.compose_brats_label(tc, wt, et, "brats2021").ravel().tolist() == [1, 2, 4]
    with pytest.raises(MedTorchInputError, match="both 3 and 4"):
        P.detect_brats_convention(np.array([[[3, 4]]]))
    with pytest.raises(MedTorchInputError, match="does not have"):
        P.convert_brats_labels(np.array([[[3]]]), "brats2021", "brats2023")


# -- terminology -------------------------------------------------------------------------------------------


def test_terms_and_slicer_terminology_strings():
    edema = term("oedema")
    assert edema is TERMS["edema"] and edema.type.value == "79654002" and edema.type.scheme == "SCT"
    assert find_term("Necrosis").type.value == "6574001"
    assert find_term("ET").type.value == "C113842" and find_term("enhancing tumor").type.scheme == "NCIt"
    assert find_term("no such thing") is None
    s = slicer_terminology(edema)
    fields = s.split("~")
    assert len(fields) == 7
    assert fields[1] == "SCT^49755003^Morphologically Altered Structure" and fields[2] == "SCT^79654002^Edema"
    assert fields[5] == "SCT^12738006^Brain"
    named = class_terms([1, 2, 5], {1: "Necrosis", 2: "my lesion"})
    assert named[1].type.value == "6574001" and named[1].name == "Necrosis"
    assert named[2].name == "my lesion" and named[2].type.value == "108369006"
    assert named[5].name == "Class 5" and named[2].color != named[5].color
    with pytest.raises(MedTorchInputError, match="no standard tumor term"):
        term("nonsense")
