"""Charmer on class prompts (Abad Rocamora et al., ICML 2024), and the choice of text attack in
the multimodal compositions.

- ``charmer``: as ``bert``, label-agnostic (paper Eq. 4): each class prompt is attacked once by
  maximizing KL(softmax(g(t)) ‖ softmax(g(t'))) of the victim's normalized text embedding, over
  the prompts t' within Levenshtein distance ``max_edits`` of t (one character inserted,
  deleted or substituted per edit); every image is classified against the attacked prompt set.
- ``charmer-targeted``: as ``bert-targeted``, per image, the character edits of its true-class
  prompt that lower its true-class probability most.
- :class:`TextAttackChoice`: the ``text_attack`` field (``bert`` or ``charmer``) of
  ``multimodal``, ``multimodal-joint`` and ``coattack``.

The engine is :class:`~mmcoa.attacks.text.charmer.Charmer`, one per setting and process
(:func:`shared_charmer`). Records say ``text_threat: character`` (``text_unit``), and their
``mean_words_changed`` counts the character edits made.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import ClassVar

from mmcoa.attacks.base import ATTACKS, Attack, AttackResult, FieldGroup
from mmcoa.attacks.bert import UsesBertAttack, cached_prompt_set, prompt_set_result, targeted_prompt_result
from mmcoa.attacks.text.charmer import ALPHABETS, Charmer, check_charmer_settings
from mmcoa.errors import MmcoaError
from mmcoa.flags import setting

TEXT_ATTACKS = ("bert", "charmer")  # the text parts a composition may use; bert first (default)


@functools.lru_cache(maxsize=8)
def shared_charmer(max_edits: int, n_positions: int, alphabet: str) -> Charmer:
    """The one Charmer engine per setting and process, as :func:`~mmcoa.attacks.bert.shared_engine`
    is for BERT-Attack: its edit cache is keyed by the victim's text-tower state, so ``charmer``,
    ``multimodal`` and ``coattack`` on one model attack its class prompts once."""
    return Charmer(max_edits, n_positions, alphabet)


@dataclass
class UsesCharmer(FieldGroup):
    """The Charmer fields of every attack that edits prompts or captions character by character:
    ``max_edits`` (the Levenshtein budget k), ``n_positions`` (rho, slots kept per edit) and
    ``alphabet`` (:data:`~mmcoa.attacks.text.charmer.ALPHABETS`); the engine is
    :func:`shared_charmer`'s."""

    text_unit: ClassVar[str] = "character"
    max_edits: int = setting(
        1, "Charmer: character edits per text (insert, delete or substitute one), the Levenshtein budget k"
    )
    n_positions: int = setting(50, "Charmer: positions kept per edit, rho (the best of its space probes)")
    alphabet: str = setting(
        "printable",
        "Charmer: characters it inserts or substitutes, deletion besides: printable (LEAF's: letters, "
        "digits, punctuation, space) or lowercase (a-z)",
        choices=tuple(ALPHABETS),
    )

    def __post_init__(self):
        check_charmer_settings(self.max_edits, self.n_positions, self.alphabet)
        self._charmer_sets: dict = {}
        super().__post_init__()

    def prepare(self, device: str) -> None:
        """Nothing to load: Charmer needs only the victim."""

    @property
    def engine(self) -> Charmer:
        return shared_charmer(self.max_edits, self.n_positions, self.alphabet)

    def adversarial_prompt_set(self, classifier):
        """Paper Eq. 4 on each class prompt within ``max_edits`` character edits; edits and
        normalized embeddings, cached until the text tower changes."""
        return cached_prompt_set(self.engine, classifier, self._charmer_sets)


