"""PARSE stage: facts from the two hand-written pages, the teaser JSON, and robustness on hostile input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.parse import (
    ALT_SAMPLES_KEPT,
    DESCRIPTION_MAX,
    EXCERPT_CHARS,
    HEADING_MAX,
    HEADINGS_KEPT,
    TITLE_MAX,
    URL_MAX,
    ParsedPage,
    build_teaser,
    count_words,
    document_teaser,
    excerpt,
    parse_html,
)

PAGES = Path(__file__).parent / "pages"
ARTICLE_URL = "https://greenfold.example/blog/home-composting-guide?utm_source=newsletter"
PRODUCT_URL = "https://shop.example.com/espresso/barista-pro-stainless"


@pytest.fixture(scope="module")
def article() -> ParsedPage:
    return parse_html((PAGES / "article.html").read_text(encoding="utf-8"), ARTICLE_URL)


@pytest.fixture(scope="module")
def product() -> ParsedPage:
    return parse_html((PAGES / "product.html").read_text(encoding="utf-8"), PRODUCT_URL)


def parse(body: str, head: str = "", base_url: str = "https://site.example/dir/page") -> ParsedPage:
    return parse_html(f"<!doctype html><html><head>{head}</head><body>{body}</body></html>", base_url)


# --- the article page --------------------------------------------------------------------------------


def test_article_head_facts(article: ParsedPage) -> None:
    assert article.title == "How to Compost at Home: A Beginner's Guide to Healthier Soil | Greenfold Gardens"
    assert article.description is not None
    assert article.description.startswith("Turn kitchen scraps and garden waste into rich compost.")
    # Written relative in the page; the tracking query of the fetched URL must not leak into it.
    assert article.canonical == "https://greenfold.example/blog/home-composting-guide"
    assert article.language == "en"


def test_article_heading_outline(article: ParsedPage) -> None:
    assert article.headings == [
        (1, "How to Compost at Home: Turn Scraps into Healthy Soil"),
        (2, "Why compost matters for soil health"),
        (2, "Greens and browns: getting the balance right"),
        (3, "What counts as green"),
        (3, "What counts as brown"),
        (2, "Choosing a bin or a heap"),
        (2, "Bringing in the worms"),
        (2, "Troubleshooting a slow or smelly pile"),
        (2, "Using finished compost"),
        (2, "About the author"),
        (2, "Popular posts"),
        (3, "Join the newsletter"),
    ]


def test_article_main_text_is_the_article(article: ParsedPage) -> None:
    text = article.main_text
    assert 900 <= article.word_count <= 1100
    assert article.word_count == count_words(text)
    for term in ("compost", "soil", "nitrogen", "worms", "Red wigglers", "microbes"):
        assert term in text
    # The article's own <header> holds its H1 and byline: content, not page chrome.
    assert text.startswith("How to Compost at Home: Turn Scraps into Healthy Soil\nBy Maya Ortiz")
    # Headings and paragraphs each get their own line; inline links stay inside their sentence.
    assert "\nWhy compost matters for soil health\nHealthy soil is alive." in text
    assert "read more about testing your soil before and after" in text


@pytest.mark.parametrize(
    "boilerplate",
    [
        "Skip to content",  # skip link, outside <main>
        "Search the site",  # search form in the site header
        "About us",  # primary nav
        "newsletter",  # sidebar <aside> and its form
        "Popular posts",
        "Subscribe",
        "Privacy policy",  # site footer
        "Sitemap",
        "All rights reserved",
        "helpline",
        "dataLayer",  # inline script
        "--leaf",  # inline style
        "BlogPosting",  # JSON-LD
    ],
)
def test_article_main_text_excludes_boilerplate(article: ParsedPage, boilerplate: str) -> None:
    assert boilerplate.lower() not in article.main_text.lower()


def test_article_links_and_images(article: ParsedPage) -> None:
    # 11 internal: 5 nav, ../guides/soil-testing, the www. shop link, worm-farm-basics (twice, once with
    # #comments), leaf-mould, privacy, sitemap; "/" repeats. mailto:, javascript:, tel:, "#content" and
    # an <a> without href are not links to pages.
    assert (article.internal_links, article.external_links) == (11, 4)
    assert article.images == 7
    assert article.images_without_alt_count == 3
    assert article.images_without_alt == [
        "https://greenfold.example/blog/images/layered-pile.jpg",  # relative to the page's directory
        "https://greenfold.example/images/red-wigglers.jpg",
        "https://greenfold.example/assets/img/carbon-neutral-badge.png",
    ]


def test_article_resource_counts(article: ParsedPage) -> None:
    assert article.scripts == 6  # 5 in head (incl. inline and JSON-LD) + 1 at the end of body
    assert article.stylesheets == 5  # 4 <link rel=stylesheet> (print and alternate included) + 1 <style>
    assert article.render_blocking == 3  # main.css, the media=all font sheet, theme.js


# --- the product page --------------------------------------------------------------------------------


def test_product_head_facts(product: ParsedPage) -> None:
    # The <title> spans three lines in the source and holds an entity.
    title = "Brewline Barista Pro Stainless Steel Espresso Machine \u2013 15 Bar, Steam Wand | Brewline Coffee Co."
    assert product.title == title
    assert product.description is None  # only og:description, which is not the meta description
    assert product.canonical == PRODUCT_URL
    assert product.language == "en-GB"  # no <html lang>: falls back to http-equiv Content-Language


def test_product_has_two_h1s_in_order(product: ParsedPage) -> None:
    assert [text for level, text in product.headings if level == 1] == [
        "Brewline Coffee Co.",  # the logo <h1> holds only an image: its alt names it
        "Brewline Barista Pro Stainless Steel Espresso Machine",
    ]
    assert [level for level, _ in product.headings] == [1, 1, 2, 2, 2, 3, 3, 3, 3, 2, 3, 3]
    assert product.headings[-3:] == [(2, "Related products"), (3, "Customer service"), (3, "Company")]


def test_product_main_text(product: ParsedPage) -> None:
    text = product.main_text
    assert 650 <= product.word_count <= 850
    assert "stainless steel" in text and "espresso" in text and "steam wand" in text
    assert "£449.00 £529.00" in text
    # Table cells are separated by a space, rows by lines.
    assert "\nWeight 8.4 kg\n" in text
    assert "\nCustomer reviews\nCafé quality at home\n" in text


@pytest.mark.parametrize(
    "boilerplate",
    [
        "FREESHIP",  # promo bar
        "Wishlist",  # site nav
        "Kitchen Appliances",  # breadcrumbs <nav> inside <main>
        "Add to basket",  # the buy <form>
        "Quantity",
        "Knock Box",  # related products <aside>
        "Related products",
        "Warranty claims",  # footer
        "Careers",
        "VAT number",
        "newsletter",
        "querySelectorAll",  # inline script
    ],
)
def test_product_main_text_excludes_boilerplate(product: ParsedPage, boilerplate: str) -> None:
    assert boilerplate.lower() not in product.main_text.lower()


def test_product_links_images_and_resources(product: ParsedPage) -> None:
    assert (product.internal_links, product.external_links) == (15, 2)
    assert (product.images, product.images_without_alt_count) == (9, 5)
    assert product.images_without_alt[0] == "https://shop.example.com/media/products/barista-pro/side.jpg"
    assert product.images_without_alt[-1] == "https://shop.example.com/media/products/knock-box/thumb.jpg"
    assert (product.scripts, product.stylesheets, product.render_blocking) == (9, 6, 4)


# --- teaser JSON -------------------------------------------------------------------------------------

TEASER_KEYS = {
    "url",
    "title",
    "description",
    "canonical",
    "language",
    "headings",
    "h1Count",
    "wordCount",
    "links",
    "images",
    "excerpt",
}


def teaser_json_of(page: ParsedPage, url: str) -> dict[str, Any]:
    return build_teaser(page, url).to_json()


def document_teaser_json(text: str, title: str | None) -> dict[str, Any]:
    return document_teaser(text, title).to_json()


def assert_teaser_shape(teaser: dict[str, object]) -> None:
    assert set(teaser) == TEASER_KEYS
    assert isinstance(teaser["links"], dict) and set(teaser["links"]) == {"internal", "external"}
    assert isinstance(teaser["images"], dict) and set(teaser["images"]) == {"total", "withoutAlt", "withoutAltSamples"}
    assert isinstance(teaser["headings"], list)
    assert all(isinstance(h, dict) and set(h) == {"level", "text"} for h in teaser["headings"])


def test_teaser_json_of_product(product: ParsedPage) -> None:
    teaser = teaser_json_of(product, PRODUCT_URL)
    assert_teaser_shape(teaser)
    assert teaser["url"] == PRODUCT_URL
    assert teaser["title"] == product.title and teaser["description"] is None
    assert teaser["h1Count"] == 2
    assert teaser["headings"][1] == {"level": 1, "text": "Brewline Barista Pro Stainless Steel Espresso Machine"}
    assert teaser["wordCount"] == product.word_count
    assert teaser["links"] == {"internal": 15, "external": 2}
    assert teaser["images"]["total"] == 9 and teaser["images"]["withoutAlt"] == 5
    assert teaser["images"]["withoutAltSamples"] == product.images_without_alt


def test_teaser_excerpt_is_the_start_of_main_text(article: ParsedPage) -> None:
    teaser = teaser_json_of(article, ARTICLE_URL)
    assert_teaser_shape(teaser)
    assert teaser["h1Count"] == 1
    text = teaser["excerpt"]
    assert text.endswith("…") and EXCERPT_CHARS - 40 <= len(text) <= EXCERPT_CHARS + 1
    assert "\n" not in text
    flat = " ".join(article.main_text.split())
    assert flat.startswith(text.removesuffix("…"))
    assert flat[len(text) - 1] == " "  # cut at a word boundary


def test_document_teaser_has_the_same_shape() -> None:
    text = "Quarterly report\n\n  Revenue grew\tby 12%.\x07 Costs fell. " + "More detail follows. " * 40
    teaser = document_teaser_json(text, "  Q3\nreport\x1b ")
    assert_teaser_shape(teaser)
    assert teaser["url"] is None and teaser["title"] == "Q3 report"
    assert (teaser["description"], teaser["canonical"], teaser["language"]) == (None, None, None)
    assert (teaser["headings"], teaser["h1Count"]) == ([], 0)
    assert teaser["links"] == {"internal": 0, "external": 0}
    assert teaser["images"] == {"total": 0, "withoutAlt": 0, "withoutAltSamples": []}
    assert teaser["wordCount"] == 2 + 3 + 1 + 2 + 3 * 40  # "12" is a word too
    assert teaser["excerpt"].startswith("Quarterly report Revenue grew by 12%. Costs fell. More detail")
    assert teaser["excerpt"].endswith("…")


def test_document_teaser_survives_hostile_text() -> None:
    teaser = document_teaser_json("\ud800 lone surrogate \x00\u202e", None)
    assert teaser["title"] is None
    assert teaser["excerpt"] == "? lone surrogate"
    assert document_teaser_json("", "")["excerpt"] == ""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ""),
        ("short   and\nsweet", "short and sweet"),
        ("word " * 100, ("word " * 60).strip() + "…"),  # 60 words = 299 chars; the 61st would pass 300
        ("x" * 1000, "x" * 300 + "…"),  # no boundary to cut at
        (" " * 5000 + "after a long gap", "after a long gap"),
    ],
)
def test_excerpt(text: str, expected: str) -> None:
    assert excerpt(text) == expected


# --- focused cases -----------------------------------------------------------------------------------


def test_relative_urls_resolve_against_base_url() -> None:
    page = parse(
        '<a href="sibling">a</a><a href="../up">b</a><a href="//cdn.example/x">c</a><img src="img/x.png">',
        head='<link rel="Canonical Alternate" href="  ./page?b=1  ">',
    )
    assert page.canonical == "https://site.example/dir/page?b=1"
    assert (page.internal_links, page.external_links) == (2, 1)
    assert page.images_without_alt == ["https://site.example/dir/img/x.png"]


def test_base_href_moves_link_resolution_but_not_the_host() -> None:
    page = parse('<a href="a">1</a><a href="/b">2</a>', head='<base href="https://other.example/root/">')
    # Both resolve onto other.example, which is not the page's host.
    assert (page.internal_links, page.external_links) == (0, 2)


@pytest.mark.parametrize(
    ("href", "internal", "external"),
    [
        ("#section", 0, 0),
        ("mailto:a@b.example", 0, 0),
        ("JavaScript:alert(1)", 0, 0),
        ("java\tscript:alert(1)", 0, 0),
        ("tel:+441234", 0, 0),
        ("data:text/html,hi", 0, 0),
        ("ftp://site.example/file", 0, 0),
        ("http://[::1", 0, 0),  # malformed IPv6 host: ignored, not raised
        ("https://www.site.example/x", 1, 0),  # www. is the same site
        ("HTTPS://SITE.EXAMPLE/y", 1, 0),
        ("https://sub.site.example/", 0, 1),
        ("page#frag", 1, 0),
    ],
)
def test_link_classification(href: str, internal: int, external: int) -> None:
    page = parse(f'<a href="{href}">x</a>')
    assert (page.internal_links, page.external_links) == (internal, external)


def test_links_are_counted_once_per_target() -> None:
    page = parse('<a href="/a">1</a><a href="/a#top">2</a><a href="https://site.example/a">3</a><a href="/b">4</a>')
    assert page.internal_links == 2


@pytest.mark.parametrize("base_url", ["", "not a url", "http://[::1", "mailto:x@y.example"])
def test_unusable_base_url_never_raises(base_url: str) -> None:
    page = parse('<a href="/rel">r</a><a href="https://abs.example/">a</a>', base_url=base_url)
    assert (page.internal_links, page.external_links) == (0, 1)  # relative links cannot be resolved


@pytest.mark.parametrize(
    ("head", "html_attrs", "expected"),
    [
        ("", ' lang="fr-CA"', "fr-CA"),
        ('<meta http-equiv="content-language" content="de, en">', "", "de"),
        ('<meta http-equiv="content-language" content="de">', ' lang=" "', "de"),
        ("", "", None),
    ],
)
def test_language(head: str, html_attrs: str, expected: str | None) -> None:
    page = parse_html(f"<html{html_attrs}><head>{head}</head><body>x</body></html>", "https://a.example/")
    assert page.language == expected


def test_title_ignores_svg_titles_and_is_cleaned() -> None:
    page = parse("<svg><title>icon</title></svg><p>x</p>", head="<title>\u202eReal\x07 \n title</title>")
    assert page.title == "Real title"
    assert parse("<svg><title>icon</title></svg>").title is None


def test_user_controlled_values_are_capped() -> None:
    long = "a" * 10_000
    page = parse(
        f"<h2>{long}</h2>",
        head=f'<title>{long}</title><meta name="description" content="{long}">'
        f'<link rel="canonical" href="https://site.example/{long}">',
    )
    assert page.title is not None and len(page.title) == TITLE_MAX
    assert page.description is not None and len(page.description) == DESCRIPTION_MAX
    assert page.canonical is not None and len(page.canonical) == URL_MAX
    assert len(page.headings[0][1]) == HEADING_MAX


def test_canonical_must_be_http() -> None:
    assert parse("", head='<link rel="canonical" href="javascript:alert(1)">').canonical is None
    assert parse("", head='<link rel="canonical">').canonical is None


def test_headings_are_capped_and_flattened() -> None:
    page = parse("<h1>Main<br>title <small>sub</small></h1><h4></h4>" + "<h6>n</h6>" * 200)
    assert page.headings[:2] == [(1, "Main title sub"), (4, "")]
    assert len(page.headings) == HEADINGS_KEPT


def test_images_without_alt() -> None:
    body = (
        '<img src="/a.png" alt=""><img src="/b.png" alt><img src="/c.png"><img src="/c.png">'
        '<img src="data:image/gif;base64,R0lGOD"><img data-src="/lazy.png"><img>'
    )
    page = parse(body + '<img src="/many.png">' * 5 + "".join(f'<img src="/{i}.png">' for i in range(30)))
    # Empty and bare alt are present (decorative); the rest count, duplicates sampled once.
    assert page.images == 42
    assert page.images_without_alt_count == 40
    assert page.images_without_alt[:4] == [
        "https://site.example/c.png",
        "data:image/gif;base64,R0lGOD",
        "https://site.example/lazy.png",
        "https://site.example/many.png",
    ]
    assert len(page.images_without_alt) == ALT_SAMPLES_KEPT


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("<header>Banner</header><main>Main <aside>ad</aside></main><p>outside</p>", "Main"),
        ('<div role="main">Role</div><p>outside</p>', "Role"),
        # One article with nested comment articles is the content; a listing of several is read whole.
        ("<p>x</p><article>Post<article>Comment</article></article>", "Post\nComment"),
        ("<article>One</article><article>Two</article><p>three</p>", "One\nTwo\nthree"),
        ("<header>Site</header><p>Body</p><footer>Foot</footer>", "Body"),
        ("<section><header>Section head</header><p>Body</p></section>", "Section head\nBody"),
        ("<p>a<script>s()</script><style>p{}</style><noscript>ns</noscript><template>t</template>b</p>", "ab"),
        ("<p>a<svg><text>svg</text></svg><iframe>f</iframe>b</p><nav>n</nav><form>f</form>", "ab"),
        ("<p hidden>secret</p><p>shown <span hidden>no</span>yes</p>", "shown yes"),
        ("<table><tr><td>a</td><td>b</td></tr><tr><th>c</th></tr></table>", "a b\nc"),
        ("<p>one\n   line</p><p>two</p>", "one line\ntwo"),
    ],
)
def test_main_text(body: str, expected: str) -> None:
    assert parse(body).main_text == expected


def test_word_count_is_unicode_aware() -> None:
    assert count_words("Grüße aus Köln — don't stop, 3.5 Äpfel!") == 8  # "3.5" is two runs of digits
    assert count_words("Привет мир") == 2


# --- robustness --------------------------------------------------------------------------------------


def check_invariants(page: ParsedPage) -> None:
    assert page.title is None or 0 < len(page.title) <= TITLE_MAX
    assert page.description is None or 0 < len(page.description) <= DESCRIPTION_MAX
    assert page.canonical is None or page.canonical.startswith(("http://", "https://"))
    assert len(page.headings) <= HEADINGS_KEPT
    assert all(1 <= level <= 6 and len(text) <= HEADING_MAX for level, text in page.headings)
    assert len(page.images_without_alt) <= min(ALT_SAMPLES_KEPT, page.images_without_alt_count)
    assert page.images_without_alt_count <= page.images
    assert min(page.internal_links, page.external_links, page.word_count, page.render_blocking) >= 0
    assert page.render_blocking <= page.scripts + page.stylesheets
    assert "\x00" not in page.main_text and "\x1b" not in page.main_text
    teaser = teaser_json_of(page, "https://x.example/")
    assert_teaser_shape(teaser)
    assert len(teaser["excerpt"]) <= EXCERPT_CHARS + 1


@settings(max_examples=200, deadline=None, database=None)
@given(st.text())
def test_parse_never_raises_on_arbitrary_text(html: str) -> None:
    check_invariants(parse_html(html, "https://x.example/"))


_TAGS = ["html", "head", "body", "title", "main", "article", "p", "div", "h1", "h3", "a", "img", "script", "style"]
_TAGS += ["link", "meta", "table", "td", "svg", "template", "noscript", "nav", "header", "br", "base", "iframe"]
_ATTRS = ["href", "src", "alt", "rel", "lang", "name", "content", "media", "async", "hidden", "role"]
_VALUES = ["", "canonical", "stylesheet", "/x", "//h.example", "http://[::1", "javascript:x", "#f", "print", "main"]
_tag_soup = st.lists(
    st.one_of(
        st.builds("<{}{}>".format, st.sampled_from(_TAGS), st.text(max_size=3)),
        st.builds("</{}>".format, st.sampled_from(_TAGS)),
        st.builds(' {}="{}"'.format, st.sampled_from(_ATTRS), st.one_of(st.sampled_from(_VALUES), st.text(max_size=8))),
        st.sampled_from(["<", ">", "<!--", "-->", "&amp;", "&#0;", "&#xD800;", "<![CDATA[", '"', "'", "="]),
        st.text(max_size=12),
    ),
    max_size=60,
).map("".join)


@settings(max_examples=300, deadline=None, database=None)
@given(_tag_soup, st.sampled_from(["https://x.example/a/b", "", "nonsense", "http://[::1"]))
def test_parse_never_raises_on_tag_soup(html: str, base_url: str) -> None:
    check_invariants(parse_html(html, base_url))


@pytest.mark.parametrize(
    "html",
    [
        "",
        " ",
        "\x00\x01\x02",
        "\ud800<p>\udfff</p>",  # lone surrogates, as left by lossy decoding
        bytes(range(256)).decode("latin-1"),
        (b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40).decode("utf-8", "replace"),
        "<div>" * 5_000 + "deep" + "</div>" * 5_000,
        "<span><b><i>" * 20_000 + "deeper inline",
        "<table>" * 3_000,
        "<p><a href='/x'><img src='y'",  # everything unclosed
        "<script>never closed",
        "<!-- never closed <h1>hidden</h1>",
        '<img src="' + "a" * 1_000_000 + '">',
        "<h1>" + "word " * 1_000_000 + "</h1>",  # 5 MB in a heading
        "<h1><div>" * 150 + "<b>x</b> " * 20_000,  # nested headings, each holding the rest of the page
        "<svg>" + "<g>" * 2_000 + "<title>t</title>" * 2_000,
        "<title></title><h1> </h1><meta name=description content='   '>",
    ],
)
def test_parse_never_raises_on_nasty_input(html: str) -> None:
    check_invariants(parse_html(html, "https://x.example/"))


def test_five_megabytes_of_text_is_counted() -> None:
    page = parse_html("word " * 1_000_000, "https://x.example/")
    assert page.word_count == 1_000_000
    assert page.main_text.count("\n") == 0
