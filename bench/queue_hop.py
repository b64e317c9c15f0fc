"""The queue hop: bare arq against pagelens's production worker, side by side in one run.

Per variant and repetition it measures
- enqueue→start latency on an idle worker: one job at a time, from just before the enqueue to the
  first line of the job function;
- no-op throughput: N jobs queued while no worker runs, then a worker started; jobs/s from the
  first job's start to the last job's end;
- idle CPU: what the waiting worker process costs while nothing is enqueued.

The pagelens variant is the production path: `worker.wake.PagelensWorker` (what `pagelens worker`
runs) with `worker.settings.queue_options` (hooks, msgpack, poll delay, max_jobs), and each job is
enqueued with `app.core.queue.enqueue`, as the API does. "pagelens before" is the same worker as it was
before enqueues woke it: arq's `enqueue_job` and polling only.

Every (variant, repetition) runs in a fresh interpreter (`python -m bench.queue_hop child CONFIG`),
the variants alternating, because `setup_tracing` is process-wide and one-way: it installs the
global TracerProvider and instruments redis-py for every client in the process, so a bare run after
an instrumented one would pay for tracing it does not have. The OTLP sink stays in this (the
parent) process, like a collector in its own. docs/performance.md says more.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import logging.config
import random
import secrets
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.constants import expires_extra_ms, job_key_prefix
from arq.jobs import Deserializer, Serializer, serialize_job
from arq.utils import timestamp_ms
from arq.worker import Worker, func

from bench.common import (
    BenchContext,
    Benchmark,
    BenchResult,
    OtlpSink,
    RedisTarget,
    Table,
    arq_keys,
    chunks,
    environment,
    fmt_ms,
    median,
    percentile,
    rotated,
    run_module,
    verdict,
)

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

NAME = "queue_hop"
TITLE = "Queue hop: bare arq vs pagelens"
JOB = "hop"
WAIT_LIMIT = 10.0  # seconds for any one job to start: far above any healthy hop, bounds a broken run
WOKEN_PAUSE = 0.02  # seconds; see Variant.pause
# The targets: pagelens's no-op throughput at least bare arq polling every 5 ms in every repetition,
# and an idle worker's hop no slower than it was on a quiet machine before the per-job work was cut.
THROUGHPUT_TARGET = 1.0
P50_TARGET_MS, P99_TARGET_MS = 2.2, 3.4


@dataclass(frozen=True)
class Variant:
    name: str
    label: str
    poll_delay: float
    instrumented: bool
    wake: bool = False  # woken by app.core.queue.enqueue's publish (worker/wake.py)

    @property
    def pause(self) -> float:
        """Upper bound of the random pause before each latency sample: a whole poll cycle, so that
        arrivals land at random points of it; a woken worker does not wait for its poll, so a
        short pause (still random against the poll it keeps as a fallback) does."""
        return min(self.poll_delay, WOKEN_PAUSE) if self.wake else self.poll_delay


def variants(tuned_poll_delay: float) -> tuple[Variant, ...]:
    from app.core.settings import Settings  # only settings: nothing of pagelens's telemetry in this process

    tuned = f"{tuned_poll_delay * 1000:g} ms"
    poll = Settings().poll_delay
    return (
        Variant("bare-default", "bare arq, defaults (poll 0.5 s, pickle)", 0.5, False),
        Variant("bare-tuned", f"bare arq, poll {tuned}", tuned_poll_delay, False),
        Variant("pagelens-before", "pagelens before: instrumented, polling only (poll 0.5 s)", 0.5, True),
        Variant("pagelens", f"pagelens: instrumented, woken on enqueue (poll {poll:g} s)", poll, True, wake=True),
    )


@dataclass(frozen=True)
class HopConfig:
    # Per throughput run: 6,000 no-op jobs last ~3 s at ~2,000 jobs/s, long enough that a moment's
    # noise on a shared 2-core machine does not decide a repetition (2,000 lasted ~1 s, and the
    # same code measured 0.90x to 1.38x of bare arq from one repetition to the next). A worker
    # polling every 0.5 s takes ~200 jobs/s, so it gets fewer, as it gets fewer latency samples.
    jobs: int = 6000
    slow_jobs: int = 2000
    latency_samples: int = 200  # per latency run
    # A latency sample costs about one poll delay (a random arrival phase, then the wait), so the
    # 0.5 s default gets fewer: 200 of them would take 100 s per repetition.
    slow_latency_samples: int = 30
    warmup: int = 50
    reps: int = 3
    # 5 ms: an idle worker then waits 2.5 ms on average for its next poll, small enough that the
    # per-job cost shows, while it still sleeps between polls (0 would spin on Redis round trips
    # and take CPU from the very work being compared, on a 2-core machine).
    tuned_poll_delay: float = 0.005
    log_level: str = "INFO"  # both kinds of worker log each job at INFO by default
    idle_seconds: float = 2.0  # how long the idle worker's CPU is measured
    child_timeout: float = 240.0

    def samples_for(self, variant: Variant) -> int:
        return self.slow_latency_samples if variant.pause >= 0.1 else self.latency_samples

    def jobs_for(self, variant: Variant) -> int:
        return self.slow_jobs if variant.pause >= 0.1 else self.jobs


# --- records -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunRecord:
    """One child run: one variant, one repetition."""

    variant: str
    rep: int
    latencies_ms: tuple[float, ...]
    jobs: int  # queued for the throughput phase
    started: int  # of those, started
    finished: int  # of those, whose function returned
    seconds: float  # first start to last finish
    # Process CPU (all threads: the span exporter's too) from worker start until its spans are exported.
    cpu_seconds: float
    idle_cpu_percent: float  # of one core, while the worker waits with nothing queued
    spans_exported: int = 0  # counted by the parent's sink

    @property
    def throughput(self) -> float:
        return self.finished / self.seconds if self.seconds > 0 else 0.0

    def latency(self, q: float) -> float:
        return percentile(self.latencies_ms, q)

    @property
    def cpu_per_job_us(self) -> float:
        return self.cpu_seconds / self.finished * 1e6 if self.finished else 0.0

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> RunRecord:
        raw = json.loads(text)
        return cls(**{**raw, "latencies_ms": tuple(float(x) for x in raw["latencies_ms"])})


@dataclass(frozen=True)
class VariantSummary:
    """Medians over the variant's repetitions."""

    variant: Variant
    runs: tuple[RunRecord, ...]

    def latency(self, q: float) -> float:
        return median([run.latency(q) for run in self.runs])

    @property
    def throughput(self) -> float:
        return median([run.throughput for run in self.runs])

    @property
    def cpu_per_job_us(self) -> float:
        return median([run.cpu_per_job_us for run in self.runs])

    @property
    def idle_cpu_percent(self) -> float:
        return median([run.idle_cpu_percent for run in self.runs])

    @property
    def samples(self) -> int:
        return sum(len(run.latencies_ms) for run in self.runs)

    @property
    def spans_exported(self) -> int:
        return sum(run.spans_exported for run in self.runs)


