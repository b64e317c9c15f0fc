"""OTLP/HTTP span export with the request's protobuf bytes written directly from the spans.

The SDK's encoder builds a tree of protobuf message objects per batch (one per span, attribute,
value, event...) and then serialises it: in the API's profile that was ~11% of all CPU samples, in
the exporter thread but holding the GIL the request path needs. `encode_request` writes the same
ExportTraceServiceRequest wire bytes in one pass. It is checked against the SDK's encoder
(tests/test_otlp_wire.py decodes both and compares them); anything it does not know exactly (a
value type outside the SDK's list, an int outside int64, a string that is not valid UTF-8) makes it
hand the whole batch to the SDK's encoder, so the bytes sent never differ in meaning.

`WireSpanExporter` sends those bytes with our own OTLP/HTTP sender (observability/otlp_http.py),
which reads the same OTEL_EXPORTER_OTLP_* variables as the SDK's exporter and retries as it does.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, StatusCode

from observability.otlp_http import OTLPHTTPSender, OTLPOptions, otlp_options

logger = logging.getLogger("pagelens.tracing")

_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_DOUBLE = struct.Struct("<d")
_FIXED64 = struct.Struct("<Q")
_FIXED32 = struct.Struct("<I")
DEFAULT_ENDPOINT = "http://localhost:4318/v1/traces"  # the SDK's, when no endpoint is set
_HAS_IS_REMOTE, _IS_REMOTE = 0x100, 0x200  # SpanFlags: the parent's remoteness is known / remote


class _Unsupported(Exception):
    """A value this encoder does not write exactly as the SDK would: the batch goes to the SDK's."""


