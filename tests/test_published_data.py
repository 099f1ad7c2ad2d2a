"""The published code's image preprocessing as dataset options (docs/deviations.md, row 8):
TinyImageNet ``size: "224"`` and MSCOCO Karpathy ``transform: "bicubic224-crop"``, checked
against torchvision applied here to the same files, and :func:`published_dataset_options`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision import transforms

from helpers import make_layout, save_image, write_lines
from mmcoa.data import DATASETS, load_coco_karpathy, load_dataset, published_dataset_options
from mmcoa.data.coco import TRANSFORMS
from mmcoa.data.imagenet_sets import TINY_SIZES
from mmcoa.errors import MmcoaError

WNIDS = ["n02124075", "n01443537"]


def fake_tiny(root: Path) -> Path:
    """``tiny-imagenet-200`` with 2 classes: 2 train images each (one 64x48, to make the crop
    cut something) and 3 val images, all JPEG."""
    base = root / "tiny-imagenet-200"
    write_lines(base / "wnids.txt", WNIDS)
    write_lines(base / "words.txt", ["n01443537\tgoldfish, Carassius auratus", "n02124075\tEgyptian cat"])
    for c, wnid in enumerate(WNIDS):
        for k in range(2):
            size = (64, 48) if k else (64, 64)
            save_image(base / "train" / wnid / "images" / f"{wnid}_{k}.JPEG", 10 * c + k, size=size)
    write_lines(
        base / "val" / "val_annotations.txt", [f"val_{k}.JPEG\t{WNIDS[k % 2]}\t0\t0\t9\t9" for k in range(3)]
    )
    for k in range(3):
        save_image(base / "val" / "images" / f"val_{k}.JPEG", 100 + k, size=(64, 64))
    return base


def reference(path: Path, *steps) -> torch.Tensor:
    """``steps`` then ``ToTensor`` applied to the RGB image at ``path``, computed here."""
    with Image.open(path) as image:
        return transforms.Compose([*steps, transforms.ToTensor()])(image.convert("RGB"))


@pytest.mark.parametrize("split", ["train", "test"])
def test_tiny_imagenet_size_224_is_resize256_crop224(tmp_path, split):
    fake_tiny(tmp_path)
    for size in ("224", 224):  # YAML reads `size: 224` as a number
        data = load_dataset("tiny_imagenet", split=split, root=str(tmp_path), size=size)
        assert data.image_size == (224, 224)
        for index, path in enumerate(data.inner.files):
            expected = reference(path, transforms.Resize(256), transforms.CenterCrop(224))
            image, _ = data[index]
            assert image.shape == (3, 224, 224)
            assert torch.equal(image, expected), path
    # the crop is not a plain upsampling of the file: bilinear 224 differs
    upsampled = reference(data.inner.files[0], transforms.Resize((224, 224)))
    assert not torch.equal(data[0][0], upsampled)


@pytest.mark.parametrize("split", ["train", "test"])
def test_tiny_imagenet_default_stays_native(tmp_path, split):
    fake_tiny(tmp_path)
    default = load_dataset("tiny_imagenet", split=split, root=str(tmp_path))
    native = load_dataset("tiny_imagenet", split=split, root=str(tmp_path), size="native")
    assert default.image_size == native.image_size == (64, 64)
    for index, path in enumerate(default.inner.files):
        expected = reference(path)
        assert torch.equal(default[index][0], expected)
        assert torch.equal(native[index][0], expected)
        assert default[index][1] == native[index][1]
    assert default[0][0].shape[-2:] == (64, 64)


def test_coco_bicubic224_crop_matches_torchvision(tmp_path):
    make_layout(tmp_path)  # 48x40 images: not square
    data = load_coco_karpathy(tmp_path, split="test", transform="bicubic224-crop")
    assert data.transform == "bicubic224-crop" and data.image_size == (224, 224)
    bicubic = transforms.InterpolationMode.BICUBIC
    for index, path in enumerate(data.image_paths):
        with Image.open(path) as image:
            assert image.size[0] != image.size[1]
        expected = reference(path, transforms.Resize(224, interpolation=bicubic), transforms.CenterCrop(224))
        default = reference(path, transforms.Resize(256), transforms.CenterCrop(224))
        assert torch.equal(data[index][0], expected)
        assert not torch.equal(expected, default)
    # a subset keeps the transform; other sizes scale like the default does
    assert torch.equal(data.subset([2])[0][0], data[2][0])
    small = load_coco_karpathy(tmp_path, split="test", image_size=32, transform="bicubic224-crop")
    path = small.image_paths[0]
    expected = reference(path, transforms.Resize(32, interpolation=bicubic), transforms.CenterCrop(32))
    assert torch.equal(small[0][0], expected)


def test_coco_default_transform_unchanged(tmp_path):
    make_layout(tmp_path)
    for data in (
        load_coco_karpathy(tmp_path, split="test"),
        load_coco_karpathy(tmp_path, split="test", transform="resize256-crop"),
    ):
        assert data.transform == "resize256-crop"
        for index, path in enumerate(data.image_paths):
            expected = reference(path, transforms.Resize(256), transforms.CenterCrop(224))
            assert torch.equal(data[index][0], expected)
    small = load_coco_karpathy(tmp_path, split="test", image_size=32)
    path = small.image_paths[1]
    expected = reference(path, transforms.Resize(round(32 * 256 / 224)), transforms.CenterCrop(32))
    assert torch.equal(small[1][0], expected)


def one_line_error(call, *words: str) -> None:
    with pytest.raises(MmcoaError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message


def test_bad_values_are_one_line_before_reading_files(tmp_path):
    absent = tmp_path / "nothing-here"  # no files: the value is refused first
    for bad, shown in (("64", "got '64'"), ("large", "got 'large'"), (64, "got 64"), (None, "got null")):
        one_line_error(
            lambda bad=bad: load_dataset("tiny_imagenet", split="test", root=str(absent), size=bad),
            "dataset tiny_imagenet: option size must be one of 'native', '224'",
            shown,
        )
    one_line_error(
        lambda: load_coco_karpathy(absent, transform="bicubic"),
        "mscoco_karpathy",
        "transform",
        "'bicubic'",
        "'resize256-crop', 'bicubic224-crop'",
    )
    one_line_error(
        lambda: load_dataset("tiny_imagenet", split="test", root=str(absent), transform="x"),
        "does not take option(s) transform",
        "accepted: size",
    )


def test_published_dataset_options():
    assert published_dataset_options("tiny_imagenet") == {"size": "224"}
    assert published_dataset_options("mscoco_karpathy") == {"transform": "bicubic224-crop"}
    for name in ("cifar10", "imagenet", "synthetic", "imagefolder:/x"):
        assert published_dataset_options(name) == {}
    published_dataset_options("tiny_imagenet")["size"] = "native"  # a copy each call
    assert published_dataset_options("tiny_imagenet") == {"size": "224"}
    # every published option is one the dataset declares, with an accepted value
    assert set(DATASETS.get("tiny_imagenet").options) == {"size"}
    assert "224" in TINY_SIZES and "bicubic224-crop" in TRANSFORMS
