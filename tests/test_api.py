from __future__ import annotations

import base64
import gc
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from arq.connections import ArqRedis
from arq.constants import job_key_prefix

from app.core import migrate
from app.core.heap import YOUNG_THRESHOLD
from app.core.queue import deserialize
from app.core.settings import Settings
from tests.conftest import serve_api

SCANS = "/api/v1/scan-jobs"
PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
async def api_settings(settings: Settings, server_dsn: str, empty_database: Any) -> Settings:
    # Its own queue and database: the scans these tests create are never meant to run, and no
    # worker or sweeper of the other tests may pick them up.
    dsn = await empty_database(server_dsn)
    await migrate.apply(dsn, settings.migrations_dir)
    return settings.with_(queue_name=f"{settings.queue_name}:api", database_url=dsn)


@pytest.fixture(scope="module")
async def api_base(api_settings: Settings, redis: ArqRedis) -> AsyncIterator[str]:
    async with serve_api(api_settings) as base:
        yield base
    # Leave nothing behind on a shared Redis.
    job_ids = await redis.zrange(api_settings.queue_name, 0, -1)
    if job_ids:
        await redis.delete(*(job_key_prefix + j.decode() for j in job_ids))
    await redis.delete(api_settings.queue_name)


@pytest.fixture
async def client(api_base: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=api_base, timeout=10) as c:
        yield c


def assert_problem(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, object] = response.json()
    assert body["status"] == status
    assert isinstance(body["type"], str) and isinstance(body["title"], str)
    return body


async def test_create_scan_answers_202_and_enqueues_with_trace_carrier(
    client: httpx.AsyncClient, redis: ArqRedis, api_settings: Settings
) -> None:
    r = await client.post(SCANS, json={"url": "https://example.com/page", "options": {"topN": 5}})
    assert r.status_code == 202
    body = r.json()
    scan_id = body["scanId"]
    assert body == {"scanId": scan_id, "status": "QUEUED", "statusUrl": f"{SCANS}/{scan_id}/status"}
    assert r.headers["location"] == body["statusUrl"]
    raw = await redis.get(job_key_prefix + scan_id)
    assert raw is not None, "the job is enqueued under the scan id"
    job = deserialize(raw)
    assert job["f"] == "run_scan"
    assert job["k"]["scan_id"] == scan_id
    assert isinstance(job["k"]["trace_context"], dict)
    assert await redis.zscore(api_settings.queue_name, scan_id) is not None
    await redis.delete(job_key_prefix + scan_id)
    await redis.zrem(api_settings.queue_name, scan_id)

    status = (await client.get(body["statusUrl"])).json()
    assert status["scanId"] == scan_id
    assert status["url"] == "https://example.com/page"
    assert status["status"] == "QUEUED"
    assert status["progress"] == 0
    assert status["error"] is None
    assert set(status) == {
        "scanId", "url", "status", "stage", "progress", "error", "traceId",
        "attempts", "createdAt", "updatedAt", "timings",
    }  # fmt: skip


async def test_started_api_has_frozen_its_heap_and_collects_young_objects_less_often(
    client: httpx.AsyncClient,
) -> None:
    """The API's start-up (served in this process) ends by freezing what is alive and raising the
    youngest generation's threshold (app/core/heap.py)."""
    assert (await client.get("/healthz")).status_code == 200
    assert gc.get_freeze_count() > 10_000
    assert gc.get_threshold()[0] == YOUNG_THRESHOLD > 700


async def test_idempotency_key_returns_the_same_scan(client: httpx.AsyncClient) -> None:
    key = f"test-{uuid.uuid4()}"
    body = {"url": "https://example.com/idem"}
    first = await client.post(SCANS, json=body, headers={"Idempotency-Key": key})
    second = await client.post(SCANS, json=body, headers={"Idempotency-Key": key})
    assert first.status_code == second.status_code == 202
    assert first.json()["scanId"] == second.json()["scanId"]
    assert second.headers["idempotent-replayed"] == "true"
    third = await client.post(SCANS, json=body, headers={"Idempotency-Key": f"{key}-other"})
    assert third.json()["scanId"] != first.json()["scanId"]
    reused = await client.post(SCANS, json={"url": "https://example.com/else"}, headers={"Idempotency-Key": key})
    assert assert_problem(reused, 422)["type"] == "urn:pagelens:problem:idempotency-key-reused"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "url"),
        ({"url": ""}, "url"),
        ({"url": 42}, "url"),
        ({"url": "ftp://example.com/"}, "url"),
        ({"url": "javascript:alert(1)"}, "url"),
        ({"url": "http://user:pw@example.com/"}, "url"),
        ({"url": "http://exa mple.com/"}, "url"),
        ({"url": "https://example.com/" + "a" * 3000}, "url"),
        ({"url": "http://169.254.169.254/latest/meta-data/"}, "url"),
        ({"url": "http://[fe80::1]:8080/"}, "url"),
        ({"url": "https://example.com:22/"}, "url"),
        ({"url": "https://example.com/", "options": {"topN": 0}}, "options.topN"),
        ({"url": "https://example.com/", "options": {"topN": 31}}, "options.topN"),
        ({"url": "https://example.com/", "options": {"strategy": "tablet"}}, "options.strategy"),
        ({"url": "https://example.com/", "options": {"unknown": 1}}, "options.unknown"),
        ({"url": "https://example.com/", "extra": True}, "extra"),
    ],
)
async def test_invalid_fields_are_422_naming_the_field(
    client: httpx.AsyncClient, body: dict[str, object], field: str
) -> None:
    problem = assert_problem(await client.post(SCANS, json=body), 422)
    errors = problem["errors"]
    assert isinstance(errors, list)
    assert field in [e["field"] for e in errors]