@dataclass(frozen=True)
class HopResult:
    config: HopConfig
    summaries: tuple[VariantSummary, ...]
    seconds: float
    environment: str
    token: str  # in every key and queue name the run used

    def summary(self, name: str) -> VariantSummary:
        return next(s for s in self.summaries if s.variant.name == name)

    @property
    def throughput_vs_tuned(self) -> float:
        return self.summary("pagelens").throughput / self.summary("bare-tuned").throughput

    @property
    def throughput_vs_default(self) -> float:
        return self.summary("pagelens").throughput / self.summary("bare-default").throughput

    @property
    def paired_throughput_vs_tuned(self) -> tuple[float, ...]:
        """pagelens / bare-tuned per repetition: the two ran back to back, so drift mostly cancels."""
        pairs = zip(self.summary("pagelens").runs, self.summary("bare-tuned").runs, strict=True)
        return tuple(p.throughput / t.throughput for p, t in pairs)

    def p50_vs(self, name: str) -> float:
        return self.summary("pagelens").latency(50) / self.summary(name).latency(50)

    def bench_result(self) -> BenchResult:
        headers = (
            "variant",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "samples",
            "jobs/s",
            "CPU µs/job",
            "idle CPU %",
            "jobs",
            "spans exported",
        )
        rows = tuple(
            (
                s.variant.label,
                fmt_ms(s.latency(50)),
                fmt_ms(s.latency(95)),
                fmt_ms(s.latency(99)),
                str(s.samples),
                f"{s.throughput:,.0f}",
                f"{s.cpu_per_job_us:,.0f}",
                f"{s.idle_cpu_percent:.1f}",
                f"{len(s.runs)} x {s.runs[0].jobs:,}",
                f"{s.spans_exported:,}" if s.variant.instrumented else "-",
            )
            for s in self.summaries
        )
        paired = self.paired_throughput_vs_tuned
        tuned, pagelens, before = (self.summary(n) for n in ("bare-tuned", "pagelens", "pagelens-before"))
        # Every repetition, not the median: a worker that keeps up only on average does not keep up.
        throughput_verdict = verdict(min(paired) >= THROUGHPUT_TARGET)
        latency_verdict = verdict(pagelens.latency(50) <= P50_TARGET_MS and pagelens.latency(99) <= P99_TARGET_MS)
        notes = (
            f"latency, pagelens: p50 **{fmt_ms(pagelens.latency(50))} ms**, p99 **{fmt_ms(pagelens.latency(99))} ms**; "
            f"target p50 <= {P50_TARGET_MS:g} ms and p99 <= {P99_TARGET_MS:g} ms: {latency_verdict}; before "
            f"(polling only): p50 {fmt_ms(before.latency(50))} ms, p99 {fmt_ms(before.latency(99))} ms",
            f"throughput, pagelens / bare tuned: **{self.throughput_vs_tuned:.2f}x** (per repetition "
            f"{min(paired):.2f}x to {max(paired):.2f}x); target >= {THROUGHPUT_TARGET:.2f}x in every repetition "
            f"(min **{min(paired):.2f}x**): {throughput_verdict}",
            f"throughput, pagelens / bare defaults: **{self.throughput_vs_default:.2f}x**",
            f"latency p50, pagelens vs bare tuned: {fmt_ms(pagelens.latency(50))} vs {fmt_ms(tuned.latency(50))} ms "
            f"({self.p50_vs('bare-tuned'):.2f}x); vs bare defaults: {self.p50_vs('bare-default'):.3f}x",
            f"idle CPU, pagelens vs bare tuned: {pagelens.idle_cpu_percent:.1f}% vs {tuned.idle_cpu_percent:.1f}% "
            f"of a core, over {self.config.idle_seconds:g} s with nothing queued",
            f"medians of {self.config.reps} repetitions, variants alternating; {self.config.jobs:,} jobs per "
            f"throughput run ({self.config.slow_jobs:,} for the 0.5 s default), "
            f"{self.config.latency_samples} latency samples per run "
            f"({self.config.slow_latency_samples} for the 0.5 s default), {self.config.warmup} warm-up jobs "
            f"first; log level {self.config.log_level}; queue-hop wall time {self.seconds:.0f} s",
        )
        return BenchResult(NAME, TITLE, Table(headers, rows), notes, self.environment, self.seconds)


