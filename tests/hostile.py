"""A loopback web server of hostile and slow pages, beyond what the test site (tests/site.py) serves.

Every response is written byte by byte by the handler, so a test controls exactly what is wrong:
broken compression, lying lengths, floods of headers, bytes that are no HTTP at all, or a delay.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from urllib.parse import parse_qs, urlsplit

from tests.httpserver import LoopbackServer, TrackedHandler, running
from tests.site import PAGES_DIR

ARTICLE = (PAGES_DIR / "article.html").read_bytes()
PAGE = b"<!doctype html><html><head><title>%s</title></head><body><h1>%s</h1><p>%s</p></body></html>"
HEADER_FLOOD = 2000  # response header lines of ~100 bytes: far beyond any client's limit


def _parser_hostile() -> dict[str, bytes]:
    """Pages that are cheap to send and costly to parse: lexbor is quadratic on the first three
    (each takes minutes), and must cope with the other two. All are below the 5 MiB fetch cap."""
    article = ARTICLE.split(b"<body>", 1)[-1]
    return {
        # The adoption agency algorithm reopens every unclosed formatting element, again and again.
        "/nested-formatting": b"<html><body>" + b"<div><span><b>" * 100_000,
        "/deep-nesting": b"<html><body>" + b"<div>" * 200_000,
        "/many-attributes": b"<html><body><div " + b" ".join(b"a%d=x" % i for i in range(100_000)) + b">x</div>",
        "/giant-comment": b"<html><head><title>comment</title></head><body><!--" + b"-" * 4_000_000 + b"-->" + article,
        "/many-tables": b"<html><body>" + b"<table><tr><td>cell</td></tr></table>" * 5_000 + article,
    }


PARSER_HOSTILE = _parser_hostile()
PUNYCODE_BAIT = b"<title>puny</title><p>" + b"a" * 300_000 + b"-" + b"z" * 300_000 + b"</p>"
PUNYCODE_META_BAIT = b"<meta charset=punycode>" + PUNYCODE_BAIT


class Hostile:
    def __init__(self, server: _Server) -> None:
        self._server = server
        self.port = server.server_port
        self.base = f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base + path

    @property
    def allow(self) -> str:
        """The PAGELENS_FETCH_ALLOW_HOSTS entry that exempts exactly this server."""
        return f"127.0.0.1:{self.port}"

    def hits(self, path: str) -> int:
        with self._server.lock:
            return self._server.hits.get(path, 0)

    def paths(self) -> list[str]:
        """Every request target received (a proxied request's is an absolute URL)."""
        with self._server.lock:
            return list(self._server.hits)


class _Server(LoopbackServer):
    def __init__(self) -> None:
        super().__init__(_Handler)
        self.hits: dict[str, int] = {}

    def count(self, target: str) -> int:
        with self.lock:
            self.hits[target] = self.hits.get(target, 0) + 1
            return self.hits[target]


class _Handler(TrackedHandler):
    server: _Server
    timeout = 30

    def do_GET(self) -> None:
        hit = self.server.count(self.path)
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        routes: dict[str, Callable[[], None]] = {
            "/delay": lambda: self._delay(float(query.get("ms", "0")) / 1000, ARTICLE),
            # Slow on the first request of each distinct URL only: a page that times out once.
            "/slow-once": lambda: self._delay(float(query.get("ms", "0")) / 1000 if hit == 1 else 0.0, ARTICLE),
            "/bad-utf8": lambda: self._html(_page(b"caf\xe9 \xff\xfe broken", b"\xc3\x28 \xa0\xa1 \xf0\x28\x8c\x28")),
            "/bogus-charset": lambda: self._html(_page(b"bogus", b"a charset nobody knows"), "x-no-such-charset"),
            # Python's punycode decoder is quadratic: minutes of a blocked event loop if it were used.
            "/punycode": lambda: self._html(PUNYCODE_BAIT, "punycode"),
            "/punycode-meta": lambda: self._raw(200, [("Content-Type", "text/html")], PUNYCODE_META_BAIT),
            "/utf16-odd": lambda: self._html(_page(b"odd", b"an odd number of bytes") + b"!", "utf-16"),
            "/binary": lambda: self._html(bytes(range(256)) * 64),
            "/empty": lambda: self._html(b""),
            "/corrupt-gzip": lambda: self._encoded("gzip", b"\x1f\x8b\x08\x00garbage!"),
            "/brotli": lambda: self._encoded("br", b"\x0b\x02\x80hi\x03"),
            "/json": lambda: self._raw(200, [("Content-Type", "application/json")], b'{"html": false}'),
            "/octet-stream": lambda: self._raw(200, [("Content-Type", "application/octet-stream")], ARTICLE),
            "/header-flood": self._header_flood,
            "/short-body": lambda: self._lying_length(),
            "/not-http": lambda: self._write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n"),
        }  # fmt: skip
        handler = routes.get(parts.path)
        if parts.path in PARSER_HOSTILE:
            handler = functools.partial(self._html, PARSER_HOSTILE[parts.path])
        try:
            if handler is None:
                self._raw(404, [("Content-Type", "text/html")], _page(b"404", b"not found"))
            else:
                handler()
        except (BrokenPipeError, ConnectionError, TimeoutError):
            pass
        self.close_connection = True

    def _write(self, data: bytes) -> None:
        self.wfile.write(data)
        self.wfile.flush()

    def _raw(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        head = [f"HTTP/1.1 {status} X", *(f"{k}: {v}" for k, v in headers), f"Content-Length: {len(body)}"]
        self._write(("\r\n".join([*head, "Connection: close", "", ""])).encode("latin-1") + body)

    def _html(self, body: bytes, charset: str = "utf-8") -> None:
        self._raw(200, [("Content-Type", f"text/html; charset={charset}")], body)

    def _encoded(self, coding: str, body: bytes) -> None:
        self._raw(200, [("Content-Type", "text/html"), ("Content-Encoding", coding)], body)

    def _delay(self, seconds: float, body: bytes) -> None:
        if seconds and self.server.stopping.wait(seconds):
            return
        self._html(body)

    def _header_flood(self) -> None:
        lines = [f"X-Flood-{i}: {'x' * 90}" for i in range(HEADER_FLOOD)]
        self._write(("\r\n".join(["HTTP/1.1 200 OK", "Content-Type: text/html", *lines, "", ""])).encode())

    def _lying_length(self) -> None:
        head = "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 100000\r\n\r\n"
        self._write(head.encode() + b"<!doctype html><html><body>only this much")


def _page(title: bytes, text: bytes) -> bytes:
    return PAGE % (title, title, text)


@contextlib.contextmanager
def serve_hostile() -> Iterator[Hostile]:
    server = _Server()
    with running(server, "hostile-site"):
        yield Hostile(server)
