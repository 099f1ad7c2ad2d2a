"""Training methods by name: what each trains and its loss (paper Eq. 5-9 and baselines).

A method is a small object with ``default_towers`` (what it fine-tunes unless
``--train-towers`` says otherwise) and ``loss(ctx, images, labels) -> (loss, terms)``. It owns
what it needs beyond the model: its frozen teacher (FARE, PMG-AFT, made in ``setup``), its text
adversary and the adversarial prompts it keeps between steps (MMCoA, refreshed in
``before_step``, saved and restored with the checkpoint through ``state_dict``), and the logs
they write; the trainer knows no method by name. All adversarial examples are made by the
library's attacks, which differentiate with respect to their perturbation only, so no attack
gradient reaches an optimizer step.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F

from mmcoa.attacks.base import eval_mode
from mmcoa.attacks.bert import shared_engine
from mmcoa.attacks.pgd import PGD, ImageBudget
from mmcoa.attacks.text.bert_attack import BertAttack
from mmcoa.data.loading import BatchLoader, consecutive_batches
from mmcoa.attacks.co_attack import embedding_kl
from mmcoa.distributed import SINGLE, World, gather_objects, gather_rows, gather_with_grad
from mmcoa.models import VisionLanguageModel, ZeroShotClassifier
from mmcoa.models.prompts import text_context_for, visual_prompt_for
from mmcoa.precision import autocast_for
from mmcoa.registry import Registry
from mmcoa.seeding import ADVPT_STREAM, VP_STREAM, derived_generator
from mmcoa.errors import MmcoaError
from mmcoa.train.objectives import contrastive_loss, fare_loss, mmcoa_loss, pmg_aft_loss

if TYPE_CHECKING:  # the configuration looks methods up by name: no import back at run time
    from mmcoa.train.config import TrainConfig

METHODS: Registry[type[Method]] = Registry("method")

# The settings that differ between methods, in pixel units as TrainConfig holds them; a field
# left None takes its method's value (``Method.defaults``). MMCoA's come from the published MMCoA
# code (the paper's Sec. IV-A3 lost its numbers): AdamW betas 0.9/0.98, wd 0.2, constant lr 1e-5
# (the code used 1e-6), training PGD L-inf eps 1/255, step 1/255, 10 steps.
MMCOA_DEFAULTS = dict(
    optimizer="adamw",
    lr=1e-5,
    weight_decay=0.2,
    schedule="constant",
    warmup_steps=0,
    train_eps=1 / 255,
    train_step_size=1 / 255,
    train_steps=10,
    train_momentum=0.0,
)
# TeCoA (Mao et al. 2023, finetuning.py): SGD momentum 0.9, no weight decay, cosine with 1000
# warm-up steps, PGD eps 1/255, 2 steps of 1/255 (its README); lr 1e-5, the top of the range the
# MMCoA paper tuned TeCoA in (1e-7..1e-5; the code's default is 1e-7). Unlisted keys: MMCoA's.
TECOA_DEFAULTS = {
    **MMCOA_DEFAULTS,
    "optimizer": "sgd",
    "weight_decay": 0.0,
    "schedule": "cosine",
    "warmup_steps": 1000,
    "train_steps": 2,
}
# The published MMCoA code's optimizer (its CIFAR-100 config): Adam with coupled L2 0.2 on every
# parameter, lr 1e-6; the ``published`` profile gives them to MMCoA and FT-standard.
MMCOA_PUBLISHED = dict(optimizer="adam", lr=1e-6)
# The training attack's gradient leak was read in MMCoA's loop. TeCoA's loop has it too, but its
# GradScaler divides the leaked gradients by the loss scale (about 2^16) before the step; the
# other baselines' loops were not read for it. Under the published profile they keep it off.
NO_LEAK = {"attack_grad_leak": False}


@dataclass
class StepContext:
    """What a method sees at one training step."""

    model: VisionLanguageModel
    prompts: list[str]
    config: TrainConfig
    generator: torch.Generator  # or RowsOf under torchrun (mmcoa.attacks.pgd)
    batch_indices: list[int] | None = None  # the batch's dataset indices
    world: World = SINGLE
    # The loss is the global batch's on every rank and the text tower has no active dropout, so
    # each rank may encode only its share of the prompts (see encode_prompts).
    share_text: bool = False
    extras: dict = field(default_factory=dict)

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """[C, D] features of ``prompts`` with gradient. Under torchrun, when every rank computes
        the same global loss (``share_text``), each rank encodes only its share of the prompts
        and the features are gathered with the local rows' gradient × world size, as image
        features are: after the gradient average the text tower's gradient is one process's,
        for 1/world of the text compute and memory per rank."""
        if not (self.share_text and self.world.distributed and len(prompts) >= self.world.size):
            return self.model.encode_text(prompts)
        return gather_with_grad(self.model.encode_text(self.world.shard(prompts)), self.world)

    def gather(self, features: torch.Tensor) -> torch.Tensor:
        """The global batch's features for batch-coupled losses (identity in one process)."""
        return gather_with_grad(features, self.world)

    def gather_labels(self, labels: torch.Tensor) -> torch.Tensor:
        return gather_rows(labels, self.world)

    def autocast(self):
        """The training precision (``config.precision``) on the model's device."""
        return autocast_for(self.config.precision, self.model.device)


