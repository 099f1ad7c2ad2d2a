"""BERT-Attack (Li et al. 2020; paper Eq. 4): candidates, greedy search, batching and cache, the
published filter words.

Most tests use a hand-built masked LM: a real WordPiece ``BertTokenizer`` over a small vocab file
and a lookup-table "MLM" whose logits at a position depend only on the token there, so every
candidate list is known in advance.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
import zlib
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import nudged_text_tower
import torch.nn.functional as F
from torch import nn

from mmcoa.attacks import ATTACKS, RETRIEVAL_ATTACKS, bert
from mmcoa.attacks.text import BertAttack, MaskedLM, TextEdit, kl_divergence_score, load_mlm
from mmcoa.attacks.text.candidates import CANDIDATE_POSITIONS, layout
from mmcoa.attacks.text.stopwords import default_stop_words, parse_stop_words
from mmcoa.errors import MmcoaError
from mmcoa.profiles import profile_settings
from tiny_mlm import caption_corpus

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = (
    "this is a an the of photo cat dog car truck bird fish fox wolf ship boat red blue big "
    "small tree picture image plane aard ze koa , . 7"
).split()
PIECES = ["##vark", "##bra", "##la", "##s"]
FILLERS = [a + b + "q" for a in "bcdfghjklmnp" for b in "aeiouy"]  # > 100 tokens in all
VOCAB = SPECIALS + WORDS + PIECES + FILLERS


class TableMLM(nn.Module):
    """Logits at each position are row ``table[input_id]``: position-free and fully known."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.register_buffer("table", table)
        self.calls = 0

    def forward(self, input_ids, attention_mask=None):
        self.calls += 1
        return SimpleNamespace(logits=self.table[input_ids])


def tid(token: str) -> int:
    return VOCAB.index(token)


def build_table(prefs: dict[str, dict[str, float]]) -> torch.Tensor:
    """Base logits -1 - 0.001·id (all below any threshold, no ties), then the given logits."""
    table = (-1 - 1e-3 * torch.arange(len(VOCAB), dtype=torch.float)).repeat(len(VOCAB), 1)
    for token, row in prefs.items():
        for other, logit in row.items():
            table[tid(token), tid(other)] = logit
    return table


PREFS = {
    # single-piece words: the word itself first (as a real MLM does), then substitutes
    "[CLS]": {"ship": 9, "boat": 8},
    "cat": {"cat": 9, "fox": 5, "wolf": 0.5, "fish": 0.4, "bird": 0.2},
    "dog": {"dog": 9, "the": 8, "bird": 7, "an": 6, "fish": 5, "##s": 4.5, ".": 4.2, "7": 4.1},
    "this": {"this": 9, "dog": 8, "car": 7},
    "photo": {"photo": 9, "picture": 8, "image": 7, "plane": 6},
    "truck": {"truck": 9, "car": 8, "boat": 7, "ship": 6},
    "big": {"big": 9, "small": 8, "red": 7},
    # multi-piece "aardvark" = aard ##vark: top-4 per piece, fluency (self logit) of each piece
    "aard": {"ze": 8, "koa": 7, "aard": 6.5, "##bra": 6},
    "##vark": {"##bra": 8, "##la": 7, "##vark": 6.5, "fox": 6},
    "ze": {"ze": 3},
    "koa": {"koa": 9},
    "##bra": {"##bra": 2},
    "##la": {"##la": 9},
}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import BertTokenizer

    folder = tmp_path_factory.mktemp("wordpiece")
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    tok = BertTokenizer.from_pretrained(str(folder))
    assert tok.tokenize("Aardvark.") == ["aard", "##vark", "."]
    return tok


@pytest.fixture()
def mlm(tokenizer):
    return MaskedLM(tokenizer, TableMLM(build_table(PREFS)), name="table")


def crc_score(owner: torch.Tensor, texts: list[str]) -> torch.Tensor:
    """A deterministic pseudo-random score of each string (any text, any batch)."""
    return torch.tensor([zlib.crc32(t.encode()) / 2**32 for t in texts], dtype=torch.float64)


# -- candidates ------------------------------------------------------------------------------


