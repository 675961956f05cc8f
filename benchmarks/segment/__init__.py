"""Segmentation benchmark: ``python -m benchmarks.segment [--quick]`` (from the repository root).

Five parts, each also runnable alone, each writing its own report in ``docs/benchmarks/``:

* :mod:`benchmarks.segment.seeded_bench` -- seeded tumor segmentation (MedTorch's region
  competition, Slicer's GrowCut, scikit-image's random walker) on MNI-template tumor phantoms
  at 4, 7 and 10 % noise: Dice, first-run and per-seed-edit time, peak memory
  (``segment_seeded.md``);
* :mod:`benchmarks.segment.dl_timing` -- deep-learning inference of a BraTS-bundle-shaped
  SegResNet on a 240x240x155 four-channel study, beside MONAI's bundle runner (``segment_dl.md``);
* :mod:`benchmarks.segment.nodules_bench` -- lung-nodule detection, MedTorch's LoG beside
  scikit-image's ``blob_log`` (``segment_nodules.md``);
* :mod:`benchmarks.segment.family_bench` -- seeded segmentation on a varied phantom family (1-3
  lesions of 5-40 mm, dark lesions, rims, thick slices, ...): the distribution of whole-tumor
  Dice of MedTorch beside ITK FastGrowCut (``segment_family.md``);
* :mod:`benchmarks.segment.real_bench` -- seeded segmentation of real brain tumors
  (``--real-dir DIR``; the data is never committed): a fixed development / held-out split, five
  seed protocols and correction rounds, MedTorch beside FastGrowCut, a random walker and an
  oracle threshold, with the issue's targets (``segment_real.md``).

``python -m benchmarks.segment`` runs them (``real`` only with ``--real-dir DIR``) and writes
``docs/benchmarks/segment.md``, which gathers the reports.
"""
