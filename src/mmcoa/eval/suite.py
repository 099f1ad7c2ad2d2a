"""Running a suite (the paper's Tables I–VI): every cell of models × datasets × attacks.

The output folder::

    DIR/suite.json               resolved configuration, versions, the cells in table order
    DIR/subsets/<dataset>.json   the fixed, seeded sample indices of each dataset
    DIR/cells/<cell id>.json     one record per cell, written atomically when the cell ends
    DIR/records.json             every finished cell's record, in table order (for mmcoa report)

A cell record is the ``mmcoa eval`` record (``mmcoa retrieval`` for retrieval suites) plus
``suite``, ``cell``, ``label``, ``attack_label``, ``cell_settings`` and ``subset`` (meanings:
``docs/reproduce.md``, "The output folder"). With ``resume``, cells whose record exists with the
same settings are skipped and the saved subsets reused, so two runs compare cell by cell. Under
``torchrun`` every process runs every cell on its share of the batches and the counts are summed
(:mod:`mmcoa.distributed`); rank 0 alone writes. Retrieval suites run in one process.
"""

from __future__ import annotations

import json
import time
from itertools import groupby
from pathlib import Path

from tqdm.auto import tqdm

from mmcoa.data import load_coco_karpathy, load_dataset
from mmcoa.devices import check_device
from mmcoa.distributed import SINGLE, World, barrier, world_from_env
from mmcoa.errors import MmcoaError
from mmcoa.files import write_json_atomic
from mmcoa.provenance import versions
from mmcoa.eval.retrieval import evaluate_retrieval
from mmcoa.eval.metrics import Scoring
from mmcoa.eval.runner import evaluate, indices_sha1, sample_indices
from mmcoa.eval.suite_config import Cell, DatasetEntry, SuiteConfig, json_ready, slug
from mmcoa.models import load_model

SUITE_FILE = "suite.json"
RECORDS_FILE = "records.json"
CELLS_DIR = "cells"
SUBSETS_DIR = "subsets"
SUBSET_KEYS = ("split", "n_samples", "seed")  # settings that fix the saved sample subsets


def run_suite(
    config: SuiteConfig, output: str | Path, *, resume: bool = False, progress: bool = True
) -> list[dict]:
    """Evaluate every cell of ``config`` not already finished under ``output``; returns all
    finished records in table order. Everything that can be checked is checked before the first
    file is written; each model row (per checkpoint) and each dataset is loaded once."""
    output = Path(output)
    _check_output(output, config, resume)
    check_device(config.device)
    _require(
        config.task != "retrieval" or config.data_root,
        "retrieval suites need data_root (the MSCOCO folder holding dataset_coco.json): "
        "set it in the suite file or pass --data-root",
    )
    world, device = world_from_env(config.device)
    _require(
        config.task != "retrieval" or not world.distributed,
        "retrieval suites run in one process; start them without torchrun",
    )
    cells = config.cells()
    records = _finished_records(output, config, cells) if resume else {}
    pending = [cell for cell in cells if cell.id not in records]
    datasets = DatasetCache(config)
    subsets = {
        entry.name: _subset(output, config, entry, datasets.get(entry)) for entry in _unique_entries(pending)
    }
    attacks = {
        entry.label: _build_attack(config, entry)
        for entry in config.attacks
        if any(cell.attack == entry for cell in pending)
    }
    barrier(world)  # every rank has checked the folder before rank 0 writes to it
    if world.is_main:
        _write_start(output, config, cells, subsets)
    run = _Run(config, output, records, world, device)
    finished = False
    try:
        run.cells(pending, datasets, subsets, attacks, progress and world.is_main, len(cells))
        finished = True
    finally:
        ordered = [records[cell.id] for cell in cells if cell.id in records]
        if world.is_main and (finished or ordered):  # an interrupted run with no record writes none
            write_json_atomic(output / RECORDS_FILE, ordered)
    return ordered