class Method:
    """Base of every training method.

    A registered method's docstring's first line describes it (``mmcoa train --help``, the
    exported model card); ``defaults`` are its optimizer, schedule and training-PGD settings
    (what a TrainConfig field left None takes), ``published`` what differs under the published
    profile; ``default_towers`` what it fine-tunes."""

    name = "method"
    defaults: ClassVar[dict] = MMCOA_DEFAULTS
    # Settings and switches that differ under the ``published`` profile from the profile's
    # switch values and ``defaults`` (mmcoa.profiles; a value given explicitly still wins).
    published: ClassVar[dict] = {}
    default_towers: tuple[str, ...] = ("image", "text")
    # True when the loss couples the batch's samples (the contrastive loss's text→image term) and
    # so is computed on the gathered global batch under torchrun; False for per-sample means.
    global_batch_loss = False
    # The method's own logs in the run folder (JSON lines, each row with the 0-based ``step`` it
    # was written before); a resumed run cuts them at its checkpoint, as it cuts metrics.jsonl.
    logs: tuple[str, ...] = ()

    @classmethod
    def description(cls) -> str:
        """The first line of the method's docstring."""
        return (cls.__doc__ or cls.__name__).strip().splitlines()[0].rstrip(".")

    def setup(self, model: VisionLanguageModel, image_size, towers, config) -> None:
        """Choose the trainable parameters (and add prompt modules)."""
        model.set_trainable(towers)

    def class_prompts(self, dataset, config, model: VisionLanguageModel) -> list[str]:
        """The class prompts the losses use (the dataset's, or ``config.template``'s)."""
        return dataset.prompts(config.template)

    def prepare(self, model: VisionLanguageModel, dataset, indices: list[int], config) -> None:
        """Work done once before the first step (after a resume too); nothing by default."""

    def before_step(self, step: int, ctx: StepContext) -> dict[str, dict]:
        """Work at the start of step ``step`` (0-based), before the loss, with the model in eval
        mode; returns the rows to append to the method's ``logs``, by log name."""
        return {}

    def state_dict(self) -> dict:
        """What the method keeps between steps, saved in each checkpoint."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s values on resume."""

    def loss(self, ctx: StepContext, images, labels) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError


class WithFrozenTeacher(Method):
    """A method whose loss compares with the model as it was when training started: ``setup``
    keeps an eval-mode, gradient-free copy as ``self.frozen``."""

    def setup(self, model, image_size, towers, config) -> None:
        self.frozen = frozen_copy(model)
        super().setup(model, image_size, towers, config)


