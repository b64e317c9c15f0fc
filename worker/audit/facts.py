"""What the audits read from a page's HTML, gathered in one pass over one lxml tree.

`page_facts` is the CPU-heavy part of the audit: a pure function of (html, url) returning a
picklable value, so it can run in a thread or in a killable child process alike. Everything it
reads is page-controlled, so every list, string and nested structure it keeps is capped, and
no input may make it raise.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import lxml.etree
import lxml.html
import trafilatura

from worker.audit.structured import StructuredData, structured_data
from worker.parse import count_words

logger = logging.getLogger("pagelens.worker")
# trafilatura logs a warning for every page whose main text it finds too short: routine here.
logging.getLogger("trafilatura").setLevel(logging.ERROR)

TEXT_CHARS = 300  # a tag value or link text kept
URL_CHARS = 2048
ANCHORS_KEPT = 2_000
HREFLANGS_KEPT = 300
CANONICALS_KEPT = 10
INSECURE_KEPT = 20
MAIN_TEXT_CHARS = 1_000_000  # main text handed on to keyphrases and readability
# trafilatura's cost grows faster than the page (about a second per megabyte of HTML): larger
# pages keep the PARSE stage's own main text instead.
MAIN_CONTENT_MAX_HTML = 500_000

# Elements whose URL the browser loads as part of the page (mixed content when http on https).
_SUBRESOURCES = (
    ("img", "src"),
    ("script", "src"),
    ("iframe", "src"),
    ("video", "src"),
    ("audio", "src"),
    ("source", "src"),
    ("embed", "src"),
    ("object", "data"),
)


@dataclass(frozen=True)
class Anchor:
    text: str  # visible text, else aria-label/title/img alt; "" when none
    href: str | None  # as written; None when the attribute is absent
    has_onclick: bool


@dataclass(frozen=True)
class PageFacts:
    title: str | None = None
    description: str | None = None
    html_lang: str | None = None  # <html lang> as written
    viewport: str | None = None
    meta_robots: list[tuple[str, str]] = field(default_factory=list)  # (meta name, content) for robots/bot names
    canonicals: list[str] = field(default_factory=list)  # hrefs as written
    base_href: str | None = None
    open_graph: dict[str, str] = field(default_factory=dict)  # og:* -> first value
    twitter: dict[str, str] = field(default_factory=dict)  # twitter:* -> first value
    hreflangs: list[tuple[str, str]] = field(default_factory=list)  # (hreflang, href)
    anchors: list[Anchor] = field(default_factory=list)
    anchors_total: int = 0
    insecure_subresources: list[str] = field(default_factory=list)  # http: URLs the page loads
    insecure_total: int = 0
    structured: StructuredData = field(default_factory=StructuredData)
    main_text: str = ""  # main content without navigation, bylines or comments (trafilatura)
    main_words: int = 0
    main_text_skipped: bool = False  # the HTML was too large to extract the main content from
    parsed: bool = True  # False when the HTML could not be read at all


def _line(value: str | None, limit: int = TEXT_CHARS) -> str | None:
    if value is None:
        return None
    flat = " ".join(value.split())[:limit]
    return flat or None


def page_facts(html: str, url: str) -> PageFacts:
    """Every fact the audits need from the page; an unreadable page gives empty facts."""
    try:
        parser = lxml.html.HTMLParser(encoding="utf-8", remove_comments=True)
        tree = lxml.html.document_fromstring(html.encode("utf-8", "replace"), parser=parser)
    except (lxml.etree.LxmlError, ValueError):
        return PageFacts(parsed=False)
    metas = _metas(tree)
    structured = structured_data(tree, html, url)
    anchors, anchors_total = _anchors(tree)
    insecure, insecure_total = _insecure(tree, url)
    facts = PageFacts(
        title=_line(tree.findtext(".//title")),
        description=_line(metas.get("description")),
        html_lang=_line(tree.get("lang") or tree.get("{http://www.w3.org/XML/1998/namespace}lang"), 100),
        viewport=_line(metas.get("viewport")),
        meta_robots=_meta_robots(tree),
        canonicals=_link_hrefs(tree, "canonical")[:CANONICALS_KEPT],
        base_href=_line(_first_attr(tree, "//base[@href]", "href"), URL_CHARS),
        open_graph={k: v for k, v in metas.items() if k.startswith("og:")},
        twitter={k: v for k, v in metas.items() if k.startswith("twitter:")},
        hreflangs=_hreflangs(tree),
        anchors=anchors,
        anchors_total=anchors_total,
        insecure_subresources=insecure,
        insecure_total=insecure_total,
        structured=structured,
    )
    if len(html) > MAIN_CONTENT_MAX_HTML:
        return replace(facts, main_text_skipped=True)
    # Last: trafilatura prunes the tree it is given.
    main_text = _main_text(tree, url)
    words = count_words(main_text)  # counted as the teaser counts words
    return replace(facts, main_text=main_text, main_words=words)


def _first_attr(tree: lxml.html.HtmlElement, xpath: str, attr: str) -> str | None:
    found = tree.xpath(xpath)
    return found[0].get(attr) if found else None


def _metas(tree: lxml.html.HtmlElement) -> dict[str, str]:
    """First non-empty content of each meta name/property, keyed in lower case."""
    values: dict[str, str] = {}
    for meta in tree.iter("meta"):
        key = (meta.get("property") or meta.get("name") or "").strip().lower()[:100]
        content = _line(meta.get("content"), URL_CHARS)
        if key and content and key not in values:
            values[key] = content
    return values


def _meta_robots(tree: lxml.html.HtmlElement) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for meta in tree.iter("meta"):
        name = (meta.get("name") or "").strip().lower()
        content = _line(meta.get("content"))
        if content and (name == "robots" or name.endswith("bot")) and len(found) < 20:
            found.append((name[:50], content))
    return found


def _link_hrefs(tree: lxml.html.HtmlElement, rel: str) -> list[str]:
    hrefs = []
    for link in tree.iter("link"):
        if rel in (link.get("rel") or "").lower().split() and link.get("href") is not None:
            hrefs.append(_line(link.get("href"), URL_CHARS) or "")
    return hrefs


def _hreflangs(tree: lxml.html.HtmlElement) -> list[tuple[str, str]]:
    found = []
    for link in tree.iter("link"):
        if "alternate" in (link.get("rel") or "").lower().split() and link.get("hreflang") is not None:
            found.append((_line(link.get("hreflang"), 50) or "", _line(link.get("href"), URL_CHARS) or ""))
            if len(found) == HREFLANGS_KEPT:
                break
    return found


def _anchors(tree: lxml.html.HtmlElement) -> tuple[list[Anchor], int]:
    kept: list[Anchor] = []
    total = 0
    for anchor in tree.iter("a"):
        total += 1
        if len(kept) == ANCHORS_KEPT:
            continue
        # Anchors cannot nest, so reading each one's text reads the document at most once.
        text = _line(anchor.text_content(), TEXT_CHARS)
        if not text:
            labels = [anchor.get("aria-label"), anchor.get("title")]
            labels += [img.get("alt") for img in anchor.iter("img")][:3]
            text = next((t for t in (_line(v) for v in labels) if t), "")
        href = anchor.get("href")
        written = (_line(href, URL_CHARS) or "") if href is not None else None
        kept.append(Anchor(text or "", written, "onclick" in anchor.attrib))
    return kept, total


def _insecure(tree: lxml.html.HtmlElement, url: str) -> tuple[list[str], int]:
    if not url.lower().startswith("https:"):
        return [], 0
    found: list[str] = []
    total = 0
    for tag, attr in _SUBRESOURCES:
        for node in tree.iter(tag):
            value = (node.get(attr) or "").strip()
            if value.lower().startswith("http:"):
                total += 1
                if len(found) < INSECURE_KEPT:
                    found.append(f"<{tag} {attr}={value[:URL_CHARS]}>")
    for link in tree.iter("link"):
        rel = (link.get("rel") or "").lower().split()
        href = (link.get("href") or "").strip()
        if ("stylesheet" in rel or "icon" in rel or "preload" in rel) and href.lower().startswith("http:"):
            total += 1
            if len(found) < INSECURE_KEPT:
                found.append(f"<link rel={' '.join(rel)} href={href[:URL_CHARS]}>")
    return found, total


def _main_text(tree: lxml.html.HtmlElement, url: str) -> str:
    try:
        text = trafilatura.extract(
            tree,
            url=url,
            include_comments=False,
            include_tables=True,
            include_images=False,
            include_links=False,
            deduplicate=False,
            with_metadata=False,
        )
    except Exception:  # a third-party parser on hostile input: no text rather than a failed scan
        logger.warning("main content extraction failed", exc_info=True)
        return ""
    return (text or "")[:MAIN_TEXT_CHARS]
