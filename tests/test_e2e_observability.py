"""One scan, end to end, across real processes: traces, logs and metrics as an operator sees them.

The API (uvicorn) and the worker (`python -m worker`) run as subprocesses configured only
through the environment, exporting spans over OTLP/HTTP to a real receiver (tests/otlp.py). The
test is the client: it sends its own `traceparent`, follows the scan, then checks that the whole
scan is ONE trace (client → API → queue → worker → PostgreSQL/Redis/fetch), that the worker's log
lines carry that trace and the scan id, and that both processes' /metrics count exactly what
happened. A second test sends malformed and oversized trace headers to the same processes.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from tests.live import follow, live_stack
from tests.otlp import OTLPReceiver, Span
from tests.processes import POLL, STOP_TIMEOUT, Proc
from tests.site import PAGES_DIR, Site

pytestmark = pytest.mark.slow

SCANS = "/api/v1/scan-jobs"
STATUS_ROUTE = "/api/v1/scan-jobs/{scanId}/status"
ARTICLE = "/pages/article.html"
STAGES = ("crawl", "parse", "analyze", "generate")
TOP_N = 7  # not the default, so other tests sharing this Redis rarely touch the same cache entry

SETTLE_POLLS = 100  # x POLL: metrics / log lines that land just after the status says FULL_READY
SPAN_TIMEOUT = 30.0
HEX32 = re.compile(r"^[0-9a-f]{32}$")


# --- the processes ------------------------------------------------------------------------------


@dataclass
class Stack:
    receiver: OTLPReceiver
    api: Proc
    worker: Proc
    api_url: str
    worker_metrics_url: str
    queue: str
    site: Site
    redis_url: str
    scan_ids: list[str] = field(default_factory=list)  # every scan the tests created
    trace_ids: list[str] = field(default_factory=list)  # every trace id the tests sent


@pytest.fixture(scope="module")
async def stack(
    tmp_path_factory: pytest.TempPathFactory,
    migrated_database: Callable[[], Awaitable[str]],
    redis_url: str,
    site: Site,
) -> AsyncIterator[Stack]:
    """Receiver, API and worker for this module; stopped with SIGTERM at the end, and checked."""
    # live_stack gives the processes a database of their own rather than the session's
    # `database_url`: the worker's sweeper (a cron job, run at start) re-enqueues stranded scans it
    # finds, and other tests leave some behind in the shared one. Their jobs on our queue would make
    # every count below inexact.
    logs = tmp_path_factory.mktemp("e2e-logs")
    async with live_stack(logs, migrated_database, redis_url, site, PAGELENS_LOG_LEVEL="INFO") as live:
        yield Stack(
            live.receiver, live.api, live.worker, live.api_url, live.worker_metrics_url, live.queue, site, redis_url
        )
    # Only reached when the tests ran: how both processes stopped is part of what is checked.
    api, worker, stopped = live.api, live.worker, live.stopped
    assert not stopped.worker_killed, f"the worker ignored SIGTERM for {STOP_TIMEOUT} s\n{worker.tail()}"
    assert stopped.worker_code == 0, f"the worker exited with {stopped.worker_code}\n{worker.tail()}"
    assert stopped.children, "the worker had no child processes: where is the KeyBERT pool?"
    assert not stopped.left, f"the worker left child processes running: {stopped.left}"
    errors = [e for e in worker.log() if e.get("level") in ("error", "critical")]
    assert not errors, f"the worker logged errors: {errors[:5]}"
    assert any(e.get("message") == "worker ready" for e in worker.log())
    assert not stopped.api_killed, f"the API ignored SIGTERM for {STOP_TIMEOUT} s\n{api.tail()}"
    # uvicorn shuts down gracefully, then re-raises the SIGTERM it caught: -15 is its clean exit.
    assert stopped.api_code in (0, -signal.SIGTERM), f"the API exited with {stopped.api_code}\n{api.tail()}"
    api_messages = [e.get("message") for e in api.log()]
    assert "Application shutdown complete." in api_messages, f"the API did not shut down cleanly\n{api.tail()}"
    api_errors = [e for e in api.log() if e.get("level") in ("error", "critical")]
    assert not api_errors, f"the API logged errors: {api_errors[:5]}"


# --- metrics ------------------------------------------------------------------------------------


class Sample(NamedTuple):
    name: str
    labels: dict[str, str]
    value: float


class Scrape:
    def __init__(self, text: str) -> None:
        self.text = text
        self.samples = [
            Sample(s.name, dict(s.labels), float(s.value))
            for family in text_string_to_metric_families(text)
            for s in family.samples
        ]

    def value(self, name: str, **labels: str) -> float:
        """The sample with exactly these labels; 0 when absent (a counter nothing has touched)."""
        found = [s.value for s in self.samples if s.name == name and s.labels == labels]
        assert len(found) <= 1, (name, labels, found)
        return found[0] if found else 0.0

    def total(self, name: str, **labels: str) -> float:
        """The sum over every sample of `name` whose labels include these."""
        return sum(s.value for s in self.samples if s.name == name and labels.items() <= s.labels.items())

    def label_values(self) -> set[str]:
        return {value for s in self.samples for value in s.labels.values()}


async def scrape(client: httpx.AsyncClient, url: str) -> Scrape:
    response = await client.get(url, headers={"Accept": "text/plain; version=0.0.4"})
    assert response.status_code == 200, (url, response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("text/plain"), response.headers
    return Scrape(response.text)


async def scrape_until(client: httpx.AsyncClient, url: str, ready: Callable[[Scrape], bool]) -> Scrape:
    """Scrape until `ready` (a metric observed just after the status changed has landed), bounded.

    Returns the last scrape either way: the caller's exact assertions then say what is off."""
    current = await scrape(client, url)
    for _ in range(SETTLE_POLLS):
        if ready(current):
            break
        await asyncio.sleep(POLL)
        current = await scrape(client, url)
    return current