class _Run:
    """The pending cells of one suite run, on this process's device."""

    def __init__(self, config: SuiteConfig, output: Path, records: dict, world: World, device: str):
        self.config, self.output, self.records = config, output, records
        self.world, self.device = world, device

    def cells(self, pending, datasets, subsets, attacks, progress, total) -> None:
        """Each model row is loaded once and iterates each of its datasets once: the cells of a
        (row, dataset) are evaluated on the same batches (classification suites)."""
        bar = tqdm(
            total=total,
            initial=total - len(pending),
            desc=f"suite {self.config.name}",
            unit="cell",
            disable=not progress,
        )
        for (row, weights), group in groupby(pending, key=lambda cell: (cell.model, cell.weights)):
            model = load_model(row.name, pretrained=weights, device=self.device)
            for _, same_data in groupby(group, key=lambda cell: cell.dataset.name):
                same_data = list(same_data)
                bar.set_postfix_str(
                    same_data[0].id
                    if len(same_data) == 1
                    else f"{slug(row.label)}__{slug(same_data[0].dataset.name)}"
                )
                dataset = datasets.get(same_data[0].dataset, model.image_size[0])
                records = evaluate_cells(
                    self.config,
                    same_data,
                    model,
                    dataset,
                    subsets[same_data[0].dataset.name]["indices"],
                    [attacks[cell.attack.label] for cell in same_data],
                    progress,
                    self.world,
                )
                for cell, record in zip(same_data, records):
                    if self.world.is_main:
                        write_json_atomic(self.output / CELLS_DIR / f"{cell.id}.json", record)
                    self.records[cell.id] = record
                bar.update(len(same_data))
            del model
        bar.close()


def evaluate_cells(
    config: SuiteConfig,
    cells: list[Cell],
    model,
    dataset,
    indices: list[int],
    attacks: list,
    progress: bool = False,
    world: World = SINGLE,
) -> list[dict]:
    """The records of cells sharing a model and a dataset: the evaluation records plus the suite
    keys (module docstring). Classification cells run in one pass over the dataset (each batch
    decoded once, every attack on it; a ``multimodal`` column reuses the images of a ``pgd``
    column with its PGD settings); each attack is seeded on its own, so every record is the one
    its cell gives alone. Retrieval cells run one by one."""
    if config.task == "retrieval":
        records = [
            evaluate_retrieval(
                model,
                dataset,
                attack,
                indices=indices,
                batch_size=config.batch_size,
                seed=config.seed,
                progress=progress,
                workers=config.workers,
            )
            for attack in attacks
        ]
    else:
        records = evaluate(
            model,
            dataset,
            attacks,
            indices=indices,
            batch_size=config.batch_size,
            seed=config.seed,
            device=str(model.device),
            template=config.template,
            progress=progress,
            world=world,
            workers=config.workers,
            scoring=Scoring(robust_metric=config.robust_metric),
        )
    for cell, record in zip(cells, records):
        record.update(
            suite=config.name,
            cell=cell.id,
            label=cell.model.label,
            attack_label=cell.attack.label,
            cell_settings=config.cell_settings(cell),
            subset={
                "file": f"{SUBSETS_DIR}/{slug(cell.dataset.name)}.json",
                "n": len(indices),
                "sha1": indices_sha1(indices),
            },
        )
    return records


def evaluate_cell(
    config: SuiteConfig,
    cell: Cell,
    model,
    dataset,
    indices: list[int],
    attack,
    progress: bool = False,
    world: World = SINGLE,
) -> dict:
    """One cell's record, as :func:`evaluate_cells` gives it."""
    return evaluate_cells(config, [cell], model, dataset, indices, [attack], progress, world)[0]


class DatasetCache:
    """Each dataset of a suite loaded once (retrieval images once per model input size)."""

    def __init__(self, config: SuiteConfig):
        self.config = config
        self._loaded: dict[tuple, object] = {}

    def get(self, entry: DatasetEntry, image_size: int = 224):
        key = (entry.name, image_size if self.config.task == "retrieval" else None)
        if key not in self._loaded:
            self._loaded[key] = self._load(entry, image_size)
        return self._loaded[key]

    def _load(self, entry: DatasetEntry, image_size: int):
        if self.config.task == "retrieval":
            return load_coco_karpathy(
                self.config.data_root, split=self.config.split, image_size=image_size, **entry.options
            )
        return load_dataset(entry.name, split=self.config.split, root=self.config.data_root, **entry.options)


def _build_attack(config: SuiteConfig, entry):
    """The attack of a column (built once, so text attacks' caches serve every cell), with its
    masked LM loaded before any evaluation starts."""
    attack = config.build_attack(entry)
    attack.prepare(config.device)
    return attack


