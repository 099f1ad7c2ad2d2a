"""Suite configurations: a YAML grid of models × datasets × attacks (the paper's Tables I–VI).

A suite file (``configs/paper/`` holds the paper's) lists ``models`` (one table row each: a name
with a ``pretrained`` tag or a ``checkpoint`` path), ``datasets`` and ``attacks`` (eps and
step_size in units of 1/255, as on the command line; other keys are the attack's field names),
with the task, split, sample subset, seed, batch size, device, data root and template shared by
every cell. ``{dataset}`` in a checkpoint path is replaced by each dataset's name
(in-distribution tables fine-tune one model per dataset). An annotated example and every key:
``docs/reproduce.md``, "Writing a suite". :func:`load_suite` checks the whole file — names,
numbers, attack parameters, checkpoint files — and raises one :class:`MmcoaError` line before
any work.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmcoa.attacks import ATTACKS
from mmcoa.attacks.base import build_registered, parameter_names
from mmcoa.attacks.settings import params_from_settings
from mmcoa.devices import AUTO, resolve_device
from mmcoa.errors import MmcoaError
from mmcoa.eval.metrics import ROBUST_METRICS, Scoring
from mmcoa.precision import PRECISIONS
from mmcoa.profiles import CORRECTED, PUBLISHED, check_profile, profile_settings
from mmcoa.registry import Registry
from mmcoa.settings import one_of, read_mapping, shown, typed

TASKS = ("classification", "retrieval")
TOP_LEVEL = (
    "name",
    "description",
    "task",
    "split",
    "n_samples",
    "seed",
    "batch_size",
    "device",
    "data_root",
    "template",
    "logit_scale",
    "precision",
    "profile",
    "robust_metric",
    "models",
    "datasets",
    "attacks",
)
MODEL_KEYS = ("label", "name", "pretrained", "checkpoint", "datasets", "defense")
DATASET_KEYS = ("name", "options")
RUNTIME = ("device", "data_root", "workers")  # where and how a suite runs, not what it computes


def slug(text: str) -> str:
    """A file-name-safe form of a label: ``"MMCoA (alpha=1, beta=0)"`` → ``mmcoa-alpha-1-beta-0``."""
    return re.sub(r"[^a-z0-9._]+", "-", str(text).lower()).strip("-.") or "x"


@dataclass(frozen=True)
class ModelRow:
    """One table row: a model name with a pretrained tag or a checkpoint (path template)."""

    label: str
    name: str
    pretrained: str | None = None
    checkpoint: str | None = None
    datasets: tuple[str, ...] | None = None
    defense: dict | None = field(default=None, hash=False)  # a test-time defense's settings

    def weights(self, dataset: str) -> str | None:
        """What ``load_model(name, pretrained=...)`` gets for ``dataset``."""
        return self.checkpoint.format(dataset=dataset) if self.checkpoint else self.pretrained


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    options: dict = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class AttackEntry:
    """An attack column: ``settings`` as written (1/255 units), ``params`` in pixel units."""

    label: str
    name: str
    settings: dict = field(hash=False)
    params: dict = field(hash=False)


@dataclass(frozen=True)
class Cell:
    """One (model row, dataset, attack) of the grid; it yields one record file."""

    model: ModelRow
    dataset: DatasetEntry
    attack: AttackEntry

    @property
    def id(self) -> str:
        return f"{slug(self.model.label)}__{slug(self.dataset.name)}__{slug(self.attack.label)}"

    @property
    def weights(self) -> str | None:
        return self.model.weights(self.dataset.name)


@dataclass
class SuiteConfig:
    """A validated suite; build it with :func:`load_suite`."""

    name: str
    task: str
    models: list[ModelRow]
    datasets: list[DatasetEntry]
    attacks: list[AttackEntry]
    split: str = "test"
    n_samples: int | None = None
    seed: int = 0
    batch_size: int = 128
    device: str = "cpu"
    data_root: str | None = None
    template: str | None = None  # a template with {}, "ensemble" or None (each dataset's own)
    logit_scale: float | None = None  # fixed logit scale (None: the model's)
    protocol: dict | None = None  # set by mmcoa.eval.protocols: the protocol the suite runs
    profile: str = CORRECTED  # the behaviour switches' side (mmcoa.profiles)
    robust_metric: str = "clean-and-adversarial"  # mmcoa.eval.metrics.Scoring
    workers: int | None = None  # data-loading processes (None: automatic, mmcoa.data.loading)
    description: str = ""
    source: str = ""

    def cells(self) -> list[Cell]:
        """The grid in table order: model rows, then datasets, then attacks."""
        return [
            Cell(row, entry, attack)
            for row in self.models
            for entry in self.datasets
            if row.datasets is None or entry.name in row.datasets
            for attack in self.attacks
        ]

    def resolved(self) -> dict:
        """Every setting, JSON-ready (saved as ``suite.json``)."""
        values = dataclasses.asdict(self)
        values["attacks"] = [
            {"label": a.label, "name": a.name, **a.settings, "params": a.params} for a in self.attacks
        ]
        return json_ready(values)

    def settings(self) -> dict:
        """What decides the results: :meth:`resolved` without where it runs or came from."""
        return {k: v for k, v in self.resolved().items() if k not in RUNTIME + ("source",)}

    def build_attack(self, entry: AttackEntry):
        """A fresh attack object for the column ``entry``."""
        return build_registered(attack_registry(self.task), entry.name, **entry.params)

    def cell_settings(self, cell: Cell) -> dict:
        """What decides one cell's record; a resumed suite reuses a record only if they match."""
        return json_ready(
            {
                "task": self.task,
                "model": cell.model.name,
                "weights": cell.weights,
                "label": cell.model.label,
                **({"defense": cell.model.defense} if cell.model.defense else {}),
                "dataset": cell.dataset.name,
                "dataset_options": cell.dataset.options,
                "split": self.split,
                "attack": cell.attack.name,
                "attack_params": cell.attack.params,
                "n_samples": self.n_samples,
                "seed": self.seed,
                "batch_size": self.batch_size,
                "template": self.template,
                **({"logit_scale": self.logit_scale} if self.logit_scale is not None else {}),
                **({"robust_metric": self.robust_metric} if self.task == "classification" else {}),
            }
        )


