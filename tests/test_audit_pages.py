"""The whole audit on realistic pages, and on hostile ones that must end typed and bounded."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from app.core.page_audit import AuditCategory, AuditReport
from app.core.report import Performance
from tests.fileserver import FilesServer
from tests.httpserver import running
from worker.audit.common import PageContext, SiteFiles
from worker.audit.facts import MAIN_CONTENT_MAX_HTML, page_facts
from worker.audit.run import run_audits
from worker.audit.structured import JSONLD_BLOCK_CHARS, JSONLD_BLOCKS_READ, PRUNE_LIST, RDFA_MAX_HTML
from worker.insights import rule_insights
from worker.parse import build_teaser, parse_html

PAGES = Path(__file__).resolve().parent / "pages" / "audit"
OPEN_ROBOTS = SiteFiles(
    robots="found",
    robots_status=200,
    robots_text="User-agent: *\nDisallow: /cart\nSitemap: https://greenpatch.example/sitemap.xml\n",
    llms_txt=True,
)
AI_BLOCKED_ROBOTS = SiteFiles(
    robots="found",
    robots_status=200,
    robots_text=(
        "User-agent: GPTBot\nUser-agent: ClaudeBot\nUser-agent: CCBot\nUser-agent: Google-Extended\n"
        "User-agent: Applebot-Extended\nUser-agent: PerplexityBot\nUser-agent: OAI-SearchBot\n"
        "User-agent: ChatGPT-User\nDisallow: /\n\nUser-agent: *\nAllow: /\n"
    ),
    llms_txt=False,
)


def audit_file(name: str, url: str, site: SiteFiles | None) -> AuditReport:
    html = (PAGES / name).read_text()
    teaser = build_teaser(parse_html(html, url), url)
    facts = page_facts(html, url)
    lab = Performance(html_bytes=len(html), compression="gzip", ttfb_ms=120.0, render_blocking=1, redirects=0)
    insights = [i.to_json() for i in rule_insights(teaser, lab, [], kind="url")]
    ctx = PageContext(
        url=url, requested_url=url, status_code=200, site=site, insights=insights, performance=lab.to_json()
    )
    return run_audits(facts, ctx)


def results(report: AuditReport) -> dict[str, str]:
    return {a.id: a.result.value for a in report.audits}


def test_blog_post() -> None:
    url = "https://greenpatch.example/blog/small-garden-compost"
    report = audit_file("blog.html", url, OPEN_ROBOTS)
    found = results(report)
    failing = {id: r for id, r in found.items() if r in ("fail", "warning")}
    assert failing == {}, [a for a in report.audits if a.id in failing]
    assert set(report.facts.structured_data_types) == {"BlogPosting", "BreadcrumbList", "Organization"}
    assert found["schema-article"] == found["schema-breadcrumblist"] == found["schema-organization"] == "pass"
    assert report.facts.preview.title == "How to Start a Compost Heap in a Small Garden"
    assert report.facts.preview.site_name == "Greenpatch"
    assert report.facts.sitemaps == ["https://greenpatch.example/sitemap.xml"]
    assert report.score == 100
    # The main content is the article: no navigation, related posts or site footer.
    facts = page_facts((PAGES / "blog.html").read_text(), url)
    assert "Composting turns kitchen scraps" in facts.main_text
    assert "About us" not in facts.main_text and "Privacy policy" not in facts.main_text
    assert "Wormeries for flats" not in facts.main_text
    assert 300 < facts.main_words < 500


def test_product_page() -> None:
    report = audit_file("product.html", "https://shop.example.com/espresso/barista-pro", OPEN_ROBOTS)
    found = {a.id: a for a in report.audits}
    assert found["schema-product"].result.value == "fail"
    assert "missing offers or review or aggregateRating" in found["schema-product"].evidence[0]
    assert found["schema-breadcrumblist"].result.value == "pass"  # microdata
    assert found["canonical"].result.value == "warning"
    assert found["og-image"].result.value == "warning" and found["og-description"].result.value == "warning"
    assert found["mixed-content"].evidence == ["<img src=http://images.example.net/barista-pro-front.jpg>"]
    assert found["crawlable-anchors"].evidence == ['"Reviews (0)" → javascript:void(0)']
    assert found["link-text"].evidence == ['"More" → /espresso/barista-pro/specs']
    assert found["image-alt"].result.value == "fail"  # a rule insight, folded in
    assert report.facts.preview.image == "https://shop.example.com/img/barista-pro.jpg"
    scores = {c.category: c.score or 0 for c in report.categories}
    assert 0 < scores[AuditCategory.STRUCTURED_DATA] < 100
    blog = audit_file("blog.html", "https://greenpatch.example/blog/small-garden-compost", OPEN_ROBOTS)
    assert (report.score or 0) < (blog.score or 0)


def test_docs_page() -> None:
    report = audit_file("docs.html", "https://docs.queueworks.example/en/retries", OPEN_ROBOTS)
    found = {a.id: a for a in report.audits}
    assert found["hreflang"].result.value == "pass"
    assert found["structured-data"].result.value == "warning"
    assert found["link-text"].evidence == ['"here" → /en/guarantees']
    assert found["twitter-card"].result.value == "warning"
    assert found["canonical"].result.value == "pass"
    assert "max_tries" in page_facts((PAGES / "docs.html").read_text(), "https://docs.queueworks.example/").main_text


def test_page_blocked_to_ai_crawlers() -> None:
    report = audit_file("blog.html", "https://greenpatch.example/blog/small-garden-compost", AI_BLOCKED_ROBOTS)
    found = {a.id: a for a in report.audits}
    assert found["robots-search-crawlers"].result.value == "pass"
    assert found["robots-ai-search"].result.value == "warning"
    assert found["robots-ai-search"].evidence == [
        "OAI-SearchBot: blocked by User-agent: GPTBot … Disallow: /",
        "ChatGPT-User: blocked by User-agent: GPTBot … Disallow: /",
        "PerplexityBot: blocked by User-agent: GPTBot … Disallow: /",
    ]
    assert found["robots-ai-training"].result.value == "warning"
    assert found["llms-txt"].result.value == "warning"
    blocked = {c.crawler for c in report.facts.crawlers if not c.allowed}
    assert blocked == {"GPTBot", "ClaudeBot", "CCBot", "Google-Extended", "Applebot-Extended"} | {
        "PerplexityBot",
        "OAI-SearchBot",
        "ChatGPT-User",
    }
    # Search stays open, so indexability keeps most of its score; training crawlers weigh nothing.
    indexability = next(c for c in report.categories if c.category is AuditCategory.INDEXABILITY)
    assert indexability.score is not None and 85 <= indexability.score < 100


# --- hostile pages ------------------------------------------------------------------------------------


def ld(value: str) -> str:
    return f'<script type="application/ld+json">{value}</script>'


def audit_html(html: str) -> AuditReport:
    url = "https://hostile.example/"
    return run_audits(page_facts(html, url), PageContext(url=url, requested_url=url, status_code=200))


def test_ten_thousand_jsonld_blocks_are_read_up_to_the_cap() -> None:
    block = ld('{"@context":"https://schema.org","@type":"Organization","name":"Spam","url":"u","logo":"l"}')
    facts = page_facts(f"<html><head>{block * 10_000}</head><body><p>x</p></body></html>", "https://h.example/")
    assert facts.structured.jsonld_blocks == 10_000
    assert facts.structured.jsonld_read == JSONLD_BLOCKS_READ
    report = audit_html(f"<html><head>{block * 10_000}</head></html>")
    found = {a.id: a for a in report.audits}
    assert found["structured-data-size"].result.value == "warning"
    assert found["structured-data-size"].evidence == ["10000 JSON-LD blocks; only the first 50 were read"]
    assert found["schema-organization"].result.value == "pass"


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        ("[" * 200_000 + "]" * 200_000, "is 400000 characters"),  # over the block cap: never parsed
        ("[" * 50_000 + "]" * 50_000, "nested too deeply"),
        ('{"@type":"Thing","a":' * 5_000 + "1" + "}" * 5_000, "nested too deeply"),
    ],
)
def test_jsonld_bombs_end_as_typed_errors(payload: str, error: str) -> None:
    after = ld('{"@type":"Organization","name":"Ok"}')
    report = audit_html(f"<html><head>{ld(payload)}{after}</head></html>")
    syntax = next(a for a in report.audits if a.id == "structured-data-syntax")
    assert syntax.result.value == "fail"
    assert error in syntax.evidence[0]
    assert "Organization" in report.facts.structured_data_types  # the block after the bomb is still read


def test_wide_jsonld_is_pruned() -> None:
    offers = [{"price": i, "tags": list(range(40))} for i in range(1000)]
    wide = json.dumps({"@type": "Product", "name": "P", "offers": offers})
    assert 150_000 < len(wide) < JSONLD_BLOCK_CHARS  # read, not refused
    facts = page_facts(f"<html><head>{ld(wide)}</head></html>", "https://h.example/")
    (item,) = facts.structured.items
    assert len(item.data["offers"]) == PRUNE_LIST
    assert len(json.dumps(item.data)) < 20_000


def test_too_much_microdata_is_not_read() -> None:
    scopes = '<div itemscope itemtype="https://schema.org/Thing"><span itemprop="name">x</span></div>' * 3_000
    facts = page_facts(f"<html><body>{scopes}</body></html>", "https://h.example/")
    assert facts.structured.items == []
    assert facts.structured.skipped == ["6000 microdata elements; over 2000, microdata was not read"]


def test_rdfa_on_a_huge_page_is_not_read() -> None:
    rdfa = '<div vocab="https://schema.org/" typeof="Event"><span property="name">Launch</span></div>'
    html = f"<html><body>{rdfa}<p>{'x' * RDFA_MAX_HTML}</p></body></html>"
    facts = page_facts(html, "https://h.example/")
    assert facts.structured.items == []
    assert facts.structured.skipped == [f"the page is over {RDFA_MAX_HTML} characters; its RDFa was not read"]


def test_rdfa_vocabularies_are_never_fetched() -> None:
    server = FilesServer()
    with running(server, "vocab"):
        html = (
            f'<html><body><div vocab="{server.base}/vocab#" typeof="Event" prefix="x: {server.base}/x#">'
            f'<span property="name">Launch</span><link rel="stylesheet" href="{server.base}/s.css"></div></body></html>'
        )
        facts = page_facts(html, server.base + "/")
    assert [i.types for i in facts.structured.items] == [("Event",)] or facts.structured.items
    assert server.hits == {}


@pytest.mark.parametrize("html", ["", "\x00\x00", "<", "<html><body>" + "<div>" * 100_000, "\ud800 broken surrogate"])
def test_unreadable_pages_still_give_a_report(html: str) -> None:
    report = audit_html(html)
    assert report.score is None or 0 <= report.score <= 100
    assert {a.id for a in report.audits} >= {"http-status", "canonical", "structured-data", "og-title"}


def test_a_huge_page_skips_main_content_extraction() -> None:
    paragraph = "<p>Compost needs air, water and a balance of greens and browns. <a href='/more'>Guide</a></p>\n"
    html = "<html lang=en><body>" + paragraph * (MAIN_CONTENT_MAX_HTML // len(paragraph) + 10) + "</body></html>"
    facts = page_facts(html, "https://h.example/")
    assert facts.main_text_skipped and facts.main_text == ""
    assert facts.anchors_total > 5_000  # everything else is still read
    found = {a.id: a for a in audit_html(html).audits}
    assert found["readability"].evidence == ["the page is too large to extract its main content"]


def test_the_parse_children_load_no_readability_scorer() -> None:
    # nltk (through textstat) would cost about 100 MB in each parse child: the audit never loads it.
    code = "import sys, worker.audit.facts; print('textstat' in sys.modules, 'nltk' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.split() == ["False", "False"], done.stderr


def test_the_worker_loads_no_scientific_stack() -> None:
    # The readability index is counted in worker/audit/readability.py: textstat would bring nltk,
    # scipy and scikit-learn (about 130 MB) into the worker; torch and keybert live in its children.
    heavy = ("textstat", "nltk", "scipy", "sklearn", "torch", "keybert", "transformers")
    code = (
        f"import sys, worker.__main__, worker.settings, worker.wake; print([m for m in {heavy!r} if m in sys.modules])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]", done.stderr


def test_facts_cross_a_process_boundary() -> None:
    facts = page_facts((PAGES / "product.html").read_text(), "https://shop.example.com/espresso/barista-pro")
    assert pickle.loads(pickle.dumps(facts)) == facts
    assert pickle.loads(pickle.dumps(page_facts)) is page_facts
