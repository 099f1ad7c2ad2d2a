"""Counting correct predictions: robust accuracy and attack success rate.

- robust accuracy = correct-under-attack / all evaluated samples;
- attack success rate = samples the attack turned from correct to wrong / samples that were
  correct before the attack (clean-correct). Samples wrong on clean images do not count.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Tally:
    n: int = 0
    correct: int = 0
    correct_top5: int = 0
    clean_correct: int = 0
    flipped: int = 0
    elapsed_s: float = 0.0
    queries_per_sample: int = 0

    def add(self, logits: torch.Tensor, labels: torch.Tensor, clean_correct: torch.Tensor) -> None:
        correct = logits.argmax(1) == labels
        k = min(5, logits.shape[1])
        top5 = (logits.topk(k, dim=1).indices == labels[:, None]).any(1)
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
    def attack_success_rate(self) -> float | None:
        return self.flipped / self.clean_correct if self.clean_correct else None
