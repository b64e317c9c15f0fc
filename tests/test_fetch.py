"""fetch_page against the local test site (loopback only)."""

from __future__ import annotations

import asyncio
import gzip
import socket
import tracemalloc
import zlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from opentelemetry import baggage, propagate, trace
from opentelemetry import context as otel_context
from opentelemetry.sdk.trace import TracerProvider

from app.core.models import ErrorType, ScanError
from app.core.settings import Settings
from tests.hostile import Hostile
from tests.site import PAGES_DIR, Site, gzip_bomb
from worker.fetch import _decode, _Inflater, fetch_page

SENT_HEADERS = {"host", "user-agent", "accept", "accept-encoding", "accept-language"}
LEAKY_HEADERS = {"traceparent", "tracestate", "baggage", "cookie", "authorization"}


async def fetch_error(url: str, settings: Settings) -> ScanError:
    with pytest.raises(ScanError) as info:
        await fetch_page(url, settings)
    return info.value


def requests_since(site: Site, mark: int) -> list[tuple[str, dict[str, str]]]:
    return site.requests[mark:]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# --- successful fetches ----------------------------------------------------------------------------


async def test_latin1_page_declared_in_meta(site: Site, settings: Settings) -> None:
    page = await fetch_page(site.url("/latin1"), settings)
    assert page.status_code == 200
    assert page.content_type == "text/html"
    assert page.encoding == "cp1252"  # iso-8859-1 reads as windows-1252, as browsers read it
    assert "<title>café</title>" in page.text
    assert "\ufffd" not in page.text
    assert page.url == page.final_url == site.url("/latin1")
    assert page.redirects == []
    assert page.content_encoding is None
    assert page.transfer_bytes == len(page.body)
    assert page.headers["content-type"] == "text/html"
    assert all(name == name.lower() for name in page.headers)
    assert 0 <= page.ttfb_ms <= page.total_ms


async def test_gzip_page_is_inflated_and_smaller_on_the_wire(site: Site, settings: Settings) -> None:
    on_disk = (PAGES_DIR / "article.html").read_bytes()
    page = await fetch_page(site.url("/pages/article.html"), settings)
    assert page.content_encoding == "gzip"
    assert page.body == on_disk
    assert page.text == on_disk.decode("utf-8")
    assert page.encoding == "utf-8"
    assert 0 < page.transfer_bytes < len(page.body)


async def test_missing_content_type_is_sniffed_as_html(site: Site, settings: Settings) -> None:
    page = await fetch_page(site.url("/no-content-type"), settings)
    assert page.content_type == "text/html"
    assert "content-type" not in page.headers
    assert "<title>untyped</title>" in page.text


async def test_only_the_fixed_headers_are_sent(site: Site, settings: Settings) -> None:
    mark = len(site.requests)
    await fetch_page(site.url("/echo-headers"), settings)
    [(path, headers)] = requests_since(site, mark)
    assert path == "/echo-headers"
    assert set(headers) == SENT_HEADERS
    assert headers["user-agent"] == settings.fetch_user_agent
    assert headers["accept-encoding"] == "gzip, deflate"
    assert headers["host"] == f"127.0.0.1:{site.port}"


async def test_localhost_is_fetched_with_its_own_host_header(site: Site, settings: Settings) -> None:
    mark = len(site.requests)
    page = await fetch_page(f"http://localhost:{site.port}/echo-headers", settings)
    assert page.final_url == f"http://localhost:{site.port}/echo-headers"
    [(_, headers)] = requests_since(site, mark)
    assert headers["host"] == f"localhost:{site.port}"


async def test_connects_to_the_checked_address_without_a_second_lookup(
    site: Site, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop = asyncio.get_running_loop()
    real_getaddrinfo = loop.getaddrinfo
    lookups: list[str] = []

    async def getaddrinfo(host: Any, port: Any, **kwargs: Any) -> Any:
        if host == "pinned.invalid":
            lookups.append(host)
            return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("127.0.0.1", port))]
        return await real_getaddrinfo(host, port, **kwargs)

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)
    settings = settings.with_(fetch_allow_hosts=settings.fetch_allow_hosts | {"pinned.invalid"})
    mark = len(site.requests)
    page = await fetch_page(f"http://pinned.invalid:{site.port}/echo-headers", settings)
    assert page.status_code == 200
    assert lookups == ["pinned.invalid"]  # a second lookup would be a DNS-rebinding window
    [(_, headers)] = requests_since(site, mark)
    assert headers["host"] == f"pinned.invalid:{site.port}"


