"""``imagefolder:<path>``: any ``<path>/<class>/<image>`` tree, read with torchvision's ImageFolder."""

from __future__ import annotations

from pathlib import Path

from torchvision import transforms
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from mmcoa.data.base import WrappedClassificationDataset, require_dir, to_image_tensor
from mmcoa.errors import MmcoaError

PREFIX = "imagefolder:"
IMAGE_SIZE = (224, 224)
TRANSFORM = transforms.Compose(
    [
        transforms.Resize(256),
        transforms.CenterCrop(IMAGE_SIZE),
        to_image_tensor,
    ]
)


def split_folder(path: Path, split: str) -> Path:
    """``path/split`` when that folder exists, else ``path`` itself."""
    candidate = path / split
    return candidate if candidate.is_dir() else path


def load(spec: str, split: str) -> WrappedClassificationDataset:
    """Load ``imagefolder:<path>``; class names are the cleaned sub-folder names."""
    name = f"{PREFIX}{spec}"
    if not spec:
        raise MmcoaError(f"dataset {name!r} names no folder; use imagefolder:<path>")
    path = Path(spec).expanduser()
    require_dir(path, name, "imagefolder:<path> needs a folder of <class>/<image> sub-folders")
    folder = split_folder(path, split)
    empty = MmcoaError(
        f"dataset {name} is empty: no <class>/<image> files under {folder}; expected "
        f"{path}/[{split}/]<class name>/<image>{'|'.join(IMG_EXTENSIONS)}"
    )
    try:
        inner = ImageFolder(str(folder), transform=TRANSFORM, allow_empty=True)
    except FileNotFoundError:
        raise empty from None
    if len(inner) == 0:
        raise empty
    return WrappedClassificationDataset(
        inner, name=name, split=split, classnames=inner.classes, image_size=IMAGE_SIZE
    )
