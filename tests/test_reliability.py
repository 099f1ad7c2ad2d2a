"""Nothing lost, nothing hanging: corrupt images, resume after crashes, suites that fail up front,
a failing torchrun rank, NaN losses and full disks (issue "Nothing lost, nothing hanging")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mmcoa
from mmcoa.errors import MmcoaError, one_line
from mmcoa.train.config import TrainConfig
from mmcoa.train.trainer import train
from helpers import free_port

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


@pytest.fixture()
def bad_folder(tmp_path):
    """imagefolder:<path> of 8 PNGs in two classes; b/1.png (index 5) is cut short."""
    rng = np.random.default_rng(0)
    for name in "ab":
        (tmp_path / "imgs" / name).mkdir(parents=True)
        for i in range(4):
            pixels = (rng.random((40, 40, 3)) * 255).astype("uint8")
            Image.fromarray(pixels).save(tmp_path / "imgs" / name / f"{i}.png")
    bad = tmp_path / "imgs" / "b" / "1.png"
    bad.write_bytes(bad.read_bytes()[:60])
    return tmp_path / "imgs", bad


# -- a corrupt image ---------------------------------------------------------------------------
def test_a_corrupt_image_is_one_line_naming_file_and_index(bad_folder):
    folder, bad = bad_folder
    with pytest.raises(MmcoaError) as caught:
        mmcoa.evaluate("tiny-clip", f"imagefolder:{folder}", ["clean"], batch_size=4, progress=False)
    message = str(caught.value)
    assert "\n" not in message and str(bad) in message and "image 5 " in message
    assert "--skip-bad-images" in message


def test_skip_bad_images_counts_them_in_the_record(bad_folder):
    folder, _ = bad_folder
    (record,) = mmcoa.evaluate(
        "tiny-clip", f"imagefolder:{folder}", ["clean"], batch_size=4, skip_bad_images=True, progress=False
    )
    assert record["skipped_images"] == 1 and record["n_samples"] == 7


def test_a_corrupt_image_read_by_a_dataloader_worker_is_still_one_line(bad_folder):
    folder, bad = bad_folder
    dataset = mmcoa.load_dataset(f"imagefolder:{folder}")
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, [5]), num_workers=1)
    with pytest.raises(MmcoaError) as caught:
        next(iter(loader))
    assert str(bad) in one_line(caught.value) and "Traceback" not in one_line(caught.value)


# -- resume after a crash ----------------------------------------------------------------------
def _config(tmp_path, **overrides):
    settings = dict(
        method="ft-standard", batch_size=16, max_steps=2, save_every=1, output=str(tmp_path / "run")
    )
    return TrainConfig(**{**settings, **overrides})


def test_resume_drops_a_partial_last_metrics_line(tmp_path, capsys):
    train(_config(tmp_path, max_steps=1), progress=False)
    metrics = tmp_path / "run" / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"step": 2, "lo')  # what a full disk leaves
    train(_config(tmp_path), resume=True, progress=False)
    assert "dropped unreadable line 2" in capsys.readouterr().err
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == [1, 2]


def test_resume_sweeps_temporary_files_of_an_interrupted_save(tmp_path):
    train(_config(tmp_path, max_steps=1), progress=False)
    stale = tmp_path / "run" / "checkpoints" / ".last.pt.k3j2h1.tmp"
    stale.write_bytes(b"half a checkpoint")
    train(_config(tmp_path), resume=True, progress=False)
    assert not stale.exists()


def test_resume_accepts_the_same_pretrained_file_by_another_path(tmp_path, monkeypatch):
    weights = tmp_path / "start.pt"
    torch.save(mmcoa.load_model("tiny-clip").model.state_dict(), weights)
    monkeypatch.chdir(tmp_path)
    train(_config(tmp_path, max_steps=1, pretrained="start.pt"), progress=False)
    train(_config(tmp_path, pretrained=str(weights.resolve())), resume=True, progress=False)
    other = tmp_path / "other.pt"
    torch.save(mmcoa.load_model("tiny-clip").model.state_dict(), other)
    with pytest.raises(MmcoaError, match="settings differ"):
        train(_config(tmp_path, max_steps=3, pretrained=str(other)), resume=True, progress=False)


# -- NaN / inf losses --------------------------------------------------------------------------
def _nan_at_step(monkeypatch, bad_step: int):
    from mmcoa.train import methods

    original = methods.FTStandard.loss
    calls = []

    def loss(self, ctx, images, labels):
        calls.append(1)
        value, terms = original(self, ctx, images, labels)
        return (value * float("nan"), terms) if len(calls) == bad_step else (value, terms)

    monkeypatch.setattr(methods.FTStandard, "loss", loss)


def test_a_nan_loss_stops_at_its_step_with_the_last_checkpoint_intact(tmp_path, monkeypatch):
    _nan_at_step(monkeypatch, 2)
    with pytest.raises(MmcoaError, match=r"the loss is nan at step 2; .*last.pt \(step 1\) is intact"):
        train(_config(tmp_path, max_steps=3), progress=False)
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert checkpoint["step"] == 1
    assert all(torch.isfinite(v).all() for v in checkpoint["model"].values() if v.is_floating_point())


def test_skip_nonfinite_skips_and_counts_the_step(tmp_path, monkeypatch):
    _nan_at_step(monkeypatch, 2)
    metrics = train(_config(tmp_path, max_steps=3, skip_nonfinite=True), progress=False)
    assert metrics["skipped_nonfinite_steps"] == 1 and metrics["steps"] == 3
    final = torch.load(tmp_path / "run" / "final.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in final.values() if v.is_floating_point())


# -- a full disk -------------------------------------------------------------------------------
FULL_DISK_SCRIPT = """
import resource, signal, sys, torch
from mmcoa.errors import MmcoaError
from mmcoa.files import atomic_path, write_json_atomic
target = sys.argv[1]
write_json_atomic(target + ".json", {"previous": True})
with atomic_path(target + ".pt") as tmp:
    torch.save({"previous": torch.ones(3)}, tmp)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))  # a disk that fills up
