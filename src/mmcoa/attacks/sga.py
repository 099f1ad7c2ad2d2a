"""Set-level Guidance Attack (Lu et al. 2023, "Set-level guidance attack: boosting adversarial
transferability of vision-language pre-training models"), adapted to zero-shot classification.

Each image is paired with the set of texts of its class (the clean prompt and its adversarial
version) and augmented by an image scale set. Three alternating updates:

1. text guided by the clean image: the word edit of the image's class prompt (BERT-Attack
   candidates) that moves it furthest from the clean image embedding;
2. image guided by the text set: L-inf PGD maximizing −Σ_s Σ_t cos(f(resize_s(x' + n_s)), g(t)),
   with fresh noise n_s ~ N(0, noise_std²) per scale and step (none on the unscaled copy);
3. text guided by the adversarial image: the final edit, furthest from the adversarial image.

Images are classified against their own prompt set, the true-class prompt replaced by the final
adversarial text. Defaults: eps 2/255, 10 steps, step 0.5/255, scales {0.5, 0.75, 1.25, 1.5},
noise_std 0.05, BERT-Attack k 10, 1 word.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable, ClassVar

import torch
import torch.nn.functional as F

from mmcoa.attacks.base import ATTACKS, Attack, AttackResult, FieldGroup, check_range, eval_mode, same_setting
from mmcoa.attacks.bert import UsesBertAttack, encode_unique, per_image_prompt_edits, prompt_edit_result
from mmcoa.attacks.pgd import ImageBudget


def scaled_copies(
    images: torch.Tensor,
    scales: tuple[float, ...],
    noise_std: float = 0.0,
    generator: torch.Generator | None = None,
) -> list[torch.Tensor]:
    """The images and their copies resized by each factor (bicubic, values kept in [0, 1]).

    With ``noise_std > 0`` each resized copy is made from ``images + N(0, noise_std²)`` noise
    drawn afresh from ``generator`` (one draw per scale, in scale order); the first, unscaled
    copy is the images themselves. This follows the SGA project (Zoky-2020/SGA, ``attacker.py``,
    ``ImageAttacker.get_scaled_imgs``, read for this): at every step and for every scale it adds
    N(0, 0.05²) noise of the full image's shape to the adversarial image, resizes the sum, then
    clamps the resized copy to [0, 1]; the unscaled copy gets no noise. ``noise_std = 0`` draws
    nothing, so the generator's stream is untouched.
    """
    size = images.shape[-2:]
    copies = [images]
    for scale in scales:
        scaled = (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))
        noisy = images + gaussian_noise(images, noise_std, generator) if noise_std else images
        copies.append(
            F.interpolate(noisy, size=scaled, mode="bicubic", align_corners=False, antialias=scale < 1).clamp(
                0, 1
            )
        )
    return copies


def gaussian_noise(like: torch.Tensor, std: float, generator: torch.Generator | None) -> torch.Tensor:
    """N(0, std²) noise shaped like ``like``, drawn from ``generator`` (the global RNG if None)."""
    return std * torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)


def checked_noise_std(noise_std) -> float:
    """SGA's scaled-copy noise std as a float in [0, 1], or a one-line error."""
    check_range("noise_std", noise_std, 0, 1, low_open=False)
    return float(noise_std)


def checked_scales(scales) -> tuple[float, ...]:
    """The image scale set as floats, each in (0, 8], or a one-line error."""
    for scale in scales:
        check_range("scale", scale, 0, 8)
    return tuple(float(s) for s in scales)


def away_from_image(encode: Callable[[list[str]], torch.Tensor], image_features: torch.Tensor):
    """BertAttack score: minus cosine between the candidate text (``encode``: texts → normalized
    embeddings) and the image of the text it edits (row ``owner`` of ``image_features``)."""

    def score(owner: torch.Tensor, texts: list[str]) -> torch.Tensor:
        candidates = encode(texts).to(image_features.device)
        return -(image_features[owner.to(image_features.device)] * candidates).sum(-1).cpu()

    return score


