"""Test-time defenses as models: CLIPure-Cos and TTC, evaluated adaptively.

A defended model (:class:`DefendedModel`) is a :class:`~mmcoa.models.base.VisionLanguageModel`
whose image embedding runs a test-time defense, so every command and attack uses it unchanged
(``mmcoa eval --defense clipure|ttc``; :func:`defend` in Python). Equations (numbered here, as
in ``docs/methods.md``; ``f`` is the image encoder's raw embedding, ``x`` a [0, 1] image):

- **CLIPure-Cos** (Zhang et al., ICLR 2025, arXiv:2502.18176; authors' code
  ``CLIP_eval/CLIPure_Cos.py``, ``purify_zi``): the likelihood of an embedding is modelled by
  its cosine with the blank prompt's, ``log p(z) ∝ cos(z, e)``, ``e = g("a photo of a .")``
  (T1), and ``z = f(x)`` is purified on the sphere, its norm ``r = ||z||`` kept: with
  ``u_0 = z / r``, ``u_{t+1} = normalize(u_t + η d_t / ||d||)``, ``d_t = ∇_u cos(r u_t, e) =
  ê − (u_t · ê) u_t`` (T2), ``t < T``; the purified embedding ``r u_T`` is classified.
  Published: T = 10, η = 30. ``step_norm="sample"`` (default) divides each row's ``d_t`` by its
  own norm: the authors' code run on a batch of one (their runs used batches of 2);
  ``"batch"`` divides by the norm of the whole batch's ``d`` as their code does, which couples
  each image's purification to its batch. Each step turns ``u`` by ``atan(η)`` (88.1° for
  η = 30) towards ``ê``, so with ``"sample"`` an even T returns every embedding within 88.1° of
  ``ê`` to itself. CLIPure-Diff (the DiffusionPrior variant) is out of scope.
- **TTC** (Xing, Zhao & Sebe, CVPR 2025, arXiv:2503.03613; authors' code
  ``code/test_time_counterattack.py``, ``tau_thres_weighted_counterattacks``): a random start
  ``δ_0 ~ U[-ε, ε]`` (kept in [0, 1]) measures ``τ = ||f(x + δ_0) − f(x)|| / ||f(x)||`` (T3);
  the counterattack ascends ``||f(x + δ) − f(x)||²`` by ``δ_{k+1} = Π(δ_k + α sign ∇_δ)``
  within ε (T4), ``k < K``; a "falsely stable" image (``τ < τ_thres``) is classified at
  ``x + Σ_k w_k δ_k`` with ``w_k = e^{βk} / Σ_j e^{βj}``, any other at ``x + δ_0`` (T5).
  Published: ε = 4/255, K = 2, α = 1/255, τ_thres = 0.2, β = 2.

How an attack's gradient passes through the defense is the ``gradient`` setting (BPDA and EOT:
Athalye, Carlini & Wagner, ICML 2018, arXiv:1802.00420):

- ``full``: autograd through the defense as it computes. CLIPure: through every step (T2).
  TTC: the sign steps (T4) and the threshold (T5) have zero derivative, so only the pixel
  clamps and the final encoding carry gradient: the masking that ``bpda`` repairs.
- ``bpda``: the defense's step has identity backward (CLIPure: the purification; TTC: the
  counterattack), and TTC's threshold is relaxed in the backward pass to
  ``sigmoid((1 − τ / τ_thres) / relax_temperature)``, so an attack can move τ across it.
- ``detached`` (CLIPure only): the authors' own attack gradient, through (T2) with each step's
  direction ``d_t`` held constant (their ``autograd.grad`` has no ``create_graph``): each step
  then scales the gradient by ``1 / sqrt(1 + η²)``, 1.7e-15 over the published 10 steps.
- ``undefended``: the non-adaptive evaluation the papers report. A forward pass an attack
  differentiates (autograd records a gradient with respect to the images) is the undefended
  model's, value and gradient; every other one (the evaluation's predictions, black-box
  queries, an attack's acceptance and restart checks) is the defended model's.

A randomised defense (TTC's ``δ_0``) averages the gradient over ``eot_samples`` draws (EOT): the
value is the first draw (the defense as deployed) and the backward pass applies the mean of the
draws' Jacobians to the loss gradient at that value. Draws are seeded from ``seed``, the draw
index and each image's pixels, so a sample gets the same draw whatever batch it is in and in
whatever order the attacks run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
import torch.nn.functional as F

from mmcoa.errors import MmcoaError
from mmcoa.flags import UNIT_255, setting
from mmcoa.models.base import VisionLanguageModel
from mmcoa.models.weight_version import WeightVersioned
from mmcoa.registry import Registry

GRADIENTS = ("full", "bpda", "detached", "undefended")
EVALUATIONS = ("adaptive", "non-adaptive")
STEP_NORMS = ("batch", "sample")
DEFENSES: Registry[type[DefenseSettings]] = Registry("defense")

__all__ = [
    "DEFENSES",
    "EVALUATIONS",
    "GRADIENTS",
    "Clipure",
    "ClipureModel",
    "DefendedModel",
    "DefenseSettings",
    "TTC",
    "TTCModel",
    "build_defense",
    "clipure_purify",
    "counter_weights",
    "defend",
    "differentiated",
    "draw_seeds",
    "pixel_clamp",
    "ttc_counterattack",
    "ttc_tau",
    "ttc_weights",
    "uniform_noise",
]


# -- settings ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class DefenseSettings:
    """What every defense takes: ``gradient`` (module docstring), ``eot_samples`` (draws whose
    gradients are averaged; randomised defenses only) and ``seed`` (of the draws). Bad values
    are one-line errors at construction, before any model work."""

    name: ClassVar[str] = "defense"
    model_class: ClassVar[type]  # the DefendedModel subclass that runs it (set beside it)
    gradients: ClassVar[tuple[str, ...]] = GRADIENTS
    randomised: ClassVar[bool] = False

    gradient: str = setting("full", "how attack gradients pass the defense", choices=GRADIENTS)
    eot_samples: int = setting(1, "draws whose gradients are averaged (EOT; randomised defenses)")
    seed: int = 0

    def __post_init__(self):
        if self.gradient not in self.gradients:
            raise MmcoaError(
                f"{self.name} gradient must be one of {', '.join(self.gradients)}; got {self.gradient!r}"
            )
        _check_int("eot_samples", self.eot_samples, 1)
        _check_int("seed", self.seed, 0)
        if self.eot_samples > 1 and not self.randomised:
            raise MmcoaError(f"{self.name} is deterministic: eot_samples must be 1; got {self.eot_samples}")
        if self.eot_samples > 1 and self.gradient == "undefended":
            raise MmcoaError(
                "eot_samples applies to adaptive gradients; the undefended gradient draws nothing"
            )

    @property
    def evaluation(self) -> str:
        """``non-adaptive`` for the ``undefended`` gradient, else ``adaptive``."""
        return "non-adaptive" if self.gradient == "undefended" else "adaptive"

    def params(self) -> dict:
        return dataclasses.asdict(self)

    def record(self) -> dict:
        """The record's ``model_build.defense``: name, evaluation mode and every parameter."""
        return {"name": self.name, "evaluation": self.evaluation, "params": self.params()}


