"""Few-shot training subsets: a fixed, seeded per-class index list (not redrawn each epoch)."""

from __future__ import annotations

from collections import defaultdict

import torch

from mmcoa.errors import MmcoaError


def dataset_labels(dataset) -> list[int]:
    """Every label of a dataset, read without decoding images when the dataset allows it."""
    for owner in (dataset, getattr(dataset, "inner", None)):
        for attribute in ("labels", "targets"):
            values = getattr(owner, attribute, None) if owner is not None else None
            if values is not None:
                return [int(v) for v in values]
    return [int(dataset[i][1]) for i in range(len(dataset))]


def few_shot_indices(labels: list[int], shots: str, seed: int) -> list[int]:
    """``shots`` images per class ("1", "5", "50") drawn with ``seed``, or every index ("full").

    The published sampler popped indices, so each epoch drew new images (1-shot × 30 epochs
    saw 30 images per class); this list is drawn once and saved with the run.
    """
    if shots == "full":
        return list(range(len(labels)))
    if not str(shots).isdigit() or int(shots) < 1:
        raise MmcoaError(f"shots must be 1, 5, 50 or full; got {shots!r}")
    by_class = defaultdict(list)
    for index, label in enumerate(labels):
        by_class[label].append(index)
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for label in sorted(by_class):
        members = by_class[label]
        order = torch.randperm(len(members), generator=generator)[: int(shots)]
        chosen += [members[int(i)] for i in order]
    return sorted(chosen)
