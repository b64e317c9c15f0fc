"""Local HTTP servers that speak the protocols of the external services we call (an OpenAI-compatible
chat completions API, PageSpeed Insights v5).

Each is the suite's loopback server (tests/httpserver.py) in a background thread: it records every
request and answers with a reply the test sets. They stay hand-written on purpose: they are real
HTTP servers the worker's real httpx clients talk to, and what they add on top (the protocols'
success documents, a slow reply cut short when the server stops) is a few lines each.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

from tests.httpserver import LoopbackServer, TrackedHandler, running

LLM_PATH = "/v1/chat/completions"
PSI_PATH = "/pagespeedonline/v5/runPagespeed"


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]  # last value of each parameter
    headers: dict[str, str]  # lower-cased names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    """What the server answers next. `body` None means "the protocol's normal success document"."""

    status: int = 200
    body: bytes | dict[str, Any] | None = None
    delay: float = 0.0  # seconds to stall before answering; cut short when the server stops
    content_type: str = "application/json"


class FakeServer(LoopbackServer):
    def __init__(self, path: str, success: Callable[[RecordedRequest], dict[str, Any]]) -> None:
        super().__init__(_Handler)
        self.path = path
        self.requests: list[RecordedRequest] = []
        self.reply = Reply()
        self._success = success

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"

    def set_reply(self, *, status: int = 200, body: bytes | dict[str, Any] | None = None, delay: float = 0.0) -> None:
        """Set the reply for every following request (until set again)."""
        self.reply = Reply(status=status, body=body, delay=delay)

    def respond(self, request: RecordedRequest) -> tuple[int, bytes, str]:
        with self.lock:
            self.requests.append(request)
            reply = self.reply
        if reply.delay:
            self.stopping.wait(reply.delay)  # stop() sets it: a slow reply never holds the test up
        if request.path != self.path:
            return 404, b'{"error": "not found"}', "application/json"
        body = reply.body
        if body is None:
            body = self._success(request) if reply.status < 400 else _google_error(reply.status)
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        return reply.status, raw, reply.content_type


class _Handler(TrackedHandler):
    server: FakeServer

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, raw, content_type = self.server.respond(RecordedRequest(self.command, parts.path, query, headers, body))
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)  # a client that gave up (its timeout fired) is the server's handle_error

    do_GET = do_POST = _handle


S = TypeVar("S", bound=FakeServer)


@contextmanager
def _serving(server: S) -> Iterator[S]:
    with running(server, f"fake-{server.path}"):
        yield server


def _google_error(status: int) -> dict[str, Any]:
    return {"error": {"code": status, "message": "Backend error (fake).", "status": "INTERNAL"}}


# --- OpenAI-compatible chat completions ----------------------------------------------------------


class FakeLlm(FakeServer):
    """POST {base_url}/chat/completions. `set_content` sets the assistant message text."""

    def __init__(self) -> None:
        super().__init__(LLM_PATH, self._completion)
        self.content = json.dumps(
            {"insights": [{"severity": "medium", "category": "content", "message": "Add a summary near the top."}]}
        )

    @property
    def base_url(self) -> str:
        return f"{self.origin}/v1"

    def set_content(self, content: str) -> None:
        self.content = content
        self.set_reply()

    def _completion(self, request: RecordedRequest) -> dict[str, Any]:
        model = request.json().get("model", "fake-model")
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": self.content}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
        }


@contextmanager
def serve_fake_llm() -> Iterator[FakeLlm]:
    with _serving(FakeLlm()) as server:
        yield server


# --- PageSpeed Insights v5 -----------------------------------------------------------------------


class FakePsi(FakeServer):
    """GET {base_url}?url=...&strategy=...; answers a Lighthouse-shaped document for the requested URL."""

    def __init__(self) -> None:
        super().__init__(PSI_PATH, lambda r: lighthouse_document(r.query.get("url", ""), r.query.get("strategy", "")))

    @property
    def base_url(self) -> str:
        return f"{self.origin}{PSI_PATH}"


@contextmanager
def serve_fake_psi() -> Iterator[FakePsi]:
    with _serving(FakePsi()) as server:
        yield server


def _audit(audit_id: str, title: str, value: float, unit: str, score: float) -> dict[str, Any]:
    display = f"{value / 1000:.1f}\u00a0s" if unit == "millisecond" else f"{value:.3f}"
    return {
        "id": audit_id,
        "title": title,
        "score": score,
        "scoreDisplayMode": "numeric",
        "displayValue": display,
        "numericValue": value,
        "numericUnit": unit,
    }


def _field_metric(percentile: int, category: str) -> dict[str, Any]:
    return {
        "percentile": percentile,
        "distributions": [
            {"min": 0, "max": 2500, "proportion": 0.8},
            {"min": 2500, "max": 4000, "proportion": 0.15},
            {"min": 4000, "proportion": 0.05},
        ],
        "category": category,
    }


def lighthouse_document(
    url: str, strategy: str, *, score: float | None = 0.87, field_data: bool = True
) -> dict[str, Any]:
    """A trimmed but faithful PSI v5 response (the fields we read, plus typical neighbours)."""
    audits = [
        _audit("first-contentful-paint", "First Contentful Paint", 1234.5, "millisecond", 0.9),
        _audit("largest-contentful-paint", "Largest Contentful Paint", 2345.6, "millisecond", 0.8),
        _audit("total-blocking-time", "Total Blocking Time", 150.0, "millisecond", 0.85),
        _audit("cumulative-layout-shift", "Cumulative Layout Shift", 0.0123, "unitless", 1.0),
        _audit("speed-index", "Speed Index", 3456.7, "millisecond", 0.7),
        _audit("interactive", "Time to Interactive", 4567.8, "millisecond", 0.75),
    ]
    document: dict[str, Any] = {
        "captchaResult": "CAPTCHA_NOT_NEEDED",
        "kind": "pagespeedonline#result",
        "id": url,
        "lighthouseResult": {
            "requestedUrl": url,
            "finalUrl": url,
            "lighthouseVersion": "12.0.0",
            "fetchTime": "2024-05-01T12:00:00.000Z",
            "configSettings": {"emulatedFormFactor": strategy, "formFactor": strategy, "locale": "en-US"},
            "audits": {a["id"]: a for a in audits},
            "categories": {
                "performance": {"id": "performance", "title": "Performance", "score": score, "auditRefs": []}
            },
        },
        "analysisUTCTimestamp": "2024-05-01T12:00:00.000Z",
    }
    if field_data:
        document["loadingExperience"] = {
            "id": url,
            "metrics": {
                "LARGEST_CONTENTFUL_PAINT_MS": _field_metric(2100, "FAST"),
                "CUMULATIVE_LAYOUT_SHIFT_SCORE": _field_metric(5, "FAST"),
                "INTERACTION_TO_NEXT_PAINT": _field_metric(180, "FAST"),
                "FIRST_CONTENTFUL_PAINT_MS": _field_metric(1500, "FAST"),
                "EXPERIMENTAL_TIME_TO_FIRST_BYTE": _field_metric(900, "AVERAGE"),
            },
            "overall_category": "FAST",
            "initial_url": url,
        }
    return document
