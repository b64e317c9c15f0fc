"""Fetching user-supplied URLs safely (CRAWL stage)."""

from __future__ import annotations

import asyncio
import codecs
import functools
import re
import ssl
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urljoin

import certifi
import httpx
import webencodings
from opentelemetry import context as otel_context

from app.core.models import ErrorType, ScanError
from app.core.settings import Settings
from app.core.urlpolicy import IPAddress, Target, parse_target, resolve_target

T = TypeVar("T")


@dataclass(frozen=True)
class FetchedPage:
    url: str  # as requested
    final_url: str  # after redirects
    status_code: int
    content_type: str  # media type only, lower case, e.g. "text/html"
    encoding: str  # the charset used to decode `text`
    body: bytes  # decompressed
    text: str
    ttfb_ms: float  # request start to response headers
    total_ms: float  # request start to last body byte
    transfer_bytes: int  # bytes on the wire (compressed)
    content_encoding: str | None  # e.g. "gzip", "br"; None when uncompressed
    headers: dict[str, str] = field(default_factory=dict)  # lower-cased names
    redirects: list[str] = field(default_factory=list)


# --- the fetcher ------------------------------------------------------------------------------------

HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# The 4xx a later try can get past: a request timeout and rate limiting. Every other 4xx is the
# page's answer to this request, and the same request gets it again.
RETRYABLE_4XX = frozenset({408, 429})
# What httpcore and h11 say when the connection ends before the response is complete: the network
# may be at fault, so another try can help. Every other protocol error is a response that breaks
# HTTP (no status line, endless headers...), which the same server sends again.
CONNECTION_ENDED = ("server disconnected", "peer closed connection", "peer unexpectedly closed")
# Only encodings we can inflate with a bound on the output of each step. No brotli decoder is a
# dependency (and older bindings inflate a whole chunk at once), so "br" is not advertised.
ACCEPT_ENCODING = "gzip, deflate"
ACCEPT = "text/html,application/xhtml+xml;q=0.9,*/*;q=0.1"
ACCEPT_LANGUAGE = "en;q=0.9,*;q=0.5"
# A name can resolve to many addresses; trying a few covers IPv6-first answers for IPv4-only hosts.
MAX_ADDRESSES_TRIED = 4
SNIFF_BYTES = 2048

_META_CHARSET = re.compile(rb"""<meta[^>]*?charset\s*=\s*["']?\s*([a-z0-9_.:-]+)""", re.IGNORECASE)
_BOMS = tuple(
    (bom, codecs.lookup(name))
    for bom, name in (
        (codecs.BOM_UTF8, "utf-8"),
        (codecs.BOM_UTF16_LE, "utf-16-le"),
        (codecs.BOM_UTF16_BE, "utf-16-be"),
    )
)
_UTF8 = codecs.lookup("utf-8")


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    # Built once: loading the CA bundle costs more than the rest of a client.
    return ssl.create_default_context(cafile=certifi.where())


def _timeout(settings: Settings) -> httpx.Timeout:
    return httpx.Timeout(
        connect=settings.fetch_connect_timeout,
        read=settings.fetch_read_timeout,
        write=settings.fetch_read_timeout,
        pool=settings.fetch_connect_timeout,
    )


def _transport(settings: Settings) -> httpx.AsyncHTTPTransport:
    # The transport, not an AsyncClient: a client merges default headers and its cookie jar into
    # requests and parses every Location (raising on odd ones) even with follow_redirects=False.
    # Redirects are followed by _fetch, each hop checked again. trust_env=False: nothing (CA paths,
    # proxies) comes from the environment. No keep-alive: requests go to pinned IPs and httpcore pools
    # by (scheme, IP, port), so a kept TLS connection could be reused for another host name on the
    # same IP without checking the certificate for that name.
    return httpx.AsyncHTTPTransport(
        verify=_ssl_context(),
        trust_env=False,
        limits=httpx.Limits(max_connections=MAX_ADDRESSES_TRIED, max_keepalive_connections=0),
        retries=0,
    )


def _request(target: Target, ip: IPAddress, settings: Settings) -> httpx.Request:
    """A request to the checked address itself; the name only travels in Host and SNI."""
    url = httpx.URL(scheme=target.scheme, host=str(ip), port=target.port, raw_path=target.path.encode("ascii"))
    # The complete header set: nothing else is added on the way (see _transport).
    headers = {
        "Host": target.authority,
        "User-Agent": settings.fetch_user_agent,
        "Accept": ACCEPT,
        "Accept-Encoding": ACCEPT_ENCODING,
        "Accept-Language": ACCEPT_LANGUAGE,
    }
    extensions: dict[str, Any] = {"timeout": _timeout(settings).as_dict()}
    if target.scheme == "https":
        extensions["sni_hostname"] = target.host
    return httpx.Request("GET", url, headers=headers, extensions=extensions)


