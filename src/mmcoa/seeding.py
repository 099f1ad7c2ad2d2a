"""Seeded random generators derived from integers, so no generator state needs saving: a run
resumed at a step, or a record recomputed later, draws the same numbers."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

# The third part of a training run's derived seeds (seed, step or item, stream): one stream per
# kind of draw, so that no two kinds ever share numbers.
ATTACK_STREAM = 1  # the training attack's random starts, per step
ADVPT_STREAM = 2  # AdvPT's adversarial images, made once per chunk of items
DROPOUT_STREAM = 3  # the global generators (dropout masks), per step
VP_STREAM = 4  # the published visual prompt's N(0, 1) start, once per run


def derived_seed(*parts: int) -> int:
    """One seed from integers (e.g. the run's seed, the step and a stream number)."""
    seed = 0
    for part in parts:
        seed = (seed * 1_000_003 + int(part)) % (2**63 - 1)
    return seed


def derived_generator(*parts: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A generator on ``device`` seeded from integers (e.g. seed and step): no state to save.
    Attacks draw their random starts on the images' device, so they need a generator there."""
    return torch.Generator(device=device).manual_seed(derived_seed(*parts))


@contextlib.contextmanager
def seeded_global_rng(*parts: int, device: str | torch.device = "cpu") -> Iterator[None]:
    """Run a block with torch's global generators seeded from integers, then give them back the
    state they had: the draws that take no generator argument (dropout masks) become a function
    of ``parts`` alone, whatever ran before in the process (an earlier run, a resume, another
    hash seed). The CPU generator is forked, and ``device``'s when it is a CUDA device."""
    with torch.random.fork_rng(devices=_cuda_indices(torch.device(device))):
        torch.manual_seed(derived_seed(*parts))
        yield


def _cuda_indices(device: torch.device) -> list[int]:
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]
