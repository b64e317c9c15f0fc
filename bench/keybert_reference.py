"""Plain KeyBERT as documented, one text at a time and nothing reused: the reference the keyphrase
pool is checked against (tests) and compared with (the keyphrase benchmark).

It runs in a child of the pool it is compared with, where the model is loaded already, so both
sides use the same model in the same kind of process.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from worker.keyphrases import KeyphraseExtractor, Phrases
from worker.keyphrases.model import Item, _candidates, child_info, keybert_phrases, mmr, prepare


def _plain(items: list[Item]) -> list[Phrases]:
    return [keybert_phrases(text, top_n) for text, top_n in items]


async def plain(extractor: KeyphraseExtractor, texts: list[str], *, top_n: int = 10) -> list[Phrases]:
    """What plain KeyBERT finds in the texts the pool would send to the model (prepared alike)."""
    items = [(p, top_n) for p in map(prepare, texts) if p is not None]
    return await extractor.run_in_child(_plain, items)


async def load_counts(extractor: KeyphraseExtractor) -> dict[int, int]:
    """{pid: times that child loaded the model}, probed through the pool.

    One probe per process; with several processes a probe may land twice on the same child.
    """
    probes = [extractor.run_in_child(child_info) for _ in range(extractor.processes)]
    return dict(await asyncio.gather(*probes))


def ranks_plainly() -> bool:
    """In a child: whether it ranks with KeyBERT's own MMR (PAGELENS_KEYBERT_PLAIN_RANKING)."""
    from worker.keyphrases import model

    return model._plain_ranking


def embedding_threads() -> int:
    """In a child: how many embedding threads have run there (they start as batches need them)."""
    return sum(1 for thread in threading.enumerate() if thread.name.startswith("embed"))


# The random embeddings of `rankings`: 384 dimensions (the model's), 16 of them +1 or -1, the rest 0.
# Every such vector has length 4, so normalised its entries are +-0.25 and every similarity is a
# multiple of 1/16 that float32 holds exactly whatever order a BLAS kernel sums in: ties are exact
# ties. (With Gaussian embeddings the matrix product KeyBERT uses and the column products of `mmr`
# may round the last bit differently, and which twin wins would depend on the kernel and on how
# the arrays happen to be aligned in memory.)
DIMENSIONS, NONZERO = 384, 16


def _sparse_signs(rng: Any, rows: int) -> Any:
    import numpy as np

    vectors = np.zeros((rows, DIMENSIONS), dtype=np.float32)
    for row in vectors:
        row[rng.choice(DIMENSIONS, NONZERO, replace=False)] = rng.choice([-1.0, 1.0], NONZERO)
    return vectors


def _rankings(cases: list[tuple[str, int, int]]) -> list[tuple[Phrases, Phrases]]:
    import numpy as np

    pairs: list[tuple[Phrases, Phrases]] = []
    for text, top_n, seed in cases:
        words = _candidates(text)
        rng = np.random.default_rng(seed)
        vectors = _sparse_signs(rng, len(words))
        vectors[1::3] = vectors[::3][: len(vectors[1::3])]  # every third phrase has a twin: ties
        document = _sparse_signs(rng, 1)
        plain_ = keybert_phrases(text, top_n, doc_embeddings=document, word_embeddings=vectors)
        pairs.append((plain_, mmr(document, vectors, words, top_n)))
    return pairs


async def rankings(extractor: KeyphraseExtractor, cases: list[tuple[str, int, int]]) -> list[tuple[Phrases, Phrases]]:
    """For each (text, top_n, seed): plain KeyBERT's keyphrases of the text and the pool's own ranking
    (worker/keyphrases/model.py `mmr`), both given the same random embeddings (`_sparse_signs`: every
    similarity exact), a third of them duplicated, so that ties, exact ones, must be broken alike."""
    return await extractor.run_in_child(_rankings, cases)
