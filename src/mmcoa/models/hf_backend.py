"""Hugging Face transformers backend: ``CLIPModel`` from a hub id or a local directory."""

from __future__ import annotations

from typing import Sequence

import torch

from mmcoa.errors import MmcoaError
from mmcoa.models.base import VisionLanguageModel
from mmcoa.models.hub import pretrained_source
from mmcoa.models.tokens import TokenCache, pad_rows

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
MIN_VOCAB = 1000  # transformers 5 builds a 2-token tokenizer offline without raising


class HFClipModel(VisionLanguageModel):
    """A transformers ``CLIPModel`` behind the [0, 1]-pixel interface."""

    tower_prefixes = {
        "image": ("vision_model.", "visual_projection."),
        "text": ("text_model.", "text_projection."),
    }

    def __init__(
        self,
        model,
        tokenizer,
        *,
        name: str,
        pretrained: str | None,
        mean: Sequence[float] = OPENAI_MEAN,
        std: Sequence[float] = OPENAI_STD,
    ):
        check_tokenizer(tokenizer, model.config.text_config.vocab_size, name)
        super().__init__(
            model,
            name=name,
            pretrained=pretrained,
            image_size=model.config.vision_config.image_size,
            mean=mean,
            std=std,
        )
        self.tokenizer = tokenizer
        self.context_length = model.config.text_config.max_position_embeddings
        self.token_cache = TokenCache()

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Ids tokenized once per string (:class:`TokenCache`), padded to the batch's longest:
        CLIPTextModel is causal and pools at the end token, so this is exact."""
        rows = self.token_cache.rows(self.tokenizer, list(texts), self._tokenize_rows)
        ids, mask = pad_rows(rows, pad_id=self.tokenizer.pad_token_id or 0)
        return {"input_ids": ids, "attention_mask": mask}

    def _tokenize_rows(self, texts: list[str]) -> list[torch.Tensor]:
        ids = self.tokenizer(texts, truncation=True, max_length=self.context_length)["input_ids"]
        return [torch.tensor(row, dtype=torch.long) for row in ids]

    def _encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.get_image_features(pixel_values=pixels).pooler_output

    def check_image_tokens(self) -> None:
        """``CLIPModel``'s image tower is a ViT: patch tokens always exist."""

    def _encode_pixel_tokens(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass of the vision model: the pooled embedding as :meth:`_encode_pixels`, and the
        last hidden state's patch tokens through ``post_layernorm`` and ``visual_projection``, as
        the class token is pooled."""
        out = self.model.get_image_features(pixel_values=pixels)
        norm = self.model.vision_model.post_layernorm
        return out.pooler_output, self.model.visual_projection(norm(out.last_hidden_state[:, 1:]))

    def _encode_tokens(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model.get_text_features(**tokens).pooler_output

    def _raw_logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale

    def token_embedding(self):
        return self.model.text_model.embeddings.token_embedding


def check_tokenizer(tokenizer, model_vocab_size: int, name: str) -> None:
    """Refuse the empty tokenizer transformers 5 returns offline, and mismatched vocabularies."""
    size = len(tokenizer)
    if size < MIN_VOCAB or size > model_vocab_size:
        raise MmcoaError(
            f"tokenizer of {name} has {size} tokens but the model expects up to "
            f"{model_vocab_size}: the tokenizer files are missing or wrong (offline "
            f"transformers builds an empty one); download the model with internet"
        )


def load_hf_clip(source: str, device: str) -> HFClipModel:
    """Load ``CLIPModel`` and its tokenizer from a hub id or a local directory (``hf:`` prefix
    stripped by the caller)."""
    from transformers import AutoTokenizer, CLIPModel

    with pretrained_source(f"hf:{source}", source) as only_local:
        model = CLIPModel.from_pretrained(source, local_files_only=only_local)
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=only_local)
        mean, std = _image_stats(source, only_local)
    wrapped = HFClipModel(model, tokenizer, name=f"hf:{source}", pretrained=source, mean=mean, std=std)
    return wrapped.to(device).eval()


def _image_stats(source: str, local_files_only: bool) -> tuple[Sequence[float], Sequence[float]]:
    """Mean/std from the model's image processor config; CLIP's own values when absent."""
    from transformers import CLIPImageProcessor

    try:
        processor = CLIPImageProcessor.from_pretrained(source, local_files_only=local_files_only)
    except OSError:
        return OPENAI_MEAN, OPENAI_STD
    return tuple(processor.image_mean), tuple(processor.image_std)
