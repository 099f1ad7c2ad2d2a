"""Shared pieces of the paper's benchmark datasets (``paper_sets`` and ``imagenet_sets``).

Image transforms follow the published MMCoA/TeCoA code: low-resolution sets
(STL10, TinyImageNet) stay at their native size, every other set is ``Resize(256)`` +
``CenterCrop(224)``; both end in ``to_image_tensor`` (uint8, float ``[0, 1]`` on the device) after converting to RGB, so grey,
palette and CMYK files all give 3 channels. Attacks perturb pixels at that size; the model wrapper
resizes to its own input size.

A :class:`PaperSet` describes one dataset: where it lives under ``--data-root``, which files each
split needs, how to build it, and what to tell the user when it is missing.
"""

from __future__ import annotations

import contextlib
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms

from mmcoa.data.base import (
    DEFAULT_TEMPLATE,
    DatasetSpec,
    WrappedClassificationDataset,
    choice_option,
    first_line,
    register_dataset,
    resolve_root,
    to_image_tensor,
)
from mmcoa.errors import DatasetUnavailableError, MmcoaError

CROP_SIZE = (224, 224)
SPLIT_SEED = 0
"""Seed of the fixed per-class train/test split of sets that ship without one."""
TEST_FRACTION = 0.2
"""Share of each class that goes to ``test`` in those seeded splits (80/20)."""


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as 3-channel RGB (a module-level function so that transforms pickle)."""
    return image if image.mode == "RGB" else image.convert("RGB")


NATIVE = transforms.Compose([transforms.Lambda(to_rgb), to_image_tensor])
"""Native resolution, for CIFAR-like sets (STL10 96 px, TinyImageNet 64 px)."""
RESIZED = transforms.Compose(
    [transforms.Lambda(to_rgb), transforms.Resize(256), transforms.CenterCrop(CROP_SIZE), to_image_tensor]
)
"""``Resize(256)`` + ``CenterCrop(224)``, for every other set."""
SQUARE_224 = transforms.Compose([transforms.Lambda(to_rgb), transforms.Resize((224, 224)), to_image_tensor])
"""``Resize((224, 224))`` (bilinear): TGA-ZSR's evaluation of CIFAR and STL (option ``size: "224"``)."""


def split_camel_case(name: str) -> str:
    """``"HerbaceousVegetation"`` → ``"Herbaceous Vegetation"`` (EuroSAT folder names)."""
    return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", name)


def seeded_split(
    labels: Sequence[int], seed: int = SPLIT_SEED, test_fraction: float = TEST_FRACTION
) -> dict[str, list[int]]:
    """A fixed per-class train/test split of sample indices ``0 .. len(labels) - 1``.

    Each class's indices (in sample order) are shuffled by a generator seeded with
    ``(seed, class)``, and ``round(test_fraction * n)`` of them (at least 1 and at most ``n - 1``
    when a class has two or more samples) go to ``test``. The result depends only on the sample
    order and the labels, so it is re-derived identically on every machine from the sorted file
    list; one class's size does not move the others' split. Returns sorted index lists.
    """
    by_class: dict[int, list[int]] = defaultdict(list)
    for index, label in enumerate(labels):
        by_class[int(label)].append(index)
    split: dict[str, list[int]] = {"train": [], "test": []}
    for label, indices in sorted(by_class.items()):
        n = len(indices)
        n_test = min(max(int(n * test_fraction + 0.5), 1), n - 1) if n > 1 else 0
        order = np.random.default_rng([seed, label]).permutation(n)
        split["test"] += [indices[k] for k in order[:n_test]]
        split["train"] += [indices[k] for k in order[n_test:]]
    return {name: sorted(indices) for name, indices in split.items()}


class FileListDataset(Dataset):
    """Images read with PIL from a list of files, with integer labels."""

    def __init__(self, files: Sequence[Path], labels: Sequence[int], transform: Callable):
        self.files, self.labels, self.transform = list(files), list(labels), transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        with Image.open(self.files[index]) as image:
            return self.transform(image), self.labels[index]


