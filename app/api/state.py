"""What the API process holds for its lifetime, created in the lifespan and reached from requests."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
from arq.connections import ArqRedis
from starlette.applications import Starlette
from starlette.requests import HTTPConnection

from app.api.keyring import KeyRing
from app.api.scan_events import ScanEvents
from app.api.span_forwarding import BrowserTraces
from app.core.settings import Settings


@dataclass
class State:
    settings: Settings
    pool: asyncpg.Pool
    redis: ArqRedis
    events: ScanEvents
    keys: KeyRing
    browser_traces: BrowserTraces | None = None

    @staticmethod
    def of(connection: HTTPConnection) -> State:
        return State.of_app(connection.app)

    @staticmethod
    def of_app(app: Starlette) -> State:
        state: State = app.state.pagelens
        return state
