"""The page audit: search-engine and AI-visibility checks, each with evidence and a fix.

Two pure steps, so either can run wherever the pipeline puts CPU work:
- `page_facts(html, url)` (worker/audit/facts.py) reads the HTML once: meta tags, links, structured
  data (extruct), main content (trafilatura) and its readability (textstat);
- `run_audits(facts, context)` turns those facts, the fetch (status, redirects, headers), the
  origin's robots.txt/llms.txt (worker/robots.py) and the rule insights into an AuditReport.
"""

from __future__ import annotations

from app.core.audit import AuditFacts, AuditReport, build_report
from worker.audit import content, indexability, international, robots_txt, schema, sharing
from worker.audit.common import PageContext, SiteFiles
from worker.audit.facts import PageFacts, page_facts
from worker.audit.rules import folded_audits

__all__ = ["PageContext", "PageFacts", "SiteFiles", "page_facts", "run_audits"]


def run_audits(facts: PageFacts, ctx: PageContext) -> AuditReport:
    directives = indexability.directives(ctx, facts.meta_robots)
    site = ctx.site
    access = robots_txt.crawler_access(ctx.url, site)
    audits = [
        *indexability.audits(ctx, directives, access),
        international.canonical(facts, ctx, directives),
        international.hreflang(facts, ctx),
        international.html_lang(facts),
        *schema.audits(facts.structured),
        *sharing.audits(facts, ctx),
        *content.audits(facts, ctx),
        *folded_audits(ctx.insights, has_performance=ctx.performance is not None),
    ]
    summary = AuditFacts(
        status_code=ctx.status_code,
        redirects=ctx.redirects,
        robots_txt=site.robots if site is not None else None,
        crawlers=access,
        sitemaps=robots_txt.sitemaps(site) if site is not None else [],
        llms_txt=site.llms_txt if site is not None else None,
        structured_data_types=facts.structured.types[:50],
        preview=sharing.preview(facts, ctx),
        main_content_words=facts.main_words,
        readability_grade=facts.readability_grade,
    )
    return build_report(audits, summary)
