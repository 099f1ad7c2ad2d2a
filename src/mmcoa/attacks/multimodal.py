"""Multimodal attacks on zero-shot classification: image PGD combined with prompt BERT-Attack.

- ``multimodal`` (the paper's): PGD images made against the clean prompts, classified against
  the BERT-attacked prompt set — two independent perturbations (a "Sep-Attack").
- ``multimodal-joint`` (beyond the paper): the prompts are attacked first and PGD is run
  against the adversarial prompt set, so the two perturbations cooperate.
"""

from __future__ import annotations

from dataclasses import dataclass

from mmcoa.attacks.base import ATTACKS, AttackResult, eval_mode
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
        self._pgd = PGD(
            eps=self.eps, step_size=self.step_size, n_steps=self.n_steps, precision=self.precision
        )

    def params(self) -> dict:
        params = super().params()
        params.pop("joint")
        return params

    @property
    def image_attack(self) -> PGD | None:
        """The independent image part of the Sep form (None for the joint form, whose PGD runs
        against the attacked prompts): the evaluation seeds it as that PGD on its own and, when
        the same PGD runs in the same evaluation, reuses its images (``image_result``)."""
        return None if self.joint else self._pgd

    def __call__(self, classifier, images, labels, generator=None, image_result=None) -> AttackResult:
        with eval_mode(classifier.model):
            edits, embeddings = self.adversarial_prompt_set(classifier)
            target = classifier.with_prompt_set(embeddings) if self.joint else classifier
            if image_result is None:
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
        mlm (str): masked LM proposing the candidate words, a hub id or a directory.
            (Default: ``"bert-base-uncased"``; ``minilm``: the demo's offline encoder)
        k (int): candidates per word. (Default: 10)
        max_words (int): words changed per prompt at most. (Default: 1)
        eps (float): L-inf radius of the image perturbation. (Default: 1/255)
        step_size (float): PGD sign step. (Default: 1/255)
        n_steps (int): PGD iterations. (Default: 100)
        precision (str): ``"fp32"`` or ``"bf16"`` autocast for the image part. (Default: ``"fp32"``)

    Shape:
        - images: ``(B, 3, H, W)``, float pixels in [0, 1] at the dataset's own resolution.
        - labels: ``(B,)``, class indices in ``[0, C)`` of the classifier's C prompts.
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
