"""Shared pieces of the dataset layer: the dataset type, the registry and small helpers."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch.utils.data import Dataset
from torchvision.transforms.functional import pil_to_tensor, to_tensor

from mmcoa.errors import BadImageError, DatasetUnavailableError, MmcoaError
from mmcoa.registry import Registry
from mmcoa.settings import shown

UNREADABLE = (OSError, SyntaxError)  # what PIL raises for truncated, corrupt or missing files

DEFAULT_TEMPLATE = "This is a photo of a {}"
"""The zero-shot prompt used in the paper (no trailing period)."""

DEFAULT_ROOT_ENV = "MMCOA_DATA"
"""Environment variable naming the data folder used when ``root`` is not given."""


def clean_classname(name: str) -> str:
    """Lower-case ``name``, turn ``_``, ``-`` and ``/`` into spaces and collapse runs of spaces."""
    return re.sub(r"\s+", " ", re.sub(r"[_\-/]", " ", name.lower())).strip()


def resolve_root(root: str | os.PathLike | None) -> Path:
    """The data folder: ``root`` if given, else ``$MMCOA_DATA``, else ``~/.cache/mmcoa/data``."""
    chosen = root if root is not None else os.environ.get(DEFAULT_ROOT_ENV, "~/.cache/mmcoa/data")
    return Path(chosen).expanduser()


def to_image_tensor(image) -> torch.Tensor:
    """A PIL image as a ``[C, H, W]`` tensor: uint8 for 8-bit modes (``L``, ``RGB``), which the
    batch pipeline turns into float [0, 1] on the device exactly as ``ToTensor`` would on the
    host; float [0, 1] (``ToTensor``) for any other mode. The last step of every file dataset's
    transform (a module-level function, so transforms pickle for worker processes)."""
    if image.mode in ("L", "RGB"):
        return pil_to_tensor(image)
    return to_tensor(image)


def choice_option(dataset: str, option: str, value, accepted: Sequence[str]) -> str:
    """``value`` of the dataset option ``option`` when it is one of the words ``accepted`` (a
    whole number counts as its digits, as YAML reads ``size: 224``); else one
    :class:`MmcoaError` line naming the dataset, the option, the value and the accepted words.
    Called before any file is read."""
    word = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if isinstance(word, str) and word in accepted:
        return word
    raise MmcoaError(
        f"dataset {dataset}: option {option} must be one of {', '.join(map(repr, accepted))}; "
        f"got {shown(value)}"
    )


def first_line(error: BaseException) -> str:
    """The first line of an exception's message, so wrapped errors stay one line."""
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


class ClassificationDataset(Dataset):
    """An image-classification dataset yielding ``(image, label)`` pairs.

    ``image`` is a float32 tensor ``[3, H, W]`` in ``[0, 1]``; ``label`` is an ``int``. Subclasses
    implement ``__len__`` and ``_item(i)``.
    """

    def __init__(
        self,
        name: str,
        split: str,
        classnames: Sequence[str],
        template: str = DEFAULT_TEMPLATE,
        image_size: tuple[int, int] | None = None,
    ):
        self.name = name
        self.split = split
        self.classnames = [clean_classname(c) for c in classnames]
        self.template = template
        self.image_size = image_size

    def __len__(self) -> int:
        raise NotImplementedError

    def _item(self, index: int) -> tuple[torch.Tensor, int]:
        raise NotImplementedError

    in_memory = False  # True for datasets held as one tensor: nothing to decode, no workers needed
    templates: list[str] | None = None  # the dataset's prompt ensemble when it ships one

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        """Item ``index`` with a float ``[3, H, W]`` image in [0, 1]."""
        image, label = self.raw_item(index)
        return (image.float().div_(255) if image.dtype == torch.uint8 else image), label

    def raw_item(self, index: int) -> tuple[torch.Tensor, int]:
        """Item ``index`` as stored: a ``[3, H, W]`` image, uint8 where the source is 8-bit (what
        the batch pipeline sends from its workers), else float [0, 1]."""
        try:
            image, label = self._item(index)
        except UNREADABLE as error:
            source = self.source(index)
            what = (
                f"image {index} of {self.name} {self.split}{f' ({source})' if source else ''} "
                f"is unreadable ({type(error).__name__}: {first_line(error)})"
            )
            raise BadImageError(
                f"{what}; fix or remove it, or pass --skip-bad-images to skip and count such images",
                what=what,
            ) from error
        if image.shape[0] == 1:
            image = image.repeat(3, 1, 1)
        return image, int(label)

    def source(self, index: int) -> str | None:
        """The file item ``index`` is read from, when it has one (for error messages)."""
        return None

    def prompts(self, template: str | None = None) -> list[str]:
        """The template (default: the dataset's own) filled in with each class name, in label order."""
        template = self.template if template is None else template
        if "{}" not in template:
            raise MmcoaError(
                f"prompt template {template!r} has no '{{}}' for the class name; e.g. {DEFAULT_TEMPLATE!r}"
            )
        return [template.format(c) for c in self.classnames]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, "
            f"n={len(self)}, classes={len(self.classnames)}, image_size={self.image_size})"
        )


class TensorClassificationDataset(ClassificationDataset):
    """Images held in memory as one tensor ``[N, H, W]`` (grey) or ``[N, C, H, W]``.

    ``uint8`` images are scaled to ``[0, 1]`` one item at a time (by ``__getitem__``; the batch
    pipeline scales whole batches on the device), so memory stays at one byte a pixel.
    """

    in_memory = True

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, **info):
        super().__init__(image_size=tuple(images.shape[-2:]), **info)
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def _item(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        if image.dim() == 2:
            image = image.unsqueeze(0)
        return image, int(self.labels[index])


class WrappedClassificationDataset(ClassificationDataset):
    """A torchvision dataset whose transform already returns ``[C, H, W]`` float tensors."""

    def __init__(self, inner: Dataset, **info):
        super().__init__(**info)
        self.inner = inner

    def __len__(self) -> int:
        return len(self.inner)

    def _item(self, index: int) -> tuple[torch.Tensor, int]:
        return self.inner[index]

    def source(self, index: int) -> str | None:
        samples = getattr(self.inner, "samples", None) or getattr(self.inner, "imgs", None)
        return str(samples[index][0]) if samples and 0 <= index < len(samples) else None


@dataclass(frozen=True)
class DatasetSpec:
    """How to load one named dataset, and what to say about it in listings.

    ``load(split, root, download, **options)`` builds the dataset (``split`` is already checked);
    ``found(root)`` says whether every split is on disk without downloading.
    """

    name: str
    splits: tuple[str, ...]
    n_classes: int | None
    description: str
    load: Callable[..., ClassificationDataset]
    found: Callable[[Path], bool]
    options: tuple[str, ...] = ()
    template: str = DEFAULT_TEMPLATE


DATASETS: Registry[DatasetSpec] = Registry("dataset")


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Add ``spec`` to :data:`DATASETS` under its name."""
    return DATASETS.register(spec.name)(spec)


def require_dir(path: Path, name: str, hint: str) -> None:
    """Raise :class:`DatasetUnavailableError` unless ``path`` is a folder."""
    if not path.is_dir():
        raise DatasetUnavailableError(f"dataset {name}: no folder {path}; {hint}")
