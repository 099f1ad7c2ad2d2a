"""Charmer (Abad Rocamora et al., ICML 2024): a greedy character-level attack within Levenshtein
distance k, and LEAF's sampled variant of it (Abad Rocamora et al., NeurIPS 2025).

Charmer's objective is ``max L(S')`` over the texts ``S'`` with ``d_Lev(S, S') <= k``; it is
approached one character edit at a time. A text of n characters has 2n + 1 *slots* (Charmer's
expanded text ``_ s_1 _ s_2 ... s_n _``): slot ``2i`` is the gap before character i (slot
``2n`` the end), where a character is inserted; slot ``2i + 1`` is character i, which is
substituted or deleted. Each of the k steps

1. selects positions: every slot is *probed* by writing a space there (inserted in a gap,
   substituted for a character; a space already there is deleted), the probes are scored, and
   the ``n_positions`` (rho) best slots are kept;
2. writes every alphabet character, and deletion, at each kept slot, scores the strings, and
   keeps the best one when it scores higher than the current text.

Each step is one edit, so the result is within Levenshtein distance ``max_edits`` of the
original. ``sampled`` is LEAF's training attack (its Algorithm 1): rho random slots are probed
and the best one kept, then rho random alphabet entries are written there; it costs at most
2·rho strings per text and step whatever the text's length, and needs one generator per text.

Batched like :class:`~mmcoa.attacks.text.BertAttack`: each step scores the probes of all texts,
then the candidates of all texts, in calls of at most ``batch_size`` strings; a text's distinct
strings are scored once, and each text's result is the one it would get alone.
:meth:`Charmer.attack_embeddings` is the paper's Eq. 4 objective (the KL divergence of the
softmaxed normalized text embeddings), cached per text and text-tower state.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Sequence

import torch

from mmcoa.attacks.base import eval_mode
from mmcoa.attacks.text.bert_attack import EditCache, ScoreFn, TextEdit, kl_divergence_score
from mmcoa.attacks.text.candidates import chunked
from mmcoa.errors import MmcoaError

DELETE = ""  # the alphabet entry that removes the character at a slot
SPACE = " "  # Charmer's probe character
ALPHABETS: dict[str, tuple[str, ...]] = {
    # LEAF's Gamma, in its order: deletion, a-z, space, A-Z, digits, punctuation (95 characters)
    "printable": (
        DELETE,
        *string.ascii_lowercase,
        SPACE,
        *string.ascii_uppercase,
        *string.digits,
        *string.punctuation,
    ),
    # Charmer's --only_letters vocabulary: deletion and a-z
    "lowercase": (DELETE, *string.ascii_lowercase),
}


def edited(text: str, slot: int, char: str) -> str:
    """``text`` with ``char`` written at ``slot``: inserted before character ``slot // 2`` for an
    even slot, substituted for it for an odd one; :data:`DELETE` removes it (nothing at an even
    slot)."""
    i = slot // 2
    return text[:i] + char + text[i + slot % 2 :]


def probe(text: str, slot: int) -> str:
    """Charmer's position probe: a space written at ``slot``, or the space there deleted."""
    return edited(text, slot, DELETE if slot % 2 and text[slot // 2] == SPACE else SPACE)


def check_charmer_settings(max_edits: int, n_positions: int, alphabet: str) -> None:
    """One-line :class:`~mmcoa.errors.MmcoaError` for a bad Levenshtein budget, rho or alphabet."""
    for name, value in (("max_edits", max_edits), ("n_positions", n_positions)):
        _check_int(name, value, 1)
    if alphabet not in ALPHABETS:
        raise MmcoaError(f"Charmer alphabet must be one of {', '.join(ALPHABETS)}; got {alphabet!r}")


@dataclass
class _Search:
    """One text's greedy search: the current text, its score and what it cost."""

    index: int
    original: str
    text: str
    score: float
    queries: int
    generator: torch.Generator | None = None
    edits: int = 0
    done: bool = False  # a deterministic step found nothing better: the next would repeat it

    def result(self) -> TextEdit:
        """The attacked text; ``changed_words`` holds the character edits made (at most k)."""
        return TextEdit(self.original, self.text, self.edits, self.queries)


class Charmer:
    """Charmer with ``max_edits`` (k) steps of one character edit, ``n_positions`` (rho) slots kept
    per step, the characters of ``alphabet`` (a key of :data:`ALPHABETS`) and deletion; ``sampled``
    for LEAF's training search (rho random slots probed, the best one kept, rho random alphabet
    entries tried there). Scoring calls of at most ``batch_size`` strings; ``cache_size`` bounds
    the edits kept by :meth:`attack_embeddings`."""

    def __init__(
        self,
        max_edits: int = 1,
        n_positions: int = 50,
        alphabet: str = "printable",
        *,
        sampled: bool = False,
        batch_size: int = 512,
        cache_size: int = 100_000,
    ):
        check_charmer_settings(max_edits, n_positions, alphabet)
        _check_int("batch_size", batch_size, 1)
        _check_int("cache_size", cache_size, 0)
        self.max_edits, self.n_positions, self.alphabet = max_edits, n_positions, alphabet
        self.sampled, self.batch_size, self.cache_size = bool(sampled), batch_size, cache_size
        self.characters = ALPHABETS[alphabet]
        self._cache = EditCache(cache_size)

    # -- public interface ----------------------------------------------------------------------
    def params(self) -> dict:
        """The settings that determine the edits (JSON-ready)."""
        return {
            "max_edits": self.max_edits,
            "n_positions": self.n_positions,
            "alphabet": self.alphabet,
            "sampled": self.sampled,
        }

    def attack(
        self,
        texts: Sequence[str],
        score_fn: ScoreFn,
        generators: Sequence[torch.Generator] | None = None,
    ) -> list[TextEdit]:
        """Maximize ``score_fn`` (uncached); ``score_fn(owner, variants)`` scores ``variants[i]``
        as a variant of ``texts[owner[i]]``, higher meaning more adversarial. ``generators``: one
        per text, for the ``sampled`` search only."""
        texts = list(texts)
        self._check_generators(texts, generators)
        base = self._score_calls(score_fn, list(range(len(texts))), texts)
        return self._search(texts, score_fn, base, generators)

    def attack_embeddings(self, texts: Sequence[str], model) -> list[TextEdit]:
        """Paper Eq. 4: maximize KL(softmax(e_orig) ‖ softmax(e_adv)) of ``model``'s L2-normalized
        text embeddings, in eval mode. Edits are cached per text and text-tower state
        (``model.text_fingerprint()``); the ``sampled`` search draws, so it is refused here."""
        if self.sampled:
            raise MmcoaError("Charmer.attack_embeddings is the deterministic search: sampled=False")
        state = (model.text_fingerprint(), self.max_edits, self.n_positions, self.alphabet)
        return self._cache.edits(texts, state, lambda missing: self._attack_kl(missing, model))

    def clear_cache(self) -> None:
        self._cache.clear()

    # -- search --------------------------------------------------------------------------------
    def _attack_kl(self, texts: list[str], model) -> list[TextEdit]:
        with eval_mode(model), torch.no_grad():
            encode = lambda batch: model.encode_text(list(batch), normalize=True)  # noqa: E731
            reference = torch.cat([encode(c) for c in chunked(texts, self.batch_size)])
            score_fn = lambda owner, batch: kl_divergence_score(reference, encode(batch), owner)  # noqa: E731
            return self._search(texts, score_fn, [0.0] * len(texts), None)

    def _search(self, texts, score_fn: ScoreFn, base: list[float], generators) -> list[TextEdit]:
        """k greedy steps from the originals (already scored once each: ``base``); a text whose
        deterministic step found no better string stops there."""
        draws = generators or [None] * len(texts)
        states = [_Search(i, t, t, b, 1, g) for i, (t, b, g) in enumerate(zip(texts, base, draws))]
        for _ in range(self.max_edits):
            active = [s for s in states if not s.done]
            self._substitute(active, self._select_slots(active, score_fn), score_fn)
        return [s.result() for s in states]

    def _select_slots(self, states: list[_Search], score_fn: ScoreFn) -> list[list[int]]:
        """Step 1, per text: the probed slots, best probe score first (ties: probe order), cut
        at rho (Charmer) or at one (sampled)."""
        probed = [self._probed_slots(s) for s in states]
        values = self._score_variants(
            score_fn, states, [[probe(s.text, z) for z in p] for s, p in zip(states, probed)]
        )
        keep = 1 if self.sampled else self.n_positions
        return [
            [slots[j] for j in sorted(range(len(slots)), key=lambda j: -scores[j])[:keep]]
            for slots, scores in zip(probed, values)
        ]

    def _substitute(self, states: list[_Search], kept: list[list[int]], score_fn: ScoreFn) -> None:
        """Step 2, per text: every chosen character at every kept slot; the first best string
        replaces the text when it scores higher."""
        variants = [self._candidates(s, slots) for s, slots in zip(states, kept)]
        for state, texts, scores in zip(states, variants, self._score_variants(score_fn, states, variants)):
            best = max(range(len(scores)), key=scores.__getitem__, default=None)
            if best is not None and scores[best] > state.score:
                state.text, state.score, state.edits = texts[best], scores[best], state.edits + 1
            else:
                state.done = not self.sampled

    def _candidates(self, state: _Search, slots: list[int]) -> list[str]:
        """The strings one chosen character (or deletion) at one kept slot away, the text itself
        left out."""
        characters = self._characters(state)
        return [v for z in slots for c in characters if (v := edited(state.text, z, c)) != state.text]

    def _probed_slots(self, state: _Search) -> list[int]:
        slots = 2 * len(state.text) + 1
        if not self.sampled:
            return list(range(slots))
        return torch.randperm(slots, generator=state.generator)[: self.n_positions].tolist()

    def _characters(self, state: _Search) -> Sequence[str]:
        if not self.sampled:
            return self.characters
        order = torch.randperm(len(self.characters), generator=state.generator)[: self.n_positions]
        return [self.characters[j] for j in order.tolist()]

    # -- scoring -------------------------------------------------------------------------------
    def _score_variants(
        self, score_fn: ScoreFn, states: list[_Search], variants: list[list[str]]
    ) -> list[list[float]]:
        """Scores of each text's variants, each distinct string scored once (and counted once
        in the text's queries); all texts' strings in one series of calls."""
        unique = [list(dict.fromkeys(v)) for v in variants]
        owner = [s.index for s, u in zip(states, unique) for _ in u]
        flat = iter(self._score_calls(score_fn, owner, [t for u in unique for t in u]))
        out = []
        for state, texts, strings in zip(states, variants, unique):
            state.queries += len(strings)
            score_of = {text: next(flat) for text in strings}
            out.append([score_of[t] for t in texts])
        return out

    def _score_calls(self, score_fn: ScoreFn, owner: list[int], texts: list[str]) -> list[float]:
        """``score_fn`` in calls of at most ``batch_size`` strings, as Python floats."""
        out: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            chunk = texts[start : start + self.batch_size]
            scores = score_fn(torch.tensor(owner[start : start + self.batch_size], dtype=torch.long), chunk)
            if scores.shape != (len(chunk),):
                raise MmcoaError(
                    f"score_fn must return one score per text: got shape {list(scores.shape)} for {len(chunk)} texts"
                )
            out += scores.detach().double().cpu().tolist()
        return out

    # -- helpers -------------------------------------------------------------------------------
    def _check_generators(self, texts: list[str], generators) -> None:
        if self.sampled and (generators is None or len(generators) != len(texts)):
            raise MmcoaError("Charmer's sampled search draws its slots: pass one generator per text")

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"Charmer({settings})"


def _check_int(name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise MmcoaError(f"Charmer {name} must be an integer >= {low}; got {value!r}")
