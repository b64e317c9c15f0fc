"""Links and content: link text, crawlable anchors, readability, the viewport and mixed content."""

from __future__ import annotations

import re

from app.core.page_audit import Audit, AuditCategory
from worker.audit.common import FAIL, HIGH, LOW, MEDIUM, NA, PASS, WARNING, PageContext, make
from worker.audit.facts import Anchor, PageFacts
from worker.audit.readability import automated_readability_index

CATEGORY = AuditCategory.CONTENT
# Automated Readability Index is a US school grade; above 12 is harder than a general audience reads.
HARD_GRADE = 12.0
EXAMPLES = 10
# Readability formulas need some prose to mean anything; a long text is scored on its start.
READABILITY_MIN_WORDS = 100
READABILITY_CHARS = 100_000

# Link texts that say nothing about their target, by language (Lighthouse keeps similar lists).
GENERIC_LINK_TEXT: dict[str, frozenset[str]] = {
    "en": frozenset(
        {"click here", "click", "here", "read more", "more", "learn more", "continue", "continue reading"}
        | {"go", "start", "this", "link", "details", "more info", "right here", "this page", "see more"}
    ),
    "de": frozenset(
        {"hier klicken", "klicken sie hier", "hier", "mehr", "weiterlesen", "mehr erfahren", "mehr lesen", "details"}
    ),
    "fr": frozenset({"cliquez ici", "ici", "en savoir plus", "plus", "lire la suite", "lire plus", "suite", "détails"}),
    "es": frozenset(
        {
            "haga clic aquí",
            "haz clic aquí",
            "clic aquí",
            "aquí",
            "más",
            "leer más",
            "más información",
            "ver más",
            "saber más",
        }
    ),
    "it": frozenset(
        {"clicca qui", "qui", "di più", "leggi di più", "leggi tutto", "scopri di più", "altro", "dettagli"}
    ),
    "nl": frozenset({"klik hier", "hier", "meer", "lees meer", "meer informatie", "verder lezen"}),
    "pt": frozenset({"clique aqui", "aqui", "mais", "leia mais", "saiba mais", "ver mais"}),
}
# Quotes, arrows and ellipses around link text ("Read more »") do not change what it says.
_PUNCTUATION = re.compile("[\\s\"'\u201c\u201d\u2018\u2019\u00ab\u00bb\u203a\u2039\u2192\u2190\u2026>.:!?()\\[\\]-]+")


def _normal(text: str) -> str:
    return _PUNCTUATION.sub(" ", text.lower()).strip()


def generic_phrases(language: str | None) -> frozenset[str]:
    primary = (language or "").split("-")[0].split("_")[0].lower()
    # English phrases appear on pages in every language; the page's own language adds its list.
    return GENERIC_LINK_TEXT["en"] | GENERIC_LINK_TEXT.get(primary, frozenset())


def readability_grade(facts: PageFacts) -> float | None:
    """The main text's Automated Readability Index (a US school grade).

    ARI counts characters, words and sentences only; the syllable-based formulas need a
    pronunciation dictionary."""
    if facts.main_words < READABILITY_MIN_WORDS:
        return None
    return round(automated_readability_index(facts.main_text[:READABILITY_CHARS]), 1)


def audits(facts: PageFacts, ctx: PageContext, grade: float | None) -> list[Audit]:
    return [
        _link_text(facts),
        _crawlable(facts),
        _readability(facts, grade),
        _viewport(facts),
        _mixed_content(facts, ctx),
    ]


def _describe(anchor: Anchor) -> str:
    return f'"{anchor.text}" → {anchor.href}' if anchor.href is not None else f'"{anchor.text}" (no href)'


def _link_text(facts: PageFacts) -> Audit:
    phrases = generic_phrases(facts.html_lang)
    crawlable = [a for a in facts.anchors if a.href and not _uncrawlable(a)]
    generic = [a for a in crawlable if _normal(a.text) in phrases]
    title = "Links have descriptive text"
    if not crawlable:
        return make("link-text", CATEGORY, title, NA, MEDIUM, ["no links"])
    evidence = [_describe(a) for a in generic[:EXAMPLES]]
    if len(generic) > EXAMPLES:
        evidence.append(f"… and {len(generic) - EXAMPLES} more")
    fix = 'Say where the link goes ("Pricing for teams", not "click here"): search engines and AI read link text.'
    return make("link-text", CATEGORY, title, FAIL if generic else PASS, MEDIUM, evidence, fix)


def _uncrawlable(anchor: Anchor) -> bool:
    if anchor.href is None:
        return anchor.has_onclick  # a placeholder <a> without href or handler is not a link at all
    href = anchor.href.strip().lower()
    return not href or href == "#" or href.startswith("javascript:")


def _crawlable(facts: PageFacts) -> Audit:
    bad = [a for a in facts.anchors if _uncrawlable(a)]
    evidence = [_describe(a) for a in bad[:EXAMPLES]]
    if len(bad) > EXAMPLES:
        evidence.append(f"… and {len(bad) - EXAMPLES} more")
    fix = "Give every link a real href (a URL); crawlers do not run javascript: links or click handlers."
    return make("crawlable-anchors", CATEGORY, "Links are crawlable", FAIL if bad else PASS, MEDIUM, evidence, fix)


def _readability(facts: PageFacts, grade: float | None) -> Audit:
    title = "The main text is easy to read"
    if grade is None:
        evidence = [f"{facts.main_words} words of main text: too few to score"]
        if facts.main_text_skipped:
            evidence = ["the page is too large to extract its main content"]
        return make("readability", CATEGORY, title, NA, LOW, evidence)
    evidence = [f"Automated Readability Index: grade {grade:g} over {facts.main_words} words"]
    fix = "Shorten sentences and prefer common words; aim for grade 12 or below."
    return make("readability", CATEGORY, title, WARNING if grade > HARD_GRADE else PASS, LOW, evidence, fix)


def _viewport(facts: PageFacts) -> Audit:
    title = "A mobile viewport is set"
    fix = '<meta name="viewport" content="width=device-width, initial-scale=1">'
    if facts.viewport is None:
        return make("viewport", CATEGORY, title, FAIL, MEDIUM, ["no <meta name=viewport>"], f"Add {fix}.")
    evidence = [f'<meta name="viewport" content="{facts.viewport}">']
    result = PASS if "width=device-width" in facts.viewport.replace(" ", "").lower() else WARNING
    return make("viewport", CATEGORY, title, result, MEDIUM, evidence, f"Use {fix}.")


def _mixed_content(facts: PageFacts, ctx: PageContext) -> Audit:
    title = "No http resources on an https page"
    if not ctx.https:
        return make("mixed-content", CATEGORY, title, NA, HIGH, ["the page itself is served over http"])
    evidence = list(facts.insecure_subresources)
    if facts.insecure_total > len(evidence):
        evidence.append(f"… {facts.insecure_total} in all")
    fix = "Load every image, script, stylesheet and frame over https; browsers block or flag http ones."
    return make("mixed-content", CATEGORY, title, FAIL if evidence else PASS, HIGH, evidence[:EXAMPLES], fix)
