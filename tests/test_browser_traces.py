"""POST /v1/traces: browser spans in, validated, forwarded to a real OTLP receiver (tests/otlp.py).

The API runs in the test's loop with PAGELENS_BROWSER_TRACES_ENDPOINT pointing at the receiver, so
whatever the API forwards is decoded there exactly as a collector would see it.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import gzip
import json
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import grpc
import httpx
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

from app.api.browser_spans import BROWSER_SERVICE, MAX_SPANS, MAX_STRING, InvalidSpans, decode
from app.api.limits import RateLimit
from app.api.span_forwarding import BrowserTraces
from app.core import keys
from app.core.settings import Settings
from observability.otlp_http import PROTOBUF
from tests.conftest import serve_api
from tests.otlp import OTLPReceiver, serve_otlp

PATH = "/v1/traces"
SPAN_TIMEOUT = 15.0


def json_export(trace_id: str, span_id: str, parent: str | None = None, **span: Any) -> dict[str, Any]:
    """An ExportTraceServiceRequest as the OpenTelemetry JS OTLP/HTTP JSON exporter writes one."""
    body: dict[str, Any] = {
        "traceId": trace_id,
        "spanId": span_id,
        "name": "user.create_scan_request",
        "kind": 1,
        "startTimeUnixNano": "1700000000000000000",
        "endTimeUnixNano": "1700000000250000000",
        "attributes": [
            {"key": "pagelens.scan_id", "value": {"stringValue": "6f1c"}},
            {"key": "http.response.status_code", "value": {"intValue": 202}},
            {"key": "ok", "value": {"boolValue": True}},
            {"key": "nested", "value": {"kvlistValue": {"values": []}}},
        ],
        "droppedAttributesCount": 0,
        "events": [{"timeUnixNano": "1700000000100000000", "name": "submitted", "attributes": []}],
        "links": [],
        "status": {"code": 0},
        **span,
    }
    if parent:
        body["parentSpanId"] = parent
    return {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [
                        # A page may claim anything; it is recorded as the web page all the same.
                        {"key": "service.name", "value": {"stringValue": "pagelens-api"}},
                        {"key": "telemetry.sdk.language", "value": {"stringValue": "webjs"}},
                    ],
                    "droppedAttributesCount": 0,
                },
                "scopeSpans": [{"scope": {"name": "pagelens-web", "version": "1"}, "spans": [body]}],
            }
        ]
    }


def ids() -> tuple[str, str]:
    return secrets.token_hex(16), secrets.token_hex(8)


@pytest.fixture(scope="module")
def receiver() -> Any:
    with serve_otlp() as r:
        yield r


@pytest.fixture
def open_api(settings: Settings, receiver: OTLPReceiver) -> Callable[..., Any]:
    @contextlib.asynccontextmanager
    async def start(**changes: Any) -> AsyncIterator[httpx.AsyncClient]:
        endpoint = {"browser_traces_endpoint": f"{receiver.endpoint}{PATH}"}
        api_settings = settings.with_(**{**endpoint, **changes})
        async with serve_api(api_settings) as base, httpx.AsyncClient(base_url=base, timeout=10) as client:
            yield client

    return start


async def test_json_spans_are_forwarded_as_the_web_page(open_api: Any, receiver: OTLPReceiver) -> None:
    trace_id, span_id = ids()
    _, child_id = ids()
    export = json_export(trace_id, span_id)
    child = copy.deepcopy(json_export(trace_id, child_id, parent=span_id, name="HTTP POST", kind=3))
    export["resourceSpans"][0]["scopeSpans"][0]["spans"].append(child["resourceSpans"][0]["scopeSpans"][0]["spans"][0])
    async with open_api() as client:
        response = await client.post(PATH, content=json.dumps(export), headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json" and response.json() == {}

    spans = receiver.wait_for(lambda s: len([x for x in s if x.trace_id == trace_id]) == 2, SPAN_TIMEOUT)
    by_name = {s.name: s for s in spans if s.trace_id == trace_id}
    root, fetch = by_name["user.create_scan_request"], by_name["HTTP POST"]
    assert (root.span_id, root.parent_span_id, root.kind) == (span_id, None, "INTERNAL")
    assert (fetch.span_id, fetch.parent_span_id, fetch.kind) == (child_id, span_id, "CLIENT")
    assert root.service_name == BROWSER_SERVICE and fetch.service_name == BROWSER_SERVICE
    assert root.scope_name == "pagelens-web"
    # Primitives kept, a nested map dropped quietly.
    assert root.attributes == {"pagelens.scan_id": "6f1c", "http.response.status_code": 202, "ok": True}
    assert not receiver.rejected


async def test_protobuf_and_gzip_are_accepted(open_api: Any, receiver: OTLPReceiver) -> None:
    trace_id, span_id = ids()
    request = trace_service_pb2.ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add()
    span.trace_id, span.span_id = bytes.fromhex(trace_id), bytes.fromhex(span_id)
    span.name, span.kind = "documentLoad", trace_pb2.Span.SPAN_KIND_INTERNAL
    span.start_time_unix_nano, span.end_time_unix_nano = 1, 2
    span.status.code = trace_pb2.Status.STATUS_CODE_ERROR
    span.status.message = "boom"
    body = request.SerializeToString()
    async with open_api() as client:
        plain = await client.post(PATH, content=body, headers={"content-type": "application/x-protobuf"})
        zipped = await client.post(
            PATH,
            content=gzip.compress(body),
            headers={"content-type": "application/x-protobuf", "content-encoding": "gzip"},
        )
    for response in (plain, zipped):
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/x-protobuf"
        trace_service_pb2.ExportTraceServiceResponse().ParseFromString(response.content)
    spans = receiver.wait_for(lambda s: len([x for x in s if x.trace_id == trace_id]) == 2, SPAN_TIMEOUT)
    assert {(s.name, s.status_code) for s in spans if s.trace_id == trace_id} == {("documentLoad", "ERROR")}


async def test_tracestate_links_and_their_attributes_arrive(open_api: Any, receiver: OTLPReceiver) -> None:
    """The checked request itself is forwarded: nothing the SDK's span model would lose goes missing."""
    trace_id, span_id = ids()
    linked_trace, linked_span = ids()
    link = {
        "traceId": linked_trace,
        "spanId": linked_span,
        "traceState": "vendor=linked",
        "attributes": [
            {"key": "link.reason", "value": {"stringValue": "retry of"}},
            {"key": "link.attempt", "value": {"intValue": 2}},
            {"key": "link.bytes", "value": {"bytesValue": "AAEC"}},  # bytes are dropped like nested maps
        ],
    }
    export = json_export(trace_id, span_id, traceState="pagelens=1,vendor=abc", links=[link])
    resource = export["resourceSpans"][0]["resource"]["attributes"]
    resource.append({"key": "browser.language", "value": {"stringValue": "de-CH"}})
    async with open_api() as client:
        response = await client.post(PATH, content=json.dumps(export), headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text

    receiver.wait_for(lambda s: any(x.trace_id == trace_id for x in s), SPAN_TIMEOUT)
    span = next(x for x in receiver.spans if x.trace_id == trace_id)
    assert span.trace_state == "pagelens=1,vendor=abc"
    assert span.links == [(linked_trace, linked_span)]
    assert span.link_attributes == [{"link.reason": "retry of", "link.attempt": 2}]
    # The page's own resource attributes stay; service.name is set over its claim, exactly once.
    assert span.resource == {
        "telemetry.sdk.language": "webjs",
        "browser.language": "de-CH",
        "service.name": BROWSER_SERVICE,
        "pagelens.tenant": "default",  # the open API's one tenant
    }


def test_values_are_trimmed_not_refused() -> None:
    trace_id, span_id = ids()
    long = "x" * (MAX_STRING + 100)
    export = json_export(
        trace_id,
        span_id,
        name="n",
        attributes=[
            {"key": "long", "value": {"stringValue": long}},
            {"key": "list", "value": {"arrayValue": {"values": [{"intValue": 1}, {"intValue": 2}]}}},
            {"key": "mixed", "value": {"arrayValue": {"values": [{"intValue": 1}, {"stringValue": "a"}]}}},
        ],
        kind=42,
        status={"code": 7, "message": "?"},
    )
    request = decode(json.dumps(export).encode(), "application/json")
    span = request.resource_spans[0].scope_spans[0].spans[0]
    values = {kv.key: kv.value for kv in span.attributes}
    assert set(values) == {"long", "list"}
    assert len(values["long"].string_value) == MAX_STRING
    assert [v.int_value for v in values["list"].array_value.values] == [1, 2]
    assert span.kind == trace_pb2.Span.SPAN_KIND_INTERNAL and span.status.code == trace_pb2.Status.STATUS_CODE_UNSET


def _with_span(**changes: Any) -> bytes:
    trace_id, span_id = ids()
    return json.dumps(json_export(trace_id, span_id, **changes)).encode()


BAD_BODIES: dict[str, tuple[bytes, int, str]] = {
    "malformed JSON": (b"{not json", 400, "invalid-traces"),
    "not an export request": (b'{"resourceSpans": "x"}', 400, "invalid-traces"),
    # Containers without spans, each of which would be checked and given the resource attributes:
    # a few hundred bytes gzipped held the event loop for seconds and forwarded megabytes.
    "too many resourceSpans": (json.dumps({"resourceSpans": [{}] * 17}).encode(), 400, "invalid-traces"),
    "too many scopeSpans": (json.dumps({"resourceSpans": [{"scopeSpans": [{}] * 65}]}).encode(), 400, "invalid-traces"),
    "all-zero trace id": (
        json.dumps(json_export("0" * 32, secrets.token_hex(8))).encode(),
        400,
        "invalid-traces",
    ),
    "short span id": (json.dumps(json_export(secrets.token_hex(16), "abcd")).encode(), 400, "invalid-traces"),
    "non-hex id": (json.dumps(json_export("z" * 32, secrets.token_hex(8))).encode(), 400, "invalid-traces"),
    "ends before it starts": (_with_span(endTimeUnixNano="1"), 400, "invalid-traces"),
    "no name": (_with_span(name=""), 400, "invalid-traces"),
    "huge tracestate": (_with_span(traceState="k=" + "v" * 600), 400, "invalid-traces"),
    "all-zero link id": (
        _with_span(links=[{"traceId": "0" * 32, "spanId": secrets.token_hex(8)}]),
        400,
        "invalid-traces",
    ),
    "too many attributes": (
        _with_span(attributes=[{"key": f"k{i}", "value": {"intValue": i}} for i in range(65)]),
        400,
        "invalid-traces",
    ),
}


async def test_bad_bodies_are_refused_and_never_forwarded(open_api: Any, receiver: OTLPReceiver) -> None:
    many = json_export(*ids())
    template = many["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    many["resourceSpans"][0]["scopeSpans"][0]["spans"] = [
        {**template, "spanId": secrets.token_hex(8)} for _ in range(MAX_SPANS + 1)
    ]
    cases = {**BAD_BODIES, "too many spans": (json.dumps(many).encode(), 400, "invalid-traces")}
    exports_before = receiver.exports
    async with open_api(browser_traces_max_bytes=1024 * 1024, browser_traces_per_minute=1000) as client:
        for case, (body, status, code) in cases.items():
            response = await client.post(PATH, content=body, headers={"content-type": "application/json"})
            assert response.status_code == status, (case, response.status_code, response.text)
            assert response.headers["content-type"] == "application/problem+json", case
            assert response.json()["type"] == f"urn:pagelens:problem:{code}", (case, response.text)

        # Size: declared, streamed, and a gzip bomb that inflates past the limit.
        big = b"{" + b" " * (1024 * 1024) + b"}"
        response = await client.post(PATH, content=big, headers={"content-type": "application/json"})
        assert response.status_code == 413, response.text

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(40):
                yield b" " * 32 * 1024

        response = await client.post(PATH, content=chunks(), headers={"content-type": "application/json"})
        assert response.status_code == 413, response.text
        bomb = gzip.compress(b" " * (8 * 1024 * 1024))
        response = await client.post(
            PATH, content=bomb, headers={"content-type": "application/json", "content-encoding": "gzip"}
        )
        assert response.status_code == 413, response.text
        response = await client.post(
            PATH, content=b"not gzip", headers={"content-type": "application/json", "content-encoding": "gzip"}
        )
        assert response.status_code == 400, response.text

        # Media types and encodings.
        for headers in ({"content-type": "text/plain"}, {"content-type": "application/json", "content-encoding": "br"}):
            response = await client.post(PATH, content=b"{}", headers=headers)
            assert response.status_code == 415, (headers, response.text)
    assert receiver.exports == exports_before, "a refused body reached the collector"


async def test_exports_are_rate_limited_per_client(open_api: Any) -> None:
    body = _with_span()
    async with open_api(browser_traces_per_minute=3) as client:
        statuses = [
            (await client.post(PATH, content=body, headers={"content-type": "application/json"})).status_code
            for _ in range(3)
        ]
        refused = await client.post(PATH, content=body, headers={"content-type": "application/json"})
    assert statuses == [200, 200, 200]
    assert refused.status_code == 429 and refused.json()["type"] == "urn:pagelens:problem:rate-limited"
    assert refused.headers["retry-after"] == "20"  # one token back at 3 a minute


async def test_disabled_without_an_endpoint(settings: Settings) -> None:
    # The session's settings export nowhere over OTLP, and name no browser endpoint.
    assert not settings.browser_traces_enabled
    async with serve_api(settings) as base, httpx.AsyncClient(base_url=base) as client:
        response = await client.post(PATH, content=_with_span(), headers={"content-type": "application/json"})
    assert response.status_code == 404 and response.json()["type"] == "urn:pagelens:problem:disabled"
    assert not settings.with_(
        browser_traces_endpoint="http://127.0.0.1:1/v1/traces", browser_traces=False
    ).browser_traces_enabled
    assert settings.with_(otel_exporter_otlp_endpoint="http://127.0.0.1:4318").browser_traces_enabled
    assert not settings.with_(
        otel_exporter_otlp_endpoint="http://127.0.0.1:4318", otel_traces_exporter=("console",)
    ).browser_traces_enabled


async def test_api_keys_cover_browser_traces(open_api: Any) -> None:
    async with open_api(api_keys=("k1",)) as client:
        headers = {"content-type": "application/json"}
        refused = await client.post(PATH, content=_with_span(), headers=headers)
        accepted = await client.post(PATH, content=_with_span(), headers={**headers, "authorization": "Bearer k1"})
        page = await client.get("/")
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
    assert accepted.status_code == 200, accepted.text
    assert page.status_code == 200, "the web page itself stays open"


async def test_spans_sent_with_a_key_carry_its_tenant(
    open_api: Any, receiver: OTLPReceiver, migrated_database: Any
) -> None:
    """A stored key's tenant becomes the resource attribute pagelens.tenant; a page cannot claim one."""
    dsn = await migrated_database()  # a database of its own: a stored key turns authentication on
    conn = await asyncpg.connect(dsn)
    try:
        secret = (await keys.create(conn, "web page", "acme")).secret
    finally:
        await conn.close()
    trace_id, span_id = ids()
    export = json_export(trace_id, span_id)
    export["resourceSpans"][0]["resource"]["attributes"].append(
        {"key": "pagelens.tenant", "value": {"stringValue": "someone-else"}}
    )
    async with open_api(database_url=dsn) as client:
        headers = {"content-type": "application/json", "authorization": f"Bearer {secret}"}
        response = await client.post(PATH, content=json.dumps(export), headers=headers)
    assert response.status_code == 200, response.text
    spans = receiver.wait_for(lambda s: any(x.trace_id == trace_id for x in s), SPAN_TIMEOUT)
    (span,) = [s for s in spans if s.trace_id == trace_id]
    assert span.resource["pagelens.tenant"] == "acme" and span.service_name == "pagelens-web"


def test_rate_limit_refills_and_stays_bounded() -> None:
    limit = RateLimit(per_minute=2, max_clients=4)
    assert [limit.wait("a", now=0.0) for _ in range(2)] == [0.0, 0.0]
    assert limit.wait("a", now=0.0) == pytest.approx(30.0)
    assert limit.wait("a", now=29.0) == pytest.approx(1.0)
    assert limit.wait("a", now=30.5) == 0.0  # a token back after 30 s
    assert limit.wait("b", now=30.5) == 0.0  # another client has its own bucket
    for client in "cdefgh":
        limit.wait(client, now=31.0)
    assert len(limit.buckets) <= 4


def _proto_export() -> tuple[str, bytes]:
    trace_id, span_id = ids()
    return trace_id, json.dumps(json_export(trace_id, span_id, traceState="vendor=grpc")).encode()


async def test_without_a_browser_endpoint_spans_follow_the_otlp_settings(
    settings: Settings, receiver: OTLPReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OTLP/HTTP: OTEL_EXPORTER_OTLP_ENDPOINT plus /v1/traces, gzip when OTEL_EXPORTER_OTLP_COMPRESSION says so."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")
    api_settings = settings.with_(otel_exporter_otlp_endpoint=receiver.endpoint + "/", otel_traces_exporter=("otlp",))
    trace_id, body = _proto_export()
    async with serve_api(api_settings) as base, httpx.AsyncClient(base_url=base, timeout=10) as client:
        response = await client.post(PATH, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    spans = receiver.wait_for(lambda s: any(x.trace_id == trace_id for x in s), SPAN_TIMEOUT)
    assert [s.trace_state for s in spans if s.trace_id == trace_id] == ["vendor=grpc"]


class _GrpcCollector(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.metadata: list[dict[str, str | bytes]] = []
        self.received = asyncio.Event()

    async def Export(  # the generated servicer's method name
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.requests.append(request)
        self.metadata.append(dict(context.invocation_metadata() or ()))
        self.received.set()
        return trace_service_pb2.ExportTraceServiceResponse()


async def test_grpc_protocol_forwards_over_grpc_with_the_otlp_headers(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    collector = _GrpcCollector()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "X-Collector-Key=s3cret")
        api_settings = settings.with_(
            otel_exporter_otlp_endpoint=f"http://127.0.0.1:{port}",
            otel_traces_exporter=("otlp",),
            otel_exporter_otlp_protocol="grpc",
        )
        trace_id, body = _proto_export()
        async with serve_api(api_settings) as base, httpx.AsyncClient(base_url=base, timeout=10) as client:
            response = await client.post(PATH, content=body, headers={"content-type": "application/json"})
            assert response.status_code == 200, response.text
            await asyncio.wait_for(collector.received.wait(), SPAN_TIMEOUT)
    finally:
        await server.stop(None)
    [request] = collector.requests
    span = request.resource_spans[0].scope_spans[0].spans[0]
    assert (span.trace_id.hex(), span.trace_state) == (trace_id, "vendor=grpc")
    assert collector.metadata[0]["x-collector-key"] == "s3cret"


async def test_forwards_past_the_in_flight_bound_are_dropped() -> None:
    release = asyncio.Event()
    sent: list[trace_service_pb2.ExportTraceServiceRequest] = []

    async def slow_collector(request: trace_service_pb2.ExportTraceServiceRequest) -> None:
        await release.wait()
        sent.append(request)

    async def close() -> None:
        pass

    forwarder = BrowserTraces(slow_collector, close, per_minute=60, max_pending=2)
    requests = [decode(_proto_export()[1], "application/json") for _ in range(3)]
    accepted = [forwarder.forward(r, {"service.name": BROWSER_SERVICE}) for r in requests]
    assert accepted == [True, True, False]
    release.set()
    await forwarder.aclose()
    assert sent == requests[:2]


def test_a_flood_of_empty_containers_is_refused_before_it_is_walked() -> None:
    flood = b"\x0a\x00" * (256 * 1024)  # 262,144 empty resourceSpans in protobuf
    with pytest.raises(InvalidSpans, match="resourceSpans"):
        decode(flood, PROTOBUF)
    with pytest.raises(InvalidSpans, match="resourceSpans"):
        decode(json.dumps({"resource_spans": [{}] * 100_000}).encode(), "application/json")


def test_fields_a_newer_sdk_adds_are_ignored_and_empty_containers_dropped() -> None:
    trace_id, span_id = ids()
    export = json_export(trace_id, span_id, somethingNew=1)
    export["resourceSpans"][0]["scopeSpans"].append({"scope": {"name": "idle"}, "spans": []})
    export["resourceSpans"].append({"resource": {}, "scopeSpans": []})
    export["futureField"] = {"x": 1}
    request = decode(json.dumps(export).encode(), "application/json")
    assert [len(each.scope_spans) for each in request.resource_spans] == [1]
    assert request.resource_spans[0].scope_spans[0].spans[0].name == "user.create_scan_request"
    empty = decode(json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": []}]}]}).encode(), "application/json")
    assert len(empty.resource_spans) == 0


async def test_no_level_of_a_request_can_claim_a_tenant_or_service(open_api: Any, receiver: OTLPReceiver) -> None:
    trace_id, span_id = ids()
    claims = [
        {"key": "pagelens.tenant", "value": {"stringValue": "acme"}},
        {"key": "service.name", "value": {"stringValue": "pagelens-api"}},
    ]
    export = json_export(trace_id, span_id, attributes=[*claims, {"key": "kept", "value": {"intValue": 1}}])
    scope_spans = export["resourceSpans"][0]["scopeSpans"][0]
    scope_spans["scope"]["attributes"] = claims
    export["resourceSpans"][0]["resource"]["attributes"].extend(claims)
    async with open_api() as client:
        response = await client.post(PATH, content=json.dumps(export), headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    found = receiver.wait_for(lambda spans: any(x.trace_id == trace_id for x in spans), SPAN_TIMEOUT)
    [span] = [x for x in found if x.trace_id == trace_id]
    assert span.attributes == {"kept": 1}
    assert span.resource["pagelens.tenant"] == "default" and span.service_name == BROWSER_SERVICE
    assert sum(1 for key in span.resource if key == "pagelens.tenant") == 1