# --- the parent: runs the children, alternating, and sums up ------------------------------------


def run(config: HopConfig, redis: RedisTarget) -> HopResult:
    began = time.monotonic()
    token = secrets.token_hex(4)  # in every key and queue name this run creates
    chosen = variants(config.tuned_poll_delay)
    runs: dict[str, list[RunRecord]] = {v.name: [] for v in chosen}
    with OtlpSink() as sink, tempfile.TemporaryDirectory(prefix="pagelens-bench-") as tmp:
        try:
            for rep in range(config.reps):
                # Rotate the order so no variant always runs first (or right after the slow one).
                for variant in rotated(chosen, rep):
                    runs[variant.name].append(_run_child(config, redis, sink, variant, rep, token, Path(tmp)))
        finally:
            _sweep(redis.url, token)
    summaries = tuple(VariantSummary(v, tuple(runs[v.name])) for v in chosen)
    return HopResult(config, summaries, time.monotonic() - began, environment(redis), token)


def _run_child(
    config: HopConfig, redis: RedisTarget, sink: OtlpSink, variant: Variant, rep: int, token: str, tmp: Path
) -> RunRecord:
    out = tmp / f"{variant.name}-{rep}.json"
    log = tmp / f"{variant.name}-{rep}.log"
    child = ChildConfig(
        variant=variant,
        redis_url=redis.url,
        queue=f"pagelens-bench:{token}:{variant.name}:{rep}",
        id_prefix=f"pagelens-bench-{token}-{variant.name}-{rep}-",
        jobs=config.jobs_for(variant),
        latency_samples=config.samples_for(variant),
        warmup=config.warmup,
        idle_seconds=config.idle_seconds,
        otlp_endpoint=sink.endpoint,
        log_level=config.log_level,
        rep=rep,
        out=str(out),
    )
    spans_before = sink.spans
    # The child's logs go to a file: a real write per line, as in production, and readable on failure.
    # Its environment has none of the shell's OTEL_*: the figures are for the SDK defaults.
    what = f"queue-hop run {variant.name} #{rep}"
    run_module("bench.queue_hop", ["child", child.to_json()], out, log, config.child_timeout, what)
    record = RunRecord.from_json(out.read_text())
    return dataclasses.replace(record, spans_exported=sink.spans - spans_before)