# -- the output folder ---------------------------------------------------------------------------
def _check_output(output: Path, config: SuiteConfig, resume: bool) -> None:
    """A fresh run needs an empty or absent folder; a resumed one, a suite folder."""
    _require(not output.exists() or output.is_dir(), f"--output {output} is a file; give a folder")
    if not output.is_dir() or not any(output.iterdir()):
        return
    saved = _read_json(output / SUITE_FILE)
    _require(
        saved is not None,
        f"--output {output} is not empty and holds no {SUITE_FILE}; give a new or empty folder",
    )
    if resume:
        return
    differences = _differences(saved.get("settings") or {}, config.settings())
    _require(
        differences,
        f"--output {output} already holds this suite's results; pass --resume "
        "to continue it (finished cells are skipped)",
    )
    keep = (
        ""
        if set(differences) & set(SUBSET_KEYS)
        else ", or pass --resume to keep the cells whose settings still match"
    )
    _require(
        False,
        f"--output {output} holds results of different suite settings "
        f"({', '.join(differences)}); give a new folder{keep}",
    )


def _differences(saved: dict, current: dict) -> list[str]:
    return sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))


def _finished_records(output: Path, config: SuiteConfig, cells: list[Cell]) -> dict[str, dict]:
    """Records on disk whose cell settings match the cell's current ones."""
    found = {}
    for cell in cells:
        record = _read_json(output / CELLS_DIR / f"{cell.id}.json")
        if isinstance(record, dict) and record.get("cell_settings") == config.cell_settings(cell):
            found[cell.id] = record
    return found


def _subset(output: Path, config: SuiteConfig, entry: DatasetEntry, dataset) -> dict:
    """The dataset's subset file content: the one saved in this folder (checked against the
    settings), else a fresh seeded draw of ``n_samples`` indices (all when it is null)."""
    path = output / SUBSETS_DIR / f"{slug(entry.name)}.json"
    header = json_ready(
        {
            "dataset": entry.name,
            "options": entry.options,
            "split": config.split,
            "n_total": len(dataset),
            "n_samples": config.n_samples,
            "seed": config.seed,
        }
    )
    saved = _read_json(path)
    if saved is None:
        indices = sample_indices(len(dataset), config.n_samples, config.seed)
        return {**header, "sha1": indices_sha1(indices), "indices": indices}
    differs = [k for k in header if saved.get(k) != header[k]]
    _require(
        not differs,
        f"{path} was drawn with other {', '.join(differs)} "
        f"({', '.join(f'{k}={saved.get(k)!r}' for k in differs)}; now "
        f"{', '.join(f'{k}={header[k]!r}' for k in differs)}); give a new --output",
    )
    return saved


def _write_start(output: Path, config: SuiteConfig, cells: list[Cell], subsets: dict) -> None:
    write_json_atomic(
        output / SUITE_FILE,
        {
            "suite": config.name,
            "config": config.resolved(),
            "settings": config.settings(),
            "versions": versions(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "cells": [
                {
                    "id": c.id,
                    "label": c.model.label,
                    "dataset": c.dataset.name,
                    "attack_label": c.attack.label,
                    "weights": c.weights,
                }
                for c in cells
            ],
        },
    )
    for name, subset in subsets.items():
        path = output / SUBSETS_DIR / f"{slug(name)}.json"
        if not path.is_file():
            write_json_atomic(path, subset)


def _unique_entries(cells: list[Cell]) -> list[DatasetEntry]:
    return list({cell.dataset.name: cell.dataset for cell in cells}.values())


def _read_json(path: Path):
    """The JSON in ``path``, or None when it is missing or unreadable (a cell to recompute)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _require(ok, message: str) -> None:
    if not ok:
        raise MmcoaError(message)


def format_cells(records: list[dict]) -> str:
    """One line per cell: row label, dataset, attack column and its headline metric."""
    lines = []
    for r in records:
        metric = (
            f"accuracy {r['accuracy']:.4f}"
            if "accuracy" in r
            else f"i2t R@1/5/10 {r['i2t_r1']:.4f} {r['i2t_r5']:.4f} {r['i2t_r10']:.4f}  "
            f"t2i R@1/5/10 {r['t2i_r1']:.4f} {r['t2i_r5']:.4f} {r['t2i_r10']:.4f}"
        )
        lines.append(f"{r['label']:<28} {r['dataset']:<16} {r['attack_label']:<14} {metric}")
    return "\n".join(lines)
