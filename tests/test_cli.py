"""The command line: smoke runs and one-line errors that leave no output behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from mmcoa.cli import main
from mmcoa.eval.results import RECORD_KEYS

SYNTHETIC = ["--dataset", "synthetic", "--model", "tiny-clip"]


def run_cli(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_eval_writes_records_and_prints_table(tmp_path, capsys):
    output = tmp_path / "results.json"
    code, out, _ = run_cli(
        capsys,
        "eval",
        *SYNTHETIC,
        "--attacks",
        "clean,pgd",
        "--eps",
        "4",
        "--n-steps",
        "2",
        "--n-samples",
        "8",
        "--batch-size",
        "4",
        "--output",
        str(output),
        "--no-progress",
    )
    assert code == 0
    records = json.loads(output.read_text())
    assert [r["attack"] for r in records] == ["clean", "pgd"]
    assert all(set(RECORD_KEYS) <= set(r) for r in records)
    assert records[1]["attack_params"]["eps"] == pytest.approx(4 / 255)
    assert records[1]["attack_params"]["n_steps"] == 2
    assert "4/255" in out and "accuracy" in out


def test_eval_loads_a_checkpoint(tmp_path, capsys, tiny_model):
    checkpoint = tmp_path / "tiny.pt"
    torch.save(tiny_model.model.state_dict(), checkpoint)
    output = tmp_path / "r.json"
    code, _, _ = run_cli(
        capsys,
        "eval",
        *SYNTHETIC,
        "--pretrained",
        str(checkpoint),
        "--attacks",
        "clean",
        "--output",
        str(output),
        "--no-progress",
    )
    assert code == 0
    assert json.loads(output.read_text())[0]["pretrained"] == str(checkpoint)


def test_listings(capsys):
    code, out, _ = run_cli(capsys, "models")
    assert code == 0 and "tiny-clip" in out and "tiny-clip-hf" in out
    code, out, _ = run_cli(capsys, "models", "--all")
    assert "ViT-B-32" in out
    code, out, _ = run_cli(capsys, "datasets")
    assert code == 0 and all(
        n in out for n in ("fashion_mnist", "cifar10", "cifar100", "synthetic", "imagefolder")
    )
    code, out, _ = run_cli(capsys, "attacks")
    assert code == 0 and "pgd" in out and "clean" in out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--model", "no-such-model", "--dataset", "synthetic"], "unknown model 'no-such-model'"),
        (["--model", "tiny-clip", "--dataset", "no-such-data"], "unknown dataset 'no-such-data'"),
        (SYNTHETIC + ["--attacks", "clean,nope"], "unknown attack 'nope'; known:"),
        (SYNTHETIC + ["--eps", "0"], "--eps must be from 0.1 to 255"),
        (SYNTHETIC + ["--eps", "300"], "--eps must be from 0.1 to 255"),
        (SYNTHETIC + ["--step-size", "-1"], "--step-size must be from 0.1 to 255"),
        (SYNTHETIC + ["--n-samples", "0"], "n_samples must be a positive integer"),
        (SYNTHETIC + ["--attacks", "clean", "--eps", "4"], "no chosen attack takes eps"),
        (SYNTHETIC + ["--pretrained", "/nowhere/model.pt"], "does not exist"),
        (SYNTHETIC + ["--device", "cuda:7"], "device 'cuda:7' is not available"),
        (["--model", "ViT-B-32", "--dataset", "synthetic"], "needs --pretrained"),
        (["--model", "tiny-clip", "--dataset", "cifar10", "--data-root", "/nowhere"], "--download"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, argv, message):
    output = tmp_path / "results.json"
    code, _, err = run_cli(capsys, "eval", *argv, "--output", str(output), "--no-progress")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mmcoa: error: ") and message in lines[0]
    assert not output.exists() and os.listdir(tmp_path) == []


def test_corrupt_checkpoint_is_one_line_and_writes_nothing(tmp_path, capsys):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(os.urandom(256))
    output = tmp_path / "results.json"
    code, _, err = run_cli(
        capsys, "eval", *SYNTHETIC, "--pretrained", str(corrupt), "--output", str(output), "--no-progress"
    )
    assert code == 2 and "corrupt or unreadable" in err and len(err.strip().splitlines()) == 1
    assert not output.exists()


def test_output_that_is_a_directory(tmp_path, capsys):
    code, _, err = run_cli(capsys, "eval", *SYNTHETIC, "--output", str(tmp_path))
    assert code == 2 and "is a directory" in err


@pytest.mark.slow
def test_console_script_runs(tmp_path):
    """The installed `mmcoa` entry point, as a user runs it."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    script = os.path.join(os.path.dirname(sys.executable), "mmcoa")
    done = subprocess.run(
        [script, "eval", "--model", "nope", "--dataset", "synthetic", "--output", str(tmp_path / "r.json")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert done.stderr.startswith("mmcoa: error: unknown model 'nope'")