@pytest.fixture
def traced_context() -> Iterator[None]:
    """An active recording span and baggage, as the worker has while it runs a scan."""
    provider = TracerProvider()
    span = provider.get_tracer("test").start_span("scan")
    ctx = baggage.set_baggage("tenant", "secret-tenant", trace.set_span_in_context(span))
    token = otel_context.attach(ctx)
    try:
        yield
    finally:
        otel_context.detach(token)
        span.end()
        provider.shutdown()


async def test_no_trace_context_or_cookies_leak(
    site: Site, settings: Settings, traced_context: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    assert {"traceparent", "baggage"} <= set(carrier)  # the setup really has something to leak

    # Do what opentelemetry-instrumentation-httpx does: inject the current context in the transport.
    real_handle = httpx.AsyncHTTPTransport.handle_async_request

    async def instrumented(self: httpx.AsyncHTTPTransport, request: httpx.Request) -> httpx.Response:
        propagate.inject(request.headers)
        return await real_handle(self, request)

    monkeypatch.setattr(httpx.AsyncHTTPTransport, "handle_async_request", instrumented)
    before = trace.get_current_span()
    mark = len(site.requests)
    # /redirect/2 sets a cookie on every hop: it must not come back on the next one.
    page = await fetch_page(site.url("/redirect/2"), settings)
    assert page.status_code == 200
    seen = requests_since(site, mark)
    assert [path for path, _ in seen] == ["/redirect/2", "/redirect/1", "/pages/article.html"]
    for _, headers in seen:
        assert not LEAKY_HEADERS & set(headers), headers
    assert trace.get_current_span() is before  # the caller's context is restored


# --- redirects -------------------------------------------------------------------------------------


async def test_redirect_chain(site: Site, settings: Settings) -> None:
    page = await fetch_page(site.url("/redirect/3"), settings)
    assert page.url == site.url("/redirect/3")
    assert page.redirects == [site.url("/redirect/2"), site.url("/redirect/1"), site.url("/pages/article.html")]
    assert page.final_url == site.url("/pages/article.html")
    assert page.status_code == 200


async def test_redirect_loop_stops_at_the_limit(site: Site, settings: Settings) -> None:
    mark = len(site.requests)
    error = await fetch_error(site.url("/redirect-loop"), settings.with_(fetch_max_redirects=2))
    assert error.type is ErrorType.HTTP_ERROR
    assert "too many redirects" in error.message
    assert not error.retryable
    assert len(requests_since(site, mark)) == 3  # the original request and two followed hops


async def test_chain_longer_than_the_limit_fails(site: Site, settings: Settings) -> None:
    error = await fetch_error(site.url("/redirect/3"), settings.with_(fetch_max_redirects=2))
    assert error.type is ErrorType.HTTP_ERROR


@pytest.mark.parametrize(
    "location", ["ftp://example.com/file", "javascript:alert(1)", "file:///etc/passwd", "http://exa mple.com/"]
)
async def test_redirect_to_a_bad_url_is_invalid(site: Site, settings: Settings, location: str) -> None:
    url = str(httpx.URL(site.url("/redirect-to"), params={"location": location}))
    assert (await fetch_error(url, settings)).type is ErrorType.INVALID_URL


@pytest.mark.parametrize(
    "location",
    [
        "http://127.0.0.2:{port}/echo-headers",  # 127.0.0.1 is allow-listed, 127.0.0.2 is not
        "http://2130706434:{port}/echo-headers",
        "http://[::ffff:127.0.0.2]:{port}/echo-headers",
        "http://169.254.169.254/latest/meta-data/",
        "http://127.0.0.1:22/",  # allow-listed host but the entry pins the port (see settings below)
    ],
)
async def test_redirect_to_a_blocked_destination(site: Site, settings: Settings, location: str) -> None:
    settings = settings.with_(fetch_allow_hosts=frozenset({f"127.0.0.1:{site.port}"}))
    url = str(httpx.URL(site.url("/redirect-to"), params={"location": location.format(port=site.port)}))
    mark = len(site.requests)
    error = await fetch_error(url, settings)
    assert error.type is ErrorType.SSRF_BLOCKED
    assert not error.retryable
    assert len(requests_since(site, mark)) == 1


async def test_redirect_to_a_name_that_resolves_internally(site: Site, settings: Settings) -> None:
    # The address 127.0.0.1 is allow-listed, the name localhost is not: the name is what is judged.
    settings = settings.with_(fetch_allow_hosts=frozenset({"127.0.0.1"}))
    location = f"http://localhost:{site.port}/echo-headers"
    url = str(httpx.URL(site.url("/redirect-to"), params={"location": location}))
    assert (await fetch_error(url, settings)).type is ErrorType.SSRF_BLOCKED


# --- failures --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "retryable"),
    [
        (400, False),
        (404, False),
        (410, False),
        (418, False),
        (425, False),
        (408, True),
        (429, True),
        (500, True),
        (503, True),
    ],
)
async def test_error_statuses(site: Site, settings: Settings, status: int, retryable: bool) -> None:
    error = await fetch_error(site.url(f"/status/{status}"), settings)
    assert error.type is ErrorType.HTTP_ERROR
    assert error.retryable is retryable
    assert error.message == f"HTTP {status} from the page"


