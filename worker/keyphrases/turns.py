"""Waiting work taken in turns per share (a tenant): the keyphrase pool's queue.

First come, first served lets one tenant's many long texts hold up another tenant's one short text
until all of them are done. Here the oldest request of each share is taken in rotation: a share
that was just served waits behind every other share with work waiting, and each share's requests
keep their order.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar


class Shared(Protocol):
    @property
    def share(self) -> str: ...


T = TypeVar("T", bound=Shared)


class Turns(Generic[T]):
    def __init__(self) -> None:
        self._queues: dict[str, deque[T]] = {}  # in turn order: a dict keeps insertion order

    def __bool__(self) -> bool:
        return bool(self._queues)

    def __iter__(self) -> Iterator[T]:
        return (item for queue in self._queues.values() for item in queue)

    def append(self, item: T) -> None:
        """Last in its share's line; a share with nothing waiting joins the rotation at its end."""
        self._queues.setdefault(item.share, deque()).append(item)

    def put_back(self, item: T) -> None:
        """First in line again: its share's next, and that share's turn first."""
        queue = self._queues.pop(item.share, deque())
        queue.appendleft(item)
        self._queues = {item.share: queue, **self._queues}

    def peek(self) -> T:
        """What `pop` would take (there must be something waiting)."""
        return next(iter(self._queues.values()))[0]

    def pop(self) -> T:
        """The item whose turn it is; its share then waits behind the others."""
        share, queue = next(iter(self._queues.items()))
        item = queue.popleft()
        del self._queues[share]
        if queue:
            self._queues[share] = queue
        return item

    def clear(self) -> None:
        self._queues.clear()