def train_pgd(ctx: StepContext, images, labels) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Training-time PGD (paper: L-inf, eps 1/255, step 1/255, 2 steps by default) against the
    current model and the clean class prompts; precision follows training. Returns the
    adversarial images and, with ``attack_grad_leak``, :func:`attack_leak` (else None)."""
    attack = PGD(**dataclasses.asdict(train_budget(ctx.config)))
    classifier = ZeroShotClassifier(ctx.model, ctx.prompts)
    if not ctx.config.attack_grad_leak:
        return attack(classifier, images, labels, ctx.generator).images, None
    visited: list[torch.Tensor] = []
    classifier = _Recording(classifier, visited)
    adversarial = attack(classifier, images, labels, ctx.generator).images
    return adversarial, attack_leak(ctx, visited[: attack.n_steps], labels)


class _Recording:
    """A classifier that remembers every input PGD queries it with (its iterates)."""

    def __init__(self, classifier: ZeroShotClassifier, visited: list):
        self.classifier, self.visited, self.model = classifier, visited, classifier.model

    def logits(self, images, class_embeddings=None):
        self.visited.append(images.detach())
        return self.classifier.logits(images, class_embeddings)


def attack_leak(ctx: StepContext, visited: list[torch.Tensor], labels) -> torch.Tensor:
    """The published training loop's gradient leak as a loss term (``attack_grad_leak``): its PGD
    calls ``loss.backward()`` at each of its n iterates x_0..x_{n-1} after ``zero_grad``, so the
    step applies the training gradient plus sum_k grad CE(x_k) (CE of the iterate against the
    class prompts, a batch mean). Sum_k CE(x_k) on the detached iterates, added to the loss, has
    exactly that gradient (``docs/deviations.md``, row 3)."""
    to_logits = class_logits(ctx.model, ctx.prompts)
    return sum(F.cross_entropy(to_logits(x), labels) for x in visited)


def feature_logits(model: VisionLanguageModel, prompts: list[str]):
    """``image features -> logit_scale · cos(features, g(prompt_c))`` (paper Eq. 1), with
    gradient through the text tower (the prompts are encoded once, here)."""
    text = F.normalize(model.encode_text(prompts), dim=-1)
    return lambda features: model.logit_scale * F.normalize(features, dim=-1) @ text.T


def class_logits(model: VisionLanguageModel, prompts: list[str]):
    """``images -> logit_scale · cos(f(x), g(prompt_c))``, differentiable with respect to both
    towers."""
    to_logits = feature_logits(model, prompts)
    return lambda images: to_logits(model.encode_image(images))


def contrastive(ctx: StepContext, images, prompts, labels) -> torch.Tensor:
    """The contrastive loss (paper Eq. 7-8) over the global batch, with the configured
    ``contrastive_targets`` (:func:`~mmcoa.train.objectives.contrastive_loss`)."""
    model = ctx.model
    return contrastive_loss(
        ctx.gather(model.encode_image(images)),
        ctx.encode_prompts(prompts),
        ctx.gather_labels(labels),
        model.logit_scale,
        ctx.config.contrastive_targets,
    )


def with_leak(loss: torch.Tensor, terms: dict, leak: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
    """``loss`` plus the training attack's leaked gradient term, logged as ``attack_leak``."""
    if leak is None:
        return loss, terms
    return loss + leak, {**terms, "attack_leak": leak.detach()}


@METHODS.register("ft-standard")
class FTStandard(Method):
    """Standard fine-tuning on clean images (the paper's FT-standard).

    The class-aware contrastive loss on clean images, both towers; MMCoA's settings (the
    published MMCoA code's FT-standard)."""

    global_batch_loss = True
    published = MMCOA_PUBLISHED

    def prepare(self, model, dataset, indices, config):
        if config.ft_standard_loss == "image-feature-ce":
            check_features_as_logits(model, dataset)

    def loss(self, ctx, images, labels):
        if ctx.config.ft_standard_loss == "image-feature-ce":
            loss = F.cross_entropy(ctx.model.encode_image(images, normalize=True), labels)
        else:
            loss = contrastive(ctx, images, ctx.prompts, labels)
        return loss, {"clean": loss.detach()}


def check_features_as_logits(model: VisionLanguageModel, dataset) -> None:
    """``ft_standard_loss: image-feature-ce`` reads the D image features as logits of D
    classes: refuse a dataset with more classes than that, before any work."""
    with torch.no_grad():
        dim = model.encode_text(dataset.prompts()[:1]).shape[-1]
    if len(dataset.classnames) > dim:
        raise MmcoaError(
            f"ft_standard_loss image-feature-ce (the published code's FT-standard) reads the "
            f"{dim} image features as class logits: {dataset.name} has {len(dataset.classnames)} "
            f"classes; use ft_standard_loss contrastive"
        )


def tecoa_loss(ctx: StepContext, images, labels) -> tuple[torch.Tensor, dict]:
    """TeCoA's text-guided contrastive loss as its published training loop computes it:
    image→text cross-entropy of ``logit_scale · cos(f(x_adv), g(prompt_c))`` over the C class
    prompts with the true label (a per-sample mean), x_adv made by PGD against those prompts;
    with the training attack's leak when ``attack_grad_leak``. Returns the loss and its terms."""
    adversarial, leak = train_pgd(ctx, images, labels)
    loss = F.cross_entropy(class_logits(ctx.model, ctx.prompts)(adversarial), labels)
    return with_leak(loss, {"image_adv": loss.detach()}, leak)


