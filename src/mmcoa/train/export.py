"""A training run's model as a folder the ecosystem loads as it is: ``<run>/export/``.

For an open_clip model: ``open_clip_config.json`` (model_cfg with the ``quick_gelu`` the
weights need, preprocess_cfg, and how mmcoa built the model), ``open_clip_pytorch_model.bin``,
the tokenizer files of a Hugging Face text tower, ``prompt.pt`` for VP/AdvPT and a ``README.md``
model card, so ``open_clip.create_model_and_transforms("local-dir:runs/x/export")`` rebuilds the
tuned model and the folder uploaded to the hub loads as ``hf-hub:user/name`` (for the hub, name
``minilm-clip``'s text tower by its hub id, ``sentence-transformers/all-MiniLM-L6-v2``). For a
transformers model the folder is a transformers one (config, ``pytorch_model.bin``, tokenizer
and image processor). The weights file is a hard link to the run's ``final.pt``: one copy on
disk. ``python -m mmcoa.train.export RUN`` rewrites the card after evaluations saved under
``RUN/eval/``. Details: docs/methods.md, "Export".
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
from pathlib import Path

import torch

from mmcoa.files import write_json_atomic, write_text_atomic
from mmcoa.profiles import CORRECTED, PUBLISHED, profile_settings
from mmcoa.train.config import TrainConfig
from mmcoa.train.methods import method_description

EXPORT_DIR = "export"
OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = "open_clip_pytorch_model.bin"  # a name open_clip's local-dir: and hf-hub: read
TRANSFORMERS_WEIGHTS = "pytorch_model.bin"
CARD = "README.md"
PREPROCESS_KEYS = ("interpolation", "resize_mode")
RUN_FILES = {"config.json", "metrics.json", "shots.json"}


def write_export(
    run_dir: str | Path,
    model,
    config,
    metrics: dict | None = None,
    records: list[dict] | None = None,
    weights: str | Path | None = None,
) -> Path | None:
    """Write ``<run_dir>/export/`` for ``model`` (a :class:`~mmcoa.models.VisionLanguageModel`)
    trained with ``config`` (a :class:`~mmcoa.train.TrainConfig`); ``metrics`` is the run's
    ``metrics.json``, ``records`` evaluation records (default: those found in the run folder).
    ``weights``: a file holding ``torch.save(model.model.state_dict())`` (the run's final.pt),
    which the folder's weights file becomes a hard link to (a copy where the file system has no
    hard links); None: that state dict is saved into the folder.
    The folder is built beside its place and renamed into it. Returns its path, or None (with
    a warning) when the model's backend has no export."""
    from mmcoa.models.hf_backend import HFClipModel
    from mmcoa.models.open_clip_backend import OpenClipModel

    run_dir = Path(run_dir)
    target, partial = run_dir / EXPORT_DIR, run_dir / f".{EXPORT_DIR}-partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        if isinstance(model, OpenClipModel):
            _write_open_clip(partial, model)
            _write_weights(partial / OPEN_CLIP_WEIGHTS, model, weights)
        elif isinstance(model, HFClipModel):
            _write_transformers(partial, model)
            _write_weights(partial / TRANSFORMERS_WEIGHTS, model, weights)
        else:
            print(
                f"mmcoa: warning: no export/ for {type(model).__name__} models; final.pt holds the weights",
                file=sys.stderr,
            )
            shutil.rmtree(partial)
            return None
        prompt = run_dir / "prompt.pt"
        if prompt.is_file():
            shutil.copyfile(prompt, partial / prompt.name)
        settings = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
        write_text_atomic(
            partial / CARD,
            model_card(
                settings,
                metrics,
                _found_records(run_dir) if records is None else records,
                files=sorted(p.name for p in partial.iterdir()),
                open_clip=isinstance(model, OpenClipModel),
            ),
        )
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target


def _write_weights(path: Path, model, weights: str | Path | None) -> None:
    """The backend's state dict at ``path``: a hard link to ``weights`` (the same bytes, no
    second copy on disk), a copy of it where hard links fail, or saved anew without one."""
    if weights is None:
        torch.save(model.model.state_dict(), path)
        return
    try:
        os.link(weights, path)
    except OSError as error:
        shutil.copyfile(weights, path)
        print(
            f"mmcoa: note: {path} is a copy of {weights}, not a hard link ({error.strerror or error})",
            file=sys.stderr,
        )


