"""The OpenAPI 3.1 document served at /openapi.json.

Request schemas come from the pydantic models that validate them, so the document cannot drift from
what the API accepts; response schemas are written out here next to the shapes the routes return.
"""

from __future__ import annotations

from typing import Any

from app import __version__
from app.api.schemas import CreateDocument, CreateKey, CreateScan
from app.core.keys import TENANT_PATTERN
from app.core.models import ErrorType, Stage, Status
from observability.sampler import STATES as QUEUE_STATES

JSON = "application/json"
PROBLEM = "application/problem+json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _problem(description: str) -> dict[str, Any]:
    return {"description": description, "content": {PROBLEM: {"schema": _ref("Problem")}}}


def _ok(description: str, schema: str, status: str = "200") -> dict[str, Any]:
    return {status: {"description": description, "content": {JSON: {"schema": _ref(schema)}}}}


SCAN_ID = {"name": "scanId", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}
IDEMPOTENCY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "Repeat a request with the same key to get the same scan back instead of a new one.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
}
TENANT = {
    "name": "tenant",
    "in": "query",
    "required": False,
    "description": "Admins only: act on this tenant's scans (without it, every caller acts on its own tenant's).",
    "schema": {"type": "string", "pattern": TENANT_PATTERN.pattern},
}
KEY_ID = {"name": "keyId", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}
BAD_BODY = {
    "400": _problem("Malformed JSON"),
    "413": _problem("Body too large"),
    "415": _problem("Not JSON"),
    "422": _problem("Invalid field"),
}
UNAVAILABLE = {"503": _problem("A backing service is down; retry after Retry-After seconds")}


def _schemas() -> dict[str, Any]:
    error = {
        "type": "object",
        "required": ["type", "message", "retryable"],
        "properties": {
            "type": {"type": "string", "enum": [e.value for e in ErrorType]},
            "message": {"type": "string"},
            "retryable": {"type": "boolean"},
        },
    }
    status = {
        "type": "object",
        "required": ["scanId", "status", "progress", "attempts", "createdAt", "updatedAt", "timings"],
        "properties": {
            "scanId": {"type": "string", "format": "uuid"},
            "url": _nullable({"type": "string"}),
            "status": {"type": "string", "enum": [s.value for s in Status]},
            "stage": _nullable({"type": "string", "enum": [s.value for s in Stage]}),
            "progress": {"type": "integer", "minimum": 0, "maximum": 100},
            "error": _nullable(_ref("ScanError")),
            "traceId": _nullable({"type": "string"}),
            "attempts": {"type": "integer"},
            "createdAt": {"type": "string", "format": "date-time"},
            "updatedAt": {"type": "string", "format": "date-time"},
            "timings": {"type": "object", "additionalProperties": {"type": "number"}},
        },
    }
    return {
        "CreateScan": CreateScan.model_json_schema(by_alias=True, ref_template="#/components/schemas/{model}"),
        "CreateDocument": CreateDocument.model_json_schema(by_alias=True, ref_template="#/components/schemas/{model}"),
        "ScanOptions": CreateScan.model_json_schema(by_alias=True)["$defs"]["ScanOptions"],
        "Accepted": {
            "type": "object",
            "required": ["scanId", "status", "statusUrl"],
            "properties": {
                "scanId": {"type": "string", "format": "uuid"},
                "status": {"type": "string"},
                "statusUrl": {"type": "string"},
            },
        },
        "CreateKey": CreateKey.model_json_schema(by_alias=True, ref_template="#/components/schemas/{model}"),
        "ApiKey": {
            "type": "object",
            "required": ["id", "name", "tenant", "role", "prefix", "createdAt"],
            "properties": {
                "id": {"type": "string", "format": "uuid"},
                "name": {"type": "string"},
                "tenant": {"type": "string"},
                "role": {"type": "string", "enum": ["admin", "member"]},
                "prefix": {"type": "string", "description": "The key's first characters, to tell keys apart"},
                "createdAt": {"type": "string", "format": "date-time"},
                "lastUsedAt": _nullable({"type": "string", "format": "date-time"}),
                "revokedAt": _nullable({"type": "string", "format": "date-time"}),
            },
        },
        "NewApiKey": {
            "allOf": [
                _ref("ApiKey"),
                {
                    "type": "object",
                    "required": ["key"],
                    "properties": {"key": {"type": "string", "description": "The secret, shown this once"}},
                },
            ]
        },
        "ApiKeyList": {"type": "object", "properties": {"items": {"type": "array", "items": _ref("ApiKey")}}},
        "ScanError": error,
        "ScanStatus": status,
        "ScanList": {
            "type": "object",
            "properties": {
                "items": {"type": "array", "items": _ref("ScanStatus")},
                "nextCursor": _nullable({"type": "string"}),
            },
        },
        "Teaser": {
            "type": "object",
            "properties": {"scanId": {"type": "string"}, "status": {"type": "string"}, "teaser": {"type": "object"}},
        },
        "Report": {
            "type": "object",
            "properties": {
                "scanId": {"type": "string"},
                "status": {"type": "string"},
                "teaser": {"type": "object"},
                "performance": _nullable({"type": "object"}),
                "keyphrases": {"type": "array", "items": {"type": "object"}},
                "insights": {"type": "array", "items": {"type": "object"}},
                "timings": {"type": "object"},
            },
        },
        "Queues": {
            "type": "object",
            "required": ["queues", "workers"],
            "properties": {
                "queues": {"type": "array", "items": _ref("QueueDepth")},
                "workers": {"type": "object", "properties": {"live": {"type": "integer", "minimum": 0}}},
            },
        },
        "QueueDepth": {
            "type": "object",
            "required": [*QUEUE_STATES, "name", "oldestPendingAgeSeconds", "sampledAt"],
            "properties": {
                "name": {"type": "string"},
                **{state: {"type": "integer", "minimum": 0} for state in QUEUE_STATES},
                "oldestPendingAgeSeconds": {"type": "number", "minimum": 0},
                "sampledAt": {"type": "string", "format": "date-time"},
            },
        },
        "Problem": {
            "type": "object",
            "required": ["type", "title", "status"],
            "properties": {
                "type": {"type": "string"},
                "title": {"type": "string"},
                "status": {"type": "integer"},
                "detail": {"type": "string"},
                "instance": {"type": "string"},
                "errors": {"type": "array", "items": {"type": "object"}},
            },
        },
    }


