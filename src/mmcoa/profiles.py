"""Profiles: every behaviour switch at this toolkit's corrected value or at the published code's.

The published research code (MMCoA's, and the baselines' it was compared with) measured the
paper's numbers; ``docs/deviations.md`` lists where it differs from the paper's intent and how
this toolkit corrects it. Each difference that changes a number is a *switch*: a setting declared
with :func:`mmcoa.flags.switch`, holding its corrected value (the default) and its published one.
A profile names one side for every switch at once (``--profile published``, ``profile:
published`` in YAML); a value given explicitly wins over the profile. Records and checkpoints
store the switches' values and :func:`profile_of` them, so a number always says which behaviour
produced it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from mmcoa.errors import MmcoaError

CORRECTED, PUBLISHED = "corrected", "published"
PROFILES = (CORRECTED, PUBLISHED)
MIXED = "mixed"  # some switches corrected, some published


def check_profile(profile: str) -> str:
    if profile not in PROFILES:
        raise MmcoaError(f"profile must be one of {', '.join(PROFILES)}; got {profile!r}")
    return profile


def switch_fields(cls) -> list[dataclasses.Field]:
    """The fields of the dataclass ``cls`` declared with :func:`mmcoa.flags.switch`."""
    return [f for f in dataclasses.fields(cls) if PUBLISHED in f.metadata]


def profile_settings(cls, profile: str) -> dict[str, Any]:
    """``{switch: value}`` of every switch of ``cls`` under ``profile``."""
    check_profile(profile)
    return {f.name: f.metadata[profile] for f in switch_fields(cls)}


def switches_of(obj) -> dict[str, Any]:
    """``{switch: value}`` of a dataclass instance's switches."""
    return {f.name: getattr(obj, f.name) for f in switch_fields(type(obj))}


def is_corrected(cls, name: str, value: Any) -> bool:
    """Whether ``value`` is the corrected value of the switch ``name`` of ``cls`` (False for a
    field that is not a switch)."""
    fields = {f.name: f for f in switch_fields(cls)}
    return name in fields and fields[name].metadata[CORRECTED] == value


def profile_of(switches: dict[str, Any], published: dict[str, Any]) -> str:
    """``corrected``, ``published`` or ``mixed``: which side ``switches`` (``{name: value}``)
    stand on, given each switch's ``published`` value. No switch at all is ``corrected``."""
    sides = {PUBLISHED if published[name] == value else CORRECTED for name, value in switches.items()}
    return sides.pop() if len(sides) == 1 else (MIXED if sides else CORRECTED)