@pytest.mark.parametrize(
    ("path", "message", "retryable"),
    [
        ("/not-http", "the page sent a malformed HTTP response", False),  # no status line
        ("/header-flood", "the page sent a malformed HTTP response", False),  # headers without end
        ("/short-body", "the page's response ended before it was complete", True),  # connection lost?
    ],
)
async def test_protocol_errors(hostile: Hostile, settings: Settings, path: str, message: str, retryable: bool) -> None:
    error = await fetch_error(hostile.url(path), settings)
    assert (error.type, error.message, error.retryable) == (ErrorType.HTTP_ERROR, message, retryable)
    assert hostile.hits(path) >= 1


async def test_huge_streamed_page_is_too_large(site: Site, settings: Settings) -> None:
    assert settings.fetch_max_bytes < 6 * 1024 * 1024
    assert (await fetch_error(site.url("/huge.html"), settings)).type is ErrorType.TOO_LARGE


async def test_cap_applies_to_a_page_that_fits_otherwise(site: Site, settings: Settings) -> None:
    error = await fetch_error(site.url("/latin1"), settings.with_(fetch_max_bytes=100))
    assert error.type is ErrorType.TOO_LARGE


async def test_declared_length_over_the_cap_is_refused_before_reading(site: Site, settings: Settings) -> None:
    # /declared-huge announces 7 MiB and then drips: reading the body would end in TIMEOUT instead.
    error = await fetch_error(site.url("/declared-huge"), settings.with_(fetch_total_timeout=2.0))
    assert error.type is ErrorType.TOO_LARGE


async def test_gzip_bomb_is_stopped_without_inflating_it(site: Site, settings: Settings) -> None:
    gzip_bomb()  # built by the site once per process: keep that out of the measurement
    cap = 1024 * 1024
    tracemalloc.start()
    try:
        error = await fetch_error(site.url("/gzip-bomb"), settings.with_(fetch_max_bytes=cap))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert error.type is ErrorType.TOO_LARGE
    # The bomb inflates to 64 MiB; inflating even one 64 KiB network chunk whole would be ~64 MiB.
    assert peak < 8 * cap


@pytest.mark.parametrize("path", ["/file.pdf", "/image.png"])
async def test_non_html_is_unsupported(site: Site, settings: Settings, path: str) -> None:
    assert (await fetch_error(site.url(path), settings)).type is ErrorType.UNSUPPORTED_CONTENT


async def test_slow_drip_hits_the_total_timeout(site: Site, settings: Settings) -> None:
    # Each byte arrives well within the read timeout: only the wall-clock cap can stop this.
    settings = settings.with_(fetch_total_timeout=1.0, fetch_read_timeout=2.0)
    error = await fetch_error(site.url("/slow"), settings)
    assert error.type is ErrorType.TIMEOUT
    assert error.retryable


