"""``medtorch demo``: every operation MedTorch has today, end to end, on the bundled sample data.

The demo works on the MNI ICBM152 2009a template (a real T1-weighted MRI with its grey- and
white-matter maps, ``Resources/SampleData``), brought to a 2 mm grid so that the whole run
takes seconds on a laptop CPU. Every output comes with a **known truth**, so the report can
say how far each result is from it:

1. **Data** -- the T1 at 2 mm, and a second modality of the same head: a T2-like contrast
   synthesised from the tissue maps (CSF bright, grey matter intermediate, white matter
   dark, background 0) and then *misaligned* by a known rigid transform.
2. **Fuse** -- :func:`~medtorch.fusion.blend.resample_and_blend` of the T1 and the
   misaligned T2-like, once without a transform (what one gets with no registration) and
   once with the known transform (what a perfect registration would give; registration
   itself comes in a later release). Target registration error (TRE) on landmarks and
   the similarity of the two modalities measure the alignment.
3. **Enhance** -- Rician noise on the T1, then Gaussian and anisotropic-diffusion
   denoising; PSNR and SSIM against the clean T1.
4. **Segment** -- a bright ellipsoidal 'tumor' with a known outline inserted into the T1,
   segmented by threshold + largest component in an ROI box; Dice and volume error.
5. **Report** -- ``report.html`` with figures and tables (:mod:`medtorch.report`) and
   ``summary.json`` with every number, the seed, versions, device and timings.

Everything random derives from ``seed`` (one independent stream per purpose), so a run is
reproducible and the seed is recorded with its outputs.

Every step is an operation of :func:`medtorch.ops.run` (registration, fusion, denoising,
super-resolution, threshold and seeded segmentation), as the command line and Slicer run them,
and every measure is the library's (:mod:`medtorch.registration.evaluation`,
:mod:`medtorch.enhance.metrics`, :mod:`medtorch.segment.metrics`). The package:

* :mod:`medtorch.demo.data` -- the sample data and the known truth (the benchmarks use it too);
* :mod:`medtorch.demo.steps` -- the steps and :func:`run_demo`;
* :mod:`medtorch.demo.page` -- the figures and ``report.html``.

The transform convention is :mod:`medtorch.demo.data`'s; the demo checks both the round trip
through the truth transform and the centre of mass (``com(moving) = T com(aligned)``).
"""

from medtorch.demo.data import (
    SAMPLE_DATA_ENV,
    SampleData,
    add_rician_noise,
    load_sample_data,
    make_misaligned,
    matrix_from_sitk,
    rigid_matrix,
    sample_data_dir,
    sample_data_files,
    synthesize_t2like,
    tumor_phantom,
)
from medtorch.demo.page import RENDERS, render_views, write_html
from medtorch.demo.steps import run_demo, segment_tumor, segment_tumor_seeded

__all__ = [
    "RENDERS",
    "SAMPLE_DATA_ENV",
    "SampleData",
    "add_rician_noise",
    "load_sample_data",
    "make_misaligned",
    "matrix_from_sitk",
    "render_views",
    "rigid_matrix",
    "run_demo",
    "sample_data_dir",
    "sample_data_files",
    "segment_tumor",
    "segment_tumor_seeded",
    "synthesize_t2like",
    "tumor_phantom",
    "write_html",
]
