"""The attack flags, declared once for ``mmcoa eval``, ``mmcoa analyze`` and suite YAML keys.

Each flag is an attack field's name (``--n-steps`` sets ``n_steps``, ``--text-weight`` sets
Co-Attack's ``text_weight``); eps and step sizes are given in units of 1/255 and reach the
attacks in pixels. A flag applies to every chosen attack that takes it; one that no chosen
attack takes is an error (:func:`mmcoa.attacks.settings.build_attacks`). Old spellings
(``--steps``, ``--restarts``, ``--alpha``) stop with one line naming the new flag.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from mmcoa.attacks.settings import PER_255, RENAMED, SETTINGS, params_from_settings
from mmcoa.flags import UNIT_255, flag_name, refuse_renamed


@dataclass(frozen=True)
class AttackFlag:
    name: str  # the attack field it sets, and (with dashes) the flag
    type: type
    help: str
    choices: tuple[str, ...] | None = None

    @property
    def unit(self) -> str | None:
        return UNIT_255 if self.name in PER_255 else None


ATTACK_FLAGS = (
    AttackFlag("eps", float, "perturbation budget (default: the attack's, 1 for pgd)"),
    AttackFlag("step_size", float, "step size of the image attacks (default: the attack's, 1 for pgd)"),
    AttackFlag("n_steps", int, "attack iterations (default: the attack's, 100 for pgd)"),
    AttackFlag("norm", str, "threat model (default linf)", ("linf", "l2")),
    AttackFlag("n_restarts", int, "random restarts (default 1)"),
    AttackFlag(
        "mlm", str, "masked LM of the text attacks: hub id, directory or minilm (default bert-base-uncased)"
    ),
    AttackFlag("k", int, "BERT-Attack candidates per word (default 10)"),
    AttackFlag("max_words", int, "words the text attacks change per prompt (default 1)"),
    AttackFlag(
        "text_weight",
        float,
        "Co-Attack: weight of the text-guidance KL, the published code's alpha (default 3)",
    ),
    AttackFlag(
        "precision",
        str,
        "image attacks' precision: bf16 autocasts the model (default fp32)",
        ("fp32", "bf16"),
    ),
)
assert tuple(f.name for f in ATTACK_FLAGS) == SETTINGS  # one list of user-settable attack fields


def add_attack_flags(
    p: argparse.ArgumentParser, *, eps_list: bool = False, skip: tuple[str, ...] = ()
) -> None:
    """The attack flags on ``p`` (all default to None: each attack's own default). ``eps_list``:
    ``--eps`` takes comma-separated budgets (a sweep); ``skip``: flags the command declares
    itself (``precision`` where a runtime group has it)."""
    for f in ATTACK_FLAGS:
        if f.name in skip:
            continue
        text = f.help + (f" [units of {f.unit}]" if f.unit else "")
        if f.name == "eps" and eps_list:
            p.add_argument(
                "--eps", default=None, help=f"comma-separated budgets [units of {UNIT_255}] (default 1,2,4)"
            )
            continue
        p.add_argument(flag_name(f.name), type=f.type, default=None, choices=f.choices, help=text)
    refuse_renamed(p, RENAMED)


def attack_params_from_flags(args: argparse.Namespace) -> dict:
    """The attack flags the user set, as attack parameters (eps and step size in pixels)."""
    return params_from_settings({f.name: getattr(args, f.name, None) for f in ATTACK_FLAGS}, spell=flag_name)
