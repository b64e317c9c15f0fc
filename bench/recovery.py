"""Kill → running again: how soon a scan held by a SIGKILLed worker runs on another one.

Three `python -m worker` processes (what `pagelens worker` runs) on a queue and database of the
run's own. Per repetition: a scan of a page that answers slowly the first time is enqueued; once a
worker has claimed it (arq's in-progress mark names the worker), a random pause (so the kill lands
at any point of the heartbeat cycle), then SIGKILL to that worker. Measured from the kill to
- running again: another worker's claim of the scan (its `attempts` goes to 2 in PostgreSQL);
- FULL_READY: the scan done.
A replacement worker is started and waited for before the next repetition. Without the recovery
(worker/recovery.py) the scan would wait for arq's in-progress mark to expire: the job timeout +
15 s, 135 s by default. The results go to docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from arq.constants import in_progress_key_prefix

from app.cli.embedded import free_port
from app.core import db, queue, scans
from app.core.models import Kind
from app.core.settings import ROOT
from bench.common import (
    BenchContext,
    Benchmark,
    BenchResult,
    Service,
    Table,
    child_env,
    environment,
    isolated_database,
    percentile,
    postgres_target,
    serving,
    sweep_queue,
    verdict,
)

NAME = "recovery"
TITLE = "Recovery: kill -9 of the worker holding a scan → the scan running again"
DOC = ROOT / "docs" / "reliability.md"
TARGET_P95_S = 15.0
SLOW_FIRST_S = 9.0  # the page's first answer: under the fetch's 10 s read timeout, so it is held, not failed
POLL = 0.02
WAIT_LIMIT = 120.0  # for any one step; far below nothing, it only bounds a broken run


@dataclass(frozen=True)
class RecoveryConfig:
    reps: int = 12
    workers: int = 3


@dataclass(frozen=True)
class RecoveryResult:
    config: RecoveryConfig
    running_again_s: tuple[float, ...]
    full_ready_s: tuple[float, ...]
    seconds: float
    environment: str

    def bench_result(self) -> BenchResult:
        rows = tuple(
            (
                label,
                f"{percentile(values, 50):.1f}",
                f"{percentile(values, 95):.1f}",
                f"{max(values):.1f}",
                str(len(values)),
            )
            for label, values in (("running again", self.running_again_s), ("FULL_READY", self.full_ready_s))
        )
        p95 = percentile(self.running_again_s, 95)
        notes = (
            f"kill → running again: p95 **{p95:.1f} s**; target <= {TARGET_P95_S:g} s: {verdict(p95 <= TARGET_P95_S)}",
            f"{self.config.reps} kills, {self.config.workers} workers running at each; a random pause of up to "
            f"one heartbeat before each kill; run time {self.seconds:.0f} s",
        )
        table = Table(("from the kill to", "p50 s", "p95 s", "max s", "kills"), rows)
        return BenchResult(NAME, TITLE, table, notes, self.environment, self.seconds)


@contextmanager
def slow_first_page() -> Iterator[int]:
    """An HTML page at /<anything> on 127.0.0.1, answered after SLOW_FIRST_S the first time each
    path is asked for and at once after that; yields the port."""
    seen: set[str] = set()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            first = self.path not in seen
            seen.add(self.path)
            if first:
                time.sleep(SLOW_FIRST_S)
            body = b"<html><head><title>Held</title></head><body><p>" + b"Rain gardens soak up storm water. " * 40
            body += b"</p></body></html>"
            try:
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except OSError:
                pass  # the worker that asked was killed

        def log_message(self, format: str, *args: Any) -> None:
            pass

    with serving(ThreadingHTTPServer(("127.0.0.1", 0), Handler), "recovery-page") as server:
        yield server.server_address[1]


def start_worker(env: dict[str, str], logs: Path, index: int) -> Service:
    port = free_port()
    ready = f"http://127.0.0.1:{port}/metrics"  # served once on_startup is through
    worker_env = {**env, "PAGELENS_WORKER_METRICS_PORT": str(port)}
    return Service.start(f"worker-{index}", [sys.executable, "-m", "worker"], worker_env, logs, ready)


async def _until(check: Any, what: str) -> Any:
    deadline = time.monotonic() + WAIT_LIMIT
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(POLL)
    raise RuntimeError(f"no {what} within {WAIT_LIMIT:.0f} s")


Kill = tuple[float, float, Service]  # seconds to running again, seconds to FULL_READY, the killed worker


async def _one_kill(dsn: str, redis_url: str, q: str, port: int, workers: list[Service]) -> Kill:
    """One repetition."""

    redis = await queue.connect(redis_url)
    conn = await db.create_pool(dsn)  # with pagelens's JSON codecs
    try:
        row, _ = await scans.create(conn, scans.NewScan(Kind.URL, url=f"http://127.0.0.1:{port}/{uuid.uuid4()}"))
        await queue.enqueue_scan(redis, q, str(row["id"]))
        owner: bytes = await _until(lambda: redis.get(in_progress_key_prefix + str(row["id"])), "claim")
        [holder] = [w for w in workers if f":{w.pid}:" in owner.decode()]
        await asyncio.sleep(random.uniform(0, 2.0))  # the kill at any point of the holder's heartbeat cycle
        holder.process.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        holder.process.wait(30)

        async def attempts() -> bool:
            return bool(await conn.fetchval("SELECT attempts >= 2 FROM scans WHERE id = $1", row["id"]))

        await _until(attempts, "second claim")
        running_again = time.monotonic() - killed

        async def ready() -> bool:
            return bool(await conn.fetchval("SELECT status = 'FULL_READY' FROM scans WHERE id = $1", row["id"]))

        await _until(ready, "FULL_READY")
        return running_again, time.monotonic() - killed, holder
    finally:
        await conn.close()
        await redis.aclose()


def run(config: RecoveryConfig, context: BenchContext) -> RecoveryResult:
    began = time.monotonic()
    token = secrets.token_hex(4)
    q = f"pagelens-bench:{token}:recovery"
    again: list[float] = []
    ready: list[float] = []
    with (
        postgres_target() as postgres,
        isolated_database(postgres.dsn, f"pagelens_bench_{token}") as dsn,
        slow_first_page() as port,
        tempfile.TemporaryDirectory(prefix="pagelens-bench-recovery-") as tmp,
    ):
        env = child_env(
            DATABASE_URL=dsn,
            REDIS_URL=context.redis.url,
            PAGELENS_QUEUE=q,
            PAGELENS_FETCH_ALLOW_HOSTS=f"127.0.0.1:{port}",
            OTEL_SDK_DISABLED="true",
        )
        workers: list[Service] = []
        try:
            workers = [start_worker(env, Path(tmp), i) for i in range(config.workers)]
            for rep in range(config.reps):
                running_again, full_ready, killed = asyncio.run(_one_kill(dsn, context.redis.url, q, port, workers))
                again.append(running_again)
                ready.append(full_ready)
                workers.remove(killed)
                workers.append(start_worker(env, Path(tmp), config.workers + rep))
        finally:
            for worker in workers:
                worker.stop()
            sweep_queue(context.redis.url, q)
    env_line = environment(context.redis, extra=f"PostgreSQL ({postgres.source})")
    return RecoveryResult(config, tuple(again), tuple(ready), time.monotonic() - began, env_line)


def bench(context: BenchContext) -> BenchResult:
    return run(RecoveryConfig(), context).bench_result()


BENCHMARK = Benchmark(NAME, bench, DOC)
