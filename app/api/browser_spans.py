"""Spans from browsers (POST /v1/traces): decode them, check and trim every span, and limit senders.

The web page's OpenTelemetry SDK exports OTLP/HTTP (JSON, or protobuf from other exporters) to the
API rather than to a collector, so a browser needs no route to the collector and no CORS. Nothing
from a browser is trusted: the body is bounded before it is read, decoded strictly as an
`ExportTraceServiceRequest`, and every span is checked (ids, times, counts) and trimmed (names,
strings, attribute values) before any is kept. The checked request itself is what is forwarded
(app/api/span_forwarding.py), so tracestate, links and their attributes reach the collector as the
browser sent them.
"""

from __future__ import annotations

import base64
import json
import zlib
from collections.abc import Iterable, MutableSequence
from typing import Any

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from app.api.params import InvalidNumber, ascii_integer
from observability.otlp_http import PROTOBUF

BROWSER_SERVICE = "pagelens-web"
JSON = "application/json"
MAX_SPANS = 1000  # per request; the JS SDK's batches hold at most 512
# Per request, the spans' containers: the JS SDK sends one resource with a scope per
# instrumentation. Without a bound, half a megabyte of empty containers (545 bytes gzipped) took
# seconds of the event loop to check and forward, and each gained the forwarded resource attributes.
MAX_RESOURCE_SPANS = 16
MAX_SCOPE_SPANS = 64
MAX_NAME = 256
MAX_ATTRIBUTES = 64  # per span, event, link, scope or resource
MAX_EVENTS = 64
MAX_LINKS = 16
MAX_STRING = 2048
MAX_TRACE_STATE = 512  # the W3C limit for a tracestate header
ID_FIELDS = ("traceId", "spanId", "parentSpanId")
# 64-bit integers, which OTLP/JSON may send as strings: protobuf's parser would take any str int()
# takes ("٣" as 3), so they are checked here first.
INT64_FIELDS = frozenset({"timeUnixNano", "startTimeUnixNano", "endTimeUnixNano", "intValue"})
UINT64_MAX = 2**64 - 1


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
    """The request, checked and trimmed (see `bound`), or InvalidSpans."""
    request = ExportTraceServiceRequest()
    try:
        if media_type == PROTOBUF:
            request.ParseFromString(body)
        else:
            # OTLP/JSON is protobuf's JSON mapping except that ids are hex, not base64; a receiver
            # ignores fields it does not know (a newer SDK's).
            document = json.loads(body)
            _count_containers(document)  # before the slow conversion of every object
            json_format.ParseDict(_ids_to_base64(document), request, ignore_unknown_fields=True)
    except (ValueError, json_format.ParseError, RecursionError) as exc:
        raise InvalidSpans(f"not an OTLP ExportTraceServiceRequest: {str(exc)[:200]}") from None
    except Exception as exc:  # protobuf's DecodeError is not a ValueError in every implementation
        raise InvalidSpans(f"not an OTLP ExportTraceServiceRequest: {type(exc).__name__}") from None
    bound(request)
    return request


def _items(value: Any, *names: str) -> list[Any]:
    """A JSON object's list under either spelling of a field (protobuf's JSON mapping takes both)."""
    if not isinstance(value, dict):
        return []
    for name in names:
        if isinstance(found := value.get(name), list):
            return found
    return []


def _check_containers(resources: int, scopes_per_resource: Iterable[int]) -> None:
    """InvalidSpans past MAX_RESOURCE_SPANS resources or MAX_SCOPE_SPANS scopes in one request (the
    scopes are counted only once the resources are known to be few)."""
    if resources > MAX_RESOURCE_SPANS:
        raise InvalidSpans(f"more than {MAX_RESOURCE_SPANS} resourceSpans in one request")
    if sum(scopes_per_resource) > MAX_SCOPE_SPANS:
        raise InvalidSpans(f"more than {MAX_SCOPE_SPANS} scopeSpans in one request")


def _count_containers(document: Any) -> None:
    resources = _items(document, "resourceSpans", "resource_spans")
    _check_containers(len(resources), (len(_items(each, "scopeSpans", "scope_spans")) for each in resources))


def _ids_to_base64(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _field(k, v) for k, v in value.items()}
    if isinstance(value, list):
        return [_ids_to_base64(v) for v in value]
    return value


def _field(key: str, value: Any) -> Any:
    if not isinstance(value, str):
        return _ids_to_base64(value)
    if key in ID_FIELDS:
        return _hex_to_base64(value)
    if key in INT64_FIELDS:
        digits = value[1:] if key == "intValue" and value.startswith("-") else value
        try:
            ascii_integer(digits, low=0, high=UINT64_MAX)
        except InvalidNumber:
            raise InvalidSpans(f"{key} must be an integer in ASCII digits, got {value[:40]!r}") from None
    return value


