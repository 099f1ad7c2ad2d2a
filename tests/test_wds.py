"""``wds:<spec>``: CLIP_benchmark's webdataset test sets, and RobustVLM's sample selection.

The key check: :func:`mmcoa.data.wds.robustvlm_order` (and ``order: robustvlm``) picks the same
samples, in the same order, as the authors' pipeline run with the installed ``webdataset``
(``WebDataset(...).shuffle(...).batched(50)`` read by a 4-worker ``DataLoader``) on fabricated
shards of uneven sizes.
"""

from __future__ import annotations

import io
import pickle
import random
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from mmcoa.data import load_dataset
from mmcoa.data.catalog import describe_datasets, known_names
from mmcoa.data.wds import PATTERN, robustvlm_order, shuffled
from mmcoa.errors import MmcoaError
from mmcoa.eval.suite_config import load_suite

pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create 4 worker processes")  # 2-core CI

CLASSES = ["Airplane", "T-shirt", "lymph node"]
TEMPLATES = ["a photo of a {c}.", "a blurry {c} {not a slot}"]
UNEVEN = {"one": [23], "three": [70, 13, 101], "six": [70, 13, 101, 5, 60, 33]}


def image_bytes(label: int, fmt: str = "png", size=(8, 8)) -> bytes:
    """A flat image whose red channel is ``40 * label``."""
    buffer = io.BytesIO()
    Image.new("RGB", size, (40 * label, 7, 200)).save(buffer, format=fmt)
    return buffer.getvalue()


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_set(folder: Path, sizes, fmt="png", templates=True, image_size=(8, 8), split="test") -> Path:
    """A CLIP_benchmark folder: shard ``s`` holds ``sizes[s]`` samples keyed ``s<s>_<i>``,
    label ``(s + i) % 3``."""
    (folder / split).mkdir(parents=True)
    (folder / split / "nshards.txt").write_text(f"{len(sizes)}\n")
    images = [image_bytes(label, fmt, image_size) for label in range(len(CLASSES))]
    for shard, n in enumerate(sizes):
        with tarfile.open(folder / split / f"{shard}.tar", "w") as tar:
            for i in range(n):
                label = (shard + i) % len(CLASSES)
                add(tar, f"s{shard}_{i:04d}.{fmt}", images[label])
                add(tar, f"s{shard}_{i:04d}.cls", str(label).encode())
    (folder / "classnames.txt").write_text("\n".join(CLASSES) + "\n")
    if templates:
        (folder / "zeroshot_classification_templates.txt").write_text("\n".join(TEMPLATES) + "\n")
    return folder


def keys_of(order) -> list[str]:
    return [f"s{shard}_{i:04d}" for shard, i in order]


def authors_keys(
    folder: Path, n_shards: int, n: int | None, bufsize=10000, batch_size=50, initial=None
) -> list[str]:
    """RobustVLM's ``clip_benchmark.cli`` selection, run with the installed webdataset: shards
    split over 4 DataLoader workers (``split_by_worker``, no shard shuffle), each shuffled from
    ``random.Random(0)``, batched, batches taken in turn; the first ``n`` keys."""
    import webdataset as wds

    pattern = str(folder / "test" / f"{{0..{n_shards - 1}}}.tar")
    dataset = (
        wds.WebDataset(pattern, shardshuffle=False, empty_check=False)
        .to_tuple("__key__")
        .shuffle(bufsize, initial=initial or bufsize, rng=random.Random(0))
        .batched(batch_size)
    )
    keys: list[str] = []
    for batch in torch.utils.data.DataLoader(dataset, batch_size=None, shuffle=False, num_workers=4):
        keys += list(batch[0])
        if n is not None and len(keys) >= n:
            break
    return keys if n is None else keys[:n]


@pytest.fixture(scope="module")
def uneven(tmp_path_factory):
    """One folder per shard layout of :data:`UNEVEN`."""
    base = tmp_path_factory.mktemp("wds")
    return {name: write_set(base / name, sizes) for name, sizes in UNEVEN.items()}


def one_line_error(match: str, **kwargs) -> str:
    with pytest.raises(MmcoaError, match=match) as caught:
        load_dataset(**kwargs)
    assert "\n" not in str(caught.value)
    return str(caught.value)


# -- the RobustVLM selection --------------------------------------------------------------------
@pytest.mark.parametrize(
    "layout,bufsize,initial,n,batch_size",
    [
        ("one", 10000, 10000, None, 50),
        ("one", 7, 7, 20, 4),
        ("three", 10000, 10000, 120, 50),
        ("three", 7, 7, 150, 50),
        ("six", 10000, 10000, None, 50),
        ("six", 8, 8, 160, 50),
        ("six", 9, 3, 130, 50),  # initial < bufsize: the buffer grows two samples a step
    ],
)
def test_robustvlm_order_matches_the_authors_pipeline(uneven, layout, bufsize, initial, n, batch_size):
    sizes = UNEVEN[layout]
    expected = authors_keys(uneven[layout], len(sizes), n, bufsize, batch_size, initial)
    order = robustvlm_order(sizes, n, batch_size=batch_size, bufsize=bufsize, initial=initial)
    assert keys_of(order) == expected
    assert len(expected) == (sum(sizes) if n is None else min(n, sum(sizes)))


