"""`python -m bench [name ...]`: run the benchmarks (all, or those named), print their tables and
rewrite each one's results section in its document (docs/performance.md; recovery's in
docs/reliability.md).

A new benchmark is a `bench/<name>.py` exposing `BENCHMARK = Benchmark(name, run)`, added to
BENCHMARKS below; its section in the document is the text between `<!-- bench:<name>:start -->`
and `<!-- bench:<name>:end -->` (appended at the end when the markers are missing).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from bench import api_load, e2e, e2e_audit, keyphrases, parsing, queue_hop, recovery, worker_throughput
from bench.common import BenchContext, Benchmark, BenchResult, redis_target, replace_section

BENCHMARKS: tuple[Benchmark, ...] = (
    queue_hop.BENCHMARK,
    api_load.BENCHMARK,
    keyphrases.BENCHMARK,
    parsing.BENCHMARK,
    e2e.BENCHMARK,
    e2e_audit.BENCHMARK,
    worker_throughput.BENCHMARK,
    recovery.BENCHMARK,
)


def select(benchmarks: Sequence[Benchmark], names: Sequence[str]) -> list[Benchmark]:
    known = {b.name: b for b in benchmarks}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(known)}")
    return [known[n] for n in names] if names else list(benchmarks)


def run_benchmarks(benchmarks: Sequence[Benchmark], names: Sequence[str] = (), docs: bool = True) -> list[BenchResult]:
    """Run the chosen benchmarks one after another against one Redis; `docs=False` writes nothing."""
    chosen = select(benchmarks, names)
    results: list[BenchResult] = []
    with redis_target() as redis:
        context = BenchContext(redis)
        for benchmark in chosen:
            result = benchmark.run(context)
            print(result.text(), flush=True)
            results.append(result)
            if docs and not result.skipped:
                # After each benchmark, so a later one failing keeps the earlier figures; a skipped
                # one (nothing to measure on this machine) leaves its section as it was.
                doc = benchmark.doc
                current = doc.read_text() if doc.exists() else ""
                doc.write_text(replace_section(current, result.name, result.markdown()))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description="Run pagelens's benchmarks.")
    names = ", ".join(b.name for b in BENCHMARKS)
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default all): {names}")
    parser.add_argument("--no-docs", action="store_true", help="print only; leave docs/ alone")
    args = parser.parse_args(argv)
    run_benchmarks(BENCHMARKS, args.names, not args.no_docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