def test_candidates_come_from_the_words_own_positions_after_cls(mlm):
    # Without the [CLS] offset "cat" would get [CLS]'s (ship, boat) and "dog" would get cat's.
    [cands] = BertAttack(mlm).candidates(["cat dog"])
    assert cands == [["fox", "wolf", "fish"], ["bird", "fish"]]


def test_single_piece_candidates_stop_at_min_logit_and_k(mlm):
    assert BertAttack(mlm, min_logit=0.3).candidates(["cat"]) == [[["fox", "wolf", "fish"]]]
    assert BertAttack(mlm, min_logit=0.45).candidates(["cat"]) == [[["fox", "wolf"]]]
    assert BertAttack(mlm, k=2).candidates(["cat"]) == [[["fox"]]]  # top-2 ids: cat, fox


def test_stop_words_junk_and_the_original_never_come_back(mlm):
    [[this, dog, cap_dog]] = BertAttack(mlm).candidates(["This dog Dog"])
    assert this == []  # a stop word, even capitalised, is never replaced
    # "the"/"an" (stop words), "##s" (a piece), "." and "7" (not alphabetic), "dog" (original)
    assert dog == cap_dog == ["bird", "fish"]


def expected_multi_piece(
    table: torch.Tensor, pieces: tuple[str, ...], n_combos: int, original: str
) -> list[str]:
    """Independent: the first ``n_combos`` combos of the top-4 per piece, ALL ranked by mean CE
    of [CLS] combo [SEP] (the published BERT-Attack keeps every one of its 24, no cut at k)."""
    rows = [table[tid(p)].topk(4).indices.tolist() for p in pieces]
    combos = list(itertools.islice(itertools.product(*rows), n_combos))

    def log_ppl(combo):
        ids = torch.tensor(combo)
        return F.cross_entropy(table[ids], ids).item()  # logits at a position = table[its id]

    words = []
    for combo in sorted(combos, key=log_ppl):
        first, *rest = [VOCAB[i] for i in combo]
        word = first + "".join(r[2:] for r in rest)
        if not first.startswith("##") and all(r.startswith("##") for r in rest) and word != original:
            words.append(word)
    return words


@pytest.mark.parametrize("k, n_combos", [(10, 24), (4, 24), (10, 4)])
def test_multi_piece_combinations_ranked_by_perplexity(mlm, k, n_combos):
    [[cands]] = BertAttack(mlm, k=k, max_combinations=n_combos).candidates(["aardvark"])
    assert cands == expected_multi_piece(mlm.model.table, ("aard", "##vark"), n_combos, "aardvark")
    assert not any(c.startswith("##") or "fox" in c for c in cands)
    if n_combos == 24:
        assert cands[0] == "koala"  # the most fluent pieces
        assert len(cands) == 8  # all 8 words of the 16 combinations, even with k = 4
    else:  # product order: the first 4 combinations all start with "ze"
        assert all(c.startswith("ze") for c in cands)


# "aardvarks" = aard ##vark ##s: 4 x 4 x 4 combinations, of which the first 24 are tried
THREE_PIECES = {**PREFS, "##s": {"##s": 5, "##la": 4, "##bra": 3, "##vark": 2}}


def test_multi_piece_word_keeps_all_24_combinations_beyond_k(tokenizer):
    """Published BERT-Attack (``get_bpe_substitues``): up to 24 perplexity-ranked combinations of
    the top-4 per piece, every one tried; k = 10 cuts only single-piece candidates."""
    mlm = MaskedLM(tokenizer, TableMLM(build_table(THREE_PIECES)), name="table")
    assert tokenizer.tokenize("aardvarks") == ["aard", "##vark", "##s"]
    attack = BertAttack(mlm, k=10)
    assert attack.max_combinations == 24
    [[cands]] = attack.candidates(["aardvarks"])
    expected = expected_multi_piece(mlm.model.table, ("aard", "##vark", "##s"), 24, "aardvarks")
    # the first 24 combinations: ze x 16, koa x (##bra, ##la) x 4; 20 of them spell a word
    assert len(expected) == 20 and cands == expected
    assert len(cands) > attack.k
    [[capped]] = BertAttack(mlm, k=10, max_combinations=12).candidates(["aardvarks"])
    assert capped == expected_multi_piece(mlm.model.table, ("aard", "##vark", "##s"), 12, "aardvarks")