# --- traces -------------------------------------------------------------------------------------


def new_traceparent() -> tuple[str, str, str]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def one(spans: list[Span], name: str, kind: str, where: Callable[[Span], bool] = lambda s: True) -> Span:
    found = [s for s in spans if s.name == name and s.kind == kind and where(s)]
    assert len(found) == 1, (name, kind, [str(s) for s in spans])
    return found[0]


def db_system(span: Span) -> str | None:
    value = span.attributes.get("db.system.name", span.attributes.get("db.system"))
    return value if isinstance(value, str) else None


def describe(spans: list[Span]) -> str:
    return "\n".join(f"  {s}" for s in spans)


def scan_trace_complete(trace_id: str, queue: str) -> Callable[[list[Span]], bool]:
    """True once the API's server span and the worker's consumer span (it ends last) have arrived."""

    def complete(spans: list[Span]) -> bool:
        names = {(s.name, s.kind) for s in spans if s.trace_id == trace_id}
        return ("POST /api/v1/scan-jobs", "SERVER") in names and (f"process {queue}", "CONSUMER") in names

    return complete


# --- the client ---------------------------------------------------------------------------------


async def submit(
    client: httpx.AsyncClient, stack: Stack, headers: list[tuple[str, str]] | None = None
) -> dict[str, Any]:
    body = {"url": stack.site.url(ARTICLE), "options": {"topN": TOP_N}}
    response = await client.post(SCANS, json=body, headers=headers or [])
    assert response.status_code == 202, (response.status_code, response.text)
    created: dict[str, Any] = response.json()
    stack.scan_ids.append(created["scanId"])
    return created


def keyphrase_cache_key() -> str:
    """The Redis key the worker caches the article's keyphrases under (computed as the worker does)."""
    from worker.audit.facts import page_facts
    from worker.keyphrases import keyphrase_cache_key as key_for
    from worker.parse import parse_html

    html, url = (PAGES_DIR / "article.html").read_text(encoding="utf-8"), "http://127.0.0.1/"
    # The main content (trafilatura's, else PARSE's own) is what the keyphrases read.
    key = key_for(page_facts(html, url).main_text or parse_html(html, url).main_text, TOP_N)
    assert key is not None, "the article has too little text for keyphrases"
    return key


def robots_cache_key(origin: str) -> str:
    from worker.cache import cache_key
    from worker.robots import CACHE

    return cache_key(CACHE, origin)


async def wait_log(proc: Proc, match: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    entries = [e for e in proc.log() if match(e)]
    for _ in range(SETTLE_POLLS):
        if entries:
            break
        await asyncio.sleep(POLL)
        entries = [e for e in proc.log() if match(e)]
    return entries


def opentelemetry_warnings(proc: Proc) -> list[str]:
    """Warnings (or worse) from OpenTelemetry's loggers, as JSON lines or plain text."""
    found = []
    for line in proc.stderr_path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line) if line.startswith("{") else None
        except ValueError:
            entry = None
        if isinstance(entry, dict):
            if str(entry.get("logger", "")).startswith("opentelemetry") and entry.get("level") != "info":
                found.append(line)
        elif "opentelemetry" in line.lower():
            found.append(line)
    return found


