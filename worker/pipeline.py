"""The scan job: claim the scan, run its stages, write results under the attempt's fence."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from arq import Retry
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from app.core import scans
from app.core.backing import UNAVAILABLE
from app.core.models import ErrorType, Kind, ScanError, Stage, retries_exhausted
from app.core.page_audit import AuditReport
from app.core.report import Findings, Insight, Keyphrase, Performance, ScanOptions, Teaser
from app.core.settings import Settings
from app.core.types import Record
from observability import metrics
from worker.audit.common import PageContext
from worker.audit.facts import page_facts
from worker.audit.run import run_audits
from worker.context import Resources
from worker.fetch import FetchedPage, fetch_page
from worker.hooks import OUTCOME
from worker.insights import rule_insights
from worker.keyphrases import cached_keyphrases
from worker.lab import lab_metrics
from worker.llm import run_llm
from worker.parse import build_teaser, count_words, document_teaser, parse_html
from worker.psi import fetch_psi
from worker.robots import site_files

logger = logging.getLogger("pagelens.worker")
tracer = trace.get_tracer("pagelens.worker")


class Superseded(Exception):
    """The scan was cancelled, or another attempt took it over: stop without writing anything."""


@dataclass
class Run:
    res: Resources
    scan: Record
    attempt: int
    timings: dict[str, float] = field(default_factory=dict)
    unwritten: dict[str, float] = field(default_factory=dict)  # go with the next write of the scan

    @property
    def scan_id(self) -> uuid.UUID:
        scan_id: uuid.UUID = self.scan["id"]
        return scan_id

    @property
    def tenant(self) -> str:
        """Whose scan it is: whose turn it waits for in the process pools, and its cache entries'."""
        tenant: str = self.scan["tenant"]
        return tenant

    @functools.cached_property
    def options(self) -> ScanOptions:
        return ScanOptions.model_validate(self.scan["options"] or {})

    @asynccontextmanager
    async def stage(self, stage: Stage) -> AsyncIterator[None]:
        # A stage's timing is written with the start of the next one (or with the final write):
        # every stage start and status change is still written, with one round trip fewer each.
        if not await scans.enter_stage(self.res.pool, self.scan_id, self.attempt, stage, self.unwritten):
            raise Superseded
        self.unwritten = {}
        name = stage.value.lower()
        start = time.perf_counter()
        with tracer.start_as_current_span(f"scan.{name}", attributes={"pagelens.scan_id": str(self.scan_id)}):
            yield
        seconds = time.perf_counter() - start
        self.timings[f"{name}Ms"] = self.unwritten[f"{name}Ms"] = seconds * 1000
        metrics.scan_stage_duration_seconds.observe({"stage": name}, seconds)


# The scan's own deadline is `job_timeout`: reaching it is a typed `timeout`, retried like any
# transient error. arq's timeout sits this margin above, as a backstop for the final writes; the
# lease lasts as long, so it has run out by the time arq hands the job of a killed worker to another
# (arq waits for its timeout + 10 s first).
TIMEOUT_MARGIN = 5.0
MAX_BACKOFF = 60.0


def hard_timeout(settings: Settings) -> float:
    return settings.job_timeout + TIMEOUT_MARGIN


def backoff(job_try: int, base: float) -> float:
    # Exponential with full jitter: retries of many scans failing together spread out.
    return min(MAX_BACKOFF, base * 2.0 ** (job_try - 1)) * (0.5 + random.random() / 2)


