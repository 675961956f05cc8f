"""The varied phantom family (random_tumor_phantom / phantom_family): over 30 draws on a small
synthetic head the drawn parameters stay in their ranges, every kind of hard case occurs, the
images show what the parameters say (dark lesions darker than their surroundings, thick
slices on anisotropic phantoms), and the family is not the one the method was tuned on."""

from __future__ import annotations

import numpy as np
import pytest

from medtorch.segment.tumor_phantom import FAMILY_RANGES, phantom_family, random_tumor_phantom, synthetic_tissue
from medtorch.volume import Geometry

N = 30


@pytest.fixture(scope="module")
def tissue():
    geom = Geometry((64, 64, 56), origin=(-47.25, -47.25, -41.25), spacing=(1.5, 1.5, 1.5))
    return synthetic_tissue(geom, seed=3)


@pytest.fixture(scope="module")
def family(tissue):
    return list(phantom_family(N, seed=17, tissue=tissue, channels=("FLAIR", "T1")))


def test_parameters_stay_in_their_ranges(family):
    R = FAMILY_RANGES
    for ph in family:
        p = ph.parameters
        assert 1 <= p["n_lesions"] <= 3 and len(p["diameters_mm"]) == p["n_lesions"]
        assert all(R["diameter_mm"][0] <= d <= R["diameter_mm"][1] for d in p["diameters_mm"])
        assert R["noise"][0] <= p["noise"] <= R["noise"][1] and p["noise_kind"] in R["noise_kind"]
        assert R["bias"][0] <= p["bias"] <= R["bias"][1] and p["bias_kind"] in R["bias_kind"]
        assert p["shape"] in R["shape"] and R["psf_mm"][0] <= p["psf_mm"] <= R["psf_mm"][1]
        lo, hi = R["flair_contrast_dark"] if p["dark"] else R["flair_contrast_bright"]
        assert lo <= p["flair_contrast"] <= hi
        assert (p["oedema_mm"] == 0) != p["oedema"] and (p["rim_mm"] == 0) != p["rim"]
        if p["oedema"]:
            assert R["oedema_mm"][0] <= p["oedema_mm"] <= R["oedema_mm"][1]
        assert p["small"] == (max(p["diameters_mm"]) < 15.0) and p["multi_lesion"] == (p["n_lesions"] > 1)
        assert set(ph.channels) == {"FLAIR", "T1"} and p["index"] == family.index(ph) and p["family_seed"] == 17
        assert ph.truth.array.shape == ph.channels["FLAIR"].array.shape and p["truth_voxels"] > 0


def test_every_hard_case_occurs_and_the_family_is_not_the_tuned_one(family):
    p = [ph.parameters for ph in family]
    for flag in ("dark", "small", "multi_lesion", "anisotropic", "near_csf", "oedema", "rim"):
        assert any(q[flag] for q in p), flag
        assert not all(q[flag] for q in p), flag
    assert {q["shape"] for q in p} == set(FAMILY_RANGES["shape"])
    assert {q["noise_kind"] for q in p} == {"gaussian", "rician"}
    d = [x for q in p for x in q["diameters_mm"]]
    assert min(d) < 10 and max(d) > 30
    assert min(q["noise"] for q in p) < 0.04 and max(q["noise"] for q in p) > 0.10
    # the tuned phantoms: one 48 mm tumor (oedema radius 24 mm), bias 0.15: none here is that
    assert all(not (q["n_lesions"] == 1 and abs(q["diameters_mm"][0] - 48) < 2 and abs(q["bias"] - 0.15) < 0.01)
               for q in p)


def test_images_show_what_the_parameters_say(family):
    from scipy import ndimage

    for ph in family:
        p = ph.parameters
        t = ph.truth.array > 0
        sp = np.asarray(ph.truth.geometry.spacing)[::-1]
        if p["anisotropic"]:
            assert ph.truth.geometry.spacing[2] >= 4.5 and ph.truth.geometry.spacing[0] == 1.5
        else:
            assert np.allclose(ph.truth.geometry.spacing, 1.5)
        # the whole tumor's size is about the drawn one (a lesion may be clipped by the brain)
        vol = t.sum() * np.prod(sp)
        drawn = sum(np.pi / 6 * d ** 3 for d in p["diameters_mm"])
        assert 0.2 * drawn <= vol <= 1.6 * drawn, (vol, drawn, p)
        if p["rim"] or p["oedema"] or t.sum() < 20:
            continue
        flair = ph.channels["FLAIR"].array
        d_out = ndimage.distance_transform_edt(~t, sampling=sp)
        shell = (d_out > 2.5) & (d_out <= 6.5) & (flair > 0.2 * np.percentile(flair, 99))
        inner = ndimage.binary_erosion(t) if ndimage.binary_erosion(t).sum() >= 10 else t
        if p["dark"]:
            assert flair[inner].mean() < flair[shell].mean(), p
        else:
            assert flair[inner].mean() > flair[shell].mean(), p


def test_family_members_are_the_same_alone(tissue, family):
    from medtorch.segment.tumor_phantom import family_phantom

    ph = family_phantom(4, 17, tissue, ("FLAIR", "T1"))
    assert np.array_equal(ph.channels["FLAIR"].array, family[4].channels["FLAIR"].array)
    assert ph.parameters == family[4].parameters


def test_draws_are_deterministic(tissue):
    a = random_tumor_phantom(np.random.default_rng([5, 1]), tissue, channels=("FLAIR",))
    b = random_tumor_phantom(np.random.default_rng([5, 1]), tissue, channels=("FLAIR",))
    assert np.array_equal(a.channels["FLAIR"].array, b.channels["FLAIR"].array)
    assert np.array_equal(a.truth.array, b.truth.array) and a.parameters == b.parameters
