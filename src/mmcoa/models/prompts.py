"""Learnable input prompts for parameter-efficient adversarial tuning, and their files.

- :class:`PaddingPrompt` (visual prompting, ``vp``): a learnable pixel frame, set as
  ``model.visual_prompt``.
- :class:`NormalizedPadPrompt` (visual prompting as TeCoA's published code trains it): a
  learnable 30-px border added in the model's normalized input space, also set as
  ``model.visual_prompt``. :func:`visual_prompt_for` makes either by a setting
  (:data:`VISUAL_PROMPTS`).
- :class:`TextContext` (adversarial prompt tuning, ``advpt``): CoOp-style learnable context
  vectors that replace the token embeddings of placeholder words, set as ``model.text_prompt``.

A trained prompt is saved as :func:`prompt_payload` (``RUN/prompt.pt``) and put back on a freshly
loaded model with :func:`attach_prompt` (``mmcoa eval --prompt RUN/prompt.pt``).
"""

from __future__ import annotations

import os

import torch
from torch import nn

from mmcoa.files import load_tensors
from mmcoa.errors import MmcoaError

PROMPT_FORMAT = "mmcoa-prompt-v1"
PROMPT_FILES = "vp/advpt runs write RUN/prompt.pt"
# The placeholder is a stop word, which BERT-Attack never replaces: a text attack on a prompt-tuned
# model leaves the learned context in place and attacks the class name, as against AdvPT's
# context, which is no text at all. (CoOp writes "X"; a replaced "X" would drop the context.)
PLACEHOLDER = "a"


# Where a visual prompt acts (its class attribute ``space``), read by ``encode_image``: on the
# [0, 1] pixels before the model's resize and normalization, or on the normalized model input.
PROMPT_SPACES = ("pixels", "normalized")


class PaddingPrompt(nn.Module):
    """Visual prompting (Bahng et al. 2022): a learnable frame of width ``pad`` pixels added to
    the image border at the dataset's resolution; the model itself stays frozen."""

    kind = "padding"
    space = "pixels"

    def __init__(self, image_size: tuple[int, int], pad: int = 4):
        super().__init__()
        height, width = image_size
        self.args = {"image_size": [height, width], "pad": pad}
        mask = torch.ones(1, 1, height, width)
        mask[..., pad : height - pad, pad : width - pad] = 0
        self.register_buffer("mask", mask)
        self.prompt = nn.Parameter(torch.zeros(1, 3, height, width))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-2:] != self.prompt.shape[-2:]:
            raise MmcoaError(
                f"this visual prompt was trained at {tuple(self.prompt.shape[-2:])} px; "
                f"the images are {tuple(images.shape[-2:])} px (use a dataset of that "
                "resolution)"
            )
        return images + self.mask * self.prompt


class NormalizedPadPrompt(nn.Module):
    """Visual prompting as TeCoA's published code trains it (its pad prompter, after Bahng et
    al. 2022): a learnable border ``pad`` pixels wide (30 there) at the model's input size
    ``input_size`` (224 px for ViT-B/32), added to images already resized to that size and
    normalized with the model's mean and std.

    It differs from :class:`PaddingPrompt` (4 px at the dataset's own resolution, added to the
    [0, 1] pixels before the resize and normalization, zero-initialized) in where it acts
    (``space = "normalized"``: the model applies it after its preprocessing), its size, and its
    start: the four border strips (top and bottom: ``pad`` full-width rows; left and right:
    ``pad`` columns of the remaining height) are drawn from N(0, 1) with ``torch.randn``, in
    that order, from ``generator`` (seed it for a reproducible start; None draws from torch's
    global generator). See ``docs/deviations.md``, "Not switches yet"."""

    kind = "pad-normalized"
    space = "normalized"

    def __init__(
        self, input_size: int | tuple[int, int], pad: int = 30, generator: torch.Generator | None = None
    ):
        super().__init__()
        height, width = (input_size, input_size) if isinstance(input_size, int) else map(int, input_size)
        widest = (min(height, width) - 1) // 2
        if not 1 <= pad <= widest:
            raise MmcoaError(
                f"a {pad}-px pad does not fit a {height}x{width} px model input; the pad must be at "
                f"least 1 px and under half the input's shorter side ({widest} px at most)"
            )
        self.args = {"input_size": [height, width], "pad": pad}
        draw = dict(generator=generator, device=generator.device if generator is not None else None)
        self.top = nn.Parameter(torch.randn(1, 3, pad, width, **draw))
        self.bottom = nn.Parameter(torch.randn(1, 3, pad, width, **draw))
        self.left = nn.Parameter(torch.randn(1, 3, height - 2 * pad, pad, **draw))
        self.right = nn.Parameter(torch.randn(1, 3, height - 2 * pad, pad, **draw))

    @property
    def input_size(self) -> tuple[int, int]:
        return tuple(self.args["input_size"])

    def border(self) -> torch.Tensor:
        """The prompt as one (1, 3, H, W) image: the four strips around a zero interior."""
        inside = self.left.new_zeros(1, 3, self.left.shape[2], self.input_size[1] - 2 * self.args["pad"])
        middle = torch.cat([self.left, inside, self.right], dim=3)
        return torch.cat([self.top, middle, self.bottom], dim=2)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if tuple(pixels.shape[-2:]) != self.input_size:
            raise MmcoaError(
                f"this visual prompt was made for a {self.input_size} px model input; the normalized "
                f"images are {tuple(pixels.shape[-2:])} px (attach it to a model of that input size)"
            )
        return pixels + self.border().to(pixels.dtype)


