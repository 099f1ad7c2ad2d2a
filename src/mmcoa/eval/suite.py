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

Across machines, ``shard=(i, n)`` evaluates only the cells of shard ``i`` of ``n`` (cell ``k``
of the table, from 0, belongs to shard ``k % n + 1``). Shards may share one folder (every file
is written atomically, suite.json and the subsets with the same settings and indices by each,
and records.json is rebuilt under a lock from every matching cell file present) or write one
folder each, combined by :func:`merge_suite`.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from dataclasses import dataclass
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
from mmcoa.models.test_time import defend

SUITE_FILE = "suite.json"
RECORDS_FILE = "records.json"
CELLS_DIR = "cells"
SUBSETS_DIR = "subsets"
SUBSET_KEYS = ("split", "n_samples", "seed")  # settings that fix the saved sample subsets
LOCK_FILE = ".records.lock"  # serialises the records.json rewrites of shards sharing a folder
UNTIMED = ("elapsed_s", "versions")  # record keys two runs of one cell may differ in


def run_suite(
    config: SuiteConfig,
    output: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    shard: tuple[int, int] | None = None,
) -> list[dict]:
    """Evaluate every cell of ``config`` (of shard ``(i, n)`` only, when given) not already
    finished under ``output``; returns every finished record in the folder, in table order.
    Everything that can be checked is checked before the first file is written; each model row
    (per checkpoint) and each dataset is loaded once."""
    check_shard(shard)
    output = Path(output)
    cells = config.cells()
    mine = shard_cells(cells, shard)
    _check_output(output, config, resume, shard, mine)
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
    records = _finished_records(output, config, mine) if resume else {}
    pending = [cell for cell in mine if cell.id not in records]
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
        _write_start(output, config, cells, subsets, shard)
    run = _Run(config, output, records, world, device, shard)
    finished = False
    try:
        run.cells(pending, datasets, subsets, attacks, progress and world.is_main, len(mine))
        finished = True
    finally:
        if world.is_main:
            ordered = _write_records(output, config, cells, records, finished)
        else:
            ordered = [records[cell.id] for cell in cells if cell.id in records]
    return ordered


