"""The one batch pipeline: every loop that reads images (training, evaluation, suites,
retrieval, analyses, AdvPT's preparation) gets its batches from :class:`BatchLoader`, built on
``torch.utils.data.DataLoader``:

- the caller gives the batches as lists of dataset indices, so the order is exactly the caller's
  (the trainer's seeded epoch permutation, a suite's saved subset) whatever the ``workers``
  (``None``: :func:`default_workers`, or 0 for in-memory datasets; 0 reads in this process);
- 8-bit images travel as uint8, pinned on CUDA and copied ``non_blocking``, and become float
  [0, 1] on the device (``x / 255``, bit-identical to ``ToTensor``);
- an unreadable image raises its one-line :class:`~mmcoa.errors.BadImageError` in the calling
  process, or is skipped and counted; each batch records the caller's wait for it (``wait_s``);
- workers draw no randomness and are seeded from the caller's generator, so creating a loader
  leaves ``torch``'s global random state as it was.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from mmcoa.errors import BadImageError, MmcoaError

MAX_DEFAULT_WORKERS = 8


def default_workers() -> int:
    """``min(8, CPUs available to this process / processes on this node)``: under torchrun each
    rank gets its share of the node's cores."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, min(MAX_DEFAULT_WORKERS, cpus // max(1, per_node)))


def check_workers(workers) -> int | None:
    """``workers`` as given (None: automatic), or a one-line error unless it is a non-negative
    integer; every command checks it with this before any work."""
    if workers is not None and (int(workers) != workers or workers < 0):
        raise MmcoaError(
            f"workers must be a non-negative integer (0: load in the main process); got {workers}"
        )
    return None if workers is None else int(workers)


def resolve_workers(workers: int | None, dataset) -> int:
    """The number of worker processes for ``dataset``: ``workers`` when given, else 0 for a
    dataset held in memory (``in_memory``) and :func:`default_workers` otherwise."""
    if workers is not None:
        return check_workers(workers)
    return 0 if getattr(dataset, "in_memory", False) else default_workers()


def consecutive_batches(indices: Sequence[int], batch_size: int) -> list[list[int]]:
    """``indices`` cut into consecutive batches of ``batch_size`` (the last may be smaller)."""
    indices = list(indices)
    return [indices[start : start + batch_size] for start in range(0, len(indices), batch_size)]


def as_float_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 images as float [0, 1] (``x / 255``, as ``ToTensor``); float images unchanged."""
    if images.dtype == torch.uint8:
        return images.float().div_(255)
    return images if images.is_floating_point() else images.float()


def read_item(dataset, index: int):
    """Item ``index`` as the dataset stores it: ``raw_item`` (uint8 images where the source is
    8-bit) when the dataset has one, else ``dataset[index]``."""
    raw = getattr(dataset, "raw_item", None)
    return raw(index) if raw is not None else dataset[index]


@dataclass
class Unreadable:
    """An item whose image could not be decoded (carried back from a worker as a value)."""

    index: int
    message: str
    what: str


@dataclass
class HostBatch:
    """A collated batch on the host: images ``[B, C, H, W]`` (uint8 or float), labels ``[B]``,
    the dataset index of each row, and the unreadable items that were left out."""

    images: torch.Tensor | None
    labels: torch.Tensor | None
    indices: list[int]
    unreadable: list[Unreadable] = field(default_factory=list)

    def pin_memory(self, device=None) -> HostBatch:  # called by DataLoader's pinning thread
        pinned = [t.pin_memory() if t is not None else None for t in (self.images, self.labels)]
        return HostBatch(pinned[0], pinned[1], self.indices, self.unreadable)


@dataclass
class Batch:
    """A batch on the device: float [0, 1] ``images``, ``labels``, the dataset ``indices`` of its
    rows, its ``position`` in the caller's batch list (what seeds attacks), how many unreadable
    images were ``skipped`` and how long the caller waited for it (``wait_s``)."""

    images: torch.Tensor | None
    labels: torch.Tensor | None
    indices: list[int]
    position: int
    skipped: int
    wait_s: float

    def __len__(self) -> int:
        return len(self.indices)


class _Items(Dataset):
    """``dataset``'s items as the workers read them: (image, label, index), or
    :class:`Unreadable` for an image that cannot be decoded."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        try:
            image, label = read_item(self.dataset, index)
        except BadImageError as error:
            return Unreadable(index, str(error), error.what)
        return image, label, index


