"""robots.txt for one URL: each crawler's verdict, the line that decided it, the declared sitemaps.

protego (the parser Scrapy uses: Google's matching rules, wildcards, longest match) decides; the
deciding line is looked for here only to show it as evidence.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from protego import Protego

from app.core.page_audit import CrawlerAccess, cap_text
from worker.audit.common import SiteFiles

SITEMAPS_KEPT = 20
URL_CHARS = 2048

# (user-agent token, purpose). "ai-search" crawlers fetch pages to answer and cite them; the
# "ai-training" tokens decide whether the text may train models.
CRAWLERS: tuple[tuple[str, str], ...] = (
    ("Googlebot", "search"),
    ("Bingbot", "search"),
    ("OAI-SearchBot", "ai-search"),
    ("ChatGPT-User", "ai-search"),
    ("PerplexityBot", "ai-search"),
    ("GPTBot", "ai-training"),
    ("ClaudeBot", "ai-training"),
    ("Google-Extended", "ai-training"),
    ("Applebot-Extended", "ai-training"),
    ("CCBot", "ai-training"),
)


def crawler_access(url: str, site: SiteFiles | None) -> list[CrawlerAccess]:
    """Each crawler's verdict for `url`: no robots.txt (4xx) allows all, an unreachable one none."""
    if site is None:
        return []
    if site.robots != "found":
        allowed = site.robots == "missing"
        rule = None if allowed else "robots.txt is unreachable"
        return [CrawlerAccess(crawler=bot, purpose=purpose, allowed=allowed, rule=rule) for bot, purpose in CRAWLERS]
    robots_text = site.robots_text
    parser = Protego.parse(robots_text)
    return [
        CrawlerAccess(
            crawler=bot,
            purpose=purpose,
            allowed=(allowed := parser.can_fetch(url, bot)),
            rule=None if allowed else deciding_line(robots_text, url, bot),
        )
        for bot, purpose in CRAWLERS
    ]


def deciding_line(robots_text: str, url: str, bot: str) -> str | None:
    """The group and Disallow line that most likely blocked `bot` (evidence only; protego decided)."""
    path = urlsplit(url).path or "/"
    groups: list[tuple[list[str], list[str]]] = []
    agents: list[str] = []
    rules: list[str] = []
    for raw in robots_text.splitlines()[:10_000]:
        line = raw.split("#", 1)[0].strip()
        key, _, value = line.partition(":")
        key, value = key.strip().lower(), value.strip()
        if key == "user-agent":
            if rules:
                groups.append((agents, rules))
                agents, rules = [], []
            agents.append(value)
        elif key in ("disallow", "allow") and agents:
            rules.append(f"{key.capitalize()}: {value}")
    if agents:
        groups.append((agents, rules))
    wanted = bot.lower()
    chosen = [g for g in groups if any(a.lower() != "*" and a.lower() in wanted for a in g[0])]
    chosen = chosen or [g for g in groups if "*" in g[0]]
    best = None
    for group_agents, group_rules in chosen:
        for rule in group_rules:
            pattern = rule.partition(": ")[2]
            longer = best is None or len(rule) > len(best[1])
            if rule.startswith("Disallow") and pattern and longer and _matches(pattern, path):
                best = (group_agents, rule)
    if best is None:
        return None
    return cap_text(f"User-agent: {best[0][0]} … {best[1]}")


def _matches(pattern: str, path: str) -> bool:
    regex = re.escape(pattern[:500]).replace(r"\*", ".*")
    if regex.endswith(r"\$"):
        regex = regex[:-2] + "$"
    return re.match(regex, path) is not None


def sitemaps(site: SiteFiles) -> list[str]:
    if site.robots != "found":
        return []
    return [url[:URL_CHARS] for url in list(Protego.parse(site.robots_text).sitemaps)[:SITEMAPS_KEPT]]
