"""robots.txt and llms.txt: fetched once per origin through the SSRF checks, bounded, cached in Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from arq.connections import ArqRedis
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from app.core.settings import Settings
from observability import metrics
from tests.fileserver import FilesServer
from tests.httpserver import running
from worker import cache
from worker.audit.robots_txt import crawler_access
from worker.robots import CACHE, ERROR_TTL_SECONDS, ROBOTS_MAX_BYTES, TTL_SECONDS, origin_of, site_files


@pytest.fixture
async def files(redis: ArqRedis) -> AsyncIterator[FilesServer]:
    server = FilesServer()
    with running(server, "files"):
        # A port can come back in a later run: start from an empty cache for this origin.
        await redis.delete(cache.cache_key(CACHE, server.base))
        yield server
        await redis.delete(cache.cache_key(CACHE, server.base))


def counter(labels: dict[str, str]) -> float:
    try:
        value: float = metrics.cache_requests_total.get(labels)  # type: ignore[assignment]
        return value
    except KeyError:
        return 0.0


def calls(service: str, outcome: str) -> int:
    try:
        buckets: dict[str, int] = metrics.external_call_duration_seconds.get(  # type: ignore[assignment]
            {"service": service, "outcome": outcome}
        )
        return buckets["count"]
    except KeyError:
        return 0


def test_origin_of() -> None:
    assert origin_of("https://Example.com/a/b?q#f") == "https://example.com"
    assert origin_of("http://example.com:8080/x") == "http://example.com:8080"
    assert origin_of("https://example.com:443/x") == "https://example.com"
    assert origin_of("ftp://example.com/") is None
    assert origin_of("http://[::1/") is None


async def test_fetched_once_per_origin_then_cached(
    files: FilesServer, redis: ArqRedis, settings: Settings, spans: InMemorySpanExporter
) -> None:
    robots = b"User-agent: GPTBot\nDisallow: /\n\nUser-agent: *\nAllow: /\nSitemap: https://e.com/s.xml\n"
    files.routes["/robots.txt"] = (200, "text/plain", robots)
    files.routes["/llms.txt"] = (200, "text/markdown", b"# Site\n> What it is\n")
    misses, hits = counter({"cache": CACHE, "result": "miss"}), counter({"cache": CACHE, "result": "hit"})
    robots_calls, llms_calls = calls("robots", "success"), calls("llms_txt", "success")
    spans.clear()
    with trace.get_tracer("test").start_as_current_span("scan.analyze") as parent:
        first = await site_files(redis, settings, files.base + "/blog/post-1")
    assert first is not None
    assert first.robots == "found" and first.robots_status == 200 and first.llms_txt is True
    assert first.robots_text == robots.decode()
    second = await site_files(redis, settings, files.base + "/shop/item?id=2")  # same origin, other page
    assert second == first
    assert files.hits == {"/robots.txt": 1, "/llms.txt": 1}
    assert counter({"cache": CACHE, "result": "miss"}) == misses + 1
    assert counter({"cache": CACHE, "result": "hit"}) == hits + 1
    assert calls("robots", "success") == robots_calls + 1
    assert calls("llms_txt", "success") == llms_calls + 1
    ttl = await redis.ttl(cache.cache_key(CACHE, files.base))
    assert ERROR_TTL_SECONDS < ttl <= TTL_SECONDS
    # (Redis commands are CLIENT spans too, one named GET: only HTTP requests have a method.)
    clients = [
        s
        for s in spans.get_finished_spans()
        if s.kind is SpanKind.CLIENT and s.name == "GET" and "http.request.method" in (s.attributes or {})
    ]
    assert sorted(str((s.attributes or {}).get("url.path")) for s in clients) == ["/llms.txt", "/robots.txt"]
    assert all(s.parent is not None and s.parent.span_id == parent.get_span_context().span_id for s in clients)
    assert all((s.attributes or {}).get("http.response.status_code") == 200 for s in clients)
    verdicts = {a.crawler: a.allowed for a in crawler_access(files.base + "/blog/post-1", first)}
    assert verdicts["GPTBot"] is False and verdicts["Googlebot"] is True


async def test_scans_that_miss_together_share_one_fetch(
    files: FilesServer, redis: ArqRedis, settings: Settings
) -> None:
    files.routes["/robots.txt"] = (200, "text/plain", b"User-agent: *\nDisallow: /private\n")
    found = await asyncio.gather(*(site_files(redis, settings, f"{files.base}/page/{n}") for n in range(20)))
    assert all(site == found[0] and site is not None and site.robots == "found" for site in found)
    assert files.hits == {"/robots.txt": 1, "/llms.txt": 1}


async def test_missing_files_and_a_soft_404(files: FilesServer, redis: ArqRedis, settings: Settings) -> None:
    files.routes["/llms.txt"] = (200, "text/html", b"<!doctype html><title>Not found</title>")
    site = await site_files(redis, settings, files.base + "/")
    assert site is not None
    assert site.robots == "missing" and site.robots_status == 404 and site.robots_text == ""
    assert site.llms_txt is False


async def test_unreachable_robots_is_cached_briefly(files: FilesServer, redis: ArqRedis, settings: Settings) -> None:
    files.routes["/robots.txt"] = (503, "text/plain", b"busy")
    files.routes["/llms.txt"] = (500, "text/plain", b"oops")
    site = await site_files(redis, settings, files.base + "/")
    assert site is not None
    assert site.robots == "unreachable" and site.robots_status == 503 and site.llms_txt is None
    assert 0 < await redis.ttl(cache.cache_key(CACHE, files.base)) <= ERROR_TTL_SECONDS


async def test_huge_robots_txt_is_read_up_to_the_cap(files: FilesServer, redis: ArqRedis, settings: Settings) -> None:
    filler = b"# " + b"x" * 1000 + b"\n"
    body = b"User-agent: *\nDisallow: /private\n" + filler * (3 * ROBOTS_MAX_BYTES // len(filler))
    body += b"User-agent: *\nDisallow: /\n"  # past the cap: never read
    files.routes["/robots.txt"] = (200, "text/plain", body)
    site = await site_files(redis, settings, files.base + "/page")
    assert site is not None and site.robots == "found"
    assert len(site.robots_text.encode()) == ROBOTS_MAX_BYTES
    verdicts = {a.crawler: a.allowed for a in crawler_access(files.base + "/page", site)}
    assert all(verdicts.values())
    blocked = {a.crawler: a for a in crawler_access(files.base + "/private/x", site)}
    assert blocked["Googlebot"].allowed is False
    assert blocked["Googlebot"].rule == "User-agent: * … Disallow: /private"


async def test_redirects_are_followed(files: FilesServer, redis: ArqRedis, settings: Settings) -> None:
    files.routes["/robots.txt"] = (301, "text/plain", f"{files.base}/real-robots.txt".encode())
    files.routes["/real-robots.txt"] = (200, "text/plain", b"User-agent: *\nDisallow: /\n")
    site = await site_files(redis, settings, files.base + "/")
    assert site is not None and site.robots == "found" and "Disallow: /" in site.robots_text


async def test_blocked_origin_is_never_requested(files: FilesServer, redis: ArqRedis, settings: Settings) -> None:
    strict = settings.with_(fetch_allow_hosts=frozenset())  # loopback is private: the SSRF rules refuse it
    errors = calls("robots", "error")
    site = await site_files(redis, strict, files.base + "/")
    assert site is not None and site.robots == "unreachable" and site.robots_status is None
    assert site.llms_txt is None
    assert files.hits == {}
    assert calls("robots", "error") == errors + 1
