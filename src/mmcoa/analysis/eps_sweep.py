"""Robust accuracy against the perturbation budget (paper Fig. 6).

The paper raises the L-inf budget of its image attack (PGD) and its multimodal attack (PGD +
BERT-Attack) through 1/255, 2/255 and 4/255 and plots MMCoA's robust accuracy. Here any
models (e.g. CLIP, TeCoA and MMCoA) are evaluated by :func:`mmcoa.eval.evaluate`, once clean
and once per (attack, eps); the step size and every other parameter stay at the values given
(by default the paper's test setting: step 1/255, 100 steps).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

from mmcoa.analysis.attacked import labelled, make_attack, quiet
from mmcoa.analysis.plotting import new_figure, percent, write_analysis
from mmcoa.errors import MmcoaError
from mmcoa.eval import evaluate
from mmcoa.models import VisionLanguageModel
from mmcoa.report import columns as C

SWEEP_EPS = (1, 2, 4)  # in units of 1/255
SWEEP_ATTACKS = ("pgd", "multimodal")
THREAT_STYLES = {"image": "-", "multimodal": "--", "text": ":"}


def eps_sweep(
    models: VisionLanguageModel | Mapping[str, VisionLanguageModel],
    dataset,
    *,
    eps: Sequence[float] = SWEEP_EPS,
    attacks: Sequence[str] = SWEEP_ATTACKS,
    attack_params: dict | None = None,
    **evaluation,
) -> list[dict]:
    """Evaluate each model (one, or ``{label: model}``) clean and under each attack at each
    ``eps`` (units of 1/255); returns the records, each with its ``label``.

    ``attack_params`` (pixel units) go to every attack that takes them, e.g.
    ``{"n_steps": 20, "mlm": "runs/demo/mlm"}``; ``eps`` is set by the sweep. ``evaluation``:
    :func:`mmcoa.eval.evaluate`'s keywords (``n_samples``, ``batch_size``, ``seed``,
    ``template``, ``progress``; no progress bar by default)."""
    _check_sweep(eps, attacks)
    params = {k: v for k, v in (attack_params or {}).items() if k != "eps"}
    sweep = [make_attack("clean")] + [
        make_attack(name, **params, eps=e / 255) for name in attacks for e in eps
    ]
    records = []
    for label, model in labelled(models).items():
        found = evaluate(model, dataset, sweep, **quiet(evaluation))
        records += [{**record, "label": label} for record in found]
    return records


def _check_sweep(eps: Sequence[float], attacks: Sequence[str]) -> None:
    if not eps or any(not 0 < e <= 255 for e in eps):
        raise MmcoaError(f"eps values must be in (0, 255] (units of 1/255); got {list(eps)}")
    if not attacks or "clean" in attacks:
        raise MmcoaError(f"give the attacks to sweep (clean is always added); got {list(attacks)}")


def sweep_series(records: list[dict]) -> dict:
    """``{label: {"clean": accuracy or None, "series": {name: {"threat": ..., "points": {eps
    in 1/255: accuracy}}}}}``: one series per attack setting apart from eps (series of the same
    attack with other differing parameters are named apart, never merged)."""
    names = C.series_name_map(_base(r) for r in records if r["attack"] != "clean")
    out: dict = {}
    for label, record in zip(C.row_labels(records), records):
        entry = out.setdefault(label, {"clean": None, "series": {}})
        eps = record["attack_params"].get("eps")
        if record["attack"] == "clean":
            entry["clean"] = record["accuracy"]
        elif eps is not None:
            series = entry["series"].setdefault(
                names[C.setting_key(_base(record))], {"threat": C.threat_of(record), "points": {}}
            )
            series["points"][round(eps * 255, 4)] = record["accuracy"]
    return out


def _base(record: dict) -> dict:
    """The record's setting without its eps: what one series shares."""
    return {k: v for k, v in C.setting_of(record).items() if k != "eps"}


def plot_eps_sweep(records: list[dict], output_dir: str | os.PathLike, name: str = "eps_sweep") -> Path:
    """``NAME.png`` (robust accuracy in % against eps in 1/255) and ``NAME.json``; returns the
    JSON path."""
    series = sweep_series(records)
    budgets = sorted({e for entry in series.values() for s in entry["series"].values() for e in s["points"]})
    if not budgets:
        raise MmcoaError("no attacked record with an eps among the records; nothing to plot")
    figure, (ax,) = new_figure(8, 5)
    rows = []
    for color, (label, entry) in zip(_colors(), series.items()):
        for series_name, line in entry["series"].items():
            points = line["points"]
            xs = sorted(points)
            ax.plot(
                xs,
                [100 * points[x] for x in xs],
                marker="o",
                color=color,
                linestyle=THREAT_STYLES.get(line["threat"], "-."),
                label=f"{label}: {series_name}",
            )
            rows.append([f"{label}: {series_name}", *[percent(points.get(e)) for e in budgets], None])
        if entry["clean"] is not None:
            ax.axhline(
                100 * entry["clean"], color=color, linestyle="dotted", linewidth=1, label=f"{label}: clean"
            )
            rows.append([f"{label}: clean", *[None] * len(budgets), percent(entry["clean"])])
    _style_axes(ax, budgets)
    title = "Robust accuracy against the perturbation budget (paper Fig. 6)"
    ax.set_title(title)
    columns = ["series", *[f"eps={e:g}/255" for e in budgets], "clean"]
    return write_analysis(
        output_dir,
        name,
        analysis="eps-sweep",
        title=title,
        figure=figure,
        columns=columns,
        rows=rows,
        data={"series": _jsonable(series)},
        notes=["Accuracy in %; clean accuracy is drawn dotted."],
    )


def _style_axes(ax, budgets: list[float]) -> None:
    ax.set_xlabel("perturbation budget ε (L-inf, units of 1/255)")
    ax.set_ylabel("robust accuracy (%)")
    ax.set_xticks(budgets)
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def _colors():
    return iter(
        [
            "tab:blue",
            "tab:orange",
            "tab:green",
            "tab:red",
            "tab:purple",
            "tab:brown",
            "tab:pink",
            "tab:gray",
            "tab:olive",
            "tab:cyan",
        ]
        * 10
    )


def _jsonable(series: dict) -> dict:
    """JSON object keys must be strings: eps values as text."""
    return {
        label: {
            "clean": e["clean"],
            "series": {
                n: {"threat": s["threat"], "points": {f"{k:g}": v for k, v in s["points"].items()}}
                for n, s in e["series"].items()
            },
        }
        for label, e in series.items()
    }
