"""What identifies a table row and a table column: method labels, threat types, attack settings.

- **Row**: a record's ``label`` (the suite's display name, e.g. ``"MMCoA (alpha=1, beta=0)"``),
  else its ``row`` (the demo's Table I tag), else ``model:pretrained`` (a checkpoint path is
  shortened to its shortest suffix that keeps the rows apart).
- **Threat** (the paper's column families: image, text, multimodal, clean): the ``threat`` the
  attack's class wrote into the record (a record without one, written before mmcoa recorded
  threats, counts as its own family, named by its attack).
- **Setting**: the attack name, its parameters and the protocol (split, seed, number of
  samples). Records whose settings differ are never merged into one column; a header names only
  what tells its column apart from the others of the same threat (e.g. ``eps=4/255``).
"""

from __future__ import annotations

import json
import os
from pathlib import PurePath
from typing import Iterable

THREAT_ORDER = ("image", "text", "multimodal", "clean")
THREAT_NAMES = {"image": "Image", "text": "Text", "multimodal": "Multimodal", "clean": "Clean"}
PIXEL_PARAMS = ("eps", "step_size")  # shown in units of 1/255
PROTOCOL_KEYS = ("split", "seed", "n")
NAME_KEYS = ("attack", "threat", "text_threat")  # a setting's names, not its parameters
TEXT_UNIT = "text_threat"  # word (BERT-Attack) or character (Charmer), in records with a text part


def threat_of(record: dict) -> str:
    """``image``, ``text``, ``multimodal`` or ``clean``: the threat of a record, or of a setting
    made by :func:`setting_of` (one without a threat is its attack's own)."""
    return record.get("threat") or record["attack"]


def threat_rank(threat: str) -> tuple[int, str]:
    return (THREAT_ORDER.index(threat) if threat in THREAT_ORDER else len(THREAT_ORDER), threat)


def threat_name(threat: str) -> str:
    return THREAT_NAMES.get(threat, threat)


def family_name(setting: dict) -> str:
    """A column family's name: the threat's, marked ``character-level`` for a text part that
    edits characters (Charmer; records' ``text_threat``) rather than words."""
    name = threat_name(threat_of(setting))
    return f"{name} (character-level)" if setting.get(TEXT_UNIT) == "character" else name


def setting_of(record: dict, *, with_n: bool = True) -> dict:
    """The attack and protocol a record was produced under (what a column must share)."""
    setting = {
        "attack": record["attack"],
        "threat": threat_of(record),
        **record["attack_params"],
        "split": record.get("split"),
        "seed": record.get("seed"),
        **({TEXT_UNIT: "character"} if record.get(TEXT_UNIT) == "character" else {}),
    }
    if with_n:
        setting["n"] = record.get("n_samples", record.get("n_images"))
    return setting


def setting_key(setting: dict) -> str:
    return json.dumps(setting, sort_keys=True, default=str)


def sort_key(setting: dict) -> tuple:
    """Attack name, then eps, then everything else: eps sweeps read left to right."""
    eps = setting.get("eps")
    return (setting["attack"], eps if isinstance(eps, (int, float)) else -1, setting_key(setting))


def differences(settings: list[dict]) -> list[str]:
    """For each setting, the text of what sets it apart from the others: the attack name when
    names differ, ``eps`` when budgets differ, and any other field that differs between
    settings of the same attack. Empty strings when there is only one setting."""
    return [", ".join(parts) for parts in difference_parts(settings)]


def difference_parts(settings: list[dict]) -> list[list[str]]:
    """:func:`differences`, as a list of ``name=value`` parts per setting."""
    out = []
    for setting in settings:
        same_attack = [s for s in settings if s["attack"] == setting["attack"]]
        keys = [
            k
            for k in _ordered_fields(settings)
            if (k == "attack" and _varies(settings, k))
            or (k == "eps" and k in setting and _varies([s for s in settings if k in s], k))
            or (k not in ("attack", "eps", TEXT_UNIT) and _varies(same_attack, k))
        ]
        out.append([_field_text(k, setting.get(k)) for k in keys])
    return out


def series_names(settings: list[dict]) -> list[str]:
    """Plot-legend names: the threat, then the attack and what sets the setting apart, e.g.
    ``"Image (pgd, eps=4/255)"``; plain ``"Clean"`` for no attack."""
    names = []
    for setting, parts in zip(settings, difference_parts(settings)):
        attack = setting["attack"]
        if attack != "clean" and attack not in parts:
            parts = [attack] + parts
        suffix = f" ({', '.join(parts)})" if parts else ""
        names.append(family_name(setting) + suffix)
    return names


def series_name_map(settings: Iterable[dict]) -> dict[str, str]:
    """``{setting_key: series name}`` for the distinct settings among ``settings``."""
    unique = {setting_key(s): s for s in settings}
    return dict(zip(unique, series_names(list(unique.values()))))


def brief(setting: dict) -> str:
    """The attack and its budget only, e.g. ``"pgd eps=4/255"``."""
    eps = setting.get("eps")
    return setting["attack"] + (f" eps={format_value('eps', eps)}" if eps is not None else "")


def _ordered_fields(settings: list[dict]) -> list[str]:
    return sorted(
        {k for s in settings for k in s if k != "threat"},
        key=lambda k: (k != "attack", k != "eps", k in PROTOCOL_KEYS, k),
    )


def _varies(settings: list[dict], key: str) -> bool:
    return len({json.dumps(s.get(key), default=str) for s in settings}) > 1


def describe(setting: dict, protocol: bool = True) -> str:
    """Every field of a setting (without split, seed and n unless ``protocol``)."""
    params = [
        _field_text(k, v)
        for k, v in setting.items()
        if k not in NAME_KEYS and v is not None and (protocol or k not in PROTOCOL_KEYS)
    ]
    return f"{setting['attack']} " + " ".join(params) if params else setting["attack"]


def _field_text(key: str, value: object) -> str:
    if key == "attack":
        return str(value)
    return f"{key}={format_value(key, value)}"


def format_value(key: str, value: object) -> str:
    if key in PIXEL_PARAMS and isinstance(value, (int, float)):
        return f"{round(value * 255, 4):g}/255"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str) and os.sep in value:
        return PurePath(value).name
    if isinstance(value, list):
        return "(" + ",".join(format_value(key, v) for v in value) + ")"
    return "—" if value is None else str(value)


def row_labels(records: list[dict]) -> list[str]:
    """The row label of each record (see the module docstring)."""
    fallback = _model_labels(records)
    return [str(r.get("label") or r.get("row") or fallback[i]) for i, r in enumerate(records)]


def _model_labels(records: list[dict]) -> list[str]:
    pretrained = [str(r.get("pretrained") or "") for r in records]
    short = _shortest_unique_suffixes(sorted(set(pretrained)))
    return [f"{r['model']}:{short[p]}" if p else str(r["model"]) for r, p in zip(records, pretrained)]


def _shortest_unique_suffixes(paths: list[str]) -> dict[str, str]:
    """Each path shortened to its last k components, with k as small as keeps them distinct."""
    parts = {p: PurePath(p).parts or (p,) for p in paths}
    depth = 1
    while depth < max((len(v) for v in parts.values()), default=1):
        short = [os.path.join(*v[-depth:]) for v in parts.values()]
        if len(set(short)) == len(short):
            break
        depth += 1
    return {p: os.path.join(*v[-depth:]) for p, v in parts.items()}
