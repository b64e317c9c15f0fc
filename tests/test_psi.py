from __future__ import annotations

import datetime as dt
import logging
import secrets
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from arq.connections import ArqRedis
from redis.asyncio import Redis

from app.core.settings import Settings
from tests.fakes import PSI_PATH, FakePsi, lighthouse_document, serve_fake_psi
from worker.cache import cache_key
from worker.psi import STRATEGIES, fetch_psi, psi_scores

KEY = "AIzaTEST-" + secrets.token_hex(8)


@pytest.fixture
def fake() -> Iterator[FakePsi]:
    with serve_fake_psi() as server:
        yield server


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False) as c:
        yield c


@pytest.fixture
async def url(redis: ArqRedis) -> AsyncIterator[str]:
    """A page URL no other test uses; its cache entries are deleted afterwards."""
    page = f"https://example.test/{secrets.token_hex(6)}"
    yield page
    await redis.delete(*(cache_key("psi", page, s) for s in STRATEGIES))


def settings_for(fake: FakePsi, **changes: Any) -> Settings:
    defaults: dict[str, Any] = {"psi_api_key": KEY, "psi_base_url": fake.base_url, "external_timeout": 5.0}
    return Settings(**{**defaults, **changes})


async def test_happy_path_maps_the_fields_and_sends_key_and_strategy(
    fake: FakePsi, client: httpx.AsyncClient, redis: ArqRedis, url: str
) -> None:
    result = await fetch_psi(client, redis, settings_for(fake), url, strategy="desktop")
    assert result.outcome == "ok" and not result.cache_hit
    assert result.scores is not None
    scores = result.scores.to_json()
    fetched_at = dt.datetime.fromisoformat(scores.pop("fetchedAt"))
    assert fetched_at.tzinfo is not None
    assert scores == {
        "strategy": "desktop",
        "performanceScore": 87,
        "fcpMs": 1234.5,
        "lcpMs": 2345.6,
        "tbtMs": 150.0,
        "cls": 0.0123,
        "speedIndexMs": 3456.7,
        "ttiMs": 4567.8,
        "fieldData": {
            "overallCategory": "FAST",
            "originFallback": False,
            "metrics": {
                "lcpMs": {"p75": 2100, "category": "FAST"},
                "inpMs": {"p75": 180, "category": "FAST"},
                "cls": {"p75": 0.05, "category": "FAST"},
                "fcpMs": {"p75": 1500, "category": "FAST"},
                "ttfbMs": {"p75": 900, "category": "AVERAGE"},
            },
        },
    }
    [request] = fake.requests
    assert request.method == "GET" and request.path == PSI_PATH
    assert request.query == {"url": url, "strategy": "desktop", "category": "performance"}
    assert request.headers["x-goog-api-key"] == KEY


async def test_second_call_is_a_cache_hit(fake: FakePsi, client: httpx.AsyncClient, redis: ArqRedis, url: str) -> None:
    settings = settings_for(fake)
    first = await fetch_psi(client, redis, settings, url)
    second = await fetch_psi(client, redis, settings, url)
    assert (first.outcome, second.outcome) == ("ok", "cached")
    assert second.cache_hit and second.scores == first.scores
    assert len(fake.requests) == 1
    assert 0 < await redis.ttl(cache_key("psi", url, "mobile")) <= settings.psi_cache_ttl
    # The strategy is part of the key.
    desktop = await fetch_psi(client, redis, settings, url, strategy="desktop")
    assert desktop.outcome == "ok" and len(fake.requests) == 2


async def test_psi_scores_returns_the_dict(fake: FakePsi, client: httpx.AsyncClient, redis: ArqRedis, url: str) -> None:
    scores = await psi_scores(client, redis, settings_for(fake), url)
    assert scores is not None and scores.performance_score == 87 and scores.strategy == "mobile"
    fake.set_reply(status=500)
    assert await psi_scores(client, redis, settings_for(fake), url + "/other") is None


async def test_unset_key_makes_no_request(fake: FakePsi, client: httpx.AsyncClient, redis: ArqRedis, url: str) -> None:
    result = await fetch_psi(client, redis, settings_for(fake, psi_api_key=None), url)
    assert (result.scores, result.outcome) == (None, "skipped")
    assert fake.requests == []


