"""What the `pagelens` command prints: live progress while a scan runs, then a readable report.

Progress goes to stderr (a rich progress bar on a terminal, one plain line per change elsewhere,
so CI logs stay readable) and results to stdout, so `--json` output can be piped as it is. What a
page or the server says is printed as rich `Text`, never parsed as markup, and arrives here with
its control characters already replaced (app/cli/client.py `printable`).
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

from app.core.page_audit import AuditCategory, AuditReport, AuditResult
from app.core.report import Report, ScanStatus

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

    def update(self, status: ScanStatus) -> None:
        stage = status.stage.value if status.stage else None
        label = status.status.value + (f" · {stage}" if stage else "")
        if self.progress is not None and self.task is not None:
            self.progress.update(self.task, completed=status.progress, description=label)
        else:
            self.err.print(f"{status.status.value:<12} {stage or '-':<9} {status.progress:>3}%", markup=False)


def _facts(rows: list[tuple[str, Any]]) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="dim")
    table.add_column()
    for label, value in rows:
        if value is not None:
            table.add_row(label, Text(str(value)))  # Text: a page's words are never read as markup
    return table


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def render_status(out: Console, status: ScanStatus) -> None:
    rows = [
        ("scan", status.scan_id),
        ("url", status.url or "(text document)"),
        ("stage", status.stage.value if status.stage else None),
        ("progress", f"{status.progress}%"),
        ("attempts", status.attempts),
        ("trace", status.trace_id),
        ("created", _iso(status.created_at)),
    ]
    out.print(Group(Text.assemble(("status  ", "dim"), status_text(status.status)), _facts(rows)))
    if error := status.error:
        out.print(Panel(Text(error.message), title=f"error: {error.type.value}", border_style="red", expand=False))


def render_report(out: Console, report: Report, status: ScanStatus) -> None:
    teaser = report.teaser
    out.print(
        Panel(Text(teaser.title or status.url or "Text document", style="bold"), expand=False, border_style="green")
    )
    links, images = teaser.links, teaser.images
    page_rows = [
        ("url", status.url),
        ("scan", status.scan_id),
        ("trace", status.trace_id),
        ("description", teaser.description),
        ("words", teaser.word_count),
        ("language", teaser.language),
        ("links in/out", f"{links.internal} / {links.external}" if status.url else None),
        ("images w/o alt", f"{images.without_alt} / {images.total}" if status.url else None),
    ]
    out.print(Text("Page", style="bold underline"))
    out.print(_facts(page_rows))

    phrases = report.keyphrases
    out.print(Text("\nKeyphrases", style="bold underline"))
    table = Table(show_header=False, box=None, padding=(0, 2))
    top = max((p.score for p in phrases), default=1.0) or 1.0
    for phrase in phrases:
        bar = "█" * max(1, round(phrase.score / top * 20))
        table.add_row(Text(phrase.phrase), Text(bar, style="magenta"), f"{phrase.score:.2f}")
    out.print(table if phrases else Text("(too little text)", style="dim"))

    if perf := report.performance:
        out.print(Text("\nPerformance", style="bold underline"))
        out.print(
            _facts(
                [
                    ("time to first byte", f"{perf.ttfb_ms} ms"),
                    ("total fetch", f"{perf.total_ms} ms"),
                    ("HTML", f"{perf.html_bytes} bytes ({perf.transfer_bytes} transferred)"),
                    ("compression", perf.compression or "none"),
                    ("scripts / styles", f"{perf.scripts} / {perf.stylesheets}"),
                    ("render-blocking", perf.render_blocking),
                    ("redirects", perf.redirects),
                    ("PageSpeed", perf.psi.to_json() if perf.psi else None),
                ]
            )
        )

    out.print(Text("\nInsights", style="bold underline"))
    if not report.insights:
        out.print(Text("nothing to improve that the checks could find", style="dim"))
    for severity in SEVERITY_STYLES:
        for insight in (i for i in report.insights if i.severity == severity):
            out.print(
                Text.assemble(
                    (f"{severity.upper():<7}", SEVERITY_STYLES[severity]),
                    (f"{insight.category:<14}", "dim"),
                    insight.message,
                )
            )

    if report.audit is not None:
        render_audit(out, report.audit)


RESULT_STYLES = {
    AuditResult.FAIL: ("FAIL", "bold red"),
    AuditResult.WARNING: ("WARN", "yellow"),
    AuditResult.PASS: ("PASS", "green"),
}
CATEGORY_NAMES = {
    AuditCategory.INDEXABILITY: "Indexability",
    AuditCategory.STRUCTURED_DATA: "Structured data",
    AuditCategory.SHARING: "Sharing",
    AuditCategory.CONTENT: "Content",
    AuditCategory.PERFORMANCE: "Performance",
}
EVIDENCE_SHOWN = 3


def _score(value: int | None) -> Text:
    if value is None:
        return Text("-", style="dim")
    style = "green" if value >= 90 else "yellow" if value >= 50 else "red"
    return Text(f"{value:>3}", style=f"bold {style}")


def render_audit(out: Console, audit: AuditReport) -> None:
    """Scores per category, then each category's failing and warning audits with evidence and a fix."""
    out.print(Text.assemble(("\nAudit", "bold underline"), "  score ", _score(audit.score), "/100"))
    table = Table(box=None, padding=(0, 2), header_style="dim")
    for column in ("category", "score", "fail", "warn", "pass"):
        table.add_column(column)
    for summary in audit.categories:
        table.add_row(
            CATEGORY_NAMES[summary.category],
            _score(summary.score),
            str(summary.failed),
            str(summary.warnings),
            str(summary.passed),
        )
    out.print(table)
    for category, name in CATEGORY_NAMES.items():
        mine = [a for a in audit.audits if a.category is category]
        if not mine:
            continue
        open_items = [a for a in mine if a.result in (AuditResult.FAIL, AuditResult.WARNING)]  # failing first already
        passed = sum(1 for a in mine if a.result is AuditResult.PASS)
        out.print(Text(f"\n{name}", style="bold"))
        for item in open_items:
            label, style = RESULT_STYLES[item.result]
            out.print(Text.assemble((f"{label:<6}", style), item.title))
            for line in item.evidence[:EVIDENCE_SHOWN]:
                out.print(Text(f"      {line}", style="dim"))
            if item.fix:
                out.print(Text.assemble(("      fix: ", "cyan"), item.fix))
        if open_items or passed:
            out.print(Text(f"      {passed} passed", style="green" if passed else "dim"))
        else:
            out.print(Text("      nothing here applies to this page", style="dim"))


