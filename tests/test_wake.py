"""Waking workers on enqueue (worker/wake.py), and arq's bookkeeping kept quiet (worker/quiet.py).

Real Redis, real `PagelensWorker`s running arq's main loop (not burst): the picker and arq's own
poll claim jobs through the same Redis keys, so every test here also checks that the two never run
a job twice or more jobs than `max_jobs`. Each test has its own queue name and deletes its keys.
tests/test_arq_contract.py checks the claim and the enqueue against the installed arq itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import asyncpg
import pytest
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix, result_key_prefix, retry_key_prefix
from arq.worker import func
from opentelemetry.instrumentation.utils import is_instrumentation_enabled
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from redis.asyncio.client import PubSub

from app.core import queue, scans
from app.core.models import Kind
from app.core.queue import redis_settings
from app.core.settings import Settings
from tests import waiting
from worker import quiet
from worker.hooks import observed
from worker.settings import queue_options, worker_options
from worker.wake import PagelensWorker

if TYPE_CHECKING:
    from worker.keyphrases import KeyphraseExtractor

# Bounds for waiting loops; they only stop a broken test from hanging.
POLL = 0.02
POLLS = 1500
# So long that arq's own poll never comes round during a test: whatever starts a job, it's a wake-up.
NEVER = 600.0

until = functools.partial(waiting.until, poll=POLL, polls=POLLS)

Job = Callable[..., Awaitable[Any]]
_main_tasks: set[asyncio.Task[None]] = set()  # the workers' main loops, referenced while they run


def recorder() -> tuple[list[str], Job]:
    """A job that records the ids it ran, and the list it records them in."""
    ran: list[str] = []

    async def job(ctx: dict[str, Any], **_: Any) -> None:
        ran.append(ctx["job_id"])

    return ran, job


@pytest.fixture
def queue_name() -> str:
    return f"pagelens:test:wake:{secrets.token_hex(4)}"


@pytest.fixture
async def workers(redis: ArqRedis, queue_name: str) -> AsyncIterator[list[PagelensWorker]]:
    """Workers to start with `run`; closed afterwards, and the queue's keys deleted."""
    made: list[PagelensWorker] = []
    yield made
    for worker in made:
        # close() cancels a job still writing its result, and then raises before on_shutdown runs.
        running = [task for task in worker.tasks.values() if not task.done()]
        if running:
            await asyncio.wait(running, timeout=POLL * POLLS)
        try:
            await worker.close()
        finally:
            await worker.stop_waking()  # a no-op when its main loop's end stopped it already
    keys = [queue_name, queue_name + ":health-check"]
    async for key in redis.scan_iter(match=f"*{queue_name}*", count=1000):
        keys.append(key)
    await redis.delete(*keys)


def pagelens_worker(settings: Settings, function: Job, *, poll_delay: float, **options: Any) -> PagelensWorker:
    """The production worker class taking jobs as in production (`queue_options`), running `function`."""
    return PagelensWorker(
        functions=[func(observed(function), name="job")],
        redis_settings=redis_settings(settings.require_redis_url()),
        burst=False,
        poll_delay=poll_delay,
        handle_signals=False,
        **{**queue_options(settings), **options},
    )


async def run(worker: PagelensWorker, redis: ArqRedis, made: list[PagelensWorker]) -> PagelensWorker:
    """Start the worker's main loop; return it once it listens and arq has polled once (from then
    on, with a long poll delay, only a wake-up starts a job)."""
    made.append(worker)
    task = asyncio.create_task(worker.async_run())
    _main_tasks.add(task)
    task.add_done_callback(_main_tasks.discard)
    # Bounded: the listener retries for ever while it cannot subscribe.
    await asyncio.wait_for(worker.listening.wait(), POLL * POLLS)
    # The worker's health-check key is written at the end of each of its polls.
    await until(lambda: redis.exists(worker.health_check_key), "the worker's first poll")
    return worker


