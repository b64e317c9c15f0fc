"""pagelens arq worker: `arq worker.WorkerSettings`."""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    # Imported lazily: WorkerSettings reads the environment, which importing worker.fetch
    # (from the API or a test) must not do.
    if name == "WorkerSettings":
        from worker.settings import WorkerSettings

        return WorkerSettings
    raise AttributeError(name)
