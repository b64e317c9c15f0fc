"""Start a job as soon as it is enqueued, not at the worker's next poll.

arq finds jobs only by polling the queue (a sorted set) every `poll_delay`: 0.5 s by default, so a
job waits about 250 ms for an idle worker to notice it, and a shorter poll costs every idle worker
hundreds of Redis round trips a second. Instead `app.core.queue.enqueue` publishes each job id on the
queue's wake channel and every worker listens. On a message, or when a slot frees while jobs may be
waiting, the worker's picker takes the free slots as arq's `start_jobs` does (its semaphore and
`job_counter`, so `max_jobs` holds), claims that many due jobs in one atomic Lua call (arq's own
checks and in-progress mark, where arq spends four round trips per job) and starts each with arq's
`Worker.run_job`. From there on a job runs exactly as arq would run it, only sooner.

arq's poll is left as it is and stays the safety net: a message lost while the listener
reconnects, a deferred retry becoming due, a job enqueued by plain arq code, cron jobs: the next
poll finds them, as before.

The seam: `arq worker.WorkerSettings` builds a plain `arq.worker.Worker`, and its hooks receive only
`ctx`. arq awaits `on_startup` inside `Worker.main()`, in the worker's main task, so the hook finds
its worker as the `self` of that task's coroutine (`running_worker`). Job completions are seen
through a done callback that `on_job_start` adds to arq's job task; it runs after the one arq added
when it created the task (which frees the slot), so the picker sees the slot free.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from arq.constants import in_progress_key_prefix
from arq.utils import timestamp_ms
from arq.worker import Worker
from redis.exceptions import RedisError

from app.core.queue import wake_channel
from app.core.tasks import cancel_all

logger = logging.getLogger("pagelens.worker")

Hook = Callable[[dict[str, Any]], Awaitable[None]]

WAKER = "pagelens_waker"  # the Waker's key in the worker's ctx (and so in every job's ctx)
RECONNECT_DELAY = 1.0  # after the listener lost Redis; polling covers the gap
IDLE_SLOT_WAIT = 0.01  # full, but no job task left running: arq is about to free a slot

# arq's claim of one job (start_jobs: the job is due, nobody runs it, so mark it in progress), for
# up to ARGV[2] jobs among the first ARGV[3] due ones, atomically. Returns ids, scores and whether
# more due jobs were left unclaimed.
_CLAIM_LUA = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, ARGV[3])
local want = tonumber(ARGV[2])
local ids, scores = {}, {}
for i = 1, #due, 2 do
  local key = ARGV[4] .. due[i]
  if redis.call('EXISTS', key) == 0 then
    if #ids == want then return {ids, scores, 1} end
    redis.call('PSETEX', key, ARGV[5], '1')
    ids[#ids + 1] = due[i]
    scores[#scores + 1] = due[i + 1]
  end
end
return {ids, scores, 0}
"""


def running_worker() -> Worker | None:
    """The arq Worker whose `main()` is the current task's coroutine, if any (see the module doc)."""
    task = asyncio.current_task()
    coro: Any = task.get_coro() if task is not None else None
    if getattr(coro, "cr_code", None) is not Worker.main.__code__:
        return None
    worker = coro.cr_frame.f_locals.get("self")
    return worker if isinstance(worker, Worker) else None


