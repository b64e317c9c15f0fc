"""/api/v1/documents: scan raw text (no fetch, no HTML)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.api.problems import Problem
from app.api.routes.scans import submit
from app.api.schemas import CreateDocument, parse_json, validated_idempotency_key
from app.api.state import State
from app.core import scans
from app.core.models import Kind


async def create_document(request: Request) -> Response:
    settings = State.of(request).settings
    key = validated_idempotency_key(request)
    body, digest = await parse_json(request, CreateDocument, settings)
    if len(body.text) > settings.max_document_chars:
        raise Problem(
            422,
            "request body is invalid",
            code="validation",
            errors=[{"field": "text", "message": f"at most {settings.max_document_chars} characters"}],
        )
    new = scans.NewScan(
        Kind.DOCUMENT,
        document=body.text,
        title=body.title,
        options=body.options.model_dump(by_alias=True),
        idempotency_key=key,
        request_hash=digest,
    )
    return await submit(request, new)


routes = [Route("/api/v1/documents", create_document, methods=["POST"])]