async def run_scan(ctx: dict[str, Any], scan_id: str, trace_context: dict[str, str] | None = None) -> str:
    """arq job. Returns a short outcome; raises arq.Retry for transient failures.

    PostgreSQL is the authority on tries: `claim` counts them and refuses one beyond the budget, so
    deliveries arq makes after a crash, a SIGTERM or a lost Redis key never add up to more."""
    res: Resources = ctx["resources"]
    settings = res.settings
    try:
        sid = uuid.UUID(scan_id)
    except (ValueError, TypeError):
        logger.error("job with an invalid scan id")
        return "invalid"
    run: Run | None = None
    try:
        row = await scans.claim(res.pool, sid, lease_seconds=hard_timeout(settings), max_tries=settings.max_tries)
        if row is None:
            return await _not_claimed(ctx, res, sid)
        run = Run(res, row, row["attempts"])
        return await _attempt(ctx, run)
    except UNAVAILABLE as exc:
        # PostgreSQL or Redis is down or restarting: the scan is not at fault. Hand the lease back if
        # possible and run the job again later (a lease we cannot release delays that until it ends).
        if run is not None:
            with contextlib.suppress(*UNAVAILABLE):
                await scans.release_for_retry(res.pool, run.scan_id, run.attempt, None)
        job_try: int = ctx.get("job_try", 1)
        logger.warning("backing service unavailable (%s); the job will run again", type(exc).__name__)
        raise Retry(defer=backoff(job_try, settings.retry_base_delay)) from None


async def _not_claimed(ctx: dict[str, Any], res: Resources, sid: uuid.UUID) -> str:
    reason, lease_left = await scans.unclaimable(res.pool, sid, res.settings.max_tries)
    if reason is scans.Unclaimable.GONE:
        ctx[OUTCOME] = "success"  # finished, cancelled or deleted: a duplicate delivery
        return "skipped"
    if reason is scans.Unclaimable.LEASED:
        # An earlier attempt died without releasing its lease (or another one still runs): come back
        # when the lease has run out rather than drop the job and wait for the sweeper.
        raise Retry(defer=lease_left + 1.0)
    await scans.give_up(res.pool, sid, res.settings.max_tries)
    return _failure(ctx, ErrorType.RETRIES_EXHAUSTED, "scan used every try")


async def _attempt(ctx: dict[str, Any], run: Run) -> str:
    res, row, settings = run.res, run.scan, run.res.settings
    sid = run.scan_id
    try_no = int(row["attempts"]) - int(row["retry_base"])  # this scan's try, counted since its last replay
    # arq's score is when the job became eligible to run (deferred retries included), in ms.
    eligible_ms: float = ctx.get("score") or time.time() * 1000
    queue_wait = max(0.0, time.time() * 1000 - eligible_ms) / 1000
    run.timings["queueWaitMs"] = queue_wait * 1000
    started = time.perf_counter()
    deadline = asyncio.timeout(settings.job_timeout)
    metrics.active_scans.inc({})
    try:
        async with deadline:
            report = await (_scan_url(run) if row["kind"] == Kind.URL else _scan_document(run))
        run.timings["totalMs"] = (time.perf_counter() - started) * 1000
        if not await scans.finish(res.pool, sid, run.attempt, report, run.timings):
            raise Superseded
        metrics.scan_end_to_end_seconds.observe({"kind": row["kind"]}, (time.time() - row["created_at"].timestamp()))
        ctx[OUTCOME] = "success"
        return "done"
    except Superseded:
        ctx[OUTCOME] = "cancelled"  # nearly always a DELETE; otherwise another attempt took over
        return "superseded"
    except ScanError as exc:
        return await _failed(ctx, run, exc, try_no)
    except TimeoutError:
        if not deadline.expired():
            raise  # a backing service's own timeout (a slow query): run_scan retries the job
        timeout = ScanError(
            ErrorType.TIMEOUT, f"the scan did not finish within {settings.job_timeout:g}s", retryable=True
        )
        return await _failed(ctx, run, timeout, try_no)
    except asyncio.CancelledError:
        # Aborted (the row is CANCELLED already), arq's backstop timeout, or the worker is shutting
        # down (arq runs the job again): give the lease back so a rerun can claim the scan at once.
        released = await asyncio.shield(scans.release_for_retry(res.pool, sid, run.attempt, None))
        ctx[OUTCOME] = "retry" if released else "cancelled"
        raise
    except UNAVAILABLE:
        raise
    except Exception:
        logger.exception("scan failed unexpectedly")
        return await _failed(ctx, run, ScanError(ErrorType.INTERNAL, "unexpected error while scanning"), try_no)
    finally:
        metrics.active_scans.dec({})