def test_words_past_the_length_limit_and_punctuation(mlm):
    # max_length 5 = [CLS] + 3 pieces + [SEP]: "big" (5th piece) is past the limit
    [[cat, truck, big]] = BertAttack(mlm, max_length=5).candidates(["cat, truck. big"])
    assert cat == ["fox,", "wolf,", "fish,"] and truck == ["car.", "boat.", "ship."]
    assert big == []


# -- candidate_position: own pieces' positions, or the preceding token's (published) -----------


class PositionMLM(nn.Module):
    """Logits at position p: the base row of :func:`build_table`, plus ``tops[p]`` ({token:
    logit}): position-dependent and fully known. Keeps every input it is given."""

    def __init__(self, tops: list[dict[str, float]]):
        super().__init__()
        self.register_buffer("base", build_table({})[0])
        self.tops, self.inputs = tops, []

    def forward(self, input_ids, attention_mask=None):
        self.inputs += input_ids.tolist()
        logits = self.base.repeat(*input_ids.shape, 1)
        for position, row in enumerate(self.tops[: input_ids.shape[1]]):
            for token, logit in row.items():
                logits[:, position, tid(token)] = logit
        return SimpleNamespace(logits=logits)


def position_mlm(tokenizer, tops: list[dict[str, float]]) -> MaskedLM:
    return MaskedLM(tokenizer, PositionMLM(tops), name="position")


def test_candidate_position_preceding_reads_the_token_before_the_word(tokenizer):
    # [CLS] This is a photo of a cat [SEP]: position p predicts FILLERS[p] alone (logit 9)
    sentence = "This is a photo of a cat"
    pieces = [tid(t) for t in ["[CLS]", "this", "is", "a", "photo", "of", "a", "cat"]]
    for position, photo, cat, ending in (("own", 4, 7, [tid("[SEP]")]), ("preceding", 3, 6, [])):
        mlm = position_mlm(tokenizer, [{f: 9.0} for f in FILLERS[:9]])
        [cands] = BertAttack(mlm, candidate_position=position).candidates([sentence])
        assert cands == [[], [], [], [FILLERS[photo]], [], [], [FILLERS[cat]]], position
        assert mlm.model.inputs == [pieces + ending], position  # no trailing [SEP] when published


# [CLS] big aard ##vark [SEP]: "zebra" = ze(1) ##bra(2), "koala" = koa(2) ##la(3)
TWO_PIECE_TOPS = [{}, {"ze": 9.0}, {"koa": 9.0, "##bra": 8.0}, {"##la": 9.0}, {}]


def test_candidate_position_shifts_a_multi_piece_words_read_window_by_one(tokenizer):
    mlm = position_mlm(tokenizer, TWO_PIECE_TOPS)
    ids = [tid(t) for t in ["[CLS]", "big", "aard", "##vark"]]
    own_ids, [_, own] = layout(mlm, ["big", "aardvark"], 30, {}, "own")
    published_ids, [_, published] = layout(mlm, ["big", "aardvark"], 30, {}, "preceding")
    assert (own_ids, own.span) == (ids + [tid("[SEP]")], (2, 4))
    assert (published_ids, published.span) == (ids, (1, 3))
    for position, word in (("own", "koala"), ("preceding", "zebra")):
        [[_, cands]] = BertAttack(mlm, candidate_position=position).candidates(["big aardvark"])
        assert cands == [word], position


def test_candidate_position_length_limit_counts_the_sep_only_when_there_is_one(tokenizer):
    mlm = position_mlm(tokenizer, TWO_PIECE_TOPS)
    ids = [tid(t) for t in ["[CLS]", "big", "aard", "##vark"]]
    # max_length 4: [CLS] + 3 pieces fit without [SEP]; with it, "aardvark" is past the limit
    published_ids, [_, published] = layout(mlm, ["big", "aardvark"], 4, {}, "preceding")
    own_ids, [big, own] = layout(mlm, ["big", "aardvark"], 4, {}, "own")
    assert (published_ids, published.span) == (ids, (1, 3))
    assert (own_ids, big.span, own.span) == (ids[:3] + [tid("[SEP]")], (1, 2), None)


