"""GET /api/v1/queues: queue depth by state, oldest pending age, and live workers.

Admins only: the queue is every tenant's, and its depth says how busy the others are."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.api.auth import require_admin
from app.api.schemas import reply
from app.api.state import State
from app.core.report import Count, Wire
from observability.sampler import live_workers, read_snapshot, sample_queue


class QueueDepth(Wire):
    """Jobs per state (the states of pagelens_queue_size) in one queue."""

    name: str
    pending: Count
    deferred: Count
    active: Count
    retry: Count
    dead: Count
    oldest_pending_age_seconds: Annotated[float, Field(ge=0)]
    sampled_at: Annotated[str, Field(json_schema_extra={"format": "date-time"})]


class Workers(Wire):
    live: Count


class Queues(Wire):
    queues: list[QueueDepth]
    workers: Workers


async def list_queues(request: Request) -> Response:
    require_admin(request)
    state = State.of(request)
    queue = state.settings.queue_name
    # The elected sampler's snapshot is the same number pagelens_queue_size exports. It expires a
    # few intervals after its leader stops publishing; then answer from a sample of our own.
    snapshot = await read_snapshot(state.redis, queue)
    if snapshot is None:
        snapshot = await sample_queue(state.redis, state.pool, queue)
    live = await live_workers(state.redis, queue)
    return reply(Queues(queues=[QueueDepth.model_validate(snapshot)], workers=Workers(live=live)))


routes = [Route("/api/v1/queues", list_queues, methods=["GET"])]