def _varint(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _len(field: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2): strings, bytes, embedded messages."""
    n = len(payload)
    return (bytes(((field << 3) | 2, n)) if n < 0x80 else bytes(((field << 3) | 2,)) + _varint(n)) + payload


def _str(field: int, text: str | None) -> bytes:
    """A proto3 string field: left out when empty, as protobuf does."""
    if not text:
        return b""
    try:
        return _len(field, text.encode())
    except UnicodeEncodeError as error:  # lone surrogates: the SDK's encoder decides what happens
        raise _Unsupported from error


def _uint(field: int, n: int) -> bytes:
    return bytes(((field << 3),)) + _varint(n) if n else b""


def _value(value: Any) -> bytes:
    """An AnyValue message; the order of the checks is the SDK's (bool before int, str and bytes
    before Sequence). A oneof member is written even when it holds the default."""
    if value is None:
        return b""
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, str):
        try:
            return _len(1, value.encode())
        except UnicodeEncodeError as error:
            raise _Unsupported from error
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise _Unsupported
        return b"\x18" + _varint(value & 0xFFFFFFFFFFFFFFFF)
    if isinstance(value, float):
        return b"\x21" + _DOUBLE.pack(value)
    if isinstance(value, bytes):
        return _len(7, value)
    if isinstance(value, Sequence):
        return _len(5, b"".join(_len(1, _value(each)) for each in value))
    if isinstance(value, Mapping):
        return _len(6, b"".join(_len(1, _key_value(str(k), v)) for k, v in value.items()))
    raise _Unsupported


def _key_value(key: str, value: Any) -> bytes:
    return _str(1, key) + _len(2, _value(value))


# Most attributes repeat from span to span (method, route, statement, addresses): their encoded
# KeyValue is kept, keyed by the value's type too (True == 1 == 1.0). Bounded: cleared when full,
# and strings over 256 characters are not kept, so it stays small.
_kv_cache: dict[tuple[int, str, type[Any], Any], bytes] = {}
_KV_CACHE_MAX = 4096
_KV_CACHE_STR_MAX = 256
_CACHED = (str, int, bool)  # not float: -0.0 == 0.0 with one hash, but their bytes differ


# A whole attribute set often repeats too (a route's SERVER span, a statement's CLIENT span): its
# encoded bytes are kept when every one of its key-values came from the cache above, keyed by the
# items and their types. Bounded like that cache.
_block_cache: dict[tuple[int, tuple[tuple[str, Any], ...], tuple[type[Any], ...]], bytes] = {}
_BLOCK_CACHE_MAX = 1024
_CACHED_KINDS = frozenset(_CACHED)


def _attributes(field: int, attributes: Mapping[str, Any] | None) -> bytes:
    if not attributes:
        return b""
    # A span's attributes come as a read-only view of the SDK's BoundedAttributes, whose items()
    # goes through Python-level __iter__ (a lock and a copy) and __getitem__ per key; the view's
    # copy() is the underlying mapping's copy, a plain dict, iterated at C speed.
    plain = attributes.copy() if isinstance(attributes, MappingProxyType) else attributes
    kinds = tuple(map(type, plain.values()))
    block_key = (field, tuple(plain.items()), kinds) if _CACHED_KINDS.issuperset(kinds) else None
    if block_key is not None and (block := _block_cache.get(block_key)) is not None:
        return block
    parts = []
    cache = _kv_cache
    all_cached = True
    for key, value in plain.items():
        kind = value.__class__
        if kind in _CACHED and (kind is not str or len(value) <= _KV_CACHE_STR_MAX):
            cached = cache.get((field, key, kind, value))
            if cached is None:
                all_cached = False
                if len(cache) >= _KV_CACHE_MAX:
                    cache.clear()
                cached = cache[(field, key, kind, value)] = _len(field, _key_value(key, value))
            parts.append(cached)
        else:
            all_cached = False
            parts.append(_len(field, _key_value(key, value)))
    block = b"".join(parts)
    if block_key is not None and all_cached:
        if len(_block_cache) >= _BLOCK_CACHE_MAX:
            _block_cache.clear()
        _block_cache[block_key] = block
    return block


def _flags(parent: SpanContext | None) -> int:
    return _HAS_IS_REMOTE | _IS_REMOTE if parent and parent.is_remote else _HAS_IS_REMOTE


# Fixed parts of a Span message, written as constants: the tags of the 16-byte trace id (field 1)
# and 8-byte span and parent ids (fields 2 and 4), the two timestamps (fixed64 fields 7 and 8), the
# flags (fixed32 field 16) for a local or a remote parent, and a status with no description.
_TRACE_ID, _SPAN_ID, _PARENT_ID = b"\x0a\x10", b"\x12\x08", b"\x22\x08"
_START, _END = b"\x39", b"\x41"
_LOCAL_FLAGS = b"\x85\x01" + _FIXED32.pack(_HAS_IS_REMOTE)
_REMOTE_FLAGS = b"\x85\x01" + _FIXED32.pack(_HAS_IS_REMOTE | _IS_REMOTE)
_KINDS = {kind: _uint(6, kind.value + 1) for kind in SpanKind}  # the proto's SpanKind counts from UNSPECIFIED = 0
_STATUSES = {code: _len(15, _uint(3, code.value)) for code in StatusCode}
# Span names repeat (a route, a statement's verb, a queue): their encoded field is kept, bounded.
_names: dict[str, bytes] = {}
_NAMES_MAX = 1024


def _name(name: str) -> bytes:
    encoded = _names.get(name)
    if encoded is None:
        if len(_names) >= _NAMES_MAX:
            _names.clear()
        encoded = _names[name] = _str(5, name)
    return encoded


def _span(span: ReadableSpan) -> bytes:
    ctx = span.get_span_context()
    if ctx is None:
        raise _Unsupported
    parts = [_TRACE_ID + ctx.trace_id.to_bytes(16, "big"), _SPAN_ID + ctx.span_id.to_bytes(8, "big")]
    if ctx.trace_state is not None:
        parts.append(_str(3, ",".join(f"{k}={v}" for k, v in ctx.trace_state.items())))
    parent = span.parent
    if parent:
        parts.append(_PARENT_ID + parent.span_id.to_bytes(8, "big"))
    parts.append(_name(span.name))
    parts.append(_KINDS[span.kind])
    if span.start_time:
        parts.append(_START + _FIXED64.pack(span.start_time))
    if span.end_time:
        parts.append(_END + _FIXED64.pack(span.end_time))
    parts.append(_attributes(9, span.attributes))
    if dropped := span.dropped_attributes:
        parts.append(_uint(10, dropped))
    for event in span.events:
        body = (b"\x09" + _FIXED64.pack(event.timestamp) if event.timestamp else b"") + _str(2, event.name)
        body += _attributes(3, event.attributes) + _uint(4, event.dropped_attributes)
        parts.append(_len(11, body))
    if dropped := span.dropped_events:
        parts.append(_uint(12, dropped))
    for link in span.links:
        body = _len(1, link.context.trace_id.to_bytes(16, "big")) + _len(2, link.context.span_id.to_bytes(8, "big"))
        body += _attributes(4, link.attributes) + _uint(5, link.dropped_attributes)
        parts.append(_len(13, body + b"\x35" + _FIXED32.pack(_flags(link.context))))
    if dropped := span.dropped_links:
        parts.append(_uint(14, dropped))
    status = span.status
    if status.description:
        parts.append(_len(15, _str(2, status.description) + _uint(3, status.status_code.value)))
    else:
        parts.append(_STATUSES[status.status_code])
    parts.append(_REMOTE_FLAGS if parent and parent.is_remote else _LOCAL_FLAGS)
    return b"".join(parts)


def _scope(scope: InstrumentationScope | None) -> bytes:
    if scope is None:
        return b""
    return _str(1, scope.name) + _str(2, scope.version) + _attributes(3, scope.attributes)


def _encode(spans: Sequence[ReadableSpan]) -> bytes:
    # Grouped as the SDK groups them: by resource, then by instrumentation scope, in first-seen order.
    # A Resource hashes by JSON-dumping its attributes; the spans of one provider share one Resource
    # object, so when there is only one, it is the only key and is not hashed per span.
    grouped: dict[Resource, dict[InstrumentationScope | None, list[bytes]]] = {}
    first = spans[0].resource if spans else None
    if all(span.resource is first for span in spans):
        scopes: dict[InstrumentationScope | None, list[bytes]] = {}
        for span in spans:
            scopes.setdefault(span.instrumentation_scope or None, []).append(_span(span))
        if first is not None:
            grouped[first] = scopes
    else:
        for span in spans:
            grouped.setdefault(span.resource, {}).setdefault(span.instrumentation_scope or None, []).append(_span(span))
    out = []
    for resource, scopes in grouped.items():
        body = [_len(1, _attributes(1, resource.attributes))]
        for scope, encoded in scopes.items():
            scope_spans = _len(1, _scope(scope)) + b"".join(_len(2, each) for each in encoded)
            body.append(_len(2, scope_spans + _str(3, scope.schema_url if scope else None)))
        body.append(_str(3, resource.schema_url))
        out.append(_len(1, b"".join(body)))
    return b"".join(out)


def encode_request(spans: Sequence[ReadableSpan]) -> bytes:
    """The ExportTraceServiceRequest bytes for `spans`, equal in meaning to the SDK encoder's."""
    try:
        return _encode(spans)
    except _Unsupported:
        return bytes(encode_spans(spans).SerializePartialToString())