# --- the tests ----------------------------------------------------------------------------------


async def test_one_scan_is_one_trace_with_logs_and_exact_metrics(stack: Stack) -> None:
    queue, receiver = stack.queue, stack.receiver
    traceparent, trace_id, client_span_id = new_traceparent()
    stack.trace_ids.append(trace_id)
    cache_key = keyphrase_cache_key()
    fresh = not stack.scan_ids  # nothing has run on these processes yet (the other test runs after this one)
    site_mark = len(stack.site.requests)
    redis = Redis.from_url(stack.redis_url)
    try:
        await redis.delete(cache_key)  # the first scan must compute the keyphrases: a cache miss
        await redis.delete(robots_cache_key(stack.site.base))  # and fetch robots.txt and llms.txt
        async with httpx.AsyncClient(base_url=stack.api_url, timeout=10) as client:
            api_before = await scrape(client, "/metrics")
            worker_before = await scrape(client, stack.worker_metrics_url)
            if fresh:  # then the deltas below are the absolute counts
                assert_nothing_counted_yet(api_before, worker_before, queue)

            # 1. The scan, as a client that is itself traced.
            created = await submit(client, stack, [("traceparent", traceparent)])
            scan_id = created["scanId"]
            assert created["status"] == "QUEUED"
            status, polls = await follow(client, created["statusUrl"])
            assert status["status"] == "FULL_READY", status
            assert status["traceId"] == trace_id, "the scan is not recorded under the client's trace"
            assert await redis.exists(cache_key) == 1, "the worker cached the keyphrases under another key"

            # 2. Metrics, exact: both processes are fresh and nothing else uses this queue.
            def api_settled(m: Scrape) -> bool:
                return (
                    m.value("pagelens_http_requests_total", method="GET", route=STATUS_ROUTE, status="2xx")
                    - api_before.value("pagelens_http_requests_total", method="GET", route=STATUS_ROUTE, status="2xx")
                    >= polls
                )

            job_done = {"queue": queue, "function": "run_scan", "outcome": "success"}

            def worker_settled(m: Scrape) -> bool:
                # on_job_end observes the job's duration a moment after the scan is FULL_READY.
                done = m.value("pagelens_job_duration_seconds_count", **job_done)
                return done - worker_before.value("pagelens_job_duration_seconds_count", **job_done) >= 1

            api_after = await scrape_until(client, "/metrics", api_settled)
            worker_after = await scrape_until(client, stack.worker_metrics_url, worker_settled)
            assert_api_metrics(api_before, api_after, queue, polls)
            assert_worker_metrics(worker_before, worker_after, queue, cache_result="miss")

            # 3. The same page again: the keyphrases now come from the cache.
            again = await submit(client, stack)
            again_status, _ = await follow(client, again["statusUrl"])
            assert again_status["status"] == "FULL_READY", again_status
            assert again_status["traceId"] != trace_id
            worker_final = await scrape_until(
                client,
                stack.worker_metrics_url,
                lambda m: (
                    m.value("pagelens_job_duration_seconds_count", **job_done)
                    - worker_after.value("pagelens_job_duration_seconds_count", **job_done)
                    >= 1
                ),
            )
            assert_worker_metrics(worker_after, worker_final, queue, cache_result="hit")
            api_final = await scrape(client, "/metrics")
    finally:
        await redis.aclose()

    # 4. No unbounded label values anywhere.
    for scrape_ in (api_final, worker_final):
        for value in scrape_.label_values():
            assert stack.site.base not in value and ARTICLE not in value, value
            assert f"127.0.0.1:{stack.site.port}" not in value, value
            for sid in stack.scan_ids:
                assert sid not in value, value
            assert trace_id not in value, value

    # 5. The trace: one trace id from the client's span to the page fetch and every query.
    await asyncio.to_thread(receiver.wait_for, scan_trace_complete(trace_id, queue), SPAN_TIMEOUT)
    assert not receiver.rejected, receiver.rejected
    assert_scan_trace(receiver.trace(trace_id), queue, scan_id, client_span_id)

    # 6. Nothing told the fetched page about our trace.
    article_requests = [headers for path, headers in stack.site.requests[site_mark:] if path == ARTICLE]
    assert len(article_requests) == 2, "one fetch per scan expected"
    for headers in article_requests:
        leaked = {"traceparent", "tracestate", "baggage"} & headers.keys()
        assert not leaked, f"trace headers sent to a user-supplied URL: {leaked}"

    # 7. The worker's log lines carry the trace and the scan.
    def in_scan(entry: dict[str, Any]) -> bool:
        return entry.get("trace_id") == trace_id and entry.get("scan_id") == scan_id

    correlated = await wait_log(stack.worker, in_scan)
    assert correlated, f"no worker log line with trace_id={trace_id} and scan_id={scan_id}\n{stack.worker.tail()}"
    started = [e for e in correlated if e.get("message") == "job started"]
    assert len(started) == 1, correlated
    wait = started[0].get("queue_wait_seconds")
    assert isinstance(wait, int | float) and not isinstance(wait, bool) and wait >= 0, started[0]
    assert started[0].get("queue") == queue and started[0].get("job_id") == scan_id, started[0]
    assert any(e.get("message") == "job finished" and e.get("outcome") == "success" for e in correlated), correlated


