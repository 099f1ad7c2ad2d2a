"""Command-line flags made from one declaration: a dataclass's fields and their metadata.

A field declared with :func:`setting` carries its help text, its unit and its choices; the
command line (``mmcoa train``), YAML files and Python then share the field's name, default and
unit. :func:`add_field_flags` turns the fields into argparse flags (``--train-eps``), each with
its help, unit and default in ``--help``, and :func:`field_values` reads them back; an old
flag spelling is refused by :func:`refuse_renamed` with one line naming the new one.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Callable, Iterable

UNIT_255 = "1/255"  # the user's unit of eps and step sizes (the library holds pixels)


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, not argparse's usage block (``--help``
    still prints the full help)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.set_defaults(command_prog=self.prog)  # the innermost command's, once parsed

    def parse_args(self, args=None, namespace=None):
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:  # argparse would blame the main parser for a subcommand's unknown flags
            self._fail(parsed.command_prog, f"unrecognized arguments: {' '.join(extra)}")
        return parsed

    def error(self, message: str):
        self._fail(self.prog, message)

    def _fail(self, prog: str, message: str):
        self.exit(2, f"{prog}: error: {' '.join(message.splitlines())} (see {prog} --help)\n")


def setting(
    default: Any,
    help: str = "",
    *,
    unit: str | None = None,
    choices: Iterable[str] | None = None,
    run_default: Any = None,
    sides: dict | None = None,
    neutral: Any = dataclasses.MISSING,
) -> Any:
    """A dataclass field with the metadata its flag is made from: ``help``; ``unit`` (``"1/255"``
    for a value users write in 1/255 that the field holds in pixels); ``choices``; and
    ``run_default``, the default of a run from the command line or a YAML file where it differs
    from the Python default (``device``: ``auto`` there, ``cpu`` in Python); ``sides``, a
    switch's ``{"corrected": ..., "published": ...}`` values (see :func:`switch`); ``neutral``,
    the value at which a field added later changes nothing (an attack's seed leaves the field
    out at that value, so adding it changed no earlier record)."""
    metadata = {
        "help": help,
        "unit": unit,
        "choices": tuple(choices) if choices else None,
        "run_default": run_default,
        **(sides or {}),
        **({} if neutral is dataclasses.MISSING else {"neutral": neutral}),
    }
    return dataclasses.field(default=default, metadata=metadata)


def switch(
    corrected: Any, published: Any, help: str, *, choices: Iterable[str] | None = None, unset: bool = False
) -> Any:
    """A setting that chooses between this toolkit's ``corrected`` behaviour and the published
    research code's (``docs/deviations.md``); a profile (:mod:`mmcoa.profiles`) sets every switch
    at once. The field's default is ``corrected``, or None with ``unset`` (a field that its
    class resolves from its profile in ``__post_init__``, as ``TrainConfig`` does)."""
    sides = {"corrected": corrected, "published": published}
    return setting(None if unset else corrected, help, choices=choices, sides=sides)


def switch_default_text(f: dataclasses.Field, default: str, shown: Callable[[Any], str] = str) -> str:
    """``default`` as ``--help`` shows a field's default, followed by the published profile's
    value when the field is a switch (:func:`switch`)."""
    if "published" not in f.metadata:
        return default
    return f"{default}; published profile: {shown(f.metadata['published'])}"


def flag_name(name: str) -> str:
    return f"--{name.replace('_', '-')}"


def add_field_flags(
    parser: argparse.ArgumentParser, cls: type, describe_default: Callable[[dataclasses.Field], str]
) -> None:
    """One flag per field of the dataclass ``cls``; every flag defaults to None (not given), so
    a YAML value stands unless the flag is given. ``describe_default(field)`` is the default
    as ``--help`` shows it."""
    for f in dataclasses.fields(cls):
        kind = str(f.type).replace(" ", "")
        base = kind.split("|")[0]
        meta = f.metadata
        text = meta.get("help", "")
        if meta.get("unit"):
            text += f" [units of {meta['unit']}]"
        text = f"{text} (default: {describe_default(f)})".strip().replace("%", "%%")
        options: dict[str, Any] = {"default": None, "help": text, "dest": f.name}
        if base == "bool":
            options["action"] = argparse.BooleanOptionalAction
        elif base.startswith("tuple[float"):
            options.update(
                type=float,
                nargs=base.count("float"),
                metavar=tuple(f"{f.name.upper()}{i + 1}" for i in range(base.count("float"))),
            )
        else:
            options["type"] = {"int": int, "float": float}.get(base, str)
            if meta.get("choices"):
                options["choices"] = meta["choices"]
        parser.add_argument(flag_name(f.name), **options)


def field_values(args: argparse.Namespace, cls: type) -> dict:
    """The fields' flag values (None where not given), tuples as tuples."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}


class _Renamed(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string} was renamed to {self.const}")


def refuse_renamed(parser: argparse.ArgumentParser, renamed: dict[str, str]) -> None:
    """Old flag spellings (``{"steps": "n_steps"}``) that stop with one line naming the new
    flag; hidden from ``--help``."""
    for old, new in renamed.items():
        parser.add_argument(
            flag_name(old),
            action=_Renamed,
            const=flag_name(new),
            nargs="?",
            default=argparse.SUPPRESS,
            help=argparse.SUPPRESS,
        )
