"""Everything about talking to arq: connection, payload encoding, and enqueueing scans."""

from __future__ import annotations

import contextvars
import datetime as dt
from typing import Any

import msgpack
from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.constants import job_key_prefix, result_key_prefix, retry_key_prefix
from arq.jobs import Job, serialize_job
from arq.utils import timestamp_ms
from opentelemetry import propagate, trace
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.trace import SpanKind
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from observability import metrics

RUN_SCAN = "run_scan"
# The one keyword argument that carries the W3C trace context (traceparent, tracestate).
TRACE_KWARG = "trace_context"

tracer = trace.get_tracer("pagelens.queue")

# The job arq decoded last in this task. arq's on_job_start hook gets no kwargs, but arq decodes
# the job with our deserializer in the same task just before calling the hook, so the hook can
# read the trace carrier from here without another Redis round trip.
decoded_job: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("decoded_job", default=None)


# Matches arq 0.28 `ArqRedis.enqueue_job` for a job that is due at once (checked by
# tests/test_arq_contract.py against the installed arq): refuse an id that has a job or a result,
# store the job with arq's expiry, add it to the queue scored by its enqueue time. One atomic round
# trip instead of three (WATCH, EXISTS, MULTI/EXEC), plus the PUBLISH that wakes idle workers at
# once (worker/wake.py) instead of at their next poll.
_ENQUEUE_LUA = """
if redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then return 0 end
redis.call('PSETEX', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[4])
redis.call('PUBLISH', ARGV[5], ARGV[4])
return 1
"""


def wake_channel(queue: str) -> str:
    """The pub/sub channel an enqueue publishes the job id on; workers of `queue` listen to it."""
    return f"{queue}:wake"


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
    value = msgpack.unpackb(data, raw=False, strict_map_key=False)
    if isinstance(value, dict) and "f" in value and "k" in value:
        decoded_job.set(value)
    return value


# How long a worker's Redis commands keep retrying through an outage (a restart, a failover) before
# the error surfaces. Without this, redis-py raises on the first refused connection and arq's worker
# loop exits. The API waits far less: it answers 202 or 503 instead of holding requests.
WORKER_REDIS_OUTAGE = 60.0
API_REDIS_OUTAGE = 1.0
BACKOFF_BASE, BACKOFF_CAP = 0.05, 1.0


def _retry(outage_seconds: float) -> Retry:
    """Capped exponential backoff with as many tries as fit into `outage_seconds`."""
    backoff = ExponentialBackoff(cap=BACKOFF_CAP, base=BACKOFF_BASE)
    waited, retries = 0.0, 0
    while waited < outage_seconds:
        retries += 1
        waited += backoff.compute(retries)
    return Retry(backoff, retries)


def redis_settings(url: str, *, outage_seconds: float = WORKER_REDIS_OUTAGE) -> RedisSettings:
    settings = RedisSettings.from_dsn(url)
    # Ride out a Redis restart at start-up instead of giving up after arq's default 5 quick tries,
    # and afterwards retry every command (pipelines included) with backoff.
    settings.conn_retries = 30
    settings.conn_retry_delay = 1
    settings.retry = _retry(outage_seconds)
    settings.retry_on_error = [RedisConnectionError, RedisTimeoutError, ConnectionError, TimeoutError]
    return settings


async def connect(url: str, *, outage_seconds: float = WORKER_REDIS_OUTAGE) -> ArqRedis:
    settings = redis_settings(url, outage_seconds=outage_seconds)
    return await create_pool(settings, job_serializer=serialize, job_deserializer=deserialize)


def lazy_client(url: str, *, outage_seconds: float) -> ArqRedis:
    """The API's client: the same connection settings as arq's `create_pool` builds (arq 0.28), but
    without its start-up ping, so an API started while Redis is down comes up anyway: it accepts
    scans (the sweeper enqueues them later), and /readyz reports the outage until Redis is back."""
    s = redis_settings(url, outage_seconds=outage_seconds)
    return ArqRedis(
        host=s.host,
        port=s.port,
        unix_socket_path=s.unix_socket_path,
        socket_connect_timeout=s.conn_timeout,
        ssl=s.ssl,
        ssl_keyfile=s.ssl_keyfile,
        ssl_certfile=s.ssl_certfile,
        ssl_cert_reqs=s.ssl_cert_reqs,
        ssl_ca_certs=s.ssl_ca_certs,
        ssl_ca_data=s.ssl_ca_data,
        ssl_check_hostname=s.ssl_check_hostname,
        retry=s.retry,
        retry_on_timeout=s.retry_on_timeout,
        retry_on_error=s.retry_on_error,
        max_connections=s.max_connections,
        db=s.database,
        username=s.username,
        password=s.password,
        encoding="utf8",
        job_serializer=serialize,
        job_deserializer=deserialize,
    )


