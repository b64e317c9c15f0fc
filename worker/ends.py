"""A job's end as arq writes it, so that `PagelensWorker` (worker/wake.py) can write the ends of
several jobs in one MULTI/EXEC where arq writes one per job.

`JobEnd.write` queues exactly the commands of arq 0.28's `Worker.finish_job` on a pipeline (the
result kept, or the retry's new score; the job, its retry count, its in-progress mark and its queue
entry removed). tests/test_arq_contract.py checks every kind of end against arq's own worker.
"""

from __future__ import annotations

from arq.constants import abort_jobs_ss, in_progress_key_prefix, job_key_prefix, result_key_prefix, retry_key_prefix
from arq.typing import SecondsTimedelta
from arq.utils import to_ms
from redis.asyncio.client import Pipeline


class JobEnd:
    """One `Worker.finish_job` call's arguments, and arq 0.28's commands for it."""

    __slots__ = ("finish", "incr_score", "job_id", "keep_in_progress", "keep_result_forever", "result_data", "timeout")

    def __init__(
        self,
        job_id: str,
        finish: bool,
        result_data: bytes | None,
        result_timeout_s: SecondsTimedelta | None,
        keep_result_forever: bool,
        incr_score: int | None,
        keep_in_progress: SecondsTimedelta | None,
    ) -> None:
        self.job_id = job_id
        self.finish = finish
        self.result_data = result_data
        self.timeout = result_timeout_s
        self.keep_result_forever = keep_result_forever
        self.incr_score = incr_score
        self.keep_in_progress = keep_in_progress

    def write(self, tr: Pipeline, queue_name: str) -> None:
        job_id = self.job_id
        delete_keys = []
        in_progress_key = in_progress_key_prefix + job_id
        if self.keep_in_progress is None:
            delete_keys.append(in_progress_key)
        else:
            tr.pexpire(in_progress_key, to_ms(self.keep_in_progress))
        if self.finish:
            if self.result_data:
                expire = None if self.keep_result_forever else self.timeout
                tr.set(result_key_prefix + job_id, self.result_data, px=to_ms(expire))
            delete_keys += [retry_key_prefix + job_id, job_key_prefix + job_id]
            tr.zrem(abort_jobs_ss, job_id)
            tr.zrem(queue_name, job_id)
        elif self.incr_score:
            tr.zincrby(queue_name, self.incr_score, job_id)
        if delete_keys:
            tr.delete(*delete_keys)