def render_list(out: Console, items: list[ScanStatus]) -> None:
    """One scan per line. The id is always printed whole (it is what the other commands take); on a
    narrow terminal the URL is shortened in the middle, so the host and the end of the path, which
    tell scans of one site apart, both stay."""
    if not items:
        out.print(Text("no scans", style="dim"))
        return
    rows = [
        (str(item.scan_id), item.status.value, str(item.progress), _created(item.created_at), _short_url(item.url))
        for item in items
    ]
    headers = ("scan", "status", "%", "created")
    # Each fixed column is as wide as its widest cell, plus the one-space gap after it.
    fixed = sum(max(len(header), *(len(row[i]) for row in rows)) + 1 for i, header in enumerate(headers))
    room = max(out.width - fixed, 12)
    table = Table(box=None, padding=(0, 1, 0, 0), pad_edge=False, header_style="bold")
    table.add_column("scan", no_wrap=True, min_width=36)
    table.add_column("status", no_wrap=True)
    table.add_column("%", no_wrap=True, justify="right")
    table.add_column("created", no_wrap=True)
    table.add_column("url", no_wrap=True, overflow="ellipsis")
    for scan_id, status, progress, created, url in rows:
        table.add_row(scan_id, status_text(status), progress, created, Text(_middle(url, room)))
    out.print(table)


def _created(value: datetime) -> str:
    """Local time, to the minute: month-day hour:minute (the full timestamp is in --json)."""
    return value.astimezone().strftime("%m-%d %H:%M")


def _short_url(url: str | None) -> str:
    if not url:
        return "(text)"
    return url.removeprefix("https://").removeprefix("http://")


def _middle(text: str, room: int) -> str:
    """`text` in at most `room` characters, cut in the middle: the start of the host (up to a third
    of the room) and as much of the end, where pages of one site differ, as fits."""
    if len(text) <= room:
        return text
    head = min(len(text.split("/", 1)[0]) + 1, room // 3)
    tail = room - head - 1
    return f"{text[:head]}…{text[-tail:]}"
