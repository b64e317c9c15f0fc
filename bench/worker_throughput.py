"""Worker throughput on fresh real pages: scans per minute of one production worker under a burst,
for several keyphrase-pool configurations side by side in one run, with every process's memory.

The pages are the Python documentation's HTML (the Debian package `python3-doc`: real pages of
tens of kilobytes, hundreds to thousands of words of main text), served on loopback. Each
configuration gets a fresh stack (the API under uvicorn and one `python -m worker`, the
`PagelensWorker` that `pagelens worker` runs), a few warm-up pages, then `burst` pages submitted at
once. Every configuration and repetition has pages of its own, dealt from the documentation sorted
by size so each set costs about the same; their keyphrase cache entries are deleted before and
after the run, so no page is ever answered from the Redis cache. Throughput is scans finished per
minute from the first created to the last finished (the scans' own records in PostgreSQL).

Memory is measured for every process of the worker (the worker itself, its KeyBERT children, its
parse children and multiprocessing's resource tracker, counted with the parsers), after the
warm-up ("idle") and the highest seen while the burst ran ("peak", sampled every `SAMPLE`
seconds), three ways: RSS (resident pages, shared ones counted in every process that maps them),
PSS (each shared page divided among the processes sharing it: summed over the worker's processes,
what the worker costs the machine, which the 1 GB goal is judged on) and USS (pages only that
process has: what stopping it would free). CPU is each group's CPU time over the burst.
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass

import asyncpg
import httpx
import psutil  # type: ignore[import-untyped]  # no types-psutil in the dev deps

from bench.common import (
    BenchContext,
    Benchmark,
    BenchResult,
    Table,
    environment,
    median,
    rotated,
    sweep_queue,
    verdict,
)
from bench.e2e import WAIT_PER_PAGE, Stack, _submit, _until_done, scene
from bench.real_pages import DocPage, doc_pages, forget_keyphrases

NAME = "worker_throughput"
TITLE = "Worker throughput: fresh real pages, one worker"
SAMPLE = 0.2  # seconds between memory samples
ROLES = ("worker", "keybert", "parse")
MEASURES = ("rss", "pss", "uss")


@dataclass(frozen=True)
class PoolConfig:
    label: str
    processes: int
    threads: int
    batch: int
    parse: int  # parse processes
    plain_ranking: bool = False  # KeyBERT's own MMR, as every worker ranked before issue 16

    @property
    def env(self) -> dict[str, str]:
        return {
            "PAGELENS_KEYBERT_PROCESSES": str(self.processes),
            "PAGELENS_KEYBERT_THREADS": str(self.threads),
            "PAGELENS_KEYBERT_BATCH": str(self.batch),
            "PAGELENS_PARSE_PROCESSES": str(self.parse),
            "PAGELENS_KEYBERT_PLAIN_RANKING": str(self.plain_ranking).lower(),
        }


BEFORE = PoolConfig(
    "before: 1 KeyBERT process, 1 thread, batch 8, KeyBERT's ranking; 2 parse processes", 1, 1, 8, 2, plain_ranking=True
)
DEFAULT = PoolConfig("default: 1 KeyBERT process, 2 embedding threads, batch 8; 1 parse process", 1, 2, 8, 1)
CANDIDATES = (
    BEFORE,
    DEFAULT,
    PoolConfig("1 KeyBERT process, 2 embedding threads, batch 8; 2 parse processes", 1, 2, 8, 2),
)


@dataclass(frozen=True)
class ThroughputConfig:
    burst: int = 30
    warmup: int = 6
    reps: int = 2
    configs: tuple[PoolConfig, ...] = CANDIDATES
    memory_limit_mb: float = 1024.0


@dataclass(frozen=True)
class Memory:
    """MB by measure (rss, pss, uss) and role, summed over the role's processes: after the warm-up,
    and the highest during the burst; `peak_total` is the highest sum over all the processes."""

    idle: dict[str, dict[str, float]]
    peak: dict[str, dict[str, float]]
    peak_total: dict[str, float]
    processes: dict[str, int]

    @property
    def idle_total(self) -> dict[str, float]:
        return {m: sum(self.idle[m].values()) for m in MEASURES}


@dataclass(frozen=True)
class Burst:
    config: PoolConfig
    scans: int
    failed: int
    span_s: float
    generate_ms: float  # median of the scans' GENERATE stage
    cpu_cores: dict[str, float]  # CPU seconds over the burst ÷ its wall time, per role
    memory: Memory

    @property
    def per_minute(self) -> float:
        return self.scans / self.span_s * 60 if self.span_s else 0.0


@dataclass(frozen=True)
class ThroughputResult:
    config: ThroughputConfig
    bursts: tuple[Burst, ...]
    seconds: float
    environment: str
    pages: int
    cache_entries: int = 0  # keyphrase cache entries the run made (and deleted): one per page
    skipped: str = ""  # why nothing was measured

    def of(self, pool: PoolConfig) -> list[Burst]:
        return [b for b in self.bursts if b.config == pool]

    def rate(self, pool: PoolConfig) -> float:
        return median([b.per_minute for b in self.of(pool)])

    def bench_result(self) -> BenchResult:
        if self.skipped:
            table = Table(("skipped",), ((self.skipped,),))
            return BenchResult(NAME, TITLE, table, (), self.environment, self.seconds, skipped=self.skipped)
        headers = (
            "configuration",
            "scans/min",
            "÷ before",
            "generate ms",
            "cores used: worker / keybert / parse",
            *(f"{role} MB, RSS / PSS / USS: idle; peak" for role in ROLES),
            "all processes MB, RSS / PSS / USS: idle; peak",
        )
        rows = []
        for pool in self.config.configs:
            bursts = self.of(pool)
            memory = [b.memory for b in bursts]
            rows.append(
                (
                    pool.label,
                    f"{self.rate(pool):.0f}",
                    f"{self.rate(pool) / self.rate(BEFORE):.2f}x" if self.of(BEFORE) else "-",
                    f"{median([b.generate_ms for b in bursts]):.0f}",
                    " / ".join(f"{median([b.cpu_cores[r] for b in bursts]):.2f}" for r in ROLES),
                    *(_role_sizes(memory, r) for r in ROLES),
                    _sizes(memory, lambda m, x: m.idle_total[x], lambda m, x: m.peak_total[x]),
                )
            )
        default = self.rate(DEFAULT) / self.rate(BEFORE) if self.of(DEFAULT) and self.of(BEFORE) else 0.0
        peak = max((b.memory.peak_total["pss"] for b in self.of(DEFAULT)), default=0.0)
        idle = max((b.memory.idle_total["pss"] for b in self.of(DEFAULT)), default=0.0)
        rss = max((b.memory.peak_total["rss"] for b in self.of(DEFAULT)), default=0.0)
        per_rep = ", ".join(
            f"{a.per_minute / b.per_minute:.2f}x" for a, b in zip(self.of(DEFAULT), self.of(BEFORE), strict=False)
        )
        failed = sum(b.failed for b in self.bursts)
        notes = (
            f"scans/min, default ÷ before: **{default:.2f}x** (per repetition {per_rep}); target >= 1.7x: "
            f"{verdict(default >= 1.7)}",
            f"default, what one worker costs the machine (PSS summed over its processes): idle {idle:,.0f} MB, "
            f"peak **{peak:,.0f} MB**; target <= {self.config.memory_limit_mb:,.0f} MB: "
            f"{verdict(0 < idle <= peak <= self.config.memory_limit_mb)} (RSS summed, which counts shared "
            f"pages once per process: peak {rss:,.0f} MB)",
            f"{self.config.burst} Python documentation pages at once per configuration and repetition (a fresh set "
            f"each, {self.pages} pages in all, none in the keyphrase cache); {self.config.warmup} warm-up pages first; "
            f"{self.config.reps} repetitions, configurations in rotated order; medians over the repetitions, peaks "
            f"the highest; scans not FULL_READY: {failed}; wall time {self.seconds:.0f} s",
        )
        return BenchResult(NAME, TITLE, Table(headers, tuple(rows)), notes, self.environment, self.seconds)


def _role_sizes(memory: list[Memory], role: str) -> str:
    """`_sizes` of one role's processes."""
    return _sizes(memory, lambda m, x: m.idle[x][role], lambda m, x: m.peak[x][role])


