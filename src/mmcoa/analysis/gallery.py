"""An example gallery, as TextAttack users like to see: for a few samples per attack, the clean
image, the adversarial image, the perturbation magnified to be visible, the true-class prompt
before and after the attack with the changed words highlighted, and the zero-shot prediction
before and after.

Samples come from :func:`mmcoa.analysis.attacked.attacked_batches` (the seeded subset and attack
seeds of the evaluation). From a pool of ``pool`` samples, those the attack flipped from right
to wrong are shown first, then the others in order.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from mmcoa.analysis.attacked import attacked_batches, make_attack
from mmcoa.analysis.plotting import new_figure, write_analysis
from mmcoa.attacks import Attack
from mmcoa.errors import MmcoaError
from mmcoa.models import VisionLanguageModel

ROW_HEIGHT, WIDTH = 2.2, 13.0  # inches
HIGHLIGHT = dict(facecolor="#ffd54f", edgecolor="none", pad=1.5)


@dataclass
class Example:
    """One gallery row; the images ([H, W, 3] arrays in [0, 1]) are not saved to JSON."""

    attack: str
    index: int
    true_class: str
    predicted_before: str
    predicted_after: str
    original_prompt: str
    attacked_prompt: str | None
    changed_original: list[int]
    changed_attacked: list[int]
    words_changed: int
    linf_255: float
    clean: np.ndarray = field(repr=False)
    adversarial: np.ndarray = field(repr=False)

    def summary(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in ("clean", "adversarial")}


def changed_words(original: str, attacked: str) -> tuple[list[int], list[int]]:
    """Indices of the words that differ, in the original and in the attacked text."""
    a, b = original.split(), attacked.split()
    left, right = [], []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if tag != "equal":
            left += range(i1, i2)
            right += range(j1, j2)
    return left, right


def gallery(
    model: VisionLanguageModel,
    dataset,
    attacks: Sequence[str | Attack],
    *,
    attack_params: dict | None = None,
    per_attack: int = 3,
    pool: int = 32,
    seed: int = 0,
    template: str | None = None,
) -> list[Example]:
    """``per_attack`` examples for each attack (see the module docstring)."""
    if per_attack < 1 or pool < per_attack:
        raise MmcoaError(f"need 1 <= per_attack <= pool; got per_attack={per_attack}, pool={pool}")
    examples = []
    for attack in attacks:
        attack = make_attack(attack, **(attack_params or {}))
        batch = next(
            attacked_batches(
                model, dataset, attack, n_samples=pool, batch_size=pool, seed=seed, template=template
            )
        )
        examples += _pick(batch, attack.name, dataset.classnames, dataset.prompts(template), per_attack)
    return examples


def _pick(batch, attack_name: str, classnames: list[str], prompts: list[str], count: int) -> list[Example]:
    truth, before, after = (
        batch.labels.tolist(),
        batch.clean_predictions.tolist(),
        batch.attacked_predictions.tolist(),
    )
    flipped = [i for i in range(len(truth)) if before[i] == truth[i] != after[i]]
    order = flipped + [i for i in range(len(truth)) if i not in flipped]
    return [_example(batch, i, attack_name, classnames, prompts) for i in order[:count]]


def _example(batch, i: int, attack_name: str, classnames: list[str], prompts: list[str]) -> Example:
    label = int(batch.labels[i])
    result = batch.result
    attacked_prompt = result.adversarial_prompts[label] if result.adversarial_prompts else None
    if attacked_prompt is None and result.words_changed is None:
        attacked_prompt = prompts[label]  # image-only attack: the prompt is untouched
    left, right = changed_words(prompts[label], attacked_prompt) if attacked_prompt else ([], [])
    words = int(result.words_changed[i]) if result.words_changed is not None else len(right)
    delta = (result.images[i] - batch.images[i]).abs().max().item()
    return Example(
        attack_name,
        batch.indices[i],
        classnames[label],
        classnames[int(batch.clean_predictions[i])],
        classnames[int(batch.attacked_predictions[i])],
        prompts[label],
        attacked_prompt,
        left,
        right,
        words,
        round(delta * 255, 3),
        _hwc(batch.images[i]),
        _hwc(result.images[i]),
    )


def _hwc(image: torch.Tensor) -> np.ndarray:
    return image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()


def magnified(clean: np.ndarray, adversarial: np.ndarray) -> tuple[np.ndarray, float | None]:
    """The perturbation mapped to [0, 1] around gray (0.5), scaled so its largest entry reaches
    0 or 1; returns the image and the magnification (None when nothing changed)."""
    delta = adversarial - clean
    peak = float(np.abs(delta).max())
    if peak == 0:
        return np.full_like(clean, 0.5), None
    factor = 0.5 / peak
    return np.clip(0.5 + delta * factor, 0, 1), factor


def plot_gallery(examples: list[Example], output_dir: str | os.PathLike, name: str = "gallery") -> Path:
    """``NAME.png`` (one row per example) and ``NAME.json``; returns the JSON path."""
    if not examples:
        raise MmcoaError("no gallery example to plot")
    figure, axes = new_figure(
        WIDTH,
        ROW_HEIGHT * len(examples),
        ncols=4,
        nrows=len(examples),
        gridspec_kw={"width_ratios": [1, 1, 1, 3.6]},
    )
    for row, example in enumerate(examples):
        _draw_row(axes[4 * row : 4 * row + 4], example)
    title = "Attack gallery: clean, adversarial, perturbation and prompts"
    figure.suptitle(title, fontsize=12)
    figure.subplots_adjust(
        left=0.02,
        right=0.99,
        top=1 - 0.7 / (ROW_HEIGHT * len(examples)),
        bottom=0.02,
        hspace=0.35,
        wspace=0.08,
    )
    rows = [
        [
            f"{e.attack} #{e.index}",
            e.true_class,
            e.predicted_before,
            e.predicted_after,
            e.original_prompt,
            e.attacked_prompt or "(not returned)",
            e.words_changed,
            e.linf_255,
        ]
        for e in examples
    ]
    return write_analysis(
        output_dir,
        name,
        analysis="gallery",
        title=title,
        figure=figure,
        columns=[
            "example",
            "true class",
            "predicted before",
            "predicted after",
            "original prompt",
            "attacked prompt",
            "words changed",
            "L-inf (1/255)",
        ],
        rows=rows,
        data={"examples": [e.summary() for e in examples]},
        notes=[
            "Changed words are highlighted in the figure; the perturbation "
            "is magnified to span the full intensity range."
        ],
    )


def _draw_row(axes, example: Example) -> None:
    image_ax, adv_ax, delta_ax, text_ax = axes
    perturbation, factor = magnified(example.clean, example.adversarial)
    for ax, image, caption in (
        (image_ax, example.clean, "clean"),
        (adv_ax, example.adversarial, f"adversarial ({example.attack})"),
        (delta_ax, perturbation, f"perturbation ×{factor:.0f}" if factor else "no pixel change"),
    ):
        ax.imshow(image, interpolation="nearest")
        ax.set_title(caption, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    _draw_text(text_ax, example)


def _draw_text(ax, example: Example) -> None:
    ax.axis("off")
    wrong = example.predicted_after != example.true_class
    ax.text(
        0,
        0.9,
        f"sample {example.index} · true class: {example.true_class}",
        fontsize=9,
        transform=ax.transAxes,
    )
    ax.text(
        0,
        0.72,
        f"prediction: {example.predicted_before} → {example.predicted_after}",
        fontsize=9,
        color="crimson" if wrong else "darkgreen",
        weight="bold",
        transform=ax.transAxes,
    )
    _draw_words(ax, 0.50, "original prompt:", example.original_prompt.split(), example.changed_original)
    if example.attacked_prompt is None:
        ax.text(
            0,
            0.30,
            f"attacked prompt: (per-sample, not returned; {example.words_changed} word(s) changed)",
            fontsize=9,
            transform=ax.transAxes,
        )
    else:
        _draw_words(ax, 0.30, "attacked prompt:", example.attacked_prompt.split(), example.changed_attacked)
    ax.text(
        0,
        0.10,
        f"image perturbation L-inf: {example.linf_255:g}/255 · words changed: {example.words_changed}",
        fontsize=8,
        color="dimgray",
        transform=ax.transAxes,
    )


def _draw_words(ax, y: float, prefix: str, words: list[str], marked: Sequence[int]) -> None:
    """Words left to right, the changed ones highlighted; positions measured with the renderer."""
    renderer = ax.figure.canvas.get_renderer()
    width = ax.get_window_extent(renderer).width
    x = 0.0
    for i, word in enumerate([prefix] + words):
        changed = i - 1 in marked
        text = ax.text(
            x,
            y,
            word,
            fontsize=9,
            transform=ax.transAxes,
            weight="bold" if changed else "normal",
            color="crimson" if changed else "black",
            bbox=HIGHLIGHT if changed else None,
        )
        x += (text.get_window_extent(renderer).width + 4) / width
