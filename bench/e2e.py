"""End to end: submit → FULL_READY for local ~600-word pages, with one worker and with two.

Everything runs as in production, on loopback: the API under uvicorn and `python -m worker` workers
(the `PagelensWorker` that `pagelens worker` runs) as separate processes, tracing exported over
OTLP/HTTP (to a sink in this process), against a database created for the run and one Redis with a
queue of its own. The pages (generated, bench/corpus.py) are served by a small HTTP server in this
process, allowed through the SSRF guard with PAGELENS_FETCH_ALLOW_HOSTS. Every page is new: each
phase has its own pages, from seeds drawn for the run, so the Redis keyphrase cache (kept a week, by
content) never answers for them, whatever ran before; the run deletes the cache entries it made. A
few warm-up pages go first, as a worker that has been running for a while has its model and caches
warm.

Per worker count:
- idle: one page at a time, each submitted once the previous one is done (an idle, warm worker);
- burst: all pages submitted at once, as fast as the API takes them.
Latency is the scan's own record, `finished_at - created_at` in PostgreSQL (commit of the row to the
commit of FULL_READY); no client polling is involved. Throughput is scans finished per minute from
the first created to the last finished, per worker.
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol, cast

import asyncpg
import httpx
import psutil  # type: ignore[import-untyped]  # no types-psutil in the dev deps

from app.cli.embedded import free_port
from app.core.models import OPEN
from bench.common import (
    BenchContext,
    Benchmark,
    BenchResult,
    OtlpSink,
    Service,
    Table,
    child_env,
    environment,
    isolated_database,
    median,
    percentile,
    postgres_target,
    serving,
    sweep_queue,
    uvicorn_command,
    verdict,
)
from bench.corpus import Page, corpus
from worker.keyphrases import keyphrase_cache_key
from worker.parse import parse_html

NAME = "e2e"
TITLE = "End to end: submit to FULL_READY"
STAGES = ("queueWaitMs", "crawlMs", "parseMs", "analyzeMs", "generateMs")  # keys of a scan's timings
WAIT_PER_PAGE = 30.0  # seconds: bounds a broken run; a healthy page takes about one


@dataclass(frozen=True)
class E2EConfig:
    pages: int = 100  # per burst
    idle_pages: int = 20
    warmup_pages: int = 6
    workers: tuple[int, ...] = (1, 2)
    words: int = 600


@dataclass(frozen=True)
class Phase:
    workers: int
    shape: str  # "idle" or "burst"
    latencies_s: tuple[float, ...]
    span_s: float  # first created to last finished
    failed: int
    stage_ms: dict[str, float]  # medians of the scans' own stage timings
    worker_rss_mb: float  # a worker process and its keyphrase pool, after the phase

    @property
    def per_minute_per_worker(self) -> float:
        return len(self.latencies_s) / self.span_s * 60 / self.workers if self.span_s else 0.0


@dataclass(frozen=True)
class E2EResult:
    config: E2EConfig
    phases: tuple[Phase, ...]
    seconds: float
    environment: str
    pages: int  # served, warm-up included
    cache_entries: int  # keyphrase cache entries the run made (and deleted): one per page

    def phase(self, workers: int, shape: str) -> Phase:
        return next(p for p in self.phases if p.workers == workers and p.shape == shape)

    def bench_result(self) -> BenchResult:
        headers = (
            "workers, load",
            "scans",
            "p50 s",
            "p95 s",
            "max s",
            "scans/min/worker",
            "queue wait ms",
            "crawl ms",
            "parse ms",
            "analyze ms",
            "generate ms",
            "worker RSS MB",
        )
        rows = tuple(
            (
                f"{p.workers}, {'one page at a time' if p.shape == 'idle' else f'{len(p.latencies_s)} at once'}",
                str(len(p.latencies_s)),
                f"{percentile(p.latencies_s, 50):.2f}",
                f"{percentile(p.latencies_s, 95):.2f}",
                f"{max(p.latencies_s):.2f}",
                f"{p.per_minute_per_worker:.0f}",
                *(f"{p.stage_ms.get(k, 0):.0f}" for k in STAGES),
                f"{p.worker_rss_mb:,.0f}",
            )
            for p in self.phases
        )
        idle = percentile(self.phase(1, "idle").latencies_s, 50)
        failed = sum(p.failed for p in self.phases)
        notes = (
            f"submit → FULL_READY on an idle, warm worker: p50 **{idle:.2f} s**; target <= 1.0 s: "
            f"{verdict(idle <= 1.0)}",
            *(
                f"{n} worker{'s' if n > 1 else ''}, {self.config.pages} pages at once: p50 "
                f"{percentile(self.phase(n, 'burst').latencies_s, 50):.2f} s, p95 "
                f"{percentile(self.phase(n, 'burst').latencies_s, 95):.2f} s, "
                f"{self.phase(n, 'burst').per_minute_per_worker:.0f} scans/min per worker"
                for n in self.config.workers
            ),
            f"~{self.config.words}-word pages served on loopback; stage columns are medians of the scans' own "
            f"timings; scans not FULL_READY: {failed}; {self.config.warmup_pages} warm-up pages per worker "
            f"count; wall time {self.seconds:.0f} s",
        )
        return BenchResult(NAME, TITLE, Table(headers, rows), notes, self.environment, self.seconds)


class Servable(Protocol):
    def html(self) -> str: ...


@contextmanager
def serve_pages(
    pages: Mapping[str, Servable], files: Mapping[str, bytes] | None = None, hits: Counter[str] | None = None
) -> Iterator[int]:
    """The pages at /p/<key> on 127.0.0.1, from a thread, and `files` (text/plain) at their paths;
    yields the port. `hits` counts the requests for each of `files`."""
    served = dict(files or {})

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            if self.path in served:
                if hits is not None:
                    hits[self.path] += 1
                self._answer(200, "text/plain; charset=utf-8", served[self.path])
                return
            page = pages.get(self.path.removeprefix("/p/"))
            body = page.html().encode() if page is not None else b"not found"
            self._answer(200 if page is not None else 404, "text/html; charset=utf-8", body)

        def _answer(self, status: int, media_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", media_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    with serving(ThreadingHTTPServer(("127.0.0.1", 0), Handler), "e2e-pages") as server:
        yield server.server_address[1]


@dataclass(frozen=True)
class Scene:
    """What an end-to-end benchmark's stacks run against: a database made for the run, an OTLP
    sink, the pages on a loopback server, a scratch directory, and the run's Redis."""

    dsn: str
    postgres_source: str  # where PostgreSQL was found, for the report's environment line
    sink: OtlpSink
    base: str  # the page server, http://127.0.0.1:<port>
    tmp: Path
    redis_url: str

    def env(self, queue: str, **overrides: str) -> dict[str, str]:
        """A stack's environment: this run's database, Redis and queue, the page server let through
        the SSRF guard, spans exported to the sink, logs at INFO."""
        return child_env(
            DATABASE_URL=self.dsn,
            REDIS_URL=self.redis_url,
            PAGELENS_QUEUE=queue,
            PAGELENS_FETCH_ALLOW_HOSTS=self.base.removeprefix("http://"),
            OTEL_TRACES_EXPORTER="otlp",
            OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=self.sink.endpoint,
            PAGELENS_LOG_LEVEL="INFO",
            **overrides,
        )


