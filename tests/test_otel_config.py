"""The standard OTEL_* variables behave as the OpenTelemetry spec says: exporters (a comma list),
OTLP protocol and endpoints, propagators, samplers, the service name and OTEL_SDK_DISABLED.

Samplers and propagators are checked in this process with the in-memory exporter; the whole path
from the environment to exported spans runs in a fresh interpreter per case, because a process
installs its tracer provider once.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from opentelemetry import baggage, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from app.core.settings import Settings
from observability.tracing import batch_defaults, propagator, sampler, span_exporters
from tests.otlp import serve_otlp

ROOT = Path(__file__).resolve().parents[1]
HTTP = "observability.otlp_wire"  # our OTLP/HTTP exporter: our encoding and sender
GRPC = "opentelemetry.exporter.otlp.proto.grpc.trace_exporter"
CONSOLE = "opentelemetry.sdk.trace.export"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, []),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, [HTTP]),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, [HTTP]),
        ({"OTEL_TRACES_EXPORTER": "otlp,console"}, [HTTP, CONSOLE]),
        ({"OTEL_TRACES_EXPORTER": " Console , otlp "}, [CONSOLE, HTTP]),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, [GRPC]),
        (
            {
                "OTEL_TRACES_EXPORTER": "otlp",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
            },
            [HTTP],
        ),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, []),
        ({"OTEL_TRACES_EXPORTER": "zipkin-thrift,console"}, [CONSOLE]),
    ],
)
def test_exporters_follow_the_otel_variables(env: dict[str, str], expected: list[str]) -> None:
    exporters = span_exporters(Settings.from_env(env))
    try:
        assert [type(e).__module__ for e in exporters] == expected
    finally:
        for exporter in exporters:
            exporter.shutdown()


def carrier_of(names: tuple[str, ...]) -> dict[str, str]:
    parent = SpanContext(trace_id=0xABC, span_id=0xDEF, is_remote=True, trace_flags=TraceFlags(1))
    context = baggage.set_baggage("tenant", "t1", trace.set_span_in_context(NonRecordingSpan(parent)))
    carrier: dict[str, str] = {}
    propagator(names).inject(carrier, context=context)
    return carrier


def test_propagators_follow_otel_propagators(caplog: pytest.LogCaptureFixture) -> None:
    assert set(carrier_of(Settings().otel_propagators)) == {"traceparent", "baggage"}
    assert set(carrier_of(("baggage",))) == {"baggage"}
    assert set(carrier_of(("tracecontext",))) == {"traceparent"}
    assert carrier_of(("none",)) == {}
    with caplog.at_level(logging.WARNING, logger="pagelens.tracing"):
        assert set(carrier_of(("b3-made-up", "tracecontext"))) == {"traceparent"}
    assert any("b3-made-up" in r.getMessage() for r in caplog.records)
    extracted = propagator(("baggage",)).extract({"traceparent": f"00-{'1' * 32}-{'2' * 16}-01", "baggage": "k=v"})
    assert baggage.get_baggage("k", extracted) == "v"
    assert not trace.get_current_span(extracted).get_span_context().is_valid, "tracecontext was not asked for"


def sampled(name: str, arg: str | None, *, parent_sampled: bool | None = None, count: int = 200) -> int:
    """How many of `count` spans the sampler keeps, on a provider of its own."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler(name, arg))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    context = None
    if parent_sampled is not None:
        flags = TraceFlags(1 if parent_sampled else 0)
        parent = SpanContext(trace_id=0x1234, span_id=0x5678, is_remote=True, trace_flags=flags)
        context = trace.set_span_in_context(NonRecordingSpan(parent))
    for _ in range(count):
        tracer.start_span("s", context=context).end()
    provider.shutdown()
    return len(exporter.get_finished_spans())


def test_samplers_follow_otel_traces_sampler(caplog: pytest.LogCaptureFixture) -> None:
    default = Settings()
    assert sampled(default.otel_traces_sampler, default.otel_traces_sampler_arg) == 200
    assert sampled(default.otel_traces_sampler, None, parent_sampled=False) == 0, "parent-based by default"
    assert sampled("always_off", None) == 0
    assert sampled("always_on", None, parent_sampled=False) == 200
    assert sampled("traceidratio", "0") == 0
    assert sampled("traceidratio", "1") == 200
    assert 20 < sampled("traceidratio", "0.5") < 180
    assert sampled("parentbased_traceidratio", "0", parent_sampled=True) == 200
    assert sampled("parentbased_traceidratio", "0") == 0
    assert sampled("parentbased_always_off", None, parent_sampled=True) == 200
    assert sampled("parentbased_always_off", None) == 0
    with caplog.at_level(logging.WARNING, logger="pagelens.tracing"):
        assert sampled("traceidratio", "2.5") == 200, "an invalid ratio falls back to 1.0"
        assert sampled("no-such-sampler", None, parent_sampled=False) == 0, "falls back to parentbased_always_on"
    assert {"2.5", "no-such-sampler"} <= {str(a) for r in caplog.records for a in (r.args or ())}


