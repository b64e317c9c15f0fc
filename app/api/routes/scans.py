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
from datetime import UTC, datetime

from arq.constants import abort_jobs_ss
from arq.utils import timestamp_ms
from opentelemetry import trace
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.api import limits
from app.api.auth import request_identity, scope_tenant
from app.api.params import ascii_uuid, invalid_query, query_integer
from app.api.problems import Problem
from app.api.schemas import CreateScan, parse_json, reply, validated_idempotency_key, validated_url
from app.api.state import State
from app.core import audit, queue, scans
from app.core.models import Kind, Status
from app.core.report import Accepted, Report, ScanList, ScanRef, ScanStatus, TeaserResponse
from app.core.types import Record

logger = logging.getLogger("pagelens.api")
PREFIX = "/api/v1/scan-jobs"


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
    headers = {"Location": status_url}
    if not created:
        headers["Idempotent-Replayed"] = "true"
    return reply(Accepted(scan_id=row["id"], status=row["status"], status_url=status_url), 202, headers)


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
        return ascii_uuid(request.path_params["scanId"])
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
    return reply(ScanStatus.from_row(_found(row)))


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
    return reply(TeaserResponse(scan_id=row["id"], status=row["status"], teaser=row["teaser"]))


async def get_full(request: Request) -> Response:
    row = await _load(request)
    if row["status"] != Status.FULL_READY:
        raise _not_ready(row, "full report")
    return reply(Report.from_row(row))


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
    return reply(ScanRef(scan_id=scan_id, status=row["status"]), 202)


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
    return reply(Accepted(scan_id=scan_id, status=row["status"], status_url=status_url), 202, {"Location": status_url})


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
        when = datetime.fromisoformat(created)
        if when.tzinfo is None:  # the cursors this API makes carry the zone of timestamptz
            raise ValueError("a cursor time without a zone")
        # In UTC, as the database compares it: a time whose UTC falls outside years 1-9999 is
        # refused here (OverflowError) instead of failing in the query.
        return when.astimezone(UTC), ascii_uuid(scan_id)
    except (ValueError, OverflowError, UnicodeDecodeError, binascii.Error):
        raise Problem(
            422, "invalid cursor", code="validation", errors=[{"field": "cursor", "message": "invalid cursor"}]
        ) from None


def _encode_cursor(row: Record) -> str:
    text = f"{row['created_at'].isoformat()}|{row['id']}"
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


async def list_scans(request: Request) -> Response:
    params = request.query_params
    status = None
    if (raw_status := params.get("status")) is not None:  # "?status=" names no status: refused
        try:
            # Exactly as the document spells the names: no case folding, which in Unicode maps
            # "fa\u0131led" (a dotless i) to FAILED.
            status = Status(raw_status)
        except ValueError:
            raise invalid_query("status", f"one of {', '.join(Status)}") from None
    limit = query_integer(params.get("limit"), field="limit", low=1, high=100, default=20)
    before = _decode_cursor(params["cursor"]) if params.get("cursor") else None
    rows = await scans.page(
        State.of(request).pool, tenant=scope_tenant(request), status=status, limit=limit + 1, before=before
    )
    items = [ScanStatus.from_row(r) for r in rows[:limit]]
    return reply(ScanList(items=items, next_cursor=_encode_cursor(rows[limit - 1]) if len(rows) > limit else None))


async def scan_jobs(request: Request) -> Response:
    # One route for both methods, so that a 405 on this path lists both in its Allow header.
    return await (create_scan if request.method == "POST" else list_scans)(request)


routes = [
    Route(PREFIX, scan_jobs, methods=["GET", "POST"]),
    Route(PREFIX + "/{scanId}/status", get_status, methods=["GET"]),
    Route(PREFIX + "/{scanId}/teaser", get_teaser, methods=["GET"]),
    Route(PREFIX + "/{scanId}/full", get_full, methods=["GET"]),
    Route(PREFIX + "/{scanId}", cancel_scan, methods=["DELETE"]),
    Route(PREFIX + "/{scanId}/retry", retry_scan, methods=["POST"]),
]
