"""The audit trail: who created or revoked a key, cancelled, retried or replayed a scan.

Each action logs one JSON line on the `pagelens.audit` logger, with the acting key's id and tenant
(never the secret), the scan or key acted on and the trace id (added by the log formatter), and
counts in `pagelens_audit_events_total{action, outcome}`. Both label sets are closed enums, so the
metric stays small whatever the traffic.
"""

from __future__ import annotations

import logging
from enum import StrEnum

from observability import metrics

logger = logging.getLogger("pagelens.audit")


class Action(StrEnum):
    KEY_CREATE = "key_create"
    KEY_REVOKE = "key_revoke"
    SCAN_CANCEL = "scan_cancel"
    SCAN_RETRY = "scan_retry"


class Outcome(StrEnum):
    OK = "ok"
    NOT_FOUND = "not_found"  # unknown, or another tenant's (the same answer, deliberately)
    CONFLICT = "conflict"  # the scan's state did not allow it (already finished, not FAILED)
    REFUSED = "refused"  # a limit (open-scan cap) or a missing role
    UNCHANGED = "unchanged"  # allowed, but there was nothing to do (revoking a revoked key)


def record(
    action: Action,
    outcome: Outcome,
    *,
    actor_key_id: str | None,
    actor_tenant: str,
    via: str,
    scan_id: str | None = None,
    target_key_id: str | None = None,
    target_tenant: str | None = None,
) -> None:
    """`via`: "api" or "cli". `actor_key_id` is None for the open API (no keys) and for the CLI."""
    metrics.audit_events_total.inc({"action": action.value, "outcome": outcome.value})
    logger.info(
        "%s %s",
        action.value,
        outcome.value,
        extra={
            "audit_action": action.value,
            "outcome": outcome.value,
            "key_id": actor_key_id,
            "tenant": actor_tenant,
            "via": via,
            "scan_id": scan_id,
            "target_key_id": target_key_id,
            "target_tenant": target_tenant,
        },
    )
