"""Lay out the real brain-tumor cases as ``benchmarks.segment.real_bench --real-dir`` reads them.

``python -m benchmarks.segment.prepare_real --deepmedic REPO --bioexp REPO --deepbrainseg REPO --out DIR``

Each ``REPO`` is a git repository (a clone, or the bare mirror that the ``fetch`` tool writes) of

* ``deepmedic/deepmedic`` (BRATS 2015 cases pat0001-0006, DeepMedic's normalised copies),
* ``koriavinash1/BioExp`` and ``koriavinash1/DeepBrainSeg`` (original BraTS 2018 files),

at the commits named in :data:`SOURCES` (the files are read from those commits with ``git show``, so
a newer clone gives the same bytes or fails loudly). ``DIR`` gets ``<case>/{flair,t1,t1ce,t2,seg}.nii.gz``,
``cases.csv`` (with the fixed ``split`` column) and ``SOURCES.md``. Every copy is checked: real
image data (not a Git LFS pointer), FLAIR and label on one grid, a label with tumor voxels.

Nothing is downloaded, and nothing written here may be committed: no licence of these cases
allows redistribution (BraTS 2018 terms give no such right; the BRATS 2015 copies are CC BY-NC-SA).
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

DEEPMEDIC = ("deepmedic/deepmedic", "e10ba7c3570d06194f5dadca91d99d5e7bba7de5")
BIOEXP = ("koriavinash1/BioExp", "c0a88e70e26d857720a23238a0e875d360974654")
DEEPBRAINSEG = ("koriavinash1/DeepBrainSeg", "5d4f3810f1c776050b6937b6db5b7afa17527efd")

#: Cases on the development side when parameters were chosen; every other case is held-out.
DEVELOPMENT = ("BRATS2015_brats_2013_pat0001_1", "BRATS2015_brats_2013_pat0003_1", "BRATS2015_brats_2013_pat0005_1",
               "Brats18_CBICA_AQN_1", "Brats18_CBICA_ASA_1")


@dataclass(frozen=True)
class Source:
    case: str
    repo: tuple[str, str]  # (owner/name, commit)
    folder: str
    files: dict[str, str]  # our name -> file name in the folder
    dataset: str
    float_label: bool = False  # the label map is stored as float32: rewritten as uint8, geometry kept


def _brats15(n: int, part: str) -> Source:
    return Source(f"BRATS2015_brats_2013_pat000{n}_1", DEEPMEDIC,
                  f"examples/dataForExamples/brats2015TrainingData/{part}/brats_2013_pat000{n}_1",
                  {"flair": "Flair_subtrMeanDivStd.nii.gz", "t1ce": "T1c_subtrMeanDivStd.nii.gz",
                   "seg": "OTMultiClass.nii.gz"}, "BRATS 2015", float_label=True)


def _brats18(case: str, repo: tuple[str, str], root: str) -> Source:
    return Source(case, repo, f"{root}/{case}", {c: f"{case}_{c}.nii.gz" for c in ("flair", "t1", "t1ce", "t2", "seg")},
                  "BraTS 2018")


SOURCES: tuple[Source, ...] = (
    _brats15(1, "test"), _brats15(2, "test"), _brats15(3, "validation"), _brats15(4, "validation"),
    _brats15(5, "train"), _brats15(6, "train"),
    _brats18("Brats18_CBICA_AQN_1", DEEPBRAINSEG, "sample_volume/brats"),
    _brats18("Brats18_CBICA_ARW_1", BIOEXP, "sample_vol/brats"),
    _brats18("Brats18_CBICA_ASA_1", BIOEXP, "sample_vol/brats"),
    *(_brats18(f"Brats18_CBICA_{c}_1", BIOEXP, "sample_vol/brats") for c in ("AMH", "APY", "AQQ", "ASE", "ASY")),
    *(_brats18(c, DEEPBRAINSEG, "sample_volume/brats")
      for c in ("Brats18_2013_11_1", "Brats18_CBICA_ABM_1", "Brats18_TCIA01_378_1", "Brats18_TCIA02_370_1",
                "Brats18_TCIA10_637_1")),
)

SOURCES_MD = """# Sources of the real brain-tumor MRI cases in this folder

