"""The keyphrase pool as the worker sees it: spawned children that hold the model, fed in batches.

The model runs only in spawned child processes (worker/keyphrases/model.py): the event loop never
executes model code, and the worker never imports torch or keybert, so it stays small and
fork-free. Jobs that wait for the pool at the same time go to it together in one call (up to
`MAX_BATCH` texts), which shares the embeddings of the phrases their texts have in common.

A child's time is bounded like a parser's (worker/parse_pool.py): a call past its deadline has its
pool killed and replaced, and the text is `too_complex` (a batch that times out is tried again
one text at a time, so only the text that takes too long fails); a call whose callers have all
given up (their scans cancelled or timed out) is killed after `ABANDON_GRACE`; a child that dies
is replaced and its call tried once more.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import multiprocessing
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from typing import Any, TypeVar

from app.core.models import ErrorType, ScanError
from app.core.tasks import cancel_all
from worker.keyphrases import model
from worker.keyphrases.model import STARTUP_TIMEOUT, THREADS, Item, Phrases, prepare
from worker.turns import Turns

logger = logging.getLogger("pagelens.keyphrases")

T = TypeVar("T")

STOP_GRACE = 5.0  # close(): how long running tasks may finish before their child is killed
# A call nobody waits for any more runs on this long (it may be about to finish) before its child
# is killed: a kill costs a model load of seconds, and the scans that ended must not keep a core.
ABANDON_GRACE = 1.0
# Texts per pool call: jobs waiting together share one call (and its new phrases' embeddings), but
# all of them wait for the whole call, so not too many.
MAX_BATCH = 8


def _processes(executor: ProcessPoolExecutor) -> dict[int, BaseProcess]:
    # Private, but the only handle on the children: 3.11 has no public way to kill a stuck worker.
    procs: dict[int, BaseProcess] | None = getattr(executor, "_processes", None)
    return dict(procs or {})


def _stop_pool(executor: ProcessPoolExecutor, grace: float) -> None:
    """Blocking (run it in a thread): stop the pool, killing children still busy after `grace`."""
    procs = list(_processes(executor).values())
    # No cancel_futures: queued calls of other callers then fail with BrokenProcessPool and retry on
    # the next pool, instead of surfacing as a CancelledError in a task nobody cancelled.
    executor.shutdown(wait=False)
    deadline = time.monotonic() + grace
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.kill()
    for p in procs:
        p.join(5.0)


def _fail(requests: Iterable[_Request], exc: ScanError) -> None:
    for request in requests:
        if not request.future.done():
            request.future.set_exception(exc)


def _closed() -> ScanError:
    return ScanError(ErrorType.INTERNAL, "keyphrase extractor is closed", retryable=True)


def short(exc: BaseException) -> str:
    """An exception in one line of at most 200 characters, for a log line or an error message."""
    # The child's traceback stays on __cause__ for the logs; the message a client sees stays short.
    detail = " ".join(str(exc).split())
    text = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
    return text if len(text) <= 200 else text[:199] + "…"


@dataclass(eq=False)
class _Request:
    items: list[Item]
    future: asyncio.Future[list[Phrases]]
    share: str = ""  # whose turn it waits for: the scan's tenant
    alone: bool = False  # its batch timed out: it goes to the pool in a call of its own


class KeyphraseExtractor:
    def __init__(
        self,
        processes: int = 1,
        timeout: float = 60.0,
        max_batch: int = MAX_BATCH,
        threads: int = THREADS,
        *,
        plain_ranking: bool = False,
    ) -> None:
        self.processes = max(1, processes)
        self.threads = max(1, threads)  # embedding threads in each child (model.init_child)
        self.plain_ranking = plain_ranking  # KeyBERT's own MMR in the children (model.init_child)
        self.timeout = timeout  # per text; a call's timeout scales with the number of texts in it
        self.max_batch = max(1, max_batch)
        self._executor: ProcessPoolExecutor | None = None
        self._generation = 0
        self._closed = False
        self._lock = asyncio.Lock()  # serialises pool creation and replacement
        # Requests wait here, in turns per tenant; one dispatcher per child takes the waiting ones
        # together and keeps at most one call in flight on its child, so a call starts as soon as it
        # is submitted and the timeout measures extraction, not time spent queued behind other calls.
        self._waiting: Turns[_Request] = Turns()
        self._work = asyncio.Event()
        self._dispatchers: list[asyncio.Task[None]] = []
        # What the pool did (for the benchmark and tests): calls, distinct candidate phrases per
        # call summed, and of those the ones a child had to embed (not cached).
        self.calls = 0
        self.phrases = 0
        self.embedded = 0

    @property
    def pid_list(self) -> list[int]:
        return sorted(_processes(self._executor)) if self._executor else []

    async def start(self) -> None:
        await self._current()

    async def close(self) -> None:
        async with self._lock:
            self._closed = True
            executor, self._executor = self._executor, None
        await cancel_all(self._dispatchers)
        self._dispatchers = []
        _fail(self._waiting, _closed())
        self._waiting.clear()
        if executor is not None:
            await asyncio.to_thread(_stop_pool, executor, STOP_GRACE)

    async def extract(self, text: str, *, top_n: int = 10, share: str = "") -> Phrases:
        return (await self.extract_many([text], top_n=top_n, share=share))[0]

    async def extract_many(self, texts: list[str], *, top_n: int = 10, share: str = "") -> list[Phrases]:
        """The keyphrases of each text. `share` (the scan's tenant) is whose turn the texts wait
        for when the pool is busy."""
        prepared = [prepare(t) for t in texts]
        todo = [p for p in prepared if p is not None]
        if not todo:
            return [[] for _ in texts]
        if self._closed:
            raise _closed()
        future = asyncio.get_running_loop().create_future()
        request = _Request([(text, top_n) for text in todo], future, share)
        self._waiting.append(request)
        self._work.set()
        if not self._dispatchers:
            # In an empty context: they outlive this caller and serve every later scan, so they
            # must not log (or keep alive) the first caller's span and scan fields.
            self._dispatchers = [
                asyncio.create_task(self._dispatch(), context=contextvars.Context()) for _ in range(self.processes)
            ]
        try:
            found = iter(await request.future)
        finally:
            request.future.cancel()  # when this caller was cancelled first: the dispatcher skips it
        return [[] if p is None else next(found) for p in prepared]

    async def run_in_child(self, function: Callable[..., T], *args: Any) -> T:
        """`function(*args)` in a child of this pool, where the model is loaded, outside the
        batching and the deadline: for probes and reference computations (tests, benchmark)."""
        executor, _ = await self._current()
        return await asyncio.wrap_future(executor.submit(function, *args))

    async def _dispatch(self) -> None:
        while True:
            await self._work.wait()
            batch = self._take()
            if not self._waiting:
                self._work.clear()
            if batch:
                await self._serve(batch)

    def _take(self) -> list[_Request]:
        """The waiting requests whose turn it is, as many as fit into one call (always at least one)."""
        batch: list[_Request] = []
        size = 0
        while self._waiting and (not batch or size + len(self._waiting.peek().items) <= self.max_batch):
            if batch and self._waiting.peek().alone:
                break
            request = self._waiting.pop()
            if not request.future.done():  # its caller gave up
                batch.append(request)
                size += len(request.items)
                if request.alone:
                    break
        return batch

    async def _serve(self, batch: list[_Request]) -> None:
        call = asyncio.ensure_future(self._call([item for request in batch for item in request.items]))
        try:
            found = await self._unless_abandoned(call, batch)
        except ScanError as exc:
            if exc.type is ErrorType.TOO_COMPLEX and len(batch) > 1:
                # Which text took too long is unknown: each goes again in a call of its own.
                for request in reversed(batch):
                    request.alone = True
                    self._waiting.put_back(request)
                self._work.set()
                return
            _fail(batch, exc)
            return
        except asyncio.CancelledError:  # close(): the callers must not wait forever
            _fail(batch, _closed())
            raise
        if found is None:
            return
        offset = 0
        for request in batch:
            if not request.future.done():
                request.future.set_result(found[offset : offset + len(request.items)])
            offset += len(request.items)

    async def _unless_abandoned(
        self, call: asyncio.Future[list[Phrases]], batch: list[_Request]
    ) -> list[Phrases] | None:
        """The call's result, or None once every caller in `batch` gave up and the call, given
        `ABANDON_GRACE` more, still runs: then its child is killed (with the pool it is in)."""
        abandoned = asyncio.get_running_loop().create_future()

        def check(_: object) -> None:
            if all(request.future.done() for request in batch) and not abandoned.done():
                abandoned.set_result(None)

        for request in batch:
            request.future.add_done_callback(check)
        try:
            await asyncio.wait([call, abandoned], return_when=asyncio.FIRST_COMPLETED)
            if not call.done():
                await asyncio.wait([call], timeout=ABANDON_GRACE)
        except asyncio.CancelledError:
            call.cancel()
            raise
        finally:
            abandoned.cancel()
        if call.done():
            return call.result()
        generation = self._generation
        call.cancel()
        with contextlib.suppress(asyncio.CancelledError, ScanError):
            await call
        logger.info("every scan waiting for a keyphrase call has ended; replacing its process")
        await self._replace(generation)
        return None

    async def _call(self, items: list[Item]) -> list[Phrases]:
        for attempt in (1, 2):
            executor, generation = await self._current()
            try:
                future = asyncio.wrap_future(executor.submit(model.extract, items))
                found, phrases, embedded = await asyncio.wait_for(future, self.timeout * len(items))
                self.calls += 1
                self.phrases += phrases
                self.embedded += embedded
                return found
            except TimeoutError:
                # The child is still busy on this text and would keep a core for nothing.
                logger.warning("keyphrase extraction timed out; replacing the process pool")
                await self._replace(generation)
                seconds = self.timeout * len(items)
                raise ScanError(ErrorType.TOO_COMPLEX, f"took more than {seconds:g}s to extract keyphrases") from None
            except BrokenProcessPool:
                logger.warning("keyphrase process pool broken (attempt %d); recreating it", attempt)
                await self._replace(generation)
            except ScanError:
                raise
            except Exception as exc:
                logger.warning("keyphrase extraction failed: %s", short(exc), exc_info=exc)
                raise ScanError(ErrorType.INTERNAL, f"keyphrase extraction failed: {short(exc)}") from exc
        raise ScanError(ErrorType.INTERNAL, "keyphrase worker process died twice", retryable=True)

    async def _current(self) -> tuple[ProcessPoolExecutor, int]:
        async with self._lock:
            if self._closed:
                raise _closed()
            if self._executor is None:
                self._executor = await self._new_pool()
                self._generation += 1
            return self._executor, self._generation

    async def _replace(self, generation: int) -> None:
        async with self._lock:
            # Several callers see the same broken pool; only the first replaces it.
            if generation != self._generation or self._executor is None:
                return
            executor, self._executor = self._executor, None
        await asyncio.to_thread(_stop_pool, executor, 0.0)
        await self._current()  # warm the replacement now rather than in the next job

    async def _new_pool(self) -> ProcessPoolExecutor:
        # spawn, never fork: the parent has an event loop and threads whose locks a fork would copy.
        # (spawn re-imports the main script in each child: entry points need the __main__ guard.)
        ctx = multiprocessing.get_context("spawn")
        executor = ProcessPoolExecutor(
            self.processes,
            mp_context=ctx,
            initializer=model.init_child,
            initargs=(ctx.Barrier(self.processes), self.threads, self.plain_ranking),
        )
        probes: list[asyncio.Future[tuple[int, int]]] = []
        try:
            # Each submit to a spawn pool with no idle child starts one more, so N probes start all N.
            probes = [asyncio.wrap_future(executor.submit(model.child_info)) for _ in range(self.processes)]
            _, pending = await asyncio.wait(probes, timeout=STARTUP_TIMEOUT)
            if pending:
                raise TimeoutError(f"model not loaded after {STARTUP_TIMEOUT:.0f} s")
            for probe in probes:
                probe.result()  # re-raises BrokenProcessPool when a child died loading the model
        except BaseException as exc:
            # Cancelled mid warm-up included: an executor nobody holds would leave its children behind.
            for probe in probes:
                probe.cancel()  # their BrokenProcessPool is expected; don't log it as never retrieved
            await asyncio.to_thread(_stop_pool, executor, 0.0)
            if not isinstance(exc, Exception):
                raise
            logger.error("keyphrase model failed to load: %s", short(exc))
            raise ScanError(ErrorType.INTERNAL, "keyphrase model failed to load", retryable=True) from exc
        logger.info("keyphrase pool ready: pids %s", sorted(_processes(executor)))
        return executor
