"""The Redis cache in front of the keyphrase pool: a text's keyphrases are computed once a TTL.

The key hashes the tenant, the model, every parameter that changes the result, and the prepared
text. The tenant is in it so that no tenant can learn from a scan's timing (a cache hit takes a
millisecond) that another tenant scanned the same text. Redis trouble only costs the cache: the
keyphrases are extracted anyway.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.core.keys import DEFAULT_TENANT
from worker import cache
from worker.keyphrases.model import DIVERSITY, MAX_WORDS, MODEL_ID, NGRAM_RANGE, Phrases, prepare
from worker.keyphrases.pool import KeyphraseExtractor, short

logger = logging.getLogger("pagelens.keyphrases")

CACHE_NAME = "keyphrases"
CACHE_TIMEOUT = 2.0  # a hung Redis must not stall a scan: fall back to extracting


def cache_parts(text: str, top_n: int, tenant: str) -> tuple[str, ...]:
    """What the cache key hashes: the tenant, the model, every parameter that changes the result,
    and the text."""
    params = {"ngram": NGRAM_RANGE, "stop": "english", "mmr": True, "div": DIVERSITY, "top_n": top_n, "max": MAX_WORDS}
    return tenant, MODEL_ID, json.dumps(params, sort_keys=True), text


def keyphrase_cache_key(text: str, top_n: int = 10, tenant: str = DEFAULT_TENANT) -> str | None:
    prepared = prepare(text)
    return None if prepared is None else cache.cache_key(CACHE_NAME, *cache_parts(prepared, top_n, tenant))


def _decode(value: Any) -> Phrases | None:
    if not isinstance(value, list):
        return None
    phrases: Phrases = []
    for item in value:
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)):
            return None
        if not isinstance(item[1], int | float):
            return None
        phrases.append((item[0], float(item[1])))
    return phrases


async def cached_keyphrases(
    redis: Redis, extractor: KeyphraseExtractor, text: str, *, tenant: str, top_n: int = 10, ttl: int
) -> tuple[Phrases, bool]:
    """(phrases, cache_hit): the keyphrases `tenant` cached for the text, else extracted and cached."""
    prepared = prepare(text)
    if prepared is None:
        return [], False
    parts = cache_parts(prepared, top_n, tenant)
    try:
        async with asyncio.timeout(CACHE_TIMEOUT):
            cached = _decode(await cache.get_json(redis, CACHE_NAME, *parts))
        if cached is not None:
            return cached, True
    except (RedisError, OSError, ValueError) as exc:  # OSError covers TimeoutError too
        logger.warning("keyphrase cache read failed, extracting instead: %s", short(exc))
    phrases = await extractor.extract(prepared, top_n=top_n, share=tenant)
    try:
        async with asyncio.timeout(CACHE_TIMEOUT):
            await cache.set_json(redis, CACHE_NAME, [list(p) for p in phrases], ttl, *parts)
    except (RedisError, OSError) as exc:
        logger.warning("keyphrase cache write failed: %s", short(exc))
    return phrases, False
