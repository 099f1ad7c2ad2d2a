"""Sim-CLIP (``simclip``): FARE's unsupervised adversarial fine-tuning with a siamese cosine loss.

Sim-CLIP (Hossain & Imteaj 2024, "Sim-CLIP: Unsupervised Siamese Adversarial Fine-Tuning for
Robust and Semantically-Rich Vision-Language Models", arXiv 2407.14971), as its published
``train/adversarial_training_simclip.py`` computes it:

- the inner attack is FARE's (the script's ``--attack_loss l2``): ``x_adv`` maximizes
  ``‖f(x_adv) − f₀(x)‖²₂`` within the L-inf ball, PGD with momentum 0.9, the tuned model in eval
  mode, ``f₀`` the frozen original image tower;
- the loss is the paper's ``L_simclip(R_p, R_c) = ½ (D(R_p, sg(R_c)) + D(R_c, sg(R_p)))``,
  SimSiam's symmetric negative cosine ``D`` with stop-gradient ``sg``, between the perturbed
  representation ``R_p = f(x_adv)`` of the tuned tower and the clean one ``R_c = f₀(x)``. The
  paper draws both branches from one shared encoder; the published loop takes ``R_c`` from the
  frozen original model (its ``model_orig``), which we follow (:func:`simclip_loss`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mmcoa.train.methods import FARE, METHODS, WithFrozenTeacher, fare_adversarial

# The published Sim-CLIP⁴ command (README and bash/training/simclip_train.sh): AdamW lr 1e-3,
# wd 1e-5, cosine with 1400 warm-up steps (of 10,000, batch 64), PGD L-inf eps 4/255, 10 steps of
# 1/255 with momentum 0.9 (its pgd_train.py); Sim-CLIP²: train_eps 2/255.
SIMCLIP_DEFAULTS = {**FARE.defaults, "lr": 1e-3, "weight_decay": 1e-5}


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """SimSiam's ``D(p, z) = −cos(p, sg(z))``, averaged over the batch: ``z`` is detached."""
    return -F.cosine_similarity(p, z.detach(), dim=-1).mean()


def simclip_loss(adv_features: torch.Tensor, original_features: torch.Tensor) -> torch.Tensor:
    """Sim-CLIP's loss ``½ D(f(x_adv), f₀(x)) + ½ D(f₀(x), f(x_adv))`` (:func:`negative_cosine`).

    With the frozen ``f₀(x)`` carrying no gradient, its value is ``−cos(f(x_adv), f₀(x))`` and its
    gradient half that of the first term (the second term's only path is stopped), exactly as
    the published loop."""
    return (
        negative_cosine(adv_features, original_features) + negative_cosine(original_features, adv_features)
    ) / 2


@METHODS.register("simclip")
class SimCLIP(WithFrozenTeacher):
    """Sim-CLIP, unsupervised siamese adversarial fine-tuning of the image encoder (cosine loss).

    Sim-CLIP (Hossain & Imteaj 2024): FARE's attack (x_adv maximizes ‖f(x_adv) − f₀(x)‖²) with
    the symmetric stop-gradient negative cosine between f(x_adv) and the frozen original f₀(x)
    (:func:`simclip_loss`); image tower, labels unused. Settings: its Sim-CLIP⁴ command (AdamW
    lr 1e-3, wd 1e-5, cosine with 1400 warm-up steps, PGD eps 4/255, 10 steps of 1/255 with
    momentum 0.9; Sim-CLIP²: train_eps 2/255)."""

    defaults = SIMCLIP_DEFAULTS
    default_towers = ("image",)

    def loss(self, ctx, images, labels):
        with torch.no_grad():
            original = self.frozen.encode_image(images)
        adversarial = fare_adversarial(ctx, original, images)
        loss = simclip_loss(ctx.model.encode_image(adversarial), original)
        return loss, {"simclip": loss.detach()}
