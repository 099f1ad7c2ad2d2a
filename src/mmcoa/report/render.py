"""Tables as Markdown, CSV and HTML; figures inlined into the HTML as base64 PNGs.

Values are percentages with two decimals, as the paper prints them; gain rows are signed
("+1.20", "−0.35"); a missing cell is "—" in every format (read the CSVs with
``pandas.read_csv(path, na_values="—")``).
"""

from __future__ import annotations

import base64
import csv
import html
import io
from dataclasses import dataclass
from pathlib import Path

from mmcoa.report.tables import Table

MISSING = "—"
MINUS = "−"


@dataclass
class Figure:
    """A plot for the report: its title, PNG file, and the numbers behind it as a table."""

    key: str
    title: str
    png: Path | None
    table: Table | None
    notes: list[str]


def cell_text(value: float | str | None, gain: bool = False) -> str:
    if value is None:
        return MISSING
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not gain:
        return str(value)
    if not gain:
        return f"{value:.2f}"
    value = round(value, 2) + 0.0  # no "-0.00"
    return f"+{value:.2f}" if value > 0 else (f"{MINUS}{-value:.2f}" if value < 0 else "0.00")


def header_texts(table: Table) -> list[str]:
    return [f"{c.group} {c.name}".strip() for c in table.columns]


def table_markdown(table: Table) -> str:
    lines = [
        f"### {table.title}",
        "",
        f"| {_md(table.corner)} | " + " | ".join(_md(h) for h in header_texts(table)) + " |",
        "|---|" + "---:|" * len(table.columns),
    ]
    for row in table.rows:
        cells = [cell_text(v, row.gain) for v in row.values]
        label = f"*{_md(row.label)}*" if row.gain else _md(row.label)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines + [""] + [f"- {n}" for n in table.notes])


def table_csv(table: Table) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([table.corner, *header_texts(table)])
    for row in table.rows:
        writer.writerow([row.label, *[cell_text(v, row.gain) for v in row.values]])
    return buffer.getvalue()


def table_html(table: Table) -> str:
    head = _html_head(table)
    body = "\n".join(
        f'<tr class="{"gain" if row.gain else "method"}"><th scope="row">{html.escape(row.label)}</th>'
        + "".join(f"<td>{html.escape(cell_text(v, row.gain))}</td>" for v in row.values)
        + "</tr>"
        for row in table.rows
    )
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in table.notes)
    return (
        f'<section id="{table.key}"><table class="results" id="table-{table.key}">'
        f"<caption>{html.escape(table.title)}</caption>\n<thead>{head}</thead>\n"
        f"<tbody>\n{body}\n</tbody></table>"
        + (f'<ul class="notes">{notes}</ul>' if notes else "")
        + "</section>"
    )


def _html_head(table: Table) -> str:
    names = "".join(f'<th scope="col">{html.escape(c.name)}</th>' for c in table.columns)
    if not any(c.group for c in table.columns):
        return f'<tr><th scope="col">{html.escape(table.corner)}</th>{names}</tr>'
    spans: list[list] = []
    for column in table.columns:
        if spans and spans[-1][0] == column.group:
            spans[-1][1] += 1
        else:
            spans.append([column.group, 1])
    groups = "".join(f'<th colspan="{n}" scope="colgroup">{html.escape(g)}</th>' for g, n in spans)
    return f'<tr><th rowspan="2" scope="col">{html.escape(table.corner)}</th>{groups}</tr><tr>{names}</tr>'


def figure_markdown(figure: Figure, relative_png: str | None) -> str:
    parts = [f"### {figure.title}", ""]
    parts.append(f"![{figure.title}]({relative_png})" if relative_png else "(figure file missing)")
    if figure.table is not None:
        parts += ["", table_markdown(figure.table).split("\n", 2)[2]]
    return "\n".join(parts + [""] + [f"- {n}" for n in figure.notes])


def figure_html(figure: Figure) -> str:
    if figure.png is not None and figure.png.is_file():
        data = base64.b64encode(figure.png.read_bytes()).decode("ascii")
        image = f'<img alt="{html.escape(figure.title)}" src="data:image/png;base64,{data}">'
    else:
        image = "<p>(figure file missing)</p>"
    numbers = table_html(figure.table) if figure.table is not None else ""
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in figure.notes)
    return (
        f'<figure id="figure-{figure.key}">{image}<figcaption>{html.escape(figure.title)}'
        f"</figcaption></figure>{numbers}" + (f'<ul class="notes">{notes}</ul>' if notes else "")
    )


STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1400px}
table.results{border-collapse:collapse;margin:1em 0;font-size:14px}
table.results caption{text-align:left;font-weight:600;margin-bottom:.4em}
table.results th,table.results td{border:1px solid #ccc;padding:3px 8px}
table.results td{text-align:right;font-variant-numeric:tabular-nums}
table.results th[scope=row]{text-align:left}
table.results tr.gain{color:#555;font-style:italic;background:#f7f7f7}
ul.notes{font-size:12px;color:#555}
figure img{max-width:100%;border:1px solid #ddd}
"""


def page_html(title: str, sections: list[tuple[str, list[str]]], script: str = "") -> str:
    """A self-contained HTML page: inline CSS, inline images, and ``script`` (none by default;
    :data:`SORTABLE` makes every results table sortable by a click on a column head)."""
    body = "\n".join(
        f"<h2>{html.escape(name)}</h2>\n" + "\n".join(parts) for name, parts in sections if parts
    )
    script = f"<script>{script}</script>" if script else ""
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n"
        f"<body><h1>{html.escape(title)}</h1>\n{body}\n{script}</body></html>\n"
    )


SORTABLE = """
document.querySelectorAll('table.results').forEach(function (table) {
  var heads = table.tHead.rows[table.tHead.rows.length - 1].cells;
  var offset = table.tHead.rows.length > 1 ? 1 : 0;
  Array.prototype.forEach.call(heads, function (head, i) {
    var column = i + offset;
    head.style.cursor = 'pointer';
    head.title = 'sort';
    head.addEventListener('click', function () {
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      var down = head.dataset.order !== 'down';
      head.dataset.order = down ? 'down' : 'up';
      function key(row) {
        var text = row.cells[column] ? row.cells[column].textContent : '';
        var number = parseFloat(text.replace('\u2212', '-').replace('\u00b1', ''));
        return isNaN(number) ? (down ? -Infinity : Infinity) : number;
      }
      rows.sort(function (a, b) { return down ? key(b) - key(a) : key(a) - key(b); });
      rows.forEach(function (row) { body.appendChild(row); });
      table.dataset.sortedBy = String(column);
    });
  });
});
"""


def _md(text: str) -> str:
    return text.replace("|", "\\|")
