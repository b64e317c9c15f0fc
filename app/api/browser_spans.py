"""Spans from browsers (POST /v1/traces): decode, validate and forward them to the OTLP exporter.

The web page's OpenTelemetry SDK exports OTLP/HTTP (JSON, or protobuf from other exporters) to the
API rather than to a collector, so a browser needs no route to the collector and no CORS. Nothing
from a browser is trusted: the body is bounded before it is read, decoded strictly as an
`ExportTraceServiceRequest`, and every span is checked (ids, times, counts, sizes) before any is
kept. Accepted spans are re-encoded by the SDK's own exporter, the one the API uses (same
protocol, endpoint, headers, retries), behind a batch processor whose bounded queue drops rather
than grows when the collector is slow. Whatever a browser claims, its spans are recorded under the
service name `pagelens-web`, so no page can pose as the API or the worker.
"""

from __future__ import annotations

import base64
import json
import time
import zlib
from collections.abc import Sequence
from typing import Any, cast

from google.protobuf import json_format
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from app.core.settings import Settings
from observability.tracing import span_exporter

BROWSER_SERVICE = "pagelens-web"
PROTOBUF = "application/x-protobuf"
JSON = "application/json"
MAX_SPANS = 1000  # per request; the JS SDK's batches hold at most 512
MAX_NAME = 256
MAX_ATTRIBUTES = 64  # per span, event, link or resource
MAX_EVENTS = 64
MAX_LINKS = 16
MAX_STRING = 2048
ID_FIELDS = ("traceId", "spanId", "parentSpanId")


class InvalidSpans(ValueError):
    """The body is not an acceptable ExportTraceServiceRequest; the message says why."""


class BodyTooLarge(InvalidSpans):
    pass


def inflate(data: bytes, limit: int) -> bytes:
    """Un-gzip a body, refusing anything that inflates beyond `limit` (a gzip bomb stops there)."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise InvalidSpans(f"bad gzip body: {exc}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise BodyTooLarge(f"the body inflates beyond {limit} bytes")
    if not inflater.eof:
        raise InvalidSpans("truncated gzip body")
    return out


def decode(body: bytes, media_type: str) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    try:
        if media_type == PROTOBUF:
            request.ParseFromString(body)
        else:
            # OTLP/JSON is protobuf's JSON mapping except that ids are hex, not base64.
            json_format.ParseDict(_ids_to_base64(json.loads(body)), request)
    except (ValueError, json_format.ParseError, RecursionError) as exc:
        raise InvalidSpans(f"not an OTLP ExportTraceServiceRequest: {str(exc)[:200]}") from None
    except Exception as exc:  # protobuf's DecodeError is not a ValueError in every implementation
        raise InvalidSpans(f"not an OTLP ExportTraceServiceRequest: {type(exc).__name__}") from None
    return request


def _ids_to_base64(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: _hex_to_base64(v) if k in ID_FIELDS and isinstance(v, str) else _ids_to_base64(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_ids_to_base64(v) for v in value]
    return value


def _hex_to_base64(value: str) -> str:
    try:
        return base64.b64encode(bytes.fromhex(value)).decode()
    except ValueError:
        raise InvalidSpans(f"ids are hex strings, got {value[:40]!r}") from None


TENANT_ATTRIBUTE = "pagelens.tenant"


def spans_of(request: ExportTraceServiceRequest, tenant: str | None = None) -> list[ReadableSpan]:
    """Every span of the request as the SDK's ReadableSpan, or InvalidSpans for the first bad one.
    `tenant`: the sending key's tenant, set as a resource attribute (one a browser sent is dropped)."""
    spans: list[ReadableSpan] = []
    for resource_spans in request.resource_spans:
        attributes = {**_attributes(resource_spans.resource.attributes), "service.name": BROWSER_SERVICE}
        attributes.pop(TENANT_ATTRIBUTE, None)
        if tenant is not None:
            attributes[TENANT_ATTRIBUTE] = tenant
        resource = Resource(attributes)
        for scope_spans in resource_spans.scope_spans:
            scope = InstrumentationScope(scope_spans.scope.name[:MAX_NAME], scope_spans.scope.version[:MAX_NAME])
            for span in scope_spans.spans:
                if len(spans) == MAX_SPANS:
                    raise InvalidSpans(f"more than {MAX_SPANS} spans in one request")
                spans.append(_span(span, resource, scope))
    return spans


