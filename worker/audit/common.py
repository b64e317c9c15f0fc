"""What every audit family shares: the page's context and a way to write an audit down."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

from app.core.page_audit import Audit, AuditCategory, AuditResult, Severity

PASS, FAIL, WARNING, NA = AuditResult.PASS, AuditResult.FAIL, AuditResult.WARNING, AuditResult.NOT_APPLICABLE
HIGH, MEDIUM, LOW, INFO = Severity.HIGH, Severity.MEDIUM, Severity.LOW, Severity.INFO


@dataclass(frozen=True)
class SiteFiles:
    """What the origin's /robots.txt and /llms.txt said (worker/robots.py fetches and caches them)."""

    robots: str  # "found", "missing" (4xx: everything may be crawled) or "unreachable"
    robots_status: int | None = None  # HTTP status, None when there was no answer
    robots_text: str = ""  # bounded by the fetch
    llms_txt: bool | None = None  # None when it could not be told


@dataclass(frozen=True)
class PageContext:
    """Everything about the fetch and the other stages that the audits read."""

    url: str  # the final URL, after redirects
    requested_url: str
    status_code: int
    redirects: list[str] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names
    site: SiteFiles | None = None  # None: not fetched (e.g. the lookup failed)
    teaser: dict[str, Any] = field(default_factory=dict)
    performance: dict[str, Any] | None = None
    insights: list[dict[str, Any]] = field(default_factory=list)  # rule insights (worker/insights.py)

    @property
    def https(self) -> bool:
        return self.url.lower().startswith("https:")


def make(
    id: str,
    category: AuditCategory,
    title: str,
    result: AuditResult,
    severity: Severity,
    evidence: Iterable[str] = (),
    fix: str | None = None,
) -> Audit:
    """An audit; the fix is kept only when there is something to fix."""
    keep_fix = result in (FAIL, WARNING)
    return Audit(
        id=id,
        category=category,
        title=title,
        result=result,
        severity=severity,
        evidence=list(evidence),
        fix=fix if keep_fix else None,
    )


def worst(results: Iterable[AuditResult]) -> AuditResult:
    found = set(results)
    for result in (FAIL, WARNING, PASS):
        if result in found:
            return result
    return NA


def resolve(href: str, base: str) -> str | None:
    """`href` made absolute against `base`; None when it is not an http(s) URL."""
    try:
        joined = urljoin(base, href.strip())
        parts = urlsplit(joined)
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return joined


def host(url: str) -> str:
    try:
        return (urlsplit(url).hostname or "").lower()
    except ValueError:
        return ""


def same_page(a: str, b: str) -> bool:
    """The same URL but for the fragment and a trailing slash."""
    return a.split("#")[0].rstrip("/") == b.split("#")[0].rstrip("/")
