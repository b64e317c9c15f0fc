"""Waiting in a test for something to happen, bounded: a broken test fails instead of hanging."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable


async def until(condition: Callable[[], bool | Awaitable[object]], what: str, *, poll: float, polls: int) -> None:
    """Return once `condition()` (a plain or an async check) is true, checked every `poll` s;
    AssertionError naming `what` after `polls` checks that were not."""
    for _ in range(polls):
        result = condition()
        if await result if inspect.isawaitable(result) else result:
            return
        await asyncio.sleep(poll)
    raise AssertionError(f"timed out waiting for {what}")
