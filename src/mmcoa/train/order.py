"""The training batch order: one seeded permutation of the training items per epoch
(:class:`EpochOrder`), or the published few-shot sampler's class-ordered epochs
(:class:`PoppingOrder`, ``shot_sampler: pop``); :func:`training_order` picks one.

Every process draws the same order (from ``(seed, epoch)``, or from the run's ``shots.json``),
takes the step's global batch from it and keeps its own shard, so the global batches do not
depend on the number of processes or data-loading workers, and a resumed run continues the same
order.
"""

from __future__ import annotations

from typing import Sequence

import torch

from mmcoa.seeding import derived_generator


class _Order:
    """The global batch of each step: consecutive slices of the epoch's stream of
    ``epoch_items`` dataset positions; the last batch of an epoch may be smaller."""

    def __init__(self, epoch_items: int, batch_size: int):
        self.epoch_items, self.batch_size = epoch_items, batch_size
        self.per_epoch = -(-epoch_items // batch_size)

    def global_batch(self, step: int) -> list[int]:
        """Dataset positions of step ``step``'s global batch."""
        epoch, position = divmod(step, self.per_epoch)
        return self._stream(epoch)[position * self.batch_size : (position + 1) * self.batch_size]

    def global_size(self, step: int) -> int:
        """How many items step ``step``'s global batch holds (the last of an epoch may be short)."""
        position = step % self.per_epoch
        return min(self.batch_size, self.epoch_items - position * self.batch_size)

    def _stream(self, epoch: int) -> list[int]:
        raise NotImplementedError


class EpochOrder(_Order):
    """Each epoch a seeded permutation of ``indices`` (dataset positions), drawn once (the two
    most recent are kept: the data loader reads ahead into the next epoch while the loop is
    still in this one)."""

    def __init__(self, indices: Sequence[int], batch_size: int, seed: int):
        self.indices, self.seed = list(indices), seed
        super().__init__(len(self.indices), batch_size)
        self._orders: dict[int, list[int]] = {}

    def _stream(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            generator = derived_generator(self.seed, epoch)
            order = torch.randperm(len(self.indices), generator=generator).tolist()
            self._orders[epoch] = [self.indices[i] for i in order]
            for old in sorted(self._orders)[:-2]:
                del self._orders[old]
        return self._orders[epoch]


class PoppingOrder(_Order):
    """The published MMCoA few-shot sampler (``docs/deviations.md`` row 6): ``epochs[e]`` is
    epoch ``e``'s stream (``shots`` new images of class 0, then of class 1...; see
    :func:`mmcoa.train.shots.popped_epochs`), cut into batches in that order, not shuffled
    across classes. Unlike :class:`EpochOrder`, every epoch holds other images."""

    def __init__(self, epochs: Sequence[Sequence[int]], batch_size: int):
        self.epochs = [list(items) for items in epochs]
        super().__init__(len(self.epochs[0]), batch_size)

    def _stream(self, epoch: int) -> list[int]:
        return self.epochs[epoch]


def training_order(shots_record: dict, batch_size: int, seed: int) -> _Order:
    """The order of a run's ``shots.json`` record: :class:`PoppingOrder` over its
    ``epoch_items`` (``shot_sampler: pop``), else :class:`EpochOrder` over its ``indices``."""
    if "epoch_items" in shots_record:
        return PoppingOrder(shots_record["epoch_items"], batch_size)
    return EpochOrder(shots_record["indices"], batch_size, seed)
