"""The training configuration: a dataclass that YAML files fill and CLI flags override."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

from mmcoa.data.loading import check_workers
from mmcoa.devices import AUTO
from mmcoa.errors import MmcoaError
from mmcoa.attacks.text.candidates import CANDIDATE_POSITIONS
from mmcoa.flags import UNIT_255, setting, switch, switch_default_text
from mmcoa.models.prompts import VISUAL_PROMPTS
from mmcoa.precision import PRECISIONS
from mmcoa.profiles import PROFILES, PUBLISHED, check_profile, profile_settings
from mmcoa.settings import one_of, read_mapping, typed
from mmcoa.train.logsinks import check_log_setting
from mmcoa.train.methods import METHODS, Method
from mmcoa.train.objectives import TARGETS
from mmcoa.train.shots import SHOT_SAMPLERS
from mmcoa.units import check_255, to_255

SHOTS = ("1", "5", "50", "full")
FT_STANDARD_LOSSES = ("contrastive", "image-feature-ce")
SCHEDULES = ("constant", "cosine")
OPTIMIZERS = ("adamw", "sgd", "adam")
TOWERS = ("image", "text", "both", "none")

PER_METHOD = tuple(Method.defaults)  # the settings a method's class gives (Method.defaults)


def method_defaults(method: str) -> dict:
    """The per-method settings of ``method`` (its class's ``defaults``); a one-line error
    listing the known methods when there is no such method."""
    return METHODS.get(method).defaults


def resolved_defaults(method: str, profile: str) -> dict:
    """What a TrainConfig field left None takes: ``method``'s defaults and every switch at
    ``profile``'s value; under ``published``, the method's own ``published`` settings on top."""
    values = {**method_defaults(method), **profile_settings(TrainConfig, profile)}
    return {**values, **METHODS.get(method).published} if profile == PUBLISHED else values


@dataclass
class TrainConfig:
    """One training run's settings. Optimizer, learning rate and schedule and the training
    PGD default to the method's published settings (its class's ``defaults``); the rest follow
    the paper and the published MMCoA code (AdamW betas 0.9/0.98, batch 256).

    Each field's metadata (:func:`mmcoa.flags.setting`) is the one source of its ``mmcoa train``
    flag, help, unit and default. ``train_eps`` and ``train_step_size`` hold pixel units here
    (``4 / 255``); YAML files and flags give them in units of 1/255 (``train_eps: 4``), which
    :func:`load_config` converts."""

    method: str = setting("mmcoa", "training method")
    profile: str = setting(
        "corrected",
        "behaviour switches: corrected, or published (the published code's; docs/deviations.md)",
        choices=PROFILES,
    )
    model: str = setting("tiny-clip", "tiny-clip, minilm-clip, ViT-B-32, hf-hub:..., hf:...")
    pretrained: str | None = setting(None, "tag, checkpoint path or 'random'")
    dataset: str = setting("synthetic", "training dataset (mmcoa datasets)")
    data_root: str | None = setting(None, "dataset folder ($MMCOA_DATA, else ~/.cache/mmcoa/data)")
    shots: str = setting("full", "training images per class: a fixed seeded list", choices=SHOTS)
    epochs: int = setting(1, "passes over the training list")
    max_steps: int | None = setting(None, "stop after N optimizer steps (none: the epochs' steps)")
    batch_size: int = setting(256, "global batch (split over torchrun processes)")
    optimizer: str | None = setting(
        None, "optimizer; adam: Adam with coupled L2 on every parameter (published MMCoA)", choices=OPTIMIZERS
    )
    lr: float | None = setting(None, "learning rate")
    weight_decay: float | None = setting(None, "weight decay")
    betas: tuple[float, float] = setting((0.9, 0.98), "AdamW betas")
    adam_eps: float = setting(1e-6, "AdamW's numerical epsilon (not an attack budget)")
    momentum: float = setting(0.9, "SGD momentum")
    schedule: str | None = setting(None, "learning-rate schedule", choices=SCHEDULES)
    warmup_steps: int | None = setting(None, "linear warm-up steps")
    adv_image_weight: float = setting(
        0.5, "MMCoA: weight of L(adversarial image, clean text), the paper's alpha (Eq. 7)"
    )
    adv_text_weight: float = setting(
        0.5, "MMCoA: weight of L(clean image, adversarial text), the paper's beta (Eq. 8)"
    )
    train_towers: str | None = setting(None, "towers to fine-tune (none: the method's)", choices=TOWERS)
    train_eps: float | None = setting(None, "training PGD eps", unit=UNIT_255)  # pixels here
    train_step_size: float | None = setting(None, "training PGD step size", unit=UNIT_255)  # pixels here
    train_steps: int | None = setting(None, "training PGD iterations")
    train_momentum: float | None = setting(
        None, "training PGD momentum on the sign steps (FARE's pgd_train.py: 0.9; 0: plain PGD)"
    )
    text_attack_every: int = setting(1, "recompute the adversarial prompts every N steps")
    mlm: str = setting("bert-base-uncased", "BERT-Attack's masked LM: hub id, directory or minilm")
    k: int = setting(10, "BERT-Attack candidates per word")
    max_words: int = setting(1, "words BERT-Attack changes per prompt")
    template: str | None = setting(None, "prompt template with {} (none: the dataset's)")
    # Switches (mmcoa.profiles): None takes the profile's value (the method's under published).
    contrastive_targets: str | None = switch(
        "class",
        "batch",
        "contrastive targets: class (class-aware, over the class prompts) or batch (arange over "
        "per-sample prompts, the two directions summed: published MMCoA)",
        choices=TARGETS,
        unset=True,
    )
    attack_grad_leak: bool | None = switch(
        False,
        True,
        "add the training PGD's weight gradients (sum over its iterates) to the step, as the "
        "published MMCoA loop's loss.backward() does",
        unset=True,
    )
    ft_standard_loss: str | None = switch(
        "contrastive",
        "image-feature-ce",
        "FT-standard's loss: contrastive, or image-feature-ce (cross-entropy on the image "
        "features, the published code's)",
        choices=FT_STANDARD_LOSSES,
        unset=True,
    )
    vp_prompt: str | None = switch(
        "frame",
        "pad30",
        "VP's prompt: frame (4 px on the pixels at the dataset's size, zero start) or pad30 "
        "(TeCoA's code: 30 px after resize and normalisation, N(0, 1) start)",
        choices=VISUAL_PROMPTS,
        unset=True,
    )
    candidate_position: str | None = switch(
        "own",
        "preceding",
        "MMCoA's BERT-Attack reads a word's candidates at its own position, or the preceding "
        "token's (published code)",
        choices=CANDIDATE_POSITIONS,
        unset=True,
    )
    shot_sampler: str | None = switch(
        "fixed",
        "pop",
        "few-shot images: a fixed seeded list reused every epoch, or pop (published MMCoA code): "
        "new images each epoch, drawn without replacement, batches in class order",
        choices=SHOT_SAMPLERS,
        unset=True,
    )
    n_ctx: int = setting(4, "AdvPT: learnable text context tokens")
    precision: str = setting("fp32", "bf16 trains under autocast", choices=PRECISIONS)
    save_every: int = setting(0, "also save checkpoints/last.pt every N steps (0: off)")
    save_every_minutes: float = setting(20.0, "also save last.pt when this many minutes passed (0: off)")
    keep_epoch_checkpoints: bool = setting(
        False, "keep model-only checkpoints/epoch<N>.pt at each epoch end (for mmcoa analyze curves)"
    )
    keep_resume_state: bool = setting(
        False, "keep checkpoints/last.pt (optimizer state) after the run ends, to --resume it later"
    )
    workers: int | None = setting(None, "data-loading processes (none: auto, see mmcoa.data.loading)")
    skip_nonfinite: bool = setting(False, "skip (and count) steps whose loss is NaN/inf; else stop")
    log: str | None = setting(
        None,
        "also log to: tensorboard (<output>/tensorboard/; needs the "
        "tensorboard extra); metrics.jsonl is always written",
    )
    seed: int = setting(0, "seed of the shot list, the data order, the attacks and the dropout masks")
    device: str = setting("cpu", "cpu, cuda, cuda:N or auto (cuda when available)", run_default=AUTO)
    output: str = setting("runs/train", "run directory")

    def __post_init__(self):
        if type(self.shots) is int:  # YAML reads shots: 5 as a number
            self.shots = str(self.shots)
        self.method = typed("method", self.method, "str")
        self.profile = check_profile(typed("profile", self.profile, "str"))
        for name, value in resolved_defaults(self.method, self.profile).items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        for f in dataclasses.fields(self):
            value, choices = getattr(self, f.name), f.metadata.get("choices")
            setattr(
                self,
                f.name,
                one_of(f.name, value, choices, f.type) if choices else typed(f.name, value, f.type),
            )
        self._check_ranges()
        if self.device == AUTO:
            from mmcoa.devices import resolve_device

            self.device = resolve_device(self.device)

    def _check_ranges(self) -> None:
        check_log_setting(self.log)
        for name in ("train_eps", "train_step_size"):  # pixels here; users write 1/255
            value = getattr(self, name)
            _check(
                0 < value <= 1,
                f"{name} must be in (0, 1] pixels in Python (TrainConfig({name}="
                f"4 / 255); YAML files and flags take 1/255: {name}: 4); got {value:g}",
            )
        _check(
            self.weight_decay >= 0 and self.warmup_steps >= 0 and 0 <= self.momentum < 1,
            f"weight_decay and warmup_steps must be non-negative and momentum in [0, 1); got "
            f"{self.weight_decay}, {self.warmup_steps}, {self.momentum}",
        )
        _check(0 <= self.train_momentum < 1, f"train_momentum must be in [0, 1); got {self.train_momentum}")
        _check(
            self.max_steps is None or self.max_steps >= 1,
            f"max_steps must be at least 1; got {self.max_steps}",
        )
        for name in ("epochs", "batch_size", "train_steps", "text_attack_every", "k", "max_words", "n_ctx"):
            _check(getattr(self, name) >= 1, f"{name} must be at least 1; got {getattr(self, name)}")
        _check(self.lr > 0, f"lr must be positive; got {self.lr}")
        _check(
            0 <= self.betas[0] < 1 and 0 <= self.betas[1] < 1 and self.adam_eps > 0,
            f"betas must be two numbers in [0, 1) and adam_eps positive; got "
            f"{list(self.betas)}, {self.adam_eps}",
        )
        _check(
            self.save_every >= 0 and self.save_every_minutes >= 0,
            f"save_every and save_every_minutes must be non-negative (0: off); got "
            f"{self.save_every}, {self.save_every_minutes}",
        )
        check_workers(self.workers)
        _check(
            self.adv_image_weight >= 0
            and self.adv_text_weight >= 0
            and self.adv_image_weight + self.adv_text_weight > 0,
            f"adv_image_weight and adv_text_weight must be non-negative and not both 0; got "
            f"{self.adv_image_weight}, {self.adv_text_weight}",
        )


# Settings whose name changed: a YAML key or flag with the old name is a one-line error.
RENAMED = {"alpha": "adv_image_weight", "beta": "adv_text_weight"}
PER_255 = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.metadata.get("unit") == UNIT_255)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise MmcoaError(message)


def load_config(path: str | None, overrides: dict, spell: Callable[[str], str] = str) -> TrainConfig:
    """A TrainConfig from a YAML file (optional) with ``overrides`` (non-None values; flags) on
    top. Both give eps and step sizes in units of 1/255 (``train_eps: 1`` is 1/255); a value
    below 0.1 there is refused as a pixel value. ``spell(name)`` is how an error names an
    override (``--train-eps``). Every setting is checked here, before a run writes anything."""
    written = _read_yaml(path) if path is not None else {}
    given = {k: v for k, v in overrides.items() if v is not None}
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    for source, name_of in ((written, str), (given, spell)):
        renamed = [name for name in source if name in RENAMED]
        _check(not renamed, "; ".join(f"{name_of(n)} was renamed to {name_of(RENAMED[n])}" for n in renamed))
    unknown = sorted(set(written) - known)
    _check(
        not unknown, f"unknown training setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
    )
    values = {
        f.name: f.metadata.get("run_default")
        for f in dataclasses.fields(TrainConfig)
        if f.metadata.get("run_default") is not None
    }
    for source, name_of in ((written, str), (given, spell)):
        for name, value in source.items():
            if name in PER_255 and value is not None:
                value = check_255(typed(name_of(name), value, "float"), name_of(name)) / 255
            values[name] = value
    return TrainConfig(**values)


def default_text(f: dataclasses.Field) -> str:
    """A field's default as ``mmcoa train --help`` shows it (per-method ones: MMCoA's and how
    the others differ; eps and step sizes in 1/255)."""

    def shown(value):
        if f.metadata.get("unit") == UNIT_255 and value is not None:
            return f"{to_255(value):g}"
        if isinstance(value, tuple):
            return " ".join(f"{v:g}" for v in value)
        return "none" if value is None else f"{value:g}" if isinstance(value, float) else str(value)

    if PUBLISHED in f.metadata:  # a switch
        return switch_default_text(f, shown(f.metadata["corrected"]), shown)
    if f.name == "method":
        return f"{f.default}; one of: " + "; ".join(
            f"{m}: {METHODS.get(m).description()}" for m in METHODS.names()
        )
    if f.name in PER_METHOD:
        values = {m: METHODS.get(m).defaults[f.name] for m in METHODS.names()}
        groups: dict[str, list[str]] = {}
        for method, value in sorted(values.items()):
            if value != values["mmcoa"]:
                groups.setdefault(shown(value), []).append(method)
        rest = "".join(f"; {value}: {', '.join(methods)}" for value, methods in groups.items())
        return f"the method's: mmcoa {shown(values['mmcoa'])}{rest}"
    run_default = f.metadata.get("run_default")
    if run_default is not None:
        return f"{run_default} (Python: {shown(f.default)})"
    return shown(f.default)


def _read_yaml(path: str) -> dict:
    return {k.replace("-", "_"): v for k, v in read_mapping(path, "config file").items()}
