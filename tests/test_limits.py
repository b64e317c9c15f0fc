"""Per-key rate limit (with Redis up and down), per-tenant cap on open scans, request header limits,
and where /metrics is served."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import httpx
import pytest

from app.cli.embedded import free_port
from app.core import keys
from app.core.settings import Settings
from tests.conftest import serve_api
from tests.servers import private_redis

SCANS = "/api/v1/scan-jobs"
PROBLEM = "application/problem+json"


def new_key() -> str:
    # Fresh keys per test: rate-limit state lives in the shared Redis under the key's id.
    return f"key-{secrets.token_urlsafe(12)}"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, object] = response.json()
    assert body["type"] == f"urn:pagelens:problem:{code}" and body["status"] == status
    return body


@pytest.fixture
async def own_settings(settings: Settings, migrated_database: Callable[[], Awaitable[str]]) -> Settings:
    # Scans created here are never meant to run: a queue and a database no worker or sweeper reads.
    return settings.with_(database_url=await migrated_database(), queue_name=f"{settings.queue_name}:limits")


@pytest.fixture
async def client_for(own_settings: Settings) -> AsyncIterator[Callable[..., Awaitable[httpx.AsyncClient]]]:
    """Start the API with some settings changed and hand out a client for it."""
    async with contextlib.AsyncExitStack() as stack:

        async def make(**changes: object) -> httpx.AsyncClient:
            base = await stack.enter_async_context(serve_api(own_settings.with_(**changes)))
            return await stack.enter_async_context(httpx.AsyncClient(base_url=base, timeout=30))

        yield make


async def test_each_key_has_its_own_rate_limit(client_for: Callable[..., Awaitable[httpx.AsyncClient]]) -> None:
    alpha, beta = new_key(), new_key()
    client = await client_for(api_keys=(alpha, beta), rate_limit=5)
    for _ in range(5):  # the burst: a minute's allowance at once
        assert (await client.get(SCANS, headers=bearer(alpha))).status_code == 200
    limited = await client.get(SCANS, headers=bearer(alpha))
    assert_problem(limited, 429, "rate-limited")
    assert 1 <= int(limited.headers["retry-after"]) <= 12, "one request every 12 s at 5 per minute"
    assert (await client.get(SCANS, headers=bearer(beta))).status_code == 200, "another key is not affected"
    assert_problem(await client.get(SCANS, headers=bearer("not-a-key")), 401, "unauthorized")
    assert (await client.get("/healthz")).status_code == 200, "only /api/* is keyed and limited"


async def stored_key(dsn: str, tenant: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        return (await keys.create(conn, f"{tenant} key", tenant)).secret
    finally:
        await conn.close()


async def test_open_scans_are_capped_per_tenant(
    client_for: Callable[..., Awaitable[httpx.AsyncClient]], own_settings: Settings
) -> None:
    dsn = own_settings.require_database_url()
    alpha, alpha_too, beta = (
        await stored_key(dsn, "alpha"),
        await stored_key(dsn, "alpha"),
        await stored_key(dsn, "beta"),
    )
    client = await client_for(max_open_scans=2, rate_limit=0)
    doc = {"text": "Mulch keeps soil moist and cool in summer."}
    first = await client.post("/api/v1/documents", json=doc, headers={**bearer(alpha), "Idempotency-Key": "one"})
    second = await client.post("/api/v1/documents", json=doc, headers=bearer(alpha_too))
    assert first.status_code == second.status_code == 202
    over = await client.post("/api/v1/documents", json=doc, headers=bearer(alpha))
    assert_problem(over, 429, "too-many-open-scans")
    assert int(over.headers["retry-after"]) > 0
    (
        assert_problem(
            await client.post("/api/v1/documents", json=doc, headers=bearer(alpha_too)), 429, "too-many-open-scans"
        ),
        "the cap is the tenant's, not one key's",
    )
    replay = await client.post("/api/v1/documents", json=doc, headers={**bearer(alpha), "Idempotency-Key": "one"})
    assert replay.status_code == 202 and replay.json()["scanId"] == first.json()["scanId"], "a replay opens nothing"
    assert (await client.post("/api/v1/documents", json=doc, headers=bearer(beta))).status_code == 202

    # A finished (here: cancelled) scan no longer counts.
    assert (await client.delete(f"{SCANS}/{first.json()['scanId']}", headers=bearer(alpha))).status_code == 202
    assert (await client.post("/api/v1/documents", json=doc, headers=bearer(alpha))).status_code == 202

    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT api_key_id, tenant FROM scans")
    finally:
        await conn.close()
    assert {r["tenant"] for r in rows} == {"alpha", "beta"}
    ids = {r["api_key_id"] for r in rows}
    assert len(ids) == 3 and all(uuid.UUID(i) for i in ids), ids
    assert not ids & {alpha, alpha_too, beta}, "the key itself is never stored"


async def test_with_redis_down_the_limit_is_kept_in_process(own_settings: Settings, tmp_path: Path) -> None:
    """A private Redis, stopped mid-test (never the shared one): requests are still limited, by
    this API process alone, and /readyz reports the outage."""
    alpha, beta = new_key(), new_key()
    with private_redis(tmp_path / "redis") as redis_server:
        limited = own_settings.with_(redis_url=redis_server.url, api_keys=(alpha, beta), rate_limit=5)
        async with serve_api(limited) as base, httpx.AsyncClient(base_url=base, timeout=30) as client:
            assert (await client.get(SCANS, headers=bearer(alpha))).status_code == 200
            redis_server.stop()
            codes = [(await client.get(SCANS, headers=bearer(alpha))).status_code for _ in range(7)]
            assert codes == [200] * 5 + [429] * 2, codes
            refused = await client.get(SCANS, headers=bearer(alpha))
            assert_problem(refused, 429, "rate-limited")
            assert 1 <= int(refused.headers["retry-after"]) <= 12
            assert (await client.get(SCANS, headers=bearer(beta))).status_code == 200, "another key is not affected"
            ready = await client.get("/readyz")
            assert ready.status_code == 503 and ready.json()["checks"]["redis"].startswith("unavailable")


async def test_concurrent_creates_respect_the_cap(client_for: Callable[..., Awaitable[httpx.AsyncClient]]) -> None:
    key = new_key()
    client = await client_for(api_keys=(key,), max_open_scans=3, rate_limit=0)
    doc = {"text": "Rain barrels catch roof water for dry weeks."}
    answers = await asyncio.gather(
        *(client.post("/api/v1/documents", json=doc, headers=bearer(key)) for _ in range(12))
    )
    codes = sorted(r.status_code for r in answers)
    assert codes == [202] * 3 + [429] * 9, codes


async def test_retrying_a_failed_scan_counts_against_the_cap(
    client_for: Callable[..., Awaitable[httpx.AsyncClient]], own_settings: Settings
) -> None:
    key = new_key()
    client = await client_for(api_keys=(key,), max_open_scans=1, rate_limit=0)
    doc = {"text": "Clover fixes nitrogen in lawns."}
    failed = (await client.post("/api/v1/documents", json=doc, headers=bearer(key))).json()["scanId"]
    conn = await asyncpg.connect(own_settings.require_database_url())
    try:
        await conn.execute("UPDATE scans SET status = 'FAILED' WHERE id = $1", uuid.UUID(failed))
    finally:
        await conn.close()
    assert (await client.post("/api/v1/documents", json=doc, headers=bearer(key))).status_code == 202
    assert_problem(await client.post(f"{SCANS}/{failed}/retry", headers=bearer(key)), 429, "too-many-open-scans")


@pytest.mark.parametrize(
    "headers",
    [
        [("X-Big", "a" * 20_000)],
        [(f"X-Many-{i}", "v") for i in range(150)],
        [("Cookie", "c" * 4000)] * 5,
    ],
    ids=["one huge header", "too many headers", "large in total"],
)
async def test_oversized_headers_are_431(client: httpx.AsyncClient, headers: list[tuple[str, str]]) -> None:
    response = await client.get(SCANS, headers=headers)
    assert_problem(response, 431, "headers-too-large")
    assert (await client.get(SCANS, headers=[("X-Fine", "a" * 8000)])).status_code == 200


async def test_metrics_behind_a_token(client_for: Callable[..., Awaitable[httpx.AsyncClient]]) -> None:
    client = await client_for(metrics_token="scrape-secret")
    assert_problem(await client.get("/metrics"), 401, "unauthorized")
    assert_problem(await client.get("/metrics", headers=bearer("wrong")), 401, "unauthorized")
    ok = await client.get("/metrics", headers=bearer("scrape-secret"))
    assert ok.status_code == 200 and "pagelens_build_info" in ok.text


async def test_metrics_on_their_own_port(client_for: Callable[..., Awaitable[httpx.AsyncClient]]) -> None:
    port = free_port()
    client = await client_for(api_metrics_port=port)
    assert_problem(await client.get("/metrics"), 404, "not-found")
    async with httpx.AsyncClient(timeout=10) as private:
        scraped = await private.get(f"http://127.0.0.1:{port}/metrics")
    assert scraped.status_code == 200 and "pagelens_http_requests_total" in scraped.text
