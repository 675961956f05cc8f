"""The real-case and phantom-family seeded-segmentation benchmarks' harness (benchmarks.segment.real_bench,
family_bench): the fixed development / held-out split, Slicer's Grow-from-seeds region, the oracle
threshold, the click-and-box peers' seeds, and an end-to-end run on a tiny fake case folder (no
real data: the real cases are never in the repository)."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest

from medtorch.segment.tumor_phantom import make_tumor_phantom, random_tumor_phantom, synthetic_tissue
from medtorch.volume import Geometry, Volume

BRATS18 = ["Brats18_CBICA_AAB_1", "Brats18_CBICA_AOO_1", "Brats18_CBICA_AQN_1", "Brats18_CBICA_ARW_1",
           "Brats18_CBICA_ASA_1", "Brats18_CBICA_ASK_1", "Brats18_CBICA_ATV_1", "Brats18_TCIA02_471_1",
           "Brats18_TCIA04_192_1", "Brats18_TCIA08_105_1"]
BRATS15 = [f"BRATS2015_brats_2013_pat000{i}_1" for i in range(1, 7)]

# The peer (ITK FastGrowCut, Slicer's Grow from seeds) is a benchmark requirement (benchmarks/requirements.txt),
# not a test one: where it is missing, the harness still runs MedTorch and the other rows, and the peer's rows
# are checked to be error rows that name the missing module.
HAS_GROWCUT = importlib.util.find_spec("itk") is not None


def test_split_is_even_dev_odd_held_out_within_each_dataset():
    from benchmarks.segment.real_bench import dataset_of, split_cases

    ids = list(reversed(BRATS15)) + BRATS18[::-1]  # order given does not matter
    split = split_cases(ids)
    assert [split[c] for c in BRATS18] == ["dev", "held-out"] * 5
    assert [split[c] for c in BRATS15] == ["dev", "held-out"] * 3
    assert {dataset_of(c) for c in BRATS18} == {"BraTS 2018"} and {dataset_of(c) for c in BRATS15} == {"BRATS 2015"}
    # another dataset is split on its own
    assert split_cases(["X_2", "X_1", "Brats18_B"]) == {"X_1": "dev", "X_2": "held-out", "Brats18_B": "dev"}


def test_slicer_region_grows_the_seed_box_by_a_fifth_per_side():
    from benchmarks.segment.real_bench import slicer_region

    s = np.zeros((60, 80, 100), np.uint8)
    s[20, 10, 30] = 1
    s[30, 60, 31] = 2  # extents (last - first): 10, 50, 1
    lo, hi = slicer_region(s)
    assert lo.tolist() == [20 - 3, 10 - 10, 30 - 3] and hi.tolist() == [30 + 3 + 1, 60 + 10 + 1, 31 + 3 + 1]
    s[59, 79, 99] = 2
    lo, hi = slicer_region(s)
    assert hi.tolist() == [60, 80, 100]  # clipped to the image


def test_oracle_threshold_is_the_best_of_all_thresholds():
    from benchmarks.segment.real_bench import best_threshold

    rng = np.random.default_rng(0)
    truth = np.zeros((12, 14, 16), np.uint8)
    truth[3:8, 4:10, 5:12] = 1
    img = rng.normal(0, 1, truth.shape).astype(np.float32) + 1.5 * truth
    region = (np.array([1, 1, 1]), np.array([11, 13, 15]))
    d, thr, side = best_threshold(img, truth, region)
    sl = tuple(slice(a, b) for a, b in zip(*region))
    brute = 0.0
    for t in np.unique(img[sl]):
        for lab in (img >= t, img <= t):
            m = np.zeros(truth.shape, bool)
            m[sl] = lab[sl]
            brute = max(brute, 2 * (m & (truth > 0)).sum() / (m.sum() + truth.sum()))
    assert d == pytest.approx(brute) and side == ">="
    m = np.zeros(truth.shape, bool)
    m[sl] = img[sl] >= thr
    assert 2 * (m & (truth > 0)).sum() / (m.sum() + truth.sum()) == pytest.approx(d)
    # a dark lesion: the best side is <=
    assert best_threshold(-img, truth, region)[2] == "<="


def test_box_shell_seeds_paint_the_region_boundary_as_background():
    from benchmarks.segment.real_bench import box_shell_seeds

    s = np.zeros((10, 10, 10), np.uint8)
    s[5, 5, 5] = 1
    out = box_shell_seeds(s, np.array([2, 2, 2]), np.array([8, 9, 8]), 2)
    assert out[5, 5, 5] == 1 and out[2, 5, 5] == 2 and out[7, 5, 5] == 2 and out[5, 8, 5] == 2
    assert out[3, 3, 3] == 0 and out[1, 5, 5] == 0 and out[5, 5, 8] == 0
    assert (out == 2).sum() == 6 * 7 * 6 - 4 * 5 * 4


@pytest.fixture(scope="module")
def fake_dir(tmp_path_factory):
    """Two tiny 'real' cases in the real layout (flair, t1, seg) and a SOURCES.md."""
    from medtorch.io import write_volume

    d = tmp_path_factory.mktemp("real")
    geom = Geometry((40, 40, 34), origin=(-29.25, -29.25, -24.75), spacing=(1.5, 1.5, 1.5))
    tissue = synthetic_tissue(geom, seed=1)
    for i, cid in enumerate(["Brats18_FAKE_A_1", "Brats18_FAKE_B_1"]):
        ph = make_tumor_phantom(tissue, noise=0.05, seed=i, core_radius_mm=5.0, rim_mm=2.0, oedema_radius_mm=9.0)
        (d / cid).mkdir()
        write_volume(ph.channels["FLAIR"], d / cid / "flair.nii.gz")
        write_volume(ph.channels["T1"], d / cid / "t1.nii.gz")
        write_volume(Volume(ph.truth.array.astype(np.float32), ph.truth.geometry, "scalar"), d / cid / "seg.nii.gz")
    (d / "SOURCES.md").write_text("# Sources\n\nSynthetic test cases made by the test.\n\n## Per-case provenance\n\nX\n")
    return d


def test_real_bench_end_to_end_on_a_fake_folder(fake_dir, tmp_path):
    from benchmarks.segment.real_bench import GROWCUT, main

    out = tmp_path / "real.md"
    rc = main(["--real-dir", str(fake_dir), "--workdir", str(tmp_path / "w"), "--out", str(out), "--no-cli",
               "--methods", "medtorch", GROWCUT, "oracle threshold", "--protocols", "three_slice", "click_box",
               "--rounds", "1"])
    assert rc == 0
    md = out.read_text()
    assert "NOT in this repository" in md and "Synthetic test cases made by the test." in md
    assert "Per-case provenance" not in md  # quoted up to the per-case part only
    assert "held-out: Brats18_FAKE_B_1" in md and "development: Brats18_FAKE_A_1" in md
    assert "DEVELOPMENT cases" in md and "## Targets" in md and "does the verdict catch" in md
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    got = {(r["case"], r["protocol"], r["method"], r.get("round")): r for r in rows}
    for case in ("Brats18_FAKE_A_1", "Brats18_FAKE_B_1"):
        # the peers are stable references; MedTorch's Dice is whatever the method gives (it changes)
        for m in (GROWCUT, "oracle threshold") if HAS_GROWCUT else ("oracle threshold",):
            assert got[(case, "three_slice", m, None)]["dice"] > 0.8, got[(case, "three_slice", m, None)]
        if not HAS_GROWCUT:
            assert "itk" in got[(case, "three_slice", GROWCUT, None)]["error"]
        assert 0.0 <= got[(case, "three_slice", "medtorch", None)]["dice"] <= 1.0
        assert got[(case, "three_slice", "medtorch", None)]["seconds"] > 0
        assert got[(case, "three_slice", "medtorch", None)]["verdict"] in ("pass", "warn", "fail")
        # click-and-box: the peers got the box boundary as background; MedTorch gets no background seed
        # (a row either way: a Dice, or the method's error)
        # (on the box plus 2 voxels: FastGrowCut ignores seeds on its image's outermost layer, a box boundary
        # there would leave it with no background at all)
        if HAS_GROWCUT:
            assert got[(case, "click_box", GROWCUT, None)]["dice"] > 0.5
        r = got[(case, "click_box", "medtorch", None)]
        assert "dice" in r or "error" in r
        for m in ("medtorch", GROWCUT) if HAS_GROWCUT else ("medtorch",):
            assert {0, 1} <= {k[3] for k in got if k[0] == case and k[1] == "corrections" and k[2] == m}
    assert got[("Brats18_FAKE_B_1", "three_slice", "medtorch", None)]["split"] == "held-out"
    # the report is written again, the same, from the run's raw results alone
    again = tmp_path / "again.md"
    assert main(["--from-json", str(out.with_suffix(".json")), "--out", str(again)]) == 0
    assert again.read_text() == md


def test_real_bench_turns_a_failing_method_into_a_row(fake_dir, monkeypatch):
    import benchmarks.segment.real_bench as rb

    case = rb.load_case(fake_dir, "Brats18_FAKE_A_1", "dev")

    def boom(*a, **k):
        raise RuntimeError("broken on purpose")

    monkeypatch.setattr(rb, "growcut_segment", boom)
    rows = rb.run_case(case, ["three_slice"], ["medtorch", rb.GROWCUT], None, rounds=1, log=lambda m: None)
    gc = [r for r in rows if r["method"] == rb.GROWCUT and r["protocol"] == "three_slice"]
    assert gc and "broken on purpose" in gc[0]["error"]
    assert any(r["method"] == "medtorch" and "dice" in r for r in rows)


def test_family_bench_runs_a_phantom_and_summarises():
    from benchmarks.segment.family_bench import run_phantom, summarise
    from benchmarks.segment.real_bench import GROWCUT, medtorch_variants

    geom = Geometry((48, 48, 40), origin=(-35.25, -35.25, -29.25), spacing=(1.5, 1.5, 1.5))
    ph = random_tumor_phantom(np.random.default_rng([3, 0]), synthetic_tissue(geom, seed=1), channels=("FLAIR", "T1"))
    ph.parameters["index"] = 0
    rows = run_phantom(ph, ["medtorch", GROWCUT], {k: v for k, v in medtorch_variants().items() if k == "medtorch"})
    assert {r["method"] for r in rows} == {"medtorch", GROWCUT}
    for r in rows:
        if r["method"] == GROWCUT and not HAS_GROWCUT:
            assert "itk" in r["error"], r
        else:
            assert "dice" in r and 0.0 <= r["dice"] <= 1.0, rows
    fake = [{"index": i, "method": "medtorch", "dice": d, "params": {"small": i < 2, "dark": False}}
            for i, d in enumerate([0.5, 0.8, 0.9, 0.95, 0.97] * 2)]
    s = summarise(fake, ["medtorch"])
    assert s["medtorch"]["all"]["mean"] == pytest.approx(0.824)
    assert s["medtorch"]["all"]["min"] == 0.5 and s["medtorch"]["small"]["n"] == 2
    assert s["targets"]["mean"][2] is False and sum(s["medtorch"]["all"]["hist"]) == 10


def test_split_column_of_cases_csv_overrides_the_rule(tmp_path):
    from benchmarks.segment.real_bench import read_fixed_split, split_cases
    (tmp_path / "cases.csv").write_text("case,dataset,split\nBrats18_B,BraTS 2018,dev\nBrats18_C,BraTS 2018,held-out\n"
                                        "Brats18_D,BraTS 2018,\n")
    fixed = read_fixed_split(tmp_path)
    assert fixed == {"Brats18_B": "dev", "Brats18_C": "held-out"}
    # B would be held-out by the even/odd rule (A, B, C, D sorted); the column keeps it dev, and the
    # cases without a split entry (A, D) are split by the rule among themselves
    assert split_cases(["Brats18_A", "Brats18_B", "Brats18_C", "Brats18_D"], fixed) == {
        "Brats18_A": "dev", "Brats18_B": "dev", "Brats18_C": "held-out", "Brats18_D": "held-out"}
    assert read_fixed_split(tmp_path / "nowhere") == {}
    (tmp_path / "cases.csv").write_text("case_id,split\nX_1,test\n")
    with pytest.raises(ValueError, match="use 'dev' or 'held-out'"):
        read_fixed_split(tmp_path)


def _commit_files(repo: Path, files: dict[str, bytes]) -> str:
    import subprocess

    for rel, data in files.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_bytes(data)
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
           "HOME": str(repo), "PATH": os.environ.get("PATH", "")}
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "cases"]):
        subprocess.run(["git", "-C", str(repo), *cmd], check=True, env=env, capture_output=True)
    return subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], check=True, capture_output=True,
                          text=True, env=env).stdout.strip()


def _nii_bytes(tmp: Path, array: np.ndarray, spacing: tuple[float, float, float]) -> bytes:
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(array)
    img.SetSpacing(spacing)
    img.SetOrigin((-3.0, 5.0, 7.5))
    p = tmp / "x.nii.gz"
    sitk.WriteImage(img, str(p), True)
    return p.read_bytes()


def test_prepare_real_copies_cases_from_git_and_fixes_the_split(tmp_path: Path) -> None:
    """``benchmarks.segment.prepare_real`` reads each case from the named commit with ``git show``:
    a float32 label map becomes uint8 on the same grid, other files are byte-identical copies,
    ``cases.csv`` carries the fixed split, and a Git LFS pointer is refused."""
    import csv

    import SimpleITK as sitk

    from benchmarks.segment import prepare_real as pr

    rng = np.random.default_rng(0)
    flair = rng.normal(size=(6, 7, 8)).astype(np.float32)
    seg = np.zeros((6, 7, 8), np.float32)
    seg[2:4, 2:5, 3:6] = 2.0
    seg[3, 3, 4] = 4.0
    repo = tmp_path / "repo"
    files = {"d/pat/Flair.nii.gz": _nii_bytes(tmp_path, flair, (1.0, 1.0, 1.0)),
             "d/pat/T1c.nii.gz": _nii_bytes(tmp_path, flair * 2, (1.0, 1.0, 1.0)),
             "d/pat/OT.nii.gz": _nii_bytes(tmp_path, seg, (1.0, 1.0, 1.0)),
             "e/Brats18_X_1/Brats18_X_1_flair.nii.gz": _nii_bytes(tmp_path, flair, (1.0, 1.0, 1.0)),
             "e/Brats18_X_1/Brats18_X_1_seg.nii.gz": _nii_bytes(tmp_path, seg.astype(np.uint8), (1.0, 1.0, 1.0)),
             "f/Brats18_Y_1/Brats18_Y_1_flair.nii.gz": b"version https://git-lfs.github.com/spec/v1\noid sha256:0\n",
             "f/Brats18_Y_1/Brats18_Y_1_seg.nii.gz": b"version https://git-lfs.github.com/spec/v1\noid sha256:1\n"}
    commit = _commit_files(repo, files)
    dm = ("deepmedic/deepmedic", commit)
    sources = [pr.Source("BRATS2015_brats_2013_pat0001_1", dm, "d/pat",
                         {"flair": "Flair.nii.gz", "t1ce": "T1c.nii.gz", "seg": "OT.nii.gz"}, "BRATS 2015",
                         float_label=True),
               pr.Source("Brats18_X_1", ("other/repo", commit), "e/Brats18_X_1",
                         {"flair": "Brats18_X_1_flair.nii.gz", "seg": "Brats18_X_1_seg.nii.gz"}, "BraTS 2018")]
    out = tmp_path / "out"
    rows = pr.prepare({"deepmedic/deepmedic": repo, "other/repo": repo}, out, sources)
    assert [r["split"] for r in rows] == ["dev", "held-out"]
    assert (out / "BRATS2015_brats_2013_pat0001_1" / "flair.nii.gz").read_bytes() == files["d/pat/Flair.nii.gz"]
    lab = sitk.ReadImage(str(out / "BRATS2015_brats_2013_pat0001_1" / "seg.nii.gz"))
    assert lab.GetPixelID() == sitk.sitkUInt8
    assert lab.GetOrigin() == (-3.0, 5.0, 7.5)
    assert np.array_equal(sitk.GetArrayFromImage(lab), seg.astype(np.uint8))
    with open(out / "cases.csv") as fh:
        csv_rows = list(csv.DictReader(fh))
    assert [(r["case_id"], r["split"], r["wt_voxels"]) for r in csv_rows] == [
        ("BRATS2015_brats_2013_pat0001_1", "dev", str(int((seg > 0).sum()))), ("Brats18_X_1", "held-out", str(int((seg > 0).sum())))]
    assert "never be committed" in (out / "SOURCES.md").read_text()
    lfs = [pr.Source("Brats18_Y_1", ("other/repo", commit), "f/Brats18_Y_1",
                     {"flair": "Brats18_Y_1_flair.nii.gz", "seg": "Brats18_Y_1_seg.nii.gz"}, "BraTS 2018")]
    with pytest.raises(SystemExit, match="LFS pointer"):
        pr.prepare({"other/repo": repo}, tmp_path / "out2", lfs)


def test_prepare_real_lists_the_benchmark_split() -> None:
    """The cases it writes are the 19 of ``docs/benchmarks/segment_real.md``: five development, the
    rest held-out, each once."""
    from benchmarks.segment import prepare_real as pr

    names = [s.case for s in pr.SOURCES]
    assert len(names) == len(set(names)) == 19
    assert set(pr.DEVELOPMENT) <= set(names) and len(pr.DEVELOPMENT) == 5
    doc = (Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "segment_real.md").read_text()
    assert all(n in doc for n in names)
