"""What every attack shares: the result type, the registry and parameter validation.

An attack is a dataclass of its parameters (pixel units: eps 1/255 is ``1/255``) called as
``attack(classifier, images, labels, generator)`` on [0, 1] images; it returns an
:class:`AttackResult`. Attacks never train: they run the model in eval mode and differentiate
with respect to their own perturbation only, leaving every parameter's ``.grad`` untouched.
A class carries its facts: its ``threat`` (the report's column family, written into each
record) and, as field metadata (:func:`mmcoa.flags.setting`), which fields users set by name
(command-line flags and suite keys are made from them: :func:`user_settings`).
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator

import torch
from torch import nn

from mmcoa.errors import MmcoaError
from mmcoa.models.zeroshot import ZeroShotClassifier
from mmcoa.registry import Registry
from mmcoa.profiles import is_corrected

ATTACKS: Registry[type[Attack]] = Registry("attack")
THREATS = ("clean", "image", "text", "multimodal")  # what an attack perturbs (report columns)


@dataclass
class AttackResult:
    """What an attack hands back for one batch.

    - ``images``: adversarial images in [0, 1] (the inputs themselves for text-only attacks);
    - ``class_embeddings``: the normalized prompt set to classify against when the attack
      perturbs the text side, shared ``[C, D]`` or per sample ``[B, C, D]``;
    - ``queries``: victim forward passes per sample (image steps plus scored texts);
    - ``words_changed``: ``[B]`` words changed in each sample's true-class prompt;
    - ``adversarial_prompts``: the attacked class prompts, when shared by the batch.
    """

    images: torch.Tensor
    class_embeddings: torch.Tensor | None = None
    queries: float = 0
    words_changed: torch.Tensor | None = None
    adversarial_prompts: list[str] | None = None


@dataclass
class FieldGroup:
    """Base of every attack class and of the field groups they combine (the image budget, the
    BERT-Attack fields...): each group's ``__post_init__`` validates its own fields and then
    calls ``super().__post_init__()``, so a class made of several groups checks them all."""

    def __post_init__(self):
        pass


@dataclass
class Attack(FieldGroup):
    """Base class: subclasses are dataclasses registered with ``@ATTACKS.register(name)``
    that set ``threat`` (one of :data:`THREATS`).

    Shape (every attack's input):
        - images: ``(B, 3, H, W)``, float pixels in [0, 1] at the dataset's own resolution.
        - labels: ``(B,)``, class indices in ``[0, C)`` of the classifier's C prompts.
    """

    name: ClassVar[str] = "attack"
    threat: ClassVar[str] = ""
    # What a text part edits ("word": BERT-Attack, "character": Charmer), the records'
    # ``text_threat``; empty for an attack without a text part.
    text_unit: ClassVar[str] = ""

    def __call__(
        self,
        classifier: ZeroShotClassifier,
        images: torch.Tensor,
        labels: torch.Tensor,
        generator: torch.Generator | None = None,
        image_result: AttackResult | None = None,
    ) -> AttackResult:
        """The attack on one batch. ``image_result``: the result of :meth:`image_part` on this
        batch, when the caller already has it (an attack without an image part ignores it)."""
        raise NotImplementedError

    def image_part(self) -> Attack | None:
        """The independent image attack this one is made of (a Sep attack: paper's multimodal,
        PGD against the clean prompts), else None. The evaluation seeds it as that attack on
        its own and computes it once per batch when the same attack has its own column."""
        return None

    def prepare(self, device: str) -> None:
        """Load what the attack needs (e.g. a masked LM) before any evaluation work starts."""

    def params(self) -> dict:
        """The attack's parameters, JSON-ready, as stored in result records."""
        return dataclasses.asdict(self)


RUNTIME_FIELDS = ("precision",)  # how an attack computes, not what it is


def seed_params(params: dict) -> dict:
    """The parameters that seed an attack's randomness: all but :data:`RUNTIME_FIELDS`, so the
    same seed gives the same random starts in fp32 and bf16 (their gap is then the precision's
    alone)."""
    return {k: v for k, v in params.items() if k not in RUNTIME_FIELDS}


def seed_identity(attack: Attack) -> tuple[str, dict]:
    """What seeds an attack's randomness: its name and :func:`seeding_params` (the behaviour
    switches at their corrected value left out, :mod:`mmcoa.profiles`: adding a switch changes
    no default run's random starts). A Sep attack (one
    with an :meth:`~Attack.image_part`) is seeded as that part alone, so its images are exactly
    those of the image attack run on its own (and can be reused from it)."""
    target = attack.image_part() or attack
    return target.name, seeding_params(target)


def seeding_params(attack) -> dict:
    """:func:`seed_params` of an attack (classification or retrieval), less its behaviour
    switches at their corrected value and its fields at their ``neutral`` value
    (:func:`mmcoa.flags.setting`)."""
    neutral = {f.name: f.metadata["neutral"] for f in dataclasses.fields(attack) if "neutral" in f.metadata}
    params = {
        k: v
        for k, v in attack.params().items()
        if not is_corrected(type(attack), k, v) and not (k in neutral and neutral[k] == v)
    }
    return seed_params(params)


def build_attack(name: str, **params) -> Attack:
    """Instantiate the attack registered as ``name``; unknown names or parameters raise a
    one-line error listing what is accepted."""
    return build_registered(ATTACKS, name, **params)


def parameter_names(cls) -> list[str]:
    """The parameters an attack class takes (its dataclass fields), in declaration order."""
    return [f.name for f in dataclasses.fields(cls)]


def user_settings(cls) -> list[dataclasses.Field]:
    """The fields of ``cls`` users set by name (declared with :func:`mmcoa.flags.setting`: they
    carry a help text), in declaration order."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("help")]


def same_setting(cls, name: str, default: Any = dataclasses.MISSING) -> Any:
    """A field declared as ``cls``'s field ``name`` (help, unit, choices), with ``default``
    instead of its default when given: one declaration for a setting many attacks share."""
    declared = next(f for f in dataclasses.fields(cls) if f.name == name)
    value = declared.default if default is dataclasses.MISSING else default
    return dataclasses.field(default=value, metadata=declared.metadata)


def build_registered(registry: Registry, name: str, **params):
    """Instantiate the dataclass registered in ``registry`` as ``name`` with ``params``; unknown
    names or parameters raise a one-line error listing what is accepted."""
    cls = registry.get(name)
    accepted = parameter_names(cls)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise MmcoaError(
            f"{registry.kind} {name!r} takes no parameter {', '.join(unknown)}; "
            f"accepted: {', '.join(accepted) or 'none'}"
        )
    return cls(**params)


def check_range(name: str, value: float, low: float, high: float, *, low_open: bool = True) -> None:
    """One-line error unless ``low < value <= high`` (``low <= value`` when not ``low_open``)."""
    ok = (value > low if low_open else value >= low) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise MmcoaError(f"{name} must be in {bracket}{low:g}, {high:g}]; got {value:g}")


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Put ``module`` in eval mode for the duration of an attack, then restore its modes."""
    modes = {m: m.training for m in module.modules()}
    module.eval()
    try:
        yield
    finally:
        for m, training in modes.items():
            m.training = training


@ATTACKS.register("clean")
@dataclass
class Clean(Attack):
    """No attack: the images as they are (the clean-accuracy row). No arguments.

    Shape:
        - images: ``(B, 3, H, W)``, float pixels in [0, 1]; labels: ``(B,)``.
        - output: ``AttackResult.images``, ``images`` themselves; ``queries`` 0.
    """

    threat: ClassVar[str] = "clean"

    def __call__(self, classifier, images, labels, generator=None, image_result=None) -> AttackResult:
        return AttackResult(images=images, queries=0)
