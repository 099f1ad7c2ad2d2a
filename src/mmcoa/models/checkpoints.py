"""Reading local weight files with one-line errors for missing, corrupt or mismatched files.

A weight file may carry *build metadata* (today: the open_clip activation, ``quick_gelu``) that
the architecture name alone does not fix: in a training checkpoint under ``model_meta``, for a
plain state dict (``final.pt``, which open_clip loads as is) in a sidecar ``<file>.json``.
"""

from __future__ import annotations

import json
import os
from typing import Mapping

import torch
from torch import nn

from mmcoa.errors import MmcoaError

ACCEPTED = "a state dict saved with torch.save (.pt/.pth/.bin) or a .safetensors file"


def require_file(path: str, what: str) -> None:
    if not os.path.isfile(path):
        raise MmcoaError(f"{what} checkpoint {path!r} does not exist; expected {ACCEPTED}")


META_KEY = "model_meta"


def meta_sidecar(path: str | os.PathLike) -> str:
    """The sidecar file that holds the build metadata of the plain state dict at ``path``."""
    return f"{os.fspath(path)}.json"


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Load a state dict (plain, or nested under 'state_dict'/'model', DDP 'module.' prefixes
    stripped) from ``path``; a file that is not one raises a one-line error."""
    return read_checkpoint(path)[0]


def read_checkpoint(path: str) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict, build metadata) of ``path``; the metadata is ``{}`` when the file records
    none (a checkpoint from another tool, or one written before metadata existed)."""
    payload = _load_payload(path)
    return _unwrap(payload, path), _meta(payload, path)


def read_meta(path: str) -> dict:
    """The build metadata of ``path`` alone (its tensors memory-mapped, not read; a
    .safetensors file keeps its metadata in the sidecar)."""
    return _meta({} if path.endswith(".safetensors") else _load_payload(path, mmap=True), path)


def _meta(payload: object, path: str) -> dict:
    meta = payload.get(META_KEY) if isinstance(payload, Mapping) else None
    return meta if isinstance(meta, dict) else _read_sidecar(path)


TRAINING_KEY = "training"  # the sidecar's record of the run that made the weights


def training_of(path: str | None) -> dict | None:
    """What a training run's sidecar (``final.pt.json``) says made the weights at ``path``:
    method, profile and behaviour switches (``mmcoa.profiles``); None for weights without one
    (a tag, a hub id, a file from another tool). Reads the small JSON sidecar only."""
    if not path or not os.path.isfile(path):
        return None
    return _read_sidecar(path).get(TRAINING_KEY)


def _read_sidecar(path: str) -> dict:
    sidecar = meta_sidecar(path)
    if not os.path.isfile(sidecar):
        return {}
    try:
        meta = json.loads(open(sidecar).read())
    except (OSError, ValueError) as error:
        raise MmcoaError(
            f"model metadata {sidecar!r} is unreadable ({type(error).__name__}); "
            f"remove it or restore it from the run"
        ) from error
    return meta if isinstance(meta, dict) else {}


def _load_payload(path: str, mmap: bool = False):
    """What ``path`` holds; ``mmap`` maps a zip checkpoint's tensors instead of reading them (a
    legacy non-zip file is then read whole)."""
    require_file(path, "model")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path)
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except RuntimeError as error:
        if mmap and "mmap" in str(error):
            return _load_payload(path)
        raise _unreadable(path, error) from error
    except Exception as error:
        raise _unreadable(path, error) from error


def _unreadable(path: str, error: BaseException) -> MmcoaError:
    return MmcoaError(
        f"checkpoint {path!r} is corrupt or unreadable ({type(error).__name__}); expected {ACCEPTED}"
    )


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
        raise _does_not_fit(path, model_name, module.state_dict(), state) from error


def check_fits(
    own: Mapping[str, torch.Tensor], path: str, model_name: str, layout=lambda state: state
) -> None:
    """Raise the one-line error :func:`load_into` would, from the file's header alone: its keys
    and shapes (``read_shapes``; ``layout`` maps them as the loader maps the state dict)."""
    given = layout(read_shapes(path))
    if _shapes(own) != _shapes(given):
        raise _does_not_fit(path, model_name, own, given)


def _does_not_fit(path: str, model_name: str, own, given) -> MmcoaError:
    return MmcoaError(
        f"checkpoint {path!r} does not fit model {model_name}: "
        f"{_mismatch(_shapes(own), _shapes(given))}; {_what_fits(path, model_name)}"
    )


def _what_fits(path: str, model_name: str) -> str:
    """Which model the file loads into: the architecture its build metadata says it was saved
    from, when it records one; else the model it had to fit."""
    saved_from = read_meta(path).get("architecture")
    if saved_from and saved_from != model_name:
        return f"the file was saved from {saved_from}: load it as model {saved_from}"
    unrecorded = "" if saved_from else " (the file does not record its architecture)"
    return f"expected a state dict saved from {model_name}{unrecorded}"


def read_shapes(path: str) -> dict[str, torch.Tensor]:
    """The state dict of ``path`` without reading its tensors' data where the format allows
    (safetensors headers, memory-mapped zip checkpoints): a cheap up-front check that the file
    is whole and what it holds. A file that is not readable raises the one-line error."""
    if not path.endswith(".safetensors"):
        return _unwrap(_load_payload(path, mmap=True), path)
    require_file(path, "model")
    try:
        from safetensors import safe_open

        with safe_open(path, "pt") as handle:
            return {k: torch.empty(handle.get_slice(k).get_shape(), device="meta") for k in handle.keys()}
    except Exception as error:
        raise _unreadable(path, error) from error


def _shapes(state: Mapping[str, torch.Tensor]) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in state.items()}


def _mismatch(own: dict[str, tuple], given: dict[str, tuple]) -> str:
    """What differs: missing/unexpected keys, else the first key whose shape differs."""
    missing, unexpected = sorted(set(own) - set(given)), sorted(set(given) - set(own))
    if missing or unexpected:
        return (
            f"missing {len(missing)} keys (e.g. {missing[:2]}), unexpected {len(unexpected)}"
            f" (e.g. {unexpected[:2]})"
        )
    for key, shape in own.items():
        if given[key] != shape:
            return f"{key} has shape {list(given[key])} in the file, {list(shape)} in the model"
    return "tensor shapes differ"
