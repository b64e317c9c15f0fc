"""JSON values cached in Redis under a namespaced, hashed key."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from redis.asyncio import Redis

PREFIX = "pagelens:cache"


def cache_key(cache: str, *parts: str) -> str:
    digest = hashlib.sha256("\x00".join(parts).encode()).hexdigest()
    return f"{PREFIX}:{cache}:{digest}"


async def get_json(redis: Redis, cache: str, *parts: str) -> Any | None:
    raw = await redis.get(cache_key(cache, *parts))
    return None if raw is None else json.loads(raw)


async def set_json(redis: Redis, cache: str, value: Any, ttl: int, *parts: str) -> None:
    await redis.set(cache_key(cache, *parts), json.dumps(value, separators=(",", ":")), ex=ttl)
