"""Optional lab scores from Google PageSpeed Insights (v5 runPagespeed), cached in Redis.

PSI is an extra, so it never fails a scan: `fetch_psi` never raises for PSI or Redis trouble
(bar cancellation; an unknown strategy is a caller bug and raises ValueError) and reports what
happened in `PsiResult.outcome` for metrics (`psi_scores` is the same call returning only the scores):

- "ok":      fetched from PSI now (and cached);
- "cached":  served from Redis, no request made;
- "skipped": no PSI_API_KEY, no request made;
- "error":   PSI failed (transport, timeout, non-200, malformed document); `scores` is None.

The API key travels in the `X-Goog-Api-Key` header, which Google APIs accept in place of the `key`
query parameter (https://cloud.google.com/apis/docs/system-parameters). A key in the query string
would end up in every logged URL, httpx's own INFO request log included.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
from dataclasses import dataclass
from typing import Any, Final, Literal

import httpx
from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.core.report import FieldData, FieldMetric, Psi
from app.core.settings import Settings
from worker.cache import get_json, set_json

logger = logging.getLogger("pagelens.psi")

Outcome = Literal["ok", "cached", "skipped", "error"]
STRATEGIES: Final = ("mobile", "desktop")
CACHE: Final = "psi"

# Our field name -> Lighthouse audit id; each audit has a `numericValue`.
AUDITS: Final = {
    "fcpMs": "first-contentful-paint",
    "lcpMs": "largest-contentful-paint",
    "tbtMs": "total-blocking-time",
    "cls": "cumulative-layout-shift",
    "speedIndexMs": "speed-index",
    "ttiMs": "interactive",
}
# CrUX field metric -> our name. PSI reports CLS percentiles multiplied by 100.
FIELD_METRICS: Final = {
    "LARGEST_CONTENTFUL_PAINT_MS": "lcpMs",
    "INTERACTION_TO_NEXT_PAINT": "inpMs",
    "CUMULATIVE_LAYOUT_SHIFT_SCORE": "cls",
    "FIRST_CONTENTFUL_PAINT_MS": "fcpMs",
    "EXPERIMENTAL_TIME_TO_FIRST_BYTE": "ttfbMs",
    "FIRST_INPUT_DELAY_MS": "fidMs",
}
_GOOGLE_STATUS = re.compile(r"^[A-Z_]{1,40}$")


@dataclass(frozen=True)
class PsiResult:
    scores: Psi | None
    outcome: Outcome
    detail: str | None = None  # short reason for "error"; safe to log, never holds the key

    @property
    def cache_hit(self) -> bool:
        return self.outcome == "cached"


class _Failure(Exception):
    pass


async def psi_scores(
    client: httpx.AsyncClient, redis: Redis, settings: Settings, url: str, *, strategy: str = "mobile"
) -> Psi | None:
    """The scores, or None when PSI is not configured or failed. See `fetch_psi` for the outcome."""
    return (await fetch_psi(client, redis, settings, url, strategy=strategy)).scores


async def fetch_psi(
    client: httpx.AsyncClient, redis: Redis, settings: Settings, url: str, *, strategy: str = "mobile"
) -> PsiResult:
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    key = settings.psi_api_key
    if not key:
        return PsiResult(None, "skipped")
    cached = await _cache_get(redis, url, strategy)
    if cached is not None:
        return PsiResult(cached, "cached")
    try:
        scores = parse_document(await _request(client, settings, key, url, strategy), strategy)
    except _Failure as exc:
        logger.warning("PageSpeed Insights unavailable for %s (%s): %s", url, strategy, exc)
        return PsiResult(None, "error", detail=str(exc))
    except Exception as exc:
        # Optional feature: an unexpected bug here must cost the scores, not the scan. The key is
        # only ever in a request header, which no exception text includes.
        logger.warning("PageSpeed Insights failed unexpectedly for %s (%s)", url, strategy, exc_info=True)
        return PsiResult(None, "error", detail=type(exc).__name__)
    await _cache_set(redis, settings.psi_cache_ttl, url, strategy, scores)
    return PsiResult(scores, "ok")


async def _request(client: httpx.AsyncClient, settings: Settings, key: str, url: str, strategy: str) -> Any:
    params = {"url": url, "strategy": strategy, "category": "performance"}
    try:
        # httpx's timeout bounds each phase; asyncio's bounds the whole exchange. PSI runs a full
        # Lighthouse audit per call, so expect several seconds even when healthy.
        async with asyncio.timeout(settings.external_timeout):
            response = await client.get(
                settings.psi_base_url,
                params=params,
                headers={"X-Goog-Api-Key": key},
                timeout=settings.external_timeout,
                follow_redirects=False,
            )
    except (httpx.TimeoutException, TimeoutError):
        raise _Failure("timeout") from None
    except httpx.HTTPError as exc:
        raise _Failure(type(exc).__name__) from None
    if response.status_code != 200:
        raise _Failure(f"HTTP {response.status_code}{_google_status(response)}")
    try:
        return response.json()
    except ValueError:
        raise _Failure("response is not JSON") from None


def _google_status(response: httpx.Response) -> str:
    """Google's error status token (e.g. RESOURCE_EXHAUSTED) when present; never its free text."""
    try:
        status = response.json()["error"]["status"]
    except (ValueError, LookupError, TypeError):
        return ""
    return f" {status}" if isinstance(status, str) and _GOOGLE_STATUS.match(status) else ""