def collate(items: list) -> HostBatch:
    """Stack the readable items of a batch (mixed dtypes become float [0, 1] first)."""
    good = [item for item in items if not isinstance(item, Unreadable)]
    bad = [item for item in items if isinstance(item, Unreadable)]
    if not good:
        return HostBatch(None, None, [], bad)
    images = [image for image, _, _ in good]
    if len({image.dtype for image in images}) > 1:
        images = [as_float_images(image) for image in images]
    labels = torch.tensor([int(label) for _, label, _ in good])
    # default_collate stacks a worker's batch straight into shared memory (no copy to send it)
    return HostBatch(default_collate(images), labels, [index for _, _, index in good], bad)


class _Batches(Sampler):
    """A batch sampler over index lists given by the caller (lists, or a callable per position)."""

    def __init__(
        self, batches: Sequence[Sequence[int]] | Callable[[int], Sequence[int]], positions: Sequence[int]
    ):
        self.batches, self.positions = batches, positions

    def __iter__(self) -> Iterator[list[int]]:
        for position in self.positions:
            chosen = self.batches(position) if callable(self.batches) else self.batches[position]
            yield [int(i) for i in chosen]

    def __len__(self) -> int:
        return len(self.positions)


class BatchLoader:
    """Batches of ``dataset`` at the given index lists, on ``device`` (module docstring).

    ``batches`` is a list of index lists, or a function from a position to its index list (the
    trainer's steps); ``positions`` picks which positions to load, in order (default: all of a
    list). A loader can be iterated again (a suite's next model row): with ``persistent`` its
    workers stay up between passes.
    """

    def __init__(
        self,
        dataset,
        batches,
        *,
        device: str | torch.device = "cpu",
        workers: int | None = None,
        positions: Sequence[int] | None = None,
        skip_bad_images: bool = False,
        persistent: bool = False,
        seed: int = 0,
        prefetch: int = 2,
    ):
        if positions is None:
            if callable(batches):
                raise MmcoaError("BatchLoader: give positions with a batch function")
            positions = range(len(batches))
        self.dataset, self.device = dataset, torch.device(device)
        self.skip_bad_images = skip_bad_images
        self.workers = _usable_workers(resolve_workers(workers, dataset), dataset)
        self._loader = DataLoader(
            _Items(dataset),
            batch_sampler=_Batches(batches, positions),
            collate_fn=collate,
            num_workers=self.workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=persistent and self.workers > 0,
            prefetch_factor=prefetch if self.workers > 0 else None,
            generator=torch.Generator().manual_seed(int(seed)),
        )
        self._positions = list(positions)

    def __len__(self) -> int:
        return len(self._positions)

    def __iter__(self) -> Iterator[Batch]:
        host = iter(self._loader)
        for position in self._positions:
            started = time.perf_counter()
            try:
                batch = next(host)
            except StopIteration:  # the sampler and the positions are the same list
                return
            yield self._on_device(batch, position, time.perf_counter() - started)

    def _on_device(self, batch: HostBatch, position: int, waited: float) -> Batch:
        skipped = self._check_unreadable(batch.unreadable)
        if batch.images is None:
            return Batch(None, None, [], position, skipped, waited)
        images = as_float_images(batch.images.to(self.device, non_blocking=True))
        labels = batch.labels.to(self.device, non_blocking=True)
        return Batch(images, labels, batch.indices, position, skipped, waited)

    def _check_unreadable(self, unreadable: list[Unreadable]) -> int:
        """Raise the first unreadable image's one-line error, or (``skip_bad_images``) warn
        about each and return how many were skipped."""
        if unreadable and not self.skip_bad_images:
            first = unreadable[0]
            raise BadImageError(first.message, what=first.what)
        for item in unreadable:
            print(f"mmcoa: warning: skipped {item.what}", file=sys.stderr)
        return len(unreadable)


def _usable_workers(workers: int, dataset) -> int:
    """``workers``, or 0 with a one-line note when the processes would need to pickle a dataset
    that cannot be pickled (start methods other than fork)."""
    method = multiprocessing.get_start_method(allow_none=True) or multiprocessing.get_all_start_methods()[0]
    if workers == 0 or method == "fork":
        return workers
    try:
        pickle.dumps(dataset)
    except Exception as error:  # noqa: BLE001 - any pickling failure means: no workers
        print(
            f"mmcoa: note: dataset {getattr(dataset, 'name', type(dataset).__name__)} cannot be "
            f"sent to worker processes ({type(error).__name__}); loading in the main process",
            file=sys.stderr,
        )
        return 0
    return workers
