"""An origin's /robots.txt and /llms.txt, fetched once per origin and cached in Redis.

Both go through the page fetcher's SSRF checks with their own small size and time caps, each as
its own CLIENT span under the scan and timed in pagelens_external_call_duration_seconds
(service "robots" and "llms_txt"); the cache lookup counts in pagelens_cache_requests_total
(cache "robots").
"""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from redis.asyncio import Redis

from app.core.models import ErrorType, ScanError
from app.core.settings import Settings
from observability import metrics
from worker import cache
from worker.audit.common import SiteFiles
from worker.fetch import FetchedFile, fetch_file

tracer = trace.get_tracer("pagelens.worker")

# Google reads the first 500 KiB of a robots.txt and ignores the rest; so does this.
ROBOTS_MAX_BYTES = 500 * 1024
# Whether /llms.txt exists is all the audit needs.
LLMS_MAX_BYTES = 16 * 1024
FILE_SECONDS = 5.0
TTL_SECONDS = 3600
# An unreachable robots.txt is looked at again sooner: it is often a passing outage.
ERROR_TTL_SECONDS = 300
CACHE = "robots"


def origin_of(url: str) -> str | None:
    try:
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not host:
        return None
    default = 443 if parts.scheme == "https" else 80
    netloc = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{netloc}" + (f":{port}" if port and port != default else "")


async def site_files(redis: Redis, settings: Settings, url: str) -> SiteFiles | None:
    """robots.txt and llms.txt for the origin of `url`, from the cache when fresh."""
    origin = origin_of(url)
    if origin is None:
        return None
    # Scans of one origin share one cache read and, on a miss, one fetch (per worker process; the
    # cache shares it across workers). The read is shared too: a scan whose own read missed just
    # before another scan's fetch was cached would fetch again. Shielded: a cancelled scan does not
    # cancel the others' lookup.
    lookup = _in_flight.get(origin)
    if lookup is None:
        lookup = _in_flight[origin] = asyncio.ensure_future(_cached_or_fetched(redis, settings, origin))
        lookup.add_done_callback(lambda _: _in_flight.pop(origin, None))
    site, hit = await asyncio.shield(lookup)
    metrics.cache_requests_total.inc({"cache": CACHE, "result": "hit" if hit else "miss"})
    return site


_in_flight: dict[str, asyncio.Future[tuple[SiteFiles, bool]]] = {}


async def _cached_or_fetched(redis: Redis, settings: Settings, origin: str) -> tuple[SiteFiles, bool]:
    """(the origin's files, whether they came from the cache)."""
    cached = await cache.get_json(redis, CACHE, origin)
    if isinstance(cached, dict):
        site = SiteFiles(
            robots=str(cached.get("robots", "unreachable")),
            robots_status=cached.get("robotsStatus"),
            robots_text=str(cached.get("robotsText", "")),
            llms_txt=cached.get("llmsTxt"),
        )
        return site, True
    return await _fetch_and_cache(redis, settings, origin), False


async def _fetch_and_cache(redis: Redis, settings: Settings, origin: str) -> SiteFiles:
    robots, llms = await asyncio.gather(
        _get(origin, "/robots.txt", "robots", settings, ROBOTS_MAX_BYTES),
        _get(origin, "/llms.txt", "llms_txt", settings, LLMS_MAX_BYTES),
    )
    site = _site(robots, llms)
    value = {
        "robots": site.robots,
        "robotsStatus": site.robots_status,
        "robotsText": site.robots_text,
        "llmsTxt": site.llms_txt,
    }
    ttl = ERROR_TTL_SECONDS if site.robots == "unreachable" else TTL_SECONDS
    await cache.set_json(redis, CACHE, value, ttl, origin)
    return site


def _site(robots: FetchedFile | None, llms: FetchedFile | None) -> SiteFiles:
    if robots is None:
        state, status, text = "unreachable", None, ""
    elif 200 <= robots.status_code <= 299:
        state, status, text = "found", robots.status_code, robots.text
    elif 400 <= robots.status_code <= 499 and robots.status_code != 429:
        # No robots.txt: crawlers take it as "everything allowed".
        state, status, text = "missing", robots.status_code, ""
    else:
        state, status, text = "unreachable", robots.status_code, ""
    return SiteFiles(robots=state, robots_status=status, robots_text=text, llms_txt=_llms_exists(llms))


def _llms_exists(llms: FetchedFile | None) -> bool | None:
    if llms is None or llms.status_code >= 500 or llms.status_code == 429:
        return None
    # Many sites answer any path with an HTML page (a "soft 404"): that is not an llms.txt.
    return 200 <= llms.status_code <= 299 and llms.media_type != "text/html" and bool(llms.text.strip())


async def _get(origin: str, path: str, service: str, settings: Settings, max_bytes: int) -> FetchedFile | None:
    """One file, or None when there was no HTTP answer (blocked, unreachable, timed out)."""
    parts = urlsplit(origin)
    attributes = {
        "http.request.method": "GET",
        "server.address": parts.hostname or "",
        "url.scheme": parts.scheme,
        "url.path": path,
    }
    started = time.perf_counter()
    outcome = "error"
    with tracer.start_as_current_span("GET", kind=SpanKind.CLIENT, attributes=attributes) as span:
        try:
            found = await fetch_file(origin + path, settings, max_bytes=max_bytes, seconds=FILE_SECONDS)
            outcome = "success"
        except ScanError as exc:
            outcome = "timeout" if exc.type is ErrorType.TIMEOUT else "error"
            span.set_attribute("error.type", exc.type.value)
            span.set_status(Status(StatusCode.ERROR, exc.type.value))
            return None
        finally:
            metrics.external_call_duration_seconds.observe(
                {"service": service, "outcome": outcome}, time.perf_counter() - started
            )
        span.set_attribute("http.response.status_code", found.status_code)
        return found
