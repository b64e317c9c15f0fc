"""KeyBERT in a process pool: the real model, a real Redis, real child processes (no mocks)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import psutil  # type: ignore[import-untyped]  # no types-psutil in the dev deps
import pytest
from redis.asyncio import Redis

from app.core.models import ErrorType, ScanError
from bench.corpus import corpus
from bench.keybert_reference import embedding_threads, load_counts, plain, rankings, ranks_plainly
from bench.real_pages import doc_pages
from tests.waiting import until
from worker.keyphrases import MAX_WORDS, KeyphraseExtractor, cached_keyphrases, keyphrase_cache_key
from worker.parse import parse_html

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent

COMPOST = """
Composting turns kitchen scraps and garden waste into a dark, crumbly material that gardeners call
black gold. A healthy compost pile needs a balance of green materials, such as vegetable peelings,
coffee grounds and fresh grass clippings, and brown materials, such as dry leaves, straw and shredded
cardboard. The greens supply nitrogen while the browns supply carbon, and a ratio of roughly thirty
parts carbon to one part nitrogen keeps the microbes that break everything down well fed. Those
bacteria and fungi need oxygen and moisture too, so the pile should be turned every week or two and
kept about as damp as a wrung-out sponge. A well managed heap heats up to sixty degrees in its core,
which kills weed seeds and many plant pathogens. Worms, beetles and springtails move in as it cools
and finish the job. After two to six months the finished compost smells earthy and no longer looks
like the scraps that went into it. Spread over a garden bed, compost improves soil structure in
almost every soil type. In heavy clay soil it opens up the dense particles so that roots and water
can move through, and in sandy soil it acts like a sponge that holds moisture and nutrients where
roots can reach them. The organic matter feeds earthworms and the soil food web, which in turn builds
stable soil aggregates and better drainage. Compost also releases nitrogen, phosphorus and potassium
slowly, so plants receive a steady supply instead of the sudden flush that synthetic fertilizer
gives. Gardeners who add a few centimetres of compost to their soil each spring usually find that
they water less, fight fewer diseases and harvest more vegetables. Even a small balcony can host a
worm bin, and many towns now collect food waste for large municipal composting sites that return
finished compost to local farms, parks and community gardens, closing the loop on organic waste.
"""


def site_texts() -> list[str]:
    """The main text of the test site's real pages."""
    pages = ROOT / "tests" / "pages"
    return [parse_html(page.read_text(), "http://127.0.0.1/").main_text for page in sorted(pages.glob("*.html"))]


def gone(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)  # reaped or not, it is dead
    except psutil.NoSuchProcess:
        return True


