"""The OTLP request bytes written directly (observability/otlp_wire.py) mean exactly what the SDK's
encoder's mean: decoded with the OTLP protobuf definitions, the two requests are equal, for
generated spans of every shape the SDK can hand an exporter."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util import BoundedList
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState
from opentelemetry.util.types import Attributes

from observability.otlp_http import OTLPOptions
from observability.otlp_wire import WireSpanExporter, encode_request
from tests.otlp import serve_otlp

INT64 = st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1)
FLOATS = st.floats(allow_nan=False)
TEXT = st.text(max_size=12)  # any unicode scalar, empty included (no lone surrogates: see below)
SCALARS = st.one_of(st.booleans(), INT64, FLOATS, TEXT, st.binary(max_size=8), st.none())
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(tuple),
        st.lists(inner, max_size=3),
        st.dictionaries(TEXT, inner, max_size=3),
    ),
    max_leaves=6,
)
ATTRIBUTES = st.dictionaries(TEXT, VALUES, max_size=5)
IDS = st.tuples(st.integers(1, (1 << 128) - 1), st.integers(1, (1 << 64) - 1))
KEY = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-*/@", min_size=1, max_size=8).filter(
    lambda k: k[0].isalpha()
)
TRACE_STATES = st.one_of(
    st.none(), st.lists(st.tuples(KEY, st.text(alphabet="abcxyz0123=", max_size=6)), max_size=3).map(TraceState)
)


@st.composite
def contexts(draw: st.DrawFn) -> SpanContext:
    trace_id, span_id = draw(IDS)
    return SpanContext(
        trace_id,
        span_id,
        is_remote=draw(st.booleans()),
        trace_flags=TraceFlags(draw(st.sampled_from([0, 1]))),
        trace_state=draw(TRACE_STATES),
    )


def bounded(attributes: dict[str, Any], limit: int | None) -> Attributes:
    """The attributes as given, or cut to `limit` in a BoundedList-like way: the SDK counts what a
    limit dropped in `dropped_attributes`, which the encoder writes."""
    if limit is None:
        return attributes
    from opentelemetry.attributes import BoundedAttributes

    return BoundedAttributes(maxlen=limit, attributes=attributes, immutable=False)


@st.composite
def spans(draw: st.DrawFn, resources: list[Resource], scopes: list[InstrumentationScope | None]) -> ReadableSpan:
    limit = draw(st.none() | st.integers(0, 3))
    events = [
        Event(draw(TEXT), bounded(draw(ATTRIBUTES), limit), timestamp=draw(st.integers(0, (1 << 64) - 1)))
        for _ in range(draw(st.integers(0, 2)))
    ]
    links = [Link(draw(contexts()), bounded(draw(ATTRIBUTES), limit)) for _ in range(draw(st.integers(0, 2)))]
    event_limit = draw(st.none() | st.integers(0, 2))
    start = draw(st.integers(1, 1 << 62))
    return ReadableSpan(
        name=draw(TEXT),
        context=draw(contexts()),
        parent=draw(st.none() | contexts()),
        resource=draw(st.sampled_from(resources)),
        attributes=bounded(draw(ATTRIBUTES), limit),
        events=BoundedList.from_seq(event_limit, events) if event_limit is not None else events,
        links=BoundedList.from_seq(event_limit, links) if event_limit is not None else links,
        kind=draw(st.sampled_from(list(SpanKind))),
        status=Status(draw(st.sampled_from(list(StatusCode))), draw(st.none() | TEXT))
        if draw(st.booleans())
        else Status(StatusCode.UNSET),
        start_time=start,
        end_time=draw(st.none() | st.integers(start, 1 << 63)),
        instrumentation_scope=draw(st.sampled_from(scopes)),
    )


@st.composite
def batches(draw: st.DrawFn) -> list[ReadableSpan]:
    resources = [
        Resource(draw(ATTRIBUTES.map(lambda a: {k: v for k, v in a.items() if not isinstance(v, (list, dict))})), url)
        for url in draw(
            st.lists(st.sampled_from(["", "https://opentelemetry.io/schemas/1.21.0"]), min_size=1, max_size=3)
        )
    ]
    scopes: list[InstrumentationScope | None] = [None]
    for _ in range(draw(st.integers(1, 3))):
        scopes.append(
            InstrumentationScope(draw(TEXT), draw(st.none() | TEXT), draw(st.none() | TEXT), draw(ATTRIBUTES))
        )
    return draw(st.lists(spans(resources, scopes), max_size=6))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(batches())
def test_the_wire_bytes_decode_to_the_sdk_encoders_request(batch: list[ReadableSpan]) -> None:
    ours = ExportTraceServiceRequest.FromString(encode_request(batch))
    assert ours == encode_spans(batch)


def test_the_bytes_are_the_sdks_for_the_apis_spans() -> None:
    resource = Resource.create({"service.name": "pagelens-api", "service.instance.id": "h-1"})
    scope = InstrumentationScope("pagelens.api", "1.0")
    parent = SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=TraceFlags(1))
    server = ReadableSpan(
        name="POST /api/v1/scan-jobs",
        context=SpanContext(0xABC, 0x123, is_remote=False, trace_flags=TraceFlags(1)),
        parent=parent,
        resource=resource,
        attributes={"http.request.method": "POST", "http.response.status_code": 202, "server.port": 8000},
        kind=SpanKind.SERVER,
        status=Status(StatusCode.ERROR, "boom"),
        start_time=1_700_000_000_000_000_000,
        end_time=1_700_000_000_002_000_000,
        instrumentation_scope=scope,
    )
    assert encode_request([server, server]) == encode_spans([server, server]).SerializePartialToString()


def test_values_equal_in_python_keep_their_own_bytes() -> None:
    """1 == 1.0 == True and 0.0 == -0.0, but each is written as its own type and sign, also when
    the encoder's caches (of key-values and of whole attribute sets) already hold an equal one."""
    for values in ((1, 1.0, True), (0.0, -0.0, 0, False), ((1,), (True,), (1.0,))):
        for _ in range(3):  # a first pass fills the caches, the next ones read them
            batch = [
                ReadableSpan(name="s", context=SpanContext(1, 2, False), attributes={"v": v, "k": "same"})
                for v in values
            ]
            assert encode_request(batch) == encode_spans(batch).SerializePartialToString()


