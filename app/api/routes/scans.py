"""/api/v1/scan-jobs: create, read, list and cancel scans.

Every scan belongs to the tenant of the key that created it, and every route here reads and acts
within one tenant (app/api/auth.py `scope_tenant`): the caller's own, or for an admin the one named
by `?tenant=`. Another tenant's scan is not found, by the same query and with the same answer as an
id that does not exist.
"""

from __future__ import annotations

import base64
import binascii
import logging
import uuid
from datetime import datetime

from arq.constants import abort_jobs_ss
from arq.utils import timestamp_ms
from opentelemetry import trace
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.api import limits
from app.api.auth import request_identity, scope_tenant
from app.api.problems import Problem
from app.api.schemas import CreateScan, parse_json, validated_idempotency_key, validated_url
from app.api.state import State
from app.core import audit, queue, scans
from app.core.models import Kind, Status
from app.core.types import JSONDict, Record

logger = logging.getLogger("pagelens.api")
PREFIX = "/api/v1/scan-jobs"


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def status_json(row: Record) -> JSONDict:
    return {
        "scanId": str(row["id"]),
        "url": row["url"],
        "status": row["status"],
        "stage": row["stage"],
        "progress": row["progress"],
        "error": row["error"],
        "traceId": row["trace_id"],
        "attempts": row["attempts"],
        "createdAt": _iso(row["created_at"]),
        "updatedAt": _iso(row["updated_at"]),
        "timings": row["timings"],
    }


def _current_trace_id() -> str | None:
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


async def submit(request: Request, new: scans.NewScan) -> Response:
    """Commit the scan row, then enqueue. The row is the record of truth: if Redis is down the
    scan stays QUEUED and the worker's sweeper enqueues it later, so the client still gets 202."""
    state = State.of(request)
    identity = request_identity(request.scope)
    # A scan is always created in the caller's own tenant (an admin's `?tenant=` is for reading).
    new = scans.NewScan(
        **{
            **new.__dict__,
            "trace_id": _current_trace_id(),
            "api_key_id": identity.key_id,
            "tenant": identity.tenant,
        }
    )
    if not limits.open_scans_capped(identity.key_id, state.settings.max_open_scans):
        # No cap to count against: the INSERT alone, without BEGIN and COMMIT round trips around it.
        row, created = await scans.create(state.pool, new)
    else:
        async with state.pool.acquire() as conn, conn.transaction():
            await limits.reserve_open_scan(conn, identity.tenant, state.settings.max_open_scans, new.idempotency_key)
            row, created = await scans.create(conn, new)
    if not created and row["request_hash"] != new.request_hash:
        raise Problem(
            422, "this Idempotency-Key was already used with a different request", code="idempotency-key-reused"
        )
    scan_id = str(row["id"])
    if created:
        try:
            await queue.enqueue_scan(state.redis, state.settings.queue_name, scan_id)
        except Exception as exc:  # the sweeper re-enqueues QUEUED scans unknown to arq
            logger.warning(
                "enqueue failed, scan left for the sweeper: %s", type(exc).__name__, extra={"scan_id": scan_id}
            )
    status_url = f"{PREFIX}/{scan_id}/status"
    body = {"scanId": scan_id, "status": row["status"], "statusUrl": status_url}
    headers = {"Location": status_url}
    if not created:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(body, status_code=202, headers=headers)


async def create_scan(request: Request) -> Response:
    state = State.of(request)
    key = validated_idempotency_key(request)
    body, digest = await parse_json(request, CreateScan, state.settings)
    url = validated_url(body.url, state.settings)
    options = body.options.model_dump(by_alias=True)
    return await submit(
        request, scans.NewScan(Kind.URL, url=url, options=options, idempotency_key=key, request_hash=digest)
    )


def scan_not_found() -> Problem:
    return Problem(404, "no scan with this id", code="scan-not-found")


def scan_id_of(request: Request) -> uuid.UUID:
    try:
        return uuid.UUID(request.path_params["scanId"])
    except ValueError:
        raise scan_not_found() from None


def _found(row: Record | None) -> Record:
    if row is None:
        raise scan_not_found()
    return row


async def _load(request: Request) -> Record:
    return _found(await scans.get(State.of(request).pool, scan_id_of(request), scope_tenant(request)))


async def get_status(request: Request) -> Response:
    # Polled by every waiting client: only the status columns, never the report.
    row = await scans.status(State.of(request).pool, scan_id_of(request), scope_tenant(request))
    return JSONResponse(status_json(_found(row)))


def _not_ready(row: Record, wanted: str) -> Problem:
    return Problem(
        409,
        f"the {wanted} is not ready: scan is {row['status']}",
        code="not-ready",
        scanId=str(row["id"]),
        scanStatus=row["status"],
        error=row["error"],
    )


async def get_teaser(request: Request) -> Response:
    row = await _load(request)
    if row["teaser"] is None or row["status"] not in (Status.TEASER_READY, Status.FULL_READY):
        raise _not_ready(row, "teaser")
    return JSONResponse({"scanId": str(row["id"]), "status": row["status"], "teaser": row["teaser"]})


async def get_full(request: Request) -> Response:
    row = await _load(request)
    if row["status"] != Status.FULL_READY:
        raise _not_ready(row, "full report")
    report = {"scanId": str(row["id"]), "status": row["status"], "teaser": row["teaser"], **row["report"]}
    report["timings"] = row["timings"]
    return JSONResponse(report)


