"""MSCOCO image-text retrieval on Karpathy's split (paper Table VI).

Layout on disk (``root``)::

    <root>/dataset_coco.json          Karpathy's split file
    <root>/val2014/<filename>.jpg     images, at <root>/<filepath>/<filename>
    <root>/train2014/...

``dataset_coco.json`` is ``{"images": [{"filepath": "val2014", "filename": "...", "split":
"test"|"val"|"train"|"restval", "sentences": [{"raw": "..."}, ...]}, ...]}``. The test split is
5,000 images with 25,010 captions; ``split="train"`` also takes the ``restval`` images (the usual
113k training set). Images are ``Resize(256) + CenterCrop(224)`` (scaled for other
``image_size``) float tensors in [0, 1], or with the option ``transform="bicubic224-crop"`` the
published code's ``Resize(224, bicubic) + CenterCrop(224)`` (likewise scaled; the published
profile's choice, ``docs/deviations.md``); captions are cleaned as ALBEF / Co-Attack do
(:func:`pre_caption`: lower case, punctuation dropped, at most 30 words) unless
``pre_caption=False``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Sequence

import torch
from torch.utils.data import Dataset

from mmcoa.data.base import choice_option, to_image_tensor
from mmcoa.errors import DatasetUnavailableError, MmcoaError

DATASET_NAME = "mscoco_karpathy"
ANNOTATION_FILE = "dataset_coco.json"
SPLITS = ("train", "val", "test", "restval")
LAYOUT_HINT = (
    f"expected <root>/{ANNOTATION_FILE} (Karpathy's split file) and images at "
    "<root>/<filepath>/<filename>, e.g. <root>/val2014/COCO_val2014_000000391895.jpg"
)
MAX_WORDS = 30
TRANSFORMS = ("resize256-crop", "bicubic224-crop")
"""The option ``transform``'s words, the default first: ``resize256-crop`` is ``Resize(256)`` +
``CenterCrop(224)``; ``bicubic224-crop`` the published code's ``Resize(224, bicubic)`` +
``CenterCrop(224)``. Both scale with the image size (256/224 and 224/224 of it)."""
OPTIONS = ("transform",)
"""The dataset options :func:`load_coco_karpathy` takes (keywords)."""


def pre_caption(caption: str, max_words: int = MAX_WORDS) -> str:
    """ALBEF's caption cleaning, as the Co-Attack retrieval evaluation applies it: lower case,
    ``,.'!?"()*#:;~`` removed, ``-`` and ``/`` to spaces, runs of spaces collapsed, at most
    ``max_words`` words."""
    caption = re.sub(r"([,.'!?\"()*#:;~])", "", caption.lower())
    caption = caption.replace("-", " ").replace("/", " ").replace("<person>", "person")
    caption = re.sub(r"\s{2,}", " ", caption).strip()
    return " ".join(caption.split(" ")[:max_words])


class RetrievalDataset(Dataset):
    """Images with several captions each.

    ``dataset[i]`` is ``(image, i)``: a float32 ``[3, H, W]`` tensor in [0, 1] and the image
    index. ``captions[j]`` is caption j, ``caption_to_image[j]`` its image, and
    ``image_to_captions[i]`` the caption indices of image i (each image has at least one).
    ``transform`` is one of :data:`TRANSFORMS`.
    """

    def __init__(
        self,
        image_paths: Sequence[Path],
        captions_per_image: Sequence[Sequence[str]],
        *,
        name: str = DATASET_NAME,
        split: str = "test",
        image_size: int = 224,
        root: Path | None = None,
        transform: str = TRANSFORMS[0],
    ):
        self.transform = choice_option(name, "transform", transform, TRANSFORMS)
        if len(image_paths) != len(captions_per_image):
            raise MmcoaError(
                f"{len(image_paths)} images but {len(captions_per_image)} caption lists; give one "
                "list of captions per image"
            )
        self.name, self.split, self.root = name, split, root
        self.image_size = (image_size, image_size)
        self.image_paths = [Path(p) for p in image_paths]
        self.captions: list[str] = []
        self.caption_to_image: list[int] = []
        self.image_to_captions: list[list[int]] = []
        for index, texts in enumerate(captions_per_image):
            if not texts:
                raise MmcoaError(
                    f"image {self.image_paths[index]} has no caption; each image needs at least one"
                )
            first = len(self.captions)
            self.captions.extend(texts)
            self.caption_to_image.extend([index] * len(texts))
            self.image_to_captions.append(list(range(first, first + len(texts))))
        self._transform = _transform(image_size, self.transform)

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, index = self.raw_item(index)
        return image.float().div_(255) if image.dtype == torch.uint8 else image, index

    def raw_item(self, index: int) -> tuple[torch.Tensor, int]:
        """Image ``index`` as the batch pipeline sends it (uint8 ``[3, H, W]``) and its index."""
        from PIL import Image

        path = self.image_paths[index]
        try:
            with Image.open(path) as image:
                tensor = self._transform(image.convert("RGB"))
        except FileNotFoundError:
            raise DatasetUnavailableError(
                f"dataset {self.name}: image {path} is missing; {LAYOUT_HINT}"
            ) from None
        return tensor, index

    def subset(self, indices: Sequence[int]) -> RetrievalDataset:
        """The given images (in the given order) with all of their captions."""
        return RetrievalDataset(
            [self.image_paths[i] for i in indices],
            [[self.captions[j] for j in self.image_to_captions[i]] for i in indices],
            name=self.name,
            split=self.split,
            image_size=self.image_size[0],
            root=self.root,
            transform=self.transform,
        )

    def __repr__(self) -> str:
        return (
            f"RetrievalDataset(name={self.name!r}, split={self.split!r}, images={len(self)}, "
            f"captions={len(self.captions)}, image_size={self.image_size}, "
            f"transform={self.transform!r})"
        )


def _transform(image_size: int, name: str = TRANSFORMS[0]):
    """The image transform ``name`` (one of :data:`TRANSFORMS`) at ``image_size``."""
    from torchvision import transforms

    if name == "bicubic224-crop":
        resize = transforms.Resize(image_size, interpolation=transforms.InterpolationMode.BICUBIC)
    else:
        resize = transforms.Resize(round(image_size * 256 / 224))
    return transforms.Compose([resize, transforms.CenterCrop(image_size), to_image_tensor])


def load_coco_karpathy(
    root: str | os.PathLike,
    split: str = "test",
    image_size: int = 224,
    *,
    pre_caption_text: bool = True,
    check_images: bool = True,
    transform: str = TRANSFORMS[0],
) -> RetrievalDataset:
    """MSCOCO Karpathy ``split`` from ``root`` (see the module docstring for the layout), its
    images read with ``transform`` (one of :data:`TRANSFORMS`; ``bicubic224-crop`` is the
    published code's, see :func:`mmcoa.data.published_dataset_options`).

    Raises :class:`DatasetUnavailableError` when the folder, the split file or (with
    ``check_images``) an image is missing, and :class:`MmcoaError` for a malformed split file,
    an unknown split, an unknown ``transform`` or a split with no image.
    """
    transform = choice_option(DATASET_NAME, "transform", transform, TRANSFORMS)
    if split not in SPLITS:
        raise MmcoaError(f"unknown MSCOCO Karpathy split {split!r}; known: {', '.join(SPLITS)}")
    if not isinstance(image_size, int) or image_size < 1:
        raise MmcoaError(f"image_size must be a positive integer; got {image_size!r}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetUnavailableError(f"dataset {DATASET_NAME}: no folder {root}; {LAYOUT_HINT}")
    annotation = root / ANNOTATION_FILE
    if not annotation.is_file():
        raise DatasetUnavailableError(f"dataset {DATASET_NAME}: no {annotation}; {LAYOUT_HINT}")
    entries = _read_entries(annotation)
    wanted = {"train": ("train", "restval")}.get(split, (split,))
    paths, captions = [], []
    for position, entry in enumerate(entries):
        try:
            if entry["split"] not in wanted:
                continue
            path = root / entry["filepath"] / entry["filename"]
            texts = [sentence["raw"] for sentence in entry["sentences"]]
        except (KeyError, TypeError) as error:
            raise MmcoaError(
                f"malformed annotation {annotation}: images[{position}] lacks "
                f"{_missing(error)}; {LAYOUT_HINT}"
            ) from None
        if not texts or not all(isinstance(t, str) for t in texts):
            raise MmcoaError(
                f"malformed annotation {annotation}: images[{position}] needs a "
                "non-empty list of sentences with string 'raw' captions"
            )
        paths.append(path)
        captions.append([pre_caption(t) for t in texts] if pre_caption_text else list(texts))
    if not paths:
        present = sorted({str(e.get("split")) for e in entries if isinstance(e, dict)})
        raise MmcoaError(
            f"dataset {DATASET_NAME}: split {split!r} of {annotation} has no image "
            f"(splits present: {', '.join(present) or 'none'})"
        )
    if check_images:
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise DatasetUnavailableError(
                f"dataset {DATASET_NAME}: {len(missing)} of {len(paths)} {split} images are "
                f"missing, e.g. {missing[0]}; {LAYOUT_HINT}"
            )
    return RetrievalDataset(
        paths, captions, split=split, image_size=image_size, root=root, transform=transform
    )


def _read_entries(annotation: Path) -> list:
    try:
        with open(annotation) as handle:
            data = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        reason = str(error).splitlines()[0]
        raise MmcoaError(f"malformed annotation {annotation}: not valid JSON ({reason})") from None
    entries = data.get("images") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise MmcoaError(
            f"malformed annotation {annotation}: expected an object with an 'images' list; {LAYOUT_HINT}"
        )
    return entries


def _missing(error: BaseException) -> str:
    if isinstance(error, KeyError):
        return f"key {error.args[0]!r}"
    return "the expected structure (filepath, filename, split, sentences[].raw)"
