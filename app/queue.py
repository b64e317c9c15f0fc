"""Everything about talking to arq: connection, payload encoding, and enqueueing scans."""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgpack
from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.jobs import Job
from opentelemetry import propagate

RUN_SCAN = "run_scan"
# The one keyword argument that carries the W3C trace context (traceparent, tracestate).
TRACE_KWARG = "trace_context"


def _fallback(obj: Any) -> Any:
    # arq stores a failed job's exception as its result; keep its text rather than pickling it.
    if isinstance(obj, dt.datetime):
        return obj.isoformat()
    return repr(obj)


def serialize(obj: Any) -> bytes:
    """msgpack instead of arq's default pickle: write access to Redis must not mean code execution."""
    packed: bytes = msgpack.packb(obj, default=_fallback, use_bin_type=True)
    return packed


def deserialize(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def redis_settings(url: str) -> RedisSettings:
    settings = RedisSettings.from_dsn(url)
    # Ride out a Redis restart instead of giving up after arq's default 5 quick tries.
    settings.conn_retries = 30
    settings.conn_retry_delay = 1
    return settings


async def connect(url: str) -> ArqRedis:
    return await create_pool(redis_settings(url), job_serializer=serialize, job_deserializer=deserialize)


def trace_carrier() -> dict[str, str]:
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


async def enqueue_scan(redis: ArqRedis, queue: str, scan_id: str) -> Job | None:
    """Enqueue the scan's job under the scan id; None when arq already holds a job with that id."""
    return await redis.enqueue_job(
        RUN_SCAN, _job_id=scan_id, _queue_name=queue, scan_id=scan_id, trace_context=trace_carrier()
    )
