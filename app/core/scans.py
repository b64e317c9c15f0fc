"""The scans table: every read and write of a scan goes through here.

Worker writes are fenced: a worker claims a scan by bumping `attempts` and taking a lease, and every
later write names that attempt, so a stale or duplicate delivery of the same job changes nothing.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from app.core.db import timed
from app.core.keys import DEFAULT_TENANT
from app.core.models import CLAIMABLE, OPEN, STAGE_PROGRESS, TERMINAL, Kind, ScanError, Stage, Status
from app.core.report import Findings, Teaser
from app.core.types import Executor, JSONDict, Record

_CLAIMABLE = [s.value for s in CLAIMABLE]


@dataclass(frozen=True)
class NewScan:
    kind: Kind
    url: str | None = None
    document: str | None = None
    title: str | None = None
    options: JSONDict | None = None
    idempotency_key: str | None = None
    request_hash: str | None = None
    trace_id: str | None = None
    api_key_id: str | None = None  # the API key that created it: its row id, or a bootstrap key's digest
    tenant: str = DEFAULT_TENANT  # whose it is: every read and write of the API is scoped by it


@timed("scans.create")
async def create(db: Executor, scan: NewScan) -> tuple[Record, bool]:
    """Insert a scan; with an idempotency key already used, return the earlier scan instead."""
    row = await db.fetchrow(
        """INSERT INTO scans (id, kind, url, document, title, options, idempotency_key, request_hash, trace_id,
                              api_key_id, tenant)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
           ON CONFLICT (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
           RETURNING *""",
        uuid.uuid4(),
        scan.kind.value,
        scan.url,
        scan.document,
        scan.title,
        scan.options or {},
        scan.idempotency_key,
        scan.request_hash,
        scan.trace_id,
        scan.api_key_id,
        scan.tenant,
    )
    if row is not None:
        return row, True
    existing = await db.fetchrow(
        "SELECT * FROM scans WHERE tenant = $1 AND idempotency_key = $2", scan.tenant, scan.idempotency_key
    )
    assert existing is not None  # the conflicting row cannot vanish: scans are deleted only by retention
    return existing, False


# Reads and writes on behalf of a client name the tenant: another tenant's scan is found exactly as
# an unknown id is not (the same query, the same answer).


@timed("scans.get")
async def get(db: Executor, scan_id: uuid.UUID, tenant: str) -> Record | None:
    row: Record | None = await db.fetchrow("SELECT * FROM scans WHERE id = $1 AND tenant = $2", scan_id, tenant)
    return row


# What a status answer and a status event show (and `version`): no documents, teasers or reports.
# A constant, so the f-strings below build no SQL from input.
_STATUS_COLUMNS = (
    "id, url, status, stage, progress, error, trace_id, attempts, created_at, updated_at, timings, version, tenant"
)


@timed("scans.status")
async def status(db: Executor, scan_id: uuid.UUID, tenant: str) -> Record | None:
    """The status columns of one scan, for the endpoint clients poll."""
    row: Record | None = await db.fetchrow(
        f"SELECT {_STATUS_COLUMNS} FROM scans WHERE id = $1 AND tenant = $2",  # noqa: S608
        scan_id,
        tenant,
    )
    return row


@timed("scans.statuses")
async def statuses(db: Executor, scan_ids: list[uuid.UUID]) -> list[Record]:
    """The status columns of these scans, whoever's (the event hub checks each row's tenant)."""
    return await db.fetch(f"SELECT {_STATUS_COLUMNS} FROM scans WHERE id = ANY($1::uuid[])", scan_ids)  # noqa: S608


@timed("scans.page")
async def page(
    db: Executor, *, tenant: str, status: Status | None, limit: int, before: tuple[datetime, uuid.UUID] | None
) -> list[Record]:
    """One tenant's scans, newest first; `before` is the (created_at, id) of the last row of the
    previous page."""
    conditions: list[str] = ["tenant = $1"]
    args: list[Any] = [tenant]
    if status is not None:
        args.append(status.value)
        conditions.append(f"status = ${len(args)}")
    if before is not None:
        args.extend(before)
        conditions.append(f"(created_at, id) < (${len(args) - 1}, ${len(args)})")
    where = f"WHERE {' AND '.join(conditions)}"
    args.append(limit)
    query = f"SELECT * FROM scans {where} ORDER BY created_at DESC, id DESC LIMIT ${len(args)}"  # noqa: S608
    return await db.fetch(query, *args)


@timed("scans.cancel")
async def cancel(db: Executor, scan_id: uuid.UUID, tenant: str) -> Record | None:
    """Cancel a scan that has not finished; returns the row as it now is (None when unknown)."""
    row: Record | None = await db.fetchrow(
        """UPDATE scans SET status = 'CANCELLED', lease_until = NULL, updated_at = now(), finished_at = now()
           WHERE id = $1 AND tenant = $3 AND status = ANY($2::text[]) RETURNING *""",
        scan_id,
        OPEN,
        tenant,
    )
    return row if row is not None else await get(db, scan_id, tenant)


@timed("scans.claim")
async def claim(db: Executor, scan_id: uuid.UUID, lease_seconds: float, max_tries: int | None = None) -> Record | None:
    """Take the scan for one attempt. None when it is finished, cancelled, leased by a live attempt,
    or has used its `max_tries` attempts (counted since its last replay; None: no limit): see
    `unclaimable`."""
    row: Record | None = await db.fetchrow(
        """UPDATE scans
           SET status = CASE WHEN status = 'QUEUED' THEN 'RUNNING' ELSE status END,
               attempts = attempts + 1,
               lease_until = now() + make_interval(secs => $3),
               error = NULL,
               updated_at = now()
           WHERE id = $1 AND status = ANY($2::text[]) AND (lease_until IS NULL OR lease_until < now())
             AND ($4::int IS NULL OR attempts - retry_base < $4)
           RETURNING *""",
        scan_id,
        _CLAIMABLE,
        lease_seconds,
        max_tries,
    )
    return row


class Unclaimable(StrEnum):
    GONE = "gone"  # deleted, finished or cancelled: a duplicate delivery
    LEASED = "leased"  # another attempt holds a live lease (or it just ran out: try again)
    EXHAUSTED = "exhausted"  # every try was used; see `give_up`


@timed("scans.unclaimable")
async def unclaimable(db: Executor, scan_id: uuid.UUID, max_tries: int) -> tuple[Unclaimable, float]:
    """Why `claim` refused the scan, and for LEASED the seconds until the lease runs out."""
    row = await db.fetchrow(
        """SELECT status, attempts - retry_base AS tries,
                  GREATEST(0, extract(epoch FROM lease_until - now()))::float8 AS lease_left
           FROM scans WHERE id = $1""",
        scan_id,
    )
    if row is None or row["status"] not in _CLAIMABLE:
        return Unclaimable.GONE, 0.0
    if row["lease_left"]:
        return Unclaimable.LEASED, float(row["lease_left"])
    if row["tries"] >= max_tries:
        return Unclaimable.EXHAUSTED, 0.0
    return Unclaimable.LEASED, 0.0


@timed("scans.give_up")
async def give_up(db: Executor, scan_id: uuid.UUID, max_tries: int) -> bool:
    """FAILED with `retries_exhausted` for a scan that used every try without finishing (its workers
    died, timed out or were stopped). The last error an attempt recorded is its `cause` and is named
    in the message; it is as retryable as that cause, and not at all when none was recorded (workers
    that die on a scan every time may die on its replay too)."""
    result = await db.execute(
        """UPDATE scans
           SET status = 'FAILED', lease_until = NULL, finished_at = now(), updated_at = now(),
               error = jsonb_build_object(
                   'type', 'retries_exhausted',
                   'retryable', COALESCE((error->>'retryable')::boolean, false),
                   'message', CASE WHEN error IS NULL
                       THEN format('no attempt finished after %s tries', attempts - retry_base)
                       ELSE format('gave up after %s attempts; last error (%s): %s',
                                   attempts - retry_base, error->>'type', error->>'message') END)
                   || CASE WHEN error IS NULL THEN '{}'::jsonb ELSE jsonb_build_object('cause', error) END
           WHERE id = $1 AND status = ANY($2::text[]) AND (lease_until IS NULL OR lease_until < now())
             AND attempts - retry_base >= $3""",
        scan_id,
        _CLAIMABLE,
        max_tries,
    )
    return result != "UPDATE 0"


@timed("scans.enter_stage")
async def enter_stage(
    db: Executor, scan_id: uuid.UUID, attempt: int, stage: Stage, timings: dict[str, float] | None = None
) -> bool:
    """Start `stage`; `timings` of the stages before it go in the same write (one round trip and one
    change event instead of two)."""
    return await _fenced(
        db,
        scan_id,
        attempt,
        "stage = $3, progress = GREATEST(progress, $4), timings = timings || $5::jsonb",
        stage.value,
        STAGE_PROGRESS[stage],
        {k: round(v, 1) for k, v in (timings or {}).items()},
    )


@timed("scans.save_teaser")
async def save_teaser(db: Executor, scan_id: uuid.UUID, attempt: int, teaser: Teaser) -> bool:
    return await _fenced(
        db,
        scan_id,
        attempt,
        "teaser = $3, status = 'TEASER_READY', progress = GREATEST(progress, 40)",
        teaser.to_json(),
    )


@timed("scans.finish")
async def finish(db: Executor, scan_id: uuid.UUID, attempt: int, report: Findings, timings: dict[str, float]) -> bool:
    """The final write: report, timings and FULL_READY together, only for the attempt holding the scan.
    The API reads the row back as a `Report` (`Report.from_row`)."""
    return await _fenced(
        db,
        scan_id,
        attempt,
        """report = $3, timings = timings || $4::jsonb, status = 'FULL_READY', progress = 100,
           lease_until = NULL, finished_at = now()""",
        report.to_json(),
        {k: round(v, 1) for k, v in timings.items()},
    )


@timed("scans.fail")
async def fail(db: Executor, scan_id: uuid.UUID, attempt: int, error: ScanError) -> bool:
    return await _fenced(
        db, scan_id, attempt, "status = 'FAILED', error = $3, lease_until = NULL, finished_at = now()", error.to_json()
    )


@timed("scans.release_for_retry")
async def release_for_retry(db: Executor, scan_id: uuid.UUID, attempt: int, error: ScanError | None) -> bool:
    """Give the lease back so the next run can claim the scan; the error shows why it waits."""
    return await _fenced(db, scan_id, attempt, "error = $3, lease_until = NULL", error and error.to_json())


@timed("scans.release_lost")
async def release_lost(db: Executor, scan_ids: list[uuid.UUID]) -> int:
    """Hand back the leases of scans whose worker died (worker/recovery.py), so that their next
    delivery can claim them at once. arq still marks each job in progress for the dead worker, so no
    other attempt can hold these leases; the next claim bumps `attempts`, which fences out any late
    write of the lost attempt."""
    result = await db.execute(
        """UPDATE scans SET lease_until = NULL, updated_at = now()
           WHERE id = ANY($1::uuid[]) AND status IN ('RUNNING', 'TEASER_READY') AND lease_until IS NOT NULL""",
        scan_ids,
    )
    return int(result.rsplit(" ", 1)[-1])


@timed("scans.replay")
async def replay(db: Executor, scan_id: uuid.UUID, tenant: str) -> Record | None:
    """Put a FAILED scan of `tenant` back to QUEUED with a fresh retry budget; None when it is not
    FAILED. Whoever asks, the scan keeps its owner: its tenant and the key that created it."""
    row: Record | None = await db.fetchrow(
        """UPDATE scans
           SET status = 'QUEUED', stage = NULL, progress = 0, error = NULL, teaser = NULL, report = NULL,
               timings = '{}'::jsonb, lease_until = NULL, finished_at = NULL, retry_base = attempts,
               updated_at = now()
           WHERE id = $1 AND tenant = $2 AND status = 'FAILED' RETURNING *""",
        scan_id,
        tenant,
    )
    return row


@timed("scans.delete_older_than")
async def delete_older_than(db: Executor, days: int) -> int:
    result = await db.execute(
        "DELETE FROM scans WHERE created_at < now() - make_interval(days => $1) AND status = ANY($2::text[])",
        days,
        [s.value for s in TERMINAL],
    )
    return int(result.rsplit(" ", 1)[-1])


async def _fenced(db: Executor, scan_id: uuid.UUID, attempt: int, assignments: str, *values: Any) -> bool:
    # $1 is the scan, $2 the attempt; assignments use $3 onwards.
    result = await db.execute(
        f"""UPDATE scans SET {assignments}, updated_at = now()
            WHERE id = $1 AND attempts = $2 AND status IN ('RUNNING', 'TEASER_READY')""",  # noqa: S608
        scan_id,
        attempt,
        *values,
    )
    return result != "UPDATE 0"