def _is_tls_error(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    for _ in range(10):  # the cause chain is short; bound it anyway
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _transport_error(exc: httpx.HTTPError) -> ScanError:
    if isinstance(exc, httpx.TimeoutException):
        return ScanError(ErrorType.TIMEOUT, "the page did not answer in time", retryable=True)
    if _is_tls_error(exc):
        return ScanError(ErrorType.CONNECT_ERROR, "TLS handshake with the page failed", retryable=False)
    if isinstance(exc, httpx.ConnectError):
        return ScanError(ErrorType.CONNECT_ERROR, "could not connect", retryable=True)
    if isinstance(exc, httpx.NetworkError):
        return ScanError(ErrorType.CONNECT_ERROR, "the connection to the page was lost", retryable=True)
    if isinstance(exc, httpx.RemoteProtocolError):
        if str(exc).lower().startswith(CONNECTION_ENDED):
            return ScanError(ErrorType.HTTP_ERROR, "the page's response ended before it was complete", retryable=True)
        return ScanError(ErrorType.HTTP_ERROR, "the page sent a malformed HTTP response")
    return ScanError(ErrorType.INTERNAL, "fetching the page failed unexpectedly")


async def _send(transport: httpx.AsyncHTTPTransport, target: Target, settings: Settings) -> httpx.Response:
    addresses = await resolve_target(target.host, target.port, settings)
    failure: httpx.HTTPError | None = None
    for ip in addresses[:MAX_ADDRESSES_TRIED]:
        try:
            request = _request(target, ip, settings)
            response = await transport.handle_async_request(request)
            response.request = request
            return response
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            if _is_tls_error(exc):
                raise
            failure = exc
    assert failure is not None  # resolve_target never returns an empty list
    raise failure


def _status_error(status: int) -> ScanError:
    retryable = status >= 500 or status in RETRYABLE_4XX
    return ScanError(ErrorType.HTTP_ERROR, f"HTTP {status} from the page", retryable=retryable)


def _media_type(content_type: str) -> tuple[str, str | None]:
    media, *params = content_type.split(";")
    charset = None
    for param in params:
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset":
            charset = value.strip().strip("\"'") or None
    return media.strip().lower(), charset


def _content_encoding(headers: httpx.Headers) -> str | None:
    codings = [c.strip().lower() for c in headers.get("content-encoding", "").split(",")]
    codings = [c for c in codings if c and c != "identity"]
    if not codings:
        return None
    if len(codings) > 1 or codings[0] not in {"gzip", "x-gzip", "deflate"}:
        raise ScanError(ErrorType.UNSUPPORTED_CONTENT, "the page uses an unsupported content encoding")
    return "gzip" if codings[0] == "x-gzip" else codings[0]


class _Inflater:
    """gzip/deflate that never produces more than the caller's remaining budget (+1) per step.

    httpx's own decoders inflate each network chunk completely: a 64 KiB chunk of a gzip bomb is
    64 MiB in memory before any size check could run. zlib's max_length bounds that.
    """

    def __init__(self, encoding: str) -> None:
        self._gzip = encoding == "gzip"
        self._raw_deflate = False
        self._started = False
        self._fed = False
        self._zlib = self._new()

    def _new(self) -> Any:
        if self._gzip:
            return zlib.decompressobj(zlib.MAX_WBITS | 16)
        return zlib.decompressobj(-zlib.MAX_WBITS if self._raw_deflate else zlib.MAX_WBITS)

    def feed(self, data: bytes, budget: int) -> bytes:
        out = bytearray()
        while data and len(out) <= budget:
            if self._zlib.eof:
                data = self._next_member(data)
                continue
            try:
                out += self._zlib.decompress(data, budget + 1 - len(out))
            except zlib.error:
                # "deflate" is zlib-wrapped by the RFC but raw from some servers; browsers accept both.
                if self._gzip or self._started or self._raw_deflate:
                    raise
                self._raw_deflate = True
                self._zlib = self._new()
                continue
            self._started = self._started or bool(out)
            data = self._zlib.unconsumed_tail or self._zlib.unused_data
        self._fed = True
        return bytes(out)

    @property
    def truncated(self) -> bool:
        """The body ended inside a compressed stream (cut off, or never compressed data at all)."""
        return self._fed and not self._zlib.eof

    def _next_member(self, rest: bytes) -> bytes:
        # Concatenated gzip members are one body; anything else after the end is ignored.
        if self._gzip and rest.startswith(b"\x1f\x8b"):
            self._zlib = self._new()
            return rest
        return b""


async def _read_body(
    response: httpx.Response, limit: int, encoding: str | None, *, cut: bool = False
) -> tuple[bytes, bool]:
    """The decoded body and whether it was cut: past `limit` bytes a page is too large, while a file
    read for its head only (`cut`, robots.txt) keeps its first `limit` bytes."""
    inflater = _Inflater(encoding) if encoding else None
    body = bytearray()
    try:
        async for raw in response.aiter_raw():
            body += inflater.feed(raw, limit - len(body)) if inflater else raw
            if len(body) > limit:
                if cut:
                    return bytes(body[:limit]), True
                raise _too_large(limit)
        if inflater is not None and inflater.truncated:
            raise zlib.error("truncated")
    except zlib.error:
        raise ScanError(ErrorType.HTTP_ERROR, "the page's compressed body is corrupt") from None
    return bytes(body), False


def _too_large(limit: int) -> ScanError:
    return ScanError(ErrorType.TOO_LARGE, f"the page is larger than {limit} bytes")


def _looks_like_html(body: bytes) -> bool:
    head = body[:SNIFF_BYTES].lower()
    return b"<html" in head or b"<!doctype html" in head


def _codec(label: str | None) -> codecs.CodecInfo | None:
    """The decoder a browser uses for a charset label: the labels of the WHATWG Encoding Standard
    (https://encoding.spec.whatwg.org/#names-and-labels, through webencodings), so "iso-8859-1" and
    "ascii" read as windows-1252, as browsers read them. None for a label the web does not know.

    Python knows more codecs than the web does, and some must never see a page's bytes: punycode's
    decoder is quadratic (a few hundred KB would hold the worker's event loop for minutes, and
    robots.txt is decoded here too), base64 and rot13 are not a page's encoding, utf-7 is banned
    from the web for its XSS tricks."""
    if not label:
        return None
    encoding = webencodings.lookup(label)
    if encoding is None:
        return None
    info: codecs.CodecInfo = encoding.codec_info
    return info


def _pick_encoding(declared: str | None, body: bytes) -> tuple[codecs.CodecInfo, int]:
    """(codec, bytes of BOM to skip): BOM, then the Content-Type charset, then <meta>, then utf-8."""
    for bom, bom_codec in _BOMS:
        if body.startswith(bom):
            return bom_codec, len(bom)
    codec = _codec(declared)
    if codec:
        return codec, 0
    match = _META_CHARSET.search(body[:SNIFF_BYTES])
    codec = _codec(match.group(1).decode("ascii")) if match else None
    # A <meta> that could be read as ASCII cannot truthfully declare UTF-16/32 (HTML spec).
    if codec and not codec.name.startswith("utf-16") and not codec.name.startswith("utf-32"):
        return codec, 0
    return _UTF8, 0


def _decode(body: bytes, declared: str | None) -> tuple[str, str]:
    """The body as text, and the name of the codec that decoded it; bytes it cannot decode become
    U+FFFD, never an error."""
    codec, skip = _pick_encoding(declared, body)
    try:
        return codec.decode(body[skip:], "replace")[0], codec.name
    except UnicodeError:  # the web's codecs replace what they cannot decode; this is a safety net
        return body[skip:].decode("utf-8", errors="replace"), "utf-8"


async def _page(
    url: str, final: Target, response: httpx.Response, redirects: list[str], settings: Settings, started: float
) -> FetchedPage:
    ttfb = time.perf_counter() - started
    if response.status_code < 200 or response.status_code > 299:
        raise _status_error(response.status_code)
    media, charset = _media_type(response.headers.get("content-type", ""))
    if media and media not in HTML_TYPES:
        raise ScanError(ErrorType.UNSUPPORTED_CONTENT, f"the page is {media}, not HTML")
    length = response.headers.get("content-length", "")
    if length.isascii() and length.isdigit() and int(length) > settings.fetch_max_bytes:
        raise _too_large(settings.fetch_max_bytes)
    encoding = _content_encoding(response.headers)
    body, _ = await _read_body(response, settings.fetch_max_bytes, encoding)
    if not media:
        if not _looks_like_html(body):
            raise ScanError(ErrorType.UNSUPPORTED_CONTENT, "the page has no content type and is not HTML")
        media = "text/html"
    text, codec = _decode(body, charset)
    return FetchedPage(
        url=url,
        final_url=final.url,
        status_code=response.status_code,
        content_type=media,
        encoding=codec,
        body=body,
        text=text,
        ttfb_ms=ttfb * 1000,
        total_ms=(time.perf_counter() - started) * 1000,
        transfer_bytes=response.num_bytes_downloaded,
        content_encoding=encoding,
        headers={name.lower(): value for name, value in response.headers.items()},
        redirects=redirects,
    )


def _next_hop(current: Target, response: httpx.Response, redirects: list[str], settings: Settings) -> Target | None:
    location = response.headers.get("location")
    if response.status_code not in REDIRECT_STATUSES or location is None:
        return None
    if len(redirects) >= settings.fetch_max_redirects:
        raise ScanError(ErrorType.HTTP_ERROR, f"too many redirects (more than {settings.fetch_max_redirects})")
    try:
        joined = urljoin(current.url, location)
    except ValueError:
        raise ScanError(ErrorType.INVALID_URL, "the page redirects to a malformed URL") from None
    return parse_target(joined, settings)


Finish = Callable[[Target, httpx.Response, list[str]], Awaitable[T]]


async def _fetch(url: str, settings: Settings, transport: httpx.AsyncHTTPTransport, finish: Finish[T]) -> T:
    """Follow redirects (each hop checked again) and hand the final response to `finish`."""
    target = parse_target(url, settings)
    redirects: list[str] = []
    while True:  # bounded: _next_hop raises after fetch_max_redirects hops
        response = await _send(transport, target, settings)
        try:
            hop = _next_hop(target, response, redirects, settings)
            if hop is None:
                return await finish(target, response, redirects)
        finally:
            await response.aclose()
        redirects.append(hop.url)
        target = hop


async def _guarded(url: str, settings: Settings, total_timeout: float, finish: Finish[T]) -> T:
    """Run a fetch within the SSRF, size and time limits; raises ScanError only."""
    # Run under an empty OpenTelemetry context: whatever instruments httpx then has no trace or
    # baggage to inject, so nothing about our internals reaches a third-party server.
    token = otel_context.attach(otel_context.Context())
    try:
        async with asyncio.timeout(total_timeout), _transport(settings) as transport:
            return await _fetch(url, settings, transport, finish)
    except TimeoutError:
        raise ScanError(ErrorType.TIMEOUT, f"the page did not load within {total_timeout:g}s", retryable=True) from None
    except httpx.HTTPError as exc:
        raise _transport_error(exc) from exc
    except httpx.InvalidURL as exc:  # parse_target accepted it, so httpx and we disagree on a URL
        raise ScanError(ErrorType.INVALID_URL, "URL is malformed") from exc
    except (httpx.StreamError, OSError) as exc:  # below httpx's exception mapping; should not happen
        raise ScanError(ErrorType.INTERNAL, "fetching the page failed unexpectedly") from exc
    finally:
        otel_context.detach(token)


async def fetch_page(url: str, settings: Settings) -> FetchedPage:
    """GET one user-supplied page within the SSRF, size and time limits; raises ScanError only."""
    started = time.perf_counter()

    async def finish(target: Target, response: httpx.Response, redirects: list[str]) -> FetchedPage:
        return await _page(url, target, response, redirects, settings, started)

    return await _guarded(url, settings, settings.fetch_total_timeout, finish)


# --- small files beside a page (robots.txt, llms.txt) ---------------------------------------------------


@dataclass(frozen=True)
class FetchedFile:
    status_code: int
    media_type: str  # lower case, "" when not given
    text: str  # the first `max_bytes` of the body, decoded; "" unless the status is 2xx
    truncated: bool


async def fetch_file(url: str, settings: Settings, *, max_bytes: int, seconds: float) -> FetchedFile:
    """GET a small text file through the same checks as pages, answering whatever the status.

    Only the first `max_bytes` of the body are read (the rest is ignored, as crawlers do with a long
    robots.txt); raises ScanError when there is no HTTP answer at all.
    """

    async def finish(target: Target, response: httpx.Response, redirects: list[str]) -> FetchedFile:
        media, charset = _media_type(response.headers.get("content-type", ""))
        if not 200 <= response.status_code <= 299:
            return FetchedFile(response.status_code, media, "", False)
        body, truncated = await _read_body(response, max_bytes, _content_encoding(response.headers), cut=True)
        return FetchedFile(response.status_code, media, _decode(body, charset)[0], truncated)

    return await _guarded(url, settings, min(seconds, settings.fetch_total_timeout), finish)