@METHODS.register("tecoa")
class TeCoA(Method):
    """TeCoA, text-guided contrastive adversarial training: image-to-text loss on PGD images.

    TeCoA (Mao et al. 2023): adversarial images (PGD against the class prompts) classified
    against the clean class prompts, image→text cross-entropy only (:func:`tecoa_loss`, as the
    published code); image tower. ``tecoa-symmetric`` adds the text→image term."""

    defaults = TECOA_DEFAULTS
    published = NO_LEAK
    default_towers = ("image",)

    def loss(self, ctx, images, labels):
        return tecoa_loss(ctx, images, labels)


@METHODS.register("tecoa-symmetric")
class TeCoASymmetric(Method):
    """TeCoA with the text-to-image term added.

    The symmetric class-aware contrastive loss (image→text and text→image, paper Eq. 7 with
    clean prompts): this toolkit's TeCoA before it followed the published loop."""

    defaults = TECOA_DEFAULTS
    published = NO_LEAK
    default_towers = ("image",)
    global_batch_loss = True

    def loss(self, ctx, images, labels):
        adversarial, leak = train_pgd(ctx, images, labels)
        loss = contrastive(ctx, adversarial, ctx.prompts, labels)
        return with_leak(loss, {"image_adv": loss.detach()}, leak)


@METHODS.register("mmcoa")
class MMCoA(Method):
    """MMCoA, multimodal contrastive adversarial training: PGD images and BERT-Attack prompts.

    MMCoA (paper Eq. 7-9): alpha · L(adv image, clean text) + beta · L(clean image, adv text)
    (alpha: ``adv_image_weight``, beta: ``adv_text_weight``); both towers. alpha = 1, beta = 0
    and alpha = 0, beta = 1 are the paper's ablations."""

    global_batch_loss = True
    published = MMCOA_PUBLISHED
    logs = ("adversarial_prompts.jsonl",)  # the prompt set, a row each time a refresh changed it

    def __init__(self, text_attack: BertAttack | None = None):
        """``text_attack``: the BERT-Attack engine to use (e.g. a benchmark's own); by default
        ``setup`` builds one from ``config.mlm``, ``k`` and ``max_words``."""
        self.text_attack = text_attack
        self.adversarial_prompts: list[str] | None = None

    def setup(self, model, image_size, towers, config):
        super().setup(model, image_size, towers, config)
        if config.adv_text_weight and self.text_attack is None:
            self.text_attack = shared_engine(
                config.mlm,
                config.device,
                config.k,
                config.max_words,
                candidate_position=config.candidate_position,
            )
        elif not config.adv_text_weight:
            self.text_attack = None  # beta = 0: no adversarial prompts

    def before_step(self, step, ctx):
        """BERT-Attack on the class prompts against the current text tower every
        ``text_attack_every`` steps, under the training precision; under torchrun each rank
        attacks its share of the prompts and the shares are gathered (BERT-Attack is
        deterministic per prompt, so the set is one process's)."""
        if self.text_attack is None or (
            self.adversarial_prompts is not None and step % ctx.config.text_attack_every
        ):
            return {}
        with ctx.autocast():
            edits = self.text_attack.attack_embeddings(ctx.world.shard(ctx.prompts), ctx.model)
        prompts = gather_objects([e.adversarial for e in edits], ctx.world)
        changed = prompts != self.adversarial_prompts
        self.adversarial_prompts = prompts
        return {"adversarial_prompts.jsonl": {"step": step, "prompts": prompts}} if changed else {}

    def state_dict(self):
        return {"adversarial_prompts": self.adversarial_prompts}

    def load_state_dict(self, state):
        self.adversarial_prompts = state.get("adversarial_prompts")

    def loss(self, ctx, images, labels):
        config, model = ctx.config, ctx.model
        adv_features = clean_features = clean_text = adv_text = leak = None
        if config.adv_image_weight:
            adversarial, leak = train_pgd(ctx, images, labels)
            adv_features = model.encode_image(adversarial)
            clean_text = ctx.encode_prompts(ctx.prompts)
        if config.adv_text_weight:
            clean_features = model.encode_image(images)
            adv_text = ctx.encode_prompts(self.adversarial_prompts)
        loss, terms = mmcoa_loss(
            _gathered(ctx, adv_features),
            _gathered(ctx, clean_features),
            clean_text,
            adv_text,
            ctx.gather_labels(labels),
            model.logit_scale,
            alpha=config.adv_image_weight,
            beta=config.adv_text_weight,
            targets=config.contrastive_targets,
        )
        return with_leak(loss, terms, leak)


