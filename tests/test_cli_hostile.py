"""The `pagelens` command against what a scanned page or a hostile server can send it: text that
would act on the terminal or be read as rich markup, answers too large, endless lines, streams that
end at once. Served from a small HTTP server on loopback, with the client in this process."""

from __future__ import annotations

import contextlib
import io
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from rich.console import Console

from app.cli.client import EMPTY_STREAM_PAUSE, MAX_ANSWER_BYTES, MAX_EVENT_LINE, Client, Unavailable
from app.cli.report import render_list, render_status

SCAN_ID = str(uuid.uuid4())
# What a page can make a scan say: an OSC 52 clipboard write, a screen clear, an OSC 8 hyperlink,
# rich markup that would open a link or close a tag nobody opened, and a C1 control (CSI).
HOSTILE_URL = "http://example.com/\x1b]52;c;cHduZWQ=\x07[link=https://evil.example/]login[/link]"
HOSTILE_MESSAGE = "the page is image/[/x], not HTML\x1b[2J\x9b31m"


def status_json(status: str = "FAILED", **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "scanId": SCAN_ID,
        "url": HOSTILE_URL,
        "status": status,
        "stage": None,
        "progress": 100,
        "error": {"type": "unsupported_content", "message": HOSTILE_MESSAGE, "retryable": False},
        "traceId": None,
        "attempts": 1,
        "createdAt": "2026-12-03T10:00:00Z",
        "updatedAt": "2026-12-03T10:00:01Z",
        "timings": {},
    }
    return {**body, **changes}


Answer = Callable[[BaseHTTPRequestHandler], None]


@pytest.fixture
def serve() -> Iterator[Callable[[Answer], str]]:
    """serve(answer) -> base URL of a server answering every GET with `answer(handler)`."""
    servers: list[ThreadingHTTPServer] = []

    def start(answer: Answer) -> str:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with contextlib.suppress(BrokenPipeError, ConnectionError):  # the client gave up
                    answer(self)

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def send(handler: BaseHTTPRequestHandler, body: bytes, content_type: str = "application/json") -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def terminal() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=True, color_system="truecolor", width=200), out


def test_a_scans_text_reaches_the_terminal_as_text(serve: Callable[[Answer], str]) -> None:
    base = serve(lambda handler: send(handler, json.dumps(status_json()).encode()))
    with contextlib.closing(Client(base)) as client:
        status = client.status(SCAN_ID)
    console, out = terminal()
    render_status(console, status)  # "[/x]" closing no tag was a MarkupError here
    render_list(console, [status])
    printed = out.getvalue()
    assert "image/[/x]" in printed and "[link=https://evil.example/]" in printed
    for injected in ("\x1b]52", "\x1b[2J", "\x9b", "\x1b]8;", "\x07"):
        assert injected not in printed, repr(injected)


def flood(content_type: str, start: bytes, fill: bytes, total: int) -> Answer:
    """An answer of `start`, then `fill` past `total` bytes, with no length: it would go on for as
    long as it is read."""

    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", content_type)
        handler.end_headers()
        handler.wfile.write(start)
        chunk = fill * (256 * 1024)
        for _ in range(total // len(chunk) + 2):
            handler.wfile.write(chunk)

    return answer


def test_an_answer_past_the_limit_is_refused_unread(serve: Callable[[Answer], str]) -> None:
    base = serve(flood("application/json", b"", b" ", MAX_ANSWER_BYTES))
    with contextlib.closing(Client(base)) as client, pytest.raises(Unavailable, match="larger than"):
        client.status(SCAN_ID)


def test_an_event_line_past_the_limit_ends_the_wait(serve: Callable[[Answer], str]) -> None:
    base = serve(flood("text/event-stream", b"data: ", b"x", MAX_EVENT_LINE))
    with contextlib.closing(Client(base)) as client, pytest.raises(Unavailable, match="longer than"):
        list(client.follow(SCAN_ID))


def test_streams_that_end_at_once_are_resumed_after_a_pause(
    serve: Callable[[Answer], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    streams = iter([b"", b": keep-alive\n\n", b""])
    done = f"id: 7\ndata: {json.dumps(status_json('CANCELLED', error=None))}\n\n".encode()

    def stream(handler: BaseHTTPRequestHandler) -> None:
        send(handler, next(streams, done), "text/event-stream")

    pauses: list[float] = []
    sleep, caller = time.sleep, threading.get_ident()

    def pause(seconds: float) -> None:  # the client's pauses are recorded; other threads still sleep
        if threading.get_ident() == caller:
            pauses.append(seconds)
        else:
            sleep(seconds)

    monkeypatch.setattr(time, "sleep", pause)  # the module the client sleeps through
    with contextlib.closing(Client(serve(stream))) as client:
        seen = [status.status.value for status in client.follow(SCAN_ID)]
    assert seen == ["CANCELLED"]
    assert pauses == [EMPTY_STREAM_PAUSE] * 3  # one per stream that ended without an event
