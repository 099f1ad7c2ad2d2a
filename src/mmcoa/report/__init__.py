"""Reports from result files only (no model code): the paper's tables and the analysis plots.

``write_report(paths, output_dir)`` reads records (``mmcoa eval``, ``mmcoa retrieval``,
``mmcoa suite``) and analysis summaries (``mmcoa analyze``) from files and directories and
writes ``report.md``, ``report.html`` (self-contained: CSS and PNGs inline, no script),
``tables/*.csv``, ``records.csv`` (every record, one per line) and ``figures/*.png``. The
report opens with what a reader looks for first: the main table, the comparison with the
published numbers (records of ``mmcoa reproduce`` runs of a zoo model), the figures; the
cross-dataset and retrieval tables follow.
"""

from __future__ import annotations

import csv
import html
import io
import os
import shutil
from pathlib import Path
from typing import Iterable

from mmcoa.errors import MmcoaError
from mmcoa.files import write_text_atomic
from mmcoa.report import columns as C
from mmcoa.report import render
from mmcoa.report.records import Loaded, is_retrieval, load_records, load_results
from mmcoa.report.render import Figure
from mmcoa.report.tables import (
    Column,
    Row,
    Table,
    add_gains,
    find_label,
    ood_tables,
    retrieval_tables,
    table1,
)

__all__ = [
    "DEFAULT_TECOA",
    "DEFAULT_ZERO_SHOT",
    "build_tables",
    "load_records",
    "load_results",
    "write_report",
]

DEFAULT_ZERO_SHOT = "CLIP"
DEFAULT_TECOA = "TeCoA"
RECORD_COLUMNS = (
    "label",
    "dataset",
    "split",
    "threat",
    "attack",
    "eps",
    "attack_params",
    "n_samples",
    "accuracy",
    "top5",
    "attack_success_rate",
    "mean_words_changed",
    "i2t_r1",
    "i2t_r5",
    "i2t_r10",
    "t2i_r1",
    "t2i_r5",
    "t2i_r10",
    "seed",
    "elapsed_s",
    "model",
    "pretrained",
    "source",
)


# Records that are points of a figure, not models of a table: the interpolation's theta(lambda)
# (paper Fig. 8) are mixtures of two models, the sanity checks' are budgets of one check each;
# they are in records.csv and the figure's numbers.
FIGURE_ONLY = ("interpolation", "sanity")


def build_tables(
    records: list[dict], zero_shot: str | None = DEFAULT_ZERO_SHOT, tecoa: str | None = DEFAULT_TECOA
) -> list[Table]:
    """Table I, the Table II (OOD) tables and the Table VI (retrieval) tables, each followed by
    its gain rows over the ``zero_shot`` and ``tecoa`` rows (matched by :func:`find_label`)."""
    labels = C.row_labels(records)
    zero_shot, tecoa = find_label(labels, zero_shot), find_label(labels, tecoa)
    order = sorted(range(len(records)), key=lambda i: labels[i] != zero_shot)  # CLIP row first
    records, labels = [records[i] for i in order], [labels[i] for i in order]
    tables = [t for t in [table1(records, labels)] if t is not None]
    tables += ood_tables(records, labels) + retrieval_tables(records, labels)
    for table in tables:
        add_gains(table, zero_shot, tecoa)
    return tables


def write_report(
    paths: Iterable[str | os.PathLike],
    output_dir: str | os.PathLike,
    *,
    zero_shot: str | None = DEFAULT_ZERO_SHOT,
    tecoa: str | None = DEFAULT_TECOA,
    title: str = "mmcoa report",
) -> Path:
    """Write the report of every record and analysis under ``paths`` into ``output_dir``;
    returns the path of ``report.html``. One-line errors for no records, unreadable or
    malformed files, and conflicting records."""
    loaded = load_results(paths)
    table_records = [r for r in loaded.records if r.get("analysis") not in FIGURE_ONLY]
    tables = build_tables(table_records, zero_shot, tecoa) if table_records else []
    main, more = tables[:1], tables[1:]
    published = comparison_tables(table_records)
    figures = [_figure(a) for a in loaded.analyses]
    output = Path(output_dir)
    (output / "tables").mkdir(parents=True, exist_ok=True)
    for table in tables + published:
        write_text_atomic(output / "tables" / f"{table.key}.csv", render.table_csv(table))
    write_text_atomic(output / "records.csv", records_csv(loaded.records))
    pngs = _copy_figures(figures, output / "figures")
    sections = [("Main table", main), ("Ours beside the published numbers", published), ("More tables", more)]
    write_text_atomic(output / "report.md", _markdown(title, loaded, sections, figures, pngs))
    page = render.page_html(
        title,
        [
            *[(name, [render.table_html(t) for t in group]) for name, group in sections[:2]],
            ("Analyses", [render.figure_html(f) for f in figures]),
            (sections[2][0], [render.table_html(t) for t in more]),
            ("Sources", [_sources_html(loaded)]),
        ],
    )
    write_text_atomic(output / "report.html", page)
    return output / "report.html"


