"""Our number beside the published one: protocol records against a zoo entry's published numbers
(``mmcoa reproduce``), and many models' records under one protocol as a leaderboard
(``mmcoa leaderboard``).

Every record is first checked to have been made by the protocol as it is defined now
(:func:`mmcoa.eval.protocols.check_record`). A published result names a key (a dataset's label
in the protocol, or an average such as ``avg_zero_shot``: the mean over all the protocol's
datasets) and metrics (the protocol's measures, plus ``average`` = the mean of clean and robust).
The difference ours − published is flagged when it exceeds what sampling explains:
``1.96 · SE + r`` percentage points, where SE is the binomial standard error of our accuracy
(``sqrt(p (1 - p) / n)`` for one dataset; ``sqrt(Σ p_d (1 - p_d) / n_d) / D`` for an average of
D datasets; the two combined in quadrature, halved, for ``average``) and ``r`` half a unit of the
published number's last digit (its rounding).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from mmcoa.errors import MmcoaError
from mmcoa.eval.protocols import MEASURES, Protocol, check_record
from mmcoa.models.zoo import ZooEntry, get_entry
from mmcoa.files import write_json_atomic, write_text_atomic
from mmcoa.report import render
from mmcoa.report.tables import Column, Row, Table

Z_95 = 1.96
FACTS = ("method", "arch", "train eps", "source")  # a leaderboard row's model facts
AVERAGE_METRIC = "average"


@dataclass(frozen=True)
class Measured:
    """One accuracy: ``value`` in [0, 1] over ``n`` samples."""

    value: float
    n: int

    @property
    def variance(self) -> float:
        return self.value * (1 - self.value) / max(self.n, 1)


@dataclass(frozen=True)
class Comparison:
    """One published number beside ours (percentage points)."""

    key: str  # dataset label or average key
    metric: str
    eps: str | None
    ours: float | None
    published: float
    tolerance: float | None

    @property
    def difference(self) -> float | None:
        return None if self.ours is None else self.ours - self.published

    @property
    def flagged(self) -> bool:
        return self.difference is not None and abs(self.difference) > self.tolerance


def measurements(records: list[dict], protocol: Protocol) -> dict[str, dict[tuple, Measured]]:
    """``{model label: {(dataset label, attack label): Measured}}`` of checked records."""
    out: dict[str, dict[tuple, Measured]] = {}
    for record in records:
        check_record(record, protocol)
        key = (protocol.dataset_label(record["dataset"]), record["attack_label"])
        out.setdefault(record["label"], {})[key] = Measured(record["accuracy"], record["n_samples"])
    return out


def published_results(entry: ZooEntry, protocol: Protocol) -> list[tuple[str | None, dict]]:
    """``(eps, results)`` of each result the entry publishes under the protocol's ``ref``."""
    out = []
    for item in entry.published:
        claim = (item or {}).get("protocol") or {}
        if isinstance(claim, dict) and claim.get("ref") == protocol.ref and item.get("results"):
            out.append((claim.get("eps"), item["results"]))
    return out


def compare(measured: dict[tuple, Measured], entry: ZooEntry, protocol: Protocol) -> list[Comparison]:
    """Every published number of ``entry`` under ``protocol`` beside ours from ``measured``
    (one model's :func:`measurements`)."""
    rows = []
    for eps, results in published_results(entry, protocol):
        for key, metrics in results.items():
            datasets = _datasets_of(key, protocol)
            if datasets is None or not isinstance(metrics, dict):
                continue
            for metric, value in metrics.items():
                if isinstance(value, (int, float)) and (metric in MEASURES or metric == AVERAGE_METRIC):
                    ours, se = _ours(measured, protocol, datasets, metric, eps)
                    tolerance = None if se is None else 100 * Z_95 * se + _rounding(value)
                    rows.append(Comparison(key, metric, eps, ours, float(value), tolerance))
    return rows


def _datasets_of(key: str, protocol: Protocol) -> list[str] | None:
    """The protocol datasets a published key covers: all for an average, else the one whose
    label matches (None: not a dataset of this protocol)."""
    labels = [d.get("label", d["name"]) for d in protocol.datasets]
    if key.lower().startswith("avg"):
        return labels
    match = [label for label in labels if label.lower() == key.lower()]
    return match or None


