"""Every pagelens metric, defined once. Names and labels are fixed: the README lists them, and the
dashboards, alerts and KEDA queries read them (tests/promql.py checks that they agree).

Each process (API, worker) renders the same registry; metrics it never touches simply have no
samples. No URL, scan id or free text is ever a label value: labels come from small fixed sets (an
unknown HTTP method is counted as "_OTHER").
"""

from __future__ import annotations

from collections import Counter as Tally
from typing import Any

from aioprometheus.collectors import Counter, Gauge, Histogram, Registry
from aioprometheus.renderer import render

from observability import service_version

REGISTRY = Registry()

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
JOB_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

http_requests_total = Counter(
    "pagelens_http_requests_total", "HTTP requests by method, route template and status class.", registry=REGISTRY
)
http_request_duration_seconds = Histogram(
    "pagelens_http_request_duration_seconds", "HTTP request latency.", registry=REGISTRY, buckets=LATENCY_BUCKETS
)
http_requests_in_progress = Gauge(
    "pagelens_http_requests_in_progress", "HTTP requests being served.", registry=REGISTRY
)
jobs_enqueued_total = Counter("pagelens_jobs_enqueued_total", "Jobs enqueued.", registry=REGISTRY)
job_queue_wait_seconds = Histogram(
    "pagelens_job_queue_wait_seconds",
    "Time from a job becoming eligible to a worker starting it.",
    registry=REGISTRY,
    buckets=WAIT_BUCKETS,
)
job_duration_seconds = Histogram(
    "pagelens_job_duration_seconds", "Job run time by outcome.", registry=REGISTRY, buckets=JOB_BUCKETS
)
queue_size = Gauge("pagelens_queue_size", "Jobs per queue and state.", registry=REGISTRY)
queue_oldest_pending_age_seconds = Gauge(
    "pagelens_queue_oldest_pending_age_seconds", "Age of the oldest job waiting to start.", registry=REGISTRY
)
scan_stage_duration_seconds = Histogram(
    "pagelens_scan_stage_duration_seconds", "Scan stage durations.", registry=REGISTRY, buckets=JOB_BUCKETS
)
scan_end_to_end_seconds = Histogram(
    "pagelens_scan_end_to_end_seconds", "Scan creation to FULL_READY.", registry=REGISTRY, buckets=JOB_BUCKETS
)
scan_errors_total = Counter("pagelens_scan_errors_total", "Failed scans by error type.", registry=REGISTRY)
external_call_duration_seconds = Histogram(
    "pagelens_external_call_duration_seconds",
    "Calls to services outside pagelens.",
    registry=REGISTRY,
    buckets=JOB_BUCKETS,
)
cache_requests_total = Counter("pagelens_cache_requests_total", "Cache lookups by result.", registry=REGISTRY)
active_scans = Gauge("pagelens_active_scans", "Scans being processed by this worker.", registry=REGISTRY)
db_pool_connections = Gauge("pagelens_db_pool_connections", "Database pool connections.", registry=REGISTRY)
db_query_duration_seconds = Histogram(
    "pagelens_db_query_duration_seconds", "Database query latency.", registry=REGISTRY, buckets=LATENCY_BUCKETS
)
# Not in the fixed table: how the telemetry itself is doing, so a broken carrier or hook is visible.
job_trace_context_total = Counter(
    "pagelens_job_trace_context_total", "Trace carriers read at job start, by result.", registry=REGISTRY
)
job_hook_errors_total = Counter("pagelens_job_hook_errors_total", "Errors inside worker job hooks.", registry=REGISTRY)
# Open server-sent event streams: the HTTP metrics count a stream as a request only until its
# headers are sent (app/api/middleware.py), so this is where long-lived streams show up.
sse_streams_open = Gauge("pagelens_sse_streams_open", "Server-sent event streams open.", registry=REGISTRY)
sse_streams_open.set({}, 0)
# The audit trail (app/core/audit.py): key creation and revocation, cancel and retry, by action and
# outcome; both are closed enums.
audit_events_total = Counter("pagelens_audit_events_total", "Audited actions by action and outcome.", registry=REGISTRY)
build_info = Gauge("pagelens_build_info", "Build information.", registry=REGISTRY)
build_info.set({"version": service_version()}, 1)


# RFC 9110's methods and PATCH. Any other (uvicorn's h11 parser passes any token) is named "_OTHER",
# as the HTTP semantic conventions name it, so that no client can grow the label set.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})


def known_method(method: str) -> str:
    return method if method in KNOWN_METHODS else "_OTHER"


class RouteMetrics:
    """The HTTP metrics of one (method, route) pair, at the fewest aioprometheus calls per request.

    Every aioprometheus update validates the label names and serialises the label dict to find its
    series (orjson, twice for a counter or gauge: read, then write). Per request that was about
    50 µs for four updates. So: the label dicts are built once per pair; the latency histogram's
    aggregator is looked up once (`get_value`) and observed directly; and the in-progress gauge is
    counted in plain ints and written at render time (`exposition`), as gauges of current state
    are sampled at scrape time anyway. The names, labels and values a scrape sees are unchanged.
    """

    _in_progress: Tally[tuple[str, str]] = Tally()
    _seen: dict[tuple[str, str], RouteMetrics] = {}

    def __init__(self, method: str, route: str) -> None:
        self.key = (method, route)
        self.labels = {"method": method, "route": route}
        self._totals: dict[int, dict[str, str]] = {}  # status class (2 for 2xx) -> its labels
        self._histogram: Any = None

    @classmethod
    def of(cls, method: str, route: str) -> RouteMetrics:
        method = known_method(method)
        found = cls._seen.get((method, route))
        if found is None:
            # Bounded: methods and route templates are small fixed sets (unmatched paths share one).
            found = cls._seen[(method, route)] = cls(method, route)
        return found

    def started(self) -> None:
        RouteMetrics._in_progress[self.key] += 1

    def finished(self, status: int, seconds: float) -> None:
        RouteMetrics._in_progress[self.key] -= 1
        if self._histogram is None:
            http_request_duration_seconds.observe(self.labels, seconds)
            self._histogram = http_request_duration_seconds.get_value(self.labels)
        else:
            self._histogram.observe(seconds)
        labels = self._totals.get(status // 100)
        if labels is None:
            labels = self._totals[status // 100] = {**self.labels, "status": f"{status // 100}xx"}
        http_requests_total.inc(labels)

    @classmethod
    def publish(cls) -> None:
        """Write the in-progress counts to their gauge (every pair seen, zeros included)."""
        for key, route in cls._seen.items():
            http_requests_in_progress.set(route.labels, cls._in_progress[key])


def exposition(accept: list[str]) -> tuple[bytes, dict[str, str]]:
    RouteMetrics.publish()
    body, headers = render(REGISTRY, accept)
    return body, dict(headers)
