"""A new attack in one file: FGSM (``fgsm``), one signed-gradient step of size eps.

Loaded as a plugin (``MMCOA_PLUGINS=tests/plugins/fgsm.py``), it gets its flags, suite keys,
record threat and report column from this class alone; ``tests/test_plugins.py`` runs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch.nn.functional as F

from mmcoa.attacks.base import ATTACKS, Attack, AttackResult, eval_mode, same_setting
from mmcoa.attacks.pgd import ImageBudget
from mmcoa.flags import setting


@ATTACKS.register("fgsm")
@dataclass
class FGSM(ImageBudget, Attack):
    """FGSM (Goodfellow et al. 2015): x + eps · sign(∇ CE), from the image itself.

    Arguments (pixel units): eps and step_size (Default: 4/255), n_steps (Default: 1),
    precision; label_smoothing (float) of the cross-entropy it ascends (Default: 0).
    """

    threat: ClassVar[str] = "image"
    random_start: ClassVar[bool] = False
    eps: float = same_setting(ImageBudget, "eps", 4 / 255)
    step_size: float = same_setting(ImageBudget, "step_size", 4 / 255)
    n_steps: int = same_setting(ImageBudget, "n_steps", 1)
    label_smoothing: float = setting(0.0, "FGSM: label smoothing of the cross-entropy it ascends")

    def __call__(self, classifier, images, labels, generator=None, image_result=None) -> AttackResult:
        def loss_fn(adv):
            logits = classifier.logits(adv)
            return F.cross_entropy(logits, labels, reduction="none", label_smoothing=self.label_smoothing)

        with eval_mode(classifier.model):
            return AttackResult(images=self.maximize(loss_fn, images, generator), queries=self.n_steps)
