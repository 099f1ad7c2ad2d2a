"""AutoAttack, standard version (Croce & Hein 2020), and its black-box member Square.

Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020 (https://arxiv.org/abs/2003.01690), reference code
https://github.com/fra31/auto-attack. The standard version runs APGD-CE, APGD-T, FAB-T
(https://arxiv.org/abs/1907.02044) and Square (https://arxiv.org/abs/1912.00049) in sequence,
each on the clean images of the samples every earlier attack left correctly classified. The four
come from torchattacks, chained by its ``MultiAttack`` through the adapter of
:mod:`mmcoa.attacks.apgd`, with the reference code's budgets rather than torchattacks' own
``AutoAttack`` (``docs/deviations.md``, row 19).

Registered attacks: ``autoattack`` (the four in sequence) and ``square`` (Square alone, the
black-box check of ``mmcoa analyze sanity``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch

from mmcoa.attacks.apgd import (
    MAX_SEED,
    TORCHATTACKS_NORMS,
    APGDBase,
    LogitsModule,
    TargetClasses,
    TorchattacksAttack,
    check_ball,
    check_int,
    target_count,
)
from mmcoa.attacks.base import ATTACKS, check_range, same_setting
from mmcoa.attacks.pgd import PGD, ImageBudget

if TYPE_CHECKING:
    import torchattacks

STANDARD = {
    "n_steps": 100,
    "n_restarts": 1,
    "n_target_classes": 9,
    "fab_steps": 100,
    "square_queries": 5000,
}  # the reference code's set_version("standard")
SQUARE_P_INIT = 0.8  # the reference code's fraction of pixels changed by the first square


def square_attack(
    adapter: LogitsModule,
    eps: float,
    norm: str,
    n_queries: int,
    n_restarts: int,
    seed: int,
    p_init: float = SQUARE_P_INIT,
) -> torchattacks.Square:
    """torchattacks' Square (margin loss) as AutoAttack runs it: schedule of the square size in
    raw iterations (``resc_schedule=False``), so a smaller budget stops early in the same
    schedule instead of compressing it."""
    import torchattacks

    return torchattacks.Square(
        adapter,
        norm=TORCHATTACKS_NORMS[norm],
        eps=eps,
        n_queries=n_queries,
        n_restarts=n_restarts,
        p_init=p_init,
        loss="margin",
        resc_schedule=False,
        seed=seed,
    )


def square_queries(n_queries: int, n_restarts: int) -> int:
    """Worst-case forwards per sample: one clean check, then per restart the start, one per
    query and one final check."""
    return 1 + n_restarts * (n_queries + 2)


@ATTACKS.register("autoattack")
@dataclass
class AutoAttack(TargetClasses, APGDBase):
    """AutoAttack (standard): APGD-CE, APGD-T, FAB-T, Square, each on the samples still correct.

    Croce & Hein, ICML 2020 (https://arxiv.org/abs/2003.01690), standard version, via
    torchattacks' ``APGD``, ``APGDT``, ``FAB`` (``multi_targeted``) and ``Square`` chained by its
    ``MultiAttack``: every attack starts from the clean images of the samples no earlier attack
    fooled, and each sample keeps the adversarial image of the attack that fooled it (its clean
    image when none did), so robust accuracy is the fraction that survives all four. All four
    get the same seed, as in the reference code.

    Arguments (pixel units on [0, 1] images); the defaults are the reference code's standard
    budgets (the paper's Table 1), not torchattacks' 10-iteration ``AutoAttack``:
        eps (float): radius of the ``norm`` ball; x + delta stays in [0, 1]. (Default: 1/255)
        norm (str): ``"linf"`` or ``"l2"``. (Default: ``"linf"``)
        n_steps (int): APGD-CE and APGD-T iterations per run. (Default: 100)
        n_restarts (int): restarts of every attack. (Default: 1)
        n_target_classes (int): target classes of APGD-T and of FAB-T, capped at C - 1; with
            2–3 classes APGD-T uses the targeted logit margin (the DLR loss needs four).
            (Default: 9)
        fab_steps (int): FAB-T iterations per target class. (Default: 100)
        square_queries (int): Square queries per restart. (Default: 5000)
        seed (int), rho (float), precision (str): as for :class:`mmcoa.attacks.apgd.APGD`.
            (Default: 0, 0.75, ``"fp32"``)

    Shape:
        - images, labels: as for :class:`~mmcoa.attacks.base.Attack`.
        - output: ``AttackResult.images``, ``(B, 3, H, W)`` in [0, 1] and within ``eps`` of
          ``images`` in the ``norm``.


    ``queries`` is the worst-case number of forward passes per sample (a sample no attack
    fools): each attack's own count plus ``MultiAttack``'s check after each attack.

    Example::

        attack = AutoAttack(eps=4 / 255)                 # or build_attack("autoattack", eps=4 / 255)
        adv = attack(ZeroShotClassifier(model, prompts), images, labels, generator).images
    """

    fab_steps: int = STANDARD["fab_steps"]
    square_queries: int = STANDARD["square_queries"]

    def __post_init__(self):
        super().__post_init__()
        check_int("fab_steps", self.fab_steps, 1)
        check_int("square_queries", self.square_queries, 1)

    def stages(self, adapter: LogitsModule, seed: int, n_classes: int) -> list[torchattacks.Attack]:
        """The four torchattacks attacks, in AutoAttack's order, with this attack's budgets."""
        import torchattacks

        targets = target_count(self.n_target_classes, n_classes)
        fab = torchattacks.FAB(
            adapter,
            norm=TORCHATTACKS_NORMS[self.norm],
            eps=self.eps,
            steps=self.fab_steps,
            n_restarts=self.n_restarts,
            seed=seed,
            multi_targeted=True,
            n_classes=targets + 1,
        )
        square = square_attack(adapter, self.eps, self.norm, self.square_queries, self.n_restarts, seed)
        return [self.apgd_ce_attack(adapter, seed), self.apgd_t_attack(adapter, seed, targets), fab, square]

    def queries(self, n_classes: int) -> int:
        """Worst-case forward passes per sample with ``n_classes`` classes."""
        targets = target_count(self.n_target_classes, n_classes)
        # FAB-T: one clean check; per target and restart two clean forwards (prediction, target
        # choice), per step a forward for the gradient and one to check, and a final check
        fab = 1 + targets * self.n_restarts * (2 * self.fab_steps + 3)
        own = (
            self.apgd_ce_queries()
            + self.apgd_t_queries(targets)
            + fab
            + square_queries(self.square_queries, self.n_restarts)
        )
        return own + 4  # MultiAttack classifies each attack's output

    def _run(self, adapter, images, labels, seed, n_classes):
        import torchattacks

        adv = torchattacks.MultiAttack(self.stages(adapter, seed, n_classes))(images, labels)
        return adv.detach(), self.queries(n_classes)


@ATTACKS.register("square")
@dataclass
class Square(TorchattacksAttack):
    """Square Attack (black-box random search on the margin loss), via torchattacks' ``Square``.

    Andriushchenko et al., "Square Attack: a query-efficient black-box adversarial attack via
    random search", ECCV 2020 (https://arxiv.org/abs/1912.00049), AutoAttack's fourth member,
    with AutoAttack's settings (p_init 0.8, margin loss, schedule not rescaled). It uses only
    the classifier's logits, never a gradient, so it is the gradient-masking check of
    ``mmcoa analyze sanity``: a black-box attack should not beat a white-box one.

    Arguments (pixel units):
        eps (float): radius of the ``norm`` ball. (Default: 1/255)
        norm (str): ``"linf"`` or ``"l2"``. (Default: ``"linf"``)
        n_queries (int): queries per restart (AutoAttack: 5,000). (Default: 5000)
        n_restarts (int): restarts, each on the samples not yet fooled. (Default: 1)
        p_init (float): fraction of the pixels the first squares cover. (Default: 0.8)
        seed (int): as for :class:`mmcoa.attacks.apgd.APGD`. (Default: 0)

    Shape:
        - images, labels: as for :class:`~mmcoa.attacks.base.Attack`.
        - output: ``AttackResult.images``, ``(B, 3, H, W)`` in [0, 1] and within ``eps`` of
          ``images`` in the ``norm``.

    ``queries`` is the worst case per sample: ``1 + n_restarts · (n_queries + 2)``.

    Example::

        adv = Square(eps=1 / 255, n_queries=5000)(classifier, images, labels, generator).images
    """

    threat: ClassVar[str] = "image"
    eps: float = same_setting(ImageBudget, "eps")
    norm: str = same_setting(PGD, "norm")
    n_queries: int = STANDARD["square_queries"]
    n_restarts: int = same_setting(PGD, "n_restarts")
    p_init: float = SQUARE_P_INIT
    seed: int = 0

    def __post_init__(self):
        check_ball(self.eps, self.norm)
        check_int("n_queries", self.n_queries, 1)
        check_int("n_restarts", self.n_restarts, 1, 10**6)
        check_range("p_init", self.p_init, 0, 1)
        check_int("seed", self.seed, 0, MAX_SEED)

    def _run(self, adapter, images, labels, seed, n_classes) -> tuple[torch.Tensor, int]:
        attack = square_attack(
            adapter, self.eps, self.norm, self.n_queries, self.n_restarts, seed, self.p_init
        )
        return attack.perturb(images, labels).detach(), square_queries(self.n_queries, self.n_restarts)