def parse_document(document: Any, strategy: str) -> Psi:
    """Map a PSI v5 response to our camelCase scores; raises _Failure without a performance score."""
    lighthouse = _dict(_dict(document).get("lighthouseResult"))
    score = _number(_dict(_dict(lighthouse.get("categories")).get("performance")).get("score"))
    if score is None:
        # A Lighthouse runtime error (e.g. the page did not load) comes back as a null score.
        raise _Failure("no performance score in the response")
    audits = _dict(lighthouse.get("audits"))
    lab: dict[str, float | None] = {}
    for name, audit_id in AUDITS.items():
        value = _number(_dict(audits.get(audit_id)).get("numericValue"))
        lab[name] = None if value is None else round(value, 4 if name == "cls" else 1)
    return Psi.model_validate(
        {
            **lab,
            "strategy": strategy,
            "performanceScore": max(0, min(100, round(score * 100))),
            "fieldData": _field_data(_dict(document).get("loadingExperience")),
            "fetchedAt": dt.datetime.now(dt.UTC).isoformat(),
        }
    )


def _field_data(experience: Any) -> FieldData | None:
    """Real-user (CrUX) p75 values; None when Google has no field data for the page or origin."""
    experience = _dict(experience)
    raw = _dict(experience.get("metrics"))
    metrics: dict[str, FieldMetric] = {}
    for crux_name, name in FIELD_METRICS.items():
        metric = _dict(raw.get(crux_name))
        p75 = _number(metric.get("percentile"))
        if p75 is None:
            continue
        category = metric.get("category")
        metrics[name] = FieldMetric(
            p75=p75 / 100 if name == "cls" else p75, category=category if isinstance(category, str) else None
        )
    if not metrics:
        return None
    overall = experience.get("overall_category")
    return FieldData(
        overall_category=overall if isinstance(overall, str) else None,
        origin_fallback=experience.get("origin_fallback") is True,
        metrics=metrics,
    )


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


async def _cache_get(redis: Redis, url: str, strategy: str) -> Psi | None:
    # Redis trouble (or a value we cannot read) is a cache miss: PSI still answers without it.
    try:
        value = await get_json(redis, CACHE, url, strategy)
        return Psi.model_validate(value) if value is not None else None
    except (RedisError, OSError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
        logger.warning("PSI cache read failed, treating as a miss: %s", type(exc).__name__)
        return None


async def _cache_set(redis: Redis, ttl: int, url: str, strategy: str, scores: Psi) -> None:
    if ttl <= 0:
        return  # caching disabled (Redis refuses a zero expiry)
    try:
        await set_json(redis, CACHE, scores.to_json(), ttl, url, strategy)
    except (RedisError, OSError, TypeError, ValueError) as exc:
        logger.warning("PSI cache write failed: %s", type(exc).__name__)