async def _failed(ctx: dict[str, Any], run: Run, exc: ScanError, try_no: int) -> str:
    settings = run.res.settings
    if exc.retryable and try_no < settings.max_tries:
        await scans.release_for_retry(run.res.pool, run.scan_id, run.attempt, exc)
        logger.info("transient failure, retrying", extra={"error_type": exc.type.value})
        raise Retry(defer=backoff(try_no, settings.retry_base_delay))
    if exc.retryable and settings.max_tries > 1:
        exc = retries_exhausted(try_no, exc)
    await scans.fail(run.res.pool, run.scan_id, run.attempt, exc)
    return _failure(ctx, exc.type, "scan failed")


def _failure(ctx: dict[str, Any], error_type: ErrorType, message: str) -> str:
    """Count and log a scan that ended FAILED (its row already written)."""
    ctx[OUTCOME] = "failure"
    metrics.scan_errors_total.inc({"error_type": error_type.value})
    logger.info(message, extra={"error_type": error_type.value})
    return "failed"


async def _scan_url(run: Run) -> Findings:
    res, url = run.res, run.scan["url"]
    audited = res.settings.audit  # PAGELENS_AUDIT off: no page facts, robots.txt, llms.txt or audits
    async with run.stage(Stage.CRAWL):
        page = await _fetch(url, res)
    async with run.stage(Stage.PARSE):
        # In child processes with a deadline (worker/parse_pool.py): some markup makes the parser
        # quadratic, and only a process can be stopped when the scan ends or takes too long. The
        # audit's own pass over the HTML (structured data, main content) runs beside the parse.
        deadline, share = res.settings.parse_timeout, run.tenant
        parse = asyncio.ensure_future(
            res.parser.run(parse_html, page.text, page.final_url, deadline=deadline, share=share)
        )
        read = asyncio.ensure_future(
            res.parser.run(page_facts, page.text, page.final_url, deadline=deadline, task="audit the page", share=share)
            if audited
            else _nothing()
        )
        try:
            parsed, facts = await asyncio.gather(parse, read)
        finally:
            for task in (parse, read):
                task.cancel()  # a failed sibling's child is killed rather than left to its deadline
        # The main content without navigation and bylines is what keyphrases and the word count read.
        main_text = (facts.main_text if facts is not None else "") or parsed.main_text
        teaser = build_teaser(parsed, page.final_url)
        teaser.word_count = count_words(main_text)
        if not await scans.save_teaser(res.pool, run.scan_id, run.attempt, teaser):
            raise Superseded
    async with run.stage(Stage.ANALYZE):
        # robots.txt and llms.txt (cached per origin) are fetched while PSI runs.
        site = asyncio.ensure_future(site_files(res.redis, res.settings, page.final_url) if audited else _nothing())
        try:
            performance = lab_metrics(page, parsed)
            if run.options.psi and res.settings.psi_api_key:
                with external_call("psi") as call:
                    strategy = run.options.strategy
                    psi = await fetch_psi(res.http, res.redis, res.settings, page.final_url, strategy=strategy)
                    call.outcome = "success" if psi.outcome in ("ok", "cached") else "error"
                metrics.cache_requests_total.inc({"cache": "psi", "result": "hit" if psi.cache_hit else "miss"})
                performance.psi = psi.scores
            origin_files = await site
        finally:
            site.cancel()  # only still running when the stage failed

    def audit(insights: list[Insight]) -> AuditReport:
        assert facts is not None  # only called when the audit ran
        context = PageContext(
            url=page.final_url,
            requested_url=page.url,
            status_code=page.status_code,
            redirects=page.redirects,
            headers=page.headers,
            site=origin_files,
            teaser=teaser.to_json(),
            performance=performance.to_json(),
            insights=[insight.to_json() for insight in insights],
        )
        return run_audits(facts, context)

    return await _generate(run, teaser, performance, main_text, Kind.URL, audit if audited else None)


