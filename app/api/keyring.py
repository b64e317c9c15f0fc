"""Who a bearer token is: bootstrap keys from the settings, stored keys from the database through a
short per-process cache.

Stored keys are cached for PAGELENS_KEY_CACHE_SECONDS; every change to api_keys also sends a NOTIFY
(migrations/0005_api_keys.sql) on which each API process drops its cache at once (the listener in
app/api/scan_events.py), so a revoked key stops working everywhere within a few seconds even when a
notification is lost.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
import uuid
from dataclasses import dataclass

from app.core import keys
from app.core.backing import UNAVAILABLE
from app.core.keys import DEFAULT_TENANT, Role
from app.core.types import Pool

logger = logging.getLogger("pagelens.api")

MAX_CACHED = 10_000  # bearer tokens remembered (valid or not); a flood of made-up ones cannot grow it


@dataclass(frozen=True)
class Identity:
    key_id: str | None  # None: the API runs without keys
    tenant: str
    role: Role
    stored: bool = False  # a row of api_keys (not a bootstrap key)

    @property
    def admin(self) -> bool:
        return self.role is Role.ADMIN


# Every request of an API without keys: one tenant, and nothing to keep from anyone.
OPEN = Identity(None, DEFAULT_TENANT, Role.ADMIN)


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def key_id(secret_digest: bytes) -> str:
    """What identifies a bootstrap key in Redis, in the scans table and in logs: 16 hex digits of
    its SHA-256. Not the key, and no use for finding it. (Stored keys are named by their row id.)"""
    return secret_digest.hex()[:16]


class KeyRing:
    def __init__(self, pool: Pool, bootstrap: tuple[str, ...], ttl: float) -> None:
        self.pool = pool
        # Only digests are kept, and compared in constant time.
        self.bootstrap = [digest(k) for k in bootstrap]
        self.ttl = ttl
        self._cache: dict[bytes, tuple[float, Identity | None]] = {}
        self._stored_exist = False
        self._stored_checked: float | None = None
        self._touched: dict[str, float] = {}

    def invalidate(self) -> None:
        """Forget everything cached: a key was created, revoked or changed (or may have been)."""
        self._cache.clear()
        self._stored_checked = None

    async def enabled(self) -> bool:
        """Whether requests need a key. Once a key exists it stays so (rows are never deleted)."""
        if self.bootstrap or self._stored_exist:
            return True
        now = time.monotonic()
        if self._stored_checked is None or now - self._stored_checked >= self.ttl:
            self._stored_exist = await keys.any_exist(self.pool)
            self._stored_checked = now
        return self._stored_exist

    async def identify(self, token: str) -> Identity | None:
        presented = digest(token)
        found: bytes | None = None
        for candidate in self.bootstrap:  # no early exit: the time does not depend on which key matched
            if hmac.compare_digest(presented, candidate):
                found = candidate
        if found is not None:
            return Identity(key_id(found), DEFAULT_TENANT, Role.ADMIN)
        if not keys.looks_like_key(token):
            return None
        now = time.monotonic()
        cached = self._cache.get(presented)
        if cached is not None and cached[0] > now:
            return cached[1]
        row = await keys.lookup(self.pool, presented)
        identity = Identity(str(row["id"]), row["tenant"], Role(row["role"]), stored=True) if row is not None else None
        if len(self._cache) >= MAX_CACHED:
            self._cache.clear()
        self._cache[presented] = (now + self.ttl, identity)
        return identity

    async def touch(self, identity: Identity) -> None:
        """Record a stored key's use, at most once a minute per key and process (the UPDATE itself
        skips a row another process touched within the minute)."""
        if not identity.stored or identity.key_id is None:
            return
        now = time.monotonic()
        last = self._touched.get(identity.key_id)
        if last is not None and now - last < keys.TOUCH_INTERVAL_SECONDS:
            return
        if len(self._touched) >= MAX_CACHED:
            self._touched.clear()
        self._touched[identity.key_id] = now
        try:
            await keys.touch(self.pool, uuid.UUID(identity.key_id))
        except UNAVAILABLE as exc:  # bookkeeping only: the request goes on
            logger.warning("could not record a key's use: %s", type(exc).__name__)
