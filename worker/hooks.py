"""arq job hooks: the CONSUMER span, queue wait, job duration and the log fields of every job.

arq kills the worker when a hook raises, so both hooks catch everything: telemetry trouble (no
carrier, a broken one, an exporter error) is counted and logged, and the job runs regardless.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

from arq import Retry
from arq.typing import WorkerCoroutine
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from app.core.queue import TRACE_KWARG, decoded_job, messaging_attributes
from observability import metrics
from observability.logs import job_fields
from observability.propagation import clean_carrier

logger = logging.getLogger("pagelens.worker")
tracer = trace.get_tracer("pagelens.worker")

OUTCOME = "pagelens_outcome"  # set by the job (or `observed`) in ctx; read by on_job_end
_STATE = "pagelens_job_state"
OUTCOMES = frozenset({"success", "failure", "retry", "cancelled"})
JobFunction = Callable[..., Awaitable[Any]]


class _JobState:
    __slots__ = ("fields_token", "function", "queue", "span", "start", "token")

    def __init__(
        self, span: trace.Span, token: object, fields_token: contextvars.Token[Any], queue: str, function: str
    ) -> None:
        self.span = span
        self.token = token
        self.fields_token = fields_token
        self.queue = queue
        self.function = function
        self.start = time.perf_counter()


def _carrier(job: dict[str, Any] | None) -> tuple[dict[str, str], str]:
    kwargs = job.get("k") if job else None
    raw = kwargs.get(TRACE_KWARG) if isinstance(kwargs, dict) else None
    if not raw:
        return {}, "missing"
    carrier = clean_carrier(raw)
    return carrier, "ok" if carrier else "invalid"


def _start(ctx: dict[str, Any], queue: str) -> None:
    job = decoded_job.get()
    decoded_job.set(None)
    function = str(job.get("f", "unknown")) if job else "unknown"
    carrier, result = _carrier(job)
    metrics.job_trace_context_total.inc({"result": result})
    # From an empty context, not the current one: the job's trace context is its carrier's alone,
    # and arq's bookkeeping around the job runs with instrumentation suppressed (worker/wake.py
    # run_job), which the job's own calls must not inherit, whatever the propagators' order.
    parent = propagate.extract(carrier, context=otel_context.Context()) if carrier else otel_context.Context()
    producer = trace.get_current_span(parent).get_span_context()
    job_id = str(ctx.get("job_id", ""))
    # arq's score is when the job became eligible (its defer time for retries), so a retried or
    # deferred job's wait does not include the delay it asked for.
    queue_wait = max(0.0, time.time() - float(ctx.get("score") or 0) / 1000) if ctx.get("score") else 0.0
    attributes: dict[str, Any] = {
        **messaging_attributes(queue, "process", job_id),
        "pagelens.job.try": int(ctx.get("job_try", 1)),
        "pagelens.job.queue_wait_seconds": queue_wait,
        "pagelens.job.function": function,
    }
    if function == "run_scan":
        attributes["pagelens.scan_id"] = job_id  # scan jobs are enqueued under the scan id
    span = tracer.start_span(
        f"process {queue}",
        context=parent,
        kind=SpanKind.CONSUMER,
        links=[Link(producer)] if producer.is_valid else [],
        attributes=attributes,
    )
    # Attached in arq's run_job task: the job's own task is created after this hook and inherits
    # the context, so stage, httpx and asyncpg spans nest under this span.
    token = otel_context.attach(trace.set_span_in_context(span, parent))
    fields = {"job_id": job_id, "queue": queue, "job_try": attributes["pagelens.job.try"]}
    if function == "run_scan":
        fields["scan_id"] = job_id
    fields_token = job_fields.set(fields)
    ctx[_STATE] = _JobState(span, token, fields_token, queue, function)
    metrics.job_queue_wait_seconds.observe({"queue": queue, "function": function}, queue_wait)
    logger.info("job started", extra={"queue_wait_seconds": round(queue_wait, 4), "function": function})


def _end(ctx: dict[str, Any]) -> None:
    state: _JobState | None = ctx.pop(_STATE, None)
    if state is None:
        return
    outcome = ctx.get(OUTCOME)
    if outcome not in OUTCOMES:
        outcome = "failure"  # the job raised before recording how it went
    seconds = time.perf_counter() - state.start
    metrics.job_duration_seconds.observe(
        {"queue": state.queue, "function": state.function, "outcome": outcome}, seconds
    )
    state.span.set_attribute("pagelens.job.outcome", outcome)
    if outcome == "failure":
        state.span.set_status(Status(StatusCode.ERROR, "job failed"))
    try:
        logger.info("job finished", extra={"outcome": outcome, "duration_seconds": round(seconds, 4)})
    finally:
        state.span.end()
        otel_context.detach(state.token)  # type: ignore[arg-type]
        job_fields.reset(state.fields_token)


def make_hooks(
    queue: str,
) -> tuple[Callable[[dict[str, Any]], Awaitable[None]], Callable[[dict[str, Any]], Awaitable[None]]]:
    async def on_job_start(ctx: dict[str, Any]) -> None:
        try:
            _start(ctx, queue)
        except Exception:
            metrics.job_hook_errors_total.inc({"hook": "on_job_start"})
            logger.warning("on_job_start failed; the job runs untraced", exc_info=True)

    async def on_job_end(ctx: dict[str, Any]) -> None:
        try:
            _end(ctx)
        except Exception:
            metrics.job_hook_errors_total.inc({"hook": "on_job_end"})
            logger.warning("on_job_end failed", exc_info=True)

    return on_job_start, on_job_end


def observed(function: JobFunction) -> WorkerCoroutine:
    """Record the job's outcome in ctx from how it ended, unless the job recorded one itself."""

    @functools.wraps(function)
    async def wrapper(ctx: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        try:
            result = await function(ctx, *args, **kwargs)
        except Retry:
            ctx[OUTCOME] = "retry"
            raise
        except asyncio.CancelledError:
            ctx.setdefault(OUTCOME, "cancelled")
            raise
        except Exception:
            ctx[OUTCOME] = "failure"
            raise
        ctx.setdefault(OUTCOME, "success")
        return result

    return cast(WorkerCoroutine, wrapper)
