"""Tests for the paper's benchmark datasets (mmcoa.data.paper_sets, mmcoa.data.imagenet_sets).

No benchmark images can be downloaded here, so every loader runs on a fake layout written by the
test: a few tiny images per class under torchvision's real folder and file names, with the real
annotation-file formats.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmcoa.data import DATASETS, DEFAULT_TEMPLATE, clean_classname, describe_datasets, load_dataset
from mmcoa.data.paper_common import seeded_split
from mmcoa.data.paper_sets import COUNTRY_NAMES, caltech256_name
from mmcoa.errors import DatasetUnavailableError, MmcoaError
from helpers import fake_eurosat, fake_stl10, save_image, write_lines

TEMPLATES = {
    "stl10": DEFAULT_TEMPLATE,
    "food101": "A photo of {}, a type of food.",
    "oxford_pets": "A photo of a {}, a type of pet.",
    "flowers102": "A photo of a {}, a type of flower.",
    "dtd": "A surface with a {} texture.",
    "eurosat": "A centered satellite photo of {}.",
    "fgvc_aircraft": "A photo of a {}, a type of aircraft.",
    "sun397": DEFAULT_TEMPLATE,
    "country211": "A photo I took in {}.",
    "caltech101": "A photo of a {}.",
    "caltech256": "A photo of a {}.",
    "tiny_imagenet": DEFAULT_TEMPLATE,
    "imagenet": DEFAULT_TEMPLATE,
}
N_CLASSES = {
    "stl10": 10,
    "food101": 101,
    "oxford_pets": 37,
    "flowers102": 102,
    "dtd": 47,
    "eurosat": 10,
    "fgvc_aircraft": 100,
    "sun397": 397,
    "country211": 211,
    "caltech101": 101,
    "caltech256": 257,
    "tiny_imagenet": 200,
    "imagenet": 1000,
}
PAPER_SETS = sorted(TEMPLATES)


def check_images(dataset, shape) -> None:
    """Every item is a float32 image of ``shape`` in [0, 1] with an int label in range."""
    for index in range(len(dataset)):
        image, label = dataset[index]
        assert image.shape == shape and image.dtype == torch.float32
        assert 0 <= image.min() and image.max() <= 1
        assert isinstance(label, int) and 0 <= label < len(dataset.classnames)


# --- fake layouts: each writes the set under root and returns {split: n_images}, class names
# (STL-10 and EuroSAT are in helpers.py: the suite tests use them too) ---


def fake_food101(root: Path):
    base = root / "food-101"
    meta = {
        "train": {
            "apple_pie": ["apple_pie/1005649", "apple_pie/1014775"],
            "baby_back_ribs": ["baby_back_ribs/1000205"],
        },
        "test": {"apple_pie": ["apple_pie/1011328"], "baby_back_ribs": ["baby_back_ribs/1005293"]},
    }
    for split, classes in meta.items():
        (base / "meta").mkdir(parents=True, exist_ok=True)
        (base / "meta" / f"{split}.json").write_text(json.dumps(classes))
        for k, item in enumerate(sum(classes.values(), [])):
            save_image(base / "images" / f"{item}.jpg", k)
    write_lines(base / "meta" / "classes.txt", ["apple_pie", "baby_back_ribs"])
    return {"train": 3, "test": 2}, ["apple pie", "baby back ribs"]


def fake_oxford_pets(root: Path):
    base = root / "oxford-iiit-pet"
    rows = {
        "trainval": ["Abyssinian_100 1 1 1", "Abyssinian_101 1 1 1", "american_bulldog_10 2 2 1"],
        "test": ["Abyssinian_1 1 1 1", "american_bulldog_100 2 2 1"],
    }
    for split, lines in rows.items():
        write_lines(base / "annotations" / f"{split}.txt", lines)
        for k, line in enumerate(lines):
            save_image(base / "images" / f"{line.split()[0]}.jpg", k)
    return {"trainval": 3, "test": 2}, ["abyssinian", "american bulldog"]


def fake_flowers102(root: Path):
    savemat = pytest.importorskip("scipy.io").savemat

    from torchvision.datasets import Flowers102

    base = root / "flowers-102"
    for image_id in range(1, 8):
        save_image(base / "jpg" / f"image_{image_id:05d}.jpg", image_id, mode="L" if image_id == 1 else "RGB")
    savemat(base / "imagelabels.mat", {"labels": np.array([[77, 77, 1, 1, 102, 102, 1]], np.uint8)})
    savemat(
        base / "setid.mat",
        {
            "trnid": np.array([[1, 3]], np.uint16),
            "valid": np.array([[2, 4]], np.uint16),
            "tstid": np.array([[5, 6, 7]], np.uint16),
        },
    )
    return {"train": 2, "val": 2, "test": 3}, [clean_classname(c) for c in Flowers102.classes]


def fake_dtd(root: Path):
    base = root / "dtd" / "dtd"
    files = {
        "train": ["banded/banded_0002.jpg", "zigzagged/zigzagged_0010.jpg"],
        "val": ["banded/banded_0004.jpg", "zigzagged/zigzagged_0011.jpg"],
        "test": ["banded/banded_0005.jpg", "zigzagged/zigzagged_0012.jpg", "banded/banded_0006.jpg"],
    }
    for split, names in files.items():
        write_lines(base / "labels" / f"{split}1.txt", names)
        for k, name in enumerate(names):
            save_image(base / "images" / name, k)
    return {"train": 2, "val": 2, "test": 3}, ["banded", "zigzagged"]


def fake_fgvc_aircraft(root: Path):
    data = root / "fgvc-aircraft-2013b" / "data"
    write_lines(data / "variants.txt", ["707-320", "A300B4", "F-16A/B"])
    rows = {
        "train": ["1025794 707-320", "0056978 F-16A/B"],
        "val": ["1340192 A300B4", "0062765 707-320"],
        "test": ["1919098 F-16A/B", "0235120 A300B4", "2234018 707-320"],
    }
    rows["trainval"] = rows["train"] + rows["val"]
    for split, lines in rows.items():
        write_lines(data / f"images_variant_{split}.txt", lines)
        for k, line in enumerate(lines):
            save_image(data / "images" / f"{line.split()[0]}.jpg", k)
    return {"train": 2, "val": 2, "trainval": 4, "test": 3}, ["707 320", "a300b4", "f 16a b"]


def fake_sun397(root: Path):
    base = root / "SUN397"
    write_lines(base / "ClassName.txt", ["/a/abbey", "/b/bakery/shop"])
    for k in range(5):
        save_image(base / "a" / "abbey" / f"sun_a{k:07d}.jpg", k)
        save_image(base / "b" / "bakery" / "shop" / f"sun_b{k:07d}.jpg", 10 + k)
    return {"train": 8, "test": 2}, ["abbey", "bakery shop"]


def fake_country211(root: Path):
    counts = {"train": 2, "valid": 1, "test": 2}
    for split, n in counts.items():
        for code in ("AD", "GB", "ZW"):
            for k in range(n):
                save_image(root / "country211" / split / code / f"{1000 + k}.jpg", k)
    return {"train": 6, "val": 3, "test": 6}, ["andorra", "united kingdom", "zimbabwe"]


def fake_caltech101(root: Path):
    base = root / "caltech101" / "101_ObjectCategories"
    for c, name in enumerate(("BACKGROUND_Google", "Faces_easy", "accordion")):
        for k in range(1, 6):
            save_image(base / name / f"image_{k:04d}.jpg", 10 * c + k, mode="L" if k == 1 else "RGB")
    return {"train": 8, "test": 2}, ["faces easy", "accordion"]


def fake_caltech256(root: Path):
    base = root / "caltech256" / "256_ObjectCategories"
    # torchvision names files by label + 1, so the fake numbers its folders 001, 002, 003
    for c, name in enumerate(("001.ak47", "002.american-flag", "003.faces-easy-101")):
        for k in range(1, 6):
            save_image(base / name / f"{c + 1:03d}_{k:04d}.jpg", 10 * c + k, mode="CMYK" if k == 2 else "RGB")
    return {"train": 12, "test": 3}, ["ak47", "american flag", "faces easy"]


TINY_WNIDS = ["n02124075", "n01443537", "n09193705"]  # wnids.txt is not sorted


def fake_tiny_imagenet(root: Path, val_lines=None):
    base = root / "tiny-imagenet-200"
    write_lines(base / "wnids.txt", TINY_WNIDS)
    write_lines(
        base / "words.txt",
        [
            "n00001740\tentity",
            "n01443537\tgoldfish, Carassius auratus",
            "n02124075\tEgyptian cat",
            "n09193705\talp",
            "n99999999\tunused",
        ],
    )
    for c, wnid in enumerate(TINY_WNIDS):
        write_lines(base / "train" / wnid / f"{wnid}_boxes.txt", [f"{wnid}_0.JPEG\t0\t0\t63\t63"])
        for k in range(3):
            save_image(
                base / "train" / wnid / "images" / f"{wnid}_{k}.JPEG",
                10 * c + k,
                size=(64, 64),
                mode="L" if k == 0 else "RGB",
            )
    if val_lines is None:
        val_lines = [f"val_{k}.JPEG\t{TINY_WNIDS[k % 3]}\t0\t5\t60\t62" for k in range(4)]
    write_lines(base / "val" / "val_annotations.txt", val_lines)
    for k in range(4):
        save_image(base / "val" / "images" / f"val_{k}.JPEG", 100 + k, size=(64, 64))
    return {"train": 9, "test": 4}, ["goldfish", "egyptian cat", "alp"]


IMAGENET_WNIDS = [f"n{1440764 + i:08d}" for i in range(1000)]


def fake_imagenet(root: Path, n_val_classes: int = 1000):
    """One image per class folder (hard links of one file per split, so 2000 folders stay fast)."""
    for split, colour in (("train", (255, 0, 0)), ("val", (0, 0, 255))):
        source = root / f"{split}.JPEG"
        Image.new("RGB", (40, 30), colour).save(source)
        for wnid in IMAGENET_WNIDS[: 1000 if split == "train" else n_val_classes]:
            folder = root / "imagenet" / split / wnid
            folder.mkdir(parents=True)
            os.link(source, folder / f"{wnid}_{split}.JPEG")
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    return {"train": 1000, "test": 1000}, [clean_classname(n) for n in IMAGENET_CLASSNAMES]


FAKES = (
    {  # this module's fake_* layouts and the two helpers.py holds for the suite tests
        name[len("fake_") :]: fn for name, fn in globals().items() if name.startswith("fake_")
    }
    | {"stl10": fake_stl10, "eurosat": fake_eurosat}
)
NATIVE_SIZE = {"stl10": (96, 96), "tiny_imagenet": (64, 64)}


# --- registry and listing ---------------------------------------------------------------------


def test_every_paper_set_is_registered_with_its_template():
    assert set(PAPER_SETS) <= set(DATASETS.names()) and set(FAKES) == set(PAPER_SETS)
    for name in PAPER_SETS:
        spec = DATASETS.get(name)
        assert spec.template == TEMPLATES[name] and spec.n_classes == N_CLASSES[name]
        assert "test" in spec.splits


def test_describe_datasets_rows(tmp_path):
    fake_dtd(tmp_path)
    rows = {r["name"]: r for r in describe_datasets(str(tmp_path))}
    for name in PAPER_SETS:
        row = rows[name]
        assert row["template"] == TEMPLATES[name] and row["n_classes"] == N_CLASSES[name]
        assert row["splits"] == list(DATASETS.get(name).splits) and row["found"] is (name == "dtd")
    assert rows["eurosat"]["splits"] == ["train", "test"] and "seed 0" in rows["eurosat"]["description"]
    assert rows["oxford_pets"]["splits"] == ["trainval", "test"]


# --- every loader on its fake layout ----------------------------------------------------------


@pytest.mark.parametrize("name", PAPER_SETS)
def test_loader_on_fake_layout(tmp_path, name):
    counts, classnames = FAKES[name](tmp_path)
    size = NATIVE_SIZE.get(name, (224, 224))
    assert set(counts) == set(DATASETS.get(name).splits)
    for split, n in counts.items():
        dataset = load_dataset(name, split=split, root=str(tmp_path))
        assert (dataset.name, dataset.split, len(dataset)) == (name, split, n)
        assert dataset.classnames == list(classnames) and dataset.image_size == size
        assert dataset.template == TEMPLATES[name]
        assert dataset.prompts()[0] == TEMPLATES[name].format(dataset.classnames[0])
        if name != "imagenet":  # 1000 items; checked in its own test
            check_images(dataset, (3, *size))
    assert DATASETS.get(name).found(tmp_path)


def test_loaded_dataset_pickles(tmp_path):  # DataLoader workers under spawn
    fake_eurosat(tmp_path)
    fake_tiny_imagenet(tmp_path)
    for name in ("eurosat", "tiny_imagenet"):
        dataset = load_dataset(name, split="test", root=str(tmp_path))
        assert torch.equal(pickle.loads(pickle.dumps(dataset))[1][0], dataset[1][0])


def test_class_name_cleaning():
    assert caltech256_name("253.faces-easy-101") == "faces-easy"
    assert caltech256_name("257.clutter") == "clutter"
    assert len(COUNTRY_NAMES) == 211 and list(COUNTRY_NAMES) == sorted(COUNTRY_NAMES)
    assert COUNTRY_NAMES["GB"] == "United Kingdom"


def test_grey_and_cmyk_images_become_rgb(tmp_path):
    fake_caltech256(tmp_path)
    dataset = load_dataset("caltech256", split="train", root=str(tmp_path))
    check_images(dataset, (3, 224, 224))  # includes a CMYK file
    fake_caltech101(tmp_path)
    grey = load_dataset("caltech101", split="train", root=str(tmp_path))[0][0]  # image_0001 is grey
    assert grey.shape == (3, 224, 224) and torch.equal(grey[0], grey[1])


# --- seeded splits for sets that ship without one ---------------------------------------------


def test_seeded_split_is_fixed_disjoint_and_per_class():
    labels = [0] * 10 + [1] * 5 + [2] * 1 + [3] * 2
    split = seeded_split(labels)
    assert split == seeded_split(list(labels))
    train, test = set(split["train"]), set(split["test"])
    assert not train & test and train | test == set(range(len(labels)))
    assert [sum(labels[i] == c for i in test) for c in range(4)] == [2, 1, 0, 1]
    assert seeded_split(labels, seed=1) != split
    # a class's split does not depend on the other classes
    alone = seeded_split([0] * 10)["test"]
    assert alone == [i for i in split["test"] if labels[i] == 0]


@pytest.mark.parametrize("name", ["eurosat", "sun397", "caltech101", "caltech256"])
def test_seeded_datasets_split_deterministically(tmp_path, name):
    counts, _ = FAKES[name](tmp_path)
    loads = [
        {s: load_dataset(name, split=s, root=str(tmp_path)) for s in ("train", "test")} for _ in range(2)
    ]
    first, again = ([d.inner.indices for d in (load["train"], load["test"])] for load in loads)
    assert first == again
    train, test = map(set, first)
    assert not train & test and len(train | test) == counts["train"] + counts["test"]
    assert [len(loads[0][s]) for s in ("train", "test")] == [counts["train"], counts["test"]]


def test_sun397_split_does_not_depend_on_listing_order(tmp_path):
    fake_sun397(tmp_path)
    test = load_dataset("sun397", split="test", root=str(tmp_path)).inner
    files = test.dataset._image_files
    assert files == sorted(files)


# --- TinyImageNet and ImageNet --------------------------------------------------------------


def test_tiny_imagenet_reads_val_annotations_at_64px(tmp_path):
    fake_tiny_imagenet(tmp_path)
    test = load_dataset("tiny_imagenet", split="test", root=str(tmp_path))
    train = load_dataset("tiny_imagenet", split="train", root=str(tmp_path))
    # labels follow the sorted wnids: n01443537 goldfish, n02124075 egyptian cat, n09193705 alp
    assert [test[k][1] for k in range(4)] == [1, 0, 2, 1]
    assert [f.name for f in test.inner.files] == [f"val_{k}.JPEG" for k in range(4)]
    assert sorted(train.inner.labels) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert train[0][0].shape == test[0][0].shape == (3, 64, 64)  # bug 8: no 224 at test time
    expected = np.asarray(Image.open(tmp_path / "tiny-imagenet-200/val/images/val_0.JPEG"), np.float32) / 255
    assert torch.allclose(test[0][0], torch.from_numpy(expected).permute(2, 0, 1))


@pytest.mark.parametrize(
    "line, match",
    [
        ("val_0.JPEG", r"val_annotations.txt, line 2: expected '<image><TAB><wnid>"),
        ("val_0.JPEG\tn00000001\t0\t0\t1\t1", r"line 2: class 'n00000001' is not in wnids.txt"),
        ("val_9.JPEG\tn01443537\t0\t0\t1\t1", r"missing from .*val_9.JPEG"),
    ],
)
def test_tiny_imagenet_malformed_annotations(tmp_path, line, match):
    fake_tiny_imagenet(tmp_path, val_lines=["val_1.JPEG\tn01443537\t0\t0\t1\t1", line])
    with pytest.raises(MmcoaError, match=match) as caught:
        load_dataset("tiny_imagenet", split="test", root=str(tmp_path))
    assert "\n" not in str(caught.value)


def test_tiny_imagenet_malformed_wnids_and_words(tmp_path):
    fake_tiny_imagenet(tmp_path)
    base = tmp_path / "tiny-imagenet-200"
    write_lines(base / "words.txt", ["n01443537\tgoldfish"])
    with pytest.raises(MmcoaError, match="names no class for n02124075"):
        load_dataset("tiny_imagenet", split="train", root=str(tmp_path))
    write_lines(base / "wnids.txt", ["n01443537", "goldfish"])
    with pytest.raises(MmcoaError, match=r"wnids.txt, line 2: 'goldfish' is not a WordNet id"):
        load_dataset("tiny_imagenet", split="train", root=str(tmp_path))


def test_imagenet_train_and_test_read_distinct_folders(tmp_path):
    fake_imagenet(tmp_path)
    train = load_dataset("imagenet", split="train", root=str(tmp_path))
    test = load_dataset("imagenet", split="test", root=str(tmp_path))
    assert Path(train.inner.root) == tmp_path / "imagenet" / "train"
    assert Path(test.inner.root) == tmp_path / "imagenet" / "val"
    assert not {p for p, _ in train.inner.samples} & {p for p, _ in test.inner.samples}
    (red, label_train), (blue, label_test) = train[3], test[3]
    assert label_train == label_test == 3 and red.shape == blue.shape == (3, 224, 224)
    assert red[0].mean() > 0.9 and blue[2].mean() > 0.9 and red[2].mean() < 0.1
    assert len(train.classnames) == 1000 and train.classnames[:2] == ["tench", "goldfish"]


def test_imagenet_needs_1000_wnid_folders(tmp_path):
    fake_imagenet(tmp_path, n_val_classes=10)
    with pytest.raises(DatasetUnavailableError, match="has 10 class folders.*valprep") as caught:
        load_dataset("imagenet", split="test", root=str(tmp_path))
    assert str(tmp_path / "imagenet" / "val") in str(caught.value) and "\n" not in str(caught.value)


# --- missing or broken files ------------------------------------------------------------------

LAYOUT_HINTS = {  # a fragment of the expected layout and of how to obtain it, per set
    "stl10": ("stl10_binary/{train_X,train_y,test_X,test_y}.bin", "--download"),
    "food101": ("food-101/meta/{train,test}.json", "--download"),
    "oxford_pets": ("oxford-iiit-pet/annotations/{trainval,test}.txt", "--download"),
    "flowers102": ("flowers-102/jpg/image_<5 digits>.jpg", "--download"),
    "dtd": ("dtd/dtd/labels/{train,val,test}1.txt", "--download"),
    "eurosat": ("eurosat/2750/<Class>/<Class>_<n>.jpg", "--download"),
    "fgvc_aircraft": ("data/images_variant_{train,val,trainval,test}.txt", "--download"),
    "sun397": ("SUN397/ClassName.txt", "--download"),
    "country211": ("country211/{train,valid,test}/<ISO 3166 code>/<id>.jpg", "--download"),
    "caltech101": ("caltech101/101_ObjectCategories/<class>/image_<4 digits>.jpg", "--download"),
    "caltech256": ("caltech256/256_ObjectCategories/<NNN>.<class>/", "--download"),
    "tiny_imagenet": (
        "tiny-imagenet-200/val/val_annotations.txt",
        "cs231n.stanford.edu/tiny-imagenet-200.zip",
    ),
    "imagenet": ("imagenet/val/<wnid>/*.JPEG", "image-net.org"),
}


@pytest.mark.parametrize("name", PAPER_SETS)
def test_missing_root_names_the_layout(tmp_path, name):
    with pytest.raises(DatasetUnavailableError) as caught:
        load_dataset(name, split="test", root=str(tmp_path))
    message = str(caught.value)
    layout, obtain = LAYOUT_HINTS[name]
    assert "\n" not in message and layout in message and obtain in message
    assert str(tmp_path / DATASETS.get(name).load.__self__.folder) in message
    assert list(tmp_path.iterdir()) == []  # nothing created on the way (torchvision's Caltech would)


@pytest.mark.parametrize("name", ["tiny_imagenet", "imagenet"])
def test_manual_sets_refuse_download(tmp_path, name):
    with pytest.raises(DatasetUnavailableError, match="cannot be downloaded automatically"):
        load_dataset(name, split="test", root=str(tmp_path), download=True)


def test_missing_split_file_is_named(tmp_path):
    fake_food101(tmp_path)
    (tmp_path / "food-101" / "meta" / "test.json").unlink()
    assert len(load_dataset("food101", split="train", root=str(tmp_path))) == 3
    with pytest.raises(DatasetUnavailableError, match="lacks meta/test.json"):
        load_dataset("food101", split="test", root=str(tmp_path))


@pytest.mark.parametrize(
    "name, damage, match",
    [
        ("oxford_pets", ("oxford-iiit-pet/annotations/test.txt", "Abyssinian_1 1\n"), "not enough values"),
        ("food101", ("food-101/meta/test.json", '{"apple_pie": ['), "Expecting value"),
        ("dtd", ("dtd/dtd/labels/test1.txt", "banded_0005.jpg\n"), "not enough values"),
        (
            "fgvc_aircraft",
            ("fgvc-aircraft-2013b/data/images_variant_test.txt", "1919098 Spitfire\n"),
            "unknown key 'Spitfire'",
        ),
        ("flowers102", ("flowers-102/setid.mat", "not a mat file"), "cannot read"),
        ("stl10", ("stl10_binary/test_X.bin", "short"), "cannot reshape"),
    ],
)
def test_malformed_annotation_is_one_line_error(tmp_path, name, damage, match):
    FAKES[name](tmp_path)
    path, text = damage
    (tmp_path / path).write_text(text)
    with pytest.raises(MmcoaError, match=match) as caught:
        load_dataset(name, split="test", root=str(tmp_path))
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"dataset {name}: cannot read")
    assert not isinstance(caught.value, DatasetUnavailableError)


def test_flowers_label_out_of_range(tmp_path):
    fake_flowers102(tmp_path)
    from scipy.io import savemat

    savemat(tmp_path / "flowers-102" / "imagelabels.mat", {"labels": np.array([[103] * 7], np.uint8)})
    with pytest.raises(MmcoaError, match="label 103, outside 1..102"):
        load_dataset("flowers102", split="test", root=str(tmp_path))


def test_flowers_without_scipy_says_so(tmp_path, monkeypatch):
    fake_flowers102(tmp_path)
    monkeypatch.setitem(sys.modules, "scipy.io", None)
    with pytest.raises(MmcoaError, match="needs scipy"):
        load_dataset("flowers102", split="test", root=str(tmp_path))
