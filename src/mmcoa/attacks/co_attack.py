"""Co-Attack (Zhang et al. 2022, "Towards adversarial attack on vision-language pre-training
models"), adapted to zero-shot classification as the MMCoA evaluation uses it (paper Table V).

Text first: the class prompts are BERT-attacked (paper Eq. 4; or attacked by Charmer with
``text_attack="charmer"``, :class:`~mmcoa.attacks.charmer.TextAttackChoice`). Then the image perturbation
maximizes, per image,

    KL(softmax(e_clean) ‖ softmax(e_adv)) + text_weight · KL(softmax(t_adv) ‖ softmax(e_adv)),

with e the normalized image embeddings, t_adv the adversarial prompt of the image's class and
softmax over embedding dimensions. The random start is uniform in the ball with both signs
(the published code's start was one-sided, U[0, 1]·eps).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from mmcoa.attacks.base import ATTACKS, Attack, AttackResult, check_range, eval_mode
from mmcoa.attacks.bert import per_class_costs
from mmcoa.attacks.charmer import TextAttackChoice
from mmcoa.attacks.pgd import ImageBudget
from mmcoa.flags import setting


def embedding_kl(reference: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
    """Per-row KL(softmax(reference) ‖ softmax(moving)) over embedding dimensions."""
    return F.kl_div(moving.log_softmax(-1), reference.log_softmax(-1), log_target=True, reduction="none").sum(
        -1
    )


@ATTACKS.register("coattack")
@dataclass
class CoAttack(ImageBudget, TextAttackChoice, Attack):
    """Co-Attack: adversarial prompts, then an image perturbation guided by them.

    Defaults (classification, paper Table V): L-inf eps 1/255, step 1/255, 100 steps,
    text_weight 3 (the published code's alpha), BERT-Attack k 10 / 1 word. Retrieval uses eps 2/255, 10 steps,
    step eps/steps·1.25.

    Arguments (eps and step_size in pixel units): the text attack and its fields as for
    :class:`~mmcoa.attacks.multimodal.Multimodal` (``text_attack``: ``bert``, the paper's, or
    ``charmer``), the same L-inf image budget, and
        text_weight (float): weight of the KL to the attacked prompt's embedding against the KL
            to the clean image's (the published code's ``alpha``). (Default: 3.0)

    Shape:
        - images, labels: as for :class:`~mmcoa.attacks.base.Attack`.
        - output: ``AttackResult.images`` ``(B, 3, H, W)`` in [0, 1] and within L-inf ``eps``
          of ``images``; ``class_embeddings`` ``(C, D)``, the attacked prompt set, normalized;
          ``words_changed`` ``(B,)``.
    """

    threat: ClassVar[str] = "multimodal"
    text_weight: float = setting(3.0, "Co-Attack: weight of the text-guidance KL, the published code's alpha")

    def __post_init__(self):
        super().__post_init__()
        check_range("text_weight", self.text_weight, 0, 1e6, low_open=False)

    def __call__(self, classifier, images, labels, generator=None, image_result=None) -> AttackResult:
        model = classifier.model
        with eval_mode(model):
            edits, embeddings = self.adversarial_prompt_set(classifier)
            with torch.no_grad():
                clean = model.encode_image(images, normalize=True).float()
            text = embeddings[labels.to(embeddings.device)].to(clean.device)

            def loss_fn(adv):
                moving = model.encode_image(adv, normalize=True).float()
                return embedding_kl(clean, moving) + self.text_weight * embedding_kl(text, moving)

            adversarial = self.maximize(loss_fn, images, generator)
        text_queries, changed = per_class_costs(edits, labels)
        return AttackResult(
            images=adversarial,
            class_embeddings=embeddings,
            queries=self.n_steps + text_queries,
            words_changed=changed,
            adversarial_prompts=[e.adversarial for e in edits],
        )
