"""``wds:<spec>``: a CLIP_benchmark test set in its webdataset layout (RobustVLM's evaluation data).

The Hugging Face repos ``clip-benchmark/wds_<name>`` hold::

    <dir>/<split>/nshards.txt                      (the number of shards N)
    <dir>/<split>/0.tar ... <dir>/<split>/{N-1}.tar  (<key>.webp|png|jpg|jpeg + <key>.cls label)
    <dir>/classnames.txt                           (one class name per line)
    <dir>/zeroshot_classification_templates.txt   (one prompt per line, class as {c}; optional)

``<spec>`` is such a folder, or a CLIP_benchmark name (``vtab/cifar10``, ``cars``,
``imagenet-r``) found under the data root as ``wds_<name, '/' → '-'>`` (the repo's name) or
``wds/<name>``. Shards are indexed once (tar headers only, grouped into samples by webdataset's
own key rule); each image is read and decoded when its item is asked for.

Options: ``size`` (``native``: the stored pixels; ``224``: open_clip's evaluation transform
without normalising, ``Resize(224, bicubic)`` + ``CenterCrop(224)``; ``256-crop-224``: TeCoA's
and TGA-ZSR's ``Resize(256)`` (bilinear) + ``CenterCrop(224)``), ``n_samples`` (the first
that many samples) and ``order`` (``stored``: shard then tar order; ``robustvlm``: the samples,
in order, that RobustVLM's ``clip_benchmark.cli --n_samples N --batch_size 50`` evaluates, see
:func:`robustvlm_order`).
"""

from __future__ import annotations

import io
import itertools
import random
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from PIL import Image
from torchvision import transforms
from torchvision.transforms import InterpolationMode

from mmcoa.data.base import (
    DEFAULT_TEMPLATE,
    ClassificationDataset,
    choice_option,
    first_line,
    resolve_root,
    to_image_tensor,
)
from mmcoa.errors import DatasetUnavailableError, MmcoaError
from mmcoa.settings import shown

PREFIX = "wds:"
PATTERN = f"{PREFIX}<dir or name>"
SIZES = ("native", "224", "256-crop-224")
ORDERS = ("stored", "robustvlm")
OPTIONS = ("size", "n_samples", "order")
IMAGE_SUFFIXES = ("webp", "png", "jpg", "jpeg")
"""Image extensions CLIP_benchmark reads, in its order of preference within a sample."""
LABEL_SUFFIX = "cls"
CLASSNAMES = "classnames.txt"
TEMPLATES = "zeroshot_classification_templates.txt"
LAYOUT = (
    "<dir>/<split>/nshards.txt, <dir>/<split>/0.tar ... (samples <key>.webp|png|jpg|jpeg + "
    f"<key>.cls), <dir>/{CLASSNAMES} and optionally <dir>/{TEMPLATES}"
)
TRANSFORMS = {
    "native": to_image_tensor,
    "224": transforms.Compose(
        [
            transforms.Resize(224, interpolation=InterpolationMode.BICUBIC),
            transforms.CenterCrop(224),
            to_image_tensor,
        ]
    ),
    "256-crop-224": transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), to_image_tensor]),
}
"""Option ``size``: the transform of a decoded RGB image."""
_META = re.compile(r"__[^/]*__($|/)")  # webdataset skips such members


@dataclass(frozen=True)
class Sample:
    """One sample of a shard: its key, where its image lies in the tar file (``offset``,
    ``size``, extension ``suffix``) and its ``.cls`` label."""

    shard: int
    key: str
    offset: int
    size: int
    suffix: str
    label: int


# -- the RobustVLM selection ---------------------------------------------------------------------
def shuffled(items: Iterable, bufsize: int, initial: int, rng: random.Random) -> Iterator:
    """webdataset's ``_shuffle`` (0.2.48 and 1.0): fill a buffer two items a step while it is
    below ``bufsize``, yield a random pick once it holds ``initial``, then drain it."""
    items, initial, buf = iter(items), min(initial, bufsize), []
    for item in items:
        buf.append(item)
        if len(buf) < bufsize:
            buf += list(itertools.islice(items, 1))
        if len(buf) >= initial:
            yield _pick(buf, rng)
    while buf:
        yield _pick(buf, rng)


def _pick(buf: list, rng: random.Random):
    """webdataset's ``pick``: a random item, its slot refilled from the end."""
    k = rng.randint(0, len(buf) - 1)
    item = buf[k]
    buf[k] = buf[-1]
    buf.pop()
    return item