def attack_registry(task: str) -> Registry:
    """Classification attacks, or retrieval attacks for retrieval suites."""
    from mmcoa.eval.retrieval import RETRIEVAL_ATTACKS

    return RETRIEVAL_ATTACKS if task == "retrieval" else ATTACKS


def json_ready(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists), so settings compare equal."""
    return json.loads(json.dumps(value, default=list))


# -- loading and validation ----------------------------------------------------------------------
def load_suite(
    path: str | Path,
    *,
    n_samples: int | None = None,
    device: str | None = None,
    data_root: str | None = None,
    check_files: bool = True,
) -> SuiteConfig:
    """Read and check the suite file ``path``; ``n_samples``, ``device`` and ``data_root``
    override its values when given. ``check_files=False`` skips the checkpoint-file check (to
    validate the paper configs' structure before anything is trained)."""
    path = Path(path)
    values = _read_yaml(path)
    overrides = {"n_samples": n_samples, "device": device, "data_root": data_root}
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        config = _build(values, default_name=path.stem, source=str(path))
        if check_files:
            _check_checkpoints(config)
        _check_cell_ids(config)
    except MmcoaError as error:
        raise MmcoaError(f"suite {path}: {error}") from None
    return config


def build_suite(values: dict, source: str, check_files: bool = True) -> SuiteConfig:
    """A suite from the content of a suite file (e.g. a protocol's part), checked as
    :func:`load_suite` checks a file."""
    config = _build(dict(values), default_name=str(values.get("name", "suite")), source=source)
    if check_files:
        _check_checkpoints(config)
    _check_cell_ids(config)
    return config


def _read_yaml(path: Path) -> dict:
    return read_mapping(path, "suite config")


def _build(values: dict, default_name: str, source: str) -> SuiteConfig:
    _known_keys("the suite", values, TOP_LEVEL)
    task = one_of("task", values.get("task", "classification"), TASKS)
    for key in ("models", "datasets", "attacks"):
        _require(
            isinstance(values.get(key), list) and values[key],
            f"{key} must be a non-empty list; got {shown(values.get(key))}",
        )
    split = _string("split", values.get("split", "test"))
    profile = check_profile(_string("profile", values.get("profile", CORRECTED)))
    datasets = [_dataset(i, v, task, split, profile) for i, v in enumerate(values["datasets"])]
    _unique("datasets", [d.name for d in datasets])
    models = [_model(i, v, [d.name for d in datasets]) for i, v in enumerate(values["models"])]
    _unique("model labels", [m.label for m in models])
    precision = values.get("precision")  # the image attacks' default (an attack may set its own)
    precision = None if precision is None else one_of("precision", precision, PRECISIONS)
    scoring = profile_settings(Scoring, profile)
    robust_metric = one_of(
        "robust_metric", values.get("robust_metric", scoring["robust_metric"]), ROBUST_METRICS
    )
    attacks = [_attack(i, v, task, precision, profile) for i, v in enumerate(values["attacks"])]
    _unique("attack labels", [a.label for a in attacks])
    _check_ensemble(values.get("template"), attacks, task)
    return SuiteConfig(
        name=_string("name", values.get("name", default_name)),
        task=task,
        models=models,
        datasets=datasets,
        attacks=attacks,
        split=split,
        n_samples=_positive("n_samples", values.get("n_samples"), optional=True),
        seed=_integer("seed", values.get("seed", 0)),
        batch_size=_positive("batch_size", values.get("batch_size", 128)),
        device=resolve_device(_string("device", values.get("device", AUTO))),
        data_root=_optional_string("data_root", values.get("data_root")),
        template=_template(values.get("template"), task),
        logit_scale=_logit_scale(values.get("logit_scale"), task),
        profile=profile,
        robust_metric=robust_metric,
        description=typed("description", values.get("description", ""), "str"),
        source=source,
    )


def _model(index: int, value: Any, dataset_names: list[str]) -> ModelRow:
    where = f"models[{index}]"
    _require(
        isinstance(value, dict) and "name" in value,
        f"{where} must be a mapping with at least a name; got {shown(value)}",
    )
    _known_keys(where, value, MODEL_KEYS)
    name = _string(f"{where}.name", value["name"])
    pretrained = _optional_string(f"{where}.pretrained", value.get("pretrained"))
    checkpoint = _optional_string(f"{where}.checkpoint", value.get("checkpoint"))
    datasets = value.get("datasets")
    if datasets is not None:
        _require(
            isinstance(datasets, list) and datasets and all(d in dataset_names for d in datasets),
            f"{where}.datasets must be a non-empty list of the suite's datasets "
            f"({', '.join(dataset_names)}); got {shown(datasets)}",
        )
        datasets = tuple(datasets)
    _check_weights(where, name, pretrained, checkpoint)
    label = value.get("label") or (f"{name}:{pretrained or checkpoint}" if pretrained or checkpoint else name)
    defense = _defense(where, value.get("defense"))
    return ModelRow(_string(f"{where}.label", label), name, pretrained, checkpoint, datasets, defense)


def _defense(where: str, value: Any) -> dict | None:
    """A model row's test-time defense: ``{name: clipure|ttc, <its settings>}`` (eps and step
    sizes in units of 1/255, as the attacks'; ``gradient: undefended`` is the non-adaptive
    evaluation), checked by building it; stored as
    the defense's full settings, so a record names every one."""
    if value is None:
        return None
    from mmcoa.models.test_time import DEFENSES, build_defense

    _require(
        isinstance(value, dict) and value.get("name") in DEFENSES.names(),
        f"{where}.defense must be a mapping with name ({', '.join(DEFENSES.names())}) and its settings; "
        f"got {shown(value)}",
    )
    from mmcoa.units import from_255

    units = {f.name for f in dataclasses.fields(DEFENSES.get(value["name"])) if f.metadata.get("unit")}
    params = {
        k: from_255(v, f"{where}.defense.{k}") if k in units else v for k, v in value.items() if k != "name"
    }
    try:
        settings = build_defense(value["name"], **params)
    except MmcoaError as error:
        raise MmcoaError(f"{where}.defense: {error}") from None
    return json_ready({"name": value["name"], **dataclasses.asdict(settings)})


def _check_weights(where: str, name: str, pretrained: str | None, checkpoint: str | None) -> None:
    """The model name resolves, and its weights are named the way the model accepts them."""
    from mmcoa.models import validate_model_name
    from mmcoa.models.open_clip_backend import RANDOM, TINY_ARCHITECTURES

    try:
        validate_model_name(name)
    except MmcoaError as error:
        raise MmcoaError(f"{where}: {error}") from None
    _require(not (pretrained and checkpoint), f"{where} gives both pretrained and checkpoint; choose one")
    import open_clip

    architecture = name in open_clip.list_models()
    if pretrained is not None:
        tags = open_clip.list_pretrained_tags_by_model(name) if architecture else []
        _require(
            pretrained in tags + [RANDOM] and architecture,
            f"{where}: unknown pretrained tag {pretrained!r} for {name}; known: "
            f"{', '.join(tags + [RANDOM]) if architecture else 'none'}; a weights file goes under checkpoint:",
        )
    if checkpoint is not None:
        fields = {f for _, f, _, _ in string.Formatter().parse(checkpoint) if f is not None}
        _require(
            fields <= {"dataset"},
            f"{where}.checkpoint may hold only the {{dataset}} placeholder; got {checkpoint!r}",
        )
    _require(
        not architecture or name in TINY_ARCHITECTURES or pretrained or checkpoint,
        f"{where}: {name} needs pretrained (a tag such as openai) or checkpoint (a file)",
    )


def _dataset(index: int, value: Any, task: str, split: str, profile: str = CORRECTED) -> DatasetEntry:
    """A dataset column with its options; under the published profile, the published code's
    image preprocessing (:func:`mmcoa.data.published_dataset_options`) unless the entry sets
    its own."""
    from mmcoa.data import published_dataset_options

    where = f"datasets[{index}]"
    if isinstance(value, str):
        value = {"name": value}
    _require(
        isinstance(value, dict) and isinstance(value.get("name"), str),
        f"{where} must be a dataset name or a mapping with name and options; got {shown(value)}",
    )
    _known_keys(where, value, DATASET_KEYS)
    options = value.get("options") or {}
    _require(isinstance(options, dict), f"{where}.options must be a mapping; got {shown(options)}")
    if profile == PUBLISHED:
        options = {**published_dataset_options(value["name"]), **options}
    if task == "retrieval":
        _check_retrieval_dataset(where, value["name"], split, options)
    else:
        options = _check_classification_dataset(where, value["name"], split, options)
    return DatasetEntry(value["name"], dict(options))


def _check_classification_dataset(where: str, name: str, split: str, options: dict) -> dict:
    """The dataset's options, typed as its loader declares them, once name and split check out."""
    from mmcoa.data import DATASETS, wds
    from mmcoa.data.catalog import FOLDER_PATTERN, known_names
    from mmcoa.data.folder import PREFIX

    if name.startswith(PREFIX):
        _require(not options, f"{where}: {FOLDER_PATTERN} takes no options")
        return options
    if name.startswith(wds.PREFIX):
        unknown = ", ".join(sorted(set(options) - set(wds.OPTIONS)))
        _require(
            not unknown, f"{where}: {wds.PATTERN} takes no option {unknown}; accepted: size, n_samples, order"
        )
        words = {"size": wds.SIZES, "order": wds.ORDERS}  # size: 224 (a YAML number) is the word '224'
        return {
            k: _positive(f"{where}.options.{k}", v, optional=True)
            if k == "n_samples"
            else one_of(f"{where}.options.{k}", str(v) if type(v) is int else v, words[k])
            for k, v in options.items()
        }
    _require(
        name in DATASETS,
        f"{where}: unknown dataset {name!r}; known: {', '.join(known_names())}"
        " (retrieval suites: task: retrieval)",
    )
    spec = DATASETS.get(name)
    _require(
        split in spec.splits,
        f"{where}: dataset {name} has no split {split!r}; accepted: {', '.join(spec.splits)}",
    )
    unknown = sorted(set(options) - set(spec.options))
    _require(
        not unknown,
        f"{where}: dataset {name} takes no option {', '.join(unknown)}; "
        f"accepted: {', '.join(spec.options) or 'none'}",
    )
    kinds = {
        k: p.annotation
        for k, p in inspect.signature(spec.load).parameters.items()
        if isinstance(p.annotation, str)
    }  # annotations are strings here (__future__)
    return {k: typed(f"{where}.options.{k}", v, kinds.get(k, "")) for k, v in options.items()}


def _check_retrieval_dataset(where: str, name: str, split: str, options: dict) -> None:
    from mmcoa.data.coco import DATASET_NAME, OPTIONS, SPLITS, TRANSFORMS

    _require(name == DATASET_NAME, f"{where}: retrieval suites evaluate {DATASET_NAME}; got {name!r}")
    unknown = sorted(set(options) - set(OPTIONS))
    _require(
        not unknown,
        f"{where}: {DATASET_NAME} takes no option {', '.join(unknown)}; accepted: {', '.join(OPTIONS)}",
    )
    if "transform" in options:
        one_of(f"{where}.options.transform", options["transform"], TRANSFORMS)
    _require(
        split in SPLITS, f"{where}: {DATASET_NAME} has no split {split!r}; accepted: {', '.join(SPLITS)}"
    )


def _attack(
    index: int, value: Any, task: str, precision: str | None = None, profile: str = CORRECTED
) -> AttackEntry:
    """An attack column; its settings go through the same conversion as ``mmcoa eval`` flags.
    ``precision`` (the suite's) is the default of an attack that takes one; its behaviour
    switches take ``profile``'s values unless it sets them."""
    where = f"attacks[{index}]"
    _require(
        isinstance(value, dict) and isinstance(value.get("name"), str),
        f"{where} must be a mapping with a name and its settings; got {shown(value)}",
    )
    settings = {k: v for k, v in value.items() if k not in ("name", "label")}
    try:
        registry = attack_registry(task)
        if (
            precision
            and "precision" not in settings
            and "precision" in parameter_names(registry.get(value["name"]))
        ):
            settings["precision"] = precision
        cls = registry.get(value["name"])
        params = params_from_settings(_typed_settings(where, cls, settings))
        attack = build_registered(registry, value["name"], **{**profile_settings(cls, profile), **params})
    except MmcoaError as error:
        raise MmcoaError(f"{where}: {error}") from None
    except (TypeError, ValueError) as error:  # e.g. n_steps: ten
        raise MmcoaError(
            f"{where}: a setting of {value['name']} has the wrong type ({error}); settings: {settings}"
        ) from None
    label = _string(f"{where}.label", value.get("label") or value["name"])
    return AttackEntry(label, value["name"], settings, attack.params())


def _typed_settings(where: str, cls: type, settings: dict) -> dict:
    """``settings`` typed as the attack's fields declare them (unset ones and names the attack
    does not take pass through, for :func:`build_registered` to report)."""
    kinds = {f.name: f.type for f in dataclasses.fields(cls)}
    return {k: v if v is None else typed(f"{where}.{k}", v, kinds.get(k, "")) for k, v in settings.items()}


def _check_checkpoints(config: SuiteConfig) -> None:
    """Every checkpoint exists and fits its model row (keys and shapes, read from the file's
    header), so a truncated file fails before the suite writes anything."""
    from mmcoa.models import check_checkpoint

    files = sorted({(c.model.name, c.weights) for c in config.cells() if c.model.checkpoint})
    missing = sorted(
        {path for _, path in files if not Path(path).expanduser().exists()}
    )  # a file or a model folder
    _require(
        not missing,
        f"{len(missing)} checkpoint file(s) missing, e.g. {missing[0] if missing else ''}"
        "; train them first (docs/reproduce.md) or fix the paths",
    )
    for name, path in files:
        check_checkpoint(name, str(Path(path).expanduser()))


def _check_cell_ids(config: SuiteConfig) -> None:
    seen: dict[str, Cell] = {}
    for cell in config.cells():
        other = seen.setdefault(cell.id, cell)
        _require(
            other is cell,
            f"labels {other.model.label!r}/{other.attack.label!r} and "
            f"{cell.model.label!r}/{cell.attack.label!r} give the same file name {cell.id}; "
            "make them differ in letters or digits",
        )


# -- small checks --------------------------------------------------------------------------------
def _require(ok: Any, message: str) -> None:
    if not ok:
        raise MmcoaError(message)


def _known_keys(where: str, value: dict, known: tuple[str, ...]) -> None:
    unknown = sorted(set(map(str, value)) - set(known))
    _require(not unknown, f"{where} has unknown key(s) {', '.join(unknown)}; known: {', '.join(known)}")


def _unique(what: str, names: list[str]) -> None:
    repeated = sorted({n for n in names if names.count(n) > 1})
    _require(not repeated, f"{what} must be distinct; repeated: {', '.join(repeated)}")


def _string(name: str, value: Any) -> str:
    return typed(name, value, "str", accepted="a non-empty string", ok=bool)


def _optional_string(name: str, value: Any) -> str | None:
    return typed(name, value, "str | None", accepted="a non-empty string", ok=bool)


def _integer(name: str, value: Any) -> int:
    return typed(name, value, "int")


def _positive(name: str, value: Any, optional: bool = False) -> int | None:
    return typed(
        name, value, "int | None" if optional else "int", accepted="a positive integer", ok=lambda v: v >= 1
    )


def _template(value: Any, task: str) -> str | None:
    if value is None:
        return None
    _require(
        task == "classification",
        f"template applies to classification suites only; this suite has task: {task} (remove template)",
    )
    from mmcoa.eval.runner import ENSEMBLE

    return typed(
        "template",
        value,
        "str",
        accepted=f"a string with {{}}, or {ENSEMBLE!r} (the dataset's prompt ensemble)",
        ok=lambda v: "{}" in v or v == ENSEMBLE,
    )


def _check_ensemble(template: Any, attacks: list[AttackEntry], task: str) -> None:
    """A prompt ensemble has no single prompt per class for a text attack to edit."""
    from mmcoa.eval.runner import ENSEMBLE

    text = [a.label for a in attacks if attack_registry(task).get(a.name).threat in ("text", "multimodal")]
    _require(
        template != ENSEMBLE or not text,
        f"template {ENSEMBLE!r} averages several prompts per class; the text attack column(s) "
        f"{', '.join(text)} edit one prompt per class: use a single template with them",
    )


def _logit_scale(value: Any, task: str) -> float | None:
    if value is None:
        return None
    _require(task == "classification", f"logit_scale applies to classification suites only; got task: {task}")
    return typed("logit_scale", value, "float", accepted="a positive number", ok=lambda v: v > 0)