def assert_nothing_counted_yet(api: Scrape, worker: Scrape, queue: str) -> None:
    assert api.value("pagelens_http_requests_total", method="POST", route=SCANS, status="2xx") == 0
    assert api.total("pagelens_http_requests_total", route=STATUS_ROUTE) == 0
    assert api.total("pagelens_jobs_enqueued_total") == 0
    assert worker.total("pagelens_job_queue_wait_seconds_count", function="run_scan") == 0
    assert worker.total("pagelens_job_duration_seconds_count", function="run_scan") == 0
    assert worker.total("pagelens_scan_stage_duration_seconds_count") == 0
    assert worker.total("pagelens_scan_end_to_end_seconds_count") == 0
    assert worker.total("pagelens_cache_requests_total") == 0
    assert worker.total("pagelens_external_call_duration_seconds_count") == 0


def assert_api_metrics(before: Scrape, after: Scrape, queue: str, polls: int) -> None:
    def delta(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    assert delta("pagelens_http_requests_total", method="POST", route=SCANS, status="2xx") == 1
    assert delta("pagelens_http_requests_total", method="GET", route=STATUS_ROUTE, status="2xx") == polls
    assert delta("pagelens_http_request_duration_seconds_count", method="POST", route=SCANS) == 1
    assert delta("pagelens_jobs_enqueued_total", queue=queue, function="run_scan") == 1
    assert delta("pagelens_db_query_duration_seconds_count", query="scans.create") == 1
    assert delta("pagelens_db_query_duration_seconds_count", query="scans.status") == polls
    assert after.value("pagelens_http_requests_in_progress", method="POST", route=SCANS) == 0
    assert after.total("pagelens_build_info") == 1, "pagelens_build_info missing from the API"


def assert_worker_metrics(before: Scrape, after: Scrape, queue: str, *, cache_result: str) -> None:
    """One more scan of the article, through the cache with `cache_result`, and nothing else."""

    def delta(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    job = {"queue": queue, "function": "run_scan"}
    assert delta("pagelens_job_queue_wait_seconds_count", **job) == 1
    assert delta("pagelens_job_duration_seconds_count", **job, outcome="success") == 1
    for outcome in ("failure", "retry", "cancelled"):
        assert delta("pagelens_job_duration_seconds_count", **job, outcome=outcome) == 0, outcome
    for stage in STAGES:
        assert delta("pagelens_scan_stage_duration_seconds_count", stage=stage) == 1, stage
    assert delta("pagelens_scan_end_to_end_seconds_count", kind="url") == 1
    assert delta("pagelens_scan_end_to_end_seconds_count", kind="document") == 0
    assert delta("pagelens_external_call_duration_seconds_count", service="http_fetch", outcome="success") == 1
    other = "hit" if cache_result == "miss" else "miss"
    assert delta("pagelens_cache_requests_total", cache="keyphrases", result=cache_result) == 1, cache_result
    assert delta("pagelens_cache_requests_total", cache="keyphrases", result=other) == 0, other
    keybert = delta("pagelens_external_call_duration_seconds_count", service="keybert", outcome="success")
    assert keybert == (1 if cache_result == "miss" else 0), "KeyBERT must run exactly on a cache miss"
    assert after.total("pagelens_scan_errors_total") == 0
    assert delta("pagelens_db_query_duration_seconds_count", query="scans.claim") == 1
    assert delta("pagelens_db_query_duration_seconds_count", query="scans.finish") == 1
    assert after.total("pagelens_db_query_duration_seconds_count") > 0
    assert after.value("pagelens_active_scans") == 0
    assert after.total("pagelens_build_info") == 1, "pagelens_build_info missing from the worker"


def assert_scan_trace(spans: list[Span], queue: str, scan_id: str, client_span_id: str) -> None:
    context = describe(spans)
    ids = {s.span_id for s in spans}
    assert len(ids) == len(spans), f"duplicate span ids\n{context}"

    # API: the server span continues the client's trace.
    server = one(spans, "POST /api/v1/scan-jobs", "SERVER")
    assert server.service_name == "pagelens-api", server
    assert server.parent_span_id == client_span_id, f"server span not under the client's span\n{context}"
    assert server.attributes.get("http.route") == SCANS, server.attributes

    # Enqueue: PRODUCER under the server span, with the messaging attributes.
    producer = one(spans, f"send {queue}", "PRODUCER")
    assert producer.service_name == "pagelens-api", producer
    assert producer.parent_span_id == server.span_id, f"producer not under the server span\n{context}"
    expected_send = {
        "messaging.system": "arq",
        "messaging.operation.type": "send",
        "messaging.destination.name": queue,
        "messaging.message.id": scan_id,
        "pagelens.scan_id": scan_id,
    }
    assert expected_send.items() <= producer.attributes.items(), producer.attributes

    # Worker: CONSUMER whose parent is the producer, linked to it too.
    consumer = one(spans, f"process {queue}", "CONSUMER")
    assert consumer.service_name == "pagelens-worker", consumer
    assert consumer.parent_span_id == producer.span_id, f"consumer not under the producer\n{context}"
    assert (producer.trace_id, producer.span_id) in consumer.links, consumer.links
    expected_process = {
        "messaging.system": "arq",
        "messaging.operation.type": "process",
        "messaging.destination.name": queue,
        "messaging.message.id": scan_id,
        "pagelens.scan_id": scan_id,
        "pagelens.job.try": 1,
    }
    assert expected_process.items() <= consumer.attributes.items(), consumer.attributes
    wait = consumer.attributes.get("pagelens.job.queue_wait_seconds")
    assert isinstance(wait, int | float) and not isinstance(wait, bool) and wait >= 0, consumer.attributes
    assert consumer.status_code != "ERROR", consumer

    # The stages, children of the consumer; the page fetch under the crawl.
    stages = {}
    for stage in STAGES:
        span = one(spans, f"scan.{stage}", "INTERNAL")
        assert span.service_name == "pagelens-worker", span
        assert span.parent_span_id == consumer.span_id, f"scan.{stage} not under the consumer\n{context}"
        assert span.attributes.get("pagelens.scan_id") == scan_id, span.attributes
        stages[span.span_id] = stage
    # (Redis's GET is a CLIENT span named "GET" too; robots.txt and llms.txt name their url.path.)
    fetch = one(spans, "GET", "CLIENT", lambda s: db_system(s) is None and "url.path" not in s.attributes)
    crawl = next(span_id for span_id, stage in stages.items() if stage == "crawl")
    assert fetch.parent_span_id == crawl, f"the page fetch is not under scan.crawl\n{context}"
    assert fetch.attributes.get("http.response.status_code") == 200, fetch.attributes
    assert fetch.status_code != "ERROR", fetch
    # The origin's robots.txt and llms.txt, each its own CLIENT span under scan.analyze (the test
    # site has neither: 404).
    analyze = next(span_id for span_id, stage in stages.items() if stage == "analyze")
    for path in ("/robots.txt", "/llms.txt"):

        def for_path(span: Span, path: str = path) -> bool:
            return span.attributes.get("url.path") == path

        site_file = one(spans, "GET", "CLIENT", for_path)
        assert site_file.parent_span_id == analyze, f"{path} is not under scan.analyze\n{context}"
        assert site_file.attributes.get("http.response.status_code") == 404, site_file.attributes

    # PostgreSQL (asyncpg) under the API's server span, the consumer and a stage; Redis under the producer.
    postgres = [s for s in spans if s.kind == "CLIENT" and db_system(s) == "postgresql"]
    pg_parents = {s.parent_span_id for s in postgres}
    assert server.span_id in pg_parents, f"no asyncpg span under the API's server span\n{context}"
    assert consumer.span_id in pg_parents, f"no asyncpg span under the consumer\n{context}"
    assert pg_parents & stages.keys(), f"no asyncpg span under any stage span\n{context}"
    # No Redis span under the producer: the enqueue script's CLIENT span is not made, and what it
    # said (where the broker is) is on the PRODUCER span.
    under_producer = [s for s in spans if s.parent_span_id == producer.span_id and s.kind == "CLIENT"]
    assert not under_producer, f"a CLIENT span under the producer\n{context}"
    assert producer.attributes.get("server.address") and producer.attributes.get("server.port"), producer.attributes

    # Nothing dangling: every parent is the client's span or a span of this trace.
    orphans = [s for s in spans if s.parent_span_id not in ids | {client_span_id}]
    assert not orphans, f"spans whose parent is not in the trace: {[str(s) for s in orphans]}\n{context}"
    services = {s.service_name for s in spans}
    assert services == {"pagelens-api", "pagelens-worker"}, services


async def test_malformed_trace_headers_start_a_fresh_trace(stack: Stack) -> None:
    big_tracestate = ",".join(f"k{i}=" + "v" * 200 for i in range(50))  # ~10 KB, 50 members
    big_baggage = ",".join(f"key{i}=" + "v" * 400 for i in range(50))  # ~20 KB
    assert len(big_tracestate) >= 10_000 and len(big_baggage) >= 20_000
    _, first_trace, first_span = new_traceparent()
    _, second_trace, second_span = new_traceparent()
    valid, valid_trace, _ = new_traceparent()
    cases: dict[str, tuple[list[tuple[str, str]], set[str]]] = {
        # (headers, trace ids the scan must NOT be recorded under)
        "garbage traceparent, oversized tracestate and baggage": (
            [("traceparent", "garbage"), ("tracestate", big_tracestate), ("baggage", big_baggage)],
            set(),
        ),
        # W3C Trace Context: two traceparent headers are ambiguous; the receiver starts a new trace.
        "two traceparent headers": (
            [
                ("traceparent", f"00-{first_trace}-{first_span}-01"),
                ("traceparent", f"00-{second_trace}-{second_span}-01"),
            ],
            {first_trace, second_trace},
        ),
    }
    # Every case runs; what is wrong is collected, so one product bug does not hide another.
    problems: list[str] = []
    recorded: dict[str, str] = {}
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=10) as client:
        for case, (headers, bogus) in cases.items():
            created = await submit(client, stack, headers)
            status, _ = await follow(client, created["statusUrl"])
            trace_id = status["traceId"]
            assert isinstance(trace_id, str) and HEX32.match(trace_id) and trace_id != "0" * 32, (case, status)
            assert status["status"] == "FULL_READY", (case, status)
            if trace_id in bogus | set(stack.trace_ids):
                which = {first_trace: "the first header's", second_trace: "the second header's"}.get(trace_id, "a")
                problems.append(f"{case}: the scan continued {which} trace {trace_id} instead of starting a new one")
            else:
                recorded[case] = trace_id
        # A valid traceparent still counts when only its companions are oversized.
        headers = [("traceparent", valid), ("tracestate", big_tracestate), ("baggage", big_baggage)]
        created = await submit(client, stack, headers)
        status, _ = await follow(client, created["statusUrl"])
        assert status["status"] == "FULL_READY", status
        if status["traceId"] != valid_trace:
            problems.append(f"a valid traceparent was dropped with its oversized tracestate/baggage: {status}")
    assert len(set(recorded.values())) == len(recorded), recorded

    # Each new trace starts at the API's server span (no remote parent) and is whole on the worker's side.
    for case, trace_id in recorded.items():
        spans = await asyncio.to_thread(
            stack.receiver.wait_for, scan_trace_complete(trace_id, stack.queue), SPAN_TIMEOUT
        )
        server = one([s for s in spans if s.trace_id == trace_id], "POST /api/v1/scan-jobs", "SERVER")
        if server.parent_span_id is not None:
            problems.append(f"{case}: the server span has a remote parent: {server}")

    for proc in (stack.api, stack.worker):
        warnings = opentelemetry_warnings(proc)
        if warnings:
            problems.append(f"{proc.name} logged OpenTelemetry warnings:\n" + "\n".join(w[:300] for w in warnings))
    assert not problems, "\n".join(problems)