def _write_open_clip(folder: Path, model) -> None:
    import open_clip

    model_cfg = open_clip.get_model_config(model.name)
    if model_cfg is None:
        raise ValueError(f"open_clip has no configuration for {model.name!r}")
    model_cfg = dict(model_cfg)
    model_cfg["quick_gelu"] = bool(model.quick_gelu)  # what the weights were trained with
    visual_cfg = getattr(model.model.visual, "preprocess_cfg", {}) or {}
    preprocess_cfg = {
        "mean": _floats(model.pixel_mean),
        "std": _floats(model.pixel_std),
        **{k: visual_cfg[k] for k in PREPROCESS_KEYS if k in visual_cfg},
    }
    write_json_atomic(
        folder / OPEN_CLIP_CONFIG,
        {
            "model_cfg": model_cfg,
            "preprocess_cfg": preprocess_cfg,
            "mmcoa": {**model.build_meta(), "image_size": list(model.image_size), "resize": model.resize},
        },
    )
    if hasattr(model.tokenizer, "save_pretrained"):  # a Hugging Face tokenizer (minilm-clip)
        model.tokenizer.save_pretrained(str(folder))


def _write_transformers(folder: Path, model) -> None:
    from transformers import CLIPImageProcessor

    model.model.config.save_pretrained(str(folder))
    model.tokenizer.save_pretrained(str(folder))
    height, width = model.image_size
    CLIPImageProcessor(
        image_mean=_floats(model.pixel_mean),
        image_std=_floats(model.pixel_std),
        size={"shortest_edge": min(height, width)},
        crop_size={"height": height, "width": width},
    ).save_pretrained(str(folder))


def _floats(tensor) -> list[float]:
    return [float(v) for v in tensor.flatten()]


def _found_records(run_dir: Path) -> list[dict]:
    """Evaluation records (``mmcoa eval``/suite result files) in the run folder and its
    ``eval/`` folder: JSON lists of objects with an ``attack`` and an ``accuracy``."""
    records = []
    for path in sorted([*run_dir.glob("*.json"), *run_dir.glob("eval/**/*.json")]):
        if path.name in RUN_FILES:
            continue
        try:
            payload = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        rows = payload if isinstance(payload, list) else [payload]
        records += [
            {**r, "_file": str(path.relative_to(run_dir))}
            for r in rows
            if isinstance(r, dict) and "attack" in r and "accuracy" in r
        ]
    return records


def behaviour(settings: dict) -> str:
    """Which behaviour trained the weights: the profile the run asked for (as ``final.pt.json``
    records it; a run from before profiles: corrected) and each switch at its published value
    (``docs/deviations.md``)."""
    published = profile_settings(TrainConfig, PUBLISHED)
    changed = [f"`{k}: {settings[k]}`" for k, v in published.items() if settings.get(k) == v]
    return f"Behaviour: profile `{settings.get('profile', CORRECTED)}`" + (
        f" (published switches: {', '.join(changed)})." if changed else "."
    )


