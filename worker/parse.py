"""Turning fetched HTML into page facts (PARSE stage) and the teaser the API serves.

The HTML is parsed once, by lexbor (a browser-grade HTML5 parser), and every fact is read from that
one tree. Everything taken from the page is attacker-controlled, so text is cleaned of control
characters and capped, URLs are resolved and checked, and no input may make parsing raise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import SplitResult, urljoin, urlsplit

from selectolax.lexbor import LexborHTMLParser, LexborNode

from app.core.page_audit import CONTROLS
from app.core.report import Heading, Images, Links, Teaser

TITLE_MAX = 300
DESCRIPTION_MAX = 500
URL_MAX = 2048
LANGUAGE_MAX = 35  # longest sensible BCP 47 tag
HEADING_MAX = 200
HEADINGS_KEPT = 100
# Headings can nest (<h1><div><h2>...), so each one's text is read within a budget; a heading
# holding the rest of the document must not make the outline cost headings x document.
_HEADING_NODES = 1_000
ALT_SAMPLES_KEPT = 20
EXCERPT_CHARS = 300

# Never readable content, wherever it sits (svg/iframe hold markup or nothing, not prose).
_NOT_TEXT = frozenset({"script", "style", "noscript", "template", "svg", "iframe"})
# Page chrome repeated on every page of a site: it would drown the page's own words.
_BOILERPLATE = frozenset({"nav", "aside", "form"})
_MAIN_DROPPED = _NOT_TEXT | _BOILERPLATE
# <header>/<footer> are page chrome (the ARIA banner and contentinfo) only outside sectioning content;
# inside an <article> they hold its title, byline and notes, which are content.
_CHROME = frozenset({"header", "footer"})
_SECTIONING = frozenset({"article", "aside", "main", "nav", "section"})
# Elements that end a line of text; table cells only need a space so "Weight" and "8 kg" don't fuse.
_BLOCKS = frozenset(
    {"address", "article", "blockquote", "br", "caption", "dd", "details", "dialog", "div", "dl", "dt", "fieldset"}
    | {"figcaption", "figure", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "li", "main", "ol", "p", "pre", "section"}
    | {"summary", "table", "tr", "ul"}
)
_CELLS = frozenset({"td", "th"})
_HEADING_LEVELS = {f"h{level}": level for level in range(1, 7)}

_SPACE = re.compile(r"\s+")
# Letters/digits runs; an inner apostrophe keeps "don't" one word.
_WORD = re.compile(r"\w+(?:['\u2019]\w+)*")


@dataclass(frozen=True)
class ParsedPage:
    title: str | None
    description: str | None  # meta name=description
    canonical: str | None  # absolute URL from link rel=canonical
    language: str | None  # <html lang>, else meta http-equiv=content-language
    headings: list[tuple[int, str]]  # (level, text) in document order, at most HEADINGS_KEPT
    word_count: int  # words of main_text
    internal_links: int  # unique http(s) targets on the page's host
    external_links: int
    images: int
    images_without_alt: list[str]  # src samples, at most ALT_SAMPLES_KEPT
    images_without_alt_count: int
    main_text: str  # readable main content, one paragraph per line
    scripts: int  # every <script>, inline or external
    stylesheets: int  # <link rel=stylesheet> + <style>
    render_blocking: int  # see _render_blocking


def parse_html(html: str, base_url: str) -> ParsedPage:
    # Encoding with "replace" turns lone surrogates (from lossy decoding upstream) into "?" instead of raising.
    tree = LexborHTMLParser(html.encode("utf-8", "replace"), scripting=True)
    base_url = base_url if _splittable(base_url) else ""  # a broken base must not stop absolute links resolving
    link_base = _document_base(tree, base_url)
    internal, external = _count_links(tree, link_base, base_url)
    alt_samples, alt_missing = _images_without_alt(tree, link_base)
    main = _main_root(tree)
    main_text = _visible_text(main, _MAIN_DROPPED, drop_chrome=True) if main is not None else ""
    root_lang = tree.root.attrs.get("lang") if tree.root is not None else None
    metas = _meta_values(tree)
    return ParsedPage(
        title=clean_line(_title_text(tree), TITLE_MAX),
        description=clean_line(metas.get("description"), DESCRIPTION_MAX),
        canonical=_canonical(tree, link_base),
        language=clean_line(root_lang, LANGUAGE_MAX) or clean_line(metas.get("content-language"), LANGUAGE_MAX),
        headings=_headings(tree),
        word_count=count_words(main_text),
        internal_links=internal,
        external_links=external,
        images=len(tree.css("img")),
        images_without_alt=alt_samples,
        images_without_alt_count=alt_missing,
        main_text=main_text,
        scripts=len(tree.css("script")),
        stylesheets=sum(1 for link in tree.css("link[rel]") if _is_stylesheet(link)) + len(tree.css("style")),
        render_blocking=_render_blocking(tree),
    )


# --- text -------------------------------------------------------------------------------------------


def clean_line(value: str | None, limit: int) -> str | None:
    """One line of display text: controls removed, whitespace collapsed, at most `limit` chars; None if empty."""
    if value is None:
        return None
    text = " ".join(CONTROLS.sub(" ", value).split())[:limit].rstrip()
    return text or None


def count_words(text: str) -> int:
    return sum(1 for _ in _WORD.finditer(text))


def _visible_text(root: LexborNode, dropped: frozenset[str], *, drop_chrome: bool, max_nodes: int | None = None) -> str:
    """Text under `root`, one block per line, skipping `dropped` subtrees (and page chrome if asked).

    Iterative on purpose: documents nest thousands of levels deep and recursion would overflow. Children
    are reached through first_child/next, never listed, so a budgeted read of a huge subtree stays cheap.
    With `max_nodes`, reading stops after that many nodes (and each text node is cut to that many chars).
    """
    parts: list[str] = []
    budget = max_nodes if max_nodes is not None else -1  # -1 never reaches 0: no limit
    # Unbounded reads look [hidden] up once, in C; bounded ones check the few nodes they visit.
    hidden = {node.mem_id for node in root.css("[hidden]")} if max_nodes is None else None
    # (node, inside sectioning content, go on to its next sibling); a str is a block end to emit.
    stack: list[tuple[LexborNode, bool, bool] | str] = [(root, root.tag != "body", False)]
    while stack and budget != 0:
        budget -= 1
        item = stack.pop()
        if isinstance(item, str):
            parts.append(item)
            continue
        node, sectioned, siblings = item
        if siblings and (sibling := node.next) is not None:
            stack.append((sibling, sectioned, True))
        if node.is_text_node:
            # Newlines in the source are layout, not paragraph breaks: only block ends make lines.
            text = node.text_content or ""
            parts.append(_SPACE.sub(" ", text[:max_nodes] if max_nodes is not None else text))
            continue
        tag = node.tag or ""
        if not node.is_element_node or tag in dropped or (drop_chrome and tag in _CHROME and not sectioned):
            continue
        if (node.mem_id in hidden) if hidden is not None else ("hidden" in node.attrs):
            continue
        separator = "\n" if tag in _BLOCKS else " " if tag in _CELLS else ""
        if separator:
            parts.append(separator)
            stack.append(separator)
        if (child := node.first_child) is not None:
            stack.append((child, sectioned or tag in _SECTIONING, True))
    lines = (" ".join(CONTROLS.sub(" ", line).split()) for line in "".join(parts).split("\n"))
    return "\n".join(line for line in lines if line)


def _main_root(tree: LexborHTMLParser) -> LexborNode | None:
    for selector in ("main", '[role="main"]'):
        if (node := tree.css_first(selector)) is not None:
            return node
    articles = tree.css("article")
    # One article, possibly with nested ones (comments are often <article>s), is the content;
    # several side by side are a listing, better read from the whole body.
    # (A node's css() matches the node itself, so the first article's own count is all of them.)
    if articles and len(articles[0].css("article")) == len(articles):
        return articles[0]
    return tree.body


def _title_text(tree: LexborHTMLParser) -> str | None:
    # The first HTML <title>, as document.title does; an <svg><title> is a tooltip, not the page title.
    # (Set lookups, not an ancestor walk per title: that is quadratic in deeply nested svg.)
    in_svg = {node.mem_id for node in tree.css("svg title")}
    for node in tree.css("title"):
        if node.mem_id not in in_svg:
            return node.text()
    return None


def _headings(tree: LexborHTMLParser) -> list[tuple[int, str]]:
    found = tree.css("h1, h2, h3, h4, h5, h6")[:HEADINGS_KEPT]  # lexbor returns them in document order
    return [(_HEADING_LEVELS.get(node.tag or "", 1), _heading_text(node)) for node in found]


def _heading_text(node: LexborNode) -> str:
    text = _visible_text(node, _NOT_TEXT, drop_chrome=False, max_nodes=_HEADING_NODES)
    if not text.strip():
        # A heading made of an image (a logo in an <h1>) is named by its alt text, as screen readers do.
        text = " ".join(img.attrs.get("alt") or "" for img in node.css("img")[:10])
    return clean_line(text, HEADING_MAX) or ""


def _meta_values(tree: LexborHTMLParser) -> dict[str, str]:
    """First non-empty content of each meta name / http-equiv, keyed in lower case."""
    values: dict[str, str] = {}
    for meta in tree.css("meta[content]"):
        key = (meta.attrs.get("name") or meta.attrs.get("http-equiv") or "").strip().lower()
        content = meta.attrs.get("content") or ""
        if key and content.strip() and key not in values:
            values[key] = content
    # "Content-Language: en, fr" lists several; the first is the primary one.
    if "content-language" in values:
        values["content-language"] = values["content-language"].split(",")[0]
    return values


# --- links and images ------------------------------------------------------------------------------


def absolute_http_url(href: str | None, base: str) -> str | None:
    """`href` resolved against `base` if that yields an http(s) URL with a host, else None."""
    parts = _resolve(href, base)
    return parts.geturl() if parts is not None else None


def _resolve(href: str | None, base: str) -> SplitResult | None:
    if href is None or not (href := href.strip()):
        return None
    try:
        parts = urlsplit(urljoin(base, href))
        host = parts.hostname
    except ValueError:  # e.g. an unbalanced "[" in an IPv6 host
        return None
    if parts.scheme not in ("http", "https") or not host:
        return None
    return parts


def _splittable(url: str) -> bool:
    try:
        urlsplit(url)
    except ValueError:
        return False
    return True


def _host_key(hostname: str | None) -> str:
    # "www." is the same site to a reader; a link from example.com to www.example.com is not external.
    return (hostname or "").removeprefix("www.")


def _document_base(tree: LexborHTMLParser, page_url: str) -> str:
    # Browsers resolve relative URLs against the first <base href>, when there is one.
    base = tree.css_first("base[href]")
    return (absolute_http_url(base.attrs.get("href"), page_url) if base is not None else None) or page_url


def _count_links(tree: LexborHTMLParser, link_base: str, page_url: str) -> tuple[int, int]:
    page_host = _host_key(urlsplit(page_url).hostname)  # page_url is known to split
    # Pages repeat the same href many times; resolving each distinct one once is most of the cost saved.
    hrefs = {anchor.attrs.get("href") or "" for anchor in tree.css("a[href], area[href]")}
    targets: dict[str, str] = {}  # target without fragment -> host key
    for href in hrefs:
        if href.strip().startswith("#"):  # a jump within this page, not a link to a page
            continue
        if (parts := _resolve(href, link_base)) is not None:
            targets[parts._replace(fragment="").geturl()] = _host_key(parts.hostname)  # /a#x, /a#y: one target
    internal = sum(1 for host in targets.values() if page_host and host == page_host)
    return internal, len(targets) - internal


def _canonical(tree: LexborHTMLParser, link_base: str) -> str | None:
    for link in tree.css("link[rel][href]"):
        if "canonical" in _rel_tokens(link):
            url = absolute_http_url(link.attrs.get("href"), link_base)
            return clean_line(url, URL_MAX)
    return None


def _images_without_alt(tree: LexborHTMLParser, link_base: str) -> tuple[list[str], int]:
    # alt="" is present on purpose (a decorative image); only a missing attribute is a defect.
    missing = [img for img in tree.css("img") if "alt" not in img.attrs]
    samples: list[str] = []
    seen: set[str] = set()  # raw srcs already sampled: a repeated image is resolved once
    for img in missing:
        src = img.attrs.get("src") or img.attrs.get("data-src")
        if not src or src in seen:
            continue
        seen.add(src)
        sample = clean_line(absolute_http_url(src, link_base) or src, URL_MAX)  # data: URIs stay as written
        if sample and sample not in samples:
            samples.append(sample)
            if len(samples) == ALT_SAMPLES_KEPT:
                break
    return samples, len(missing)


# --- head resources --------------------------------------------------------------------------------

# Script types a browser executes; any other type (JSON-LD, templates) is inert data.
_JS_TYPES = frozenset({"", "text/javascript", "application/javascript", "application/ecmascript", "text/ecmascript"})


def _rel_tokens(node: LexborNode) -> set[str]:
    return set((node.attrs.get("rel") or "").lower().split())


def _is_stylesheet(link: LexborNode) -> bool:
    return "stylesheet" in _rel_tokens(link)


def _render_blocking(tree: LexborHTMLParser) -> int:
    """Resources in <head> that hold the first paint until they are fetched.

    Only <head> counts: that is what delays the first paint (and what the insight text names).
    """
    head = tree.head
    if head is None:
        return 0
    scripts = sum(1 for script in head.css("script[src]") if _blocks_render_script(script))
    sheets = sum(1 for link in head.css("link[rel][href]") if _blocks_render_sheet(link))
    return scripts + sheets


def _blocks_render_script(script: LexborNode) -> bool:
    attrs = script.attrs
    # type=module is deferred by default; modern browsers skip nomodule scripts entirely.
    if "async" in attrs or "defer" in attrs or "nomodule" in attrs:
        return False
    return (attrs.get("type") or "").strip().lower() in _JS_TYPES


def _blocks_render_sheet(link: LexborNode) -> bool:
    rel = _rel_tokens(link)
    # Alternate and disabled sheets are not applied, and print sheets do not apply to the screen.
    if "stylesheet" not in rel or "alternate" in rel or "disabled" in link.attrs:
        return False
    return (link.attrs.get("media") or "").strip().lower() in ("", "all", "screen")


# --- teaser ----------------------------------------------------------------------------------------


def build_teaser(page: ParsedPage, final_url: str) -> Teaser:
    return Teaser(
        url=final_url,
        title=page.title,
        description=page.description,
        canonical=page.canonical,
        language=page.language,
        headings=[Heading(level=level, text=text) for level, text in page.headings],
        h1_count=sum(1 for level, _ in page.headings if level == 1),
        word_count=page.word_count,
        links=Links(internal=page.internal_links, external=page.external_links),
        images=Images(
            total=page.images,
            without_alt=page.images_without_alt_count,
            without_alt_samples=list(page.images_without_alt),
        ),
        excerpt=excerpt(page.main_text),
    )


def document_teaser(text: str, title: str | None) -> Teaser:
    """The teaser for a raw-text document: what only HTML can tell keeps its null/0/empty default."""
    clean = CONTROLS.sub(" ", text.encode("utf-8", "replace").decode("utf-8"))
    return Teaser(title=clean_line(title, TITLE_MAX), word_count=count_words(clean), excerpt=excerpt(clean))


def excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    """The first ~`limit` characters on one line, cut at a word boundary and marked with "…" when cut."""
    # Collapsing whitespace in a prefix keeps this cheap on megabytes of text; only a prefix that is
    # mostly whitespace needs the whole text.
    window = limit * 4
    flat = " ".join(text[:window].split())
    if len(flat) <= limit and len(text) > window:
        flat = " ".join(text.split())
    if len(flat) <= limit:
        return flat
    cut = flat[: limit + 1]
    space = cut.rfind(" ")
    # A single giant "word" (a URL, a hash) has no boundary to cut at; cut it hard instead.
    head = cut[:space] if space > limit // 2 else cut[:limit]
    return head.rstrip(" ,;:.-") + "…"
