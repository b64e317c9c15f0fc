"""What the `pagelens` command prints: live progress while a scan runs, then a readable report.

Progress goes to stderr (a rich progress bar on a terminal, one plain line per change elsewhere,
so CI logs stay readable) and results to stdout, so `--json` output can be piped as it is.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from rich.console import Console, Group
from rich.panel import Panel
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from app.core.types import JSONDict

STATUS_STYLES = {
    "QUEUED": "dim",
    "RUNNING": "cyan",
    "TEASER_READY": "cyan",
    "FULL_READY": "green",
    "FAILED": "red",
    "CANCELLED": "yellow",
}
SEVERITY_STYLES = {"high": "bold red", "medium": "yellow", "low": "cyan", "info": "dim"}


def status_text(status: str) -> Text:
    return Text(status, style=STATUS_STYLES.get(status, ""))


class ProgressView:
    """Shows each status change of one scan on stderr."""

    def __init__(self, err: Console) -> None:
        self.err = err
        self.progress: Progress | None = None
        self.task: TaskID | None = None

    @contextlib.contextmanager
    def running(self, scan_id: str) -> Iterator[ProgressView]:
        if self.err.is_terminal:
            self.progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TextColumn("{task.percentage:>3.0f}%"),
                TimeElapsedColumn(),
                console=self.err,
                transient=True,
            )
            self.task = self.progress.add_task(f"scan {scan_id[:8]}", total=100)
            with self.progress:
                yield self
        else:
            yield self

    def update(self, status: JSONDict) -> None:
        label = status["status"] + (f" · {status['stage']}" if status.get("stage") else "")
        if self.progress is not None and self.task is not None:
            self.progress.update(self.task, completed=status.get("progress") or 0, description=label)
        else:
            self.err.print(f"{status['status']:<12} {status.get('stage') or '-':<9} {status.get('progress', 0):>3}%")


def _facts(rows: list[tuple[str, Any]]) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="dim")
    table.add_column()
    for label, value in rows:
        if value is not None:
            table.add_row(label, str(value))
    return table


def render_status(out: Console, status: JSONDict) -> None:
    rows = [
        ("scan", status["scanId"]),
        ("url", status.get("url") or "(text document)"),
        ("stage", status.get("stage")),
        ("progress", f"{status.get('progress', 0)}%"),
        ("attempts", status.get("attempts")),
        ("trace", status.get("traceId")),
        ("created", status.get("createdAt")),
    ]
    out.print(Group(Text.assemble(("status  ", "dim"), status_text(status["status"])), _facts(rows)))
    if status.get("error"):
        error = status["error"]
        out.print(Panel(error["message"], title=f"error: {error['type']}", border_style="red", expand=False))


def render_report(out: Console, report: JSONDict, status: JSONDict) -> None:
    teaser = report.get("teaser") or {}
    title = teaser.get("title") or status.get("url") or "Text document"
    out.print(Panel(Text(title, style="bold"), expand=False, border_style="green"))
    links, images = teaser.get("links") or {}, teaser.get("images") or {}
    page_rows = [
        ("url", status.get("url")),
        ("scan", status.get("scanId")),
        ("trace", status.get("traceId")),
        ("description", teaser.get("description")),
        ("words", teaser.get("wordCount")),
        ("language", teaser.get("language")),
        ("links in/out", f"{links.get('internal')} / {links.get('external')}" if status.get("url") else None),
        ("images w/o alt", f"{images.get('withoutAlt')} / {images.get('total')}" if status.get("url") else None),
    ]
    out.print(Text("Page", style="bold underline"))
    out.print(_facts(page_rows))

    phrases = report.get("keyphrases") or []
    out.print(Text("\nKeyphrases", style="bold underline"))
    table = Table(show_header=False, box=None, padding=(0, 2))
    top = max((p["score"] for p in phrases), default=1.0) or 1.0
    for phrase in phrases:
        bar = "█" * max(1, round(phrase["score"] / top * 20))
        table.add_row(phrase["phrase"], Text(bar, style="magenta"), f"{phrase['score']:.2f}")
    out.print(table if phrases else Text("(too little text)", style="dim"))

    perf = report.get("performance")
    if perf:
        out.print(Text("\nPerformance", style="bold underline"))
        out.print(
            _facts(
                [
                    ("time to first byte", f"{perf.get('ttfbMs')} ms"),
                    ("total fetch", f"{perf.get('totalMs')} ms"),
                    ("HTML", f"{perf.get('htmlBytes')} bytes ({perf.get('transferBytes')} transferred)"),
                    ("compression", perf.get("compression") or "none"),
                    ("scripts / styles", f"{perf.get('scripts')} / {perf.get('stylesheets')}"),
                    ("render-blocking", perf.get("renderBlocking")),
                    ("redirects", perf.get("redirects")),
                    ("PageSpeed", perf.get("psi")),
                ]
            )
        )

    insights = report.get("insights") or []
    out.print(Text("\nInsights", style="bold underline"))
    if not insights:
        out.print(Text("nothing to improve that the checks could find", style="dim"))
    for severity in SEVERITY_STYLES:
        for insight in (i for i in insights if i.get("severity") == severity):
            out.print(
                Text.assemble(
                    (f"{severity.upper():<7}", SEVERITY_STYLES[severity]),
                    (f"{insight.get('category', ''):<14}", "dim"),
                    str(insight.get("message", "")),
                )
            )


def render_list(out: Console, items: list[JSONDict]) -> None:
    """One scan per line. The id is always printed whole (it is what the other commands take); on a
    narrow terminal the URL is what gets shortened."""
    table = Table(box=None, padding=(0, 1, 0, 0), pad_edge=False, header_style="bold")
    table.add_column("scan", no_wrap=True, min_width=36)
    table.add_column("status", no_wrap=True)
    table.add_column("%", no_wrap=True, justify="right")
    table.add_column("created", no_wrap=True)
    table.add_column("url", overflow="ellipsis")
    for item in items:
        table.add_row(
            item["scanId"],
            status_text(item["status"]),
            str(item.get("progress", 0)),
            _created(item.get("createdAt")),
            _short_url(item.get("url")),
        )
    out.print(table if items else Text("no scans", style="dim"))


def _created(value: str | None) -> str:
    """Local time, to the minute: month-day hour:minute (the full timestamp is in --json)."""
    if not value:
        return ""
    try:
        return datetime.fromisoformat(value).astimezone().strftime("%m-%d %H:%M")
    except ValueError:
        return value


def _short_url(url: str | None) -> str:
    if not url:
        return "(text)"
    return url.removeprefix("https://").removeprefix("http://")
