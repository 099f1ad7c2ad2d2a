"""How a model computes on its device: TF32 matmuls, ``torch.compile`` of the encoders, and the
attention kernels; recorded in every result record's ``runtime`` field.

- **TF32** (CUDA): on by default, the open_clip habit (its trainer turns it on); ``--no-tf32``
  keeps fp32 matmuls exact. No effect on CPU.
- **compile**: ``torch.compile`` of both encoders (off by default; ``--compile``), with dynamic
  shapes (batches and trimmed text lengths vary); the first call's compile time is reported.
- **attention**: open_clip's towers call ``nn.MultiheadAttention`` with ``need_weights=False``,
  which runs ``F.scaled_dot_product_attention`` (flash / memory-efficient kernels on CUDA);
  transformers' CLIP is loaded with ``attn_implementation="sdpa"`` (its default when available).
"""

from __future__ import annotations

import time

import torch

from mmcoa.models.base import VisionLanguageModel


def configure_runtime(
    model: VisionLanguageModel,
    *,
    tf32: bool | None = None,
    compile: bool = False,
    compile_backend: str = "inductor",
) -> dict:
    """Apply the settings to ``model`` (and torch's process-wide TF32 flags) and return what the
    records store. ``tf32=None``: on for CUDA, off elsewhere."""
    cuda = model.device.type == "cuda"
    tf32 = cuda if tf32 is None else bool(tf32) and cuda
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
    compile_s = _compile_encoders(model, compile_backend) if compile else None
    model.runtime = _record(model, tf32, compile_s)
    return model.runtime


def runtime_of(model: VisionLanguageModel) -> dict:
    """The ``runtime`` record field of ``model`` (torch's current flags when never configured)."""
    tf32 = model.device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32
    return getattr(model, "runtime", None) or _record(model, tf32, None)


def _record(model: VisionLanguageModel, tf32: bool, compile_s: float | None) -> dict:
    return {
        "device": str(model.device),
        "tf32": bool(tf32),
        "compile": compile_s is not None,
        "compile_s": compile_s,
        "attention": attention_kind(model),
    }


def attention_kind(model: VisionLanguageModel) -> str:
    config = getattr(model.model, "config", None)
    return getattr(config, "_attn_implementation", None) or "sdpa (nn.MultiheadAttention)"


def _compile_encoders(model: VisionLanguageModel, backend: str) -> float:
    """``torch.compile`` the backend's encode functions; returns the seconds the first
    (compiling) forward and backward of a small batch took."""
    inner = model.model
    for name in ("encode_image", "encode_text", "get_image_features", "get_text_features"):
        if hasattr(inner, name):
            setattr(inner, name, torch.compile(getattr(inner, name), backend=backend, dynamic=True))
    started = time.perf_counter()
    images = torch.rand(2, 3, *model.image_size, device=model.device, requires_grad=True)
    model.encode_image(images).float().sum().backward()
    with torch.no_grad():
        model.encode_text(["a photo of a cat", "a dog"])
    return round(time.perf_counter() - started, 3)
