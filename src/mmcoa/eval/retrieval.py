"""Image-text retrieval (paper Table VI): Recall@K, clean and under attack.

Metrics (:func:`recall_at_k`), on a similarity matrix ``[n_images, n_captions]``:

- image → text (``i2t_rK``): an image is a hit at K if ANY of its captions is among the K
  captions most similar to it;
- text → image (``t2i_rK``): a caption is a hit at K if its image is among the K images most
  similar to it.

Values are fractions in [0, 1] (the paper prints percentages). A tie with a wrong item is a miss
(``docs/deviations.md``, row 17), so a model with constant scores does not score 100 %. Under
attack, R@K is reported directly on the attacked inputs, as the Co-Attack project does.

The retrieval attacks (``RETRIEVAL_ATTACKS``, the threat models) live in
:mod:`mmcoa.attacks.retrieval`; this module ranks, counts and runs them.
"""

from __future__ import annotations

import os
import time
from typing import Sequence

import torch

from mmcoa.attacks.base import eval_mode, parameter_names, seeding_params
from mmcoa.attacks.retrieval import RETRIEVAL_ATTACKS, RetrievalAttack, build_retrieval_attack, encode_texts
from mmcoa.data.coco import RetrievalDataset, load_coco_karpathy
from mmcoa.data.loading import BatchLoader, check_workers, consecutive_batches
from mmcoa.errors import MmcoaError
from mmcoa.eval.runner import attack_generator, behaviour, record_identity, sample_indices
from mmcoa.models.runtime import runtime_of
from mmcoa.provenance import versions

DEFAULT_KS = (1, 5, 10)


# -- metrics -------------------------------------------------------------------------------------
def recall_at_k(
    similarity: torch.Tensor,
    image_to_captions: Sequence[Sequence[int]],
    caption_to_image: Sequence[int],
    ks: Sequence[int] = DEFAULT_KS,
    chunk: int = 256,
) -> dict[str, float]:
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
        raise MmcoaError(
            f"similarity is {n_images} x {n_captions} but there are "
            f"{len(image_to_captions)} images and {len(caption_to_image)} captions"
        )
    for image, captions in enumerate(image_to_captions):
        if not captions:
            raise MmcoaError(f"image {image} has no caption; image-to-text recall is undefined")
        if any(not 0 <= c < n_captions or caption_to_image[c] != image for c in captions):
            raise MmcoaError(f"image_to_captions[{image}] = {list(captions)} disagrees with caption_to_image")
    if sum(len(c) for c in image_to_captions) != n_captions:
        raise MmcoaError("caption_to_image lists captions that image_to_captions does not")
    if not ks or any(not isinstance(k, int) or k < 1 for k in ks):
        raise MmcoaError(f"ks must be positive integers; got {list(ks)}")
    return n_images, n_captions


# -- evaluation ----------------------------------------------------------------------------------
def evaluate_retrieval(
    model,
    dataset: RetrievalDataset | str | os.PathLike,
    attack: str | RetrievalAttack = "clean",
    *,
    mlm: str | None = None,
    attack_params: dict | None = None,
    split: str = "test",
    pretrained: str | None = None,
    device: str = "cpu",
    n_images: int | None = None,
    indices: Sequence[int] | None = None,
    batch_size: int = 64,
    seed: int = 0,
    ks: Sequence[int] = DEFAULT_KS,
    progress: bool = False,
    workers: int | None = None,
) -> dict:
    """Retrieval R@K of ``model`` on ``dataset`` under ``attack``; one result record (paper
    Table VI).

    ``model`` is a loaded :class:`VisionLanguageModel` or a model name (loaded with
    ``pretrained`` on ``device``); ``dataset`` a :class:`RetrievalDataset` or the MSCOCO root
    folder (``split`` of Karpathy's split file, at the model's input size). ``attack`` is a
    name from :data:`RETRIEVAL_ATTACKS` (built with ``attack_params`` and, for text attacks,
    ``mlm``) or an attack object. ``n_images`` takes a fixed seeded subset of the images with all
    their captions; ``indices`` (e.g. a suite's saved subset) names the images instead. Each
    image batch is attacked with a generator seeded from ``(seed, batch index, attack name and
    parameters)``. Images come through :class:`mmcoa.data.loading.BatchLoader` with ``workers``
    processes (None: automatic).
    """
    attack = _as_attack(attack, attack_params, mlm)
    if batch_size < 1:
        raise MmcoaError(f"batch_size must be a positive integer; got {batch_size}")
    check_workers(workers)
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
        words_changed, text, images = _attacked_embeddings(
            model, dataset, attack, batch_size, seed, progress, workers
        )
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
        **behaviour(attack),
    }


def _as_attack(attack: str | RetrievalAttack, attack_params: dict | None, mlm: str | None) -> RetrievalAttack:
    if not isinstance(attack, str):
        return attack
    params = dict(attack_params or {})
    if mlm is not None and "mlm" in parameter_names(RETRIEVAL_ATTACKS.get(attack)):
        params["mlm"] = mlm
    return build_retrieval_attack(attack, **params)


def _attacked_embeddings(model, dataset, attack, batch_size, seed, progress, workers=None):
    """Words changed per caption, caption embeddings [M, D] and image embeddings [N, D] under
    ``attack``: captions first, then images; an ``image_guided`` attack edits the clean
    captions again against the adversarial images (SGA's alternation)."""
    owner = torch.as_tensor(dataset.caption_to_image, device=model.device)
    guide = (
        _clean_image_embeddings(model, dataset, batch_size, workers)[owner] if attack.image_guided else None
    )
    captions, words_changed = attack.attack_captions(model, dataset.captions, guide)
    text = encode_texts(model, captions)
    images = _attacked_image_embeddings(model, dataset, attack, text, batch_size, seed, progress, workers)
    if attack.image_guided:
        captions, words_changed = attack.attack_captions(model, dataset.captions, images[owner])
        text = encode_texts(model, captions)
    return words_changed, text, images


def _image_batches(model, dataset, batch_size: int, workers: int | None) -> BatchLoader:
    """The dataset's images in order, in batches, through the batch pipeline."""
    batches = consecutive_batches(range(len(dataset)), batch_size)
    return BatchLoader(dataset, batches, device=model.device, workers=workers)


@torch.no_grad()
def _clean_image_embeddings(model, dataset, batch_size: int, workers: int | None = None) -> torch.Tensor:
    return torch.cat(
        [
            model.encode_image(batch.images, normalize=True).float()
            for batch in _image_batches(model, dataset, batch_size, workers)
        ]
    )


def _attacked_image_embeddings(
    model, dataset, attack, text, batch_size, seed, progress, workers: int | None = None
) -> torch.Tensor:
    from tqdm.auto import tqdm

    device = model.device
    caption_lists = dataset.image_to_captions
    embeddings = []
    for batch in tqdm(
        _image_batches(model, dataset, batch_size, workers),
        desc=f"retrieval {attack.name}",
        unit="batch",
        disable=not progress,
    ):
        images = batch.images
        rows = [caption_lists[int(i)] for i in batch.indices]
        caption_ids = torch.tensor([c for row in rows for c in row], device=text.device)
        owner = torch.tensor([b for b, row in enumerate(rows) for _ in row], device=device)
        generator = attack_generator(device, seed, batch.position, attack.name, seeding_params(attack))
        adversarial = attack.attack_images(model, images, text[caption_ids], owner, generator)
        with torch.no_grad():
            embeddings.append(model.encode_image(adversarial, normalize=True).float())
    return torch.cat(embeddings)
