"""Live scan changes for server-sent events: one PostgreSQL LISTEN connection per API process.

A trigger (migrations/0004_scan_events.sql) bumps a scan's `version` and sends
`NOTIFY pagelens_scan_events '{"id", "version"}'` on every change a client can see, whoever wrote
it. This hub listens on one dedicated connection and fans changes out to the streams watching
those scans. For each batch of notifications it reads the changed rows once, in one query, for
all of their watchers; a stream never queries the database on its own after it opens.

A change reaches only streams of the scan's own tenant: the notification names it, the rows read
carry it, and a watcher takes a row only when the tenants match. Streams are capped per process
and, when requests come with keys, per tenant (a share of the process's cap), so one tenant cannot
hold every slot.

Each watcher holds only the newest row (a slow client skips intermediate states instead of
buffering them), and stream ids are versions, so a client can always tell what it has seen. When
the listener connection drops, the hub reconnects with backoff and re-reads every watched scan:
whatever changed during the gap reaches the watchers as one event with the current state.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import asyncpg

from app.core import scans
from app.core.tasks import cancel_all
from app.core.types import Pool, Record

logger = logging.getLogger("pagelens.events")

CHANNEL = "pagelens_scan_events"
# The listener's application_name, so an operator (and a test) can find it in pg_stat_activity.
LISTENER_NAME = "pagelens-events"


class TooManyStreams(Exception):
    """The process already serves its maximum number of concurrent streams (`tenant` False), or
    the requesting tenant its share of them (`tenant` True)."""

    def __init__(self, limit: int, *, tenant: bool) -> None:
        super().__init__(limit)
        self.limit = limit
        self.tenant = tenant


class Watcher:
    """One stream's view of one scan: the newest row the hub has read, and a flag that it changed.

    `tenant` is the scan's tenant as the stream asked for it: rows of any other tenant are never
    taken. `holder` is the tenant whose share of streams it counts against (None: uncapped)."""

    def __init__(self, scan_id: uuid.UUID, tenant: str, holder: str | None = None) -> None:
        self.scan_id = scan_id
        self.tenant = tenant
        self.holder = holder
        self.latest: Record | None = None
        self.changed = asyncio.Event()

    def offer(self, row: Record) -> None:
        if row["tenant"] != self.tenant:
            return
        if self.latest is None or row["version"] > self.latest["version"]:
            self.latest = row
            self.changed.set()

    async def next(self, within: float) -> Record | None:
        """The newest row once it changed, or None after `within` seconds without a change."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await self.changed.wait()
        if not self.changed.is_set():
            return None
        self.changed.clear()
        return self.latest


