"""ImageNet and TinyImageNet, the paper's in-distribution sets that need a manual set-up.

Both fix a bug of the published code (``docs/deviations.md``, row 8): TinyImageNet is read at its
native 64 px in *both* splits (the code trained at 64 and tested at 224), and ImageNet's
``train`` and ``test`` read distinct folders (the code read one folder for both). TinyImageNet's
option ``size: "224"`` reads both splits as the published code tested: ``Resize(256)`` +
``CenterCrop(224)`` (the published profile's choice, :data:`mmcoa.data.catalog.PUBLISHED_OPTIONS`). Test labels of
either set are not public, so ``test`` is the labelled validation set (``val/``), as in the paper.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from mmcoa.data.base import first_line
from mmcoa.data.paper_common import CROP_SIZE, NATIVE, RESIZED, FileListDataset, PaperSet
from mmcoa.errors import DatasetUnavailableError, MmcoaError

WNID = re.compile(r"n\d{8}")
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
SPLIT_FOLDERS = {"train": "train", "test": "val"}

TINY = "tiny_imagenet"
TINY_FOLDER = "tiny-imagenet-200"
TINY_SIZES = {"native": (NATIVE, (64, 64)), "224": (RESIZED, CROP_SIZE)}
"""TinyImageNet's option ``size``: its transform and image size. ``native`` (default) is the
64 px file; ``224`` the published code's ``Resize(256)`` + ``CenterCrop(224)``."""
TINY_OBTAIN = (
    "download http://cs231n.stanford.edu/tiny-imagenet-200.zip and unzip it into "
    "--data-root (no --download for this set)"
)
IMAGENET = "imagenet"
IMAGENET_N_CLASSES = 1000
IMAGENET_OBTAIN = (
    "get ILSVRC-2012 train and val from https://image-net.org (registration), untar "
    "them into imagenet/train and imagenet/val and sort val/ into its wnid folders "
    "(e.g. with the common valprep.sh); no --download for this set"
)


def _lines(path: Path) -> list[tuple[int, str]]:
    """``(line number, text)`` of each non-blank line of a UTF-8 text file."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise MmcoaError(f"{path} is not UTF-8 text: {first_line(error)}") from None
    return [(number, line.rstrip("\r")) for number, line in enumerate(text.split("\n"), 1) if line.strip()]


def read_wnids(path: Path) -> list[str]:
    """The sorted WordNet ids listed in ``wnids.txt``, one per line; label ``i`` is the ``i``-th."""
    wnids = []
    for number, line in _lines(path):
        if not WNID.fullmatch(line.strip()):
            raise MmcoaError(
                f"{path}, line {number}: {line.strip()[:40]!r} is not a WordNet id (n followed by 8 digits)"
            )
        wnids.append(line.strip())
    if not wnids or len(set(wnids)) != len(wnids):
        raise MmcoaError(f"{path} must list distinct WordNet ids, one per line")
    return sorted(wnids)


def read_words(path: Path, wnids: list[str]) -> list[str]:
    """The first synonym in ``words.txt`` (``<wnid><TAB><name>, <name>, ...``) for each wnid."""
    wanted, names = set(wnids), {}
    for number, line in _lines(path):
        wnid, tab, words = line.partition("\t")
        if not tab or not words.strip():
            raise MmcoaError(f"{path}, line {number}: expected '<wnid><TAB><names>', got {line[:60]!r}")
        if wnid in wanted:
            names[wnid] = words.split(",")[0].strip()
    missing = [w for w in wnids if w not in names]
    if missing:
        raise MmcoaError(
            f"{path} names no class for {', '.join(missing[:3])} (listed in wnids.txt); expected a "
            "'<wnid><TAB><names>' line for each"
        )
    return [names[w] for w in wnids]


def read_val_annotations(path: Path, wnids: list[str]) -> tuple[list[str], list[int]]:
    """Image file names and labels from ``val_annotations.txt``
    (``<image><TAB><wnid><TAB><x0><TAB><y0><TAB><x1><TAB><y1>``; the box is ignored)."""
    index = {w: i for i, w in enumerate(wnids)}
    names, labels = [], []
    for number, line in _lines(path):
        fields = [f.strip() for f in line.split("\t")]
        if len(fields) < 2 or not fields[0]:
            raise MmcoaError(f"{path}, line {number}: expected '<image><TAB><wnid>...', got {line[:60]!r}")
        if fields[1] not in index:
            raise MmcoaError(f"{path}, line {number}: class {fields[1][:40]!r} is not in wnids.txt")
        names.append(fields[0])
        labels.append(index[fields[1]])
    return names, labels


def _images_in(folder: Path) -> list[Path]:
    """The image files directly in ``folder``, sorted."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _tiny_imagenet(split: str, root: Path, size: str = "native"):
    base = root / TINY_FOLDER
    wnids = read_wnids(base / "wnids.txt")
    classnames = read_words(base / "words.txt", wnids)
    if split == "train":
        files, labels = [], []
        for label, wnid in enumerate(wnids):
            folder = base / "train" / wnid / "images"
            if not folder.is_dir():
                raise DatasetUnavailableError(
                    f"dataset {TINY}: no folder {folder} for class {wnid} of wnids.txt; {TINY_OBTAIN}"
                )
            found = _images_in(folder)
            files += found
            labels += [label] * len(found)
    else:
        names, labels = read_val_annotations(base / "val" / "val_annotations.txt", wnids)
        files = [base / "val" / "images" / name for name in names]
        absent = [f for f in files if not f.is_file()]
        if absent:
            raise MmcoaError(
                f"dataset {TINY}: val_annotations.txt names {len(absent)} image(s) "
                f"missing from {absent[0].parent}, e.g. {absent[0].name}; {TINY_OBTAIN}"
            )
    return FileListDataset(files, labels, TINY_SIZES[size][0]), classnames


