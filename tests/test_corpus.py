"""A corpus of bad input: every case gets the right 4xx, or a scan that ends typed, never a 5xx.

The API runs with the local servers allowed by exact host:port only, so every other loopback or
private destination meets the SSRF guard just as a public deployment would. Hostile pages (tests/
site.py, tests/hostile.py) go through a real worker with a short fetch budget: each scan must end
FAILED with the right error type (or FULL_READY where pagelens can cope), and the worker must come
back, not hang.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import httpx
import pytest
from arq.worker import Worker

from app.core import db
from app.core.settings import Settings
from app.core.urlpolicy import BLOCKED_MESSAGE
from tests.conftest import serve_api
from tests.hostile import Hostile
from tests.site import Site
from tests.test_netguard import BLOCKED_HOSTS

SCANS = "/api/v1/scan-jobs"
CASE_TIMEOUT = 120.0  # one burst worker run over every hostile page; a hang fails instead of blocking
SSRF_MESSAGES = (BLOCKED_MESSAGE, "destination port is not allowed")  # all a refusal ever says

# URLs refused at the door, with the error type the 422 names.
SSRF_URLS = [f"http://{host}/latest/meta-data/" for host in BLOCKED_HOSTS] + [
    "http://169.254.169.254:80/computeMetadata/v1/",
    "http://[fd00:ec2::254]/latest/meta-data/",
    "http://100.100.100.200/latest/meta-data/",
    "http://0251.0376.0251.0376/",  # 169.254.169.254 in octal
    "http://0xa9.0xfe.0xa9.0xfe/",  # ... in hex
    "http://2852039166/",  # ... as one decimal number
    "http://0xA9FEA9FE/",
    "http://169.254.43518/",  # ... in the short a.b.c form
    "http://10.1/",
    "http://[::ffff:169.254.169.254]/",
    "http://[0:0:0:0:0:ffff:a9fe:a9fe]/",
    "http://[64:ff9b::169.254.169.254]/",
    "http://[2002:a9fe:a9fe::]/",
    "http://[2002:0a00:0001::1]/",
    "http://127.0.0.1:6379/",
    "https://example.com:22/",
    "http://example.com:6379/",
]
INVALID_URLS = [
    "",
    "example.com",
    "//example.com/",
    "file:///etc/passwd",
    "gopher://127.0.0.1:6379/_FLUSHALL",
    "dict://127.0.0.1:11211/stat",
    "ftp://example.com/",
    "javascript:alert(1)",
    "data:text/html,<h1>x</h1>",
    "http://",
    "http:///path",
    "http://user@example.com/",
    "http://user:pass@example.com/",
    "http://example.com@127.0.0.1/",
    "http://example.com\\@127.0.0.1/",
    "http://exa mple.com/",
    "http://example.com/\r\nHost: internal",
    "http://example.com/\x00",
    "http://[::1/",
    "http://[fe80::1%25eth0]/",
    "http://example.com:0/",
    "http://example.com:99999/",
    "http://example.com:-1/",
    "http://example.com:8o/",
    "http://-bad-.example/",
    "http://" + "a" * 64 + ".example/",
    "http://1.2.3.4.5/",
    "http://256.1.1.1/",
    "http://0x100000000/",
    "https://example.com/" + "a" * 3000,
]
MALFORMED_BODIES: list[tuple[bytes, dict[str, str], int]] = [
    (b"{", {}, 400),
    (b'{"url": }', {}, 400),
    (b'{"url": "https://example.com/",}', {}, 400),
    (b"\xff\xfe\x00", {}, 400),
    (b"\xef\xbb\xbf{}", {}, 422),  # a UTF-8 byte order mark is read past, and the object lacks "url"
    (b"[" * 200_000 + b"]" * 200_000, {}, 400),  # nested deeper than any parser's stack
    (b"", {}, 400),
    (b"[]", {}, 422),
    (b'"https://example.com/"', {}, 422),
    (b"null", {}, 422),
    (b'{"url": null}', {}, 422),
    (b'{"url": ["https://example.com/"]}', {}, 422),
    (b'{"url": "https://example.com/", "options": {"topN": 1e400}}', {}, 422),
    (b'{"url": "https://example.com/", "options": {"topN": 99999999999999999999999}}', {}, 422),
    (b'{"url": "https://example.com/", "options": "all"}', {}, 422),
    (b'{"url": "https://example.com/"}', {"content-type": "text/plain"}, 415),
    (b'{"url": "https://example.com/"}', {"content-type": "application/x-www-form-urlencoded"}, 415),
    (b'{"url": "https://example.com/"}', {"idempotency-key": "with space"}, 422),
    (b'{"url": "https://example.com/"}', {"idempotency-key": "k" * 300}, 422),
]


@pytest.fixture(scope="module")
async def corpus_settings(settings: Settings, site: Site, hostile: Hostile, migrated_database: Any) -> Settings:
    return settings.with_(
        database_url=await migrated_database(),
        queue_name=f"{settings.queue_name}:corpus",
        fetch_allow_hosts=frozenset({f"127.0.0.1:{site.port}", hostile.allow}),
        max_tries=1,  # each hostile page shows its own error type, not retries_exhausted
        fetch_total_timeout=4.0,
        fetch_read_timeout=2.0,
        # Ordinary pages parse in milliseconds; the parser-hostile ones would take minutes.
        parse_timeout=5.0,
    )


@pytest.fixture(scope="module")
async def corpus_pool(corpus_settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    pool = await db.create_pool(corpus_settings.require_database_url(), max_size=4)
    yield pool
    await pool.close()


@pytest.fixture(scope="module")
async def api(corpus_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with serve_api(corpus_settings) as base, httpx.AsyncClient(base_url=base, timeout=30) as client:
        yield client


def assert_client_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    return body


@pytest.mark.parametrize("url", SSRF_URLS)
async def test_ssrf_forms_are_refused_with_a_generic_422(api: httpx.AsyncClient, url: str) -> None:
    problem = assert_client_error(await api.post(SCANS, json={"url": url}), 422)
    [error] = problem["errors"]
    assert error["field"] == "url" and error["type"] == "ssrf_blocked", error
    assert error["message"] in SSRF_MESSAGES


@pytest.mark.parametrize("url", INVALID_URLS)
async def test_invalid_urls_are_422(api: httpx.AsyncClient, url: str) -> None:
    problem = assert_client_error(await api.post(SCANS, json={"url": url}), 422)
    assert [e["field"] for e in problem["errors"]] == ["url"], problem


@pytest.mark.parametrize(("body", "headers", "status"), MALFORMED_BODIES, ids=range(len(MALFORMED_BODIES)))
async def test_malformed_bodies(api: httpx.AsyncClient, body: bytes, headers: dict[str, str], status: int) -> None:
    sent = {"content-type": "application/json", **headers}
    assert_client_error(await api.post(SCANS, content=body, headers=sent), status)


async def test_oversized_requests(api: httpx.AsyncClient, corpus_settings: Settings) -> None:
    big = b'{"url": "' + b"a" * corpus_settings.max_body_bytes + b'"}'
    assert_client_error(await api.post(SCANS, content=big, headers={"content-type": "application/json"}), 413)
    text = {"text": "word " * (corpus_settings.max_document_chars // 5 + 10)}
    assert_client_error(await api.post("/api/v1/documents", json=text), 422)
    assert_client_error(await api.get(SCANS, headers={"X-Filler": "x" * 40_000}), 431)
    assert_client_error(await api.get(SCANS, headers=[(f"X-{i}", "1") for i in range(500)]), 431)
    assert_client_error(await api.get(f"{SCANS}/{'9' * 5000}/status"), 404)
    for params in ({"limit": "-1"}, {"limit": "1e9"}, {"cursor": "%%%"}, {"status": "\x00"}):
        assert_client_error(await api.get(SCANS, params=params), 422)
    assert_client_error(await api.patch(SCANS), 405)


def hostile_cases(site: Site, hostile: Hostile) -> dict[str, tuple[str, str]]:
    """url -> (expected status, expected error type or "" for FULL_READY)."""
    redirect = site.url("/redirect-to?location=")
    internal = f"127.0.0.1:{site.port + 1 if site.port < 65535 else site.port - 1}"
    cases = {
        site.url("/gzip-bomb"): ("FAILED", "too_large"),
        site.url("/huge.html"): ("FAILED", "too_large"),
        site.url("/declared-huge"): ("FAILED", "too_large"),
        site.url("/slow"): ("FAILED", "timeout"),
        site.url("/redirect-loop"): ("FAILED", "http_error"),
        site.url("/redirect/9"): ("FAILED", "http_error"),
        site.url("/file.pdf"): ("FAILED", "unsupported_content"),
        site.url("/image.png"): ("FAILED", "unsupported_content"),
        site.url("/status/500"): ("FAILED", "http_error"),
        site.url("/status/418"): ("FAILED", "http_error"),
        hostile.url("/json"): ("FAILED", "unsupported_content"),
        hostile.url("/octet-stream"): ("FAILED", "unsupported_content"),
        hostile.url("/brotli"): ("FAILED", "unsupported_content"),
        hostile.url("/corrupt-gzip"): ("FAILED", "http_error"),
        hostile.url("/header-flood"): ("FAILED", "http_error"),
        hostile.url("/short-body"): ("FAILED", "http_error"),
        hostile.url("/not-http"): ("FAILED", "http_error"),
        hostile.url("/bad-utf8"): ("FULL_READY", ""),
        hostile.url("/bogus-charset"): ("FULL_READY", ""),
        hostile.url("/punycode"): ("FULL_READY", ""),  # a charset the web does not know is ignored
        hostile.url("/punycode-meta"): ("FULL_READY", ""),
        hostile.url("/utf16-odd"): ("FULL_READY", ""),
        hostile.url("/binary"): ("FULL_READY", ""),
        hostile.url("/empty"): ("FULL_READY", ""),
        # Parser-hostile markup: killed at the parse deadline as too complex, or parsed as usual.
        hostile.url("/nested-formatting"): ("FAILED", "too_complex"),
        hostile.url("/deep-nesting"): ("FAILED", "too_complex"),
        hostile.url("/many-attributes"): ("FAILED", "too_complex"),
        hostile.url("/giant-comment"): ("FULL_READY", ""),
        hostile.url("/many-tables"): ("FULL_READY", ""),
        # A name is not resolved by the API; the worker resolves it and meets the guard.
        "http://localhost:8080/pages/article.html": ("FAILED", "ssrf_blocked"),
        redirect + "http://169.254.169.254/latest/meta-data/": ("FAILED", "ssrf_blocked"),
        redirect + "http://[::ffff:127.0.0.1]:8080/": ("FAILED", "ssrf_blocked"),
        redirect + "http://0x7f000001:8080/": ("FAILED", "ssrf_blocked"),
        redirect + f"http://{internal}/": ("FAILED", "ssrf_blocked"),
        redirect + "http://127.0.0.1:6379/": ("FAILED", "ssrf_blocked"),
        redirect + "file:///etc/passwd": ("FAILED", "invalid_url"),
        redirect + "gopher://127.0.0.1:6379/_INFO": ("FAILED", "invalid_url"),
        redirect + "http://user:pw@pagelens.invalid/": ("FAILED", "invalid_url"),
    }
    return cases


async def test_hostile_pages_end_typed_and_the_worker_carries_on(
    api: httpx.AsyncClient,
    corpus_settings: Settings,
    site: Site,
    hostile: Hostile,
    make_worker: Callable[..., Worker],
    corpus_pool: asyncpg.Pool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A proxy in the environment must not be used for user URLs (it would see every page we fetch).
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.setenv(name, hostile.base)
    cases = hostile_cases(site, hostile)
    created: dict[str, str] = {}
    for url in cases:
        response = await api.post(SCANS, json={"url": url})
        assert response.status_code == 202, (url, response.text)
        created[url] = response.json()["scanId"]
    worker = make_worker(corpus_settings, db=corpus_pool)
    await asyncio.wait_for(worker.main(), CASE_TIMEOUT)  # bounded: a hung worker fails the test

    wrong = []
    for url, (status, error_type) in cases.items():
        scan = (await api.get(f"{SCANS}/{created[url]}/status")).json()
        got = (scan["status"], (scan["error"] or {}).get("type", ""))
        if got != (status, error_type):
            wrong.append(f"{url}: expected {status} {error_type}, got {got} {scan['error']}")
        elif error_type == "ssrf_blocked" and scan["error"]["message"] not in SSRF_MESSAGES:
            wrong.append(f"{url}: the refusal says more than it should: {scan['error']}")
    assert not wrong, "\n".join(wrong)
    assert not [path for path in hostile.paths() if path.startswith("http")], "a request came through as a proxy"

    # The worker is fine afterwards: an ordinary page still scans.
    ok = (await api.post(SCANS, json={"url": site.url("/pages/article.html")})).json()["scanId"]
    await asyncio.wait_for(make_worker(corpus_settings, db=corpus_pool).main(), CASE_TIMEOUT)
    assert (await api.get(f"{SCANS}/{ok}/status")).json()["status"] == "FULL_READY"
