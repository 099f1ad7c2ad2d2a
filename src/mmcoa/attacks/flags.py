"""The attack flags of ``mmcoa eval`` and ``mmcoa analyze``, made from the attack classes.

Each flag is a user setting of a registered attack (a field declared with
:func:`mmcoa.flags.setting`, :func:`mmcoa.attacks.base.user_settings`): ``--n-steps`` sets
``n_steps``, ``--text-weight`` Co-Attack's ``text_weight``; its help shows each attack's default.
Eps and step sizes are given in units of 1/255 and reach the attacks in pixels. A flag applies
to every chosen attack that takes it; one that no chosen attack takes is an error
(:func:`mmcoa.attacks.settings.build_attacks`). Old spellings (``--steps``, ``--restarts``,
``--alpha``) stop with one line naming the new flag. A setting must not share its name with a
command's own flag (``--seed``, ``--template``...).
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

from mmcoa.attacks.base import ATTACKS, user_settings
from mmcoa.attacks.retrieval import RETRIEVAL_ATTACKS
from mmcoa.attacks.settings import RENAMED, params_from_settings
from mmcoa.flags import UNIT_255, flag_name, refuse_renamed, switch_default_text
from mmcoa.registry import Registry
from mmcoa.units import to_255

REGISTRIES = (ATTACKS, RETRIEVAL_ATTACKS)


@dataclass(frozen=True)
class AttackFlag:
    """One flag: an attack field users set by name (:func:`mmcoa.attacks.base.user_settings`)."""

    field: dataclasses.Field
    defaults: str  # each attack's default, as --help shows it

    @property
    def name(self) -> str:
        return self.field.name

    @property
    def unit(self) -> str | None:
        return self.field.metadata.get("unit")


def attack_flags(registries: tuple[Registry, ...] = REGISTRIES) -> list[AttackFlag]:
    """The flags of every registered attack's user settings, first declaration of each name
    first (an attack registered later, e.g. a plugin's, adds its own)."""
    declared: dict[str, dataclasses.Field] = {}
    for registry in registries:
        for name in registry.names():
            for f in user_settings(registry.get(name)):
                declared.setdefault(f.name, f)
    return [AttackFlag(f, _defaults_text(f.name, registries)) for f in declared.values()]


def _defaults_text(setting: str, registries: tuple[Registry, ...]) -> str:
    """``1; 2 for sga``: the commonest default of ``setting``, then the attacks with others."""
    by_value: dict[str, list[str]] = {}
    for registry in registries:
        prefix = "" if registry is ATTACKS else f"{registry.kind.split()[0]} "
        for name in registry.names():
            found = [f for f in dataclasses.fields(registry.get(name)) if f.name == setting]
            if found:
                by_value.setdefault(_shown(found[0]), []).append(prefix + name)
    common, *others = sorted(by_value.items(), key=lambda item: -len(item[1]))
    return "; ".join([common[0], *(f"{value} for {', '.join(names)}" for value, names in others)])


def _shown(f: dataclasses.Field) -> str:
    value = f.default
    if f.metadata.get("unit") == UNIT_255 and isinstance(value, float):
        return f"{to_255(value):g}"
    return "none" if value is None else str(value)


def add_attack_flags(
    p: argparse.ArgumentParser, *, eps_list: bool = False, skip: tuple[str, ...] = ()
) -> None:
    """The attack flags on ``p`` (all default to None: each attack's own default). ``eps_list``:
    ``--eps`` takes comma-separated budgets (a sweep); ``skip``: flags the command declares
    itself (``precision`` where a runtime group has it)."""
    for f in attack_flags():
        if f.name in skip:
            continue
        if f.name == "eps" and eps_list:
            p.add_argument(
                "--eps", default=None, help=f"comma-separated budgets [units of {UNIT_255}] (default 1,2,4)"
            )
            continue
        meta = f.field.metadata
        text = (
            meta["help"]
            + (f" [units of {f.unit}]" if f.unit else "")
            + f" (default: {switch_default_text(f.field, f.defaults)})"
        )
        kind = {"int": int, "float": float}.get(str(f.field.type).split("|")[0].strip(), str)
        p.add_argument(
            flag_name(f.name),
            type=kind,
            default=None,
            choices=meta.get("choices"),
            help=text.replace("%", "%%"),
        )
    refuse_renamed(p, RENAMED)


def attack_params_from_flags(args: argparse.Namespace) -> dict:
    """The attack flags the user set, as attack parameters (eps and step size in pixels)."""
    return params_from_settings(
        {f.name: getattr(args, f.name, None) for f in attack_flags()}, spell=flag_name
    )
