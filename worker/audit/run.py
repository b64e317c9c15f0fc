"""All audits of one page, scored: the entry point the pipeline calls after the rule insights."""

from __future__ import annotations

from app.core.page_audit import AuditFacts, AuditReport, build_report
from worker.audit import content, indexability, international, robots_txt, schema, sharing
from worker.audit.common import PageContext
from worker.audit.facts import PageFacts
from worker.audit.rules import folded_audits


def run_audits(facts: PageFacts, ctx: PageContext) -> AuditReport:
    directives = indexability.directives(ctx, facts.meta_robots)
    grade = content.readability_grade(facts)
    site = ctx.site
    access = robots_txt.crawler_access(ctx.url, site)
    audits = [
        *indexability.audits(ctx, directives, access),
        international.canonical(facts, ctx, directives),
        international.hreflang(facts, ctx),
        international.html_lang(facts),
        *schema.audits(facts.structured),
        *sharing.audits(facts, ctx),
        *content.audits(facts, ctx, grade),
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
        readability_grade=grade,
    )
    return build_report(audits, summary)
