"""Lay out local copies of the Harvard atlas pairs as ``benchmarks.fusion --harvard-dir`` reads them.

``python -m benchmarks.fusion.prepare_harvard --cddfuse CDDFUSE --train TRAIN --out DIR``

* ``CDDFUSE``: a clone of Zhaozixiang1228/MMIF-CDDFuse (its ``test_img/{MRI_CT,MRI_PET,MRI_SPECT}``
  are the test split: 21, 42 and 73 pairs at fd8da1f);
* ``TRAIN``: a clone of xianming-gu/Havard-Medical-Image-Fusion-Datasets (its ``CT-MRI``,
  ``PET-MRI`` and ``SPECT-MRI`` folders give the training split);
* ``DIR``: written as ``<task>/{test,train}/{MRI,CT|PET|SPECT}/<name>.png``.

A training pair is left out when either of its images has a grey-level (Pearson) correlation of
0.99 or more with the same modality's image of any test pair: the two collections overlap, and a
test image must not be trained or tuned on (at 984d169 this keeps 163 of 184 CT, 269 of 269 PET and
301 of 357 SPECT pairs). Nothing is downloaded; neither collection has a licence, so the result
stays local and is never committed.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np

TASKS = (("MRI_CT", "CT", "CT-MRI"), ("MRI_PET", "PET", "PET-MRI"), ("MRI_SPECT", "SPECT", "SPECT-MRI"))
DUPLICATE_CORRELATION = 0.99


def _grey(path: Path) -> np.ndarray:
    from PIL import Image

    v = np.asarray(Image.open(path).convert("L"), dtype=np.float64).ravel()
    return (v - v.mean()) / (v.std() + 1e-9)


def prepare(cddfuse: Path, train: Path, out: Path) -> dict[str, tuple[int, int, int]]:
    """Copy the test pairs, and the training pairs that duplicate no test image; returns
    ``{task: (test pairs, training pairs kept, training pairs found)}``."""
    counts = {}
    for task, other, train_name in TASKS:
        test_dir = cddfuse / "test_img" / task
        names = sorted(p.name for p in (test_dir / "MRI").glob("*.png") if (test_dir / other / p.name).exists())
        if not names:
            raise SystemExit(f"no test pairs under {test_dir} (expected MRI/ and {other}/ with matching PNG names)")
        refs = {}
        for mod in ("MRI", other):
            (out / task / "test" / mod).mkdir(parents=True, exist_ok=True)
            for n in names:
                shutil.copyfile(test_dir / mod / n, out / task / "test" / mod / n)
            refs[mod] = np.stack([_grey(test_dir / mod / n) for n in names])
        src = train / train_name
        found = sorted(p.name for p in (src / "MRI").glob("*.png") if (src / other / p.name).exists())
        kept = 0
        for n in found:
            if any(float((refs[mod] @ _grey(src / mod / n)).max()) / refs[mod].shape[1] >= DUPLICATE_CORRELATION
                   for mod in ("MRI", other)):
                continue
            for mod in ("MRI", other):
                (out / task / "train" / mod).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src / mod / n, out / task / "train" / mod / n)
            kept += 1
        counts[task] = (len(names), kept, len(found))
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.fusion.prepare_harvard", description=__doc__.split("\n\n")[0])
    p.add_argument("--cddfuse", type=Path, required=True, help="a clone of Zhaozixiang1228/MMIF-CDDFuse (test split)")
    p.add_argument("--train", type=Path, required=True,
                   help="a clone of xianming-gu/Havard-Medical-Image-Fusion-Datasets (training split)")
    p.add_argument("--out", type=Path, required=True, help="the folder to write (then: --harvard-dir OUT)")
    args = p.parse_args(argv)
    for task, (n_test, kept, found) in prepare(args.cddfuse, args.train, args.out).items():
        print(f"{task}: {n_test} test pairs; {kept} of {found} training pairs kept (no test duplicate)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
