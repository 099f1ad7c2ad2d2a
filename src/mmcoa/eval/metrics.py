"""Counting correct predictions: robust accuracy and attack success rate.

- robust accuracy = samples classified correctly both clean and under attack / all samples.
  The unperturbed input lies inside every threat model, so a sample that is wrong on clean
  input is never counted robust, even if the perturbation happens to fix it (AutoAttack's
  convention); robust accuracy therefore never exceeds clean accuracy. Top-5 likewise.
- attack success rate = samples the attack turned from correct to wrong / samples correct
  before the attack. Samples already wrong on clean input are left out.
- a tie between the true class and another counts as wrong (:func:`top_k_correct`).

The switch ``robust_metric`` (:class:`Scoring`) selects the published code's metric instead:
correct under attack alone, ties going to the lower class index (``docs/deviations.md``, row 9).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mmcoa.flags import switch
from mmcoa.models.zeroshot import top_k_correct

ROBUST_METRICS = ("clean-and-adversarial", "adversarial")


@dataclass(frozen=True)
class Scoring:
    """How a classification record counts a sample as robust (a behaviour switch,
    :mod:`mmcoa.profiles`)."""

    robust_metric: str = switch(
        "clean-and-adversarial",
        "adversarial",
        "robust = correct clean and under attack, ties wrong; or adversarial: correct under "
        "attack alone, ties to the lower index (the published code's)",
        choices=ROBUST_METRICS,
    )


DEFAULT_SCORING = Scoring()


def published_top_k(logits: torch.Tensor, labels: torch.Tensor, k: int = 1) -> torch.Tensor:
    """The published code's ``topk``: whether the label is among the top k, ties going to the
    lower class index (``torch.topk``'s order on CPU)."""
    k = min(k, logits.shape[-1])
    return (logits.topk(k, dim=-1).indices == labels[:, None]).any(dim=-1)


@dataclass
class Tally:
    n: int = 0
    correct: int = 0
    correct_top5: int = 0
    clean_correct: int = 0
    flipped: int = 0
    elapsed_s: float = 0.0
    queries: float = 0.0
    words_changed: float = 0.0
    skipped_images: int = 0  # unreadable images left out (``--skip-bad-images``)
    robust_metric: str = "clean-and-adversarial"  # Scoring.robust_metric

    def add_cost(self, n: int, queries_per_sample: float, words_changed: torch.Tensor | None) -> None:
        """Model queries and changed words of one batch of ``n`` samples."""
        self.queries += queries_per_sample * n
        if words_changed is not None:
            self.words_changed += float(words_changed.float().sum())

    def add(self, logits: torch.Tensor, clean_logits: torch.Tensor, labels: torch.Tensor) -> None:
        clean_correct = top_k_correct(clean_logits, labels, 1)
        if self.robust_metric == "adversarial":
            correct, top5 = published_top_k(logits, labels, 1), published_top_k(logits, labels, 5)
        else:
            correct = clean_correct & top_k_correct(logits, labels, 1)
            top5 = top_k_correct(clean_logits, labels, 5) & top_k_correct(logits, labels, 5)
        self.n += len(labels)
        self.correct += int(correct.sum())
        self.correct_top5 += int(top5.sum())
        self.clean_correct += int(clean_correct.sum())
        self.flipped += int((clean_correct & ~correct).sum())

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0

    @property
    def top5(self) -> float:
        return self.correct_top5 / self.n if self.n else 0.0

    @property
    def queries_per_sample(self) -> float:
        return self.queries / self.n if self.n else 0.0

    @property
    def mean_words_changed(self) -> float:
        return self.words_changed / self.n if self.n else 0.0

    @property
    def attack_success_rate(self) -> float | None:
        return self.flipped / self.clean_correct if self.clean_correct else None
