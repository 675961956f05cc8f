"""Enhancement benchmark: MedTorch's denoisers and super-resolution beside their peers.

``python -m benchmarks.enhance [--quick]`` (from the repository root) runs, on the MNI152
2009a T1 template shipped in ``Resources/SampleData``:

* **denoising** at 3, 5 and 9 % Rician noise on the central 128^3: MedTorch's selfsup,
  collab and nlm against SimpleITK's curvature anisotropic diffusion and patch-based
  denoising, dipy's Rician NLM and BM4D (the ``bm4d`` package, installed for the
  benchmark only: its licence forbids shipping it);
* **through-plane super-resolution** of thick slices simulated with a Gaussian slice
  profile at x2, x4 and x5: self-supervised SR against linear, cubic B-spline and
  windowed-sinc interpolation;
* **deployment**: the x4 model saved and reloaded, run with torch, onnxruntime and
  onnxruntime INT8 (accuracy cost and agreement).

PSNR and SSIM inside the head mask, wall time, CPU time and peak memory, each method in
its own process. The Markdown table goes to ``docs/benchmarks/enhance.md`` (``--out``).
``--quick`` uses a 64^3 crop at 5 % and a 96^3 crop at x4 (the default training; selfsup
denoising with 30 network iterations).

``--real-dir DIR`` runs instead the super-resolution benchmark on real 1 mm brain MRI read
from ``DIR`` (BraTS layout: case folders with flair/t1/t1ce/t2 NIfTI files; ``cases.csv`` and
``SOURCES.md`` beside them give the split and the provenance), made thick with a known slice
profile, the methods seeing only the thick volume (MedTorch's blind path), and a table of the
slice-profile estimates against the truth (template and real volumes, Gaussian and box,
with and without gaps): see :mod:`benchmarks.enhance.real`. Its report goes to
``docs/benchmarks/enhance_real.md`` (``--real-out``).
"""
