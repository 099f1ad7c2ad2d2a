"""Training curves (paper Fig. 7): loss and accuracy against training epochs.

The paper evaluates TeCoA and MMCoA after every epoch (every 4 for MMCoA). ``mmcoa train``
keeps one rolling checkpoint while it runs (``checkpoints/last.pt``, overwritten at each epoch
end; kept after the run only with ``--keep-resume-state``) and ``final.pt``, plus ``checkpoints/epoch<N>.pt`` at every epoch end when run with
``--keep-epoch-checkpoints``; this analysis plots:

- the training loss of every logged step (``metrics.jsonl``), against the fractional epoch;
- the accuracy (clean and under attack, via :func:`mmcoa.eval.evaluate`) at every checkpoint
  it can place on the epoch axis: the starting weights (epoch 0, the run's ``pretrained``),
  each trainer checkpoint under ``RUN/checkpoints/`` (its stored step gives its epoch; the
  ``epoch<N>.pt`` of ``--keep-epoch-checkpoints`` give one point per epoch), ``final.pt`` (the last
  logged step), and checkpoints given explicitly with their epoch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence


from mmcoa.analysis.attacked import make_attack
from mmcoa.analysis.plotting import new_figure, percent, write_analysis
from mmcoa.analysis.runs import Run, read_runs
from mmcoa.data import load_dataset
from mmcoa.errors import MmcoaError
from mmcoa.files import load_tensors
from mmcoa.eval import evaluate
from mmcoa.report import columns as C

START = "start"


def loss_curves(runs: Sequence[Run]) -> dict[str, dict[str, list[float]]]:
    """``{run label: {"epoch": [...], "loss": [...]}}`` for every logged step."""
    return {
        run.label: {
            "epoch": [run.epoch_at(r["step"]) for r in run.rows],
            "loss": [float(r["loss"]) for r in run.rows],
        }
        for run in runs
    }


def checkpoint_points(run: Run, extra: Mapping[float, str] | None = None) -> list[tuple[float, str | None]]:
    """``[(epoch, weights)]`` sorted by epoch; weights ``None`` means the run's starting weights
    (random init for tiny models). Of two checkpoints at the same epoch, ``final.pt`` wins."""
    points = {0.0: run.config.get("pretrained") or START}
    for path in sorted((run.path / "checkpoints").glob("*.pt")):
        step = _trainer_step(path)
        if step is not None:
            points.setdefault(run.epoch_at(step), str(path))
    if (run.path / "final.pt").is_file():
        points[run.epoch_at(run.steps)] = str(run.path / "final.pt")
    points.update({float(epoch): str(path) for epoch, path in (extra or {}).items()})
    return [(epoch, None if weights == START else weights) for epoch, weights in sorted(points.items())]


def _trainer_step(path: Path) -> int | None:
    """The optimizer step stored in an ``mmcoa train`` checkpoint; None for other files."""
    from mmcoa.train.checkpointing import trainer_step

    expected = "an mmcoa train checkpoint (RUN/checkpoints/) or a state dict saved with torch.save"
    return trainer_step(load_tensors(path, f"checkpoint {path}", expected))


def training_curves(
    run_dirs: Sequence[str | os.PathLike],
    *,
    checkpoints: Mapping[float, str] | None = None,
    dataset=None,
    split: str = "test",
    attacks: Sequence = ("clean", "pgd"),
    attack_params: dict | None = None,
    n_samples: int | None = 500,
    batch_size: int = 128,
    seed: int = 0,
    device: str = "cpu",
    evaluate_checkpoints: bool = True,
    progress: bool = False,
) -> dict:
    """Loss curves of the runs and, unless ``evaluate_checkpoints`` is false, the records of
    every checkpoint point (each tagged with ``run`` (the run's label), ``epoch`` and ``label``
    = "RUN @ epoch E", so a report shows one row per checkpoint).

    ``checkpoints`` ({epoch: path}) adds points to a single run. ``dataset`` is a dataset or a
    name (default: each run's training dataset, ``split`` test)."""
    runs = read_runs(run_dirs)
    if checkpoints and len(runs) != 1:
        raise MmcoaError(
            "explicit checkpoints need exactly one run; with several runs, put "
            "trainer checkpoints under RUN/checkpoints/"
        )
    records = []
    if evaluate_checkpoints:
        attacks = [make_attack(a, **(attack_params or {})) for a in attacks]
        for run in runs:
            data = _dataset_for(run, dataset, split)
            for epoch, weights in checkpoint_points(run, checkpoints):
                found = evaluate(
                    run.config["model"],
                    data,
                    attacks,
                    pretrained=weights,
                    n_samples=n_samples,
                    batch_size=batch_size,
                    seed=seed,
                    device=device,
                    progress=progress,
                )
                records += [
                    {**r, "label": f"{run.label} @ epoch {epoch:g}", "run": run.label, "epoch": epoch}
                    for r in found
                ]
    return {"loss": loss_curves(runs), "records": records}


def _dataset_for(run: Run, dataset, split: str):
    if dataset is not None and not isinstance(dataset, str):
        return dataset
    return load_dataset(dataset or run.config["dataset"], split=split, root=run.config.get("data_root"))


def accuracy_series(records: list[dict]) -> dict[str, list[tuple[float, float]]]:
    """``{"run: threat (attack)": [(epoch, accuracy)]}`` sorted by epoch."""
    names = C.series_name_map(C.setting_of(r, with_n=False) for r in records)
    out: dict = {}
    for r in records:
        name = f"{r['run']}: {names[C.setting_key(C.setting_of(r, with_n=False))]}"
        out.setdefault(name, []).append((r["epoch"], r["accuracy"]))
    return {name: sorted(points) for name, points in out.items()}


def plot_curves(curves: dict, output_dir: str | os.PathLike, name: str = "curves") -> Path:
    """``NAME.png`` (loss, and accuracy when evaluated, against epochs) and ``NAME.json``."""
    series = accuracy_series(curves["records"])
    figure, axes = new_figure(14 if series else 8, 5, ncols=2 if series else 1)
    for label, curve in curves["loss"].items():
        axes[0].plot(curve["epoch"], curve["loss"], label=label, linewidth=1)
    _label_axes(axes[0], "training loss (per step)", "Training loss")
    rows = []
    if series:
        for series_name, points in series.items():
            axes[1].plot([e for e, _ in points], [100 * a for _, a in points], marker="o", label=series_name)
            rows += [[series_name, round(e, 4), percent(a)] for e, a in points]
        _label_axes(axes[1], "accuracy (%)", "Accuracy at checkpoints")
        axes[1].set_ylim(0, 100)
    title = "Training curves against epochs (paper Fig. 7)"
    figure.suptitle(title)
    figure.subplots_adjust(top=0.86, wspace=0.25)
    data = {"loss": curves["loss"], "accuracy": {n: [list(p) for p in pts] for n, pts in series.items()}}
    notes = ["Loss is logged per optimizer step; epochs are fractional (step / steps per epoch)."]
    if not series:
        notes.append("No checkpoint was evaluated (loss curves only).")
    return write_analysis(
        output_dir,
        name,
        analysis="curves",
        title=title,
        figure=figure,
        columns=["series", "epoch", "accuracy (%)"],
        rows=rows,
        data=data,
        notes=notes,
    )


def _label_axes(ax, ylabel: str, title: str) -> None:
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
