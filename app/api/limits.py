"""Fair shares: a request rate per API key kept in Redis, and a cap on open scans per tenant kept
in PostgreSQL.

Both apply only when the API runs with keys: without keys nothing identifies a client well enough to
limit it. When Redis cannot answer, the rate is kept in this process's memory instead (the same
rule, per API process: with N processes a key may get up to N times its rate), never let through
unchecked; /readyz still reports Redis as down.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time

from redis.asyncio import Redis

from app.api.problems import Problem
from app.core.backing import UNAVAILABLE
from app.core.models import OPEN
from app.core.types import Executor

logger = logging.getLogger("pagelens.api")

RATE_KEY_PREFIX = "pagelens:rate:"
RATE_TIMEOUT = 0.5  # a slow Redis must not stall every request
# After Redis failed to answer, the in-process limit is used alone for this long before Redis is
# asked again: an outage must not cost every request RATE_TIMEOUT.
REDIS_RECHECK_SECONDS = 2.0
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


class RateLimit:
    """A token bucket per client: `per_minute` requests a minute, bursts of as many.

    In process memory and per API process: for browser span exports per client address (a browser
    sends a batch every few seconds, so this only has to stop a runaway or hostile client), and for
    API keys while Redis is unreachable. At most `max_clients` buckets are kept; full ones go first.
    """

    def __init__(self, per_minute: int, max_clients: int = 10_000) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.max_clients = max_clients
        self.buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, at)

    def wait(self, client: str, now: float | None = None) -> float:
        """0 when the request may go ahead (and it is counted), else the seconds until it may."""
        now = time.monotonic() if now is None else now
        tokens, at = self.buckets.get(client, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - at) * self.rate)
        if tokens < 1:
            self.buckets[client] = (tokens, now)
            return (1 - tokens) / self.rate
        if client not in self.buckets and len(self.buckets) >= self.max_clients:
            self._prune(now)
        self.buckets[client] = (tokens - 1, now)
        return 0.0

    def _prune(self, now: float) -> None:
        refilled = [c for c, (t, at) in self.buckets.items() if t + (now - at) * self.rate >= self.capacity]
        for client in refilled or list(self.buckets)[: len(self.buckets) // 2]:
            del self.buckets[client]


class RateLimiter:
    """GCRA per key in Redis (shared by every API process), with an in-process token bucket of the
    same rate for when Redis is unreachable."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self.local = RateLimit(per_minute)
        self._redis_down_until = 0.0

    async def wait(self, redis: Redis, key_id: str) -> float | None:
        """Seconds the key must wait before its next request, or None when this one may pass."""
        if time.monotonic() >= self._redis_down_until:
            try:
                return await _redis_wait(redis, key_id, self.per_minute)
            except UNAVAILABLE as exc:
                logger.warning("rate limit kept in process, Redis unavailable: %s", type(exc).__name__)
                self._redis_down_until = time.monotonic() + REDIS_RECHECK_SECONDS
        return self.local.wait(key_id) or None

    def limited(self, seconds: float) -> Problem:
        return Problem(
            429,
            f"rate limit of {self.per_minute} requests per minute for this API key exceeded",
            code="rate-limited",
            headers={"Retry-After": str(max(1, math.ceil(seconds)))},
        )


async def _redis_wait(redis: Redis, key_id: str, per_minute: int) -> float | None:
    interval_ms = 60_000 / per_minute
    async with asyncio.timeout(RATE_TIMEOUT):
        # By its SHA1 (EVALSHA), not its text: this runs on every request with a key.
        script = redis.register_script(GCRA_LUA)
        wait_ms = await script(keys=[RATE_KEY_PREFIX + key_id], args=[str(interval_ms), str(per_minute)])
    return None if int(wait_ms) < 0 else int(wait_ms) / 1000


def open_scans_capped(key_id: str | None, cap: int) -> bool:
    """Whether a request's open scans are counted: only for a request with a key, with a cap set."""
    return key_id is not None and cap > 0


async def reserve_open_scan(db: Executor, tenant: str, cap: int, idempotency_key: str | None = None) -> None:
    """Raise 429 when the tenant already has `cap` open scans. Call inside the transaction that then
    opens the scan: the advisory lock makes concurrent creates of one tenant count one at a time."""
    if idempotency_key is not None and await db.fetchval(
        "SELECT 1 FROM scans WHERE tenant = $1 AND idempotency_key = $2", tenant, idempotency_key
    ):
        return  # a replay returns the scan it already opened; it opens nothing
    await db.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", "open-scans:" + tenant)
    open_scans = await db.fetchval(
        "SELECT count(*) FROM scans WHERE tenant = $1 AND status = ANY($2::text[])", tenant, OPEN
    )
    if open_scans >= cap:
        raise Problem(
            429,
            f"this tenant has {open_scans} scans open, the most allowed at once is {cap}; "
            "wait for some to finish or cancel them",
            code="too-many-open-scans",
            headers={"Retry-After": str(OPEN_SCANS_RETRY_AFTER)},
        )
