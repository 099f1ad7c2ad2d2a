"""Zero-shot classification head over class prompts (paper Eq. 1)."""

from __future__ import annotations

from typing import Sequence

import torch

from mmcoa.models.base import VisionLanguageModel


class ZeroShotClassifier:
    """``logits = logit_scale · cos(f(x), g(prompt_c))`` for the C class prompts.

    With ``ensemble`` (several prompt sets, one prompt per class each, e.g. the 18 CIFAR
    templates of CLIP_benchmark) class c is ``normalize(mean_t normalize(g(prompt_{t,c})))``,
    CLIP's prompt ensembling; ``logit_scale`` fixes the scale (RobustVLM's protocol: 100)
    instead of the model's learned one.

    Normalized prompt embeddings are computed once and reused until the text tower's weights
    change (see :meth:`VisionLanguageModel.text_fingerprint`), so a batch loop or an attack
    loop never re-encodes the prompts. Pass ``class_embeddings`` to classify against another
    prompt set (e.g. adversarial prompts) without touching the cache.
    """

    def __init__(
        self,
        model: VisionLanguageModel,
        prompts: Sequence[str],
        text_batch_size: int = 256,
        *,
        ensemble: Sequence[Sequence[str]] | None = None,
        logit_scale: float | None = None,
    ):
        if not prompts:
            raise ValueError("a zero-shot classifier needs at least one class prompt")
        if ensemble is not None and any(len(p) != len(prompts) for p in ensemble):
            raise ValueError("every prompt set of an ensemble needs one prompt per class")
        self.model = model
        self.prompts = list(prompts)
        self.ensemble = [list(p) for p in ensemble] if ensemble else None
        self.fixed_logit_scale = logit_scale
        self.text_batch_size = text_batch_size
        self._cache: tuple[tuple, torch.Tensor] | None = None

    @property
    def n_classes(self) -> int:
        return len(self.prompts)

    def class_embeddings(self) -> torch.Tensor:
        """[C, D] L2-normalized prompt embeddings, without gradient."""
        key = self.model.text_fingerprint()
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self._encode_classes())
        return self._cache[1]

    def _encode_classes(self) -> torch.Tensor:
        if self.ensemble is None:
            return self.encode_prompts(self.prompts)
        mean = torch.stack([self.encode_prompts(p) for p in self.ensemble]).mean(0)
        return torch.nn.functional.normalize(mean, dim=-1)

    @property
    def logit_scale(self) -> float:
        """The fixed scale when one was given, else the model's."""
        return self.model.logit_scale if self.fixed_logit_scale is None else self.fixed_logit_scale

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        chunks = [
            self.model.encode_text(prompts[i : i + self.text_batch_size], normalize=True)
            for i in range(0, len(prompts), self.text_batch_size)
        ]
        return torch.cat(chunks).float()

    def logits(self, images: torch.Tensor, class_embeddings: torch.Tensor | None = None) -> torch.Tensor:
        """[B, C] logits for [0, 1] images; differentiable with respect to the images.

        ``class_embeddings`` (normalized) replaces the prompt set: ``[C, D]`` for all images or
        ``[B, C, D]`` with one prompt set per image.
        """
        text = self.class_embeddings() if class_embeddings is None else class_embeddings
        image = self.model.encode_image(images, normalize=True).float()
        text = text.to(image.device)
        similarity = torch.einsum("bd,bcd->bc", image, text) if text.ndim == 3 else image @ text.T
        return self.logit_scale * similarity

    def with_prompt_set(self, class_embeddings: torch.Tensor) -> ZeroShotClassifier:
        """A classifier over the same model that classifies against ``class_embeddings``."""
        fixed = ZeroShotClassifier(
            self.model, self.prompts, self.text_batch_size, logit_scale=self.fixed_logit_scale
        )
        fixed.class_embeddings = lambda: class_embeddings  # type: ignore[method-assign]
        return fixed

    __call__ = logits


def top_k_correct(logits: torch.Tensor, labels: torch.Tensor, k: int = 1) -> torch.Tensor:
    """[B] bool: the true class is in the top ``k`` with ties counted against it.

    A sample is correct when fewer than ``k`` *other* classes score at least as high as the
    true class. ``topk`` would break a tie by index (and CPU and CUDA may break it differently):
    two classes given the same adversarial prompt tie, and such a sample is not correct. A NaN
    logit counts as at least as high as anything, so NaN never reads as correct.
    """
    true = logits.gather(1, labels.view(-1, 1).to(logits.device))
    others_at_least = (~(logits < true)).sum(1) - 1
    return others_at_least < min(k, logits.shape[1])
