"""Checking a requested device before any work starts."""

from __future__ import annotations

import torch

from mmcoa.errors import MmcoaError


def usable_devices() -> list[str]:
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return ["cpu"] + (["cuda"] if count else []) + [f"cuda:{i}" for i in range(count)]


def check_device(device: str) -> str:
    """Return ``device`` if it exists here, else raise a one-line error listing those that do."""
    if device not in usable_devices():
        raise MmcoaError(f"device {device!r} is not available here; usable: "
                         f"{', '.join(usable_devices())}")
    return device
