"""Clean against adversarial image features (paper Fig. 9): a t-SNE map of both and the mean
cosine similarity between each image's clean and adversarial features.

The paper finds MMCoA's clean and adversarial features the most mixed in t-SNE and the most
similar per image. t-SNE (van der Maaten & Hinton, 2008) is implemented here in NumPy, exactly
(O(N²) memory and time: meant for the few hundred to few thousand points of such a plot),
rather than taking scikit-learn as a dependency for one function.
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
def tsne(x: np.ndarray, *, perplexity: float = 30.0, n_iter: int = 1000, seed: int = 0) -> np.ndarray:
    """Exact t-SNE of ``x`` [N, D] to [N, 2]: Gaussian affinities calibrated to ``perplexity``
    (binary search per point), symmetrized; Student-t similarities in 2-D; gradient descent with
    momentum 0.5 → 0.8, per-coordinate gains, early exaggeration 12 for 250 iterations,
    learning rate max(N / 48, 50) (scikit-learn's "auto"); PCA initialization scaled to
    std 1e-4, with a seeded jitter."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or len(x) < 4:
        raise MmcoaError(f"t-SNE needs at least 4 points in an [N, D] array; got shape {list(x.shape)}")
    n = len(x)
    p = _joint_probabilities(_squared_distances(x), min(perplexity, (n - 1) / 3))
    y = _pca_start(x, seed)
    velocity, gains = np.zeros_like(y), np.ones_like(y)
    rate = max(n / 48, 50.0)
    for it in range(n_iter):
        exaggeration, momentum = (12.0, 0.5) if it < 250 else (1.0, 0.8)
        grad = _kl_gradient(p * exaggeration, y)
        gains = np.where(np.sign(grad) != np.sign(velocity), gains + 0.2, gains * 0.8).clip(min=0.01)
        velocity = momentum * velocity - rate * gains * grad
        y = y + velocity
        y -= y.mean(axis=0)
    return y


def _squared_distances(x: np.ndarray) -> np.ndarray:
    sq = (x * x).sum(1)
    return np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0.0)


def _joint_probabilities(distances: np.ndarray, perplexity: float) -> np.ndarray:
    n = len(distances)
    conditional = np.stack([_row_probabilities(distances[i], i, np.log(perplexity)) for i in range(n)])
    joint = (conditional + conditional.T) / (2 * n)
    return np.maximum(joint, 1e-12)


def _row_probabilities(row: np.ndarray, index: int, target_entropy: float) -> np.ndarray:
    """p_j|i with the precision beta found by bisection so that the entropy is log(perplexity)."""
    others = np.delete(row, index)
    others = others - others.min()  # shift for stability; cancels in the normalization
    low, high, beta = 0.0, np.inf, 1.0
    for _ in range(100):
        weights = np.exp(-others * beta)
        total = max(weights.sum(), 1e-300)
        entropy = np.log(total) + beta * (others * weights).sum() / total
        if abs(entropy - target_entropy) < 1e-5:
            break
        if entropy > target_entropy:
            low, beta = beta, beta * 2 if high == np.inf else (beta + high) / 2
        else:
            high, beta = beta, (beta + low) / 2
    return np.insert(weights / total, index, 0.0)


def _pca_start(x: np.ndarray, seed: int) -> np.ndarray:
    centered = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(centered, full_matrices=False)
    y = centered @ vt[:2].T
    if y.shape[1] < 2:
        y = np.pad(y, ((0, 0), (0, 2 - y.shape[1])))
    y = y / max(y[:, 0].std(), 1e-12) * 1e-4
    return y + np.random.default_rng(seed).normal(0, 1e-6, y.shape)


def _kl_gradient(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """d KL(P ‖ Q) / dy_i = 4 Σ_j (p_ij − q_ij) (1 + |y_i − y_j|²)⁻¹ (y_i − y_j)."""
    inverse = 1.0 / (1.0 + _squared_distances(y))
    np.fill_diagonal(inverse, 0.0)
    q = np.maximum(inverse / inverse.sum(), 1e-12)
    weights = (p - q) * inverse
    return 4.0 * (np.diag(weights.sum(1)) - weights) @ y


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
    attack_params: dict | None = None,
    n_samples: int | None = 500,
    batch_size: int = 64,
    seed: int = 0,
    perplexity: float = 30.0,
    n_iter: int = 1000,
) -> dict:
    """For each model (one, or ``{label: model}``): mean clean/adversarial cosine similarity and
    a joint t-SNE map of its clean and adversarial features (clean rows first)."""
    out = {}
    for label, model in labelled(models).items():
        features = attacked_features(
            model,
            dataset,
            attack,
            attack_params=attack_params,
            n_samples=n_samples,
            batch_size=batch_size,
            seed=seed,
        )
        both = torch.cat([features["clean"], features["adversarial"]]).numpy()
        out[label] = {
            "cosine": mean_cosine_similarity(features["clean"], features["adversarial"]),
            "tsne": tsne(both, perplexity=perplexity, n_iter=n_iter, seed=seed),
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