def test_robustvlm_dataset_matches_the_authors_pipeline(uneven):
    expected = authors_keys(uneven["six"], 6, 120)
    dataset = load_dataset(f"wds:{uneven['six']}", n_samples=120, order="robustvlm")
    assert [dataset.key(i) for i in range(len(dataset))] == expected
    labels = [dataset[i][1] for i in range(len(dataset))]
    assert labels == [(int(k[1]) + int(k[3:])) % 3 for k in expected]
    assert len(load_dataset(f"wds:{uneven['one']}", n_samples=1000, order="robustvlm")) == 23


def test_shuffle_buffer_is_webdataset_s():
    from webdataset.filters import _shuffle

    for bufsize, initial in [(7, 7), (8, 3), (10000, 10000), (1, 1)]:
        ours = list(shuffled(range(40), bufsize, initial, random.Random(5)))
        theirs = list(_shuffle(iter(range(40)), bufsize, initial, rng=random.Random(5)))
        assert ours == theirs and sorted(ours) == list(range(40))


def test_robustvlm_order_edges():
    assert robustvlm_order([], 10) == []
    assert robustvlm_order([3, 0, 2], workers=0) == robustvlm_order([3, 0, 2], workers=1)
    assert sorted(robustvlm_order([3, 4, 5, 6, 7])) == [
        (s, i) for s, n in enumerate([3, 4, 5, 6, 7]) for i in range(n)
    ]


# -- loading ------------------------------------------------------------------------------------
def test_load_by_path_names_templates_and_stored_order(tmp_path):
    folder = write_set(tmp_path / "set", [4, 3])
    dataset = load_dataset(f"wds:{folder}")
    assert (dataset.name, dataset.split, len(dataset)) == (f"wds:{folder}", "test", 7)
    assert dataset.classnames == CLASSES  # as the benchmark lists them
    assert dataset.template == "a photo of a {}."
    assert dataset.templates == ["a photo of a {}.", "a blurry {} {{not a slot}}"]
    assert dataset.prompts(dataset.templates[1])[0] == "a blurry Airplane {not a slot}"
    assert [dataset.key(i) for i in range(7)] == [f"s0_{i:04d}" for i in range(4)] + [
        f"s1_{i:04d}" for i in range(3)
    ]
    first = load_dataset(f"wds:{folder}", n_samples=5, order="stored")
    assert [first.key(i) for i in range(5)] == [dataset.key(i) for i in range(5)]
    image, label = dataset[5]
    assert image.shape == (3, 8, 8) and image.dtype == torch.float32 and label == 2
    assert abs(float(image[0, 0, 0]) - 80 / 255) < 1e-6  # red = 40 * label
    assert dataset.source(5).endswith("1.tar:s1_0001.png")
    assert torch.equal(pickle.loads(pickle.dumps(dataset))[5][0], image)  # DataLoader workers


def test_load_by_name_under_the_root(tmp_path):
    write_set(tmp_path / "wds_vtab-cifar10", [3], fmt="webp", templates=False)
    write_set(tmp_path / "wds" / "cars", [2])
    cifar = load_dataset("wds:vtab/cifar10", root=str(tmp_path))
    assert len(cifar) == 3 and cifar[1][0].shape == (3, 8, 8)
    assert cifar.templates is None and "{}" in cifar.template
    assert len(load_dataset("wds:cars", root=str(tmp_path))) == 2
    rows = {r["name"]: r for r in describe_datasets(str(tmp_path))}
    assert rows[PATTERN]["found"] is True and "{}" in rows[PATTERN]["template"]
    assert PATTERN in known_names()


def test_size_224(tmp_path):
    folder = write_set(tmp_path / "set", [2], image_size=(12, 8))
    native = load_dataset(f"wds:{folder}", size="native")
    assert native[0][0].shape == (3, 8, 12) and native.image_size is None
    for size in ("224", 224):
        resized = load_dataset(f"wds:{folder}", size=size)
        assert resized[0][0].shape == (3, 224, 224) and resized.image_size == (224, 224)


