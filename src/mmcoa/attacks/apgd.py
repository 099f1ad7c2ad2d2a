"""Auto-PGD (Croce & Hein 2020), the attacks AutoAttack's robust accuracy is built on.

Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020 (https://arxiv.org/abs/2003.01690). torchattacks' ``APGD``
(``loss="ce"``) and ``APGDT`` (targeted DLR) do the optimization; this module supplies the
adapter to the zero-shot classifier in [0, 1] pixel space, the seeding, the class-count edge
cases and the guarantees every mmcoa attack gives (eval mode, no parameter ``.grad`` written,
caller's RNG untouched). Registered attacks: ``apgd`` (APGD-CE, then APGD-T on the samples
APGD-CE left correct: AutoAttack's ``["apgd-ce", "apgd-t"]`` subset), ``apgd-ce`` and ``apgd-t``
(one run per target class). :class:`TorchattacksAttack` is the plumbing every torchattacks
adapter shares; ``autoattack`` and ``square`` (:mod:`mmcoa.attacks.autoattack`) reuse it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Iterator

import torch
from torch import nn

from mmcoa.attacks.base import ATTACKS, Attack, AttackResult, FieldGroup, check_range, eval_mode, same_setting
from mmcoa.attacks.pgd import NORMS, PGD, ImageBudget
from mmcoa.errors import MmcoaError
from mmcoa.flags import setting
from mmcoa.models.zeroshot import ZeroShotClassifier
from mmcoa.precision import autocast_for, check_precision

if TYPE_CHECKING:
    import torchattacks

TORCHATTACKS_NORMS = {"linf": "Linf", "l2": "L2"}
MAX_SEED = 2**31 - 1


class LogitsModule(nn.Module):
    """``classifier.logits`` as the ``nn.Module`` torchattacks expects ([0, 1] images → logits).

    The VisionLanguageModel is registered as the submodule ``model`` so torchattacks finds the
    device from its parameters. The adapter itself starts in eval mode (its own flag only; the
    wrapped model's modes are not touched here): torchattacks calls ``model.train()`` after an
    attack whenever the module it was given was in training mode, which would flip every
    submodule of the wrapped model to training.
    """

    def __init__(self, classifier: ZeroShotClassifier, precision: str = "fp32"):
        super().__init__()
        self.model = classifier.model
        self.classifier = classifier  # not a module: a plain attribute
        self.precision = check_precision(precision)
        self.training = False

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (float32: torchattacks' losses and step sizes stay fp32); the model runs under
        bf16 autocast when ``precision`` is ``bf16``."""
        with autocast_for(self.precision, images.device):
            return self.classifier.logits(images).float()


@functools.cache
def targeted_apgd() -> type:
    """torchattacks' APGD-T with a targeted loss defined for any class count ≥ 2 (torchattacks
    is imported on first use: it costs a second at ``import mmcoa``).

    The targeted DLR loss divides by ``z_(1) - (z_(3) + z_(4)) / 2`` (sorted logits), which needs
    four classes; with two or three classes this uses the un-normalized targeted margin
    ``z_target - z_label`` (the CW loss that DLR normalizes) instead.
    """
    import torchattacks

    class TargetedAPGD(torchattacks.APGDT):
        def dlr_loss_targeted(self, x, y, y_target):
            if x.shape[1] >= 4:
                return super().dlr_loss_targeted(x, y, y_target)
            rows = torch.arange(x.shape[0], device=x.device)
            return x[rows, y_target] - x[rows, y]

    return TargetedAPGD


def torchattacks_seed(generator: torch.Generator | None, default: int) -> int:
    """The seed handed to torchattacks: drawn from ``generator`` when one is given (one draw),
    else ``default``."""
    if generator is None:
        return default
    return int(torch.randint(0, MAX_SEED, (1,), generator=generator, device=generator.device))


@contextlib.contextmanager
def attack_session(
    classifier: ZeroShotClassifier, device: torch.device, precision: str = "fp32"
) -> Iterator[LogitsModule]:
    """The adapter, with the model in eval mode and its parameters frozen, and the global RNG
    forked; on exit every mode, ``requires_grad`` flag and RNG state is as it was.

    Freezing the parameters is what guarantees no ``.grad`` is written: torchattacks takes
    gradients with ``torch.autograd.grad`` on the images, and with frozen parameters no graph
    reaches them at all (which also saves the backward work through the weights).
    torchattacks reseeds the global CPU RNG and the current CUDA device's RNG
    (``torch.manual_seed`` / ``torch.cuda.manual_seed``); both are forked here.
    """
    model = classifier.model
    flags = [(p, p.requires_grad) for p in model.parameters()]
    with torch.random.fork_rng(devices=_cuda_devices(device)), eval_mode(model), torch.enable_grad():
        try:
            for p, _ in flags:
                p.requires_grad_(False)
            yield LogitsModule(classifier, precision)
        finally:
            for p, requires_grad in flags:
                p.requires_grad_(requires_grad)


def _cuda_devices(device: torch.device) -> list[int]:
    """CUDA devices whose RNG torchattacks may reseed: the current one, and the images' one.

    Forking the current device's state initializes CUDA when it is available, so that
    torchattacks' ``torch.cuda.manual_seed`` runs (and is undone) now instead of being queued
    to fire at a later CUDA initialization.
    """
    if not torch.cuda.is_available():
        return []
    devices = {torch.cuda.current_device()}
    if device.type == "cuda":
        devices.add(device.index if device.index is not None else torch.cuda.current_device())
    return sorted(devices)


def check_int(name: str, value, low: int, high: int = 10**9) -> None:
    """One-line error unless ``value`` is an integer in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise MmcoaError(f"{name} must be an integer in [{low}, {high}]; got {value!r}")
    check_range(name, value, low, high, low_open=False)


def check_ball(eps: float, norm: str) -> None:
    """One-line error unless ``norm`` is ``linf`` or ``l2`` and ``eps`` a radius for it
    (L-inf: in (0, 1]; L2: positive)."""
    if norm not in NORMS:
        raise MmcoaError(f"norm must be one of {', '.join(NORMS)}; got {norm!r}")
    check_range("eps", eps, 0, 1 if norm == "linf" else float("inf"))


class TorchattacksAttack(Attack):
    """Plumbing shared by the attacks that adapt torchattacks (APGD here; AutoAttack and
    Square in :mod:`mmcoa.attacks.autoattack`): the seed drawn from the generator, the class-count
    edge cases, and :func:`attack_session`'s guarantees. Subclasses are dataclasses with a
    ``seed`` field and implement ``_run(adapter, images, labels, seed, n_classes)`` →
    ``(adversarial images, worst-case queries per sample)``."""

    def __call__(self, classifier, images, labels, generator=None, image_result=None) -> AttackResult:
        seed = torchattacks_seed(generator, self.seed)
        images, labels = images.detach(), labels.detach()
        if classifier.n_classes < 2 or images.shape[0] == 0:
            return AttackResult(images=images, queries=0)  # nothing can be misclassified
        with attack_session(classifier, images.device, getattr(self, "precision", "fp32")) as adapter:
            device = next(adapter.parameters()).device
            adv, queries = self._run(
                adapter, images.to(device), labels.to(device), seed, classifier.n_classes
            )
        return AttackResult(images=adv.to(images.device), queries=queries)

    def _run(self, adapter, images, labels, seed, n_classes) -> tuple[torch.Tensor, int]:
        raise NotImplementedError


@dataclass
class APGDBase(TorchattacksAttack):
    """Fields and plumbing shared by the three APGD attacks."""

    threat: ClassVar[str] = "image"
    eps: float = same_setting(ImageBudget, "eps")
    norm: str = same_setting(PGD, "norm")
    n_steps: int = same_setting(ImageBudget, "n_steps")
    n_restarts: int = same_setting(PGD, "n_restarts")
    seed: int = 0
    rho: float = 0.75
    precision: str = same_setting(ImageBudget, "precision")

    def __post_init__(self):
        check_ball(self.eps, self.norm)
        check_int("n_steps", self.n_steps, 1)
        check_int("n_restarts", self.n_restarts, 1, 10**6)
        check_int("seed", self.seed, 0, MAX_SEED)
        check_range("rho", self.rho, 0, 1)
        check_precision(self.precision)

    # -- the torchattacks stages (AutoAttack reuses them) and their worst-case queries --
    def apgd_ce_attack(self, adapter: LogitsModule, seed: int) -> torchattacks.APGD:
        """torchattacks' APGD on the cross-entropy with this attack's budget."""
        import torchattacks

        return torchattacks.APGD(adapter, **self._budget(seed), loss="ce")

    def apgd_t_attack(self, adapter: LogitsModule, seed: int, targets: int) -> torchattacks.APGDT:
        """torchattacks' APGD-T (targeted DLR) with ``targets`` target classes."""
        return targeted_apgd()(adapter, **self._budget(seed), n_classes=targets + 1)

    def _budget(self, seed: int) -> dict:
        """The keyword arguments torchattacks' APGD and APGD-T share."""
        norm = TORCHATTACKS_NORMS[self.norm]
        return dict(
            norm=norm, eps=self.eps, steps=self.n_steps, n_restarts=self.n_restarts, seed=seed, rho=self.rho
        )

    def apgd_ce_queries(self) -> int:
        """One clean check, then per restart one forward at the start and one per step."""
        return 1 + self.n_restarts * (self.n_steps + 1)

    def apgd_t_queries(self, targets: int) -> int:
        """One clean check, then per target and restart: target choice, start, one per step."""
        return 1 + targets * self.n_restarts * (self.n_steps + 2)


def target_count(n_target_classes: int, n_classes: int) -> int:
    """Target classes a targeted stage runs: ``n_target_classes``, capped at the C - 1 wrong
    classes there are."""
    return min(n_target_classes, n_classes - 1)


def perturb(attack, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(still correctly classified, adversarial images) of an APGD/APGD-T run (``cheap``: the
    runs of each restart only on the samples not yet fooled)."""
    robust, adv = attack.perturb(images, labels, cheap=True)
    return robust, adv.detach()


@dataclass
class TargetClasses(FieldGroup):
    """The targeted runs' field: ``n_target_classes`` (the 2nd, 3rd, ... highest-scoring
    classes on the clean image, at most C - 1; AutoAttack's standard: 9)."""

    n_target_classes: int = 9

    def __post_init__(self):
        super().__post_init__()
        check_int("n_target_classes", self.n_target_classes, 1)


@ATTACKS.register("apgd")
@dataclass
class APGD(TargetClasses, APGDBase):
    """APGD-CE then APGD-T (AutoAttack's apgd-ce + apgd-t), worst case per sample.

    Croce & Hein, ICML 2020 (https://arxiv.org/abs/2003.01690), adapting torchattacks' ``APGD``
    and ``APGDT``. APGD-CE (cross-entropy of the zero-shot logits
    ``logit_scale · cos(f(x + delta), g(prompt_c))``) runs on every sample; APGD-T (targeted DLR
    loss, the ``min(n_target_classes, C - 1)`` highest-scoring wrong classes in turn) runs on the
    clean images of the samples APGD-CE left correctly classified, with the same seed, as
    AutoAttack does. Each sample gets the adversarial image of the stage that fooled it, or its
    clean image when neither did, so robust accuracy is the fraction that survives both.

    Arguments (pixel units on [0, 1] images):
        eps (float): radius of the ``norm`` ball; x + delta stays in [0, 1]. (Default: 1/255)
        norm (str): ``"linf"`` or ``"l2"``. (Default: ``"linf"``)
        n_steps (int): iterations per run (AutoAttack: 100). Step sizes are adaptive (start
            2·eps, halved on oscillation with threshold ``rho``), hence no step-size argument.
            (Default: 100)
        n_restarts (int): random restarts per run, each on the samples not yet fooled.
            (Default: 1)
        seed (int): torchattacks' seed when no ``generator`` is passed; with a generator the
            seed is drawn from it, so results are deterministic given the generator. The
            caller's global RNG state is left unchanged either way. (Default: 0)
        rho (float): the step-size halving threshold, a fraction of the steps. (Default: 0.75)
        precision (str): ``"fp32"`` or ``"bf16"`` autocast. (Default: ``"fp32"``)
        n_target_classes (int): target classes for APGD-T (AutoAttack: 9); capped at C - 1.
            (Default: 9)
        n_restarts_targeted (int | None): restarts of each APGD-T run; None: ``n_restarts``.
            RobustVLM's AutoAttack runs APGD-CE with 5 restarts and APGD-T with 1. (Default: None)
        min_classes_targeted (int): APGD-T runs only when the classifier has at least this many
            classes; RobustVLM runs APGD-CE alone on 2-class datasets (3). (Default: 2)

    Shape:
        - images, labels: as for :class:`~mmcoa.attacks.base.Attack`.
        - output: ``AttackResult.images``, ``(B, 3, H, W)`` in [0, 1] and within ``eps`` of
          ``images`` in the ``norm``.

    ``queries`` is the worst-case count of forward passes (each with one backward) per sample.
    With C < 2 classes the images come back unchanged; targeted runs with 2–3 classes use the
    targeted logit margin since the DLR denominator needs four classes.

    Example::

        attack = APGD(eps=4 / 255, n_steps=100)       # or build_attack("apgd", eps=4 / 255)
        adv = attack(ZeroShotClassifier(model, prompts), images, labels, generator).images
    """

    n_restarts_targeted: int | None = setting(
        None,
        "restarts of the APGD-T runs (RobustVLM's AutoAttack: 1 while APGD-CE has 5); unset: n_restarts",
        neutral=None,
    )
    min_classes_targeted: int = setting(
        2,
        "APGD-T runs only on classifiers with at least this many classes (RobustVLM: 3, "
        "APGD-CE alone on 2-class PCAM)",
        neutral=2,
    )

    def __post_init__(self):
        super().__post_init__()
        if self.n_restarts_targeted is not None:
            check_int("n_restarts_targeted", self.n_restarts_targeted, 1, 10**6)
        check_int("min_classes_targeted", self.min_classes_targeted, 2)

    def _run(self, adapter, images, labels, seed, n_classes):
        robust, adv = perturb(self.apgd_ce_attack(adapter, seed), images, labels)
        if n_classes < self.min_classes_targeted:
            return adv, self.apgd_ce_queries()
        targets = target_count(self.n_target_classes, n_classes)
        targeted = dataclasses.replace(self, n_restarts=self.n_restarts_targeted or self.n_restarts)
        remaining = robust.nonzero().flatten()
        if remaining.numel():
            attack = targeted.apgd_t_attack(adapter, seed, targets)
            adv[remaining] = perturb(attack, images[remaining], labels[remaining])[1]
        return adv, self.apgd_ce_queries() + targeted.apgd_t_queries(targets)


@ATTACKS.register("apgd-ce")
@dataclass
class APGDCE(APGDBase):
    """APGD on the cross-entropy (AutoAttack's apgd-ce), via torchattacks' ``APGD``.

    Croce & Hein, ICML 2020 (https://arxiv.org/abs/2003.01690). Maximizes the cross-entropy of
    the zero-shot logits inside the ``eps`` ball (``norm`` ``"linf"`` or ``"l2"``, pixel units,
    x + delta in [0, 1]) with adaptive step size and momentum; samples already misclassified
    are returned clean, fooled samples get the first misclassified iterate, the rest their
    clean image. Arguments, seeding and shapes as for :class:`APGD`.

    Example::

        adv = APGDCE(eps=1 / 255)(classifier, images, labels, generator).images
    """

    def _run(self, adapter, images, labels, seed, n_classes):
        return perturb(self.apgd_ce_attack(adapter, seed), images, labels)[1], self.apgd_ce_queries()


@ATTACKS.register("apgd-t")
@dataclass
class APGDT(TargetClasses, APGDBase):
    """APGD on the targeted DLR loss (AutoAttack's apgd-t), via torchattacks' ``APGDT``.

    Croce & Hein, ICML 2020 (https://arxiv.org/abs/2003.01690). One run per target class: the
    2nd, 3rd, ... highest-scoring classes on the clean image, ``min(n_target_classes, C - 1)``
    of them, each on the samples not yet fooled. With 2–3 classes the loss is the targeted logit
    margin (the DLR denominator needs four). Arguments, seeding and shapes as for :class:`APGD`.
    Note: under ``norm="l2"`` torchattacks' APGD-T scales the gradient step of every sample by
    the first sample's adaptive step size (``step_size[0]``); the L-inf path is per sample.

    Example::

        adv = APGDT(eps=1 / 255, n_target_classes=9)(classifier, images, labels).images
    """

    def _run(self, adapter, images, labels, seed, n_classes):
        targets = target_count(self.n_target_classes, n_classes)
        adv = perturb(self.apgd_t_attack(adapter, seed, targets), images, labels)[1]
        return adv, self.apgd_t_queries(targets)
