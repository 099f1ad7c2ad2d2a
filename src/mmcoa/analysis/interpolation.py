"""Weight interpolation between zero-shot and fine-tuned weights (paper Fig. 8, after WiSE-FT,
Wortsman et al. 2022): ``theta(lambda) = (1 - lambda) · theta_zero-shot + lambda · theta_tuned``.

Each interpolated model is evaluated clean and under the given attacks by
:func:`mmcoa.eval.evaluate`; the plot puts clean accuracy on x and robust accuracy on y, one
curve per attack, each point labelled with its lambda. Only the backend weights
(``model.model``) are interpolated; a visual prompt (method ``vp``) is not.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Mapping, Sequence

import torch

from mmcoa.analysis.attacked import make_attack, quiet
from mmcoa.analysis.plotting import new_figure, percent, write_analysis
from mmcoa.errors import MmcoaError
from mmcoa.eval import evaluate
from mmcoa.models import VisionLanguageModel
from mmcoa.report import columns as C

LAMBDAS = (0.0, 0.25, 0.5, 0.75, 1.0)
SAME_ARCHITECTURE = "interpolate checkpoints of the same architecture"


def interpolate_state_dicts(
    zero_shot: Mapping[str, torch.Tensor], tuned: Mapping[str, torch.Tensor], lam: float
) -> dict[str, torch.Tensor]:
    """``(1 - lam) · zero_shot + lam · tuned`` for floating tensors. At ``lam`` 0 and 1 the
    endpoint tensors are returned exactly (copies), not recomputed; integer and boolean
    buffers, which cannot be mixed, are taken from the nearer endpoint."""
    if set(zero_shot) != set(tuned):
        missing = sorted(set(zero_shot) ^ set(tuned))
        raise MmcoaError(f"the two state dicts have different keys (e.g. {missing[:2]}); {SAME_ARCHITECTURE}")
    if not 0 <= lam <= 1:
        raise MmcoaError(f"lambda must be in [0, 1]; got {lam:g}")
    return {key: _mix(key, zero_shot[key], tuned[key], lam) for key in zero_shot}


def _mix(key: str, a: torch.Tensor, b: torch.Tensor, lam: float) -> torch.Tensor:
    if a.shape != b.shape:
        raise MmcoaError(
            f"tensor {key!r} has shape {list(a.shape)} in one state dict and {list(b.shape)} in the "
            f"other; {SAME_ARCHITECTURE}"
        )
    if lam == 0 or lam == 1 or not a.is_floating_point():
        return (a if lam < 0.5 else b).detach().clone()
    return ((1 - lam) * a.detach() + lam * b.detach().to(a.dtype)).to(a.dtype)


def interpolation(
    zero_shot: VisionLanguageModel,
    tuned: VisionLanguageModel | Mapping[str, torch.Tensor],
    dataset,
    *,
    lambdas: Sequence[float] = LAMBDAS,
    attacks: Sequence = ("clean", "pgd"),
    attack_params: dict | None = None,
    **evaluation,
) -> list[dict]:
    """Evaluate ``theta(lambda)`` for each lambda; returns the records, each tagged with
    ``lambda`` and ``label`` ("lambda=0.5"). ``tuned`` is a model or its backend state dict;
    neither input model is modified. ``attacks`` must include ``clean``. ``evaluation``:
    :func:`mmcoa.eval.evaluate`'s keywords (as for :func:`~mmcoa.analysis.eps_sweep.eps_sweep`)."""
    attacks = [make_attack(a, **(attack_params or {})) for a in attacks]
    if "clean" not in {a.name for a in attacks} or len(attacks) < 2:
        raise MmcoaError("interpolation needs clean and at least one attack, e.g. clean,pgd")
    start = {k: v.detach().clone() for k, v in zero_shot.model.state_dict().items()}
    end = tuned.model.state_dict() if isinstance(tuned, VisionLanguageModel) else dict(tuned)
    _check_lambdas(lambdas)
    interpolate_state_dicts(start, end, 0.0)  # mismatched keys or shapes fail before any work
    work = copy.deepcopy(zero_shot, memo=zero_shot.copy_memo())
    records = []
    for lam in lambdas:
        work.model.load_state_dict(interpolate_state_dicts(start, end, lam))
        found = evaluate(work, dataset, attacks, **quiet(evaluation))
        records += [
            {**r, "label": f"lambda={lam:g}", "lambda": lam, "analysis": "interpolation"} for r in found
        ]
    return records


def _zoom(ax, xs: list[float], ys: list[float], margin: float = 5.0) -> None:
    """Axes around the points (at least 10 points wide, within 0-100 %), so nearby lambdas
    stay apart."""
    for values, set_limits in ((xs, ax.set_xlim), (ys, ax.set_ylim)):
        if values:
            low, high = min(values) - margin, max(values) + margin
            pad = max(0.0, 10 - (high - low)) / 2
            set_limits(max(0, low - pad), min(100, high + pad))


def _check_lambdas(lambdas: Sequence[float]) -> None:
    if not lambdas or any(not 0 <= lam <= 1 for lam in lambdas):
        raise MmcoaError(f"lambdas must be values in [0, 1]; got {list(lambdas)}")


def interpolation_points(records: list[dict]) -> dict:
    """``{attack series: [(lambda, clean accuracy, robust accuracy)]}`` sorted by lambda."""
    clean = {r["lambda"]: r["accuracy"] for r in records if r["attack"] == "clean"}
    attacked = [r for r in records if r["attack"] != "clean"]
    names = C.series_name_map(C.setting_of(r) for r in attacked)
    out: dict = {}
    for r in attacked:
        out.setdefault(names[C.setting_key(C.setting_of(r))], []).append(
            (r["lambda"], clean.get(r["lambda"]), r["accuracy"])
        )
    return {name: sorted(points) for name, points in out.items()}


def plot_interpolation(
    records: list[dict], output_dir: str | os.PathLike, name: str = "interpolation"
) -> Path:
    """``NAME.png`` (robust against clean accuracy, %, points labelled with lambda) and
    ``NAME.json``; returns the JSON path."""
    series = interpolation_points(records)
    if not series:
        raise MmcoaError("no attacked interpolation record to plot")
    figure, (ax,) = new_figure(8, 5)
    rows = []
    for series_name, points in series.items():
        xs = [100 * c if c is not None else float("nan") for _, c, _ in points]
        ys = [100 * r for _, _, r in points]
        ax.plot(xs, ys, marker="o", label=series_name)
        for (lam, _, _), x, y in zip(points, xs, ys):
            ax.annotate(f"λ={lam:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        rows += [[f"{series_name}, λ={lam:g}", lam, percent(c), percent(r)] for lam, c, r in points]
    title = "Robust against clean accuracy along θ(λ) = (1−λ)·θ_zero-shot + λ·θ_tuned (paper Fig. 8)"
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("clean accuracy (%)")
    ax.set_ylabel("robust accuracy (%)")
    _zoom(
        ax,
        [x for _, c, _ in sum(series.values(), []) if c is not None for x in [100 * c]],
        [100 * r for _, _, r in sum(series.values(), [])],
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return write_analysis(
        output_dir,
        name,
        analysis="interpolation",
        title=title,
        figure=figure,
        columns=["point", "lambda", "clean (%)", "robust (%)"],
        rows=rows,
        data={"series": {n: [list(p) for p in pts] for n, pts in series.items()}},
        notes=["λ = 0 is the zero-shot model, λ = 1 the fine-tuned one."],
    )