async def cancel_scan(request: Request) -> Response:
    state = State.of(request)
    tenant = scope_tenant(request)
    scan_id = scan_id_of(request)
    row = await scans.cancel(state.pool, scan_id, tenant)
    if row is None:
        _audit(request, audit.Action.SCAN_CANCEL, audit.Outcome.NOT_FOUND, scan_id, tenant)
        raise scan_not_found()
    if row["status"] != Status.CANCELLED:
        _audit(request, audit.Action.SCAN_CANCEL, audit.Outcome.CONFLICT, scan_id, tenant)
        raise Problem(409, f"scan already finished: {row['status']}", code="already-finished", scanStatus=row["status"])
    _audit(request, audit.Action.SCAN_CANCEL, audit.Outcome.OK, scan_id, tenant)
    try:
        # What arq's Job.abort does, without waiting for the result: a running job is cancelled,
        # a queued one is dropped when a worker picks it up.
        await state.redis.zadd(abort_jobs_ss, {str(scan_id): timestamp_ms()})
    except Exception as exc:  # the row is CANCELLED already; a worker that claims it does nothing
        logger.warning("could not signal abort: %s", type(exc).__name__, extra={"scan_id": str(scan_id)})
    return JSONResponse({"scanId": str(scan_id), "status": row["status"]}, status_code=202)


async def retry_scan(request: Request) -> Response:
    """Replay a FAILED scan (a dead one, typically) under the same id."""
    state = State.of(request)
    tenant = scope_tenant(request)
    scan_id = scan_id_of(request)
    identity = request_identity(request.scope)
    try:
        if not limits.open_scans_capped(identity.key_id, state.settings.max_open_scans):
            row = await scans.replay(state.pool, scan_id, tenant)  # one statement: no transaction needed
        else:
            async with state.pool.acquire() as conn, conn.transaction():
                # The reopened scan counts against its owner's cap, whoever asked.
                await limits.reserve_open_scan(conn, tenant, state.settings.max_open_scans)
                row = await scans.replay(conn, scan_id, tenant)
    except Problem:
        _audit(request, audit.Action.SCAN_RETRY, audit.Outcome.REFUSED, scan_id, tenant)
        raise
    if row is None:
        current = await scans.status(state.pool, scan_id, tenant)
        if current is None:
            _audit(request, audit.Action.SCAN_RETRY, audit.Outcome.NOT_FOUND, scan_id, tenant)
            raise scan_not_found()
        _audit(request, audit.Action.SCAN_RETRY, audit.Outcome.CONFLICT, scan_id, tenant)
        raise Problem(
            409,
            f"only FAILED scans can be retried; this one is {current['status']}",
            code="not-failed",
            scanStatus=current["status"],
        )
    _audit(request, audit.Action.SCAN_RETRY, audit.Outcome.OK, scan_id, tenant)
    try:
        await queue.requeue_scan(state.redis, state.settings.queue_name, str(scan_id))
    except Exception as exc:  # QUEUED in the table: the sweeper enqueues it once Redis is back
        logger.warning(
            "enqueue failed, scan left for the sweeper: %s", type(exc).__name__, extra={"scan_id": str(scan_id)}
        )
    status_url = f"{PREFIX}/{scan_id}/status"
    return JSONResponse(
        {"scanId": str(scan_id), "status": row["status"], "statusUrl": status_url},
        status_code=202,
        headers={"Location": status_url},
    )


def _audit(request: Request, action: audit.Action, outcome: audit.Outcome, scan_id: uuid.UUID, tenant: str) -> None:
    identity = request_identity(request.scope)
    audit.record(
        action,
        outcome,
        actor_key_id=identity.key_id,
        actor_tenant=identity.tenant,
        via="api",
        scan_id=str(scan_id),
        target_tenant=tenant,
    )


def _decode_cursor(raw: str) -> tuple[datetime, uuid.UUID]:
    try:
        text = base64.urlsafe_b64decode(raw.encode() + b"=" * (-len(raw) % 4)).decode()
        created, scan_id = text.split("|", 1)
        return datetime.fromisoformat(created), uuid.UUID(scan_id)
    except (ValueError, UnicodeDecodeError, binascii.Error):
        raise Problem(
            422, "invalid cursor", code="validation", errors=[{"field": "cursor", "message": "invalid cursor"}]
        ) from None


def _encode_cursor(row: Record) -> str:
    text = f"{row['created_at'].isoformat()}|{row['id']}"
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _query_error(field: str, message: str) -> Problem:
    return Problem(422, "invalid query parameter", code="validation", errors=[{"field": field, "message": message}])


async def list_scans(request: Request) -> Response:
    params = request.query_params
    status = None
    if raw_status := params.get("status"):
        try:
            status = Status(raw_status.upper())
        except ValueError:
            raise _query_error("status", f"one of {', '.join(Status)}") from None
    raw_limit = params.get("limit", "20")
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= 100:
        raise _query_error("limit", "an integer from 1 to 100")
    limit = int(raw_limit)
    before = _decode_cursor(params["cursor"]) if params.get("cursor") else None
    rows = await scans.page(
        State.of(request).pool, tenant=scope_tenant(request), status=status, limit=limit + 1, before=before
    )
    items = [status_json(r) for r in rows[:limit]]
    next_cursor = _encode_cursor(rows[limit - 1]) if len(rows) > limit else None
    return JSONResponse({"items": items, "nextCursor": next_cursor})


routes = [
    Route(PREFIX, create_scan, methods=["POST"]),
    Route(PREFIX, list_scans, methods=["GET"]),
    Route(PREFIX + "/{scanId}/status", get_status, methods=["GET"]),
    Route(PREFIX + "/{scanId}/teaser", get_teaser, methods=["GET"]),
    Route(PREFIX + "/{scanId}/full", get_full, methods=["GET"]),
    Route(PREFIX + "/{scanId}", cancel_scan, methods=["DELETE"]),
    Route(PREFIX + "/{scanId}/retry", retry_scan, methods=["POST"]),
]
