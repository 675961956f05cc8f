"""The real-data mode of the enhancement benchmark (``--real-dir``): finding the volumes of a
BraTS-like folder, its split and the provenance lines it quotes, and the head mask (tiny
synthetic files; no real data)."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.enhance import real


@pytest.fixture()
def brats_like(tmp_path):
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.zeros((4, 5, 6), np.float32))
    for case, files in (("Brats18_X_1", ("t1", "flair", "seg")), ("BRATS2015_brats_2013_pat0009_1", ("flair", "t1ce")),
                        ("Brats18_Y_1", ("t2",))):
        (tmp_path / case).mkdir()
        for f in files:
            sitk.WriteImage(img, str(tmp_path / case / f"{f}.nii.gz"))
    (tmp_path / "cases.csv").write_text("case_id,split\nBrats18_X_1,held-out\nBRATS2015_brats_2013_pat0009_1,dev\n"
                                        "Brats18_Y_1,held-out\n")
    (tmp_path / "SOURCES.md").write_text("# Sources\n\n**Licence status: never commit.** Terms\napply.\n\n## repo/a @ 123\n* Case: Brats18_X_1, original files.\n"
                                         "* Case: Brats18_Z_1, not used.\n* Path: brats_2013_pat0009_1/\n"
                                         "* Licence: no redistribution.\n")
    return tmp_path


def test_volumes_are_found_by_contrast_and_split(brats_like):
    found = real.find_volumes(brats_like, None, None, real.CONTRASTS)
    assert [(c, m) for c, m, _ in found] == [("BRATS2015_brats_2013_pat0009_1", "t1ce"),
                                             ("BRATS2015_brats_2013_pat0009_1", "flair"),
                                             ("Brats18_X_1", "t1"), ("Brats18_X_1", "flair"), ("Brats18_Y_1", "t2")]
    held = real.find_volumes(brats_like, "held-out", None, ("flair", "t2"))
    assert [(c, m) for c, m, _ in held] == [("Brats18_X_1", "flair"), ("Brats18_Y_1", "t2")]
    assert real.find_volumes(brats_like, None, ["Brats18_Y_1"], ("t1",)) == []
    assert real.split_of(brats_like)["BRATS2015_brats_2013_pat0009_1"] == "dev"
    with pytest.raises(SystemExit, match="not a folder"):
        real.find_volumes(brats_like / "missing", None, None, real.CONTRASTS)


def test_sources_quote_the_cases_used_and_the_licence(brats_like):
    lines = real.source_lines(brats_like, ["Brats18_X_1", "BRATS2015_brats_2013_pat0009_1"])
    assert "* Case: Brats18_X_1, original files." in lines and "* Path: brats_2013_pat0009_1/" in lines
    assert "* Licence: no redistribution." in lines and "## repo/a @ 123" in lines
    assert lines[:2] == ["**Licence status: never commit.** Terms", "apply."]
    assert not any("Brats18_Z_1" in s for s in lines)


def test_head_mask_is_above_a_negative_background():
    a = np.full((10, 10, 10), -0.7, np.float32)  # BRATS 2015 copies: one negative background value
    a[2:8, 2:8, 2:8] = np.random.default_rng(0).normal(size=(6, 6, 6))
    m = real.head_mask(a)
    assert m[2:8, 2:8, 2:8].all() and not m[0].any()


def test_benchmark_fidelity_passes_the_truth_and_flags_a_wrong_output() -> None:
    """The SR benchmarks' fidelity column (``benchmarks.enhance.data.fidelity``): the thin volume a
    noisy thick one was made from, re-degraded by the true profile, explains its input (pass);
    the same output shifted by four thin slices along k does not (warn or fail, and named)."""
    from scipy import ndimage

    from benchmarks.enhance import data
    from medtorch.volume import Geometry, Volume

    rng = np.random.default_rng(3)
    obj = ndimage.gaussian_filter(rng.normal(size=(48, 40, 36)), 2.0).astype(np.float32)
    obj = (obj - obj.min()) / (obj.max() - obj.min())
    vol = Volume(obj, Geometry((36, 40, 48), (2.0, -3.0, 1.0), (1.0, 1.0, 1.0), np.eye(3)))
    thick, thin = data.thick_slices(4, 4.0, volume=vol)
    noisy = Volume(thick.array + rng.normal(scale=0.01, size=thick.array.shape).astype(np.float32), thick.geometry)
    good = data.fidelity(noisy, thin.array, 4, 4.0)
    assert good["verdict"] == "pass", good
    assert 0.5 < good["rms_over_noise_sigma"] < 1.5
    bad = data.fidelity(noisy, np.roll(thin.array, 4, axis=0), 4, 4.0)
    assert bad["verdict"] in ("warn", "fail") and "fidelity_rms" in bad["flagged"], bad
    assert "error" in data.fidelity(noisy, thin.array[:-4], 4, 4.0)
    lines = data.fidelity_lines([(["x4", "MedTorch"], bad, -1.0), (["x4", "MedTorch"], good, -0.5)], ["factor", "method"])
    assert lines[-1].endswith("below cubic B-spline: 2; flagged by the verdict (warn or fail): 1.")