def test_bad_candidate_position_fails_in_one_line_naming_the_accepted_values(mlm, monkeypatch):
    expected = "candidate_position must be one of own, preceding; got 'before'"
    monkeypatch.setattr(bert, "shared_mlm", lambda *a: pytest.fail("loaded the MLM for a bad value"))
    for make in (
        lambda: BertAttack(mlm, candidate_position="before"),
        lambda: ATTACKS.get("bert")(candidate_position="before"),
        lambda: RETRIEVAL_ATTACKS.get("bert")(candidate_position="before"),
        lambda: bert.shared_engine("unused-mlm", "cpu", 10, 1, candidate_position="before"),
        lambda: layout(mlm, ["cat"], 30, {}, "before"),
    ):
        with pytest.raises(MmcoaError) as info:
            make()
        assert str(info.value) == expected


def test_candidate_position_defaults_to_own_and_is_a_switch(mlm):
    assert CANDIDATE_POSITIONS == ("own", "preceding")
    engine = BertAttack(mlm)
    assert engine.candidate_position == "own" and engine.params()["candidate_position"] == "own"
    assert BertAttack(mlm).candidates(["cat"]) == BertAttack(mlm, candidate_position="own").candidates(
        ["cat"]
    )
    assert ATTACKS.get("bert")().candidate_position == "own"
    [field] = [f for f in dataclasses.fields(bert.UsesBertAttack) if f.name == "candidate_position"]
    assert (field.metadata["corrected"], field.metadata["published"]) == ("own", "preceding")
    assert field.metadata["choices"] == CANDIDATE_POSITIONS
    names = [f.name for f in dataclasses.fields(bert.UsesBertAttack)]
    assert names.index("candidate_position") > max(map(names.index, ("mlm", "k", "max_words")))
    assert profile_settings(bert.BertPrompts, "published")["candidate_position"] == "preceding"


def text_attacks():
    """(registry, name) of every registered attack with the BERT-Attack fields."""
    return [
        (registry, name)
        for registry in (ATTACKS, RETRIEVAL_ATTACKS)
        for name in registry.names()
        if issubclass(registry.get(name), bert.UsesBertAttack)
    ]


def test_every_text_attack_hands_candidate_position_to_its_engine(mlm, monkeypatch):
    monkeypatch.setattr(bert, "shared_mlm", lambda name, device: mlm)
    found = text_attacks()
    assert {"bert", "bert-targeted", "multimodal", "coattack", "sga"} <= {name for _, name in found}
    assert len(found) >= 8  # retrieval's bert, coattack and sga too
    for registry, name in found:
        for position in CANDIDATE_POSITIONS:
            attack = registry.get(name)(mlm="candidate-position-test", candidate_position=position)
            attack.prepare("cpu")
            assert attack.engine.candidate_position == position, (registry.kind, name)
            assert attack.params()["candidate_position"] == position
    own = bert.shared_engine("candidate-position-test", "cpu", 10, 1)
    assert own is bert.shared_engine("candidate-position-test", "cpu", 10, 1, candidate_position="own")
    published = bert.shared_engine("candidate-position-test", "cpu", 10, 1, candidate_position="preceding")
    assert (own.candidate_position, published.candidate_position) == ("own", "preceding")


# -- greedy search ---------------------------------------------------------------------------

TEXTS = [
    "This is a photo of a cat",
    "a big dog",
    "the truck of the dog",
    "This cat is big",
    "This is a photo of a aardvark",
    "an aardvark of the photo",
    "this",
    "",
]


def changed_positions(edit: TextEdit) -> list[int]:
    a, b = edit.original.split(), edit.adversarial.split()
    assert len(a) == len(b)
    return [i for i, (x, y) in enumerate(zip(a, b)) if x != y]


def reference_attack(text: str, cands: list[list[str]], score_one, max_words: int) -> str:
    """Independent greedy loop: every string scored alone, one at a time."""
    words = text.split()
    with_word = lambda ws, i, w: " ".join(ws[:i] + [w] + ws[i + 1 :])  # noqa: E731
    eligible = [i for i, c in enumerate(cands) if c]
    importance = {i: score_one(text, with_word(words, i, "[UNK]")) for i in eligible}
    current, changed = score_one(text, text), 0
    for i in sorted(eligible, key=lambda i: (-importance[i], i)):
        scores = [score_one(text, with_word(words, i, c)) for c in cands[i]]
        best = max(range(len(scores)), key=scores.__getitem__)
        if scores[best] > current:
            words[i], current, changed = cands[i][best], scores[best], changed + 1
        if changed == max_words:
            break
    return " ".join(words) if changed else text


