"""Co-Attack (Zhang et al. 2022, "Towards adversarial attack on vision-language pre-training
models"), adapted to zero-shot classification as the MMCoA evaluation uses it (paper Table V).

Text first: the class prompts are BERT-attacked (paper Eq. 4). Then the image perturbation
maximizes, per image,

    KL(softmax(e_clean) ‖ softmax(e_adv)) + alpha · KL(softmax(t_adv) ‖ softmax(e_adv)),

with e the normalized image embeddings, t_adv the adversarial prompt of the image's class and
softmax over embedding dimensions. The random start is uniform in the ball with both signs
(the published code's start was one-sided, U[0, 1]·eps).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mmcoa.attacks.base import AttackResult, check_range, eval_mode, register_attack
from mmcoa.attacks.bert import UsesBertAttack, per_class_costs
from mmcoa.attacks.pgd import check_precision, maximize


def embedding_kl(reference: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
    """Per-row KL(softmax(reference) ‖ softmax(moving)) over embedding dimensions."""
    return F.kl_div(moving.log_softmax(-1), reference.log_softmax(-1), log_target=True,
                    reduction="none").sum(-1)


@register_attack("coattack")
@dataclass
class CoAttack(UsesBertAttack):
    """Co-Attack: adversarial prompts, then an image perturbation guided by them.

    Defaults (classification, paper Table V): L-inf eps 1/255, step 1/255, 100 steps,
    alpha 3, BERT-Attack k 10 / 1 word. Retrieval uses eps 2/255, 10 steps,
    step eps/steps·1.25.
    """

    eps: float = 1 / 255
    step_size: float = 1 / 255
    n_steps: int = 100
    alpha: float = 3.0
    precision: str = "fp32"

    def __post_init__(self):
        super().__post_init__()
        check_precision(self.precision)
        check_range("eps", self.eps, 0, 1)
        check_range("step_size", self.step_size, 0, 1)
        check_range("n_steps", self.n_steps, 1, 1e9, low_open=False)
        check_range("alpha", self.alpha, 0, 1e6, low_open=False)

    def __call__(self, classifier, images, labels, generator=None) -> AttackResult:
        model = classifier.model
        with eval_mode(model):
            edits, embeddings = self.adversarial_prompt_set(classifier)
            with torch.no_grad():
                clean = model.encode_image(images, normalize=True).float()
            text = embeddings[labels.to(embeddings.device)].to(clean.device)

            def loss_fn(adv):
                moving = model.encode_image(adv, normalize=True).float()
                return embedding_kl(clean, moving) + self.alpha * embedding_kl(text, moving)

            adversarial = maximize(loss_fn, images, eps=self.eps, step_size=self.step_size,
                                   n_steps=self.n_steps, generator=generator,
                                   precision=self.precision)
        text_queries, changed = per_class_costs(edits, labels)
        return AttackResult(images=adversarial, class_embeddings=embeddings,
                            queries=self.n_steps + text_queries, words_changed=changed,
                            adversarial_prompts=[e.adversarial for e in edits])
