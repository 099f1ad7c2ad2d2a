"""Time cost (paper Table VIII: training time per epoch and batch size, NVIDIA A6000).

- Training, from each run's ``metrics.jsonl``: the seconds of each logged step (resumes
  handled), summed per epoch and averaged over the complete epochs. A run shorter than one epoch
  (``max_steps``) gets an estimate: mean step time × steps per epoch, marked as such.
- Evaluation, from result records: ``elapsed_s`` (time spent attacking and classifying, as
  the runner measures it) and the same per sample.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from mmcoa.analysis.plotting import new_figure, write_analysis
from mmcoa.analysis.runs import Run, step_durations
from mmcoa.errors import MmcoaError
from mmcoa.report import columns as C


def training_time(run: Run) -> dict:
    """Seconds per epoch (``estimated`` when no epoch was completed) and the run's settings."""
    per_epoch: dict[int, list[float]] = {}
    for row, seconds in zip(run.rows, step_durations(run.rows)):
        per_epoch.setdefault(int(row.get("epoch", 0)), []).append(seconds)
    complete = [sum(s) for s in per_epoch.values() if len(s) == run.per_epoch]
    all_steps = [s for steps in per_epoch.values() for s in steps]
    estimated = not complete
    seconds = (
        (sum(all_steps) / len(all_steps) * run.per_epoch) if estimated else sum(complete) / len(complete)
    )
    images = sum(int(r.get("images", 0)) for r in run.rows)
    return {
        "run": run.label,
        "path": str(run.path),
        "method": run.config.get("method"),
        "dataset": run.config.get("dataset"),
        "shots": run.config.get("shots"),
        "batch_size": run.config.get("batch_size"),
        "device": run.config.get("device"),
        "steps": len(run.rows),
        "steps_per_epoch": run.per_epoch,
        "complete_epochs": len(complete),
        "seconds_per_epoch": seconds,
        "estimated": estimated,
        "total_s": sum(all_steps),
        "images_per_s": images / sum(all_steps) if sum(all_steps) else None,
    }


def evaluation_time(records: Sequence[dict]) -> list[dict]:
    """One row per record: label, dataset, attack setting, samples, seconds, ms per sample."""
    rows = []
    for label, record in zip(C.row_labels(list(records)), records):
        n = record.get("n_samples", record.get("n_images")) or 0
        rows.append(
            {
                "label": label,
                "dataset": record["dataset"],
                "attack": C.describe(C.setting_of(record, with_n=False), protocol=False),
                "brief": C.brief(C.setting_of(record)),
                "n": n,
                "elapsed_s": record.get("elapsed_s"),
                "ms_per_sample": 1000 * record["elapsed_s"] / n
                if n and record.get("elapsed_s") is not None
                else None,
            }
        )
    return rows


def time_cost(runs: Sequence[Run] = (), records: Sequence[dict] = ()) -> dict:
    return {"training": [training_time(r) for r in runs], "evaluation": evaluation_time(records)}


def plot_time_cost(cost: dict, output_dir: str | os.PathLike, name: str = "time_cost") -> Path:
    """``NAME.png`` (bars: seconds per training epoch; ms per evaluated sample) and
    ``NAME.json`` (the numbers as the paper's Table VIII, plus evaluation rows)."""
    timed = {
        "training": cost["training"],
        "evaluation": [e for e in cost["evaluation"] if e["ms_per_sample"] is not None],
    }
    panels = [p for p in ("training", "evaluation") if timed[p]]
    if not panels:
        raise MmcoaError(
            "no training run and no result record to time; pass run directories of mmcoa train "
            "(config.json and metrics.jsonl) or result records with elapsed_s"
        )
    figure, axes = new_figure(7 * len(panels), 5, ncols=len(panels))
    for ax, panel in zip(axes, panels):
        (_training_bars if panel == "training" else _evaluation_bars)(ax, timed[panel])
    title = "Time cost: training per epoch, evaluation per sample (paper Table VIII)"
    figure.suptitle(title)
    figure.subplots_adjust(top=0.86, bottom=0.3, wspace=0.35)
    rows = [
        [
            t["run"],
            t["dataset"],
            t["shots"],
            t["batch_size"],
            t["device"],
            round(t["seconds_per_epoch"], 2),
            "estimate" if t["estimated"] else f"{t['complete_epochs']} epochs",
            round(t["total_s"], 2),
        ]
        for t in cost["training"]
    ]
    rows += [
        [f"eval: {e['label']}", e["dataset"], e["attack"], None, None, None, f"n={e['n']}", e["elapsed_s"]]
        for e in cost["evaluation"]
    ]
    return write_analysis(
        output_dir,
        name,
        analysis="time",
        title=title,
        figure=figure,
        columns=[
            "run / evaluation",
            "dataset",
            "shots / attack",
            "batch size",
            "device",
            "s per epoch",
            "basis",
            "total s",
        ],
        rows=rows,
        data=cost,
        notes=[
            "Per-epoch time of runs shorter than an epoch is mean step time × steps per epoch (an estimate)."
        ],
    )


def _training_bars(ax, runs: list[dict]) -> None:
    names = [f"{t['run']}\n{t['dataset']}, bs {t['batch_size']}" for t in runs]
    bars = ax.bar(names, [t["seconds_per_epoch"] for t in runs], color="tab:blue")
    for bar, t in zip(bars, runs):
        if t["estimated"]:
            bar.set_hatch("//")
    ax.set_ylabel("training time per epoch (s)")
    ax.set_title("Training (hatched: estimated from partial epoch)", fontsize=10)
    ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    ax.legend([bars[0]], ["seconds per epoch"], fontsize=8)


def _evaluation_bars(ax, rows: list[dict]) -> None:
    rows = [e for e in rows if e["ms_per_sample"] is not None]
    names = [f"{e['label']}\n{e['dataset']}: {e['brief']}" for e in rows]
    ax.bar(names, [e["ms_per_sample"] for e in rows], color="tab:orange", label="ms per sample")
    ax.set_ylabel("evaluation time per sample (ms)")
    ax.set_title("Evaluation (attack + classification)", fontsize=10)
    ax.tick_params(axis="x", labelrotation=45, labelsize=7)
    ax.legend(fontsize=8)
