"""Substitute words from one masked-LM forward on the unmasked text (Li et al. 2020, Sec. 3.2).

Each whitespace word is split into punctuation around a *core* ("truck," → "truck" + ","). Where
a word's candidates are read is the switch ``candidate_position`` (:data:`CANDIDATE_POSITIONS`,
``docs/deviations.md``, row 1), decided in :func:`layout`: ``own`` (the default) feeds the MLM
``[CLS]`` + every word's WordPiece pieces + ``[SEP]`` (at most ``max_length`` ids) and reads a
word's candidates at its core's own piece positions, counted from ``[CLS]`` at 0; ``preceding``
(the published MMCoA code) feeds ``[CLS]`` + the pieces with no ``[SEP]`` and reads them one
position earlier (the positions counted without ``[CLS]``), so each piece gets the predictions
at the token before it. Either way a word is attacked only if its pieces fit in the input.

A single-piece core gets the top-k ids in rank order, stopping at the first logit below
``min_logit``. A multi-piece core gets ALL of the first ``max_combinations``
(:data:`MAX_COMBINATIONS`, 24) combinations, in ``itertools.product`` order, of the top
``piece_top`` (:data:`PIECE_TOP`, 4) ids per piece, ranked by the MLM's perplexity of ``[CLS]
combination [SEP]``; ``k`` does not cut them, as in the published ``get_bpe_substitues``
(``docs/deviations.md``, row 14). A candidate must be one non-``##`` piece followed only by
``##`` continuations, alphabetic, and neither a stop word, the original core (both
case-insensitive) nor a repeat.
"""

from __future__ import annotations

import itertools
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterator, Sequence, TypeVar

import torch
import torch.nn.functional as F

from mmcoa.attacks.text.mlm import MaskedLM
from mmcoa.attacks.text.stopwords import is_stop_word
from mmcoa.errors import MmcoaError

AFFIXES = re.compile(r"^(\W*)(.*?)(\W*)$", re.DOTALL)
PIECE_TOP = 4  # ids per piece of a multi-piece word (published BERT-Attack: top-4)
MAX_COMBINATIONS = 24  # combinations of them tried, all kept (published BERT-Attack: 24)
CANDIDATE_POSITIONS = ("own", "preceding")  # the corrected one, then the published (row 1)
T = TypeVar("T")


@dataclass(frozen=True)
class CandidateSettings:
    """The knobs of candidate generation (see :class:`~mmcoa.attacks.text.BertAttack`)."""

    k: int
    min_logit: float
    max_length: int
    piece_top: int
    max_combinations: int
    batch_size: int
    stop_words: frozenset[str]
    candidate_position: str = "own"


@dataclass(frozen=True)
class WordSlot:
    """One whitespace word: its core, the punctuation around it, and the positions
    ``[start, stop)`` of the MLM input (``[CLS]`` is position 0) its candidates are read at (see
    :func:`layout`); ``span`` is None when the core is empty or its pieces pass the length
    limit."""

    prefix: str
    core: str
    suffix: str
    span: tuple[int, int] | None

    def with_core(self, core: str) -> str:
        return f"{self.prefix}{core}{self.suffix}"


