"""GET /api/v1/scan-jobs/{scanId}/events against the real API, PostgreSQL LISTEN/NOTIFY and a worker.

Most tests run an API of their own in the test's event loop (uvicorn on loopback) on a database of
this module's own, so the listener connections counted in pg_stat_activity are that API's alone,
and its hub can be inspected. Scans change through the real writers: the repository functions the
worker and the API call, the API's DELETE, and (in the last test) a real arq worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import pytest
from arq.worker import Worker
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette

from app.api.main import create_app
from app.api.scan_events import LISTENER_NAME, ScanEvents
from app.core import db, scans
from app.core.models import ErrorType, ScanError, Stage
from app.core.report import Findings, Teaser
from app.core.settings import Settings
from tests import waiting
from tests.conftest import serve_api
from tests.site import Site

EVENTS = "/api/v1/scan-jobs/{}/events"
ROUTE = "/api/v1/scan-jobs/{scanId}/events"
POLL = 0.05
BOUND = 300  # x POLL: every wait below gives up after ~15 s

until = functools.partial(waiting.until, poll=POLL, polls=BOUND)


@dataclass
class Event:
    id: int | None
    name: str | None
    data: dict[str, Any]


@dataclass
class Stream:
    """One SSE response, read by a background task: events and comments as they arrive."""

    response: httpx.Response
    events: list[Event] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    retry: int | None = None
    ended: bool = False

    async def read(self) -> None:
        fields: dict[str, str] = {}
        async for line in self.response.aiter_lines():
            if line == "":
                if "data" in fields:
                    raw_id = fields.get("id")
                    self.events.append(
                        Event(int(raw_id) if raw_id else None, fields.get("event"), json.loads(fields["data"]))
                    )
                fields = {}
            elif line.startswith(":"):
                self.comments.append(line[1:].strip())
            else:
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "retry":
                    self.retry = int(value)
                else:
                    fields[name] = value
        self.ended = True

    def statuses(self) -> list[str]:
        return [e.data["status"] for e in self.events]


@dataclass
class Api:
    app: Starlette
    client: httpx.AsyncClient

    @property
    def hub(self) -> ScanEvents:
        hub: ScanEvents = self.app.state.pagelens.events
        return hub

    @contextlib.asynccontextmanager
    async def stream(self, scan_id: str, headers: dict[str, str] | None = None) -> AsyncIterator[Stream]:
        async with self.client.stream("GET", EVENTS.format(scan_id), headers=headers or {}) as response:
            stream = Stream(response)
            if response.status_code != 200:
                await response.aread()
                yield stream
                return
            reader = asyncio.create_task(stream.read())
            try:
                yield stream
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
                    await reader

    async def document(self) -> uuid.UUID:
        response = await self.client.post("/api/v1/documents", json={"text": "Live progress over server-sent events."})
        assert response.status_code == 202, response.text
        return uuid.UUID(response.json()["scanId"])


@pytest.fixture(scope="module")
async def events_db(migrated_database: Callable[[], Awaitable[str]]) -> str:
    return await migrated_database()


@pytest.fixture(scope="module")
async def writer(events_db: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool of the database's own: the writes a worker would make."""
    pool = await db.create_pool(events_db)
    yield pool
    await pool.close()


@pytest.fixture
async def open_api(settings: Settings, events_db: str) -> Callable[..., contextlib.AbstractAsyncContextManager[Api]]:
    @contextlib.asynccontextmanager
    async def start(**changes: Any) -> AsyncIterator[Api]:
        api_settings = settings.with_(database_url=events_db, **{"sse_keepalive": 30.0, **changes})
        app = create_app(api_settings, configure_logging=False)
        async with serve_api(api_settings, app) as base, httpx.AsyncClient(base_url=base, timeout=15) as client:
            api = Api(app, client)
            await until(api.hub.connected.is_set, "the listener to connect")
            yield api

    return start


async def listeners(pool: asyncpg.Pool) -> int:
    count: int = await pool.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1",
        LISTENER_NAME,
    )
    return count


def sse_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("sse-") and not t.done()]


# --- the stream -----------------------------------------------------------------------------------


