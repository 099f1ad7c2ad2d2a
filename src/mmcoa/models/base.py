"""The one interface every CLIP-style backend implements.

Images enter as float tensors in [0, 1] at the dataset's own resolution; resizing to the model's
input size and mean/std normalization happen here, so attacks perturb and clamp pixels without
knowing the model. Texts enter as strings; tokenization also happens here.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mmcoa.errors import MmcoaError, UnknownNameError
from mmcoa.models.modes import outermost_modules
from mmcoa.models.weight_version import WeightVersioned

TOWERS = ("image", "text")
MAX_LOGIT_SCALE = 100.0
RESIZE_MODES = ("torch", "pil")


class VisionLanguageModel(WeightVersioned):
    """A CLIP-style dual encoder working on [0, 1] pixels and raw strings.

    Subclasses wrap a backend model as ``self.model`` and implement ``tokenize``,
    ``_encode_pixels`` (normalized pixels → features), ``_encode_tokens`` and
    ``_raw_logit_scale``; ``tower_prefixes`` maps each tower to the parameter-name prefixes
    (relative to ``self.model``) that belong to it. A backend whose image tower has patch tokens
    also implements ``check_image_tokens`` and ``_encode_pixel_tokens``
    (:meth:`encode_image_tokens`, which TGA-ZSR's attention maps need).

    The zero-shot logit of paper Eq. 1 is ``logit_scale · cos(encode_image(x), encode_text(t))``.
    Caches of what the weights compute key on :meth:`text_fingerprint`
    (:mod:`mmcoa.models.weight_version`).
    """

    tower_prefixes: dict[str, tuple[str, ...]] = {}

    def __init__(
        self,
        model: nn.Module,
        *,
        name: str,
        pretrained: str | None,
        image_size: int | tuple[int, int],
        mean: Sequence[float],
        std: Sequence[float],
    ):
        super().__init__()
        self.model = model
        self.name = name
        self.pretrained = pretrained
        self.image_size = _as_pair(image_size)
        self.register_buffer("pixel_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.visual_prompt: nn.Module | None = None
        self.trained_with: dict | None = None  # set by load_model from a run's sidecar
        self.text_prompt: nn.Module | None = None
        self.resize = "torch"

    def copy_memo(self) -> dict:
        """A ``copy.deepcopy`` memo under which a copy of this model (or of an object holding it)
        shares the tokenizer and its token cache instead of copying them: they follow from the
        model's name, not its weights, and copying open_clip's BPE tables takes ten times as
        long as copying a tiny model (``copy.deepcopy(model, memo=model.copy_memo())``)."""
        shared = (getattr(self, "tokenizer", None), getattr(self, "token_cache", None))
        return {id(item): item for item in shared if item is not None}

    # -- backend hooks -------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _encode_tokens(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def _raw_logit_scale(self) -> torch.Tensor:
        """The learnable log-temperature parameter."""
        raise NotImplementedError

    def token_embedding(self) -> nn.Embedding:
        """The text tower's token-embedding table (where a ``text_prompt`` acts)."""
        raise NotImplementedError

    def check_image_tokens(self) -> None:
        """A one-line error unless :meth:`encode_image_tokens` works for this model (backends
        whose image tower is a ViT override it); cheap, so callers check before any work."""
        raise MmcoaError(
            f"model {self.name} does not give its image tower's patch tokens (a ViT image tower "
            "of the open_clip or transformers backend does)"
        )

    def _encode_pixel_tokens(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalized pixels → (pooled embedding [B, D], patch tokens [B, P, D] in the joint
        space); see :meth:`encode_image_tokens`."""
        raise NotImplementedError

    # -- public interface ----------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def resize(self) -> str:
        """How :meth:`preprocess` resizes: ``"torch"`` or ``"pil"`` (see :func:`resize_images`)."""
        return self._resize

    @resize.setter
    def resize(self, mode: str) -> None:
        check_resize_mode(mode)
        self._resize = mode

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Resize [0, 1] images to the model's input size (bicubic) and normalize them."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise MmcoaError(f"images must have shape [batch, 3, H, W]; got {list(images.shape)}")
        images = resize_images(images, self.image_size, self.resize)
        return (images - self.pixel_mean) / self.pixel_std

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Image embeddings for [0, 1] images of shape [batch, 3, H, W] at any resolution.

        A ``visual_prompt`` module, when set (visual prompting), is part of the model, so attacks
        see the prompted model; it acts where its ``space`` attribute says: ``"pixels"`` (the
        default) on the [0, 1] images before :meth:`preprocess`, ``"normalized"`` on its output."""
        features = self._encode_pixels(self._prompted_input(images.to(self.device)))
        return F.normalize(features, dim=-1) if normalize else features

    def encode_image_tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(pooled, patches)`` for [0, 1] images of shape [batch, 3, H, W], from one forward pass.

        ``pooled`` [B, D] is :meth:`encode_image`'s embedding; ``patches`` [B, P, D] are the last
        layer's patch tokens (no class token) through the same final norm and projection as the
        pooled token, so they live in the joint image-text space, in row-major order of the
        patch grid. A ``visual_prompt`` acts as in :meth:`encode_image`. A model whose image
        tower gives no patch tokens raises a one-line :class:`MmcoaError` first
        (:meth:`check_image_tokens`)."""
        self.check_image_tokens()
        return self._encode_pixel_tokens(self._prompted_input(images.to(self.device)))

    def _prompted_input(self, images: torch.Tensor) -> torch.Tensor:
        """The normalized model input for [0, 1] ``images``, with the visual prompt applied in
        its space (``mmcoa.models.prompts.PROMPT_SPACES``)."""
        prompt = self.visual_prompt
        space = None if prompt is None else getattr(prompt, "space", "pixels")
        if space not in (None, "pixels", "normalized"):
            raise MmcoaError(
                f"visual prompt {type(prompt).__name__} has unknown space {space!r}; "
                "known: pixels, normalized"
            )
        if space == "pixels":
            images = prompt(images)
        pixels = self.preprocess(images)
        return prompt(pixels) if space == "normalized" else pixels

    def encode_text(self, texts: Sequence[str], normalize: bool = False) -> torch.Tensor:
        """Text embeddings for a list of strings.

        A ``text_prompt`` module, when set (adversarial prompt tuning), rewrites the token
        embeddings of the prompts it owns, so attacks see the prompted model."""
        if isinstance(texts, str):
            raise MmcoaError("encode_text takes a list of strings, not one string")
        tokens = {k: v.to(self.device) for k, v in self.tokenize(list(texts)).items()}
        with self._text_prompt_applied():
            features = self._encode_tokens(tokens)
        return F.normalize(features, dim=-1) if normalize else features

    @contextlib.contextmanager
    def _text_prompt_applied(self):
        """While encoding, route the token embeddings through ``text_prompt`` (a temporary
        forward hook, so copies of the model carry no stale hook)."""
        if self.text_prompt is None:
            yield
            return
        prompt = self.text_prompt
        handle = self.token_embedding().register_forward_hook(
            lambda module, args, output: prompt(args[0], output)
        )
        try:
            yield
        finally:
            handle.remove()

    @property
    def logit_scale(self) -> torch.Tensor:
        """exp(log-temperature), clamped at 100 as CLIP does during training."""
        return self._raw_logit_scale().exp().clamp(max=MAX_LOGIT_SCALE)

    def clamp_logit_scale(self) -> None:
        """Clamp the learnable log-temperature at log(100) in place, as CLIP's training does
        after each optimizer step (no gradient is recorded)."""
        with torch.no_grad():
            self._raw_logit_scale().clamp_(max=math.log(MAX_LOGIT_SCALE))

    def tower_parameters(self, tower: str) -> Iterator[tuple[str, nn.Parameter]]:
        """(name, parameter) pairs of the ``"image"`` or ``"text"`` tower."""
        if tower not in TOWERS:
            raise UnknownNameError(f"unknown tower {tower!r}; known: {', '.join(TOWERS)}")
        prefixes = self.tower_prefixes[tower]
        for name, param in self.model.named_parameters():
            if name.startswith(prefixes):
                yield name, param

    def tower_modules(self, tower: str) -> list[nn.Module]:
        """The outermost submodules of ``self.model`` that belong to the ``"image"`` or ``"text"``
        tower (named by ``tower_prefixes``)."""
        if tower not in TOWERS:
            raise UnknownNameError(f"unknown tower {tower!r}; known: {', '.join(TOWERS)}")
        prefixes = self.tower_prefixes[tower]
        return outermost_modules(self.model, lambda name, _: bool(name) and f"{name}.".startswith(prefixes))

    def set_trainable(self, towers: Sequence[str]) -> None:
        """Let gradients reach only the named towers (the shared logit scale stays trainable
        whenever any tower is)."""
        for unknown in set(towers) - set(TOWERS):
            raise UnknownNameError(f"unknown tower {unknown!r}; known: {', '.join(TOWERS)}")
        self.model.requires_grad_(False)
        for tower in towers:
            for _, param in self.tower_parameters(tower):
                param.requires_grad_(True)
        self._raw_logit_scale().requires_grad_(bool(towers))

    def text_fingerprint(self) -> tuple:
        """A key for caches of text embeddings and adversarial prompts: it changes whenever the
        text tower or a text prompt may have changed (:mod:`mmcoa.models.weight_version`)."""
        params = [p for _, p in self.tower_parameters("text")]
        if self.text_prompt is not None:
            params += list(self.text_prompt.parameters())
        return self.weights_key(params)

    def build_meta(self) -> dict:
        """What the weights need beside the architecture name to be rebuilt exactly (recorded
        with every export, read back by the loader; see ``models/checkpoints.py``)."""
        return {"architecture": self.name}

    def describe_build(self) -> dict:
        """What a result record says about how the model was built and fed (and, for weights
        an ``mmcoa train`` run made, ``trained_with``: its method, profile and switches)."""
        trained = {"trained_with": self.trained_with} if self.trained_with else {}
        return {**self.build_meta(), "resize": self.resize, **trained}

    def describe(self) -> str:
        return f"{self.name} ({self.pretrained or 'random init'})"


def check_resize_mode(mode: str) -> None:
    if mode not in RESIZE_MODES:
        raise UnknownNameError(f"unknown resize mode {mode!r}; known: {', '.join(RESIZE_MODES)}")


def resize_images(images: torch.Tensor, size: tuple[int, int], mode: str = "torch") -> torch.Tensor:
    """Bicubic resize of [0, 1] images to ``size`` (differentiable; identity at that size).

    - ``"torch"`` (default; what the published TeCoA/MMCoA code does): ``F.interpolate`` bicubic
      (Keys kernel, a = -0.75), antialiased only when shrinking, *not* clamped, so upsampled
      pixels overshoot to about [-0.2, 1.2] near edges.
    - ``"pil"`` (what open_clip's and clip_benchmark's PIL transforms compute, up to PIL's 8-bit
      rounding, within about 1/255): PIL's separable bicubic (a = -0.5, torch's antialiased
      kernel) applied to the width, then the height, each pass clamped to [0, 1] as PIL's uint8
      buffers are.
    """
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    if mode == "pil":
        wide = F.interpolate(
            images, size=(images.shape[-2], size[1]), mode="bicubic", align_corners=False, antialias=True
        ).clamp(0, 1)
        return F.interpolate(wide, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    shrinking = images.shape[-1] > size[1] or images.shape[-2] > size[0]
    return F.interpolate(images, size=size, mode="bicubic", align_corners=False, antialias=shrinking)


def _as_pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    return (int(size[0]), int(size[1]))