def _ours(measured, protocol, datasets, metric, eps) -> tuple[float | None, float | None]:
    """(our value in percent, its standard error as a fraction), or (None, None) when a
    dataset or column is missing."""
    if metric == AVERAGE_METRIC:
        parts = [_ours(measured, protocol, datasets, m, eps) for m in ("clean", "robust")]
        if any(v is None for v, _ in parts):
            return None, None
        return sum(v for v, _ in parts) / 2, math.sqrt(sum(se**2 for _, se in parts)) / 2
    column = _column(protocol, metric, eps)
    values = [measured.get((d, column)) for d in datasets]
    if column is None or any(v is None for v in values):
        return None, None
    mean = sum(v.value for v in values) / len(values)
    return 100 * mean, math.sqrt(sum(v.variance for v in values)) / len(values)


def _column(protocol: Protocol, metric: str, eps: str | None) -> str | None:
    """The attack label giving ``metric`` at the published ``eps`` (clean and the text attacks
    at any eps)."""
    for label, (measure, at) in protocol.measures().items():
        if measure == metric and (at is None or eps is None or _same_eps(at, eps)):
            return label
    return None


def _same_eps(a: str, b: str) -> bool:
    def value(text: str) -> float:
        number, _, unit = str(text).partition("/")
        return float(number) / float(unit or 1)

    try:
        return math.isclose(value(a), value(b))
    except ValueError:
        return False


def _rounding(value: float) -> float:
    """Half a unit of the last printed digit of a published number (2 decimals at most)."""
    text = f"{value}".rstrip("0").rstrip(".")
    decimals = len(text.partition(".")[2])
    return 0.5 * 10 ** (-decimals)


# -- tables ----------------------------------------------------------------------------------------
def comparison_table(model: str, rows: list[Comparison], protocol: Protocol) -> Table:
    """Ours, published, difference and the flag, one row per published number."""
    columns = [
        Column("", n) for n in ("metric", "eps", "ours", "published", "ours − published", "tolerance", "flag")
    ]
    body = [
        Row(
            c.key,
            [
                c.metric,
                c.eps or "—",
                c.ours,
                c.published,
                None if c.difference is None else f"{c.difference:+.2f}",
                None if c.tolerance is None else f"±{c.tolerance:.2f}",
                "—" if c.ours is None else ("BEYOND SAMPLING" if c.flagged else "ok"),
            ],
        )
        for c in rows
    ]
    notes = [
        f"protocol {protocol.name} v{protocol.version} ({protocol.sha1[:8]}), published under {protocol.ref}",
        "tolerance: 1.96 x the binomial standard error of our accuracy, plus the published number's rounding",
    ]
    if not rows:
        notes.append(f"{model} publishes no number under {protocol.ref}: ours alone")
    return Table(
        "comparison", f"{model}: ours beside the published numbers", columns, body, notes, corner="result"
    )


def measured_table(model: str, measured: dict[tuple, Measured], protocol: Protocol) -> Table:
    """Our accuracy per dataset (rows) and attack column, with the average over datasets."""
    attacks = list(protocol.measures())
    labels = [d.get("label", d["name"]) for d in protocol.datasets]
    rows = [Row(d, [_percent(measured.get((d, a))) for a in attacks]) for d in labels]
    averages = []
    for a in attacks:
        values = [measured.get((d, a)) for d in labels]
        averages.append(None if None in values else 100 * sum(v.value for v in values) / len(values))
    rows.append(Row("Average", averages))
    return Table(
        "ours", f"{model} under {protocol.name}", [Column("", a) for a in attacks], rows, corner="dataset"
    )


def _percent(value: Measured | None) -> float | None:
    return None if value is None else 100 * value.value