async def test_a_stream_follows_every_writer_to_the_terminal_state(open_api: Any, writer: asyncpg.Pool) -> None:
    async with open_api() as api:
        scan_id = await api.document()
        async with api.stream(str(scan_id)) as stream:
            assert stream.response.headers["content-type"].startswith("text/event-stream")
            assert stream.response.headers["cache-control"].startswith("no-cache")
            await until(lambda: len(stream.events) == 1, "the current state")
            assert stream.events[0].data["status"] == "QUEUED" and stream.events[0].name == "status"
            assert stream.retry == 2000

            # The writers a worker uses, one change at a time, each seen before the next is made.
            row = await scans.claim(writer, scan_id, 60)
            assert row is not None
            attempt = row["attempts"]
            await until(lambda: len(stream.events) == 2, "RUNNING")
            assert await scans.enter_stage(writer, scan_id, attempt, Stage.GENERATE)
            await until(lambda: len(stream.events) == 3, "the GENERATE stage")
            # A timings-only write (the stage and progress it sets are already there) is not news: no
            # event, no version.
            assert await scans.enter_stage(writer, scan_id, attempt, Stage.GENERATE, {"generateMs": 12.5})
            assert await scans.save_teaser(writer, scan_id, attempt, Teaser(title="t"))
            await until(lambda: len(stream.events) == 4, "TEASER_READY")
            assert await scans.finish(writer, scan_id, attempt, Findings(), {})
            await until(lambda: stream.ended, "the stream to end after FULL_READY")

        assert stream.statuses() == ["QUEUED", "RUNNING", "RUNNING", "TEASER_READY", "FULL_READY"]
        assert [e.data["stage"] for e in stream.events] == [None, None, "GENERATE", "GENERATE", "GENERATE"]
        assert [e.data["progress"] for e in stream.events] == [0, 0, 70, 70, 100]
        ids = [e.id for e in stream.events]
        assert ids == list(range(1, 6)), ids  # versions: one per visible change, none for the timing
        # The last event is the status resource itself.
        status = (await api.client.get(f"/api/v1/scan-jobs/{scan_id}/status")).json()
        assert stream.events[-1].data == status


async def test_cancel_and_failure_end_the_stream(open_api: Any, writer: asyncpg.Pool) -> None:
    async with open_api() as api:
        cancelled = await api.document()
        async with api.stream(str(cancelled)) as stream:
            await until(lambda: len(stream.events) == 1, "the current state")
            assert (await api.client.delete(f"/api/v1/scan-jobs/{cancelled}")).status_code == 202
            await until(lambda: stream.ended, "the stream to end after CANCELLED")
        assert stream.statuses() == ["QUEUED", "CANCELLED"]

        failed = await api.document()
        async with api.stream(str(failed)) as stream:
            row = await scans.claim(writer, failed, 60)
            assert row is not None
            assert await scans.fail(writer, failed, row["attempts"], ScanError(ErrorType.INTERNAL, "boom"))
            await until(lambda: stream.ended, "the stream to end after FAILED")
        assert stream.statuses()[-1] == "FAILED"
        assert stream.events[-1].data["error"] == {"type": "internal", "message": "boom", "retryable": False}


async def test_last_event_id(open_api: Any, writer: asyncpg.Pool) -> None:
    async with open_api() as api:
        scan_id = await api.document()
        row = await scans.claim(writer, scan_id, 60)
        assert row is not None and row["version"] == 2
        # Already seen the current state: nothing is repeated; the next change arrives.
        async with api.stream(str(scan_id), {"Last-Event-ID": "2"}) as stream:
            await asyncio.sleep(0.3)
            assert stream.events == []
            assert await scans.enter_stage(writer, scan_id, row["attempts"], Stage.GENERATE)
            await until(lambda: len(stream.events) == 1, "the next change")
            assert stream.events[0].id == 3

        assert await scans.finish(writer, scan_id, row["attempts"], Findings(), {})
        # Behind: the current (terminal) state at once, then the end.
        async with api.stream(str(scan_id), {"Last-Event-ID": "1"}) as stream:
            await until(lambda: stream.ended, "the stream to end")
        assert [(e.id, e.data["status"]) for e in stream.events] == [(4, "FULL_READY")]
        # Seen to the end: 204, which tells an EventSource to stop reconnecting.
        response = await api.client.get(EVENTS.format(scan_id), headers={"Last-Event-ID": "4"})
        assert response.status_code == 204 and response.content == b""
        # Ids from another history (ahead of the scan) or unreadable ones: the current state again.
        for odd in ("999", "abc", "-1", "9" * 40):
            async with api.stream(str(scan_id), {"Last-Event-ID": odd}) as stream:
                await until(lambda: stream.ended, f"the stream to end ({odd})")
            assert [e.id for e in stream.events] == [4], odd