def model_card(
    settings: dict, metrics: dict | None, records: list[dict], files: list[str], open_clip: bool = True
) -> str:
    """The export's README.md: Hugging Face front matter, then method, data, settings,
    training and evaluation sections."""
    method, model = settings.get("method", "?"), settings.get("model", "?")
    pretrained = settings.get("pretrained") or "random init"
    lines = [
        "---",
        "tags:",
        "- clip",
        "- adversarial-robustness",
        "- mmcoa",
        f"library_name: {'open_clip' if open_clip else 'transformers'}",
        "pipeline_tag: zero-shot-image-classification",
        "license: other",
    ]
    if settings.get("dataset"):
        lines += ["datasets:", f"- {settings['dataset']}"]
    lines += ["---", "", f"# {model} fine-tuned with {method} on {settings.get('dataset', '?')}", ""]
    lines += [
        f"Starting point: `{model}` with `{pretrained}`. The license of these weights is "
        f"that of the starting weights.",
        "",
    ]
    lines += [
        "## Method",
        "",
        f"`{method}`: {method_description(method)}. Towers trained: "
        f"{settings.get('towers') or settings.get('train_towers') or 'the method default'}. "
        f"{behaviour(settings)}",
        "",
    ]
    lines += [
        "## Data",
        "",
        f"Dataset `{settings.get('dataset')}` (train split), shots per class "
        f"`{settings.get('shots')}`, seed {settings.get('seed')}",
    ]
    if metrics and metrics.get("n_train_items") is not None:
        lines[-1] += f": {metrics['n_train_items']} training images"
    lines[-1] += "."
    lines += ["", "## Settings", "", "| setting | value |", "|---|---|"]
    lines += [f"| {k} | {_cell(v)} |" for k, v in sorted(settings.items())]
    if metrics:
        lines += ["", "## Training", ""]
        lines += [
            f"- {k}: {_cell(metrics[k])}"
            for k in (
                "steps",
                "final_loss",
                "elapsed_s",
                "images_per_s",
                "world_size",
                "skipped_nonfinite_steps",
            )
            if k in metrics
        ]
        if metrics.get("versions"):
            lines.append(f"- versions: {_cell(metrics['versions'])}")
    lines += ["", "## Evaluation", ""]
    if records:
        lines += [
            "| file | dataset | attack | eps | n | accuracy | top5 |",
            "|---|---|---|---|---|---:|---:|",
        ]
        for r in records:
            params = r.get("attack_params") or {}
            eps = params.get("eps")
            lines.append(
                f"| {r.get('_file', '')} | {r.get('dataset', '')} | {r.get('attack')} | "
                f"{_eps(eps)} | {r.get('n_samples', '')} | {_cell(r.get('accuracy'))} | "
                f"{_cell(r.get('top5'))} |"
            )
    else:
        lines += [
            "No evaluation records in the run folder yet. Evaluate with `mmcoa eval --model "
            "local-dir:<this folder> ... --output <run>/eval/NAME.json`, then "
            "`python -m mmcoa.train.export <run>` rewrites this card with them."
        ]
    lines += ["", "## Usage", ""]
    if open_clip:
        lines += [
            "```python",
            "import open_clip",
            "",
            'model, _, preprocess = open_clip.create_model_and_transforms("local-dir:path/to/export")',
            'tokenizer = open_clip.get_tokenizer("local-dir:path/to/export")',
            '# uploaded to the Hugging Face hub: "hf-hub:user/name" instead',
            "```",
            "",
            "```bash",
            "mmcoa eval --model local-dir:path/to/export --dataset ... --attacks clean,pgd",
            "```",
        ]
    else:
        lines += [
            "```bash",
            "mmcoa eval --model hf:path/to/export --dataset ... --attacks clean,pgd",
            "```",
            "",
            '`transformers.CLIPModel.from_pretrained("path/to/export")` loads it too.',
        ]
    if "prompt.pt" in files:
        lines += [
            "",
            "The encoders are the starting weights; the learned prompt is `prompt.pt` "
            "(`mmcoa eval --prompt path/to/export/prompt.pt`).",
        ]
    lines += ["", "## Files", "", *[f"- `{name}`" for name in [*files, CARD]], ""]
    return "\n".join(lines)


def _eps(eps) -> str:
    if not isinstance(eps, (int, float)):
        return "-"
    return f"{eps * 255:g}/255"


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True).replace("|", "\\|")
    return str(value).replace("|", "\\|")


def refresh_card(run_dir: str | Path) -> Path:
    """Rewrite ``<run_dir>/export/README.md`` from the run's files (config.json, metrics.json
    and the evaluation records now in the folder); the weights stay as they are."""
    run_dir = Path(run_dir)
    folder = run_dir / EXPORT_DIR
    if not folder.is_dir():
        from mmcoa.errors import MmcoaError

        raise MmcoaError(
            f"{folder} does not exist: the run has not finished (or predates export/); give the "
            "directory of a finished mmcoa train run (its --output)"
        )
    settings = json.loads((run_dir / "config.json").read_text())
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else None
    files = sorted(p.name for p in folder.iterdir() if p.name != CARD)
    write_text_atomic(
        folder / CARD,
        model_card(
            settings, metrics, _found_records(run_dir), files, open_clip=(folder / OPEN_CLIP_CONFIG).is_file()
        ),
    )
    return folder / CARD


def main(argv: list[str] | None = None) -> int:
    from mmcoa.errors import MmcoaError

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0].startswith("-"):
        print(
            "usage: python -m mmcoa.train.export RUN_DIR   (rewrites RUN_DIR/export/README.md)",
            file=sys.stderr,
        )
        return 2
    try:
        print(refresh_card(args[0]))
    except MmcoaError as error:
        print(f"mmcoa: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