def _read_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean an annotation or data file is malformed."""
    errors: tuple[type[BaseException], ...] = (ValueError, KeyError, IndexError, EOFError)
    try:
        from scipy.io.matlab import MatReadError
    except ImportError:
        return errors
    return errors + (MatReadError,)


@contextlib.contextmanager
def reading(name: str, folder: Path, layout: str) -> Iterator[None]:
    """Turn a malformed-file exception raised while indexing ``folder`` into a one-line
    :class:`MmcoaError` naming the dataset, the folder and the ``layout`` expected there."""
    try:
        yield
    except MmcoaError:
        raise
    except _read_errors() as error:
        detail = first_line(error)
        if isinstance(error, KeyError):
            detail = f"unknown key {detail}"
        raise MmcoaError(
            f"dataset {name}: cannot read {folder}: {detail}; expected under --data-root: {layout}"
        ) from None


@dataclass(frozen=True)
class PaperSet:
    """One benchmark dataset as found under ``--data-root``.

    ``folder`` is the set's folder under the data root; ``needs`` lists paths inside it (a trailing
    ``/`` marks a folder) that every split needs, ``split_needs`` those of one split.
    ``build(split, root)`` returns the torch dataset (yielding ``(tensor, label)``) and the raw
    class names in label order; ``fetch(root)`` downloads the files (``None``: manual set-up only).
    ``layout`` and ``obtain`` are the two halves of the message shown when files are missing.
    ``choices`` maps each dataset option the set takes to its accepted words, the default first;
    ``build`` gets every such option (the given or default word) as a keyword, and
    ``image_size_of(options)``, when set, gives the image size under those options (else
    ``image_size``).
    """

    name: str
    folder: str
    splits: tuple[str, ...]
    n_classes: int
    description: str
    layout: str
    obtain: str
    build: Callable[[str, Path], tuple[Dataset, list[str]]]
    needs: tuple[str, ...] = ()
    split_needs: dict[str, tuple[str, ...]] = field(default_factory=dict)
    fetch: Callable[[Path], None] | None = None
    template: str = DEFAULT_TEMPLATE
    image_size: tuple[int, int] = CROP_SIZE
    choices: dict[str, tuple[str, ...]] = field(default_factory=dict)
    image_size_of: Callable[[dict[str, str]], tuple[int, int]] | None = None

    def missing(self, root: Path, split: str) -> list[str]:
        """The needed paths of ``split`` that are not in ``root/folder``."""
        base = root / self.folder
        wanted = self.needs + self.split_needs.get(split, ())
        return [p for p in wanted if not ((base / p).is_dir() if p.endswith("/") else (base / p).is_file())]

    def found(self, root: Path) -> bool:
        """Whether every split's files are under ``root`` (nothing is read or downloaded)."""
        return not any(self.missing(root, split) for split in self.splits)

    def settle(self, options: dict) -> dict[str, str]:
        """Every option of :attr:`choices`, given (checked: one :class:`MmcoaError` line for an
        unknown option or word) or at its default; reads no file."""
        unknown = sorted(set(options) - set(self.choices))
        if unknown:
            raise MmcoaError(
                f"dataset {self.name} does not take option(s) {', '.join(unknown)}; "
                f"accepted: {', '.join(self.choices) or 'none'}"
            )
        return {
            option: choice_option(self.name, option, options.get(option, accepted[0]), accepted)
            for option, accepted in self.choices.items()
        }

    def load(self, split: str, root: str | None, download: bool, **options) -> WrappedClassificationDataset:
        """Check the options and the files, download them when asked and possible, and build
        ``split``."""
        options = self.settle(options)
        root = resolve_root(root)
        if self.missing(root, split) and download:
            self._download(root)
        missing = self.missing(root, split)
        if missing:
            shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
            raise DatasetUnavailableError(
                f"dataset {self.name}: {root / self.folder} lacks {shown}; expected under "
                f"--data-root: {self.layout}; {self.obtain}"
            )
        with reading(self.name, root / self.folder, self.layout):
            inner, classnames = self.build(split, root, **options)
        return WrappedClassificationDataset(
            inner,
            name=self.name,
            split=split,
            classnames=classnames,
            template=self.template,
            image_size=self.image_size_of(options) if self.image_size_of else self.image_size,
        )

    def _download(self, root: Path) -> None:
        if self.fetch is None:
            raise DatasetUnavailableError(
                f"dataset {self.name} cannot be downloaded automatically (--download); {self.obtain}"
            )
        try:
            self.fetch(root)
        except (OSError, RuntimeError) as error:
            raise DatasetUnavailableError(
                f"dataset {self.name}: download into {root} failed: {first_line(error)}"
            ) from None

    def register(self) -> DatasetSpec:
        """Add this set to the dataset registry."""
        return register_dataset(
            DatasetSpec(
                name=self.name,
                splits=self.splits,
                n_classes=self.n_classes,
                description=self.description,
                load=self.load,
                found=self.found,
                options=tuple(self.choices),
                template=self.template,
            )
        )
