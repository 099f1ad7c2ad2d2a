"""Fashion-MNIST read straight from its IDX files (gzipped or plain)."""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from mmcoa.data.base import (
    DatasetSpec,
    TensorClassificationDataset,
    first_line,
    register_dataset,
    resolve_root,
)
from mmcoa.errors import DatasetUnavailableError, MmcoaError

NAME = "fashion_mnist"
CLASSNAMES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's ``dataset-fashion-mnist`` package puts the files."""

IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049
REFETCH = "delete {} and pass --download on a machine with internet to fetch a fresh copy"
_FILE_PREFIX = {"train": "train", "test": "t10k"}


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Read an unsigned-byte IDX file (gzipped or plain) whose magic number must be ``magic``."""
    data = _read_bytes(path)
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise _corrupt(path, f"only {len(data)} bytes, shorter than its header")
    found, *dims = struct.unpack(f">i{ndim}I", data[:header])
    if found != magic:
        raise _corrupt(path, f"magic number {found}, expected {magic}")
    size = int(np.prod(dims))
    if len(data) - header != size:
        raise _corrupt(path, f"{len(data) - header} data bytes, header says {size}")
    return np.frombuffer(data, np.uint8, count=size, offset=header).reshape(dims).copy()


def _corrupt(path: Path, problem: str, kind: str = "IDX") -> MmcoaError:
    """What is wrong with a damaged file, and how to get a whole one."""
    return MmcoaError(f"corrupt {kind} file {path}: {problem}; {REFETCH.format('the file')}")


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when it starts with the gzip signature."""
    data = path.read_bytes()
    if data[:2] != b"\x1f\x8b":
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as error:
        raise _corrupt(path, first_line(error), kind="gzip") from None


def _find_file(folder: Path, stem: str) -> Path | None:
    """``folder/stem.gz`` or ``folder/stem``, whichever exists first."""
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


def find_split_files(split: str, root: Path) -> tuple[Path, Path] | None:
    """The (images, labels) files for ``split``, searched in torchvision's layout, ``root``, then
    the system folder; ``None`` if no folder holds both."""
    prefix = _FILE_PREFIX[split]
    for folder in (root / "FashionMNIST" / "raw", root, SYSTEM_DIR):
        images = _find_file(folder, f"{prefix}-images-idx3-ubyte")
        labels = _find_file(folder, f"{prefix}-labels-idx1-ubyte")
        if images and labels:
            return images, labels
    return None


def _download(root: Path) -> None:
    """Fetch the raw files into ``root/FashionMNIST/raw`` with torchvision."""
    from torchvision.datasets import FashionMNIST

    try:
        FashionMNIST(str(root), download=True)
    except (OSError, RuntimeError) as error:
        raise DatasetUnavailableError(
            f"dataset {NAME}: download into {root} failed: {first_line(error)}"
        ) from None


def load(split: str, root: str | None, download: bool) -> TensorClassificationDataset:
    """Load one split of Fashion-MNIST as 28x28 grey images shown as 3 channels."""
    root = resolve_root(root)
    files = find_split_files(split, root)
    if files is None and download:
        _download(root)
        files = find_split_files(split, root)
    if files is None:
        raise DatasetUnavailableError(
            f"dataset {NAME}: no {_FILE_PREFIX[split]}-*-ubyte files in {root / 'FashionMNIST' / 'raw'}, "
            f"{root} or {SYSTEM_DIR}; pass --download on a machine with internet"
        )
    images, labels = read_idx(files[0], IMAGES_MAGIC), read_idx(files[1], LABELS_MAGIC)
    _check_consistent(images, labels, files)
    return TensorClassificationDataset(
        torch.from_numpy(images),
        torch.from_numpy(labels).long(),
        name=NAME,
        split=split,
        classnames=CLASSNAMES,
    )


def _check_consistent(images: np.ndarray, labels: np.ndarray, files: tuple[Path, Path]) -> None:
    """Images and labels must pair up, and labels must name one of the ten classes."""
    if len(images) != len(labels):
        raise MmcoaError(
            f"{files[0]} holds {len(images)} images but {files[1]} {len(labels)} labels; expected one "
            f"label per image: {REFETCH.format('both files')}"
        )
    if labels.size and labels.max() >= len(CLASSNAMES):
        raise _corrupt(files[1], f"label {labels.max()} is not below {len(CLASSNAMES)}")


register_dataset(
    DatasetSpec(
        name=NAME,
        splits=("train", "test"),
        n_classes=len(CLASSNAMES),
        load=load,
        found=lambda root: all(find_split_files(s, root) for s in _FILE_PREFIX),
        description="Zalando Fashion-MNIST, 28x28 grey clothing images (60000 train / 10000 test)",
    )
)
