"""Shared plumbing of the analyses: building attacks from names, labelled model sets, and the
seeded batches of adversarial examples that the feature and gallery analyses look at.

:func:`attacked_batches` draws the same sample subset (:func:`mmcoa.eval.sample_indices`) and
seeds each batch's attack with the same generator (:func:`mmcoa.eval.runner.attack_generator`)
as :func:`mmcoa.eval.evaluate`, so the examples it shows are the ones the evaluation counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Mapping

import torch

from mmcoa.attacks import ATTACKS, Attack, AttackResult, build_attack, eval_mode
from mmcoa.attacks.base import parameter_names, seed_identity
from mmcoa.data.loading import BatchLoader, consecutive_batches
from mmcoa.errors import MmcoaError
from mmcoa.eval.runner import attack_generator, sample_indices
from mmcoa.models import VisionLanguageModel, ZeroShotClassifier


def make_attack(attack: str | Attack, **params) -> Attack:
    """``attack`` itself, or the attack of that name with those of ``params`` it accepts
    (``None`` values are left at the attack's default)."""
    if isinstance(attack, Attack):
        return attack
    accepted = set(parameter_names(ATTACKS.get(attack)))
    return build_attack(attack, **{k: v for k, v in params.items() if k in accepted and v is not None})


def quiet(evaluation: dict) -> dict:
    """:func:`mmcoa.eval.evaluate`'s keywords as an analysis passes them on: ``n_samples``,
    ``batch_size``, ``seed``, ``template``..., with no progress bar unless asked."""
    return {"progress": False, **evaluation}


def labelled(
    models: VisionLanguageModel | Mapping[str, VisionLanguageModel],
) -> dict[str, VisionLanguageModel]:
    """``{label: model}``; a single model is labelled by its name and weights."""
    if isinstance(models, VisionLanguageModel):
        return {models.describe(): models}
    if not models:
        raise MmcoaError("no model given")
    return dict(models)


@dataclass
class AttackedBatch:
    indices: list[int]
    images: torch.Tensor
    labels: torch.Tensor
    result: AttackResult
    clean_predictions: torch.Tensor
    attacked_predictions: torch.Tensor


def attacked_batches(
    model: VisionLanguageModel,
    dataset,
    attack: Attack,
    *,
    n_samples: int | None,
    batch_size: int = 64,
    seed: int = 0,
    template: str | None = None,
    workers: int | None = None,
) -> Iterator[AttackedBatch]:
    """Seeded subset of ``dataset``, batch by batch: clean images, the attack's result and the
    zero-shot predictions before and after."""
    attack.prepare(str(model.device))
    classifier = ZeroShotClassifier(model, dataset.prompts(template))
    indices = sample_indices(len(dataset), n_samples, seed)
    batches = consecutive_batches(indices, batch_size)
    with eval_mode(model):
        for batch in BatchLoader(dataset, batches, device=model.device, workers=workers, seed=seed):
            images, labels = batch.images, batch.labels
            generator = attack_generator(model.device, seed, batch.position, *seed_identity(attack))
            result = attack(classifier, images, labels, generator)
            with torch.no_grad():
                clean = classifier.logits(images).argmax(1)
                attacked = classifier.logits(result.images, result.class_embeddings).argmax(1)
            yield AttackedBatch(batch.indices, images, labels, result, clean, attacked)
