"""The page audit part of a scan's report: typed results, the preview and robots facts, and the scores.

Every audit has a stable id, a result, a severity (how much a failure matters), capped evidence
(the tag, header or robots.txt line it came from) and a one-line fix. Scores are 0-100 per
category and overall:

- an audit counts with the weight of its severity: high 3, medium 2, low 1, info 0 (info audits
  are shown but never move a score);
- it earns all of its weight on pass, half on warning, nothing on fail; not_applicable audits
  are left out;
- a category's score is the share of the weight its audits earned; a category with nothing to
  weigh has no score (null);
- the overall score is the mean of the category scores weighted by CATEGORY_WEIGHTS, over the
  categories that have a score.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Final

from pydantic import Field, field_validator

from app.core.wire import Wire

EVIDENCE_ITEMS: Final = 10  # evidence lines kept per audit
EVIDENCE_CHARS: Final = 300  # characters kept per evidence line


class AuditResult(StrEnum):
    PASS = "pass"  # noqa: S105 (a result, not a password)
    FAIL = "fail"
    WARNING = "warning"
    NOT_APPLICABLE = "not_applicable"


class Severity(StrEnum):
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"
    INFO = "info"


class AuditCategory(StrEnum):
    INDEXABILITY = "indexability"
    STRUCTURED_DATA = "structured_data"
    SHARING = "sharing"
    CONTENT = "content"
    PERFORMANCE = "performance"


SEVERITY_WEIGHTS: Final = {Severity.HIGH: 3, Severity.MEDIUM: 2, Severity.LOW: 1, Severity.INFO: 0}
RESULT_CREDIT: Final = {AuditResult.PASS: 1.0, AuditResult.WARNING: 0.5, AuditResult.FAIL: 0.0}
CATEGORY_WEIGHTS: Final = {
    AuditCategory.INDEXABILITY: 30,
    AuditCategory.CONTENT: 25,
    AuditCategory.PERFORMANCE: 20,
    AuditCategory.STRUCTURED_DATA: 15,
    AuditCategory.SHARING: 10,
}
# Failing first, then warnings; within a result the most severe first.
RESULT_ORDER: Final = {AuditResult.FAIL: 0, AuditResult.WARNING: 1, AuditResult.PASS: 2, AuditResult.NOT_APPLICABLE: 3}
SEVERITY_ORDER: Final = {Severity.HIGH: 0, Severity.MEDIUM: 1, Severity.LOW: 2, Severity.INFO: 3}


# C0/C1 controls (which a terminal acts on), bidi overrides/isolates (used to spoof displayed text)
# and a stray BOM: never part of a page's text as shown.
CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ufeff]")


def cap_text(value: str, limit: int = EVIDENCE_CHARS) -> str:
    """One line of at most `limit` characters, marked with "…" when cut; controls become spaces."""
    flat = " ".join(CONTROLS.sub(" ", value).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


class Audit(Wire):
    id: str
    category: AuditCategory
    title: str  # what is checked, e.g. "Page may be indexed"
    result: AuditResult
    severity: Severity
    evidence: list[str] = []  # at most EVIDENCE_ITEMS lines of at most EVIDENCE_CHARS each
    fix: str | None = None  # one line; set when the audit did not pass

    @field_validator("evidence")
    @classmethod
    def _capped(cls, value: list[str]) -> list[str]:
        return [cap_text(line) for line in value[:EVIDENCE_ITEMS]]


class CategoryScore(Wire):
    category: AuditCategory
    score: Annotated[int, Field(ge=0, le=100)] | None  # null: no audit in it applied
    passed: int = 0
    warnings: int = 0
    failed: int = 0


class CrawlerAccess(Wire):
    """What robots.txt says about this URL for one crawler."""

    crawler: str  # the user-agent token, e.g. "GPTBot"
    purpose: str  # "search" or "ai"
    allowed: bool
    rule: str | None = None  # the robots.txt line that decided it, when one did


class SharePreview(Wire):
    """What a link to the page shows when shared (Open Graph first, then Twitter, then the page)."""

    title: str | None = None
    description: str | None = None
    image: str | None = None
    site_name: str | None = None
    card: str | None = None  # twitter:card


class AuditFacts(Wire):
    status_code: int | None = None
    redirects: list[str] = []
    robots_txt: str | None = None  # "found", "missing", "unreachable", or null when not fetched
    crawlers: list[CrawlerAccess] = []
    sitemaps: list[str] = []
    llms_txt: bool | None = None  # null when not checked
    structured_data_types: list[str] = []
    preview: SharePreview = SharePreview()
    main_content_words: int = 0
    readability_grade: float | None = None  # Automated Readability Index (a US school grade)


class AuditReport(Wire):
    score: Annotated[int, Field(ge=0, le=100)] | None
    categories: list[CategoryScore]
    audits: list[Audit]
    facts: AuditFacts = AuditFacts()


def sort_audits(audits: list[Audit]) -> list[Audit]:
    """Failing first, then warnings, passes, not applicable; most severe first within each."""
    return sorted(audits, key=lambda a: (RESULT_ORDER[a.result], SEVERITY_ORDER[a.severity]))


def category_scores(audits: list[Audit]) -> list[CategoryScore]:
    scores = []
    for category in AuditCategory:
        mine = [a for a in audits if a.category is category]
        earned = total = 0.0
        for audit in mine:
            if audit.result is AuditResult.NOT_APPLICABLE:
                continue
            weight = SEVERITY_WEIGHTS[audit.severity]
            total += weight
            earned += weight * RESULT_CREDIT[audit.result]
        scores.append(
            CategoryScore(
                category=category,
                score=round(100 * earned / total) if total else None,
                passed=sum(1 for a in mine if a.result is AuditResult.PASS),
                warnings=sum(1 for a in mine if a.result is AuditResult.WARNING),
                failed=sum(1 for a in mine if a.result is AuditResult.FAIL),
            )
        )
    return scores


def overall_score(categories: list[CategoryScore]) -> int | None:
    weighted = [(CATEGORY_WEIGHTS[c.category], c.score) for c in categories if c.score is not None]
    total = sum(weight for weight, _ in weighted)
    if not total:
        return None
    return round(sum(weight * score for weight, score in weighted) / total)


def build_report(audits: list[Audit], facts: AuditFacts) -> AuditReport:
    categories = category_scores(audits)
    return AuditReport(score=overall_score(categories), categories=categories, audits=sort_audits(audits), facts=facts)