def big_text(words: int = MAX_WORDS) -> str:
    # Many distinct words, so the child has thousands of candidate phrases to embed.
    return " ".join(f"soil{i % 2500} compost garden{i % 700}" for i in range(words // 3))


async def test_composting_paragraph(extractor: KeyphraseExtractor) -> None:
    assert 250 <= len(COMPOST.split()) <= 350
    phrases = await extractor.extract(COMPOST)
    assert 0 < len(phrases) <= 10
    for phrase, score in phrases:
        assert 1 <= len(phrase.split()) <= 2
        assert 0 < score <= 1
        assert round(score, 4) == score
    scores = [s for _, s in phrases]
    assert scores == sorted(scores, reverse=True)
    top = [p for p, _ in phrases[:3]]
    assert any("compost" in p or "soil" in p for p in top), phrases
    assert len(await extractor.extract(COMPOST, top_n=3)) == 3


@pytest.mark.parametrize("text", ["", "   \n\t ", "hi", "compost soil", "12 34 56 78", "!!! ??? ..."])
async def test_empty_or_short_text_needs_no_pool(text: str) -> None:
    # A closed extractor raises on any pool call, so [] here proves none was made.
    idle = KeyphraseExtractor()
    await idle.close()
    assert await idle.extract(text) == []
    assert await idle.extract_many([text, text]) == [[], []]
    assert idle.pid_list == []
    with pytest.raises(ScanError, match="closed"):
        await idle.extract(COMPOST)


async def test_extract_many_matches_extract(extractor: KeyphraseExtractor) -> None:
    other = "The event loop runs coroutines; asyncio tasks wait on sockets while a process pool does CPU work."
    texts = [COMPOST, "", other]
    many = await extractor.extract_many(texts, top_n=5)
    assert len(many) == 3
    assert many == [await extractor.extract(t, top_n=5) for t in texts]
    assert many[1] == []
    assert await extractor.extract_many([]) == []


async def test_huge_text_is_truncated(extractor: KeyphraseExtractor) -> None:
    # Cheap to embed (the paragraph repeated), with a word that only appears past the cut.
    head = (COMPOST.split() * (MAX_WORDS // 100))[:MAX_WORDS]
    huge = " ".join(head + ["zebra"] * 5 * MAX_WORDS)
    phrases = await extractor.extract(huge)
    assert phrases
    assert not any("zebra" in p for p, _ in phrases)  # beyond the cut, never seen by the model


async def test_cache_miss_then_hit_per_tenant(redis: Redis, extractor: KeyphraseExtractor) -> None:
    text = f"{COMPOST} Batch {uuid.uuid4().hex}."  # unique, so the first call must miss
    keys = [keyphrase_cache_key(text, 10, "alpha"), keyphrase_cache_key(text, 5, "alpha")]
    keys.append(keyphrase_cache_key(text, 10, "beta"))
    assert None not in keys and len(set(keys)) == 3
    real_keys = [k for k in keys if k is not None]
    try:
        first, hit = await cached_keyphrases(redis, extractor, text, tenant="alpha", ttl=120)
        assert not hit and first
        second, hit = await cached_keyphrases(redis, extractor, text, tenant="alpha", ttl=120)
        assert hit and second == first
        assert 0 < await redis.ttl(real_keys[0]) <= 120
        fewer, hit = await cached_keyphrases(redis, extractor, text, tenant="alpha", top_n=5, ttl=120)
        assert not hit and 0 < len(fewer) <= 5
        # Another tenant's scan of the same text misses: a hit's speed would tell it that alpha
        # scanned this text.
        theirs, hit = await cached_keyphrases(redis, extractor, text, tenant="beta", ttl=120)
        assert not hit and theirs == first
        assert await redis.exists(*real_keys) == 3
        assert await cached_keyphrases(redis, extractor, "  ", tenant="alpha", ttl=120) == ([], False)
    finally:
        await redis.delete(*real_keys)


async def test_cache_redis_down_still_extracts(extractor: KeyphraseExtractor, caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = Redis(host="127.0.0.1", port=port, socket_connect_timeout=1)
    try:
        with caplog.at_level(logging.WARNING, logger="pagelens.keyphrases"):
            phrases, hit = await cached_keyphrases(dead, extractor, COMPOST, tenant="alpha", ttl=60)
    finally:
        await dead.aclose()
    assert not hit
    assert phrases == await extractor.extract(COMPOST)
    assert "cache read failed" in caplog.text and "cache write failed" in caplog.text


async def test_model_loaded_once_per_process(extractor: KeyphraseExtractor) -> None:
    for _ in range(3):
        await extractor.extract(COMPOST)
    await extractor.extract_many([COMPOST, COMPOST])
    assert await load_counts(extractor) == {extractor.pid_list[0]: 1}


async def test_killed_child_is_replaced(extractor: KeyphraseExtractor) -> None:
    [old] = extractor.pid_list
    os.kill(old, signal.SIGKILL)
    # Several callers hit the dead pool at once: all succeed, one replacement serves them all.
    results = await asyncio.gather(*(extractor.extract(COMPOST, top_n=n) for n in (3, 4, 5)))
    assert [len(r) for r in results] == [3, 4, 5]
    [new] = extractor.pid_list
    assert new != old
    assert gone(old)
    assert await load_counts(extractor) == {new: 1}


async def test_timeout_replaces_pool_then_close_leaves_no_children() -> None:
    # Its own extractor (two processes, to exercise the warm-up of a multi-process pool).
    ex = KeyphraseExtractor(processes=2, timeout=0.001)
    try:
        await ex.start()
        old = ex.pid_list
        assert len(old) == 2
        with pytest.raises(ScanError) as caught:
            await ex.extract(big_text())
        # The same text would take as long again: too complex, not worth a retry.
        assert caught.value.type is ErrorType.TOO_COMPLEX and not caught.value.retryable
        # The stuck children were killed, not left burning a core; a fresh pool is already warm.
        assert all(gone(pid) for pid in old)
        new = ex.pid_list
        assert len(new) == 2 and not set(new) & set(old)
        ex.timeout = 60.0
        assert await ex.extract(COMPOST)
        counts = await load_counts(ex)
        assert set(counts) <= set(new) and set(counts.values()) == {1}
    finally:
        pids = ex.pid_list
        await ex.close()
    assert pids and all(gone(pid) for pid in pids)
    assert ex.pid_list == []
    with pytest.raises(ScanError, match="closed"):
        await ex.extract(COMPOST)


def test_parent_never_imports_torch() -> None:
    code = (
        "import sys, worker.keyphrases, worker.parse_pool\n"
        "heavy = {'torch', 'keybert', 'sentence_transformers', 'transformers'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


async def test_same_keyphrases_as_plain_keybert(extractor: KeyphraseExtractor) -> None:
    """The pool reuses phrase embeddings, embeds by token count and batches texts; the keyphrases
    and scores must still be exactly what KeyBERT itself finds, cold and warm."""
    texts = [COMPOST, *site_texts(), *(page.text for page in corpus(12, seed=7))]
    reference = await plain(extractor, texts)
    assert all(reference) and len(reference) == len(texts)
    for attempt in ("cold", "warm"):
        found = await asyncio.gather(*(extractor.extract(text) for text in texts))
        mismatches = [(i, ref, got) for i, (ref, got) in enumerate(zip(reference, found, strict=True)) if ref != got]
        assert mismatches == [], attempt
    top3 = await plain(extractor, texts[:4], top_n=3)
    assert await extractor.extract_many(texts[:4], top_n=3) == top3


async def test_ranking_is_keyberts_with_ties_and_any_top_n(extractor: KeyphraseExtractor) -> None:
    """The pool ranks candidates itself (KeyBERT's MMR without its n x n matrix): on random
    embeddings with twins, for top_n from 1 to past the number of candidates, it must pick and
    order exactly the phrases KeyBERT picks, with the same scores."""
    long_text = " ".join(page.text for page in corpus(4, seed=3))
    cases = [(COMPOST, top_n, top_n) for top_n in (1, 2, 5, 10, 400)]
    cases += [(text, 10, seed) for seed, text in enumerate(site_texts()[:4], start=20)]
    cases += [(long_text, 10, 99), ("tiny composting text", 10, 5)]
    pairs = await rankings(extractor, cases)
    assert len(pairs) == len(cases) and all(plain_ for plain_, _ in pairs)
    assert [ours for _, ours in pairs] == [plain_ for plain_, _ in pairs]
    assert len(pairs[4][0]) == len(pairs[4][1]) < 400  # top_n past the candidates: all of them


async def test_plain_ranking_setting_ranks_with_keybert(extractor: KeyphraseExtractor) -> None:
    """PAGELENS_KEYBERT_PLAIN_RANKING reaches the children, which then rank with KeyBERT's own MMR,
    and the keyphrases are the same either way."""
    texts = [COMPOST, *site_texts()[:3]]
    ex = KeyphraseExtractor(processes=1, timeout=600, plain_ranking=True)
    try:
        found = await asyncio.gather(*(ex.extract(text) for text in texts))
        assert await ex.run_in_child(ranks_plainly) is True
    finally:
        await ex.close()
    assert await extractor.run_in_child(ranks_plainly) is False
    assert found == await asyncio.gather(*(extractor.extract(text) for text in texts))


async def test_embedding_threads_find_plain_keybert_keyphrases(extractor: KeyphraseExtractor) -> None:
    """Two embedding threads in one process (the worker's default) split the batches between them;
    the keyphrases and scores must still be plain KeyBERT's in a one-thread process, on real
    documentation pages (thousands of candidates each) when they are installed as well."""
    real = [parse_html(page.body, "http://127.0.0.1/").main_text for page in doc_pages()[::60][:4]]
    texts = [COMPOST, *site_texts(), *(page.text for page in corpus(6, seed=12)), *real]
    ex = KeyphraseExtractor(processes=1, timeout=600, threads=2)
    try:
        found = await asyncio.gather(*(ex.extract(text) for text in texts))
        threads = await ex.run_in_child(embedding_threads)
    finally:
        await ex.close()
    assert threads == 2  # both threads embedded
    reference = await plain(extractor, texts)
    assert all(reference) and found == reference


async def test_waiting_texts_share_a_call_and_phrases_are_embedded_once(extractor: KeyphraseExtractor) -> None:
    texts = [page.text for page in corpus(extractor.max_batch + 2, seed=8)]
    calls, embedded, phrases = extractor.calls, extractor.embedded, extractor.phrases
    first = await asyncio.gather(*(extractor.extract(text) for text in texts))
    assert extractor.calls - calls == 2  # all were waiting at once: one full call, then the rest
    assert 0 < extractor.embedded - embedded < extractor.phrases - phrases  # pages share phrases

    calls, embedded = extractor.calls, extractor.embedded
    assert [await extractor.extract(text) for text in texts] == first
    assert extractor.calls - calls == len(texts)  # one at a time: a call each
    assert extractor.embedded == embedded  # every phrase was cached the first time


async def test_a_caller_that_gives_up_does_not_disturb_the_others(extractor: KeyphraseExtractor) -> None:
    texts = [page.text for page in corpus(4, seed=9)]
    expected = await plain(extractor, texts)
    tasks = [asyncio.create_task(extractor.extract(text)) for text in texts]
    await asyncio.sleep(0)  # all four are waiting
    tasks[1].cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[1], asyncio.CancelledError)
    assert [results[0], results[2], results[3]] == [expected[0], expected[2], expected[3]]


async def test_closing_fails_waiting_callers() -> None:
    ex = KeyphraseExtractor(processes=1, timeout=120)
    await ex.start()
    try:
        busy = asyncio.create_task(ex.extract(big_text()))
        waiting = asyncio.create_task(ex.extract(COMPOST))
        await asyncio.sleep(0.5)  # the first is in the child, the second waits for it
    finally:
        await ex.close()
    for task in (busy, waiting):
        with pytest.raises(ScanError, match="closed"):
            await task


async def test_a_call_whose_callers_all_gave_up_is_killed() -> None:
    # Its own extractor: a cold phrase cache, so the big text takes the child many seconds.
    ex = KeyphraseExtractor(processes=1, timeout=600)
    await ex.start()
    try:
        [old] = ex.pid_list
        task = asyncio.create_task(ex.extract(big_text()))
        await asyncio.sleep(0.5)  # the call is in the child
        task.cancel()
        await until(lambda: gone(old), "the abandoned call's process to be killed", poll=0.1, polls=100)
        assert task.cancelled()
        assert await ex.extract(COMPOST), "the replacement serves the next caller"
        [new] = ex.pid_list
        assert new != old
    finally:
        await ex.close()


async def test_one_tenants_texts_do_not_hold_up_anothers(extractor: KeyphraseExtractor) -> None:
    """With the pool busy, a tenant's one text waits for at most one text of another tenant that
    queued many (first come, first served would make it wait for all of them)."""
    texts = [f"{COMPOST} Batch {uuid.uuid4().hex}." for _ in range(5)]
    finished: list[str] = []

    async def one(name: str, text: str, share: str) -> None:
        await extractor.extract(text, share=share)
        finished.append(name)

    # Tenants new to this session's pool: earlier tests' turns do not count.
    alpha, beta = f"alpha-{uuid.uuid4().hex}", f"beta-{uuid.uuid4().hex}"
    batch, extractor.max_batch = extractor.max_batch, 1  # one text per call: calls go in service order
    try:
        jobs = [one(f"a{n}", text, alpha) for n, text in enumerate(texts[:4], start=1)]
        await asyncio.gather(*jobs, one("b1", texts[4], beta))
    finally:
        extractor.max_batch = batch
    assert finished == ["a1", "b1", "a2", "a3", "a4"]
