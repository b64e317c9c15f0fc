"""pagelens benchmarks: `make bench` (`python -m bench [name ...]`) runs them and updates docs/performance.md.

Each benchmark module exposes a `BENCHMARK` (a `bench.common.Benchmark`) that `bench.__main__` lists.
Nothing is imported here, so `python -m bench.<module>` runs a module without importing it twice.
"""