@DEFENSES.register("clipure")
@dataclass(frozen=True)
class Clipure(DefenseSettings):
    """CLIPure-Cos (T1-T2 of the module docstring); defaults are the authors' settings, their
    code's step normalisation as it runs on a batch of one (``step_norm="batch"``: on any
    batch)."""

    gradient: str = setting("full", "how attack gradients pass the defense", choices=GRADIENTS)
    steps: int = setting(10, "purification steps (CLIPure: T; TTC: counterattack steps K)")
    sphere_step: float = setting(30.0, "CLIPure's step on the unit sphere (eta)")
    step_norm: str = setting(
        "sample",
        "CLIPure's step normalisation: per sample, or over the batch (authors' code)",
        choices=STEP_NORMS,
    )
    blank_prompt: str = setting("a photo of a .", "CLIPure's blank prompt")

    def __post_init__(self):
        super().__post_init__()
        _check_int("steps", self.steps, 1)
        _check_positive("sphere_step", self.sphere_step)
        if self.step_norm not in STEP_NORMS:
            raise MmcoaError(f"step_norm must be one of {', '.join(STEP_NORMS)}; got {self.step_norm!r}")
        if not isinstance(self.blank_prompt, str) or not self.blank_prompt.strip():
            raise MmcoaError(f"blank_prompt must be a non-empty string; got {self.blank_prompt!r}")