def _sizes(memory: list[Memory], idle: Callable[[Memory, str], float], peak: Callable[[Memory, str], float]) -> str:
    """'RSS / PSS / USS' after the warm-up (medians); the same at the peak (the highest)."""
    return (
        " / ".join(f"{median([idle(m, x) for m in memory]):,.0f}" for x in MEASURES)
        + "; "
        + " / ".join(f"{max(peak(m, x) for m in memory):,.0f}" for x in MEASURES)
    )


class ProcessWatch:
    """The worker's process tree, by role, sampled from a thread: memory (idle, peak) and CPU time."""

    def __init__(self, pid: int) -> None:
        self.worker = psutil.Process(pid)
        self.roles: dict[int, str] = {pid: "worker"}
        for child in self.worker.children(recursive=True):
            # The KeyBERT children are the ones with torch mapped; the rest are parsers (and
            # multiprocessing's helpers, counted with them).
            torch = any("libtorch" in m.path for m in child.memory_maps())
            self.roles[child.pid] = "keybert" if torch else "parse"
        self.peak = {m: dict.fromkeys(ROLES, 0.0) for m in MEASURES}
        self.peak_total = dict.fromkeys(MEASURES, 0.0)
        self._stop = threading.Event()

    def _processes(self) -> list[psutil.Process]:
        return [self.worker, *self.worker.children(recursive=True)]

    def memory(self) -> dict[str, dict[str, float]]:
        """MB by measure and role. (PSS and USS read /proc/PID/smaps: a few ms per process.)"""
        sizes = {m: dict.fromkeys(ROLES, 0.0) for m in MEASURES}
        for process in self._processes():
            with suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                info = process.memory_full_info()
                role = self.roles.get(process.pid, "parse")
                for m in MEASURES:
                    sizes[m][role] += getattr(info, m) / 2**20
        return sizes

    def cpu(self) -> dict[str, float]:
        seconds = dict.fromkeys(ROLES, 0.0)
        for process in self._processes():
            try:
                times = process.cpu_times()
            except psutil.NoSuchProcess:
                continue
            seconds[self.roles.get(process.pid, "parse")] += times.user + times.system
        return seconds

    def counts(self) -> dict[str, int]:
        return {role: sum(1 for r in self.roles.values() if r == role) for role in ROLES}

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE):
            sizes = self.memory()
            for m in MEASURES:
                self.peak[m] = {r: max(self.peak[m][r], sizes[m][r]) for r in ROLES}
                self.peak_total[m] = max(self.peak_total[m], sum(sizes[m].values()))

    @contextmanager
    def sampling(self) -> Iterator[None]:
        thread = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)
        thread.start()
        try:
            yield
        finally:
            self._stop.set()
            thread.join(5)


