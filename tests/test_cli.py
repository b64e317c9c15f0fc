"""The `pagelens` command as a user runs it: a subprocess against the real API and worker
(subprocesses too, tests/live.py), checking what it prints and its exit codes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from rich.console import Console

from app.cli.client import STREAM_RECONNECTS
from app.cli.embedded import free_port
from app.cli.report import render_list
from app.core import migrate
from app.core.report import ScanStatus
from app.core.settings import ROOT, Settings
from observability import metrics
from tests.conftest import serve_api
from tests.live import Live, live_stack
from tests.processes import process_env
from tests.site import PAGES_DIR, Site

pytestmark = pytest.mark.slow

PAGELENS = str(Path(sys.executable).parent / "pagelens")
RUN_TIMEOUT = 180.0  # a --wait covers a whole scan on a busy box
CREATED = "2026-12-03T10:19:02.123456Z"
WORKER_START_TIMEOUT = 90.0  # s, in all: the worker loads the KeyBERT model before it says it is ready


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


async def pagelens(*args: str, env: dict[str, str] | None = None, stdin: bytes | None = None) -> Run:
    process = await asyncio.create_subprocess_exec(
        PAGELENS,
        *args,
        env=process_env(**{"COLUMNS": "200", **(env or {})}),
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(stdin), RUN_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return Run(process.returncode, out.decode(), err.decode())


@pytest.fixture(scope="module")
async def live(
    tmp_path_factory: pytest.TempPathFactory, migrated_database: Any, redis_url: str, site: Site
) -> AsyncIterator[Live]:
    async with live_stack(tmp_path_factory.mktemp("cli-logs"), migrated_database, redis_url, site) as stack:
        yield stack


async def test_scan_wait_shows_progress_then_the_report(live: Live, site: Site) -> None:
    run = await pagelens("scan", site.url("/pages/article.html"), "--wait", "--api", live.api_url)
    assert run.code == 0, run.err
    # Not a terminal: one line per change on stderr, in order, ending at FULL_READY.
    lines = [line.split() for line in run.err.splitlines() if line.strip()]
    statuses = [line[0] for line in lines]
    assert statuses[-1] == "FULL_READY" and lines[-1][-1] == "100%", run.err
    progress = [int(line[-1].rstrip("%")) for line in lines]
    assert progress == sorted(progress) and len(lines) >= 2, run.err
    # The readable report on stdout.
    assert "How to Compost at Home" in run.out
    for heading in ("Page", "Keyphrases", "Performance", "Insights"):
        assert heading in run.out, run.out
    assert "█" in run.out and "time to first byte" in run.out
    # The audit: a score per category, then what to fix.
    assert "Audit  score" in run.out and "Structured data" in run.out, run.out
    assert "FAIL  Links are crawlable" in run.out and '"Copy link" → javascript:void(0)' in run.out, run.out
    assert "fix: Give every link a real href" in run.out


async def test_json_output_and_status(live: Live, site: Site) -> None:
    env = {"PAGELENS_API_URL": live.api_url}  # the variable instead of --api
    run = await pagelens("scan", site.url("/pages/product.html"), "--json", "--top-n", "5", env=env)
    assert run.code == 0, run.err
    accepted = run.json()
    assert accepted["status"] == "QUEUED" and set(accepted) == {"scanId", "status", "statusUrl"}

    run = await pagelens("status", accepted["scanId"], "--wait", "--json", env=env)
    assert run.code == 0, run.err
    report = run.json()
    assert report["scanId"] == accepted["scanId"] and report["status"] == "FULL_READY"
    assert len(report["keyphrases"]) == 5 and report["performance"]["htmlBytes"] > 0

    run = await pagelens("status", accepted["scanId"], "--json", env=env)
    assert run.code == 0 and run.json()["status"] == "FULL_READY", run.err
    run = await pagelens("status", accepted["scanId"], env=env)
    assert run.code == 0 and "FULL_READY" in run.out and accepted["scanId"] in run.out

    run = await pagelens("list", "--json", "--limit", "50", env=env)
    assert run.code == 0, run.err
    assert accepted["scanId"] in [item["scanId"] for item in run.json()["items"]]
    run = await pagelens("list", "--status", "full_ready", env=env)
    assert run.code == 0 and accepted["scanId"] in run.out, run.out
    # A standard terminal: the ids are whole (they are what `status` and `retry` take).
    run = await pagelens("list", "--limit", "50", env={**env, "COLUMNS": "80"})
    assert run.code == 0, run.err
    assert accepted["scanId"] in run.out.split() and max(map(len, run.out.splitlines())) <= 80, run.out


def listed(status: str, progress: int, url: str | None) -> ScanStatus:
    """A scan as `pagelens list` receives it, with the fields the listing does not show."""
    return ScanStatus.model_validate(
        {
            "scanId": str(uuid.uuid4()),
            "status": status,
            "progress": progress,
            "url": url,
            "createdAt": CREATED,
            "stage": None,
            "error": None,
            "traceId": None,
            "attempts": 1,
            "updatedAt": CREATED,
            "timings": {},
        }
    )


def test_list_keeps_whole_ids_and_shortens_urls_at_80_columns() -> None:
    items = [
        listed("TEASER_READY", 70, "https://example.com/" + "long/" * 30 + "?q=" + "x" * 100),
        listed("FULL_READY", 100, None),
        listed("FAILED", 5, "http://example.org/"),
    ]
    out = Console(width=80, record=True, force_terminal=False)
    render_list(out, items)
    lines = out.export_text().splitlines()
    assert max(map(len, lines)) <= 80, lines
    assert len(lines) == 1 + len(items), "one line per scan"
    for item, line in zip(items, lines[1:], strict=True):
        assert line.split()[:2] == [str(item.scan_id), item.status.value], line
    # Cut in the middle: the host and the end of the URL both stay.
    assert " exam" in lines[1] and "…" in lines[1] and lines[1].rstrip().endswith("x" * 8), lines[1]
    assert "(text)" in lines[2] and "example.org/" in lines[3]


def test_list_at_80_columns_tells_apart_long_urls_of_one_site() -> None:
    base = "https://docs.example.com/" + "section/" * 12
    items = [listed("QUEUED", 0, base + page) for page in ("install.html", "upgrade.html")]
    out = Console(width=80, record=True, force_terminal=False)
    render_list(out, items)
    lines = out.export_text().splitlines()
    assert max(map(len, lines)) <= 80, lines
    urls = [line.split()[-1] for line in lines[1:]]
    assert urls[0] != urls[1], urls
    assert all(url.startswith("docs") and "…" in url for url in urls), urls
    assert urls[0].endswith("ll.html") and urls[1].endswith("de.html"), urls


async def test_a_text_from_standard_input(live: Live) -> None:
    text = (PAGES_DIR / "article.html").read_bytes()[:5000]
    run = await pagelens(
        "scan", "--text", "-", "--title", "Notes", "--wait", "--json", "--api", live.api_url, stdin=text
    )
    assert run.code == 0, run.err
    report = run.json()
    assert report["teaser"]["title"] == "Notes" and report["performance"] is None


async def test_a_failed_scan_exits_1_and_can_be_retried(live: Live, site: Site) -> None:
    run = await pagelens("scan", site.url("/status/404"), "--wait", "--api", live.api_url)
    assert run.code == 1, (run.out, run.err)
    assert "FAILED" in run.out and "http_error" in run.out and "404" in run.out
    scan_id = next(w for w in run.out.split() if len(w) == 36 and w.count("-") == 4)

    run = await pagelens("retry", scan_id, "--json", "--api", live.api_url)
    assert run.code == 0, run.err
    assert run.json()["status"] == "QUEUED"
    run = await pagelens("status", scan_id, "--wait", "--json", "--api", live.api_url)
    assert run.code == 1 and run.json()["status"] == "FAILED", run.err


async def test_refusals_are_usage_errors(live: Live) -> None:
    cases = {
        "invalid URL": ("scan", "ftp://example.com/", "--api", live.api_url),
        "unknown scan": ("status", "00000000-0000-0000-0000-000000000000", "--api", live.api_url),
        "retry of a scan that is not FAILED": ("retry", "not-a-scan", "--api", live.api_url),
        "no URL and no text": ("scan", "--api", live.api_url),
        "bad arguments": ("scan", "--top-n", "many"),
        "no such command": ("frobnicate",),
    }
    for case, args in cases.items():
        run = await pagelens(*args)
        assert run.code == 2, (case, run.code, run.out, run.err)
        assert run.err.strip(), case
    run = await pagelens("scan", "ftp://example.com/", "--api", live.api_url)
    assert "url" in run.err.lower(), run.err


async def test_an_unreachable_or_locked_api_exits_3(settings: Settings) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    run = await pagelens("list", "--api", nowhere)
    assert run.code == 3
    assert f"cannot reach the API at {nowhere}" in run.err and "PAGELENS_API_URL" in run.err
    run = await pagelens("status", "x", env={"PAGELENS_API_URL": nowhere})
    assert run.code == 3 and nowhere in run.err

    # An API that requires a key (served in this test's loop while the command runs).
    async with serve_api(settings.with_(api_keys=("s3cret",))) as base:
        refused = await pagelens("list", "--api", base)
        allowed = await pagelens("list", "--json", "--api", base, env={"PAGELENS_API_KEY": "s3cret"})
        flag = await pagelens("list", "--json", "--api", base, "--api-key", "s3cret")
    assert refused.code == 3 and "API key" in refused.err, refused.err
    assert allowed.code == 0 and "items" in allowed.json(), allowed.err
    assert flag.code == 0, flag.err


async def test_wait_outlives_any_number_of_stream_rotations(settings: Settings) -> None:
    """The API ends every event stream after sse_max_seconds; a --wait resumes each time, for as
    long as the scan takes, and only failures in a row count against its reconnect limit."""

    def streams_served() -> float:
        labels = {"method": "GET", "route": "/api/v1/scan-jobs/{scanId}/events", "status": "2xx"}
        value = metrics.http_requests_total.get(labels) if labels in metrics.http_requests_total.values else 0
        assert isinstance(value, int | float)
        return float(value)

    async with serve_api(settings.with_(sse_max_seconds=0.1)) as base, httpx.AsyncClient(base_url=base) as http:
        created = await http.post("/api/v1/documents", json={"text": "words " * 50})
        scan_id = created.json()["scanId"]  # no worker takes this queue: the scan stays QUEUED
        before = streams_served()
        waiting = asyncio.create_task(pagelens("status", scan_id, "--wait", "--api", base))
        for _ in range(600):  # bounded: until the CLI has resumed more often than STREAM_RECONNECTS
            if streams_served() - before > STREAM_RECONNECTS + 5 or waiting.done():
                break
            await asyncio.sleep(0.05)
        assert (await http.delete(f"/api/v1/scan-jobs/{scan_id}")).status_code == 202
        run = await waiting
    streams = streams_served() - before
    assert streams > STREAM_RECONNECTS + 5, streams
    assert run.code == 1 and "CANCELLED" in run.err, (run.code, run.err)


async def test_migrate_and_worker(live: Live, server_dsn: str, empty_database: Any) -> None:
    fresh: str = await empty_database(server_dsn)
    run = await pagelens("migrate", env={"DATABASE_URL": fresh})
    expected = len(migrate.load(Settings().migrations_dir))
    assert run.code == 0 and f"applied {expected} migration(s)" in run.out, (run.out, run.err)
    assert "0004_scan_events.sql" in run.out
    run = await pagelens("migrate", env={"DATABASE_URL": fresh})
    assert run.code == 0 and "up to date" in run.out

    # `pagelens worker` is the worker itself (exec): it gets ready, then drains and exits 0 on SIGTERM.
    env = {**{k: v for k, v in live.env.items() if k.startswith(("DATABASE_", "REDIS_"))}}
    env.update(PAGELENS_QUEUE=f"{live.queue}:cli", PAGELENS_WORKER_METRICS_PORT=str(free_port()))
    process = await asyncio.create_subprocess_exec(
        PAGELENS, "worker", env=process_env(**env), cwd=ROOT, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stderr is not None
    try:
        ready = False
        with contextlib.suppress(TimeoutError):  # then `ready` is still False: the assertion below says so
            async with asyncio.timeout(WORKER_START_TIMEOUT):
                while line := await process.stderr.readline():  # b"" once its stderr closes
                    if b'"worker ready"' in line:
                        ready = True
                        break
        assert ready, f"pagelens worker did not get ready within {WORKER_START_TIMEOUT:g} s"
        process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(process.wait(), 60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert code == 0
