"""Result records: the schema, their atomic JSON file and the printed table."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Sequence

from mmcoa.files import write_json_atomic

__all__ = ["RECORD_KEYS", "format_table", "read_records", "write_records"]

RECORD_KEYS = (
    "model",
    "pretrained",
    "dataset",
    "split",
    "attack",
    "attack_params",
    "n_samples",
    "accuracy",
    "top5",
    "seed",
    "elapsed_s",
    "versions",
)


def write_records(path: str | os.PathLike, records: Sequence[dict]) -> None:
    missing = [(r.get("attack"), k) for r in records for k in RECORD_KEYS if k not in r]
    if missing:
        raise ValueError(f"records lack required keys: {missing[:3]}")
    write_json_atomic(path, list(records))


def read_records(path: str | os.PathLike) -> list[dict]:
    with open(path) as handle:
        return json.load(handle)


def format_table(records: Iterable[dict]) -> str:
    """A fixed-width text table: one row per record."""
    header = ("model", "dataset", "attack", "eps", "n", "accuracy", "top5", "success", "words", "time_s")
    rows = [header] + [_row(r) for r in records]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _row(record: dict) -> tuple[str, ...]:
    eps = record["attack_params"].get("eps")
    success = record.get("attack_success_rate")
    return (
        _short_model(record),
        record["dataset"],
        record["attack"],
        "-" if eps is None else f"{eps * 255:g}/255",
        str(record["n_samples"]),
        f"{record['accuracy']:.4f}",
        f"{record['top5']:.4f}",
        "-" if success is None else f"{success:.4f}",
        _words(record),
        f"{record['elapsed_s']:.1f}",
    )


def _words(record: dict) -> str:
    words = record.get("mean_words_changed")
    return "-" if not words else f"{words:.2f}"


def _short_model(record: dict) -> str:
    pretrained = record.get("pretrained")
    if pretrained and os.path.sep in str(pretrained):
        pretrained = Path(pretrained).name
    return f"{record['model']}:{pretrained}" if pretrained else record["model"]
