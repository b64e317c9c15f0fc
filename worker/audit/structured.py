"""Structured data on a page: JSON-LD (with @graph), microdata and RDFa, read by extruct.

Each syntax's input is capped before extruct sees it (blocks, characters, annotated elements), each
JSON-LD block is read on its own so one broken block is reported without hiding the others, and
what is kept is pruned to a bounded size: a page with 10,000 blocks or a JSON-LD bomb costs no more
than the caps allow.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import lxml.etree
import lxml.html
from extruct import extract as extruct_extract
from extruct.jsonld import JsonLdExtractor
from extruct.w3cmicrodata import MicrodataExtractor

JSONLD_BLOCKS_READ = 50
JSONLD_BLOCK_CHARS = 200_000
JSONLD_TOTAL_CHARS = 1_000_000
# Elements carrying microdata / RDFa; more than this and the syntax is not read at all.
ANNOTATED_ELEMENTS = 2_000
# RDFa is read by walking the whole document in Python (about half a second per megabyte).
RDFA_MAX_HTML = 1_000_000
ITEMS_KEPT = 100
ERRORS_KEPT = 10
# The pruned copy of each item: enough to check properties, never the whole of a hostile document.
PRUNE_DEPTH = 6
PRUNE_KEYS = 100
PRUNE_LIST = 50
PRUNE_STRING = 300
PRUNE_NODES = 5_000

_SCHEMA_PREFIXES = ("http://schema.org/", "https://schema.org/", "schema:")


@dataclass(frozen=True)
class Item:
    syntax: str  # "json-ld", "microdata" or "rdfa"
    types: tuple[str, ...]  # short names: "Product", not "https://schema.org/Product"
    data: dict[str, Any]  # pruned; property names shortened the same way


@dataclass(frozen=True)
class StructuredData:
    items: list[Item] = field(default_factory=list)
    jsonld_blocks: int = 0  # JSON-LD script blocks on the page
    jsonld_read: int = 0  # of those, read (the rest is past the caps)
    errors: list[str] = field(default_factory=list)  # JSON errors, one line each
    skipped: list[str] = field(default_factory=list)  # what a cap left unread, one line each

    @property
    def types(self) -> list[str]:
        seen: dict[str, None] = {}
        for item in self.items:
            seen.update(dict.fromkeys(item.types))
        return list(seen)


def short_name(value: object) -> str:
    text = str(value).strip()
    for prefix in _SCHEMA_PREFIXES:
        if text.startswith(prefix):
            return text[len(prefix) :]
    return text


def _types(value: object) -> tuple[str, ...]:
    values = value if isinstance(value, list) else [value]
    return tuple(short_name(v)[:100] for v in values[:10] if isinstance(v, str) and v.strip())


class _Pruner:
    def __init__(self) -> None:
        self.budget = PRUNE_NODES

    def prune(self, value: Any, depth: int = 0) -> Any:
        self.budget -= 1
        if self.budget < 0 or depth > PRUNE_DEPTH:
            return None
        if isinstance(value, dict):
            kept: dict[str, Any] = {}
            for key, inner in list(value.items())[:PRUNE_KEYS]:
                kept[short_name(key)[:100]] = self.prune(inner, depth + 1)
            return kept
        if isinstance(value, list):
            return [self.prune(inner, depth + 1) for inner in value[:PRUNE_LIST]]
        if isinstance(value, str):
            return value[:PRUNE_STRING]
        if isinstance(value, bool | int | float) or value is None:
            return value
        return str(value)[:PRUNE_STRING]


def structured_data(tree: lxml.html.HtmlElement, html: str, url: str) -> StructuredData:
    items: list[Item] = []
    errors: list[str] = []
    skipped: list[str] = []
    pruner = _Pruner()
    blocks, read = _jsonld(tree, items, errors, skipped, pruner)
    _microdata(tree, url, items, skipped, pruner)
    _rdfa(tree, html, url, items, errors, skipped, pruner)
    return StructuredData(items[:ITEMS_KEPT], blocks, read, errors[:ERRORS_KEPT], skipped)


def _jsonld(
    tree: lxml.html.HtmlElement, items: list[Item], errors: list[str], skipped: list[str], pruner: _Pruner
) -> tuple[int, int]:
    scripts = [s for s in tree.iter("script") if (s.get("type") or "").strip().lower() == "application/ld+json"]
    extractor = JsonLdExtractor()
    total_chars = read = 0
    for number, script in enumerate(scripts, start=1):
        if read == JSONLD_BLOCKS_READ:
            skipped.append(f"{len(scripts)} JSON-LD blocks; only the first {JSONLD_BLOCKS_READ} were read")
            break
        size = len(script.text or "")
        if size > JSONLD_BLOCK_CHARS:
            errors.append(f"JSON-LD block {number} is {size} characters; blocks over {JSONLD_BLOCK_CHARS} are not read")
            continue
        total_chars += size
        if total_chars > JSONLD_TOTAL_CHARS:
            skipped.append(f"JSON-LD past {JSONLD_TOTAL_CHARS} characters was not read (from block {number} on)")
            break
        read += 1
        try:
            # extruct forgives some broken JSON (comments, trailing commas); search engines do not.
            json.loads(script.text or "", strict=False)
        except RecursionError:
            errors.append(f"JSON-LD block {number}: nested too deeply")
            continue
        except ValueError as exc:
            errors.append(f"JSON-LD block {number}: {str(exc)[:200]}")
        try:
            found = extractor.extract_items(script)
        except RecursionError:
            errors.append(f"JSON-LD block {number}: nested too deeply")
            continue
        except ValueError:  # reported above, with its line and column
            continue
        for node in found:
            if not isinstance(node, dict):
                errors.append(f"JSON-LD block {number}: an entry is not an object")
                continue
            graph = node.get("@graph")
            nodes = graph if isinstance(graph, list) else [node]
            for entry in nodes[:ITEMS_KEPT]:
                if isinstance(entry, dict) and len(items) < ITEMS_KEPT:
                    items.append(Item("json-ld", _types(entry.get("@type")), pruner.prune(entry) or {}))
    return len(scripts), read


def _too_many(tree: lxml.html.HtmlElement, xpath: str, syntax: str, skipped: list[str]) -> bool | None:
    """None when the syntax is absent, True when there is too much of it to read."""
    count = int(tree.xpath(f"count({xpath})"))
    if count == 0:
        return None
    if count > ANNOTATED_ELEMENTS:
        skipped.append(f"{count} {syntax} elements; over {ANNOTATED_ELEMENTS}, {syntax} was not read")
        return True
    return False


def _microdata(tree: lxml.html.HtmlElement, url: str, items: list[Item], skipped: list[str], pruner: _Pruner) -> None:
    if _too_many(tree, "//*[@itemscope or @itemprop]", "microdata", skipped) is not False:
        return
    for raw in MicrodataExtractor().extract_items(tree, base_url=url):
        if len(items) < ITEMS_KEPT and isinstance(raw, dict):
            items.append(Item("microdata", _types(raw.get("type")), pruner.prune(_flatten_microdata(raw, 0)) or {}))


def _flatten_microdata(raw: dict[str, Any], depth: int) -> dict[str, Any]:
    """{"type": T, "properties": {...}} nested items become {"@type": T, ...} like JSON-LD."""
    flat: dict[str, Any] = {"@type": raw.get("type")}
    properties = raw.get("properties")
    for key, value in (properties if isinstance(properties, dict) else {}).items():
        flat[key] = _microdata_value(value, depth + 1)
    return flat


def _microdata_value(value: Any, depth: int) -> Any:
    if depth > PRUNE_DEPTH:
        return None
    if isinstance(value, dict) and "properties" in value:
        return _flatten_microdata(value, depth)
    if isinstance(value, list):
        return [_microdata_value(v, depth + 1) for v in value[:PRUNE_LIST]]
    return value


def _rdfa(
    tree: lxml.html.HtmlElement,
    html: str,
    url: str,
    items: list[Item],
    errors: list[str],
    skipped: list[str],
    pruner: _Pruner,
) -> None:
    # <meta property="og:..."> is RDFa too, but Open Graph is read directly; only typed RDFa
    # (typeof/vocab) is worth the cost of an RDF graph.
    if not tree.xpath("boolean(//*[@typeof or @vocab])"):
        return
    if _too_many(tree, "//*[@typeof or @property or @about or @resource]", "RDFa", skipped) is not False:
        return
    if len(html) > RDFA_MAX_HTML:
        skipped.append(f"the page is over {RDFA_MAX_HTML} characters; its RDFa was not read")
        return
    try:
        # extruct's RDFa reader needs its own kind of tree, so it parses the page again.
        nodes = extruct_extract(html, base_url=url, syntaxes=["rdfa"], errors="strict").get("rdfa", [])
    except (ValueError, RecursionError, lxml.etree.LxmlError) as exc:
        errors.append(f"RDFa could not be read: {str(exc)[:200]}")
        return
    for node in nodes:
        types = _types(node.get("@type")) if isinstance(node, dict) else ()
        if not types or len(items) >= ITEMS_KEPT:
            continue
        data: dict[str, Any] = {"@type": list(types)}
        for key, values in node.items():
            if key.startswith("@") or not isinstance(values, list):
                continue
            plain = [v.get("@value", v.get("@id")) for v in values if isinstance(v, dict)]
            data[key] = plain[0] if len(plain) == 1 else plain
        items.append(Item("rdfa", types, pruner.prune(data) or {}))
