"""The paper's table layouts, built from result records alone.

- :func:`table1`: paper Table I — rows are methods, columns dataset × {image, text, multimodal,
  clean} robust accuracy (%).
- :func:`ood_tables`: paper Table II — one table per attack setting, columns are datasets plus
  an Average over them (the paper averages all 15, source dataset included).
- :func:`retrieval_tables`: paper Table VI — TR (image → text) and IR (text → image) R@1/5/10.
- :func:`add_gains`: the rows of each method minus zero-shot CLIP and minus TeCoA.

A cell holds one record's value; a missing one is ``None`` (shown as "—", never 0). Two records
landing in the same cell with different values (the same label, dataset and setting) is an
error: they cannot both be that cell.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from mmcoa.errors import MmcoaError
from mmcoa.report import columns as C
from mmcoa.report.records import is_retrieval

RETRIEVAL_COLUMNS = (
    ("TR", "i2t_r1", "R@1"),
    ("TR", "i2t_r5", "R@5"),
    ("TR", "i2t_r10", "R@10"),
    ("IR", "t2i_r1", "R@1"),
    ("IR", "t2i_r5", "R@5"),
    ("IR", "t2i_r10", "R@10"),
)
AVERAGE = "Average"


@dataclass
class Column:
    group: str
    name: str


@dataclass
class Row:
    label: str
    values: list[float | str | None]
    gain: bool = False


@dataclass
class Table:
    """Values in percent; ``key`` names its CSV file and HTML anchor."""

    key: str
    title: str
    columns: list[Column]
    rows: list[Row]
    notes: list[str] = field(default_factory=list)
    corner: str = "Method"  # header of the row-label column

    def row(self, label: str) -> Row | None:
        return next((r for r in self.rows if r.label == label and not r.gain), None)


def table1(records: list[dict], labels: list[str]) -> Table | None:
    """Paper Table I layout over every classification record."""
    rows = _classification(records, labels)
    if not rows:
        return None
    keys = [(r["dataset"], C.threat_of(r), C.setting_of(r)) for _, r in rows]
    datasets = _first_seen(k[0] for k in keys)
    order = sorted(
        {_id(k): k for k in keys}.values(),
        key=lambda k: (datasets.index(k[0]), C.threat_rank(k[1]), C.sort_key(k[2])),
    )
    names = _column_names(order)
    entries = [(label, _id(k), r, r["accuracy"]) for (label, r), k in zip(rows, keys)]
    table = _assemble(
        "table1",
        "Table I layout: accuracy (%) per dataset and attack",
        [_id(k) for k in order],
        [Column(k[0], names[_id(k)]) for k in order],
        entries,
    )
    table.notes = _setting_notes(order, names)
    return table


def ood_tables(records: list[dict], labels: list[str]) -> list[Table]:
    """Paper Table II layout: one table per (threat, attack setting), datasets as columns; a
    setting evaluated on a single dataset has none (its numbers are Table I's)."""
    rows = _classification(records, labels)
    groups: dict[str, tuple[str, dict]] = {}
    for _, r in rows:
        setting = C.setting_of(r, with_n=False)
        groups.setdefault(C.setting_key(setting), (C.threat_of(r), setting))
    ordered = sorted(groups.items(), key=lambda kv: (C.threat_rank(kv[1][0]), C.sort_key(kv[1][1])))
    grouped = [
        (threat, setting, [(lb, r) for lb, r in rows if C.setting_key(C.setting_of(r, with_n=False)) == key])
        for key, (threat, setting) in ordered
    ]
    across = [g for g in grouped if len({r["dataset"] for _, r in g[2]}) > 1]  # one dataset: Table I holds it
    return [_ood_table(index, *group) for index, group in enumerate(across, 1)]


def _ood_table(index: int, threat: str, setting: dict, rows: list[tuple[str, dict]]) -> Table:
    keys = [(r["dataset"], r.get("n_samples")) for _, r in rows]
    order = _first_seen(keys)
    several_n = {d for d, _ in order if sum(1 for other, _ in order if other == d) > 1}
    columns = [Column("", f"{d} (n={n})" if d in several_n else d) for d, n in order]
    entries = [(label, _id(k), r, r["accuracy"]) for (label, r), k in zip(rows, keys)]
    kind = "accuracy" if threat == "clean" else f"attack ({C.brief(setting)})"
    table = _assemble(
        f"ood{index}",
        f"Table II layout: {C.threat_name(threat)} {kind} across datasets (%)",
        [_id(k) for k in order],
        columns,
        entries,
    )
    table.notes = [f"Setting: {C.describe(setting)}."]
    _add_average(table, complete=not several_n)
    return table


def retrieval_tables(records: list[dict], labels: list[str]) -> list[Table]:
    """Paper Table VI layout: one table per (dataset, attack setting)."""
    rows = [(label, r) for label, r in zip(labels, records) if is_retrieval(r)]
    group_of = [(r["dataset"], C.setting_key(C.setting_of(r))) for _, r in rows]
    tables = []
    for index, group in enumerate(_first_seen(group_of), 1):
        members = [row for row, g in zip(rows, group_of) if g == group]
        setting = C.setting_of(members[0][1])
        entries = [
            (label, metric, r, r[metric])
            for label, r in members
            for _, metric, _ in RETRIEVAL_COLUMNS
            if metric in r
        ]
        threat = C.threat_name(C.threat_of(setting))
        table = _assemble(
            f"retrieval{index}",
            f"Table VI layout: {group[0]} retrieval, {threat} ({setting['attack']}), R@K (%)",
            [m for _, m, _ in RETRIEVAL_COLUMNS],
            [Column(g, n) for g, _, n in RETRIEVAL_COLUMNS],
            entries,
        )
        table.notes = [f"Setting: {C.describe(setting)}. TR: image → text; IR: text → image."]
        tables.append(table)
    return tables


def add_gains(table: Table, zero_shot: str | None, tecoa: str | None) -> None:
    """Append ``method − CLIP`` for every other method and ``method − TeCoA`` for every method
    but CLIP and TeCoA, when those rows exist (the gains paper Tables I-II discuss); a gain row
    with no cell to show is left out."""
    plain = [r for r in table.rows if not r.gain]
    for base, skip in ((zero_shot, {zero_shot}), (tecoa, {zero_shot, tecoa})):
        base_row = table.row(base) if base else None
        if base_row is None:
            continue
        for row in plain:
            values = _minus(row.values, base_row.values)
            if row.label not in skip and any(v is not None for v in values):
                table.rows.append(Row(f"{row.label} − {base_row.label}", values, gain=True))


def find_label(labels: Sequence[str], wanted: str | None) -> str | None:
    """The row label meaning ``wanted``: an exact match, else (case-insensitively) the one
    label that is ``wanted`` followed by a parenthesis, e.g. ``"CLIP (zero-shot)"``."""
    if not wanted:
        return None
    if wanted in labels:
        return wanted
    prefixed = [lb for lb in dict.fromkeys(labels) if lb.lower().startswith(wanted.lower() + " (")]
    return prefixed[0] if len(prefixed) == 1 else None


# -- helpers -------------------------------------------------------------------------------------
def _classification(records: list[dict], labels: list[str]) -> list[tuple[str, dict]]:
    return [(label, r) for label, r in zip(labels, records) if not is_retrieval(r)]


def _first_seen(items) -> list:
    return list(dict.fromkeys(items))


def _id(key: tuple) -> str:
    return C.setting_key({"_": [str(part) if not isinstance(part, dict) else part for part in key]})


def _column_names(order: list[tuple]) -> dict[str, str]:
    """Header of each (dataset, threat, setting) column: the threat, plus what differs."""
    names = {}
    for dataset, threat in _first_seen((k[0], k[1]) for k in order):
        members = [k for k in order if (k[0], k[1]) == (dataset, threat)]
        for key, diff in zip(members, C.differences([k[2] for k in members])):
            names[_id(key)] = f"{C.family_name(key[2])} ({diff})" if diff else C.family_name(key[2])
    return names


def _setting_notes(order: list[tuple], names: dict[str, str]) -> list[str]:
    seen = _first_seen((names[_id(k)], C.describe(k[2])) for k in order)
    return [f"{name}: {text}." for name, text in seen]


def _cells(entries) -> dict:
    """{(label, column id): (value, source)}; conflicting duplicates are an error."""
    cells: dict = {}
    for label, column, record, number in entries:
        known = cells.get((label, column))
        if known is not None and known[0] != number:
            raise MmcoaError(
                f"two records for row {label!r} disagree ({known[1]}: {known[0]:.4f}, "
                f"{record.get('_source', '?')}: {number:.4f}) on {record['dataset']} "
                f"{C.describe(C.setting_of(record))}; give them different labels or "
                "pass only one"
            )
        cells[(label, column)] = (number, record.get("_source", "?"))
    return cells


def _assemble(key: str, title: str, column_ids: list[str], columns: list[Column], entries) -> Table:
    cells = _cells(entries)
    labels = _first_seen(label for label, _, _, _ in entries)
    rows = [Row(label, [_percent(cells.get((label, i))) for i in column_ids]) for label in labels]
    return Table(key, title, columns, rows)


def _percent(cell) -> float | None:
    return None if cell is None else 100.0 * cell[0]


def _add_average(table: Table, complete: bool) -> None:
    table.columns.append(Column("", AVERAGE))
    for row in table.rows:
        known = [v for v in row.values if v is not None]
        full = complete and len(known) == len(row.values)
        row.values.append(sum(known) / len(known) if full and known else None)
    if not complete:
        table.notes.append("Average left out: a dataset was evaluated with several sample counts.")


def _minus(values: list[float | None], base: list[float | None]) -> list[float | None]:
    return [None if a is None or b is None else a - b for a, b in zip(values, base)]
