"""Rule-based insights: deterministic checks over the teaser (page facts) and lab performance facts."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final, get_args

from app.core.report import Category, Insight, Performance, Severity, Teaser

SEVERITIES: Final = get_args(Severity)
CATEGORIES: Final = get_args(Category)
SEVERITY_RANK: Final = {severity: rank for rank, severity in enumerate(SEVERITIES)}

TITLE_MIN, TITLE_MAX = 10, 60
DESCRIPTION_MIN, DESCRIPTION_MAX = 50, 160
THIN_CONTENT_WORDS = 300
HEAVY_HTML_BYTES = 500 * 1024
COMPRESSIBLE_HTML_BYTES = 10 * 1024
SLOW_TTFB_MS = 800.0
MAX_RENDER_BLOCKING = 3
MAX_REDIRECTS = 1
# A page rarely targets only its single best keyphrase; accept any of the first few in the title/H1.
TOP_KEYPHRASES = 3

_WORD = re.compile(r"[^\W_]+(?:['\u2019][^\W_]+)*")
_SUFFIXES = ("ing", "ed", "es", "s")


def insight(id: str, severity: Severity, category: Category, message: str) -> Insight:
    return Insight(id=id, severity=severity, category=category, message=message)


def sort_insights(insights: Iterable[Insight]) -> list[Insight]:
    """Most severe first; the sort is stable, so rules keep their declaration order within a severity."""
    return sorted(insights, key=lambda i: SEVERITY_RANK[i.severity])


def rule_insights(
    teaser: Teaser, lab: Performance | None, keyphrases: list[tuple[str, float]], *, kind: str
) -> list[Insight]:
    """All rules that fire for this page, most severe first. `kind` is "url" or "document"."""
    if kind == "document":
        # A raw-text document has no markup: no meta tags, headings, images or transfer to judge.
        found = [*_content_rules(teaser), *_keyphrase_rules(teaser, keyphrases, check_h1=False)]
    else:
        found = [
            *_title_rules(_text(teaser.title)),
            *_description_rules(_text(teaser.description)),
            *_h1_rules(teaser),
            *_content_rules(teaser),
            *_image_rules(teaser),
            *_head_rules(teaser),
            *_keyphrase_rules(teaser, keyphrases, check_h1=True),
            *(_performance_rules(lab) if lab is not None else ()),
        ]
    return sort_insights(found)


def _text(value: str | None) -> str | None:
    """The text with its whitespace collapsed; None when there is none."""
    collapsed = " ".join((value or "").split())
    return collapsed or None


def _h1_texts(teaser: Teaser) -> list[str]:
    return [text for h in teaser.headings if h.level == 1 and (text := _text(h.text))]


# --- rules -------------------------------------------------------------------------------------------


def _title_rules(title: str | None) -> Iterable[Insight]:
    if title is None:
        yield insight("title-missing", "high", "seo", "The page has no <title>; search results will show a guess.")
    elif len(title) < TITLE_MIN:
        yield insight(
            "title-too-short", "medium", "seo", f"The title is {len(title)} characters ({title!r}); aim for 10 to 60."
        )
    elif len(title) > TITLE_MAX:
        yield insight(
            "title-too-long", "low", "seo", f"The title is {len(title)} characters; search results cut it after ~60."
        )


def _description_rules(description: str | None) -> Iterable[Insight]:
    if description is None:
        yield insight("description-missing", "medium", "seo", "The page has no meta description.")
    elif len(description) < DESCRIPTION_MIN:
        yield insight(
            "description-too-short",
            "low",
            "seo",
            f"The meta description is {len(description)} characters; aim for 50 to 160.",
        )
    elif len(description) > DESCRIPTION_MAX:
        yield insight(
            "description-too-long",
            "low",
            "seo",
            f"The meta description is {len(description)} characters; search results cut it after ~160.",
        )


def _h1_rules(teaser: Teaser) -> Iterable[Insight]:
    count = teaser.h1_count
    if count == 0:
        yield insight("h1-missing", "medium", "seo", "The page has no <h1> heading.")
    elif count > 1:
        yield insight("h1-multiple", "low", "seo", f"The page has {count} <h1> headings; use one for the main topic.")


def _content_rules(teaser: Teaser) -> Iterable[Insight]:
    words = teaser.word_count
    if words < THIN_CONTENT_WORDS:
        yield insight("content-thin", "medium", "content", f"Only {words} words of main text; under 300 reads as thin.")


def _image_rules(teaser: Teaser) -> Iterable[Insight]:
    missing, total = teaser.images.without_alt, teaser.images.total
    if missing <= 0:
        return
    of_total = f" of {total}" if total >= missing else ""
    names = [s for s in teaser.images.without_alt_samples if s][:3]
    sample_text = f" (e.g. {', '.join(names)})" if names else ""
    yield insight(
        "images-missing-alt", "medium", "accessibility", f"{missing}{of_total} images have no alt text{sample_text}."
    )


def _head_rules(teaser: Teaser) -> Iterable[Insight]:
    if _text(teaser.canonical) is None:
        yield insight("canonical-missing", "low", "seo", "The page declares no canonical URL.")
    if _text(teaser.language) is None:
        yield insight(
            "language-missing",
            "low",
            "accessibility",
            "The page declares no language (<html lang>); screen readers guess.",
        )


def _keyphrase_rules(teaser: Teaser, keyphrases: list[tuple[str, float]], *, check_h1: bool) -> Iterable[Insight]:
    top = [p for p in _top_phrases(keyphrases) if _words(p)]
    if not top:
        return
    quoted = ", ".join(f'"{p}"' for p in top)
    # Missing title/H1 already has its own insight; only judge text that exists.
    title = _text(teaser.title)
    if title is not None and not any(phrase_in_text(p, title) for p in top):
        yield insight(
            "keyphrase-not-in-title", "medium", "seo", f"The title does not mention the top keyphrase(s): {quoted}."
        )
    h1s = _h1_texts(teaser)
    if check_h1 and h1s and not any(phrase_in_text(p, " ".join(h1s)) for p in top):
        yield insight("keyphrase-not-in-h1", "low", "seo", f"The <h1> does not mention the top keyphrase(s): {quoted}.")


def _performance_rules(lab: Performance) -> Iterable[Insight]:
    html_bytes = lab.html_bytes
    if html_bytes > HEAVY_HTML_BYTES:
        yield insight(
            "html-heavy", "medium", "performance", f"The HTML is {html_bytes / 1024:.0f} KB; keep it under 500 KB."
        )
    if _text(lab.compression) is None and html_bytes > COMPRESSIBLE_HTML_BYTES:
        yield insight(
            "compression-missing",
            "medium",
            "performance",
            f"The {html_bytes / 1024:.0f} KB HTML is served uncompressed; enable gzip or brotli.",
        )
    if lab.ttfb_ms > SLOW_TTFB_MS:
        yield insight(
            "ttfb-slow", "medium", "performance", f"Time to first byte was {lab.ttfb_ms:.0f} ms; aim for under 800 ms."
        )
    if lab.render_blocking > MAX_RENDER_BLOCKING:
        yield insight(
            "render-blocking-many",
            "low",
            "performance",
            f"{lab.render_blocking} render-blocking scripts/stylesheets in <head>; defer or inline what you can.",
        )
    if lab.redirects > MAX_REDIRECTS:
        yield insight(
            "redirects-many", "low", "performance", f"The URL went through {lab.redirects} redirects before the page."
        )


# --- keyphrase matching ------------------------------------------------------------------------------


def _top_phrases(keyphrases: list[tuple[str, float]]) -> list[str]:
    return [phrase.strip() for phrase, _ in keyphrases if phrase.strip()][:TOP_KEYPHRASES]


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _stem(word: str) -> str:
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def words_match(a: str, b: str) -> bool:
    """Loose stem equality: "compost" ~ "composting", "garden" ~ "gardens", but not "cat" ~ "category"."""
    a, b = _stem(a.lower()), _stem(b.lower())
    short, long = sorted((a, b), key=len)
    # The length cap keeps a short word from matching any longer word that merely starts with it.
    return short == long or (len(short) >= 3 and long.startswith(short) and len(long) - len(short) <= 3)


def phrase_in_text(phrase: str, text: str) -> bool:
    """True when every word of the phrase loosely matches some word of the text (order-free)."""
    words = _words(text)
    wanted = _words(phrase)
    return bool(wanted) and all(any(words_match(w, t) for t in words) for w in wanted)
