"""Two tenants on one real API: every scan route scoped to the caller's tenant, another tenant's
scans answered exactly like unknown ones, lists, Idempotency-Key, retry and cancel per tenant, admin
reads with ?tenant=, admin-only routes, and live events delivered within a tenant only.

The API runs in the test's event loop on a database and queue of this module's own (no worker reads
them); scans are moved to the states a route needs by SQL, as the worker would write them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest
from arq.connections import ArqRedis
from arq.constants import job_key_prefix

from app.api.main import create_app
from app.api.scan_events import ScanEvents
from app.core import keys
from app.core.settings import Settings
from tests import waiting

SCANS = "/api/v1/scan-jobs"
PROBLEM = "application/problem+json"
until = functools.partial(waiting.until, poll=0.05, polls=200)


@dataclass
class Tenants:
    client: httpx.AsyncClient
    dsn: str
    hub: ScanEvents
    admin: str  # an admin of tenant "ops"
    alpha: str  # members of tenant "alpha"
    alpha_too: str
    beta: str  # a member of tenant "beta"

    def auth(self, key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    async def document(self, key: str, text: str = "Compost feeds the soil.", **headers: str) -> str:
        response = await self.client.post(
            "/api/v1/documents", json={"text": text}, headers={**self.auth(key), **headers}
        )
        assert response.status_code == 202, response.text
        return str(response.json()["scanId"])

    async def sql(self, query: str, *args: Any) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.dsn)
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()


@pytest.fixture(scope="module")
async def tenants(
    settings: Settings, migrated_database: Callable[[], Awaitable[str]], redis: ArqRedis
) -> AsyncIterator[Tenants]:
    from tests.conftest import serve_api

    dsn = await migrated_database()
    conn = await asyncpg.connect(dsn)
    try:
        made = [
            await keys.create(conn, "operator", "ops", keys.Role.ADMIN),
            await keys.create(conn, "alpha app", "alpha"),
            await keys.create(conn, "alpha colleague", "alpha"),
            await keys.create(conn, "beta app", "beta"),
        ]
    finally:
        await conn.close()
    own = settings.with_(database_url=dsn, queue_name=f"{settings.queue_name}:tenancy", rate_limit=0, sse_max_streams=4)
    app = create_app(own, configure_logging=False)
    async with serve_api(own, app) as base, httpx.AsyncClient(base_url=base, timeout=15) as client:
        hub: ScanEvents = app.state.pagelens.events
        await until(hub.connected.is_set, "the listener to connect")
        yield Tenants(client, dsn, hub, *(new.secret for new in made))
    job_ids = await redis.zrange(own.queue_name, 0, -1)
    if job_ids:
        await redis.delete(*(job_key_prefix + j.decode() for j in job_ids))
    await redis.delete(own.queue_name)


def without_instance(response: httpx.Response) -> dict[str, Any]:
    assert response.headers["content-type"].startswith(PROBLEM), response.text
    body: dict[str, Any] = response.json()
    assert body.pop("instance") == response.request.url.path
    return body


async def test_every_scan_route_answers_another_tenants_scan_as_unknown(tenants: Tenants) -> None:
    t = tenants
    running, failed, done = [await t.document(t.alpha) for _ in range(3)]
    await t.sql("UPDATE scans SET status = 'RUNNING' WHERE id = $1", uuid.UUID(running))
    await t.sql("UPDATE scans SET status = 'FAILED' WHERE id = $1", uuid.UUID(failed))
    await t.sql(
        """UPDATE scans SET status = 'FULL_READY', progress = 100, teaser = '{"wordCount": 4}',
                  report = '{"keyphrases": [], "insights": []}' WHERE id = $1""",
        uuid.UUID(done),
    )
    unknown = str(uuid.uuid4())
    routes = [
        ("GET", "{}/status", done),
        ("GET", "{}/teaser", done),
        ("GET", "{}/full", done),
        ("GET", "{}/events", done),
        ("DELETE", "{}", running),
        ("POST", "{}/retry", failed),
    ]
    for method, template, scan_id in routes:
        theirs = await t.client.request(method, f"{SCANS}/{template.format(scan_id)}", headers=t.auth(t.beta))
        nobodys = await t.client.request(method, f"{SCANS}/{template.format(unknown)}", headers=t.auth(t.beta))
        assert theirs.status_code == nobodys.status_code == 404, (method, template, theirs.text)
        assert without_instance(theirs) == without_instance(nobodys), (method, template)
        assert theirs.headers.keys() == nobodys.headers.keys()

    # Nothing changed: the owner's scans are as they were, and the owner can do all of it.
    rows = {str(r["id"]): r["status"] for r in await t.sql("SELECT id, status FROM scans")}
    assert (rows[running], rows[failed], rows[done]) == ("RUNNING", "FAILED", "FULL_READY")
    for method, template, scan_id in routes:
        if template.endswith("events"):
            continue  # the owner's stream is shown below
        mine = await t.client.request(method, f"{SCANS}/{template.format(scan_id)}", headers=t.auth(t.alpha_too))
        assert mine.status_code in (200, 202), (method, template, mine.text)
    async with t.client.stream("GET", f"{SCANS}/{done}/events", headers=t.auth(t.alpha)) as stream:
        assert stream.status_code == 200
        body = await stream.aread()
    assert b'"status":"FULL_READY"' in body


async def test_lists_show_only_the_callers_tenant_and_admins_name_one(tenants: Tenants) -> None:
    t = tenants
    alphas = {await t.document(t.alpha), await t.document(t.alpha_too)}
    beta = await t.document(t.beta)

    async def listed(key: str, **params: str) -> set[str]:
        response = await t.client.get(SCANS, params={"limit": "100", **params}, headers=t.auth(key))
        assert response.status_code == 200, response.text
        return {item["scanId"] for item in response.json()["items"]}

    alpha_sees, beta_sees = await listed(t.alpha), await listed(t.beta)
    assert alphas <= alpha_sees and beta not in alpha_sees
    assert beta in beta_sees and not alphas & beta_sees
    owners = await t.sql("SELECT DISTINCT tenant FROM scans WHERE id = ANY($1::uuid[])", list(alpha_sees))
    assert [r["tenant"] for r in owners] == ["alpha"]
    assert await listed(t.alpha, tenant="alpha") == alpha_sees, "naming one's own tenant is fine"

    assert await listed(t.admin) == set(), "an admin sees its own tenant unless it names another"
    assert await listed(t.admin, tenant="alpha") == alpha_sees
    assert await listed(t.admin, tenant="beta") == beta_sees
    status = await t.client.get(f"{SCANS}/{beta}/status", params={"tenant": "beta"}, headers=t.auth(t.admin))
    assert status.status_code == 200 and status.json()["scanId"] == beta

    for path in (SCANS, f"{SCANS}/{beta}/status"):
        refused = await t.client.get(path, params={"tenant": "beta"}, headers=t.auth(t.alpha))
        assert refused.status_code == 403 and refused.json()["type"] == "urn:pagelens:problem:forbidden"
    bad = await t.client.get(SCANS, params={"tenant": "Not A Tenant!"}, headers=t.auth(t.admin))
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "tenant"


async def test_an_idempotency_key_is_unique_per_tenant(tenants: Tenants) -> None:
    t = tenants
    key = {"Idempotency-Key": f"order-{uuid.uuid4()}"}
    alphas = await t.document(t.alpha, "Same body.", **key)
    betas = await t.document(t.beta, "Same body.", **key)
    assert alphas != betas, "another tenant's Idempotency-Key never returns its scan"
    assert await t.document(t.alpha_too, "Same body.", **key) == alphas, "one tenant, one key, one scan"
    assert await t.document(t.beta, "Same body.", **key) == betas
    rows = await t.sql("SELECT tenant FROM scans WHERE idempotency_key = $1 ORDER BY tenant", key["Idempotency-Key"])
    assert [r["tenant"] for r in rows] == ["alpha", "beta"]


async def test_retry_and_cancel_keep_the_owner_and_stay_in_the_tenant(tenants: Tenants) -> None:
    t = tenants
    failed, running = await t.document(t.alpha), await t.document(t.alpha)
    await t.sql("UPDATE scans SET status = 'FAILED' WHERE id = $1", uuid.UUID(failed))
    (before,) = await t.sql("SELECT tenant, api_key_id FROM scans WHERE id = $1", uuid.UUID(failed))

    assert (await t.client.post(f"{SCANS}/{failed}/retry", headers=t.auth(t.beta))).status_code == 404
    assert (await t.client.delete(f"{SCANS}/{running}", headers=t.auth(t.beta))).status_code == 404
    retried = await t.client.post(f"{SCANS}/{failed}/retry", headers=t.auth(t.alpha_too))
    assert retried.status_code == 202, retried.text
    (after,) = await t.sql("SELECT tenant, api_key_id, status FROM scans WHERE id = $1", uuid.UUID(failed))
    assert (after["tenant"], after["api_key_id"], after["status"]) == (before["tenant"], before["api_key_id"], "QUEUED")

    # An admin acts on another tenant's scan only by naming the tenant; the scan stays the tenant's.
    assert (await t.client.delete(f"{SCANS}/{running}", headers=t.auth(t.admin))).status_code == 404
    cancelled = await t.client.delete(f"{SCANS}/{running}", params={"tenant": "alpha"}, headers=t.auth(t.admin))
    assert cancelled.status_code == 202, cancelled.text
    (row,) = await t.sql("SELECT tenant, status FROM scans WHERE id = $1", uuid.UUID(running))
    assert (row["tenant"], row["status"]) == ("alpha", "CANCELLED")


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/api/v1/queues"), ("GET", "/api/v1/keys"), ("POST", "/api/v1/keys"), ("DELETE", "/api/v1/keys/{id}")],
)
async def test_admin_only_routes_are_refused_to_members(tenants: Tenants, method: str, path: str) -> None:
    t = tenants
    (key,) = await t.sql("SELECT id FROM api_keys WHERE name = 'beta app'")
    url = path.format(id=key["id"])
    body = {"name": "sneaky", "tenant": "beta", "role": "admin"} if method == "POST" else None
    refused = await t.client.request(method, url, json=body, headers=t.auth(t.alpha))
    assert refused.status_code == 403, refused.text
    assert refused.json()["type"] == "urn:pagelens:problem:forbidden"
    assert [r["revoked_at"] for r in await t.sql("SELECT revoked_at FROM api_keys WHERE id = $1", key["id"])] == [None]
    assert not await t.sql("SELECT 1 FROM api_keys WHERE name = 'sneaky'")
    if method == "GET":
        assert (await t.client.get(url, headers=t.auth(t.admin))).status_code == 200, "an admin is served"


async def test_events_reach_only_streams_of_the_scans_tenant(tenants: Tenants) -> None:
    t = tenants
    scan_id = uuid.UUID(await t.document(t.alpha))
    own = t.hub.subscribe(scan_id, "alpha")
    other = t.hub.subscribe(scan_id, "beta")  # what a stream for the same id in another tenant would be
    try:
        await t.sql("UPDATE scans SET status = 'RUNNING', progress = 7 WHERE id = $1", scan_id)
        await until(lambda: own.latest is not None and own.latest["progress"] == 7, "the owner's watcher")
        await asyncio.sleep(0.2)  # the same batch was fanned out: nothing more is coming for `other`
        assert other.latest is None and not other.changed.is_set()
    finally:
        t.hub.unsubscribe(own)
        t.hub.unsubscribe(other)


async def test_one_tenant_at_its_stream_share_does_not_starve_another(tenants: Tenants) -> None:
    """sse_max_streams=4 and the default share of 0.5: two streams per tenant."""
    t = tenants
    alphas = [await t.document(t.alpha) for _ in range(3)]
    beta = await t.document(t.beta)
    async with contextlib.AsyncExitStack() as open_streams:
        for scan_id, key in ((alphas[0], t.alpha), (alphas[1], t.alpha_too)):
            response = await open_streams.enter_async_context(
                t.client.stream("GET", f"{SCANS}/{scan_id}/events", headers=t.auth(key))
            )
            assert response.status_code == 200
        assert t.hub.tenant_streams("alpha") == 2
        for key in (t.alpha, t.alpha_too):
            capped = await t.client.get(f"{SCANS}/{alphas[2]}/events", headers=t.auth(key))
            assert capped.status_code == 429 and capped.headers["content-type"].startswith(PROBLEM)
            assert capped.json()["type"] == "urn:pagelens:problem:too-many-streams"
            assert "tenant" in capped.json()["detail"] and int(capped.headers["retry-after"]) > 0
        served = await open_streams.enter_async_context(
            t.client.stream("GET", f"{SCANS}/{beta}/events", headers=t.auth(t.beta))
        )
        assert served.status_code == 200, "another tenant is still served"
    await until(lambda: t.hub.tenant_streams("alpha") == 0, "the streams to close")
    again = await t.client.get(f"{SCANS}/{alphas[2]}/status", headers=t.auth(t.alpha))
    assert again.status_code == 200
