"""The tiny caption-trained masked LM: BERT-Attack's offline candidate source."""

from __future__ import annotations

import json

import pytest
import torch

from tiny_mlm import INFO_FILE, caption_corpus, train_tiny_mlm
from mmcoa.errors import MmcoaError

CLASSNAMES = [
    "t shirt top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
]
TEMPLATES = [
    "This is a photo of a {}",
    "a photo of a {}.",
    "a picture of a {}",
    "an image of a {}.",
    "a {} on a plain background",
]
CLASS_WORDS = {word for name in CLASSNAMES for word in name.split()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Train once (default settings); record the global RNG and thread count around it."""
    parent = tmp_path_factory.mktemp("mlm")
    rng_before, threads_before = torch.get_rng_state(), torch.get_num_threads()
    out = train_tiny_mlm(caption_corpus(CLASSNAMES, TEMPLATES), parent / "tiny-mlm", seed=0)
    return {
        "dir": out,
        "parent": parent,
        "rng_before": rng_before,
        "rng_after": torch.get_rng_state(),
        "threads_before": threads_before,
        "threads_after": torch.get_num_threads(),
    }


@pytest.fixture(scope="module")
def loaded(trained):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(trained["dir"], local_files_only=True)
    model, info = AutoModelForMaskedLM.from_pretrained(
        trained["dir"], local_files_only=True, output_loading_info=True
    )
    return tokenizer, model.eval(), info


def test_caption_corpus_is_every_template_times_every_class():
    corpus = caption_corpus(CLASSNAMES, TEMPLATES)
    assert len(corpus) == len(CLASSNAMES) * len(TEMPLATES) == 50
    assert corpus[0] == "This is a photo of a t shirt top"
    assert corpus[4] == "This is a photo of a coat"
    assert corpus[-1] == "a ankle boot on a plain background"
    assert len(set(corpus)) == 50


@pytest.mark.parametrize(
    "classnames,templates",
    [
        ([], TEMPLATES),
        (CLASSNAMES, []),
        (CLASSNAMES, ["no slot"]),
        (CLASSNAMES, ["{} and {}"]),
        ("coat", TEMPLATES),
    ],
)
def test_caption_corpus_rejects_bad_input(classnames, templates):
    with pytest.raises(MmcoaError):
        caption_corpus(classnames, templates)


def test_output_directory_is_complete_and_nothing_is_left_behind(trained):
    out = trained["dir"]
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", INFO_FILE} <= names
    assert [p.name for p in trained["parent"].iterdir()] == ["tiny-mlm"]  # no temp dir beside it
    info = json.loads((out / INFO_FILE).read_text())
    assert info["corpus_size"] == 50 and info["steps"] == 300 and info["seed"] == 0
    assert info["kind"] == "mmcoa-tiny-mlm"
    assert 0 < info["final_loss"] < 2.0  # it learned something (uniform over the vocab is ~5)


def test_reloads_with_auto_classes(trained, loaded):
    tokenizer, model, info = loaded
    saved = json.loads((trained["dir"] / INFO_FILE).read_text())
    # transformers 5 can hand back an empty tokenizer without raising: check it really loaded.
    assert len(tokenizer) == saved["vocab_size"] == model.config.vocab_size > 20
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert type(model).__name__ == "BertForMaskedLM"
    assert tokenizer.tokenize("This is a photo of a COAT") == ["this", "is", "a", "photo", "of", "a", "coat"]
    assert tokenizer.mask_token == "[MASK]" and tokenizer.cls_token_id is not None
    # Unseen words split into character pieces instead of collapsing into [UNK].
    assert tokenizer.unk_token not in tokenizer.tokenize("a zebra T-shirts!")
    assert tokenizer.tokenize("shirts") == ["shirt", "##s"]


def test_top_k_at_a_class_word_proposes_other_class_names(loaded):
    tokenizer, model, _ = loaded
    enc = tokenizer("This is a photo of a coat", return_tensors="pt")
    tokens = tokenizer.convert_ids_to_tokens(enc["input_ids"][0])
    assert tokens[0] == "[CLS]"
    position = tokens.index("coat")  # the unmasked text, as BERT-Attack queries it
    assert position == 7  # [CLS] this is a photo of a coat
    with torch.no_grad():
        logits = model(**enc).logits[0, position]
    top = tokenizer.convert_ids_to_tokens(logits.topk(10).indices)
    others = [t for t in top if t in CLASS_WORDS and t != "coat"]
    assert len(others) >= 3, top


def test_caller_rng_and_threads_are_untouched(trained):
    assert torch.equal(trained["rng_before"], trained["rng_after"])
    assert trained["threads_before"] == trained["threads_after"]


def test_training_is_deterministic_under_the_seed(tmp_path):
    from safetensors.torch import load_file

    corpus = caption_corpus(CLASSNAMES, TEMPLATES)
    dirs = [
        train_tiny_mlm(corpus, tmp_path / name, seed=seed, steps=25)
        for name, seed in (("a", 0), ("b", 0), ("c", 1))
    ]
    infos = [json.loads((d / INFO_FILE).read_text()) for d in dirs]
    weights = [load_file(d / "model.safetensors") for d in dirs]
    assert infos[0]["final_loss"] == infos[1]["final_loss"]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert (dirs[0] / "tokenizer.json").read_text() == (dirs[1] / "tokenizer.json").read_text()
    assert not all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])


def test_retraining_replaces_the_directory_atomically(tmp_path):
    corpus = caption_corpus(CLASSNAMES, TEMPLATES[:2])
    out = tmp_path / "mlm"
    train_tiny_mlm(corpus, out, steps=2)
    (out / "stale.txt").write_text("from an older run")
    assert train_tiny_mlm(corpus, str(out), steps=3) == out
    assert not (out / "stale.txt").exists()
    assert json.loads((out / INFO_FILE).read_text())["steps"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["mlm"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"steps": 0},
        {"hidden_size": 63, "heads": 2},
        {"layers": 0},
        {"corpus": []},
        {"corpus": "a photo of a coat"},
        {"corpus": ["a coat", ""]},
    ],
)
def test_bad_arguments_raise_a_user_error(tmp_path, kwargs):
    corpus = kwargs.pop("corpus", ["a photo of a coat"])
    with pytest.raises(MmcoaError):
        train_tiny_mlm(corpus, tmp_path / "mlm", **kwargs)
    assert not (tmp_path / "mlm").exists()


def test_output_path_that_is_a_file_is_rejected(tmp_path):
    target = tmp_path / "mlm"
    target.write_text("not a directory")
    with pytest.raises(MmcoaError, match="not a directory"):
        train_tiny_mlm(["a photo of a coat"], target, steps=1)