# The SDK exporter's guard against a request a collector would refuse: 64 MiB before compression.
MAX_REQUEST_BYTES = 64 * 1024 * 1024


class WireSpanExporter(SpanExporter):
    """An OTLP/HTTP span exporter sending `encode_request`'s bytes through `OTLPHTTPSender`
    (observability/otlp_http.py): headers, compression, timeout and certificates from the standard
    OTEL_EXPORTER_OTLP_* variables, the specification's retries within the timeout.

    A request larger than `max_request_bytes` (64 MiB, the SDK exporter's default; 0 for no limit)
    is not sent whole: where the SDK's exporter drops the whole batch, this one halves it until each
    part fits, so only a single span that is too large on its own is dropped (and logged). Not
    carried over from the SDK's exporter: its optional self-metrics
    (OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED).
    """

    def __init__(
        self,
        endpoint: str | None = None,
        options: OTLPOptions | None = None,
        max_request_bytes: int = MAX_REQUEST_BYTES,
    ) -> None:
        self._sender = OTLPHTTPSender(endpoint or DEFAULT_ENDPOINT, options or otlp_options())
        self._max_request_bytes = max_request_bytes

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS if self._export(spans) else SpanExportResult.FAILURE

    def _export(self, spans: Sequence[ReadableSpan]) -> bool:
        try:
            data = encode_request(spans)
        except Exception:
            logger.exception("encoding a span batch failed")
            return False
        if 0 < self._max_request_bytes < len(data):
            if len(spans) == 1:
                logger.warning(
                    "dropped span %r: %d bytes encoded, over the %d-byte request limit",
                    spans[0].name,
                    len(data),
                    self._max_request_bytes,
                )
                return False
            half = len(spans) // 2
            first = self._export(spans[:half])
            second = self._export(spans[half:])  # sent even when the first half failed
            return first and second
        return self._sender.send(data)

    def shutdown(self) -> None:
        self._sender.close()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True  # nothing is buffered here: the batch processor holds the spans
