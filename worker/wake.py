"""The worker `pagelens worker` runs: arq's `Worker`, woken on enqueue and claiming in batches.

arq finds jobs only by polling the queue (a sorted set) every `poll_delay`: 0.5 s by default, so a
job waits about 250 ms for an idle worker to notice it, and a shorter poll costs every idle worker
hundreds of Redis round trips a second. `app.core.queue.enqueue` therefore publishes each job id on
the queue's wake channel, and `PagelensWorker` listens: on a message, or when a slot frees while
jobs were left waiting, its picker claims as many due jobs as it has free slots. From there on a
job runs exactly as arq runs it (`Worker.run_job`), only sooner.

What the subclass overrides, all public methods of arq 0.28's `Worker`:
- `start_jobs(job_ids)`: arq's poll hands it the due ids it read. arq claims each one in four round
  trips (WATCH, EXISTS, ZSCORE, MULTI/EXEC); here one Lua script claims as many as there is room
  for, with arq's checks, atomically. The picker uses the same claim, reading the due ids itself.
- `main()`: stops the listener and the picker when arq's main loop ends.
- `handle_sig(signum)`: arq's stop (a signal, or `close()`): from then on nothing is claimed.
- `finish_job(...)`: arq writes each job's end (result, queue entry and keys removed) in a MULTI/EXEC
  of its own; here ends are group-committed: one MULTI/EXEC is on its way at a time, with exactly
  arq's commands for each of the ends that were waiting, and the ends that arrive meanwhile go in
  the next one. An end that finds no write on its way is written at once (with any others ending
  in the same event-loop turn), so a lone job's end waits for nothing.
`on_startup` is wrapped (after the configured hook has run, in the worker's main task): arq's own
bookkeeping is kept quiet (worker/quiet.py) and the listener and picker start.

arq's poll stays as it is and remains the safety net: a message lost while the listener
reconnects, a deferred retry becoming due, a job enqueued by plain arq code, cron jobs: the next
poll finds them. `arq worker.WorkerSettings` builds a plain `arq.worker.Worker` from the same
settings, which works by polling alone.

A claim marks the job in progress as arq does, under the same key and expiry, but with this
worker's id as the value (arq writes "1" and only ever checks that the key exists): that is how
worker/recovery.py tells which jobs a dead worker held.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
from typing import Any

from arq.constants import in_progress_key_prefix
from arq.typing import StartupShutdown
from arq.utils import timestamp_ms
from arq.worker import Worker
from redis.exceptions import RedisError

from app.core.queue import wake_channel
from app.core.tasks import cancel_all
from worker import quiet
from worker.ends import JobEnd

logger = logging.getLogger("pagelens.worker")

WORKER_ID = "pagelens_worker_id"  # the worker's id in its ctx: its heartbeat names it (worker/settings.py)
RECONNECT_DELAY = 1.0  # after the listener lost Redis; polling covers the gap

# Matches arq 0.28 `Worker.start_jobs` (checked by tests/test_arq_contract.py against the installed
# arq): a job is claimed when it is due (score <= now) and no worker holds it (no in-progress key),
# by setting its in-progress key for `in_progress_timeout_s`. Up to ARGV[2] jobs, among the ids in
# ARGV[7..] (arq's poll read them) or else among the first ARGV[3] due ones, in queue order.
# Returns the claimed ids, their scores, and 1 when more claimable jobs were left for lack of room.
_CLAIM_LUA = """
local now, want = tonumber(ARGV[1]), tonumber(ARGV[2])
local ids, scores = {}, {}
local function take(id, score)
  if score == false or tonumber(score) > now then return 0 end
  local key = ARGV[4] .. id
  if redis.call('EXISTS', key) == 1 then return 0 end
  if #ids == want then return 1 end
  redis.call('PSETEX', key, ARGV[5], ARGV[6])
  ids[#ids + 1] = id
  scores[#scores + 1] = score
  return 0
end
if #ARGV > 6 then
  for i = 7, #ARGV do
    if take(ARGV[i], redis.call('ZSCORE', KEYS[1], ARGV[i])) == 1 then return {ids, scores, 1} end
  end
else
  local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0, ARGV[3])
  for i = 1, #due, 2 do
    if take(due[i], due[i + 1]) == 1 then return {ids, scores, 1} end
  end
end
return {ids, scores, 0}
"""


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class PagelensWorker(Worker):
    """arq's Worker, woken on enqueue; see the module doc. Takes exactly arq's arguments."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.worker_id = new_worker_id()
        self.ctx[WORKER_ID] = self.worker_id
        self.channel = wake_channel(self.queue_name)
        self.listening = asyncio.Event()  # subscribed: from now on an enqueue wakes this worker
        self.wakes = 0  # wake messages received
        self.claimed = 0  # jobs started, by the picker or arq's poll
        self.picked = 0  # of those, started by the picker
        self._due = asyncio.Event()  # jobs may be waiting: the picker should look
        self._backlog = False  # jobs were left waiting for a free slot
        self._halted = False  # arq stopped the worker (handle_sig): take no more jobs
        self._tasks: list[asyncio.Task[None]] = []
        self._ending: list[tuple[JobEnd, asyncio.Future[None]]] = []  # ends waiting for the next write
        self.end_writes = 0  # MULTI/EXECs that wrote jobs' ends
        self._end_writer: asyncio.Task[None] | None = None  # writing ends until none are waiting
        self._configured_startup = self.on_startup
        self.on_startup = self._start_up

    # --- arq's public methods --------------------------------------------------------------------

    async def main(self) -> None:
        try:
            await super().main()
        finally:
            await self.stop_waking()

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """arq's poll found these due ids: claim what there is room for in one round trip."""
        await self._claim_and_start([job_id.decode() for job_id in job_ids])

    async def finish_job(
        self,
        job_id: str,
        finish: bool,
        result_data: bytes | None,
        result_timeout_s: float | None,
        keep_result_forever: bool,
        incr_score: int | None,
        keep_in_progress: float | None,
    ) -> None:
        """arq's finish_job, written together with the other ends waiting (see the module doc)."""
        end = JobEnd(job_id, finish, result_data, result_timeout_s, keep_result_forever, incr_score, keep_in_progress)
        done: asyncio.Future[None] = self.loop.create_future()
        self._ending.append((end, done))
        if self._end_writer is None:
            # Its first step runs after the callbacks already due, so jobs ending in this turn join.
            self._end_writer = self.loop.create_task(self._write_ends())
        await done

    async def _write_ends(self) -> None:
        """Write the waiting ends, one MULTI/EXEC at a time, until none are left."""
        try:
            while self._ending:
                ending, self._ending = self._ending, []
                await self._write_batch(ending)
        except asyncio.CancelledError:
            for _, done in self._ending:
                done.cancel()
            self._ending = []
            raise
        finally:
            self._end_writer = None  # no await since the last check: no end was left waiting

    async def _write_batch(self, ending: list[tuple[JobEnd, asyncio.Future[None]]]) -> None:
        try:
            async with self.pool.pipeline(transaction=True) as tr:
                for end, _ in ending:
                    end.write(tr, self.queue_name)
                await tr.execute()
        except asyncio.CancelledError:
            for _, done in ending:
                done.cancel()
            raise
        except Exception as exc:  # each job's run_job sees the error, as it would its own write's
            for _, done in ending:
                if not done.done():
                    done.set_exception(exc)
        else:
            self.end_writes += 1
            for _, done in ending:
                if not done.done():
                    done.set_result(None)

    def handle_sig(self, signum: signal.Signals) -> None:
        # arq cancels its jobs and its main task here (a signal, or close()): claim nothing more.
        self._halted = True
        super().handle_sig(signum)

    # --- the wake-up -----------------------------------------------------------------------------

    async def _start_up(self, ctx: dict[str, Any]) -> None:
        """arq awaits on_startup in the worker's main task, once the Redis pool exists."""
        configured: StartupShutdown | None = self._configured_startup
        if configured is not None:
            await configured(ctx)
        # Before the tasks below exist, so they (and the jobs they start) inherit the quiet context.
        quiet.quiet_arq(main_task=True)
        if not self.burst:  # in burst mode arq polls back to back anyway
            self._tasks = [
                asyncio.create_task(self._listen(), name="pagelens-wake-listener"),
                asyncio.create_task(self._pick_loop(), name="pagelens-wake-picker"),
            ]

    async def stop_waking(self) -> None:
        await cancel_all(self._tasks)
        self._tasks = []

    def _accepting(self) -> bool:
        # arq clears allow_pick_jobs when a SIGTERM starts a graceful drain.
        return self.allow_pick_jobs and not self._halted

    async def _listen(self) -> None:
        while True:
            pubsub = self.pool.pubsub(ignore_subscribe_messages=True)
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
            if not self._accepting():
                continue
            if self.job_counter >= self.max_jobs:
                self._backlog = True  # a job's end looks again (_job_done)
                continue
            self._backlog = False
            try:
                self.picked += await self._claim_and_start(None)
            except (RedisError, OSError) as exc:
                # arq's poll meets the same trouble and reports it; the picker just waits for the next wake.
                logger.debug("wake picker: %s", type(exc).__name__)
            except Exception:
                # Never let the picker die: polling would still run every job, only later.
                logger.warning("wake picker failed; polling still takes the jobs", exc_info=True)

    # --- the claim -------------------------------------------------------------------------------

    async def _claim_and_start(self, candidates: list[str] | None) -> int:
        """Claim up to the free slots' worth of due jobs (among `candidates`, else the queue's first
        due ones) and start each with arq's `run_job`; how many started."""
        room = self.max_jobs - self.job_counter
        if room <= 0 or not self._accepting() or candidates == []:
            return 0
        # Reserved before the first await, so the poll and the picker never overfill the worker.
        self.job_counter += room
        started = 0
        try:
            claimed, more = await self._claim(room, candidates or [])
            if claimed and not self._accepting():
                # arq stopped taking jobs while the claim was on its way: hand them back at once
                # (not after their in-progress mark expires) for another worker to take.
                await self.pool.delete(*(in_progress_key_prefix + job_id for job_id, _ in claimed))
                return 0
            for job_id, score in claimed:
                # What arq's start_jobs does with a job it claimed; the task frees its slot when it ends.
                task = self.loop.create_task(self.run_job(job_id, score))
                task.add_done_callback(self._job_done)
                self.tasks[job_id] = task
                started += 1
            if more:
                self._backlog = True
        finally:
            self.job_counter -= room - started
            self.claimed += started
            if self._backlog and started < room:
                self._due.set()  # a wake-up came while the slots were reserved: look again
        return started

    def _job_done(self, _: object) -> None:
        self.job_counter -= 1
        if self._backlog:
            self._due.set()  # jobs were left waiting for this slot

    async def _claim(self, count: int, candidates: list[str]) -> tuple[list[tuple[str, int]], bool]:
        args: list[int | str] = [
            timestamp_ms(),
            count,
            self.queue_read_limit,
            in_progress_key_prefix,
            int(self.in_progress_timeout_s * 1000),
            self.worker_id,
            *candidates,
        ]
        script = self.pool.register_script(_CLAIM_LUA)  # a SHA1 of the text; EVALSHA loads it once
        ids, scores, more = await script(keys=[self.queue_name], args=args)
        return [(i.decode(), int(float(s))) for i, s in zip(ids, scores, strict=True)], bool(more)
