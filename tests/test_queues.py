"""Queue depth sampling, leader election, heartbeats and GET /api/v1/queues, on real Redis and PostgreSQL.

The scans table has no queue column (one deployment, one queue), so these tests get a database of
their own: scans created by other tests would otherwise show up as active, retrying or dead here.
Each test uses its own queue name and deletes the keys it made; the Redis may be shared.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import asyncpg
import httpx
import pytest
from aioprometheus.collectors import Gauge, Registry
from aioprometheus.renderer import render
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix, result_key_prefix, retry_key_prefix
from arq.worker import Worker
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from app.cli.embedded import free_port
from app.core import db, migrate, scans
from app.core.models import ErrorType, Kind, ScanError
from app.core.queue import RUN_SCAN, enqueue_scan, redis_settings
from app.core.settings import Settings
from observability.sampler import (
    STATES,
    QueueGauges,
    QueueSampler,
    live_workers,
    lock_key,
    read_snapshot,
    stats_key,
    workers_key,
)
from tests.conftest import RUN_ID, serve_api

if TYPE_CHECKING:
    from worker.keyphrases import KeyphraseExtractor

# Bounds for polling loops; they only stop a broken test from hanging.
POLL = 0.025
POLLS = 400


@pytest.fixture(scope="module")
async def queue_db(server_dsn: str, empty_database: Any) -> str:
    dsn: str = await empty_database(server_dsn)
    await migrate.apply(dsn, Settings().migrations_dir)
    return dsn


@pytest.fixture(scope="module")
async def qpool(queue_db: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await db.create_pool(queue_db)
    yield pool
    await pool.close()


@dataclass
class Harness:
    settings: Settings
    redis: ArqRedis
    pool: asyncpg.Pool
    job_ids: list[str] = field(default_factory=list)

    @property
    def queue(self) -> str:
        return self.settings.queue_name

    async def enqueue(self, job_id: str | None = None, **options: Any) -> str:
        job_id = job_id or uuid.uuid4().hex
        self.job_ids.append(job_id)
        job = await self.redis.enqueue_job(RUN_SCAN, _job_id=job_id, _queue_name=self.queue, scan_id=job_id, **options)
        assert job is not None
        return job_id

    async def scan(self) -> uuid.UUID:
        row, _ = await scans.create(self.pool, scans.NewScan(kind=Kind.DOCUMENT, document="some text"))
        scan_id: uuid.UUID = row["id"]
        return scan_id

    async def claimed(self) -> tuple[uuid.UUID, int]:
        scan_id = await self.scan()
        row = await scans.claim(self.pool, scan_id, lease_seconds=600, max_tries=3)
        assert row is not None
        return scan_id, row["attempts"]

    def sampler(self, **options: Any) -> QueueSampler:
        options.setdefault("gauges", fresh_gauges())
        return QueueSampler(self.redis, self.pool, self.queue, **options)

    async def cleanup(self) -> None:
        keys = [self.queue, lock_key(self.queue), stats_key(self.queue), workers_key(self.queue)]
        for job_id in self.job_ids:
            keys += [p + job_id for p in (job_key_prefix, in_progress_key_prefix, retry_key_prefix, result_key_prefix)]
        await self.redis.delete(*keys)


@pytest.fixture
async def h(settings: Settings, redis: ArqRedis, queue_db: str, qpool: asyncpg.Pool) -> AsyncIterator[Harness]:
    await qpool.execute("TRUNCATE scans")
    queue = f"pagelens:test:{RUN_ID}:queues:{secrets.token_hex(4)}"
    harness = Harness(settings.with_(queue_name=queue, database_url=queue_db, worker_metrics_port=0), redis, qpool)
    yield harness
    await harness.cleanup()


def fresh_gauges() -> QueueGauges:
    """Gauges on a registry of their own, so two samplers in one process can be told apart."""
    registry = Registry()
    return QueueGauges(
        Gauge("pagelens_queue_size", "", registry=registry),
        Gauge("pagelens_queue_oldest_pending_age_seconds", "", registry=registry),
    )


def exported(gauges: QueueGauges, queue: str) -> dict[str, float]:
    """What a scrape of these gauges shows for `queue`: {state or "oldest": value}."""
    registry = Registry()
    registry.register(gauges.size)
    registry.register(gauges.oldest)
    body, _ = render(registry, [])
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.labels.get("queue") == queue:
                found[sample.labels.get("state", "oldest")] = sample.value
    return found


def counts(snapshot: dict[str, Any]) -> dict[str, int]:
    return {state: snapshot[state] for state in STATES}


async def test_pending_and_deferred_come_from_the_queue(h: Harness) -> None:
    for _ in range(3):
        await h.enqueue()
    for _ in range(2):
        await h.enqueue(_defer_by=600)
    snapshot = await h.sampler().sample_once()
    assert counts(snapshot) == {"pending": 3, "deferred": 2, "active": 0, "retry": 0, "dead": 0}
    assert snapshot["name"] == h.queue
    assert datetime.fromisoformat(snapshot["sampledAt"].replace("Z", "+00:00")).tzinfo is not None


async def test_active_retry_and_dead_come_from_scans(h: Harness) -> None:
    # Running: leased and eligible in the queue, so it is active and not pending.
    running, _ = await h.claimed()
    await enqueue_scan(h.redis, h.queue, str(running))
    h.job_ids.append(str(running))
    # Waiting for a retry: lease given back with the error; arq holds its job deferred.
    retrying, attempt = await h.claimed()
    transient = ScanError(ErrorType.TIMEOUT, "slow", retryable=True)
    assert await scans.release_for_retry(h.pool, retrying, attempt, transient)
    await h.enqueue(str(retrying), _defer_by=600)
    # Dead: retries exhausted. A permanent failure is not dead.
    dead, attempt = await h.claimed()
    assert await scans.fail(h.pool, dead, attempt, ScanError(ErrorType.RETRIES_EXHAUSTED, "gave up"))
    failed, attempt = await h.claimed()
    assert await scans.fail(h.pool, failed, attempt, ScanError(ErrorType.INVALID_URL, "bad"))
    # A lease that ran out (its worker died) is not active, and one plain pending job.
    stranded, _ = await h.claimed()
    await h.pool.execute("UPDATE scans SET lease_until = now() - interval '1 minute' WHERE id = $1", stranded)
    await h.enqueue()

    snapshot = await h.sampler().sample_once()
    assert counts(snapshot) == {"pending": 1, "deferred": 0, "active": 1, "retry": 1, "dead": 1}


async def test_oldest_pending_age_is_the_oldest_job_nobody_started(h: Harness) -> None:
    sampler = h.sampler()
    assert (await sampler.sample_once())["oldestPendingAgeSeconds"] == 0.0
    now = datetime.now(UTC)
    oldest = await h.enqueue(_defer_until=now - timedelta(seconds=300))
    older = await h.enqueue(_defer_until=now - timedelta(seconds=60))
    await h.enqueue()
    await h.enqueue(_defer_by=600)  # deferred jobs are not waiting yet

    async def age_of(job_id: str) -> tuple[float, float, float]:
        """(lowest, sampled, highest): the age must lie within the time around the sample."""
        score = await h.redis.zscore(h.queue, job_id)
        assert score is not None
        before = time.time()
        sampled = (await sampler.sample_once())["oldestPendingAgeSeconds"]
        after = time.time()
        return before - score / 1000 - 0.002, sampled, after - score / 1000 + 0.002

    low, age, high = await age_of(oldest)
    assert low <= age <= high and age >= 300
    # Once a worker has started the oldest job, the next one is the oldest pending.
    await h.redis.set(in_progress_key_prefix + oldest, b"1", px=60_000)
    low, age, high = await age_of(older)
    assert low <= age <= high and 60 <= age < 300
    for job_id in h.job_ids:
        await h.redis.set(in_progress_key_prefix + job_id, b"1", px=60_000)
    assert (await sampler.sample_once())["oldestPendingAgeSeconds"] == 0.0


async def test_one_leader_exports_and_the_other_takes_over_when_it_stops(h: Harness) -> None:
    await h.enqueue()
    first, second = h.sampler(), h.sampler()
    # A former leader's numbers must disappear from a process that no longer leads.
    for sampler in (first, second):
        sampler.gauges.size.set({"queue": h.queue, "state": "pending"}, 99)
    try:
        results = [await first.tick(), await second.tick()]
        assert sorted(results) == [False, True]
        leader, follower = (first, second) if results[0] else (second, first)
        assert await h.redis.get(lock_key(h.queue)) == leader.instance_id.encode()
        assert exported(follower.gauges, h.queue) == {}
        published = exported(leader.gauges, h.queue)
        assert {state: published[state] for state in STATES} == {
            "pending": 1.0,
            "deferred": 0.0,
            "active": 0.0,
            "retry": 0.0,
            "dead": 0.0,
        }
        assert "oldest" in published
        snapshot = await read_snapshot(h.redis, h.queue)
        assert snapshot is not None and snapshot["pending"] == 1
        assert await leader.tick() is True  # renewing its own lock
        assert await follower.tick() is False

        await leader.stop()
        assert exported(leader.gauges, h.queue) == {}
        took_over = [await follower.tick() for _ in range(2)]
        assert took_over[0] is True, took_over
        assert exported(follower.gauges, h.queue)["pending"] == 1.0
    finally:
        await first.stop()
        await second.stop()


async def test_a_lapsed_leader_loses_the_lock_and_cannot_renew_it(h: Harness) -> None:
    # A leader that stops ticking without releasing (a crashed process): its lock expires after
    # 3 intervals and another candidate takes it; the old one cannot renew someone else's lock.
    crashed, other = h.sampler(interval=0.05), h.sampler(interval=0.05)
    try:
        assert await crashed.tick() is True
        for _ in range(POLLS):
            if await other.tick():
                break
            await asyncio.sleep(0.05)
        assert other.is_leader
        assert await crashed.tick() is False
        assert await h.redis.get(lock_key(h.queue)) == other.instance_id.encode()
        assert exported(crashed.gauges, h.queue) == {}
    finally:
        await crashed.stop()
        await other.stop()
    assert await h.redis.exists(lock_key(h.queue)) == 0  # the holder released it on stop


async def test_heartbeat_counts_live_workers_and_prunes_silent_ones(h: Harness) -> None:
    key = workers_key(h.queue)
    await h.redis.zadd(key, {"ghost": int(time.time() * 1000) - 60_000})
    assert await live_workers(h.redis, h.queue) == 0
    sampler = h.sampler(heartbeat=True)
    await sampler.beat()
    assert await live_workers(h.redis, h.queue) == 1
    assert await h.redis.zscore(key, "ghost") is None
    await sampler.stop()
    assert await live_workers(h.redis, h.queue) == 0


async def test_sampler_survives_a_broken_redis_and_warns_once(h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    broken = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    sampler = QueueSampler(broken, h.pool, h.queue, interval=0.01, gauges=fresh_gauges())
    try:
        with caplog.at_level(logging.INFO, logger="pagelens.sampler"):
            sampler.start()
            for _ in range(POLLS):
                if sampler.failures >= 4:
                    break
                await asyncio.sleep(POLL)
            assert sampler.failures >= 4
            assert sampler.running
            await sampler.stop()
        assert not sampler.running
    finally:
        await broken.aclose()
    warnings = [r for r in caplog.records if r.name == "pagelens.sampler" and r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "ConnectionError" in warnings[0].getMessage()


async def test_api_reports_queue_depth_and_exports_it(h: Harness) -> None:
    for _ in range(2):
        await h.enqueue(_defer_until=datetime.now(UTC) - timedelta(seconds=30))
    await h.enqueue(_defer_by=600)
    dead, attempt = await h.claimed()
    assert await scans.fail(h.pool, dead, attempt, ScanError(ErrorType.RETRIES_EXHAUSTED, "gave up"))

    async with serve_api(h.settings) as base, httpx.AsyncClient(base_url=base, timeout=10) as client:
        response = await client.get("/api/v1/queues")
        assert response.status_code == 200
        body = response.json()
        assert body["workers"] == {"live": 0}
        [queue] = body["queues"]
        assert queue["name"] == h.queue
        assert counts(queue) == {"pending": 2, "deferred": 1, "active": 0, "retry": 0, "dead": 1}
        assert queue["oldestPendingAgeSeconds"] >= 30
        assert queue["sampledAt"].endswith("Z")

        # The API process leads (it is the only candidate) and exports the same numbers.
        for _ in range(POLLS):
            scraped = await client.get("/metrics")
            samples = [
                s
                for family in text_string_to_metric_families(scraped.text)
                for s in family.samples
                if s.name == "pagelens_queue_size" and s.labels["queue"] == h.queue
            ]
            if samples:
                break
            await asyncio.sleep(POLL)
        assert {s.labels["state"]: s.value for s in samples} == {
            "pending": 2.0,
            "deferred": 1.0,
            "active": 0.0,
            "retry": 0.0,
            "dead": 1.0,
        }
        pool = [
            s
            for family in text_string_to_metric_families(scraped.text)
            for s in family.samples
            if s.name == "pagelens_db_pool_connections"
        ]
        assert {s.labels["state"] for s in pool} == {"open", "idle"}


async def test_api_counts_a_running_workers_heartbeat(h: Harness, extractor: KeyphraseExtractor) -> None:
    from worker.settings import worker_options

    options = worker_options(h.settings)
    options["ctx"] = {"settings": h.settings, "pool": h.pool, "keyphrases": extractor, "configure_logging": False}
    options["cron_jobs"] = []
    worker = Worker(**options, redis_settings=redis_settings(h.settings.require_redis_url()), handle_signals=False)
    async with serve_api(h.settings) as base, httpx.AsyncClient(base_url=base, timeout=10) as client:
        task = asyncio.create_task(worker.async_run())
        try:
            for _ in range(POLLS):
                if await h.redis.zcard(workers_key(h.queue)) or task.done():
                    break
                await asyncio.sleep(POLL)
            live = (await client.get("/api/v1/queues")).json()["workers"]["live"]
            assert live == 1
        finally:
            await worker.close()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # A worker that shut down takes itself off the list at once.
        assert (await client.get("/api/v1/queues")).json()["workers"]["live"] == 0
