"""Keyphrases: pagelens's KeyBERT pool against plain KeyBERT, one page per call, on the same pages.

Both sides run the packaged model in a process of their own, with the model loaded first and one
torch thread each (the pool's setting: one core per process), so they get the same CPU:
- plain: `KeyBERT.extract_keywords` once per page, one page after the other (bench/keybert_reference.py,
  which calls KeyBERT as documented in a child that has the model loaded);
- pagelens: the worker's own `KeyphraseExtractor` with PAGELENS_KEYBERT_PROCESSES processes, fed as
  the worker feeds it: up to `concurrency` scans (the worker's max_jobs) asking for their page's
  keyphrases at once, so the pool batches those that wait and reuses embeddings of phrases it saw.
The pages are generated (bench/corpus.py), ~600 words each, a fresh set per repetition: the pool
never sees a page twice, only shared vocabulary. Before measuring, the pool extracts a warm-up set
(another seed), as a worker that has been running for a while would have. Every page's keyphrases
from both sides are compared: they must be the same.

While the pool is busy, a ticker in this process (which, like the worker, only waits on the pool)
measures event-loop lag: how late a 5 ms sleep wakes up. The model is loaded once per process
(checked through the pool), and the resident memory of each process is reported.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field

import psutil  # type: ignore[import-untyped]  # no types-psutil in the dev deps

from app.core.settings import Settings
from bench.common import (
    BenchContext,
    Benchmark,
    BenchResult,
    Table,
    environment,
    fmt_ms,
    median,
    percentile,
    verdict,
)
from bench.corpus import corpus
from bench.keybert_reference import load_counts, plain
from worker.keyphrases import KeyphraseExtractor, Phrases

NAME = "keyphrases"
TITLE = "Keyphrases: pagelens pool vs plain KeyBERT"
TIMEOUT = 600.0  # per text: generous, a busy 2-core machine is slow; only a hung child hits it


@dataclass(frozen=True)
class KeyphraseConfig:
    pages: int = 24  # per repetition
    words: int = 600
    warmup_pages: int = 16
    reps: int = 2
    concurrency: int = 10  # scans asking at once: the worker's default max_jobs
    tick: float = 0.005  # the lag probe's sleep
    processes: int = field(default_factory=lambda: Settings().keybert_processes)
    threads: int = field(default_factory=lambda: Settings().keybert_threads)


@dataclass(frozen=True)
class Side:
    seconds: float
    pages: int

    @property
    def docs_per_second(self) -> float:
        return self.pages / self.seconds


@dataclass(frozen=True)
class Rep:
    plain: Side
    pagelens: Side
    lag_ms: tuple[float, ...]
    identical: int  # pages whose keyphrases (and scores) are the same on both sides
    phrases: int  # distinct candidate phrases per pool call, summed
    embedded: int  # of those, embedded (not in a child's cache)
    calls: int


@dataclass(frozen=True)
class KeyphraseResult:
    config: KeyphraseConfig
    reps: tuple[Rep, ...]
    load_seconds: dict[str, float]
    load_counts: dict[str, dict[int, int]]
    rss_mb: dict[str, float]
    seconds: float
    environment: str

    def docs_per_second(self, side: str) -> float:
        return median([getattr(r, side).docs_per_second for r in self.reps])

    @property
    def ratio(self) -> float:
        return self.docs_per_second("pagelens") / self.docs_per_second("plain")

    @property
    def paired_ratios(self) -> tuple[float, ...]:
        return tuple(r.pagelens.docs_per_second / r.plain.docs_per_second for r in self.reps)

    def lag(self, q: float) -> float:
        return percentile([lag for r in self.reps for lag in r.lag_ms], q)

    @property
    def reuse(self) -> float:
        phrases = sum(r.phrases for r in self.reps)
        return 1 - sum(r.embedded for r in self.reps) / phrases if phrases else 0.0

    def bench_result(self) -> BenchResult:
        c = self.config
        pages = sum(r.pagelens.pages for r in self.reps)
        identical = sum(r.identical for r in self.reps)
        headers = ("side", "docs/s", "s/page", "model load s", "RSS MB per process", "model loads per process")
        rows = tuple(
            (
                label,
                f"{self.docs_per_second(side):.2f}",
                f"{1 / self.docs_per_second(side):.2f}",
                f"{self.load_seconds[side]:.1f}",
                f"{self.rss_mb[side]:,.0f}",
                ", ".join(str(n) for n in self.load_counts[side].values()),
            )
            for side, label in (
                ("plain", "plain KeyBERT, one page per call"),
                (
                    "pagelens",
                    f"pagelens pool ({c.processes} process, {c.threads} embedding threads, "
                    f"{c.concurrency} scans asking at once)",
                ),
            )
        )
        calls = sum(r.calls for r in self.reps)
        paired = self.paired_ratios
        notes = (
            f"docs/s, pagelens / plain: **{self.ratio:.2f}x** (per repetition {min(paired):.2f}x to "
            f"{max(paired):.2f}x); target >= 1.6x: {verdict(self.ratio >= 1.6)}",
            f"same keyphrases and scores as plain KeyBERT: **{identical} of {pages} pages**",
            f"event-loop lag while the pool was busy: p50 {fmt_ms(self.lag(50))} ms, p99 **{fmt_ms(self.lag(99))} "
            f"ms**, max {fmt_ms(self.lag(100))} ms; target p99 <= 20 ms: {verdict(self.lag(99) <= 20)}",
            f"phrase embeddings reused: {self.reuse:.0%} of the distinct candidates of each call; "
            f"{calls} pool calls for {pages} pages ({pages / calls:.1f} pages per call)",
            f"the worker process's own RSS: {self.rss_mb['parent']:,.0f} MB (no model in it)",
            f"{c.pages} pages of ~{c.words} words per repetition (a fresh set each time), {c.reps} repetitions, "
            f"sides alternating; {c.warmup_pages} warm-up pages first; wall time {self.seconds:.0f} s",
        )
        return BenchResult(NAME, TITLE, Table(headers, rows), notes, self.environment, self.seconds)


class LagProbe:
    """How late `asyncio.sleep(tick)` wakes up, sampled for as long as it runs."""

    def __init__(self, tick: float) -> None:
        self.tick = tick
        self.lags_ms: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(self.tick)
            self.lags_ms.append(max(0.0, (loop.time() - before - self.tick) * 1000))

    def __enter__(self) -> LagProbe:
        self._task = asyncio.create_task(self._run())
        return self

    def __exit__(self, *_: object) -> None:
        if self._task is not None:
            self._task.cancel()


async def _plain(extractor: KeyphraseExtractor, texts: list[str]) -> tuple[Side, list[Phrases]]:
    found: list[Phrases] = []
    began = time.perf_counter()
    for text in texts:
        found += await plain(extractor, [text])
    return Side(time.perf_counter() - began, len(texts)), found


async def _pagelens(
    extractor: KeyphraseExtractor, texts: list[str], concurrency: int, tick: float
) -> tuple[Side, list[Phrases], list[float]]:
    slots = asyncio.Semaphore(concurrency)

    async def scan(text: str) -> Phrases:
        async with slots:
            return await extractor.extract(text)

    with LagProbe(tick) as probe:
        began = time.perf_counter()
        found = await asyncio.gather(*(scan(t) for t in texts))
        seconds = time.perf_counter() - began
    return Side(seconds, len(texts)), list(found), probe.lags_ms


def _rss_mb(pids: list[int]) -> float:
    return median([psutil.Process(pid).memory_info().rss / 2**20 for pid in pids])


Measured = tuple[list[Rep], dict[str, float], dict[str, dict[int, int]], dict[str, float]]


async def _measure(config: KeyphraseConfig) -> Measured:
    reference = KeyphraseExtractor(1, timeout=TIMEOUT)
    pool = KeyphraseExtractor(config.processes, timeout=TIMEOUT, threads=config.threads)
    try:
        load_seconds: dict[str, float] = {}
        for side, extractor in (("plain", reference), ("pagelens", pool)):
            began = time.perf_counter()
            await extractor.start()
            load_seconds[side] = time.perf_counter() - began
        warmup = [p.text for p in corpus(config.warmup_pages, seed=99, words=config.words)]
        await plain(reference, warmup[:1])
        await _pagelens(pool, warmup, config.concurrency, config.tick)
        reps: list[Rep] = []
        for rep in range(config.reps):
            texts = [p.text for p in corpus(config.pages, seed=100 + rep, words=config.words)]
            calls, phrases, embedded = pool.calls, pool.phrases, pool.embedded
            if rep % 2:
                theirs, ours = (
                    await _plain(reference, texts),
                    await _pagelens(pool, texts, config.concurrency, config.tick),
                )
            else:
                ours, theirs = (
                    await _pagelens(pool, texts, config.concurrency, config.tick),
                    await _plain(reference, texts),
                )
            identical = sum(a == b for a, b in zip(ours[1], theirs[1], strict=True))
            reps.append(
                Rep(
                    plain=theirs[0],
                    pagelens=ours[0],
                    lag_ms=tuple(ours[2]),
                    identical=identical,
                    phrases=pool.phrases - phrases,
                    embedded=pool.embedded - embedded,
                    calls=pool.calls - calls,
                )
            )
        counts = {"plain": await load_counts(reference), "pagelens": await load_counts(pool)}
        rss = {
            "plain": _rss_mb(reference.pid_list),
            "pagelens": _rss_mb(pool.pid_list),
            "parent": _rss_mb([os.getpid()]),
        }
        return reps, load_seconds, counts, rss
    finally:
        await reference.close()
        await pool.close()


def run(config: KeyphraseConfig, context: BenchContext) -> KeyphraseResult:
    began = time.monotonic()
    reps, load_seconds, counts, rss = asyncio.run(_measure(config))
    env = environment(None, packages=("keybert", "sentence-transformers", "torch"))
    return KeyphraseResult(config, tuple(reps), load_seconds, counts, rss, time.monotonic() - began, env)


def bench(context: BenchContext) -> BenchResult:
    return run(KeyphraseConfig(), context).bench_result()


BENCHMARK = Benchmark(NAME, bench)
