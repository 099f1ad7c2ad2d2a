"""Model layer: one interface for CLIP-style models whatever the backend.

Name resolution in :func:`load_model`:

- ``tiny-clip`` / ``tiny-clip-hf``: tiny random-init models (open_clip / transformers);
- ``hf:<id or directory>`` or a local directory holding ``config.json``: transformers CLIPModel;
- ``hf-hub:<org>/<name>``: open_clip weights on the Hugging Face hub;
- any open_clip architecture (``ViT-B-32``...) with ``pretrained`` a tag, a checkpoint path
  or ``"random"``.
"""

from __future__ import annotations

import os

from mmcoa.errors import UnknownNameError
from mmcoa.models.base import RESIZE_MODES, TOWERS, VisionLanguageModel, check_resize_mode
from mmcoa.models.open_clip_backend import (TINY_ARCHITECTURES, is_open_clip_name, load_open_clip,
                                            open_clip_registered)
from mmcoa.models.zeroshot import ZeroShotClassifier

open_clip_registered()  # registers the tiny configurations with open_clip at import

__all__ = ["RESIZE_MODES", "TOWERS", "VisionLanguageModel", "ZeroShotClassifier", "load_model",
           "check_checkpoint", "list_models", "validate_model_name"]

HF_PREFIX = "hf:"


def load_model(name: str, pretrained: str | None = None, device: str = "cpu",
               resize: str = "torch") -> VisionLanguageModel:
    """Load a CLIP-style model by name; see the module docstring for accepted names.
    ``resize`` picks the bicubic resize of :func:`mmcoa.models.base.resize_images`."""
    check_resize_mode(resize)
    model = _load_backend(name, pretrained, device)
    model.resize = resize
    return model


def _load_backend(name: str, pretrained: str | None, device: str) -> VisionLanguageModel:
    from mmcoa.models.tiny import TINY_HF, load_tiny_hf

    validate_model_name(name)
    if name == TINY_HF:
        return load_tiny_hf(pretrained, device)
    if name.startswith(HF_PREFIX) or _is_hf_directory(name):
        from mmcoa.models.hf_backend import load_hf_clip

        return load_hf_clip(name.removeprefix(HF_PREFIX), device)
    return load_open_clip(name, pretrained, device)


def check_checkpoint(name: str, path: str) -> None:
    """Raise the one-line error loading ``path`` as ``name`` would raise (missing, truncated or
    corrupt file; keys or shapes that do not fit), cheaply and before any work: open_clip
    architectures are checked from the file's header, other backends by reading the file."""
    from mmcoa.models.checkpoints import read_shapes

    validate_model_name(name)
    if is_open_clip_name(name) and not name.startswith("hf-hub:"):
        from mmcoa.models.open_clip_backend import check_open_clip_checkpoint

        check_open_clip_checkpoint(name, path)
    else:
        read_shapes(path)


def validate_model_name(name: str) -> None:
    """Raise a one-line error listing what is accepted unless ``name`` resolves to a backend."""
    if name.startswith(HF_PREFIX) or _is_hf_directory(name) or name == "tiny-clip-hf":
        return
    if not is_open_clip_name(name):
        raise UnknownNameError(
            f"unknown model {name!r}; known: {', '.join(list_models())}, any open_clip "
            f"architecture (mmcoa models --all), hf-hub:<org>/<name>, hf:<id or directory>")


def list_models(include_open_clip: bool = False) -> list[str]:
    """The tiny models, plus every open_clip architecture when asked."""
    names = sorted({*TINY_ARCHITECTURES, "tiny-clip-hf"})
    if include_open_clip:
        import open_clip

        names += [n for n in open_clip.list_models() if n not in names]
    return names


def _is_hf_directory(name: str) -> bool:
    return os.path.isfile(os.path.join(name, "config.json"))
