"""BERT-Attack on class prompts: the paper's label-agnostic text attack and a targeted variant.

- ``bert`` (paper Eq. 4, as the MMCoA evaluation uses it): each of the C class prompts is
  attacked once, independently of labels and images, by maximizing
  KL(softmax(g(t)) ‖ softmax(g(t'))) of the victim's normalized text embedding; every image is
  then classified against the adversarial prompt set.
- ``bert-targeted`` (beyond the paper, stronger): for each image, the word edit of its true
  class prompt that lowers that image's true-class probability most.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import ClassVar

import torch

from mmcoa.attacks.base import ATTACKS, Attack, AttackResult, FieldGroup, check_range
from mmcoa.attacks.text.bert_attack import BertAttack, TextEdit
from mmcoa.attacks.text.candidates import CANDIDATE_POSITIONS, check_candidate_position
from mmcoa.flags import setting, switch
from mmcoa.models.zeroshot import ZeroShotClassifier

DEFAULT_MLM = "bert-base-uncased"


@functools.lru_cache(maxsize=4)
def shared_mlm(name: str, device: str):
    """Load each masked LM once per process (its weights never change)."""
    from mmcoa.attacks.text.mlm import load_mlm

    return load_mlm(name, device=device)


def shared_engine(
    mlm: str, device: str, k: int, max_words: int, candidate_position: str = "own"
) -> BertAttack:
    """The one BERT-Attack engine per (MLM, device, k, word budget, candidate position) and
    process, for every text attack (classification, retrieval) and for training, however the
    arguments are spelled (an unknown ``candidate_position`` is a one-line
    :class:`~mmcoa.errors.MmcoaError`, raised before the MLM loads). Process-wide on purpose: its
    edit cache is keyed by the victim's text-tower state (``models.base``), so the text attack,
    the multimodal attack and Co-Attack evaluated on one model attack its class prompts once,
    and a cached edit is never stale (an edit keeps the queries it cost when it was computed,
    so every record still counts them)."""
    check_candidate_position(candidate_position)
    return _cached_engine(mlm, device, k, max_words, candidate_position)


@functools.lru_cache(maxsize=8)
def _cached_engine(mlm: str, device: str, k: int, max_words: int, candidate_position: str) -> BertAttack:
    masked_lm = shared_mlm(mlm, device)
    return BertAttack(masked_lm, k=k, max_words=max_words, candidate_position=candidate_position)


@dataclass
class UsesBertAttack(FieldGroup):
    """The BERT-Attack fields and set-up of every attack that edits prompts or captions:
    ``mlm`` (hub id or directory), ``k`` candidates per word, ``max_words`` word budget,
    ``candidate_position`` (a switch: ``own``, or the published code's ``preceding``;
    ``docs/deviations.md``, row 1); the engine comes from :func:`shared_engine` in
    :meth:`prepare`. Its edits change words (``text_unit``, the records' ``text_threat``)."""

    text_unit: ClassVar[str] = "word"
    mlm: str = setting(DEFAULT_MLM, "masked LM of the text attacks: hub id, directory or minilm")
    k: int = setting(10, "BERT-Attack candidates per word")
    max_words: int = setting(1, "words the text attacks change per prompt")
    candidate_position: str = switch(
        "own",
        "preceding",
        "where BERT-Attack reads a word's candidates: its own pieces' positions, or (published "
        "MMCoA code) the preceding token's, with no trailing [SEP]",
        choices=CANDIDATE_POSITIONS,
    )

    def __post_init__(self):
        check_range("k", self.k, 1, 10_000, low_open=False)
        check_range("max_words", self.max_words, 1, 1_000, low_open=False)
        check_candidate_position(self.candidate_position)
        self._engine: BertAttack | None = None
        self._prompt_sets: dict = {}
        super().__post_init__()

    def prepare(self, device: str) -> None:
        if self._engine is None:
            self._engine = shared_engine(
                self.mlm, device, self.k, self.max_words, candidate_position=self.candidate_position
            )

    @property
    def engine(self) -> BertAttack:
        if self._engine is None:
            raise RuntimeError(f"call {self.name}.prepare(device) before attacking")
        return self._engine

    def adversarial_prompt_set(self, classifier: ZeroShotClassifier) -> tuple[list[TextEdit], torch.Tensor]:
        """Paper Eq. 4 on each class prompt; edits and normalized embeddings, cached until the
        text tower changes."""
        return cached_prompt_set(self.engine, classifier, self._prompt_sets)


def cached_prompt_set(
    engine, classifier: ZeroShotClassifier, cache: dict
) -> tuple[list[TextEdit], torch.Tensor]:
    """Paper Eq. 4 on each class prompt with a text attack ``engine`` (its
    ``attack_embeddings``: BERT-Attack's or Charmer's): the edits and the normalized embeddings of
    the attacked prompts, kept in ``cache`` (one entry) until the text tower or the prompts
    change."""
    key = (classifier.model.text_fingerprint(), tuple(classifier.prompts))
    if key not in cache:
        edits = engine.attack_embeddings(classifier.prompts, classifier.model)
        embeddings = classifier.encode_prompts([e.adversarial for e in edits])
        cache.clear()
        cache[key] = (edits, embeddings)
    return cache[key]


def per_class_costs(edits: list[TextEdit], labels: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Mean text queries and per-sample words changed of each sample's own class prompt."""
    changed = torch.tensor([edits[int(y)].changed_words for y in labels])
    queries = sum(edits[int(y)].queries for y in labels) / max(1, len(labels))
    return queries, changed


@ATTACKS.register("bert")
@dataclass
class BertPrompts(UsesBertAttack, Attack):
    """BERT-Attack on the class prompts, label-agnostic (paper Eq. 4; Li et al. 2020).

    Images stay clean; all are classified against the adversarial prompt set. Queries are
    those spent on the sample's own class prompt (shared by all images of the class).

    Arguments:
        mlm, k, max_words, candidate_position: BERT-Attack's masked LM, candidates per word, word
            budget and where candidates are read
            (:class:`~mmcoa.attacks.bert.UsesBertAttack`).

    Shape:
        - images, labels: as for :class:`~mmcoa.attacks.base.Attack`; images returned unchanged.
        - output: ``AttackResult.class_embeddings`` ``(C, D)``, the attacked prompt set, normalized;
          ``words_changed`` ``(B,)``; ``adversarial_prompts`` (C strings).
    """

    threat: ClassVar[str] = "text"

    def __call__(self, classifier, images, labels, generator=None, image_result=None) -> AttackResult:
        return prompt_set_result(*self.adversarial_prompt_set(classifier), images, labels)


def prompt_set_result(edits: list[TextEdit], embeddings: torch.Tensor, images, labels) -> AttackResult:
    """The label-agnostic text attack's result: clean images, the attacked prompt set, and each
    sample's costs on its own class prompt (:func:`per_class_costs`)."""
    queries, changed = per_class_costs(edits, labels)
    return AttackResult(
        images=images,
        class_embeddings=embeddings,
        queries=queries,
        words_changed=changed,
        adversarial_prompts=[e.adversarial for e in edits],
    )


@ATTACKS.register("bert-targeted")
@dataclass
class BertTargeted(UsesBertAttack, Attack):
    """Per-image BERT-Attack on the true class prompt (beyond the paper, stronger).

    For each image, the edit of its true-class prompt (within the word budget) that lowers
    the image's true-class probability most; an edit is kept only if it lowers it, so the
    attack never raises the true-class probability.

    Arguments: as for :class:`BertPrompts`.

    Shape:
        - images, labels: as for :class:`BertPrompts`.
        - output: ``AttackResult.class_embeddings`` ``(B, C, D)``, normalized: each image's
          prompt set with its own true-class edit; ``words_changed`` ``(B,)``;
          ``adversarial_prompts`` None (the prompts differ per image).
    """

    threat: ClassVar[str] = "text"

    def __call__(self, classifier, images, labels, generator=None, image_result=None) -> AttackResult:
        return targeted_prompt_result(self.engine, classifier, images, labels)


def targeted_prompt_result(engine, classifier, images, labels) -> AttackResult:
    """Each image's true-class prompt attacked with ``engine`` (BERT-Attack's or Charmer's
    ``attack``) to lower that image's true-class probability; per-sample prompt sets."""
    with torch.no_grad():
        image_features = classifier.model.encode_image(images, normalize=True).float()
    edits = per_image_prompt_edits(
        engine, classifier, labels, true_class_probability_drop(classifier, image_features, labels)
    )
    return prompt_edit_result(classifier, images, labels, edits)


def per_image_prompt_edits(engine, classifier, labels, score_fn) -> list[TextEdit]:
    """Attack each sample's own copy of its true-class prompt with ``score_fn``."""
    return engine.attack([classifier.prompts[int(y)] for y in labels], score_fn)


def prompt_edit_result(classifier, images, labels, edits: list[TextEdit]) -> AttackResult:
    """Per-sample prompt sets: each image's true-class prompt replaced by its own edit."""
    class_embeddings = per_sample_prompt_sets(classifier, labels, [e.adversarial for e in edits])
    return AttackResult(
        images=images,
        class_embeddings=class_embeddings,
        queries=sum(e.queries for e in edits) / max(1, len(edits)),
        words_changed=torch.tensor([e.changed_words for e in edits]),
    )


def per_sample_prompt_sets(classifier, labels: torch.Tensor, true_class_texts: list[str]) -> torch.Tensor:
    """[B, C, D]: the clean prompt set with row ``labels[i]`` replaced for sample i."""
    base = classifier.class_embeddings()
    replaced = encode_unique(classifier, true_class_texts)
    sets = base.unsqueeze(0).repeat(len(labels), 1, 1)
    sets[torch.arange(len(labels)), labels.to(sets.device)] = replaced.to(sets.device)
    return sets


def encode_unique(classifier, texts: list[str]) -> torch.Tensor:
    """Normalized embeddings of ``texts``, encoding each distinct string once."""
    unique = sorted(set(texts))
    embeddings = classifier.encode_prompts(unique)
    index = {text: i for i, text in enumerate(unique)}
    return embeddings[torch.tensor([index[t] for t in texts], device=embeddings.device)]


def true_class_probability_drop(classifier, image_features: torch.Tensor, labels: torch.Tensor):
    """Score for a text attack's ``attack`` (BERT-Attack, Charmer): minus the true-class
    probability of image ``owner`` when its true-class prompt is replaced by the candidate text
    (higher = more adversarial)."""
    class_embeddings = classifier.class_embeddings()
    scale = float(torch.as_tensor(classifier.logit_scale).detach())

    def score(owner: torch.Tensor, texts: list[str]) -> torch.Tensor:
        candidates = encode_unique(classifier, texts)
        images = image_features[owner.to(image_features.device)]
        truth = labels.to(images.device)[owner.to(images.device)]
        logits = scale * images @ class_embeddings.T
        rows = torch.arange(len(texts), device=images.device)
        logits[rows, truth] = scale * (images * candidates.to(images.device)).sum(-1)
        return -logits.softmax(-1)[rows, truth].cpu()

    return score