def robustvlm_order(
    shard_sizes: Sequence[int],
    n_samples: int | None = None,
    seed: int = 0,
    batch_size: int = 50,
    workers: int = 4,
    bufsize: int = 10000,
    initial: int = 10000,
) -> list[tuple[int, int]]:
    """``(shard, index in shard)`` of the first ``n_samples`` samples (all when ``None``) that
    RobustVLM's ``clip_benchmark.cli`` evaluates: ``wds.WebDataset(shards)`` gives DataLoader
    worker ``w`` the shards ``w, w + workers, ...``; each worker shuffles its stream with
    ``shuffle(bufsize, initial, rng=random.Random(seed))`` (a copy of the same state each) and
    cuts it into batches of ``batch_size`` (the last one partial); the DataLoader takes batches
    from the workers in turn, skipping those that are done."""
    count = max(workers, 1)
    streams = []
    for worker in range(count):
        items = ((s, i) for s in range(worker, len(shard_sizes), count) for i in range(shard_sizes[s]))
        order = list(shuffled(items, bufsize, initial, random.Random(seed)))
        streams.append([order[k : k + batch_size] for k in range(0, len(order), batch_size)])
    chosen = [
        item
        for turn in range(max(map(len, streams), default=0))
        for batches in streams
        if turn < len(batches)
        for item in batches[turn]
    ]
    return chosen if n_samples is None else chosen[:n_samples]


# -- options and files ---------------------------------------------------------------------------
def settle(name: str, options: dict) -> dict:
    """``size``, ``n_samples`` and ``order``, given (checked: one :class:`MmcoaError` line for
    an unknown option or a bad value) or at their defaults; reads no file."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise MmcoaError(
            f"dataset {name} does not take option(s) {', '.join(unknown)}; accepted: {', '.join(OPTIONS)}"
        )
    n = options.get("n_samples")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise MmcoaError(f"dataset {name}: option n_samples must be a positive integer; got {shown(n)}")
    return dict(
        size=choice_option(name, "size", options.get("size", SIZES[0]), SIZES),
        n_samples=n,
        order=choice_option(name, "order", options.get("order", ORDERS[0]), ORDERS),
    )


def hub_folder(spec: str) -> str:
    """The Hugging Face repo (and folder) name of CLIP_benchmark set ``spec``: ``wds_vtab-cifar10``."""
    return "wds_" + spec.strip("/").replace("/", "-")


def find_folder(name: str, spec: str, root) -> Path:
    """The set's folder: ``spec`` itself when it is a folder, else ``wds_<name>`` or
    ``wds/<name>`` under the data root; one error line with the layout and the download command."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    base = resolve_root(root)
    places = [base / hub_folder(spec), base / "wds" / spec]
    for place in places:
        if place.is_dir():
            return place
    raise DatasetUnavailableError(
        f"dataset {name}: no folder {path} nor {places[0]} nor {places[1]}; expected {LAYOUT}; "
        f"`huggingface-cli download clip-benchmark/{hub_folder(spec)} --repo-type dataset "
        f"--local-dir {places[0]}` fetches it"
    )


