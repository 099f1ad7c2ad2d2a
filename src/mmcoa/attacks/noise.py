"""Uniform random noise in the eps-ball: the baseline an attack must beat by far.

Carlini et al., "On evaluating adversarial robustness", 2019 (https://arxiv.org/abs/1902.06705),
§5: random noise of the attack's budget should lower accuracy far less than the attack; when it
does about as much, the gradients the attack follows are uninformative (gradient masking).
``mmcoa analyze sanity`` runs this check.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from mmcoa.attacks.apgd import check_ball
from mmcoa.attacks.base import ATTACKS, Attack, AttackResult, same_setting
from mmcoa.attacks.pgd import PGD, ImageBudget, random_start


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
        - images, labels: as for :class:`~mmcoa.attacks.base.Attack`.
        - output: ``AttackResult.images``, ``(B, 3, H, W)`` in [0, 1] and within ``eps`` of
          ``images`` in the ``norm``.

    Example::

        adv = UniformNoise(eps=1 / 255)(classifier, images, labels, generator).images
    """

    threat: ClassVar[str] = "image"
    eps: float = same_setting(ImageBudget, "eps")
    norm: str = same_setting(PGD, "norm")

    def __post_init__(self):
        check_ball(self.eps, self.norm)

    def __call__(self, classifier, images, labels, generator=None, image_result=None) -> AttackResult:
        images = images.detach()
        return AttackResult(images=images + random_start(images, self.eps, self.norm, generator), queries=0)
