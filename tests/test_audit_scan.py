"""The audit inside real scans: API, arq worker, PostgreSQL, Redis and a loopback site."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from arq.connections import ArqRedis
from arq.worker import Worker
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from app.core.settings import Settings
from observability import metrics
from tests.fileserver import FilesServer
from tests.httpserver import running
from worker import cache
from worker.robots import CACHE

SCANS = "/api/v1/scan-jobs"
PAGES = Path(__file__).resolve().parent / "pages" / "audit"
AI_BLOCKED = b"User-agent: GPTBot\nUser-agent: PerplexityBot\nDisallow: /\n\nUser-agent: *\nDisallow: /cart\n"


def cache_count(result: str) -> float:
    try:
        value: float = metrics.cache_requests_total.get({"cache": CACHE, "result": result})  # type: ignore[assignment]
    except KeyError:
        return 0.0
    return value


async def scan(client: httpx.AsyncClient, make_worker: Callable[..., Worker], url: str) -> str:
    r = await client.post(SCANS, json={"url": url, "options": {"llm": False, "psi": False}})
    assert r.status_code == 202, r.text
    await make_worker().main()
    scan_id: str = r.json()["scanId"]
    return scan_id


async def test_url_scans_carry_the_audit_and_share_robots_per_origin(
    client: httpx.AsyncClient,
    make_worker: Callable[..., Worker],
    redis: ArqRedis,
    spans: InMemorySpanExporter,
) -> None:
    server = FilesServer()
    server.routes["/robots.txt"] = (200, "text/plain", AI_BLOCKED)
    server.routes["/blog/compost"] = (200, "text/html; charset=utf-8", (PAGES / "blog.html").read_bytes())
    server.routes["/docs/retries"] = (200, "text/html; charset=utf-8", (PAGES / "docs.html").read_bytes())
    misses, hits = cache_count("miss"), cache_count("hit")
    spans.clear()
    with running(server, "audited-site"):
        await redis.delete(cache.cache_key(CACHE, server.base))
        first = await scan(client, make_worker, server.base + "/blog/compost")
        second = await scan(client, make_worker, server.base + "/docs/retries")
        await redis.delete(cache.cache_key(CACHE, server.base))
    assert server.hits == {"/robots.txt": 1, "/llms.txt": 1, "/blog/compost": 1, "/docs/retries": 1}
    assert (cache_count("miss"), cache_count("hit")) == (misses + 1, hits + 1)

    full: dict[str, Any] = (await client.get(f"{SCANS}/{first}/full")).json()
    audit = full["audit"]
    assert [c["category"] for c in audit["categories"]] == [
        "indexability",
        "structured_data",
        "sharing",
        "content",
        "performance",
    ]
    assert 0 <= audit["score"] <= 100
    audits = {a["id"]: a for a in audit["audits"]}
    assert audits["robots-ai-search"]["result"] == "warning"
    assert "PerplexityBot: blocked by User-agent: GPTBot … Disallow: /" in audits["robots-ai-search"]["evidence"]
    assert audits["robots-search-crawlers"]["result"] == "pass"
    assert audits["llms-txt"]["result"] == "warning"
    assert audits["schema-article"]["result"] == "pass"
    assert audits["canonical"]["result"] == "warning"  # the page names its production host
    assert audits["compression"]["result"] in ("pass", "fail")  # a folded rule, judged on the lab facts
    assert {"BlogPosting", "BreadcrumbList", "Organization"} == set(audit["facts"]["structuredDataTypes"])
    assert audit["facts"]["robotsTxt"] == "found" and audit["facts"]["llmsTxt"] is False
    # The main content, without navigation and bylines, is what the word count reads.
    assert 300 < full["teaser"]["wordCount"] < 500 and audit["facts"]["mainContentWords"] == full["teaser"]["wordCount"]
    order = {"fail": 0, "warning": 1, "pass": 2, "not_applicable": 3}
    ranks = [order[a["result"]] for a in audit["audits"]]
    assert ranks == sorted(ranks)

    status = (await client.get(f"{SCANS}/{first}/status")).json()
    stages = sum(status["timings"][f"{stage}Ms"] for stage in ("crawl", "parse", "analyze", "generate"))
    assert stages <= status["timings"]["totalMs"]

    docs = (await client.get(f"{SCANS}/{second}/full")).json()["audit"]
    assert {a["id"]: a["result"] for a in docs["audits"]}["hreflang"] == "pass"

    # robots.txt and llms.txt were fetched once, under the first scan's ANALYZE stage.
    finished = spans.get_finished_spans()
    analyze = {s.context.span_id for s in finished if s.name == "scan.analyze"}
    files = [s for s in finished if s.kind is SpanKind.CLIENT and (s.attributes or {}).get("url.path")]
    assert sorted(str((s.attributes or {})["url.path"]) for s in files) == ["/llms.txt", "/robots.txt"]
    assert all(s.parent is not None and s.parent.span_id in analyze for s in files)


async def test_documents_have_no_audit(client: httpx.AsyncClient, make_worker: Callable[..., Worker]) -> None:
    r = await client.post("/api/v1/documents", json={"text": "Composting turns scraps into soil. " * 20})
    await make_worker().main()
    full = (await client.get(f"{SCANS}/{r.json()['scanId']}/full")).json()
    assert full["audit"] is None and full["keyphrases"]


async def test_with_the_audit_off_a_url_scan_skips_it(
    client: httpx.AsyncClient, make_worker: Callable[..., Worker], redis: ArqRedis, settings: Settings
) -> None:
    server = FilesServer()
    server.routes["/robots.txt"] = (200, "text/plain", AI_BLOCKED)
    server.routes["/blog/compost"] = (200, "text/html; charset=utf-8", (PAGES / "blog.html").read_bytes())
    with running(server, "unaudited-site"):
        await redis.delete(cache.cache_key(CACHE, server.base))
        r = await client.post(SCANS, json={"url": server.base + "/blog/compost", "options": {"llm": False}})
        await make_worker(settings.with_(audit=False)).main()
        off = (await client.get(f"{SCANS}/{r.json()['scanId']}/full")).json()
        assert server.hits == {"/blog/compost": 1}  # neither robots.txt nor llms.txt asked for
        assert await redis.exists(cache.cache_key(CACHE, server.base)) == 0
        on = (await client.get(f"{SCANS}/{await scan(client, make_worker, server.base + '/blog/compost')}/full")).json()
        await redis.delete(cache.cache_key(CACHE, server.base))
    assert off["status"] == on["status"] == "FULL_READY"
    assert off["audit"] is None and off["keyphrases"] and off["teaser"]["wordCount"] > 0
    assert on["audit"] is not None and on["audit"]["facts"]["robotsTxt"] == "found"
    assert server.hits == {"/blog/compost": 2, "/robots.txt": 1, "/llms.txt": 1}
