"""Chaos on loopback: hundreds of scans while workers are killed and the servers restarted.

The API and two workers run as real processes (`uvicorn app.main:app`, `python -m worker`)
against a PostgreSQL and a Redis started for this test alone. While scans arrive in waves, workers
are SIGKILLed and SIGTERMed (and replaced), Redis is restarted once and PostgreSQL once; the
processes export traces to an OTLP endpoint where nothing listens. Afterwards every scan must be
terminal, reached that state exactly once (a trigger records every terminal write), used at most
its tries, and no KeyBERT process may outlive its worker.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil  # type: ignore[import-untyped]
import pytest

from app.cli.embedded import free_port
from app.core import migrate
from app.core.models import OPEN, TERMINAL
from app.core.settings import Settings
from tests.hostile import Hostile
from tests.processes import (
    Proc,
    child_processes,
    describe_process,
    process_env,
    start_process,
    stop_process,
    wait_api_ready,
    wait_children_gone,
)
from tests.servers import PrivatePostgres, PrivateRedis, private_postgres, private_redis
from tests.site import Site

pytestmark = pytest.mark.slow

MAX_TRIES = 4
JOB_TIMEOUT = 8  # a killed worker's jobs come back within seconds (worker/recovery.py), else after it + 15 s
WAVES = 6
WAVE_SIZE = 30  # (WAVES + 2 restarts) * WAVE_SIZE >= 200 scans
SETTLE_SECONDS = 3.0  # between a wave and the next disruption: let work get in flight
DOWNTIME = 3.0  # how long Redis and PostgreSQL stay down
DRAIN_POLLS = 240  # x 1 s: every scan terminal after the last disruption
SUBMIT_TRIES = 60  # x 0.5 s: a submission meeting PostgreSQL's downtime tries again (same key)

DOCUMENTS = [
    "Compost needs nitrogen-rich greens, carbon-rich browns, air and water to break down. " * 8,
    "Espresso machines force hot water through finely ground coffee at about nine bars. " * 8,
    "Bees forage on clover and lavender; a hive needs water and shelter from the wind. " * 8,
]
# (path on the test site or the hostile server, the outcome it must end with)
PAGES = [
    ("site", "/pages/article.html", "FULL_READY"),
    ("site", "/pages/product.html", "FULL_READY"),
    ("site", "/redirect/2", "FULL_READY"),
    ("hostile", "/delay?ms=1500", "FULL_READY"),  # slow: in flight when a worker dies
    ("site", "/status/404", "http_error"),
    ("site", "/file.pdf", "unsupported_content"),
]

# Every write that leaves a scan terminal, and every write to a scan that already was.
AUDIT_SQL = """
CREATE TABLE terminal_writes (scan_id uuid, old_status text, new_status text, at timestamptz DEFAULT now());
CREATE FUNCTION record_terminal_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.status IN ('FULL_READY', 'FAILED', 'CANCELLED') OR OLD.status IN ('FULL_READY', 'FAILED', 'CANCELLED') THEN
    INSERT INTO terminal_writes (scan_id, old_status, new_status) VALUES (OLD.id, OLD.status, NEW.status);
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER terminal_writes AFTER UPDATE ON scans FOR EACH ROW EXECUTE FUNCTION record_terminal_write();
"""


@dataclass
class Worker:
    proc: Proc
    children: set[psutil.Process] = field(default_factory=set)

    def note_children(self) -> None:
        """Remember its KeyBERT pool (and the pool's resource tracker) while it is alive to ask."""
        self.children.update(child_processes(self.proc))


@dataclass
class Chaos:
    env: dict[str, str]
    logs: Path
    api_url: str
    site: Site
    hostile: Hostile
    redis: PrivateRedis
    postgres: PrivatePostgres
    workers: list[Worker] = field(default_factory=list)
    retired: list[Worker] = field(default_factory=list)
    expected: dict[str, str] = field(default_factory=dict)  # scan id -> expected outcome
    keys: dict[str, str] = field(default_factory=dict)  # idempotency key -> scan id
    figures: collections.Counter[str] = field(default_factory=collections.Counter)
    orphans: list[str] = field(default_factory=list)
    submitted: int = 0

    def start_worker(self) -> Worker:
        n = len(self.workers) + len(self.retired)
        env = {**self.env, "PAGELENS_WORKER_METRICS_PORT": str(free_port())}
        command = [sys.executable, "-m", "worker"]
        worker = Worker(start_process(f"worker{n}", command, env, self.logs))
        self.workers.append(worker)
        return worker

    async def kill_worker(self, sig: signal.Signals) -> None:
        """Stop the oldest worker with `sig`, start its replacement, and check its pool went with it."""
        worker = self.workers.pop(0)
        self.start_worker()
        worker.note_children()
        self.figures[f"workers {sig.name}"] += 1
        if sig is signal.SIGKILL:
            worker.proc.process.kill()
            worker.proc.process.wait(30)
        else:
            stop_process(worker.proc)  # SIGTERM, then a bounded wait
        self.retired.append(worker)
        await self.children_gone(worker)

    async def children_gone(self, worker: Worker) -> None:
        # Bounded (processes.CHILD_EXIT_POLLS): a killed worker's KeyBERT process is gone within ~20 s.
        alive = await wait_children_gone(list(worker.children))
        self.orphans += [f"{worker.proc.name}: {describe_process(p)}" for p in alive]
        for p in alive:  # ours, started by a worker we started: do not leave them behind
            with contextlib.suppress(psutil.Error):
                p.kill()

    async def submit(self, client: httpx.AsyncClient, n: int) -> None:
        kind = n % (len(PAGES) + len(DOCUMENTS))
        if kind < len(PAGES):
            server, page, outcome = PAGES[kind]
            path, body = "/api/v1/scan-jobs", {"url": (self.site if server == "site" else self.hostile).url(page)}
        else:
            path, body, outcome = "/api/v1/documents", {"text": DOCUMENTS[kind - len(PAGES)]}, "FULL_READY"
        key = f"chaos-{n}-{uuid.uuid4()}"
        for _ in range(SUBMIT_TRIES):
            try:
                response = await client.post(path, json=body, headers={"Idempotency-Key": key})
            except httpx.TransportError:
                self.figures["submissions: connection errors"] += 1
            else:
                if response.status_code == 202:
                    scan_id = response.json()["scanId"]
                    assert self.keys.setdefault(key, scan_id) == scan_id
                    self.expected[scan_id] = outcome
                    return
                assert response.status_code == 503, f"{response.status_code} {response.text}"
                assert int(response.headers["retry-after"]) > 0
                self.figures["submissions: 503 + Retry-After"] += 1
            await asyncio.sleep(0.5)  # shorter than Retry-After: the test has a time budget
        pytest.fail(f"submission {n} was never accepted")

    async def wave(self, client: httpx.AsyncClient) -> None:
        start, self.submitted = self.submitted, self.submitted + WAVE_SIZE
        await asyncio.gather(*(self.submit(client, n) for n in range(start, start + WAVE_SIZE)))
        await asyncio.sleep(SETTLE_SECONDS)

    async def restart(self, name: str, server: PrivateRedis | PrivatePostgres, client: httpx.AsyncClient) -> None:
        await asyncio.to_thread(server.stop)
        self.figures[f"{name} restarts"] += 1
        wave = asyncio.create_task(self.wave(client))  # submitted while it is down, and as it comes back
        await asyncio.sleep(DOWNTIME)
        await asyncio.to_thread(server.start)
        await wave


@pytest.fixture
async def chaos(tmp_path: Path, site: Site, hostile: Hostile) -> AsyncIterator[Chaos]:
    with private_postgres() as postgres, private_redis(tmp_path / "redis") as redis:
        await migrate.apply(postgres.dsn, Settings().migrations_dir)
        conn = await asyncpg.connect(postgres.dsn)
        try:
            await conn.execute(AUDIT_SQL)
        finally:
            await conn.close()
        api_port = free_port()
        env = process_env(
            DATABASE_URL=postgres.dsn,
            REDIS_URL=redis.url,
            PAGELENS_FETCH_ALLOW_HOSTS=f"127.0.0.1:{site.port},127.0.0.1:{hostile.port}",
            PAGELENS_MAX_TRIES=str(MAX_TRIES),
            PAGELENS_JOB_TIMEOUT=str(JOB_TIMEOUT),
            PAGELENS_FETCH_TIMEOUT="5",
            PAGELENS_SHUTDOWN_GRACE="2",  # SIGTERM: 2 s to finish, then running scans are handed back
            PAGELENS_SWEEP_INTERVAL="5",
            PAGELENS_MAX_JOBS="8",
            PAGELENS_QUEUE_SAMPLE_INTERVAL="1",
            PAGELENS_LOG_LEVEL="INFO",
            # Nothing listens there: exporting traces must change nothing.
            OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{free_port()}",
            OTEL_BSP_SCHEDULE_DELAY="200",
        )
        logs = tmp_path / "logs"
        logs.mkdir()
        api_command = [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(api_port)]
        api = start_process("api", api_command, env, logs)
        state = Chaos(env, logs, f"http://127.0.0.1:{api_port}", site, hostile, redis, postgres)
        try:
            state.start_worker()
            state.start_worker()
            await wait_api_ready(api, state.api_url)
            yield state
            assert api.process.poll() is None, f"the API exited during the chaos\n{api.tail()}"
        finally:
            for worker in state.workers:
                worker.note_children()
                stop_process(worker.proc)
                await state.children_gone(worker)
            stop_process(api)


async def scan_rows(dsn: str) -> tuple[list[Any], list[Any]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            """SELECT id, status, error->>'type' AS error_type, report IS NOT NULL AS has_report,
                      attempts - retry_base AS tries FROM scans"""
        )
        writes = await conn.fetch("SELECT scan_id, old_status, new_status FROM terminal_writes")
    finally:
        await conn.close()
    return rows, writes


async def wait_all_terminal(dsn: str) -> int:
    """Seconds it took until no scan was open (bounded)."""
    for second in range(DRAIN_POLLS):
        with contextlib.suppress(OSError, asyncpg.PostgresError):
            conn = await asyncpg.connect(dsn)
            try:
                open_scans = await conn.fetchval("SELECT count(*) FROM scans WHERE status = ANY($1::text[])", OPEN)
            finally:
                await conn.close()
            if open_scans == 0:
                return second
        await asyncio.sleep(1)
    return -1


async def test_no_scan_is_lost_duplicated_or_over_tried(chaos: Chaos, capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=chaos.api_url, timeout=30) as client:
        disruptions = [
            lambda: chaos.kill_worker(signal.SIGKILL),
            lambda: chaos.kill_worker(signal.SIGTERM),
            lambda: chaos.restart("redis", chaos.redis, client),
            lambda: chaos.kill_worker(signal.SIGKILL),
            lambda: chaos.restart("postgres", chaos.postgres, client),
            lambda: chaos.kill_worker(signal.SIGTERM),
        ]
        for wave in range(WAVES):
            await chaos.wave(client)
            if wave < len(disruptions):
                await disruptions[wave]()
        drained_in = await wait_all_terminal(chaos.postgres.dsn)

    rows, writes = await scan_rows(chaos.postgres.dsn)
    by_id = {str(r["id"]): r for r in rows}
    statuses = collections.Counter(r["status"] for r in rows)
    errors = collections.Counter(r["error_type"] for r in rows if r["error_type"])
    tries = collections.Counter(int(r["tries"]) for r in rows)
    figures = {
        "scans": len(rows),
        **chaos.figures,
        "retries (tries beyond the first)": sum(max(0, t - 1) * c for t, c in tries.items()),
        "tries per scan (histogram)": dict(sorted(tries.items())),
        "statuses": dict(statuses),
        "error types": dict(errors),
        "seconds until all terminal after the last wave": drained_in,
        "duration seconds": round(time.monotonic() - started, 1),
    }
    with capsys.disabled():
        print("\nchaos figures:", *(f"  {k}: {v}" for k, v in figures.items()), sep="\n")

    assert drained_in >= 0, f"scans still open after {DRAIN_POLLS} s: {statuses}"
    assert len(rows) >= 200
    assert set(by_id) == set(chaos.expected), "every accepted scan is in the table, and nothing else"
    assert len(chaos.keys) == len(rows), "one scan per idempotency key, repeats after 503s included"
    assert max(tries) <= MAX_TRIES, tries

    first_terminal = collections.Counter(str(w["scan_id"]) for w in writes if w["old_status"] not in TERMINAL)
    after_terminal = [dict(w) for w in writes if w["old_status"] in TERMINAL]
    assert not after_terminal, f"writes to scans that were already terminal: {after_terminal[:5]}"
    assert all(first_terminal[scan_id] == 1 for scan_id in by_id), "each scan became terminal exactly once"

    for scan_id, expected in chaos.expected.items():
        row = by_id[scan_id]
        if row["status"] == "FULL_READY":
            assert expected == "FULL_READY" and row["has_report"] and row["error_type"] is None, dict(row)
            continue
        assert row["status"] == "FAILED" and not row["has_report"], dict(row)
        kind = row["error_type"]
        # A scan hit by a disruption on every one of its tries may run out of them; nothing else may fail.
        exhausted = kind == "retries_exhausted" and row["tries"] == MAX_TRIES
        assert kind == expected or exhausted, (expected, dict(row))
    assert not chaos.orphans, f"KeyBERT processes outlived their worker: {chaos.orphans}"
    assert all(w.proc.process.poll() is None for w in chaos.workers), "a worker died of a server restart"
