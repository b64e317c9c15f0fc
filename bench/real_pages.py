"""Real pages for the benchmarks: the Python documentation's HTML, as the Debian package
`python3-doc` installs it (`make bench` installs it when it can; without it the benchmarks that need
it say so and measure nothing).

Real documentation pages are what the generated corpus (bench/corpus.py) is not: tens of kilobytes
of markup, code samples, tables and navigation, and main texts from a few hundred to many thousand
words (a scan reads at most `MAX_WORDS` of them).
"""

from __future__ import annotations

import glob
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from worker.audit.facts import page_facts
from worker.keyphrases import keyphrase_cache_key
from worker.parse import parse_html

DOC_ROOTS = "/usr/share/doc/python3*/html"
SECTIONS = ("library", "reference", "howto", "tutorial", "c-api", "using", "extending", "faq")
MIN_BYTES = 8 * 1024  # multi-kilobyte pages only: indexes and stubs say little


@dataclass(frozen=True)
class DocPage:
    key: str  # served at /p/<key>
    body: str

    def html(self) -> str:
        return self.body


def doc_root() -> Path | None:
    for root in sorted(glob.glob(DOC_ROOTS), reverse=True):
        if (Path(root) / "library").is_dir():
            return Path(root)
    return None


def doc_pages(min_bytes: int = MIN_BYTES) -> list[DocPage]:
    """Every documentation page of at least `min_bytes`, or none when python3-doc is not installed."""
    root = doc_root()
    if root is None:
        return []
    pages = []
    for section in SECTIONS:
        for path in sorted((root / section).glob("*.html")):
            if path.stat().st_size >= min_bytes:
                pages.append(DocPage(f"{section}-{path.stem}", path.read_text(encoding="utf-8", errors="replace")))
    return pages


def cache_keys(page: DocPage) -> set[str]:
    """The keyphrase cache keys a worker's scan of the page makes: from the main content the audit
    finds (the default) or, with the audit off, the parser's main text."""
    url = "http://127.0.0.1/"
    facts = page_facts(page.body, url)
    parsed = parse_html(page.body, url).main_text
    texts = {facts.main_text or parsed, parsed}
    return {key for key in map(keyphrase_cache_key, texts) if key is not None}


def forget_keyphrases(redis_url: str, pages: Iterable[DocPage]) -> int:
    """Delete the pages' keyphrase cache entries; returns how many there were."""
    import redis

    keys = sorted({key for page in pages for key in cache_keys(page)})
    client = redis.Redis.from_url(redis_url)
    try:
        return cast(int, client.unlink(*keys)) if keys else 0
    finally:
        client.close()
