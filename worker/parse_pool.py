"""Parsing a page in a child process that can be killed: a deadline per task, and cancel means kill.

lexbor, the HTML parser, is quadratic on some markup (thousands of unclosed formatting elements,
deep nesting, one element with tens of thousands of attributes): a 1.4 MB page can take minutes,
inside one C call that no thread can interrupt. So the work whose cost a page controls (parsing
HTML and extracting its text, a document's word count) runs here, in a pebble `ProcessPool` of
spawned children that load only the parser. A task past its deadline, or whose caller gave up (the
scan was cancelled, timed out, or its worker is stopping), has its child killed within pebble's
0.1 s poll and replaced; the other children and their tasks carry on. A late task is a
`too_complex` page: the same page would take as long again, so it is not retried.

Parsing has a pool of its own rather than a place in the KeyBERT pool: killing a KeyBERT child
costs a model load of seconds, and a parse must not wait behind a keyphrase batch (the figures are
in docs/performance.md).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from pebble import ProcessExpired, ProcessPool

from app.core.models import ErrorType, ScanError
from worker.children import die_on_sigterm, exit_with_parent
from worker.turns import FairSlots

logger = logging.getLogger("pagelens.parse")

T = TypeVar("T")


def _init_child() -> None:
    die_on_sigterm()
    exit_with_parent()
    import worker.parse  # noqa: F401  # loaded once per child, not on its first page


def _stop(pool: ProcessPool) -> None:
    """Mark the pool stopped: no new tasks; `join` then kills its children."""
    pool.stop()  # type: ignore[no-untyped-call]


def _closed() -> ScanError:
    return ScanError(ErrorType.INTERNAL, "parser pool is closed", retryable=True)


class ParsePool:
    def __init__(self, processes: int = 2) -> None:
        self.processes = max(1, processes)
        self._pool: ProcessPool | None = None
        self._closed = False
        self._running: set[concurrent.futures.Future[Any]] = set()
        # At most one task per child is handed to pebble, the rest wait here in turns per tenant: a
        # tenant's hostile pages (each may hold a child up to its deadline) hold up another
        # tenant's page by at most the tasks already running, not by every page queued before it.
        self._slots = FairSlots(self.processes)

    @property
    def pids(self) -> list[int]:
        """The children's process ids (for tests and the memory figures)."""
        # Private, but the only handle on pebble's children; they are replaced as they are killed.
        manager: Any = getattr(self._pool, "_pool_manager", None)
        return sorted(manager.worker_manager.workers) if manager is not None else []

    async def start(self) -> None:
        """Start the children and wait until one answers, so the first scan does not pay for it."""
        await self.run(os.getpid, deadline=60.0, task="start the parser")

    async def run(
        self, function: Callable[..., T], *args: Any, deadline: float, task: str = "parse the page", share: str = ""
    ) -> T:
        """`function(*args)` in a child, killed after `deadline` seconds (a `too_complex` ScanError)
        or as soon as the awaiting task is cancelled. `function` and `args` must be picklable.
        While every child is busy, calls wait in turns per `share` (the scan's tenant)."""
        async with self._slots.slot(share):
            return await self._run(function, args, deadline, task)

    async def _run(self, function: Callable[..., T], args: tuple[Any, ...], deadline: float, task: str) -> T:
        future = self._schedule(function, args, deadline)
        self._running.add(future)
        future.add_done_callback(self._running.discard)
        try:
            # Cancelling the awaiting task cancels `future`, and pebble kills the child running it.
            result: T = await asyncio.wrap_future(future)
        except TimeoutError:
            logger.warning("a child took more than %gs to %s; it was killed", deadline, task)
            raise ScanError(ErrorType.TOO_COMPLEX, f"took more than {deadline:g}s to {task}") from None
        except (ProcessExpired, BrokenProcessPool) as exc:
            # Killed from outside (the OOM killer, an operator) or crashed: not the page's fault
            # as far as anyone can tell, so the scan may run again. (pebble replaces a child that
            # died on a task; when every child died, the next call starts a new pool.)
            logger.warning("the process to %s died: %s", task, exc)
            raise ScanError(ErrorType.INTERNAL, f"the process to {task} died", retryable=True) from exc
        return result

    def _schedule(self, function: Callable[..., T], args: tuple[Any, ...], deadline: float) -> Any:
        if self._closed:
            raise _closed()
        for _ in range(2):
            if self._pool is not None and not self._pool.active:
                _stop(self._pool)  # its threads are gone already; this only marks it stopped
                self._pool = None
            if self._pool is None:
                # spawn, never fork: the worker has an event loop and threads whose locks a fork
                # would copy. The pool starts its children on the first task.
                ctx = multiprocessing.get_context("spawn")
                self._pool = ProcessPool(self.processes, initializer=_init_child, context=ctx)
            try:
                return self._pool.schedule(function, args=args, timeout=deadline)
            except RuntimeError:
                # One of pebble's threads died ("Unexpected error within the Pool"): a new pool.
                logger.warning("parser pool broken; replacing it")
                _stop(self._pool)
                self._pool = None
        raise ScanError(ErrorType.INTERNAL, "parser pool could not be started", retryable=True)

    async def close(self) -> None:
        """Kill the children at once (a stopping worker's scans are cancelled already) and fail
        what still waits for them."""
        self._closed = True
        self._slots.fail_waiting(_closed())
        pool, self._pool = self._pool, None
        if pool is not None:
            _stop(pool)
            await asyncio.to_thread(pool.join)
        for future in list(self._running):
            # (pebble's thread may settle it meanwhile.)
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                future.set_exception(_closed())
