"""Worker configuration: `pagelens worker` (`python -m worker`) runs `PagelensWorker` from it, and
`arq worker.WorkerSettings` runs a plain, polling arq worker from the same settings."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from arq import cron, func
from arq.worker import Function

from app.core.heap import freeze_startup_heap
from app.core.queue import RUN_SCAN, deserialize, redis_settings, serialize
from app.core.settings import Settings, get_settings
from observability.logs import setup_logging
from observability.metrics_server import MetricsServer, observe_pool, start_metrics_server
from observability.sampler import QueueSampler
from observability.tracing import flush, setup_tracing
from worker import quiet
from worker.context import Resources
from worker.hooks import make_hooks, observed
from worker.maintenance import delete_expired_scans, sweep_stranded
from worker.pipeline import hard_timeout, run_scan
from worker.recovery import Recovery
from worker.wake import WORKER_ID

logger = logging.getLogger("pagelens.worker")


async def on_startup(ctx: dict[str, Any]) -> None:
    settings: Settings = ctx.get("settings") or get_settings()
    if ctx.get("configure_logging", True):
        # After arq's CLI has installed its own logging config, so ours wins.
        setup_logging(settings.log_level)
    setup_tracing(settings, "pagelens-worker")
    ctx["resources"] = await Resources.open(
        settings, ctx["redis"], pool=ctx.get("pool"), keyphrases=ctx.get("keyphrases"), parser=ctx.get("parser")
    )
    pool = ctx["resources"].pool
    # Queue-depth candidate (one elected process samples) and this worker's liveness heartbeat,
    # under the id PagelensWorker marks its jobs with (worker/recovery.py).
    sampler = QueueSampler(
        ctx["redis"],
        pool,
        settings.queue_name,
        interval=settings.queue_sample_interval,
        instance_id=ctx.get(WORKER_ID),
        heartbeat=True,
    )
    with contextlib.suppress(Exception):  # if it fails, the loop below says so and tries again
        await sampler.beat()  # alive before the first job is claimed, or a peer would think it dead
    sampler.start()
    ctx["queue_sampler"] = sampler
    recovery = Recovery(ctx["redis"], pool, settings.queue_name)
    recovery.start()
    ctx["recovery"] = recovery
    ctx["metrics_server"] = (
        await start_metrics_server(
            settings.worker_metrics_host, settings.worker_metrics_port, before_render=lambda: observe_pool(pool)
        )
        if settings.enable_metrics
        else None
    )
    freeze_startup_heap()  # the model lives in the pool's processes; this is the worker's own heap
    quiet.quiet_arq()
    logger.info("worker ready", extra={"queue": settings.queue_name})


async def on_shutdown(ctx: dict[str, Any]) -> None:
    recovery: Recovery | None = ctx.pop("recovery", None)
    if recovery is not None:
        await recovery.stop()
    sampler: QueueSampler | None = ctx.pop("queue_sampler", None)
    if sampler is not None:
        await sampler.stop()  # before the pool it samples with closes
    server: MetricsServer | None = ctx.pop("metrics_server", None)
    if server is not None:
        await server.stop()
    resources: Resources | None = ctx.get("resources")
    if resources is not None:
        await resources.close()
    flush()


def functions(settings: Settings) -> list[Function]:
    # The scans table counts tries (pipeline, scans.claim); arq's own count is a backstop set well
    # above it, because it also counts deliveries that never claimed the scan (a worker killed
    # before the claim, a wait for a dead attempt's lease, PostgreSQL down).
    return [
        func(observed(run_scan), name=RUN_SCAN, max_tries=3 * settings.max_tries + 3, timeout=hard_timeout(settings))
    ]


def queue_options(settings: Settings) -> dict[str, Any]:
    """How a worker takes jobs off the queue and observes them; the queue-hop benchmark runs its
    no-op job on a PagelensWorker with exactly these."""
    on_job_start, on_job_end = make_hooks(settings.queue_name)
    return {
        "queue_name": settings.queue_name,
        "on_job_start": on_job_start,
        "on_job_end": on_job_end,
        "job_serializer": serialize,
        "job_deserializer": deserialize,
        "max_jobs": settings.max_jobs,
    }


def worker_options(settings: Settings) -> dict[str, Any]:
    """Everything a `Worker` needs besides its Redis pool; tests build workers from the same dict."""
    return {
        **queue_options(settings),
        "functions": functions(settings),
        "cron_jobs": [
            cron(
                observed(sweep_stranded),
                name="sweep_stranded",
                second=set(range(0, 60, settings.sweep_interval)),
                run_at_startup=True,
                timeout=hard_timeout(settings),
            ),
            # arq holds a job of a killed worker for the longest timeout of all its functions before
            # running it again (unless worker/recovery.py hands it back sooner), so no cron job may
            # have a longer one than the scan job.
            cron(
                observed(delete_expired_scans),
                name="delete_expired_scans",
                minute={17},
                second=0,
                timeout=hard_timeout(settings),
            ),
        ],
        "on_startup": on_startup,
        "on_shutdown": on_shutdown,
        "allow_abort_jobs": True,
        "job_completion_wait": settings.shutdown_grace,
        "job_timeout": hard_timeout(settings),
        "keep_result": 3600,
        "health_check_interval": 10,
        "ctx": {"settings": settings},
    }


class WorkerSettings:
    """Read by `python -m worker` and `arq worker.WorkerSettings`; values come from the environment
    via Settings."""

    _settings = get_settings()
    _options = worker_options(_settings)
    functions = _options["functions"]
    cron_jobs = _options["cron_jobs"]
    queue_name = _options["queue_name"]
    on_startup = on_startup
    on_shutdown = on_shutdown
    on_job_start = _options["on_job_start"]
    on_job_end = _options["on_job_end"]
    job_serializer = serialize
    job_deserializer = deserialize
    allow_abort_jobs = True
    poll_delay = _settings.poll_delay
    max_jobs = _options["max_jobs"]
    job_completion_wait = _options["job_completion_wait"]
    job_timeout = _options["job_timeout"]
    keep_result = _options["keep_result"]
    health_check_interval = _options["health_check_interval"]
    ctx = _options["ctx"]
    redis_settings = redis_settings(_settings.redis_url) if _settings.redis_url else None
