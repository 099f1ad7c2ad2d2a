"""Multimodal attacks on zero-shot classification: image PGD combined with prompt BERT-Attack
(or Charmer: ``text_attack``, :class:`~mmcoa.attacks.charmer.TextAttackChoice`).

- ``multimodal`` (the paper's): PGD images made against the clean prompts, classified against
  the BERT-attacked prompt set — two independent perturbations (a "Sep-Attack").
- ``multimodal-joint`` (beyond the paper): the prompts are attacked first and PGD is run
  against the adversarial prompt set, so the two perturbations cooperate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from mmcoa.attacks.base import ATTACKS, Attack, AttackResult, eval_mode
from mmcoa.attacks.bert import per_class_costs
from mmcoa.attacks.charmer import TextAttackChoice
from mmcoa.attacks.pgd import PGD, ImageBudget


@dataclass
class _PgdAndPrompts(ImageBudget, TextAttackChoice, Attack):
    """PGD's budget (paper test setting) plus the text attack's fields (BERT-Attack's by
    default)."""

    threat: ClassVar[str] = "multimodal"
    joint: bool = False

    def __post_init__(self):
        super().__post_init__()
        self._pgd = PGD(
            eps=self.eps, step_size=self.step_size, n_steps=self.n_steps, precision=self.precision
        )

    def params(self) -> dict:
        params = super().params()
        params.pop("joint")
        return params

    def image_part(self) -> PGD | None:
        """The Sep form's PGD against the clean prompts (None for the joint form, whose PGD
        runs against the attacked prompts)."""
        return None if self.joint else self._pgd

    def __call__(self, classifier, images, labels, generator=None, image_result=None) -> AttackResult:
        with eval_mode(classifier.model):
            edits, embeddings = self.adversarial_prompt_set(classifier)
            target = classifier.with_prompt_set(embeddings) if self.joint else classifier
            if image_result is None or self.joint:
                image_result = self._pgd(target, images, labels, generator)
        text_queries, changed = per_class_costs(edits, labels)
        return AttackResult(
            images=image_result.images,
            class_embeddings=embeddings,
            queries=image_result.queries + text_queries,
            words_changed=changed,
            adversarial_prompts=[e.adversarial for e in edits],
        )


@ATTACKS.register("multimodal")
@dataclass
class Multimodal(_PgdAndPrompts):
    """Paper's multimodal attack: PGD on clean prompts + BERT-Attack prompts (Sep-Attack).

    Defaults: L-inf PGD eps 1/255, step 1/255, 100 steps; BERT-Attack k 10, 1 word.

    Arguments (eps and step_size in pixel units):
        text_attack (str): ``bert`` (the paper's) or ``charmer``
            (:class:`~mmcoa.attacks.charmer.TextAttackChoice`). (Default: ``"bert"``)
        mlm, k, max_words, candidate_position: BERT-Attack's masked LM, candidates per word, word
            budget and where candidates are read
            (:class:`~mmcoa.attacks.bert.UsesBertAttack`).
        max_edits, n_positions, alphabet: Charmer's Levenshtein budget, positions kept and
            characters, with ``text_attack="charmer"``
            (:class:`~mmcoa.attacks.charmer.UsesCharmer`).
        eps, step_size, n_steps, precision: the L-inf image budget
            (:class:`~mmcoa.attacks.pgd.ImageBudget`). (Default: 1/255, 1/255, 100, ``"fp32"``)

    Shape:
        - images, labels: as for :class:`~mmcoa.attacks.base.Attack`.
        - output: ``AttackResult.images`` ``(B, 3, H, W)`` in [0, 1] and within L-inf ``eps``
          of ``images``; ``class_embeddings`` ``(C, D)``, the attacked prompt set, normalized;
          ``words_changed`` ``(B,)``.
    """


@ATTACKS.register("multimodal-joint")
@dataclass
class MultimodalJoint(_PgdAndPrompts):
    """Joint multimodal attack: PGD against the BERT-attacked prompt set (beyond the paper).

    Arguments and shapes as for :class:`Multimodal` (same defaults); ``joint`` is fixed.
    """

    joint: bool = True
