"""Image-text retrieval (paper Table VI): Recall@K, clean and under attack.

Metrics (:func:`recall_at_k`), on a similarity matrix ``[n_images, n_captions]``:

- image → text (``i2t_rK``): an image is a hit at K if ANY of its captions is among the K
  captions most similar to it;
- text → image (``t2i_rK``): a caption is a hit at K if its image is among the K images most
  similar to it.

Values are fractions in [0, 1] (the paper prints percentages). Ties are broken by index (a
stable descending sort), so a degenerate model with constant scores does not score 100 %.
Under attack, R@K is reported directly on the attacked inputs, as the Co-Attack project does.

Retrieval attacks (``RETRIEVAL_ATTACKS``) perturb each image ONCE, with a loss over ALL of its
captions. The published Co-Attack retrieval code repeats each image once per caption and
keeps the adversarial image of the last caption (reference notes, bug 5); here there are no
per-caption copies, so nothing is overwritten. Co-Attack's per-pair loss mixes two terms, so its
caption term is averaged over the image's captions (the per-pair weighting); the pgd and sga
losses have one kind of term and sum it, as SGA's image loss does (a positive per-image factor
does not change an L-inf sign step).

- ``clean``: no attack.
- ``pgd``: L-inf PGD maximizing ``-Σ_c cos(f(x'), g(c))`` over the image's clean captions;
  eps 2/255, 10 steps, step 0.5/255 (SGA's retrieval image setting: 10 steps of 0.5/255 can
  cross the 2/255 ball from a random start and back), uniform random start.
- ``bert``: BERT-Attack on every caption (paper Eq. 4, 1 word, k 10); images clean.
- ``coattack``: Co-Attack. Captions are BERT-attacked first (Eq. 4); then each image ascends
  ``KL(softmax(e_clean) ‖ softmax(e_adv)) + alpha · mean_c KL(softmax(t_adv_c) ‖ softmax(e_adv))``
  over its adversarial captions (softmax over embedding dimensions; e, t normalized); eps 2/255,
  10 steps, step eps/steps·1.25, alpha 3, uniform two-sided random start. Retrieval then uses
  the adversarial images and the adversarial captions.
- ``sga``: Set-level Guidance Attack (Lu et al. 2023), the image-guided alternation of the SGA
  project: (1) every caption is BERT-attacked away from its CLEAN image (the candidate of
  least cosine to the image embedding); (2) each image ascends
  ``-Σ_s Σ_c cos(f(resize_s(x' + n_s)), g(t_c))`` over its set of step-1 adversarial captions
  and its scaled copies ``s ∈ {1, 0.5, 0.75, 1.25, 1.5}``, with fresh noise
  ``n_s ~ N(0, noise_std²)`` (0.05) per scale and step, none on the unscaled copy (as the SGA
  project makes its scaled copies; :func:`mmcoa.attacks.sga.scaled_copies`); (3) the clean
  captions are BERT-attacked again, now away from the ADVERSARIAL image. Retrieval uses the
  step-2 images and the step-3 captions. eps 2/255, 10 steps, step 0.5/255, uniform random
  start, k 10, 1 word.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from functools import partial
from typing import ClassVar, Sequence

import torch
from torch.utils.data import DataLoader

from mmcoa.attacks.base import build_registered, check_range, eval_mode, parameter_names, seed_params
from mmcoa.attacks.co_attack import embedding_kl
from mmcoa.attacks.pgd import check_precision, maximize
from mmcoa.attacks.sga import away_from_image, checked_noise_std, checked_scales, scaled_copies
from mmcoa.data.coco import RetrievalDataset, load_coco_karpathy
from mmcoa.errors import MmcoaError
from mmcoa.eval.results import versions
from mmcoa.eval.runner import attack_generator, record_identity, sample_indices
from mmcoa.models.runtime import runtime_of
from mmcoa.registry import Registry

DEFAULT_KS = (1, 5, 10)
TEXT_BATCH = 256
RETRIEVAL_ATTACKS: Registry[type["RetrievalAttack"]] = Registry("retrieval attack")


# -- metrics -------------------------------------------------------------------------------------
def recall_at_k(similarity: torch.Tensor, image_to_captions: Sequence[Sequence[int]],
                caption_to_image: Sequence[int], ks: Sequence[int] = DEFAULT_KS,
                chunk: int = 256) -> dict[str, float]:
    """``{"i2t_r1": ..., "t2i_r1": ..., ...}`` for each K in ``ks`` (see the module docstring).

    ``similarity[i, j]`` scores image i against caption j; rows are ranked ``chunk`` at a time,
    so the 5k x 25k MSCOCO test matrix needs no second full-size copy.
    """
    n_images, n_captions = _check_recall_args(similarity, image_to_captions, caption_to_image, ks)
    owner = torch.as_tensor(list(caption_to_image), dtype=torch.long, device=similarity.device)
    best_caption_rank = torch.empty(n_images, dtype=torch.long, device=similarity.device)
    for start in range(0, n_images, chunk):
        rows = torch.arange(start, min(start + chunk, n_images), device=similarity.device)
        own = owner.unsqueeze(0) == rows.unsqueeze(1)
        best_caption_rank[rows] = _rank_of_best(similarity[rows], own)
    image_rank = torch.empty(n_captions, dtype=torch.long, device=similarity.device)
    for start in range(0, n_captions, chunk):
        columns = torch.arange(start, min(start + chunk, n_captions), device=similarity.device)
        truth = owner[columns].unsqueeze(1) == torch.arange(n_images, device=similarity.device)
        image_rank[columns] = _rank_of_best(similarity[:, columns].T, truth)
    scores = {}
    for k in ks:
        scores[f"i2t_r{k}"] = float((best_caption_rank < k).float().mean())
    for k in ks:
        scores[f"t2i_r{k}"] = float((image_rank < k).float().mean())
    return scores


def _rank_of_best(scores: torch.Tensor, relevant: torch.Tensor) -> torch.Tensor:
    """Per row, the rank (0 = best) of its best-scoring relevant column, ties counted against
    it: the number of irrelevant columns that score at least as high (so a tie with a wrong
    item is a miss whatever the index order, as in :func:`top_k_correct`)."""
    best = scores.masked_fill(~relevant, float("-inf")).max(dim=1, keepdim=True).values
    return ((~(scores < best)) & ~relevant).sum(dim=1)


def _check_recall_args(similarity, image_to_captions, caption_to_image, ks) -> tuple[int, int]:
    if similarity.ndim != 2:
        raise MmcoaError(f"similarity must be [n_images, n_captions]; got {list(similarity.shape)}")
    n_images, n_captions = similarity.shape
    if len(image_to_captions) != n_images or len(caption_to_image) != n_captions:
        raise MmcoaError(f"similarity is {n_images} x {n_captions} but there are "
                         f"{len(image_to_captions)} images and {len(caption_to_image)} captions")
    for image, captions in enumerate(image_to_captions):
        if not captions:
            raise MmcoaError(f"image {image} has no caption; image-to-text recall is undefined")
        if any(not 0 <= c < n_captions or caption_to_image[c] != image for c in captions):
            raise MmcoaError(f"image_to_captions[{image}] = {list(captions)} disagrees with "
                             "caption_to_image")
    if sum(len(c) for c in image_to_captions) != n_captions:
        raise MmcoaError("caption_to_image lists captions that image_to_captions does not")
    if not ks or any(not isinstance(k, int) or k < 1 for k in ks):
        raise MmcoaError(f"ks must be positive integers; got {list(ks)}")
    return n_images, n_captions


# -- attacks -------------------------------------------------------------------------------------
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
class RetrievalAttack:
    """A retrieval threat model: optionally rewrites captions (:meth:`attack_captions`, once for
    the whole dataset), then perturbs image batches (:meth:`attack_images`) given, for the
    batch, the normalized embeddings ``text`` [M, D] of the captions in use and ``owner`` [M],
    the batch position of each caption's image. Parameters are in pixel units (2/255).

    An ``image_guided`` attack's caption step needs image embeddings: it runs before the image
    step, guided by the clean images, and again after it, guided by the adversarial images."""

    name: ClassVar[str] = "attack"
    image_guided: ClassVar[bool] = False

    def prepare(self, device: str) -> None:
        """Load what the attack needs (a masked LM) before any evaluation work."""

    def params(self) -> dict:
        return dataclasses.asdict(self)

    def attack_captions(self, model, captions: list[str], image_embeddings: torch.Tensor | None = None
                        ) -> tuple[list[str], list[int]]:
        """The captions to use and the words changed in each (unchanged by default);
        ``image_embeddings[j]`` is the normalized embedding of caption j's image (only for
        ``image_guided`` attacks)."""
        return list(captions), [0] * len(captions)

    def attack_images(self, model, images: torch.Tensor, text: torch.Tensor, owner: torch.Tensor,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        return images


def register_retrieval_attack(name: str):
    def add(cls):
        cls.name = name
        return RETRIEVAL_ATTACKS.register(name)(cls)

    return add


def build_retrieval_attack(name: str, **params) -> RetrievalAttack:
    """The retrieval attack ``name`` with ``params``; unknown names or parameters raise a
    one-line error listing what is accepted."""
    return build_registered(RETRIEVAL_ATTACKS, name, **params)


@register_retrieval_attack("clean")
@dataclass
class CleanRetrieval(RetrievalAttack):
    """No attack."""


@dataclass
class _ImageBudget(RetrievalAttack):
    eps: float = 2 / 255
    step_size: float = 0.5 / 255
    n_steps: int = 10
    random_start: bool = True
    precision: str = "fp32"

    def __post_init__(self):
        check_range("eps", self.eps, 0, 1)
        check_range("step_size", self.step_size, 0, 1)
        check_range("n_steps", self.n_steps, 1, 1e9, low_open=False)
        check_precision(self.precision)

    def _maximize(self, loss_fn, images, generator):
        return maximize(loss_fn, images, eps=self.eps, step_size=self.step_size,
                        n_steps=self.n_steps, start=self.random_start, generator=generator,
                        precision=self.precision)


@register_retrieval_attack("pgd")
@dataclass
class RetrievalPGD(_ImageBudget):
    """L-inf PGD on ``-Σ_c cos(f(x'), g(c))`` over each image's clean captions."""

    def attack_images(self, model, images, text, owner, generator=None):
        text = text.detach().float()

        def loss_fn(adv):
            return pgd_loss(model.encode_image(adv, normalize=True).float(), text, owner)

        with eval_mode(model):
            return self._maximize(loss_fn, images, generator)


def pgd_loss(image_embeddings: torch.Tensor, text: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
    """Per image: minus the summed cosine to each of its captions (inputs normalized)."""
    cosines = (image_embeddings[owner.to(image_embeddings.device)] * text.to(image_embeddings.device)).sum(-1)
    return -per_image_sum(cosines, owner, len(image_embeddings))


@dataclass
class _UsesCaptionAttack(RetrievalAttack):
    """BERT-Attack (paper Eq. 4) on every caption: ``mlm`` hub id or directory, ``k``
    candidates, ``max_words`` words."""

    mlm: str = "bert-base-uncased"
    k: int = 10
    max_words: int = 1

    def __post_init__(self):
        check_range("k", self.k, 1, 10_000, low_open=False)
        check_range("max_words", self.max_words, 1, 1_000, low_open=False)
        self._engine = None

    def prepare(self, device: str) -> None:
        if self._engine is None:
            from mmcoa.attacks.bert import shared_mlm
            from mmcoa.attacks.text.bert_attack import BertAttack

            self._engine = BertAttack(shared_mlm(self.mlm, device), k=self.k, max_words=self.max_words)

    @property
    def engine(self):
        if self._engine is None:
            raise RuntimeError(f"call {self.name}.prepare(device) before attacking")
        return self._engine

    def attack_captions(self, model, captions, image_embeddings=None):
        with eval_mode(model):
            edits = self.engine.attack_embeddings(list(captions), model)
        return [e.adversarial for e in edits], [e.changed_words for e in edits]


@register_retrieval_attack("bert")
@dataclass
class RetrievalBert(_UsesCaptionAttack):
    """Adversarial captions only; images clean."""


@register_retrieval_attack("coattack")
@dataclass
class RetrievalCoAttack(_UsesCaptionAttack):
    """Co-Attack for retrieval (see the module docstring). ``step_size=None`` means
    ``eps / n_steps · 1.25`` (the Co-Attack project's setting)."""

    eps: float = 2 / 255
    step_size: float | None = None
    n_steps: int = 10
    alpha: float = 3.0
    random_start: bool = True
    precision: str = "fp32"

    def __post_init__(self):
        super().__post_init__()
        check_precision(self.precision)
        check_range("eps", self.eps, 0, 1)
        check_range("n_steps", self.n_steps, 1, 1e9, low_open=False)
        if self.step_size is None:
            self.step_size = self.eps / self.n_steps * 1.25
        check_range("step_size", self.step_size, 0, 1)
        check_range("alpha", self.alpha, 0, 1e6, low_open=False)

    def attack_images(self, model, images, text, owner, generator=None):
        text = text.detach().float()
        with eval_mode(model):
            with torch.no_grad():
                clean = model.encode_image(images, normalize=True).float()

            def loss_fn(adv):
                return coattack_loss(clean, model.encode_image(adv, normalize=True).float(), text,
                                     owner, self.alpha)

            return maximize(loss_fn, images, eps=self.eps, step_size=self.step_size,
                            n_steps=self.n_steps, start=self.random_start, generator=generator,
                            precision=self.precision)


def coattack_loss(clean: torch.Tensor, moving: torch.Tensor, text: torch.Tensor, owner: torch.Tensor,
                  alpha: float) -> torch.Tensor:
    """Per image: KL(clean ‖ adv) + alpha · the MEAN over its captions of KL(t_adv ‖ adv).

    Co-Attack's retrieval loss is per (image, caption) pair, KL_img + alpha · KL_txt (its
    ``run_before_fusion``, on images repeated once per caption); averaging the text term over
    the image's captions keeps that weighting for an image attacked once with all of them (an
    image with n identical captions gets exactly the per-pair loss). A sum would weigh the text
    term n times (alpha 15 for MSCOCO's 5 captions)."""
    owner = owner.to(moving.device)
    guided = embedding_kl(text.to(moving.device), moving[owner])
    return embedding_kl(clean, moving) + alpha * per_image_mean(guided, owner, len(moving))


@register_retrieval_attack("sga")
@dataclass
class RetrievalSGA(_UsesCaptionAttack, _ImageBudget):
    """Set-level Guidance Attack for retrieval (see the module docstring): image-guided caption
    edits, then a multi-scale image step against each image's set of adversarial captions;
    ``noise_std`` is the std of the Gaussian noise added before each rescale (0 disables)."""

    image_guided: ClassVar[bool] = True
    scales: tuple[float, ...] = (0.5, 0.75, 1.25, 1.5)
    noise_std: float = 0.05

    def __post_init__(self):
        _UsesCaptionAttack.__post_init__(self)
        _ImageBudget.__post_init__(self)
        self.scales = checked_scales(self.scales)
        self.noise_std = checked_noise_std(self.noise_std)

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
            loss_fn = partial(sga_loss, model, text=text, owner=owner, scales=self.scales,
                              noise_std=self.noise_std, generator=generator)
            return self._maximize(loss_fn, images, generator)


def sga_loss(model, images: torch.Tensor, text: torch.Tensor, owner: torch.Tensor,
             scales: tuple[float, ...], noise_std: float = 0.0,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Per image: minus the summed cosine of the image and each of its scaled copies (noised
    before resizing when ``noise_std > 0``, :func:`~mmcoa.attacks.sga.scaled_copies`) to each of
    its captions (SGA's set-level image loss, which sums over an image's captions; ``text``
    normalized)."""
    return sum(pgd_loss(model.encode_image(copy, normalize=True).float(), text, owner)
               for copy in scaled_copies(images, scales, noise_std, generator))


# -- evaluation ----------------------------------------------------------------------------------
def evaluate_retrieval(model, dataset: RetrievalDataset | str | os.PathLike,
                       attack: str | RetrievalAttack = "clean", *, mlm: str | None = None,
                       attack_params: dict | None = None, split: str = "test",
                       pretrained: str | None = None, device: str = "cpu", n_images: int | None = None,
                       indices: Sequence[int] | None = None, batch_size: int = 64, seed: int = 0,
                       ks: Sequence[int] = DEFAULT_KS, progress: bool = False) -> dict:
    """Retrieval R@K of ``model`` on ``dataset`` under ``attack``; one result record (paper
    Table VI).

    ``model`` is a loaded :class:`VisionLanguageModel` or a model name (loaded with
    ``pretrained`` on ``device``); ``dataset`` a :class:`RetrievalDataset` or the MSCOCO root
    folder (``split`` of Karpathy's split file, at the model's input size). ``attack`` is a
    name from :data:`RETRIEVAL_ATTACKS` (built with ``attack_params`` and, for text attacks,
    ``mlm``) or an attack object. ``n_images`` takes a fixed seeded subset of the images with all
    their captions; ``indices`` (e.g. a suite's saved subset) names the images instead. Each
    image batch is attacked with a generator seeded from ``(seed, batch index, attack name and
    parameters)``.
    """
    attack = _as_attack(attack, attack_params, mlm)
    if batch_size < 1:
        raise MmcoaError(f"batch_size must be a positive integer; got {batch_size}")
    if n_images is not None and n_images < 1:
        raise MmcoaError(f"n_images must be a positive integer (or omitted for all); got {n_images}")
    if isinstance(model, str):
        from mmcoa.models import load_model, validate_model_name

        validate_model_name(model)
    if not isinstance(dataset, RetrievalDataset):
        size = None if isinstance(model, str) else model.image_size[0]
        dataset = load_coco_karpathy(dataset, split=split, **({"image_size": size} if size else {}))
    attack.prepare(device if isinstance(model, str) else str(model.device))
    if isinstance(model, str):
        model = load_model(model, pretrained=pretrained, device=device)
    if indices is None and n_images is not None and n_images < len(dataset):
        indices = sample_indices(len(dataset), n_images, seed)
    if indices is not None:
        dataset = dataset.subset(indices)

    started = time.perf_counter()
    with eval_mode(model):
        words_changed, text, images = _attacked_embeddings(model, dataset, attack, batch_size, seed, progress)
        scores = recall_at_k(images @ text.T, dataset.image_to_captions, dataset.caption_to_image, ks)
    elapsed = time.perf_counter() - started
    return {
        **record_identity(model, dataset, attack),
        "n_images": len(dataset),
        "n_captions": len(dataset.captions),
        **scores,
        "seed": seed,
        "elapsed_s": round(elapsed, 3),
        "versions": versions(),
        "runtime": runtime_of(model),
        "mean_words_changed": sum(words_changed) / len(words_changed),
        "n_captions_changed": sum(1 for w in words_changed if w),
    }


def _as_attack(attack: str | RetrievalAttack, attack_params: dict | None, mlm: str | None) -> RetrievalAttack:
    if not isinstance(attack, str):
        return attack
    params = dict(attack_params or {})
    if mlm is not None and "mlm" in parameter_names(RETRIEVAL_ATTACKS.get(attack)):
        params["mlm"] = mlm
    return build_retrieval_attack(attack, **params)


def _attacked_embeddings(model, dataset, attack, batch_size, seed, progress):
    """Words changed per caption, caption embeddings [M, D] and image embeddings [N, D] under
    ``attack``: captions first, then images; an ``image_guided`` attack edits the clean
    captions again against the adversarial images (SGA's alternation)."""
    owner = torch.as_tensor(dataset.caption_to_image, device=model.device)
    guide = _clean_image_embeddings(model, dataset, batch_size)[owner] if attack.image_guided else None
    captions, words_changed = attack.attack_captions(model, dataset.captions, guide)
    text = encode_texts(model, captions)
    images = _attacked_image_embeddings(model, dataset, attack, text, batch_size, seed, progress)
    if attack.image_guided:
        captions, words_changed = attack.attack_captions(model, dataset.captions, images[owner])
        text = encode_texts(model, captions)
    return words_changed, text, images


@torch.no_grad()
def _clean_image_embeddings(model, dataset, batch_size: int) -> torch.Tensor:
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    return torch.cat([model.encode_image(images.to(model.device), normalize=True).float()
                      for images, _ in loader])


@torch.no_grad()
def encode_texts(model, captions: Sequence[str], batch_size: int = TEXT_BATCH) -> torch.Tensor:
    """Normalized float32 text embeddings [N, D], ``batch_size`` captions at a time."""
    parts = [model.encode_text(list(captions[i:i + batch_size]), normalize=True).float()
             for i in range(0, len(captions), batch_size)]
    return torch.cat(parts)


def _attacked_image_embeddings(model, dataset, attack, text, batch_size, seed, progress) -> torch.Tensor:
    from tqdm.auto import tqdm

    device = model.device
    caption_lists = dataset.image_to_captions
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    embeddings = []
    for batch_index, (images, indices) in enumerate(tqdm(loader, desc=f"retrieval {attack.name}",
                                                         unit="batch", disable=not progress)):
        images = images.to(device)
        rows = [caption_lists[int(i)] for i in indices]
        caption_ids = torch.tensor([c for row in rows for c in row], device=text.device)
        owner = torch.tensor([b for b, row in enumerate(rows) for _ in row], device=device)
        generator = attack_generator(device, seed, batch_index, attack.name, seed_params(attack.params()))
        adversarial = attack.attack_images(model, images, text[caption_ids], owner, generator)
        with torch.no_grad():
            embeddings.append(model.encode_image(adversarial, normalize=True).float())
    return torch.cat(embeddings)