async def _scans(stack: Stack, dsn: str, urls: list[str]) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        async with httpx.AsyncClient(base_url=stack.api_url, timeout=30) as client:
            ids = list(await asyncio.gather(*(_submit(client, url) for url in urls)))
            await _until_done(conn, ids, WAIT_PER_PAGE * len(ids))
        rows: list[asyncpg.Record] = await conn.fetch(
            "SELECT status, created_at, finished_at, timings FROM scans WHERE id = ANY($1::uuid[])", ids
        )
        return rows
    finally:
        await conn.close()


def _burst(stack: Stack, dsn: str, base: str, pool: PoolConfig, warmup: list[str], burst: list[str]) -> Burst:
    asyncio.run(_scans(stack, dsn, [f"{base}/p/{key}" for key in warmup]))
    watch = ProcessWatch(stack.services[1].pid)
    idle = watch.memory()
    cpu_before, began = watch.cpu(), time.monotonic()
    with watch.sampling():
        rows = asyncio.run(_scans(stack, dsn, [f"{base}/p/{key}" for key in burst]))
    wall, cpu_after = time.monotonic() - began, watch.cpu()
    ready = [r for r in rows if r["status"] == "FULL_READY"]
    generate = [json.loads(r["timings"]).get("generateMs", 0.0) for r in ready]
    span = (max(r["finished_at"] for r in ready) - min(r["created_at"] for r in ready)).total_seconds() if ready else 0
    return Burst(
        config=pool,
        scans=len(ready),
        failed=len(rows) - len(ready),
        span_s=span,
        generate_ms=median(generate) if generate else 0.0,
        cpu_cores={r: (cpu_after[r] - cpu_before[r]) / wall for r in ROLES},
        memory=Memory(idle, dict(watch.peak), dict(watch.peak_total), watch.counts()),
    )


def deal(pages: list[DocPage], sets: int, size: int) -> list[list[DocPage]]:
    """`sets` disjoint sets of `size` pages that cost about the same: the pages sorted by length and
    dealt round-robin, from a spread over the whole range of sizes."""
    needed = sets * size
    if len(pages) < needed:
        raise RuntimeError(f"{len(pages)} documentation pages, {needed} needed")
    ordered = sorted(pages, key=lambda p: (len(p.body), p.key))
    step = len(ordered) / needed
    picked = [ordered[int(i * step)] for i in range(needed)]
    return [picked[i::sets] for i in range(sets)]


def run(config: ThroughputConfig, context: BenchContext) -> ThroughputResult:
    began = time.monotonic()
    env_line = environment(context.redis, extra="python3-doc pages", packages=("keybert", "torch"))
    pages = doc_pages()
    if not pages:
        skipped = "python3-doc is not installed: no real pages to serve"
        return ThroughputResult(config, (), 0.0, env_line, 0, skipped=skipped)
    token = secrets.token_hex(4)
    queue = f"pagelens-bench:{token}:worker"
    runs = [(rep, pool) for rep in range(config.reps) for pool in rotated(config.configs, rep)]
    dealt = deal(pages, len(runs), config.warmup + config.burst)
    random.Random(token).shuffle(dealt)  # which set goes to which configuration
    served = {p.key: p for group in dealt for p in group}
    bursts: list[Burst] = []
    forget_keyphrases(context.redis.url, served.values())
    with scene(context.redis.url, token, "worker", served) as at:
        env = at.env(queue)
        try:
            for (rep, pool), group in zip(runs, dealt, strict=True):
                name = f"{rep}-{pool.processes}-{pool.threads}-{pool.batch}-{pool.parse}-"
                stack = Stack(env, 1, at.tmp, name=name, worker_env=pool.env)
                try:
                    keys = [p.key for p in group]
                    bursts.append(_burst(stack, at.dsn, at.base, pool, keys[: config.warmup], keys[config.warmup :]))
                finally:
                    stack.stop()
        finally:
            sweep_queue(context.redis.url, queue)
            forgotten = forget_keyphrases(context.redis.url, served.values())
    seconds = time.monotonic() - began
    return ThroughputResult(config, tuple(bursts), seconds, env_line, len(served), forgotten)


def bench(context: BenchContext) -> BenchResult:
    return run(ThroughputConfig(), context).bench_result()


BENCHMARK = Benchmark(NAME, bench)
