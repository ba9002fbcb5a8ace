"""Benchmarks run by ``tools/benchmark.py``: each module has ``main(argv) -> int``."""
