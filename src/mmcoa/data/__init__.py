"""Image-classification datasets for zero-shot evaluation.

Use :func:`load_dataset` with a name from :data:`DATASETS` (``fashion_mnist``, ``cifar10``,
``cifar100``, ``synthetic``) or ``imagefolder:<path>``. Every dataset yields ``(image, label)``
with ``image`` a float32 ``[3, H, W]`` tensor in ``[0, 1]`` at the dataset's own resolution.
"""

from mmcoa.data import fashion_mnist, synthetic, torchvision_sets  # noqa: F401  (register)
from mmcoa.data.base import DATASETS, DEFAULT_TEMPLATE, ClassificationDataset, clean_classname
from mmcoa.data.catalog import describe_datasets, load_dataset

__all__ = [
    "DATASETS", "DEFAULT_TEMPLATE", "ClassificationDataset", "clean_classname",
    "describe_datasets", "load_dataset",
]
