"""Image-text retrieval attacks (paper Table VI): the threat models that
:func:`mmcoa.eval.retrieval.evaluate_retrieval` measures R@K under.

Each image is perturbed once, with a loss over all of its captions, so no per-caption copy of an
image overwrites another (``docs/deviations.md``, row 5). ``clean``: no attack. ``bert``:
BERT-Attack on every caption (paper Eq. 4), images clean. ``charmer``: the same objective with
Charmer's character edits (:mod:`mmcoa.attacks.charmer`), images clean. ``pgd``: L-inf PGD on
``-Σ_c cos(f(x'), g(c))`` over the image's clean captions. ``coattack``: captions BERT-attacked
first, then each image ascends ``KL(softmax(e_clean) ‖ softmax(e_adv)) + alpha · mean_c
KL(softmax(t_adv_c) ‖ softmax(e_adv))`` (the mean keeps Co-Attack's per-pair weighting,
``docs/deviations.md``, row 12). ``sga`` (Lu et al. 2023): captions BERT-attacked away from the
clean image; each image pushed away from its set of adversarial captions at scales {1, 0.5,
0.75, 1.25, 1.5}, with fresh noise ``N(0, noise_std²)`` on each rescaled copy at each step
(none on the unscaled one; :func:`mmcoa.attacks.sga.scaled_copies`); then the clean captions
attacked again, away from the adversarial image. Settings: ``docs/attacks.md``, "Retrieval".
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial
from typing import ClassVar, Sequence

import torch

from mmcoa.attacks.base import FieldGroup, build_registered, check_range, eval_mode, same_setting
from mmcoa.attacks.bert import UsesBertAttack
from mmcoa.attacks.charmer import UsesCharmer
from mmcoa.attacks.co_attack import CoAttack, embedding_kl
from mmcoa.attacks.pgd import ImageBudget
from mmcoa.attacks.sga import ScaleSet, away_from_image, scaled_copies
from mmcoa.registry import Registry

TEXT_BATCH = 256
RETRIEVAL_ATTACKS: Registry[type[RetrievalAttack]] = Registry("retrieval attack")


def per_image_sum(values: torch.Tensor, owner: torch.Tensor, n_images: int) -> torch.Tensor:
    """``out[i] = Σ_{j: owner[j] = i} values[j]``: a per-caption quantity summed per image."""
    out = torch.zeros(n_images, dtype=values.dtype, device=values.device)
    return out.index_add(0, owner.to(values.device), values)


def per_image_mean(values: torch.Tensor, owner: torch.Tensor, n_images: int) -> torch.Tensor:
    """``out[i]`` = the mean of ``values[j]`` over the captions ``j`` of image ``i`` (0 for an
    image without captions)."""
    counts = torch.bincount(owner.to(values.device), minlength=n_images).clamp_min(1)
    return per_image_sum(values, owner, n_images) / counts.to(values.dtype)


@dataclass
class RetrievalAttack(FieldGroup):
    """A retrieval threat model: optionally rewrites captions (:meth:`attack_captions`, once for
    the whole dataset), then perturbs image batches (:meth:`attack_images`) given, for the
    batch, the normalized embeddings ``text`` [M, D] of the captions in use and ``owner`` [M],
    the batch position of each caption's image. Parameters are in pixel units (2/255).

    An ``image_guided`` attack's caption step needs image embeddings: it runs before the image
    step, guided by the clean images, and again after it, guided by the adversarial images.

    Shape (:meth:`attack_images`):
        - images: ``(N, 3, H, W)``, float pixels in [0, 1]; text: ``(M, D)``, the normalized
          embeddings of the batch's M captions in use; owner: ``(M,)``, each caption's image
          in ``[0, N)``.
        - output: ``(N, 3, H, W)`` in [0, 1], within ``eps`` (L-inf) of ``images``.
        - :meth:`attack_captions`: M captions (and, for ``image_guided`` attacks, ``(M, D)``
          normalized embeddings of each caption's image) → M captions and M word counts.
    """

    name: ClassVar[str] = "attack"
    threat: ClassVar[str] = ""  # one of mmcoa.attacks.base.THREATS
    text_unit: ClassVar[str] = ""  # as Attack.text_unit: "word", "character" or none
    image_guided: ClassVar[bool] = False

    def prepare(self, device: str) -> None:
        """Load what the attack needs (a masked LM) before any evaluation work."""

    def params(self) -> dict:
        return dataclasses.asdict(self)

    def attack_captions(
        self, model, captions: list[str], image_embeddings: torch.Tensor | None = None
    ) -> tuple[list[str], list[int]]:
        """The captions to use and the words changed in each (unchanged by default);
        ``image_embeddings[j]`` is the normalized embedding of caption j's image (only for
        ``image_guided`` attacks)."""
        return list(captions), [0] * len(captions)

    def attack_images(
        self,
        model,
        images: torch.Tensor,
        text: torch.Tensor,
        owner: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        return images


def build_retrieval_attack(name: str, **params) -> RetrievalAttack:
    """The retrieval attack ``name`` with ``params``; unknown names or parameters raise a
    one-line error listing what is accepted."""
    return build_registered(RETRIEVAL_ATTACKS, name, **params)


@RETRIEVAL_ATTACKS.register("clean")
@dataclass
class CleanRetrieval(RetrievalAttack):
    """No attack. No arguments; shape as for :class:`RetrievalAttack`, images and captions
    unchanged."""

    threat: ClassVar[str] = "clean"


@dataclass
class RetrievalBudget(ImageBudget):
    """The retrieval attacks' image budget: Co-Attack's and SGA's setting, L-inf eps 2/255,
    sign step 0.5/255, 10 steps, fp32, and ``random_start`` (uniform in the ball; default
    True) as a field (pixel units)."""

    eps: float = same_setting(ImageBudget, "eps", 2 / 255)
    step_size: float = same_setting(ImageBudget, "step_size", 0.5 / 255)
    n_steps: int = same_setting(ImageBudget, "n_steps", 10)
    random_start: bool = True


@RETRIEVAL_ATTACKS.register("pgd")
@dataclass
class RetrievalPGD(RetrievalBudget, RetrievalAttack):
    """L-inf PGD on ``-Σ_c cos(f(x'), g(c))`` over each image's clean captions.

    Arguments (pixel units):
        eps, step_size, n_steps, precision, random_start: the image budget
            (:class:`RetrievalBudget`).

    Shape: as for :class:`RetrievalAttack`; captions stay clean.
    """

    threat: ClassVar[str] = "image"

    def attack_images(self, model, images, text, owner, generator=None):
        text = text.detach().float()

        def loss_fn(adv):
            return pgd_loss(model.encode_image(adv, normalize=True).float(), text, owner)

        with eval_mode(model):
            return self.maximize(loss_fn, images, generator)


def pgd_loss(image_embeddings: torch.Tensor, text: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
    """Per image: minus the summed cosine to each of its captions (inputs normalized)."""
    cosines = (image_embeddings[owner.to(image_embeddings.device)] * text.to(image_embeddings.device)).sum(-1)
    return -per_image_sum(cosines, owner, len(image_embeddings))


def attack_captions_kl(attack: UsesBertAttack | UsesCharmer, model, captions) -> tuple[list[str], list[int]]:
    """Paper Eq. 4 on every caption with ``attack``'s engine (BERT-Attack or Charmer): the edited
    captions and the words (Charmer: character edits) changed in each."""
    with eval_mode(model):
        edits = attack.engine.attack_embeddings(list(captions), model)
    return [e.adversarial for e in edits], [e.changed_words for e in edits]


@RETRIEVAL_ATTACKS.register("bert")
@dataclass
class RetrievalBert(UsesBertAttack, RetrievalAttack):
    """Adversarial captions only; images clean.

    Arguments:
        mlm, k, max_words, candidate_position: BERT-Attack's masked LM, candidates per word, word
            budget and where candidates are read
            (:class:`~mmcoa.attacks.bert.UsesBertAttack`).

    Shape: as for :class:`RetrievalAttack`; the images come back unchanged.
    """

    threat: ClassVar[str] = "text"

    def attack_captions(self, model, captions, image_embeddings=None):
        return attack_captions_kl(self, model, captions)


@RETRIEVAL_ATTACKS.register("charmer")
@dataclass
class RetrievalCharmer(UsesCharmer, RetrievalAttack):
    """Adversarial captions by Charmer (character edits); images clean.

    Arguments:
        max_edits, n_positions, alphabet: the Levenshtein budget k, the positions kept per edit
            (rho) and the characters written (:class:`~mmcoa.attacks.charmer.UsesCharmer`).

    Shape: as for :class:`RetrievalAttack`; the images come back unchanged; the counts are
    character edits.
    """

    threat: ClassVar[str] = "text"

    def attack_captions(self, model, captions, image_embeddings=None):
        return attack_captions_kl(self, model, captions)


@RETRIEVAL_ATTACKS.register("coattack")
@dataclass
class RetrievalCoAttack(RetrievalBudget, UsesBertAttack, RetrievalAttack):
    """Co-Attack for retrieval (see the module docstring). ``step_size=None`` means
    ``eps / n_steps · 1.25`` (the Co-Attack project's setting).

    Arguments (eps and step_size in pixel units):
        mlm, k, max_words, candidate_position: BERT-Attack's masked LM, candidates per word, word
            budget and where candidates are read
            (:class:`~mmcoa.attacks.bert.UsesBertAttack`).
        eps, n_steps, precision, random_start: the image budget (:class:`RetrievalBudget`).
        step_size (float or None): sign step. (Default: None, i.e. eps / n_steps · 1.25)
        text_weight (float): weight of the mean caption KL against the clean-image KL (the
            published code's ``alpha``). (Default: 3.0)

    Shape: as for :class:`RetrievalAttack`; the captions are attacked first.
    """

    threat: ClassVar[str] = "multimodal"
    step_size: float | None = same_setting(ImageBudget, "step_size", None)
    text_weight: float = same_setting(CoAttack, "text_weight")

    def __post_init__(self):
        check_range("n_steps", self.n_steps, 1, 1e9, low_open=False)
        if self.step_size is None:
            self.step_size = self.eps / self.n_steps * 1.25
        super().__post_init__()
        check_range("text_weight", self.text_weight, 0, 1e6, low_open=False)

    def attack_captions(self, model, captions, image_embeddings=None):
        return attack_captions_kl(self, model, captions)

    def attack_images(self, model, images, text, owner, generator=None):
        text = text.detach().float()
        with eval_mode(model):
            with torch.no_grad():
                clean = model.encode_image(images, normalize=True).float()

            def loss_fn(adv):
                return coattack_loss(
                    clean, model.encode_image(adv, normalize=True).float(), text, owner, self.text_weight
                )

            return self.maximize(loss_fn, images, generator)


def coattack_loss(
    clean: torch.Tensor, moving: torch.Tensor, text: torch.Tensor, owner: torch.Tensor, alpha: float
) -> torch.Tensor:
    """Per image: KL(clean ‖ adv) + alpha · the MEAN over its captions of KL(t_adv ‖ adv).

    Co-Attack's retrieval loss is per (image, caption) pair, KL_img + alpha · KL_txt (its
    ``run_before_fusion``, on images repeated once per caption); averaging the text term over
    the image's captions keeps that weighting for an image attacked once with all of them (an
    image with n identical captions gets exactly the per-pair loss). A sum would weigh the text
    term n times (alpha 15 for MSCOCO's 5 captions)."""
    owner = owner.to(moving.device)
    guided = embedding_kl(text.to(moving.device), moving[owner])
    return embedding_kl(clean, moving) + alpha * per_image_mean(guided, owner, len(moving))


@RETRIEVAL_ATTACKS.register("sga")
@dataclass
class RetrievalSGA(ScaleSet, RetrievalBudget, UsesBertAttack, RetrievalAttack):
    """Set-level Guidance Attack for retrieval (see the module docstring): image-guided caption
    edits, then a multi-scale image step against each image's set of adversarial captions;
    ``noise_std`` is the std of the Gaussian noise added before each rescale (0 disables).

    Arguments (eps and step_size in pixel units):
        mlm, k, max_words, candidate_position: BERT-Attack's masked LM, candidates per word, word
            budget and where candidates are read
            (:class:`~mmcoa.attacks.bert.UsesBertAttack`).
        eps, step_size, n_steps, precision, random_start: the image budget
            (:class:`RetrievalBudget`).
        scales (tuple of float): resize factors of the image set, besides the image itself.
            (Default: ``(0.5, 0.75, 1.25, 1.5)``)
        noise_std (float): std of the noise added before each rescale, pixel units; 0
            disables it. (Default: 0.05)

    Shape: as for :class:`RetrievalAttack`; ``image_guided`` (its caption step needs the
    images' embeddings).
    """

    threat: ClassVar[str] = "multimodal"
    image_guided: ClassVar[bool] = True

    def attack_captions(self, model, captions, image_embeddings=None):
        if image_embeddings is None:
            raise ValueError("sga edits captions away from their images: pass image_embeddings")
        with eval_mode(model):
            score = away_from_image(partial(encode_texts, model), image_embeddings)
            edits = self.engine.attack(list(captions), score)
        return [e.adversarial for e in edits], [e.changed_words for e in edits]

    def attack_images(self, model, images, text, owner, generator=None):
        text = text.detach().float()
        with eval_mode(model):
            loss_fn = partial(
                sga_loss,
                model,
                text=text,
                owner=owner,
                scales=self.scales,
                noise_std=self.noise_std,
                generator=generator,
            )
            return self.maximize(loss_fn, images, generator)


def sga_loss(
    model,
    images: torch.Tensor,
    text: torch.Tensor,
    owner: torch.Tensor,
    scales: tuple[float, ...],
    noise_std: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Per image: minus the summed cosine of the image and each of its scaled copies (noised
    before resizing when ``noise_std > 0``, :func:`~mmcoa.attacks.sga.scaled_copies`) to each of
    its captions (SGA's set-level image loss, which sums over an image's captions; ``text``
    normalized)."""
    return sum(
        pgd_loss(model.encode_image(copy, normalize=True).float(), text, owner)
        for copy in scaled_copies(images, scales, noise_std, generator)
    )


@torch.no_grad()
def encode_texts(model, captions: Sequence[str], batch_size: int = TEXT_BATCH) -> torch.Tensor:
    """Normalized float32 text embeddings [N, D], ``batch_size`` captions at a time."""
    parts = [
        model.encode_text(list(captions[i : i + batch_size]), normalize=True).float()
        for i in range(0, len(captions), batch_size)
    ]
    return torch.cat(parts)
