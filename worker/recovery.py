"""Jobs of a dead worker run again within seconds, found through the workers' heartbeats.

When a worker dies (SIGKILL, OOM, a lost node) arq leaves its jobs marked in progress until the
mark expires: the longest job timeout plus 10 s, over two minutes for a scan. Every worker beats a
heartbeat into `pagelens:workers:<queue>` (observability/sampler.py), and `PagelensWorker` marks
the jobs it claims with its id (worker/wake.py). So each worker, every `INTERVAL`, looks at the
marks of the queue's due jobs: a mark naming a worker whose last beat is older than `LOST_AFTER`
(or that has none) belongs to a dead worker. For those jobs it
1. hands back the scan's lease (`scans.release_lost`), which would otherwise make the next
   delivery wait for it to run out; the next claim bumps the attempt, so attempt fencing keeps any
   late write of the lost attempt out;
2. deletes the mark, if it still names the same dead worker, and wakes the queue's workers, one of
   which claims the job at once as arq would (its try count goes up, as after any crash).

Marks written by a plain `arq worker.WorkerSettings` worker say "1", not whose they are: its jobs
still come back when the mark expires, as in arq.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

import asyncpg
from arq.constants import in_progress_key_prefix
from arq.utils import timestamp_ms
from redis.asyncio import Redis

from app.core import scans
from app.core.queue import wake_channel
from app.core.tasks import cancel_all
from observability.sampler import HEARTBEAT_INTERVAL, workers_key

logger = logging.getLogger("pagelens.worker")

INTERVAL = 1.0  # seconds between looks; one Lua call each
LOST_AFTER = 4 * HEARTBEAT_INTERVAL  # seconds without a beat: four missed beats, not one late one
SCAN_LIMIT = 2000  # due jobs looked at per round (running jobs are among the oldest due ones)

# Due jobs whose in-progress mark names a worker with no heartbeat since ARGV[2]: id, worker pairs.
_FIND_LUA = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[4])
local lost, alive = {}, {}
for _, id in ipairs(due) do
  local owner = redis.call('GET', ARGV[3] .. id)
  if owner and owner ~= '1' then
    if alive[owner] == nil then
      local beat = redis.call('ZSCORE', KEYS[2], owner)
      alive[owner] = beat ~= false and tonumber(beat) >= tonumber(ARGV[2])
    end
    if not alive[owner] then
      lost[#lost + 1] = id
      lost[#lost + 1] = owner
    end
  end
end
return lost
"""

# Delete the marks (ARGV[4..]: id, worker pairs) still naming a worker that is still silent, and
# wake the queue's workers. Returns the ids whose mark went.
_RELEASE_LUA = """
local freed = {}
for i = 4, #ARGV, 2 do
  local key = ARGV[1] .. ARGV[i]
  if redis.call('GET', key) == ARGV[i + 1] then
    local beat = redis.call('ZSCORE', KEYS[1], ARGV[i + 1])
    if beat == false or tonumber(beat) < tonumber(ARGV[3]) then
      redis.call('DEL', key)
      freed[#freed + 1] = ARGV[i]
    end
  end
end
if #freed > 0 then redis.call('PUBLISH', ARGV[2], freed[1]) end
return freed
"""


def _scan_id(job_id: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(job_id)  # scan jobs are enqueued under the scan id; cron jobs are not
    except ValueError:
        return None


class Recovery:
    """The look for a dead worker's jobs, every `interval` seconds, on one queue."""

    def __init__(
        self,
        redis: Redis,
        pool: asyncpg.Pool,
        queue: str,
        *,
        interval: float = INTERVAL,
        lost_after: float = LOST_AFTER,
    ) -> None:
        self.redis = redis
        self.pool = pool
        self.queue = queue
        self.interval = interval
        self.lost_after_ms = int(lost_after * 1000)
        self.recovered = 0  # jobs handed back by this process
        self._find = redis.register_script(_FIND_LUA)
        self._release = redis.register_script(_RELEASE_LUA)
        self._tasks: list[asyncio.Task[None]] = []

    async def recover_once(self) -> list[str]:
        """One look: the ids of the jobs handed back."""
        now = timestamp_ms()
        silent_since = now - self.lost_after_ms
        raw = await self._find(
            keys=[self.queue, workers_key(self.queue)], args=[now, silent_since, in_progress_key_prefix, SCAN_LIMIT]
        )
        pairs = [(raw[i].decode(), raw[i + 1].decode()) for i in range(0, len(raw), 2)]
        if not pairs:
            return []
        leased = [sid for sid in (_scan_id(job_id) for job_id, _ in pairs) if sid is not None]
        if leased:
            await scans.release_lost(self.pool, leased)
        args = [in_progress_key_prefix, wake_channel(self.queue), silent_since, *(x for pair in pairs for x in pair)]
        freed = [job_id.decode() for job_id in await self._release(keys=[workers_key(self.queue)], args=args)]
        owners = dict(pairs)
        for job_id in freed:
            logger.warning(
                "job of a dead worker handed back: %s stopped beating", owners[job_id], extra={"job_id": job_id}
            )
        self.recovered += len(freed)
        return freed

    def start(self) -> None:
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._loop(), name="pagelens-recovery")]

    async def stop(self) -> None:
        await cancel_all(self._tasks)
        self._tasks = []

    async def _loop(self) -> None:
        failing = False
        while True:
            try:
                await self.recover_once()
            except Exception as exc:  # Redis or PostgreSQL away: arq's own expiry still recovers, later
                if not failing:
                    logger.warning("recovery of dead workers' jobs failed (%s); retrying", type(exc).__name__)
                failing = True
            else:
                failing = False
            await asyncio.sleep(self.interval)
