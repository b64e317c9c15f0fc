"""`python -m worker` (what `pagelens worker` runs): a `PagelensWorker` built from
`worker.WorkerSettings`, which starts jobs on enqueue and hands back a dead worker's jobs within
seconds. `arq worker.WorkerSettings` still runs a plain arq worker from the same settings, which
finds jobs by polling."""

from __future__ import annotations

import argparse
import logging.config
import sys
from collections.abc import Sequence

from arq.logs import default_log_config
from arq.worker import check_health, get_kwargs


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker", description="Run one pagelens worker.")
    parser.add_argument("--burst", action="store_true", help="run the queued jobs, then exit")
    parser.add_argument("--check", action="store_true", help="exit 0 when a worker of the queue is alive, else 1")
    args = parser.parse_args(argv)
    # What the `arq` command does before it starts a worker; on_startup then installs our JSON logs.
    logging.config.dictConfig(default_log_config(verbose=False))

    from worker.settings import WorkerSettings  # reads the environment
    from worker.wake import PagelensWorker

    if args.check:
        return check_health(WorkerSettings)  # type: ignore[arg-type]
    worker = PagelensWorker(**get_kwargs(WorkerSettings), burst=args.burst)  # type: ignore[arg-type]
    worker.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
