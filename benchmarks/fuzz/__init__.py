"""Long fuzzing run: ``python -m benchmarks.fuzz --minutes 30``."""
