"""Checking a requested device before any work starts; ``auto`` is CUDA when available."""

from __future__ import annotations

import torch

from mmcoa.errors import MmcoaError

AUTO = "auto"  # every command's default device: cuda when a GPU is usable, else cpu


def usable_devices() -> list[str]:
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return ["cpu"] + (["cuda"] if count else []) + [f"cuda:{i}" for i in range(count)]


def resolve_device(device: str) -> str:
    """``device``, with ``auto`` resolved to ``cuda`` when a GPU is usable, else ``cpu``."""
    if device == AUTO:
        return "cuda" if "cuda" in usable_devices() else "cpu"
    return device


def check_device(device: str) -> str:
    """``device`` (``auto`` resolved) if it exists here, else a one-line error listing those
    that do."""
    resolved = resolve_device(device)
    if resolved not in usable_devices():
        raise MmcoaError(
            f"device {device!r} is not available here; usable: {', '.join(usable_devices())}, {AUTO}"
        )
    return resolved