async def test_idle_streams_get_keep_alive_comments_and_a_bounded_life(open_api: Any) -> None:
    async with open_api(sse_keepalive=0.2, sse_max_seconds=1.5) as api:
        scan_id = await api.document()
        async with api.stream(str(scan_id)) as stream:
            await until(lambda: stream.ended, "the stream's maximum life")
        assert stream.statuses() == ["QUEUED"]
        assert stream.comments.count("keep-alive") >= 3, stream.comments
        # Reconnecting with the last id carries on without repeating anything.
        async with api.stream(str(scan_id), {"Last-Event-ID": str(stream.events[-1].id)}) as again:
            await until(lambda: "keep-alive" in again.comments, "a keep-alive")
            assert again.events == []


async def test_unknown_scans_are_404(open_api: Any) -> None:
    async with open_api() as api:
        for scan_id in (str(uuid.uuid4()), "not-a-uuid"):
            response = await api.client.get(EVENTS.format(scan_id))
            assert response.status_code == 404, response.text
            assert response.headers["content-type"] == "application/problem+json"
            assert response.json()["type"] == "urn:pagelens:problem:scan-not-found"
        assert api.hub.watchers == {}, "a refused stream stayed subscribed"


# --- resources ------------------------------------------------------------------------------------


async def test_one_listener_fans_out_and_disconnects_leak_nothing(open_api: Any, writer: asyncpg.Pool) -> None:
    async with open_api() as api:
        first, second = await api.document(), await api.document()
        tasks_before = len(asyncio.all_tasks())
        async with contextlib.AsyncExitStack() as stack:
            streams = [await stack.enter_async_context(api.stream(str(s))) for s in [first] * 4 + [second] * 4]
            await until(lambda: all(len(s.events) == 1 for s in streams), "every stream's first event")
            assert api.hub.streams == 8 and set(api.hub.watchers) == {first, second}
            assert await listeners(writer) == 1, "one LISTEN connection per API process, however many streams"
            assert len(sse_tasks()) == 16  # a writer and a disconnect watcher per stream
            # One change reaches every watcher of that scan, and only them.
            assert await scans.claim(writer, first, 60) is not None
            await until(lambda: all(len(s.events) == 2 for s in streams[:4]), "the change on every stream")
            assert all(len(s.events) == 1 for s in streams[4:])
        # Every client hung up mid-stream.
        await until(lambda: not sse_tasks(), "the stream tasks to finish")
        await until(lambda: api.hub.streams == 0, "the hub to forget the streams")
        assert api.hub.watchers == {}
        await until(lambda: len(asyncio.all_tasks()) <= tasks_before, "the task count to come back")
        assert await listeners(writer) == 1
    for _ in range(BOUND):  # the server forgets a closed session a moment after the client
        if await listeners(writer) == 0:
            break
        await asyncio.sleep(POLL)
    assert await listeners(writer) == 0, "the listener outlived the API"


async def test_streams_are_bounded(open_api: Any) -> None:
    async with open_api(sse_max_streams=2) as api:
        scan_id = str(await api.document())
        async with api.stream(scan_id) as one, api.stream(scan_id) as two:
            await until(lambda: len(one.events) == 1 and len(two.events) == 1, "two streams")
            refused = await api.client.get(EVENTS.format(scan_id))
            assert refused.status_code == 429, refused.text
            assert refused.headers["retry-after"] == "10"
            assert refused.json()["type"] == "urn:pagelens:problem:too-many-streams"
        await until(lambda: api.hub.streams == 0, "the two streams to close")
        async with api.stream(scan_id) as three:
            await until(lambda: len(three.events) == 1, "a stream after the others closed")


