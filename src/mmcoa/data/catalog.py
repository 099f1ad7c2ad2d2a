"""Looking datasets up by name: :func:`load_dataset` and :func:`describe_datasets`."""

from __future__ import annotations

from mmcoa.data import folder
from mmcoa.data.base import DATASETS, DEFAULT_TEMPLATE, ClassificationDataset, resolve_root
from mmcoa.errors import MmcoaError, UnknownNameError

FOLDER_PATTERN = f"{folder.PREFIX}<path>"


def known_names() -> list[str]:
    """Every accepted dataset name, the ``imagefolder:<path>`` pattern included."""
    return DATASETS.names() + [FOLDER_PATTERN]


def load_dataset(
    name: str, split: str = "test", root: str | None = None, download: bool = False, **kwargs
) -> ClassificationDataset:
    """Load split ``split`` of dataset ``name`` (a registered name or ``imagefolder:<path>``).

    ``root`` is the data folder (default ``$MMCOA_DATA`` or ``~/.cache/mmcoa/data``); ``download``
    lets torchvision fetch missing files; ``kwargs`` are dataset options (e.g. ``seed`` for
    ``synthetic``). Names, splits and options are checked before anything is read.
    """
    if name.startswith(folder.PREFIX):
        _check_options(name, kwargs, ())
        return folder.load(name[len(folder.PREFIX) :], split)
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
    """One row per registered dataset (plus ``imagefolder:<path>``) with keys ``name``,
    ``n_classes``, ``template``, ``splits``, ``found`` (files on disk under ``root`` or the default
    places) and ``description``."""
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
    rows.append(_coco_row(path))
    return rows


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