def _tiny_image_size(options: dict[str, str]) -> tuple[int, int]:
    return TINY_SIZES[options["size"]][1]


def _imagenet(split: str, root: Path):
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    folder = root / IMAGENET / SPLIT_FOLDERS[split]
    classes = sorted(e.name for e in os.scandir(folder) if e.is_dir())
    odd = [c for c in classes if not WNID.fullmatch(c)]
    if len(classes) != IMAGENET_N_CLASSES or odd:
        detail = f", e.g. {odd[0]!r}" if odd else ""
        raise DatasetUnavailableError(
            f"dataset {IMAGENET}: {folder} has {len(classes)} class folders{detail}; expected the "
            f"{IMAGENET_N_CLASSES} ILSVRC-2012 wnid folders (n01440764 ... n15075141); {IMAGENET_OBTAIN}"
        )
    try:
        inner = ImageFolder(str(folder), transform=RESIZED)
    except FileNotFoundError as error:  # a class folder without images
        raise MmcoaError(
            f"dataset {IMAGENET}: {first_line(error)[:200]}; expected {folder}/<wnid>/<image>"
            f"{'|'.join(IMG_EXTENSIONS)} for each class; {IMAGENET_OBTAIN}"
        ) from None
    # Sorted wnids are the standard label order, which is the order of open_clip's names.
    return inner, list(IMAGENET_CLASSNAMES)


SETS = [
    PaperSet(
        name=TINY,
        folder=TINY_FOLDER,
        splits=("train", "test"),
        n_classes=200,
        description="TinyImageNet, 64x64 native in both splits (option size: '224' for the "
        "published Resize(256) + CenterCrop(224)); train 100000 / test = val 10000",
        layout=f"{TINY_FOLDER}/{{wnids.txt,words.txt}}, {TINY_FOLDER}/train/<wnid>/images/*.JPEG, "
        f"{TINY_FOLDER}/val/images/*.JPEG and {TINY_FOLDER}/val/val_annotations.txt",
        obtain=TINY_OBTAIN,
        needs=("wnids.txt", "words.txt"),
        split_needs={"train": ("train/",), "test": ("val/images/", "val/val_annotations.txt")},
        build=_tiny_imagenet,
        image_size=(64, 64),
        choices={"size": tuple(TINY_SIZES)},
        image_size_of=_tiny_image_size,
    ),
    PaperSet(
        name=IMAGENET,
        folder=IMAGENET,
        splits=("train", "test"),
        n_classes=IMAGENET_N_CLASSES,
        description="ImageNet-1k (ILSVRC-2012); train = train/, test = val/ (50000); 224 crop",
        layout="imagenet/train/<wnid>/*.JPEG and imagenet/val/<wnid>/*.JPEG (1000 wnid folders each)",
        obtain=IMAGENET_OBTAIN,
        split_needs={s: (f"{f}/",) for s, f in SPLIT_FOLDERS.items()},
        build=_imagenet,
    ),
]

for _set in SETS:
    _set.register()
