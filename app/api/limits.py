"""Per-API-key limits: a request rate kept in Redis, and a cap on open scans kept in PostgreSQL.

Both apply only when the API runs with keys (PAGELENS_API_KEYS): without keys nothing identifies
a client well enough to limit it.
"""

from __future__ import annotations

import asyncio
import logging
import math

from redis.asyncio import Redis

from app.api.problems import Problem
from app.core.backing import UNAVAILABLE
from app.core.models import OPEN
from app.core.types import Executor

logger = logging.getLogger("pagelens.api")

RATE_KEY_PREFIX = "pagelens:rate:"
RATE_TIMEOUT = 0.5  # a slow Redis must not stall every request
OPEN_SCANS_RETRY_AFTER = 10  # seconds: a hint only, scans finish at their own pace

# GCRA (a leaky bucket kept as one timestamp): KEYS[1] holds the key's "theoretical arrival time"
# in ms. A request is let through when that time is at most `burst - 1` intervals ahead of now; the
# reply is -1 then, else the milliseconds until the next request would be let through. Redis's own
# clock is used, so several API processes agree.
GCRA_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local tolerance = interval * (tonumber(ARGV[2]) - 1)
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
if tat - now > tolerance then
  return math.ceil(tat - tolerance - now)
end
local next_tat = tat + interval
redis.call('SET', KEYS[1], tostring(next_tat), 'PX', math.ceil(next_tat - now) + 1000)
return -1
"""


async def rate_limit_wait(redis: Redis, key_id: str, per_minute: int) -> float | None:
    """Seconds the key must wait before its next request, or None when this one may pass.

    Fails open: when Redis cannot answer quickly the request passes (and is logged), because scans
    are still accepted while Redis is down (the sweeper enqueues them) and the cap on open scans,
    kept in PostgreSQL, still bounds what one key can start."""
    interval_ms = 60_000 / per_minute
    try:
        async with asyncio.timeout(RATE_TIMEOUT):
            # By its SHA1 (EVALSHA), not its text: this runs on every request with a key.
            script = redis.register_script(GCRA_LUA)
            wait_ms = await script(keys=[RATE_KEY_PREFIX + key_id], args=[str(interval_ms), str(per_minute)])
    except UNAVAILABLE as exc:
        logger.warning("rate limit not checked, Redis unavailable: %s", type(exc).__name__)
        return None
    return None if int(wait_ms) < 0 else int(wait_ms) / 1000


def rate_limited(seconds: float, per_minute: int) -> Problem:
    return Problem(
        429,
        f"rate limit of {per_minute} requests per minute for this API key exceeded",
        code="rate-limited",
        headers={"Retry-After": str(max(1, math.ceil(seconds)))},
    )


def open_scans_capped(key_id: str | None, cap: int) -> bool:
    """Whether a request's open scans are counted: only for a known key, with a cap configured."""
    return key_id is not None and cap > 0


async def reserve_open_scan(db: Executor, key_id: str | None, cap: int, idempotency_key: str | None = None) -> None:
    """Raise 429 when the key already has `cap` open scans. Call inside the transaction that then
    opens the scan: the advisory lock makes concurrent creates of one key count one at a time."""
    if key_id is None or not open_scans_capped(key_id, cap):
        return
    if idempotency_key is not None and await db.fetchval(
        "SELECT 1 FROM scans WHERE idempotency_key = $1", idempotency_key
    ):
        return  # a replay returns the scan it already opened; it opens nothing
    await db.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", "open-scans:" + key_id)
    open_scans = await db.fetchval(
        "SELECT count(*) FROM scans WHERE api_key_id = $1 AND status = ANY($2::text[])", key_id, OPEN
    )
    if open_scans >= cap:
        raise Problem(
            429,
            f"this API key has {open_scans} scans open, the most allowed at once is {cap}; "
            "wait for some to finish or cancel them",
            code="too-many-open-scans",
            headers={"Retry-After": str(OPEN_SCANS_RETRY_AFTER)},
        )
