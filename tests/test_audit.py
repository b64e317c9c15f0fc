"""Each audit on small pages that make it pass and fail (pure functions: no network)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from app.core.page_audit import Audit, AuditCategory, AuditReport, cap_text
from app.core.report import Performance, Teaser
from worker.audit.common import PageContext, SiteFiles
from worker.audit.facts import page_facts
from worker.audit.readability import automated_readability_index
from worker.audit.run import run_audits
from worker.insights import rule_insights

URL = "https://shop.example.com/p/espresso"


def page(head: str = "", body: str = "", *, lang: str | None = "en") -> str:
    lang_attr = f' lang="{lang}"' if lang is not None else ""
    return f"<!doctype html><html{lang_attr}><head><meta charset=utf-8>{head}</head><body>{body}</body></html>"


def report(
    html: str,
    *,
    url: str = URL,
    headers: dict[str, str] | None = None,
    site: SiteFiles | None = None,
    status: int = 200,
    redirects: list[str] | None = None,
    insights: list[dict[str, Any]] | None = None,
    performance: dict[str, Any] | None = None,
) -> AuditReport:
    facts = page_facts(html, url)
    ctx = PageContext(
        url=url,
        requested_url=(redirects and url.replace("https://", "http://")) or url,
        status_code=status,
        redirects=redirects or [],
        headers=headers or {},
        site=site,
        insights=insights or [],
        performance=performance,
    )
    return run_audits(facts, ctx)


def audit(html: str, audit_id: str, **kwargs: Any) -> Audit:
    found = {a.id: a for a in report(html, **kwargs).audits}
    return found[audit_id]


def result(html: str, audit_id: str, **kwargs: Any) -> str:
    return audit(html, audit_id, **kwargs).result.value


ROBOTS_OK = SiteFiles(robots="found", robots_status=200, robots_text="User-agent: *\nAllow: /\n", llms_txt=True)


# --- indexability ---------------------------------------------------------------------------------------


def test_http_status_shows_the_redirect_chain() -> None:
    a = audit(page(), "http-status", redirects=[URL])
    assert a.result.value == "pass"
    assert any("redirects: http://shop.example.com/p/espresso → " + URL in e for e in a.evidence)
    assert result(page(), "http-status", status=404) == "fail"


@pytest.mark.parametrize(
    ("head", "headers", "expected"),
    [
        ("", {}, "pass"),
        ('<meta name="robots" content="index, follow">', {}, "pass"),
        ('<meta name="robots" content="noindex">', {}, "fail"),
        ('<meta name="ROBOTS" content="None">', {}, "fail"),
        ('<meta name="googlebot" content="noindex">', {}, "fail"),
        ('<meta name="gptbot" content="noindex">', {}, "warning"),  # only one AI crawler kept out
        ("", {"x-robots-tag": "noindex"}, "fail"),
        ("", {"x-robots-tag": "googlebot: noindex"}, "fail"),
        ("", {"x-robots-tag": "otherbot: noindex"}, "warning"),
        ("", {"x-robots-tag": "max-snippet:20, unavailable_after: 2030-01-01"}, "pass"),
    ],
)
def test_noindex(head: str, headers: dict[str, str], expected: str) -> None:
    a = audit(page(head), "robots-noindex", headers=headers)
    assert a.result.value == expected
    if expected != "pass":
        assert a.fix and a.evidence  # the tag or header it came from
        assert any(("noindex" in e.lower()) or ("none" in e.lower()) for e in a.evidence)


def test_nofollow_and_snippet_limits() -> None:
    assert result(page('<meta name="robots" content="nofollow">'), "robots-nofollow") == "warning"
    assert result(page(), "robots-nofollow") == "pass"
    assert result(page('<meta name="robots" content="nosnippet">'), "robots-snippet") == "warning"
    assert result(page(), "robots-snippet", headers={"x-robots-tag": "max-snippet:10"}) == "warning"
    assert result(page(), "robots-snippet", headers={"x-robots-tag": "max-snippet:160"}) == "pass"


def test_robots_txt_states() -> None:
    assert result(page(), "robots-txt", site=ROBOTS_OK) == "pass"
    missing = SiteFiles(robots="missing", robots_status=404)
    assert result(page(), "robots-txt", site=missing) == "pass"
    assert result(page(), "robots-search-crawlers", site=missing) == "pass"
    down = SiteFiles(robots="unreachable", robots_status=503)
    assert result(page(), "robots-txt", site=down) == "fail"
    assert result(page(), "robots-search-crawlers", site=down) == "fail"
    assert result(page(), "robots-txt", site=None) == "not_applicable"


def test_crawlers_blocked_show_the_deciding_line() -> None:
    text = "User-agent: GPTBot\nDisallow: /\n\nUser-agent: *\nDisallow: /p/\nAllow: /p/public\n"
    site = SiteFiles(robots="found", robots_status=200, robots_text=text)
    search = audit(page(), "robots-search-crawlers", site=site)
    assert search.result.value == "fail"
    assert "Googlebot: blocked by User-agent: * … Disallow: /p/" in search.evidence
    assert result(page(), "robots-search-crawlers", site=site, url="https://shop.example.com/p/public") == "pass"
    training = audit(page(), "robots-ai-training", site=site, url="https://shop.example.com/about")
    assert training.result.value == "warning"
    assert training.evidence == ["GPTBot: blocked by User-agent: GPTBot … Disallow: /"]
    assert result(page(), "robots-ai-search", site=site, url="https://shop.example.com/about") == "pass"
    facts = report(page(), site=site, url="https://shop.example.com/about").facts
    verdicts = {c.crawler: c.allowed for c in facts.crawlers}
    assert verdicts["GPTBot"] is False and verdicts["Googlebot"] is True and len(verdicts) == 10


def test_robots_evidence_is_capped() -> None:
    text = f"User-agent: *\nDisallow: /{'p' * 50_000}\nDisallow: /\nSitemap: https://e.com/{'s' * 50_000}\n"
    rep = report(page(), site=SiteFiles(robots="found", robots_status=200, robots_text=text))
    assert all(len(c.rule or "") <= 300 for c in rep.facts.crawlers)
    assert [len(url) for url in rep.facts.sitemaps] == [2048]


def test_sitemap_and_llms_txt() -> None:
    text = "User-agent: *\nDisallow:\nSitemap: https://shop.example.com/sitemap.xml\n"
    site = SiteFiles(robots="found", robots_status=200, robots_text=text, llms_txt=False)
    a = audit(page(), "sitemap", site=site)
    assert a.result.value == "pass" and a.evidence == ["Sitemap: https://shop.example.com/sitemap.xml"]
    assert result(page(), "sitemap", site=ROBOTS_OK) == "warning"
    assert result(page(), "llms-txt", site=site) == "warning"
    assert result(page(), "llms-txt", site=ROBOTS_OK) == "pass"
    assert report(page(), site=site).facts.sitemaps == ["https://shop.example.com/sitemap.xml"]


# --- canonical, language, hreflang ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "expected", "evidence"),
    [
        (f'<link rel="canonical" href="{URL}">', "pass", "points to this page"),
        ("", "warning", "no <link rel=canonical>"),
        ('<link rel="canonical" href="/p/espresso">', "warning", "is relative"),
        (
            '<link rel="canonical" href="https://a.example.com/x"><link rel="canonical" href="https://b.example.com/y">',
            "fail",
            "2 canonical links",
        ),
        ('<link rel="canonical" href="https://other.example.org/p">', "warning", "on another host"),
        ('<link rel="canonical" href="http://shop.example.com/p/espresso">', "fail", "http on an https page"),
        (
            '<meta name="robots" content="noindex"><link rel="canonical" href="https://shop.example.com/p/other">',
            "fail",
            'with <meta name="robots" content="noindex">',
        ),
    ],
)
def test_canonical(head: str, expected: str, evidence: str) -> None:
    a = audit(page(head), "canonical")
    assert a.result.value == expected
    assert any(evidence in e for e in a.evidence), a.evidence


def test_html_lang() -> None:
    assert result(page(lang="en-GB"), "html-lang") == "pass"
    assert result(page(lang=None), "html-lang") == "fail"
    assert result(page(lang="english"), "html-lang") == "fail"


def test_hreflang() -> None:
    good = (
        f'<link rel="alternate" hreflang="en" href="{URL}">'
        '<link rel="alternate" hreflang="de-DE" href="https://shop.example.com/de/p/espresso">'
        '<link rel="alternate" hreflang="x-default" href="https://shop.example.com/p/espresso">'
    )
    assert result(page(good), "hreflang") == "pass"
    assert result(page(), "hreflang") == "not_applicable"
    bad = audit(
        page(
            good + '<link rel="alternate" hreflang="en" href="https://shop.example.com/en2">'
            '<link rel="alternate" hreflang="english" href="https://shop.example.com/x">'
        ),
        "hreflang",
    )
    assert bad.result.value == "fail"
    assert any('"english" is not a valid' in e for e in bad.evidence)
    assert any('hreflang="en" is given 2 different URLs' in e for e in bad.evidence)
    partial = audit(page('<link rel="alternate" hreflang="fr" href="https://shop.example.com/fr">'), "hreflang")
    assert partial.result.value == "warning"
    assert set(partial.evidence) == {
        'no hreflang="x-default" alternate',
        "the page does not list itself among its alternates",
    }


# --- structured data ------------------------------------------------------------------------------------


def ld(value: str) -> str:
    return f'<script type="application/ld+json">{value}</script>'


def test_structured_data_presence_and_syntax() -> None:
    assert result(page(), "structured-data") == "warning"
    assert result(page(), "structured-data-syntax") == "not_applicable"
    html = page(ld('{"@context":"https://schema.org","@type":"Organization","name":"A","url":"https://a","logo":"l"}'))
    assert result(html, "structured-data") == "pass"
    assert result(html, "structured-data-syntax") == "pass"
    assert result(html, "schema-organization") == "pass"
    broken = audit(
        page(ld('{"@type": "Article",}') + ld('{"@type":"Organization","name":"A"}')), "structured-data-syntax"
    )
    assert broken.result.value == "fail"
    assert broken.evidence[0].startswith("JSON-LD block 1:")
    # One broken block hides nothing else.
    assert result(page(ld("{oops") + ld('{"@type":"Organization","name":"A"}')), "schema-organization") == "warning"


def test_graph_microdata_and_rdfa_types_are_found() -> None:
    graph = ld(
        '{"@context":"https://schema.org","@graph":[{"@type":"WebSite","name":"S"},'
        '{"@type":"BreadcrumbList","itemListElement":[{"@type":"ListItem","position":1,"name":"Home"}]}]}'
    )
    micro = (
        '<div itemscope itemtype="https://schema.org/Product"><span itemprop="name">Mug</span>'
        '<div itemprop="offers" itemscope itemtype="https://schema.org/Offer">'
        '<span itemprop="price">3</span></div></div>'
    )
    rdfa = '<div vocab="https://schema.org/" typeof="Event"><span property="name">Launch</span></div>'
    rep = report(page(graph, micro + rdfa))
    assert set(rep.facts.structured_data_types) == {"WebSite", "BreadcrumbList", "Product", "Offer", "Event"} - {
        "Offer"
    }
    audits = {a.id: a for a in rep.audits}
    assert audits["schema-breadcrumblist"].result.value == "pass"
    assert audits["schema-product"].result.value == "warning"  # has offers; image/description recommended
    assert audits["schema-event"].result.value == "fail"
    assert "missing startDate, location" in audits["schema-event"].evidence[0]


@pytest.mark.parametrize(
    ("kind", "good", "bad", "missing"),
    [
        (
            "Article",
            '"headline":"H","image":"i","datePublished":"2026-01-01","author":{"name":"A"}',
            '"image":"i"',
            "headline",
        ),
        ("BlogPosting", '"headline":"H","image":"i","datePublished":"2026","author":"A"', '"author":"A"', "headline"),
        (
            "Product",
            '"name":"P","offers":{"price":"1"},"image":"i","description":"d"',
            '"name":"P"',
            "offers or review or aggregateRating",
        ),
        (
            "FAQPage",
            '"mainEntity":[{"@type":"Question","name":"Q","acceptedAnswer":{"text":"A"}}]',
            '"mainEntity":[{"@type":"Question","name":"Q"}]',
            "question 1 has no acceptedAnswer.text",
        ),
        (
            "BreadcrumbList",
            '"itemListElement":[{"position":1,"name":"Home","item":"https://e.com/"}]',
            '"itemListElement":[{"name":"Home"}]',
            "breadcrumb 1 lacks position or name",
        ),
        ("Organization", '"name":"O","url":"https://o","logo":"https://o/l.png"', '"url":"https://o"', "name"),
        ("Restaurant", '"name":"R","address":"1 Road","telephone":"1","url":"u"', '"name":"R"', "address"),
        (
            "Event",
            '"name":"E","startDate":"2026","location":"L","endDate":"2026","image":"i","description":"d"',
            '"name":"E","startDate":"2026"',
            "location",
        ),
        (
            "Recipe",
            '"name":"R","image":"i","recipeIngredient":["x"],"recipeInstructions":"y","author":"a"',
            '"name":"R"',
            "image",
        ),
        ("HowTo", '"name":"H","step":[{"text":"s"}],"image":"i","totalTime":"PT1M"', '"name":"H"', "step"),
    ],
)
def test_rich_result_essentials(kind: str, good: str, bad: str, missing: str) -> None:
    family = {"BlogPosting": "article", "Restaurant": "localbusiness"}.get(kind, kind.lower())
    assert result(page(ld(f'{{"@type":"{kind}",{good}}}')), f"schema-{family}") == "pass"
    failed = audit(page(ld(f'{{"@type":"{kind}",{bad}}}')), f"schema-{family}")
    assert failed.result.value == "fail"
    assert missing in failed.evidence[0]
    assert failed.fix
    assert result(page(), f"schema-{family}") == "not_applicable"


# --- sharing --------------------------------------------------------------------------------------------


def test_open_graph_and_twitter_card() -> None:
    full = (
        '<meta property="og:title" content="Espresso machine"><meta property="og:description" content="15 bar">'
        '<meta property="og:image" content="https://cdn.example.com/e.jpg"><meta property="og:url" content="'
        + URL
        + '">'
        '<meta property="og:type" content="product"><meta name="twitter:card" content="summary_large_image">'
    )
    rep = report(page("<title>Page title</title>" + full))
    sharing = [a for a in rep.audits if a.category is AuditCategory.SHARING]
    assert {a.result.value for a in sharing} == {"pass"} and len(sharing) == 6
    assert rep.facts.preview.title == "Espresso machine"
    assert rep.facts.preview.image == "https://cdn.example.com/e.jpg"
    bare = report(page("<title>Page title</title><meta name=description content='About espresso'>"))
    found = {a.id: a.result.value for a in bare.audits}
    assert found["og-title"] == "fail" and found["og-image"] == "fail"
    assert found["og-description"] == "warning" and found["twitter-card"] == "warning"
    # What a share would show anyway: the page's own title and description.
    assert bare.facts.preview.title == "Page title" and bare.facts.preview.description == "About espresso"
    relative = audit(page('<meta property="og:image" content="/e.jpg">'), "og-image")
    assert relative.result.value == "warning" and "absolute" in (relative.fix or "")
    assert result(page('<meta name="twitter:card" content="huge">'), "twitter-card") == "fail"


# --- links and content ----------------------------------------------------------------------------------


def test_generic_link_text_in_the_page_language() -> None:
    assert result(page(body='<a href="/pricing">Pricing for teams</a>'), "link-text") == "pass"
    a = audit(page(body='<a href="/more">Read more »</a><a href="/x">Click here</a>'), "link-text")
    assert a.result.value == "fail"
    assert a.evidence == ['"Read more »" → /more', '"Click here" → /x']
    # German phrases count on a German page, not on an English one.
    assert result(page(body='<a href="/x">Weiterlesen</a>', lang="de"), "link-text") == "fail"
    assert result(page(body='<a href="/x">Weiterlesen</a>', lang="en"), "link-text") == "pass"
    assert result(page(), "link-text") == "not_applicable"


def test_uncrawlable_anchors() -> None:
    assert result(page(body='<a href="/a">A</a><a name="top">anchor target</a>'), "crawlable-anchors") == "pass"
    for bad in (
        '<a href="javascript:void(0)">Open</a>',
        '<a href="#">Menu</a>',
        '<a href="">Empty</a>',
        '<a onclick="go()">Go</a>',
    ):
        assert result(page(body=bad), "crawlable-anchors") == "fail", bad


def test_main_content_and_readability() -> None:
    plain = "The cat sat on the mat. It was warm. " * 30
    hard = (
        "Notwithstanding considerable methodological heterogeneity, contemporaneous epidemiological "
        "investigations consistently demonstrate statistically significant associations between "
        "socioeconomic deprivation and cardiovascular morbidity, particularly among institutionalised "
        "octogenarians experiencing multidimensional vulnerability. "
    ) * 10
    nav = "<nav>" + " ".join(f'<a href="/n{i}">Section {i}</a>' for i in range(50)) + "</nav>"
    easy = report(page(body=f"{nav}<article><h1>Cats</h1><p>{plain}</p></article>"))
    assert {a.id: a for a in easy.audits}["readability"].result.value == "pass"
    assert "Section" not in page_facts(page(body=f"{nav}<article><p>{plain}</p></article>"), URL).main_text
    assert easy.facts.main_content_words == 30 * 9 + 1  # the paragraph and the h1, not the nav
    assert result(page(body=f"<article><p>{hard}</p></article>"), "readability") == "warning"
    assert result(page(body="<p>Too short.</p>"), "readability") == "not_applicable"


def test_viewport_and_mixed_content() -> None:
    assert result(page('<meta name="viewport" content="width=device-width, initial-scale=1">'), "viewport") == "pass"
    assert result(page(), "viewport") == "fail"
    assert result(page('<meta name="viewport" content="width=1024">'), "viewport") == "warning"
    body = '<img src="http://cdn.example.com/a.png"><script src="https://cdn.example.com/a.js"></script>'
    mixed = audit(page('<link rel="stylesheet" href="http://cdn.example.com/a.css">', body), "mixed-content")
    assert mixed.result.value == "fail"
    assert mixed.evidence == [
        "<img src=http://cdn.example.com/a.png>",
        "<link rel=stylesheet href=http://cdn.example.com/a.css>",
    ]
    assert result(page(body=body), "mixed-content", url="http://shop.example.com/") == "not_applicable"
    assert result(page(body='<img src="https://cdn.example.com/a.png">'), "mixed-content") == "pass"


# --- the rule insights, folded in -----------------------------------------------------------------------


def test_rule_insights_become_audits() -> None:
    teaser = Teaser(title="Hi", description=None, h1_count=2, word_count=40)
    lab = Performance(html_bytes=600 * 1024, compression="gzip", ttfb_ms=100.0, render_blocking=0, redirects=0)
    insights = [i.to_json() for i in rule_insights(teaser, lab, [], kind="url")]
    found = {a.id: a for a in report(page(), insights=insights, performance=lab.to_json()).audits}
    assert found["document-title"].result.value == "fail"
    assert "The title is 2 characters" in found["document-title"].evidence[0]
    assert found["meta-description"].result.value == "fail"
    assert found["h1"].result.value == "warning"  # several h1s: a low-severity rule
    assert found["content-length"].result.value == "fail"
    assert found["image-alt"].result.value == "pass"
    assert found["html-size"].result.value == "fail"
    assert found["compression"].result.value == "pass"
    assert all(a.fix for a in found.values() if a.result.value in ("fail", "warning"))
    no_lab = {a.id: a for a in report(page(), insights=[]).audits}
    assert no_lab["html-size"].result.value == "not_applicable"


# --- the report: stable ids, order, scores --------------------------------------------------------------


def test_report_is_ordered_and_scored() -> None:
    rep = report(page(), site=ROBOTS_OK)
    ids = [a.id for a in rep.audits]
    assert len(ids) == len(set(ids))
    order = {"fail": 0, "warning": 1, "pass": 2, "not_applicable": 3}
    assert [order[a.result.value] for a in rep.audits] == sorted(order[a.result.value] for a in rep.audits)
    categories = {c.category: c for c in rep.categories}
    assert set(categories) == set(AuditCategory)
    assert rep.score is not None and 0 <= rep.score <= 100
    assert all(c.score is None or 0 <= c.score <= 100 for c in rep.categories)
    assert categories[AuditCategory.PERFORMANCE].score is None  # no lab facts: nothing to weigh
    # Every evidence line is capped.
    long = report(page(body=f'<a href="/{"x" * 5000}">click here</a>'))
    assert all(len(e) <= 300 for a in long.audits for e in a.evidence)
    # camelCase on the wire
    wire = rep.to_json()
    assert "notApplicable" not in wire and "structuredDataTypes" in wire["facts"]
    assert AuditReport.model_validate(wire) == rep


def test_the_readme_names_every_audit() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    ids = {a.id for a in report(page(), site=ROBOTS_OK, performance={}).audits}
    assert len(ids) > 40
    assert sorted(i for i in ids if f"`{i}`" not in readme) == []


def test_readability_index_counts_as_textstat_does() -> None:
    import textstat  # the reference; the worker itself never imports it (nltk, scipy, scikit-learn)

    from bench.real_pages import doc_pages

    texts = [
        "",
        "   ",
        "?!",
        "One two.",
        "Don't stop. It's 'quoted' text, isn't it? Yes! e.g. Fig. 3 shows -- well -- nothing.",
        "The cat sat on the mat. It was warm. " * 30,
        "Ünïcödé wörds, naïve café. Straße & co. 100% → 3.5 x 2.",
    ]
    texts += [page_facts(p.body, URL).main_text for p in doc_pages()[:40:4]]
    for text in texts:
        assert automated_readability_index(text) == pytest.approx(textstat.automated_readability_index(text)), text


def test_evidence_lines_carry_no_controls() -> None:
    """A page's canonical URL or title with escape sequences must not reach a terminal through the
    audit's evidence: controls and bidi overrides become spaces."""
    line = cap_text("http://other.example/\x1b]52;c;cHduZWQ=\x1b\\\u202egnp.exe\x9b31m end")
    assert line == "http://other.example/ ]52;c;cHduZWQ= \\ gnp.exe 31m end"