class TextContext(nn.Module):
    """Learnable text context (CoOp, Zhou et al. 2022; trained adversarially by AdvPT, Zhang et
    al. 2023): ``n_ctx`` vectors in the token-embedding space that replace the embeddings of the
    ``n_ctx`` placeholder words opening a prompt ``"a a a a {class}."``.

    Only prompts that start with the placeholders are changed, so any other text (an attacked
    prompt whose placeholders BERT-Attack did not touch keeps them) encodes as usual. The vectors
    start from the embeddings of ``init`` when it tokenizes to exactly ``n_ctx`` tokens, else
    from N(0, 0.02²)."""

    kind = "text-context"

    def __init__(
        self,
        token_embedding: nn.Embedding,
        placeholder_id: int,
        n_ctx: int = 4,
        init_ids: torch.Tensor | None = None,
        seed: int = 0,
    ):
        super().__init__()
        self.args = {"n_ctx": n_ctx}
        self.register_buffer("placeholder_id", torch.tensor(int(placeholder_id)))
        weight = token_embedding.weight.detach()
        if init_ids is not None and len(init_ids) == n_ctx:
            start = weight[init_ids.to(weight.device)].clone()
        else:
            generator = torch.Generator().manual_seed(seed)
            start = torch.randn(n_ctx, weight.shape[1], generator=generator).mul_(0.02).to(weight)
        self.context = nn.Parameter(start)

    @property
    def n_ctx(self) -> int:
        return self.context.shape[0]

    @property
    def template(self) -> str:
        """The prompt template whose placeholders the context replaces."""
        return " ".join([PLACEHOLDER] * self.n_ctx) + " {}."

    def forward(self, token_ids: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        """Token embeddings [B, L, D] with positions 1..n_ctx (after the start token) replaced
        by the context in every row whose tokens there are all placeholders."""
        n = self.n_ctx
        if embeddings.shape[1] < n + 2:  # a batch trimmed shorter than any prompted text
            return embeddings
        prompted = (token_ids[:, 1 : 1 + n] == self.placeholder_id).all(dim=1)
        context = self.context.to(embeddings.dtype)
        padded = torch.cat(
            [
                embeddings.new_zeros(1, embeddings.shape[-1]),
                context,
                embeddings.new_zeros(embeddings.shape[1] - 1 - n, embeddings.shape[-1]),
            ]
        )
        positions = torch.zeros(embeddings.shape[1], dtype=torch.bool, device=embeddings.device)
        positions[1 : 1 + n] = True
        replace = prompted[:, None, None] & positions[None, :, None]
        return torch.where(replace, padded[None], embeddings)


VISUAL_PROMPTS = ("frame", "pad30")


def visual_prompt_for(
    kind: str,
    model,
    image_size: tuple[int, int],
    generator: torch.Generator | None = None,
    *,
    pad: int | None = None,
) -> nn.Module:
    """A new visual prompt of ``kind`` (one of :data:`VISUAL_PROMPTS`) on ``model``'s device.

    - ``"frame"``: this toolkit's :class:`PaddingPrompt` at the dataset's ``image_size``
      (``pad`` default 4; zero start, so ``generator`` is unused).
    - ``"pad30"``: TeCoA's published :class:`NormalizedPadPrompt` at the model's own input size
      (``model.image_size``; ``pad`` default 30, ``image_size`` unused), its strips drawn from
      ``generator``.

    ``pad`` overrides the kind's width (a model input under 61 px, as tiny test models have, has
    no room for a 30-px pad)."""
    if kind == "frame":
        module = PaddingPrompt(tuple(image_size), 4 if pad is None else pad)
    elif kind == "pad30":
        module = NormalizedPadPrompt(model.image_size, 30 if pad is None else pad, generator)
    else:
        raise MmcoaError(f"unknown visual prompt {kind!r}; known: {', '.join(VISUAL_PROMPTS)}")
    return module.to(model.device)


def text_context_for(model, n_ctx: int = 4, init: str = "a photo of a", seed: int = 0) -> TextContext:
    """A :class:`TextContext` for ``model``'s tokenizer and token embedding."""
    placeholder = _first_token(model, PLACEHOLDER)
    init_ids = _token_ids(model, init)
    embedding = model.token_embedding()
    return TextContext(embedding, placeholder[0], n_ctx, init_ids, seed).to(model.device)


def _token_ids(model, text: str) -> torch.Tensor:
    """The token ids of ``text`` between the start token and the end token (CLIP's end token
    has the largest id, which is also how CLIP finds it when pooling)."""
    ids = next(iter(model.tokenize([text]).values()))[0]
    return ids[1 : int(ids.argmax())]


def _first_token(model, word: str) -> torch.Tensor:
    ids = _token_ids(model, f"{word} {word}")
    if len(ids) != 2 or ids[0] != ids[1]:
        raise MmcoaError(f"the tokenizer of {model.name} does not keep {word!r} as one token")
    return ids


def prompt_payload(module: nn.Module) -> dict:
    """The prompt's payload (kind, constructor arguments, weights) for ``torch.save``."""
    return {"format": PROMPT_FORMAT, "kind": module.kind, "args": module.args, "state": module.state_dict()}


def attach_prompt(model, path: str | os.PathLike, payload: dict | None = None) -> str | None:
    """Put the prompt saved at ``path`` on ``model`` (``payload``: its content, when already
    read with :func:`read_prompt`); returns the prompt template a text context needs (None for
    a visual prompt)."""
    payload = read_prompt(path) if payload is None else payload
    kind, args = payload.get("kind"), payload.get("args", {})
    if kind == PaddingPrompt.kind:
        module = PaddingPrompt(tuple(args["image_size"]), args["pad"])
    elif kind == NormalizedPadPrompt.kind:
        if tuple(args["input_size"]) != tuple(model.image_size):
            raise MmcoaError(
                f"prompt {path} was trained for a {tuple(args['input_size'])} px model input; model "
                f"{model.name} takes {tuple(model.image_size)} px (a prompt fits the model its run "
                "trained: model in the run's config.json)"
            )
        # The start is overwritten by the saved strips: a throwaway generator leaves torch's global one alone.
        module = NormalizedPadPrompt(tuple(args["input_size"]), args["pad"], torch.Generator())
    elif kind == TextContext.kind:
        module = text_context_for(model, args["n_ctx"])
    else:
        raise _unknown_kind(path, kind)
    try:
        module.load_state_dict(payload["state"])
    except RuntimeError as error:
        raise MmcoaError(
            f"prompt {path} does not fit model {model.name} ({str(error).splitlines()[0][:120]}); a prompt "
            "fits the model its run trained (model in the run's config.json)"
        ) from error
    target = "text_prompt" if kind == TextContext.kind else "visual_prompt"
    setattr(model, target, module.to(model.device))
    return module.template if target == "text_prompt" else None


PROMPT_KINDS = (PaddingPrompt.kind, NormalizedPadPrompt.kind, TextContext.kind)


def _unknown_kind(path, kind) -> MmcoaError:
    return MmcoaError(f"prompt file {path} has unknown kind {kind!r}; known: {', '.join(PROMPT_KINDS)}")


def read_prompt(path) -> dict:
    if not os.path.isfile(path):
        raise MmcoaError(f"prompt file {path} does not exist ({PROMPT_FILES})")
    payload = load_tensors(path, f"prompt file {path}", f"a prompt file ({PROMPT_FILES})")
    if not isinstance(payload, dict) or payload.get("format") != PROMPT_FORMAT:
        raise MmcoaError(f"{path} is not an mmcoa prompt file ({PROMPT_FILES})")
    if payload.get("kind") not in PROMPT_KINDS:
        raise _unknown_kind(path, payload.get("kind"))
    return payload