def trace_carrier() -> dict[str, str]:
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


async def requeue_scan(redis: ArqRedis, queue: str, scan_id: str) -> Job | None:
    """Enqueue a scan again under the same job id: arq keeps a finished job's result and its try
    counter for a day, and would refuse the id or count old tries against the new run."""
    await redis.delete(result_key_prefix + scan_id, retry_key_prefix + scan_id)
    return await enqueue_scan(redis, queue, scan_id)


def messaging_attributes(queue: str, operation: str, job_id: str) -> dict[str, str]:
    return {
        "messaging.system": "arq",
        "messaging.operation.type": operation,
        "messaging.operation.name": operation,
        "messaging.destination.name": queue,
        "messaging.message.id": job_id,
    }


def broker_attributes(redis: ArqRedis) -> dict[str, str | int]:
    """Where the broker is, as the messaging conventions put it on a PRODUCER span (server.address,
    server.port; network.transport for a Unix socket): what the Redis CLIENT span under it said."""
    kwargs = redis.connection_pool.connection_kwargs
    if "path" in kwargs:
        return {"server.address": str(kwargs["path"]), "network.transport": "unix"}
    return {"server.address": str(kwargs.get("host", "localhost")), "server.port": int(kwargs.get("port", 6379))}


async def _enqueue(redis: ArqRedis, queue: str, function: str, job_id: str, kwargs: dict[str, Any]) -> Job | None:
    now = timestamp_ms()
    payload = serialize_job(function, (), kwargs, None, now, serializer=redis.job_serializer)
    script = redis.register_script(_ENQUEUE_LUA)  # just a SHA1 of the text; EVALSHA loads it once per server
    keys = [job_key_prefix + job_id, result_key_prefix + job_id, queue]
    # No Redis CLIENT span for the script: it would sit under the PRODUCER span and say nothing that
    # span does not (broker_attributes), at the cost of a span per enqueue.
    with suppress_instrumentation():
        done = await script(keys=keys, args=[payload, redis.expires_extra_ms, now, job_id, wake_channel(queue)])
    if not done:
        return None
    return Job(job_id, redis=redis, _queue_name=queue, _deserializer=redis.job_deserializer)


async def enqueue(
    redis: ArqRedis,
    queue: str,
    function: str,
    job_id: str,
    *,
    span_attributes: dict[str, str] | None = None,
    **kwargs: Any,
) -> Job | None:
    """Enqueue `function(**kwargs)` under `job_id` inside a PRODUCER span whose W3C carrier goes in
    the `trace_context` kwarg, so the worker's CONSUMER span is its child; and wake the queue's
    idle workers. None when arq already holds a job or a result under that id (as arq's own
    `enqueue_job`, whose job format this keeps)."""
    attributes = {**messaging_attributes(queue, "send", job_id), **broker_attributes(redis), **(span_attributes or {})}
    with tracer.start_as_current_span(f"send {queue}", kind=SpanKind.PRODUCER, attributes=attributes) as span:
        job = await _enqueue(redis, queue, function, job_id, {**kwargs, TRACE_KWARG: trace_carrier()})
        if job is None:
            span.set_attribute("pagelens.job.duplicate", True)
        else:
            metrics.jobs_enqueued_total.inc({"queue": queue, "function": function})
        return job


async def enqueue_scan(redis: ArqRedis, queue: str, scan_id: str) -> Job | None:
    """Enqueue the scan's job under the scan id; None when arq already holds a job with that id."""
    return await enqueue(
        redis, queue, RUN_SCAN, scan_id, span_attributes={"pagelens.scan_id": scan_id}, scan_id=scan_id
    )
