"""The training configuration: a dataclass that YAML files fill and CLI flags override."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from mmcoa.errors import MmcoaError

SHOTS = ("1", "5", "50", "full")
PRECISIONS = ("fp32", "bf16")
SCHEDULES = ("constant", "cosine")


@dataclass
class TrainConfig:
    """Defaults follow the paper and the notes (AdamW betas 0.9/0.98, wd 0.2, batch 256,
    training PGD eps 1/255, step 1/255, 2 steps); lr 1e-5 (the published code used 1e-6)."""

    method: str = "mmcoa"
    model: str = "tiny-clip"
    pretrained: str | None = None
    dataset: str = "synthetic"
    data_root: str | None = None
    shots: str = "full"
    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 256
    lr: float = 1e-5
    weight_decay: float = 0.2
    betas: tuple[float, float] = (0.9, 0.98)
    adam_eps: float = 1e-6
    schedule: str = "constant"
    warmup_steps: int = 0
    alpha: float = 0.5
    beta: float = 0.5
    train_towers: str | None = None
    train_eps: float = 1 / 255
    train_step_size: float = 1 / 255
    train_steps: int = 2
    text_attack_every: int = 1
    mlm: str = "bert-base-uncased"
    k: int = 10
    max_words: int = 1
    template: str | None = None
    n_ctx: int = 4
    precision: str = "fp32"
    save_every: int = 0
    keep_epoch_checkpoints: bool = False
    seed: int = 0
    device: str = "cpu"
    output: str = "runs/train"

    def __post_init__(self):
        self.shots = str(self.shots)
        for f in dataclasses.fields(self):
            setattr(self, f.name, _typed(f.name, f.type, getattr(self, f.name)))
        _check(self.max_steps is None or self.max_steps >= 1,
               f"max_steps must be at least 1; got {self.max_steps}")
        _check(self.shots in SHOTS, f"shots must be one of {', '.join(SHOTS)}; got {self.shots!r}")
        _check(self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}; "
               f"got {self.precision!r}")
        _check(self.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}; "
               f"got {self.schedule!r}")
        for name in ("epochs", "batch_size", "train_steps", "text_attack_every", "k", "max_words",
                     "n_ctx"):
            _check(getattr(self, name) >= 1, f"{name} must be at least 1; got {getattr(self, name)}")
        _check(self.lr > 0, f"lr must be positive; got {self.lr}")
        _check(0 < self.train_eps <= 1, f"train_eps must be in (0, 1] pixels; got {self.train_eps}")
        _check(self.alpha >= 0 and self.beta >= 0 and self.alpha + self.beta > 0,
               f"alpha and beta must be non-negative and not both 0; got {self.alpha}, {self.beta}")
        _check(self.train_towers in (None, "image", "text", "both", "none"),
               f"train_towers must be image, text, both or none; got {self.train_towers!r}")


def _typed(name: str, kind: str, value):
    """``value`` as the field's type, or a one-line error. YAML reads ``1e-5`` (no dot) as a
    string, so numbers written that way are accepted for float settings."""
    if value is None and kind.endswith("| None"):
        return None
    kind = kind.split(" |")[0]
    if kind == "float" and not isinstance(value, bool):
        try:
            return float(value)
        except (TypeError, ValueError):
            pass
        raise MmcoaError(f"{name} must be a number; got {value!r}")
    if kind == "bool":
        _check(isinstance(value, bool), f"{name} must be true or false; got {value!r}")
    elif kind == "int":
        _check(isinstance(value, int) and not isinstance(value, bool),
               f"{name} must be an integer; got {value!r}")
    elif kind == "str":
        _check(isinstance(value, (str, os.PathLike)), f"{name} must be a string; got {value!r}")
        return os.fspath(value)
    elif kind.startswith("tuple"):
        _check(isinstance(value, (list, tuple)) and len(value) == 2,
               f"{name} must be a pair of numbers; got {value!r}")
        return tuple(_typed(name, "float", v) for v in value)
    return value


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise MmcoaError(message)


def load_config(path: str | None, overrides: dict) -> TrainConfig:
    """A TrainConfig from a YAML file (optional) with ``overrides`` (non-None values) on top."""
    values = {}
    if path is not None:
        values = _read_yaml(path)
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    _check(not unknown, f"unknown training setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return TrainConfig(**values)


def _read_yaml(path: str) -> dict:
    if not Path(path).is_file():
        raise MmcoaError(f"config file {path!r} does not exist")
    try:
        values = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as error:
        raise MmcoaError(f"config file {path!r} is not valid YAML ({str(error).splitlines()[0]})") from error
    _check(isinstance(values, dict), f"config file {path!r} must hold a mapping of settings")
    return {k.replace("-", "_"): v for k, v in values.items()}
