"""Waiting work taken in turns per share (a tenant): the queues in front of the worker's process
pools (worker/keyphrases/pool.py, worker/parse_pool.py).

First come, first served lets one tenant's many long texts or hostile pages hold up another
tenant's one scan until all of them are done. Here each share's waiters keep their order, and the
shares take turns: a share's second waiter goes after every other share's first.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar


class Shared(Protocol):
    @property
    def share(self) -> str: ...


T = TypeVar("T", bound=Shared)
_SHARES_KEPT = 1024  # start tags kept before those no longer ahead are dropped


class Turns(Generic[T]):
    """Start-time fair queuing with one unit of work per item: an item's start tag is its share's
    previous item's tag plus one, or the tag being served now if that is later, and the smallest
    tag goes first (ties in arrival order). A share with one item waiting is served before a share's
    second item, whoever queued first; a share that was just served (`charge`) waits behind the
    others."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, T]] = []
        self._next: dict[str, int] = {}  # each share's next start tag, where it is ahead of `_now`
        self._now = 0  # the start tag of what was served last
        self._arrivals = itertools.count()
        self._put_backs = itertools.count(-1, -1)

    def __bool__(self) -> bool:
        return bool(self._heap)

    def __iter__(self) -> Iterator[T]:
        return (item for _, _, item in self._heap)

    def _tag(self, share: str) -> int:
        tag = max(self._now, self._next.get(share, 0))
        self._next[share] = tag + 1
        if len(self._next) > _SHARES_KEPT:  # a share whose next tag is not ahead is as good as new
            self._next = {name: next_ for name, next_ in self._next.items() if next_ > self._now}
        return tag

    def append(self, item: T) -> None:
        heapq.heappush(self._heap, (self._tag(item.share), next(self._arrivals), item))

    def charge(self, share: str) -> None:
        """`share` is served without waiting (nothing was): its next item waits its turn."""
        self._now = self._tag(share)

    def put_back(self, item: T) -> None:
        """First in line again (it was taken, and could not be served as taken)."""
        heapq.heappush(self._heap, (self._now, next(self._put_backs), item))

    def peek(self) -> T:
        """What `pop` would take (there must be something waiting)."""
        return self._heap[0][2]

    def pop(self) -> T:
        tag, _, item = heapq.heappop(self._heap)
        self._now = max(self._now, tag)
        return item

    def clear(self) -> None:
        self._heap.clear()


@dataclass(eq=False)
class _Waiter:
    share: str
    granted: asyncio.Future[None]


class FairSlots:
    """At most `size` holders at once, like a semaphore; those waiting for a slot get it in turns
    per share (`Turns`), not in arrival order."""

    def __init__(self, size: int) -> None:
        self._free = max(1, size)
        self._waiting: Turns[_Waiter] = Turns()

    @asynccontextmanager
    async def slot(self, share: str = "") -> AsyncIterator[None]:
        await self._acquire(share)
        try:
            yield
        finally:
            self._release()

    def fail_waiting(self, exc: BaseException) -> None:
        """Every waiter gets `exc` instead of a slot (the pool is closing)."""
        for waiter in self._waiting:
            if not waiter.granted.done():
                waiter.granted.set_exception(exc)
        self._waiting.clear()

    async def _acquire(self, share: str) -> None:
        if self._free > 0 and not self._waiting:
            self._free -= 1
            self._waiting.charge(share)
            return
        waiter = _Waiter(share, asyncio.get_running_loop().create_future())
        self._waiting.append(waiter)
        try:
            await waiter.granted
        except asyncio.CancelledError:
            # Cancelled after the slot was handed over, before it could be used: pass it on.
            if waiter.granted.done() and not waiter.granted.cancelled() and waiter.granted.exception() is None:
                self._release()
            raise

    def _release(self) -> None:
        while self._waiting:
            waiter = self._waiting.pop()
            if not waiter.granted.done():  # a cancelled waiter's future is done: skipped
                waiter.granted.set_result(None)  # the slot goes straight to it
                return
        self._free += 1