def _create(summary: str, body: str) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "parameters": [IDEMPOTENCY],
            "requestBody": {"required": True, "content": {JSON: {"schema": _ref(body)}}},
            "responses": {**_ok("Accepted; poll statusUrl", "Accepted", "202"), **BAD_BODY, **UNAVAILABLE},
        }
    }


def _read(summary: str, schema: str, *, conflict: bool = False) -> dict[str, Any]:
    responses = {**_ok(summary, schema), "404": _problem("No such scan"), **UNAVAILABLE}
    if conflict:
        responses["409"] = _problem("Not ready yet")
    return {"get": {"summary": summary, "parameters": [SCAN_ID], "responses": responses}}


def document() -> dict[str, Any]:
    list_params = [
        {"name": "status", "in": "query", "schema": {"type": "string", "enum": [s.value for s in Status]}},
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}},
        {"name": "cursor", "in": "query", "schema": {"type": "string"}},
    ]
    scans = _create("Create a scan of a URL", "CreateScan")
    scans["get"] = {
        "summary": "List scans, newest first",
        "parameters": list_params,
        "responses": {**_ok("A page of scans", "ScanList"), "422": _problem("Invalid query"), **UNAVAILABLE},
    }
    plain = {"200": {"description": "OK"}}
    spec: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "pagelens",
            "version": __version__,
            "description": "Scan web pages and documents in the background.",
        },
        "paths": {
            "/api/v1/scan-jobs": scans,
            "/api/v1/documents": _create("Create a scan of raw text", "CreateDocument"),
            "/api/v1/scan-jobs/{scanId}/status": _read("Progress of a scan", "ScanStatus"),
            "/api/v1/scan-jobs/{scanId}/teaser": _read("Page facts, once TEASER_READY", "Teaser", conflict=True),
            "/api/v1/scan-jobs/{scanId}/full": _read("The full report, once FULL_READY", "Report", conflict=True),
            "/api/v1/scan-jobs/{scanId}/events": {
                "get": {
                    "summary": "Status changes as server-sent events, until a terminal state",
                    "description": (
                        "Each event is `event: status`, `id:` the scan's version and `data:` the status document "
                        "(ScanStatus). The current state comes first unless Last-Event-ID already names it; the "
                        "stream ends after a terminal state, or after PAGELENS_SSE_MAX_SECONDS, when a client "
                        "reconnects with Last-Event-ID. Idle streams carry keep-alive comments."
                    ),
                    "parameters": [
                        SCAN_ID,
                        {
                            "name": "Last-Event-ID",
                            "in": "header",
                            "required": False,
                            "description": "The last event id (version) the client has seen.",
                            "schema": {"type": "string"},
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "The event stream",
                            "content": {"text/event-stream": {"schema": {"type": "string"}}},
                        },
                        "204": {"description": "Last-Event-ID is the scan's final state: nothing more will come"},
                        "404": _problem("No such scan"),
                        "429": _problem("This server streams to as many clients as it may; poll the status"),
                        **UNAVAILABLE,
                    },
                }
            },
            "/api/v1/scan-jobs/{scanId}/retry": {
                "post": {
                    "summary": "Replay a FAILED scan under the same id",
                    "parameters": [SCAN_ID],
                    "responses": {
                        **_ok("Queued again", "Accepted", "202"),
                        "404": _problem("No such scan"),
                        "409": _problem("Not FAILED"),
                        **UNAVAILABLE,
                    },
                }
            },
            "/api/v1/scan-jobs/{scanId}": {
                "delete": {
                    "summary": "Cancel a queued or running scan",
                    "parameters": [SCAN_ID],
                    "responses": {
                        "202": {"description": "Cancelled"},
                        "404": _problem("No such scan"),
                        "409": _problem("Already finished"),
                        **UNAVAILABLE,
                    },
                }
            },
            "/api/v1/queues": {
                "get": {
                    "summary": "Queue depth by state, oldest pending age, live workers",
                    "responses": {**_ok("Queue depth", "Queues"), **UNAVAILABLE},
                }
            },
            "/api/v1/keys": {
                "post": {
                    "summary": "Create an API key (admins); its secret is in this answer only",
                    "requestBody": {"required": True, "content": {JSON: {"schema": _ref("CreateKey")}}},
                    "responses": {**_ok("Created", "NewApiKey", "201"), **BAD_BODY, **UNAVAILABLE},
                },
                "get": {
                    "summary": "List API keys, never their secrets (admins)",
                    "responses": {**_ok("Every key", "ApiKeyList"), **UNAVAILABLE},
                },
            },
            "/api/v1/keys/{keyId}": {
                "delete": {
                    "summary": "Revoke an API key (admins); every API process refuses it within seconds",
                    "parameters": [KEY_ID],
                    "responses": {**_ok("Revoked", "ApiKey"), "404": _problem("No such key"), **UNAVAILABLE},
                }
            },
            "/healthz": {"get": {"summary": "Liveness", "responses": plain}},
            "/readyz": {
                "get": {
                    "summary": "Readiness of PostgreSQL and Redis",
                    "responses": {**plain, "503": {"description": "Not ready"}},
                }
            },
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": plain}},
            "/": {"get": {"summary": "The web page", "responses": {"200": {"description": "HTML"}}}},
            "/v1/traces": {
                "post": {
                    "summary": "OTLP/HTTP trace export for the web page's spans, forwarded to the collector",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": {"type": "object"}},
                            "application/x-protobuf": {"schema": {"type": "string", "format": "binary"}},
                        },
                    },
                    "responses": {
                        "200": {"description": "Accepted (an empty ExportTraceServiceResponse)"},
                        "400": _problem("Not a valid OTLP ExportTraceServiceRequest"),
                        "404": _problem("Browser traces are not collected: no OTLP endpoint"),
                        "413": _problem("Body too large"),
                        "415": _problem("Not OTLP JSON or protobuf, or an unknown encoding"),
                        "429": _problem("Too many exports from this client"),
                    },
                }
            },
        },
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer", "description": "pl_… API key"}},
        },
    }
    return _with_tenancy(spec)


def _with_tenancy(document: dict[str, Any]) -> dict[str, Any]:
    """What keys and tenants add to every keyed operation (/api/ and /v1/traces): the bearer key,
    401 and 429 (the key's rate), 403 (admin-only routes, and `?tenant=` for members); scan routes
    take `?tenant=`."""
    for path, operations in document["paths"].items():
        if not path.startswith(("/api/", "/v1/traces")):
            continue
        for operation in operations.values():
            operation["security"] = [{"apiKey": []}]
            responses = operation["responses"]
            responses.setdefault("401", _problem("A valid API key is required"))
            responses.setdefault("429", _problem("Rate limit of this API key, or a tenant's cap, reached"))
            if path.startswith(("/api/v1/queues", "/api/v1/keys")):
                responses["403"] = _problem("Needs an admin API key")
            elif path.startswith("/api/v1/scan-jobs/") or (
                path == "/api/v1/scan-jobs" and "requestBody" not in operation
            ):
                operation["parameters"] = [*operation.get("parameters", []), TENANT]
                responses["403"] = _problem("Only an admin API key may name another tenant")
                responses.setdefault("422", _problem("Invalid tenant"))
    return document