# Runs in a fresh interpreter: settings from its environment, tracing set up once, one span with
# baggage injected; prints what it injected on stderr (stdout is the console exporter's).
PROBE = """
import json, sys
from opentelemetry import baggage, propagate, trace
from app.core.settings import Settings
from observability.tracing import flush, setup_tracing

provider = setup_tracing(Settings.from_env(), "pagelens-probe")
with trace.get_tracer("probe").start_as_current_span("probe", kind=trace.SpanKind.SERVER) as span:
    carrier = {}
    propagate.inject(carrier, context=baggage.set_baggage("tenant", "t1"))
    trace_id = format(span.get_span_context().trace_id, "032x")
flush()
print(json.dumps({"provider": provider is not None, "trace_id": trace_id, "carrier": carrier}), file=sys.stderr)
"""


def probe(env: dict[str, str]) -> tuple[dict[str, object], str]:
    clean = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stderr.strip().splitlines()[-1])
    return result, done.stdout


def test_exporter_list_endpoint_service_and_propagators_from_the_environment() -> None:
    with serve_otlp() as receiver:
        result, stdout = probe(
            {
                "OTEL_TRACES_EXPORTER": "otlp,console",
                "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,  # the exporter appends /v1/traces
                "OTEL_SERVICE_NAME": "probe-service",
                "OTEL_PROPAGATORS": "baggage",
            }
        )
        trace_id = str(result["trace_id"])
        spans = receiver.wait_for(lambda spans: any(s.trace_id == trace_id for s in spans), timeout=10)
    assert [(s.name, s.service_name) for s in spans] == [("probe", "probe-service")]
    assert trace_id in stdout.replace("0x", ""), "the console exporter printed the same span"
    assert result["carrier"] == {"baggage": "tenant=t1"}
    assert not receiver.rejected


def test_traces_endpoint_is_used_as_is_and_the_default_propagators_apply() -> None:
    with serve_otlp() as receiver:
        result, stdout = probe({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{receiver.endpoint}/v1/traces"})
        trace_id = str(result["trace_id"])
        spans = receiver.wait_for(lambda spans: any(s.trace_id == trace_id for s in spans), timeout=10)
    assert [(s.name, s.service_name) for s in spans] == [("probe", "pagelens-probe")]
    assert stdout == "", "no console exporter unless asked for"
    carrier = result["carrier"]
    assert isinstance(carrier, dict) and set(carrier) == {"traceparent", "baggage"}
    assert str(carrier["traceparent"]).split("-")[1] == trace_id


def test_sdk_disabled_installs_nothing_and_exports_nothing() -> None:
    with serve_otlp() as receiver:
        result, stdout = probe(
            {
                "OTEL_SDK_DISABLED": "TRUE",
                "OTEL_TRACES_EXPORTER": "otlp,console",
                "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            }
        )
        assert result["provider"] is False and result["trace_id"] == "0" * 32
        assert receiver.exports == 0 and stdout == ""


def test_otel_variables_are_read_into_settings() -> None:
    settings = Settings.from_env(
        {
            "OTEL_SDK_DISABLED": "true",
            "OTEL_TRACES_EXPORTER": "otlp,console",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
            "OTEL_SERVICE_NAME": "custom",
            "OTEL_PROPAGATORS": "tracecontext",
            "OTEL_TRACES_SAMPLER": "traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "0.25",
        }
    )
    assert settings.otel_sdk_disabled and settings.traces_exporters == ("otlp", "console")
    assert settings.otlp_traces_protocol == "grpc" and settings.otlp_traces_endpoint == "http://collector:4318"
    assert settings.otel_service_name == "custom" and settings.otel_propagators == ("tracecontext",)
    assert (settings.otel_traces_sampler, settings.otel_traces_sampler_arg) == ("traceidratio", "0.25")
    # The spec's booleans: only "true", in any case, is true.
    assert not Settings.from_env({"OTEL_SDK_DISABLED": "yes"}).otel_sdk_disabled
    assert Settings.from_env({"OTEL_TRACES_EXPORTER": "none"}).traces_exporters == ()


def test_span_batches_are_ours_unless_an_otel_bsp_size_is_set() -> None:
    assert batch_defaults({}) == {"max_export_batch_size": 2048, "max_queue_size": 8192}
    assert batch_defaults({"OTEL_BSP_SCHEDULE_DELAY": "100"}) == {"max_export_batch_size": 2048, "max_queue_size": 8192}
    assert batch_defaults({"OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "64"}) == {}
    assert batch_defaults({"OTEL_BSP_MAX_QUEUE_SIZE": "1000"}) == {}
    processor = BatchSpanProcessor(ConsoleSpanExporter(), **batch_defaults({}))  # valid: batch <= queue
    processor.shutdown()  # type: ignore[no-untyped-call]