def records_csv(records: list[dict]) -> str:
    """Every record on one line (long format), for spreadsheets and pandas."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(RECORD_COLUMNS)
    for label, record in zip(C.row_labels(records), records):
        eps = record["attack_params"].get("eps")
        values = {
            **record,
            "label": label,
            "threat": C.threat_of(record),
            "eps": C.format_value("eps", eps) if eps is not None else "",
            "attack_params": C.describe(C.setting_of(record, with_n=False)),
            "n_samples": record.get("n_samples", record.get("n_images")),
            "source": record.get("_source", ""),
        }
        writer.writerow(["" if values.get(k) is None else values.get(k) for k in RECORD_COLUMNS])
    return buffer.getvalue()


def _figure(summary: dict) -> Figure:
    """An analysis summary (written by :mod:`mmcoa.analysis`) as a report figure."""
    source = Path(summary["_source"])
    png = source.parent / summary["figure"]
    numbers = summary.get("table") or {}
    table = None
    if numbers.get("columns"):
        table = Table(
            f"{source.stem}-numbers",
            f"Numbers behind: {summary.get('title', source.stem)}",
            [Column("", str(c)) for c in numbers["columns"][1:]],
            [Row(str(r[0]), list(r[1:])) for r in numbers.get("rows", [])],
            corner=str(numbers["columns"][0]),
        )
    return Figure(
        source.stem,
        summary.get("title", summary["analysis"]),
        png if png.is_file() else None,
        table,
        list(summary.get("notes", [])) + [f"Source: {source}"],
    )


def _copy_figures(figures: list[Figure], folder: Path) -> dict[str, str]:
    copied = {}
    for index, figure in enumerate(figures, 1):
        if figure.png is not None:
            folder.mkdir(parents=True, exist_ok=True)
            name = f"{index:02d}-{figure.png.name}"
            shutil.copyfile(figure.png, folder / name)
            copied[figure.key] = f"figures/{name}"
    return copied


def comparison_tables(records: list[dict]) -> list[Table]:
    """Per model of ``mmcoa reproduce`` records whose zoo entry publishes numbers under their
    protocol: ours beside the published ones (records of no protocol, or of one whose check
    fails, have none: ``mmcoa reproduce`` and ``mmcoa leaderboard`` say why)."""
    from mmcoa.eval.protocols import protocol_of
    from mmcoa.report.published import comparison_table, compare, measurements, zoo_entry

    runs = [r for r in records if r.get("protocol")]
    tables = []
    for name in sorted({r["protocol"]["name"] for r in runs}):
        chosen = [r for r in runs if r["protocol"]["name"] == name]
        try:
            protocol = protocol_of(chosen)
            measured = measurements(chosen, protocol)
        except MmcoaError:
            continue
        for model, numbers in measured.items():
            entry = zoo_entry(model)
            rows = compare(numbers, entry, protocol) if entry else []
            if rows:
                table = comparison_table(model, rows, protocol)
                table.key = f"comparison-{len(tables) + 1}"
                tables.append(table)
    return tables


def _markdown(
    title: str,
    loaded: Loaded,
    sections: list[tuple[str, list[Table]]],
    figures: list[Figure],
    pngs: dict[str, str],
) -> str:
    parts = [f"# {title}", "", _summary_line(loaded), ""]
    for name, tables in sections[:2]:
        if tables:
            parts += [f"## {name}", ""] + [render.table_markdown(t) + "\n" for t in tables]
    if figures:
        parts += ["## Analyses", ""] + [render.figure_markdown(f, pngs.get(f.key)) + "\n" for f in figures]
    if sections[2][1]:
        parts += [f"## {sections[2][0]}", ""] + [render.table_markdown(t) + "\n" for t in sections[2][1]]
    return "\n".join(parts)


def _summary_line(loaded: Loaded) -> str:
    sources = sorted({r["_source"] for r in loaded.records} | {a["_source"] for a in loaded.analyses})
    kinds = sum(1 for r in loaded.records if is_retrieval(r))
    return (
        f"{len(loaded.records)} records ({kinds} retrieval) and {len(loaded.analyses)} analyses "
        f"from {len(sources)} files. Accuracy and R@K in %; — marks a missing cell."
    )


def _sources_html(loaded: Loaded) -> str:
    sources = sorted({r["_source"] for r in loaded.records} | {a["_source"] for a in loaded.analyses})
    items = "".join(f"<li><code>{html.escape(s)}</code></li>" for s in sources)
    return f"<p>{html.escape(_summary_line(loaded))}</p><ul>{items}</ul>"