def _gathered(ctx: StepContext, features: torch.Tensor | None) -> torch.Tensor | None:
    return None if features is None else ctx.gather(features)


@METHODS.register("fare")
class FARE(WithFrozenTeacher):
    """FARE, unsupervised adversarial fine-tuning of the image encoder (embedding distance).

    FARE (Schlarmann et al. 2024): the image embedding of x_adv is pulled to the frozen original
    model's embedding of x; x_adv maximizes that same distance. Settings: its FARE^4 training
    command (AdamW lr 1e-5, wd 1e-4, cosine with 1400 warm-up steps, PGD eps 4/255, 10 steps of
    1/255 with momentum 0.9, as its pgd_train.py; FARE^2: train_eps 2/255)."""

    defaults = dict(
        optimizer="adamw",
        lr=1e-5,
        weight_decay=1e-4,
        schedule="cosine",
        warmup_steps=1400,
        train_eps=4 / 255,
        train_step_size=1 / 255,
        train_steps=10,
        train_momentum=0.9,
    )
    default_towers = ("image",)

    def loss(self, ctx, images, labels):
        with torch.no_grad():
            target = self.frozen.encode_image(images)
        loss = fare_loss(ctx.model.encode_image(fare_adversarial(ctx, target, images)), target)
        return loss, {"fare": loss.detach()}