@DEFENSES.register("ttc")
@dataclass(frozen=True)
class TTC(DefenseSettings):
    """Test-time counterattacks (T3-T5 of the module docstring); defaults are the authors'
    settings (pixel units: eps 4/255 is ``4 / 255``)."""

    gradients: ClassVar[tuple[str, ...]] = ("full", "bpda", "undefended")
    randomised: ClassVar[bool] = True
    gradient: str = setting("bpda", "how attack gradients pass the defense", choices=GRADIENTS)
    steps: int = setting(2, "purification steps (CLIPure: T; TTC: counterattack steps K)")
    eps: float = setting(4 / 255, "TTC's counterattack budget (L-inf)", unit=UNIT_255)
    step_size: float = setting(1 / 255, "TTC's counterattack step", unit=UNIT_255)
    tau: float = setting(0.2, "TTC's threshold on the embedding change ratio")
    beta: float = setting(2.0, "TTC's weight growth across counterattack steps")
    relax_temperature: float = setting(
        0.25, "TTC bpda: temperature of the threshold's sigmoid, relative to tau"
    )

    def __post_init__(self):
        super().__post_init__()
        _check_int("steps", self.steps, 1)
        for name in ("eps", "step_size"):
            _check_positive(name, getattr(self, name), high=1.0)
        for name in ("tau", "relax_temperature"):
            _check_positive(name, getattr(self, name))
        if not isinstance(self.beta, (int, float)) or isinstance(self.beta, bool):
            raise MmcoaError(f"beta must be a number; got {self.beta!r}")