@ATTACKS.register("charmer")
@dataclass
class CharmerPrompts(UsesCharmer, Attack):
    """Charmer on the class prompts, label-agnostic (paper Eq. 4; Abad Rocamora et al. 2024).

    Images stay clean; all are classified against the attacked prompt set. Queries are those
    spent on the sample's own class prompt (shared by all images of the class).

    Arguments:
        max_edits, n_positions, alphabet: the Levenshtein budget k, the positions kept per edit
            (rho) and the characters written (:class:`UsesCharmer`). (Default: 1, 50,
            ``"printable"``)

    Shape:
        - images, labels: as for :class:`~mmcoa.attacks.base.Attack`; images returned unchanged.
        - output: ``AttackResult.class_embeddings`` ``(C, D)``, the attacked prompt set, normalized;
          ``words_changed`` ``(B,)``, the character edits of each sample's class prompt;
          ``adversarial_prompts`` (C strings).
    """

    threat: ClassVar[str] = "text"

    def __call__(self, classifier, images, labels, generator=None, image_result=None) -> AttackResult:
        return prompt_set_result(*self.adversarial_prompt_set(classifier), images, labels)


@ATTACKS.register("charmer-targeted")
@dataclass
class CharmerTargeted(UsesCharmer, Attack):
    """Per-image Charmer on the true class prompt (beyond the papers, stronger).

    For each image, the character edits of its true-class prompt (within ``max_edits``) that
    lower the image's true-class probability most; an edit is kept only if it lowers it.

    Arguments:
        max_edits, n_positions, alphabet: as for :class:`CharmerPrompts`.

    Shape:
        - images, labels: as for :class:`~mmcoa.attacks.base.Attack`; images returned unchanged.
        - output: ``AttackResult.class_embeddings`` ``(B, C, D)``, normalized: each image's
          prompt set with its own true-class edit; ``words_changed`` ``(B,)``, character edits;
          ``adversarial_prompts`` None.
    """

    threat: ClassVar[str] = "text"

    def __call__(self, classifier, images, labels, generator=None, image_result=None) -> AttackResult:
        return targeted_prompt_result(self.engine, classifier, images, labels)


@dataclass
class TextAttackChoice(UsesCharmer, UsesBertAttack):
    """The text part of a composition: ``text_attack`` ``bert`` (BERT-Attack, the paper's; fields
    of :class:`~mmcoa.attacks.bert.UsesBertAttack`) or ``charmer`` (fields of
    :class:`UsesCharmer`). :meth:`params` (the record's ``attack_params``, the seed) holds the
    chosen attack's fields only, and no ``text_attack`` at ``bert``: a composition with the
    default is recorded and seeded exactly as before the choice existed."""

    text_attack: str = setting(
        "bert",
        "text part of multimodal, multimodal-joint and coattack: bert (BERT-Attack, words) or charmer "
        "(Charmer, characters)",
        choices=TEXT_ATTACKS,
        neutral="bert",
    )

    def __post_init__(self):
        if self.text_attack not in TEXT_ATTACKS:
            raise MmcoaError(
                f"text_attack must be one of {', '.join(TEXT_ATTACKS)}; got {self.text_attack!r}"
            )
        super().__post_init__()

    @property
    def _chosen(self) -> type:
        return UsesCharmer if self.text_attack == "charmer" else UsesBertAttack

    @property
    def text_unit(self) -> str:
        """The chosen text attack's unit (``word`` or ``character``)."""
        return self._chosen.text_unit

    @property
    def engine(self):
        return self._chosen.engine.fget(self)

    def prepare(self, device: str) -> None:
        self._chosen.prepare(self, device)

    def adversarial_prompt_set(self, classifier):
        """The chosen text attack's prompt set (paper Eq. 4)."""
        return self._chosen.adversarial_prompt_set(self, classifier)

    def params(self) -> dict:
        unused = UsesBertAttack if self.text_attack == "charmer" else UsesCharmer
        dropped = {f.name for f in dataclasses.fields(unused)}
        if self.text_attack == "bert":  # its neutral value
            dropped.add("text_attack")
        return {k: v for k, v in super().params().items() if k not in dropped}