@dataclass
class ScaleSet(FieldGroup):
    """SGA's image set: the resize factors ``scales`` (each in (0, 8]) of the copies besides the
    image itself, and ``noise_std``, the std of the Gaussian noise added before each rescale
    (pixel units; 0 disables it)."""

    scales: tuple[float, ...] = (0.5, 0.75, 1.25, 1.5)
    noise_std: float = 0.05

    def __post_init__(self):
        super().__post_init__()
        self.scales = checked_scales(self.scales)
        self.noise_std = checked_noise_std(self.noise_std)


@ATTACKS.register("sga")
@dataclass
class SGA(ScaleSet, ImageBudget, UsesBertAttack, Attack):
    """Set-level Guidance Attack: alternating text and multi-scale image updates;
    ``noise_std`` is the std of the Gaussian noise added before each rescale (0 disables).

    Arguments (eps and step_size in pixel units):
        mlm, k, max_words, candidate_position: BERT-Attack's masked LM, candidates per word, word
            budget and where candidates are read
            (:class:`~mmcoa.attacks.bert.UsesBertAttack`).
        eps, step_size, n_steps, precision: the L-inf image budget
            (:class:`~mmcoa.attacks.pgd.ImageBudget`). (Default: 2/255, 0.5/255, 10, ``"fp32"``)
        scales (tuple of float): resize factors of the image set, besides the image itself,
            each in (0, 8]. (Default: ``(0.5, 0.75, 1.25, 1.5)``)
        noise_std (float): std of the Gaussian noise added before each rescale, in pixel
            units; 0 disables it. (Default: 0.05)

    Shape:
        - images, labels: as for :class:`~mmcoa.attacks.base.Attack`.
        - output: ``AttackResult.images`` ``(B, 3, H, W)`` in [0, 1] and within L-inf ``eps``
          of ``images``; ``class_embeddings`` ``(B, C, D)``, normalized: each image's prompt
          set with its true-class prompt edited away from its adversarial image;
          ``words_changed`` ``(B,)``.
    """

    threat: ClassVar[str] = "multimodal"
    eps: float = same_setting(ImageBudget, "eps", 2 / 255)
    step_size: float = same_setting(ImageBudget, "step_size", 0.5 / 255)
    n_steps: int = same_setting(ImageBudget, "n_steps", 10)

    def __call__(self, classifier, images, labels, generator=None, image_result=None) -> AttackResult:
        model = classifier.model
        with eval_mode(model):
            first = self._guided_edits(classifier, labels, images)
            text_sets = self._text_sets(classifier, labels, first)
            adversarial = self.maximize(self._image_loss(model, text_sets, generator), images, generator)
            final = self._guided_edits(classifier, labels, adversarial)
            result = prompt_edit_result(classifier, adversarial, labels, final)
        result.queries += sum(e.queries for e in first) / max(1, len(first))
        result.queries += self.n_steps * (1 + len(self.scales))
        return result

    def _guided_edits(self, classifier, labels, images):
        """Each image's own copy of its class prompt, edited away from the image."""
        score = away_from_image(partial(encode_unique, classifier), self._embed(classifier.model, images))
        return per_image_prompt_edits(self.engine, classifier, labels, score)

    @staticmethod
    @torch.no_grad()
    def _embed(model, images: torch.Tensor) -> torch.Tensor:
        return model.encode_image(images, normalize=True).float()

    @staticmethod
    def _text_sets(classifier, labels, edits) -> torch.Tensor:
        """[B, 2, D]: each image's clean class prompt and its first adversarial edit."""
        clean = classifier.class_embeddings()[labels.to(classifier.class_embeddings().device)]
        adversarial = encode_unique(classifier, [e.adversarial for e in edits])
        return torch.stack([clean, adversarial.to(clean.device)], dim=1)

    def _image_loss(self, model, text_sets: torch.Tensor, generator: torch.Generator | None):
        def loss_fn(adv: torch.Tensor) -> torch.Tensor:
            similarity = 0
            for copy in scaled_copies(adv, self.scales, self.noise_std, generator):
                features = model.encode_image(copy, normalize=True).float()
                similarity = similarity + torch.einsum("bd,btd->b", features, text_sets.to(features.device))
            return -similarity

        return loss_fn
