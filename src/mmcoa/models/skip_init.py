"""Building a model whose parameters a checkpoint is about to replace, without initializing them.

Random init is much of the time of a load from a file (``bench/model_load.py``; ViT-B-32: 0.84 s
against 1.79 s with it, docs/benchmarks.md), and :func:`~mmcoa.models.checkpoints.load_into` is
strict: every parameter is overwritten. While :func:`parameters_left_uninitialized` is active, ``torch.nn.init``'s
initializers leave *parameters* as they are (uninitialized memory until the load); buffers are
still initialized, since a non-persistent buffer (Hugging Face's ``token_type_ids``) is not in
the checkpoint. A library that keeps a reference to an initializer taken while the context is
active (transformers does, at its first import) keeps a wrapper that initializes normally once
the context has ended.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from typing import Callable, Iterator

import torch
from torch import nn

# torch.nn.init's in-place initializers (those transformers' no_init_weights also skips).
INITIALIZERS = (
    "uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
    "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_", "sparse_",
)  # fmt: skip
_active = threading.local()  # .depth: how many contexts are open in this thread


@contextlib.contextmanager
def parameters_left_uninitialized() -> Iterator[None]:
    """While active (in this thread), ``torch.nn.init``'s initializers skip ``nn.Parameter``s."""
    originals = {name: getattr(torch.nn.init, name) for name in INITIALIZERS}
    for name, original in originals.items():
        setattr(torch.nn.init, name, _skipping_parameters(original))
    _active.depth = getattr(_active, "depth", 0) + 1
    try:
        yield
    finally:
        _active.depth -= 1
        for name, original in originals.items():
            setattr(torch.nn.init, name, original)


def _skipping_parameters(original: Callable) -> Callable:
    @functools.wraps(original)
    def initialize(tensor, *args, **kwargs):
        if getattr(_active, "depth", 0) and isinstance(tensor, nn.Parameter):
            return tensor
        return original(tensor, *args, **kwargs)

    return initialize
