"""The rule insights (worker/insights.py) as audits: one audit per rule family.

The rules keep their thresholds and wording in one place; an audit fails (high/medium) or warns
(low/info) when one of its rules fired, with the rule's message as evidence, and passes otherwise.
"""

from __future__ import annotations

from typing import Any

from app.core.page_audit import Audit, AuditCategory, Severity
from worker.audit.common import FAIL, HIGH, INFO, LOW, MEDIUM, NA, PASS, WARNING, make

CONTENT, PERFORMANCE = AuditCategory.CONTENT, AuditCategory.PERFORMANCE

# audit id -> (category, title, severity when passing, insight ids, fix)
FOLDED: dict[str, tuple[AuditCategory, str, Severity, frozenset[str], str]] = {
    "document-title": (
        CONTENT,
        "The page has a useful <title>",
        HIGH,
        frozenset({"title-missing", "title-too-short", "title-too-long"}),
        "Write a unique 10-60 character <title> naming the page's topic.",
    ),
    "meta-description": (
        CONTENT,
        "The page has a meta description of a useful length",
        MEDIUM,
        frozenset({"description-missing", "description-too-short", "description-too-long"}),
        'Add <meta name="description"> of 50-160 characters summarising the page.',
    ),
    "h1": (
        CONTENT,
        "The page has one <h1>",
        MEDIUM,
        frozenset({"h1-missing", "h1-multiple"}),
        "Give the page exactly one <h1> stating its main topic.",
    ),
    "content-length": (
        CONTENT,
        "The main content is substantial",
        MEDIUM,
        frozenset({"content-thin"}),
        "Expand the main content; pages under ~300 words rarely rank or get quoted.",
    ),
    "image-alt": (
        CONTENT,
        "Images have alt text",
        MEDIUM,
        frozenset({"images-missing-alt"}),
        'Add alt text to informative images (alt="" for decorative ones).',
    ),
    "keyphrase-in-title": (
        CONTENT,
        "The title mentions the page's top keyphrases",
        MEDIUM,
        frozenset({"keyphrase-not-in-title"}),
        "Work the page's main keyphrase into the <title>.",
    ),
    "keyphrase-in-h1": (
        CONTENT,
        "The <h1> mentions the page's top keyphrases",
        LOW,
        frozenset({"keyphrase-not-in-h1"}),
        "Work the page's main keyphrase into the <h1>.",
    ),
    "html-size": (
        PERFORMANCE,
        "The HTML is under 500 KB",
        MEDIUM,
        frozenset({"html-heavy"}),
        "Move inline data, styles and scripts out of the HTML.",
    ),
    "compression": (
        PERFORMANCE,
        "The HTML is compressed",
        MEDIUM,
        frozenset({"compression-missing"}),
        "Enable gzip or brotli for text/html on the server or CDN.",
    ),
    "server-response-time": (
        PERFORMANCE,
        "The server answers quickly (TTFB)",
        MEDIUM,
        frozenset({"ttfb-slow"}),
        "Cache the page at the edge or speed up the server; aim for TTFB under 800 ms.",
    ),
    "render-blocking": (
        PERFORMANCE,
        "Few render-blocking resources",
        LOW,
        frozenset({"render-blocking-many"}),
        "Defer scripts and inline critical CSS.",
    ),
    "redirects": (
        PERFORMANCE,
        "At most one redirect",
        LOW,
        frozenset({"redirects-many"}),
        "Link straight to the final URL; each redirect costs a round trip.",
    ),
}


def folded_audits(insights: list[dict[str, Any]], *, has_performance: bool) -> list[Audit]:
    by_id: dict[str, list[dict[str, Any]]] = {}
    for insight in insights:
        if isinstance(insight, dict) and insight.get("source", "rules") == "rules":
            by_id.setdefault(str(insight.get("id")), []).append(insight)
    found = []
    for audit_id, (category, title, severity, rule_ids, fix) in FOLDED.items():
        if category is PERFORMANCE and not has_performance:
            found.append(make(audit_id, category, title, NA, severity, ["no lab measurement"]))
            continue
        fired = [i for rule in sorted(rule_ids) for i in by_id.get(rule, [])]
        if not fired:
            found.append(make(audit_id, category, title, PASS, severity))
            continue
        worst = min((_severity(i) for i in fired), key=_rank)
        result = FAIL if worst in (HIGH, MEDIUM) else WARNING
        found.append(make(audit_id, category, title, result, worst, [str(i.get("message", "")) for i in fired], fix))
    return found


def _severity(insight: dict[str, Any]) -> Severity:
    try:
        return Severity(str(insight.get("severity")))
    except ValueError:
        return INFO


def _rank(severity: Severity) -> int:
    return (HIGH, MEDIUM, LOW, INFO).index(severity)
