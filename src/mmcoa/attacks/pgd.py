"""Projected gradient descent in pixel space (Madry et al. 2018; paper Eq. 2-3).

:func:`maximize` is the shared engine: any attack that ascends a per-sample loss inside an
eps-ball calls it with its own loss. :class:`ImageBudget` declares the budget fields once (eps,
step size, iterations, precision; the norm and the random start where an attack lets users set
them) with their validation, for every image attack, classification and retrieval.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
import torch.nn.functional as F

from mmcoa.attacks.base import ATTACKS, Attack, AttackResult, FieldGroup, check_range, eval_mode
from mmcoa.errors import MmcoaError
from mmcoa.flags import UNIT_255, setting
from mmcoa.models.zeroshot import top_k_correct
from mmcoa.precision import PRECISIONS, autocast_for, check_precision

NORMS = ("linf", "l2")
LossFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class RowsOf:
    """A generator standing for a batch of ``total`` rows of which the images are rows
    ``start`` onwards: random starts are drawn for the whole batch and this part kept, so a
    process's shard starts where a single process on the whole batch would."""

    generator: torch.Generator
    start: int
    total: int


def random_start(images: torch.Tensor, eps: float, norm: str, generator: torch.Generator | RowsOf | None):
    """A perturbation drawn uniformly from the eps-ball (both signs), clipped to valid pixels."""
    shape, device, rows = images.shape, images.device, slice(None)
    if isinstance(generator, RowsOf):
        rows = slice(generator.start, generator.start + shape[0])
        shape, generator = (generator.total, *shape[1:]), generator.generator
    if norm == "linf":
        delta = (torch.rand(shape, generator=generator, device=device) * 2 - 1) * eps
    else:
        direction = torch.randn(shape, generator=generator, device=device)
        direction = direction / _l2(direction).clamp_min(1e-12)
        dims = images[0].numel()
        radius = torch.rand((shape[0], 1, 1, 1), generator=generator, device=device) ** (1 / dims)
        delta = direction * radius * eps
    return (images + delta[rows]).clamp(0, 1) - images


def ascent_step(delta: torch.Tensor, grad: torch.Tensor, step_size: float, norm: str):
    return delta + step_size * steepest(grad, norm)


