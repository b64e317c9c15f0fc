"""The Automated Readability Index, counted the way textstat 0.7 counts it.

ARI needs three counts (characters, words, sentences) and one formula. textstat computes it this
way too, but importing textstat imports nltk, which imports scipy and scikit-learn: about 130 MB
resident in the worker for three regular expressions (docs/performance.md, "Worker throughput").
tests/test_audit.py checks these figures against textstat's on real pages.
"""

from __future__ import annotations

import re

_SPACE = re.compile(r"\s")
# textstat's word list drops punctuation but keeps the apostrophes of English contractions.
_NON_CONTRACTION_APOSTROPHE = re.compile(r"\'(?!(?:[tsd]|ve|ll|re))")
_PUNCTUATION = re.compile(r"[^\w\s\']")
_SENTENCE = re.compile(r"\b[^.!?]+[.!?]*")


def _words(text: str) -> int:
    return len(_PUNCTUATION.sub("", _NON_CONTRACTION_APOSTROPHE.sub("", text)).split())


def _sentences(text: str) -> int:
    if not text:
        return 0
    found = _SENTENCE.findall(text)
    # Fragments of two words or fewer ("e.g.", "Fig. 3") are not sentences of their own.
    return max(1, len(found) - sum(1 for s in found if _words(s) <= 2))


def automated_readability_index(text: str) -> float:
    """4.71 x characters per word + 0.5 x words per sentence - 21.43 (0.0 for a text without words).

    Characters exclude white space; characters per word counts punctuation-only tokens as words
    (their characters are counted), words per sentence does not."""
    tokens = len(text.split())
    chars_per_word = len(_SPACE.sub("", text)) / tokens if tokens else 0.0
    sentences = _sentences(text)
    words_per_sentence = _words(text) / sentences if sentences else 0.0
    if chars_per_word == 0 or words_per_sentence == 0:
        return 0.0
    return 4.71 * chars_per_word + 0.5 * words_per_sentence - 21.43
