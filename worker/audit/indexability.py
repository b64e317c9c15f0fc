"""May the page be crawled, indexed and quoted: HTTP status, robots meta/header, robots.txt, llms.txt."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from app.core.page_audit import Audit, AuditCategory, CrawlerAccess
from worker.audit.common import FAIL, HIGH, INFO, LOW, MEDIUM, NA, PASS, WARNING, PageContext, SiteFiles, make
from worker.audit.robots_txt import CRAWLERS, sitemaps

CATEGORY = AuditCategory.INDEXABILITY

SEARCH_BOTS = frozenset({"robots", "googlebot", "bingbot"})
# Directives that carry a value after a colon; any other "name:" prefix in X-Robots-Tag is a user agent.
_VALUED = frozenset({"max-snippet", "max-image-preview", "max-video-preview", "unavailable_after"})
SHORT_SNIPPET = 50


@dataclass(frozen=True)
class Directive:
    bot: str  # lower case; "robots" when it applies to every crawler
    name: str  # e.g. "noindex", "max-snippet"
    value: str | None
    source: str  # the tag or header line, for evidence


def directives(ctx: PageContext, meta_robots: list[tuple[str, str]]) -> list[Directive]:
    found: list[Directive] = []
    for bot, content in meta_robots:
        source = f'<meta name="{bot}" content="{content}">'
        found += _parse(bot, content, source)
    header = ctx.headers.get("x-robots-tag", "")
    # Folded repeats of the header arrive comma-joined; a "bot:" prefix applies to what follows it.
    bot = "robots"
    for part in header.split(",")[:50]:
        name, sep, rest = part.strip().partition(":")
        key = name.strip().lower()
        if sep and key not in _VALUED and " " not in key and key:
            bot, part = key, rest
        found += _parse(bot, part, f"X-Robots-Tag: {header.strip()}")
    return found


def _parse(bot: str, content: str, source: str) -> list[Directive]:
    found = []
    for raw in content.split(",")[:50]:
        name, _, value = raw.strip().partition(":")
        name = name.strip().lower()
        if name == "none":  # noindex, nofollow
            found += [Directive(bot, "noindex", None, source), Directive(bot, "nofollow", None, source)]
        elif name:
            found.append(Directive(bot, name, value.strip() or None, source))
    return found


def audits(ctx: PageContext, found: list[Directive], access: list[CrawlerAccess]) -> list[Audit]:
    return [
        _status(ctx),
        _noindex(found),
        _nofollow(found),
        _snippet(found),
        *robots_audits(ctx, access),
    ]


def _status(ctx: PageContext) -> Audit:
    chain = " → ".join([ctx.requested_url, *ctx.redirects]) if ctx.redirects else None
    evidence = [f"HTTP {ctx.status_code} from {ctx.url}"] + ([f"redirects: {chain}"] if chain else [])
    ok = 200 <= ctx.status_code < 300
    return make(
        "http-status",
        CATEGORY,
        "The page answers with HTTP 2xx",
        PASS if ok else FAIL,
        HIGH,
        evidence,
        "Serve the page with HTTP 200 at the URL you want indexed.",
    )


def _sources(found: Iterable[Directive]) -> list[str]:
    return list(dict.fromkeys(d.source for d in found))


def _noindex(found: list[Directive]) -> Audit:
    hits = [d for d in found if d.name == "noindex"]
    blocking = [d for d in hits if d.bot in SEARCH_BOTS]
    result = FAIL if blocking else WARNING if hits else PASS
    evidence = _sources(hits) or ["no noindex in <meta name=robots> or X-Robots-Tag"]
    fix = "Remove noindex from the robots meta tag / X-Robots-Tag header if the page should appear in search."
    return make("robots-noindex", CATEGORY, "The page may be indexed", result, HIGH, evidence, fix)


def _nofollow(found: list[Directive]) -> Audit:
    hits = [d for d in found if d.name == "nofollow"]
    fix = "Remove nofollow unless crawlers should ignore every link on the page."
    return make(
        "robots-nofollow",
        CATEGORY,
        "Links on the page may be followed",
        WARNING if hits else PASS,
        MEDIUM,
        _sources(hits),
        fix,
    )


def _snippet(found: list[Directive]) -> Audit:
    hits = [d for d in found if d.name == "nosnippet"]
    hits += [
        d
        for d in found
        if d.name == "max-snippet" and d.value is not None and d.value.isdigit() and int(d.value) < SHORT_SNIPPET
    ]
    fix = "Drop nosnippet / a small max-snippet so search results and AI answers can quote the page."
    return make(
        "robots-snippet",
        CATEGORY,
        "Search and AI answers may quote the page",
        WARNING if hits else PASS,
        MEDIUM,
        _sources(hits),
        fix,
    )


# --- robots.txt and llms.txt ---------------------------------------------------------------------------


def robots_audits(ctx: PageContext, access: list[CrawlerAccess]) -> list[Audit]:
    site = ctx.site
    if site is None:
        na = "robots.txt could not be checked"
        return [
            make(id, CATEGORY, title, NA, sev, [na])
            for id, title, sev in (
                ("robots-txt", "robots.txt can be read", MEDIUM),
                ("robots-search-crawlers", "Search engines may crawl the page", HIGH),
                ("robots-ai-search", "AI assistants may fetch the page", MEDIUM),
                ("robots-ai-training", "AI training crawlers may read the page", INFO),
                ("sitemap", "robots.txt declares a sitemap", LOW),
                ("llms-txt", "The site has /llms.txt", INFO),
            )
        ]
    return [
        _robots_file(site),
        *_crawlers(site, access),
        _sitemap(site),
        _llms(site),
    ]


def _robots_file(site: SiteFiles) -> Audit:
    status = f"HTTP {site.robots_status}" if site.robots_status else "no answer"
    if site.robots == "unreachable":
        evidence = [f"/robots.txt: {status}; crawlers treat an unreachable robots.txt as 'crawl nothing'"]
        result = FAIL
    elif site.robots == "missing":
        evidence, result = [f"/robots.txt: {status}; every crawler may crawl everything"], PASS
    else:
        lines = len(site.robots_text.splitlines())
        evidence, result = [f"/robots.txt: {status}, {lines} lines"], PASS
    fix = "Make /robots.txt answer 200 (or 404 if you have no rules); 5xx and timeouts stop crawling."
    return make("robots-txt", CATEGORY, "robots.txt can be read", result, MEDIUM, evidence, fix)


def _crawlers(site: SiteFiles, access: list[CrawlerAccess]) -> list[Audit]:
    audits = []
    for purpose, id, title, severity, fix in (
        (
            "search",
            "robots-search-crawlers",
            "Search engines may crawl the page",
            HIGH,
            "Remove the Disallow rule that matches this URL for Googlebot/Bingbot.",
        ),
        (
            "ai-search",
            "robots-ai-search",
            "AI assistants may fetch the page",
            MEDIUM,
            "Allow OAI-SearchBot, ChatGPT-User and PerplexityBot if AI answers should cite the page.",
        ),
        (
            "ai-training",
            "robots-ai-training",
            "AI training crawlers may read the page",
            INFO,
            "Blocking training crawlers is a choice; allow them if you want models to learn from the page.",
        ),
    ):
        mine = [a for a in access if a.purpose == purpose]
        blocked = [a for a in mine if not a.allowed]
        if site.robots == "unreachable":
            result, evidence = FAIL, ["robots.txt is unreachable, so crawlers stay away"]
        elif blocked:
            result = FAIL if purpose == "search" else WARNING
            evidence = [f"{a.crawler}: blocked by {a.rule or 'robots.txt'}" for a in blocked]
        else:
            names = ", ".join(bot for bot, p in CRAWLERS if p == purpose)
            result, evidence = PASS, [f"allowed: {names}"]
        audits.append(make(id, CATEGORY, title, result, severity, evidence, fix))
    return audits


def _sitemap(site: SiteFiles) -> Audit:
    found = sitemaps(site)
    if site.robots != "found":
        return make("sitemap", CATEGORY, "robots.txt declares a sitemap", NA, LOW, ["no robots.txt to declare one"])
    return make(
        "sitemap",
        CATEGORY,
        "robots.txt declares a sitemap",
        PASS if found else WARNING,
        LOW,
        [f"Sitemap: {url}" for url in found] or ["no Sitemap: line in robots.txt"],
        "Add a 'Sitemap: https://…/sitemap.xml' line to robots.txt.",
    )


def _llms(site: SiteFiles) -> Audit:
    if site.llms_txt is None:
        return make("llms-txt", CATEGORY, "The site has /llms.txt", NA, INFO, ["/llms.txt could not be checked"])
    return make(
        "llms-txt",
        CATEGORY,
        "The site has /llms.txt",
        PASS if site.llms_txt else WARNING,
        INFO,
        ["/llms.txt found" if site.llms_txt else "no /llms.txt at the origin"],
        "Optionally publish /llms.txt: a Markdown guide to the site's key pages for AI assistants.",
    )
