"""Registration benchmark: MedTorch's torch engine beside SimpleITK, elastix and ANTs.

``python -m benchmarks.registration [--quick] [--cases PATTERN ...] [--engines ...]`` builds
multimodal cases with a known truth from the MNI152 2009a template
(:mod:`benchmarks.registration.cases`), runs each engine on each case in its own process
(:mod:`benchmarks.registration.worker`, :mod:`benchmarks.registration.engines`), and writes
``docs/benchmarks/registration.md`` (:mod:`benchmarks.registration.report`).
"""