async def next_message(pubsub: PubSub, timeout: float) -> bytes | None:
    """The next published message's data (subscribe confirmations skipped), or None after `timeout`."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=timeout)
                if message is not None:
                    data: bytes = message["data"]
                    return data
    return None


async def woken_worker(
    redis: ArqRedis, settings: Settings, queue_name: str, workers: list[PagelensWorker]
) -> tuple[list[str], PagelensWorker]:
    """A running worker whose poll never comes round (only a wake-up starts a job on it), and the
    ids of the jobs it ran."""
    ran, job = recorder()
    worker = pagelens_worker(settings.with_(queue_name=queue_name), job, poll_delay=NEVER)
    return ran, await run(worker, redis, workers)


async def enqueue(redis: ArqRedis, queue_name: str, count: int) -> list[str]:
    ids = [f"{queue_name}:job:{i}" for i in range(count)]
    for job_id in ids:
        assert await queue.enqueue(redis, queue_name, "job", job_id) is not None
    return ids


async def test_an_enqueue_starts_its_job_without_waiting_for_the_poll(
    redis: ArqRedis, settings: Settings, queue_name: str, workers: list[PagelensWorker]
) -> None:
    ran, job = recorder()
    worker = await run(pagelens_worker(settings.with_(queue_name=queue_name), job, poll_delay=NEVER), redis, workers)
    ids = await enqueue(redis, queue_name, 3)
    await until(lambda: len(ran) == 3, "the jobs")
    assert sorted(ran) == sorted(ids)
    assert worker.wakes >= 1 and worker.picked == 3


async def test_a_job_nobody_announced_is_still_found_by_polling(
    redis: ArqRedis, settings: Settings, queue_name: str, workers: list[PagelensWorker]
) -> None:
    ran, job = recorder()
    worker = await run(pagelens_worker(settings.with_(queue_name=queue_name), job, poll_delay=0.05), redis, workers)
    # Plain arq, as any other producer would enqueue: no wake-up is published.
    assert await redis.enqueue_job("job", _job_id=f"{queue_name}:plain", _queue_name=queue_name) is not None
    await until(lambda: ran == [f"{queue_name}:plain"], "the poll to run the job")
    assert worker.wakes == 0 and worker.picked == 0


async def test_two_workers_run_every_job_once_and_never_more_than_max_jobs(
    redis: ArqRedis, settings: Settings, queue_name: str, workers: list[PagelensWorker]
) -> None:
    # A short poll, so arq's own poll competes with both pickers for the same jobs all along.
    max_jobs, jobs = 3, 60
    runs: Counter[str] = Counter()
    running: Counter[int] = Counter()
    peak: Counter[int] = Counter()

    def make(index: int) -> Job:
        async def job(ctx: dict[str, Any], **_: Any) -> None:
            runs[ctx["job_id"]] += 1
            running[index] += 1
            peak[index] = max(peak[index], running[index])
            await asyncio.sleep(0.01)
            running[index] -= 1

        return job

    s = settings.with_(queue_name=queue_name, max_jobs=max_jobs)
    pickers = [await run(pagelens_worker(s, make(i), poll_delay=0.01), redis, workers) for i in range(2)]
    ids = await enqueue(redis, queue_name, jobs)
    await until(lambda: sum(runs.values()) >= jobs, "all jobs")
    await asyncio.sleep(0.2)  # a duplicate start would land by now
    assert runs == Counter(ids)
    assert max(peak.values()) <= max_jobs
    assert sum(w.picked for w in pickers) > 0
    assert sum(w.jobs_complete for w in pickers) == jobs


async def test_a_full_worker_takes_the_next_job_when_a_slot_frees(
    redis: ArqRedis, settings: Settings, queue_name: str, workers: list[PagelensWorker]
) -> None:
    release = asyncio.Event()
    started: list[str] = []

    async def job(ctx: dict[str, Any], **_: Any) -> None:
        started.append(ctx["job_id"])
        if len(started) <= 2:
            await release.wait()

    s = settings.with_(queue_name=queue_name, max_jobs=2)
    worker = await run(pagelens_worker(s, job, poll_delay=NEVER), redis, workers)
    ids = await enqueue(redis, queue_name, 3)
    await until(lambda: len(started) == 2, "the first two jobs")
    await asyncio.sleep(0.1)
    assert len(started) == 2  # the worker is full: the third waits
    release.set()
    await until(lambda: len(started) == 3, "the third job once a slot freed")
    # The first two start concurrently (either may reach its first line first); the third is the
    # one left waiting.
    assert sorted(started[:2]) == sorted(ids[:2]) and started[2] == ids[2] and worker.picked == 3


async def test_jobs_ending_together_are_written_in_one_transaction(
    redis: ArqRedis, settings: Settings, queue_name: str, workers: list[PagelensWorker]
) -> None:
    release = asyncio.Event()
    started: list[str] = []

    async def job(ctx: dict[str, Any], **_: Any) -> str:
        started.append(ctx["job_id"])
        await release.wait()
        return f"done {ctx['job_id']}"

    s = settings.with_(queue_name=queue_name, max_jobs=5)
    worker = await run(pagelens_worker(s, job, poll_delay=NEVER, keep_result=60), redis, workers)
    ids = await enqueue(redis, queue_name, 5)
    await until(lambda: len(started) == 5, "all five jobs running")
    assert worker.end_writes == 0
    release.set()  # all five return in the same event-loop turn
    await until(lambda: queue_empty(redis, queue_name), "the jobs' ends")
    assert worker.end_writes == 1  # one MULTI/EXEC for the five, where arq writes one each
    # ... and each end is arq's: the result kept, the job, its retry count, its claim and its queue
    # entry gone (tests/test_arq_contract.py compares every kind of end with arq's own worker).
    for job_id in ids:
        for prefix in (job_key_prefix, retry_key_prefix, in_progress_key_prefix):
            assert not await redis.exists(prefix + job_id), prefix + job_id
    results = [queue.deserialize(await redis.get(result_key_prefix + i)) for i in ids]
    assert [(r["s"], r["r"]) for r in results] == [(True, f"done {i}") for i in ids]


async def test_ends_arriving_while_one_is_written_go_together_in_the_next(
    redis: ArqRedis, settings: Settings, queue_name: str, workers: list[PagelensWorker]
) -> None:
    """Group commit: under a steady flow of short jobs, ends that arrive while a write is on its way
    wait for the next one instead of each opening a MULTI/EXEC of its own (arq's one per job)."""

    async def job(ctx: dict[str, Any], **_: Any) -> str:
        return str(ctx["job_id"])

    ids = await enqueue(redis, queue_name, 300)  # queued before the worker starts: a steady flow
    s = settings.with_(queue_name=queue_name, max_jobs=10)
    worker = await run(pagelens_worker(s, job, poll_delay=NEVER, keep_result=60), redis, workers)
    await until(lambda: worker.jobs_complete == len(ids), "all the jobs")
    await until(lambda: queue_empty(redis, queue_name), "the jobs' ends")
    assert worker.end_writes <= 0.75 * len(ids), worker.end_writes  # one write per job: no grouping
    results = [queue.deserialize(await redis.get(result_key_prefix + i)) for i in ids]
    assert [r["r"] for r in results] == ids
    assert not [i for i in ids if await redis.exists(in_progress_key_prefix + i)]


async def queue_empty(redis: ArqRedis, queue_name: str) -> bool:
    count: int = await redis.zcard(queue_name)
    return count == 0


async def test_a_draining_worker_takes_no_new_job(
    redis: ArqRedis, settings: Settings, queue_name: str, workers: list[PagelensWorker]
) -> None:
    ran, worker = await woken_worker(redis, settings, queue_name, workers)
    worker.allow_pick_jobs = False  # what arq's SIGTERM handler does before waiting for running jobs
    await enqueue(redis, queue_name, 1)
    await until(lambda: worker.wakes == 1, "the wake-up")
    await asyncio.sleep(0.1)
    assert ran == [] and worker.picked == 0
    assert await redis.zcard(queue_name) == 1  # still queued for another worker


async def test_jobs_claimed_as_the_worker_stops_go_back_to_the_queue(
    redis: ArqRedis, settings: Settings, queue_name: str, workers: list[PagelensWorker]
) -> None:
    ran, worker = await woken_worker(redis, settings, queue_name, workers)
    claim = worker._claim

    async def claim_then_stop(count: int, candidates: list[str]) -> tuple[list[tuple[str, int]], bool]:
        found = await claim(count, candidates)
        worker.allow_pick_jobs = False  # a SIGTERM arriving while the claim was on its way
        return found

    worker._claim = claim_then_stop  # type: ignore[method-assign]
    [job_id] = await enqueue(redis, queue_name, 1)
    await until(lambda: not worker.allow_pick_jobs, "the claim")
    for _ in range(POLLS):
        if not await redis.exists(in_progress_key_prefix + job_id):
            break
        await asyncio.sleep(POLL)
    assert not await redis.exists(in_progress_key_prefix + job_id)  # handed back at once
    await until(lambda: worker.job_counter == 0, "the slot to be free again")
    assert ran == [] and worker.picked == 0
    assert await redis.zscore(queue_name, job_id) is not None  # still queued for another worker


async def test_the_production_worker_is_woken_and_runs_a_scan(
    redis: ArqRedis,
    settings: Settings,
    queue_name: str,
    pool: asyncpg.Pool,
    extractor: KeyphraseExtractor,
    workers: list[PagelensWorker],
) -> None:
    s = settings.with_(queue_name=queue_name)
    options = worker_options(s)
    options.update(ctx={"settings": s, "pool": pool, "keyphrases": extractor, "configure_logging": False}, cron_jobs=[])
    worker = PagelensWorker(
        **options,
        redis_settings=redis_settings(s.require_redis_url()),
        burst=False,
        poll_delay=NEVER,
        handle_signals=False,
    )
    worker = await run(worker, redis, workers)
    row, _ = await scans.create(pool, scans.NewScan(Kind.DOCUMENT, document="Compost heaps need air and water. " * 40))
    await queue.enqueue_scan(redis, queue_name, str(row["id"]))
    for _ in range(POLLS):
        done = await scans.get(pool, row["id"], "default")
        if done is not None and done["status"] == "FULL_READY":
            break
        await asyncio.sleep(POLL)
    assert done is not None and done["status"] == "FULL_READY", done
    assert worker.picked == 1


async def test_enqueue_publishes_the_job_and_refuses_a_taken_id(redis: ArqRedis, queue_name: str) -> None:
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(queue.wake_channel(queue_name))
    job_id = f"{queue_name}:{uuid.uuid4()}"
    try:
        job = await queue.enqueue(redis, queue_name, "job", job_id, answer=42)
        assert job is not None and job.job_id == job_id
        assert await next_message(pubsub, 10) == job_id.encode()

        info = await job.info()  # the job as arq stores it: arq reads it back unchanged
        assert info is not None and info.function == "job" and info.kwargs["answer"] == 42
        assert set(info.kwargs) == {"answer", queue.TRACE_KWARG}
        assert await redis.zscore(queue_name, job_id) == info.score
        assert 0 < await redis.pttl(job_key_prefix + job_id) <= redis.expires_extra_ms

        assert await queue.enqueue(redis, queue_name, "job", job_id) is None  # queued already
        await redis.delete(job_key_prefix + job_id)
        await redis.set(result_key_prefix + job_id, b"done")
        assert await queue.enqueue(redis, queue_name, "job", job_id) is None  # finished, result kept
        assert await next_message(pubsub, 0.2) is None
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await redis.delete(queue_name, job_key_prefix + job_id, result_key_prefix + job_id, retry_key_prefix + job_id)


async def test_jobs_are_traced_and_logged_while_arq_bookkeeping_is_not(
    redis: ArqRedis,
    settings: Settings,
    queue_name: str,
    workers: list[PagelensWorker],
    spans: InMemorySpanExporter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: dict[str, bool] = {}

    async def job(ctx: dict[str, Any], **_: Any) -> None:
        seen["instrumented"] = is_instrumentation_enabled()
        await ctx["redis"].get(f"{queue_name}:probe")

    worker = pagelens_worker(settings.with_(queue_name=queue_name), job, poll_delay=NEVER)
    finish_job = worker.finish_job

    async def finishing(*args: Any) -> None:
        seen["bookkeeping instrumented"] = is_instrumentation_enabled()
        await finish_job(*args)

    worker.finish_job = finishing  # type: ignore[method-assign,assignment]
    with caplog.at_level(logging.INFO):
        await run(worker, redis, workers)
        [job_id] = await enqueue(redis, queue_name, 1)
        await until(lambda: worker.jobs_complete == 1, "the job")
        await until(lambda: any(s.name == f"process {queue_name}" for s in spans.get_finished_spans()), "spans")

    # The job's own calls are traced; arq's write of its end goes by without the instrumentation.
    assert seen == {"instrumented": True, "bookkeeping instrumented": False}
    consumer = next(s for s in spans.get_finished_spans() if s.name == f"process {queue_name}")
    assert consumer.context is not None
    children = [s for s in spans.get_finished_spans() if s.parent and s.parent.span_id == consumer.context.span_id]
    assert [s.name for s in children] == ["GET"]  # the job's own Redis call, nothing of arq's around it

    ours = [r.getMessage() for r in caplog.records if r.name == "pagelens.worker"]
    assert ours == ["job started", "job finished"]
    assert not [r for r in caplog.records if job_id in r.getMessage()]  # arq's "→"/"←" lines name the job


def test_arq_warnings_and_errors_pass_the_filter() -> None:
    keep = quiet.ArqJobLines()

    def record(level: int, msg: str) -> logging.LogRecord:
        return logging.LogRecord(quiet.ARQ_WORKER_LOGGER, level, __file__, 1, msg, (1.0, "x:job"), None)

    assert not keep.filter(record(logging.INFO, "%6.2fs → %s(%s)%s"))
    assert not keep.filter(record(logging.INFO, "%6.2fs ← %s ● %s"))
    assert keep.filter(record(logging.WARNING, "%6.2fs ! %s max retries %d exceeded"))
    assert keep.filter(record(logging.ERROR, "%6.2fs ! %s failed, %s: %s"))
    assert keep.filter(record(logging.INFO, "Starting worker for %d functions: %s"))


async def test_quieting_outside_the_main_task_suppresses_nothing() -> None:
    quiet.quiet_arq()  # what a plain `arq worker.WorkerSettings` worker's on_startup does
    assert is_instrumentation_enabled()  # this task's own spans are still recorded
    assert any(isinstance(f, quiet.ArqJobLines) for f in logging.getLogger(quiet.ARQ_WORKER_LOGGER).filters)