# -- errors: one line each, before any work ------------------------------------------------------
def test_missing_files(tmp_path):
    text = one_line_error("no folder", name="wds:vtab/cifar10", root=str(tmp_path))
    assert "nshards.txt" in text and str(tmp_path / "wds_vtab-cifar10") in text
    assert "huggingface-cli download clip-benchmark/wds_vtab-cifar10 --repo-type dataset --local-dir" in text
    folder = write_set(tmp_path / "set", [2, 2, 2])
    name = f"wds:{folder}"
    one_line_error("no .*train/nshards.txt", name=name, split="train")
    (folder / "test" / "2.tar").unlink()
    one_line_error("lists 3 shards but .*2.tar is missing", name=name)
    (folder / "test" / "nshards.txt").write_text("2")
    (folder / "classnames.txt").unlink()
    one_line_error("no .*classnames.txt", name=name)
    (folder / "test" / "nshards.txt").write_text("two")
    one_line_error("must hold the number of shards", name=name)
    one_line_error("names no folder", name="wds:")


def write_one_shard(folder: Path, files: dict[str, bytes]) -> str:
    (folder / "test").mkdir(parents=True)
    (folder / "test" / "nshards.txt").write_text("1")
    (folder / "classnames.txt").write_text("\n".join(CLASSES))
    with tarfile.open(folder / "test" / "0.tar", "w") as tar:
        for name, data in files.items():
            add(tar, name, data)
    return f"wds:{folder}"


def test_bad_samples(tmp_path):
    png = image_bytes(0)
    name = write_one_shard(tmp_path / "a", {"k0.png": png, "k0.cls": b"0", "k1.cls": b"1"})
    one_line_error("sample 'k1' .* has no image", name=name)
    name = write_one_shard(tmp_path / "b", {"k0.png": png, "k0.json": b"{}"})
    one_line_error("sample 'k0' .* has no .cls label", name=name)
    name = write_one_shard(tmp_path / "c", {"k0.png": png, "k0.cls": b"3"})
    one_line_error("label 3, outside the 3 classes", name=name)
    name = write_one_shard(tmp_path / "d", {"k0.png": png, "k0.cls": b"cat"})
    one_line_error("not an integer", name=name)
    name = write_one_shard(tmp_path / "e", {"k0.JPG": png, "k0.png": png, "k0.cls": b"2", "__meta__": b""})
    dataset = load_dataset(name)
    assert len(dataset) == 1 and dataset.source(0).endswith(".png")  # webp, png, jpg, jpeg


@pytest.mark.parametrize(
    "options,match",
    [
        ({"size": "128"}, "option size must be one of 'native', '224', '256-crop-224'; got '128'"),
        ({"order": "random"}, "option order must be one of 'stored', 'robustvlm'"),
        ({"n_samples": 0}, "n_samples must be a positive integer; got 0"),
        ({"n_samples": "10"}, "n_samples must be a positive integer"),
        ({"seed": 1}, "does not take option.*seed; accepted: size, n_samples, order"),
    ],
)
def test_bad_options_before_any_file(tmp_path, options, match):
    one_line_error(match, name=f"wds:{tmp_path / 'absent'}", **options)


# -- suites -------------------------------------------------------------------------------------
def write_suite(path: Path, options: dict) -> Path:
    suite = {
        "name": "wds",
        "n_samples": 4,
        "device": "cpu",
        "models": [{"label": "CLIP", "name": "tiny-clip"}],
        "datasets": [{"name": "wds:vtab/cifar10", "options": options}],
        "attacks": [{"name": "clean"}],
    }
    path.write_text(yaml.safe_dump(suite))
    return path


def test_suite_accepts_wds_options(tmp_path):
    options = {"size": 224, "n_samples": 1000, "order": "robustvlm"}
    config = load_suite(write_suite(tmp_path / "s.yaml", options))
    assert config.datasets[0].options == {"size": "224", "n_samples": 1000, "order": "robustvlm"}
    for bad, match in [
        ({"size": 128}, "options.size must be one of native, 224"),
        ({"n_samples": 0}, "options.n_samples must be a positive integer"),
        ({"order": "shuffled"}, "options.order must be one of stored, robustvlm"),
        ({"seed": 0}, "takes no option seed"),
    ]:
        with pytest.raises(MmcoaError, match=match):
            load_suite(write_suite(tmp_path / "s.yaml", bad))


# -- CIFAR at 224 (TGA-ZSR's evaluation) ---------------------------------------------------------
def write_cifar10(root: Path) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, size=(2, 3072), dtype=np.uint8), "labels": [0, 1]}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))


def test_cifar10_size_224(tmp_path):
    write_cifar10(tmp_path)
    native = load_dataset("cifar10", root=str(tmp_path))
    same = load_dataset("cifar10", root=str(tmp_path), size="native")
    assert native[0][0].shape == (3, 32, 32) and torch.equal(native[0][0], same[0][0])
    resized = load_dataset("cifar10", root=str(tmp_path), size=224)
    assert resized[0][0].shape == (3, 224, 224) and resized.image_size == (224, 224)
    with pytest.raises(MmcoaError, match="option size must be one of 'native', '224'; got '64'"):
        load_dataset("cifar10", root=str(tmp_path / "absent"), size="64")
