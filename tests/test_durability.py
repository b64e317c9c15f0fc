"""What happens to a scan when its job times out, its worker dies or its tries run out.

Real arq workers on the test queue, real PostgreSQL and Redis, pages from a local server that can
answer slowly (tests/hostile.py).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import asyncpg
from arq import func
from arq.connections import ArqRedis
from arq.worker import Worker

from app.core import queue, scans
from app.core.models import Kind
from app.core.queue import RUN_SCAN
from app.core.settings import Settings
from tests.hostile import Hostile
from worker.hooks import observed
from worker.maintenance import sweep_stranded
from worker.pipeline import run_scan

MakeWorker = Callable[..., Worker]
DOCUMENT = "Worm bins turn kitchen scraps into castings; keep the bedding moist and the bin in the shade. " * 5


async def enqueued(pool: asyncpg.Pool, redis: ArqRedis, settings: Settings, new: scans.NewScan) -> uuid.UUID:
    row, _ = await scans.create(pool, new)
    await queue.enqueue_scan(redis, settings.queue_name, str(row["id"]))
    scan_id: uuid.UUID = row["id"]
    return scan_id


async def row_of(pool: asyncpg.Pool, scan_id: uuid.UUID) -> Any:
    row = await scans.get(pool, scan_id, "default")
    assert row is not None
    return row


async def sleepy(ctx: dict[str, Any]) -> None:
    await asyncio.sleep(5)


async def test_arq_itself_does_not_retry_a_job_that_times_out(make_worker: MakeWorker, settings: Settings) -> None:
    # The premise: a job past arq's timeout is failed for good. Hence the scan's own deadline below.
    own = settings.with_(queue_name=f"{settings.queue_name}:premise")
    worker = make_worker(own, functions=[func(sleepy, name="sleepy", timeout=0.2, max_tries=3)])
    redis = await queue.connect(own.require_redis_url())
    try:
        await redis.enqueue_job("sleepy", _queue_name=own.queue_name)
    finally:
        await redis.aclose()
    await worker.main()
    assert (worker.jobs_failed, worker.jobs_retried, worker.jobs_complete) == (1, 0, 0)


async def test_a_scan_that_times_out_once_is_retried_and_finishes(
    pool: asyncpg.Pool, redis: ArqRedis, settings: Settings, hostile: Hostile, make_worker: MakeWorker
) -> None:
    slow = settings.with_(job_timeout=1.0, fetch_total_timeout=30.0, fetch_read_timeout=30.0, max_tries=3)
    url = hostile.url(f"/slow-once?ms=4000&k={uuid.uuid4()}")
    scan_id = await enqueued(pool, redis, slow, scans.NewScan(Kind.URL, url=url))
    worker = make_worker(slow)
    await worker.main()
    done = await row_of(pool, scan_id)
    assert done["status"] == "FULL_READY", done["error"]
    assert done["attempts"] == 2 and worker.jobs_retried == 1
    assert hostile.hits(url.removeprefix(hostile.base)) == 2


async def test_a_scan_that_always_times_out_ends_as_retries_exhausted(
    pool: asyncpg.Pool, redis: ArqRedis, settings: Settings, hostile: Hostile, make_worker: MakeWorker
) -> None:
    slow = settings.with_(job_timeout=0.5, fetch_total_timeout=30.0, fetch_read_timeout=30.0, max_tries=2)
    scan_id = await enqueued(pool, redis, slow, scans.NewScan(Kind.URL, url=hostile.url("/delay?ms=3000")))
    worker = make_worker(slow)
    await worker.main()
    done = await row_of(pool, scan_id)
    assert done["status"] == "FAILED" and done["attempts"] == 2
    assert done["error"]["type"] == "retries_exhausted" and done["error"]["retryable"] is True
    assert "(timeout)" in done["error"]["message"] and "within 0.5s" in done["error"]["message"]
    assert (worker.jobs_retried, worker.jobs_failed) == (1, 0)


async def test_arqs_backstop_timeout_leaves_the_scan_to_the_sweeper(
    pool: asyncpg.Pool,
    redis: ArqRedis,
    settings: Settings,
    hostile: Hostile,
    make_worker: MakeWorker,
    worker_ctx: dict[str, Any],
) -> None:
    # arq's own timeout fires first here (it normally sits above the scan's deadline): the job is
    # gone from arq, the scan's lease is handed back, and the sweeper gives the scan to arq again.
    scan_id = await enqueued(pool, redis, settings, scans.NewScan(Kind.URL, url=hostile.url("/delay?ms=1500")))
    cut_short = make_worker(functions=[func(observed(run_scan), name=RUN_SCAN, timeout=0.3, max_tries=5)])
    await cut_short.main()
    assert cut_short.jobs_failed == 1
    stranded = await row_of(pool, scan_id)
    assert stranded["status"] == "RUNNING" and stranded["lease_until"] is None and stranded["attempts"] == 1

    await pool.execute("UPDATE scans SET updated_at = now() - interval '5 minutes' WHERE id = $1", scan_id)
    assert await sweep_stranded(worker_ctx) >= 1
    await make_worker().main()
    done = await row_of(pool, scan_id)
    assert done["status"] == "FULL_READY" and done["attempts"] == 2


async def test_a_scan_held_by_a_dead_attempt_runs_once_its_lease_ends(
    pool: asyncpg.Pool, redis: ArqRedis, settings: Settings, make_worker: MakeWorker
) -> None:
    scan_id = await enqueued(pool, redis, settings, scans.NewScan(Kind.DOCUMENT, document=DOCUMENT))
    # A worker claimed it and was killed: its lease stays until it runs out.
    assert await scans.claim(pool, scan_id, lease_seconds=1.5, max_tries=settings.max_tries) is not None
    worker = make_worker()
    await worker.main()
    done = await row_of(pool, scan_id)
    assert done["status"] == "FULL_READY", done["error"]
    assert done["attempts"] == 2, "the dead attempt and the one that finished"
    assert worker.jobs_retried == 1, "the first delivery waited for the lease instead of being dropped"


async def test_a_scan_whose_tries_are_used_up_fails_without_running(
    pool: asyncpg.Pool, redis: ArqRedis, settings: Settings, make_worker: MakeWorker
) -> None:
    scan_id = await enqueued(pool, redis, settings, scans.NewScan(Kind.DOCUMENT, document=DOCUMENT))
    # Every try started and none finished; the last one recorded why before its worker died.
    await pool.execute(
        """UPDATE scans SET status = 'RUNNING', attempts = $2, lease_until = now() - interval '1 second',
           error = '{"type": "timeout", "message": "the scan did not finish within 9s", "retryable": true}'
           WHERE id = $1""",
        scan_id,
        settings.max_tries,
    )
    await make_worker().main()
    done = await row_of(pool, scan_id)
    assert done["status"] == "FAILED" and done["attempts"] == settings.max_tries, "no try beyond the budget"
    assert done["teaser"] is None and done["report"] is None
    last = "last error (timeout): the scan did not finish within 9s"
    assert done["error"] == {
        "type": "retries_exhausted",
        "retryable": True,
        "message": f"gave up after {settings.max_tries} attempts; {last}",
        "cause": {"type": "timeout", "message": "the scan did not finish within 9s", "retryable": True},
    }


async def test_a_scan_whose_workers_all_died_is_not_called_retryable(
    pool: asyncpg.Pool, redis: ArqRedis, settings: Settings, make_worker: MakeWorker
) -> None:
    # Every try started and no attempt recorded an error: its workers died on it each time, and may
    # on a replay too, so nothing says a client's retry would help.
    scan_id = await enqueued(pool, redis, settings, scans.NewScan(Kind.DOCUMENT, document=DOCUMENT))
    await pool.execute(
        """UPDATE scans SET status = 'RUNNING', attempts = $2, lease_until = now() - interval '1 second'
           WHERE id = $1""",
        scan_id,
        settings.max_tries,
    )
    await make_worker().main()
    done = await row_of(pool, scan_id)
    assert done["status"] == "FAILED"
    assert done["error"] == {
        "type": "retries_exhausted",
        "retryable": False,
        "message": f"no attempt finished after {settings.max_tries} tries",
    }