async def test_malformed_and_oversized_bodies(client: httpx.AsyncClient, settings: Settings) -> None:
    headers = {"content-type": "application/json"}
    assert_problem(await client.post(SCANS, content=b'{"url": ', headers=headers), 400)
    assert_problem(await client.post(SCANS, content=b"\xff\xfe", headers=headers), 400)
    assert_problem(await client.post(SCANS, content=b"[1, 2]", headers=headers), 422)
    # Past Python's 4,300-digit int limit json.loads raises a plain ValueError: still malformed JSON.
    huge = b'{"url": "https://example.com/", "options": {"topN": ' + b"9" * 5000 + b"}}"
    assert_problem(await client.post(SCANS, content=huge, headers=headers), 400)
    huge_doc = b'{"text": "hello", "title": ' + b"9" * 5000 + b"}"
    assert_problem(await client.post("/api/v1/documents", content=huge_doc, headers=headers), 400)
    assert_problem(await client.post(SCANS, content=b"url=x", headers={"content-type": "text/plain"}), 415)
    big = b'{"url": "' + b"a" * (settings.max_body_bytes + 10) + b'"}'
    assert_problem(await client.post(SCANS, content=big, headers=headers), 413)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(settings.max_body_bytes // 1024 + 2):
            yield b" " * 1024

    # No Content-Length (chunked): the limit is enforced while reading.
    assert_problem(await client.post(SCANS, content=chunks(), headers=headers), 413)
    bad_key = await client.post(SCANS, json={"url": "https://example.com/"}, headers={"Idempotency-Key": "has space"})
    assert_problem(bad_key, 422)


async def test_documents_validation(client: httpx.AsyncClient, settings: Settings) -> None:
    assert_problem(await client.post("/api/v1/documents", json={"text": "   "}), 422)
    # PostgreSQL's text cannot hold NUL: a 422 naming the field, never a failed INSERT.
    for body in ({"text": "a\x00b"}, {"text": "ok", "title": "\x00"}):
        assert_problem(await client.post("/api/v1/documents", json=body), 422)
    assert_problem(await client.post("/api/v1/documents", json={"text": "x", "title": "t" * 301}), 422)
    too_long = "word " * (settings.max_document_chars // 5 + 1)
    assert_problem(await client.post("/api/v1/documents", json={"text": too_long}), 422)
    ok = await client.post("/api/v1/documents", json={"text": "A short note about compost.", "title": "Note"})
    assert ok.status_code == 202
    status = (await client.get(ok.json()["statusUrl"])).json()
    assert status["url"] is None and status["status"] == "QUEUED"


async def test_unknown_scans_and_not_ready_reports(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get(f"{SCANS}/{uuid.uuid4()}/status"), 404)
    assert_problem(await client.get(f"{SCANS}/not-a-uuid/status"), 404)
    assert_problem(await client.delete(f"{SCANS}/{uuid.uuid4()}"), 404)
    assert_problem(await client.get("/api/v1/nothing-here"), 404)
    assert_problem(await client.put(SCANS), 405)
    created = (await client.post(SCANS, json={"url": "https://example.com/wait"})).json()
    teaser = assert_problem(await client.get(f"{SCANS}/{created['scanId']}/teaser"), 409)
    assert teaser["scanStatus"] == "QUEUED"
    assert_problem(await client.get(f"{SCANS}/{created['scanId']}/full"), 409)


async def test_cancel_is_idempotent(client: httpx.AsyncClient) -> None:
    scan_id = (await client.post(SCANS, json={"url": "https://example.com/cancel"})).json()["scanId"]
    r = await client.delete(f"{SCANS}/{scan_id}")
    assert r.status_code == 202
    assert r.json() == {"scanId": scan_id, "status": "CANCELLED"}
    assert (await client.get(f"{SCANS}/{scan_id}/status")).json()["status"] == "CANCELLED"
    again = await client.delete(f"{SCANS}/{scan_id}")
    assert again.status_code == 202, "cancelling is idempotent"


async def test_list_pages_through_everything_newest_first(client: httpx.AsyncClient) -> None:
    created = [
        (await client.post(SCANS, json={"url": f"https://example.com/list/{i}"})).json()["scanId"] for i in range(5)
    ]
    seen: list[str] = []
    cursor = None
    for _ in range(100):  # bounded: the test database holds far fewer scans
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = (await client.get(SCANS, params=params)).json()
        assert len(page["items"]) <= 2
        seen += [item["scanId"] for item in page["items"]]
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)), "no scan appears on two pages"
    positions = [seen.index(s) for s in created]
    assert positions == sorted(positions, reverse=True), "newest first"
    queued = (await client.get(SCANS, params={"status": "QUEUED", "limit": "100"})).json()["items"]
    assert queued and all(item["status"] == "QUEUED" for item in queued)


