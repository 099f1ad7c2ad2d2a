"""Image-classification datasets for zero-shot evaluation.

Use :func:`load_dataset` with a name from :data:`DATASETS` (``fashion_mnist``, ``cifar10``,
``cifar100``, ``synthetic``, the paper's benchmarks ``stl10``, ``food101``, ``oxford_pets``,
``flowers102``, ``dtd``, ``eurosat``, ``fgvc_aircraft``, ``sun397``, ``country211``,
``caltech101``, ``caltech256``, ``tiny_imagenet``, ``imagenet``) or ``imagefolder:<path>``. Every
dataset yields ``(image, label)`` with ``image`` a float32 ``[3, H, W]`` tensor in ``[0, 1]`` at
the dataset's own resolution (native for CIFAR, STL10 and TinyImageNet, a 224 centre crop of the
256-resized image for the other benchmarks). :func:`published_dataset_options` names the options
that give a dataset the published code's preprocessing instead (``docs/deviations.md``).
"""

from mmcoa.data import (  # noqa: F401  (register)
    fashion_mnist,
    imagenet_sets,
    paper_sets,
    synthetic,
    torchvision_sets,
)
from mmcoa.data.base import DATASETS, DEFAULT_TEMPLATE, ClassificationDataset, clean_classname
from mmcoa.data.catalog import describe_datasets, load_dataset, published_dataset_options
from mmcoa.data.coco import RetrievalDataset, load_coco_karpathy

__all__ = [
    "DATASETS",
    "DEFAULT_TEMPLATE",
    "ClassificationDataset",
    "RetrievalDataset",
    "clean_classname",
    "describe_datasets",
    "load_coco_karpathy",
    "load_dataset",
    "published_dataset_options",
]
