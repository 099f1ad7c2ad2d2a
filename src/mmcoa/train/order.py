"""The training batch order: one seeded permutation of the training items per epoch.

Every process draws the same permutation (from ``(seed, epoch)``), takes the step's global batch
from it and keeps its own shard, so the global batches do not depend on the number of processes
or data-loading workers, and a resumed run continues the same order.
"""

from __future__ import annotations

from typing import Sequence

import torch

from mmcoa.seeding import derived_generator


class EpochOrder:
    """The global batch of each step: consecutive slices of the epoch's permutation of
    ``indices`` (dataset positions); the last batch of an epoch may be smaller. Each epoch's
    permutation is drawn once (the two most recent are kept: the data loader reads ahead into
    the next epoch while the loop is still in this one)."""

    def __init__(self, indices: Sequence[int], batch_size: int, seed: int):
        self.indices, self.batch_size, self.seed = list(indices), batch_size, seed
        self.per_epoch = -(-len(self.indices) // batch_size)
        self._orders: dict[int, list[int]] = {}

    def global_batch(self, step: int) -> list[int]:
        """Dataset positions of step ``step``'s global batch."""
        epoch, position = divmod(step, self.per_epoch)
        order = self._epoch_order(epoch)
        return [self.indices[i] for i in order[position * self.batch_size : (position + 1) * self.batch_size]]

    def global_size(self, step: int) -> int:
        """How many items step ``step``'s global batch holds (the last of an epoch may be short)."""
        position = step % self.per_epoch
        return min(self.batch_size, len(self.indices) - position * self.batch_size)

    def _epoch_order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            generator = derived_generator(self.seed, epoch)
            self._orders[epoch] = torch.randperm(len(self.indices), generator=generator).tolist()
            for old in sorted(self._orders)[:-2]:
                del self._orders[old]
        return self._orders[epoch]