class Waker:
    """The wake listener and the picker of one worker. `start()` in its main task, `stop()` at shutdown."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.channel = wake_channel(worker.queue_name)
        self._claim_script = worker.pool.register_script(_CLAIM_LUA)
        self.listening = asyncio.Event()  # subscribed: from now on an enqueue wakes this worker
        self.wakes = 0  # wake messages received
        self.claimed = 0  # jobs the picker started (arq's poll starts the others)
        self._due = asyncio.Event()  # jobs may be waiting: the picker should look
        self._halted = False  # arq stopped the worker (handle_sig): take no more jobs
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        # arq calls `on_stop` when it stops the worker (a signal, or close()), right after
        # cancelling its jobs and its main task: from then on the picker must not start any.
        previous = self.worker.on_stop

        def on_stop(signum: signal.Signals) -> None:
            self._halted = True
            if previous is not None:
                previous(signum)

        self.worker.on_stop = on_stop
        self._tasks = [
            asyncio.create_task(self._listen(), name="pagelens-wake-listener"),
            asyncio.create_task(self._pick_loop(), name="pagelens-wake-picker"),
        ]

    async def stop(self) -> None:
        await cancel_all(self._tasks)
        self._tasks = []

    def job_started(self) -> None:
        """Called from on_job_start, in arq's task for the job: watch for the slot it frees."""
        task = asyncio.current_task()
        if task is not None:
            task.add_done_callback(self._job_done)

    def _job_done(self, _: object) -> None:
        # arq's own done callback ran first and freed the slot. If the worker was full, jobs may
        # have been left waiting (arq's poll stops at max_jobs): take the next one now.
        if self.worker.job_counter + 1 >= self.worker.max_jobs:
            self._due.set()

    def _accepting(self) -> bool:
        # arq clears allow_pick_jobs when a SIGTERM starts a graceful drain. (Not the main task's
        # cancelling(): redis-py's zero timeouts when it checks out a connection raise it briefly.)
        return self.worker.allow_pick_jobs and not self._halted

    async def _listen(self) -> None:
        while True:
            pubsub = self.worker.pool.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self.listening.set()
                self._due.set()  # whatever was enqueued while nobody listened
                while True:
                    if await pubsub.get_message(ignore_subscribe_messages=True, timeout=None) is not None:
                        self.wakes += 1
                        self._due.set()
            except (RedisError, OSError) as exc:
                logger.warning("wake listener lost Redis (%s); polling until it is back", type(exc).__name__)
            except Exception:
                logger.warning("wake listener failed; polling until it is back", exc_info=True)
            finally:
                self.listening.clear()
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(RECONNECT_DELAY)

    async def _pick_loop(self) -> None:
        while True:
            await self._due.wait()
            self._due.clear()
            await self._room()
            if not self._accepting():
                continue
            try:
                await self._pick()
            except (RedisError, OSError) as exc:
                # arq's poll meets the same trouble and reports it; the picker just waits for the next wake.
                logger.debug("wake picker: %s", type(exc).__name__)
            except Exception:
                # Never let the picker die: polling would still run every job, only later.
                logger.warning("wake picker failed; polling still takes the jobs", exc_info=True)

    async def _room(self) -> None:
        """Until the worker has a free slot."""
        worker = self.worker
        while worker.job_counter >= worker.max_jobs:
            running = [t for t in worker.tasks.values() if not t.done()]
            if running:
                await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            else:
                await asyncio.sleep(IDLE_SLOT_WAIT)

    async def _pick(self) -> None:
        worker = self.worker
        reserved = await self._reserve()
        if not reserved:
            return
        started = 0
        try:
            claimed, more = await self._claim(reserved)
            if claimed and not self._accepting():
                # arq stopped taking jobs while the claim was on its way: hand them back at once
                # (not after their in-progress mark expires) for another worker to take.
                await worker.pool.delete(*(in_progress_key_prefix + job_id for job_id, _ in claimed))
                return
            for job_id, score in claimed:
                # What start_jobs does with a job it claimed: the job's task frees its slot when it ends.
                task = asyncio.create_task(worker.run_job(job_id, score))
                task.add_done_callback(lambda _: self._free_slot())
                worker.tasks[job_id] = task
                started += 1
        finally:
            for _ in range(reserved - started):
                self._free_slot()
            self.claimed += started
        if more:
            self._due.set()  # more are due than there was room for: look again once a slot frees

    async def _reserve(self) -> int:
        """Take the free slots as start_jobs does for each job it tries (semaphore, then
        job_counter), so that arq's own poll, running meanwhile, cannot overfill the worker.
        (An unlocked semaphore's acquire() returns without suspending: nothing runs in between.)"""
        worker = self.worker
        reserved = 0
        while worker.job_counter < worker.max_jobs and not worker.sem.locked():
            await worker.sem.acquire()
            worker.job_counter += 1
            reserved += 1
        return reserved

    def _free_slot(self) -> None:
        # arq's own Worker._release_sem_dec_counter_on_complete, spelled with its public attributes.
        self.worker.job_counter -= 1
        self.worker.sem.release()

    async def _claim(self, count: int) -> tuple[list[tuple[str, int]], bool]:
        """Claim up to `count` due jobs that no worker runs, oldest first, in one round trip:
        what start_jobs does for each job with four (WATCH, EXISTS, ZSCORE, MULTI/EXEC), and
        as atomically. True as well when more were due."""
        worker = self.worker
        args: list[int | str] = [
            timestamp_ms(),
            count,
            worker.queue_read_limit,
            in_progress_key_prefix,
            int(worker.in_progress_timeout_s * 1000),
        ]
        ids, scores, more = await self._claim_script(keys=[worker.queue_name], args=args)
        return [(i.decode(), int(float(s))) for i, s in zip(ids, scores, strict=True)], bool(more)


def start(ctx: dict[str, Any]) -> Waker | None:
    """From on_startup: start waking the worker running this hook (none in burst mode, where arq
    polls back to back anyway, or when called outside a worker's main task)."""
    worker = running_worker()
    if worker is None or worker.burst:
        return None
    waker = Waker(worker)
    waker.start()
    ctx[WAKER] = waker
    return waker


async def stop(ctx: dict[str, Any]) -> None:
    waker: Waker | None = ctx.pop(WAKER, None)
    if waker is not None:
        await waker.stop()


def waking(on_job_start: Hook) -> Hook:
    """`on_job_start` that also lets the worker's Waker watch the job for the slot it frees."""

    async def hook(ctx: dict[str, Any]) -> None:
        waker: Waker | None = ctx.get(WAKER)
        if waker is not None:
            waker.job_started()
        await on_job_start(ctx)

    return hook
