"""Looking datasets up by name: :func:`load_dataset`, :func:`describe_datasets` and
:func:`published_dataset_options`."""

from __future__ import annotations

from mmcoa.data import coco, folder, imagenet_sets, wds
from mmcoa.data.base import DATASETS, DEFAULT_TEMPLATE, ClassificationDataset, resolve_root
from mmcoa.errors import MmcoaError, UnknownNameError

FOLDER_PATTERN = f"{folder.PREFIX}<path>"

PUBLISHED_OPTIONS: dict[str, dict[str, str]] = {
    imagenet_sets.TINY: {"size": "224"},
    coco.DATASET_NAME: {"transform": "bicubic224-crop"},
}
"""The dataset options the ``published`` profile sets, per dataset: the published code's image
preprocessing where ours differs (``docs/deviations.md``, "Switches" and row 8). The one place
that says so; read it through :func:`published_dataset_options`."""


def published_dataset_options(name: str) -> dict[str, str]:
    """The options that give dataset ``name`` the published MMCoA code's image preprocessing
    (``docs/deviations.md``, "Switches" and row 8), for the ``published`` profile to merge
    *under* the user's own options (an option given explicitly wins):

    - ``tiny_imagenet``: ``{"size": "224"}``, ``Resize(256)`` + ``CenterCrop(224)`` in both
      splits instead of the native 64 px (the code evaluated at 224);
    - ``mscoco_karpathy`` (retrieval, :func:`mmcoa.data.load_coco_karpathy`):
      ``{"transform": "bicubic224-crop"}``, ``Resize(224, bicubic)`` + ``CenterCrop(224)``
      instead of ``Resize(256)`` + ``CenterCrop(224)``.

    Every other name (``imagefolder:<path>`` and unknown names included) gives ``{}``. Returns a
    new dict each call."""
    return dict(PUBLISHED_OPTIONS.get(name, {}))


def known_names() -> list[str]:
    """Every accepted dataset name, the ``imagefolder:<path>`` and ``wds:<dir or name>`` patterns
    included."""
    return DATASETS.names() + [FOLDER_PATTERN, wds.PATTERN]


def load_dataset(
    name: str, split: str = "test", root: str | None = None, download: bool = False, **kwargs
) -> ClassificationDataset:
    """Load split ``split`` of dataset ``name`` (a registered name, ``imagefolder:<path>`` or
    ``wds:<dir or name>``, :mod:`mmcoa.data.wds`).

    ``root`` is the data folder (default ``$MMCOA_DATA`` or ``~/.cache/mmcoa/data``); ``download``
    lets torchvision fetch missing files; ``kwargs`` are dataset options (e.g. ``seed`` for
    ``synthetic``). Names, splits and options are checked before anything is read.
    """
    if name.startswith(folder.PREFIX):
        _check_options(name, kwargs, ())
        return folder.load(name[len(folder.PREFIX) :], split)
    if name.startswith(wds.PREFIX):
        _check_options(name, kwargs, wds.OPTIONS)
        return wds.load(name[len(wds.PREFIX) :], split, root, **kwargs)
    if name not in DATASETS:
        raise UnknownNameError(f"unknown dataset {name!r}; known: {', '.join(known_names())}")
    spec = DATASETS.get(name)
    if split not in spec.splits:
        raise MmcoaError(f"dataset {name} has no split {split!r}; accepted: {', '.join(spec.splits)}")
    _check_options(name, kwargs, spec.options)
    return spec.load(split, root, download, **kwargs)


def _check_options(name: str, kwargs: dict, accepted: tuple[str, ...]) -> None:
    """Reject dataset options the dataset does not take."""
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        takes = ", ".join(accepted) if accepted else "none"
        raise MmcoaError(f"dataset {name} does not take option(s) {', '.join(unknown)}; accepted: {takes}")


def describe_datasets(root: str | None = None) -> list[dict]:
    """One row per registered dataset (plus ``imagefolder:<path>``, ``wds:<dir or name>`` and
    ``mscoco_karpathy``) with keys ``name``, ``n_classes``, ``template``, ``splits``, ``found``
    (files on disk under ``root`` or the default places) and ``description``."""
    path = resolve_root(root)
    rows = [
        dict(
            name=spec.name,
            n_classes=spec.n_classes,
            template=spec.template,
            splits=list(spec.splits),
            found=bool(spec.found(path)),
            description=spec.description,
        )
        for spec in map(DATASETS.get, DATASETS.names())
    ]
    rows.append(
        dict(
            name=FOLDER_PATTERN,
            n_classes=None,
            template=DEFAULT_TEMPLATE,
            splits=["any"],
            found=False,
            description="your own <path>/<class>/<image> tree (uses "
            "<path>/<split> when that folder exists), resized to 224x224",
        )
    )
    rows.append(_wds_row(path))
    rows.append(_coco_row(path))
    return rows


def _wds_row(path) -> dict:
    """CLIP_benchmark's webdataset test sets (RobustVLM's evaluation data): found when a
    ``wds_<name>`` or ``wds/<name>`` folder is in the data root."""
    return dict(
        name=wds.PATTERN,
        n_classes=None,
        template="{} from the set's " + wds.TEMPLATES,
        splits=["any"],
        found=any(path.glob("wds_*/*/nshards.txt")) or any(path.glob("wds/**/nshards.txt")),
        description="a clip-benchmark/wds_<name> download (e.g. wds:vtab/cifar10 under --data-root "
        "or wds:<dir>); options size (native|224), n_samples, order (stored|robustvlm)",
    )


def _coco_row(path) -> dict:
    """MSCOCO (Karpathy splits) for retrieval (paper Table VI): found when the split file is in
    the data root or in its ``coco``/``mscoco`` folder."""
    from mmcoa.data.coco import ANNOTATION_FILE, DATASET_NAME, LAYOUT_HINT, SPLITS

    places = [path, path / "coco", path / "mscoco"] if path is not None else []
    return dict(
        name=DATASET_NAME,
        n_classes=None,
        template="(captions)",
        splits=list(SPLITS),
        found=any((place / ANNOTATION_FILE).is_file() for place in places),
        description=f"image-text retrieval only: mmcoa retrieval --data-root DIR, {LAYOUT_HINT}",
    )
