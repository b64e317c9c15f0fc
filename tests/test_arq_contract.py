"""What pagelens copies from arq, checked against the installed arq.

`app.core.queue.enqueue` writes jobs as arq's `ArqRedis.enqueue_job` does, and `PagelensWorker`
(worker/wake.py) claims them as arq's `Worker.start_jobs` does, each in one Lua script instead of
arq's round trips. If an arq release changes either, these fail: a job from our enqueue and one
from arq's are indistinguishable to arq's reader and worker; our claim takes exactly the jobs arq's
takes and marks them as arq does; and our worker ends arq-enqueued jobs of every kind (plain,
deferred, re-enqueued with a try count, retried, failing, unknown, expired) exactly as arq's does,
though it writes the ends of jobs finishing together in one transaction (worker/ends.py).
Real Redis; each test has its own queue and deletes its keys.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest
from arq import Retry
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix, result_key_prefix, retry_key_prefix
from arq.jobs import Job, JobStatus
from arq.worker import Worker, func

from app.core import queue
from app.core.queue import redis_settings
from app.core.settings import Settings
from worker.wake import PagelensWorker

TOLERANCE_MS = 2000  # between two TTLs set moments apart
BOTH: tuple[type[Worker], ...] = (Worker, PagelensWorker)
# The session's Redis client encodes jobs as pagelens does (msgpack); the workers decode alike.
CODEC: dict[str, Any] = {"job_serializer": queue.serialize, "job_deserializer": queue.deserialize}


@pytest.fixture
async def queues(redis: ArqRedis) -> AsyncIterator[list[str]]:
    """Queue names to use (`new()`), and every key under them deleted afterwards."""
    made: list[str] = []
    yield made
    for name in made:
        keys = [key async for key in redis.scan_iter(match=f"*{name}*", count=1000)]
        if keys:
            await redis.delete(*keys)


def new(made: list[str]) -> str:
    name = f"pagelens:test:arq:{secrets.token_hex(4)}"
    made.append(name)
    return name


async def keys_of(redis: ArqRedis, job_id: str) -> dict[str, int]:
    """arq's keys for a job that exist, with their TTL in ms (-1: none)."""
    found = {}
    for prefix in (job_key_prefix, result_key_prefix, retry_key_prefix, in_progress_key_prefix):
        if await redis.exists(prefix + job_id):
            found[prefix] = int(await redis.pttl(prefix + job_id))
    return found


async def test_our_enqueue_stores_the_job_arqs_enqueue_would(redis: ArqRedis, queues: list[str]) -> None:
    q = new(queues)
    carrier = queue.trace_carrier()
    theirs = await redis.enqueue_job("job", _job_id=f"{q}:arq", _queue_name=q, answer=42, trace_context=carrier)
    ours = await queue.enqueue(redis, q, "job", f"{q}:ours", answer=42)
    assert theirs is not None and ours is not None

    a, b = await theirs.info(), await ours.info()
    assert a is not None and b is not None
    assert (a.function, list(a.args), a.job_try) == (b.function, list(b.args), b.job_try)
    assert b.function == "job" and not b.args and b.job_try is None  # no try count: arq counts from 1
    assert set(a.kwargs) == set(b.kwargs) == {"answer", queue.TRACE_KWARG} and b.kwargs["answer"] == 42
    for job, info in ((theirs, a), (ours, b)):
        assert await job.status() == JobStatus.queued
        assert info.score == int(info.enqueue_time.timestamp() * 1000)  # due at once, scored by enqueue time
    keys_a, keys_b = await keys_of(redis, theirs.job_id), await keys_of(redis, ours.job_id)
    assert set(keys_a) == set(keys_b) == {job_key_prefix}
    assert abs(keys_a[job_key_prefix] - keys_b[job_key_prefix]) < TOLERANCE_MS  # arq's default expiry

    # Both refuse an id that is queued, or finished with its result kept.
    assert await redis.enqueue_job("job", _job_id=ours.job_id, _queue_name=q) is None
    assert await queue.enqueue(redis, q, "job", theirs.job_id) is None
    await redis.set(result_key_prefix + f"{q}:done", b"x")
    assert await redis.enqueue_job("job", _job_id=f"{q}:done", _queue_name=q) is None
    assert await queue.enqueue(redis, q, "job", f"{q}:done") is None


@pytest.mark.parametrize("kind", BOTH, ids=["arq", "pagelens"])
async def test_jobs_from_either_enqueue_run_alike(
    kind: type[Worker], redis: ArqRedis, settings: Settings, queues: list[str]
) -> None:
    q = new(queues)
    seen: dict[str, tuple[Any, ...]] = {}

    async def job(ctx: dict[str, Any], *args: Any, **kwargs: Any) -> str:
        seen[ctx["job_id"]] = (ctx["job_try"], args, kwargs["answer"], queue.TRACE_KWARG in kwargs)
        return "done"

    await redis.enqueue_job("job", _job_id=f"{q}:arq", _queue_name=q, answer=42, trace_context={})
    await queue.enqueue(redis, q, "job", f"{q}:ours", answer=42)
    worker = kind(
        functions=[func(job, name="job")],
        queue_name=q,
        redis_settings=redis_settings(settings.require_redis_url()),
        burst=True,
        poll_delay=0,
        handle_signals=False,
        **CODEC,
    )
    try:
        await worker.main()
    finally:
        await worker.close()
    assert seen[f"{q}:arq"] == seen[f"{q}:ours"] == (1, (), 42, True)
    for job_id in (f"{q}:arq", f"{q}:ours"):
        result = await Job(job_id, redis, _queue_name=q, _deserializer=queue.deserialize).result_info()
        assert result is not None and result.success and result.result == "done" and result.job_try == 1
        assert set(await keys_of(redis, job_id)) == {result_key_prefix}  # nothing else left behind


