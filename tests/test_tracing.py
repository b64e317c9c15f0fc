"""Spans in one process with the in-memory exporter: names, kinds, parents, links, attributes."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from arq.connections import ArqRedis
from arq.jobs import Job
from arq.worker import Worker
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from app.core.queue import RUN_SCAN, deserialize
from app.core.settings import Settings
from observability import metrics
from tests.site import Site
from worker import hooks

SCANS = "/api/v1/scan-jobs"
MakeWorker = Callable[..., Worker]


def new_traceparent() -> tuple[str, str, str]:
    trace_id, span_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def of_trace(spans: InMemorySpanExporter, trace_id: str) -> list[ReadableSpan]:
    return [
        s
        for s in spans.get_finished_spans()
        if s.context is not None and format(s.context.trace_id, "032x") == trace_id
    ]


def one(found: list[ReadableSpan], name: str) -> ReadableSpan:
    matching = [s for s in found if s.name == name]
    assert len(matching) == 1, (name, [s.name for s in found])
    return matching[0]


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent else None


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.span_id)


def counter(collector: Any, labels: dict[str, str]) -> float:
    try:
        return float(collector.get(labels))
    except KeyError:  # never incremented with these labels
        return 0.0


async def test_one_trace_from_client_to_stages(
    client: httpx.AsyncClient, site: Site, make_worker: MakeWorker, settings: Settings, spans: InMemorySpanExporter
) -> None:
    traceparent, trace_id, client_span = new_traceparent()
    r = await client.post(SCANS, json={"url": site.url("/pages/article.html")}, headers={"traceparent": traceparent})
    scan_id = r.json()["scanId"]
    await make_worker(settings).main()
    status = (await client.get(f"{SCANS}/{scan_id}/status")).json()
    assert status["status"] == "FULL_READY" and status["traceId"] == trace_id

    found = of_trace(spans, trace_id)
    queue = settings.queue_name
    server = one(found, "POST /api/v1/scan-jobs")
    assert server.kind is SpanKind.SERVER and parent_id(server) == int(client_span, 16)
    producer = one(found, f"send {queue}")
    assert producer.kind is SpanKind.PRODUCER and parent_id(producer) == span_id(server)
    assert producer.attributes is not None
    assert (
        dict(producer.attributes).items()
        >= {
            "messaging.system": "arq",
            "messaging.operation.type": "send",
            "messaging.destination.name": queue,
            "messaging.message.id": scan_id,
            "pagelens.scan_id": scan_id,
        }.items()
    )
    # The enqueue script's Redis CLIENT span is not made: the broker's address is on the PRODUCER.
    assert isinstance(producer.attributes.get("server.address"), str) and producer.attributes["server.address"]
    assert isinstance(producer.attributes.get("server.port"), int)
    assert not [s for s in found if parent_id(s) == span_id(producer) and s.kind is SpanKind.CLIENT]
    consumer = one(found, f"process {queue}")
    assert consumer.kind is SpanKind.CONSUMER and parent_id(consumer) == span_id(producer)
    assert [link.context.span_id for link in consumer.links] == [span_id(producer)]
    attrs = dict(consumer.attributes or {})
    assert attrs["messaging.operation.type"] == "process" and attrs["messaging.message.id"] == scan_id
    assert attrs["pagelens.job.try"] == 1 and attrs["pagelens.job.outcome"] == "success"
    assert isinstance(attrs["pagelens.job.queue_wait_seconds"], float) and attrs["pagelens.job.queue_wait_seconds"] >= 0
    for stage in ("crawl", "parse", "analyze", "generate"):
        assert parent_id(one(found, f"scan.{stage}")) == span_id(consumer)
    # The page fetch: robots.txt and llms.txt are GET CLIENT spans too, named by their url.path.
    http_clients = [s for s in found if s.kind is SpanKind.CLIENT and "http.request.method" in dict(s.attributes or {})]
    fetch = one([s for s in http_clients if "url.path" not in dict(s.attributes or {})], "GET")
    assert fetch.kind is SpanKind.CLIENT and parent_id(fetch) == span_id(one(found, "scan.crawl"))
    db_spans = [s for s in found if s.kind is SpanKind.CLIENT and "postgresql" in str(dict(s.attributes or {}))]
    assert {parent_id(s) for s in db_spans} & {span_id(consumer), span_id(server)}, "asyncpg spans join the trace"
    ids = {span_id(s) for s in found} | {int(client_span, 16)}
    assert all(parent_id(s) in ids for s in found), "no orphaned span"
    fetched = [h for p, h in site.requests if p == "/pages/article.html"]
    assert fetched and not any({"traceparent", "tracestate", "baggage"} & set(h) for h in fetched)


async def test_every_retry_is_its_own_consumer_span_in_the_same_trace(
    client: httpx.AsyncClient, site: Site, make_worker: MakeWorker, settings: Settings, spans: InMemorySpanExporter
) -> None:
    traceparent, trace_id, _ = new_traceparent()
    await client.post(SCANS, json={"url": site.url("/status/503")}, headers={"traceparent": traceparent})
    await make_worker(settings.with_(max_tries=2)).main()
    consumers = [s for s in of_trace(spans, trace_id) if s.kind is SpanKind.CONSUMER]
    tries = sorted(
        (dict(s.attributes or {})["pagelens.job.try"], dict(s.attributes or {})["pagelens.job.outcome"])
        for s in consumers
    )
    assert tries == [(1, "retry"), (2, "failure")]


async def test_queue_wait_counts_from_when_the_job_became_eligible(
    redis: ArqRedis, make_worker: MakeWorker, settings: Settings, spans: InMemorySpanExporter
) -> None:
    scan_id = str(uuid.uuid4())  # no such scan: the job is skipped, its span still records the wait
    enqueued = time.time()
    await redis.enqueue_job(
        RUN_SCAN, _job_id=scan_id, _queue_name=settings.queue_name, _defer_by=0.4, scan_id=scan_id, trace_context={}
    )
    await make_worker(settings).main()
    consumer = next(
        s for s in spans.get_finished_spans() if dict(s.attributes or {}).get("messaging.message.id") == scan_id
    )
    wait = dict(consumer.attributes or {})["pagelens.job.queue_wait_seconds"]
    assert consumer.start_time is not None
    since_enqueue = consumer.start_time / 1e9 - enqueued
    assert isinstance(wait, float)
    assert since_enqueue >= 0.4, "the job ran no earlier than it was deferred to"
    assert wait <= since_enqueue - 0.35, "the deferral is not counted as waiting"


@pytest.mark.parametrize(
    ("carrier", "result"),
    [({}, "missing"), ({"traceparent": "not-a-traceparent"}, "invalid"), ("a string", "invalid")],
)
async def test_broken_or_missing_carrier_still_runs_the_job(
    redis: ArqRedis,
    make_worker: MakeWorker,
    settings: Settings,
    spans: InMemorySpanExporter,
    carrier: object,
    result: str,
) -> None:
    before = counter(metrics.job_trace_context_total, {"result": result})
    scan_id = str(uuid.uuid4())
    await redis.enqueue_job(
        RUN_SCAN, _job_id=scan_id, _queue_name=settings.queue_name, scan_id=scan_id, trace_context=carrier
    )
    worker = make_worker(settings)
    await worker.main()
    assert worker.jobs_complete == 1 and worker.jobs_failed == 0
    assert counter(metrics.job_trace_context_total, {"result": result}) == before + 1
    consumer = next(
        s for s in spans.get_finished_spans() if dict(s.attributes or {}).get("messaging.message.id") == scan_id
    )
    assert consumer.parent is None and not consumer.links


async def test_a_failing_hook_never_stops_the_job(
    client: httpx.AsyncClient,
    site: Site,
    make_worker: MakeWorker,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("tracer exploded")

    monkeypatch.setattr(hooks.tracer, "start_span", broken)
    before = counter(metrics.job_hook_errors_total, {"hook": "on_job_start"})
    scan_id = (await client.post(SCANS, json={"url": site.url("/pages/article.html")})).json()["scanId"]
    with caplog.at_level(logging.WARNING, logger="pagelens.worker"):
        await make_worker(settings).main()
    assert (await client.get(f"{SCANS}/{scan_id}/status")).json()["status"] == "FULL_READY"
    assert counter(metrics.job_hook_errors_total, {"hook": "on_job_start"}) == before + 1
    assert any("on_job_start failed" in r.getMessage() for r in caplog.records)


GOOD, OTHER = new_traceparent()[0], new_traceparent()[0]


@pytest.mark.parametrize(
    ("headers", "kept"),
    [
        ([("traceparent", "garbage")], None),
        ([("traceparent", "00-" + "0" * 32 + "-" + "1" * 16 + "-01")], None),
        ([("traceparent", "00-" + "a" * 32 + "-" + "b" * 16 + "-01-extra")], None),
        ([("traceparent", GOOD), ("tracestate", "k=" + "v" * 10_000)], GOOD),
        ([("traceparent", GOOD), ("baggage", ",".join(f"k{i}=v" for i in range(5_000)))], GOOD),
        ([("traceparent", GOOD), ("traceparent", OTHER)], None),
    ],
)
async def test_bad_incoming_trace_headers_are_ignored_quietly(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture, headers: list[tuple[str, str]], kept: str | None
) -> None:
    with caplog.at_level(logging.DEBUG, logger="opentelemetry"):
        r = await client.post(SCANS, json={"url": "https://example.com/headers"}, headers=httpx.Headers(headers))
    assert r.status_code == 202
    trace_id = (await client.get(f"{SCANS}/{r.json()['scanId']}/status")).json()["traceId"]
    assert isinstance(trace_id, str) and len(trace_id) == 32 and trace_id != "0" * 32
    sent = {value.split("-")[1] for name, value in headers if name == "traceparent" and value.count("-") >= 3}
    if kept is None:
        assert trace_id not in sent, "a bad traceparent starts a new trace"
    else:
        assert trace_id == kept.split("-")[1], "the good traceparent is honoured, the bad extras dropped"
    assert not [r for r in caplog.records if r.name.startswith("opentelemetry") and r.levelno >= logging.WARNING]


async def test_configured_services_get_trace_context(
    client: httpx.AsyncClient, site: Site, make_worker: MakeWorker, settings: Settings
) -> None:
    from tests.fakes import serve_fake_llm

    with serve_fake_llm() as llm:
        traceparent, trace_id, _ = new_traceparent()
        await client.post(SCANS, json={"url": site.url("/pages/product.html")}, headers={"traceparent": traceparent})
        await make_worker(settings.with_(llm_base_url=llm.base_url)).main()
        assert len(llm.requests) == 1
        assert llm.requests[0].headers["traceparent"].split("-")[1] == trace_id


async def test_server_span_carries_the_http_server_conventions(
    client: httpx.AsyncClient, spans: InMemorySpanExporter
) -> None:
    traceparent, trace_id, client_span = new_traceparent()
    headers = {"traceparent": traceparent, "tracestate": "vendor=1", "user-agent": "pagelens-test/1"}
    r = await client.post(f"{SCANS}?from=test", json={"url": "https://example.com/conventions"}, headers=headers)
    assert r.status_code == 202
    server = one(of_trace(spans, trace_id), "POST /api/v1/scan-jobs")
    assert server.kind is SpanKind.SERVER and parent_id(server) == int(client_span, 16)
    assert server.parent is not None and server.parent.trace_state.get("vendor") == "1"
    attrs = dict(server.attributes or {})
    host = httpx.URL(str(client.base_url))
    assert attrs == {
        "http.request.method": "POST",
        "http.route": SCANS,
        "url.path": SCANS,
        "url.query": "from=test",
        "url.scheme": "http",
        "network.protocol.version": "1.1",
        "server.address": host.host,
        "server.port": host.port,
        "client.address": "127.0.0.1",
        "user_agent.original": "pagelens-test/1",
        "http.response.status_code": 202,
    }
    assert server.status.is_unset

    # Probes are not traced; an unknown path is, named by its method alone.
    before = len(spans.get_finished_spans())
    assert (await client.get("/healthz")).status_code == 200
    assert len(spans.get_finished_spans()) == before
    missing = await client.get("/no/such/path", headers={"traceparent": new_traceparent()[0]})
    assert missing.status_code == 404
    found = spans.get_finished_spans()[before:]
    assert [(s.name, s.kind, (s.attributes or {}).get("http.response.status_code")) for s in found] == [
        ("GET", SpanKind.SERVER, 404)
    ]
    assert "http.route" not in (found[0].attributes or {})


async def test_the_clients_baggage_travels_with_the_job(
    client: httpx.AsyncClient, redis: ArqRedis, settings: Settings
) -> None:
    traceparent, trace_id, _ = new_traceparent()
    headers = {"traceparent": traceparent, "baggage": "tenant.plan=gold,session=abc"}
    r = await client.post(SCANS, json={"url": "https://example.com/baggage"}, headers=headers)
    assert r.status_code == 202
    job = await Job(r.json()["scanId"], redis, _queue_name=settings.queue_name, _deserializer=deserialize).info()
    assert job is not None
    carrier = job.kwargs["trace_context"]
    assert carrier["traceparent"].split("-")[1] == trace_id
    assert set(carrier["baggage"].split(",")) == {"tenant.plan=gold", "session=abc"}


def test_server_span_attributes_from_the_asgi_scope() -> None:
    from app.api.server_span import carrier, request_attributes

    scope: dict[str, Any] = {
        "type": "http",
        "method": "GET",
        "path": "/api/v1/scan-jobs",
        "scheme": "https",
        "http_version": "2",
        "query_string": b"",
        "server": ("10.0.0.5", 8000),
        "client": ("::1", 5000),
        "headers": [(b"host", b"[::1]"), (b"tracestate", b"a=1"), (b"tracestate", b"b=2")],
    }
    # A bracketed IPv6 Host without a port; no query, no user agent: those attributes are left out.
    assert request_attributes(scope) == {
        "http.request.method": "GET",
        "url.path": "/api/v1/scan-jobs",
        "url.scheme": "https",
        "network.protocol.version": "2",
        "server.address": "::1",  # without the brackets, as the conventions write an IPv6 address
        "client.address": "::1",
    }
    assert carrier(scope) == {"tracestate": "a=1,b=2"}  # repeated fields joined, as HTTP does
    scope["headers"] = [(b"host", b"[::1]:8443"), (b"user-agent", b"probe/1")]
    attributes = request_attributes(scope)
    assert (attributes["server.address"], attributes["server.port"]) == ("::1", 8443)
    assert attributes["user_agent.original"] == "probe/1"
    # No Host header: the address the server listens on.
    scope["headers"] = []
    attributes = request_attributes(scope)
    assert (attributes["server.address"], attributes["server.port"]) == ("10.0.0.5", 8000)
    assert carrier(scope) == {}


async def test_the_job_context_comes_from_its_carrier_alone_whatever_the_propagators_order() -> None:
    """arq's bookkeeping around a job runs with instrumentation suppressed (worker/quiet.py); the
    job's context is built from its carrier only, so even with the baggage propagator first (which
    starts from the current context when given none) the job is instrumented, and its baggage and
    parent are the carrier's."""
    from opentelemetry import baggage, propagate
    from opentelemetry import context as otel_context
    from opentelemetry import trace as otel_trace
    from opentelemetry.baggage.propagation import W3CBaggagePropagator
    from opentelemetry.instrumentation.utils import is_instrumentation_enabled, suppress_instrumentation
    from opentelemetry.propagators.composite import CompositePropagator
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    from app.core.queue import TRACE_KWARG, decoded_job

    configured = propagate.get_global_textmap()
    propagate.set_global_textmap(CompositePropagator([W3CBaggagePropagator(), TraceContextTextMapPropagator()]))
    traceparent, trace_id, _ = new_traceparent()
    on_job_start, on_job_end = hooks.make_hooks("q")
    ctx: dict[str, Any] = {"job_id": "j1", "job_try": 1, "score": int(time.time() * 1000)}
    outer = otel_context.attach(otel_context.set_value("pagelens.test", "outer"))
    try:
        with suppress_instrumentation():
            decoded_job.set({"f": "noop", "k": {TRACE_KWARG: {"traceparent": traceparent, "baggage": "k=v"}}})
            await on_job_start(ctx)
            inside = (
                is_instrumentation_enabled(),
                otel_context.get_value("pagelens.test"),
                baggage.get_baggage("k"),
                format(otel_trace.get_current_span().get_span_context().trace_id, "032x"),
            )
            await on_job_end(ctx)
            assert not is_instrumentation_enabled()  # the hook's detach restores arq's context
    finally:
        otel_context.detach(outer)
        propagate.set_global_textmap(configured)
    assert inside == (True, None, "v", trace_id)
