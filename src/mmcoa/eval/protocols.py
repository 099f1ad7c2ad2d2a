"""The field's evaluation protocols, fixed and named: ``mmcoa reproduce PROTOCOL --model NAME``.

A protocol is a versioned YAML definition (the shipped ones sit in ``protocols/`` next to this
module: ``robustvlm``, ``tecoa``, ``tga-zsr``, ``mmcoa``; a user's is any file of the same
schema) whose every setting was read from the authors' code (each file cites it). It names:
``ref``, the key under which ``robust_zoo.yaml`` entries publish numbers measured this way;
``settings``, the suite keys every part shares (template, logit scale, batch size, precision,
seed, split); ``datasets`` (a label, a dataset name, options); and ``parts``, each a suite of
its own: dataset options the part adds (RobustVLM attacks 1,000 selected samples but reports
clean accuracy on the whole test set) and its attack columns, each with the ``measure`` it
gives (``clean``, ``robust``, ``robust_text_attack``, ``robust_multimodal_attack``, the keys of
the published results). Every record a protocol run writes carries ``protocol``: its name,
version, part and the SHA-1 of the definition, and :func:`check_record` refuses a record whose
settings are not the protocol's, so a record made under another setting is never compared as if
it were the protocol.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from mmcoa.errors import MmcoaError, UnknownNameError
from mmcoa.eval.suite_config import SuiteConfig, build_suite, json_ready

PROTOCOL_DIR = Path(__file__).with_name("protocol_files")
MEASURES = ("clean", "robust", "robust_text_attack", "robust_multimodal_attack")
KEYS = ("name", "version", "ref", "description", "settings", "datasets", "parts")
RUNTIME_KEYS = ("device", "data_root", "workers", "precision")  # how a run computes, not what


@dataclass(frozen=True)
class Protocol:
    """A parsed protocol definition (see the module docstring); build with :func:`get_protocol`."""

    name: str
    version: int
    ref: str
    description: str
    definition: dict  # the YAML content as read
    source: str

    @property
    def sha1(self) -> str:
        """SHA-1 of the canonical definition: two runs with the same value ran the same protocol."""
        return hashlib.sha1(json.dumps(self.definition, sort_keys=True).encode()).hexdigest()

    @property
    def identity(self) -> dict:
        """What each record carries: name, version, definition SHA-1 (and a user's file)."""
        shipped = Path(self.source).parent == PROTOCOL_DIR
        return {
            "name": self.name,
            "version": self.version,
            "sha1": self.sha1,
            **({} if shipped else {"file": self.source}),
        }

    @property
    def datasets(self) -> list[dict]:
        return self.definition["datasets"]

    def parts(self) -> list[str]:
        return list(self.definition["parts"])

    def measures(self) -> dict[str, tuple[str, str | None]]:
        """``{attack label: (measure, eps as "N/255" or None)}`` over every part."""
        out = {}
        for part in self.definition["parts"].values():
            for attack in part["attacks"]:
                eps = f"{attack['eps']:g}/255" if "eps" in attack and attack["measure"] == "robust" else None
                out[attack["label"]] = (attack["measure"], eps)
        return out

    def suite(self, part: str, model: str, weights: str | None = None, **runtime) -> SuiteConfig:
        """Part ``part`` as a suite of one model row (``weights``: a checkpoint path, with
        ``{dataset}`` for one checkpoint per dataset); ``runtime`` sets ``device``, ``data_root``,
        ``workers`` or ``precision`` (``bf16``: faster, recorded; fp32 is the published)."""
        unknown = sorted(set(runtime) - set(RUNTIME_KEYS))
        if unknown:
            raise MmcoaError(f"protocol runs take no setting {', '.join(unknown)}; accepted: {RUNTIME_KEYS}")
        values = self.suite_values(part, model, weights)
        values.update({k: v for k, v in runtime.items() if v is not None and k != "workers"})
        config = build_suite(values, source=f"{self.source}#{part}")
        if runtime.get("workers") is not None:
            config.workers = runtime["workers"]
        config.protocol = {**self.identity, "part": part}
        return config

    def suite_values(self, part: str, model: str, weights: str | None = None) -> dict:
        """The suite file content of part ``part`` for ``model`` (what :meth:`suite` builds)."""
        spec = self.definition["parts"][part]
        row = {"label": model, "name": model, **({"checkpoint": weights} if weights else {})}
        datasets = [
            {"name": d["name"], "options": {**d.get("options", {}), **spec.get("dataset_options", {})}}
            for d in self.datasets
        ]
        attacks = [{k: v for k, v in a.items() if k != "measure"} for a in spec["attacks"]]
        name = f"{self.name}-{part}"
        return {
            "name": name,
            **copy.deepcopy(self.definition["settings"]),
            "models": [row],
            "datasets": datasets,
            "attacks": attacks,
        }

    def dataset_label(self, name: str) -> str:
        """The protocol's label of dataset ``name`` (the published results' key)."""
        return next(d.get("label", d["name"]) for d in self.datasets if d["name"] == name)


# -- finding and reading protocols -----------------------------------------------------------------
def protocol_names() -> list[str]:
    """The shipped protocols' names."""
    return sorted(p.stem for p in PROTOCOL_DIR.glob("*.yaml"))


def get_protocol(name_or_path: str) -> Protocol:
    """A shipped protocol by name, or a user's protocol file by path; one line otherwise."""
    path = Path(name_or_path).expanduser()
    if name_or_path in protocol_names():
        path = PROTOCOL_DIR / f"{name_or_path}.yaml"
    elif not (path.suffix in (".yaml", ".yml") and path.is_file()):
        raise UnknownNameError(
            f"unknown protocol {name_or_path!r}; known: {', '.join(protocol_names())}, or a protocol YAML file"
        )
    return read_protocol(path)


def read_protocol(path: Path) -> Protocol:
    """Parse and check a protocol file: keys, dataset and attack entries, and every part as a
    suite (names, options and attack parameters, checked as suites check them)."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise MmcoaError(
            f"protocol file {path} is unreadable ({type(error).__name__}); expected YAML"
        ) from None
    where = f"protocol file {path}"
    _require(isinstance(data, dict), f"{where}: expected a mapping with {', '.join(KEYS)}")
    missing = [k for k in KEYS if k not in data and k != "description"]
    unknown = sorted(set(data) - set(KEYS))
    _require(
        not missing and not unknown,
        f"{where}: missing {missing or 'nothing'}, unknown {unknown or 'nothing'}; keys: {', '.join(KEYS)}",
    )
    _require(
        isinstance(data["version"], int) and data["version"] >= 1,
        f"{where}: version must be a positive integer",
    )
    _check_parts(where, data)
    protocol = Protocol(
        name=str(data["name"]),
        version=data["version"],
        ref=str(data["ref"]),
        description=" ".join(str(data.get("description", "")).split()),
        definition=json_ready(data),
        source=str(path),
    )
    for part in protocol.parts():
        try:
            protocol.suite(part, PLACEHOLDER_MODEL)  # names, options and attack parameters check out
        except MmcoaError as error:
            raise MmcoaError(f"{where}, part {part}: {error}") from None
    return protocol


def _check_parts(where: str, data: dict) -> None:
    _require(
        isinstance(data["datasets"], list) and data["datasets"], f"{where}: datasets must be a non-empty list"
    )
    for entry in data["datasets"]:
        _require(
            isinstance(entry, dict) and "name" in entry, f"{where}: each dataset needs a name; got {entry!r}"
        )
    _require(
        isinstance(data["parts"], dict) and data["parts"], f"{where}: parts must map part names to suites"
    )
    for part, spec in data["parts"].items():
        _require(
            isinstance(spec, dict) and isinstance(spec.get("attacks"), list) and spec["attacks"],
            f"{where}: part {part} needs a list of attacks",
        )
        for attack in spec["attacks"]:
            _require(
                isinstance(attack, dict) and attack.get("measure") in MEASURES and attack.get("label"),
                f"{where}: part {part}: each attack needs a label and a measure ({', '.join(MEASURES)}); got {attack!r}",
            )


# -- records -------------------------------------------------------------------------------------------
def check_record(record: dict, protocol: Protocol) -> None:
    """One line unless ``record`` was made by a run of ``protocol`` as it is defined now: its
    ``protocol`` key names it at this version and definition, and its cell settings are those
    the protocol's part gives its model."""
    claimed = record.get("protocol") or {}
    what = f"record {record.get('cell') or record.get('dataset')!r} of {record.get('label') or record.get('model')!r}"
    if not claimed:
        raise MmcoaError(
            f"{what} was not made by a protocol run; mmcoa reproduce {protocol.name} makes such records"
        )
    if claimed.get("name") != protocol.name:
        raise MmcoaError(f"{what} was made under protocol {claimed.get('name')!r}, not {protocol.name!r}")
    if (claimed.get("version"), claimed.get("sha1")) != (protocol.version, protocol.sha1):
        raise MmcoaError(
            f"{what} was made under {protocol.name} version {claimed.get('version')} "
            f"(definition {str(claimed.get('sha1'))[:8]}), not version {protocol.version} "
            f"({protocol.sha1[:8]}); rerun it"
        )
    precision = (record.get("attack_params") or {}).get("precision")
    expected = _expected_settings(protocol, claimed.get("part"), precision)
    key = (record.get("dataset"), record.get("attack_label"))
    if expected.get(key) != _model_free(record.get("cell_settings") or {}):
        raise MmcoaError(f"{what} has settings other than protocol {protocol.name}'s; it is not compared")


PLACEHOLDER_MODEL = "tiny-clip"  # builds a part's cells to read their settings (the model is the record's)


_EXPECTED: dict[tuple, dict] = {}  # (definition SHA-1, part, precision) -> settings by cell


def _expected_settings(protocol: Protocol, part: str, precision: str | None) -> dict[tuple, dict]:
    """``{(dataset, attack label): cell settings less the model row}`` of a part, built once per
    definition, part and precision (a leaderboard checks many records of each)."""
    key = (protocol.sha1, part, precision)
    if key not in _EXPECTED:
        config = protocol.suite(part, PLACEHOLDER_MODEL, precision=precision)
        _EXPECTED[key] = {
            (cell.dataset.name, cell.attack.label): _model_free(config.cell_settings(cell))
            for cell in config.cells()
        }
    return _EXPECTED[key]


def _model_free(settings: dict) -> dict:
    """Cell settings less the model row's keys, which every protocol run chooses."""
    return {k: v for k, v in settings.items() if k not in ("model", "weights", "label")}


def protocol_of(records: list[dict]) -> Protocol:
    """The one protocol ``records`` were made under (shipped protocols by name, a user's by the
    file its records name); one line when there is none or several."""
    claims = {(r.get("protocol") or {}).get("name"): r.get("protocol") for r in records}
    if None in claims:
        raise MmcoaError("a record without a protocol: only records of mmcoa reproduce runs compare")
    if len(claims) != 1:
        raise MmcoaError(
            f"records of several protocols ({', '.join(sorted(claims))}); give one protocol's records"
        )
    name, claim = claims.popitem()
    return get_protocol(claim.get("file") or name)


def _require(ok, message: str) -> None:
    if not ok:
        raise MmcoaError(message)
