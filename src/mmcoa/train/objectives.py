"""Pure loss functions of the training methods (paper Eq. 7-9 and the baselines)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def class_aware_contrastive_loss(image_features: torch.Tensor, class_text_features: torch.Tensor,
                                 labels: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric CLIP contrastive loss with class-aware targets (the form of paper Eq. 7-8).

    Image→text: cross-entropy of ``logit_scale · cos(image_i, prompt_c)`` over the C class
    prompts with the true label. Text→image: for every class present in the batch,
    cross-entropy over the batch's images with the target spread uniformly over that class's
    images. Unlike ``arange(batch)`` targets over per-sample prompts (the published code), two
    images of one class are never each other's negatives.
    """
    image = F.normalize(image_features, dim=-1)
    text = F.normalize(class_text_features, dim=-1)
    logits = logit_scale * image @ text.T  # [B, C]
    image_to_text = F.cross_entropy(logits, labels)
    present = labels.unique()
    targets = (labels[None, :] == present[:, None]).float()
    targets = targets / targets.sum(1, keepdim=True)
    text_to_image = -(targets * logits.T[present].log_softmax(dim=1)).sum(1).mean()
    return (image_to_text + text_to_image) / 2
