"""Which URL and which language: the canonical link, `<html lang>` and hreflang alternates.

Language tags are checked against the IANA registry by langcodes.
"""

from __future__ import annotations

from collections import defaultdict

import langcodes

from app.core.page_audit import Audit, AuditCategory, AuditResult, Severity
from worker.audit.common import FAIL, HIGH, LOW, MEDIUM, NA, PASS, WARNING, PageContext, host, make, resolve, same_page
from worker.audit.facts import PageFacts
from worker.audit.indexability import SEARCH_BOTS, Directive

_CANONICAL_FIXES = {
    "several": "Keep exactly one <link rel=canonical> in the page.",
    "http": "Point the canonical at the https URL.",
    "noindex": "Either drop noindex or the canonical to another URL; together they send opposite signals.",
    "host": "Check the canonical: it hands this page's ranking to another host.",
    "relative": "Write the canonical as an absolute https:// URL.",
    "invalid": "Point the canonical at the page's absolute https:// URL.",
    "missing": "Add <link rel=canonical href=…> with the page's preferred absolute URL.",
}


def valid_language(tag: str) -> bool:
    try:
        return bool(tag) and bool(langcodes.tag_is_valid(tag))
    except (ValueError, LookupError):
        return False


def canonical(facts: PageFacts, ctx: PageContext, found: list[Directive]) -> Audit:
    base = resolve(facts.base_href, ctx.url) if facts.base_href else None
    base = base or ctx.url
    resolved = [(href, resolve(href, base)) for href in facts.canonicals]
    distinct = {url for _, url in resolved if url}
    problems: list[tuple[str, AuditResult, Severity, str]] = []
    if not facts.canonicals:
        problems.append(("missing", WARNING, LOW, "no <link rel=canonical>"))
    if len(distinct) > 1:
        problems.append(
            ("several", FAIL, HIGH, f"{len(facts.canonicals)} canonical links: {', '.join(sorted(distinct))}")
        )
    for href, url in resolved:
        if url is None:
            problems.append(("invalid", FAIL, MEDIUM, f"canonical {href!r} is not an http(s) URL"))
            continue
        if not href.lower().startswith(("http://", "https://")):
            problems.append(("relative", WARNING, LOW, f"canonical {href!r} is relative; resolves to {url}"))
        if ctx.https and url.lower().startswith("http:"):
            problems.append(("http", FAIL, MEDIUM, f"canonical {url} is http on an https page"))
        if host(url) != host(ctx.url):
            problems.append(("host", WARNING, MEDIUM, f"canonical {url} is on another host than {host(ctx.url)}"))
        noindex = [d for d in found if d.name == "noindex" and d.bot in SEARCH_BOTS]
        if noindex and not same_page(url, ctx.url):
            problems.append(("noindex", FAIL, MEDIUM, f"canonical {url} with {noindex[0].source}"))
    title = "The canonical URL is single, absolute and consistent"
    if not problems:
        target = next(iter(distinct))
        note = "points to this page" if same_page(target, ctx.url) else "points to another URL of this site"
        return make("canonical", AuditCategory.INDEXABILITY, title, PASS, MEDIUM, [f"canonical {target} ({note})"])
    order = {FAIL: 0, WARNING: 1}
    problems.sort(key=lambda p: (order.get(p[1], 2), {HIGH: 0, MEDIUM: 1, LOW: 2}.get(p[2], 3)))
    kind, result, severity, _ = problems[0]
    return make(
        "canonical",
        AuditCategory.INDEXABILITY,
        title,
        result,
        severity,
        [p[3] for p in problems],
        _CANONICAL_FIXES[kind],
    )


def html_lang(facts: PageFacts) -> Audit:
    title = "<html lang> names a valid language"
    fix = 'Set <html lang="…"> to the page\'s language as a BCP 47 tag, e.g. "en" or "pt-BR".'
    if not facts.html_lang:
        return make("html-lang", AuditCategory.CONTENT, title, FAIL, LOW, ["<html> has no lang attribute"], fix)
    ok = valid_language(facts.html_lang)
    evidence = [f'<html lang="{facts.html_lang}">' + ("" if ok else " is not a valid language tag")]
    return make("html-lang", AuditCategory.CONTENT, title, PASS if ok else FAIL, LOW, evidence, fix)


def hreflang(facts: PageFacts, ctx: PageContext) -> Audit:
    title = "hreflang alternates are valid and complete"
    if not facts.hreflangs:
        return make("hreflang", AuditCategory.INDEXABILITY, title, NA, MEDIUM, ["no hreflang alternates"])
    problems: list[tuple[AuditResult, str, str]] = []
    targets: dict[str, set[str]] = defaultdict(set)
    page = ctx.url
    canonical = resolve(facts.canonicals[0], ctx.url) if facts.canonicals else None
    self_found = False
    for code, href in facts.hreflangs:
        url = resolve(href, ctx.url) if href else None
        if code.lower() != "x-default" and not valid_language(code):
            problems.append(
                (
                    FAIL,
                    f'hreflang="{code}" is not a valid language code',
                    "Use ISO 639-1 codes, optionally with an ISO 3166-1 region: en, en-GB.",
                )
            )
        if url is None:
            problems.append(
                (FAIL, f'hreflang="{code}" has no usable href ({href!r})', "Give every alternate an absolute URL.")
            )
            continue
        if not href.lower().startswith(("http://", "https://")):
            problems.append(
                (WARNING, f'hreflang="{code}" href {href!r} is relative', "Use absolute URLs in hreflang links.")
            )
        targets[code.lower()].add(url)
        self_found = self_found or same_page(url, page) or (canonical is not None and same_page(url, canonical))
    for code, urls in targets.items():
        if len(urls) > 1:
            problems.append(
                (FAIL, f'hreflang="{code}" is given {len(urls)} different URLs', "List each language code once.")
            )
    if "x-default" not in targets:
        problems.append(
            (WARNING, 'no hreflang="x-default" alternate', "Add an x-default alternate for other languages.")
        )
    if not self_found:
        problems.append(
            (
                WARNING,
                "the page does not list itself among its alternates",
                "Include the page's own URL in its hreflang set.",
            )
        )
    result = FAIL if any(p[0] is FAIL for p in problems) else WARNING if problems else PASS
    problems.sort(key=lambda p: p[0] is not FAIL)
    evidence = [p[1] for p in problems] or [f"{len(facts.hreflangs)} alternates: {', '.join(sorted(targets))}"]
    fix = problems[0][2] if problems else None
    return make("hreflang", AuditCategory.INDEXABILITY, title, result, MEDIUM, evidence, fix)
