"""Model-store benchmarks (issue 19: importing a 100 MB pack verifies its hashes in <= 2 s)."""
