"""Tiny random-init CLIPs for tests and the offline demo, one per backend.

``tiny-clip`` is an open_clip architecture (``configs/tiny-clip.json``, registered with
open_clip so ``open_clip.create_model('tiny-clip', pretrained=PATH)`` works too).
``tiny-clip-hf`` is a transformers ``CLIPModel`` of the same shape, with the real CLIP BPE
vocabulary rebuilt offline from the merges file that open_clip ships.
"""

from __future__ import annotations

import functools
import gzip

import torch

from mmcoa.models.checkpoints import load_into, read_state_dict, require_file
from mmcoa.models.hf_backend import HFClipModel

TINY_HF = "tiny-clip-hf"
_WIDTH, _IMAGE_SIZE, _PATCH, _CONTEXT = 96, 32, 8, 16
BOS_ID, EOS_ID = 49406, 49407


def tiny_hf_config():
    from transformers import CLIPConfig

    text = dict(
        vocab_size=49408,
        hidden_size=_WIDTH,
        intermediate_size=4 * _WIDTH,
        num_hidden_layers=3,
        num_attention_heads=2,
        max_position_embeddings=_CONTEXT,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=EOS_ID,
    )
    vision = dict(
        image_size=_IMAGE_SIZE,
        patch_size=_PATCH,
        hidden_size=_WIDTH,
        intermediate_size=4 * _WIDTH,
        num_hidden_layers=4,
        num_attention_heads=3,
    )
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=_WIDTH)


@functools.lru_cache(maxsize=1)
def clip_bpe_tokenizer():
    """transformers' CLIPTokenizer built from open_clip's bundled BPE merges (no network)."""
    from open_clip.tokenizer import SimpleTokenizer, default_bpe
    from transformers import CLIPTokenizer

    specials = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {specials.get(k, k): v for k, v in SimpleTokenizer().encoder.items()}
    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    return CLIPTokenizer(vocab=vocab, merges=merges)


def load_tiny_hf(pretrained: str | None, device: str) -> HFClipModel:
    """Random init (seed 0, global RNG untouched) or a state dict saved from this model."""
    from transformers import CLIPModel

    if pretrained not in (None, "random"):
        require_file(pretrained, TINY_HF)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = CLIPModel(tiny_hf_config())
    if pretrained not in (None, "random"):
        state = read_state_dict(pretrained)
        if all(k.startswith("model.") for k in state):
            state = {k.removeprefix("model."): v for k, v in state.items()}
        load_into(model, state, pretrained, TINY_HF)
    wrapped = HFClipModel(model, clip_bpe_tokenizer(), name=TINY_HF, pretrained=pretrained)
    return wrapped.to(device).eval()
