"""Reading a training run directory written by ``mmcoa train``.

A run holds ``config.json`` (the resolved settings), ``metrics.jsonl`` (one line per optimizer
step: step, epoch, loss, loss terms, images, elapsed_s since the (re)start), ``shots.json`` (the
training indices), ``metrics.json`` (after the last step), ``checkpoints/last.pt`` (overwritten
at each epoch end and every ``save_every`` steps while the run goes; removed when it finishes
unless ``--keep-resume-state``) and ``final.pt``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from mmcoa.errors import MmcoaError


@dataclass
class Run:
    path: Path
    label: str
    config: dict
    rows: list[dict]
    per_epoch: int  # optimizer steps per epoch

    @property
    def steps(self) -> int:
        return self.rows[-1]["step"] if self.rows else 0

    def epoch_at(self, step: int) -> float:
        """Epochs completed after ``step`` optimizer steps (fractional)."""
        return step / self.per_epoch


def is_run(path: Path) -> bool:
    return (path / "metrics.jsonl").is_file() and (path / "config.json").is_file()


def find_runs(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Run directories among ``paths`` and below them."""
    found = []
    for path in map(Path, paths):
        if path.is_dir():
            found += [p for p in [path, *sorted(path.rglob("*"))] if p.is_dir() and is_run(p)]
    return list(dict.fromkeys(found))


def read_runs(paths: Iterable[str | os.PathLike]) -> list[Run]:
    """Each run directory read, labelled by its method (and its folder name when two runs share
    a method)."""
    paths = list(paths)
    for path in paths:
        if not is_run(Path(path)):
            raise MmcoaError(
                f"{str(path)!r} is not a training run directory (no config.json and "
                "metrics.jsonl; see mmcoa train --output)"
            )
    runs = [_read(Path(p)) for p in paths]
    methods = [r.config.get("method", r.path.name) for r in runs]
    for run, method in zip(runs, methods):
        run.label = method if methods.count(method) == 1 else f"{method} ({run.path.name})"
    return runs


def _read(path: Path) -> Run:
    config = _json(path / "config.json")
    rows = []
    for number, line in enumerate((path / "metrics.jsonl").read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise MmcoaError(
                    f"{path / 'metrics.jsonl'} line {number} is not JSON; expected one JSON object per "
                    "line, as mmcoa train logs them"
                ) from None
    if not rows:
        raise MmcoaError(f"training run {str(path)!r} has logged no step yet (metrics.jsonl is empty)")
    return Run(path, path.name, config, rows, _steps_per_epoch(path, config, rows))


def _steps_per_epoch(path: Path, config: dict, rows: list[dict]) -> int:
    items = None
    if (path / "metrics.json").is_file():  # n_epoch_items: a run whose epochs see new items (pop)
        metrics = _json(path / "metrics.json")
        items = metrics.get("n_epoch_items") or metrics.get("n_train_items")
    if items is None and (path / "shots.json").is_file():
        items = len(_json(path / "shots.json").get("indices", []))
    if items and config.get("batch_size"):
        return max(1, math.ceil(items / config["batch_size"]))
    first_epoch = [r for r in rows if r.get("epoch", 0) == 0]
    return max(1, len(first_epoch))


def step_durations(rows: list[dict]) -> list[float]:
    """Seconds each logged step took; ``elapsed_s`` restarts from 0 when a run is resumed."""
    durations, previous = [], 0.0
    for row in rows:
        elapsed = float(row["elapsed_s"])
        durations.append(elapsed - previous if elapsed >= previous else elapsed)
        previous = elapsed
    return durations


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise MmcoaError(f"cannot read {path} ({type(error).__name__})") from error
