"""Tests for mmcoa.data: every loader runs on small files the tests write themselves; the batch
loader gives the same batches with 0 or 2 worker processes and names a corrupt file in one line."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mmcoa
from mmcoa.data import (
    DATASETS,
    DEFAULT_TEMPLATE,
    ClassificationDataset,
    clean_classname,
    describe_datasets,
    load_dataset,
)
from mmcoa.data.fashion_mnist import SYSTEM_DIR
from mmcoa.data.loading import BatchLoader, as_float_images, default_workers, resolve_workers
from mmcoa.errors import BadImageError, DatasetUnavailableError, MmcoaError, UnknownNameError, one_line
from helpers import corrupt_copy


def check_images(dataset: ClassificationDataset, shape: tuple[int, int, int]) -> None:
    """Every item is a float32 image of ``shape`` in [0, 1] with an int label in range."""
    for index in range(len(dataset)):
        image, label = dataset[index]
        assert image.shape == shape and image.dtype == torch.float32
        assert 0 <= image.min() and image.max() <= 1
        assert isinstance(label, int) and 0 <= label < len(dataset.classnames)


@pytest.mark.parametrize(
    "raw, clean",
    [
        ("T-shirt/top", "t shirt top"),
        ("Ankle_boot", "ankle boot"),
        ("Ankle boot", "ankle boot"),
        ("  aquarium_fish ", "aquarium fish"),
        ("a__b--c//d", "a b c d"),
        ("Trouser", "trouser"),
    ],
)
def test_clean_classname(raw, clean):
    assert clean_classname(raw) == clean


# --- Fashion-MNIST ---------------------------------------------------------------------------


def idx_bytes(magic: int, array: np.ndarray) -> bytes:
    """An unsigned-byte IDX file holding ``array``."""
    return struct.pack(f">i{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


def write_fashion(
    folder: Path, split: str, images: np.ndarray, labels: np.ndarray, compress: bool = True
) -> None:
    """Write one split's two IDX files as torchvision names them."""
    folder.mkdir(parents=True, exist_ok=True)
    prefix = {"train": "train", "test": "t10k"}[split]
    for kind, magic, array in (("images-idx3", 2051, images), ("labels-idx1", 2049, labels)):
        data = idx_bytes(magic, array)
        name = f"{prefix}-{kind}-ubyte"
        if compress:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)


@pytest.fixture
def fake_images() -> tuple[np.ndarray, np.ndarray]:
    images = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    images[0, 0, 0], images[0, 0, 1] = 0, 255
    return images, np.array([0, 9, 3, 3, 1], dtype=np.uint8)


@pytest.mark.parametrize("layout, compress", [("FashionMNIST/raw", True), (".", False)])
def test_fashion_mnist_reads_idx(tmp_path, fake_images, layout, compress):
    images, labels = fake_images
    write_fashion(tmp_path / layout, "train", images, labels, compress)
    dataset = load_dataset("fashion_mnist", split="train", root=str(tmp_path))
    assert len(dataset) == 5 and dataset.image_size == (28, 28) and dataset.split == "train"
    check_images(dataset, (3, 28, 28))
    image, label = dataset[1]
    assert label == 9
    assert torch.equal(image[0], image[1]) and torch.equal(image[0], image[2])
    assert torch.allclose(image[0], torch.from_numpy(images[1]).float() / 255)
    assert dataset[0][0][0, 0, :2].tolist() == [0.0, 1.0]
    assert dataset.classnames[0] == "t shirt top" and dataset.classnames[9] == "ankle boot"
    assert dataset.prompts()[1] == "This is a photo of a trouser"


@pytest.mark.parametrize("damage", ["bad magic", "truncated", "truncated gzip"])
def test_fashion_mnist_corrupt_file(tmp_path, fake_images, damage):
    write_fashion(tmp_path, "test", *fake_images)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    data = gzip.decompress(path.read_bytes())
    if damage == "bad magic":
        path.write_bytes(gzip.compress(struct.pack(">i", 2049) + data[4:]))
    elif damage == "truncated":
        path.write_bytes(gzip.compress(data[:-10]))
    else:
        path.write_bytes(path.read_bytes()[:30])
    with pytest.raises(MmcoaError, match="t10k-images-idx3-ubyte.gz") as caught:
        load_dataset("fashion_mnist", root=str(tmp_path))
    assert "\n" not in str(caught.value)


