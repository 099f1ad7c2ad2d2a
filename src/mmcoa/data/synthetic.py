"""A tiny generated dataset for tests and smoke runs: coloured wave patterns, one per class."""

from __future__ import annotations

import math
import torch

from mmcoa.data.base import DatasetSpec, TensorClassificationDataset, register_dataset
from mmcoa.errors import MmcoaError

NAME = "synthetic"
SPLITS = ("train", "test")
COLOURS = {
    "red": (0.9, 0.1, 0.1),
    "green": (0.1, 0.8, 0.2),
    "blue": (0.1, 0.2, 0.9),
    "yellow": (0.9, 0.85, 0.1),
    "purple": (0.55, 0.15, 0.75),
    "orange": (1.0, 0.55, 0.05),
    "cyan": (0.1, 0.85, 0.9),
    "pink": (1.0, 0.5, 0.75),
}
PATTERNS = {  # each maps (y, x, phase) grids to values in [-1, 1]
    "stripe": lambda y, x, p: torch.sin(6 * math.pi * y + p),
    "bar": lambda y, x, p: torch.sin(6 * math.pi * x + p),
    "checkerboard": lambda y, x, p: torch.sin(4 * math.pi * x + p) * torch.sin(4 * math.pi * y + p),
    "ring": lambda y, x, p: torch.sin(8 * math.pi * torch.hypot(y - 0.5, x - 0.5) + p),
}
MAX_CLASSES = len(COLOURS) * len(PATTERNS)
NOISE = 0.03


def class_style(index: int) -> tuple[str, str]:
    """The (colour, pattern) of class ``index``; all :data:`MAX_CLASSES` pairs differ, and the
    first four classes differ in both colour and pattern."""
    colour = index % len(COLOURS)
    pattern = (index % len(PATTERNS) + index // len(COLOURS)) % len(PATTERNS)
    return list(COLOURS)[colour], list(PATTERNS)[pattern]


def _check_options(n_samples: int, n_classes: int, image_size: int) -> None:
    """Reject sizes the generator cannot honour, before generating anything."""
    if not 1 <= n_classes <= MAX_CLASSES:
        raise MmcoaError(f"synthetic n_classes must be between 1 and {MAX_CLASSES}, got {n_classes}")
    if n_samples < 1:
        raise MmcoaError(f"synthetic n_samples must be at least 1, got {n_samples}")
    if image_size < 4:
        raise MmcoaError(f"synthetic image_size must be at least 4, got {image_size}")


def generate(
    labels: torch.Tensor, styles: list[tuple[str, str]], image_size: int, generator: torch.Generator
) -> torch.Tensor:
    """Float images ``[N, 3, S, S]`` in ``[0, 1]``: each class's colour shaded by its pattern
    (random phase per image) plus a little Gaussian noise."""
    n = len(labels)
    grid = torch.linspace(0, 1, image_size)
    y, x = torch.meshgrid(grid, grid, indexing="ij")
    phase = torch.rand(n, 1, 1, generator=generator) * 2 * math.pi
    shade = torch.empty(n, image_size, image_size)
    colour = torch.empty(n, 3)
    for label, (colour_name, pattern_name) in enumerate(styles):
        rows = (labels == label).nonzero().squeeze(1)
        shade[rows] = 0.35 + 0.325 * (1 + PATTERNS[pattern_name](y, x, phase[rows]))
        colour[rows] = torch.tensor(COLOURS[colour_name])
    images = colour[:, :, None, None] * shade[:, None]
    images += NOISE * torch.randn(images.shape, generator=generator)
    return images.clamp_(0, 1)


def load(
    split: str,
    root: str | None,
    download: bool,
    seed: int = 0,
    n_samples: int = 64,
    n_classes: int = 4,
    image_size: int = 32,
) -> TensorClassificationDataset:
    """Generate the split deterministically from ``seed`` (train and test use different streams).
    ``root`` and ``download`` are ignored."""
    _check_options(n_samples, n_classes, image_size)
    generator = torch.Generator().manual_seed(2 * seed + SPLITS.index(split))
    labels = torch.randperm(n_samples, generator=generator) % n_classes
    styles = [class_style(i) for i in range(n_classes)]
    images = generate(labels, styles, image_size, generator)
    return TensorClassificationDataset(
        images, labels, name=NAME, split=split, classnames=[f"{c} {p}" for c, p in styles]
    )


register_dataset(
    DatasetSpec(
        name=NAME,
        splits=SPLITS,
        n_classes=4,
        load=load,
        found=lambda root: True,
        options=("seed", "n_samples", "n_classes", "image_size"),
        description="generated coloured wave patterns (options: seed, n_samples, n_classes, "
        "image_size); no files needed",
    )
)
