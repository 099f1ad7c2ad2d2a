"""CIFAR-10 and CIFAR-100 through torchvision, at their native 32x32 (option ``size: "224"``:
``Resize((224, 224))``, bilinear, as TGA-ZSR's evaluation reads them)."""

from __future__ import annotations

import pickle
from pathlib import Path

from torchvision import datasets, transforms

from mmcoa.data.base import (
    DatasetSpec,
    WrappedClassificationDataset,
    choice_option,
    first_line,
    to_image_tensor,
    register_dataset,
    resolve_root,
)
from mmcoa.errors import DatasetUnavailableError, MmcoaError


def _without_md5(tv_class: type) -> type:
    """A subclass of a torchvision CIFAR class that checks its files exist but not their MD5.

    torchvision hashes every batch file (~170 MB) on each load and refuses files whose hash it does
    not know, which also rules out small stand-in files in tests. Clearing the per-file MD5s makes
    ``check_integrity`` test existence only; the downloaded archive is still checked (``tgz_md5``).
    """

    def strip(files):
        return [[filename, None] for filename, _ in files]

    return type(
        f"Unhashed{tv_class.__name__}",
        (tv_class,),
        {
            "__module__": __name__,
            "train_list": strip(tv_class.train_list),
            "test_list": strip(tv_class.test_list),
            "meta": {**tv_class.meta, "md5": None},
        },
    )


SIZES = {
    "native": (to_image_tensor, (32, 32)),
    "224": (transforms.Compose([transforms.Resize((224, 224)), to_image_tensor]), (224, 224)),
}
"""Option ``size``: the transform and image size. ``native`` (default) is the stored 32 px;
``224`` resizes to 224x224 with PIL's bilinear filter."""

# Module-level names so that datasets holding them pickle (DataLoader workers under spawn).
UnhashedCIFAR10 = _without_md5(datasets.CIFAR10)
UnhashedCIFAR100 = _without_md5(datasets.CIFAR100)


def _files(tv_class: type) -> list[str]:
    """Every file name the torchvision class reads from its folder."""
    return [f for f, _ in tv_class.train_list + tv_class.test_list] + [tv_class.meta["filename"]]


def _found(tv_class: type, root: Path) -> bool:
    """Whether all of the class's files are in ``root/<base_folder>``."""
    folder = root / tv_class.base_folder
    return all((folder / f).is_file() for f in _files(tv_class))


def _download(name: str, tv_class: type, root: Path) -> None:
    """Fetch and unpack the archive into ``root`` (what torchvision's ``download()`` does)."""
    try:
        datasets.utils.download_and_extract_archive(
            tv_class.url, str(root), filename=tv_class.filename, md5=tv_class.tgz_md5
        )
    except (OSError, RuntimeError) as error:
        raise DatasetUnavailableError(
            f"dataset {name}: download into {root} failed: {first_line(error)}"
        ) from None


def _make_loader(name: str, tv_class: type):
    """The ``load(split, root, download, size)`` function for one CIFAR variant (an Unhashed class)."""

    def load(split: str, root: str | None, download: bool, size="native") -> WrappedClassificationDataset:
        # size unannotated: a suite's `size: 224` (a YAML number) reaches choice_option as is
        transform, image_size = SIZES[choice_option(name, "size", size, tuple(SIZES))]
        root = resolve_root(root)
        folder = root / tv_class.base_folder
        if not _found(tv_class, root) and download:
            _download(name, tv_class, root)
        if not folder.is_dir():
            raise DatasetUnavailableError(
                f"dataset {name}: no folder {folder}; pass --download on a machine with internet"
            )
        missing = [f for f in _files(tv_class) if not (folder / f).is_file()]
        if missing:
            raise DatasetUnavailableError(
                f"dataset {name}: {folder} lacks {', '.join(missing)}; "
                f"pass --download on a machine with internet"
            )
        try:
            inner = tv_class(str(root), train=split == "train", transform=transform)
        except (pickle.UnpicklingError, EOFError, KeyError, ValueError) as error:
            raise MmcoaError(
                f"dataset {name}: cannot read {folder}: {first_line(error)}; delete the folder and "
                "pass --download on a machine with internet to fetch a fresh copy"
            ) from None
        return WrappedClassificationDataset(
            inner, name=name, split=split, classnames=inner.classes, image_size=image_size
        )

    return load


def _register(name: str, tv_class: type, n_classes: int, description: str) -> None:
    """Register one CIFAR variant."""
    register_dataset(
        DatasetSpec(
            name=name,
            splits=("train", "test"),
            n_classes=n_classes,
            description=description,
            load=_make_loader(name, tv_class),
            found=lambda root: _found(tv_class, root),
            options=("size",),
        )
    )


_register("cifar10", UnhashedCIFAR10, 10, "CIFAR-10, 32x32 colour images of 10 object classes")
_register("cifar100", UnhashedCIFAR100, 100, "CIFAR-100, 32x32 colour images of 100 object classes")
