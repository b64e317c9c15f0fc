"""Lab metrics: timings and weight of our own fetch, plus the resource counts the parser read."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import pytest

from worker.fetch import FetchedPage
from worker.lab import lab_metrics
from worker.parse import parse_html

PAGES = Path(__file__).parent / "pages"
URL = "https://greenfold.example/blog/home-composting-guide"

LAB_KEYS = {
    "ttfbMs",
    "totalMs",
    "htmlBytes",
    "transferBytes",
    "compression",
    "compressionRatio",
    "scripts",
    "stylesheets",
    "images",
    "renderBlocking",
    "redirects",
}


def fetched(
    html: str,
    *,
    content_encoding: str | None = None,
    transfer_bytes: int | None = None,
    ttfb_ms: float = 12.34,
    total_ms: float = 45.66,
    redirects: list[str] | None = None,
) -> FetchedPage:
    body = html.encode("utf-8")
    return FetchedPage(
        url=URL,
        final_url=URL,
        status_code=200,
        content_type="text/html",
        encoding="utf-8",
        body=body,
        text=html,
        ttfb_ms=ttfb_ms,
        total_ms=total_ms,
        transfer_bytes=len(body) if transfer_bytes is None else transfer_bytes,
        content_encoding=content_encoding,
        redirects=redirects or [],
    )


def metrics(page: FetchedPage) -> dict[str, object]:
    return lab_metrics(page, parse_html(page.text, page.final_url)).model_dump(exclude={"psi"})


def test_article_served_gzipped() -> None:
    html = (PAGES / "article.html").read_text(encoding="utf-8")
    body = html.encode("utf-8")
    wire = gzip.compress(body)
    page = fetched(
        html,
        content_encoding="gzip",
        transfer_bytes=len(wire),
        redirects=["http://greenfold.example/blog/home-composting-guide", "https://greenfold.example/blog/x"],
    )
    result = metrics(page)
    assert set(result) == LAB_KEYS
    assert result == {
        "ttfbMs": 12.3,
        "totalMs": 45.7,
        "htmlBytes": len(body),
        "transferBytes": len(wire),
        "compression": "gzip",
        "compressionRatio": round(len(wire) / len(body), 3),
        "scripts": 6,
        "stylesheets": 5,
        "images": 7,
        "renderBlocking": 3,
        "redirects": 2,
    }
    ratio = result["compressionRatio"]
    assert isinstance(ratio, float) and 0 < ratio < 0.5  # prose HTML compresses well


def test_product_served_uncompressed() -> None:
    html = (PAGES / "product.html").read_text(encoding="utf-8")
    result = metrics(fetched(html))
    assert set(result) == LAB_KEYS
    assert result["compression"] is None and result["compressionRatio"] is None
    assert result["htmlBytes"] == result["transferBytes"] == len(html.encode("utf-8"))
    assert (result["scripts"], result["stylesheets"], result["images"]) == (9, 6, 9)
    # jQuery and vendor.bundle.js (plain head scripts), shop.css and product.css (media=screen).
    assert result["renderBlocking"] == 4
    assert result["redirects"] == 0


def test_html_bytes_are_bytes_not_characters() -> None:
    assert metrics(fetched("<p>Café crème</p>"))["htmlBytes"] == len("<p>Café crème</p>") + 2


@pytest.mark.parametrize(
    ("content_encoding", "expected"),
    [(None, None), ("", None), ("identity", None), ("GZIP", "gzip"), ("br", "br"), ("gzip,  br", "gzip, br")],
)
def test_compression_name(content_encoding: str | None, expected: str | None) -> None:
    result = metrics(fetched("<p>hello</p>", content_encoding=content_encoding, transfer_bytes=10))
    assert result["compression"] == expected
    assert (result["compressionRatio"] is None) == (expected is None)


def test_compression_ratio_needs_bytes_on_both_sides() -> None:
    assert metrics(fetched("", content_encoding="gzip", transfer_bytes=20))["compressionRatio"] is None
    assert metrics(fetched("<p>x</p>", content_encoding="gzip", transfer_bytes=0))["compressionRatio"] is None
    page = fetched("x" * 1000, content_encoding="br", transfer_bytes=25)
    assert metrics(page)["compressionRatio"] == 0.025


@pytest.mark.parametrize("bad", [math.nan, math.inf, -5.0])
def test_broken_timings_become_zero(bad: float) -> None:
    result = metrics(fetched("<p>x</p>", ttfb_ms=bad, total_ms=bad))
    assert (result["ttfbMs"], result["totalMs"]) == (0.0, 0.0)


@pytest.mark.parametrize(
    ("head", "body", "blocking"),
    [
        ('<script src="/a.js"></script>', "", 1),
        ('<script src="/a.js" type="text/javascript"></script>', "", 1),
        ('<script src="/a.js" async></script>', "", 0),
        ('<script src="/a.js" defer></script>', "", 0),
        ('<script src="/a.js" type="module"></script>', "", 0),
        ('<script src="/a.js" type=" Module "></script>', "", 0),
        ('<script src="/a.js" nomodule></script>', "", 0),
        ('<script src="/data.json" type="application/ld+json"></script>', "", 0),
        ("<script>inline()</script>", "", 0),  # nothing to fetch
        ("", '<script src="/late.js"></script>', 0),  # body scripts do not hold the first paint
        ('<link rel="stylesheet" href="/a.css">', "", 1),
        ('<link rel="STYLESHEET" href="/a.css" media="all">', "", 1),
        ('<link rel="stylesheet" href="/a.css" media=" Screen ">', "", 1),
        ('<link rel="stylesheet" href="/a.css" media="print">', "", 0),
        ('<link rel="stylesheet" href="/a.css" media="(min-width: 900px)">', "", 0),
        ('<link rel="stylesheet" href="/a.css" disabled>', "", 0),
        ('<link rel="alternate stylesheet" href="/a.css" title="alt">', "", 0),
        ('<link rel="preload" href="/a.css" as="style">', "", 0),
        ("<style>p { color: red }</style>", "", 0),
    ],
)
def test_render_blocking_rules(head: str, body: str, blocking: int) -> None:
    html = f"<!doctype html><html><head>{head}</head><body>{body}<p>text</p></body></html>"
    assert metrics(fetched(html))["renderBlocking"] == blocking


def test_resource_counts_include_inline_and_body_elements() -> None:
    html = (
        '<html><head><script>a()</script><script src="/b.js" defer></script><style>p{}</style>'
        '<link rel="stylesheet" href="/c.css" media="print"><link rel="icon" href="/i.png"></head>'
        '<body><script src="/d.js"></script><img src="/1.png"><img src="/2.png" alt="">'
        '<link rel="stylesheet" href="/late.css"></body></html>'
    )
    result = metrics(fetched(html))
    assert (result["scripts"], result["stylesheets"], result["images"]) == (3, 3, 2)
    assert result["renderBlocking"] == 0
