"""Attack settings as users write them (``mmcoa eval`` flags, suite YAML files) → attacks.

Users give eps and the step size in units of 1/255 (the field's habit: ``eps: 1`` means 1/255)
and iterations as ``steps``; attacks take pixel units and their dataclass field names
(``eps=1/255``, ``n_steps``). :func:`params_from_settings` converts the one into the other, and
:func:`build_attacks` hands each attack the parameters it accepts.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

from mmcoa.attacks.base import ATTACKS, build_registered, parameter_names
from mmcoa.errors import MmcoaError
from mmcoa.registry import Registry

PER_255 = ("eps", "step_size")  # given in units of 1/255
SETTINGS = {"eps": "eps", "step_size": "step_size", "steps": "n_steps", "norm": "norm",
            "restarts": "n_restarts", "mlm": "mlm", "k": "k", "max_words": "max_words",
            "alpha": "alpha", "precision": "precision"}  # user name → attack field


def params_from_settings(settings: Mapping[str, object],
                         spell: Callable[[str], str] = str) -> dict:
    """Attack parameters (pixel units, field names) from user ``settings``; unset (None) values
    are dropped and names outside :data:`SETTINGS` pass through unchanged (e.g. ``scales``).
    ``spell(name)`` is how an error names a setting (``--step-size`` on the command line)."""
    params = {}
    for name, value in settings.items():
        if value is None:
            continue
        params[SETTINGS.get(name, name)] = per_255(value, spell(name)) if name in PER_255 else value
    return params


def per_255(value: object, spelled: str) -> float:
    """``value`` (units of 1/255, in (0, 255]) in pixel units, or a one-line error."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 255:
        shown = f"{value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else repr(value)
        raise MmcoaError(f"{spelled} must be in (0, 255] (units of 1/255); got {shown}")
    return value / 255


def build_attacks(names: Sequence[str], params: Mapping[str, object],
                  registry: Registry = ATTACKS) -> list:
    """Each named attack of ``registry`` with the parameters it accepts; a parameter that no
    named attack takes is an error (a flag the user set must act somewhere)."""
    classes = [registry.get(name) for name in names]
    used: set[str] = set()
    attacks = []
    for name, cls in zip(names, classes):
        accepted = set(parameter_names(cls))
        attacks.append(build_registered(registry, name, **{k: v for k, v in params.items() if k in accepted}))
        used |= accepted & set(params)
    unused = sorted(set(params) - used)
    if unused:
        raise MmcoaError(f"no chosen {registry.kind} takes {', '.join(unused)}; "
                         f"{registry.kind}s chosen: {', '.join(names) or 'none'}")
    return attacks
