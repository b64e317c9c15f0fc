"""Queue depth by state, sampled by one elected process per queue.

Every API and worker process runs a `QueueSampler` candidate. A Redis lock elects one of them per
queue; only that leader samples (one Redis pipeline, one SQL query), sets `pagelens_queue_size` and
`pagelens_queue_oldest_pending_age_seconds`, and publishes the snapshot that GET /api/v1/queues
reads. The others clear their own queue gauges, so Prometheus never sums or averages N copies of
the same number, and never sees a stale copy from a process that stopped leading.

Worker processes also beat a heartbeat into `pagelens:workers:<queue>` (a loop of its own): the
API counts live workers from it, and workers use it to find a dead peer's jobs (worker/recovery.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
from aioprometheus.collectors import Gauge
from arq.constants import in_progress_key_prefix
from arq.utils import timestamp_ms
from redis.asyncio import Redis

from observability import metrics

logger = logging.getLogger("pagelens.sampler")

STATES = ("pending", "deferred", "active", "retry", "dead")
# Beyond the running jobs (the oldest eligible members), how many waiting members to look at when
# searching for the oldest one nobody has started.
OLDEST_SCAN_LIMIT = 50
OLDEST_SCAN_MAX = 1000
WORKER_WINDOW_MS = 30_000
# Often enough that a worker silent for a few beats can be called dead within seconds
# (worker/recovery.py); one pipelined round trip each. A failed beat is retried at this pace, not
# backed off: a live worker must not look dead because Redis hiccupped once.
HEARTBEAT_INTERVAL = 2.0
MAX_BACKOFF = 15.0
RELEASE_TIMEOUT = 2.0

# Leases exist only on RUNNING / TEASER_READY rows (claim moves QUEUED to RUNNING; every terminal
# write clears the lease), so the WHERE clause keeps the scan to in-flight and dead rows, which the
# (status, created_at) index finds without reading finished scans.
COUNTS_SQL = """
SELECT count(*) FILTER (WHERE lease_until > now()) AS active,
       count(*) FILTER (WHERE status IN ('RUNNING', 'TEASER_READY')
                          AND lease_until IS NULL AND error IS NOT NULL) AS retry,
       count(*) FILTER (WHERE status = 'FAILED' AND error->>'type' = 'retries_exhausted') AS dead
FROM scans
WHERE status IN ('RUNNING', 'TEASER_READY') OR (status = 'FAILED' AND error->>'type' = 'retries_exhausted')
"""

# Only the holder may extend or drop the lock: a stalled ex-leader must not renew or delete the
# lock a newer leader took after its lease ran out.
RENEW_LUA = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
RELEASE_LUA = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


def lock_key(queue: str) -> str:
    return f"pagelens:sampler:{queue}"


def stats_key(queue: str) -> str:
    return f"pagelens:queue-stats:{queue}"


def workers_key(queue: str) -> str:
    return f"pagelens:workers:{queue}"


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def sample_queue(redis: Redis, pool: asyncpg.Pool, queue: str) -> dict[str, Any]:
    """Depth by state of one queue, in the shape GET /api/v1/queues answers.

    The scans table says what runs, waits for a retry or is dead; the arq sorted set says what is
    eligible (score <= now) or deferred. Running and retrying jobs sit in the sorted set too, so
    they are subtracted from those counts."""
    row = await pool.fetchrow(COUNTS_SQL)
    assert row is not None  # an aggregate without GROUP BY always returns one row
    active, retry, dead = int(row["active"]), int(row["retry"]), int(row["dead"])
    now = timestamp_ms()  # arq's own clock and unit: scores are local epoch milliseconds
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zcount(queue, "-inf", now)
        pipe.zcount(queue, f"({now}", "+inf")
        # Running jobs are the oldest eligible members, so look past them for the first waiting one.
        pipe.zrangebyscore(
            queue, "-inf", now, start=0, num=min(active + OLDEST_SCAN_LIMIT, OLDEST_SCAN_MAX), withscores=True
        )
        eligible, future, oldest = await pipe.execute()
    return {
        "name": queue,
        "pending": max(0, int(eligible) - active),
        "deferred": max(0, int(future) - retry),
        "active": active,
        "retry": retry,
        "dead": dead,
        "oldestPendingAgeSeconds": await _oldest_pending_age(redis, oldest, now),
        "sampledAt": _iso(now),
    }


async def _oldest_pending_age(redis: Redis, members: list[tuple[bytes | str, float]], now: int) -> float:
    if not members:
        return 0.0
    async with redis.pipeline(transaction=False) as pipe:
        for member, _ in members:
            job_id = member.decode() if isinstance(member, bytes) else member
            pipe.exists(in_progress_key_prefix + job_id)
        started = await pipe.execute()
    for (_, score), running in zip(members, started, strict=True):
        if not running:
            return round(max(0.0, (now - score) / 1000), 3)
    return 0.0


async def read_snapshot(redis: Redis, queue: str) -> dict[str, Any] | None:
    """The leader's last snapshot; None when no leader published one within its TTL."""
    raw = await redis.get(stats_key(queue))
    if raw is None:
        return None
    snapshot: dict[str, Any] = json.loads(raw)
    return snapshot