Written by `python -m benchmarks.segment.prepare_real`. Every file came from a snapshot of a public GitHub
repository (a clone or a bare git mirror; files read with `git show <commit>:<path>`). Nothing else was
downloaded. Every file was checked: it is real image data, not a Git LFS pointer; flair and seg share one grid
(240x240x155, 1 mm); seg holds integer labels with > 0 tumor voxels (whole tumor = seg > 0).

**Licence status: this data must never be committed or redistributed.** The BraTS 2018 data terms give no
right to redistribute (the two koriavinash1 repositories below are MIT-licensed as *code*, but that licence
cannot cover the BraTS images they carry). The BRATS 2015 copies in deepmedic are CC BY-NC-SA 3.0 CH (see
the licence file beside each case in that repository), which allows no commercial use and requires
share-alike and attribution. Cite Menze et al., IEEE TMI 34(10):1993-2024, 2015, and for BraTS 2018 Bakas et
al., Sci Data 4:170117, 2017, and arXiv:1811.02629.

Per-case layout: `<case>/flair.nii.gz`, `t1.nii.gz` (where the source has it), `t1ce.nii.gz`, `t2.nii.gz`
(where present), `seg.nii.gz`. `cases.csv` lists one row per case.

## deepmedic/deepmedic @ e10ba7c3570d06194f5dadca91d99d5e7bba7de5
* Path: `examples/dataForExamples/brats2015TrainingData/{test,validation,train}/brats_2013_pat000N_1/`.
* Cases: BRATS2015_brats_2013_pat0001_1 ... pat0006_1 (BRATS 2015 HGG training).
* Files: `Flair_subtrMeanDivStd.nii.gz` -> flair.nii.gz, `T1c_subtrMeanDivStd.nii.gz` -> t1ce.nii.gz
  (byte-identical copies); `OTMultiClass.nii.gz` -> seg.nii.gz (labels 0-4), stored as float32
  there and rewritten here as uint8 with SimpleITK (values, origin, spacing and direction unchanged).
  There is **no T1 and no T2** in this source, so the second channel is t1ce.
* Caveat: these are DeepMedic's modified copies: intensities normalised to zero mean and unit variance
  within the brain, the background one negative value per volume. `OTMultiClass` is the BRATS 2015 expert
  label map.
* Licence: CC BY-NC-SA 3.0 Switzerland; the original data came from the BRATS 2015 challenge.

## koriavinash1/DeepBrainSeg @ 5d4f3810f1c776050b6937b6db5b7afa17527efd
* Path: `sample_volume/brats/<case>/<case>_{flair,t1,t1ce,t2,seg}.nii.gz`, byte-identical copies.
* Cases: Brats18_CBICA_AQN_1, Brats18_2013_11_1, Brats18_CBICA_ABM_1, Brats18_TCIA01_378_1,
  Brats18_TCIA02_370_1, Brats18_TCIA10_637_1 (LGG).
* Licence: repository MIT (code). BraTS 2018 data terms apply to the images: no redistribution.

## koriavinash1/BioExp @ c0a88e70e26d857720a23238a0e875d360974654
* Path: `sample_vol/brats/<case>/<case>_{flair,t1,t1ce,t2,seg}.nii.gz`, byte-identical copies.
* Cases: Brats18_CBICA_ARW_1, ASA, AMH, APY, AQQ, ASE, ASY (all `Brats18_CBICA_*_1`).
* Licence: repository MIT (code). BraTS 2018 data terms apply to the images: no redistribution.

