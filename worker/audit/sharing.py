"""How a link to the page looks when shared: Open Graph and Twitter card tags, and the preview."""

from __future__ import annotations

from app.core.page_audit import Audit, AuditCategory, Severity, SharePreview, cap_text
from worker.audit.common import FAIL, HIGH, LOW, MEDIUM, PASS, WARNING, PageContext, make, resolve
from worker.audit.facts import PageFacts

CATEGORY = AuditCategory.SHARING
TWITTER_CARDS = frozenset({"summary", "summary_large_image", "app", "player"})

# (property, severity, what it is for, fix)
_OPEN_GRAPH: tuple[tuple[str, Severity, str], ...] = (
    ("og:title", HIGH, 'Add <meta property="og:title" content=…>: the bold line of every shared link.'),
    ("og:description", MEDIUM, 'Add <meta property="og:description" content=…> with one or two sentences.'),
    ("og:image", HIGH, 'Add <meta property="og:image" content=https://…> (1200x630 works everywhere).'),
    ("og:url", LOW, 'Add <meta property="og:url" content=…> with the canonical absolute URL.'),
    ("og:type", LOW, 'Add <meta property="og:type" content="website"> (or article, product…).'),
)


def preview(facts: PageFacts, ctx: PageContext) -> SharePreview:
    og, tw = facts.open_graph, facts.twitter
    image = og.get("og:image") or og.get("og:image:url") or tw.get("twitter:image") or tw.get("twitter:image:src")
    return SharePreview(
        title=_short(og.get("og:title") or tw.get("twitter:title") or facts.title),
        description=_short(og.get("og:description") or tw.get("twitter:description") or facts.description),
        image=(resolve(image, ctx.url) or image)[:2048] if image else None,
        site_name=_short(og.get("og:site_name")),
        card=_short(tw.get("twitter:card")),
    )


def _short(value: str | None) -> str | None:
    return cap_text(value) if value else None


def audits(facts: PageFacts, ctx: PageContext) -> list[Audit]:
    found = [_og_tag(facts, ctx, prop, severity, fix) for prop, severity, fix in _OPEN_GRAPH]
    found.append(_twitter_card(facts))
    return found


def _og_tag(facts: PageFacts, ctx: PageContext, prop: str, severity: Severity, fix: str) -> Audit:
    title = f"{prop} is set"
    value = facts.open_graph.get(prop)
    if value is None:
        fallback = {"og:title": facts.title, "og:description": facts.description}.get(prop)
        note = f"; sites fall back to {fallback!r}" if fallback else ""
        return make(
            f"og-{prop[3:]}",
            CATEGORY,
            title,
            FAIL if severity is HIGH else WARNING,
            severity,
            [f"no {prop}{note}"],
            fix,
        )
    evidence = [f'<meta property="{prop}" content="{value}">']
    if prop in ("og:image", "og:url") and not value.lower().startswith(("http://", "https://")):
        # Crawlers of social sites do not resolve relative URLs here.
        evidence.append(f"{prop} must be an absolute URL")
        return make(
            f"og-{prop[3:]}", CATEGORY, title, WARNING, severity, evidence, f"Write {prop} as an absolute https:// URL."
        )
    if prop == "og:image" and ctx.https and value.lower().startswith("http:"):
        evidence.append("an http image on an https page may not be shown")
        return make("og-image", CATEGORY, title, WARNING, severity, evidence, "Serve og:image over https.")
    return make(f"og-{prop[3:]}", CATEGORY, title, PASS, severity, evidence)


def _twitter_card(facts: PageFacts) -> Audit:
    card = facts.twitter.get("twitter:card")
    title = "A Twitter/X card type is set"
    fix = 'Add <meta name="twitter:card" content="summary_large_image">; title and image fall back to Open Graph.'
    if card is None:
        return make("twitter-card", CATEGORY, title, WARNING, LOW, ["no twitter:card"], fix)
    evidence = [f'<meta name="twitter:card" content="{card}">']
    if card.strip().lower() not in TWITTER_CARDS:
        evidence.append(f"{card!r} is not one of {', '.join(sorted(TWITTER_CARDS))}")
        return make("twitter-card", CATEGORY, title, FAIL, LOW, evidence, fix)
    return make("twitter-card", CATEGORY, title, PASS, LOW, evidence)
