"""Tracing for the API and the worker: one TracerProvider per process, exporter chosen by OTEL_*.

A provider is installed even when nothing is exported, so trace ids exist for the scan's `traceId`
field and for log correlation; `OTEL_SDK_DISABLED=true` turns tracing off entirely.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Sequence
from typing import Protocol

from opentelemetry import propagate, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
from opentelemetry.instrumentation.redis import RedisInstrumentor
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, Decision, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind, TraceState, get_current_span
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import Attributes

from observability import service_version

logger = logging.getLogger("pagelens.tracing")

_provider: TracerProvider | None = None


class TracingSettings(Protocol):
    """What tracing reads from the process's settings (passed in: observability imports no app code)."""

    @property
    def otel_sdk_disabled(self) -> bool: ...
    @property
    def otel_service_name(self) -> str | None: ...
    @property
    def traces_exporter(self) -> str: ...
    @property
    def otel_exporter_otlp_protocol(self) -> str: ...


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


def _configured_sampler() -> Sampler:
    # The SDK's own OTEL_TRACES_SAMPLER parsing; its default is parentbased_always_on.
    try:
        from opentelemetry.sdk.trace.sampling import _get_from_env_or_default

        sampler: Sampler = _get_from_env_or_default()
        return sampler
    except Exception:
        return ALWAYS_ON


def span_exporter(settings: TracingSettings) -> SpanExporter | None:
    name = settings.traces_exporter
    if name == "none":
        return None
    if name == "console":
        return ConsoleSpanExporter()
    if name != "otlp":
        logger.warning("unknown OTEL_TRACES_EXPORTER %r; exporting nothing", name)
        return None
    if settings.otel_exporter_otlp_protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    return HttpExporter()


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
    provider = TracerProvider(resource=resource, sampler=NoOrphanClientSpans(_configured_sampler()))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    elif (chosen := span_exporter(settings)) is not None:
        provider.add_span_processor(BatchSpanProcessor(chosen))
    trace.set_tracer_provider(provider)
    propagate.set_global_textmap(CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()]))
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
