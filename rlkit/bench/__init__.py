"""Benchmarks (`python -m rlkit.bench.<name>`); speed targets live here, not in timed tests."""
