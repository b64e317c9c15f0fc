"""The whole scan lifecycle: real API, real PostgreSQL and Redis, a real arq worker, a local site."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import asyncpg
import httpx
import pytest
from arq.connections import ArqRedis
from arq.worker import Worker

from app.cli.embedded import free_port
from app.core import queue, scans
from app.core.models import Kind
from app.core.settings import Settings
from tests.fakes import serve_fake_llm, serve_fake_psi
from tests.hostile import Hostile
from tests.site import Site
from worker.maintenance import delete_expired_scans, sweep_stranded
from worker.pipeline import run_scan

SCANS = "/api/v1/scan-jobs"
MakeWorker = Callable[..., Worker]


async def submit(client: httpx.AsyncClient, url: str) -> str:
    r = await client.post(SCANS, json={"url": url})
    assert r.status_code == 202, r.text
    scan_id: str = r.json()["scanId"]
    return scan_id


async def status(client: httpx.AsyncClient, scan_id: str) -> dict[str, Any]:
    body: dict[str, Any] = (await client.get(f"{SCANS}/{scan_id}/status")).json()
    return body


async def drain(make_worker: MakeWorker, worker_settings: Settings | None = None) -> Worker:
    worker = make_worker(worker_settings)
    await worker.main()  # burst: returns once the queue (including deferred retries) is empty
    return worker


async def test_article_goes_from_queued_to_full_report(
    client: httpx.AsyncClient, site: Site, make_worker: MakeWorker
) -> None:
    scan_id = await submit(client, site.url("/pages/article.html"))
    assert (await status(client, scan_id))["status"] == "QUEUED"
    await drain(make_worker)

    done = await status(client, scan_id)
    assert done["status"] == "FULL_READY", done
    assert done["progress"] == 100 and done["stage"] == "GENERATE" and done["error"] is None
    assert done["attempts"] == 1
    for key in ("queueWaitMs", "crawlMs", "parseMs", "analyzeMs", "generateMs", "totalMs"):
        assert done["timings"][key] >= 0, key

    teaser = (await client.get(f"{SCANS}/{scan_id}/teaser")).json()["teaser"]
    assert teaser["title"] and teaser["h1Count"] == 1 and teaser["wordCount"] >= 600
    assert teaser["language"] == "en"

    full = (await client.get(f"{SCANS}/{scan_id}/full")).json()
    late_cancel = await client.delete(f"{SCANS}/{scan_id}")
    assert late_cancel.status_code == 409 and late_cancel.json()["scanStatus"] == "FULL_READY"
    phrases = [k["phrase"] for k in full["keyphrases"]]
    assert 1 <= len(phrases) <= 10
    assert any("compost" in p or "soil" in p for p in phrases[:3]), phrases
    assert all(1 <= len(p.split()) <= 2 for p in phrases)
    perf = full["performance"]
    assert perf["htmlBytes"] > 0 and perf["compression"] == "gzip" and perf["psi"] is None
    assert full["teaser"] == teaser
    assert isinstance(full["insights"], list)


async def test_product_page_insights_and_redirects(
    client: httpx.AsyncClient, site: Site, make_worker: MakeWorker
) -> None:
    product = await submit(client, site.url("/pages/product.html"))
    redirected = await submit(client, site.url("/redirect/3"))
    await drain(make_worker)

    full = (await client.get(f"{SCANS}/{product}/full")).json()
    ids = {i["id"] for i in full["insights"]}
    assert {"description-missing", "h1-multiple"} <= ids, ids
    assert any("espresso" in k["phrase"] or "machine" in k["phrase"] for k in full["keyphrases"])

    report = (await client.get(f"{SCANS}/{redirected}/full")).json()
    assert report["teaser"]["url"].endswith("/pages/article.html")
    assert report["performance"]["redirects"] == 3


async def test_document_scan(client: httpx.AsyncClient, make_worker: MakeWorker) -> None:
    text = (
        "Regular composting turns kitchen scraps and garden waste into rich humus. "
        "A healthy compost pile balances nitrogen-rich greens with carbon-rich browns, stays moist, "
        "and is turned every few weeks so oxygen reaches the microbes that break material down. "
    ) * 8
    r = await client.post("/api/v1/documents", json={"text": text, "title": "Composting basics"})
    scan_id = r.json()["scanId"]
    await drain(make_worker)
    done = await status(client, scan_id)
    assert done["status"] == "FULL_READY", done
    full = (await client.get(f"{SCANS}/{scan_id}/full")).json()
    assert full["teaser"]["title"] == "Composting basics"
    assert full["performance"] is None
    assert any("compost" in k["phrase"] for k in full["keyphrases"])
    assert "crawlMs" not in done["timings"] and "generateMs" in done["timings"]


def _closed_port() -> int:
    return free_port()  # bound and released: nothing listens there


@pytest.mark.parametrize(
    ("target", "error_type"),
    [
        ("/redirect-to?location=ftp://example.com/file", "invalid_url"),
        ("ssrf", "ssrf_blocked"),
        ("http://pagelens-test.invalid/", "dns_error"),
        ("/slow", "timeout"),
        ("/status/404", "http_error"),
        ("/status/503", "http_error"),
        ("/huge.html", "too_large"),
        ("/gzip-bomb", "too_large"),
        ("/file.pdf", "unsupported_content"),
        ("/image.png", "unsupported_content"),
        ("closed", "connect_error"),
    ],
)
async def test_each_failure_is_a_typed_error(
    client: httpx.AsyncClient,
    site: Site,
    make_worker: MakeWorker,
    settings: Settings,
    target: str,
    error_type: str,
) -> None:
    if target == "ssrf":
        # A literal private address is refused by the API already; a redirect reaches the worker.
        private = site.url("/pages/article.html").replace("127.0.0.1", "127.0.0.2")
        url = site.url(f"/redirect-to?location={private}")
    elif target == "closed":
        url = f"http://127.0.0.1:{_closed_port()}/"
    elif target.startswith("/"):
        url = site.url(target)
    else:
        url = target
    scan_id = await submit(client, url)
    # One try: transient errors show their own type instead of retries_exhausted. Only /slow needs
    # a short time budget; the others get a long one so a busy machine cannot turn them into timeouts.
    budget = 1.5 if target == "/slow" else 30.0
    await drain(make_worker, settings.with_(max_tries=1, fetch_total_timeout=budget))
    done = await status(client, scan_id)
    assert done["status"] == "FAILED", done
    assert done["error"]["type"] == error_type, done["error"]
    assert done["error"]["message"]
    assert done["stage"] == "CRAWL"
    problem = await client.get(f"{SCANS}/{scan_id}/full")
    assert problem.status_code == 409 and problem.json()["error"]["type"] == error_type


async def test_transient_errors_retry_then_exhaust(
    client: httpx.AsyncClient, site: Site, make_worker: MakeWorker, settings: Settings
) -> None:
    scan_id = await submit(client, site.url("/status/503"))
    worker = await drain(make_worker, settings.with_(max_tries=3))
    done = await status(client, scan_id)
    assert done["status"] == "FAILED"
    assert done["error"]["type"] == "retries_exhausted" and done["error"]["retryable"] is True
    assert "http_error" in done["error"]["message"]
    assert done["error"]["cause"] == {"type": "http_error", "message": "HTTP 503 from the page", "retryable": True}
    assert done["attempts"] == 3
    assert worker.jobs_retried == 2
    hits = [path for path, _ in site.requests if path == "/status/503"]
    assert len(hits) >= 3


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/not-http", "the page sent a malformed HTTP response"),
        ("/header-flood", "the page sent a malformed HTTP response"),
        ("/no-such-page", "HTTP 404 from the page"),
        ("/corrupt-gzip", "the page's compressed body is corrupt"),
        ("/json", "the page is application/json, not HTML"),
    ],
)
async def test_what_cannot_succeed_is_fetched_once(
    client: httpx.AsyncClient, hostile: Hostile, make_worker: MakeWorker, settings: Settings, path: str, message: str
) -> None:
    target = f"{path}?scan={uuid.uuid4()}"  # the server counts requests per target
    scan_id = await submit(client, hostile.url(target))
    worker = await drain(make_worker, settings.with_(max_tries=3))
    done = await status(client, scan_id)
    assert done["status"] == "FAILED", done
    assert done["error"]["message"] == message and done["error"]["retryable"] is False, done["error"]
    assert done["attempts"] == 1 and worker.jobs_retried == 0
    assert hostile.hits(target) == 1


async def test_retry_replays_a_dead_scan(
    client: httpx.AsyncClient, site: Site, make_worker: MakeWorker, settings: Settings
) -> None:
    scan_id = await submit(client, site.url("/status/503"))
    await drain(make_worker, settings.with_(max_tries=2))
    dead = await status(client, scan_id)
    assert dead["status"] == "FAILED" and dead["error"]["type"] == "retries_exhausted" and dead["attempts"] == 2

    replay = await client.post(f"{SCANS}/{scan_id}/retry")
    assert replay.status_code == 202 and replay.json()["status"] == "QUEUED"
    queued = await status(client, scan_id)
    assert queued["status"] == "QUEUED" and queued["error"] is None and queued["progress"] == 0
    # The replay gets a whole new retry budget (arq's own try counter included).
    worker = await drain(make_worker, settings.with_(max_tries=2))
    assert worker.jobs_retried == 1
    again = await status(client, scan_id)
    assert again["status"] == "FAILED" and again["attempts"] == 4

    ok = await submit(client, site.url("/pages/article.html"))
    await drain(make_worker)
    conflict = await client.post(f"{SCANS}/{ok}/retry")
    assert conflict.status_code == 409 and conflict.json()["scanStatus"] == "FULL_READY"
    assert (await client.post(f"{SCANS}/{uuid.uuid4()}/retry")).status_code == 404


async def test_corrupt_row_fails_with_internal_error(
    pool: asyncpg.Pool, redis: ArqRedis, settings: Settings, make_worker: MakeWorker
) -> None:
    # A row written by hand with options the API would never accept: the worker must not crash.
    row, _ = await scans.create(pool, scans.NewScan(Kind.DOCUMENT, document="text " * 50, options={"topN": "many"}))
    await queue.enqueue_scan(redis, settings.queue_name, str(row["id"]))
    await drain(make_worker)
    done = await scans.get(pool, row["id"], "default")
    assert done is not None
    assert done["status"] == "FAILED" and done["error"]["type"] == "internal"


async def test_duplicate_delivery_does_nothing(
    client: httpx.AsyncClient, pool: asyncpg.Pool, site: Site, make_worker: MakeWorker, worker_ctx: dict[str, Any]
) -> None:
    scan_id = await submit(client, site.url("/pages/article.html"))
    await drain(make_worker)
    before = await scans.get(pool, uuid.UUID(scan_id), "default")
    assert before is not None and before["status"] == "FULL_READY"
    # arq delivers at least once: the same job arriving again must change nothing.
    assert await run_scan({**worker_ctx, "job_try": 1, "score": 0}, scan_id) == "skipped"
    after = await scans.get(pool, uuid.UUID(scan_id), "default")
    assert after is not None
    assert (after["attempts"], after["updated_at"], after["report"]) == (
        before["attempts"],
        before["updated_at"],
        before["report"],
    )


async def test_cancelled_scan_is_not_run(client: httpx.AsyncClient, site: Site, make_worker: MakeWorker) -> None:
    scan_id = await submit(client, site.url("/pages/article.html"))
    assert (await client.delete(f"{SCANS}/{scan_id}")).status_code == 202
    await drain(make_worker)
    done = await status(client, scan_id)
    assert done["status"] == "CANCELLED" and done["attempts"] == 0


async def test_sweeper_enqueues_stranded_scans(
    pool: asyncpg.Pool, site: Site, make_worker: MakeWorker, worker_ctx: dict[str, Any]
) -> None:
    # As if the API committed the row and then could not reach Redis.
    row, _ = await scans.create(pool, scans.NewScan(Kind.URL, url=site.url("/pages/article.html")))
    await pool.execute("UPDATE scans SET updated_at = now() - interval '5 minutes' WHERE id = $1", row["id"])
    assert await sweep_stranded(worker_ctx) >= 1
    assert await sweep_stranded(worker_ctx) == 0, "a queued job is not enqueued twice"
    await drain(make_worker)
    done = await scans.get(pool, row["id"], "default")
    assert done is not None and done["status"] == "FULL_READY"


async def test_retention_deletes_only_old_finished_scans(pool: asyncpg.Pool, worker_ctx: dict[str, Any]) -> None:
    old_done, _ = await scans.create(pool, scans.NewScan(Kind.DOCUMENT, document="old"))
    old_queued, _ = await scans.create(pool, scans.NewScan(Kind.DOCUMENT, document="old but queued"))
    recent, _ = await scans.create(pool, scans.NewScan(Kind.DOCUMENT, document="recent"))
    await pool.execute(
        "UPDATE scans SET created_at = now() - interval '400 days', status = 'FULL_READY' WHERE id = $1",
        old_done["id"],
    )
    await pool.execute("UPDATE scans SET created_at = now() - interval '400 days' WHERE id = $1", old_queued["id"])
    await pool.execute("UPDATE scans SET status = 'FULL_READY' WHERE id = $1", recent["id"])
    assert await delete_expired_scans(worker_ctx) >= 1
    assert await scans.get(pool, old_done["id"], "default") is None
    assert await scans.get(pool, old_queued["id"], "default") is not None
    assert await scans.get(pool, recent["id"], "default") is not None
    await pool.execute("DELETE FROM scans WHERE id = $1", old_queued["id"])


async def test_psi_and_llm_join_the_report_when_configured(
    client: httpx.AsyncClient, site: Site, make_worker: MakeWorker, settings: Settings
) -> None:
    with serve_fake_psi() as psi, serve_fake_llm() as llm:
        configured = settings.with_(
            psi_api_key="psi-test-key", psi_base_url=psi.base_url, llm_base_url=llm.base_url, llm_api_key="llm-key"
        )
        r = await client.post(SCANS, json={"url": site.url("/pages/article.html"), "options": {"strategy": "desktop"}})
        scan_id = r.json()["scanId"]
        await drain(make_worker, configured)
        full = (await client.get(f"{SCANS}/{scan_id}/full")).json()
        assert full["status"] == "FULL_READY"
        scores = full["performance"]["psi"]
        assert scores["strategy"] == "desktop" and 0 <= scores["performanceScore"] <= 100
        assert [req.query.get("strategy") for req in psi.requests] == ["desktop"]
        assert psi.requests[0].query.get("url") == site.url("/pages/article.html")
        llm_items = [i for i in full["insights"] if i["source"] == "llm"]
        assert [i["message"] for i in llm_items] == ["Add a summary near the top."]
        assert len(llm.requests) == 1 and "compost" in llm.requests[0].body.decode().lower()

        # Options can turn both off for one scan.
        r = await client.post(
            SCANS, json={"url": site.url("/pages/product.html"), "options": {"psi": False, "llm": False}}
        )
        await drain(make_worker, configured)
        quiet = (await client.get(f"{SCANS}/{r.json()['scanId']}/full")).json()
        assert quiet["performance"]["psi"] is None
        assert all(i["source"] == "rules" for i in quiet["insights"])
        assert len(psi.requests) == 1 and len(llm.requests) == 1
