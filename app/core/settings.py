"""The one settings object. Environment variables are read here and nowhere else.

Each field names its environment variable and holds its one default (`setting(...)`); `from_env`
reads every field the same way. The README's configuration table lists each variable, and a test
checks that no field lacks a variable or a row.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from functools import cache
from pathlib import Path
from typing import Any, get_type_hints

ROOT = Path(__file__).resolve().parents[2]


class ConfigError(ValueError):
    pass


def _bool(name: str, raw: str) -> bool:
    if raw.lower() in {"1", "true", "yes", "on"}:
        return True
    if raw.lower() in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def _otel_bool(name: str, raw: str) -> bool:
    # The OpenTelemetry spec: only "true" (any case) is true; anything else is false.
    return raw.lower() == "true"


def _int(name: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None


def _share(name: str, raw: str) -> float:
    value = _float(name, raw)
    if value > 1:
        raise ConfigError(f"{name} must be a share between 0 and 1, got {value}")
    return value


def _float(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if value <= 0:
        raise ConfigError(f"{name} must be > 0, got {value}")
    return value


def _words(raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def _ports(name: str, raw: str) -> frozenset[int]:
    try:
        return frozenset(int(p) for p in _words(raw))
    except ValueError:
        raise ConfigError(f"{name} must be a comma list of ports") from None


Parser = Callable[[str, str], Any]
# How a variable's text becomes a field's value, by the field's declared type.
PARSERS: dict[str, Parser] = {
    "str": lambda name, raw: raw,
    "str | None": lambda name, raw: raw,
    "bool": _bool,
    "int": _int,
    "int | None": lambda name, raw: _int(name, raw) or None,  # 0 means unset
    "float": _float,
    "tuple[str, ...]": lambda name, raw: _words(raw),
    "frozenset[str]": lambda name, raw: frozenset(w.lower() for w in _words(raw)),
    "frozenset[int]": _ports,
    "Path": lambda name, raw: Path(raw),
}


def setting(
    env: str, default: Any = None, *, minimum: int | None = None, parse: Parser | None = None, blank: bool = False
) -> Any:
    """A field read from the variable `env`; unset or blank keeps `default` (unless `blank`: then an
    empty value is a value). `minimum` bounds an integer; `parse` replaces the parser for the type."""
    return field(default=default, metadata={"env": env, "minimum": minimum, "parse": parse, "blank": blank})


# Grafana Explore on the compose stack's Grafana, opening the trace in the provisioned Tempo datasource.
GRAFANA_EXPLORE_TRACE = (
    "http://localhost:3000/explore?schemaVersion=1&panes="
    "%7B%22trace%22%3A%7B%22datasource%22%3A%22tempo%22%2C%22queries%22%3A%5B%7B%22refId%22%3A%22A%22%2C"
    "%22datasource%22%3A%7B%22type%22%3A%22tempo%22%2C%22uid%22%3A%22tempo%22%7D%2C%22queryType%22%3A"
    "%22traceql%22%2C%22query%22%3A%22{trace_id}%22%7D%5D%2C%22range%22%3A%7B%22from%22%3A%22now-1h%22%2C"
    "%22to%22%3A%22now%22%7D%7D%7D&orgId=1"
)


@dataclass(frozen=True)
class Settings:
    database_url: str | None = setting("DATABASE_URL")
    redis_url: str | None = setting("REDIS_URL")
    queue_name: str = setting("PAGELENS_QUEUE", "pagelens:queue")
    fetch_allow_hosts: frozenset[str] = setting("PAGELENS_FETCH_ALLOW_HOSTS", frozenset())
    api_keys: tuple[str, ...] = setting("PAGELENS_API_KEYS", ())
    worker_metrics_port: int = setting("PAGELENS_WORKER_METRICS_PORT", 9191)
    # The worker's /metrics listens on loopback unless told otherwise (compose sets 0.0.0.0).
    worker_metrics_host: str = setting("PAGELENS_WORKER_METRICS_HOST", "127.0.0.1")
    # Seconds between queue-depth samples (pagelens_queue_size, GET /api/v1/queues).
    queue_sample_interval: float = setting("PAGELENS_QUEUE_SAMPLE_INTERVAL", 5.0)
    enable_metrics: bool = setting("ENABLE_METRICS", True)
    psi_api_key: str | None = setting("PSI_API_KEY")
    psi_base_url: str = setting("PSI_BASE_URL", "https://www.googleapis.com/pagespeedonline/v5/runPagespeed")
    llm_base_url: str | None = setting("LLM_BASE_URL")
    llm_api_key: str | None = setting("LLM_API_KEY")
    llm_model: str = setting("LLM_MODEL", "gpt-4o-mini")

    # Request limits: a body larger than this is refused with 413 before it is read whole.
    max_body_bytes: int = setting("PAGELENS_MAX_BODY_BYTES", 1_048_576, minimum=1024)
    max_document_chars: int = setting("PAGELENS_MAX_DOCUMENT_CHARS", 200_000, minimum=1)
    # All request header lines together (names and values); more is refused with 431.
    max_header_bytes: int = setting("PAGELENS_MAX_HEADER_BYTES", 16_384, minimum=1024)
    # Per API key (only with PAGELENS_API_KEYS): requests per minute (as a burst too), and scans
    # open at once. 0 turns either off.
    rate_limit: int = setting("PAGELENS_RATE_LIMIT", 600)
    max_open_scans: int = setting("PAGELENS_MAX_OPEN_SCANS", 100)
    # The API's /metrics: with a token it requires `Authorization: Bearer <token>`; with a port it
    # moves to its own listener on that port and host, and the public port answers 404 there.
    metrics_token: str | None = setting("PAGELENS_METRICS_TOKEN")
    api_metrics_port: int | None = setting("PAGELENS_API_METRICS_PORT")
    api_metrics_host: str = setting("PAGELENS_API_METRICS_HOST", "127.0.0.1")

    # Fetching user-supplied URLs.
    fetch_connect_timeout: float = setting("PAGELENS_FETCH_CONNECT_TIMEOUT", 5.0)
    fetch_read_timeout: float = setting("PAGELENS_FETCH_READ_TIMEOUT", 10.0)
    fetch_total_timeout: float = setting("PAGELENS_FETCH_TIMEOUT", 20.0)
    fetch_max_bytes: int = setting("PAGELENS_FETCH_MAX_BYTES", 5 * 1024 * 1024, minimum=1024)
    fetch_max_redirects: int = setting("PAGELENS_FETCH_MAX_REDIRECTS", 5)
    fetch_allowed_ports: frozenset[int] = setting("PAGELENS_FETCH_ALLOWED_PORTS", frozenset({80, 443, 8080, 8443}))
    fetch_user_agent: str = setting("PAGELENS_FETCH_USER_AGENT", "pagelens/0.1 (+https://github.com/pagelens/pagelens)")

    # Jobs.
    max_tries: int = setting("PAGELENS_MAX_TRIES", 3, minimum=1)
    retry_base_delay: float = setting("PAGELENS_RETRY_BASE_DELAY", 1.0)
    job_timeout: float = setting("PAGELENS_JOB_TIMEOUT", 120.0)
    max_jobs: int = setting("PAGELENS_MAX_JOBS", 10, minimum=1)
    # arq's poll of the queue. Enqueues wake workers at once (worker/wake.py), so the poll is only
    # the safety net and for deferred retries: a short one would only cost Redis round trips.
    poll_delay: float = setting("PAGELENS_POLL_DELAY", 0.5)
    # On SIGTERM a worker stops taking jobs and gives running ones this long to finish before it
    # cancels them (a cancelled scan is released and runs again on another worker).
    shutdown_grace: int = setting("PAGELENS_SHUTDOWN_GRACE", 20)
    retention_days: int = setting("PAGELENS_RETENTION_DAYS", 30, minimum=1)
    # Seconds between sweeps for scans arq lost track of; a QUEUED scan is swept once this old.
    sweep_interval: int = setting("PAGELENS_SWEEP_INTERVAL", 30, minimum=1)
    keybert_processes: int = setting("PAGELENS_KEYBERT_PROCESSES", 1, minimum=1)
    # Embedding threads in each KeyBERT process: a scan's keyphrases are one long run of matrix work
    # that the rest of the worker waits on, so by default one process uses both cores of a small
    # box (the measurements are in docs/performance.md, "Worker throughput").
    keybert_threads: int = setting("PAGELENS_KEYBERT_THREADS", 2, minimum=1)
    # Rank candidates with KeyBERT's own MMR instead of pagelens's (worker/keyphrases/model.py): the
    # same keyphrases, at the cost of an n x n matrix per text (hundreds of MB and seconds on a long
    # page). The worker benchmark's "before" row runs this way, as every worker did before.
    keybert_plain_ranking: bool = setting("PAGELENS_KEYBERT_PLAIN_RANKING", False)
    # Texts per call to a KeyBERT process: scans waiting together share one call.
    keybert_batch: int = setting("PAGELENS_KEYBERT_BATCH", 8, minimum=1)
    keybert_timeout: float = setting("PAGELENS_KEYBERT_TIMEOUT", 60.0)
    # Child processes that parse pages, and how long one page may take before its child is killed
    # and the scan fails as too_complex (worker/parse_pool.py).
    parse_processes: int = setting("PAGELENS_PARSE_PROCESSES", 1, minimum=1)
    parse_timeout: float = setting("PAGELENS_PARSE_TIMEOUT", 5.0)
    # The page audit of URL scans (page facts, robots.txt and llms.txt, the audits). Off, a URL scan
    # does none of that work and its report's `audit` is null, as a document's is.
    audit: bool = setting("PAGELENS_AUDIT", True)
    keyphrase_cache_ttl: int = setting("PAGELENS_KEYPHRASE_CACHE_TTL", 7 * 24 * 3600, minimum=1)
    psi_cache_ttl: int = setting("PAGELENS_PSI_CACHE_TTL", 3600, minimum=1)
    # Deadline of one PSI or LLM call, seconds.
    external_timeout: float = setting("PAGELENS_EXTERNAL_TIMEOUT", 30.0)

    # OpenTelemetry's standard variables, as the spec defines them (observability/tracing.py). The
    # OTLP exporters also read their headers, timeout, compression and certificates from OTEL_*.
    otel_sdk_disabled: bool = setting("OTEL_SDK_DISABLED", False, parse=_otel_bool)
    otel_service_name: str | None = setting("OTEL_SERVICE_NAME")
    # Empty: "otlp" when an endpoint is set, else none (OTel's own default is "otlp"; pagelens exports
    # only when asked to, so a developer without a collector gets no connection errors).
    otel_traces_exporter: tuple[str, ...] = setting("OTEL_TRACES_EXPORTER", ())
    otel_exporter_otlp_protocol: str = setting("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    otel_exporter_otlp_traces_protocol: str | None = setting("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
    otel_exporter_otlp_endpoint: str | None = setting("OTEL_EXPORTER_OTLP_ENDPOINT")
    otel_exporter_otlp_traces_endpoint: str | None = setting("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    otel_propagators: tuple[str, ...] = setting("OTEL_PROPAGATORS", ("tracecontext", "baggage"))
    otel_traces_sampler: str = setting("OTEL_TRACES_SAMPLER", "parentbased_always_on")
    otel_traces_sampler_arg: str | None = setting("OTEL_TRACES_SAMPLER_ARG")

    # Live progress (server-sent events) and the web page.
    # Concurrent event streams per API process; more are refused with 429.
    sse_max_streams: int = setting("PAGELENS_SSE_MAX_STREAMS", 200, minimum=1)
    sse_keepalive: float = setting("PAGELENS_SSE_KEEPALIVE", 15.0)  # seconds between keep-alives on an idle stream
    # A stream ends after this long and the client reconnects with Last-Event-ID: a client that
    # vanished without a FIN holds a slot no longer than this, and neither does a server shutdown
    # (uvicorn waits for open responses before it stops).
    sse_max_seconds: float = setting("PAGELENS_SSE_MAX_SECONDS", 60.0)
    # The link each scan's trace id gets on the web page; {trace_id} is replaced; empty: no link.
    trace_url_template: str = setting("PAGELENS_TRACE_URL_TEMPLATE", GRAFANA_EXPLORE_TRACE, blank=True)
    # POST /v1/traces takes the web page's spans and forwards them to this OTLP/HTTP traces URL,
    # else to where the API's own spans go (when that is OTLP); with neither, or when switched
    # off, it answers 404.
    browser_traces: bool = setting("PAGELENS_BROWSER_TRACES", True)
    browser_traces_endpoint: str | None = setting("PAGELENS_BROWSER_TRACES_ENDPOINT")
    browser_traces_max_bytes: int = setting("PAGELENS_BROWSER_TRACES_MAX_BYTES", 512 * 1024, minimum=1024)
    # Exports per minute per client address.
    browser_traces_per_minute: int = setting("PAGELENS_BROWSER_TRACES_PER_MINUTE", 60, minimum=1)

    # Tenancy: API keys live in the database (`pagelens keys`). An API process caches a key for this
    # many seconds (a revoked key is dropped at once on NOTIFY, and after this at the latest), and
    # one tenant may hold at most this share of the process's event streams (with keys only).
    key_cache_seconds: float = setting("PAGELENS_KEY_CACHE_SECONDS", 5.0)
    sse_tenant_share: float = setting("PAGELENS_SSE_TENANT_SHARE", 0.5, parse=_share)

    # The `pagelens` command as a client of a running API.
    api_url: str = setting("PAGELENS_API_URL", "http://127.0.0.1:8000", parse=lambda name, raw: raw.rstrip("/"))
    api_key: str | None = setting("PAGELENS_API_KEY")

    log_level: str = setting("PAGELENS_LOG_LEVEL", "INFO", parse=lambda name, raw: raw.upper())
    migrations_dir: Path = setting("PAGELENS_MIGRATIONS_DIR", ROOT / "migrations")
    data_dir: Path = setting("PAGELENS_DATA_DIR", ROOT / ".pagelens")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        types = get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in fields(cls):
            name, meta = f.metadata["env"], f.metadata
            raw = env.get(name)
            if raw is None or (not (raw := raw.strip()) and not meta["blank"]):
                continue
            parse = meta["parse"] or PARSERS[_type_name(types[f.name])]
            value = parse(name, raw)
            if meta["minimum"] is not None and value < meta["minimum"]:
                raise ConfigError(f"{name} must be >= {meta['minimum']}, got {value}")
            values[f.name] = value
        return cls(**values)

    @classmethod
    def variables(cls) -> dict[str, str]:
        """Each field's environment variable, by field name."""
        return {f.name: f.metadata["env"] for f in fields(cls)}

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    @property
    def otlp_traces_endpoint(self) -> str | None:
        """Where OTLP spans go when set: the traces endpoint as is, else the base endpoint (the HTTP
        exporter appends /v1/traces to it, as the spec says)."""
        return self.otel_exporter_otlp_traces_endpoint or self.otel_exporter_otlp_endpoint

    @property
    def otlp_traces_protocol(self) -> str:
        return (self.otel_exporter_otlp_traces_protocol or self.otel_exporter_otlp_protocol).lower()

    @property
    def traces_exporters(self) -> tuple[str, ...]:
        """The span exporters in use, in order, without "none" (see `otel_traces_exporter`)."""
        names = self.otel_traces_exporter or (("otlp",) if self.otlp_traces_endpoint else ())
        return tuple(dict.fromkeys(n.lower() for n in names if n.lower() != "none"))

    @property
    def browser_traces_enabled(self) -> bool:
        """Whether POST /v1/traces accepts spans: only when they can go somewhere."""
        exporting = bool(self.otlp_traces_endpoint) and not self.otel_sdk_disabled and "otlp" in self.traces_exporters
        return self.browser_traces and (bool(self.browser_traces_endpoint) or exporting)

    def require_database_url(self) -> str:
        if not self.database_url:
            raise ConfigError("DATABASE_URL is not set (make run starts an embedded server)")
        return self.database_url

    def require_redis_url(self) -> str:
        if not self.redis_url:
            raise ConfigError("REDIS_URL is not set (make run starts an embedded server)")
        return self.redis_url


def _type_name(hint: Any) -> str:
    return hint.__name__ if type(hint) is type else str(hint)


@cache
def get_settings() -> Settings:
    return Settings.from_env()


def child_env(**overrides: str) -> dict[str, str]:
    """The environment for a process pagelens starts (API, worker), with `overrides` applied."""
    return {**os.environ, **overrides}