try:
    write_json_atomic(target + ".json", {"big": "x" * 200_000})
except MmcoaError as error:
    print("json:", error)
try:
    with atomic_path(target + ".pt") as tmp:
        torch.save({"big": torch.zeros(100_000)}, tmp)
except MmcoaError as error:
    print("torch:", error)
"""


def test_a_full_disk_is_one_line_and_keeps_the_previous_files(tmp_path):
    target = str(tmp_path / "out")
    done = subprocess.run(
        [sys.executable, "-c", FULL_DISK_SCRIPT, target], capture_output=True, text=True, env=ENV, timeout=120
    )
    lines = done.stdout.splitlines()
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(lines) == 2 and all(
        "no space left" in line and "previous file is intact" in line for line in lines
    )
    assert json.loads(Path(target + ".json").read_text()) == {"previous": True}
    assert torch.equal(torch.load(target + ".pt", weights_only=True)["previous"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json", "out.pt"]  # no temp files


# -- a suite that fails up front ---------------------------------------------------------------
def test_a_suite_with_a_truncated_checkpoint_writes_nothing(tmp_path):
    import yaml

    from mmcoa.cli import main

    weights = tmp_path / "tuned.pt"
    torch.save(mmcoa.load_model("tiny-clip").model.state_dict(), weights)
    weights.write_bytes(weights.read_bytes()[:5000])
    config = tmp_path / "suite.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "name": "mini",
                "n_samples": 4,
                "device": "cpu",
                "datasets": ["synthetic"],
                "models": [
                    {"label": "CLIP", "name": "tiny-clip"},
                    {"label": "Tuned", "name": "tiny-clip", "checkpoint": str(weights)},
                ],
                "attacks": [{"name": "clean"}],
            }
        )
    )
    output = tmp_path / "out"
    assert main(["suite", str(config), "--output", str(output), "--no-progress"]) == 2
    assert not output.exists() or not any(output.iterdir())


def test_a_checkpoint_of_another_architecture_is_caught_from_its_header(tmp_path):
    from mmcoa.models import check_checkpoint

    path = tmp_path / "wide.pt"
    state = mmcoa.load_model("tiny-clip").model.state_dict()
    state["visual.proj"] = torch.zeros(96, 8)
    torch.save(state, path)
    with pytest.raises(MmcoaError, match=r"visual.proj has shape \[96, 8\] in the file, \[96, 96\]"):
        check_checkpoint("tiny-clip", str(path))
    check_checkpoint("tiny-clip", str(_saved(tmp_path)))


def _saved(tmp_path):
    path = tmp_path / "fits.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in mmcoa.load_model("tiny-clip").model.state_dict().items()}, path)
    return path


# -- a failing torchrun rank -------------------------------------------------------------------
@pytest.mark.slow
def test_a_failing_rank_ends_every_rank_fast_with_its_message(bad_folder, tmp_path):
    """Rank 1's batch (images 4-7) holds the corrupt image; rank 0 must not wait for it."""
    folder, bad = bad_folder
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        "-m",
        "mmcoa",
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
        str(tmp_path / "out.json"),
        "--no-progress",
    ]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=300)
    assert done.returncode != 0 and time.perf_counter() - started < 120
    errors = [line for line in done.stderr.splitlines() if line.startswith("mmcoa: error:")]
    assert errors and "rank 1" in errors[0] and str(bad) in errors[0], done.stderr[-3000:]
    assert not (tmp_path / "out.json").exists()
