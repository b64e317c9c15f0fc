"""Lab metrics (the measured half of the ANALYZE stage): timings and weight of the one fetch we made.

"Lab" as opposed to field data: these numbers come from our own request, not from real visitors,
so they describe the server and the HTML, not the rendering on a user's device.
"""

from __future__ import annotations

import math

from app.core.report import Performance
from worker.fetch import FetchedPage
from worker.parse import ParsedPage

# "identity" is the HTTP name for "not encoded": no compression happened.
_NOT_COMPRESSED = frozenset({"", "identity"})


def lab_metrics(page: FetchedPage, parsed: ParsedPage) -> Performance:
    """The lab half of the performance section; PSI's scores are added by the caller."""
    html_bytes = len(page.body)
    compression = _compression(page.content_encoding)
    return Performance(
        ttfb_ms=_millis(page.ttfb_ms),
        total_ms=_millis(page.total_ms),
        html_bytes=html_bytes,
        transfer_bytes=max(page.transfer_bytes, 0),
        compression=compression,
        compression_ratio=_ratio(page.transfer_bytes, html_bytes) if compression is not None else None,
        scripts=parsed.scripts,
        stylesheets=parsed.stylesheets,
        images=parsed.images,
        render_blocking=parsed.render_blocking,
        redirects=len(page.redirects),
    )


def _compression(content_encoding: str | None) -> str | None:
    # Normalised so "GZIP" and "gzip" read the same; stacked codings ("gzip, br") are kept as sent.
    value = ", ".join(part.strip() for part in (content_encoding or "").lower().split(",") if part.strip())
    return None if value in _NOT_COMPRESSED else value


def _ratio(transfer_bytes: int, html_bytes: int) -> float | None:
    """Wire bytes per decompressed byte (lower is better); None when there is nothing to compare."""
    if html_bytes <= 0 or transfer_bytes <= 0:
        return None
    return round(transfer_bytes / html_bytes, 3)


def _millis(value: float) -> float:
    # A clock hiccup must not put NaN (invalid JSON) or a negative duration into stored results.
    return round(value, 1) if math.isfinite(value) and value > 0 else 0.0