def chunked(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def check_candidate_position(value: str) -> str:
    """``value`` if it is one of :data:`CANDIDATE_POSITIONS`, else a one-line error."""
    if value not in CANDIDATE_POSITIONS:
        accepted = ", ".join(CANDIDATE_POSITIONS)
        raise MmcoaError(f"candidate_position must be one of {accepted}; got {value!r}")
    return value


def layout(
    mlm: MaskedLM,
    words: Sequence[str],
    max_length: int,
    memo: dict[str, list[int]],
    candidate_position: str = "own",
) -> tuple[list[int], list[WordSlot]]:
    """MLM input ids (at most ``max_length``) and each word's slot. ``own``: ``[CLS] pieces...
    [SEP]``, a core's candidates read at its own pieces' positions; ``preceding`` (published):
    ``[CLS] pieces...``, read one position earlier. A word whose pieces do not fit gets no span."""
    own = check_candidate_position(candidate_position) == "own"
    shift, end = (0, [mlm.tokenizer.sep_token_id]) if own else (1, [])
    limit = max_length - len(end)
    ids, slots = [mlm.tokenizer.cls_token_id], []
    for word in words:
        prefix, core, suffix = AFFIXES.match(word).groups()
        head, body, tail = (_pieces(mlm, part, memo) for part in (prefix, core, suffix))
        start = len(ids) + len(head)  # the core's own positions: len(ids) counts [CLS]
        fits = body and start + len(body) <= limit
        span = (start - shift, start - shift + len(body)) if fits else None
        slots.append(WordSlot(prefix, core, suffix, span))
        ids += head + body + tail
    return ids[:limit] + end, slots


def _pieces(mlm: MaskedLM, text: str, memo: dict[str, list[int]]) -> list[int]:
    if text not in memo:
        memo[text] = mlm.pieces(text) if text else []
    return memo[text]


def mlm_top_k(
    mlm: MaskedLM, inputs: Sequence[list[int]], k: int, batch_size: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per input: the top-``k`` ids and logits [tokens, k] at every position, from batched
    (padded) MLM forwards on the unmasked texts."""
    out = []
    for chunk in chunked(inputs, batch_size):
        width = max(map(len, chunk))
        ids = torch.tensor([c + [mlm.tokenizer.pad_token_id] * (width - len(c)) for c in chunk])
        mask = torch.tensor([[1] * len(c) + [0] * (width - len(c)) for c in chunk])
        logits, top = mlm.logits(ids, mask).topk(k, dim=-1)
        out += [(top[i, : len(c)].cpu(), logits[i, : len(c)].cpu()) for i, c in enumerate(chunk)]
    return out


def single_piece_sequences(
    ids: torch.Tensor, logits: torch.Tensor, k: int, min_logit: float
) -> list[tuple[int, ...]]:
    """The top-``k`` ids at one position in rank order, up to the first logit below
    ``min_logit``."""
    kept = []
    for token, logit in zip(ids[:k].tolist(), logits[:k].tolist()):
        if logit < min_logit:
            break
        kept.append((token,))
    return kept


def piece_combinations(ids: torch.Tensor, piece_top: int, max_combinations: int) -> list[tuple[int, ...]]:
    """The first ``max_combinations`` combinations of the top ``piece_top`` ids of each piece
    position (rows of ``ids``), in ``itertools.product`` order."""
    rows = [row[:piece_top].tolist() for row in ids]
    return list(itertools.islice(itertools.product(*rows), max_combinations))


def combination_losses(
    mlm: MaskedLM, combos: Sequence[tuple[int, ...]], batch_size: int
) -> dict[tuple[int, ...], float]:
    """Log-perplexity of each distinct combination: the MLM's mean cross-entropy of predicting
    its own ids from ``[CLS] ids [SEP]`` (batched by length, so nothing is padded)."""
    by_length: dict[int, list[tuple[int, ...]]] = defaultdict(list)
    for combo in dict.fromkeys(combos):
        by_length[len(combo)].append(combo)
    losses = {}
    for group in by_length.values():
        for chunk in chunked(group, batch_size):
            losses.update(zip(chunk, _mean_cross_entropy(mlm, chunk)))
    return losses


def _mean_cross_entropy(mlm: MaskedLM, chunk: Sequence[tuple[int, ...]]) -> list[float]:
    tok = mlm.tokenizer
    ids = torch.tensor([[tok.cls_token_id, *combo, tok.sep_token_id] for combo in chunk])
    logits = mlm.logits(ids, torch.ones_like(ids))[:, 1:-1]
    target = ids[:, 1:-1].to(logits.device)
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="none")
    return ce.view(target.shape).mean(1).tolist()


def join_pieces(tokens: Sequence[str]) -> str | None:
    """The word spelled by WordPiece tokens, or None unless they are a word start followed by
    ``##`` continuations only."""
    first, rest = tokens[0], tokens[1:]
    if not first or first.startswith("##") or not all(t.startswith("##") for t in rest):
        return None
    return first + "".join(t[2:] for t in rest)


def sequences_to_words(
    sequences: Sequence[tuple[int, ...]],
    id_to_token: Sequence[str],
    original: str,
    stop_words: frozenset[str],
) -> list[str]:
    """Candidate words in order, without junk, stop words, the original core and repeats."""
    seen, words = {original.lower()}, []
    for seq in sequences:
        word = join_pieces([id_to_token[i] if i < len(id_to_token) else "" for i in seq])
        if word is None or not word.isalpha() or is_stop_word(word, stop_words):
            continue
        if word.lower() not in seen:
            seen.add(word.lower())
            words.append(word)
    return words


@dataclass
class _WordCandidates:
    """One word's candidate id sequences; ``words`` once ranked (if needed) and filtered."""

    slot: WordSlot
    sequences: list[tuple[int, ...]]
    words: list[str] | None = None
    multi_piece: bool = False


class CandidatePool:
    """The candidates of every word of a batch of texts: one batched MLM forward up front
    (single-piece words resolved at once), perplexity ranking of multi-piece words on demand
    (:meth:`resolve`), batched over all the words requested together.

    ``known`` ({words of a text: its entries}, filled in place) carries texts' entries from
    pool to pool: the MLM is not the victim, so a text's candidates never change, and a text
    attacked again (MMCoA's prompts at every refresh, the same prompts against every model)
    costs no MLM forward and no second ranking of its multi-piece words."""

    def __init__(
        self,
        mlm: MaskedLM,
        texts_words: Sequence[Sequence[str]],
        settings: CandidateSettings,
        known: dict | None = None,
    ):
        self.mlm, self.settings = mlm, settings
        known = {} if known is None else known
        keys = [tuple(words) for words in texts_words]
        missing = list(dict.fromkeys(key for key in keys if key not in known))
        if missing:
            memo: dict[str, list[int]] = {}
            layouts = [
                layout(mlm, words, settings.max_length, memo, settings.candidate_position)
                for words in missing
            ]
            width = max(settings.k, settings.piece_top)
            tops = mlm_top_k(mlm, [ids for ids, _ in layouts], width, settings.batch_size)
            for key, (_, slots), top in zip(missing, layouts, tops):
                known[key] = [self._entry(slot, top) for slot in slots]
        self.entries = [known[key] for key in keys]

    def _entry(self, slot: WordSlot, top: tuple[torch.Tensor, torch.Tensor]) -> _WordCandidates:
        s = self.settings
        if slot.span is None or is_stop_word(slot.core, s.stop_words):
            return _WordCandidates(slot, [], [])
        ids, logits = top[0][slice(*slot.span)], top[1][slice(*slot.span)]
        if len(ids) > 1:
            return _WordCandidates(
                slot, piece_combinations(ids, s.piece_top, s.max_combinations), multi_piece=True
            )
        entry = _WordCandidates(slot, single_piece_sequences(ids[0], logits[0], s.k, s.min_logit))
        entry.words = self._words(entry)
        return entry

    def _words(self, entry: _WordCandidates) -> list[str]:
        words = sequences_to_words(
            entry.sequences, self.mlm.id_to_token, entry.slot.core, self.settings.stop_words
        )
        return [entry.slot.with_core(w) for w in words]

    def may_have(self, text: int, word: int) -> bool:
        """False when the word surely has no candidate. A multi-piece word counts as a candidate
        source until it is visited, even if it was ranked for an earlier search (``known``), so
        the visit order and the queries a search spends never depend on what was attacked
        before."""
        entry = self.entries[text][word]
        return bool(entry.sequences) if entry.multi_piece else bool(entry.words)

    def resolve(self, requests: Sequence[tuple[int, int]]) -> None:
        """Rank the requested (text, word) multi-piece combinations by perplexity in one batched
        pass (stable: ties keep product order) and turn them all into words (no cut at k)."""
        pending = list(
            {id(e): e for e in (self.entries[t][w] for t, w in requests) if e.words is None}.values()
        )  # a repeated text shares its entries
        combos = [c for entry in pending for c in entry.sequences]
        losses = combination_losses(self.mlm, combos, self.settings.batch_size)
        for entry in pending:
            entry.sequences = sorted(entry.sequences, key=losses.__getitem__)
            entry.words = self._words(entry)

    def words(self, text: int, word: int) -> list[str]:
        """Replacement words (punctuation kept), best first; call :meth:`resolve` first."""
        return self.entries[text][word].words


def propose(
    mlm: MaskedLM,
    texts_words: Sequence[Sequence[str]],
    settings: CandidateSettings,
    known: dict | None = None,
) -> list[list[list[str]]]:
    """For each text, for each whitespace word: its replacement words (punctuation kept), best
    first; empty for stop words and words past the length limit."""
    pool = CandidatePool(mlm, texts_words, settings, known)
    pool.resolve([(t, w) for t, entries in enumerate(pool.entries) for w in range(len(entries))])
    return [[pool.words(t, w) for w in range(len(entries))] for t, entries in enumerate(pool.entries)]