@pytest.mark.parametrize("max_words", [1, 2])
def test_kl_attack_matches_an_independent_one_string_loop(mlm, tiny_model, max_words):
    attack = BertAttack(mlm, max_words=max_words)
    edits = attack.attack_embeddings(TEXTS, tiny_model)

    def kl_alone(original, variant):
        ref, adv = (tiny_model.encode_text([t], normalize=True) for t in (original, variant))
        return kl_divergence_score(ref, adv, torch.tensor([0])).item()

    for edit, cands in zip(edits, attack.candidates(TEXTS)):
        assert edit.changed_words == len(changed_positions(edit)) <= max_words
        assert edit.adversarial == reference_attack(edit.original, cands, kl_alone, max_words)
    assert all(e.changed_words >= 1 for e in edits[:6])  # KL > 0: any first change counts
    assert edits[0].adversarial.startswith("This is a ")  # stop words kept, "This" included


def test_generic_score_fn_and_query_counts(mlm):
    seen: dict[int, int] = {}

    def counting(owner, texts):
        for i in owner.tolist():
            seen[i] = seen.get(i, 0) + 1
        return crc_score(owner, texts)

    attack = BertAttack(mlm, max_words=2, batch_size=3)
    edits = attack.attack(TEXTS, counting)
    assert [e.queries for e in edits] == [seen.get(i, 0) for i in range(len(TEXTS))]
    for edit, cands in zip(edits, attack.candidates(TEXTS)):
        crc_one = lambda orig, t: crc_score(None, [t]).item()  # noqa: E731
        assert edit.adversarial == reference_attack(edit.original, cands, crc_one, 2)
    assert edits[-1] == TextEdit("", "", 0, 1)  # nothing to attack: only the original scored
    assert attack.attack([], counting) == []


@pytest.mark.parametrize("scored_by", ["crc", "kl"])
def test_batched_over_texts_equals_each_text_alone_and_is_deterministic(mlm, tiny_model, scored_by):
    def run(texts):
        attack = BertAttack(mlm, max_words=2, batch_size=5)
        if scored_by == "kl":
            return attack.attack_embeddings(texts, tiny_model)
        return attack.attack(texts, crc_score)

    together = run(TEXTS)
    assert together == [run([t])[0] for t in TEXTS]
    assert run(TEXTS) == together


# -- the Eq. 4 cache -------------------------------------------------------------------------


def test_cache_skips_the_victim_until_the_text_tower_changes(mlm, tiny_model, monkeypatch):
    calls = []
    encode = tiny_model.encode_text
    monkeypatch.setattr(tiny_model, "encode_text", lambda t, **kw: calls.append(len(t)) or encode(t, **kw))
    attack = BertAttack(mlm)
    first = attack.attack_embeddings(TEXTS, tiny_model)
    assert calls and mlm.model.calls > 0
    calls.clear()
    mlm_calls = mlm.model.calls
    assert attack.attack_embeddings(TEXTS[::-1], tiny_model) == first[::-1]
    assert calls == [] and mlm.model.calls == mlm_calls  # no forward at all

    with nudged_text_tower(tiny_model):
        attack.attack_embeddings(TEXTS[:2], tiny_model)
        assert calls  # the text tower changed in place: cache miss


def test_cache_keeps_working_when_smaller_than_the_batch(mlm, tiny_model):
    attack = BertAttack(mlm, cache_size=1)
    assert attack.attack_embeddings(TEXTS, tiny_model) == BertAttack(mlm).attack_embeddings(TEXTS, tiny_model)


# -- the score, stop words, settings ---------------------------------------------------------