async def _claims(kind: type[Worker], redis: ArqRedis, q: str, ids: list[str]) -> tuple[set[str], dict[str, int]]:
    """Which of `ids` the worker's `start_jobs` claims, and the in-progress TTLs it set."""
    release = asyncio.Event()

    async def job(ctx: dict[str, Any]) -> None:
        await release.wait()

    functions = [func(job, name="job")]
    worker = kind(functions=functions, queue_name=q, redis_pool=redis, handle_signals=False, max_jobs=10, **CODEC)
    await worker.start_jobs([i.encode() for i in ids])
    started = set(worker.tasks)
    ttls = {i: int(await redis.pttl(in_progress_key_prefix + i)) for i in started}
    release.set()
    await asyncio.gather(*worker.tasks.values())
    return started, ttls


async def test_our_claim_takes_the_jobs_arqs_takes_and_marks_them_alike(redis: ArqRedis, queues: list[str]) -> None:
    outcomes = []
    for kind in BOTH:
        q = new(queues)
        for name in ("due", "running", "deferred", "finished"):
            await redis.enqueue_job("job", _job_id=f"{q}:{name}", _queue_name=q)
        await redis.zadd(q, {f"{q}:deferred": 2**45})  # far in the future
        await redis.zrem(q, f"{q}:finished")  # its job key is there, but it left the queue
        await redis.psetex(in_progress_key_prefix + f"{q}:running", 60_000, b"1")  # another worker's
        ids = [f"{q}:{name}" for name in ("due", "running", "deferred", "finished", "unknown")]
        started, ttls = await _claims(kind, redis, q, ids)
        outcomes.append(({i.removeprefix(q) for i in started}, list(ttls.values())))
    (arq_started, arq_ttls), (our_started, our_ttls) = outcomes
    assert arq_started == our_started == {":due"}
    assert abs(arq_ttls[0] - our_ttls[0]) < TOLERANCE_MS  # the same in-progress expiry


async def test_a_full_worker_claims_only_what_it_has_room_for_as_arq_does(redis: ArqRedis, queues: list[str]) -> None:
    counts = []
    for kind in BOTH:
        q = new(queues)
        ids = [f"{q}:{i}" for i in range(15)]
        for job_id in ids:
            await redis.enqueue_job("job", _job_id=job_id, _queue_name=q)
        started, _ = await _claims(kind, redis, q, ids)
        counts.append(sorted(int(i.rsplit(":", 1)[1]) for i in started))
    assert counts[0] == counts[1] == list(range(10))  # max_jobs, oldest first


tries: dict[str, int] = {}


async def flaky(ctx: dict[str, Any]) -> str:
    tries[ctx["job_id"]] = tries.get(ctx["job_id"], 0) + 1
    if tries[ctx["job_id"]] == 1:
        raise Retry(defer=0.05)
    return "second time lucky"


async def broken(ctx: dict[str, Any]) -> None:
    raise ValueError("broken on purpose")


async def echo(ctx: dict[str, Any], *args: Any, **kwargs: Any) -> tuple[Any, ...]:
    return (ctx["job_try"], args, kwargs)


async def _run_every_kind(kind: type[Worker], redis: ArqRedis, settings: Settings, q: str) -> dict[str, Any]:
    jobs: dict[str, tuple[str, tuple[Any, ...], dict[str, Any], dict[str, Any]]] = {
        "plain": ("echo", (1, "two"), {"three": 3}, {}),
        "deferred": ("echo", (), {}, {"_defer_by": 0.2}),
        "re-enqueued": ("echo", (), {}, {"_job_try": 3}),
        "retried": ("flaky", (), {}, {}),
        "failing": ("broken", (), {}, {}),
        "unknown": ("nowhere", (), {}, {}),
        "expired": ("echo", (), {}, {"_expires": 0.001}),
    }
    for name, (function, args, kwargs, options) in jobs.items():
        assert await redis.enqueue_job(function, *args, _job_id=f"{q}:{name}", _queue_name=q, **options, **kwargs)
    await asyncio.sleep(0.05)  # the expired job's key is gone
    worker = kind(
        functions=[func(echo, name="echo"), func(flaky, name="flaky"), func(broken, name="broken")],
        queue_name=q,
        redis_settings=redis_settings(settings.require_redis_url()),
        burst=True,
        poll_delay=0,
        max_tries=4,
        handle_signals=False,
        **CODEC,
    )
    try:
        await worker.main()
    finally:
        await worker.close()
    outcome: dict[str, Any] = {"counts": (worker.jobs_complete, worker.jobs_failed, worker.jobs_retried)}
    for name in jobs:
        result = await Job(f"{q}:{name}", redis, _queue_name=q, _deserializer=queue.deserialize).result_info()
        assert result is not None, name
        outcome[name] = (result.success, repr(result.result), result.job_try, result.function)
        outcome[f"{name} keys"] = sorted(await keys_of(redis, f"{q}:{name}"))
    return outcome


async def test_our_worker_ends_arq_enqueued_jobs_as_arqs_worker_does(
    redis: ArqRedis, settings: Settings, queues: list[str]
) -> None:
    arq_outcome, our_outcome = [await _run_every_kind(kind, redis, settings, new(queues)) for kind in BOTH]
    assert our_outcome == arq_outcome
    assert arq_outcome["counts"] == (4, 3, 1)  # echo x3 and the retried one; failing, unknown, expired; one retry
    assert arq_outcome["re-enqueued"][2] == 3  # the try count it was enqueued with