async def _nothing() -> None:
    return None


async def _scan_document(run: Run) -> Findings:
    text: str = run.scan["document"]
    res = run.res
    teaser = await res.parser.run(
        document_teaser,
        text,
        run.scan["title"],
        deadline=res.settings.parse_timeout,
        task="read the document",
        share=run.tenant,
    )
    if not await scans.save_teaser(res.pool, run.scan_id, run.attempt, teaser):
        raise Superseded
    return await _generate(run, teaser, None, text, Kind.DOCUMENT)


async def _generate(
    run: Run,
    teaser: Teaser,
    performance: Performance | None,
    text: str,
    kind: Kind,
    audit: Callable[[list[Insight]], AuditReport] | None = None,
) -> Findings:
    res = run.res
    async with run.stage(Stage.GENERATE):
        started = time.perf_counter()
        phrases, hit = await cached_keyphrases(
            res.redis,
            res.keyphrases,
            text,
            tenant=run.tenant,
            top_n=run.options.top_n,
            ttl=res.settings.keyphrase_cache_ttl,
        )
        metrics.cache_requests_total.inc({"cache": "keyphrases", "result": "hit" if hit else "miss"})
        if not hit:
            metrics.external_call_duration_seconds.observe(
                {"service": "keybert", "outcome": "success"}, time.perf_counter() - started
            )
        insights = rule_insights(teaser, performance, phrases, kind=kind.value)
        # Pure and quick, but robots.txt can be 500 KiB of rules to match: off the loop too.
        audited = await asyncio.to_thread(audit, insights) if audit is not None else None
        if run.options.llm and res.settings.llm_base_url:
            with external_call("llm") as call:
                llm = await run_llm(res.http, res.settings, teaser=teaser, keyphrases=phrases, text=text)
                call.outcome = "success" if llm.outcome == "ok" else "error"
            insights += llm.insights
    keyphrases = [Keyphrase(phrase=p, score=s) for p, s in phrases]
    return Findings(performance=performance, keyphrases=keyphrases, insights=insights, audit=audited)


class _Call:
    outcome = "error"


@contextmanager
def external_call(service: str) -> Iterator[_Call]:
    """Time a call to something outside pagelens as pagelens_external_call_duration_seconds."""
    call, start = _Call(), time.perf_counter()
    try:
        yield call
    finally:
        metrics.external_call_duration_seconds.observe(
            {"service": service, "outcome": call.outcome}, time.perf_counter() - start
        )


async def _fetch(url: str, res: Resources) -> FetchedPage:
    # The fetch runs under an empty trace context so nothing can put trace headers on a request to
    # a user-supplied URL; this CLIENT span records it in the scan's trace instead.
    parts = urlsplit(url)
    attributes = {"http.request.method": "GET", "server.address": parts.hostname or "", "url.scheme": parts.scheme}
    with (
        tracer.start_as_current_span("GET", kind=SpanKind.CLIENT, attributes=attributes) as span,
        external_call("http_fetch") as call,
    ):
        try:
            page = await fetch_page(url, res.settings)
        except ScanError as exc:
            call.outcome = "timeout" if exc.type is ErrorType.TIMEOUT else "error"
            span.set_attribute("error.type", exc.type.value)
            span.set_status(Status(StatusCode.ERROR, exc.type.value))
            raise
        call.outcome = "success"
        span.set_attribute("http.response.status_code", page.status_code)
        span.set_attribute("pagelens.fetch.redirects", len(page.redirects))
        return page
