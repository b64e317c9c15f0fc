"""The one settings object. Environment variables are read here and nowhere else."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


class ConfigError(ValueError):
    pass


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def _int(env: Mapping[str, str], name: str, default: int, *, minimum: int = 0) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if value <= 0:
        raise ConfigError(f"{name} must be > 0, got {value}")
    return value


def _share(env: Mapping[str, str], name: str, default: float) -> float:
    value = _float(env, name, default)
    if value > 1:
        raise ConfigError(f"{name} must be a share between 0 and 1, got {value}")
    return value


def _list(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in env.get(name, "").split(",") if item.strip())


def _opt(env: Mapping[str, str], name: str) -> str | None:
    return env.get(name, "").strip() or None


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
    database_url: str | None = None
    redis_url: str | None = None
    queue_name: str = "pagelens:queue"
    fetch_allow_hosts: frozenset[str] = frozenset()
    api_keys: tuple[str, ...] = ()
    worker_metrics_port: int = 9191
    # The worker's /metrics listens on loopback unless told otherwise (compose sets 0.0.0.0).
    worker_metrics_host: str = "127.0.0.1"
    # Seconds between queue-depth samples (pagelens_queue_size, GET /api/v1/queues).
    queue_sample_interval: float = 5.0
    enable_metrics: bool = True
    psi_api_key: str | None = None
    psi_base_url: str = "https://www.googleapis.com/pagespeedonline/v5/runPagespeed"
    llm_base_url: str | None = None
    llm_api_key: str | None = None
    llm_model: str = "gpt-4o-mini"

    # Request limits: a body larger than this is refused with 413 before it is read whole.
    max_body_bytes: int = 1_048_576
    max_document_chars: int = 200_000
    # All request header lines together (names and values); more is refused with 431.
    max_header_bytes: int = 16_384
    # Per API key (only with PAGELENS_API_KEYS): requests per minute (as a burst too), and scans
    # open at once. 0 turns either off.
    rate_limit: int = 600
    max_open_scans: int = 100
    # The API's /metrics: with a token it requires `Authorization: Bearer <token>`; with a port it
    # moves to its own listener on that port and host, and the public port answers 404 there.
    metrics_token: str | None = None
    api_metrics_port: int | None = None
    api_metrics_host: str = "127.0.0.1"

    # Fetching user-supplied URLs.
    fetch_connect_timeout: float = 5.0
    fetch_read_timeout: float = 10.0
    fetch_total_timeout: float = 20.0
    fetch_max_bytes: int = 5 * 1024 * 1024
    fetch_max_redirects: int = 5
    fetch_allowed_ports: frozenset[int] = frozenset({80, 443, 8080, 8443})
    fetch_user_agent: str = "pagelens/0.1 (+https://github.com/pagelens/pagelens)"

    # Jobs.
    max_tries: int = 3
    retry_base_delay: float = 1.0
    job_timeout: float = 120.0
    max_jobs: int = 10
    # arq's poll of the queue. Enqueues wake workers at once (worker/wake.py), so the poll is only
    # the safety net and for deferred retries: a short one would only cost Redis round trips.
    poll_delay: float = 0.5
    # On SIGTERM a worker stops taking jobs and gives running ones this long to finish before it
    # cancels them (a cancelled scan is released and runs again on another worker).
    shutdown_grace: int = 20
    retention_days: int = 30
    # Seconds between sweeps for scans arq lost track of; a QUEUED scan is swept once this old.
    sweep_interval: int = 30
    keybert_processes: int = 1
    keybert_timeout: float = 60.0
    keyphrase_cache_ttl: int = 7 * 24 * 3600
    psi_cache_ttl: int = 3600
    external_timeout: float = 30.0

    # OpenTelemetry: the SDK reads endpoints, headers and the sampler from OTEL_* itself; these
    # pick the exporter and the service name.
    otel_sdk_disabled: bool = False
    otel_traces_exporter: str | None = None
    otel_exporter_otlp_protocol: str = "http/protobuf"
    otel_endpoint_configured: bool = False
    otel_service_name: str | None = None

    # Live progress (server-sent events) and the web page.
    sse_max_streams: int = 200  # concurrent event streams per API process; more are refused with 429
    sse_keepalive: float = 15.0  # seconds between keep-alive comments on an idle stream
    # A stream ends after this long and the client reconnects with Last-Event-ID: a client that
    # vanished without a FIN holds a slot no longer than this, and neither does a server shutdown
    # (uvicorn waits for open responses before it stops).
    sse_max_seconds: float = 60.0
    # The link each scan's trace id gets on the web page; {trace_id} is replaced.
    trace_url_template: str = GRAFANA_EXPLORE_TRACE
    # POST /v1/traces takes the web page's spans and forwards them to this OTLP/HTTP traces URL,
    # else to where the API's own spans go (when that is OTLP); with neither, or when switched
    # off, it answers 404.
    browser_traces: bool = True
    browser_traces_endpoint: str | None = None
    browser_traces_max_bytes: int = 512 * 1024
    browser_traces_per_minute: int = 60  # per client address

    # Tenancy: API keys live in the database (`pagelens keys`). An API process caches a key for this
    # many seconds (a revoked key is dropped at once on NOTIFY, and after this at the latest), and
    # one tenant may hold at most this share of the process's event streams (with keys only).
    key_cache_seconds: float = 5.0
    sse_tenant_share: float = 0.5

    # The `pagelens` command as a client of a running API.
    api_url: str = "http://127.0.0.1:8000"
    api_key: str | None = None

    log_level: str = "INFO"
    migrations_dir: Path = field(default=ROOT / "migrations")
    data_dir: Path = field(default=ROOT / ".pagelens")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        ports = _list(env, "PAGELENS_FETCH_ALLOWED_PORTS")
        try:
            allowed_ports = frozenset(int(p) for p in ports) if ports else cls.fetch_allowed_ports
        except ValueError:
            raise ConfigError("PAGELENS_FETCH_ALLOWED_PORTS must be a comma list of ports") from None
        defaults = cls()
        return cls(
            database_url=_opt(env, "DATABASE_URL"),
            redis_url=_opt(env, "REDIS_URL"),
            queue_name=_opt(env, "PAGELENS_QUEUE") or defaults.queue_name,
            fetch_allow_hosts=frozenset(h.lower() for h in _list(env, "PAGELENS_FETCH_ALLOW_HOSTS")),
            api_keys=_list(env, "PAGELENS_API_KEYS"),
            worker_metrics_port=_int(env, "PAGELENS_WORKER_METRICS_PORT", 9191),
            worker_metrics_host=_opt(env, "PAGELENS_WORKER_METRICS_HOST") or defaults.worker_metrics_host,
            queue_sample_interval=_float(env, "PAGELENS_QUEUE_SAMPLE_INTERVAL", defaults.queue_sample_interval),
            enable_metrics=_bool(env, "ENABLE_METRICS", True),
            psi_api_key=_opt(env, "PSI_API_KEY"),
            psi_base_url=_opt(env, "PSI_BASE_URL") or defaults.psi_base_url,
            llm_base_url=_opt(env, "LLM_BASE_URL"),
            llm_api_key=_opt(env, "LLM_API_KEY"),
            llm_model=_opt(env, "LLM_MODEL") or defaults.llm_model,
            max_body_bytes=_int(env, "PAGELENS_MAX_BODY_BYTES", defaults.max_body_bytes, minimum=1024),
            max_header_bytes=_int(env, "PAGELENS_MAX_HEADER_BYTES", defaults.max_header_bytes, minimum=1024),
            rate_limit=_int(env, "PAGELENS_RATE_LIMIT", defaults.rate_limit),
            max_open_scans=_int(env, "PAGELENS_MAX_OPEN_SCANS", defaults.max_open_scans),
            metrics_token=_opt(env, "PAGELENS_METRICS_TOKEN"),
            api_metrics_port=_int(env, "PAGELENS_API_METRICS_PORT", 0) or None,
            api_metrics_host=_opt(env, "PAGELENS_API_METRICS_HOST") or defaults.api_metrics_host,
            fetch_total_timeout=_float(env, "PAGELENS_FETCH_TIMEOUT", defaults.fetch_total_timeout),
            fetch_max_bytes=_int(env, "PAGELENS_FETCH_MAX_BYTES", defaults.fetch_max_bytes, minimum=1024),
            fetch_allowed_ports=allowed_ports,
            max_tries=_int(env, "PAGELENS_MAX_TRIES", defaults.max_tries, minimum=1),
            job_timeout=_float(env, "PAGELENS_JOB_TIMEOUT", defaults.job_timeout),
            max_jobs=_int(env, "PAGELENS_MAX_JOBS", defaults.max_jobs, minimum=1),
            poll_delay=_float(env, "PAGELENS_POLL_DELAY", defaults.poll_delay),
            shutdown_grace=_int(env, "PAGELENS_SHUTDOWN_GRACE", defaults.shutdown_grace),
            retention_days=_int(env, "PAGELENS_RETENTION_DAYS", defaults.retention_days, minimum=1),
            sweep_interval=_int(env, "PAGELENS_SWEEP_INTERVAL", defaults.sweep_interval, minimum=1),
            keybert_processes=_int(env, "PAGELENS_KEYBERT_PROCESSES", 1, minimum=1),
            keybert_timeout=_float(env, "PAGELENS_KEYBERT_TIMEOUT", defaults.keybert_timeout),
            otel_sdk_disabled=_bool(env, "OTEL_SDK_DISABLED", False),
            otel_traces_exporter=_opt(env, "OTEL_TRACES_EXPORTER"),
            otel_exporter_otlp_protocol=_opt(env, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            or _opt(env, "OTEL_EXPORTER_OTLP_PROTOCOL")
            or defaults.otel_exporter_otlp_protocol,
            otel_endpoint_configured=bool(
                _opt(env, "OTEL_EXPORTER_OTLP_ENDPOINT") or _opt(env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            ),
            otel_service_name=_opt(env, "OTEL_SERVICE_NAME"),
            sse_max_streams=_int(env, "PAGELENS_SSE_MAX_STREAMS", defaults.sse_max_streams, minimum=1),
            sse_keepalive=_float(env, "PAGELENS_SSE_KEEPALIVE", defaults.sse_keepalive),
            sse_max_seconds=_float(env, "PAGELENS_SSE_MAX_SECONDS", defaults.sse_max_seconds),
            trace_url_template=env.get("PAGELENS_TRACE_URL_TEMPLATE", defaults.trace_url_template).strip(),
            browser_traces=_bool(env, "PAGELENS_BROWSER_TRACES", True),
            browser_traces_endpoint=_opt(env, "PAGELENS_BROWSER_TRACES_ENDPOINT"),
            browser_traces_max_bytes=_int(
                env, "PAGELENS_BROWSER_TRACES_MAX_BYTES", defaults.browser_traces_max_bytes, minimum=1024
            ),
            browser_traces_per_minute=_int(
                env, "PAGELENS_BROWSER_TRACES_PER_MINUTE", defaults.browser_traces_per_minute, minimum=1
            ),
            key_cache_seconds=_float(env, "PAGELENS_KEY_CACHE_SECONDS", defaults.key_cache_seconds),
            sse_tenant_share=_share(env, "PAGELENS_SSE_TENANT_SHARE", defaults.sse_tenant_share),
            api_url=(_opt(env, "PAGELENS_API_URL") or defaults.api_url).rstrip("/"),
            api_key=_opt(env, "PAGELENS_API_KEY"),
            log_level=(_opt(env, "PAGELENS_LOG_LEVEL") or "INFO").upper(),
            data_dir=Path(_opt(env, "PAGELENS_DATA_DIR") or defaults.data_dir),
        )

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    @property
    def traces_exporter(self) -> str:
        """The span exporter in use: the first of OTEL_TRACES_EXPORTER, else "otlp" when an endpoint
        is set, else "none". (OTel's own default is "otlp"; pagelens exports only when asked to, so a
        developer without a collector gets no connection errors every few seconds.)"""
        name = self.otel_traces_exporter or ("otlp" if self.otel_endpoint_configured else "none")
        return name.lower().split(",")[0].strip()

    @property
    def browser_traces_enabled(self) -> bool:
        """Whether POST /v1/traces accepts spans: only when they can go somewhere."""
        exporting = self.otel_endpoint_configured and not self.otel_sdk_disabled and self.traces_exporter == "otlp"
        return self.browser_traces and (bool(self.browser_traces_endpoint) or exporting)

    def require_database_url(self) -> str:
        if not self.database_url:
            raise ConfigError("DATABASE_URL is not set (make run starts an embedded server)")
        return self.database_url

    def require_redis_url(self) -> str:
        if not self.redis_url:
            raise ConfigError("REDIS_URL is not set (make run starts an embedded server)")
        return self.redis_url


@cache
def get_settings() -> Settings:
    return Settings.from_env()


def child_env(**overrides: str) -> dict[str, str]:
    """The environment for a process pagelens starts (API, worker), with `overrides` applied."""
    return {**os.environ, **overrides}
