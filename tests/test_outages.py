"""The API while PostgreSQL or Redis is down: 503 problem+json with Retry-After, readiness flips, and
nothing is lost. Each test takes down a server of its own (tests/servers.py), never a shared one."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import httpx
import pytest
from arq.worker import Worker

from app.cli.embedded import free_port
from app.core import db, keys, migrate, scans
from app.core.queue import connect
from app.core.settings import Settings
from tests.conftest import serve_api
from tests.servers import PrivatePostgres, PrivateRedis, private_postgres, private_redis
from worker.context import Resources
from worker.keyphrases import KeyphraseExtractor
from worker.maintenance import sweep_stranded

SCANS = "/api/v1/scan-jobs"
DOCUMENT = {"title": "Outage", "text": "Compost piles need air, water and a balance of greens and browns. " * 6}
READY_POLLS = 200  # x 0.05 s: the pool reconnects on the first request after a restart


@pytest.fixture
async def own_postgres(settings: Settings) -> AsyncIterator[tuple[PrivatePostgres, Settings]]:
    with private_postgres() as server:
        await migrate.apply(server.dsn, settings.migrations_dir)
        yield server, settings.with_(database_url=server.dsn, queue_name=f"{settings.queue_name}:pg-outage")


@pytest.fixture
async def own_redis(
    tmp_path: Path, settings: Settings, migrated_database: Callable[[], Awaitable[str]]
) -> AsyncIterator[tuple[PrivateRedis, Settings]]:
    dsn = await migrated_database()  # a database of its own too: the sweeper must find only this test's scans
    with private_redis(tmp_path / "redis") as server:
        yield server, settings.with_(redis_url=server.url, database_url=dsn, sweep_interval=1)


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert int(response.headers["retry-after"]) > 0
    assert response.json()["type"] == "urn:pagelens:problem:unavailable"


async def ready_again(client: httpx.AsyncClient) -> httpx.Response:
    response = await client.get("/readyz")
    for _ in range(READY_POLLS):
        if response.status_code == 200:
            break
        await asyncio.sleep(0.05)
        response = await client.get("/readyz")
    return response


async def test_postgres_down_is_503_with_retry_after_and_nothing_is_lost(
    own_postgres: tuple[PrivatePostgres, Settings],
) -> None:
    server, settings = own_postgres
    async with serve_api(settings) as base, httpx.AsyncClient(base_url=base, timeout=30) as client:
        created = await client.post("/api/v1/documents", json=DOCUMENT)
        assert created.status_code == 202
        status_url = created.json()["statusUrl"]

        server.stop()
        # Several requests: the first ones meet the pool's dead connections, later ones a refused connect.
        for _ in range(3):
            assert_unavailable(await client.get(status_url))
            assert_unavailable(await client.post("/api/v1/documents", json=DOCUMENT))
            assert_unavailable(await client.get(SCANS))
        ready = await client.get("/readyz")
        assert ready.status_code == 503 and int(ready.headers["retry-after"]) > 0
        assert ready.json()["checks"]["postgres"].startswith("unavailable") and ready.json()["checks"]["redis"] == "ok"
        assert (await client.get("/healthz")).status_code == 200, "liveness does not depend on PostgreSQL"

        server.start()
        assert (await ready_again(client)).status_code == 200
        status = await client.get(status_url)
        assert status.status_code == 200 and status.json()["status"] == "QUEUED", "the scan survived the restart"
        assert (await client.post("/api/v1/documents", json=DOCUMENT)).status_code == 202


async def test_with_postgres_down_no_key_is_let_through_unchecked(
    own_postgres: tuple[PrivatePostgres, Settings],
) -> None:
    """Keys live in PostgreSQL: while it is down a key that is not cached cannot be checked, and
    the answer is 503 (retry), never a pass and never a misleading 401."""
    server, settings = own_postgres
    conn = await asyncpg.connect(server.dsn)
    try:
        known, unseen = [(await keys.create(conn, name, "acme")).secret for name in ("known", "unseen")]
    finally:
        await conn.close()
    async with serve_api(settings) as base, httpx.AsyncClient(base_url=base, timeout=30) as client:
        assert (await client.get(SCANS, headers={"Authorization": f"Bearer {known}"})).status_code == 200
        server.stop()
        for _ in range(3):
            assert_unavailable(await client.get(SCANS, headers={"Authorization": f"Bearer {known}"}))
            assert_unavailable(await client.get(SCANS, headers={"Authorization": f"Bearer {unseen}"}))
            assert (await client.get(SCANS)).status_code == 401, "no key at all needs no database to refuse"
        server.start()
        assert (await ready_again(client)).status_code == 200
        assert (await client.get(SCANS, headers={"Authorization": f"Bearer {unseen}"})).status_code == 200


async def test_redis_down_still_accepts_scans_and_the_sweeper_enqueues_them(
    own_redis: tuple[PrivateRedis, Settings],
    extractor: KeyphraseExtractor,
    make_worker: Callable[..., Worker],
) -> None:
    server, settings = own_redis
    async with serve_api(settings) as base, httpx.AsyncClient(base_url=base, timeout=30) as client:
        server.stop()
        # The row is committed before the enqueue, so the client gets its scan id regardless.
        created = await client.post("/api/v1/documents", json=DOCUMENT)
        assert created.status_code == 202, created.text
        scan_id = created.json()["scanId"]
        ready = await client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["redis"].startswith("unavailable")
        status = await client.get(created.json()["statusUrl"])
        assert status.status_code == 200 and status.json()["status"] == "QUEUED"
        server.start()
        assert (await ready_again(client)).status_code == 200

    scan_pool = await db.create_pool(settings.require_database_url(), max_size=2)
    redis = await connect(settings.require_redis_url())
    resources = await Resources.open(settings, redis, pool=scan_pool, keyphrases=extractor)
    try:
        await asyncio.sleep(settings.sweep_interval + 0.2)  # past the grace a fresh QUEUED scan gets
        assert await sweep_stranded({"resources": resources}) == 1
        await make_worker(settings, db=scan_pool).main()
        row = await scans.get(scan_pool, uuid.UUID(scan_id), "default")
        assert row is not None and row["status"] == "FULL_READY", row and row["error"]
        assert row["attempts"] == 1
    finally:
        with contextlib.suppress(Exception):
            await resources.close()
        await redis.aclose()
        await scan_pool.close()


async def test_a_process_started_while_postgres_is_down_waits_for_it(
    own_postgres: tuple[PrivatePostgres, Settings],
) -> None:
    """A worker or API (re)started during a PostgreSQL restart waits for the server instead of dying
    at start-up; past its patience it still fails loudly."""
    server, own = own_postgres
    server.stop()
    with pytest.raises(OSError):
        await db.wait_for_pool(own.require_database_url(), patience=0.5)
    waiting = asyncio.ensure_future(db.wait_for_pool(own.require_database_url(), patience=60))
    await asyncio.sleep(1.0)
    assert not waiting.done(), "nothing to connect to yet"
    await asyncio.to_thread(server.start)
    pool = await asyncio.wait_for(waiting, 60)
    try:
        assert await pool.fetchval("SELECT 1") == 1
    finally:
        await pool.close()


async def test_the_api_starts_while_redis_is_down(
    settings: Settings, migrated_database: Callable[[], Awaitable[str]]
) -> None:
    """Started with no Redis to reach, the API comes up anyway: live, not ready, and still accepting
    scans (the row is the record; the sweeper enqueues it once Redis is back)."""
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    own = settings.with_(database_url=await migrated_database(), redis_url=dead_redis)
    async with serve_api(own) as base, httpx.AsyncClient(base_url=base, timeout=30) as client:
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/readyz")).status_code == 503
        accepted = await client.post("/api/v1/documents", json=DOCUMENT)
        assert accepted.status_code == 202, accepted.text