class ScanEvents:
    def __init__(
        self,
        dsn: str,
        pool: Pool,
        *,
        max_streams: int,
        tenant_share: float = 1.0,
        also: Mapping[str, Callable[[], None]] | None = None,
        health_interval: float = 10.0,
        retry_delay: float = 0.2,
        max_backoff: float = 5.0,
    ) -> None:
        self.dsn = dsn
        self.pool = pool
        self.max_streams = max_streams
        self.max_tenant_streams = max(1, math.floor(max_streams * tenant_share))
        # Other channels on the same listener connection: each callback runs on every notification
        # and after every (re)connect, when notifications may have been missed.
        self.also = dict(also or {})
        self._held: dict[str, int] = {}  # streams per holding tenant
        self.health_interval = health_interval
        self.retry_delay = retry_delay
        self.max_backoff = max_backoff
        self.watchers: dict[uuid.UUID, set[Watcher]] = {}
        self.connected = asyncio.Event()
        self.connections = 0  # listener connections opened so far (1 + reconnects)
        self._conn: asyncpg.Connection | None = None
        self._dirty: set[uuid.UUID] = set()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def streams(self) -> int:
        return sum(len(group) for group in self.watchers.values())

    @property
    def listener_pid(self) -> int | None:
        """The server process id of the listener connection (tests end it to prove reconnection)."""
        return self._conn.get_server_pid() if self._conn is not None and not self._conn.is_closed() else None

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._listen(), name="scan-events-listener"),
            asyncio.create_task(self._refresh(), name="scan-events-refresh"),
        ]

    async def stop(self) -> None:
        await cancel_all(self._tasks)
        self._tasks = []

    def subscribe(self, scan_id: uuid.UUID, tenant: str, holder: str | None = None) -> Watcher:
        """Register a stream for `scan_id` of `tenant`, counted against `holder`'s share (None: only
        against the process's cap); TooManyStreams at either cap. Pair with `unsubscribe`."""
        if self.streams >= self.max_streams:
            raise TooManyStreams(self.max_streams, tenant=False)
        if holder is not None:
            if self._held.get(holder, 0) >= self.max_tenant_streams:
                raise TooManyStreams(self.max_tenant_streams, tenant=True)
            self._held[holder] = self._held.get(holder, 0) + 1
        watcher = Watcher(scan_id, tenant, holder)
        self.watchers.setdefault(scan_id, set()).add(watcher)
        return watcher

    def unsubscribe(self, watcher: Watcher) -> None:
        group = self.watchers.get(watcher.scan_id)
        if group is None or watcher not in group:
            return
        group.discard(watcher)
        if not group:
            del self.watchers[watcher.scan_id]
        if watcher.holder is not None:
            left = self._held.get(watcher.holder, 0) - 1
            if left > 0:
                self._held[watcher.holder] = left
            else:
                self._held.pop(watcher.holder, None)

    def tenant_streams(self, holder: str) -> int:
        return self._held.get(holder, 0)

    # --- the listener --------------------------------------------------------------------------

    def _on_notify(self, conn: object, pid: int, channel: str, payload: object) -> None:
        try:
            data: Any = json.loads(str(payload))
            scan_id = uuid.UUID(data["id"])
            version = int(data["version"])
            tenant = data.get("tenant")
        except (ValueError, KeyError, TypeError, AttributeError):
            logger.warning("ignoring a malformed %s notification", CHANNEL)
            return
        group = self.watchers.get(scan_id)
        if not group:
            return
        # Only this tenant's streams care (a notification without one, from before the tenant
        # column, is checked against the row when it is read).
        wanting = [w for w in group if tenant is None or w.tenant == tenant]
        if all(w.latest is not None and w.latest["version"] >= version for w in wanting):
            return
        self._dirty.add(scan_id)
        self._wake.set()

    async def _listen(self) -> None:
        """Keep one LISTEN connection open; after every (re)connect, re-read what is watched."""
        failures = 0
        while True:
            conn: asyncpg.Connection | None = None
            lost = asyncio.Event()
            try:
                conn = await asyncpg.connect(self.dsn, server_settings={"application_name": LISTENER_NAME})
                conn.add_termination_listener(lambda _, lost=lost: lost.set())
                await conn.add_listener(CHANNEL, self._on_notify)
                for channel, callback in self.also.items():
                    await conn.add_listener(channel, lambda *_, callback=callback: callback())
                    callback()
                self._conn = conn
                self.connections += 1
                self.connected.set()
                if failures:
                    logger.info("scan events listener reconnected")
                failures = 0
                # Changes made while no connection listened were never delivered: re-read them all.
                self._dirty.update(self.watchers)
                self._wake.set()
                await self._until_lost(conn, lost)
                logger.warning("scan events listener lost its connection")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("scan events listener failed: %s", type(exc).__name__)
            finally:
                self.connected.clear()
                self._conn = None
                if conn is not None:
                    conn.terminate()
            await asyncio.sleep(min(self.max_backoff, self.retry_delay * 2**failures))
            failures += 1

    async def _until_lost(self, conn: asyncpg.Connection, lost: asyncio.Event) -> None:
        """Return once the connection is gone: closed under us, or not answering a ping (a peer
        that vanished without closing the socket looks healthy until something is sent)."""
        while not conn.is_closed():
            try:
                async with asyncio.timeout(self.health_interval):
                    await lost.wait()
                return
            except TimeoutError:
                await conn.fetchval("SELECT 1", timeout=self.health_interval)

    # --- fan-out -------------------------------------------------------------------------------

    async def _refresh(self) -> None:
        """Read changed scans in one query per batch and hand each row to its watchers."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            ids = [scan_id for scan_id in self._dirty if scan_id in self.watchers]
            self._dirty.clear()
            if not ids:
                continue
            try:
                rows = await scans.statuses(self.pool, ids)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database is away: keep them dirty and try again shortly
                logger.warning("could not read changed scans: %s", type(exc).__name__)
                self._dirty.update(ids)
                await asyncio.sleep(1.0)
                self._wake.set()
                continue
            for row in rows:
                for watcher in list(self.watchers.get(row["id"], ())):
                    watcher.offer(row)
