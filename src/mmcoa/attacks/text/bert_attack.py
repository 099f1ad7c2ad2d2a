"""BERT-Attack (Li et al. 2020) as MMCoA uses it: the paper's Eq. 4 text attack.

Greedy word substitution: words are visited in decreasing importance (the score of the text
with that word replaced by ``[UNK]``), each word's masked-LM candidates are scored, and the
best one is kept when it beats the current text, until ``max_words`` words changed. For the
paper's Eq. 4 the score is ``KL(softmax(e_orig) ‖ softmax(e_adv))`` over the dimensions of the
L2-normalized text embeddings (:func:`kl_divergence_score`, :meth:`BertAttack.attack_embeddings`).

Unlike the published per-text loops, every step is batched across all texts: one MLM forward
for all texts, one (chunked) scoring call for all importance variants, and per greedy round one
perplexity pass for the multi-piece words visited and one scoring call for all candidates of
all texts. Each text's
result is the one it would get alone. :meth:`BertAttack.attack_embeddings` also caches edits
per (text, text-tower state, attack settings).

``candidate_position`` chooses where a word's candidates are read: ``own`` (default, its own
pieces' positions) or ``preceding`` (the published MMCoA code: the token before each piece, no
trailing ``[SEP]``); ``docs/deviations.md``, row 1, and :mod:`mmcoa.attacks.text.candidates`.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from mmcoa.attacks.base import eval_mode
from mmcoa.attacks.text.candidates import (
    MAX_COMBINATIONS,
    PIECE_TOP,
    CandidatePool,
    CandidateSettings,
    check_candidate_position,
    chunked,
    propose,
)
from mmcoa.attacks.text.mlm import MaskedLM
from mmcoa.attacks.text.stopwords import as_stop_words
from mmcoa.errors import MmcoaError

ScoreFn = Callable[[torch.Tensor, list[str]], torch.Tensor]
UNK = "[UNK]"
REFERENCE_MIN_LOGIT = 0.3  # threshold_pred_score of the published code, for BERT's trained head


class EditCache(OrderedDict):
    """The edits an attack found, by (text, text-tower state), the least recently used dropped
    past ``size`` entries (BERT-Attack's and Charmer's, :meth:`attack_embeddings`)."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def remember(self, key: tuple, edit) -> None:
        self[key] = edit
        while len(self) > self.size:
            self.popitem(last=False)

    def recall(self, key: tuple):
        self.move_to_end(key)
        return self[key]

    def edits(self, texts: Sequence[str], state: tuple, attack: Callable[[list[str]], list]) -> list:
        """The edit of each of ``texts`` under ``state``: the cached ones, and ``attack`` run
        once on the distinct texts missing (copies, so a caller cannot change the cache)."""
        missing = [t for t in dict.fromkeys(texts) if (t, state) not in self]
        fresh = {e.original: e for e in attack(missing)} if missing else {}
        edits = [fresh[t] if t in fresh else self.recall((t, state)) for t in texts]
        for text, edit in fresh.items():
            self.remember((text, state), edit)
        return [dataclasses.replace(edit) for edit in edits]


@dataclass
class TextEdit:
    """One attacked text. ``changed_words`` counts whitespace-word positions that differ;
    ``queries`` counts the strings the victim scored on this text's behalf (the original,
    importance variants and candidates) when the edit was computed. A changed text is re-joined
    with single spaces; an unchanged one is returned as given."""

    original: str
    adversarial: str
    changed_words: int
    queries: int


def kl_divergence_score(
    reference: torch.Tensor, candidates: torch.Tensor, owner: torch.Tensor
) -> torch.Tensor:
    """``KL(softmax(reference[owner[i]]) ‖ softmax(candidates[i]))`` over the embedding
    dimensions (paper Eq. 4). Computed in float64: unit-norm embeddings give near-uniform
    softmaxes, so the divergences are tiny differences of nearly equal log-probabilities."""
    p_log = F.log_softmax(reference.double(), dim=-1)[owner.to(reference.device)]
    q_log = F.log_softmax(candidates.double().to(reference.device), dim=-1)
    return (p_log.exp() * (p_log - q_log)).sum(dim=-1)


@dataclass
class _Progress:
    """One text's greedy search: current words and score, words still to visit."""

    original: str
    words: list[str]
    queue: list[int]
    score: float
    queries: int
    index: int
    changed: int = 0

    def variant(self, position: int, word: str) -> str:
        return " ".join(self.words[:position] + [word] + self.words[position + 1 :])

    def edit(self) -> TextEdit:
        adversarial = " ".join(self.words) if self.changed else self.original
        return TextEdit(self.original, adversarial, self.changed, self.queries)


