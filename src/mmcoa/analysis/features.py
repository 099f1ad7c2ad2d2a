"""Clean against adversarial image features (paper Fig. 9): a t-SNE map of both and the mean
cosine similarity between each image's clean and adversarial features.

The paper finds MMCoA's clean and adversarial features the most mixed in t-SNE and the most
similar per image. t-SNE (van der Maaten & Hinton, 2008) is scikit-learn's ``TSNE``, Barnes-Hut
method (van der Maaten, 2014).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from mmcoa.analysis.attacked import attacked_batches, labelled, make_attack
from mmcoa.analysis.plotting import new_figure, write_analysis
from mmcoa.attacks import Attack
from mmcoa.errors import MmcoaError
from mmcoa.models import VisionLanguageModel

PANEL_SIZE = (5, 5)  # inches per model


def mean_cosine_similarity(clean: torch.Tensor | np.ndarray, adversarial: torch.Tensor | np.ndarray) -> float:
    """Mean over images of ``cos(clean_i, adversarial_i)`` (rows are images; features need not
    be normalized)."""
    a = torch.as_tensor(np.asarray(clean), dtype=torch.float64)
    b = torch.as_tensor(np.asarray(adversarial), dtype=torch.float64)
    if a.ndim != 2 or a.shape != b.shape or len(a) == 0:
        raise MmcoaError(
            f"clean and adversarial features must be two [N, D] arrays of one shape "
            f"with N > 0; got {list(a.shape)} and {list(b.shape)}"
        )
    return float(torch.nn.functional.cosine_similarity(a, b, dim=1).mean())


# -- t-SNE ---------------------------------------------------------------------------------------
MIN_TSNE_ITER = 250  # scikit-learn's least max_iter: its early-exaggeration phase alone


def tsne(x: np.ndarray, *, perplexity: float = 30.0, n_iter: int = 1000, seed: int = 0) -> np.ndarray:
    """t-SNE of ``x`` [N, D] to [N, 2] (float64) for the paper's Fig. 9 map of clean and
    adversarial features: scikit-learn's ``TSNE``, Barnes-Hut method (chosen over "exact" for its
    O(N log N) time and sparse nearest-neighbour affinities: no N×N matrix), PCA initialization,
    learning rate "auto", ``random_state=seed`` (it seeds PCA's randomized solver, so for
    low-dimensional ``x`` the seed may not change the map); ``n_iter`` is its ``max_iter``.
    ``perplexity`` is capped at (N − 1) / 3, so that the 3·perplexity neighbours Barnes-Hut uses
    exist for small N."""
    from sklearn.manifold import TSNE  # local: keeps `import mmcoa` free of scikit-learn

    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or len(x) < 4 or x.shape[1] < 1:
        raise MmcoaError(f"t-SNE needs at least 4 points in an [N, D] array; got shape {list(x.shape)}")
    if np.ptp(x, axis=0).max() == 0:
        raise MmcoaError(f"t-SNE needs points that are not all identical; got {len(x)} copies of one")
    if n_iter < MIN_TSNE_ITER:
        raise MmcoaError(f"t-SNE needs n_iter >= {MIN_TSNE_ITER} (scikit-learn's TSNE); got {n_iter}")
    if x.shape[1] < 2:  # PCA initialization needs two dimensions; a zero column keeps distances
        x = np.pad(x, ((0, 0), (0, 2 - x.shape[1])))
    model = TSNE(
        n_components=2,
        perplexity=min(perplexity, (len(x) - 1) / 3),
        max_iter=n_iter,
        init="pca",
        learning_rate="auto",
        method="barnes_hut",
        random_state=seed,
    )
    return np.asarray(model.fit_transform(x), dtype=np.float64)


# -- features of real models ---------------------------------------------------------------------
@torch.no_grad()
def _encode(model: VisionLanguageModel, images: torch.Tensor) -> torch.Tensor:
    return model.encode_image(images, normalize=True).float().cpu()


def attacked_features(
    model: VisionLanguageModel,
    dataset,
    attack: str | Attack = "pgd",
    *,
    attack_params: dict | None = None,
    n_samples: int | None = 500,
    batch_size: int = 64,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Normalized image features of a seeded subset, clean and under ``attack``:
    ``{"clean": [N, D], "adversarial": [N, D], "labels": [N]}``."""
    attack = make_attack(attack, **(attack_params or {}))
    clean, adversarial, labels = [], [], []
    for batch in attacked_batches(
        model, dataset, attack, n_samples=n_samples, batch_size=batch_size, seed=seed
    ):
        clean.append(_encode(model, batch.images))
        adversarial.append(_encode(model, batch.result.images))
        labels.append(batch.labels.cpu())
    return {"clean": torch.cat(clean), "adversarial": torch.cat(adversarial), "labels": torch.cat(labels)}


