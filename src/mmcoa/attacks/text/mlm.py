"""The masked language model that proposes BERT-Attack's substitutes (Li et al. 2020, Sec. 3).

A :class:`MaskedLM` pairs a WordPiece tokenizer (BERT's ``[CLS]``/``[SEP]``/``##`` conventions)
with a Hugging Face masked-LM whose forward returns ``.logits`` of shape [batch, tokens, vocab].
:func:`load_mlm` fetches one by hub id or from a ``save_pretrained`` directory; tests build one
directly from a tokenizer and any module with that forward.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from mmcoa.errors import MmcoaError
from mmcoa.models.hub import pretrained_source

MIN_VOCAB = 100  # transformers 5 builds a near-empty tokenizer offline without raising
REQUIRED_SPECIALS = ("cls_token_id", "sep_token_id", "pad_token_id")


class MaskedLM:
    """A WordPiece tokenizer and a masked LM, evaluated without gradients on ``device``."""

    def __init__(self, tokenizer, model: nn.Module, name: str = "masked-lm",
                 device: str | torch.device | None = None):
        missing = [s for s in REQUIRED_SPECIALS if getattr(tokenizer, s, None) is None]
        if missing:
            raise MmcoaError(f"masked LM {name}: the tokenizer lacks {', '.join(missing)}; "
                             "BERT-Attack needs a WordPiece (BERT-style) tokenizer")
        self.tokenizer, self.name = tokenizer, name
        self.device = torch.device(device) if device is not None else _module_device(model)
        self.model = model.to(self.device).eval()

    @functools.cached_property
    def id_to_token(self) -> list[str]:
        """The token string of every id (``len(tokenizer)`` entries; "" for holes in the vocab)."""
        tokens = self.tokenizer.convert_ids_to_tokens(list(range(len(self.tokenizer))))
        return [token or "" for token in tokens]

    def pieces(self, text: str) -> list[int]:
        """WordPiece ids of ``text`` without special tokens."""
        return self.tokenizer.convert_tokens_to_ids(self.tokenizer.tokenize(text))

    @torch.no_grad()
    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """MLM logits [batch, tokens, vocab] (float32, on the MLM's device)."""
        out = self.model(input_ids=input_ids.to(self.device),
                         attention_mask=attention_mask.to(self.device))
        return (out.logits if hasattr(out, "logits") else out[0]).float()

    def __repr__(self) -> str:
        return f"MaskedLM({self.name!r}, vocab={len(self.tokenizer)}, device={self.device})"


def _module_device(model: nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def check_mlm_vocab(tokenizer, model_vocab_size: int, name: str) -> None:
    """Refuse the (near-)empty tokenizer transformers builds offline, and a tokenizer with more
    tokens than the model has output rows."""
    size = len(tokenizer)
    if size < MIN_VOCAB or size > model_vocab_size:
        raise MmcoaError(f"tokenizer of masked LM {name} has {size} tokens but the model expects "
                         f"{MIN_VOCAB} to {model_vocab_size}: the tokenizer files are missing or "
                         "wrong (offline transformers builds an empty one); download the model "
                         "with internet or pass a directory saved with save_pretrained")


def load_mlm(name_or_dir: str = "bert-base-uncased", device: str = "cpu") -> MaskedLM:
    """A masked LM and its tokenizer from a hub id or a local ``save_pretrained`` directory
    (cache-only and failing at once when the hub is unreachable)."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    with pretrained_source(f"masked LM {name_or_dir}", name_or_dir) as only_local:
        tokenizer = AutoTokenizer.from_pretrained(name_or_dir, local_files_only=only_local)
        model = AutoModelForMaskedLM.from_pretrained(name_or_dir, local_files_only=only_local)
    check_mlm_vocab(tokenizer, model.config.vocab_size, name_or_dir)
    model.requires_grad_(False)
    return MaskedLM(tokenizer, model, name=name_or_dir, device=device)