def _hex_to_base64(value: str) -> str:
    try:
        return base64.b64encode(bytes.fromhex(value)).decode()
    except ValueError:
        raise InvalidSpans(f"ids are hex strings, got {value[:40]!r}") from None


def bound(request: ExportTraceServiceRequest) -> None:
    """Check every span (InvalidSpans for the first bad one) and trim what may be trimmed, in place;
    containers that hold no span are dropped."""
    _check_containers(len(request.resource_spans), (len(each.scope_spans) for each in request.resource_spans))
    request.DiscardUnknownFields()  # only what OTLP defines is forwarded
    for resource_spans in request.resource_spans:
        kept = [each for each in resource_spans.scope_spans if each.spans]
        if len(kept) < len(resource_spans.scope_spans):
            del resource_spans.scope_spans[:]
            resource_spans.scope_spans.extend(kept)
    if any(not each.scope_spans for each in request.resource_spans):
        kept_resources = [each for each in request.resource_spans if each.scope_spans]
        del request.resource_spans[:]
        request.resource_spans.extend(kept_resources)
    count = 0
    for resource_spans in request.resource_spans:
        _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            scope = scope_spans.scope
            scope.name, scope.version = scope.name[:MAX_NAME], scope.version[:MAX_NAME]
            _attributes(scope.attributes)
            for span in scope_spans.spans:
                count += 1
                if count > MAX_SPANS:
                    raise InvalidSpans(f"more than {MAX_SPANS} spans in one request")
                _span(span)


def _span(span: Span) -> None:
    if not span.name or len(span.name) > MAX_NAME:
        raise InvalidSpans(f"a span name must have 1 to {MAX_NAME} characters")
    where = f"span {span.name[:50]!r}"
    _id(span.trace_id, 16, f"{where}: traceId")
    _id(span.span_id, 8, f"{where}: spanId")
    if span.parent_span_id:
        _id(span.parent_span_id, 8, f"{where}: parentSpanId")
    if not 0 < span.start_time_unix_nano <= span.end_time_unix_nano:
        raise InvalidSpans(f"{where}: times must be set and end at or after the start")
    if len(span.events) > MAX_EVENTS or len(span.links) > MAX_LINKS:
        raise InvalidSpans(f"{where}: at most {MAX_EVENTS} events and {MAX_LINKS} links")
    if len(span.trace_state) > MAX_TRACE_STATE or any(len(link.trace_state) > MAX_TRACE_STATE for link in span.links):
        raise InvalidSpans(f"{where}: a tracestate has at most {MAX_TRACE_STATE} characters")
    if not Span.SPAN_KIND_INTERNAL <= span.kind <= Span.SPAN_KIND_CONSUMER:
        span.kind = Span.SPAN_KIND_INTERNAL
    if span.status.code not in (Status.STATUS_CODE_OK, Status.STATUS_CODE_ERROR):
        span.status.Clear()
    span.status.message = span.status.message[:MAX_STRING]
    _attributes(span.attributes)
    for event in span.events:
        event.name = event.name[:MAX_NAME]
        _attributes(event.attributes)
    for link in span.links:
        _id(link.trace_id, 16, f"{where}: link traceId")
        _id(link.span_id, 8, f"{where}: link spanId")
        _attributes(link.attributes)


def _id(raw: bytes, size: int, what: str) -> None:
    if len(raw) != size or not any(raw):
        raise InvalidSpans(f"{what} must be {size} bytes and not all zero")


def _attributes(pairs: MutableSequence[KeyValue]) -> None:
    """Keep primitives and arrays of one primitive type, trimmed; drop nested maps and bytes quietly
    (a collector would accept them, but they are unbounded in depth and no browser span needs them)."""
    if len(pairs) > MAX_ATTRIBUTES:
        raise InvalidSpans(f"at most {MAX_ATTRIBUTES} attributes per span, event, link, scope or resource")
    kept = [KeyValue(key=p.key[:MAX_NAME], value=v) for p in pairs if p.key and (v := _value(p.value)) is not None]
    del pairs[:]
    pairs.extend(kept)


def _value(value: AnyValue) -> AnyValue | None:
    which = value.WhichOneof("value")
    if which == "string_value":
        return AnyValue(string_value=value.string_value[:MAX_STRING])
    if which in ("bool_value", "int_value", "double_value"):
        return value
    if which == "array_value":
        items = [_value(v) for v in value.array_value.values[:MAX_ATTRIBUTES]]
        if items and None not in items and len({i.WhichOneof("value") for i in items if i is not None}) == 1:
            out = AnyValue()
            out.array_value.values.extend(i for i in items if i is not None)
            return out
    return None
