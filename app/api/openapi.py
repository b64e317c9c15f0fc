"""The OpenAPI 3.1 document served at /openapi.json.

Every schema in it is generated from the pydantic models the API validates requests with and builds
its answers from (app/core/report.py, app/api/schemas.py, app/api/problems.py), so the document
cannot drift from what the API accepts and returns; this module only lists the operations.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import BaseModel, Field, TypeAdapter
from pydantic.json_schema import models_json_schema

from app import __version__
from app.api.problems import ProblemDetails
from app.api.routes.keys import ApiKey, ApiKeyList, NewApiKey
from app.api.routes.queues import Queues
from app.api.schemas import CreateDocument, CreateKey, CreateScan
from app.core.keys import TENANT_PATTERN
from app.core.models import Status
from app.core.report import Accepted, Report, ScanList, ScanRef, ScanStatus, TeaserResponse

JSON = "application/json"
PROBLEM = "application/problem+json"
REF = "#/components/schemas/{model}"
SECURITY: list[dict[str, list[str]]] = [
    {"bearer": []},
    {},
]  # a bearer API key once any key exists (`pagelens keys`, PAGELENS_API_KEYS); none otherwise

PROBLEMS = {
    400: "Malformed JSON or Content-Length",
    401: "An API key is required (keys exist) and none, a revoked or a wrong one was sent",
    403: "Needs an admin API key",
    404: "No such scan",
    409: "The scan is not in a state that allows this",
    413: "Body too large",
    415: "Not JSON",
    422: "Invalid field",
    429: "Too many requests for this API key (or open scans of its tenant); retry after Retry-After seconds",
    431: "Too many or too large request headers (PAGELENS_MAX_HEADER_BYTES)",
    503: "A backing service is down; retry after Retry-After seconds",
}
# Every /api/* operation may answer these: the header limits, key check and rate limit run before
# any route.
API_PROBLEMS = (401, 429, 431, 503)
BODY_PROBLEMS = (400, 413, 415, 422)


def _param(name: str, where: str, schema: Any, description: str = "", required: bool = False) -> dict[str, Any]:
    param = {"name": name, "in": where, "required": required, "schema": TypeAdapter(schema).json_schema()}
    return param | ({"description": description} if description else {})


SCAN_ID = _param("scanId", "path", uuid.UUID, required=True)
IDEMPOTENCY = _param(
    "Idempotency-Key",
    "header",
    Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[\x21-\x7e]+$")],
    "Repeat a request with the same key to get the same scan back instead of a new one.",
)
LIST = [
    _param("status", "query", Status, "Only scans in this status."),
    _param("limit", "query", Annotated[int, Field(ge=1, le=100)], "Page size (default 20)."),
    _param("cursor", "query", str, "nextCursor of the previous page."),
]
TENANT = _param(
    "tenant",
    "query",
    Annotated[str, Field(pattern=TENANT_PATTERN.pattern)],
    "Admins only: act on this tenant's scans (without it, every caller acts on its own tenant's).",
)
KEY_ID = _param("keyId", "path", uuid.UUID, required=True)
# Scan routes answer 403 when a member names another tenant; another tenant's scan is a 404, like an
# unknown id.
TENANT_PROBLEMS = {403: "Only an admin API key may name another tenant", 422: "Invalid query"}
LAST_EVENT_ID = _param("Last-Event-ID", "header", str, "The last event id (version) the client has seen.")


@dataclass(frozen=True)
class Op:
    method: str
    path: str
    operation_id: str
    summary: str
    answer: type[BaseModel] | None = None  # the JSON body of the success answer
    status: int = 200
    request: type[BaseModel] | None = None
    problems: dict[int, str] = field(default_factory=dict)  # status -> description ("" for the usual one)
    params: list[dict[str, Any]] = field(default_factory=list)
    description: str | None = None
    more: dict[str, Any] = field(default_factory=dict)  # responses besides the success and the problems
    body: dict[str, Any] | None = None  # a request body that is not one of our models

    @property
    def api(self) -> bool:
        return self.path.startswith(("/api/", "/v1/"))

    def document(self, refs: dict[type[BaseModel], Any]) -> dict[str, Any]:
        codes = dict.fromkeys((*API_PROBLEMS, *BODY_PROBLEMS) if self.request else API_PROBLEMS, "")
        problems = {**(codes if self.api else {}), **self.problems}
        responses: dict[str, Any] = {
            str(self.status): {"description": self.summary}
            | ({"content": {JSON: {"schema": refs[self.answer]}}} if self.answer else {}),
            **{
                str(code): {
                    "description": text or PROBLEMS[code],
                    "content": {PROBLEM: {"schema": refs[ProblemDetails]}},
                }
                for code, text in sorted(problems.items())
            },
        }
        operation: dict[str, Any] = {"operationId": self.operation_id, "summary": self.summary}
        if self.description:
            operation["description"] = self.description
        if self.params:
            operation["parameters"] = self.params
        if self.request:
            operation["requestBody"] = {"required": True, "content": {JSON: {"schema": refs[self.request]}}}
        if self.body:
            operation["requestBody"] = self.body
        if self.api:
            operation["security"] = SECURITY
        return operation | {"responses": responses | self.more}


SCANS = "/api/v1/scan-jobs"
SCAN = SCANS + "/{scanId}"
OPERATIONS = [
    Op("post", SCANS, "createScan", "Create a scan of a URL", Accepted, 202, CreateScan, params=[IDEMPOTENCY]),
    Op(
        "get",
        SCANS,
        "listScans",
        "List scans, newest first",
        ScanList,
        params=[*LIST, TENANT],
        problems=TENANT_PROBLEMS,
    ),
    Op(
        "post",
        "/api/v1/documents",
        "createDocument",
        "Create a scan of raw text",
        Accepted,
        202,
        CreateDocument,
        params=[IDEMPOTENCY],
    ),
    Op(
        "get",
        SCAN + "/status",
        "getScanStatus",
        "Progress of a scan",
        ScanStatus,
        params=[SCAN_ID, TENANT],
        problems={**TENANT_PROBLEMS, 404: ""},
    ),
    Op(
        "get",
        SCAN + "/teaser",
        "getScanTeaser",
        "Page facts, once TEASER_READY",
        TeaserResponse,
        params=[SCAN_ID, TENANT],
        problems={**TENANT_PROBLEMS, 404: "", 409: "Not ready yet"},
    ),
    Op(
        "get",
        SCAN + "/full",
        "getScanReport",
        "The full report, once FULL_READY",
        Report,
        params=[SCAN_ID, TENANT],
        problems={**TENANT_PROBLEMS, 404: "", 409: "Not ready yet"},
    ),
    Op(
        "get",
        SCAN + "/events",
        "streamScanEvents",
        "Status changes as server-sent events, until a terminal state",
        params=[SCAN_ID, TENANT, LAST_EVENT_ID],
        problems={
            **TENANT_PROBLEMS,
            404: "",
            429: "This server streams to as many clients as it may (or rate limited); poll the status",
        },
        description=(
            "Each event is `event: status`, `id:` the scan's version and `data:` the status document "
            "(ScanStatus). The current state comes first unless Last-Event-ID already names it; the "
            "stream ends after a terminal state, or after PAGELENS_SSE_MAX_SECONDS, when a client "
            "reconnects with Last-Event-ID. Idle streams carry keep-alive comments."
        ),
        more={
            "200": {"description": "The event stream", "content": {"text/event-stream": {}}},
            "204": {"description": "Last-Event-ID is the scan's final state: nothing more will come"},
        },
    ),
    Op(
        "post",
        SCAN + "/retry",
        "retryScan",
        "Replay a FAILED scan under the same id",
        Accepted,
        202,
        params=[SCAN_ID, TENANT],
        problems={**TENANT_PROBLEMS, 404: "", 409: "Not FAILED"},
    ),
    Op(
        "delete",
        SCAN,
        "cancelScan",
        "Cancel a queued or running scan",
        ScanRef,
        202,
        params=[SCAN_ID, TENANT],
        problems={**TENANT_PROBLEMS, 404: "", 409: "Already finished"},
    ),
    Op(
        "get",
        "/api/v1/queues",
        "getQueues",
        "Queue depth by state, oldest pending age, live workers (admins)",
        Queues,
        problems={403: ""},
    ),
    Op(
        "post",
        "/api/v1/keys",
        "createKey",
        "Create an API key (admins); its secret is in this answer only",
        NewApiKey,
        201,
        CreateKey,
        problems={403: ""},
    ),
    Op(
        "get", "/api/v1/keys", "listKeys", "List API keys, never their secrets (admins)", ApiKeyList, problems={403: ""}
    ),
    Op(
        "delete",
        "/api/v1/keys/{keyId}",
        "revokeKey",
        "Revoke an API key (admins); every API process refuses it within seconds",
        ApiKey,
        params=[KEY_ID],
        problems={403: "", 404: "No such key"},
    ),
    Op("get", "/healthz", "getHealth", "Liveness"),
    Op(
        "get",
        "/readyz",
        "getReadiness",
        "Readiness of PostgreSQL and Redis",
        more={"503": {"description": "Not ready"}},
    ),
    Op(
        "get",
        "/metrics",
        "getMetrics",
        "Prometheus metrics",
        problems={401: "A metrics token is required", 404: "Served on another port, or disabled"},
    ),
    Op("get", "/", "getWebPage", "The web page", more={"200": {"description": "HTML", "content": {"text/html": {}}}}),
    Op(
        "post",
        "/v1/traces",
        "exportBrowserTraces",
        "OTLP/HTTP trace export for the web page's spans, forwarded to the collector",
        problems={
            400: "Not a valid OTLP ExportTraceServiceRequest",
            404: "Browser traces are not collected: no OTLP endpoint",
            413: "",
            415: "Not OTLP JSON or protobuf, or an unknown encoding",
            429: "Too many exports from this client",
        },
        body={
            "required": True,
            # OTLP's own protobuf messages (opentelemetry-proto), in their JSON or binary encoding.
            "content": {JSON: {}, "application/x-protobuf": {"schema": TypeAdapter(bytes).json_schema()}},
        },
        more={"200": {"description": "Accepted (an empty ExportTraceServiceResponse)"}},
    ),
]


def document() -> dict[str, Any]:
    models: list[type[BaseModel]] = [CreateScan, CreateDocument, CreateKey, ProblemDetails]
    models += [op.answer for op in OPERATIONS if op.answer is not None and op.answer not in models]
    modes = {CreateScan: "validation", CreateDocument: "validation", CreateKey: "validation"}
    keys = [(m, modes.get(m, "serialization")) for m in models]
    refs, defs = models_json_schema(keys, ref_template=REF)  # type: ignore[arg-type]
    by_model = {model: refs[(model, mode)] for model, mode in keys}  # type: ignore[index]
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method] = op.document(by_model)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "pagelens",
            "version": __version__,
            "description": (
                "Scan web pages and documents in the background. Every error is an "
                "application/problem+json body; a method a path does not take answers 405 with an "
                "Allow header listing those it does."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": defs["$defs"],
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A pl_… API key (`pagelens keys create`, or PAGELENS_API_KEYS); the API is "
                    "open while no key exists.",
                }
            },
        },
    }