def steepest(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """The unit-``norm`` ascent direction of ``grad``: its sign (L-inf) or ``grad / ||grad||``."""
    if norm == "linf":
        return grad.sign()
    return grad / _l2(grad).clamp_min(1e-12)


def project(delta: torch.Tensor, images: torch.Tensor, eps: float, norm: str):
    """Project onto the eps-ball, then onto the [0, 1] pixel box."""
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        delta = delta * (eps / _l2(delta).clamp_min(1e-12)).clamp(max=1)
    return (images + delta).clamp(0, 1) - images


def maximize(
    loss_fn: LossFn,
    images: torch.Tensor,
    *,
    eps: float,
    step_size: float,
    n_steps: int,
    norm: str = "linf",
    start: bool = True,
    generator: torch.Generator | RowsOf | None = None,
    precision: str = "fp32",
    momentum: float = 0.0,
) -> torch.Tensor:
    """Ascend ``loss_fn(adv).sum()`` for ``n_steps`` steps inside the eps-ball around ``images``.

    Gradients are taken with ``torch.autograd.grad`` with respect to the perturbation only, so
    no parameter gradient is computed or accumulated (the published code's ``loss.backward()``
    leaked attack gradients into the weights). With ``momentum`` > 0 each step follows a
    velocity, ``v = steepest(momentum · v + steepest(grad))`` (FARE's training PGD, momentum
    0.9); 0 is plain steepest ascent. Returns the adversarial images.
    """
    images = images.detach()
    delta = random_start(images, eps, norm, generator) if start else torch.zeros_like(images)
    velocity = torch.zeros_like(images)
    for _ in range(n_steps):
        delta.requires_grad_(True)
        with autocast_for(precision, images.device):
            loss = loss_fn(images + delta).float().sum()
        (grad,) = torch.autograd.grad(loss, delta)
        if momentum:
            velocity = steepest(momentum * velocity + steepest(grad, norm), norm)
            stepped = delta.detach() + step_size * velocity
        else:
            stepped = ascent_step(delta.detach(), grad, step_size, norm)
        delta = project(stepped, images, eps, norm)
    return (images + delta).detach()


def _l2(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).norm(dim=1).view(-1, *([1] * (x.ndim - 1)))


@dataclass
class ImageBudget(FieldGroup):
    """The budget of an image attack: ``eps`` (radius of the ``norm`` ball), ``step_size``,
    ``n_steps`` and the ``precision`` of the model passes, validated once, and :meth:`maximize`,
    the ascent under it. Pixel units (1/255 is ``1 / 255``); users give eps and step_size in
    units of 1/255. ``norm`` (L-inf) and ``random_start`` (True) are fixed unless an attack
    declares them as fields (PGD does). Defaults: the paper's test setting; an attack with
    others redeclares them with :func:`~mmcoa.attacks.base.same_setting`."""

    eps: float = setting(1 / 255, "perturbation budget", unit=UNIT_255)
    step_size: float = setting(1 / 255, "step size of the image attacks", unit=UNIT_255)
    n_steps: int = setting(100, "attack iterations")
    precision: str = setting("fp32", "image attacks' precision: bf16 autocasts the model", choices=PRECISIONS)
    norm: ClassVar[str] = "linf"
    random_start: ClassVar[bool] = True

    def __post_init__(self):
        if self.norm not in NORMS:
            raise MmcoaError(f"norm must be one of {', '.join(NORMS)}; got {self.norm!r}")
        check_precision(self.precision)
        largest = 1 if self.norm == "linf" else float("inf")
        check_range("eps", self.eps, 0, largest)
        check_range("step_size", self.step_size, 0, largest)
        check_range("n_steps", self.n_steps, 1, 1e9, low_open=False)
        super().__post_init__()

    def maximize(
        self, loss_fn: LossFn, images: torch.Tensor, generator=None, momentum: float = 0.0
    ) -> torch.Tensor:
        """:func:`maximize` of ``loss_fn`` within this budget (``momentum``: its velocity)."""
        budget = dict(eps=self.eps, step_size=self.step_size, n_steps=self.n_steps, norm=self.norm)
        start, precision = self.random_start, self.precision
        return maximize(
            loss_fn,
            images,
            **budget,
            start=start,
            generator=generator,
            precision=precision,
            momentum=momentum,
        )


@ATTACKS.register("pgd")
@dataclass
class PGD(ImageBudget, Attack):
    """PGD on the zero-shot cross-entropy (paper Eq. 3).

    Loss: CE of ``logit_scale · cos(f(x + delta), g(prompt_c))`` against the true label,
    maximized over ``||delta|| <= eps`` (L-inf or L2) with ``x + delta`` in [0, 1].
    Defaults are the paper's test setting: eps 1/255, step 1/255, 100 steps, one random start.
    With ``n_restarts > 1`` each sample keeps a restart that fools the classifier when one does
    (the highest-loss one among those), else the highest-loss restart.

    Arguments (pixel units: a 1/255 on the command line is ``1 / 255`` here):
        eps (float): radius of the ``norm`` ball. (Default: 1/255)
        step_size (float): step per iteration (L-inf: sign step; L2: along the normalized
            gradient). (Default: 1/255)
        n_steps (int): iterations. (Default: 100)
        norm (str): ``"linf"`` or ``"l2"``. (Default: ``"linf"``)
        random_start (bool): start uniformly in the ball instead of at the image. (Default: True)
        n_restarts (int): independent runs; each sample keeps its best. (Default: 1)
        precision (str): ``"fp32"`` or ``"bf16"`` (autocast for the forward passes; the random
            start does not depend on it). (Default: ``"fp32"``)

    Shape:
        - images, labels: as for :class:`~mmcoa.attacks.base.Attack`.
        - output: ``AttackResult.images``, ``(B, 3, H, W)`` in [0, 1] and within ``eps`` of
          ``images`` in the ``norm``.

    Example::

        attack = PGD(eps=4 / 255, n_steps=10)
        adv = attack(ZeroShotClassifier(model, prompts), images, labels).images
    """

    threat: ClassVar[str] = "image"
    norm: str = setting("linf", "threat model", choices=NORMS)
    random_start: bool = True
    n_restarts: int = setting(1, "random restarts")

    def __post_init__(self):
        super().__post_init__()
        check_range("n_restarts", self.n_restarts, 1, 1e6, low_open=False)

    def __call__(self, classifier, images, labels, generator=None, image_result=None) -> AttackResult:
        def loss_fn(adv):
            return F.cross_entropy(classifier.logits(adv), labels, reduction="none")

        with eval_mode(classifier.model):
            best = self.maximize(loss_fn, images, generator)
            for _ in range(self.n_restarts - 1):
                candidate = self.maximize(loss_fn, images, generator)
                best = self._keep_better(classifier, labels, best, candidate)
        queries = self.n_steps * self.n_restarts + (self.n_restarts if self.n_restarts > 1 else 0)
        return AttackResult(images=best, queries=queries)

    @torch.no_grad()
    def _keep_better(self, classifier, labels, current, candidate):
        scores = [_restart_score(classifier.logits(x), labels) for x in (current, candidate)]
        take = (scores[1] > scores[0]).view(-1, 1, 1, 1)
        return torch.where(take, candidate, current)


def _restart_score(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Fooled samples outrank all others; ties break on the loss."""
    loss = F.cross_entropy(logits, labels, reduction="none")
    fooled = (~top_k_correct(logits, labels)).float()
    return fooled * 1e6 + loss
