"""Pure loss functions of the training methods (paper Eq. 7-9 and the baselines)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def class_aware_contrastive_loss(
    image_features: torch.Tensor,
    class_text_features: torch.Tensor,
    labels: torch.Tensor,
    logit_scale: torch.Tensor,
) -> torch.Tensor:
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


def batch_contrastive_loss(
    image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """The published MMCoA code's contrastive loss (``contrastive_targets: batch``): logits
    between the B images and their B per-sample prompts, cross-entropy with ``arange(B)``
    targets in both directions, *summed* (CLIP's loss times two). Two images of one class are
    each other's negatives (``docs/deviations.md``, row 4)."""
    image = F.normalize(image_features, dim=-1)
    text = F.normalize(text_features, dim=-1)
    logits = logit_scale * image @ text.T  # [B, B]
    targets = torch.arange(len(logits), device=logits.device)
    return F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)


TARGETS = ("class", "batch")


def contrastive_loss(
    image_features: torch.Tensor,
    class_text_features: torch.Tensor,
    labels: torch.Tensor,
    logit_scale: torch.Tensor,
    targets: str = "class",
) -> torch.Tensor:
    """The contrastive loss of paper Eq. 7-8 with ``targets``: ``class``
    (:func:`class_aware_contrastive_loss`, the default) or ``batch`` (the published code's
    :func:`batch_contrastive_loss` over each image's own class prompt)."""
    if targets == "batch":
        return batch_contrastive_loss(image_features, class_text_features[labels], logit_scale)
    return class_aware_contrastive_loss(image_features, class_text_features, labels, logit_scale)


def mmcoa_loss(
    adv_image_features: torch.Tensor | None,
    clean_image_features: torch.Tensor | None,
    clean_text_features: torch.Tensor | None,
    adv_text_features: torch.Tensor | None,
    labels: torch.Tensor,
    logit_scale: torch.Tensor,
    alpha: float = 0.5,
    beta: float = 0.5,
    targets: str = "class",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """MMCoA (paper Eq. 7-9): alpha · L(adversarial images, clean prompts)
    + beta · L(clean images, adversarial prompts), each :func:`contrastive_loss` with
    ``targets``."""
    terms = {}
    total = logit_scale.new_zeros(())
    if alpha:
        image_term = contrastive_loss(adv_image_features, clean_text_features, labels, logit_scale, targets)
        total = total + alpha * image_term
        terms["image_adv"] = image_term.detach()
    if beta:
        text_term = contrastive_loss(clean_image_features, adv_text_features, labels, logit_scale, targets)
        total = total + beta * text_term
        terms["text_adv"] = text_term.detach()
    return total, terms


def fare_loss(adv_image_features: torch.Tensor, frozen_clean_features: torch.Tensor) -> torch.Tensor:
    """FARE (Schlarmann et al. 2024): ‖f(x_adv) − f_frozen(x)‖² on unnormalized embeddings,
    summed over dimensions and averaged over the batch."""
    return (adv_image_features - frozen_clean_features).pow(2).sum(-1).mean()


def pmg_aft_loss(
    adv_logits: torch.Tensor, clean_logits: torch.Tensor, original_logits: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, dict[str, float]]:
    """PMG-AFT (Wang et al. 2024): CE(adv) + KL(p_clean ‖ p_adv) + KL(p_original ‖ p_adv), with
    p_original the frozen pre-trained model's prediction on the adversarial image."""
    log_adv = adv_logits.log_softmax(-1)
    ce = F.cross_entropy(adv_logits, labels)
    to_clean = F.kl_div(log_adv, clean_logits.log_softmax(-1), log_target=True, reduction="batchmean")
    to_original = F.kl_div(log_adv, original_logits.log_softmax(-1), log_target=True, reduction="batchmean")
    return ce + to_clean + to_original, {
        "ce": ce.detach(),
        "kl_clean": to_clean.detach(),
        "kl_original": to_original.detach(),
    }