class BertAttack:
    """BERT-Attack (Li et al. 2020) with a masked LM's candidates, batched across texts.

    ``k`` candidates per single-piece word, at most ``max_words`` words changed per text,
    single-piece candidates cut at the first MLM logit below ``min_logit`` (default: the MLM's
    own cut, :attr:`MaskedLM.min_logit`, else the reference's 0.3), MLM inputs of at most
    ``max_length`` ids (``[CLS]`` and any ``[SEP]`` included), multi-piece words from all of the
    first ``max_combinations`` (24) combinations of the top ``piece_top`` (4) pieces, ranked by
    perplexity and not cut at ``k`` (as the published code does), scoring calls of at most
    ``batch_size`` strings, ``stop_words`` (default: the shipped list) never replaced nor
    proposed, case-insensitively, and ``candidate_position``: candidates read at each word's
    ``own`` pieces' positions, or at the ``preceding`` token's as the published code does
    (:data:`~mmcoa.attacks.text.candidates.CANDIDATE_POSITIONS`).
    ``cache_size`` bounds the edits kept by :meth:`attack_embeddings`.
    """

    def __init__(
        self,
        mlm: MaskedLM,
        k: int = 10,
        max_words: int = 1,
        min_logit: float | None = None,
        max_length: int = 30,
        piece_top: int = PIECE_TOP,
        max_combinations: int = MAX_COMBINATIONS,
        batch_size: int = 256,
        stop_words: frozenset[str] | None = None,
        cache_size: int = 100_000,
        candidate_position: str = "own",
    ):
        for name, value, low in (
            ("k", k, 1),
            ("max_words", max_words, 1),
            ("max_length", max_length, 3),
            ("piece_top", piece_top, 1),
            ("max_combinations", max_combinations, 1),
            ("batch_size", batch_size, 1),
            ("cache_size", cache_size, 0),
        ):
            _check_int(name, value, low)
        self.candidate_position = check_candidate_position(candidate_position)
        if min_logit is None:
            own = getattr(mlm, "min_logit", None)
            min_logit = REFERENCE_MIN_LOGIT if own is None else own
        self.mlm, self.k, self.max_words, self.min_logit = mlm, k, max_words, float(min_logit)
        self.max_length, self.piece_top, self.max_combinations = max_length, piece_top, max_combinations
        self.batch_size, self.cache_size = batch_size, cache_size
        self.stop_words = as_stop_words(stop_words)
        self._cache = EditCache(cache_size)
        self._candidates: dict[tuple[str, ...], list] = {}  # each text's candidates (CandidatePool)

    # -- public interface ----------------------------------------------------------------------
    def params(self) -> dict:
        """The settings that determine the edits (JSON-ready)."""
        return {
            "mlm": self.mlm.name,
            "k": self.k,
            "max_words": self.max_words,
            "min_logit": self.min_logit,
            "max_length": self.max_length,
            "piece_top": self.piece_top,
            "max_combinations": self.max_combinations,
            "candidate_position": self.candidate_position,
        }

    def candidates(self, texts: Sequence[str]) -> list[list[list[str]]]:
        """Per text, per whitespace word: the replacement words the attack would try."""
        return propose(self.mlm, [t.split() for t in texts], self._settings(), self._known())

    def attack(self, texts: Sequence[str], score_fn: ScoreFn) -> list[TextEdit]:
        """Maximize ``score_fn`` over the texts (uncached); ``score_fn(owner, variants)`` scores
        ``variants[i]`` as a variant of ``texts[owner[i]]``, higher meaning more adversarial."""
        texts = list(texts)
        base = self._score(score_fn, list(range(len(texts))), texts)
        return self._search(texts, score_fn, base)

    def attack_embeddings(self, texts: Sequence[str], model) -> list[TextEdit]:
        """Paper Eq. 4: maximize KL(softmax(e_orig) ‖ softmax(e_adv)) of ``model``'s
        L2-normalized text embeddings. Edits are cached per text and text-tower state
        (``model.text_fingerprint()``): repeated texts cost no forward until a text-tower weight
        changes."""
        state = self._state_key(model)
        return self._cache.edits(texts, state, lambda missing: self._attack_kl(missing, model))

    # -- search --------------------------------------------------------------------------------
    def _attack_kl(self, texts: list[str], model) -> list[TextEdit]:
        with eval_mode(model), torch.no_grad():
            encode = lambda batch: model.encode_text(batch, normalize=True)  # noqa: E731
            reference = torch.cat([encode(list(c)) for c in chunked(texts, self.batch_size)])
            score_fn = lambda owner, batch: kl_divergence_score(reference, encode(batch), owner)  # noqa: E731
            return self._search(texts, score_fn, [0.0] * len(texts))

    def _search(self, texts: list[str], score_fn: ScoreFn, base: list[float]) -> list[TextEdit]:
        """Greedy substitution from the originals (already scored once each: ``base``)."""
        words = [t.split() for t in texts]
        pool = CandidatePool(self.mlm, words, self._settings(), self._known())
        orders, spent = self._visit_orders(words, pool, score_fn)
        states = [
            _Progress(t, w, o, b, 1 + q, i)
            for i, (t, w, o, b, q) in enumerate(zip(texts, words, orders, base, spent))
        ]
        active = [s for s in states if s.queue]
        while active:
            self._greedy_round(active, pool, score_fn)
            active = [s for s in active if s.queue and s.changed < self.max_words]
        return [s.edit() for s in states]

    def _visit_orders(
        self, words, pool: CandidatePool, score_fn: ScoreFn
    ) -> tuple[list[list[int]], list[int]]:
        """Words that may have candidates, by decreasing importance (ties: left first). Only the
        order of those words matters, so only they are masked, and only in texts with two or
        more."""
        eligible = [[w for w in range(len(ws)) if pool.may_have(i, w)] for i, ws in enumerate(words)]
        owner, masked = [], []
        for i, positions in enumerate(eligible):
            if len(positions) > 1:
                owner += [i] * len(positions)
                masked += [" ".join(words[i][:w] + [UNK] + words[i][w + 1 :]) for w in positions]
        scores = iter(self._score(score_fn, owner, masked))
        orders = []
        for positions in eligible:
            importance = {w: next(scores) for w in positions} if len(positions) > 1 else {}
            orders.append(sorted(positions, key=lambda w: -importance.get(w, 0.0)))
        return orders, [len(p) if len(p) > 1 else 0 for p in eligible]

    def _greedy_round(self, states: list[_Progress], pool: CandidatePool, score_fn) -> None:
        """Each text tries every candidate of its next word; all are scored in one call. A word
        without candidates (known only once ranked) is passed over at no cost."""
        visits = [(s, s.queue.pop(0)) for s in states]
        pool.resolve([(s.index, w) for s, w in visits])
        options = [pool.words(s.index, w) for s, w in visits]
        owner = [s.index for (s, _), opts in zip(visits, options) for _ in opts]
        variants = [s.variant(w, c) for (s, w), opts in zip(visits, options) for c in opts]
        scores = iter(self._score(score_fn, owner, variants))
        for (state, position), opts in zip(visits, options):
            values = [next(scores) for _ in opts]
            state.queries += len(values)
            best = max(range(len(values)), key=values.__getitem__, default=None)  # first maximum
            if best is not None and values[best] > state.score:
                state.words[position], state.score = opts[best], values[best]
                state.changed += 1

    def _score(self, score_fn: ScoreFn, owner: list[int], texts: list[str]) -> list[float]:
        """``score_fn`` in calls of at most ``batch_size`` strings, as Python floats."""
        out: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            chunk = texts[start : start + self.batch_size]
            scores = score_fn(torch.tensor(owner[start : start + self.batch_size]), chunk)
            if scores.shape != (len(chunk),):
                raise MmcoaError(
                    f"score_fn must return one score per text: got shape "
                    f"{list(scores.shape)} for {len(chunk)} texts"
                )
            out += scores.detach().double().cpu().tolist()
        return out

    # -- helpers -------------------------------------------------------------------------------
    def _state_key(self, model) -> tuple:
        """What an edit of :meth:`attack_embeddings` depends on, besides the text."""
        return (
            model.text_fingerprint(),
            id(self.mlm),
            self.k,
            self.max_words,
            self.min_logit,
            self.max_length,
            self.piece_top,
            self.max_combinations,
            self.stop_words,
            self.candidate_position,
        )

    def _settings(self) -> CandidateSettings:
        return CandidateSettings(
            self.k,
            self.min_logit,
            self.max_length,
            self.piece_top,
            self.max_combinations,
            self.batch_size,
            self.stop_words,
            self.candidate_position,
        )

    def _known(self) -> dict:
        """The texts whose candidates are known, emptied when it passes ``cache_size`` texts."""
        if len(self._candidates) > self.cache_size:
            self._candidates.clear()
        return self._candidates

    def clear_cache(self) -> None:
        self._cache.clear()
        self._candidates.clear()

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"BertAttack({settings})"


def _check_int(name: str, value: int, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise MmcoaError(f"BertAttack {name} must be an integer >= {low}; got {value!r}")