def read_lines(path: Path) -> list[str]:
    """The stripped non-blank lines of a UTF-8 text file (how CLIP_benchmark reads its lists)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise MmcoaError(f"{path} is not UTF-8 text: {first_line(error)}") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def as_format(template: str) -> str:
    """A CLIP_benchmark template (class as ``{c}``) as a ``str.format`` template with ``{}``."""
    return template.replace("{", "{{").replace("}", "}}").replace("{{c}}", "{}")


def shard_paths(name: str, folder: Path, split: str) -> list[Path]:
    """The shard files ``nshards.txt`` lists, each checked to exist."""
    counter = folder / split / "nshards.txt"
    if not counter.is_file():
        raise DatasetUnavailableError(f"dataset {name}: no {counter}; expected {LAYOUT}")
    text = counter.read_text(encoding="utf-8", errors="replace").strip()
    if not text.isdigit() or int(text) < 1:
        raise MmcoaError(
            f"dataset {name}: {counter} must hold the number of shards (>= 1); got {text[:40]!r}"
        )
    paths = [folder / split / f"{k}.tar" for k in range(int(text))]
    absent = [p for p in paths if not p.is_file()]
    if absent:
        raise DatasetUnavailableError(
            f"dataset {name}: {counter} lists {len(paths)} shards but {absent[0]} is missing"
            f"{f' (and {len(absent) - 1} more)' if len(absent) > 1 else ''}; expected {LAYOUT}"
        )
    return paths


# -- indexing ------------------------------------------------------------------------------------
def members(tar: tarfile.TarFile) -> Iterator[tuple[str, str, tarfile.TarInfo]]:
    """``(key, lower-case suffix, member)`` of each file webdataset reads from a shard, in tar order."""
    from webdataset.tariterators import base_plus_ext

    for info in tar:
        if not info.isreg() or _META.match(info.name):
            continue
        key, suffix = base_plus_ext(info.name)
        if key is not None:
            yield key, suffix.lower(), info


def index_shard(name: str, shard: int, path: Path, n_classes: int) -> list[Sample]:
    """The samples of one shard: consecutive members with one key, as webdataset groups them."""
    groups: list[tuple[str, dict[str, tarfile.TarInfo]]] = []
    try:
        with tarfile.open(path, "r:") as tar:
            for key, suffix, info in members(tar):
                if not groups or groups[-1][0] != key:
                    groups.append((key, {}))
                if suffix in groups[-1][1]:
                    raise MmcoaError(f"dataset {name}: {path} holds {key}.{suffix} twice in one sample")
                groups[-1][1][suffix] = info
            return [
                Sample(shard, key, *_contents(name, path, tar, key, files, n_classes))
                for key, files in groups
            ]
    except tarfile.TarError as error:
        raise MmcoaError(f"dataset {name}: cannot read {path}: {first_line(error)}") from None


def _contents(name: str, path: Path, tar: tarfile.TarFile, key: str, files: dict, n_classes: int) -> tuple:
    """``(offset, size, suffix, label)`` of one grouped sample, which must hold an image and a
    ``.cls`` integer label of a class in ``classnames.txt``."""
    image = next((s for s in IMAGE_SUFFIXES if s in files), None)
    where = f"dataset {name}: sample {key!r} of {path}"
    if image is None or LABEL_SUFFIX not in files:
        lacks = "image (.webp|.png|.jpg|.jpeg)" if image is None else ".cls label"
        raise MmcoaError(f"{where} has no {lacks}; it holds {', '.join(sorted(files))}; expected {LAYOUT}")
    text = tar.extractfile(files[LABEL_SUFFIX]).read().decode("utf-8", errors="replace").strip()
    if not re.fullmatch(r"-?\d+", text):
        raise MmcoaError(f"{where} has label {text[:20]!r}, not an integer")
    if not 0 <= int(text) < n_classes:
        raise MmcoaError(
            f"{where} has label {text}, outside the {n_classes} classes of {CLASSNAMES} (0..{n_classes - 1})"
        )
    return files[image].offset_data, files[image].size, image, int(text)


def index_samples(
    name: str, paths: list[Path], n_classes: int, n_samples: int | None, order: str
) -> list[Sample]:
    """The selected samples in their order (``stored``: indexing stops once it has enough)."""
    if order == "stored":
        found: list[Sample] = []
        for shard, path in enumerate(paths):
            if n_samples is not None and len(found) >= n_samples:
                break
            found += index_shard(name, shard, path, n_classes)
        return found[:n_samples]
    shards = [index_shard(name, shard, path, n_classes) for shard, path in enumerate(paths)]
    return [shards[s][i] for s, i in robustvlm_order([len(s) for s in shards], n_samples)]


# -- the dataset ---------------------------------------------------------------------------------
class WdsDataset(ClassificationDataset):
    """The selected samples of a webdataset test set, each image read from its shard on demand.

    Class names are ``classnames.txt``'s lines as they are (the benchmark's prompt names, not
    cleaned); ``templates`` is the prompt ensemble with ``{}`` for the class, ``template`` its
    first (or the default when the set ships none).
    """

    def __init__(
        self,
        name: str,
        split: str,
        paths: list[Path],
        samples: list[Sample],
        classnames: list[str],
        templates: list[str],
        size: str = "native",
    ):
        super().__init__(
            name,
            split,
            classnames,
            template=templates[0] if templates else DEFAULT_TEMPLATE,
            image_size=None if size == "native" else (224, 224),
        )
        self.classnames = list(classnames)
        self.templates = list(templates) or None
        self.paths, self.samples, self.size = paths, samples, size

    def __len__(self) -> int:
        return len(self.samples)

    def _item(self, index: int):
        sample = self.samples[index]
        with open(self.paths[sample.shard], "rb") as file:
            file.seek(sample.offset)
            data = file.read(sample.size)
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            rgb = image.convert("RGB")
        return TRANSFORMS[self.size](rgb), sample.label

    def key(self, index: int) -> str:
        """The webdataset key (``__key__``) of item ``index``."""
        return self.samples[index].key

    def source(self, index: int) -> str | None:
        if not 0 <= index < len(self.samples):
            return None
        sample = self.samples[index]
        return f"{self.paths[sample.shard]}:{sample.key}.{sample.suffix}"


def load(spec: str, split: str, root=None, **options) -> WdsDataset:
    """Load ``wds:<spec>``: options checked first, then the folder, its lists and every shard."""
    name = f"{PREFIX}{spec}"
    if not spec:
        raise MmcoaError(f"dataset {name!r} names no folder or set; use {PATTERN}, e.g. wds:vtab/cifar10")
    settled = settle(name, options)
    folder = find_folder(name, spec, root)
    paths = shard_paths(name, folder, split)
    if not (folder / CLASSNAMES).is_file():
        raise DatasetUnavailableError(f"dataset {name}: no {folder / CLASSNAMES}; expected {LAYOUT}")
    classnames = read_lines(folder / CLASSNAMES)
    has_templates = (folder / TEMPLATES).is_file()
    templates = [as_format(t) for t in read_lines(folder / TEMPLATES)] if has_templates else []
    samples = index_samples(name, paths, len(classnames), settled["n_samples"], settled["order"])
    return WdsDataset(name, split, paths, samples, classnames, templates, settled["size"])