# -- shards --------------------------------------------------------------------------------------
def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` (the ``--shard`` flag) as ``(I, N)``, checked."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    _require(
        match,
        f"--shard must be I/N, shard I of N (whole numbers, I from 1 to N, e.g. 1/4); got {text!r}",
    )
    shard = int(match[1]), int(match[2])
    check_shard(shard)
    return shard


def check_shard(shard) -> None:
    """A one-line error unless ``shard`` is None or ``(i, n)`` with ``1 <= i <= n``."""
    if shard is None:
        return
    _require(
        isinstance(shard, (tuple, list))
        and len(shard) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in shard),
        f"shard must be (I, N), two whole numbers with I from 1 to N; got {shard!r}",
    )
    i, n = shard
    _require(n >= 1, f"--shard {i}/{n}: N, the number of shards, must be 1 or more (e.g. 1/4)")
    _require(
        1 <= i <= n,
        f"--shard {i}/{n}: I must be from 1 to {n} (shards count from 1; e.g. 1/{n}); got {i}",
    )


def shard_owners(groups: list[tuple], n: int) -> list[int]:
    """The shard (1 to ``n``) of each cell, given each cell's (model row, weights, dataset) in
    table order: the groups are dealt out in turn, so the cells of a group (which share one
    pass over the data and a PGD that a multimodal column reuses) stay together; with fewer
    groups than shards, the cells are dealt out one by one instead."""
    order = list(dict.fromkeys(groups))
    if len(order) < n:
        return [k % n + 1 for k in range(len(groups))]
    return [order.index(group) % n + 1 for group in groups]


def shard_cells(cells: list[Cell], shard: tuple[int, int] | None) -> list[Cell]:
    """The cells of shard ``(i, n)``, in table order (all when ``shard`` is None)."""
    if shard is None:
        return list(cells)
    i, n = shard
    owners = shard_owners([(c.model.label, c.weights, c.dataset.name) for c in cells], n)
    return [cell for cell, owner in zip(cells, owners) if owner == i]


class _Run:
    """The pending cells of one suite run, on this process's device."""

    def __init__(
        self, config: SuiteConfig, output: Path, records: dict, world: World, device: str, shard=None
    ):
        self.config, self.output, self.records = config, output, records
        self.world, self.device, self.shard = world, device, shard

    def cells(self, pending, datasets, subsets, attacks, progress, total) -> None:
        """Each model row is loaded once and iterates each of its datasets once: the cells of a
        (row, dataset) are evaluated on the same batches (classification suites)."""
        bar = tqdm(
            total=total,
            initial=total - len(pending),
            desc=f"suite {self.config.name}"
            + (f" shard {self.shard[0]}/{self.shard[1]}" if self.shard else ""),
            unit="cell",
            disable=not progress,
        )
        for (row, weights), group in groupby(pending, key=lambda cell: (cell.model, cell.weights)):
            model = load_model(row.name, pretrained=weights, device=self.device)
            if row.defense:  # a test-time defense wraps the row's model (mmcoa.models.test_time)
                model = defend(
                    model, row.defense["name"], **{k: v for k, v in row.defense.items() if k != "name"}
                )
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
            logit_scale=config.logit_scale,
            progress=progress,
            world=world,
            workers=config.workers,
            scoring=Scoring(robust_metric=config.robust_metric),
        )
    protocol = getattr(config, "protocol", None)
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
        if protocol is not None:
            record["protocol"] = json_ready(protocol)
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
def _check_output(output: Path, config: SuiteConfig, resume: bool, shard=None, mine: list[Cell] = ()) -> None:
    """A fresh run needs an empty or absent folder, or (a shard) one its sibling shards write
    into with the same settings and none of its own cells yet; a resumed one, a suite folder."""
    _require(not output.exists() or output.is_dir(), f"--output {output} is a file; give a folder")
    if not _holds_files(output):
        return
    saved = _read_json(output / SUITE_FILE)
    _require(
        saved is not None,
        f"--output {output} is not empty and holds no {SUITE_FILE}; give a new or empty folder",
    )
    if resume:
        return
    differences = _differences(saved.get("settings") or {}, config.settings())
    if not differences and _sibling_folder(output, saved, shard, mine):
        return
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


def _holds_files(output: Path) -> bool:
    """Whether ``output`` is a folder with anything but hidden files in it (a sibling shard's
    write in progress, a writability probe, the records lock)."""
    return output.is_dir() and any(not p.name.startswith(".") for p in output.iterdir())


def _sibling_folder(output: Path, saved: dict, shard, mine: list[Cell]) -> bool:
    """Whether a fresh shard may start in ``output``: written by shards of the same count and
    holding none of this shard's cells."""
    marker = saved.get("shard")
    return (
        shard is not None
        and isinstance(marker, list)
        and len(marker) == 2
        and marker[1] == shard[1]
        and not any((output / CELLS_DIR / f"{cell.id}.json").exists() for cell in mine)
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


def _write_start(output: Path, config: SuiteConfig, cells: list[Cell], subsets: dict, shard=None) -> None:
    """suite.json (every shard writes the whole suite, with its ``shard`` marker) and the
    subsets not yet saved (a sibling shard writing one at the same time writes the same)."""
    write_json_atomic(
        output / SUITE_FILE,
        {
            "suite": config.name,
            "config": config.resolved(),
            "settings": config.settings(),
            "versions": versions(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **({"shard": list(shard)} if shard else {}),
            "cells": [
                {
                    "id": c.id,
                    "label": c.model.label,
                    "dataset": c.dataset.name,
                    "attack_label": c.attack.label,
                    "weights": c.weights,
                    "cell_settings": config.cell_settings(c),
                }
                for c in cells
            ],
        },
    )
    for name, subset in subsets.items():
        path = output / SUBSETS_DIR / f"{slug(name)}.json"
        if not path.is_file():
            write_json_atomic(path, subset)


def _write_records(
    output: Path, config: SuiteConfig, cells: list[Cell], records: dict, finished: bool
) -> list[dict]:
    """Rewrite records.json with every finished record in the folder (this run's and those of
    sibling shards sharing it), in table order; returns them. Under the folder's lock, the last
    of several shards ending together reads every cell the others wrote. A run interrupted
    before any record exists writes none."""
    with _records_lock(output):
        found = {**_finished_records(output, config, cells), **records}
        ordered = [found[cell.id] for cell in cells if cell.id in found]
        if finished or ordered:
            write_json_atomic(output / RECORDS_FILE, ordered)
    return ordered


@contextlib.contextmanager
def _records_lock(output: Path):
    """An exclusive ``flock`` on DIR/.records.lock where the platform and file system have one
    (elsewhere none: a merge or a ``--resume`` rerun rebuilds records.json from the cells)."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    with open(output / LOCK_FILE, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError:  # a file system without locks
            pass
        yield


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


# -- merging the folders of shards ---------------------------------------------------------------
@dataclass
class Merged:
    """What :func:`merge_suite` wrote: the records in table order, the cells still missing (with
    the shard owning each, when the parts name one shard count) and the cell files left out."""

    records: list[dict]
    n_cells: int
    missing: list[str]
    owners: dict[int, list[str]] | None
    n_shards: int | None
    ignored: list[str]


def merge_suite(parts: list[str | Path], output: str | Path) -> Merged:
    """Combine suite folders of one suite (shards run on different machines, or any runs) into
    ``output``: new, empty, or an earlier merge of the same suite (then merged too). Settings,
    cell tables, subsets and the records of cells found twice must agree (a cell's records may
    differ only in ``elapsed_s`` and ``versions``); everything is checked before the first file
    is written. Cell files whose settings are not the suite's are left out."""
    output = Path(output)
    folders = _merge_folders(parts, output)
    suites = {folder: _suite_file(folder) for folder in folders}
    for folder in folders[1:]:
        _check_same_suite(folders[0], suites[folders[0]], folder, suites[folder])
    table = suites[folders[0]]["cells"]
    subsets = _merged_subsets(folders)
    cells, ignored = _merged_cells(folders, table)
    records = [cells[entry["id"]] for entry in table if entry["id"] in cells]
    _write_merge(output, _merged_suite_file(folders, suites), subsets, cells, records)
    missing = [entry["id"] for entry in table if entry["id"] not in cells]
    n_shards = _shard_count(suites.values())
    return Merged(records, len(table), missing, _owners(table, missing, n_shards), n_shards, ignored)


def _merge_folders(parts: list[str | Path], output: Path) -> list[Path]:
    """The parts (each a suite folder, named once), then ``output`` when it already holds a
    suite; a one-line error for a part that is no suite folder or an output that is not one."""
    _require(parts, "suite-merge needs at least one part folder (written by mmcoa suite)")
    folders, seen = [], set()
    for part in map(Path, parts):
        _require(part.is_dir(), f"part {part} is not a folder; give folders written by mmcoa suite")
        _require(
            (part / SUITE_FILE).is_file(),
            f"part {part} holds no {SUITE_FILE}; give folders written by mmcoa suite",
        )
        if part.resolve() not in seen:
            seen.add(part.resolve())
            folders.append(part)
    _require(not output.exists() or output.is_dir(), f"--output {output} is a file; give a folder")
    if _holds_files(output) and output.resolve() not in seen:
        _require(
            (output / SUITE_FILE).is_file(),
            f"--output {output} is not empty and holds no {SUITE_FILE}; give a new or empty "
            "folder, or an earlier merge of the same suite",
        )
        folders.append(output)
    return folders


def _suite_file(folder: Path) -> dict:
    """A part's suite.json, checked to hold settings and a cell table."""
    saved = _read_json(folder / SUITE_FILE)
    _require(
        isinstance(saved, dict)
        and isinstance(saved.get("settings"), dict)
        and isinstance(saved.get("cells"), list),
        f"{folder / SUITE_FILE} is not a suite file (no settings or cells); give folders "
        "written by mmcoa suite",
    )
    return saved


def _check_same_suite(first: Path, saved: dict, folder: Path, other: dict) -> None:
    """The same settings (else the first differing key is named) and the same cell table."""
    differences = _differences(saved["settings"], other["settings"])
    _require(
        not differences,
        f"{folder} holds other suite settings than {first} (first difference: "
        f"{differences[0] if differences else ''}); merge only the shards of one suite",
    )
    _require(
        [c.get("id") for c in saved["cells"]] == [c.get("id") for c in other["cells"]],
        f"{folder} lists other cells than {first} in {SUITE_FILE} (written by another mmcoa "
        "version?); merge parts written by one version",
    )


def _merged_subsets(folders: list[Path]) -> dict[str, dict]:
    """Every part's subset files by name; a file in several parts must be the same in each."""
    subsets, where = {}, {}
    for folder in folders:
        for path in sorted((folder / SUBSETS_DIR).glob("*.json")):
            content = _read_json(path)
            _require(content is not None, f"{path} is not readable JSON; rerun that shard with --resume")
            if path.name in subsets:
                _require(
                    subsets[path.name] == content,
                    f"{path} differs from {where[path.name]}: the parts evaluated other samples; "
                    "merge only the shards of one suite run on the same data",
                )
            else:
                subsets[path.name], where[path.name] = content, path
    return subsets


def _merged_cells(folders: list[Path], table: list[dict]) -> tuple[dict[str, dict], list[str]]:
    """The finished records of the suite's cells found in the parts (a cell's settings must be
    those in suite.json), and the cell files left out; a cell with two different records stops
    the merge, naming it and the first key they differ in."""
    expected = {entry["id"]: entry.get("cell_settings") for entry in table}
    cells, where, ignored = {}, {}, []
    for folder in folders:
        for path in sorted((folder / CELLS_DIR).glob("*.json")):
            record, cell = _read_json(path), path.stem
            if not _matches(record, cell, expected):
                ignored.append(str(path))
            elif cell not in cells:
                cells[cell], where[cell] = record, path
            else:
                differs = _differences(_timeless(cells[cell]), _timeless(record))
                _require(
                    not differs,
                    f"cell {cell} has different records in {where[cell]} and {path} (first "
                    f"difference: {differs[0] if differs else ''}); delete the wrong one and merge again",
                )
    return cells, ignored


def _matches(record, cell: str, expected: dict) -> bool:
    """Whether ``record`` is a finished record of the suite's cell ``cell`` (older suite.json
    files list no cell settings: then any record of the cell)."""
    return (
        isinstance(record, dict)
        and cell in expected
        and record.get("cell") == cell
        and (expected[cell] is None or record.get("cell_settings") == expected[cell])
    )


def _timeless(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in UNTIMED}


def _merged_suite_file(folders: list[Path], suites: dict[Path, dict]) -> dict:
    """The first part's suite.json without a shard marker, plus ``merged_from``: each part's
    folder, shard, start time and versions (an earlier merge's own parts in its place; a run
    met twice is listed once)."""
    parts = []
    for folder in folders:
        saved = suites[folder]
        parts += saved.get("merged_from") or [
            {
                "folder": str(folder),
                "shard": saved.get("shard"),
                "started": saved.get("started"),
                "versions": saved.get("versions"),
            }
        ]
    merged = {k: v for k, v in suites[folders[0]].items() if k not in ("shard", "merged_from")}
    return {**merged, "merged_from": _first_of_each(parts)}


def _first_of_each(parts: list[dict]) -> list[dict]:
    """The parts without repeats (one run reached under two folder names counts once)."""
    seen, unique = set(), []
    for part in parts:
        key = json.dumps({**part, "folder": None}, sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            unique.append(part)
    return unique


def _write_merge(output: Path, suite_file: dict, subsets: dict, cells: dict, records: list) -> None:
    """suite.json first, records.json last: an interrupted merge leaves a suite folder that a
    second merge (or ``mmcoa suite --resume``) completes."""
    write_json_atomic(output / SUITE_FILE, suite_file)
    for name, subset in subsets.items():
        write_json_atomic(output / SUBSETS_DIR / name, subset)
    for cell, record in cells.items():
        write_json_atomic(output / CELLS_DIR / f"{cell}.json", record)
    if records:  # an empty records.json would read as a finished suite with no cells
        write_json_atomic(output / RECORDS_FILE, records)


def _shard_count(suites) -> int | None:
    """The shard count N the parts were run with, when they name exactly one."""
    counts = {s["shard"][1] for s in suites if isinstance(s.get("shard"), list) and len(s["shard"]) == 2}
    return counts.pop() if len(counts) == 1 else None


def _owners(table: list[dict], missing: list[str], n: int | None) -> dict[int, list[str]] | None:
    """The missing cells by the shard (1 to ``n``) that owns them."""
    if n is None:
        return None
    groups = [(entry["label"], entry.get("weights"), entry["dataset"]) for entry in table]
    owner = dict(zip((entry["id"] for entry in table), shard_owners(groups, n)))
    owners: dict[int, list[str]] = {}
    for cell in missing:
        owners.setdefault(owner[cell], []).append(cell)
    return owners


def format_missing(merged: Merged, shown: int = 3) -> str:
    """One line per shard owning missing cells (or one line), naming the first few cells."""

    def some(cells: list[str]) -> str:
        more = f", ... ({len(cells) - shown} more)" if len(cells) > shown else ""
        return ", ".join(cells[:shown]) + more

    head = f"{len(merged.missing)} of {merged.n_cells} cells missing"
    if merged.owners is None:
        return f"{head}: {some(merged.missing)}"
    lines = [f"{head}; run the shards that own them with --resume and merge again:"]
    for i, cells in sorted(merged.owners.items()):
        lines.append(f"  shard {i}/{merged.n_shards}: {len(cells)} missing ({some(cells)})")
    return "\n".join(lines)