def _sweep(url: str, token: str) -> None:
    """Delete anything of this run a child left behind (it cleans up after itself unless killed)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"*pagelens-bench*{token}*", count=1000))
        for chunk in chunks(keys, 1000):
            client.unlink(*chunk)
    finally:
        client.close()


def bench(context: BenchContext) -> BenchResult:
    return run(HopConfig(), context.redis).bench_result()


BENCHMARK = Benchmark(NAME, bench)


# --- the child: one variant, one repetition, in its own interpreter ------------------------------


@dataclass(frozen=True)
class ChildConfig:
    variant: Variant
    redis_url: str
    queue: str
    id_prefix: str
    jobs: int
    latency_samples: int
    warmup: int
    idle_seconds: float
    otlp_endpoint: str
    log_level: str
    rep: int
    out: str

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ChildConfig:
        raw = json.loads(text)
        return cls(**{**raw, "variant": Variant(**raw["variant"])})


class Probe:
    """What the job function reports to: start and end times, and a future per watched job.

    Every variant runs the same probe code, so its (tiny) cost is in every figure alike."""

    def __init__(self) -> None:
        self.expect(0)
        self._watched: dict[str, asyncio.Future[float]] = {}

    def expect(self, jobs: int) -> None:
        self.target = jobs
        self.started = 0
        self.finished = 0
        self.first_start = 0.0
        self.last_finish = 0.0
        self.all_done = asyncio.Event()

    def watch(self, job_id: str) -> asyncio.Future[float]:
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._watched[job_id] = future
        return future

    def on_start(self, job_id: str) -> None:
        now = time.perf_counter()
        if not self.started:
            self.first_start = now
        self.started += 1
        future = self._watched.pop(job_id, None)
        if future is not None and not future.done():
            future.set_result(now)

    def on_finish(self) -> None:
        self.last_finish = time.perf_counter()
        self.finished += 1
        if self.finished >= self.target:
            self.all_done.set()

    async def wait_all(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self.all_done.wait(), timeout)
        except TimeoutError:
            raise RuntimeError(f"only {self.finished} of {self.target} jobs finished in {timeout:.0f} s") from None


async def hop_job(ctx: dict[str, Any], **_: Any) -> None:
    """The no-op job; `trace_context` (pagelens) lands in the ignored kwargs."""
    probe: Probe = ctx["probe"]
    probe.on_start(ctx["job_id"])
    probe.on_finish()


class Enqueuer:
    """Enqueues as plain arq code does: `enqueue_job`, nothing around it."""

    def __init__(self, pool: ArqRedis, queue: str, serializer: Serializer | None) -> None:
        self.pool = pool
        self.queue = queue
        self.serializer = serializer

    async def one(self, job_id: str) -> None:
        with self.send(job_id) as kwargs:
            job = await self.pool.enqueue_job(JOB, _job_id=job_id, _queue_name=self.queue, **kwargs)
        if job is None:
            raise RuntimeError(f"job id {job_id} already taken")

    async def batch(self, job_ids: Sequence[str]) -> None:
        """What `enqueue_job` writes (the job with arq's default expiry, its queue entry), pipelined:
        the throughput phase measures the worker, not the producer's round trips."""
        for chunk in chunks(job_ids, 500):
            async with self.pool.pipeline(transaction=False) as pipe:
                for job_id in chunk:
                    with self.send(job_id) as kwargs:  # a real trace context in the job; times nothing
                        now = timestamp_ms()
                        payload = serialize_job(JOB, (), kwargs, None, now, serializer=self.serializer)
                    pipe.psetex(job_key_prefix + job_id, expires_extra_ms, payload)
                    pipe.zadd(self.queue, {job_id: now})
                await pipe.execute()

    @contextlib.contextmanager
    def send(self, job_id: str) -> Iterator[dict[str, Any]]:
        """The extra keyword arguments of the job, and whatever wraps its enqueueing."""
        yield {}


class TracedEnqueuer(Enqueuer):
    """Enqueues as pagelens's API did before enqueues woke workers: arq's `enqueue_job` inside a
    PRODUCER span, its carrier in `trace_context`."""

    def __init__(self, pool: ArqRedis, queue: str, serializer: Serializer | None) -> None:
        super().__init__(pool, queue, serializer)
        # Imported here, not at the top: a bare run must not load any of pagelens's telemetry.
        from opentelemetry import trace

        from app.core import queue as app_queue
        from observability import metrics

        self.tracer = trace.get_tracer("pagelens.bench")
        self.app_queue = app_queue
        self.enqueued = metrics.jobs_enqueued_total

    @contextlib.contextmanager
    def send(self, job_id: str) -> Iterator[dict[str, Any]]:
        from opentelemetry.trace import SpanKind

        attributes = self.app_queue.messaging_attributes(self.queue, "send", job_id)
        with self.tracer.start_as_current_span(f"send {self.queue}", kind=SpanKind.PRODUCER, attributes=attributes):
            yield {self.app_queue.TRACE_KWARG: self.app_queue.trace_carrier()}
            self.enqueued.inc({"queue": self.queue, "function": JOB})


class ProductionEnqueuer(TracedEnqueuer):
    """Enqueues one job exactly as the API does: `app.core.queue.enqueue` (PRODUCER span, carrier, one
    atomic script that also publishes the wake-up). The throughput batch is written as before."""

    async def one(self, job_id: str) -> None:
        if await self.app_queue.enqueue(self.pool, self.queue, JOB, job_id) is None:
            raise RuntimeError(f"job id {job_id} already taken")


@contextlib.asynccontextmanager
async def running(worker: Worker) -> AsyncIterator[Worker]:
    task = asyncio.create_task(worker.async_run())
    try:
        yield worker
    finally:
        await idle(worker)  # close() cancels jobs in flight, even one only writing its result
        await worker.close()  # with handle_signals=False this cancels the main task itself
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def idle(worker: Worker) -> None:
    """Until the worker has no job in flight (a job's task outlives its function: result, hooks)."""
    pending = [task for task in worker.tasks.values() if not task.done()]
    if pending:
        await asyncio.wait(pending, timeout=WAIT_LIMIT)


class Child:
    def __init__(self, config: ChildConfig) -> None:
        self.config = config
        self.variant = config.variant
        self.probe = Probe()
        self.redis_settings = RedisSettings.from_dsn(config.redis_url)
        self.issued: list[str] = []
        self.serializer: Serializer | None = None
        self.deserializer: Deserializer | None = None
        if self.variant.instrumented:
            from app.core.queue import deserialize, serialize

            self.serializer, self.deserializer = serialize, deserialize

    def ids(self, count: int) -> list[str]:
        new = [f"{self.config.id_prefix}{len(self.issued) + i}" for i in range(count)]
        self.issued.extend(new)
        return new

    def worker(self) -> Worker:
        options: dict[str, Any] = {"queue_name": self.config.queue}
        function: Any = hop_job
        kind: type[Worker] = Worker
        if self.variant.instrumented:
            from app.core.settings import Settings
            from worker.hooks import observed
            from worker.settings import queue_options

            function = observed(hop_job)
            options = queue_options(Settings(queue_name=self.config.queue))
            if self.variant.wake:
                # The worker `pagelens worker` runs; production's on_startup/on_shutdown (database
                # pool, model, metrics server) have nothing to do with a no-op job.
                from worker.wake import PagelensWorker

                kind = PagelensWorker
        return kind(
            functions=[func(function, name=JOB)],
            redis_settings=self.redis_settings,
            burst=False,
            poll_delay=self.variant.poll_delay,
            handle_signals=False,
            ctx={"probe": self.probe},
            **options,
        )

    async def started(self, worker: Worker) -> None:
        """Until the worker is ready for the next enqueue (for pagelens: listening for wake-ups)."""
        listening: asyncio.Event | None = getattr(worker, "listening", None)
        if listening is not None:
            await asyncio.wait_for(listening.wait(), WAIT_LIMIT)

    async def run(self) -> RunRecord:
        provider = self._setup_telemetry()
        pool = await create_pool(
            self.redis_settings, job_serializer=self.serializer, job_deserializer=self.deserializer
        )
        kind = ProductionEnqueuer if self.variant.wake else TracedEnqueuer if self.variant.instrumented else Enqueuer
        enqueuer = kind(pool, self.config.queue, self.serializer)
        try:
            # Warm-up: first-call costs (imports inside the SDK, connection set-up) are not measured.
            warmup = self.ids(self.config.warmup)
            for job_id in warmup:
                await enqueuer.one(job_id)
            self.probe.expect(len(warmup))
            async with running(self.worker()):
                await self.probe.wait_all(WAIT_LIMIT + len(warmup))

            # Throughput: queue everything first, then start a worker on it.
            batch = self.ids(self.config.jobs)
            await enqueuer.batch(batch)
            if provider is not None:
                provider.force_flush()  # the producer spans' export belongs to the API, not this window
            self.probe.expect(len(batch))
            cpu_before = time.process_time()
            async with running(self.worker()) as worker:
                await self.probe.wait_all(WAIT_LIMIT + len(batch) / 20)  # bounded: 20 jobs/s is far too slow
                started, finished = self.probe.started, self.probe.finished
                seconds = self.probe.last_finish - self.probe.first_start
                await idle(worker)
                if provider is not None:
                    provider.force_flush()  # these jobs' spans are part of their CPU cost
                cpu_seconds = time.process_time() - cpu_before
                await self.started(worker)
                latencies = await self._latencies(worker, enqueuer)
                idle_before = time.process_time()
                await asyncio.sleep(self.config.idle_seconds)
                idle_cpu_percent = (time.process_time() - idle_before) / self.config.idle_seconds * 100
            return RunRecord(
                variant=self.variant.name,
                rep=self.config.rep,
                latencies_ms=tuple(latencies),
                jobs=len(batch),
                started=started,
                finished=finished,
                seconds=seconds,
                cpu_seconds=cpu_seconds,
                idle_cpu_percent=idle_cpu_percent,
            )
        finally:
            await self._delete_keys(pool)
            await pool.aclose()
            if provider is not None:
                provider.shutdown()  # exports what is left, so the sink's count is complete

    async def _latencies(self, worker: Worker, enqueuer: Enqueuer) -> list[float]:
        rng = random.Random(self.config.rep)  # reproducible pauses, different per repetition
        samples: list[float] = []
        for job_id in self.ids(self.config.latency_samples):
            await idle(worker)
            # A random pause puts each enqueue at a random point of the worker's poll cycle, as real
            # arrivals are; back to back, every sample would land at the same phase.
            await asyncio.sleep(rng.uniform(0, self.variant.pause))
            started = self.probe.watch(job_id)
            before = time.perf_counter()
            await enqueuer.one(job_id)
            samples.append((await asyncio.wait_for(started, WAIT_LIMIT) - before) * 1000)
        await idle(worker)
        return samples

    def _setup_telemetry(self) -> TracerProvider | None:
        """Logging as each kind of worker has it by default; for pagelens also tracing exported in
        batches over OTLP/HTTP to the parent's sink, as in production."""
        if not self.variant.instrumented:
            from arq.logs import default_log_config

            logging.config.dictConfig(default_log_config(verbose=False))  # what the `arq` CLI does
            logging.getLogger("arq").setLevel(self.config.log_level)
            return None
        from app.core.heap import freeze_startup_heap
        from app.core.settings import Settings
        from observability.logs import setup_logging
        from observability.tracing import setup_tracing

        setup_logging(self.config.log_level)  # what the worker's on_startup does
        # The worker's own exporter and span batches, as `pagelens worker` builds them from OTEL_*.
        env = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": self.config.otlp_endpoint}
        provider = setup_tracing(Settings.from_env(env), "pagelens-bench")
        if provider is None:
            raise RuntimeError("setup_tracing installed no provider")
        freeze_startup_heap()  # and what it does last
        return provider

    async def _delete_keys(self, pool: ArqRedis) -> None:
        for chunk in chunks(arq_keys(self.config.queue, self.issued), 1000):
            await pool.unlink(*chunk)


def child_main(argv: Sequence[str]) -> int:
    config = ChildConfig.from_json(argv[0])
    record = asyncio.run(Child(config).run())
    Path(config.out).write_text(record.to_json())
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] != ["child"] or len(sys.argv) != 3:
        sys.exit("usage: python -m bench.queue_hop child CONFIG_JSON (run by `python -m bench queue_hop`)")
    sys.exit(child_main(sys.argv[2:]))
