"""The API benchmark's typical peer: `POST /api/v1/scan-jobs` built the way a typical team builds and
instruments a FastAPI service, so every run prints how pagelens compares with it.

- FastAPI with a pydantic body model;
- the same `INSERT ... RETURNING *` into the same table on an asyncpg pool, and arq's own
  `enqueue_job` (pickle) with the W3C trace carrier in the job's kwargs, inside a PRODUCER span;
- OpenTelemetry auto-instrumentation of FastAPI, asyncpg and redis, a TracerProvider with a
  BatchSpanProcessor exporting OTLP/HTTP (to OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: the benchmark's
  sink), all at their defaults;
- prometheus-fastapi-instrumentator's HTTP metrics, exposed on /metrics.

Served by the same uvicorn, with the same flags, as `app.main:app`: `uvicorn bench.peer_api:app`.
DATABASE_URL, REDIS_URL and PAGELENS_QUEUE come from the environment (through Settings).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from opentelemetry import propagate, trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.instrumentation.redis import RedisInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind
from prometheus_fastapi_instrumentator import Instrumentator
from pydantic import BaseModel, HttpUrl

from bench.bare_api import INSERT, PREFIX, Backends

provider = TracerProvider(resource=Resource.create({"service.name": "peer-api"}))
provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
trace.set_tracer_provider(provider)
AsyncPGInstrumentor().instrument(tracer_provider=provider)  # type: ignore[no-untyped-call]
RedisInstrumentor().instrument(tracer_provider=provider)
tracer = trace.get_tracer("peer-api")


backends = Backends()


class CreateScan(BaseModel):
    url: HttpUrl


@contextlib.asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    try:
        async with backends.connected():
            yield
    finally:
        provider.shutdown()


app = FastAPI(lifespan=lifespan)


@app.post(PREFIX, status_code=202)
async def create_scan(body: CreateScan) -> JSONResponse:
    row = await backends.pool.fetchrow(INSERT, uuid.uuid4(), "url", str(body.url), None, None, "{}", None, None, None)
    assert row is not None  # RETURNING * always returns the row
    scan_id = str(row["id"])
    attributes = {
        "messaging.system": "arq",
        "messaging.operation.type": "send",
        "messaging.destination.name": backends.queue,
        "messaging.message.id": scan_id,
    }
    with tracer.start_as_current_span(f"send {backends.queue}", kind=SpanKind.PRODUCER, attributes=attributes):
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        await backends.redis.enqueue_job(
            "run_scan", _job_id=scan_id, _queue_name=backends.queue, scan_id=scan_id, trace_context=carrier
        )
    status_url = f"{PREFIX}/{scan_id}/status"
    return JSONResponse(
        {"scanId": scan_id, "status": row["status"], "statusUrl": status_url},
        status_code=202,
        headers={"Location": status_url},
    )


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


FastAPIInstrumentor.instrument_app(app, tracer_provider=provider)
Instrumentator().instrument(app).expose(app)
