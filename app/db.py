"""PostgreSQL connection pool with JSON codecs."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


async def _init(conn: asyncpg.Connection) -> None:
    for name in ("json", "jsonb"):
        await conn.set_type_codec(name, encoder=_dumps, decoder=json.loads, schema="pg_catalog")


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, init=_init, command_timeout=30)
    assert pool is not None
    return pool


def with_database(dsn: str, database: str) -> str:
    """The same server DSN pointing at another database (works for TCP and unix-socket DSNs)."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{database}"))
