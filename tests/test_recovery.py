"""A dead worker's jobs run again within seconds, through the heartbeats (worker/recovery.py).

Real Redis and PostgreSQL. The first tests set up what a dead worker leaves behind (its jobs
marked in progress under its id, its heartbeat silent, its scan leased) and look once; the last one
SIGKILLs a real `python -m worker` process holding a scan while a second one runs.
"""

from __future__ import annotations

import contextlib
import functools
import secrets
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix
from arq.utils import timestamp_ms

from app.cli.embedded import free_port
from app.core import db, queue, scans
from app.core.keys import DEFAULT_TENANT
from app.core.models import ErrorType, Kind, ScanError
from app.core.report import Teaser
from app.core.settings import Settings
from observability.sampler import workers_key
from tests import waiting
from tests.hostile import Hostile
from tests.processes import Proc, process_env, start_process, stop_process, wait_worker_ready
from worker.recovery import LOST_AFTER, Recovery

DOCUMENT = "Rain barrels collect roof water for the garden; cover them against mosquitoes. " * 5
HELD_MS = 135_000  # what arq's in-progress mark lasts for a scan (job timeout + margin + 10 s)
POLL = 0.2
RECOVERY_POLLS = 300  # x POLL: far below HELD_MS, so only a recovery can run the job again in time


@pytest.fixture
async def q(redis: ArqRedis) -> AsyncIterator[str]:
    name = f"pagelens:test:recovery:{secrets.token_hex(4)}"
    yield name
    keys = [key async for key in redis.scan_iter(match=f"*{name}*", count=1000)]
    await redis.delete(*keys, workers_key(name))


async def held(redis: ArqRedis, pool: asyncpg.Pool, q: str, owner: str, *, lease: bool = True) -> uuid.UUID:
    """A scan queued on `q` whose job `owner` claimed (and, with `lease`, whose scan it leased)."""
    row, _ = await scans.create(pool, scans.NewScan(Kind.DOCUMENT, document=DOCUMENT))
    scan_id: uuid.UUID = row["id"]
    await queue.enqueue_scan(redis, q, str(scan_id))
    await redis.psetex(in_progress_key_prefix + str(scan_id), HELD_MS, owner)
    if lease:
        assert await scans.claim(pool, scan_id, lease_seconds=HELD_MS / 1000) is not None
    return scan_id


async def beat(redis: ArqRedis, q: str, worker: str, seconds_ago: float) -> None:
    await redis.zadd(workers_key(q), {worker: timestamp_ms() - int(seconds_ago * 1000)})


async def test_only_the_jobs_of_a_silent_worker_are_handed_back(
    redis: ArqRedis, pool: asyncpg.Pool, settings: Settings, q: str
) -> None:
    dead, gone, live = "box:101:dead", "box:102:gone", "box:103:live"
    await beat(redis, q, dead, seconds_ago=LOST_AFTER + 1)
    await beat(redis, q, live, seconds_ago=0)  # `gone` has no heartbeat left at all
    lost = [await held(redis, pool, q, dead), await held(redis, pool, q, gone)]
    kept = [await held(redis, pool, q, live), await held(redis, pool, q, "1")]  # "1": a plain arq worker's
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(queue.wake_channel(q))
    try:
        freed = await Recovery(redis, pool, q).recover_once()
        woken = None
        for _ in range(50):  # the subscription's confirmation reads as None first
            woken = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
            if woken is not None:
                break
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
    assert sorted(freed) == sorted(map(str, lost))
    assert woken is not None  # idle workers claim the jobs at once
    for scan_id in lost:
        assert not await redis.exists(in_progress_key_prefix + str(scan_id))
        row = await scans.get(pool, scan_id, DEFAULT_TENANT)
        assert row is not None and row["lease_until"] is None and row["status"] == "RUNNING"
    for scan_id in kept:
        assert await redis.get(in_progress_key_prefix + str(scan_id)) is not None
        row = await scans.get(pool, scan_id, DEFAULT_TENANT)
        assert row is not None and row["lease_until"] is not None
    assert await Recovery(redis, pool, q).recover_once() == []  # nothing left to hand back


