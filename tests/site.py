"""A real local web site for the test suite: an HTTP/1.1 server on 127.0.0.1 in a background thread.

Built on http.server rather than an ASGI app so every byte on the wire is under the test's control
(missing Content-Type, raw gzip bombs, one-byte chunks) and shutdown is deterministic: stopping
wakes every dripping handler and shuts every open connection, then joins the handler threads.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import html
import mimetypes
import zlib
from collections.abc import Callable, Iterable, Iterator
from http import HTTPStatus
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from tests.httpserver import LoopbackServer, TrackedHandler, running

PAGES_DIR = Path(__file__).resolve().parent / "pages"
HUGE_BYTES = 7 * 1024 * 1024  # > 6 MiB, and above the default 5 MiB fetch cap
BOMB_BYTES = 64 * 1024 * 1024  # what /gzip-bomb inflates to
DRIP_INTERVAL = 0.5
DRIP_BYTES = 120  # one byte every 0.5 s for 60 s
MAX_REDIRECT_CHAIN = 100
MAX_DELAY_MS = 10_000

LATIN1_PAGE = (
    '<!doctype html><html><head><meta charset="iso-8859-1"><title>café</title></head>'
    "<body><h1>café</h1><p>Un café crème, s'il vous plaît.</p></body></html>"
).encode("iso-8859-1")
NO_CONTENT_TYPE_PAGE = b"<!doctype html><html><head><title>untyped</title></head><body><p>no type</p></body></html>"
# The smallest well-formed PDF and PNG a sniffer would recognise: only the type matters here.
PDF_BODY = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
PNG_BODY = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000001e221bc330000000049454e44ae426082"
)


def _page(title: str, body: str) -> bytes:
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
        f"<body>{body}</body></html>"
    ).encode()


@functools.cache
def gzip_bomb() -> bytes:
    """An HTML prefix and then 64 MiB of spaces, gzipped to about 64 KiB; built once per process."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    parts = [compressor.compress(b"<!doctype html><html><body>")]
    block = b" " * (1024 * 1024)
    parts.extend(compressor.compress(block) for _ in range(BOMB_BYTES // len(block)))
    parts.append(compressor.flush())
    return b"".join(parts)


@functools.cache
def _huge_block() -> bytes:
    line = b"<p>Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.</p>\n"
    return line * (64 * 1024 // len(line))


class Site:
    def __init__(self, server: _Server) -> None:
        self._server = server
        self.port = server.server_port
        self.base = f"http://127.0.0.1:{self.port}"
        self.requests: list[tuple[str, dict[str, str]]] = server.requests

    def url(self, path: str) -> str:
        return self.base + path

    def headers_for(self, path: str) -> list[dict[str, str]]:
        """Request headers of every request received for `path` (request target, query included)."""
        with self._server.lock:
            return [headers for target, headers in self.requests if target == path]


class _Server(LoopbackServer):
    def __init__(self) -> None:
        super().__init__(_Handler)
        self.requests: list[tuple[str, dict[str, str]]] = []

    def record(self, target: str, headers: dict[str, str]) -> None:
        with self.lock:
            self.requests.append((target, headers))


class _Handler(TrackedHandler):
    server: _Server
    timeout = 30  # an idle kept-alive connection cannot hold a thread forever

    def do_GET(self) -> None:
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        self.server.record(self.path, headers)
        parts = urlsplit(self.path)
        try:
            self._route(parts.path, parse_qs(parts.query), headers)
        except (BrokenPipeError, ConnectionError, TimeoutError):
            self.close_connection = True

    # --- responses ---------------------------------------------------------------------------------

    def _send(self, status: int, headers: Iterable[tuple[str, str]], body: bytes = b"") -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        if status not in (204, 304):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if status not in (204, 304):
            self.wfile.write(body)

    def _html(self, status: int, body: bytes, *extra: tuple[str, str]) -> None:
        self._send(status, [("Content-Type", "text/html; charset=utf-8"), *extra], body)

    def _redirect(self, location: str, *extra: tuple[str, str]) -> None:
        self._send(302, [("Location", location), ("Content-Type", "text/html; charset=utf-8"), *extra])

    def _not_found(self) -> None:
        self._html(404, _page("Not found", "<h1>Not found</h1>"))

    def _start_chunked(self, content_type: str, *extra: tuple[str, str]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        for name, value in extra:
            self.send_header(name, value)
        self.end_headers()

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _end_chunked(self) -> None:
        self.wfile.write(b"0\r\n\r\n")

    # --- routes ------------------------------------------------------------------------------------

    def _route(self, path: str, query: dict[str, list[str]], headers: dict[str, str]) -> None:
        fixed: dict[str, Callable[[], None]] = {
            "/redirect-loop": lambda: self._redirect("/redirect-loop"),
            "/huge.html": self._huge,
            "/gzip-bomb": self._gzip_bomb,
            "/file.pdf": lambda: self._send(200, [("Content-Type", "application/pdf")], PDF_BODY),
            "/image.png": lambda: self._send(200, [("Content-Type", "image/png")], PNG_BODY),
            "/slow": lambda: self._drip(None),
            "/declared-huge": lambda: self._drip(HUGE_BYTES),
            "/no-content-type": lambda: self._send(200, [], NO_CONTENT_TYPE_PAGE),
            "/latin1": lambda: self._send(200, [("Content-Type", "text/html")], LATIN1_PAGE),
            "/echo-headers": lambda: self._echo(headers),
            "/redirect-to": lambda: self._redirect_to(query),
        }
        if path in fixed:
            fixed[path]()
        elif path.startswith("/pages/"):
            # ?delay_ms=N holds the response back (at most MAX_DELAY_MS): a scan that is seen running.
            delay_ms = query.get("delay_ms", ["0"])[0]
            delay = min(int(delay_ms), MAX_DELAY_MS) / 1000 if delay_ms.isdigit() else 0.0
            if not (delay and self.server.stopping.wait(delay)):
                self._file(path.removeprefix("/pages/"), headers)
        elif path.startswith("/redirect/"):
            self._chain(path.removeprefix("/redirect/"))
        elif path.startswith("/status/"):
            self._status(path.removeprefix("/status/"))
        else:
            self._not_found()

    def _file(self, name: str, headers: dict[str, str]) -> None:
        path = (PAGES_DIR / name).resolve()
        if not name or not path.is_relative_to(PAGES_DIR) or not path.is_file():
            self._not_found()
            return
        body = path.read_bytes()
        if path.suffix == ".html":
            content_type = "text/html; charset=utf-8"
        else:
            content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        extra = [("Content-Type", content_type), ("Vary", "Accept-Encoding")]
        if path.suffix == ".html" and _accepts_gzip(headers.get("accept-encoding", "")):
            body = gzip.compress(body, mtime=0)
            extra.append(("Content-Encoding", "gzip"))
        self._send(200, extra, body)

    def _chain(self, raw: str) -> None:
        if not raw.isdigit() or int(raw) > MAX_REDIRECT_CHAIN:
            self._not_found()
            return
        hops = int(raw)
        location = f"/redirect/{hops - 1}" if hops > 1 else "/pages/article.html"
        # A cookie on every hop: the fetcher must never send it back.
        self._redirect(location, ("Set-Cookie", f"hop={hops}; Path=/"))

    def _redirect_to(self, query: dict[str, list[str]]) -> None:
        location = query.get("location", [""])[0]
        if not location or "\r" in location or "\n" in location:
            self._html(400, _page("Bad request", "<p>location is required</p>"))
            return
        self._redirect(location)

    def _status(self, raw: str) -> None:
        code = int(raw) if raw.isdigit() else 0
        if not 200 <= code <= 599:
            self._not_found()
            return
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "Unknown"
        self._html(code, _page(f"{code} {phrase}", f"<h1>{code} {html.escape(phrase)}</h1>"))

    def _echo(self, headers: dict[str, str]) -> None:
        rows = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in headers.items())
        self._html(200, _page("Request headers", f"<h1>Request headers</h1><dl>{rows}</dl>"))

    def _huge(self) -> None:
        self._start_chunked("text/html; charset=utf-8")
        self._chunk(b"<!doctype html><html><head><title>huge</title></head><body>\n")
        block = _huge_block()
        for _ in range(HUGE_BYTES // len(block) + 1):
            if self.server.stopping.is_set():
                break
            self._chunk(block)
        self._chunk(b"</body></html>\n")
        self._end_chunked()

    def _gzip_bomb(self) -> None:
        headers = [("Content-Type", "text/html"), ("Content-Encoding", "gzip")]
        self._send(200, headers, gzip_bomb())

    def _drip(self, declared_length: int | None) -> None:
        """Headers at once, then one byte every DRIP_INTERVAL until done, disconnected or stopping."""
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        if declared_length is None:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(declared_length))
        self.end_headers()
        self.wfile.flush()
        for _ in range(DRIP_BYTES):
            if self.server.stopping.wait(DRIP_INTERVAL):
                break
            if declared_length is None:
                self._chunk(b" ")
            else:
                self.wfile.write(b" ")
                self.wfile.flush()
        else:
            if declared_length is None:
                self._end_chunked()
        # A declared length is never reached and a stop cuts the body short: do not reuse the connection.
        self.close_connection = True


def _accepts_gzip(accept_encoding: str) -> bool:
    for item in accept_encoding.split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip().lower() == "gzip":
            return params.replace(" ", "").lower() not in {"q=0", "q=0.0", "q=0.00", "q=0.000"}
    return False


@contextlib.contextmanager
def serve_site() -> Iterator[Site]:
    server = _Server()
    with running(server, "test-site"):
        yield Site(server)
