"""Settings files, read and typed the same way everywhere (training configs, suite files, attack
settings, dataset options).

:func:`read_mapping` reads a YAML file of settings; :func:`typed` checks one value against its
declared type (a dataclass field's or a function parameter's annotation, e.g. ``"int | None"``).
Every problem is one :class:`MmcoaError` line, ``NAME must be ACCEPTED; got GIVEN``, with GIVEN
as YAML writes it (``null``, ``true``, ``[1]``, ``'abc'``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import yaml

from mmcoa.errors import MmcoaError

ACCEPTED = {
    "float": "a number",
    "int": "an integer",
    "bool": "true or false",
    "str": "a string",
    "tuple[float, float]": "a pair of numbers",
    "tuple[float, ...]": "a list of numbers",
}
_BAD = object()  # what _convert returns for a value of the wrong type


def read_mapping(path: str | os.PathLike, what: str) -> dict:
    """The settings in the YAML file ``path`` (keys as strings); ``what`` names the file in
    messages (``"config file"``, ``"suite config"``)."""
    path = Path(path)
    if not path.is_file():
        raise MmcoaError(
            f"{what} {path} does not exist; give the path of a YAML file of 'name: value' settings"
        )
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or type(error).__name__
        raise MmcoaError(f"{what} {path} is not valid YAML: {problem}{where}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise MmcoaError(
            f"{what} {path} must be a mapping of settings, one 'name: value' per line; got {kind_of(values)}"
        )
    return string_keys(values)


def string_keys(value: Any) -> Any:
    """``value`` with every mapping key, at any depth, as a string (YAML reads ``123:`` as an
    int), so unknown keys are named in messages like any other."""
    if isinstance(value, dict):
        return {str(k): string_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [string_keys(v) for v in value]
    return value


def typed(
    name: str,
    value: Any,
    kind: str,
    *,
    accepted: str | None = None,
    ok: Callable[[Any], bool] = lambda v: True,
) -> Any:
    """``value`` as the annotation ``kind`` (``"int"``, ``"float | None"``, ...), or a one-line
    error naming ``name``, the value and what is accepted (``accepted`` overrides the type's
    wording; ``ok`` adds a condition, e.g. positive). YAML reads ``1e-5`` (no dot) as a string,
    so such strings are accepted as numbers. Kinds without a check pass through unchanged."""
    optional = kind.replace(" ", "").endswith("|None")
    if value is None and optional:
        return None
    base = kind.split("|")[0].strip()
    wording = accepted or ACCEPTED.get(base)
    converted = _convert(base, value)
    if wording is None:
        return value
    if converted is _BAD or not ok(converted):
        raise MmcoaError(f"{name} must be {wording}{' or null' if optional else ''}; got {shown(value)}")
    return converted


def one_of(name: str, value: Any, choices: tuple[str, ...], kind: str = "str") -> str | None:
    """``value`` if it is one of the words ``choices`` (or null, when ``kind`` is optional)."""
    return typed(name, value, kind, accepted=f"one of {', '.join(choices)}", ok=lambda v: v in choices)


def _convert(kind: str, value: Any) -> Any:
    """``value`` as ``kind``, or ``_BAD``."""
    if isinstance(value, bool):
        return value if kind == "bool" else _BAD
    if kind == "float":
        try:
            return float(value)
        except (TypeError, ValueError):
            return _BAD
    if kind == "int":
        return value if isinstance(value, int) else _BAD
    if kind == "str":
        return os.fspath(value) if isinstance(value, (str, os.PathLike)) else _BAD
    if kind.startswith("tuple[float"):
        pair = kind == "tuple[float, float]"
        if not isinstance(value, (list, tuple)) or (len(value) != 2 if pair else not value):
            return _BAD
        numbers = tuple(_convert("float", v) for v in value)
        return _BAD if _BAD in numbers else numbers
    return _BAD if kind == "bool" else value  # a bool kind takes only true or false


def shown(value: Any) -> str:
    """``value`` as a YAML file spells it: ``null``, ``true``, ``3.5``, ``[1]``, ``'abc'``."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return repr(value)


def kind_of(value: Any) -> str:
    """``a list``, ``a number``, ... for messages about a whole file or entry."""
    names = {
        list: "a list",
        dict: "a mapping",
        str: "a string",
        int: "a number",
        float: "a number",
        bool: "true or false",
    }
    return names.get(type(value), type(value).__name__)
