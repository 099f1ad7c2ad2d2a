"""Model layer: one interface for CLIP-style models whatever the backend.

Names resolve through :func:`model_spec`:

- a name registered in :data:`MODELS`: the tiny models ``tiny-clip`` (open_clip) and
  ``tiny-clip-hf`` (transformers), random init or a checkpoint path; the demo's ``minilm-clip``
  when its text encoder's package is installed;
- ``hf:<id or directory>`` or a local directory holding ``config.json``: transformers CLIPModel;
- ``hf-hub:<org>/<name>``: open_clip weights on the Hugging Face hub;
- ``local-dir:<folder>``: an open_clip model folder (``open_clip_config.json`` and weights, such
  as a training run's ``export/``); ``pretrained`` a file or ``"random"`` replaces its weights;
- a zoo name (``fare2-vitl14``...; ``mmcoa zoo`` lists them): a published robust CLIP, built
  and loaded as its entry says (:mod:`mmcoa.models.zoo`), ``pretrained`` a local file instead;
- any architecture in open_clip's public ``list_models()`` (``ViT-B-32``..., and what was added
  with ``add_model_config``, such as ``minilm-clip``) with ``pretrained`` a tag, a checkpoint
  path or ``"random"``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from typing import Callable

from mmcoa.errors import UnknownNameError
from mmcoa.models.minilm import MINILM_CLIP
from mmcoa.models.base import RESIZE_MODES, TOWERS, VisionLanguageModel, check_resize_mode
from mmcoa.models.checkpoints import training_of
from mmcoa.models.open_clip_backend import (
    LOCAL_DIR,
    LOCAL_DIR_CONFIG,
    TINY_ARCHITECTURES,
    check_local_dir,
    is_open_clip_name,
    load_open_clip,
    open_clip_registered,
)
from mmcoa.models.zeroshot import ZeroShotClassifier
from mmcoa.models.zoo import is_zoo_name, zoo_hint
from mmcoa.registry import Registry

open_clip_registered()  # registers the tiny configurations with open_clip at import

__all__ = [
    "MODELS",
    "ModelSpec",
    "RESIZE_MODES",
    "TOWERS",
    "VisionLanguageModel",
    "ZeroShotClassifier",
    "check_checkpoint",
    "list_models",
    "load_model",
    "model_spec",
    "validate_model_name",
]

HF_PREFIX = "hf:"
HUB_PREFIX = "hf-hub:"


@dataclass(frozen=True)
class ModelSpec:
    """How to build one named model: ``load(pretrained, device)`` returns it (``pretrained``
    as in :func:`load_model`), ``check(path)`` raises the one-line error loading checkpoint
    ``path`` would raise, cheaply and before any work."""

    name: str
    backend: str  # "open_clip" or "transformers"
    load: Callable[[str | None, str], VisionLanguageModel]
    check: Callable[[str], None]


MODELS: Registry[ModelSpec] = Registry("model")


def load_model(
    name: str, pretrained: str | None = None, device: str = "cpu", resize: str = "torch"
) -> VisionLanguageModel:
    """Load a CLIP-style model by name; see the module docstring for accepted names.
    ``resize`` picks the bicubic resize of :func:`mmcoa.models.base.resize_images`; weights from
    an ``mmcoa train`` run carry ``trained_with`` (method, profile, switches: its sidecar's)."""
    check_resize_mode(resize)
    model = model_spec(name).load(pretrained, device)
    model.resize = resize
    model.trained_with = training_of(pretrained)
    return model


def model_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` ``name`` resolves to (module docstring), or a one-line error
    listing what is accepted."""
    if name in MODELS:
        return MODELS.get(name)
    if is_zoo_name(name):  # a published robust CLIP by name (mmcoa.models.zoo)
        return _zoo_spec(name)
    if name.startswith(HF_PREFIX) or _is_hf_directory(name):
        return _transformers_spec(name)
    if name.startswith(LOCAL_DIR):
        check_local_dir(name)
        return _open_clip_spec(name)
    if os.path.isfile(os.path.join(name, LOCAL_DIR_CONFIG)):
        raise UnknownNameError(f"model {name!r} is an open_clip model folder; pass it as {LOCAL_DIR}{name}")
    if is_open_clip_name(name):
        return _open_clip_spec(name)
    raise UnknownNameError(
        f"unknown model {name!r}; known: {', '.join(list_models())}, any open_clip "
        f"architecture (mmcoa models --all), {HUB_PREFIX}<org>/<name>, {LOCAL_DIR}<folder>, "
        f"{HF_PREFIX}<id or directory>, a zoo name (mmcoa zoo){zoo_hint(name)}"
    )


def _zoo_spec(name: str) -> ModelSpec:
    from mmcoa.models import zoo_load

    load, check = partial(zoo_load.load_zoo_model, name), partial(zoo_load.check_zoo_file, name)
    return ModelSpec(name, zoo_load.backend(name), load, check)


def check_checkpoint(name: str, path: str) -> None:
    """Raise the one-line error loading ``path`` as ``name`` would raise (missing, truncated or
    corrupt file; keys or shapes that do not fit), cheaply and before any work: open_clip
    architectures are checked from the file's header, other backends by reading the file."""
    model_spec(name).check(path)


def validate_model_name(name: str) -> None:
    """Raise a one-line error listing what is accepted unless ``name`` resolves to a backend."""
    model_spec(name)


def list_models(include_open_clip: bool = False) -> list[str]:
    """The registered (tiny) models, plus every open_clip architecture when asked."""
    names = MODELS.names()
    if include_open_clip:
        names += [n for n in open_clip_registered().list_models() if n not in names]
    return names


def _open_clip_spec(name: str) -> ModelSpec:
    return ModelSpec(name, "open_clip", partial(load_open_clip, name), partial(_check_open_clip, name))


def _check_open_clip(name: str, path: str) -> None:
    from mmcoa.models.checkpoints import read_shapes
    from mmcoa.models.open_clip_backend import check_open_clip_checkpoint

    if name.startswith(HUB_PREFIX):
        read_shapes(path)
    else:
        check_open_clip_checkpoint(name, path)


def _transformers_spec(name: str) -> ModelSpec:
    def load(pretrained: str | None, device: str) -> VisionLanguageModel:
        from mmcoa.models.hf_backend import load_hf_clip

        return load_hf_clip(name.removeprefix(HF_PREFIX), device)

    return ModelSpec(name, "transformers", load, _read_shapes)


def _load_tiny_hf(pretrained: str | None, device: str) -> VisionLanguageModel:
    from mmcoa.models.tiny import load_tiny_hf

    return load_tiny_hf(pretrained, device)


def _read_shapes(path: str) -> None:
    from mmcoa.models.checkpoints import read_shapes

    read_shapes(path)


def _is_hf_directory(name: str) -> bool:
    return os.path.isfile(os.path.join(name, "config.json"))


for _name in TINY_ARCHITECTURES:
    MODELS.register(_name)(_open_clip_spec(_name))
MODELS.register("tiny-clip-hf")(ModelSpec("tiny-clip-hf", "transformers", _load_tiny_hf, _read_shapes))
if MINILM_CLIP in open_clip_registered().list_models():  # its text encoder's package is installed
    MODELS.register(MINILM_CLIP)(_open_clip_spec(MINILM_CLIP))
