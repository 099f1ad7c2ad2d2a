"""Reading result files: records (``mmcoa eval``, ``mmcoa retrieval``, the suite) and analysis
summaries (``mmcoa analyze``), from files or whole directories.

A record file holds one JSON object or a JSON list of them. A classification record has the
keys of :data:`mmcoa.eval.results.RECORD_KEYS` (at least ``model``, ``dataset``, ``attack``,
``attack_params`` and ``accuracy``); a retrieval record has ``i2t_r1`` ... instead of
``accuracy``. An analysis summary is an object with ``"analysis"`` and ``"figure"`` keys.

Directories are searched recursively for ``*.json``; files there that are neither records nor
analyses (``config.json``, ``metrics.json`` of a training run...) are skipped. A file named
explicitly must be one or the other, and a file that is not valid JSON is an error either way.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from mmcoa.errors import MmcoaError

CORE_KEYS = ("model", "dataset", "attack", "attack_params")
RETRIEVAL_KEYS = ("i2t_r1", "t2i_r1")
RECORD_FILES = "JSON files written by mmcoa eval, mmcoa retrieval, mmcoa suite or mmcoa analyze"


@dataclass
class Loaded:
    """What a set of result paths holds: records (each with its ``_source`` file) and
    analysis summaries (each with its ``_source`` file)."""

    records: list[dict] = field(default_factory=list)
    analyses: list[dict] = field(default_factory=list)


def is_record(item: object) -> bool:
    """A classification or retrieval result record."""
    if not isinstance(item, dict) or not all(k in item for k in CORE_KEYS):
        return False
    if not isinstance(item["attack_params"], dict):
        return False
    return _is_number(item.get("accuracy")) or all(_is_number(item.get(k)) for k in RETRIEVAL_KEYS)


def is_retrieval(record: dict) -> bool:
    return "accuracy" not in record and "i2t_r1" in record


def is_analysis(item: object) -> bool:
    return isinstance(item, dict) and isinstance(item.get("analysis"), str) and "figure" in item


def load_results(paths: Iterable[str | os.PathLike], required: bool = True) -> Loaded:
    """Records and analyses from files and directories; raises when a file is unreadable or
    malformed, and (if ``required``) when there is no record and no analysis at all."""
    loaded, seen = Loaded(), set()
    paths = list(paths)
    if not paths:
        raise MmcoaError("no result path given; pass record files or directories")
    for path in paths:
        for file, explicit in _json_files(Path(path)):
            if file.resolve() not in seen:
                seen.add(file.resolve())
                _add_file(loaded, file, explicit)
    if required and not loaded.records and not loaded.analyses:
        raise MmcoaError(f"no result records found in {', '.join(map(str, paths))}; expected {RECORD_FILES}")
    return loaded


def load_records(paths: Iterable[str | os.PathLike]) -> list[dict]:
    """Just the records of :func:`load_results` (an error when there are none)."""
    paths = list(paths)
    records = load_results(paths).records
    if not records:
        raise MmcoaError(
            f"no result records found in {', '.join(map(str, paths))} (analysis summaries only); "
            f"expected {RECORD_FILES}"
        )
    return records


def _json_files(path: Path) -> list[tuple[Path, bool]]:
    if path.is_dir():
        return [(file, False) for file in sorted(path.rglob("*.json")) if file.is_file()]
    if path.is_file():
        return [(path, True)]
    raise MmcoaError(
        f"result path {str(path)!r} does not exist; pass {RECORD_FILES}, or directories holding them"
    )


def _add_file(loaded: Loaded, file: Path, explicit: bool) -> None:
    payload = _read_json(file)
    items = payload if isinstance(payload, list) else [payload]
    if items and all(is_record(item) for item in items):
        known = {_identity(r) for r in loaded.records}
        for item in items:  # a suite's records.json repeats its cells/*.json: keep one copy
            if _identity(item) not in known:
                known.add(_identity(item))
                loaded.records.append({**item, "_source": str(file)})
    elif is_analysis(payload):
        loaded.analyses.append({**payload, "_source": str(file)})
    elif explicit or (items and any(is_record(item) for item in items)):
        raise MmcoaError(f"malformed record file {str(file)!r}: {_what_is_wrong(items)}")


def _identity(record: dict) -> str:
    return json.dumps({k: v for k, v in record.items() if k != "_source"}, sort_keys=True, default=str)


def _read_json(file: Path) -> object:
    try:
        return json.loads(file.read_text())
    except (OSError, UnicodeDecodeError) as error:
        raise MmcoaError(f"cannot read result file {str(file)!r} ({type(error).__name__})") from error
    except json.JSONDecodeError as error:
        raise MmcoaError(
            f"malformed record file {str(file)!r}: not valid JSON (line {error.lineno}: {error.msg})"
        ) from error


def _what_is_wrong(items: list) -> str:
    if not items:
        return "an empty list"
    for index, item in enumerate(items):
        if not is_record(item):
            if not isinstance(item, dict):
                return f"item {index} is a {type(item).__name__}, not a record object"
            missing = [k for k in CORE_KEYS if k not in item]
            if missing:
                return f"item {index} lacks {', '.join(missing)}"
            return f"item {index} has no numeric accuracy (classification) or i2t_r1/t2i_r1 (retrieval)"
    return "not a record"


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
