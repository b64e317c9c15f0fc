"""KeyBERT keyphrases, by where each part runs: `model` in the pool's child processes, `pool` (the
dispatcher that batches texts and replaces killed children) and `cache` (Redis) in the worker."""

from worker.keyphrases.cache import cached_keyphrases, keyphrase_cache_key
from worker.keyphrases.model import MAX_WORDS, Phrases
from worker.keyphrases.pool import KeyphraseExtractor

__all__ = ["MAX_WORDS", "KeyphraseExtractor", "Phrases", "cached_keyphrases", "keyphrase_cache_key"]