def feature_analysis(
    models: VisionLanguageModel | Mapping[str, VisionLanguageModel],
    dataset,
    attack: str | Attack = "pgd",
    *,
    perplexity: float = 30.0,
    n_iter: int = 1000,
    **sampling,
) -> dict:
    """For each model (one, or ``{label: model}``): mean clean/adversarial cosine similarity and
    a joint t-SNE map of its clean and adversarial features (clean rows first). ``sampling``:
    :func:`attacked_features`'s keywords (``attack_params``, ``n_samples``, ``batch_size``,
    ``seed``, which also seeds t-SNE)."""
    out = {}
    for label, model in labelled(models).items():
        features = attacked_features(model, dataset, attack, **sampling)
        both = torch.cat([features["clean"], features["adversarial"]]).numpy()
        out[label] = {
            "cosine": mean_cosine_similarity(features["clean"], features["adversarial"]),
            "tsne": tsne(both, perplexity=perplexity, n_iter=n_iter, seed=sampling.get("seed", 0)),
            "labels": features["labels"].tolist(),
            "n": len(features["clean"]),
        }
    return out


def plot_features(
    analysis: dict, output_dir: str | os.PathLike, *, attack_name: str = "pgd", name: str = "features"
) -> Path:
    """``NAME.png`` (one t-SNE panel per model: clean ○, adversarial ×) and ``NAME.json``;
    returns the JSON path."""
    if not analysis:
        raise MmcoaError("no model features to plot")
    figure, axes = new_figure(PANEL_SIZE[0] * len(analysis), PANEL_SIZE[1], ncols=len(analysis))
    for ax, (label, entry) in zip(axes, analysis.items()):
        points, n = np.asarray(entry["tsne"]), entry["n"]
        ax.scatter(points[:n, 0], points[:n, 1], s=10, marker="o", c="tab:blue", alpha=0.6, label="clean")
        ax.scatter(
            points[n:, 0],
            points[n:, 1],
            s=12,
            marker="x",
            c="tab:red",
            alpha=0.6,
            label=f"adversarial ({attack_name})",
        )
        ax.set_title(f"{label}\nmean cos(clean, adv) = {entry['cosine']:.3f}", fontsize=10)
        ax.set_xlabel("t-SNE dimension 1 (arbitrary units)")
        ax.set_ylabel("t-SNE dimension 2 (arbitrary units)")
        ax.legend(fontsize=8, loc="best")
    title = f"t-SNE of clean and adversarial image features (paper Fig. 9), attack {attack_name}"
    figure.suptitle(title, fontsize=11)
    figure.subplots_adjust(top=0.82, wspace=0.3)
    rows = [[label, entry["n"], round(entry["cosine"], 4)] for label, entry in analysis.items()]
    data = {
        label: {
            "cosine": e["cosine"],
            "n": e["n"],
            "labels": e["labels"],
            "tsne": np.round(np.asarray(e["tsne"]), 4).tolist(),
        }
        for label, e in analysis.items()
    }
    return write_analysis(
        output_dir,
        name,
        analysis="features",
        title=title,
        figure=figure,
        columns=["model", "images", "mean cosine similarity"],
        rows=rows,
        data=data,
        notes=[
            "Cosine similarity between each image's clean and adversarial "
            "features, averaged over the images (1 = unaffected)."
        ],
    )
