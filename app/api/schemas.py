"""Request bodies, read within limits with every field validated; answers, as JSON of their models."""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, Field, StringConstraints, ValidationError, field_validator
from starlette.requests import Request
from starlette.responses import JSONResponse

from app.api.params import BIGINT_MAX, header_integer
from app.api.problems import Problem
from app.core import keys
from app.core.models import ScanError
from app.core.report import STRICT, ScanOptions, Wire
from app.core.settings import Settings
from app.core.urlpolicy import check_url

Model = TypeVar("Model", bound=BaseModel)


class Strict(BaseModel):
    model_config = STRICT

    @field_validator("*")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        # PostgreSQL's text cannot hold U+0000: refuse it here (422) rather than fail the INSERT.
        if isinstance(value, str) and "\x00" in value:
            raise ValueError("must not contain NUL characters")
        return value


class CreateScan(Strict):
    url: Annotated[str, StringConstraints(min_length=1, max_length=2048)]
    options: ScanOptions = Field(default_factory=ScanOptions)


class CreateDocument(Strict):
    text: Annotated[str, StringConstraints(min_length=1)]
    title: Annotated[str, StringConstraints(max_length=300)] | None = None
    options: ScanOptions = Field(default_factory=ScanOptions)

    @field_validator("text")
    @classmethod
    def _has_words(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("text must not be blank")
        return value


class CreateKey(Strict):
    name: Annotated[str, StringConstraints(min_length=1, max_length=keys.MAX_NAME_CHARS)]
    tenant: Annotated[str, StringConstraints(pattern=keys.TENANT_PATTERN.pattern)] | None = Field(
        None, description="The key's tenant; without one, the admin's own."
    )
    role: Literal["member", "admin"] = "member"


async def read_body(request: Request, limit: int) -> bytes:
    """Read the body, refusing with 413 as soon as it exceeds `limit` (before buffering it all)."""
    raw = request.headers.get("content-length")
    if raw is not None:
        declared = header_integer(raw, low=0, high=BIGINT_MAX)
        if declared is None:
            raise Problem(400, "invalid Content-Length header")
        if declared > limit:
            raise Problem(413, f"request body is larger than {limit} bytes", code="body-too-large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Problem(413, f"request body is larger than {limit} bytes", code="body-too-large")
        chunks.append(chunk)
    return b"".join(chunks)


async def parse_json(request: Request, model: type[Model], settings: Settings) -> tuple[Model, str]:
    """Validate the JSON body against `model`; returns it with a hash of its canonical form."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type and content_type != "application/json" and not content_type.endswith("+json"):
        raise Problem(415, "send the body as application/json", code="unsupported-media-type")
    body = await read_body(request, settings.max_body_bytes)
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Problem(400, f"body is not valid JSON: {exc}", code="malformed-json") from None
    except RecursionError:  # nesting deeper than the parser's stack: no request needs that
        raise Problem(400, "body is not valid JSON: nested too deeply", code="malformed-json") from None
    except ValueError:  # a number of more than 4,300 digits (Python's int-conversion limit)
        raise Problem(400, "body is not valid JSON: a number is too long", code="malformed-json") from None
    if not isinstance(data, dict):
        raise Problem(422, "body must be a JSON object", code="validation", errors=[])
    try:
        value = model.model_validate(data)
    except ValidationError as exc:
        raise Problem(422, "request body is invalid", code="validation", errors=_errors(exc)) from None
    canonical = json.dumps(value.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return value, hashlib.sha256(canonical.encode()).hexdigest()


def _errors(exc: ValidationError) -> list[dict[str, Any]]:
    return [
        {"field": ".".join(str(p) for p in err["loc"]) or "body", "message": err["msg"], "type": err["type"]}
        for err in exc.errors(include_url=False, include_input=False)
    ]


def validated_url(url: str, settings: Settings) -> str:
    try:
        return check_url(url, settings)
    except ScanError as exc:
        raise Problem(
            422,
            "request body is invalid",
            code="validation",
            errors=[{"field": "url", "message": exc.message, "type": exc.type.value}],
        ) from None


def validated_idempotency_key(request: Request) -> str | None:
    raw = request.headers.get("idempotency-key")
    if raw is None:
        return None
    if not 1 <= len(raw) <= 255 or not all("\x21" <= c <= "\x7e" for c in raw):
        raise Problem(
            422,
            "Idempotency-Key must be 1-255 printable ASCII characters without spaces",
            code="validation",
            errors=[{"field": "Idempotency-Key", "message": "invalid header", "type": "value_error"}],
        )
    return raw


def reply(body: Wire, status_code: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body.to_json(), status_code=status_code, headers=headers)
