"""Periodic jobs: retention, and the sweeper that re-enqueues scans arq no longer knows about."""

from __future__ import annotations

import logging
from typing import Any

from arq.constants import job_key_prefix

from app.core import queue, scans
from worker.context import Resources

logger = logging.getLogger("pagelens.worker")

SWEEP_LOCK = 0x7377_6565_70  # any constant shared by all workers
RETENTION_LOCK = 0x7265_7465_6E


async def delete_expired_scans(ctx: dict[str, Any]) -> int:
    res: Resources = ctx["resources"]
    async with res.pool.acquire() as conn, conn.transaction():
        if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", RETENTION_LOCK):
            return 0
        deleted = await scans.delete_older_than(conn, res.settings.retention_days)
    if deleted:
        logger.info("deleted %d scans older than %d days", deleted, res.settings.retention_days)
    return deleted


async def sweep_stranded(ctx: dict[str, Any]) -> int:
    """Re-enqueue scans that should be running but have no arq job: the API could not reach Redis
    when it created them, or arq gave up on a job whose worker kept dying. One sweeper at a time."""
    res: Resources = ctx["resources"]
    requeued = 0
    async with res.pool.acquire() as conn, conn.transaction():
        if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", SWEEP_LOCK):
            return 0
        rows = await conn.fetch(
            """SELECT id, attempts - retry_base AS attempts FROM scans
               WHERE (status = 'QUEUED' AND updated_at < now() - make_interval(secs => $1))
                  OR (status IN ('RUNNING', 'TEASER_READY') AND lease_until < now())
                  -- released by an attempt that was cancelled or timed out, and not picked up since
                  OR (status IN ('RUNNING', 'TEASER_READY') AND lease_until IS NULL
                      AND updated_at < now() - make_interval(secs => $1))
               ORDER BY created_at LIMIT 500""",
            # A QUEUED scan younger than one sweep may still be on its way into the queue.
            float(res.settings.sweep_interval),
        )
        for row in rows:
            scan_id = str(row["id"])
            if await res.redis.exists(job_key_prefix + scan_id):
                continue  # queued, deferred for a retry, or running: arq still owns it
            if row["attempts"] >= res.settings.max_tries:
                await scans.give_up(conn, row["id"], res.settings.max_tries)
                continue
            if await queue.requeue_scan(res.redis, res.settings.queue_name, scan_id) is not None:
                requeued += 1
    if requeued:
        logger.warning("re-enqueued %d stranded scans", requeued)
    return requeued
