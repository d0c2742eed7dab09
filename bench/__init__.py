"""Benchmarks (run as scripts: `python bench/bench_runtime.py`); their shared modules are harness and support."""
