"""Benchmarks (see adlab_bench.py); the join path at scale, a simulation over counted calls: join_scale.py."""
