"""Figures and the JSON summary every analysis writes beside its PNG.

Figures are drawn on a bare :class:`matplotlib.figure.Figure` with the Agg canvas (no pyplot,
no display, no global state) and saved at :data:`DPI` without tight cropping, so a figure of
``w × h`` inches is exactly ``w·DPI × h·DPI`` pixels.

The summary ``NAME.json`` is what ``mmcoa report`` embeds: ``{"analysis", "title", "figure"
(the PNG's file name), "table": {"columns", "rows"} (the numbers behind the plot), "notes",
"data" (everything, machine-readable), "versions"}``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mmcoa.files import atomic_path, write_json_atomic
from mmcoa.provenance import versions

DPI = 100


def new_figure(width: float, height: float, ncols: int = 1, nrows: int = 1, **subplot_kw):
    """A ``width × height`` inch figure with an Agg canvas and its axes (a flat list)."""
    figure = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(figure)
    axes = figure.subplots(nrows, ncols, squeeze=False, **subplot_kw)
    return figure, [ax for row in axes for ax in row]


def save_png(figure: Figure, path: str | os.PathLike) -> Path:
    """Write the figure as PNG atomically (temporary file, then rename)."""
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=DPI, format="png")
    return Path(path)


def write_analysis(
    output_dir: str | os.PathLike,
    name: str,
    *,
    analysis: str,
    title: str,
    figure: Figure,
    columns: Sequence[str],
    rows: Sequence[Sequence],
    data: dict,
    notes: Sequence[str] = (),
) -> Path:
    """Save ``NAME.png`` and ``NAME.json`` (see the module docstring) under ``output_dir``;
    returns the JSON path."""
    output = Path(output_dir)
    png = save_png(figure, output / f"{name}.png")
    summary = {
        "analysis": analysis,
        "title": title,
        "figure": png.name,
        "table": {"columns": list(columns), "rows": [list(r) for r in rows]},
        "notes": list(notes),
        "data": data,
        "versions": versions(),
    }
    write_json_atomic(output / f"{name}.json", summary)
    return output / f"{name}.json"


def percent(value: float | None) -> float | None:
    return None if value is None else round(100 * value, 2)
