"""LEAF (Abad Rocamora et al., NeurIPS 2025, "Robustness in Both Domains: CLIP Needs a Robust
Text Encoder"): FARE's embedding loss on the text tower, against character-level adversaries.

The paper's TextFARE objective,

    min_theta  sum_i  max_{t'_i : d_Lev(t_i, t'_i) <= k}  || T_theta(t'_i) - T_0(t_i) ||_2^2,

pulls the trained text encoder's embedding of the worst text within Levenshtein distance k to
the frozen original encoder's embedding of the clean text (unnormalized embeddings, FARE's
loss). The inner maximum is LEAF's training attack, Charmer's sampled search
(:class:`~mmcoa.attacks.text.charmer.Charmer` with ``sampled=True``): per text and edit, rho
random positions probed with a space, the best one kept, rho random characters tried there.
Published setting: k = 1, rho = 50, the printable alphabet; only the text tower trains.
"""

from __future__ import annotations

import hashlib

import torch

from mmcoa.attacks.base import eval_mode
from mmcoa.attacks.pgd import RowsOf
from mmcoa.attacks.text.charmer import Charmer
from mmcoa.train.methods import FARE, METHODS, WithFrozenTeacher
from mmcoa.train.objectives import fare_loss

SEED_RANGE = 2**62  # per-text seeds are drawn in [0, SEED_RANGE)


def text_generators(generator, texts: list[str]) -> list[torch.Generator]:
    """One CPU generator per text, seeded from one draw of the step's attack generator and the
    text itself: the same text gets the same draws in every row and on every process (under
    torchrun, :class:`~mmcoa.attacks.pgd.RowsOf` holds the step's shared generator), so the
    search depends neither on the process count nor on where the text sits in the batch."""
    if isinstance(generator, RowsOf):
        generator = generator.generator
    step = int(torch.randint(SEED_RANGE, (1,), generator=generator, device=generator.device))
    return [torch.Generator().manual_seed(text_seed(step, text)) for text in texts]


def text_seed(step: int, text: str) -> int:
    """A seed in ``[0, SEED_RANGE)`` from the step's draw and the text (SHA-256)."""
    digest = hashlib.sha256(f"{step}\x00{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % SEED_RANGE


def embedding_distance(model, target: torch.Tensor):
    """Score for Charmer: ``||T_theta(t') - T_0(t)||_2^2`` of the candidate ``t'`` of text
    ``owner`` (``target[owner]``, the frozen embedding of its clean text)."""

    def score(owner: torch.Tensor, texts: list[str]) -> torch.Tensor:
        moved = model.encode_text(texts).float()
        return (moved - target[owner.to(target.device)].float()).pow(2).sum(-1)

    return score


@METHODS.register("leaf")
class LEAF(WithFrozenTeacher):
    """LEAF, adversarial fine-tuning of the text encoder against character edits (embedding distance).

    LEAF (Abad Rocamora et al. 2025): the text embedding of t', the worst text within
    Levenshtein distance k = 1 of t found by Charmer's sampled search (rho = 50, printable
    alphabet), is pulled to the frozen original model's embedding of t (the paper's TextFARE
    objective, FARE's loss on the text tower); text tower only. Our training data are
    classification datasets, so the texts are the class prompts of the training dataset: each
    image's own class prompt; a prompt repeated in a batch is searched once (its draws seeded
    by the step and the text). Settings: LEAF's training
    scripts (AdamW lr 1e-5, wd 1e-4, cosine with 1400 warm-up steps; FARE's numbers); the
    training-PGD settings are unused."""

    defaults = dict(FARE.defaults)
    default_towers = ("text",)
    max_edits, n_positions, alphabet = 1, 50, "printable"  # the published k, rho and Gamma

    def __init__(self, charmer: Charmer | None = None):
        """``charmer``: the training attack (e.g. ``Charmer(sampled=False)``, the full search);
        by default LEAF's sampled search with the published settings."""
        self.charmer = charmer or Charmer(self.max_edits, self.n_positions, self.alphabet, sampled=True)

    def loss(self, ctx, images, labels):
        texts = [ctx.prompts[int(y)] for y in labels]
        with torch.no_grad():
            target = self.frozen.encode_text(texts)
        adversarial = self.worst_texts(ctx.model, texts, target, ctx.generator)
        loss = fare_loss(ctx.model.encode_text(adversarial), target)
        return loss, {"leaf": loss.detach()}

    def worst_texts(self, model, texts: list[str], target: torch.Tensor, generator) -> list[str]:
        """The inner maximum: each text's Charmer edit that moves ``model``'s embedding furthest
        from ``target`` (eval mode, no gradient)."""
        distinct = list(dict.fromkeys(texts))  # class prompts repeat: one search per text
        first = [texts.index(t) for t in distinct]
        draws = text_generators(generator, distinct) if self.charmer.sampled else None
        with eval_mode(model), torch.no_grad():
            edits = self.charmer.attack(distinct, embedding_distance(model, target[first]), draws)
        worst = {t: e.adversarial for t, e in zip(distinct, edits)}
        return [worst[t] for t in texts]
