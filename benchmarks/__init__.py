"""Benchmarks: MedTorch beside its peers on the same data, writing the tables in docs/."""
