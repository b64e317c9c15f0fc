"""A real OTLP/HTTP trace receiver for end-to-end tests: what a collector would see, decoded.

`POST /v1/traces` with `Content-Type: application/x-protobuf` (optionally gzip-encoded) is decoded
with the OTLP protobuf definitions and answered 200 with an empty `ExportTraceServiceResponse`,
exactly as an OpenTelemetry Collector answers. Every span is stored as a plain `Span`.

The server runs on 127.0.0.1 in a background thread (tests/httpserver.py). Each response closes its
connection, and stopping the server shuts down any connection still open, so no handler thread
outlives the receiver.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from app.api.browser_spans import inflate
from tests.httpserver import LoopbackServer, TrackedHandler, running

TRACES_PATH = "/v1/traces"
PROTOBUF = "application/x-protobuf"
MAX_BODY = 16 * 1024 * 1024  # compressed or not; far above any batch the SDK sends
READ_TIMEOUT = 10.0

# The proto's enum numbers mapped to the SDK's names (opentelemetry.trace.SpanKind / StatusCode).
KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}
STATUS_CODES = {0: "UNSET", 1: "OK", 2: "ERROR"}


@dataclass(frozen=True)
class Span:
    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    kind: str
    attributes: dict[str, Any]
    links: list[tuple[str, str]]
    status_code: str
    service_name: str | None
    scope_name: str = ""
    trace_state: str = ""
    link_attributes: list[dict[str, Any]] = field(default_factory=list)
    resource: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.service_name}:{self.kind}:{self.name!r} {self.span_id} <- {self.parent_span_id}"


def any_value(value: Any) -> Any:
    """An OTLP AnyValue as a plain Python value (nested arrays and key-value lists included)."""
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return key_values(value.kvlist_value.values)
    return getattr(value, which)


def key_values(pairs: Any) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in pairs}


def decode_request(body: bytes) -> list[Span]:
    """Every span of one ExportTraceServiceRequest; raises ValueError when the body is not one."""
    request = trace_service_pb2.ExportTraceServiceRequest()
    try:
        request.ParseFromString(body)
    except Exception as exc:  # google.protobuf.message.DecodeError, untyped
        raise ValueError(f"not an ExportTraceServiceRequest: {exc}") from None
    spans: list[Span] = []
    for resource_spans in request.resource_spans:
        resource = key_values(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(_span(span, resource, scope_spans.scope.name))
    return spans


def _span(span: Any, resource: dict[str, Any], scope: str) -> Span:
    parent: bytes = span.parent_span_id
    service = resource.get("service.name")
    return Span(
        trace_id=span.trace_id.hex(),
        span_id=span.span_id.hex(),
        parent_span_id=parent.hex() if parent else None,
        name=span.name,
        kind=KINDS.get(span.kind, str(span.kind)),
        attributes=key_values(span.attributes),
        links=[(link.trace_id.hex(), link.span_id.hex()) for link in span.links],
        status_code=STATUS_CODES.get(span.status.code, str(span.status.code)),
        service_name=service if isinstance(service, str) else None,
        scope_name=scope,
        trace_state=span.trace_state,
        link_attributes=[key_values(link.attributes) for link in span.links],
        resource=resource,
    )


@dataclass
class _Store:
    lock: threading.Condition = field(default_factory=threading.Condition)
    spans: list[Span] = field(default_factory=list)
    exports: int = 0
    rejected: list[str] = field(default_factory=list)


class _Server(LoopbackServer):
    def __init__(self, store: _Store) -> None:
        super().__init__(_Handler)
        self.store = store


class _Handler(TrackedHandler):
    server: _Server
    timeout = READ_TIMEOUT

    def do_GET(self) -> None:
        self._reply(405, b"only POST /v1/traces\n", "text/plain", ("Allow", "POST"))

    def do_POST(self) -> None:
        self.close_connection = True
        if self.path.split("?", 1)[0] != TRACES_PATH:
            self._reject(404, f"unknown path {self.path[:100]!r}")
            return
        content_type = (self.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
        if content_type != PROTOBUF:
            self._reject(415, f"content type {content_type!r}")
            return
        raw_length = self.headers.get("Content-Length")
        if raw_length is None or not raw_length.isdigit():
            self._reject(411, "no Content-Length")
            return
        length = int(raw_length)
        if length > MAX_BODY:
            self._reject(413, f"body of {length} bytes")
            return
        body = self.rfile.read(length)
        if len(body) != length:
            self._reject(400, "truncated body")
            return
        encoding = (self.headers.get("Content-Encoding") or "identity").strip().lower()
        try:
            if encoding == "gzip":
                body = inflate(body, MAX_BODY)  # the API's own bounded inflate
            elif encoding != "identity":
                self._reject(415, f"content encoding {encoding!r}")
                return
            spans = decode_request(body)
        except ValueError as exc:
            self._reject(400, str(exc))
            return
        with self.server.store.lock:
            self.server.store.spans.extend(spans)
            self.server.store.exports += 1
            self.server.store.lock.notify_all()
        response = trace_service_pb2.ExportTraceServiceResponse()
        self._reply(200, cast(bytes, response.SerializeToString()), PROTOBUF)

    def _reject(self, status: int, reason: str) -> None:
        with self.server.store.lock:
            self.server.store.rejected.append(f"{status} {reason}")
        self._reply(status, reason.encode() + b"\n", "text/plain")

    def _reply(self, status: int, body: bytes, content_type: str, *extra: tuple[str, str]) -> None:
        self.close_connection = True
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        for name, value in extra:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


class OTLPReceiver:
    """Start with `serve_otlp()`; `endpoint` is what OTEL_EXPORTER_OTLP_ENDPOINT should say."""

    def __init__(self, server: _Server) -> None:
        self._server = server
        self._store = server.store
        self.port: int = server.server_port
        self.endpoint = f"http://127.0.0.1:{self.port}"

    @property
    def spans(self) -> list[Span]:
        with self._store.lock:
            return list(self._store.spans)

    @property
    def exports(self) -> int:
        with self._store.lock:
            return self._store.exports

    @property
    def rejected(self) -> list[str]:
        """Requests answered with an error (wrong path, type, encoding or body), as 'status reason'."""
        with self._store.lock:
            return list(self._store.rejected)

    def trace(self, trace_id: str) -> list[Span]:
        return [s for s in self.spans if s.trace_id == trace_id]

    def wait_for(
        self, predicate: Callable[[list[Span]], bool], timeout: float, *, interval: float = 0.05
    ) -> list[Span]:
        """Every span so far once `predicate(spans)` holds; TimeoutError after about `timeout` s.

        Bounded twice over: by a deadline and by a number of wake-ups (each new export wakes it)."""
        deadline = time.monotonic() + timeout
        for _ in range(int(timeout / interval) + 1_000):
            with self._store.lock:
                spans = list(self._store.spans)
                if predicate(spans):
                    return spans
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._store.lock.wait(min(interval, remaining))
        spans = self.spans
        if predicate(spans):
            return spans
        raise TimeoutError(f"spans not as expected after {timeout} s ({len(spans)} received)")


@contextlib.contextmanager
def serve_otlp() -> Iterator[OTLPReceiver]:
    server = _Server(_Store())
    with running(server, "otlp-receiver"):
        yield OTLPReceiver(server)
