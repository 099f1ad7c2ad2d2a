"""Seeded random generators derived from integers, so no generator state needs saving: a run
resumed at a step, or a record recomputed later, draws the same numbers."""

from __future__ import annotations

import torch


def derived_generator(*parts: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A generator on ``device`` seeded from integers (e.g. seed and step): no state to save.
    Attacks draw their random starts on the images' device, so they need a generator there."""
    seed = 0
    for part in parts:
        seed = (seed * 1_000_003 + int(part)) % (2**63 - 1)
    return torch.Generator(device=device).manual_seed(seed)