FORGED_TIMES = ("9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59", "2026-01-01T00:00:00")


def forged_cursor(created: str, scan_id: str = "00000000-0000-0000-0000-000000000000") -> str:
    return base64.urlsafe_b64encode(f"{created}|{scan_id}".encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "0"},
        {"limit": "101"},
        {"limit": "x"},
        {"limit": "²"},  # str.isdigit() says yes, int() says no: this was a 500
        {"limit": "\u0663"},  # Arabic-Indic three: int() reads it as 3
        {"limit": "+5"},
        {"limit": "9" * 5000},
        {"status": "DONE"},
        {"status": "queued"},  # the names are as the document spells them
        {"status": "FA\u0131LED"},  # a dotless i, which str.upper() turns into I
        {"cursor": "!!"},
        # Well-formed cursors this API never makes: times whose UTC is outside years 1-9999 (they
        # reached the database as a 500), a time without a zone, a scan id that is not a UUID.
        *({"cursor": forged_cursor(created)} for created in FORGED_TIMES),
        {"cursor": forged_cursor("2026-01-01T00:00:00+00:00", "not-a-uuid")},
    ],
)
async def test_list_rejects_bad_query(client: httpx.AsyncClient, params: dict[str, str]) -> None:
    assert_problem(await client.get(SCANS, params=params), 422)


async def test_health_readiness_openapi_metrics(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"postgres": "ok", "redis": "ok"}
    schema = (await client.get("/openapi.json")).json()
    assert schema["openapi"].startswith("3.")
    for path in (SCANS, "/api/v1/documents", f"{SCANS}/{{scanId}}/status", f"{SCANS}/{{scanId}}/teaser",
                 f"{SCANS}/{{scanId}}/full", f"{SCANS}/{{scanId}}", "/healthz", "/readyz", "/metrics"):  # fmt: skip
        assert path in schema["paths"], path
    assert "url" in schema["components"]["schemas"]["CreateScan"]["properties"]
    metrics = await client.get("/metrics")
    assert metrics.status_code == 200
    assert 'pagelens_build_info{version="0.1.0"} 1' in metrics.text
    assert 'route="/api/v1/scan-jobs/{scanId}/status"' in metrics.text


async def test_api_keys_guard_the_api_only(api_settings: Settings) -> None:
    keyed = api_settings.with_(api_keys=("alpha-key", "beta-key"))
    async with serve_api(keyed) as base, httpx.AsyncClient(base_url=base) as c:
        assert_problem(await c.get(SCANS), 401)
        assert_problem(await c.get(SCANS, headers={"Authorization": "Bearer wrong"}), 401)
        assert_problem(await c.get(SCANS, headers={"Authorization": "alpha-key"}), 401)
        assert (await c.get(SCANS, headers={"Authorization": "Bearer beta-key"})).status_code == 200
        assert (await c.get(SCANS, headers={"Authorization": "bearer alpha-key"})).status_code == 200
        assert (await c.get("/healthz")).status_code == 200


async def test_metrics_can_be_turned_off(api_settings: Settings) -> None:
    async with serve_api(api_settings.with_(enable_metrics=False)) as base, httpx.AsyncClient(base_url=base) as c:
        assert_problem(await c.get("/metrics"), 404)
        assert (await c.get("/healthz")).status_code == 200


def test_unknown_methods_share_one_label_and_span_name() -> None:
    """uvicorn's h11 parser passes any method token: each must not become a label value of its own."""
    from app.api.middleware import span_details
    from app.api.server_span import request_attributes
    from observability import metrics

    first, second = metrics.RouteMetrics.of("X00001", "/r"), metrics.RouteMetrics.of("X00002", "/r")
    assert first is second and first.labels == {"method": "_OTHER", "route": "/r"}
    assert metrics.RouteMetrics.of("PATCH", "/r").labels["method"] == "PATCH"
    scope = {"type": "http", "method": "X00001", "path": "/nowhere", "headers": [], "query_string": b""}
    attributes = request_attributes(scope)
    assert attributes["http.request.method"] == "_OTHER"
    assert attributes["http.request.method_original"] == "X00001"
    assert span_details([], scope) == ("HTTP", {})
