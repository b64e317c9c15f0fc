"""Tracing for the API and the worker: one TracerProvider per process, set up from the standard
OTEL_* variables (read by the caller's settings and passed in: observability imports no app code).

A provider is installed even when nothing is exported, so trace ids exist for the scan's `traceId`
field and for log correlation; `OTEL_SDK_DISABLED=true` turns tracing off entirely. Propagators,
exporters and samplers are found by name the way the SDK finds them: built-in names first, then the
`opentelemetry_propagator` / `opentelemetry_traces_exporter` / `opentelemetry_traces_sampler` entry
points of installed packages.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping, Sequence
from importlib.metadata import entry_points
from typing import Any, Protocol

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
from opentelemetry.instrumentation.redis import RedisInstrumentor
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    DEFAULT_ON,
    Decision,
    ParentBased,
    ParentBasedTraceIdRatio,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, SpanKind, TraceState, get_current_span
from opentelemetry.util.types import Attributes

from observability import service_version

logger = logging.getLogger("pagelens.tracing")

_provider: TracerProvider | None = None


class TracingSettings(Protocol):
    """What tracing reads from the process's settings."""

    @property
    def otel_sdk_disabled(self) -> bool: ...
    @property
    def otel_service_name(self) -> str | None: ...
    @property
    def traces_exporters(self) -> tuple[str, ...]: ...
    @property
    def otlp_traces_protocol(self) -> str: ...
    @property
    def otlp_traces_endpoint(self) -> str | None: ...
    @property
    def otel_exporter_otlp_traces_endpoint(self) -> str | None: ...
    @property
    def otel_propagators(self) -> tuple[str, ...]: ...
    @property
    def otel_traces_sampler(self) -> str: ...
    @property
    def otel_traces_sampler_arg(self) -> str | None: ...


def _plugin(group: str, name: str) -> Any | None:
    """The object an installed package registers under `name` in the entry-point `group`."""
    found = entry_points(group=group, name=name)
    return next(iter(found)).load() if found else None


def instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class NoOrphanClientSpans(Sampler):
    """Drop CLIENT spans that have no parent, then defer to the configured sampler.

    Every scan's trace starts at a SERVER, PRODUCER or CONSUMER span. A Redis or PostgreSQL call
    with no parent is background work (arq polling the queue every few hundred ms, health checks,
    the queue sampler): one trace per call would bury the useful ones.
    """

    def __init__(self, delegate: Sampler) -> None:
        self.delegate = delegate

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        if kind is SpanKind.CLIENT and not get_current_span(parent_context).get_span_context().is_valid:
            return SamplingResult(Decision.DROP)
        return self.delegate.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return f"NoOrphanClientSpans{{{self.delegate.get_description()}}}"


def propagator(names: Sequence[str]) -> TextMapPropagator:
    """OTEL_PROPAGATORS: the named propagators, composed in order; "none" or an unknown name adds
    nothing (an unknown one is logged)."""
    chosen: list[TextMapPropagator] = []
    for name in dict.fromkeys(n.strip().lower() for n in names):
        if name in ("", "none"):
            continue
        factory = _plugin("opentelemetry_propagator", name)
        if factory is None:
            logger.warning("unknown propagator %r in OTEL_PROPAGATORS; skipped", name)
            continue
        chosen.append(factory())
    return CompositePropagator(chosen)


def _ratio(arg: str | None) -> float:
    try:
        ratio = float(arg) if arg else 1.0
    except ValueError:
        ratio = -1.0
    if not 0.0 <= ratio <= 1.0:
        logger.warning("OTEL_TRACES_SAMPLER_ARG %r is not a ratio in [0, 1]; using 1.0", arg)
        return 1.0
    return ratio


def sampler(name: str, arg: str | None = None) -> Sampler:
    """OTEL_TRACES_SAMPLER and its _ARG: the spec's built-in samplers, else one an installed package
    registers; an unknown name falls back to the default, parentbased_always_on."""
    name = name.strip().lower()
    if name in ("traceidratio", "parentbased_traceidratio"):
        ratio = _ratio(arg)
        return TraceIdRatioBased(ratio) if name == "traceidratio" else ParentBasedTraceIdRatio(ratio)
    builtin = {
        "always_on": ALWAYS_ON,
        "always_off": ALWAYS_OFF,
        "parentbased_always_on": DEFAULT_ON,
        "parentbased_always_off": ParentBased(ALWAYS_OFF),
    }
    if name in builtin:
        return builtin[name]
    factory = _plugin("opentelemetry_traces_sampler", name)
    if factory is None:
        logger.warning("unknown OTEL_TRACES_SAMPLER %r; using parentbased_always_on", name)
        return DEFAULT_ON
    custom: Sampler = factory(arg)
    return custom