def _span(span: Any, resource: Resource, scope: InstrumentationScope) -> ReadableSpan:
    trace_id = _id(span.trace_id, 16, "traceId")
    context = SpanContext(trace_id, _id(span.span_id, 8, "spanId"), False, TraceFlags(TraceFlags.SAMPLED))
    parent = SpanContext(trace_id, _id(span.parent_span_id, 8, "parentSpanId"), False) if span.parent_span_id else None
    if not span.name or len(span.name) > MAX_NAME:
        raise InvalidSpans(f"a span name must have 1 to {MAX_NAME} characters")
    if not 0 < span.start_time_unix_nano <= span.end_time_unix_nano:
        raise InvalidSpans(f"span {span.name[:50]!r}: times must be set and end at or after the start")
    if len(span.events) > MAX_EVENTS or len(span.links) > MAX_LINKS:
        raise InvalidSpans(f"span {span.name[:50]!r}: at most {MAX_EVENTS} events and {MAX_LINKS} links")
    events = [Event(e.name[:MAX_NAME], _attributes(e.attributes), e.time_unix_nano) for e in span.events]
    links = [
        Link(SpanContext(_id(link.trace_id, 16, "link traceId"), _id(link.span_id, 8, "link spanId"), False))
        for link in span.links
    ]
    code = {1: StatusCode.OK, 2: StatusCode.ERROR}.get(span.status.code, StatusCode.UNSET)
    return ReadableSpan(
        name=span.name,
        context=context,
        parent=parent,
        resource=resource,
        attributes=_attributes(span.attributes),
        events=events,
        links=links,
        # The protobuf enum counts UNSPECIFIED as 0; the SDK's SpanKind starts at INTERNAL.
        kind=SpanKind(span.kind - 1) if 1 <= span.kind <= 5 else SpanKind.INTERNAL,
        status=Status(code, span.status.message[:MAX_STRING] or None) if code is StatusCode.ERROR else Status(code),
        start_time=span.start_time_unix_nano,
        end_time=span.end_time_unix_nano,
        instrumentation_scope=scope,
    )


def _id(raw: bytes, size: int, what: str) -> int:
    if len(raw) != size or not any(raw):
        raise InvalidSpans(f"{what} must be {size} bytes and not all zero")
    return int.from_bytes(raw, "big")


Primitive = str | bool | int | float


def _attributes(pairs: Sequence[KeyValue]) -> dict[str, Primitive | list[Primitive]]:
    if len(pairs) > MAX_ATTRIBUTES:
        raise InvalidSpans(f"at most {MAX_ATTRIBUTES} attributes per span, event, link or resource")
    # Only what the SDK can carry: primitives and arrays of one primitive type. Nested maps and
    # bytes are dropped quietly (the SDK would log a warning for each, a client could flood logs).
    out: dict[str, Primitive | list[Primitive]] = {}
    for pair in pairs:
        value: Primitive | list[Primitive] | None = _primitive(pair.value)
        if value is None and pair.value.HasField("array_value"):
            items = [_primitive(v) for v in pair.value.array_value.values[:MAX_ATTRIBUTES]]
            kinds = {type(i) for i in items}
            if len(kinds) == 1 and type(None) not in kinds:
                value = cast(list[Primitive], items)
        if value is not None and pair.key:
            out[pair.key[:MAX_NAME]] = value
    return out


def _primitive(value: AnyValue) -> Primitive | None:
    which = value.WhichOneof("value")
    if which == "string_value":
        return str(value.string_value[:MAX_STRING])
    if which in ("bool_value", "int_value", "double_value"):
        primitive: Primitive = getattr(value, which)
        return primitive
    return None


class RateLimit:
    """A token bucket per client address: `per_minute` requests a minute, bursts of as many.

    In process memory and per API process: a browser sends a batch every few seconds, so this only
    has to stop a runaway or hostile client. At most `max_clients` buckets are kept; full ones go first.
    """

    def __init__(self, per_minute: int, max_clients: int = 10_000) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.max_clients = max_clients
        self.buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, at)

    def wait(self, client: str, now: float | None = None) -> float:
        """0 when the request may go ahead (and it is counted), else the seconds until it may."""
        now = time.monotonic() if now is None else now
        tokens, at = self.buckets.get(client, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - at) * self.rate)
        if tokens < 1:
            self.buckets[client] = (tokens, now)
            return (1 - tokens) / self.rate
        if client not in self.buckets and len(self.buckets) >= self.max_clients:
            self._prune(now)
        self.buckets[client] = (tokens - 1, now)
        return 0.0

    def _prune(self, now: float) -> None:
        refilled = [c for c, (t, at) in self.buckets.items() if t + (now - at) * self.rate >= self.capacity]
        for client in refilled or list(self.buckets)[: len(self.buckets) // 2]:
            del self.buckets[client]


class BrowserTraces:
    """Accepted browser spans, batched to the exporter, and the per-client limit on exports. The
    queue is bounded: when the collector cannot keep up, spans are dropped, never piled up here."""

    def __init__(self, exporter: SpanExporter, per_minute: int, *, max_queue_size: int = 2048) -> None:
        self.processor = BatchSpanProcessor(exporter, max_queue_size=max_queue_size, schedule_delay_millis=1000)
        self.limit = RateLimit(per_minute)

    @classmethod
    def from_settings(cls, settings: Settings, exporter: SpanExporter | None = None) -> BrowserTraces | None:
        """PAGELENS_BROWSER_TRACES_ENDPOINT, else the API's own OTLP exporter; None when disabled."""
        if not settings.browser_traces_enabled:
            return None
        if exporter is None:
            exporter = (
                OTLPSpanExporter(endpoint=settings.browser_traces_endpoint)
                if settings.browser_traces_endpoint
                else span_exporter(settings)
            )
        return cls(exporter, settings.browser_traces_per_minute) if exporter is not None else None

    def forward(self, spans: list[ReadableSpan]) -> None:
        for span in spans:
            self.processor.on_end(span)

    def shutdown(self) -> None:
        self.processor.shutdown()  # type: ignore[no-untyped-call]
