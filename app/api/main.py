"""The Starlette application and its lifespan; served as `uvicorn app.main:app` (app/main.py)."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from app.api import openapi
from app.api.auth import APIKeyAuth, bearer_matches
from app.api.keyring import KeyRing
from app.api.middleware import HeaderLimits, HTTPMetrics, span_details
from app.api.problems import Problem, exception_handlers
from app.api.routes import documents, events, health, keys, queues, scans, traces, web
from app.api.scan_events import ScanEvents
from app.api.server_span import ServerSpans
from app.api.span_forwarding import BrowserTraces
from app.api.state import State
from app.core import db, queue
from app.core.heap import freeze_startup_heap
from app.core.keys import CHANNEL as KEYS_CHANNEL
from app.core.settings import Settings, get_settings
from observability import metrics
from observability.logs import setup_logging
from observability.metrics_server import MetricsServer, observe_pool
from observability.propagation import TraceHeaderGuard
from observability.sampler import QueueSampler
from observability.tracing import flush, setup_tracing


def create_app(settings: Settings | None = None, *, configure_logging: bool = True) -> Starlette:
    settings = settings or get_settings()
    if configure_logging:
        setup_logging(settings.log_level)
    provider = setup_tracing(settings, "pagelens-api")
    schema = openapi.document()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        pool = await db.wait_for_pool(settings.require_database_url())
        redis = queue.lazy_client(settings.require_redis_url(), outage_seconds=queue.API_REDIS_OUTAGE)
        ring = KeyRing(pool, settings.api_keys, settings.key_cache_seconds)
        hub = ScanEvents(
            settings.require_database_url(),
            pool,
            max_streams=settings.sse_max_streams,
            tenant_share=settings.sse_tenant_share,
            # The same listener connection drops the key cache whenever api_keys changes (and after
            # every reconnect, when a change may have been missed).
            also={KEYS_CHANNEL: ring.invalidate},
        )
        hub.start()
        browser = BrowserTraces.from_settings(settings)
        app.state.pagelens = State(
            settings=settings, pool=pool, redis=redis, events=hub, keys=ring, browser_traces=browser
        )
        # A leadership candidate: at most one process per queue samples and exports queue depth.
        sampler = QueueSampler(redis, pool, settings.queue_name, interval=settings.queue_sample_interval)
        sampler.start()
        # /metrics on a listener of its own (PAGELENS_API_METRICS_PORT), off the public port.
        metrics_server: MetricsServer | None = None
        if settings.enable_metrics and settings.api_metrics_port:
            metrics_server = MetricsServer(
                settings.api_metrics_host, settings.api_metrics_port, before_render=lambda: observe_pool(pool)
            )
            await metrics_server.start()
        freeze_startup_heap()
        try:
            yield
        finally:
            if metrics_server is not None:
                await metrics_server.stop()
            await sampler.stop()
            await hub.stop()
            if browser is not None:
                await browser.aclose()  # lets the forwards in flight finish
            await redis.aclose()
            await pool.close()
            flush()

    async def openapi_json(request: Request) -> Response:
        return JSONResponse(schema)

    async def metrics_endpoint(request: Request) -> Response:
        if not settings.enable_metrics:
            raise Problem(404, "metrics are disabled (ENABLE_METRICS=false)")
        if settings.api_metrics_port:
            raise Problem(404, "metrics are served on their own port (PAGELENS_API_METRICS_PORT)")
        if settings.metrics_token and not bearer_matches(request.headers.get("authorization"), settings.metrics_token):
            raise Problem(401, "a valid metrics token is required", headers={"WWW-Authenticate": "Bearer"})
        observe_pool(State.of(request).pool)
        body, headers = metrics.exposition(request.headers.getlist("accept"))
        return Response(body, headers=headers)

    routes: list[BaseRoute] = [
        *scans.routes,
        *events.routes,
        *traces.routes,
        *web.routes,
        *documents.routes,
        *health.routes,
        *queues.routes,
        *keys.routes,
        Route("/openapi.json", openapi_json, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
    ]
    application = Starlette(
        routes=routes,
        middleware=[
            Middleware(HTTPMetrics, routes=routes, enabled=settings.enable_metrics),
            Middleware(HeaderLimits, max_bytes=settings.max_header_bytes),
            Middleware(APIKeyAuth, rate_limit=settings.rate_limit),
        ],
        exception_handlers=exception_handlers(),
        lifespan=lifespan,
    )
    if provider is not None:
        application.add_middleware(
            ServerSpans,
            tracer_provider=provider,
            details=functools.partial(span_details, routes),
            # Probes and scrapes arrive every few seconds and say nothing about scans; browser span
            # exports would trace the tracing, and the page's static files are just files.
            excluded=frozenset({"/healthz", "/readyz", "/metrics", "/v1/traces"}),
            excluded_prefixes=("/static/",),
        )
    # Added last so it runs first: bad trace headers are gone before instrumentation reads them.
    application.add_middleware(TraceHeaderGuard)
    return application


def __getattr__(name: str) -> Starlette:
    # `app.main:app` is built on first access, not on import, so tests and tools can import this
    # module with their own settings.
    if name == "app":
        application = create_app()
        globals()["app"] = application
        return application
    raise AttributeError(name)
