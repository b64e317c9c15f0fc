"""What the page audit costs a scan: submit → FULL_READY of ordinary pages with PAGELENS_AUDIT on
and off, side by side in one run.

Two stacks run at once, each an API and one worker as in bench/e2e.py, on one database and one
Redis with a queue each; they differ only in PAGELENS_AUDIT. The pages (~600 words, bench/corpus.py)
come from one site on loopback that also serves a small robots.txt and llms.txt, so the audited
worker fetches them once for the origin and then reads them from the Redis cache, as it would for a
site being scanned page after page. Both sides scan the same pages, one page at a time, alternating
(on, off, on, off ...; the other side first in every other repetition); each page's keyphrase cache
entries are deleted after each scan, so every scan extracts its keyphrases. Warm-up pages go first
on each side (and make the one robots.txt fetch). Latency is the scan's own record in PostgreSQL,
`finished_at - created_at`; each side's p50 and p95 are taken per repetition and the median over
the repetitions is reported, with the ratio on ÷ off of those medians.
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import asyncpg
import httpx
import redis.asyncio

from bench.common import (
    BenchContext,
    Benchmark,
    BenchResult,
    Table,
    environment,
    median,
    percentile,
    rotated,
    sweep_queue,
    verdict,
)
from bench.corpus import Page, corpus
from bench.e2e import WAIT_PER_PAGE, Stack, _submit, _until_done, scene
from worker import cache
from worker.audit.facts import page_facts
from worker.keyphrases import keyphrase_cache_key
from worker.parse import parse_html
from worker.robots import CACHE as ROBOTS_CACHE

NAME = "e2e_audit"
TITLE = "End to end: what the page audit adds to submit → FULL_READY"
SIDES = ("on", "off")
# The scan's own timings (keys of its `timings`) and their column headers.
STAGES = {
    "queueWaitMs": "queue wait ms",
    "crawlMs": "crawl ms",
    "parseMs": "parse ms",
    "analyzeMs": "analyze ms",
    "generateMs": "generate ms",
    "totalMs": "worker total ms",
}
TARGET = 1.15  # the audit may add at most 15% to an ordinary page's submit → FULL_READY
ROBOTS = b"User-agent: *\nDisallow: /cart\n\nUser-agent: GPTBot\nDisallow: /drafts/\n\nSitemap: /sitemap.xml\n"
LLMS = b"# Bench garden\n\n> Pages about gardening, generated for the benchmark.\n"


@dataclass(frozen=True)
class AuditConfig:
    pages: int = 10  # per repetition, each scanned once per side
    reps: int = 5
    warmup_pages: int = 3  # per side
    words: int = 600


@dataclass(frozen=True)
class Side:
    audit: bool
    latencies_s: tuple[tuple[float, ...], ...]  # per repetition
    stage_ms: dict[str, float]  # medians over every scan of the side
    failed: int
    with_audit: int  # FULL_READY reports that carry an audit

    @property
    def scans(self) -> int:
        return sum(len(rep) for rep in self.latencies_s)

    def p(self, q: float) -> float:
        """The median over the repetitions of each repetition's q-th percentile."""
        return median([percentile(rep, q) for rep in self.latencies_s])


