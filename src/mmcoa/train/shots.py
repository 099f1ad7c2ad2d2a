"""Few-shot training subsets, by ``shot_sampler`` (a switch; ``docs/deviations.md`` row 6):
``fixed``, a seeded per-class list drawn once and reused every epoch, or ``pop``, the published
MMCoA code's sampler: new images every epoch, drawn without replacement, in class order."""

from __future__ import annotations

from collections import defaultdict

import torch

from mmcoa.errors import MmcoaError

SHOT_SAMPLERS = ("fixed", "pop")


def dataset_labels(dataset) -> list[int]:
    """Every label of a dataset, read without decoding images when the dataset allows it."""
    for owner in (dataset, getattr(dataset, "inner", None)):
        for attribute in ("labels", "targets"):
            values = getattr(owner, attribute, None) if owner is not None else None
            if values is not None:
                return [int(v) for v in values]
    return [int(dataset[i][1]) for i in range(len(dataset))]


def class_orders(labels: list[int], seed: int) -> dict[int, list[int]]:
    """Each class's indices in a seeded order: one permutation per class, drawn in class order
    from one generator seeded with ``seed`` (both samplers take their images from these)."""
    by_class = defaultdict(list)
    for index, label in enumerate(labels):
        by_class[label].append(index)
    generator = torch.Generator().manual_seed(seed)
    orders = {}
    for label in sorted(by_class):
        members = by_class[label]
        orders[label] = [members[int(i)] for i in torch.randperm(len(members), generator=generator)]
    return orders


def few_shot_indices(labels: list[int], shots: str, seed: int) -> list[int]:
    """``shots`` images per class ("1", "5", "50") drawn with ``seed``, or every index ("full").

    The ``fixed`` sampler: this list is drawn once, saved with the run and reused every epoch.
    The published sampler popped indices, so each epoch drew new images (1-shot × 30 epochs saw
    30 images per class): that is ``pop`` (:func:`popped_epochs`; ``docs/deviations.md`` row 6).
    """
    if shots == "full":
        return list(range(len(labels)))
    _check_shots(shots)
    return sorted(i for order in class_orders(labels, seed).values() for i in order[: int(shots)])


def popped_epochs(labels: list[int], shots: str, epochs: int, seed: int) -> list[list[int]]:
    """The ``pop`` sampler (the published MMCoA code's; ``docs/deviations.md`` row 6): epoch
    ``e`` takes items ``[e * shots, (e + 1) * shots)`` of each class's seeded order
    (:func:`class_orders`), class 0's first, then class 1's...: every epoch sees new images,
    and its batches are consecutive chunks of this class-ordered stream. Returns each epoch's
    stream. The published loader shrinks the epochs once a class runs out; a class with fewer
    than ``shots * epochs`` images is refused here instead (one line)."""
    if shots == "full":
        raise MmcoaError(
            "shot_sampler pop applies to shots 1, 5 or 50 (the published few-shot sampler); got shots full"
        )
    _check_shots(shots)
    k, orders = int(shots), class_orders(labels, seed)
    _check_enough(orders, k, epochs)
    return [
        [i for label in sorted(orders) for i in orders[label][e * k : (e + 1) * k]] for e in range(epochs)
    ]


def _check_shots(shots: str) -> None:
    if not str(shots).isdigit() or int(shots) < 1:
        raise MmcoaError(f"shots must be 1, 5, 50 or full; got {shots!r}")


def _check_enough(orders: dict[int, list[int]], shots: int, epochs: int) -> None:
    """Every class needs ``shots * epochs`` images for ``pop``; else one line naming the short ones."""
    need = shots * epochs
    short = [f"class {label} has {len(order)}" for label, order in orders.items() if len(order) < need]
    if short:
        shown = ", ".join(short[:5]) + (
            f" and {len(short) - 5} more classes are short" if len(short) > 5 else ""
        )
        raise MmcoaError(
            f"shot_sampler pop draws new images every epoch: shots {shots} x {epochs} epochs needs "
            f"{need} training images per class, but {shown}; lower epochs or shots, or use "
            f"shot_sampler fixed (the published loader would silently shrink the later epochs)"
        )
