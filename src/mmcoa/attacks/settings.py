"""Attack settings as users write them (``mmcoa eval`` flags, suite YAML files) → attacks.

Users give eps and the step size in units of 1/255 (the field's habit: ``eps: 1`` means 1/255);
attacks take pixel units (``eps=1/255``). Settings, flags and attack fields share one name
(``n_steps``, ``n_restarts``, ``text_weight``). :func:`params_from_settings` converts the units,
and :func:`build_attacks` hands each attack the parameters it accepts.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

from mmcoa.attacks.base import ATTACKS, build_registered, parameter_names, user_settings
from mmcoa.attacks.retrieval import RETRIEVAL_ATTACKS
from mmcoa.errors import MmcoaError
from mmcoa.flags import UNIT_255
from mmcoa.profiles import CORRECTED, profile_settings
from mmcoa.registry import Registry
from mmcoa.units import from_255

RENAMED = {"steps": "n_steps", "restarts": "n_restarts", "alpha": "text_weight"}  # old spellings


def params_from_settings(settings: Mapping[str, object], spell: Callable[[str], str] = str) -> dict:
    """Attack parameters (pixel units) from user ``settings``; unset (None) values are dropped
    and other names pass through unchanged (e.g. ``scales``); an old spelling (``steps``) is a
    one-line error naming the new one. ``spell(name)`` is how an error names a setting
    (``--step-size`` on the command line)."""
    params, in_255 = {}, per_255_settings()
    for name, value in settings.items():
        if name in RENAMED:
            raise MmcoaError(f"{spell(name)} was renamed to {spell(RENAMED[name])} (the attack's field name)")
        if value is None:
            continue
        params[name] = from_255(value, spell(name)) if name in in_255 else value
    return params


def per_255_settings() -> set[str]:
    """The user settings users give in units of 1/255 (declared with ``unit="1/255"``) of every
    registered attack, a plugin's included."""
    classes = [registry.get(name) for registry in (ATTACKS, RETRIEVAL_ATTACKS) for name in registry.names()]
    return {f.name for cls in classes for f in user_settings(cls) if f.metadata.get("unit") == UNIT_255}


def build_attacks(
    names: Sequence[str], params: Mapping[str, object], registry: Registry = ATTACKS, profile: str = CORRECTED
) -> list:
    """Each named attack of ``registry`` with the parameters it accepts, its behaviour switches
    at ``profile``'s values unless given (:mod:`mmcoa.profiles`); a parameter that no named
    attack takes is an error (a flag the user set must act somewhere)."""
    classes = [registry.get(name) for name in names]
    used: set[str] = set()
    attacks = []
    for name, cls in zip(names, classes):
        accepted = set(parameter_names(cls))
        given = {k: v for k, v in params.items() if k in accepted}
        attacks.append(build_registered(registry, name, **{**profile_settings(cls, profile), **given}))
        used |= accepted & set(params)
    unused = sorted(set(params) - used)
    if unused:
        raise MmcoaError(
            f"no chosen {registry.kind} takes {', '.join(unused)}; "
            f"{registry.kind}s chosen: {', '.join(names) or 'none'}"
        )
    return attacks