async def test_connection_refused(settings: Settings) -> None:
    error = await fetch_error(f"http://127.0.0.1:{closed_port()}/", settings)
    assert error.type is ErrorType.CONNECT_ERROR
    assert error.message == "could not connect"
    assert error.retryable


async def test_tls_failure_is_permanent(site: Site, settings: Settings) -> None:
    # The site speaks plain HTTP, so the TLS handshake fails.
    error = await fetch_error(f"https://127.0.0.1:{site.port}/echo-headers", settings)
    assert error.type is ErrorType.CONNECT_ERROR
    assert not error.retryable


async def test_not_allow_listed_loopback_is_blocked_before_any_traffic(site: Site, settings: Settings) -> None:
    mark = len(site.requests)
    error = await fetch_error(site.url("/echo-headers"), settings.with_(fetch_allow_hosts=frozenset()))
    assert error.type is ErrorType.SSRF_BLOCKED
    assert requests_since(site, mark) == []


# --- decoding helpers ------------------------------------------------------------------------------


def inflate_all(inflater: _Inflater, data: bytes, budget: int, chunk: int = 7) -> bytes:
    out = b""
    for i in range(0, len(data), chunk):
        out += inflater.feed(data[i : i + chunk], budget - len(out))
    return out


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [
        ("gzip", lambda data: gzip.compress(data)),
        ("gzip", lambda data: gzip.compress(data[:50]) + gzip.compress(data[50:])),  # two members
        ("deflate", lambda data: zlib.compress(data)),
        ("deflate", lambda data: zlib.compress(data)[2:-4]),  # raw deflate, as some servers send
    ],
)
def test_inflater_formats(encoding: str, compress: Any) -> None:
    data = b"<html>" + bytes(range(256)) * 4 + b"</html>"
    assert inflate_all(_Inflater(encoding), compress(data), budget=10_000) == data


def test_inflater_never_exceeds_the_budget_by_more_than_one_byte() -> None:
    bomb = gzip.compress(b"\0" * 10_000_000)
    out = _Inflater("gzip").feed(bomb, 1000)
    assert len(out) == 1001


@pytest.mark.parametrize(
    ("body", "declared", "text", "encoding"),
    [
        ("café".encode("cp1252"), "windows-1252", "café", "cp1252"),
        (b'<meta charset="iso-8859-1">caf\xe9\x80', None, '<meta charset="iso-8859-1">café€', "cp1252"),
        (
            b'<meta http-equiv="Content-Type" content="text/html; charset=koi8-r">\xc1',
            None,
            '<meta http-equiv="Content-Type" content="text/html; charset=koi8-r">\u0430',  # Cyrillic a
            "koi8-r",
        ),
        (b"<meta charset=utf-8>caf\xc3\xa9", "iso-8859-1", "<meta charset=utf-8>cafÃ©", "cp1252"),  # header wins
        (b"\xef\xbb\xbfcaf\xc3\xa9", "iso-8859-1", "café", "utf-8"),  # a BOM wins over everything
        (b"caf\xe9", None, "caf\ufffd", "utf-8"),  # invalid bytes are replaced, never raised
        (b"caf\xc3\xa9", "no-such-charset", "café", "utf-8"),
        (b"caf\xc3\xa9", "base64", "café", "utf-8"),  # not a text encoding
        (b"<meta charset=utf-16>caf\xc3\xa9", None, "<meta charset=utf-16>café", "utf-8"),
        # Labels Python knows but the web does not are ignored, as browsers ignore them: punycode's
        # decoder is quadratic, and the others are no page's encoding.
        *((b"caf\xc3\xa9 a-b", label, "café a-b", "utf-8") for label in ("punycode", "utf-7", "rot13", "idna")),
        (b"<meta charset=punycode>caf\xc3\xa9", None, "<meta charset=punycode>café", "utf-8"),
        (b"\xb0\xa1", "ks_c_5601-1987", "\uac00", "cp949"),  # a web label Python does not have
        (b"ab", "iso-2022-kr", "\ufffd\ufffd", "replacement"),  # WHATWG's "replacement" encoding: nothing readable
    ],
)
def test_decoding(body: bytes, declared: str | None, text: str, encoding: str) -> None:
    assert _decode(body, declared) == (text, encoding)
