"""The OTLP/HTTP span exporter's sender (observability/otlp_http.py) against real HTTP servers on
loopback: the options from the environment, compression, retries, failures and shutdown."""

from __future__ import annotations

import contextlib
import gzip
import socket
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags

from observability.otlp_http import OTLPOptions, otlp_options
from observability.otlp_wire import WireSpanExporter, encode_request
from tests.httpserver import LoopbackServer, TrackedHandler, running

SPAN = ReadableSpan(
    name="GET /scans/{id}",
    context=SpanContext(0xAB, 0xCD, is_remote=False, trace_flags=TraceFlags(1)),
    resource=Resource.create({"service.name": "pagelens-api"}),
    attributes={"http.route": "/scans/{id}", "http.response.status_code": 200},
    kind=SpanKind.SERVER,
    start_time=1,
    end_time=2,
)


@dataclass
class Posted:
    headers: dict[str, str]
    body: bytes


@dataclass
class _Script:
    """Answers to give, in order (status, extra headers); 200 once they run out."""

    answers: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    posted: list[Posted] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Server(LoopbackServer):
    def __init__(self, script: _Script) -> None:
        super().__init__(_Handler)
        self.script = script


class _Handler(TrackedHandler):
    server: _Server
    timeout = 10.0

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with self.server.script.lock:
            self.server.script.posted.append(Posted({k.lower(): v for k, v in self.headers.items()}, body))
            status, extra = self.server.script.answers.pop(0) if self.server.script.answers else (200, {})
        self.send_response(status)
        for name, value in {"Content-Type": "application/x-protobuf", "Content-Length": "0", **extra}.items():
            self.send_header(name, value)
        self.end_headers()


@contextlib.contextmanager
def collector(*answers: tuple[int, dict[str, str]]) -> Iterator[tuple[str, _Script]]:
    script = _Script(list(answers))
    server = _Server(script)
    with running(server, "otlp-script"):
        yield f"http://127.0.0.1:{server.server_port}/v1/traces", script


def decoded(posted: Posted) -> ExportTraceServiceRequest:
    encoding = posted.headers.get("content-encoding", "identity")
    inflate: dict[str, Callable[[bytes], bytes]] = {"gzip": gzip.decompress, "deflate": zlib.decompress}
    body = inflate[encoding](posted.body) if encoding in inflate else posted.body
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    return request


def export(endpoint: str, options: OTLPOptions) -> SpanExportResult:
    exporter = WireSpanExporter(endpoint, options)
    try:
        return exporter.export([SPAN])
    finally:
        exporter.shutdown()


def test_the_options_come_from_the_traces_variables_first() -> None:
    options = otlp_options(
        {
            "OTEL_EXPORTER_OTLP_HEADERS": "x-base=1",
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "Authorization=Bearer%20t0k,x-tenant=acme",
            "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip",
            "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION": "Deflate",
            "OTEL_EXPORTER_OTLP_TIMEOUT": "3",
            "OTEL_EXPORTER_OTLP_CERTIFICATE": "/etc/ca.pem",
        }
    )
    assert options == OTLPOptions(
        headers={"authorization": "Bearer t0k", "x-tenant": "acme"},
        compression="deflate",
        timeout=3.0,
        certificate="/etc/ca.pem",
    )
    assert (
        otlp_options({"OTEL_EXPORTER_OTLP_COMPRESSION": "brotli", "OTEL_EXPORTER_OTLP_TIMEOUT": "soon"})
        == OTLPOptions()
    )


def test_export_reaches_the_collector_with_the_env_headers_and_each_compression() -> None:
    env = {"OTEL_EXPORTER_OTLP_HEADERS": "x-api-key=s3cret"}
    with collector() as (endpoint, script):
        for compression in ("none", "gzip", "deflate"):
            options = otlp_options({**env, "OTEL_EXPORTER_OTLP_COMPRESSION": compression})
            assert export(endpoint, options) is SpanExportResult.SUCCESS
    assert [p.headers.get("content-encoding", "identity") for p in script.posted] == ["identity", "gzip", "deflate"]
    assert {p.headers["content-type"] for p in script.posted} == {"application/x-protobuf"}
    assert {p.headers["x-api-key"] for p in script.posted} == {"s3cret"}
    expected = ExportTraceServiceRequest.FromString(encode_request([SPAN]))
    assert [decoded(p) for p in script.posted] == [expected] * 3
    assert expected.resource_spans[0].scope_spans[0].spans[0].name == "GET /scans/{id}"


def test_503_is_retried_then_succeeds() -> None:
    with collector((503, {}), (502, {})) as (endpoint, script):
        assert export(endpoint, OTLPOptions(timeout=30)) is SpanExportResult.SUCCESS
    assert len(script.posted) == 3
    assert decoded(script.posted[0]) == decoded(script.posted[2])


def test_429_waits_for_retry_after_then_succeeds(monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[float] = []
    real_wait = threading.Event.wait

    def recorded(event: threading.Event, timeout: float | None = None) -> bool:
        waits.append(timeout or 0.0)
        return real_wait(event, timeout)

    monkeypatch.setattr(threading.Event, "wait", recorded)
    with collector((429, {"Retry-After": "1"})) as (endpoint, script):
        assert export(endpoint, OTLPOptions(timeout=30)) is SpanExportResult.SUCCESS
    assert len(script.posted) == 2
    assert 1.0 in waits  # the server's delay, not the backoff's (1 s ± 20% jitter)


def test_a_retry_after_beyond_the_timeout_fails_without_waiting() -> None:
    with collector((503, {"Retry-After": "120"})) as (endpoint, script):
        assert export(endpoint, OTLPOptions(timeout=5)) is SpanExportResult.FAILURE
    assert len(script.posted) == 1


@pytest.mark.parametrize("status", [400, 404, 500])
def test_other_errors_fail_at_once(status: int, caplog: pytest.LogCaptureFixture) -> None:
    with collector((status, {}), (status, {})) as (endpoint, script):
        assert export(endpoint, OTLPOptions(timeout=30)) is SpanExportResult.FAILURE
    assert len(script.posted) == 1
    failures = [r for r in caplog.records if r.name == "pagelens.tracing" and "failed" in r.getMessage()]
    assert len(failures) == 1 and failures[0].exc_info is None
    assert f"HTTP {status}" in failures[0].getMessage()


def test_a_closed_port_fails_within_the_timeout() -> None:
    with socket.socket() as sock:  # a free port, closed again: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Connection refused is retried with backoff (1 s, 2 s...) until the next wait would pass the timeout.
    assert export(f"http://127.0.0.1:{port}/v1/traces", OTLPOptions(timeout=1.5)) is SpanExportResult.FAILURE


def test_export_after_shutdown_fails(caplog: pytest.LogCaptureFixture) -> None:
    with collector() as (endpoint, script):
        exporter = WireSpanExporter(endpoint, OTLPOptions())
        assert exporter.force_flush() is True
        exporter.shutdown()
        assert exporter.export([SPAN]) is SpanExportResult.FAILURE
    assert script.posted == []
    assert any("after shutdown" in r.getMessage() for r in caplog.records)
