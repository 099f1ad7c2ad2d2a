"""Uniform random noise in the eps-ball: the baseline an attack must beat by far.

Carlini et al., "On evaluating adversarial robustness", 2019 (https://arxiv.org/abs/1902.06705),
§5: random noise of the attack's budget should lower accuracy far less than the attack; when it
does about as much, the gradients the attack follows are uninformative (gradient masking).
``mmcoa analyze sanity`` runs this check.
"""

from __future__ import annotations

from dataclasses import dataclass

from mmcoa.attacks.apgd import check_ball
from mmcoa.attacks.base import ATTACKS, Attack, AttackResult
from mmcoa.attacks.pgd import random_start


@ATTACKS.register("noise")
@dataclass
class UniformNoise(Attack):
    """Uniform random noise in the eps-ball (no model access), one draw per image.

    The draw is PGD's random start (:func:`mmcoa.attacks.pgd.random_start`): uniform in the
    L-inf cube (each pixel independently in [-eps, eps]) or uniform in the L2 ball, then
    clipped to [0, 1]. Carlini et al. 2019 (https://arxiv.org/abs/1902.06705) use it as the
    floor any gradient attack must clear. Deterministic given the generator; ``queries`` is 0.

    Arguments (pixel units):
        eps (float): radius of the ``norm`` ball. (Default: 1/255)
        norm (str): ``"linf"`` or ``"l2"``. (Default: ``"linf"``)

    Shape:
        - images: ``(B, 3, H, W)``, float pixels in [0, 1] at the dataset's own resolution.
        - labels: ``(B,)``, class indices in ``[0, C)`` of the classifier's C prompts.
        - output: ``AttackResult.images``, ``(B, 3, H, W)`` in [0, 1] and within ``eps`` of
          ``images`` in the ``norm``.

    Example::

        adv = UniformNoise(eps=1 / 255)(classifier, images, labels, generator).images
    """

    eps: float = 1 / 255
    norm: str = "linf"

    def __post_init__(self):
        check_ball(self.eps, self.norm)

    def __call__(self, classifier, images, labels, generator=None) -> AttackResult:
        images = images.detach()
        return AttackResult(images=images + random_start(images, self.eps, self.norm, generator), queries=0)
