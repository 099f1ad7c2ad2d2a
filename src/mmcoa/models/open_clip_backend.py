"""open_clip backend: architecture names with pretrained tags, ``hf-hub:`` ids, ``local-dir:``
model folders, local files.

**Model folders.** ``local-dir:/path`` is open_clip's own schema (3.x): ``open_clip_config.json``
(``model_cfg`` with its ``quick_gelu``, ``preprocess_cfg`` with mean and std), the weights
(``open_clip_model.safetensors``, or another ``*.safetensors``/``*.bin``/``*.pth``) and, for a
Hugging Face text tower, its tokenizer files. Every training run writes one (``export/``,
:mod:`mmcoa.train.export`); uploaded to the hub it is ``hf-hub:user/name``. ``--pretrained FILE``
or ``random`` replaces its weights.

**Activation.** OpenAI's CLIP weights (and several LAION/YFCC tags) were trained with QuickGELU,
but open_clip 3.x builds ``nn.GELU`` for ``ViT-B-32`` and only warns. We build what the weights
were trained with: the tag's ``quick_gelu``, a local checkpoint's recorded metadata
(:meth:`build_meta`), else the architecture's own setting (``docs/deviations.md``, row 10).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Sequence

import torch

from mmcoa.errors import MmcoaError, UnknownNameError
from mmcoa.models.base import VisionLanguageModel
from mmcoa.models.checkpoints import check_fits, load_into, read_checkpoint, require_file
from mmcoa.models.hub import fetching_weights, quiet_transformers_progress
from mmcoa.models.tokens import TokenCache, pad_rows
from mmcoa.models.minilm import register_minilm_clip
from mmcoa.models.skip_init import parameters_left_uninitialized

RANDOM = "random"
LOCAL_DIR = "local-dir:"
LOCAL_DIR_CONFIG = "open_clip_config.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth")
TINY_CONFIG_DIR = Path(__file__).parent / "configs"
TINY_ARCHITECTURES = tuple(sorted(p.stem for p in TINY_CONFIG_DIR.glob("*.json")))


def open_clip_registered():
    """open_clip with the tiny configurations registered (through its public
    ``add_model_config``/``list_models``), so plain ``open_clip.create_model('tiny-clip')``
    works as soon as :mod:`mmcoa` is imported."""
    import open_clip

    if not set(TINY_ARCHITECTURES) <= set(open_clip.list_models()):
        open_clip.add_model_config(TINY_CONFIG_DIR)
    register_minilm_clip(open_clip)  # minilm-clip, when its text encoder's package is installed
    return open_clip


class OpenClipModel(VisionLanguageModel):
    """An ``open_clip`` CLIP (or CustomTextCLIP) behind the [0, 1]-pixel interface."""

    tower_prefixes = {
        "image": ("visual.",),
        "text": (
            "transformer.",
            "token_embedding.",
            "positional_embedding",
            "ln_final.",
            "text_projection",
            "text.",
        ),
    }

    def __init__(self, model, tokenizer, *, name: str, pretrained: str | None):
        cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
        super().__init__(
            model,
            name=name,
            pretrained=pretrained,
            image_size=model.visual.image_size,
            mean=cfg.get("mean", (0.48145466, 0.4578275, 0.40821073)),
            std=cfg.get("std", (0.26862954, 0.26130258, 0.27577711)),
        )
        self.tokenizer = tokenizer
        self.token_cache = TokenCache()
        self.trims_text = _trims_text(model)

    @property
    def quick_gelu(self) -> bool:
        """Whether the towers use QuickGELU (what OpenAI's weights were trained with)."""
        from open_clip.transformer import QuickGELU

        return any(isinstance(module, QuickGELU) for module in self.model.modules())

    def build_meta(self) -> dict:
        return {"architecture": self.name, "quick_gelu": self.quick_gelu}

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Token ids, each string tokenized once (:class:`TokenCache`); for a causal text tower
        with end-of-text pooling the batch is only as long as its longest prompt."""
        rows = self.token_cache.rows(self.tokenizer, list(texts), self._tokenize_rows)
        return {"text": pad_rows(rows, pad_id=0)[0]}

    def _tokenize_rows(self, texts: list[str]) -> list[torch.Tensor]:
        full = self.tokenizer(texts)
        if not self.trims_text:
            return list(full)
        return [row[: int(row.argmax()) + 1] for row in full]  # up to the end token (largest id)

    def _encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)

    def check_image_tokens(self) -> None:
        """Patch tokens come from open_clip's ``VisionTransformer`` pooled at its class token or
        by averaging, with ``ln_post`` before the pool (not timm or ResNet towers, not CoCa's
        attentional pool)."""
        from open_clip.transformer import VisionTransformer

        visual = self.model.visual
        if not (
            isinstance(visual, VisionTransformer)
            and visual.attn_pool is None
            and visual.pool_type in ("tok", "avg")
            and not visual.final_ln_after_pool
        ):
            raise MmcoaError(
                f"model {self.name} does not give its image tower's patch tokens: they need open_clip's "
                f"VisionTransformer with a class-token or average pool (its tower: {type(visual).__name__})"
            )

    def _encode_pixel_tokens(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The tower's own forward with ``output_tokens`` on (open_clip 3.x: the pooled embedding
        and the ``ln_post``-normalized patch tokens), the tokens then through ``proj`` as the
        pooled token is."""
        visual = self.model.visual
        with _output_tokens(visual):
            pooled, patches = visual(pixels)
        return pooled, patches if visual.proj is None else patches @ visual.proj

    def _encode_tokens(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        text = tokens["text"]
        if not self.trims_text or text.shape[1] == self.model.context_length:
            return self.model.encode_text(text)
        return _encode_trimmed(self.model, text)

    def _raw_logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale

    def token_embedding(self):
        text = getattr(self.model, "text", self.model)  # CustomTextCLIP keeps it in .text
        return text.token_embedding


@contextlib.contextmanager
def _output_tokens(visual):
    """open_clip's ``VisionTransformer`` returning ``(pooled, tokens)`` while inside (its
    ``output_tokens`` flag, restored after)."""
    previous = visual.output_tokens
    visual.output_tokens = True
    try:
        yield
    finally:
        visual.output_tokens = previous


def _trims_text(model) -> bool:
    """Whether ``model``'s text tower is open_clip's causal CLIP transformer pooled at the end
    token (what makes encoding at the batch's own length exact)."""
    from open_clip.model import CLIP

    return (
        type(model) is CLIP
        and getattr(model, "attn_mask", None) is not None
        and getattr(model, "text_pool_type", None) in ("argmax", "eos")
    )


def _encode_trimmed(model, text: torch.Tensor) -> torch.Tensor:
    """open_clip's ``CLIP.encode_text`` for ids shorter than the context: the positional
    embedding and the causal mask cut to the batch's length."""
    from open_clip.transformer import text_global_pool

    length = text.shape[1]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(text).to(cast_dtype) + model.positional_embedding[:length].to(cast_dtype)
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:length, :length]))
    x = text_global_pool(x, text, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    if model.text_projection is None:
        return x
    return (
        model.text_projection(x)
        if isinstance(model.text_projection, torch.nn.Linear)
        else x @ model.text_projection
    )


def is_open_clip_name(name: str) -> bool:
    return name.startswith(("hf-hub:", LOCAL_DIR)) or name in open_clip_registered().list_models()


def check_local_dir(name: str) -> Path:
    """The folder of a ``local-dir:`` model, or a one-line error when it is not a model folder."""
    folder = Path(name.removeprefix(LOCAL_DIR))
    if not (folder / LOCAL_DIR_CONFIG).is_file():
        what = "is not a folder" if not folder.is_dir() else f"has no {LOCAL_DIR_CONFIG}"
        raise UnknownNameError(
            f"model {name}: {folder} {what}; a local-dir: model is a folder with "
            f"{LOCAL_DIR_CONFIG} and weights, such as a training run's export/"
        )
    return folder


def load_open_clip(name: str, pretrained: str | None, device: str) -> OpenClipModel:
    """Build an open_clip model. ``pretrained`` is a tag of ``name``, a local checkpoint,
    ``"random"`` (explicit random init), or None (allowed only for tiny configurations and
    ``hf-hub:`` ids, whose weights come with the id)."""
    open_clip = open_clip_registered()
    with _quiet_open_clip_logs():
        if name.startswith("hf-hub:"):
            model = _from_hub(open_clip, name)
        elif name.startswith(LOCAL_DIR):
            model = _from_local_dir(open_clip, name, pretrained)
        else:
            model = _from_architecture(open_clip, name, pretrained)
        tokenizer = tokenizer_of(open_clip, name)
    wrapped = OpenClipModel(model, tokenizer, name=name, pretrained=pretrained)
    return wrapped.to(device).eval()


_TOKENIZERS: dict[tuple[str, str], object] = {}


def tokenizer_of(open_clip, name: str):
    """open_clip's tokenizer of ``name``. An architecture's is built once per configuration and
    shared: building one parses the 49,152-merge BPE file (about 0.1 s, longer than building a
    tiny model), it depends only on the configuration, and no code changes it (its internal
    cache of split words is a pure function of the text). The key is the name with its whole
    configuration, so a configuration registered again under the same name gets its own.
    ``hf-hub:`` ids and ``local-dir:`` folders are read each time (their files may change)."""
    config = None if name.startswith(("hf-hub:", LOCAL_DIR)) else open_clip.get_model_config(name)
    if config is None:
        return open_clip.get_tokenizer(name)
    key = (name, json.dumps(config, sort_keys=True, default=str))
    if key not in _TOKENIZERS:
        _TOKENIZERS[key] = open_clip.get_tokenizer(name)
    return _TOKENIZERS[key]


def _from_hub(open_clip, name: str):
    hint = f"download {name} on a machine with internet (it lands in the Hugging Face cache)"
    with fetching_weights(name, hint):
        return open_clip.create_model(name)


def _from_local_dir(open_clip, name: str, pretrained: str | None):
    """A model folder: its config always; its own weights unless ``pretrained`` is a file or
    ``random``. open_clip builds QuickGELU and sets mean/std from the folder's config."""
    folder = check_local_dir(name)
    if pretrained == RANDOM:
        return _seeded_random_init(open_clip, name)
    if pretrained is not None:
        return _from_file(open_clip, name, pretrained)
    if not any(p.suffix in WEIGHT_SUFFIXES for p in folder.iterdir()):
        raise MmcoaError(
            f"model {name}: no weights ({', '.join('*' + s for s in WEIGHT_SUFFIXES)}) "
            f"in {folder}; pass --pretrained FILE, or '{RANDOM}' for random init"
        )
    try:
        return open_clip.create_model(name)
    except (RuntimeError, ValueError, OSError) as error:
        raise MmcoaError(
            f"model {name}: the weights in {folder} do not load ({str(error).strip().splitlines()[0][:160]})"
        ) from error


def _from_architecture(open_clip, name: str, pretrained: str | None):
    if pretrained is None and name not in TINY_ARCHITECTURES:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none"
        raise MmcoaError(
            f"model {name} needs --pretrained: a tag ({tags}), a checkpoint path, "
            f"or '{RANDOM}' for random init"
        )
    if pretrained in (None, RANDOM):
        return _seeded_random_init(open_clip, name)
    if pretrained in open_clip.list_pretrained_tags_by_model(name):
        hint = (
            f"download it on a machine with internet, or pass --pretrained /path/to/{name}-{pretrained}.bin"
        )
        quick_gelu = bool(open_clip.get_pretrained_cfg(name, pretrained).get("quick_gelu", False))
        with fetching_weights(f"{name} ({pretrained})", hint):
            return open_clip.create_model(name, pretrained=pretrained, force_quick_gelu=quick_gelu)
    if os.path.sep in pretrained or os.path.splitext(pretrained)[1] or os.path.exists(pretrained):
        return _from_file(open_clip, name, pretrained)
    tags = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none"
    raise UnknownNameError(
        f"unknown pretrained tag {pretrained!r} for {name}; known tags: {tags}; "
        f"or a checkpoint path, or '{RANDOM}'"
    )


def _from_file(open_clip, name: str, path: str):
    require_file(path, name)
    state, meta = read_checkpoint(path)
    model = model_to_load(open_clip, name, quick_gelu=_file_quick_gelu(open_clip, name, path, meta))
    load_into(model, _to_open_clip_layout(model, state), path, name)
    return model


def check_open_clip_checkpoint(name: str, path: str) -> None:
    """Whether ``path`` loads into architecture ``name`` (keys and shapes), from the file's
    header and a model built on the meta device: milliseconds, no weights read."""
    open_clip = open_clip_registered()
    with _quiet_open_clip_logs():
        try:
            with torch.device("meta"):
                model = open_clip.create_model(name, device="meta", load_weights=False)
        except RuntimeError:  # a Hugging Face text tower (minilm-clip) refuses the meta device
            model = open_clip.create_model(name, device="cpu", load_weights=False)
    check_fits(model.state_dict(), path, name, layout=lambda state: _to_open_clip_layout(model, state))


def _file_quick_gelu(open_clip, name: str, path: str, meta: dict) -> bool:
    """The activation a local checkpoint was trained with: its recorded ``quick_gelu`` when it
    has one (so a model fine-tuned from OpenAI weights reloads as ``ViT-B-32`` with QuickGELU,
    the trap of open_clip issue #771), else the architecture's."""
    architecture = bool((open_clip.get_model_config(name) or {}).get("quick_gelu", False))
    recorded = meta.get("quick_gelu")
    if recorded is None or bool(recorded) == architecture:
        return architecture
    if architecture:
        raise MmcoaError(
            f"checkpoint {path!r} records GELU (quick_gelu false) but {name} builds "
            f"QuickGELU; load it as {name.removesuffix('-quickgelu')}"
        )
    return True


def _to_open_clip_layout(model, state: dict) -> dict:
    """Accept a state dict of the bare open_clip model or of our wrapper (``model.`` prefix)."""
    if all(k.startswith("model.") for k in state):
        state = {k.removeprefix("model."): v for k, v in state.items()}
    if "logit_scale" in state and state["logit_scale"].ndim != model.logit_scale.ndim:
        state["logit_scale"] = state["logit_scale"].reshape(model.logit_scale.shape)
    return state


def _seeded_random_init(open_clip, name: str, seed: int = 0, quick_gelu: bool = False):
    """Random init that does not depend on (or disturb) the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return open_clip.create_model(name, force_quick_gelu=quick_gelu, load_weights=False)


def model_to_load(open_clip, name: str, quick_gelu: bool = False):
    """Architecture ``name`` built for a strict load (:func:`load_into`) that replaces every
    parameter: its parameters are not initialized (:mod:`mmcoa.models.skip_init`)."""
    with parameters_left_uninitialized():
        return open_clip.create_model(name, force_quick_gelu=quick_gelu, load_weights=False)


@contextlib.contextmanager
def _quiet_open_clip_logs():
    """open_clip logs warnings and errors on the root logger ("initialized randomly", download
    failures); our own one-line errors say what matters, so silence those while loading, and
    the "Loading weights" bar of a Hugging Face text tower (``minilm-clip``)."""
    previous = logging.root.manager.disable
    logging.disable(logging.ERROR)
    try:
        with quiet_transformers_progress():
            yield
    finally:
        logging.disable(previous)
