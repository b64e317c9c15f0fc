"""arq's own bookkeeping, kept out of traces and out of the logs.

For every job arq makes six Redis round trips of its own (claim, fetch, result) and logs two lines.

- Traces: the redis instrumentation would wrap each round trip in a CLIENT span with no parent,
  which the sampler then drops (`NoOrphanClientSpans`); creating and dropping those spans was about
  a sixth of a no-op job's CPU. `PagelensWorker` (worker/wake.py) calls `quiet_arq(main_task=True)`
  in the worker's main task, whose context every job's task copies, so instrumentation is off
  there. `on_job_start` attaches the job's own context (a fresh one, with the CONSUMER span), which
  lifts it: everything a job does is traced as before, and only arq's claim and result writes
  around it are not. (A plain `arq worker.WorkerSettings` worker does not do this: its hooks cannot
  know which task is the main one, so arq's round trips are traced there and dropped as orphans.)
- Logs: arq's per-job INFO lines ("→ run_scan(...)", "← ● done") repeat what pagelens's own
  "job started" and "job finished" lines say with trace ids and queue wait, at the same cost each.
  They are dropped; arq's warnings and errors (a failed job, retries exhausted) are kept.
"""

from __future__ import annotations

import logging

from opentelemetry import context as otel_context

ARQ_WORKER_LOGGER = "arq.worker"
# Every per-job line arq logs starts with the job's elapsed time in this format.
_ARQ_JOB_LINE = "%6.2fs "


class ArqJobLines(logging.Filter):
    """Drop arq's per-job INFO lines; keep everything else it logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.msg
        return not (record.levelno == logging.INFO and isinstance(msg, str) and msg.startswith(_ARQ_JOB_LINE))


def quiet_arq(*, main_task: bool = False) -> None:
    """Filter arq's per-job log lines; with `main_task` (only from the worker's main task: anywhere
    else it would hide a caller's own spans) also switch instrumentation off for the task's life."""
    arq_logger = logging.getLogger(ARQ_WORKER_LOGGER)
    if not any(isinstance(f, ArqJobLines) for f in arq_logger.filters):
        arq_logger.addFilter(ArqJobLines())
    if main_task:
        # The key the public `suppress_instrumentation()` context manager sets; attached for the rest
        # of the task's life (never detached), since the task is arq's poll loop itself.
        otel_context.attach(otel_context.set_value(otel_context._SUPPRESS_INSTRUMENTATION_KEY, True))