@dataclass(frozen=True)
class AuditResult:
    config: AuditConfig
    on: Side
    off: Side
    file_hits: dict[str, int]  # requests for /robots.txt and /llms.txt the site answered
    seconds: float
    environment: str
    cache_entries: int  # keyphrase cache entries deleted after the scans

    def ratio(self, q: float) -> float:
        return self.on.p(q) / self.off.p(q)

    @property
    def rep_ratios(self) -> list[float]:
        return [
            percentile(on, 50) / percentile(off, 50)
            for on, off in zip(self.on.latencies_s, self.off.latencies_s, strict=True)
        ]

    @property
    def paired_ratio(self) -> float:
        """The median over the pages of one page's on ÷ off (scanned one right after the other)."""
        pairs = zip(self.on.latencies_s, self.off.latencies_s, strict=True)
        return median([a / b for on, off in pairs for a, b in zip(on, off, strict=True)])

    def bench_result(self) -> BenchResult:
        headers = ("audit", "scans", "p50 s", "p95 s", *STAGES.values())
        rows = tuple(
            (
                "on (default)" if side.audit else "off (PAGELENS_AUDIT=false)",
                str(side.scans),
                f"{side.p(50):.2f}",
                f"{side.p(95):.2f}",
                *(f"{side.stage_ms.get(k, 0):.0f}" for k in STAGES),
            )
            for side in (self.on, self.off)
        )
        ratios = ", ".join(f"{r:.2f}x" for r in self.rep_ratios)
        notes = (
            f"audit on ÷ off, submit → FULL_READY: p50 **{self.ratio(50):.2f}x**, p95 {self.ratio(95):.2f}x "
            f"(p50 per repetition: {ratios}; per page, median: {self.paired_ratio:.2f}x; p50 difference "
            f"{(self.on.p(50) - self.off.p(50)) * 1000:+.0f} ms); target <= {TARGET:.2f}x: "
            f"{verdict(self.ratio(50) <= TARGET)}",
            f"robots.txt requested {self.file_hits.get('/robots.txt', 0)} time(s) and llms.txt "
            f"{self.file_hits.get('/llms.txt', 0)} over {self.on.scans + self.config.warmup_pages} "
            f"audited scans of one origin (cached per origin); reports with an audit: on {self.on.with_audit}, "
            f"off {self.off.with_audit}",
            f"{self.config.reps} repetitions x {self.config.pages} ~{self.config.words}-word pages per side, one at "
            f"a time, alternating; figures are medians over the repetitions; stage columns are medians of the "
            f"scans' own timings; scans not FULL_READY: {self.on.failed + self.off.failed}; wall time "
            f"{self.seconds:.0f} s",
        )
        return BenchResult(NAME, TITLE, Table(headers, rows), notes, self.environment, self.seconds)


def _cache_keys(pages: dict[str, Page], base: str) -> dict[str, list[str]]:
    """Per page, the keyphrase cache keys a scan of it can make: the audit's main content (audit on)
    or the parser's (audit off, or when the audit found none)."""
    keys: dict[str, list[str]] = {}
    for key, page in pages.items():
        html, url = page.html(), f"{base}/p/{key}"
        texts = {parse_html(html, url).main_text, page_facts(html, url).main_text}
        keys[key] = [k for k in (keyphrase_cache_key(t) for t in texts if t) if k is not None]
    return keys


async def _compare(
    stacks: dict[str, Stack],
    dsn: str,
    redis_url: str,
    base: str,
    plan: list[list[str]],
    warmup: list[str],
    keys: dict[str, list[str]],
) -> tuple[dict[str, list[list[str]]], int]:
    """Scan the pages on both sides one at a time, alternating; returns each side's scan ids per
    repetition and how many keyphrase cache entries were deleted."""
    conn = await asyncpg.connect(dsn)
    client = redis.asyncio.Redis.from_url(redis_url)
    apis = {side: httpx.AsyncClient(base_url=stacks[side].api_url, timeout=30) for side in SIDES}
    ids: dict[str, list[list[str]]] = {side: [] for side in SIDES}
    deleted = 0

    async def scan(side: str, key: str) -> str:
        nonlocal deleted
        scan_id = await _submit(apis[side], f"{base}/p/{key}")
        await _until_done(conn, [scan_id], WAIT_PER_PAGE)
        # Every scan extracts its keyphrases: the other side's scan of the page must not find them.
        deleted += int(await client.unlink(*keys[key]))
        return scan_id

    try:
        for key in warmup:
            for side in SIDES:
                await scan(side, f"{side}-{key}")
        for rep, rep_keys in enumerate(plan):
            order = rotated(SIDES, rep)
            for side in SIDES:
                ids[side].append([])
            for key in rep_keys:
                for side in order:
                    ids[side][-1].append(await scan(side, key))
    finally:
        for api in apis.values():
            await api.aclose()
        await client.aclose()
        await conn.close()
    return ids, deleted


