"""Benchmarks (see adlab_bench.py)."""
