"""The evaluation loop: model × dataset × attacks → result records."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from typing import Sequence

import torch
from tqdm.auto import tqdm

from mmcoa.attacks import Attack, build_attack, eval_mode
from mmcoa.attacks.base import seed_identity
from mmcoa.data import ClassificationDataset, load_dataset
from mmcoa.data.loading import Batch, BatchLoader, check_workers, consecutive_batches
from mmcoa.distributed import SINGLE, World, max_over_ranks, sum_over_ranks
from mmcoa.errors import MmcoaError
from mmcoa.eval.metrics import DEFAULT_SCORING, ROBUST_METRICS, Scoring, Tally
from mmcoa.profiles import PUBLISHED, profile_of, profile_settings, switches_of
from mmcoa.provenance import versions
from mmcoa.settings import one_of
from mmcoa.models import VisionLanguageModel, ZeroShotClassifier, load_model, validate_model_name
from mmcoa.models.base import check_resize_mode
from mmcoa.models.runtime import configure_runtime, runtime_of


def sample_indices(n_total: int, n_samples: int | None, seed: int) -> list[int]:
    """A fixed, seeded subset of ``n_samples`` indices (sorted), or every index."""
    if n_samples is None or n_samples >= n_total:
        return list(range(n_total))
    generator = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(n_total, generator=generator)[:n_samples].tolist())


def indices_sha1(indices: Sequence[int]) -> str:
    """SHA-1 of an index list: two records with the same value evaluated the same samples."""
    return hashlib.sha1(repr([int(i) for i in indices]).encode()).hexdigest()


def evaluate(
    model: str | VisionLanguageModel,
    dataset: str | ClassificationDataset,
    attacks: Sequence[str | Attack] = ("clean", "pgd"),
    *,
    pretrained: str | None = None,
    split: str = "test",
    data_root: str | None = None,
    download: bool = False,
    n_samples: int | None = None,
    indices: Sequence[int] | None = None,
    batch_size: int = 128,
    seed: int = 0,
    device: str = "cpu",
    template: str | None = None,
    resize: str = "torch",
    skip_bad_images: bool = False,
    workers: int | None = None,
    runtime: dict | None = None,
    progress: bool = True,
    world: World = SINGLE,
    scoring: Scoring = DEFAULT_SCORING,
    dataset_options: dict | None = None,
    logit_scale: float | None = None,
) -> list[dict]:
    """Zero-shot accuracy of ``model`` on ``dataset`` under each attack; one record per attack.

    Names are resolved through the registries (string attacks use their default parameters);
    every argument is checked before the model is loaded. ``indices`` (e.g. a suite's saved
    subset) fixes the evaluated samples instead of a seeded draw of ``n_samples``. Images of a
    batch are attacked with a generator seeded from ``(seed, batch index, attack name and
    parameters)``, so a record does not depend on which other attacks ran or in which order.
    ``resize`` applies to a model given by name (see :func:`mmcoa.models.base.resize_images`).
    An unreadable image stops the run with one line naming it, unless ``skip_bad_images``:
    then it is left out and counted in the record's ``skipped_images``. ``runtime`` (``tf32``,
    ``compile``) is applied with :func:`mmcoa.models.runtime.configure_runtime`. Batches come
    from :class:`mmcoa.data.loading.BatchLoader` with ``workers`` processes (None: automatic).
    A Sep attack (``multimodal``) listed with the PGD it is made of reuses that PGD's images.
    ``scoring`` says how robust samples are counted (:class:`~mmcoa.eval.metrics.Scoring`);
    each record stores it and the attack's behaviour switches with their profile.
    ``dataset_options`` (e.g. the published profile's ``published_dataset_options``) go to
    ``load_dataset`` for a dataset given by name and are stored in each record. ``template``
    :data:`ENSEMBLE` classifies with the dataset's prompt ensemble (``dataset.templates``, e.g. a
    ``wds:`` set's); ``logit_scale`` fixes the logits' scale (RobustVLM's protocol: 100).
    """
    attacks = [build_attack(a) if isinstance(a, str) else a for a in attacks]
    _check_run_args(attacks, n_samples, batch_size)
    check_prompting(template, logit_scale, attacks)
    one_of("robust_metric", scoring.robust_metric, ROBUST_METRICS)
    check_workers(workers)
    for attack in attacks:
        attack.prepare(device if isinstance(model, str) else str(model.device))
    if isinstance(model, str):
        validate_model_name(model)
        check_resize_mode(resize)
    if isinstance(dataset, str):
        dataset = load_dataset(
            dataset, split=split, root=data_root, download=download, **(dataset_options or {})
        )
    check_ensemble(dataset, template)
    if isinstance(model, str):
        model = load_model(model, pretrained=pretrained, device=device, resize=resize)
    if runtime:  # TF32 and torch.compile (see mmcoa.models.runtime); recorded in every record
        configure_runtime(model, **runtime)
    if indices is None:
        indices = sample_indices(len(dataset), n_samples, seed)
    indices = _checked(indices, dataset)
    classifier = zero_shot_head(model, dataset, template, logit_scale)
    batches = consecutive_batches(indices, batch_size)
    loader = BatchLoader(
        dataset,
        batches,
        device=model.device,
        workers=workers,
        seed=seed,
        positions=range(world.rank, len(batches), world.size),  # every size-th batch
        skip_bad_images=skip_bad_images,
    )
    with eval_mode(model):
        outcomes = _run(classifier, loader, attacks, seed, progress and world.is_main, scoring)
    outcomes = [(_summed(tally, world, model.device), prompts) for tally, prompts in outcomes]
    return [
        {
            **_record(model, dataset, attack, tally, prompts, indices, seed),
            **behaviour(attack, scoring),
            **({"dataset_options": dict(dataset_options)} if dataset_options else {}),
            **_prompting(classifier),
        }
        for attack, (tally, prompts) in zip(attacks, outcomes)
    ]


ENSEMBLE = "ensemble"
"""The ``template`` value that classifies with the dataset's own prompt ensemble."""


def check_prompting(template: str | None, logit_scale: float | None, attacks: Sequence[Attack] = ()) -> None:
    """One line unless ``template`` is None, a template with ``{}`` or :data:`ENSEMBLE`, and
    ``logit_scale`` None or positive; an ensemble classifier has no single prompt per class for
    a text attack to edit."""
    if template is not None and template != ENSEMBLE and "{}" not in template:
        raise MmcoaError(f"template must hold {{}} for the class name, or be {ENSEMBLE!r}; got {template!r}")
    if logit_scale is not None and not logit_scale > 0:
        raise MmcoaError(
            f"logit_scale must be a positive number (or unset: the model's); got {logit_scale!r}"
        )
    text = [a.name for a in attacks if a.threat in ("text", "multimodal")]
    if template == ENSEMBLE and text:
        raise MmcoaError(
            f"template {ENSEMBLE!r} averages several prompts per class; the text attack(s) "
            f"{', '.join(text)} edit one prompt per class: use a single template with them"
        )


def zero_shot_head(model, dataset, template: str | None, logit_scale: float | None = None):
    """The classifier of ``dataset``'s classes: its prompts with ``template`` (None: the
    dataset's own), or with :data:`ENSEMBLE` its prompt ensemble."""
    if template != ENSEMBLE:
        return ZeroShotClassifier(model, dataset.prompts(template), logit_scale=logit_scale)
    check_ensemble(dataset, template)
    sets = [dataset.prompts(t) for t in dataset.templates]
    return ZeroShotClassifier(model, sets[0], ensemble=sets, logit_scale=logit_scale)


def check_ensemble(dataset, template: str | None) -> None:
    """One line when ``template`` asks for the prompt ensemble of a dataset that has none."""
    if template == ENSEMBLE and not getattr(dataset, "templates", None):
        raise MmcoaError(
            f"dataset {dataset.name} ships no prompt ensemble; template {ENSEMBLE!r} needs one "
            "(wds: datasets read zeroshot_classification_templates.txt)"
        )


def _prompting(classifier) -> dict:
    """Record keys for a non-default head: the ensemble's size and a fixed logit scale."""
    out = {}
    if classifier.ensemble is not None:
        out["prompt_ensemble"] = len(classifier.ensemble)
    if classifier.fixed_logit_scale is not None:
        out["logit_scale"] = classifier.fixed_logit_scale
    return out


def behaviour(*parts) -> dict:
    """``switches`` (every behaviour switch of ``parts``, dataclass instances such as the attack
    and the scoring) and the ``profile`` they make up (:func:`mmcoa.profiles.profile_of`)."""
    switches = {k: v for part in parts for k, v in switches_of(part).items()}
    published = {k: v for part in parts for k, v in profile_settings(type(part), PUBLISHED).items()}
    return {"profile": profile_of(switches, published), "switches": switches}


def _check_run_args(attacks: Sequence[Attack], n_samples: int | None, batch_size: int) -> None:
    if not attacks:
        raise MmcoaError("no attack given; pass at least one, e.g. clean")
    if n_samples is not None and n_samples < 1:
        raise MmcoaError(f"n_samples must be a positive integer (or omitted for all); got {n_samples}")
    if batch_size < 1:
        raise MmcoaError(f"batch_size must be a positive integer; got {batch_size}")


def _checked(indices: Sequence[int], dataset) -> list[int]:
    """``indices`` as ints, or a one-line error when one lies outside the dataset."""
    indices = [int(i) for i in indices]
    if not indices or min(indices) < 0 or max(indices) >= len(dataset):
        raise MmcoaError(
            f"indices must be a non-empty list of sample positions in [0, {len(dataset)}) "
            f"of {dataset.name} {dataset.split}"
        )
    return indices


def _run(
    classifier, loader: BatchLoader, attacks, seed, progress, scoring: Scoring
) -> list[tuple[Tally, list | None]]:
    """Tallies of each attack over the loader's batches; a batch's position in the evaluation's
    batch list seeds the attacks, so a batch is attacked alike whichever process runs it and
    whichever other attacks run with it."""
    tallies = [Tally(robust_metric=scoring.robust_metric) for _ in attacks]
    prompts: list[list[str] | None] = [None] * len(attacks)
    shared = _shared_image_parts(attacks)
    bar = tqdm(loader, desc="eval", unit="batch", disable=not progress)
    for batch in bar:
        for tally in tallies:
            tally.skipped_images += batch.skipped
        if not len(batch):
            continue
        clean_logits = _predict(classifier, batch.images)
        done: dict = {}  # this batch's results of the image attacks a Sep attack reuses
        for attack_index, (attack, tally) in enumerate(zip(attacks, tallies)):
            result, elapsed = _attacked(attack, classifier, batch, seed, shared, done)
            tally.add(
                _predict(classifier, result.images, result.class_embeddings), clean_logits, batch.labels
            )
            tally.add_cost(len(batch), result.queries, result.words_changed)
            tally.elapsed_s += elapsed
            prompts[attack_index] = result.adversarial_prompts
        bar.set_postfix({a.name: f"{t.accuracy:.3f}" for a, t in zip(attacks, tallies)})
    return list(zip(tallies, prompts))


def _identity_key(attack: Attack) -> str:
    return json.dumps([attack.name, attack.params()], sort_keys=True, default=str)


def _shared_image_parts(attacks: Sequence[Attack]) -> set[str]:
    """Keys of the image attacks that a Sep attack of this evaluation is made of (paper's
    multimodal: exactly the PGD of the image column): each is computed once per batch."""
    return {_identity_key(a.image_part()) for a in attacks if a.image_part() is not None}


def _attacked(attack: Attack, classifier, batch: Batch, seed: int, shared: set, done: dict):
    """``attack``'s result on the batch and the seconds it took. An attack is seeded from
    ``(seed, batch position, seed_identity)``; a Sep attack gets its image part's result (with
    that part's time), computed once per batch and shared with the image attack's own column."""
    inner = attack.image_part()
    if inner is not None:
        image_result, image_elapsed = _attacked(inner, classifier, batch, seed, shared, done)
        started = time.perf_counter()
        result = attack(classifier, batch.images, batch.labels, image_result=image_result)
        return result, image_elapsed + time.perf_counter() - started
    key = _identity_key(attack)
    if key in done:
        return done[key]
    generator = attack_generator(batch.images.device, seed, batch.position, *seed_identity(attack))
    started = time.perf_counter()
    result = attack(classifier, batch.images, batch.labels, generator)
    outcome = (result, time.perf_counter() - started)
    if key in shared:
        done[key] = outcome
    return outcome


def _summed(tally: Tally, world: World, device) -> Tally:
    """The counts of all ranks added up (elapsed time: the slowest rank's)."""
    if not world.distributed:
        return tally
    names = [f.name for f in dataclasses.fields(Tally) if f.name not in ("elapsed_s", "robust_metric")]
    totals = sum_over_ranks([float(getattr(tally, n)) for n in names], world, device)
    summed = Tally(**{n: type(getattr(tally, n))(v) for n, v in zip(names, totals)})
    summed.robust_metric = tally.robust_metric
    summed.elapsed_s = max_over_ranks(tally.elapsed_s, world, device)
    return summed


@torch.no_grad()
def _predict(classifier, images, class_embeddings=None) -> torch.Tensor:
    return classifier.logits(images, class_embeddings)


def attack_generator(device: torch.device, *parts) -> torch.Generator:
    """A generator seeded from JSON-able parts, e.g. (seed, batch index, attack name, params)."""
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
    return torch.Generator(device=device).manual_seed(int(digest[:15], 16))


def record_identity(model, dataset, attack) -> dict:
    """The keys that say what a result record measured (shared by every kind of record), with
    :func:`text_threat` for an attack with a text part."""
    return {
        "model": model.name,
        "pretrained": model.pretrained,
        "dataset": dataset.name,
        "split": dataset.split,
        "attack": attack.name,
        "threat": attack.threat,
        **text_threat(attack),
        "attack_params": attack.params(),
    }


def text_threat(attack) -> dict:
    """``{"text_threat": unit}``: what the attack's text part edits (``word``: BERT-Attack,
    ``character``: Charmer; a composition's, its chosen text attack's). Nothing for an attack
    without a text part, whose records keep their keys."""
    unit = getattr(attack, "text_unit", "")
    return {"text_threat": unit} if unit else {}


def _record(model, dataset, attack, tally: Tally, prompts, indices, seed) -> dict:
    return {
        **record_identity(model, dataset, attack),
        "model_build": model.describe_build(),
        "runtime": runtime_of(model),
        "n_samples": tally.n,
        "accuracy": tally.accuracy,
        "top5": tally.top5,
        "seed": seed,
        "elapsed_s": round(tally.elapsed_s, 3),
        "versions": versions(),
        "n_correct": tally.correct,
        "attack_success_rate": tally.attack_success_rate,
        "queries_per_sample": tally.queries_per_sample,
        "mean_words_changed": tally.mean_words_changed,
        "skipped_images": tally.skipped_images,
        "adversarial_prompts": prompts,
        "sample_indices_sha1": indices_sha1(indices),
    }