def test_kl_divergence_score_is_eq4_over_embedding_dims():
    gen = torch.Generator().manual_seed(0)
    ref = F.normalize(torch.randn(3, 16, generator=gen), dim=-1)
    cand = F.normalize(torch.randn(5, 16, generator=gen), dim=-1)
    owner = torch.tensor([0, 2, 2, 1, 0])
    expected = F.kl_div(
        F.log_softmax(cand, -1), F.log_softmax(ref[owner], -1), log_target=True, reduction="none"
    ).sum(-1)
    assert torch.allclose(kl_divergence_score(ref, cand, owner).float(), expected, atol=1e-7)
    assert kl_divergence_score(ref, ref, torch.arange(3)).abs().max() < 1e-15


def test_stop_word_list():
    words = default_stop_words()
    assert 280 <= len(words) <= 292 and {"this", "a", "of", "is", "the", "t", "."} <= words
    assert not {"photo", "picture", "cat"} & words
    assert parse_stop_words(["The", "", "  of ", "#"]) == {"the", "of", "#"}  # data, no comments


def test_bad_settings_fail_in_one_line(mlm):
    with pytest.raises(MmcoaError, match="k must be an integer >= 1"):
        BertAttack(mlm, k=0)


# -- loading a masked LM ---------------------------------------------------------------------


def test_load_mlm_unknown_hub_id_fails_fast_in_one_line():
    start = time.perf_counter()
    with pytest.raises(MmcoaError) as info:
        load_mlm("no-such-org/no-such-masked-lm")
    assert time.perf_counter() - start < 10
    assert "\n" not in str(info.value) and "no-such-masked-lm" in str(info.value)


def tiny_bert(tokenizer):
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    return BertForMaskedLM(config)


def test_load_mlm_from_a_saved_directory(tokenizer, tmp_path, tiny_model):
    tiny_bert(tokenizer).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded = load_mlm(str(tmp_path))
    assert len(loaded.tokenizer) == len(VOCAB) and not loaded.model.training
    assert not any(p.requires_grad for p in loaded.model.parameters())
    [edit] = BertAttack(loaded, min_logit=-1e9).attack_embeddings(["This cat is big"], tiny_model)
    assert edit.changed_words == 1


def test_load_mlm_without_tokenizer_files_fails_in_one_line(tokenizer, tmp_path):
    tiny_bert(tokenizer).save_pretrained(tmp_path)
    with pytest.raises(MmcoaError) as info:
        load_mlm(str(tmp_path))
    assert "\n" not in str(info.value)


# -- the published filter words ------------------------------------------------------------------
REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"
PUBLISHED_FILTER_WORDS_SHA256 = "eca1b689ed4ecce8db29913a77e05cade8a08162234a4107ee5eda550c58502b"  # shared/reference/bert_attack_filter_words.txt


def test_default_filter_words_are_the_published_list():
    """The shipped file is the published list byte for byte (its SHA-256; compared with the
    reference file itself where the checkout has it beside it)."""
    import hashlib
    from importlib import resources

    shipped = resources.files("mmcoa.attacks.text").joinpath("filter_words.txt").read_bytes()
    assert hashlib.sha256(shipped).hexdigest() == PUBLISHED_FILTER_WORDS_SHA256
    reference = REFERENCE / "bert_attack_filter_words.txt"
    if reference.is_file():
        assert shipped == reference.read_bytes()
    published = {line.strip().lower() for line in shipped.decode("utf-8").splitlines() if line.strip()}
    assert default_stop_words() == published
    assert {"t", "s", "one", "first", "back", "same", "once", "please", ".", "this"} <= default_stop_words()


def test_the_t_of_t_shirt_gets_no_candidates(tiny_mlm):
    """On the demo, "t shirt top" lost its "t" under the old list; "t" is a published filter word."""
    corpus = caption_corpus(["t shirt top", "trouser", "pullover", "dress"], ["This is a photo of a {}"])
    mlm = load_mlm(tiny_mlm(corpus, steps=5))
    attack = BertAttack(mlm, k=10, min_logit=-1e9)  # every top-k piece is a candidate
    per_word = attack.candidates(["This is a photo of a t shirt top"])[0]
    assert per_word[0] == per_word[1] == per_word[5] == []  # This, is, t
    assert any(per_word[6] + per_word[7])  # content words are still attacked
    unfiltered = BertAttack(mlm, k=10, min_logit=-1e9, stop_words=frozenset())
    assert unfiltered.candidates(["This is a photo of a t shirt top"])[0][5]  # the list does it