@pytest.mark.skipif(
    not SYSTEM_DIR.is_dir(), reason=f"{SYSTEM_DIR} not installed (Debian package dataset-fashion-mnist)"
)
def test_fashion_mnist_system_copy(tmp_path):
    dataset = load_dataset("fashion_mnist", split="test", root=str(tmp_path))
    assert len(dataset) == 10000 and len(dataset.classnames) == 10
    image, label = dataset[0]
    assert image.shape == (3, 28, 28) and label == 9  # the first test image is an ankle boot


# --- CIFAR-10 --------------------------------------------------------------------------------

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_cifar10(root: Path, per_batch: int = 3) -> None:
    """A stand-in ``cifar-10-batches-py`` folder with tiny pickled batches."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            "data": rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8),
            "labels": [int(x) for x in rng.integers(0, 10, size=per_batch)],
        }
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": CIFAR_CLASSES}))


def test_cifar10_fake_layout(tmp_path):
    write_cifar10(tmp_path)
    test = load_dataset("cifar10", split="test", root=str(tmp_path))
    train = load_dataset("cifar10", split="train", root=str(tmp_path))
    assert (len(test), len(train)) == (3, 15)
    assert test.classnames == CIFAR_CLASSES and test.image_size == (32, 32)
    check_images(test, (3, 32, 32))
    assert torch.equal(pickle.loads(pickle.dumps(test))[2][0], test[2][0])  # DataLoader workers
    assert [r["found"] for r in describe_datasets(str(tmp_path)) if r["name"] == "cifar10"] == [True]


def test_cifar_missing_root(tmp_path):
    for name, folder in (("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")):
        with pytest.raises(DatasetUnavailableError, match="--download") as caught:
            load_dataset(name, root=str(tmp_path))
        assert str(tmp_path / folder) in str(caught.value) and "\n" not in str(caught.value)


def test_cifar10_incomplete_folder(tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(DatasetUnavailableError, match="test_batch"):
        load_dataset("cifar10", root=str(tmp_path))


# --- imagefolder ----------------------------------------------------------------------------


def write_images(folder: Path, classes=("golden_retriever", "Tabby-Cat"), per_class: int = 2) -> None:
    """``per_class`` small PNGs for each class under ``folder``."""
    for index, name in enumerate(classes):
        (folder / name).mkdir(parents=True)
        for k in range(per_class):
            colour = (index * 200, k * 100, 50)
            Image.new("RGB", (40, 30), colour).save(folder / name / f"{k}.png")


@pytest.mark.parametrize("with_splits", [False, True])
def test_imagefolder(tmp_path, with_splits):
    write_images(tmp_path / "test" if with_splits else tmp_path)
    dataset = load_dataset(f"imagefolder:{tmp_path}", split="test")
    # label order is torchvision's case-sensitive sort of the raw folder names
    assert len(dataset) == 4 and dataset.classnames == ["tabby cat", "golden retriever"]
    assert dataset.image_size == (224, 224) and dataset.split == "test"
    check_images(dataset, (3, 224, 224))
    assert sorted(dataset[i][1] for i in range(4)) == [0, 0, 1, 1]


def test_imagefolder_empty_or_missing(tmp_path):
    with pytest.raises(MmcoaError, match="empty"):
        load_dataset(f"imagefolder:{tmp_path}")
    (tmp_path / "cat").mkdir()
    with pytest.raises(MmcoaError, match="empty"):
        load_dataset(f"imagefolder:{tmp_path}")
    with pytest.raises(DatasetUnavailableError):
        load_dataset(f"imagefolder:{tmp_path / 'nowhere'}")


# --- synthetic ------------------------------------------------------------------------------


def test_synthetic_deterministic():
    first, again = load_dataset("synthetic", seed=3), load_dataset("synthetic", seed=3)
    assert torch.equal(first.images, again.images) and torch.equal(first.labels, again.labels)
    train = load_dataset("synthetic", split="train", seed=3)
    assert not torch.equal(first.images, train.images)
    assert not torch.equal(first.images, load_dataset("synthetic", seed=4).images)
    check_images(first, (3, 32, 32))
    assert len(first) == 64 and first.image_size == (32, 32)


def test_synthetic_classes_distinct():
    dataset = load_dataset("synthetic", n_samples=80, n_classes=8, image_size=16)
    assert len(set(dataset.classnames)) == 8 and dataset.image_size == (16, 16)
    means = torch.stack([dataset.images[dataset.labels == c].mean((0, 2, 3)) for c in range(8)])
    assert torch.cdist(means, means).add(torch.eye(8)).min() > 0.1
    assert len(set(load_dataset("synthetic", n_classes=32).classnames)) == 32


def test_synthetic_bad_options():
    with pytest.raises(MmcoaError, match="n_classes"):
        load_dataset("synthetic", n_classes=0)
    with pytest.raises(MmcoaError, match="accepted: seed"):
        load_dataset("synthetic", colour="red")


# --- names, splits, listing -----------------------------------------------------------------


def test_unknown_name_lists_names():
    with pytest.raises(UnknownNameError) as caught:
        load_dataset("mnist")
    message = str(caught.value)
    assert all(name in message for name in DATASETS.names()) and "imagefolder:<path>" in message


def test_bad_split_lists_splits(tmp_path):
    with pytest.raises(MmcoaError, match="accepted: train, test"):
        load_dataset("fashion_mnist", split="validation", root=str(tmp_path))


def test_describe_datasets(tmp_path):
    rows = describe_datasets(str(tmp_path))
    assert [r["name"] for r in rows] == DATASETS.names() + [
        "imagefolder:<path>",
        "wds:<dir or name>",
        "mscoco_karpathy",
    ]
    for row in rows:
        assert set(row) == {"name", "n_classes", "template", "splits", "found", "description"}
        assert isinstance(row["found"], bool)
        assert "{}" in row["template"] or row["name"] == "mscoco_karpathy"
    by_name = {r["name"]: r for r in rows}
    assert by_name["cifar10"]["found"] is False and by_name["synthetic"]["found"] is True
    assert by_name["fashion_mnist"]["n_classes"] == 10
    assert by_name["cifar10"]["template"] == DEFAULT_TEMPLATE
    assert by_name["food101"]["template"] == "A photo of {}, a type of food."
    assert by_name["mscoco_karpathy"]["found"] is False and "test" in by_name["mscoco_karpathy"]["splits"]
    (tmp_path / "coco").mkdir()
    (tmp_path / "coco" / "dataset_coco.json").write_text("{}")
    assert [r["found"] for r in describe_datasets(str(tmp_path)) if r["name"] == "mscoco_karpathy"] == [True]


def test_prompts_custom_template():
    dataset = load_dataset("synthetic", n_samples=4)
    assert dataset.prompts("a {}.")[0] == "a red stripe."
    with pytest.raises(MmcoaError):
        dataset.prompts("no slot")


# -- the batch loader: worker processes change nothing but speed ---------------------------------
@pytest.mark.parametrize("workers", [0, 2])
def test_batches_hold_the_items_in_the_given_order_bit_for_bit(image_folder, workers):
    dataset = mmcoa.load_dataset(f"imagefolder:{image_folder}")
    batches = [[5, 0, 7], [11, 2], [3]]
    state = torch.get_rng_state()
    loaded = list(BatchLoader(dataset, batches, workers=workers))
    assert torch.equal(torch.get_rng_state(), state)  # workers' seeds come from their own generator
    assert [b.indices for b in loaded] == batches and [b.position for b in loaded] == [0, 1, 2]
    for batch, chosen in zip(loaded, batches):
        expected = torch.stack([dataset[i][0] for i in chosen])
        assert batch.images.dtype == torch.float32 and torch.equal(batch.images, expected)
        assert batch.labels.tolist() == [dataset[i][1] for i in chosen] and batch.wait_s >= 0


def test_uint8_travels_and_becomes_what_to_tensor_gives(image_folder):
    from torchvision.transforms.functional import to_tensor

    dataset = mmcoa.load_dataset(f"imagefolder:{image_folder}")
    raw, _ = dataset.raw_item(0)
    assert raw.dtype == torch.uint8 and raw.shape == (3, 224, 224)
    with Image.open(dataset.source(0)) as image:
        reference = to_tensor(
            dataset.inner.transform.transforms[1](dataset.inner.transform.transforms[0](image.convert("RGB")))
        )
    assert torch.equal(as_float_images(raw.unsqueeze(0))[0], reference)


def test_positions_pick_the_batches_and_a_batch_function_works(image_folder):
    dataset = mmcoa.load_dataset(f"imagefolder:{image_folder}")
    loaded = list(BatchLoader(dataset, lambda p: [p, p + 1], positions=range(3, 6), workers=0))
    assert [b.indices for b in loaded] == [[3, 4], [4, 5], [5, 6]] and [b.position for b in loaded] == [
        3,
        4,
        5,
    ]
    with pytest.raises(MmcoaError, match="positions"):
        BatchLoader(dataset, lambda p: [p])


def test_worker_counts(monkeypatch):
    synthetic = mmcoa.load_dataset("synthetic")
    assert resolve_workers(None, synthetic) == 0  # held in memory: nothing to decode
    assert resolve_workers(3, synthetic) == 3 and 1 <= default_workers() <= 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "64")  # more processes on the node than cores
    assert default_workers() == 1
    for bad in (-1, 1.5):
        with pytest.raises(MmcoaError, match="workers must be a non-negative integer"):
            resolve_workers(bad, synthetic)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_corrupt_file_in_a_worker_is_one_line_naming_it(image_folder, tmp_path, workers):
    copy, bad = corrupt_copy(image_folder, tmp_path)
    dataset = mmcoa.load_dataset(f"imagefolder:{copy}")
    with pytest.raises(BadImageError) as caught:
        list(BatchLoader(dataset, [list(range(len(dataset)))], workers=workers))
    message = str(caught.value)
    assert "\n" not in message and str(bad) in message and "Traceback" not in message
    skipped = list(BatchLoader(dataset, [list(range(len(dataset)))], workers=workers, skip_bad_images=True))
    assert skipped[0].skipped == 1 and len(skipped[0]) == len(dataset) - 1


def test_a_dataset_workers_cannot_receive_falls_back_to_the_main_process(image_folder, monkeypatch, capsys):
    """Under spawn/forkserver the workers get a pickled dataset; one that does not pickle loads
    in the main process, with a one-line note."""
    import multiprocessing

    dataset = mmcoa.load_dataset(f"imagefolder:{image_folder}")
    dataset.unpicklable = lambda: None  # e.g. a user's dataset holding an open handle or a lambda
    monkeypatch.setattr(multiprocessing, "get_start_method", lambda allow_none=False: "spawn")
    loader = BatchLoader(dataset, [[0, 1]], workers=2)
    note = capsys.readouterr().err
    assert loader.workers == 0 and note.count("\n") == 1 and "cannot be sent to worker processes" in note
    assert [b.indices for b in loader] == [[0, 1]]


# -- a corrupt image read by a DataLoader worker -------------------------------------------------
def test_a_corrupt_image_read_by_a_dataloader_worker_is_still_one_line(bad_folder):
    folder, bad = bad_folder
    dataset = mmcoa.load_dataset(f"imagefolder:{folder}")
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, [5]), num_workers=1)
    with pytest.raises(MmcoaError) as caught:
        next(iter(loader))
    assert str(bad) in one_line(caught.value) and "Traceback" not in one_line(caught.value)