@contextmanager
def scene(
    redis_url: str,
    token: str,
    name: str,
    pages: Mapping[str, Servable],
    files: Mapping[str, bytes] | None = None,
    hits: Counter[str] | None = None,
) -> Iterator[Scene]:
    """A `Scene` for the run `token`, torn down (the database dropped) when the block ends."""
    with (
        postgres_target() as postgres,
        isolated_database(postgres.dsn, f"pagelens_bench_{token}") as dsn,
        OtlpSink() as sink,
        serve_pages(pages, files, hits) as port,
        tempfile.TemporaryDirectory(prefix=f"pagelens-bench-{name}-") as tmp,
    ):
        yield Scene(dsn, postgres.source, sink, f"http://127.0.0.1:{port}", Path(tmp), redis_url)


class Stack:
    """The API and the workers of one worker count."""

    def __init__(
        self, env: dict[str, str], workers: int, logs: Path, name: str = "", worker_env: Mapping[str, str] | None = None
    ) -> None:
        """`name` prefixes the log files, for stacks that run side by side; `worker_env` is added to
        the workers' environment only."""
        self.env, self.logs = env, logs
        port = free_port()
        self.api_url = f"http://127.0.0.1:{port}"
        api = uvicorn_command("app.main:app", port)
        self.services = [Service.start(f"{name}api", api, env, logs, self.api_url + "/readyz")]
        try:
            for index in range(workers):
                metrics = free_port()
                environ = {**env, **(worker_env or {}), "PAGELENS_WORKER_METRICS_PORT": str(metrics)}
                command = [sys.executable, "-m", "worker"]  # what `pagelens worker` runs
                ready = f"http://127.0.0.1:{metrics}/metrics"  # served once on_startup is through
                worker = f"{name}worker-{workers}-{index}"
                self.services.append(Service.start(worker, command, environ, logs, ready))
        except BaseException:
            self.stop()
            raise

    @property
    def worker_rss_mb(self) -> float:
        sizes = []
        for service in self.services[1:]:
            process = psutil.Process(service.pid)
            sizes.append(sum(p.memory_info().rss for p in [process, *process.children(recursive=True)]) / 2**20)
        return median(sizes)

    def stop(self) -> None:
        for service in reversed(self.services):
            service.stop()


