"""The ``--defense`` flags of ``mmcoa eval`` and ``mmcoa analyze sanity``, made from the
defense settings (:mod:`mmcoa.models.test_time`).

``--defense clipure|ttc`` wraps the model; ``--defense-eval adaptive`` (the default) attacks the
defended pipeline end to end with the defense's adaptive gradient, ``non-adaptive`` attacks the
undefended model and classifies with the defended one (the papers' protocol). Each setting of a
defense is a ``--defense-<setting>`` flag (``--defense-eps``, ``--defense-eot-samples``...), its
default the published one; eps and step sizes in units of 1/255. A flag the chosen defense
does not take, or any of them without ``--defense``, is a one-line error before any work.
"""

from __future__ import annotations

import argparse
import dataclasses

from mmcoa.errors import MmcoaError
from mmcoa.flags import UNIT_255, flag_name
from mmcoa.models.test_time import DEFENSES, EVALUATIONS, DefenseSettings, build_defense
from mmcoa.units import from_255, to_255

INTERNAL = ("seed",)  # set by the command (its --seed), not a flag of its own
TYPES = {"int": int, "float": float, "str": str}


def defense_fields() -> dict[str, dataclasses.Field]:
    """Every user setting of every registered defense, by name (first declaration wins)."""
    fields: dict[str, dataclasses.Field] = {}
    for name in DEFENSES.names():
        for f in dataclasses.fields(DEFENSES.get(name)):
            if f.name not in INTERNAL:
                fields.setdefault(f.name, f)
    return fields


def add_defense_flags(p: argparse.ArgumentParser) -> None:
    """``--defense``, ``--defense-eval`` and one ``--defense-<setting>`` per setting."""
    p.add_argument(
        "--defense",
        default=None,
        choices=DEFENSES.names(),
        help="test-time defense wrapping the model: clipure (CLIPure-Cos) or ttc (test-time counterattacks)",
    )
    p.add_argument(
        "--defense-eval",
        default=None,
        choices=EVALUATIONS,
        help="adaptive: attacks see the defended pipeline (its adaptive gradient, EOT); non-adaptive: "
        "attacks see the undefended model, predictions the defended one (default: adaptive)",
    )
    for name, f in defense_fields().items():
        unit = f" [units of {UNIT_255}]" if f.metadata.get("unit") else ""
        text = f"{f.metadata.get('help', '')}{unit} (default: {_defaults(name)})".replace("%", "%%")
        kind = TYPES[str(f.type)]
        p.add_argument(
            flag_name(f"defense_{name}"),
            dest=f"defense_{name}",
            default=None,
            type=kind,
            choices=f.metadata.get("choices"),
            help=text,
        )


def _defaults(setting: str) -> str:
    """``clipure: 10; ttc: 2``: each defense's default of ``setting`` as users write it."""
    shown = []
    for name in DEFENSES.names():
        for f in dataclasses.fields(DEFENSES.get(name)):
            if f.name == setting:
                value = to_255(f.default) if f.metadata.get("unit") else f.default
                shown.append(f"{name}: {value:g}" if isinstance(value, float) else f"{name}: {value}")
    return "; ".join(shown)


def defense_from_flags(args: argparse.Namespace, seed: int = 0) -> DefenseSettings | None:
    """The settings the flags ask for (None without ``--defense``), ``seed`` seeding the draws;
    every mistake is a one-line error."""
    given = {
        n: getattr(args, f"defense_{n}")
        for n in defense_fields()
        if getattr(args, f"defense_{n}") is not None
    }
    if args.defense is None:
        stray = [flag_name(f"defense_{n}") for n in given] + (["--defense-eval"] if args.defense_eval else [])
        if stray:
            raise MmcoaError(f"{', '.join(stray)} need --defense ({' or '.join(DEFENSES.names())})")
        return None
    accepted = {f.name: f for f in dataclasses.fields(DEFENSES.get(args.defense)) if f.name not in INTERNAL}
    for name in given:
        if name not in accepted:
            flags = ", ".join(flag_name(f"defense_{n}") for n in accepted)
            raise MmcoaError(
                f"{flag_name(f'defense_{name}')} does not apply to {args.defense}; its flags: {flags}"
            )
    params = {
        n: from_255(v, flag_name(f"defense_{n}")) if accepted[n].metadata.get("unit") else v
        for n, v in given.items()
    }
    params.update(_gradient_of(args.defense_eval, params.get("gradient")))
    return build_defense(args.defense, seed=seed, **params)


def _gradient_of(evaluation: str | None, gradient: str | None) -> dict:
    """The ``gradient`` setting ``--defense-eval`` implies (non-adaptive: ``undefended``)."""
    if evaluation == "non-adaptive":
        if gradient not in (None, "undefended"):
            raise MmcoaError(
                f"--defense-eval non-adaptive takes its gradient from the undefended model; drop --defense-gradient {gradient}"
            )
        return {"gradient": "undefended"}
    if gradient == "undefended":
        raise MmcoaError(
            "--defense-gradient undefended is the non-adaptive evaluation: give --defense-eval non-adaptive"
        )
    return {}
