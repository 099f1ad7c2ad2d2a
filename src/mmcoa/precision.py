"""Numeric precision of model passes: the one list of names and the one autocast.

``fp32`` runs as is; ``bf16`` autocasts the model's forward and backward passes to bfloat16
(training steps, and image attacks, whose perturbation, projection and loss stay fp32).
"""

from __future__ import annotations

import contextlib

import torch

from mmcoa.errors import MmcoaError

PRECISIONS = ("fp32", "bf16")


def check_precision(precision: str) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else a one-line error."""
    if precision not in PRECISIONS:
        raise MmcoaError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    return precision


def autocast_for(precision: str, device: torch.device):
    """bf16 autocast on ``device`` for ``bf16``; a no-op context for ``fp32``."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
