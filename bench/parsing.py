"""Parsing: where a page's parse runs, measured on ordinary pages and after a kill.

A parse has to run in a child process that can be killed (worker/parse_pool.py). Candidates:
- thread: `asyncio.to_thread(parse_html)`, as before, for reference (it cannot be stopped);
- own pool: a `ParsePool` of its own (2 children that load only the parser);
- KeyBERT pool: the keyphrase pool's child (`KeyphraseExtractor.run_in_child`), which has the model.
Each parses the same generated ~600-word pages (bench/corpus.py), one at a time, idle and while
the KeyBERT pool extracts keyphrases for `concurrency` scans (what a worker does between parses).
Then a too-complex page is parsed with a 1 s deadline, and the time from the kill until the next
ordinary page is parsed is measured: a pool replaces its killed child, and the KeyBERT pool has to
load the model again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import psutil  # type: ignore[import-untyped]  # no types-psutil in the dev deps

from app.core.models import ScanError
from bench.common import BenchContext, Benchmark, BenchResult, Table, environment, fmt_ms, median, percentile
from bench.corpus import corpus
from worker.keyphrases import KeyphraseExtractor
from worker.parse import ParsedPage, parse_html
from worker.parse_pool import ParsePool

NAME = "parsing"
TITLE = "Parsing: in a thread, a pool of its own, or the KeyBERT pool"
HOSTILE = "<html><body>" + "<div><span><b>" * 100_000
URL = "http://127.0.0.1/page.html"
DEADLINE = 1.0  # for the too-complex page


@dataclass(frozen=True)
class ParsingConfig:
    pages: int = 40
    concurrency: int = 10  # keyphrase requests in flight while the loaded phase parses


Parse = Callable[[str], Awaitable[ParsedPage]]


async def _latencies(parse: Parse, pages: list[str]) -> list[float]:
    found = []
    for html in pages:
        began = time.perf_counter()
        await parse(html)
        found.append((time.perf_counter() - began) * 1000)
    return found


async def _while_busy(
    extractor: KeyphraseExtractor, texts: list[str], concurrency: int, work: Awaitable[list[float]]
) -> list[float]:
    """`work`'s result, measured while the KeyBERT pool always has `concurrency` texts to do."""
    stop = asyncio.Event()

    async def keep_busy() -> None:
        index = 0
        while not stop.is_set():
            index += 1
            await extractor.extract(texts[index % len(texts)])

    busy = [asyncio.create_task(keep_busy()) for _ in range(concurrency)]
    try:
        return await work
    finally:
        stop.set()
        await asyncio.gather(*busy, return_exceptions=True)


async def _recovery_ms(parse_with_deadline: Callable[[str, float], Awaitable[ParsedPage]], page: str) -> float:
    """From a too-complex parse's deadline to the next ordinary page parsed (what a scan queued
    behind it waits on top of the deadline)."""
    began = time.perf_counter()
    with contextlib.suppress(ScanError, TimeoutError):
        await parse_with_deadline(HOSTILE, DEADLINE)
    await parse_with_deadline(page, 600.0)
    return (time.perf_counter() - began - DEADLINE) * 1000


async def _in_keybert_pool(extractor: KeyphraseExtractor, html: str, deadline: float) -> ParsedPage:
    try:
        return await asyncio.wait_for(extractor.run_in_child(parse_html, html, URL), deadline)
    except TimeoutError:
        # The only way to stop it is the pool's own: kill the child and load the model again.
        await extractor._replace(extractor._generation)  # what a deadline would do
        raise


def _rss_mb(pids: list[int]) -> float:
    return float(sum(psutil.Process(pid).memory_info().rss for pid in pids) / 2**20)


async def _measure(
    config: ParsingConfig,
) -> tuple[dict[str, dict[str, list[float]]], dict[str, float], dict[str, float]]:
    pages = [p.html() for p in corpus(config.pages, seed=31)]
    texts = [p.text for p in corpus(config.pages, seed=32)]
    own = ParsePool(2)
    extractor = KeyphraseExtractor(1, timeout=600.0)
    await own.start()
    await extractor.start()
    try:
        sides: dict[str, Parse] = {
            "thread": lambda html: asyncio.to_thread(parse_html, html, URL),
            "own pool": lambda html: own.run(parse_html, html, URL, deadline=600.0),
            "KeyBERT pool": lambda html: extractor.run_in_child(parse_html, html, URL),
        }
        for parse in sides.values():
            await _latencies(parse, pages[:5])  # warm
        found: dict[str, dict[str, list[float]]] = {}
        for name, parse in sides.items():
            idle = await _latencies(parse, pages)
            loaded = await _while_busy(extractor, texts, config.concurrency, _latencies(parse, pages))
            found[name] = {"idle": idle, "loaded": loaded}
        recovery = {
            "own pool": await _recovery_ms(lambda html, d: own.run(parse_html, html, URL, deadline=d), pages[0]),
            "KeyBERT pool": await _recovery_ms(lambda html, d: _in_keybert_pool(extractor, html, d), pages[0]),
        }
        rss = {"own pool": _rss_mb(own.pids), "KeyBERT pool": _rss_mb(extractor.pid_list)}
        return found, recovery, rss
    finally:
        await own.close()
        await extractor.close()


def run(config: ParsingConfig, context: BenchContext) -> BenchResult:
    began = time.monotonic()
    found, recovery, rss = asyncio.run(_measure(config))
    rows = []
    for name, phases in found.items():
        rows.append(
            (
                name,
                *(
                    fmt_ms(f(phases[phase]))
                    for phase in ("idle", "loaded")
                    for f in (median, lambda v: percentile(v, 95))
                ),
                f"{recovery[name]:,.0f}" if name in recovery else "cannot be stopped",
                f"{rss[name]:,.0f}" if name in rss else "-",
            )
        )
    headers = (
        "where",
        "idle p50 ms",
        "idle p95 ms",
        "KeyBERT busy p50 ms",
        "KeyBERT busy p95 ms",
        "kill to next parse ms",
        "RSS MB",
    )
    notes = (
        f"{config.pages} generated ~600-word pages, one parse at a time; busy: {config.concurrency} keyphrase "
        "requests always waiting for the KeyBERT pool",
        "RSS: all the pool's processes together (the own pool has 2, the KeyBERT pool 1)",
    )
    env = environment(None, packages=("selectolax", "pebble"))
    return BenchResult(NAME, TITLE, Table(headers, tuple(rows)), notes, env, time.monotonic() - began)


def bench(context: BenchContext) -> BenchResult:
    return run(ParsingConfig(), context)


BENCHMARK = Benchmark(NAME, bench)