async def _submit(client: httpx.AsyncClient, url: str) -> str:
    response = await client.post("/api/v1/scan-jobs", json={"url": url})
    if response.status_code != 202:
        raise RuntimeError(f"submit answered {response.status_code}: {response.text[:300]}")
    scan_id: str = response.json()["scanId"]
    return scan_id


async def _until_done(conn: asyncpg.Connection, ids: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = await conn.fetchval(
            "SELECT count(*) FROM scans WHERE id = ANY($1::uuid[]) AND status <> ALL($2::text[])", ids, OPEN
        )
        if done == len(ids):
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"scans not finished after {timeout:.0f} s")


async def _phase(stack: Stack, dsn: str, base: str, keys: list[str], workers: int, shape: str) -> Phase:
    conn = await asyncpg.connect(dsn)
    try:
        async with httpx.AsyncClient(base_url=stack.api_url, timeout=30) as client:
            ids: list[str] = []
            if shape == "idle":
                for key in keys:
                    ids.append(await _submit(client, f"{base}/p/{key}"))
                    await _until_done(conn, ids[-1:], WAIT_PER_PAGE)
            else:
                ids = list(await asyncio.gather(*(_submit(client, f"{base}/p/{key}") for key in keys)))
                await _until_done(conn, ids, WAIT_PER_PAGE * len(ids) / workers)
        rows = await conn.fetch(
            "SELECT status, created_at, finished_at, timings FROM scans WHERE id = ANY($1::uuid[])", ids
        )
    finally:
        await conn.close()
    ready = [r for r in rows if r["status"] == "FULL_READY"]
    timings = [json.loads(r["timings"]) for r in ready]  # a plain connection: jsonb comes as text
    stage_ms = {k: median([t[k] for t in timings if k in t]) for k in timings[0]} if timings else {}
    return Phase(
        workers=workers,
        shape=shape,
        latencies_s=tuple((r["finished_at"] - r["created_at"]).total_seconds() for r in ready),
        span_s=(max(r["finished_at"] for r in ready) - min(r["created_at"] for r in ready)).total_seconds(),
        failed=len(rows) - len(ready),
        stage_ms=stage_ms,
        worker_rss_mb=stack.worker_rss_mb,
    )


def _forget_keyphrases(redis_url: str, pages: Iterable[Page]) -> int:
    """Delete the keyphrase cache entries the run's pages made (the key hashes what the worker
    extracted from: the page's main text, as parsed); returns how many there were."""
    import redis

    keys = [keyphrase_cache_key(parse_html(page.html(), "http://127.0.0.1/").main_text) for page in pages]
    client = redis.Redis.from_url(redis_url)
    try:
        return cast(int, client.unlink(*[key for key in keys if key is not None]))
    finally:
        client.close()


def run(config: E2EConfig, context: BenchContext) -> E2EResult:
    began = time.monotonic()
    token = secrets.token_hex(4)
    queue = f"pagelens-bench:{token}:e2e"
    # A fresh set of pages for every phase, and a warm-up set per worker count.
    plan: list[tuple[int, str, list[str]]] = []
    pages: dict[str, Page] = {}
    seeds = random.Random(token)
    for n in config.workers:
        for shape, count in (("warmup", config.warmup_pages), ("idle", config.idle_pages), ("burst", config.pages)):
            if shape == "idle" and n != 1:
                continue  # the idle latency is a one-worker figure
            keys = [f"{n}-{shape}-{i}" for i in range(count)]
            pages.update(zip(keys, corpus(count, seed=seeds.getrandbits(64), words=config.words), strict=True))
            plan.append((n, shape, keys))
    phases: list[Phase] = []
    with scene(context.redis.url, token, "e2e", pages) as at:
        env = at.env(queue)
        try:
            for n in config.workers:
                stack = Stack(env, n, at.tmp)
                try:
                    for workers, shape, keys in plan:
                        if workers != n:
                            continue
                        phase = asyncio.run(_phase(stack, at.dsn, at.base, keys, n, shape))
                        if shape != "warmup":
                            phases.append(phase)
                finally:
                    stack.stop()
        finally:
            sweep_queue(context.redis.url, queue)
            forgotten = _forget_keyphrases(context.redis.url, pages.values())
    env_line = environment(context.redis, extra=f"PostgreSQL ({at.postgres_source})", packages=("keybert", "torch"))
    return E2EResult(config, tuple(phases), time.monotonic() - began, env_line, len(pages), forgotten)


def bench(context: BenchContext) -> BenchResult:
    return run(E2EConfig(), context).bench_result()


BENCHMARK = Benchmark(NAME, bench)
