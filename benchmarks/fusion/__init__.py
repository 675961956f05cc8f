"""Fusion benchmark: every MedTorch fusion method on 3D pairs from a real template, timings per
256^3 pair, the PyWavelets and SciPy peers on the same data, and the Harvard 2D pairs when
pointed at them. Writes ``docs/benchmarks/fusion.md`` (and its figure).

Run from the repository root::

    python -m benchmarks.fusion            # full: 1 mm template pairs, 256^3 timings (~30 min on 2 cores)
    python -m benchmarks.fusion --quick    # 2 mm pairs, 128^3 timings, short CNN training (minutes)
    python -m benchmarks.fusion --harvard-dir /data/Harvard   # also the 2D CT/PET/SPECT-MRI pairs

``--harvard-dir`` takes a folder in any layout ``medtorch fuse-eval`` reads
(:mod:`medtorch.fusion.evaluate`), e.g. ``CT-MRI/{CT,MRI}/*.png``, ``PET-MRI/{PET,MRI}``,
``SPECT-MRI/{SPECT,MRI}``.
"""
