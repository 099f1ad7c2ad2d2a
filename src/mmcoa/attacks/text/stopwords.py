"""The filter words BERT-Attack never replaces and never proposes.

``filter_words.txt`` is the list shipped with the published BERT-Attack code (Li et al. 2020)
and reused unchanged by the MMCoA, Co-Attack and SGA code: 292 entries, one a line, kept
verbatim as data (function words, contractions such as "don't", single letters such as "t" and
"s", a few adverbs such as "once" and "please", and punctuation).

Matching is case-insensitive: the published code compared case-sensitively, so the capitalised
"This" of "This is a photo of a {label}" was attacked (``docs/deviations.md``, row 2).
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import Iterable

FILTER_WORDS_FILE = "filter_words.txt"


def parse_stop_words(lines: Iterable[str]) -> frozenset[str]:
    """Lower-cased entries, one a line (surrounding white space and blank lines dropped)."""
    words = (line.strip().lower() for line in lines)
    return frozenset(word for word in words if word)


@functools.lru_cache(maxsize=1)
def default_stop_words() -> frozenset[str]:
    """The published BERT-Attack filter-word list (``filter_words.txt``)."""
    text = resources.files(__package__).joinpath(FILTER_WORDS_FILE).read_text(encoding="utf-8")
    return parse_stop_words(text.splitlines())


def as_stop_words(words: Iterable[str] | None) -> frozenset[str]:
    """``words`` lower-cased (the default list when None), ready for case-insensitive lookups."""
    return default_stop_words() if words is None else frozenset(w.lower() for w in words)


def is_stop_word(word: str, stop_words: frozenset[str]) -> bool:
    """Whether ``word`` is in ``stop_words`` (a lower-cased set), ignoring its case."""
    return word.lower() in stop_words
