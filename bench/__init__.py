"""Benchmarks, run as scripts (`python bench/bench_runtime.py`); harness and support are what they share."""