def fare_adversarial(ctx: StepContext, original: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """FARE's inner attack (Sim-CLIP's too): ``x_adv`` maximizing ``‖f(x_adv) − f₀(x)‖²₂`` per
    sample within the training budget and momentum, the model in eval mode (modes restored)."""
    model = ctx.model
    with eval_mode(model):
        return maximize_in_train_budget(
            lambda x: (model.encode_image(x) - original).pow(2).sum(-1), images, ctx.config, ctx.generator
        )


@METHODS.register("pmg-aft")
class PMGAFT(WithFrozenTeacher):
    """PMG-AFT, pre-trained-model-guided adversarial fine-tuning.

    PMG-AFT (Wang et al. 2024): CE on adversarial images + KL to the clean prediction + KL to
    the frozen pre-trained model's prediction; image tower. Settings: PMG_AFT.py and its README
    command (SGD momentum 0.9, lr 5e-5, no weight decay, cosine with 1000 warm-up steps, PGD eps
    1/255, 2 steps of 1/255)."""

    defaults = {**TECOA_DEFAULTS, "lr": 5e-5}
    published = NO_LEAK
    default_towers = ("image",)

    def loss(self, ctx, images, labels):
        adv, leak = train_pgd(ctx, images, labels)
        logits = class_logits(ctx.model, ctx.prompts)  # with gradient, so any tower can train
        with torch.no_grad():
            original = ZeroShotClassifier(self.frozen, ctx.prompts).logits(adv)
        return with_leak(*pmg_aft_loss(logits(adv), logits(images), original, labels), leak)


@METHODS.register("vp")
class VisualPrompting(Method):
    """Adversarial visual prompting (a learned pixel padding; the encoders stay frozen).

    A learnable padding prompt (Bahng et al. 2022) trained with the TeCoA loss
    (:func:`tecoa_loss`) while the whole model stays frozen: ``vp_prompt`` ``frame`` (a 4-px
    frame on the [0, 1] pixels at the dataset's resolution, zero start; MMCoA's optimizer with a
    2-step training PGD) or, under the published profile, TeCoA's code's ``pad30`` (a 30-px
    border added after the resize and normalisation, N(0, 1) start, SGD lr 40, no decay)."""

    defaults = {**MMCOA_DEFAULTS, "train_steps": 2}
    published = {**NO_LEAK, "optimizer": "sgd", "lr": 40.0, "weight_decay": 0.0}
    default_towers = ()

    def setup(self, model, image_size, towers, config):
        model.set_trainable(towers)
        start = derived_generator(config.seed, VP_STREAM)
        model.visual_prompt = visual_prompt_for(config.vp_prompt, model, image_size, start)

    def loss(self, ctx, images, labels):
        return tecoa_loss(ctx, images, labels)


@METHODS.register("advpt")
class AdvPT(Method):
    """AdvPT, adversarial prompt tuning (learned text context tokens; the encoders stay frozen).

    Adversarial prompt tuning (AdvPT, Zhang et al. 2023; paper Table VII): learnable text
    context vectors (``n_ctx``, CoOp-style, starting from "a photo of a") aligned with the
    embeddings of adversarial images made once, before training, against the frozen image
    encoder alone (PGD maximizing KL(softmax(f(x)) ‖ softmax(f(x_adv))) over embedding
    dimensions, as the paper describes AdvPT's attack). Loss: cross-entropy of
    ``logit_scale · cos(f(x_adv), g(prompt_c))`` over the class prompts; the model is frozen. No
    published settings ported yet: MMCoA's optimizer with a 2-step training PGD."""

    defaults = {**MMCOA_DEFAULTS, "train_steps": 2}
    default_towers = ()

    def setup(self, model, image_size, towers, config):
        model.set_trainable(towers)
        model.text_prompt = text_context_for(model, config.n_ctx, seed=config.seed)

    def class_prompts(self, dataset, config, model):
        return dataset.prompts(model.text_prompt.template)

    def prepare(self, model, dataset, indices, config):
        """Adversarial image embeddings of every training item, in ``indices`` order (kept on
        the CPU; seeded per chunk, so a resumed run recomputes the same ones)."""
        model.eval()
        chunks = []
        size = config.batch_size
        batches = consecutive_batches(indices, size)
        for batch in BatchLoader(
            dataset, batches, device=model.device, workers=config.workers, seed=config.seed
        ):
            generator = derived_generator(
                config.seed, batch.position * size, ADVPT_STREAM, device=model.device
            )
            chunks.append(image_only_adversarial_features(model, batch.images, config, generator).cpu())
        self.row_of = {index: row for row, index in enumerate(indices)}
        self.adversarial_features = torch.cat(chunks)

    def loss(self, ctx, images, labels):
        rows = torch.tensor([self.row_of[i] for i in ctx.batch_indices])
        adv_features = self.adversarial_features[rows].to(images.device)
        loss = F.cross_entropy(feature_logits(ctx.model, ctx.prompts)(adv_features), labels)
        return loss, {"prompt_adv": loss.detach()}


def image_only_adversarial_features(model, images, config, generator) -> torch.Tensor:
    """f(x_adv) for PGD maximizing KL(softmax(f(x)) ‖ softmax(f(x_adv))): no text involved."""
    with torch.no_grad():
        clean = model.encode_image(images)
    adv = maximize_in_train_budget(
        lambda x: embedding_kl(clean, model.encode_image(x)), images, config, generator
    )
    with torch.no_grad():
        return model.encode_image(adv)


def train_budget(config: TrainConfig) -> ImageBudget:
    """The training attack's budget: ``train_eps``, ``train_step_size``, ``train_steps`` and the
    training ``precision`` (L-inf, random start)."""
    return ImageBudget(
        eps=config.train_eps,
        step_size=config.train_step_size,
        n_steps=config.train_steps,
        precision=config.precision,
    )


def maximize_in_train_budget(loss_fn, images, config, generator) -> torch.Tensor:
    """:func:`~mmcoa.attacks.pgd.maximize` within :func:`train_budget`, with the training PGD's
    ``train_momentum`` (FARE's 0.9)."""
    return train_budget(config).maximize(loss_fn, images, generator, momentum=config.train_momentum)


def frozen_copy(model: VisionLanguageModel) -> VisionLanguageModel:
    """An eval-mode, gradient-free copy of the model at the start of training (the teacher of
    FARE and PMG-AFT): no dropout, fixed targets, for the whole run. It shares the tokenizer."""
    frozen = copy.deepcopy(model, memo=model.copy_memo()).eval()
    frozen.requires_grad_(False)
    return frozen


def method_description(name: str) -> str:
    """A method's one-line description (its docstring's first line); the name itself for a
    method this version does not know (a run saved by another version)."""
    return METHODS.get(name).description() if name in METHODS else name
