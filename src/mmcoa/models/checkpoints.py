"""Reading local weight files with one-line errors for missing, corrupt or mismatched files."""

from __future__ import annotations

import os
from typing import Mapping

import torch
from torch import nn

from mmcoa.errors import MmcoaError

ACCEPTED = "a state dict saved with torch.save (.pt/.pth/.bin) or a .safetensors file"


def require_file(path: str, what: str) -> None:
    if not os.path.isfile(path):
        raise MmcoaError(f"{what} checkpoint {path!r} does not exist; expected {ACCEPTED}")


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Load a state dict (plain, or nested under 'state_dict'/'model', DDP 'module.' prefixes
    stripped) from ``path``; a file that is not one raises a one-line error."""
    require_file(path, "model")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise MmcoaError(f"checkpoint {path!r} is corrupt or unreadable "
                         f"({type(error).__name__}); expected {ACCEPTED}") from error
    return _unwrap(state, path)


def _unwrap(state: object, path: str) -> dict[str, torch.Tensor]:
    for key in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping) or not all(torch.is_tensor(v) for v in state.values()):
        raise MmcoaError(f"checkpoint {path!r} holds no state dict of tensors; expected {ACCEPTED}")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_into(module: nn.Module, state: dict[str, torch.Tensor], path: str, model_name: str) -> None:
    """``load_state_dict(strict=True)`` with a one-line error naming the mismatch."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:
        own = set(module.state_dict())
        missing, unexpected = sorted(own - set(state)), sorted(set(state) - own)
        detail = (f"missing {len(missing)} keys (e.g. {missing[:2]}), unexpected {len(unexpected)}"
                  f" (e.g. {unexpected[:2]})" if missing or unexpected else "tensor shapes differ")
        raise MmcoaError(f"checkpoint {path!r} does not fit model {model_name}: {detail}") from error