async def test_missing_field_data_is_null(fake: FakePsi, client: httpx.AsyncClient, redis: ArqRedis, url: str) -> None:
    fake.set_reply(body=lighthouse_document(url, "mobile", field_data=False))
    result = await fetch_psi(client, redis, settings_for(fake), url)
    assert result.scores is not None and result.scores.field_data is None


@pytest.mark.parametrize(
    ("status", "body", "detail"),
    [
        (500, None, "HTTP 500 INTERNAL"),
        (429, {"error": {"code": 429, "message": "Quota exceeded", "status": "RESOURCE_EXHAUSTED"}}, None),
        (400, b"bad request", "HTTP 400"),
        (200, b"<html>not json</html>", "response is not JSON"),
        (200, {"kind": "pagespeedonline#result"}, "no performance score in the response"),
        (200, lighthouse_document("u", "mobile", score=None), "no performance score in the response"),
    ],
)
async def test_psi_failure_gives_none_and_is_not_cached(
    fake: FakePsi,
    client: httpx.AsyncClient,
    redis: ArqRedis,
    url: str,
    status: int,
    body: Any,
    detail: str | None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake.set_reply(status=status, body=body)
    with caplog.at_level(logging.WARNING, logger="pagelens.psi"):
        result = await fetch_psi(client, redis, settings_for(fake), url)
    assert (result.scores, result.outcome) == (None, "error")
    assert result.detail == (detail or "HTTP 429 RESOURCE_EXHAUSTED")
    assert any(r.name == "pagelens.psi" and r.levelno == logging.WARNING for r in caplog.records)
    assert await redis.exists(cache_key("psi", url, "mobile")) == 0


async def test_timeout_gives_none(fake: FakePsi, client: httpx.AsyncClient, redis: ArqRedis, url: str) -> None:
    fake.set_reply(delay=30)  # cut short when the fake stops
    result = await fetch_psi(client, redis, settings_for(fake, external_timeout=0.2), url)
    assert (result.scores, result.outcome, result.detail) == (None, "error", "timeout")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_redis_errors_are_a_cache_miss(fake: FakePsi, client: httpx.AsyncClient, url: str) -> None:
    broken = Redis.from_url(f"redis://127.0.0.1:{closed_port()}/0", socket_connect_timeout=1)
    try:
        result = await fetch_psi(client, broken, settings_for(fake), url)
    finally:
        await broken.aclose()
    assert result.outcome == "ok" and result.scores is not None
    assert len(fake.requests) == 1


async def test_unreadable_cache_entry_is_a_miss(
    fake: FakePsi, client: httpx.AsyncClient, redis: ArqRedis, url: str
) -> None:
    await redis.set(cache_key("psi", url, "mobile"), b"{not json", ex=60)
    result = await fetch_psi(client, redis, settings_for(fake), url)
    assert result.outcome == "ok" and len(fake.requests) == 1


async def test_unknown_strategy_is_refused(fake: FakePsi, client: httpx.AsyncClient, redis: ArqRedis) -> None:
    with pytest.raises(ValueError, match="strategy"):
        await fetch_psi(client, redis, settings_for(fake), "https://example.test/", strategy="tablet")
    assert fake.requests == []


async def test_api_key_never_appears_in_logs(
    fake: FakePsi, client: httpx.AsyncClient, redis: ArqRedis, url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, httpx's request log included
    settings = settings_for(fake)
    await fetch_psi(client, redis, settings, url)
    fake.set_reply(status=403, body={"error": {"code": 403, "message": f"key {KEY} is bad", "status": "DENIED"}})
    await fetch_psi(client, redis, settings, url + "/a")
    fake.set_reply(delay=30)
    await fetch_psi(client, redis, settings_for(fake, external_timeout=0.2), url + "/b")
    await fetch_psi(client, redis, settings_for(fake, psi_base_url=f"http://127.0.0.1:{closed_port()}/x"), url + "/c")
    await redis.delete(*(cache_key("psi", url + suffix, "mobile") for suffix in ("/a", "/b", "/c")))

    assert any(r.name == "httpx" for r in caplog.records), "httpx's request log was not captured"
    assert sum(r.name == "pagelens.psi" for r in caplog.records) >= 3
    for record in caplog.records:
        assert KEY not in record.getMessage(), record.name
    assert KEY not in caplog.text  # formatted records, tracebacks included
