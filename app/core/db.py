"""PostgreSQL connection pool with JSON codecs."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from observability import metrics

P = ParamSpec("P")
R = TypeVar("R")


def timed(query: str) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """Observe a repository function as `pagelens_db_query_duration_seconds{query=...}`.

    Labels are these fixed names, never SQL text, so the label set stays small."""

    def decorate(function: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        @functools.wraps(function)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            start = time.perf_counter()
            try:
                return await function(*args, **kwargs)
            finally:
                metrics.db_query_duration_seconds.observe({"query": query}, time.perf_counter() - start)

        return wrapper

    return decorate


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


async def _init(conn: asyncpg.Connection) -> None:
    for name in ("json", "jsonb"):
        await conn.set_type_codec(name, encoder=_dumps, decoder=json.loads, schema="pg_catalog")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Release a connection to the pool as it is. asyncpg's default reset is a round trip per
    release (advisory unlock, CLOSE ALL, UNLISTEN *, RESET ALL) for session state pagelens never
    creates on a pooled connection: no SET, no session advisory locks, no LISTEN, no cursors (those
    use connections of their own). asyncpg still rolls back an open transaction before this."""


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, init=_init, reset=_keep_session, command_timeout=30
    )
    assert pool is not None
    return pool


logger = logging.getLogger("pagelens.db")
# What a server that is restarting, or not up yet, answers: refused or missing socket, or "starting up".
_NOT_YET = (OSError, asyncpg.CannotConnectNowError, asyncpg.PostgresConnectionError)


async def wait_for_pool(dsn: str, *, patience: float = 60.0, **sizes: int) -> asyncpg.Pool:
    """`create_pool`, retried with backoff for up to `patience` seconds while the server cannot be
    reached: a process (re)started while PostgreSQL restarts waits for it instead of dying."""
    deadline = time.monotonic() + patience
    delay = 0.25
    while True:
        try:
            return await create_pool(dsn, **sizes)
        except _NOT_YET as exc:
            if time.monotonic() + delay > deadline:
                raise
            logger.warning("PostgreSQL is not reachable (%s); retrying in %.1f s", type(exc).__name__, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


def with_database(dsn: str, database: str) -> str:
    """The same server DSN pointing at another database (works for TCP and unix-socket DSNs)."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{database}"))
