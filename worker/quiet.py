"""arq's own bookkeeping, kept out of traces and out of the logs.

For every job arq makes six Redis round trips of its own (claim, fetch, result) and logs two lines.

- Traces: the redis instrumentation would wrap each round trip in a CLIENT span with no parent,
  which the sampler then drops (`NoOrphanClientSpans`); creating and dropping those spans was about
  a sixth of a no-op job's CPU. arq runs `on_startup` in the worker's main task, whose context every
  job's task copies, so `quiet_arq` switches instrumentation off there. `on_job_start` attaches the
  job's own context (a fresh one, with the CONSUMER span), which lifts it: everything a job does is
  traced as before, and only arq's claim and result writes around it are not.
- Logs: arq's per-job INFO lines ("→ run_scan(...)", "← ● done") repeat what pagelens's own
  "job started" and "job finished" lines say with trace ids and queue wait, at the same cost each.
  They are dropped; arq's warnings and errors (a failed job, retries exhausted) are kept.
"""

from __future__ import annotations

import logging

from opentelemetry import context as otel_context

from worker.wake import running_worker

ARQ_WORKER_LOGGER = "arq.worker"
# Every per-job line arq logs starts with the job's elapsed time in this format.
_ARQ_JOB_LINE = "%6.2fs "


class ArqJobLines(logging.Filter):
    """Drop arq's per-job INFO lines; keep everything else it logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.msg
        return not (record.levelno == logging.INFO and isinstance(msg, str) and msg.startswith(_ARQ_JOB_LINE))


def quiet_arq() -> bool:
    """From on_startup. True when it ran in a worker's main task and turned tracing off there."""
    arq_logger = logging.getLogger(ARQ_WORKER_LOGGER)
    if not any(isinstance(f, ArqJobLines) for f in arq_logger.filters):
        arq_logger.addFilter(ArqJobLines())
    if running_worker() is None:
        # Called from a test's own task, say: suppressing there would hide the test's own spans.
        return False
    # The key the public `suppress_instrumentation()` context manager sets; attached for the rest
    # of the task's life (never detached), since the task is arq's poll loop itself.
    otel_context.attach(otel_context.set_value(otel_context._SUPPRESS_INSTRUMENTATION_KEY, True))
    return True