async def live_workers(redis: Redis, queue: str) -> int:
    """Workers whose heartbeat is younger than the liveness window."""
    count: int = await redis.zcount(workers_key(queue), timestamp_ms() - WORKER_WINDOW_MS, "+inf")
    return count


class QueueGauges:
    """The two queue gauges of one process; tests hand in gauges on their own registry."""

    def __init__(self, size: Gauge | None = None, oldest: Gauge | None = None) -> None:
        self.size = size if size is not None else metrics.queue_size
        self.oldest = oldest if oldest is not None else metrics.queue_oldest_pending_age_seconds

    def publish(self, snapshot: dict[str, Any]) -> None:
        queue = snapshot["name"]
        for state in STATES:
            self.size.set({"queue": queue, "state": state}, snapshot[state])
        self.oldest.set({"queue": queue}, snapshot["oldestPendingAgeSeconds"])

    def clear(self, queue: str) -> None:
        # Drop the samples rather than zero them: 0 would claim "empty queue", absent says "ask the leader".
        for state in STATES:
            self.size.values.pop({"queue": queue, "state": state}, None)
        self.oldest.values.pop({"queue": queue}, None)


class QueueSampler:
    """One leadership candidate (and, with `heartbeat`, one worker's liveness beacon) per process."""

    def __init__(
        self,
        redis: Redis,
        pool: asyncpg.Pool,
        queue: str,
        *,
        interval: float = 5.0,
        instance_id: str | None = None,
        heartbeat: bool = False,
        gauges: QueueGauges | None = None,
    ) -> None:
        self.redis = redis
        self.pool = pool
        self.queue = queue
        self.interval = interval
        self.instance_id = instance_id or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.heartbeat = heartbeat
        self.gauges = gauges or QueueGauges()
        self.is_leader = False
        self.failures = 0  # consecutive failed sampling rounds; 0 once a round works again
        self._ttl_ms = max(1, int(3 * interval * 1000))
        self._renew = redis.register_script(RENEW_LUA)
        self._release = redis.register_script(RELEASE_LUA)
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def running(self) -> bool:
        return any(not task.done() for task in self._tasks)

    async def sample_once(self) -> dict[str, Any]:
        return await sample_queue(self.redis, self.pool, self.queue)

    async def tick(self) -> bool:
        """One round: take or keep the lock; when leading, sample, set the gauges and publish."""
        self.is_leader = await self._lead()
        if not self.is_leader:
            self.gauges.clear(self.queue)
            return False
        snapshot = await self.sample_once()
        self.gauges.publish(snapshot)
        await self.redis.set(stats_key(self.queue), json.dumps(snapshot), px=self._ttl_ms)
        return True

    async def beat(self) -> None:
        """Record this worker as alive, and forget workers silent for longer than the window."""
        key, now = workers_key(self.queue), timestamp_ms()
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(key, {self.instance_id: now})
            pipe.zremrangebyscore(key, "-inf", now - WORKER_WINDOW_MS)
            pipe.pexpire(key, 2 * WORKER_WINDOW_MS)  # the set itself goes when every worker is gone
            await pipe.execute()

    def start(self) -> None:
        if self._tasks:
            return
        self._tasks.append(asyncio.create_task(self._loop(self._sample_round, self.interval, "queue sampler")))
        if self.heartbeat:
            # Its own loop: sampling may be configured slower than the liveness window allows.
            self._tasks.append(
                asyncio.create_task(
                    self._loop(self._beat_round, HEARTBEAT_INTERVAL, "worker heartbeat", max_backoff=HEARTBEAT_INTERVAL)
                )
            )

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise  # stop() itself is being cancelled: let that through
        self.gauges.clear(self.queue)
        # Hand over at once instead of after the lock's TTL, and leave the live-worker count.
        # Best effort: Redis may be the reason we are stopping.
        try:
            async with asyncio.timeout(RELEASE_TIMEOUT):
                await self._resign()
        except Exception as exc:
            logger.info("queue sampler could not release its lock: %s", type(exc).__name__, extra=self._log)

    async def _sample_round(self) -> None:
        try:
            async with asyncio.timeout(round_timeout(self.interval)):
                await self.tick()
        except Exception:  # TimeoutError included
            self.failures += 1
            # What we last published may no longer be true, and a leader that cannot sample should
            # let a healthier process lead.
            self.gauges.clear(self.queue)
            with contextlib.suppress(Exception):
                async with asyncio.timeout(RELEASE_TIMEOUT):
                    await self._resign(heartbeat=False)
            raise
        self.failures = 0

    async def _beat_round(self) -> None:
        # A beat stuck longer than its period is abandoned and tried again rather than waited for.
        async with asyncio.timeout(HEARTBEAT_INTERVAL):
            await self.beat()

    async def _loop(
        self, step: Callable[[], Awaitable[object]], period: float, what: str, max_backoff: float = MAX_BACKOFF
    ) -> None:
        failures = 0
        while True:
            try:
                await step()
            except Exception as exc:
                failures += 1
                if failures == 1:  # once per streak: an outage must not write a line per round
                    logger.warning(
                        "%s failed (%s: %s); retrying with backoff", what, type(exc).__name__, exc, extra=self._log
                    )
            else:
                if failures:
                    logger.info("%s recovered after %d failed rounds", what, failures, extra=self._log)
                failures = 0
            await asyncio.sleep(backoff(period, failures, max_backoff))

    @property
    def _log(self) -> dict[str, str]:
        return {"queue": self.queue}

    async def _lead(self) -> bool:
        key = lock_key(self.queue)
        if self.is_leader and await self._renew(keys=[key], args=[self.instance_id, self._ttl_ms]):
            return True
        return bool(await self.redis.set(key, self.instance_id, nx=True, px=self._ttl_ms))

    async def _resign(self, *, heartbeat: bool = True) -> None:
        # Compare-and-delete even when we do not think we lead: a round cancelled right after SET NX
        # may hold the lock without having recorded it.
        self.is_leader = False
        await self._release(keys=[lock_key(self.queue)], args=[self.instance_id])
        if heartbeat and self.heartbeat:
            await self.redis.zrem(workers_key(self.queue), self.instance_id)


def round_timeout(period: float) -> float:
    # Bounded, so a Redis or PostgreSQL that stops answering cannot freeze the loop.
    return max(3 * period, 5.0)


def backoff(period: float, failures: int, max_backoff: float = MAX_BACKOFF) -> float:
    """The pause before the next round: the period, doubling per failure up to `max_backoff`."""
    if not failures:
        return period
    return min(period * 2.0 ** min(failures - 1, 16), max(period, max_backoff))
