"""Segmentation benchmark: ``python -m benchmarks.segment [--quick]`` (from the repository root).

Three parts, each also runnable alone, each writing its own report in ``docs/benchmarks/``:

* :mod:`benchmarks.segment.seeded_bench` -- seeded tumour segmentation (MedTorch's region
  competition, Slicer's GrowCut, scikit-image's random walker) on MNI-template tumour phantoms
  at 4, 7 and 10 % noise: Dice, first-run and per-seed-edit time, peak memory
  (``segment_seeded.md``);
* :mod:`benchmarks.segment.dl_timing` -- deep-learning inference of a BraTS-bundle-shaped
  SegResNet on a 240x240x155 four-channel study, beside MONAI's bundle runner (``segment_dl.md``);
* :mod:`benchmarks.segment.nodules_bench` -- lung-nodule detection, MedTorch's LoG beside
  scikit-image's ``blob_log`` (``segment_nodules.md``).

``python -m benchmarks.segment`` runs all three and writes ``docs/benchmarks/segment.md``, which
gathers the three reports.
"""