def leaderboard_table(records: list[dict], protocol: Protocol) -> Table:
    """One row per model: its facts, our average per attack column and the published one
    beside it, sorted by the first robust column (best first)."""
    by_model = measurements(records, protocol)
    attacks = list(protocol.measures())
    columns = [Column("model", n) for n in FACTS]
    for a in attacks:
        columns += [Column(a, "ours"), Column(a, "published")]
    rows = [_leader_row(model, measured, protocol, attacks) for model, measured in by_model.items()]
    robust = next((i for i, a in enumerate(attacks) if protocol.measures()[a][0] != "clean"), 0)
    first = len(FACTS) + 2 * robust  # the first robust column's "ours"
    rows.sort(key=lambda r: -(r.values[first] if isinstance(r.values[first], float) else -1))
    notes = [
        f"protocol {protocol.name} v{protocol.version} ({protocol.sha1[:8]}): {protocol.description}",
        "ours: the mean over the protocol's datasets (— when one is missing); published: the zoo entry's "
        f"number under {protocol.ref} at the same eps",
    ]
    return Table("leaderboard", f"Leaderboard: {protocol.name}", columns, rows, notes, corner="model")


def _leader_row(model: str, measured: dict, protocol: Protocol, attacks: list[str]) -> Row:
    entry = zoo_entry(model)
    source = str(entry.facts.get("citation") or "—").split(",")[0] if entry else "—"
    facts = [entry.method, entry.arch, entry.train_eps or "—", source] if entry else ["—"] * 4
    labels = [d.get("label", d["name"]) for d in protocol.datasets]
    averages = (
        [c for c in compare(measured, entry, protocol) if c.key.lower().startswith("avg")] if entry else []
    )
    published = {(c.metric, c.eps): c.published for c in averages}
    values: list = list(facts)
    for a in attacks:
        measure, eps = protocol.measures()[a]
        found = [measured.get((d, a)) for d in labels]
        values.append(None if None in found else 100 * sum(v.value for v in found) / len(found))
        values.append(
            next(
                (
                    v
                    for (m, e), v in published.items()
                    if m == measure and (eps is None or e is None or _same_eps(e, eps))
                ),
                None,
            )
        )
    return Row(model, values)


def zoo_entry(model: str) -> ZooEntry | None:
    try:
        return get_entry(model)
    except MmcoaError:
        return None


# -- files -------------------------------------------------------------------------------------------
def write_tables(tables: list[Table], output: Path, stem: str, title: str) -> Path:
    """``stem.md``, ``stem.html`` (self-contained, sortable columns) and one ``stem-<key>.csv``
    per table in ``output``; returns the HTML page's path."""
    output.mkdir(parents=True, exist_ok=True)
    markdown = f"# {title}\n\n" + "\n\n".join(render.table_markdown(t) for t in tables) + "\n"
    write_text_atomic(output / f"{stem}.md", markdown)
    for table in tables:
        write_text_atomic(output / f"{stem}-{table.key}.csv", render.table_csv(table))
    page = render.page_html(title, [("", [render.table_html(t) for t in tables])], script=render.SORTABLE)
    write_text_atomic(output / f"{stem}.html", page)
    return output / f"{stem}.html"


def write_comparison(records: list[dict], protocol: Protocol, model: str, output: Path) -> tuple[Path, list]:
    """The comparison of ``model``'s protocol records with its zoo entry's published numbers
    (``comparison.md/.html/-*.csv`` and ``comparison.json``); returns the page and the rows."""
    measured = measurements(records, protocol).get(model, {})
    entry = zoo_entry(model)
    rows = compare(measured, entry, protocol) if entry else []
    tables = [comparison_table(model, rows, protocol), measured_table(model, measured, protocol)]
    page = write_tables(tables, output, "comparison", f"{model} under {protocol.name}")
    summary = {
        "model": model,
        "protocol": protocol.identity,
        "ref": protocol.ref,
        "rows": [{**r.__dict__, "difference": r.difference, "flagged": r.flagged} for r in rows],
    }
    write_json_atomic(output / "comparison.json", json.loads(json.dumps(summary)))
    return page, rows


def write_leaderboard(records: list[dict], protocol: Protocol, output: Path) -> Path:
    """The leaderboard of every model in ``records`` (``leaderboard.md/.html/-*.csv``)."""
    return write_tables(
        [leaderboard_table(records, protocol)], output, "leaderboard", f"Leaderboard: {protocol.name}"
    )