async def test_the_listener_reconnects_and_resends_what_it_missed(open_api: Any, writer: asyncpg.Pool) -> None:
    async with open_api() as api:
        # Slow to reconnect, so the change below surely lands while nothing listens.
        api.hub.retry_delay = 1.0
        scan_id = await api.document()
        async with api.stream(str(scan_id)) as stream:
            await until(lambda: len(stream.events) == 1, "the current state")
            pid = api.hub.listener_pid
            assert pid is not None
            assert await writer.fetchval("SELECT pg_terminate_backend($1)", pid)
            await until(lambda: not api.hub.connected.is_set(), "the hub to notice")
            assert await scans.claim(writer, scan_id, 60) is not None  # its NOTIFY reaches nobody
            await until(lambda: len(stream.events) == 2, "the missed change after the reconnect")
            assert api.hub.connections == 2 and api.hub.listener_pid not in (None, pid)
            assert stream.events[1].data["status"] == "RUNNING" and not stream.ended
        assert await listeners(writer) == 1


async def scrape(api: Api) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = await api.client.get("/metrics", headers={"Accept": "text/plain"})
    assert response.status_code == 200
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


async def test_a_stream_counts_as_a_request_only_until_it_opens(open_api: Any) -> None:
    labels = frozenset({"method": "GET", "route": ROUTE}.items())
    served = ("pagelens_http_requests_total", labels | {("status", "2xx")})
    in_progress = ("pagelens_http_requests_in_progress", labels)
    streams_open = ("pagelens_sse_streams_open", frozenset[tuple[str, str]]())
    async with open_api() as api:
        scan_id = str(await api.document())
        before = await scrape(api)
        async with api.stream(scan_id) as stream:
            await until(lambda: len(stream.events) == 1, "the stream to open")
            during = await scrape(api)
        await until(lambda: api.hub.streams == 0, "the stream to close")
        after = await scrape(api)
    # Open for as long as the client likes, the stream is one served request from its first byte,
    # never an "in progress" one; the open-streams gauge is where it shows while it lasts.
    assert during[served] - before.get(served, 0) == 1
    assert during.get(in_progress, 0) == 0
    assert during[streams_open] - before[streams_open] == 1
    assert after[served] == during[served] and after[streams_open] == before[streams_open]


# --- with a real worker ---------------------------------------------------------------------------


@pytest.mark.slow
async def test_a_real_scan_streams_its_progress(
    client: httpx.AsyncClient, make_worker: Callable[..., Worker], site: Site
) -> None:
    created = await client.post("/api/v1/scan-jobs", json={"url": site.url("/pages/article.html")})
    assert created.status_code == 202
    scan_id = created.json()["scanId"]
    async with client.stream("GET", EVENTS.format(scan_id)) as response:
        stream = Stream(response)
        reader = asyncio.create_task(stream.read())
        await until(lambda: len(stream.events) == 1, "the current state")
        await make_worker().main()
        await until(lambda: stream.ended, "the stream to end")
        await reader
    statuses = stream.statuses()
    assert statuses[0] == "QUEUED" and statuses[-1] == "FULL_READY", statuses
    assert "RUNNING" in statuses or "TEASER_READY" in statuses, statuses
    ids = [e.id or 0 for e in stream.events]
    assert ids == sorted(set(ids)) and len(ids) >= 4 and ids[0] > 0, ids  # strictly increasing versions
    progress = [e.data["progress"] for e in stream.events]
    assert progress == sorted(progress) and progress[-1] == 100, progress
    stages = [e.data["stage"] for e in stream.events if e.data["stage"]]
    assert stages == sorted(stages, key=["CRAWL", "PARSE", "ANALYZE", "GENERATE"].index), stages
    status = (await client.get(f"/api/v1/scan-jobs/{scan_id}/status")).json()
    assert stream.events[-1].data == status
