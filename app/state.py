"""What the API process holds for its lifetime, created in the lifespan and reached from requests."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
from arq.connections import ArqRedis
from starlette.requests import HTTPConnection

from app.browser_spans import BrowserTraces
from app.scan_events import ScanEvents
from app.settings import Settings


@dataclass
class State:
    settings: Settings
    pool: asyncpg.Pool
    redis: ArqRedis
    events: ScanEvents
    browser_traces: BrowserTraces | None = None

    @staticmethod
    def of(connection: HTTPConnection) -> State:
        state: State = connection.app.state.pagelens
        return state
