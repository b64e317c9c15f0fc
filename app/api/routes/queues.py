"""GET /api/v1/queues: queue depth by state, oldest pending age, and live workers.

Admins only: the queue is every tenant's, and its depth says how busy the others are."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.api.auth import require_admin
from app.api.state import State
from observability.sampler import live_workers, read_snapshot, sample_queue


async def list_queues(request: Request) -> Response:
    require_admin(request)
    state = State.of(request)
    queue = state.settings.queue_name
    # The elected sampler's snapshot is the same number pagelens_queue_size exports. It expires a
    # few intervals after its leader stops publishing; then answer from a sample of our own.
    snapshot = await read_snapshot(state.redis, queue)
    if snapshot is None:
        snapshot = await sample_queue(state.redis, state.pool, queue)
    return JSONResponse({"queues": [snapshot], "workers": {"live": await live_workers(state.redis, queue)}})


routes = [Route("/api/v1/queues", list_queues, methods=["GET"])]
