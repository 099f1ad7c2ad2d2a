"""The few-shot sampler switch ``shot_sampler`` (docs/deviations.md row 6): ``fixed`` reuses one
seeded per-class list every epoch; ``pop`` (the published MMCoA code's) takes new images every
epoch, class after class, and cuts them into batches in that order. Runs use the `synthetic`
dataset (64 train images, 4 classes of 16) and `tiny-clip` with FT-standard (no attack)."""

from __future__ import annotations

import json
import os

import pytest
import torch

import mmcoa
from mmcoa.errors import MmcoaError
from mmcoa.train import trainer
from mmcoa.train.config import TrainConfig
from mmcoa.train.order import PoppingOrder
from mmcoa.train.shots import class_orders, dataset_labels, few_shot_indices, popped_epochs
from mmcoa.train.trainer import train
from helpers import crash_training_at

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def labels():
    return dataset_labels(mmcoa.load_dataset("synthetic", split="train"))


@pytest.fixture()
def make_config(tmp_path):
    def make(name="run", **overrides):
        settings = dict(
            method="ft-standard",
            shots="1",
            epochs=3,
            shot_sampler="pop",
            batch_size=2,
            lr=1e-3,
            output=str(tmp_path / name),
        )
        return TrainConfig(**{**settings, **overrides})

    return make


def read_json(folder, name):
    with open(os.path.join(folder, name)) as handle:
        return json.load(handle)


def recorded_batches(monkeypatch) -> list[list[int]]:
    """The dataset indices of every step's batch, as the loop receives them."""
    seen, step = [], trainer.TrainLoop.step

    def recording(self, index, state, images, labels, chosen=None):
        seen.append([int(i) for i in chosen])
        return step(self, index, state, images, labels, chosen)

    monkeypatch.setattr(trainer.TrainLoop, "step", recording)
    return seen


def assert_one_line(error, *words):
    message = str(error.value)
    assert "\n" not in message and all(w in message for w in words), message


def test_defaults_and_profiles():
    assert TrainConfig().shot_sampler == "fixed"
    assert TrainConfig(profile="published").shot_sampler == "pop"
    assert TrainConfig(profile="published", shot_sampler="fixed").shot_sampler == "fixed"


def test_pop_one_shot_three_epochs_sees_new_images_in_class_order(make_config, labels, monkeypatch):
    """Epoch e takes item e of each class's seeded order, class 0 first: 12 distinct images,
    batches of 2 are [class 0, class 1], [class 2, class 3]."""
    seen = recorded_batches(monkeypatch)
    config = make_config()
    metrics = train(config, progress=False)
    orders = class_orders(labels, seed=0)
    expected = [[orders[c][e] for c in range(4)] for e in range(3)]
    assert seen == [epoch[i : i + 2] for epoch in expected for i in (0, 2)]
    assert [[labels[i] for i in batch] for batch in seen] == [[0, 1], [2, 3]] * 3
    assert len({i for batch in seen for i in batch}) == 12  # never repeated
    assert sorted(expected[0]) == few_shot_indices(labels, "1", seed=0)  # epoch 0: the fixed list
    saved = read_json(config.output, "shots.json")
    assert saved["shot_sampler"] == "pop" and saved["epoch_items"] == expected
    assert saved["indices"] == sorted(i for epoch in expected for i in epoch)
    assert (metrics["steps"], metrics["n_train_items"], metrics["n_epoch_items"]) == (6, 12, 4)


def test_popping_order_interface():
    order = PoppingOrder([[1, 2, 3], [4, 5, 6]], batch_size=2)
    assert order.per_epoch == 2 and order.epoch_items == 3
    assert [order.global_batch(s) for s in range(4)] == [[1, 2], [3], [4, 5], [6]]
    assert [order.global_size(s) for s in range(4)] == [2, 1, 2, 1]
    assert popped_epochs([0, 1, 0, 1], "1", 2, seed=5) == popped_epochs([0, 1, 0, 1], "1", 2, seed=5)


def test_fixed_reuses_the_same_items_every_epoch(make_config, labels, monkeypatch):
    seen = recorded_batches(monkeypatch)
    config = make_config(shot_sampler=None, batch_size=4)
    assert config.shot_sampler == "fixed"
    train(config, progress=False)
    fixed = few_shot_indices(labels, "1", seed=0)
    assert len(seen) == 3 and all(sorted(batch) == fixed for batch in seen)
    saved = read_json(config.output, "shots.json")
    assert saved == {"shots": "1", "seed": 0, "indices": fixed, "short_classes": []}


def test_pop_resumes_bit_identical(make_config, monkeypatch):
    straight = make_config("straight", save_every=1)
    train(straight, progress=False)
    resumed = make_config("resumed", save_every=1)
    crash_training_at(resumed, 3, monkeypatch)
    last = torch.load(os.path.join(resumed.output, "checkpoints", "last.pt"), weights_only=True)
    assert last["step"] == 3  # epoch 1 is steps 2 and 3: resumes inside a popped epoch
    monkeypatch.setattr(trainer, "popped_epochs", lambda *a: pytest.fail("epochs redrawn on resume"))
    metrics = train(resumed, resume=True, progress=False)
    assert metrics["steps"] == 6
    expected, got = (torch.load(os.path.join(c.output, "final.pt")) for c in (straight, resumed))
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert read_json(straight.output, "shots.json") == read_json(resumed.output, "shots.json")


def test_refusals_are_one_line(make_config, tmp_path):
    with pytest.raises(MmcoaError) as error:
        train(make_config(shots="full"), progress=False)
    assert_one_line(error, "shot_sampler pop", "shots full", "1, 5 or 50")
    with pytest.raises(MmcoaError) as error:
        train(make_config(shots="5", epochs=4), progress=False)  # 20 of 16 images per class
    assert_one_line(error, "shots 5 x 4 epochs", "needs 20", "class 0 has 16", "shot_sampler fixed")
    assert not (tmp_path / "run").exists()  # refused before the run wrote anything


def test_resume_with_more_epochs_than_drawn_is_refused(make_config):
    train(make_config(epochs=1, max_steps=1, keep_resume_state=True), progress=False)
    with pytest.raises(MmcoaError) as error:
        train(make_config(epochs=2), resume=True, progress=False)
    assert_one_line(error, "--resume", "1 epoch(s)", "epochs 2")


def test_published_profile_leaves_full_runs_alone(make_config):
    config = make_config(shot_sampler=None, profile="published", shots="full", max_steps=1)
    assert config.shot_sampler == "pop"
    train(config, progress=False)
    saved = read_json(config.output, "shots.json")
    assert "epoch_items" not in saved and len(saved["indices"]) == 64