def _check_int(name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise MmcoaError(f"{name} must be an integer >= {low}; got {value!r}")


def _check_positive(name: str, value, high: float = float("inf")) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= high:
        raise MmcoaError(f"{name} must be a number in (0, {high:g}]; got {value!r}")


def build_defense(name: str, **params) -> DefenseSettings:
    """The settings of defense ``name``; an unknown name or parameter is a one-line error."""
    cls = DEFENSES.get(name)
    accepted = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise MmcoaError(
            f"defense {name!r} takes no parameter {', '.join(unknown)}; accepted: {', '.join(accepted)}"
        )
    return cls(**params)


def defend(model: VisionLanguageModel, defense: str | DefenseSettings, **params) -> DefendedModel:
    """``model`` with the test-time defense ``defense`` (a name and its ``params``, or settings)."""
    if params and not isinstance(defense, str):
        raise MmcoaError("give a defense's parameters with its name, or settings alone")
    settings = build_defense(defense, **params) if isinstance(defense, str) else defense
    return type(settings).model_class(model, settings)


# -- CLIPure-Cos -------------------------------------------------------------------------------
def clipure_purify(
    z: torch.Tensor,
    blank: torch.Tensor,
    steps: int,
    sphere_step: float,
    step_norm: str = "sample",
    track: bool = True,
) -> torch.Tensor:
    """CLIPure-Cos's purification (T2): ``steps`` normalized ascent steps of ``cos(r u, e)`` on
    the direction ``u`` of each row of ``z`` ([B, D]), its norm ``r`` kept. ``d_t = ê − (u·ê) u``
    is ``∇_u cos`` for a unit ``u`` (the authors take it with autograd); ``step_norm``
    ``"sample"`` divides by each row's norm, ``"batch"`` by the norm of the whole [B, D] ``d``
    (the authors' code). ``track=False`` holds each ``d_t`` constant in the backward pass (the
    authors' attack gradient)."""
    r = z.norm(dim=-1, keepdim=True)
    u = z / r
    e = F.normalize(blank.to(z), dim=-1)
    for _ in range(steps):
        d = e - (u * e).sum(-1, keepdim=True) * u
        d = d if track else d.detach()
        norm = d.norm() if step_norm == "batch" else d.norm(dim=-1, keepdim=True)
        u = F.normalize(u + sphere_step * d / norm.clamp_min(1e-12), dim=-1)
    return r * u


# -- TTC -----------------------------------------------------------------------------------------
def pixel_clamp(delta: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """``delta`` cut so that ``images + delta`` stays in [0, 1] (differentiable in both)."""
    return torch.maximum(torch.minimum(delta, 1 - images), -images)


def ttc_tau(features: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    """(T3) ``||features − anchor|| / ||anchor||`` per row: how far the random start moved the
    embedding, relative to its length."""
    return (features - anchor).norm(dim=-1) / anchor.norm(dim=-1)


def ttc_counterattack(
    encode: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    anchor: torch.Tensor,
    start: torch.Tensor,
    eps: float,
    step_size: float,
    steps: int,
) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """(T4) ``steps`` signed ascent steps of ``||encode(images + δ) − anchor||²`` from ``start``,
    each projected onto the eps-ball and into [0, 1]. Returns ``[δ_0, ..., δ_K]``, the sign
    steps taken, and τ (T3) read off the first step's forward pass; all detached."""
    deltas, signs, tau = [start.detach()], [], None
    with torch.enable_grad():
        for _ in range(steps):
            delta = deltas[-1].detach().requires_grad_(True)
            features = encode(images + delta).float()
            tau = ttc_tau(features.detach(), anchor) if tau is None else tau
            (grad,) = torch.autograd.grad((features - anchor).pow(2).sum(), delta)
            signs.append(grad.sign())
            deltas.append(pixel_clamp((delta.detach() + step_size * signs[-1]).clamp(-eps, eps), images))
    return deltas, signs, tau


def ttc_weights(tau: torch.Tensor, threshold: float, beta: float, steps: int) -> torch.Tensor:
    """(T5) [B, K + 1] weights of ``δ_0 ... δ_K``: :func:`counter_weights` where
    ``τ < threshold`` (falsely stable: counterattacked), else all on ``δ_0``."""
    soft = counter_weights(beta, steps, tau.device).expand(len(tau), -1)
    hard = F.one_hot(torch.zeros_like(tau, dtype=torch.long), steps + 1).float()
    return torch.where((tau < threshold)[:, None], soft, hard)


def counter_weights(beta: float, steps: int, device=None) -> torch.Tensor:
    """(T5) ``w_k = e^{βk} / Σ_j e^{βj}``, k = 0..K: the counterattack's later steps weigh more."""
    return torch.softmax(beta * torch.arange(steps + 1, device=device, dtype=torch.float32), 0)


def weighted(deltas: list[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """``Σ_k w_k δ_k`` per sample."""
    return sum(weights[:, k].view(-1, 1, 1, 1) * d for k, d in enumerate(deltas))


def uniform_noise(images: torch.Tensor, eps: float, seeds: list[int]) -> torch.Tensor:
    """``U[-eps, eps]`` noise of each image's shape from its own seed (:func:`draw_seeds`);
    :func:`pixel_clamp` of it is TTC's random start ``δ_0``."""
    device = images.device
    draws = [
        torch.rand(images.shape[1:], generator=torch.Generator(device=device).manual_seed(s), device=device)
        for s in seeds
    ]
    return (torch.stack(draws) * 2 - 1) * eps


def draw_seeds(images: torch.Tensor, seed: int, draw: int) -> list[int]:
    """One seed per image from ``(seed, draw, the image's pixels)``: three exact integer sums of
    its pixels quantized to 1/65535, so the same image gets the same seed in any batch, order
    or device."""
    q = images.detach().mul(65535).round().to(torch.int32).flatten(1)
    index = torch.arange(q.shape[1], device=q.device)
    sums = [q.sum(1, dtype=torch.int64)]
    sums += [(q * (index % m + 1).to(torch.int32)).sum(1, dtype=torch.int64) for m in (251, 257)]
    rows = torch.stack(sums, 1).tolist()
    return [_seed_of([seed, draw, row]) for row in rows]


def _seed_of(parts) -> int:
    return int(hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:15], 16)


def differentiated(images: torch.Tensor) -> bool:
    """Whether autograd records a gradient with respect to ``images``: an attack's gradient
    step, as opposed to a prediction, a black-box query or an acceptance check."""
    return torch.is_grad_enabled() and images.requires_grad


def straight_through(x: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``value`` forward, identity backward to ``x`` (BPDA's identity approximation)."""
    return x + (value - x).detach()


# -- the wrapper -------------------------------------------------------------------------------
DELEGATED_SETS = ("visual_prompt", "text_prompt", "trained_with", "resize")


class DefendedModel(VisionLanguageModel):
    """``base`` with a test-time defense on its image embedding (module docstring). Text, logit
    scale, towers, prompts and caches are the base model's; only :meth:`encode_image` differs.
    Subclasses implement :meth:`_features` (one draw of the defended embedding)."""

    def __init__(self, base: VisionLanguageModel, settings: DefenseSettings):
        WeightVersioned.__init__(self)
        if isinstance(base, DefendedModel):
            raise MmcoaError(
                f"the model already runs the defense {base.settings.name}; defend the base model"
            )
        self.base = base
        self.settings = settings

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            base = self.__dict__["_modules"].get("base")
            if base is None:
                raise
            return getattr(base, name)

    def __setattr__(self, name: str, value) -> None:
        if name in DELEGATED_SETS and "base" in self.__dict__.get("_modules", {}):
            setattr(self.base, name, value)
        else:
            super().__setattr__(name, value)

    # -- the base model's, unchanged --
    @property
    def device(self) -> torch.device:
        return self.base.device

    @property
    def tower_prefixes(self) -> dict:  # type: ignore[override]
        return self.base.tower_prefixes

    def tokenize(self, texts):
        return self.base.tokenize(texts)

    def _encode_pixels(self, pixels):
        return self.base._encode_pixels(pixels)

    def _encode_tokens(self, tokens):
        return self.base._encode_tokens(tokens)

    def _raw_logit_scale(self):
        return self.base._raw_logit_scale()

    def token_embedding(self):
        return self.base.token_embedding()

    def preprocess(self, images):
        return self.base.preprocess(images)

    def encode_text(self, texts, normalize: bool = False):
        return self.base.encode_text(texts, normalize=normalize)

    def text_fingerprint(self) -> tuple:
        return self.base.text_fingerprint()

    def build_meta(self) -> dict:
        return self.base.build_meta()

    def describe_build(self) -> dict:
        """The base model's build, plus ``defense``: name, evaluation mode, parameters."""
        return {**self.base.describe_build(), "defense": self.settings.record()}

    def describe(self) -> str:
        return f"{self.base.describe()} + {self.settings.name} ({self.settings.evaluation})"

    # -- the defense --
    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """The defended embedding; how gradients pass is ``settings.gradient`` (module
        docstring). A pass nothing differentiates (:func:`differentiated`) is one draw of the
        defense whatever the gradient."""
        images = images.to(self.device)
        if not differentiated(images):
            features = self._features(images, 0)
        elif self.settings.gradient == "undefended":
            features = self.base.encode_image(images)
        else:
            features = self._eot(images)
        return F.normalize(features, dim=-1) if normalize else features

    def _eot(self, images: torch.Tensor) -> torch.Tensor:
        """The first draw's value; the backward pass through the mean of ``eot_samples`` draws."""
        draws = [self._features(images, k) for k in range(self.settings.eot_samples)]
        if len(draws) == 1:
            return draws[0]
        mean = torch.stack(draws).mean(0)
        return draws[0].detach() + (mean - mean.detach())

    def _features(self, images: torch.Tensor, draw: int) -> torch.Tensor:
        raise NotImplementedError


class ClipureModel(DefendedModel):
    """CLIPure-Cos (T1-T2) on ``base``."""

    settings: Clipure

    def _features(self, images: torch.Tensor, draw: int) -> torch.Tensor:
        s = self.settings
        z = self.base.encode_image(images).float()
        purify = dict(steps=s.steps, sphere_step=s.sphere_step, step_norm=s.step_norm)
        if s.gradient == "bpda" and differentiated(images):
            return straight_through(z, clipure_purify(z.detach(), self.blank_embedding(), **purify))
        track = s.gradient != "detached"
        return clipure_purify(z, self.blank_embedding(), track=track, **purify)

    def blank_embedding(self) -> torch.Tensor:
        """(T1) ``e``: the blank prompt's normalized embedding, cached until the text tower's
        weights change."""
        key = (self.base.text_fingerprint(), self.settings.blank_prompt)
        cached = self.__dict__.get("_blank")
        if cached is None or cached[0] != key:
            with torch.no_grad():
                blank = self.base.encode_text([self.settings.blank_prompt], normalize=True).float()[0]
            self.__dict__["_blank"] = cached = (key, blank)
        return cached[1]


class TTCModel(DefendedModel):
    """Test-time counterattacks (T3-T5) on ``base``."""

    settings: TTC

    def _features(self, images: torch.Tensor, draw: int) -> torch.Tensor:
        s = self.settings
        x = images.detach()
        noise = uniform_noise(x, s.eps, draw_seeds(x, s.seed, draw))
        with torch.no_grad():
            anchor = self.base.encode_image(x).float()
        start = pixel_clamp(noise, x)
        deltas, signs, tau = ttc_counterattack(
            self.base.encode_image, x, anchor, start, s.eps, s.step_size, s.steps
        )
        weights = ttc_weights(tau, s.tau, s.beta, s.steps)
        if not differentiated(images):
            return self.base.encode_image(x + weighted(deltas, weights))
        if s.gradient == "full":
            return self.base.encode_image(images + weighted(self._replayed(images, noise, signs), weights))
        return self.base.encode_image(self._bpda_input(images, deltas, tau))

    def _replayed(self, images: torch.Tensor, noise: torch.Tensor, signs: list[torch.Tensor]) -> list:
        """``δ_0 ... δ_K`` recomputed with autograd from the noise and the recorded sign steps:
        what autograd gives through (T4), where the sign has zero derivative and only the clamps
        remain."""
        s = self.settings
        deltas = [pixel_clamp(noise, images)]
        for sign in signs:
            deltas.append(pixel_clamp((deltas[-1] + s.step_size * sign).clamp(-s.eps, s.eps), images))
        return deltas

    def _bpda_input(self, images: torch.Tensor, deltas: list, tau: torch.Tensor) -> torch.Tensor:
        """The defended image with identity backward through the counterattack and the
        threshold (T5) relaxed to ``sigmoid((1 − τ / τ_thres) / T)`` in the backward pass."""
        s = self.settings
        countered = weighted(deltas, counter_weights(s.beta, s.steps, tau.device).expand(len(tau), -1))
        chosen = (tau < s.tau).float()
        soft = torch.sigmoid((1 - self._tracked_tau(images, deltas[0]) / s.tau) / s.relax_temperature)
        select = (chosen + soft - soft.detach()).view(-1, 1, 1, 1)
        attacked = straight_through(images, images.detach() + countered)
        noised = straight_through(images, images.detach() + deltas[0])
        return select * attacked + (1 - select) * noised

    def _tracked_tau(self, images: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        """(T3) with autograd through both encodings (the random start held fixed)."""
        return ttc_tau(self.base.encode_image(images + start).float(), self.base.encode_image(images).float())


Clipure.model_class, TTC.model_class = ClipureModel, TTCModel  # the wrapper each defense builds