async def _side(dsn: str, audit: bool, ids: list[list[str]]) -> Side:
    conn = await asyncpg.connect(dsn)
    try:
        reps, stage_ms, failed, with_audit = [], [], 0, 0
        for rep_ids in ids:
            # In the order submitted: the n-th scan of each side is the same page.
            rows = await conn.fetch(
                "SELECT s.status, s.created_at, s.finished_at, s.timings, s.report FROM unnest($1::uuid[])"
                " WITH ORDINALITY AS i(id, n) JOIN scans s USING (id) ORDER BY i.n",
                rep_ids,
            )
            ready = [r for r in rows if r["status"] == "FULL_READY"]
            failed += len(rows) - len(ready)
            reps.append(tuple((r["finished_at"] - r["created_at"]).total_seconds() for r in ready))
            stage_ms += [json.loads(r["timings"]) for r in ready]  # a plain connection: jsonb comes as text
            with_audit += sum(1 for r in ready if (json.loads(r["report"]) or {}).get("audit") is not None)
    finally:
        await conn.close()
    stages = {k: median([t[k] for t in stage_ms if k in t]) for k in STAGES if any(k in t for t in stage_ms)}
    return Side(audit, tuple(reps), stages, failed, with_audit)


def run(config: AuditConfig, context: BenchContext) -> AuditResult:
    began = time.monotonic()
    token = secrets.token_hex(4)
    seeds = random.Random(token)
    shared = [f"{rep}-{i}" for rep in range(config.reps) for i in range(config.pages)]
    warm = [f"warm-{i}" for i in range(config.warmup_pages)]
    pages = dict(zip(shared, corpus(len(shared), seed=seeds.getrandbits(64), words=config.words), strict=True))
    # Warm-up pages are each side's own; the measured ones are the same page on both sides.
    for side in SIDES:
        pages.update(
            zip(
                [f"{side}-{k}" for k in warm],
                corpus(len(warm), seed=seeds.getrandbits(64), words=config.words),
                strict=True,
            )
        )
    plan = [shared[rep * config.pages : (rep + 1) * config.pages] for rep in range(config.reps)]
    hits: Counter[str] = Counter()
    queues = {side: f"pagelens-bench:{token}:e2e-audit-{side}" for side in SIDES}
    with scene(context.redis.url, token, "e2e-audit", pages, {"/robots.txt": ROBOTS, "/llms.txt": LLMS}, hits) as at:
        base = at.base
        keys = _cache_keys(pages, base)
        stacks: dict[str, Stack] = {}
        try:
            for side in SIDES:
                env = at.env(queues[side], PAGELENS_AUDIT="true" if side == "on" else "false")
                stacks[side] = Stack(env, 1, at.tmp, name=f"audit-{side}-")
            ids, deleted = asyncio.run(_compare(stacks, at.dsn, context.redis.url, base, plan, warm, keys))
            on, off = (asyncio.run(_side(at.dsn, side == "on", ids[side])) for side in SIDES)
        finally:
            for stack in stacks.values():
                stack.stop()
            for queue in queues.values():
                sweep_queue(context.redis.url, queue)
            _forget(context.redis.url, [cache.cache_key(ROBOTS_CACHE, base)], keys.values())
    env_line = environment(context.redis, extra=f"PostgreSQL ({at.postgres_source})", packages=("keybert", "torch"))
    return AuditResult(config, on, off, dict(hits), time.monotonic() - began, env_line, deleted)


def _forget(redis_url: str, robots: list[str], keyphrases: Iterable[list[str]]) -> None:
    """The run's robots cache entry, and any keyphrase entry left by a scan that did not finish."""
    import redis as redis_sync

    client = redis_sync.Redis.from_url(redis_url)
    try:
        client.unlink(*robots, *(k for keys in keyphrases for k in keys))
    finally:
        client.close()


def bench(context: BenchContext) -> BenchResult:
    return run(AuditConfig(), context).bench_result()


BENCHMARK = Benchmark(NAME, bench)
