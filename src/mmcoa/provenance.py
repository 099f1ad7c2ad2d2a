"""What decided a result: the versions of Python and of the packages every record, run and
analysis stores beside its numbers."""

from __future__ import annotations

import platform
from importlib import metadata

PACKAGES = ("mmcoa", "torch", "torchvision", "open_clip_torch", "transformers")


def versions() -> dict[str, str]:
    """Versions of Python and of the packages that decide a result."""
    found = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found
