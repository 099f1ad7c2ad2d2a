"""Learnable input prompts for parameter-efficient adversarial tuning, and their files.

- :class:`PaddingPrompt` (visual prompting, ``vp``): a learnable pixel frame, set as
  ``model.visual_prompt``.
- :class:`TextContext` (adversarial prompt tuning, ``advpt``): CoOp-style learnable context
  vectors that replace the token embeddings of placeholder words, set as ``model.text_prompt``.

A trained prompt is saved as :func:`prompt_payload` (``RUN/prompt.pt``) and put back on a freshly
loaded model with :func:`attach_prompt` (``mmcoa eval --prompt RUN/prompt.pt``).
"""

from __future__ import annotations

import os

import torch
from torch import nn

from mmcoa.errors import MmcoaError

PROMPT_FORMAT = "mmcoa-prompt-v1"
PROMPT_FILES = "vp/advpt runs write RUN/prompt.pt"
# The placeholder is a stop word, which BERT-Attack never replaces: a text attack on a prompt-tuned
# model leaves the learned context in place and attacks the class name, as against AdvPT's
# context, which is no text at all. (CoOp writes "X"; a replaced "X" would drop the context.)
PLACEHOLDER = "a"


class PaddingPrompt(nn.Module):
    """Visual prompting (Bahng et al. 2022): a learnable frame of width ``pad`` pixels added to
    the image border at the dataset's resolution; the model itself stays frozen."""

    kind = "padding"

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
    if payload["kind"] == PaddingPrompt.kind:
        module = PaddingPrompt(tuple(payload["args"]["image_size"]), payload["args"]["pad"])
        target = "visual_prompt"
    else:
        module = text_context_for(model, payload["args"]["n_ctx"])
        target = "text_prompt"
    try:
        module.load_state_dict(payload["state"])
    except RuntimeError as error:
        raise MmcoaError(
            f"prompt {path} does not fit model {model.name} ({str(error).splitlines()[0][:120]}); a prompt "
            "fits the model its run trained (model in the run's config.json)"
        ) from error
    setattr(model, target, module.to(model.device))
    return module.template if target == "text_prompt" else None


def read_prompt(path) -> dict:
    if not os.path.isfile(path):
        raise MmcoaError(f"prompt file {path} does not exist ({PROMPT_FILES})")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise MmcoaError(
            f"prompt file {path} is corrupt or unreadable ({type(error).__name__}); expected a prompt "
            f"file ({PROMPT_FILES})"
        ) from error
    if not isinstance(payload, dict) or payload.get("format") != PROMPT_FORMAT:
        raise MmcoaError(f"{path} is not an mmcoa prompt file ({PROMPT_FILES})")
    if payload.get("kind") not in (PaddingPrompt.kind, TextContext.kind):
        raise MmcoaError(
            f"prompt file {path} has unknown kind {payload.get('kind')!r}; "
            f"known: {PaddingPrompt.kind}, {TextContext.kind}"
        )
    return payload