## The split
The `split` column of `cases.csv` fixes it: the cases that were on the development side when parameters
were chosen (Brats18_CBICA_AQN_1, Brats18_CBICA_ASA_1, BRATS2015 pat0001, pat0003, pat0005) are development;
every other case is held-out. The ten BraTS 2018 cases after the first three were chosen by a fixed rule
before any result was looked at (in each koriavinash1 repository's sorted list of cases, every fourth).
"""


def _git_show(repo: Path, commit: str, path: str) -> bytes:
    r = subprocess.run(["git", "-C", str(repo), "show", f"{commit}:{path}"], capture_output=True, check=False)
    if r.returncode != 0:
        raise SystemExit(f"{repo}: cannot read {path} at {commit[:7]} ({r.stderr.decode().strip()}); "
                         "give a clone or mirror of the repository that holds that commit")
    if r.stdout.startswith(b"version https://git-lfs"):
        raise SystemExit(f"{repo}: {path} is a Git LFS pointer, not image data")
    return r.stdout


def prepare(repos: dict[str, Path], out: Path, sources: Sequence[Source] = SOURCES) -> list[dict[str, str]]:
    """Write every case of ``sources`` under ``out``; returns the ``cases.csv`` rows."""
    import SimpleITK as sitk

    rows = []
    for s in sources:
        d = out / s.case
        d.mkdir(parents=True, exist_ok=True)
        for name, fname in s.files.items():
            data = _git_show(repos[s.repo[0]], s.repo[1], f"{s.folder}/{fname}")
            target = d / f"{name}.nii.gz"
            if name == "seg" and s.float_label:
                with tempfile.TemporaryDirectory() as tmp:
                    p = Path(tmp) / "seg.nii.gz"
                    p.write_bytes(data)
                    img = sitk.ReadImage(str(p))
                    a = sitk.GetArrayFromImage(img)
                    if not np.array_equal(a, np.round(a)):
                        raise SystemExit(f"{s.case}: the label map holds non-integer values")
                    lab = sitk.GetImageFromArray(a.astype(np.uint8))
                    lab.CopyInformation(img)
                    sitk.WriteImage(lab, str(target) + ".part.nii.gz", True)
                    Path(str(target) + ".part.nii.gz").replace(target)
            else:
                target.write_bytes(data)
        flair, seg = sitk.ReadImage(str(d / "flair.nii.gz")), sitk.ReadImage(str(d / "seg.nii.gz"))
        if flair.GetSize() != seg.GetSize() or not np.allclose(flair.GetSpacing(), seg.GetSpacing()):
            raise SystemExit(f"{s.case}: FLAIR and label are not on one grid")
        wt = int((sitk.GetArrayViewFromImage(seg) > 0).sum())
        if wt == 0:
            raise SystemExit(f"{s.case}: the label map has no tumor voxel")
        rows.append({"case_id": s.case, "split": "dev" if s.case in DEVELOPMENT else "held-out",
                     "source_repo": s.repo[0], "commit": s.repo[1], "path": s.folder,
                     "channels": "+".join(k for k in s.files if k != "seg"), "wt_voxels": str(wt),
                     "dataset": s.dataset})
    with open(out / "cases.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (out / "SOURCES.md").write_text(SOURCES_MD, encoding="utf-8")
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--deepmedic", type=Path, required=True, help="a clone or mirror of deepmedic/deepmedic")
    ap.add_argument("--bioexp", type=Path, required=True, help="a clone or mirror of koriavinash1/BioExp")
    ap.add_argument("--deepbrainseg", type=Path, required=True, help="a clone or mirror of koriavinash1/DeepBrainSeg")
    ap.add_argument("--out", type=Path, required=True, help="the data folder to write (never inside the repository)")
    a = ap.parse_args(argv)
    rows = prepare({DEEPMEDIC[0]: a.deepmedic, BIOEXP[0]: a.bioexp, DEEPBRAINSEG[0]: a.deepbrainseg}, a.out)
    n_dev = sum(r["split"] == "dev" for r in rows)
    print(f"{len(rows)} cases written to {a.out} ({n_dev} development, {len(rows) - n_dev} held-out)")


if __name__ == "__main__":
    main()
