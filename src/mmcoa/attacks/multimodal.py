"""Multimodal attacks on zero-shot classification: image PGD combined with prompt BERT-Attack.

- ``multimodal`` (the paper's): PGD images made against the clean prompts, classified against
  the BERT-attacked prompt set — two independent perturbations (a "Sep-Attack").
- ``multimodal-joint`` (beyond the paper): the prompts are attacked first and PGD is run
  against the adversarial prompt set, so the two perturbations cooperate.
"""

from __future__ import annotations

from dataclasses import dataclass

from mmcoa.attacks.base import AttackResult, eval_mode, register_attack
from mmcoa.attacks.bert import UsesBertAttack, per_class_costs
from mmcoa.attacks.pgd import PGD


@dataclass
class _PgdAndPrompts(UsesBertAttack):
    """PGD fields (paper test setting) plus the BERT-Attack fields."""

    eps: float = 1 / 255
    step_size: float = 1 / 255
    n_steps: int = 100
    precision: str = "fp32"
    joint: bool = False

    def __post_init__(self):
        super().__post_init__()
        self._pgd = PGD(eps=self.eps, step_size=self.step_size, n_steps=self.n_steps,
                        precision=self.precision)

    def params(self) -> dict:
        params = super().params()
        params.pop("joint")
        return params

    def __call__(self, classifier, images, labels, generator=None) -> AttackResult:
        with eval_mode(classifier.model):
            edits, embeddings = self.adversarial_prompt_set(classifier)
            target = classifier.with_prompt_set(embeddings) if self.joint else classifier
            image_result = self._pgd(target, images, labels, generator)
        text_queries, changed = per_class_costs(edits, labels)
        return AttackResult(images=image_result.images, class_embeddings=embeddings,
                            queries=image_result.queries + text_queries, words_changed=changed,
                            adversarial_prompts=[e.adversarial for e in edits])


@register_attack("multimodal")
@dataclass
class Multimodal(_PgdAndPrompts):
    """Paper's multimodal attack: PGD on clean prompts + BERT-Attack prompts (Sep-Attack).

    Defaults: L-inf PGD eps 1/255, step 1/255, 100 steps; BERT-Attack k 10, 1 word.
    """


@register_attack("multimodal-joint")
@dataclass
class MultimodalJoint(_PgdAndPrompts):
    """Joint multimodal attack: PGD against the BERT-attacked prompt set (beyond the paper)."""

    joint: bool = True