async def test_a_handed_back_scan_runs_again_and_the_dead_attempt_cannot_write(
    redis: ArqRedis,
    pool: asyncpg.Pool,
    settings: Settings,
    q: str,
    make_worker: Callable[..., Any],
) -> None:
    dead = "box:104:dead"
    await beat(redis, q, dead, seconds_ago=LOST_AFTER + 1)
    scan_id = await held(redis, pool, q, dead)
    dead_attempt = 1
    assert await Recovery(redis, pool, q).recover_once() == [str(scan_id)]
    worker = make_worker(settings.with_(queue_name=q))
    await worker.main()
    row = await scans.get(pool, scan_id, DEFAULT_TENANT)
    assert row is not None and row["status"] == "FULL_READY", row
    assert row["attempts"] == 2
    # The dead attempt wakes up late (a stalled, not a dead, worker) and tries to write: fenced out.
    assert not await scans.save_teaser(pool, scan_id, dead_attempt, Teaser(title="stale"))
    assert not await scans.fail(pool, scan_id, dead_attempt, ScanError(ErrorType.INTERNAL, "late"))
    after = await scans.get(pool, scan_id, DEFAULT_TENANT)
    assert after is not None and after["status"] == "FULL_READY" and after["report"] == row["report"]


# --- a real worker process, killed ----------------------------------------------------------------


def start_worker(name: str, env: dict[str, str], logs: Path) -> tuple[Proc, int]:
    port = free_port()
    proc = start_process(
        name, [sys.executable, "-m", "worker"], {**env, "PAGELENS_WORKER_METRICS_PORT": str(port)}, logs
    )
    return proc, port


@pytest.mark.slow
async def test_a_scan_held_by_a_killed_worker_runs_again_through_the_heartbeat(
    migrated_database: Callable[[], Awaitable[str]], redis_url: str, redis: ArqRedis, hostile: Hostile, tmp_path: Path
) -> None:
    database_url = await migrated_database()
    q = f"pagelens:test:recovery:{secrets.token_hex(4)}"
    env = process_env(
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        PAGELENS_QUEUE=q,
        PAGELENS_FETCH_ALLOW_HOSTS=f"127.0.0.1:{hostile.port}",
        OTEL_SDK_DISABLED="true",
    )
    workers = [start_worker(f"worker{i}", env, tmp_path) for i in range(2)]
    pool = await db.create_pool(database_url)
    until = functools.partial(waiting.until, poll=POLL, polls=RECOVERY_POLLS)
    try:
        for proc, port in workers:
            await wait_worker_ready(proc, f"http://127.0.0.1:{port}/metrics", port)
        # Slow the first time only (under the fetch's read timeout): the worker holding it is killed
        # in the middle; the next attempt gets the page at once.
        url = hostile.url(f"/slow-once?ms=8000&k={uuid.uuid4()}")
        row, _ = await scans.create(pool, scans.NewScan(Kind.URL, url=url))
        scan_id = str(row["id"])
        await queue.enqueue_scan(redis, q, scan_id)
        mark = in_progress_key_prefix + scan_id
        await until(lambda: redis.exists(mark), "a worker to claim the scan")
        owner = (await redis.get(mark)).decode()
        assert await redis.zscore(workers_key(q), owner) is not None  # the holder's heartbeat names it
        [(holder, _)] = [(p, port) for p, port in workers if f":{p.process.pid}:" in owner]
        [(survivor, _)] = [(p, port) for p, port in workers if p is not holder]

        async def claimed() -> bool:
            # Killed only once its attempt is recorded, so the rerun is attempt 2 however loaded the box.
            current = await scans.get(pool, row["id"], DEFAULT_TENANT)
            return current is not None and current["status"] == "RUNNING" and current["attempts"] == 1

        await until(claimed, "the holder to claim the scan in PostgreSQL")
        # And only once it is fetching the page (the slow first answer), however loaded the box:
        # killed before that, the survivor's fetch would be the page's only one.
        path = url.removeprefix(hostile.base)
        await until(lambda: hostile.hits(path) >= 1, "the holder to be fetching the page")
        holder.process.send_signal(signal.SIGKILL)
        holder.process.wait(30)
        assert await redis.pttl(mark) > RECOVERY_POLLS * POLL * 1000  # arq's own expiry is far off

        async def finished() -> bool:
            current = await scans.get(pool, row["id"], DEFAULT_TENANT)
            return current is not None and current["status"] == "FULL_READY"

        await until(finished, "the scan to run again on the surviving worker")
        done = await scans.get(pool, row["id"], DEFAULT_TENANT)
        assert done is not None and done["attempts"] == 2
        handed_back = [
            e for e in survivor.log() if e.get("job_id") == scan_id and e.get("message", "").startswith("job of a dead")
        ]
        assert handed_back and owner in handed_back[0]["message"], survivor.tail()
        assert hostile.hits(path) >= 2  # the survivor fetched the page again
    finally:
        await pool.close()
        for proc, _ in workers:
            stop_process(proc)
        with contextlib.suppress(Exception):
            keys = [key async for key in redis.scan_iter(match=f"*{q}*", count=1000)]
            await redis.delete(*keys, workers_key(q))