def test_what_the_encoder_cannot_write_exactly_goes_to_the_sdks_encoder() -> None:
    def span(value: Any) -> ReadableSpan:
        return ReadableSpan(name="s", context=SpanContext(1, 2, False), attributes={"v": value, "ok": 1}, start_time=1)

    for exotic in (1 << 64, -(1 << 63) - 1, "\ud800", object(), math.nan):
        batch = [span(exotic)]
        expected = encode_spans(batch).SerializePartialToString()
        assert encode_request(batch) == expected  # NaN != NaN: compared as bytes


def test_the_exporter_posts_the_wire_bytes() -> None:
    span = ReadableSpan(
        name="send arq:queue",
        context=SpanContext(0xAB, 0xCD, is_remote=False, trace_flags=TraceFlags(1)),
        resource=Resource.create({"service.name": "pagelens-api"}),
        attributes={"messaging.system": "arq", "server.port": 6379},
        kind=SpanKind.PRODUCER,
        start_time=1,
        end_time=2,
    )
    with serve_otlp() as receiver:
        for compression in ("none", "gzip"):
            exporter = WireSpanExporter(f"{receiver.endpoint}/v1/traces", OTLPOptions(compression=compression))
            try:
                assert exporter.export([span]) is SpanExportResult.SUCCESS
            finally:
                exporter.shutdown()
        wrong = WireSpanExporter(endpoint=f"{receiver.endpoint}/v1/nothing-here")
        try:  # an answer other than 2xx (here 404, not retried) is a failure
            assert wrong.export([span]) is SpanExportResult.FAILURE
        finally:
            wrong.shutdown()
        got = receiver.spans
    assert [(s.name, s.kind, s.service_name) for s in got] == [("send arq:queue", "PRODUCER", "pagelens-api")] * 2
    assert got[0].attributes == {"messaging.system": "arq", "server.port": 6379}
    assert receiver.exports == 2


def test_a_request_over_the_size_limit_is_split_and_only_a_span_too_large_alone_is_dropped() -> None:
    def span(name: str, size: int) -> ReadableSpan:
        return ReadableSpan(
            name=name,
            context=SpanContext(0xAB, 0xCD, is_remote=False, trace_flags=TraceFlags(1)),
            resource=Resource.create({"service.name": "pagelens-worker"}),
            attributes={"pad": "x" * size},
            start_time=1,
            end_time=2,
        )

    small = [span(f"small-{n}", 300) for n in range(5)]
    huge = span("huge", 5_000)
    limit = len(encode_request(small[:2])) + 1  # two small spans fit in a request, three do not
    with serve_otlp() as receiver:
        exporter = WireSpanExporter(f"{receiver.endpoint}/v1/traces", max_request_bytes=limit)
        try:
            assert exporter.export(small) is SpanExportResult.SUCCESS
            sent_whole = receiver.exports
            # The huge span cannot be sent at any split: it alone is dropped, the others still go.
            assert exporter.export([small[0], huge, small[1]]) is SpanExportResult.FAILURE
        finally:
            exporter.shutdown()
        unlimited = WireSpanExporter(f"{receiver.endpoint}/v1/traces", max_request_bytes=0)
        try:
            assert unlimited.export([huge, *small]) is SpanExportResult.SUCCESS
        finally:
            unlimited.shutdown()
        names = [s.name for s in receiver.spans]
        exports = receiver.exports
    assert sent_whole >= 3  # five spans, at most two per request
    assert names[:5] == [f"small-{n}" for n in range(5)]
    assert names[5:7] == ["small-0", "small-1"]
    assert names[7:] == ["huge", *(f"small-{n}" for n in range(5))]
    assert exports == sent_whole + 2 + 1