def otlp_exporter(settings: TracingSettings) -> SpanExporter:
    """The OTLP span exporter for the configured protocol and endpoint: the SDK's for grpc; for
    http/protobuf ours, with the request bytes written directly (observability/otlp_wire.py) and sent
    by our own sender (observability/otlp_http.py), from the same OTEL_EXPORTER_OTLP_* variables."""
    protocol = settings.otlp_traces_protocol
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter(endpoint=settings.otlp_traces_endpoint)
    if protocol != "http/protobuf":
        logger.warning("OTLP protocol %r is not supported; using http/protobuf", protocol)
    from observability.otlp_wire import WireSpanExporter

    # The signal-specific endpoint is used as is; the base one gets the signal's path (the spec).
    endpoint = settings.otel_exporter_otlp_traces_endpoint or (
        f"{settings.otlp_traces_endpoint.rstrip('/')}/v1/traces" if settings.otlp_traces_endpoint else None
    )
    return WireSpanExporter(endpoint=endpoint)


def span_exporters(settings: TracingSettings) -> list[SpanExporter]:
    """OTEL_TRACES_EXPORTER: one exporter per name in the list; an unknown name is logged and skipped."""
    exporters: list[SpanExporter] = []
    for name in settings.traces_exporters:
        if name == "otlp":
            exporters.append(otlp_exporter(settings))
        elif name == "console":
            exporters.append(ConsoleSpanExporter())
        elif (factory := _plugin("opentelemetry_traces_exporter", name)) is not None:
            exporters.append(factory())
        else:
            logger.warning("unknown OTEL_TRACES_EXPORTER %r; skipped", name)
    return exporters


# The span batches, chosen by measurement (docs/performance.md, API): batches of 2,048 spans (the
# SDK's: 512) in a queue of 8,192 (2,048) cost the traced API less CPU than the SDK's sizes, for a
# higher p99 at 200 req/s (encoding a batch holds the GIL). The two go together (a batch may not
# exceed the queue), so they apply only when neither OTEL_BSP_ size variable is set.
BATCH_SIZES = {"OTEL_BSP_MAX_EXPORT_BATCH_SIZE": 2048, "OTEL_BSP_MAX_QUEUE_SIZE": 8192}


def batch_defaults(environ: Mapping[str, str]) -> dict[str, Any]:
    """BatchSpanProcessor size arguments: ours, unless the environment sets either of the SDK's."""
    if any(environ.get(name, "").strip() for name in BATCH_SIZES):
        return {}
    return {
        "max_export_batch_size": BATCH_SIZES["OTEL_BSP_MAX_EXPORT_BATCH_SIZE"],
        "max_queue_size": BATCH_SIZES["OTEL_BSP_MAX_QUEUE_SIZE"],
    }


def setup_tracing(
    settings: TracingSettings, default_service: str, *, exporter: SpanExporter | None = None
) -> TracerProvider | None:
    """Install the process's TracerProvider once; later calls return the same provider.

    `exporter` overrides the OTEL_* choice (tests pass an in-memory exporter, exported synchronously).
    """
    global _provider
    if _provider is not None:
        return _provider
    if settings.otel_sdk_disabled:
        return None
    resource = Resource.create(
        {
            "service.name": settings.otel_service_name or default_service,
            "service.version": service_version(),
            "service.instance.id": instance_id(),
        }
    )
    chosen = sampler(settings.otel_traces_sampler, settings.otel_traces_sampler_arg)
    provider = TracerProvider(resource=resource, sampler=NoOrphanClientSpans(chosen))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        for each in span_exporters(settings):
            provider.add_span_processor(BatchSpanProcessor(each, **batch_defaults(os.environ)))
    trace.set_tracer_provider(provider)
    propagate.set_global_textmap(propagator(settings.otel_propagators))
    AsyncPGInstrumentor().instrument(tracer_provider=provider)  # type: ignore[no-untyped-call]
    RedisInstrumentor().instrument(tracer_provider=provider)
    _provider = provider
    return provider


def flush(timeout_millis: int = 5000) -> None:
    """Export what is buffered; called on API and worker shutdown. An unreachable endpoint only
    costs the timeout: the exporter logs and drops, it never raises into the caller."""
    if _provider is not None:
        try:
            _provider.force_flush(timeout_millis)
        except Exception:
            logger.warning("flushing spans failed", exc_info=True)
