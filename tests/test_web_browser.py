"""The web page in real headless Chromium, against the real API and worker in subprocesses.

A person's path through the page: submit a local page, watch the progress (every status the page
shows is recorded as it appears), read the teaser and the full report, see the scan in the recent
list with its trace link; then the error states. The browser exports its spans to the API's
/v1/traces, which forwards them to the same OTLP receiver as the API and the worker: the browser's
`user.create_scan_request` span and the worker's spans must be one trace.

Chromium is the Debian package (`make test` installs it as root); Playwright drives it through
`executable_path` and never downloads a browser. Missing: skipped, unless CI=true.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from playwright.async_api import ConsoleMessage, Page, async_playwright
from playwright.async_api import TimeoutError as PlaywrightTimeout

from app.core import keys
from app.core.settings import ROOT, Settings
from tests import binaries
from tests.conftest import serve_api
from tests.live import Live, live_stack
from tests.otlp import Span
from tests.site import PAGES_DIR, Site

pytestmark = pytest.mark.slow

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TRACE_TEMPLATE = "http://grafana.test/explore?trace={trace_id}"
SCAN_TIMEOUT_MS = 120_000  # the first scan pays for the first KeyBERT call on a busy box
SPAN_TIMEOUT = 30.0
PAGE_DELAY_MS = 3000
SCREENSHOT = ROOT / "docs" / "screenshot.png"

# Recorded in the page from its first script on: every status the scan view shows, in order.
RECORD_STATUSES = """
window.__statuses = [];
new MutationObserver(() => {
  const pill = document.querySelector("#scan .scan-head [data-status]");
  const seen = window.__statuses;
  if (pill && seen[seen.length - 1] !== pill.dataset.status) seen.push(pill.dataset.status);
}).observe(document, { subtree: true, childList: true, attributes: true });
"""


def chromium() -> str:
    return binaries.require("chromium")


@pytest.fixture(scope="module")
async def live(
    tmp_path_factory: pytest.TempPathFactory, migrated_database: Any, redis_url: str, site: Site
) -> AsyncIterator[Live]:
    chromium()
    logs = tmp_path_factory.mktemp("web-logs")
    async with live_stack(
        logs, migrated_database, redis_url, site, PAGELENS_TRACE_URL_TEMPLATE=TRACE_TEMPLATE
    ) as stack:
        yield stack


@dataclass
class Tab:
    page: Page
    errors: list[str] = field(default_factory=list)  # uncaught exceptions and console errors

    def record(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(message.text)


@pytest.fixture
async def tab(live: Live) -> AsyncIterator[Tab]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS, headless=True)
        try:
            context = await browser.new_context(viewport={"width": 1360, "height": 1000}, color_scheme="light")
            tab = Tab(await context.new_page())
            tab.page.set_default_timeout(15_000)
            tab.page.on("pageerror", lambda error: tab.errors.append(str(error)))
            tab.page.on("console", tab.record)
            await tab.page.add_init_script(RECORD_STATUSES)
            await tab.page.goto(f"{live.api_url}/")
            yield tab
        finally:
            await browser.close()


async def status_of(live: Live, scan_id: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=live.api_url, timeout=10) as client:
        response = await client.get(f"/api/v1/scan-jobs/{scan_id}/status")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def wait_for(tab: Tab, selector: str, tmp_path: Path, timeout: float = 15_000) -> None:
    """Wait for `selector`; on a timeout, fail with what the page showed (and a screenshot)."""
    try:
        await tab.page.wait_for_selector(selector, timeout=timeout)
    except PlaywrightTimeout:
        shot = tmp_path / "timeout.png"
        await tab.page.screenshot(path=str(shot), full_page=True)
        text = await tab.page.locator("main").inner_text()
        pytest.fail(f"{selector} did not appear; screenshot {shot}; errors {tab.errors}; page:\n{text[:3000]}")


def shown_scan_id(url: str) -> str:
    return url.rsplit("/", 1)[-1]


async def test_a_scan_from_the_page_is_live_complete_and_one_trace(
    live: Live, tab: Tab, site: Site, tmp_path: Path
) -> None:
    page = tab.page
    # The page is served after a delay: a warm worker could otherwise finish the scan before the
    # page first asks for its status, and there would be no live progress to see.
    await page.fill("#url", site.url(f"/pages/article.html?delay_ms={PAGE_DELAY_MS}"))
    await page.click(".mode-url button[type=submit]")

    # Live progress, then the teaser and the full report.
    await wait_for(tab, "#scan .scan-head [data-status]", tmp_path)
    await wait_for(tab, "#report .keyphrase", tmp_path, SCAN_TIMEOUT_MS)
    statuses: list[str] = await page.evaluate("window.__statuses")
    assert statuses[-1] == "FULL_READY", statuses
    assert len(statuses) >= 2, f"the page jumped straight to the end: {statuses}"
    assert set(statuses) <= {"QUEUED", "RUNNING", "TEASER_READY", "FULL_READY"}, statuses
    assert await page.get_attribute(".progress", "aria-valuenow") == "100"
    assert await page.locator(".step-done").count() == 4

    scan_id = shown_scan_id(page.url)
    status = await status_of(live, scan_id)
    assert status["status"] == "FULL_READY"
    title = "How to Compost at Home: A Beginner's Guide to Healthier Soil | Greenfold Gardens"
    assert (await page.locator("#scan h2").inner_text()).strip() == title, "the teaser's title is not shown"
    assert await page.locator("#teaser .fact").count() >= 4
    keyphrases = await page.locator(".keyphrase .phrase").all_inner_texts()
    assert len(keyphrases) == 10 and all(k.strip() for k in keyphrases), keyphrases
    scores = [float(s) for s in await page.locator(".keyphrase .score").all_inner_texts()]
    assert scores == sorted(scores, reverse=True) and all(0 < s <= 1 for s in scores), scores
    assert await page.locator(".facts-perf .fact").count() == 8
    severities = await page.locator(".insights [data-severity]").evaluate_all("els => els.map(e => e.dataset.severity)")
    order = ["high", "medium", "low", "info"]
    assert severities == sorted(severities, key=order.index), severities
    # The audit: every category, failing audits first and open, evidence expandable.
    categories = await page.locator("#audit [data-category]").evaluate_all("els => els.map(e => e.dataset.category)")
    assert categories == ["indexability", "structured_data", "sharing", "content", "performance"], categories
    content = page.locator('#audit [data-category="content"] > .audits > .audit')
    results = await content.evaluate_all("els => els.map(e => e.dataset.result)")
    assert results and results[0] == "fail" and set(results) <= {"fail", "warning"}, results
    anchors = page.locator('#audit [data-audit="crawlable-anchors"]')
    assert await anchors.locator(".evidence").is_visible()  # failing: open from the start
    assert "javascript:void(0)" in await anchors.locator(".evidence").inner_text()
    og = page.locator('#audit [data-audit="og-url"]')
    assert not await og.locator(".fix").is_visible()  # a warning: closed until clicked
    await og.locator("summary").click()
    assert await og.locator(".fix").is_visible()

    # The trace link, built from the configured template.
    trace_id = status["traceId"]
    href = await page.locator("#scan .trace-link").get_attribute("href")
    assert href == TRACE_TEMPLATE.replace("{trace_id}", trace_id)

    # The recent list shows it, with its status and trace.
    recent = page.locator(".recent-item", has=page.locator(f'a[href*="{trace_id}"]'))
    await recent.wait_for()
    assert await recent.locator("[data-status]").get_attribute("data-status") == "FULL_READY"

    await page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
    if os.environ.get("PAGELENS_UPDATE_SCREENSHOT") == "1":
        await page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert not tab.errors, tab.errors

    # One trace: browser span -> browser fetch -> API -> producer -> worker -> stages.
    await page.evaluate("document.dispatchEvent(new Event('visibilitychange'))")  # a nudge; export is timed anyway

    def complete(spans: list[Span]) -> bool:
        names = {(s.name, s.service_name) for s in spans if s.trace_id == trace_id}
        return {("user.create_scan_request", "pagelens-web"), (f"process {live.queue}", "pagelens-worker")} <= names

    spans = await asyncio.to_thread(live.receiver.wait_for, complete, SPAN_TIMEOUT)
    trace = [s for s in spans if s.trace_id == trace_id]
    by_id = {s.span_id: s for s in trace}
    root = next(s for s in trace if s.name == "user.create_scan_request")
    assert root.parent_span_id is None and root.attributes.get("pagelens.scan_id") == scan_id, root
    fetch = next(s for s in trace if s.service_name == "pagelens-web" and s.kind == "CLIENT")
    assert fetch.parent_span_id == root.span_id, "the browser's fetch is not under user.create_scan_request"
    server = next(s for s in trace if s.name == "POST /api/v1/scan-jobs" and s.kind == "SERVER")
    assert server.parent_span_id == fetch.span_id, "the API's span is not under the browser's fetch"
    consumer = next(s for s in trace if s.name == f"process {live.queue}")
    producer = by_id[consumer.parent_span_id or ""]
    assert producer.name == f"send {live.queue}" and producer.parent_span_id == server.span_id
    stages = {s.name for s in trace if s.parent_span_id == consumer.span_id and s.name.startswith("scan.")}
    assert stages == {"scan.crawl", "scan.parse", "scan.analyze", "scan.generate"}, stages
    assert {s.service_name for s in trace} == {"pagelens-web", "pagelens-api", "pagelens-worker"}
    assert not live.receiver.rejected, live.receiver.rejected


async def test_error_states_and_a_text_scan(live: Live, tab: Tab, site: Site, tmp_path: Path) -> None:
    page = tab.page
    # Refused by the API (422): said in the form, nothing created.
    await page.fill("#url", "ftp://example.com/file")
    await page.click(".mode-url button[type=submit]")
    await wait_for(tab, "#form-error:not([hidden])", tmp_path)
    assert "url" in (await page.inner_text("#form-error")).lower()
    assert await page.locator("#scan").is_hidden()

    # A page that answers 404: the scan fails, with its error type, its message and a retry button.
    await page.fill("#url", site.url("/status/404"))
    await page.click(".mode-url button[type=submit]")
    await wait_for(tab, "#scan .error-box", tmp_path, SCAN_TIMEOUT_MS)
    assert await page.get_attribute("#scan .scan-head [data-status]", "data-status") == "FAILED"
    error = (await page.inner_text("#scan .error-box")).lower()
    assert "http error" in error and "404" in error, error
    assert await page.locator("#scan .error-box button", has_text="Retry").count() == 1
    assert await page.locator(".step-failed").count() == 1
    assert await page.locator("#form-error").is_hidden()

    # Raw text from the Text tab: keyphrases and insights, no performance (nothing was fetched).
    await page.click("[role=tab][data-mode=text]")
    await page.fill("#title", "Compost notes")
    await page.fill("#text", (PAGES_DIR / "article.html").read_text(encoding="utf-8")[:6000])
    await page.click(".mode-text button[type=submit]")
    await wait_for(tab, "#report .keyphrase", tmp_path, SCAN_TIMEOUT_MS)
    assert (await page.inner_text("#scan h2")).strip() == "Compost notes"
    assert await page.locator(".facts-perf").count() == 0
    assert await page.locator(".step").count() == 1  # a document has only the GENERATE stage
    # The browser logs the refused and failed requests it made; nothing else went wrong.
    unexpected = [e for e in tab.errors if "Failed to load resource" not in e]
    assert not unexpected, unexpected


async def test_the_page_asks_for_a_new_key_after_a_401(
    settings: Settings, migrated_database: Any, tmp_path: Path
) -> None:
    """No worker needed: an API of its own whose database holds a key. The page asks for a key at
    the first 401, works with it, and asks again once that key is revoked."""
    dsn = await migrated_database()
    conn = await asyncpg.connect(dsn)
    try:
        key = await keys.create(conn, "browser user", "acme")
    finally:
        await conn.close()
    own = settings.with_(database_url=dsn, queue_name=f"{settings.queue_name}:web-keys")
    async with serve_api(own) as base, async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS, headless=True)
        try:
            tab = Tab(await (await browser.new_context()).new_page())
            tab.page.set_default_timeout(15_000)
            tab.page.on("pageerror", lambda error: tab.errors.append(str(error)))
            await tab.page.goto(f"{base}/")
            await wait_for(tab, "#key-dialog[open]", tmp_path)  # the recent list got a 401
            await tab.page.fill("#key-input", key.secret)
            await tab.page.click("#key-form button[value=save]")
            # Not just any li.empty: the page starts with a "Loading…" one until the list arrives.
            await wait_for(tab, "#recent-list li.empty:has-text('No scans yet')", tmp_path)
            assert not await tab.page.locator("#key-dialog").evaluate("d => d.open")
            assert "No scans yet" in await tab.page.locator("#recent-list").inner_text()
            assert await tab.page.evaluate("sessionStorage.getItem('pagelens.apiKey')") == key.secret

            async with httpx.AsyncClient(base_url=base, timeout=10) as admin_side:
                conn = await asyncpg.connect(dsn)
                try:
                    await keys.revoke(conn, key.row["id"])
                finally:
                    await conn.close()
                for _ in range(50):  # the API drops the key within seconds
                    listing = await admin_side.get(
                        "/api/v1/scan-jobs", headers={"Authorization": f"Bearer {key.secret}"}
                    )
                    if listing.status_code == 401:
                        break
                    await asyncio.sleep(0.1)
                assert listing.status_code == 401
            await tab.page.click("#refresh")
            await wait_for(tab, "#key-dialog[open]", tmp_path)
            assert not await tab.page.locator("#key-button").is_hidden(), "the key can be changed from the header"
            assert tab.errors == []
        finally:
            await browser.close()
