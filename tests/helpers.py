"""Helpers the test modules share (fixtures live in conftest.py): the perturbation-budget check,
a training run crashed at a step, and ``mmcoa`` run in 1 or 2 processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch

from mmcoa.train import trainer


def assert_valid_perturbation(adv: torch.Tensor, images: torch.Tensor, eps: float, norm: str = "linf"):
    """Adversarial images lie in the eps-ball (L-inf or L2) around the images and in [0, 1]."""
    delta = adv - images
    if norm == "linf":
        assert delta.abs().max() <= eps + 1e-6
    else:
        assert delta.flatten(1).norm(dim=1).max() <= eps + 1e-5
    assert adv.min() >= 0 and adv.max() <= 1


class Interrupted(Exception):
    pass


def crash_training_at(config, at: int, monkeypatch) -> None:
    """Run ``train(config)`` until it raises :class:`Interrupted` as step ``at`` starts (a
    crash mid-run: its checkpoints so far are on disk)."""
    step = trainer.TrainLoop.step

    def crashing(self, index, *args):
        if index == at:
            raise Interrupted
        return step(self, index, *args)

    monkeypatch.setattr(trainer.TrainLoop, "step", crashing)
    with pytest.raises(Interrupted):
        trainer.train(config, progress=False)
    monkeypatch.undo()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_mmcoa(args: list[str], processes: int) -> None:
    """``python -m mmcoa ARGS``, or ``torchrun --nproc_per_node N -m mmcoa ARGS``."""
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(processes),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        "-m",
        "mmcoa",
    ]
    command = launcher + args if processes > 1 else [sys.executable, "-m", "mmcoa"] + args
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
