"""The stop-word list BERT-Attack skips (Li et al. 2020), shipped as ``stopwords.txt``.

Matching is case-insensitive: the published code compared case-sensitively, so the capitalised
"This" of "This is a photo of a {label}" was attacked (REFERENCE_NOTES, bug 2).
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import Iterable

STOP_WORDS_FILE = "stopwords.txt"


def parse_stop_words(lines: Iterable[str]) -> frozenset[str]:
    """Lower-cased words, one a line; blank lines and ``#`` comments are ignored."""
    words = (line.split("#", 1)[0].strip().lower() for line in lines)
    return frozenset(word for word in words if word)


@functools.lru_cache(maxsize=1)
def default_stop_words() -> frozenset[str]:
    """The shipped English function-word list (articles, pronouns, prepositions, ...)."""
    text = resources.files(__package__).joinpath(STOP_WORDS_FILE).read_text(encoding="utf-8")
    return parse_stop_words(text.splitlines())


def as_stop_words(words: Iterable[str] | None) -> frozenset[str]:
    """``words`` lower-cased (the default list when None), ready for case-insensitive lookups."""
    return default_stop_words() if words is None else frozenset(w.lower() for w in words)


def is_stop_word(word: str, stop_words: frozenset[str]) -> bool:
    """Whether ``word`` is in ``stop_words`` (a lower-cased set), ignoring its case."""
    return word.lower() in stop_words
