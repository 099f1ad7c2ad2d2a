"""A new defense in one file: fine-tuning on uniformly noised images (``noise-ft``).

Loaded as a plugin (``MMCOA_PLUGINS=tests/plugins/noise_ft.py``), it trains, evaluates and
reports like a built-in method; ``tests/test_plugins.py`` runs it end to end.
"""

from __future__ import annotations

import torch.nn.functional as F

from mmcoa.attacks.pgd import random_start
from mmcoa.train.methods import METHODS, Method, class_logits


@METHODS.register("noise-ft")
class NoiseFineTuning(Method):
    """Noise fine-tuning: cross-entropy on images with uniform noise in the training eps-ball.

    The random-noise baseline of adversarial training (Carlini et al. 2019 use uniform noise as
    the floor an attack must clear): the clean prompts' cross-entropy on x + U(-eps, eps)."""

    defaults = {**Method.defaults, "lr": 2e-5, "train_eps": 4 / 255}
    default_towers = ("image",)

    def loss(self, ctx, images, labels):
        noisy = images + random_start(images, ctx.config.train_eps, "linf", ctx.generator)
        loss = F.cross_entropy(class_logits(ctx.model, ctx.prompts)(noisy), labels)
        return loss, {"image_noisy": loss.detach()}
