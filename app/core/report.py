"""A scan's documents as typed models: its status, its teaser (page facts) and its full report.

The worker builds these, the scan store writes and reads them, the API serves them and describes
them in its OpenAPI document, and the CLI reads them: one definition of every field. Names are
snake_case in Python and camelCase in JSON (on the wire and in the stored columns alike).

Fields have defaults so a report written before a field existed still reads; the OpenAPI document
still lists every field as required, because every answer carries them all.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from app.core.models import ErrorType, Stage, Status
from app.core.page_audit import AuditReport
from app.core.types import Record
from app.core.wire import Wire as Wire  # the base of these models, for the modules that import it from here

Severity = Literal["high", "medium", "low", "info"]
Category = Literal["seo", "content", "accessibility", "performance"]
Count = Annotated[int, Field(ge=0, strict=True)]  # strict: a JSON true is not a count
Timings = dict[str, float]  # stage name + "Ms" (crawlMs, parseMs, ..., queueWaitMs, totalMs) -> milliseconds


# Request bodies refuse unknown fields, so a typo in a client ("otpions") is an error, not ignored.
STRICT = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True)


class ScanOptions(BaseModel):
    """What a client asks of a scan; stored with it and read by the worker."""

    model_config = STRICT

    # Strict: a 0 is not false, nor "10" a number; the schema promises booleans and integers.
    top_n: int = Field(10, ge=1, le=30, strict=True, description="How many keyphrases to extract.")
    llm: bool = Field(True, strict=True, description="Add LLM insights when an LLM is configured.")
    psi: bool = Field(True, strict=True, description="Add PageSpeed Insights scores when PSI is configured.")
    strategy: Literal["mobile", "desktop"] = Field("mobile", description="PageSpeed Insights strategy.")


# --- status ------------------------------------------------------------------------------------------


class ErrorInfo(Wire):
    """Why a scan failed (or why its last attempt did, while it waits to be retried)."""

    # `cause` is present only on retries_exhausted, so the schema must not call it required.
    model_config = ConfigDict(json_schema_serialization_defaults_required=False)

    type: ErrorType
    message: str
    retryable: bool = False
    cause: ErrorInfo | None = Field(
        default=None,
        exclude_if=lambda cause: cause is None,
        description="retries_exhausted only: the last error an attempt recorded",
    )


class ScanStatus(Wire):
    scan_id: uuid.UUID
    url: str | None
    status: Status
    stage: Stage | None
    progress: Annotated[int, Field(ge=0, le=100)]
    error: ErrorInfo | None
    trace_id: str | None
    attempts: Count
    created_at: datetime
    updated_at: datetime
    timings: Timings

    @classmethod
    def from_row(cls, row: Record) -> ScanStatus:
        """From a scans row (its other columns are ignored)."""
        return cls.model_validate({**row, "scan_id": row["id"]})


class ScanRef(Wire):
    scan_id: uuid.UUID
    status: Status


class Accepted(ScanRef):
    status_url: str


class ScanList(Wire):
    items: list[ScanStatus]
    next_cursor: str | None


# --- teaser: the page facts PARSE finds ----------------------------------------------------------------


class Heading(Wire):
    level: Annotated[int, Field(ge=1, le=6)]
    text: str


class Links(Wire):
    """Distinct http(s) link targets, on the page's own host and elsewhere."""

    internal: Count = 0
    external: Count = 0


class Images(Wire):
    total: Count = 0
    without_alt: Count = 0
    without_alt_samples: list[str] = []  # a few src URLs of images with no alt attribute


class Teaser(Wire):
    """What a raw-text document cannot tell (url, meta tags, headings, links, images) is null, 0 or empty."""

    url: str | None = None
    title: str | None = None
    description: str | None = None
    canonical: str | None = None
    language: str | None = None
    headings: list[Heading] = []
    h1_count: Count = 0
    word_count: Count = 0
    links: Links = Links()
    images: Images = Images()
    excerpt: str = ""


class TeaserResponse(ScanRef):
    teaser: Teaser


# --- performance: ANALYZE's lab metrics and PageSpeed Insights ---------------------------------------------


class FieldMetric(Wire):
    p75: float
    category: str | None = None


class FieldData(Wire):
    """Real-user (CrUX) 75th percentiles, keyed fcpMs, lcpMs, inpMs, cls, ttfbMs, fidMs."""

    overall_category: str | None = None
    origin_fallback: bool = False
    metrics: dict[str, FieldMetric] = {}


class Psi(Wire):
    strategy: Literal["mobile", "desktop"]
    performance_score: Annotated[int, Field(ge=0, le=100)]
    fcp_ms: float | None = None
    lcp_ms: float | None = None
    tbt_ms: float | None = None
    cls: float | None = None
    speed_index_ms: float | None = None
    tti_ms: float | None = None
    field_data: FieldData | None = None
    fetched_at: str  # ISO 8601, when PSI answered (cached answers keep their time)


class Performance(Wire):
    """Lab metrics of the one fetch the worker made, and PageSpeed Insights when configured."""

    ttfb_ms: float = 0.0
    total_ms: float = 0.0
    html_bytes: Count = 0
    transfer_bytes: Count = 0
    compression: str | None = None  # the Content-Encoding, lower case; null when not compressed
    compression_ratio: float | None = None  # wire bytes per HTML byte
    scripts: Count = 0
    stylesheets: Count = 0
    images: Count = 0
    render_blocking: Count = 0
    redirects: Count = 0
    psi: Psi | None = None


# --- the full report ------------------------------------------------------------------------------------


class Keyphrase(Wire):
    phrase: str
    score: float


class Insight(Wire):
    id: str
    severity: Severity
    category: Category
    message: str
    source: Literal["rules", "llm"] = "rules"


class Findings(Wire):
    """What a finished scan adds to its teaser (the stored `report` column). A new section of the
    report is a field here: it is then stored, served, documented and read like the others."""

    performance: Performance | None = None  # null for a raw-text document
    keyphrases: list[Keyphrase] = []
    insights: list[Insight] = []
    audit: AuditReport | None = None  # the page audit (app/core/page_audit.py); null for a raw-text document


class Report(Findings, TeaserResponse):
    """GET /full: the scan's id, status and teaser, its findings, and its stage timings."""

    timings: Timings

    @classmethod
    def from_row(cls, row: Record) -> Report:
        """From a FULL_READY scans row: its report column with the id, status, teaser and timings."""
        return cls.model_validate({**row["report"], **row, "scan_id": row["id"]})
