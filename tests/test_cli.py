"""The command line: smoke runs and one-line errors that leave no output behind; eps and step
sizes in 1/255 wherever a user writes them; the train flags made from TrainConfig's fields and one
declaration of the attack flags; outputs checked before any work; Ctrl-C as one line, exit 130."""

from __future__ import annotations

import argparse
import importlib
import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

import mmcoa.cli
from mmcoa.analysis.commands import ANALYSES, Analysis
from mmcoa.attacks.flags import attack_flags
from mmcoa.cli import build_parser, main
from mmcoa.errors import MmcoaError
from mmcoa.eval.results import RECORD_KEYS
from mmcoa.flags import OneLineParser
from mmcoa.train.config import TrainConfig, load_config
from mmcoa.units import from_255

SYNTHETIC = ["--dataset", "synthetic", "--model", "tiny-clip"]


def run_cli(capsys, *argv):
    """Exit status, stdout and stderr of ``mmcoa ARGV`` (argparse's errors exit with status 2)."""
    try:
        code = main(list(argv))
    except SystemExit as exit_:
        code = exit_.code
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


# -- units: eps and step sizes in 1/255; flags generated from TrainConfig and the attacks --------
def subparser(name: str) -> argparse.ArgumentParser:
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices[name]


def flags_of(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions if a.help != argparse.SUPPRESS for s in a.option_strings}


def write_yaml(tmp_path, text: str):
    path = tmp_path / "train.yaml"
    path.write_text("method: tecoa\nbatch_size: 16\nmax_steps: 1\n" + text)
    return path


# -- eps and step sizes in 1/255 ----------------------------------------------------------------
def test_a_training_yaml_gives_eps_in_255ths(tmp_path):
    config = load_config(str(write_yaml(tmp_path, "train_eps: 1\ntrain_step_size: 0.5\n")), {})
    assert config.train_eps == pytest.approx(1 / 255)  # not 1.0, the whole pixel range
    assert config.train_step_size == pytest.approx(0.5 / 255)
    flags = load_config(str(write_yaml(tmp_path, "train_eps: 1\n")), {"train_eps": 4})
    assert flags.train_eps == pytest.approx(4 / 255)  # a flag overrides the file, same unit


@pytest.mark.parametrize(
    "text,message",
    [
        ("train_eps: 0.00392156862745098\n", "train_eps is in units of 1/255"),
        ("train_eps: 0.0039\n", "the unit changed from pixels"),
        ("train_step_size: 0.0039\n", "train_step_size is in units of 1/255"),
        ("train_step_size: 0\n", "train_step_size must be from 0.1 to 255"),
        ("train_eps: 300\n", "train_eps must be from 0.1 to 255"),
        ("train_eps: true\n", "train_eps must be a number"),
        ("alpha: 1\n", "alpha was renamed to adv_image_weight"),
        ("beta: 0\n", "beta was renamed to adv_text_weight"),
        ("betas: [0.9, 1.5]\n", "betas must be two numbers in [0, 1)"),
    ],
)
def test_a_bad_training_yaml_is_one_line_before_any_file(tmp_path, capsys, text, message):
    output = tmp_path / "run"
    code, _, err = run_cli(
        capsys, "train", "--config", str(write_yaml(tmp_path, text)), "--output", str(output), "--no-progress"
    )
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("mmcoa: error: ")
    assert message in lines[0]
    assert not output.exists()  # no shots.json, no config.json


def test_the_pixel_refusal_names_the_value_to_write():
    with pytest.raises(MmcoaError, match=r"got 0.0156863, a pixel value\? write 4; accepted: 0.1 to 255"):
        from_255(4 / 255, "train_eps")


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--train-eps", "0.0039"], "--train-eps is in units of 1/255"),
        (["--train-step-size", "0"], "--train-step-size must be from 0.1 to 255"),
        (["--alpha", "1"], "--alpha was renamed to --adv-image-weight"),
    ],
)
def test_bad_train_flags_are_one_line_before_any_file(tmp_path, capsys, argv, message):
    output = tmp_path / "run"
    code, _, err = run_cli(
        capsys, "train", "--method", "tecoa", *argv, "--output", str(output), "--no-progress"
    )
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not output.exists()


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--eps", "0.0039"], "--eps is in units of 1/255"),
        (["--step-size", "0.004"], "--step-size is in units of 1/255"),
    ],
)
def test_eval_refuses_pixel_looking_budgets(tmp_path, capsys, argv, message):
    output = tmp_path / "r.json"
    code, _, err = run_cli(
        capsys,
        "eval",
        "--model",
        "tiny-clip",
        "--dataset",
        "synthetic",
        "--attacks",
        "pgd",
        *argv,
        "--output",
        str(output),
        "--no-progress",
    )
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert os.listdir(tmp_path) == []


# -- one source: the train flags come from TrainConfig -------------------------------------------
def test_every_trainconfig_field_has_a_train_flag():
    flags = flags_of(subparser("train"))
    for f in dataclasses.fields(TrainConfig):
        assert f"--{f.name.replace('_', '-')}" in flags, f.name
    assert {"--betas", "--adam-eps", "--config", "--resume"} <= flags


def test_train_flags_reach_the_config(tmp_path, monkeypatch):
    import mmcoa.train.trainer as trainer

    seen = {}
    monkeypatch.setattr(trainer, "train", lambda config, **_: seen.setdefault("config", config) and {})
    code = main(
        [
            "train",
            "--method",
            "mmcoa",
            "--betas",
            "0.8",
            "0.9",
            "--adam-eps",
            "1e-8",
            "--adv-image-weight",
            "1",
            "--adv-text-weight",
            "0",
            "--train-eps",
            "4",
            "--skip-nonfinite",
            "--output",
            str(tmp_path / "run"),
            "--no-progress",
        ]
    )
    config = seen["config"]
    assert code == 0 and config.betas == (0.8, 0.9) and config.adam_eps == 1e-8
    assert (config.adv_image_weight, config.adv_text_weight) == (1, 0)
    assert config.train_eps == pytest.approx(4 / 255) and config.skip_nonfinite is True
    assert config.device in ("cpu", "cuda")  # auto, resolved


def test_help_shows_units_and_defaults():
    text = subparser("train").format_help()
    assert "training PGD eps [units of 1/255] (default: the method's: mmcoa 1; 4: fare" in " ".join(
        text.split()
    )
    assert "AdamW betas (default: 0.9 0.98)" in " ".join(text.split())
    assert "--adam-eps" in text and "--betas" in text and "auto" in text
    assert "[units of 1/255]" in subparser("eval").format_help()


# -- one declaration of the attack flags ---------------------------------------------------------
def attack_flags_of(parser) -> set[str]:
    declared = {f"--{f.name.replace('_', '-')}" for f in attack_flags()}
    return flags_of(parser) & (declared | {"--steps", "--restarts", "--alpha"})


def analysis_parser(kind: str) -> argparse.ArgumentParser:
    parser = OneLineParser(prog=f"mmcoa analyze {kind}")
    ANALYSES.get(kind).configure(parser)
    return parser


@pytest.mark.parametrize("kind", ["eps-sweep", "curves", "interpolation", "features", "gallery"])
def test_analyze_and_eval_take_the_same_attack_flags(kind):
    every = {f"--{f.name.replace('_', '-')}" for f in attack_flags()}
    assert attack_flags_of(subparser("eval")) == every
    assert attack_flags_of(analysis_parser(kind)) == every


def test_flags_are_the_attack_field_names(tmp_path, capsys):
    from mmcoa.attacks import ATTACKS
    from mmcoa.attacks.base import parameter_names

    fields = set().union(*(parameter_names(ATTACKS.get(n)) for n in ATTACKS.names()))
    assert {f.name for f in attack_flags()} <= fields  # no bridge table between flag and field
    code, _, err = run_cli(
        capsys,
        "eval",
        "--model",
        "tiny-clip",
        "--dataset",
        "synthetic",
        "--steps",
        "2",
        "--output",
        str(tmp_path / "r.json"),
    )
    assert code == 2 and "--steps was renamed to --n-steps" in err and os.listdir(tmp_path) == []


def test_device_defaults_to_auto():
    for name in ("eval", "retrieval", "train"):
        action = next(a for a in subparser(name)._actions if "--device" in a.option_strings)
        assert action.default == "auto" or (name == "train" and "auto" in action.help)
    action = next(a for a in analysis_parser("eps-sweep")._actions if "--device" in a.option_strings)
    assert action.default == "auto"


# -- outputs checked before any work, settings-file errors, Ctrl-C, argparse errors --------------
CLEAN_ON_SYNTHETIC = ["--model", "tiny-clip", "--dataset", "synthetic", "--attacks", "clean"]
SUITE = {
    "models": [{"label": "CLIP", "name": "tiny-clip"}],
    "datasets": [{"name": "synthetic", "options": {"n_samples": 8}}],
    "attacks": [{"name": "clean"}, {"name": "pgd", "n_steps": 2}],
    "n_samples": 4,
}


def one_error_line(capsys, prefix: str = "mmcoa: error: ") -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix), err
    return lines[0]


def no_work(*args, **kwargs):
    pytest.fail("the command started its work before checking its output")


# -- outputs are checked before any work ------------------------------------------------------
@pytest.fixture()
def workdir(tmp_path, monkeypatch):
    """A folder holding one regular file, ``afile``; every command's work fails the test."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("not a folder\n")
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(SUITE))
    curves = ANALYSES.get("curves")
    monkeypatch.setitem(ANALYSES._entries, "curves", Analysis(curves.help, curves.configure, no_work))
    work = [
        ("mmcoa.eval", "evaluate"),
        ("mmcoa.models", "load_model"),
        ("mmcoa.train.trainer", "train"),
        ("mmcoa.eval.suite", "run_suite"),
        ("mmcoa.report", "write_report"),
        ("mmcoa_demo.demo", "run_demo"),
    ]
    # Import every module first: one imported while load_model is patched would keep no_work
    # under its own name after the test (mmcoa.eval.suite's ``from mmcoa.models import ...``).
    for module, _ in work:
        importlib.import_module(module)
    for module, name in work:
        monkeypatch.setattr(f"{module}.{name}", no_work)
    return tmp_path


COMMANDS = {  # command → (its arguments but --output, whether --output is a directory)
    "eval": (["eval", *CLEAN_ON_SYNTHETIC, "--no-progress"], False),
    "retrieval": (["retrieval", "--model", "tiny-clip", "--data-root", "nowhere", "--no-progress"], False),
    "train": (["train", "--max-steps", "1", "--no-progress"], True),
    "suite": (["suite", "suite.yaml", "--no-progress"], True),
    "report": (["report", "nowhere"], True),
    "analyze": (["analyze", "curves", "nowhere", "--no-progress"], True),
    "demo": (["demo", "--no-progress"], True),
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(
    "output, words",
    [
        ("afile/sub/out.json", ["'afile' is a file, not a directory"]),
        ("", ["--output is empty"]),
    ],
)
def test_unwritable_output_is_one_line_before_any_work(workdir, capsys, command, output, words):
    argv, _ = COMMANDS[command]
    assert main([*argv, "--output", output]) == 2
    line = one_error_line(capsys)
    assert all(word in line for word in words), line
    assert sorted(os.listdir(workdir)) == ["afile", "suite.yaml"]


@pytest.mark.parametrize("command", [c for c, (_, directory) in COMMANDS.items() if directory])
def test_a_file_where_a_directory_is_needed(workdir, capsys, command):
    argv, _ = COMMANDS[command]
    assert main([*argv, "--output", "afile"]) == 2
    assert "--output 'afile' is a file; give a directory" in one_error_line(capsys)
    assert (workdir / "afile").read_text() == "not a folder\n"


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0,
    reason="root writes into read-only folders; the other cases cover root",
)
def test_read_only_folder(workdir, capsys):
    locked = workdir / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert main(["eval", *CLEAN_ON_SYNTHETIC, "--output", "locked/r.json", "--no-progress"]) == 2
        assert "cannot be written" in one_error_line(capsys)
    finally:
        locked.chmod(0o755)


def test_a_refused_probe_is_one_line(workdir, capsys, monkeypatch):
    """What a read-only folder does to a user who is not root (the probe file is refused)."""

    def refuse(**kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("mmcoa.outputs.tempfile.mkstemp", refuse)
    assert main(["eval", *CLEAN_ON_SYNTHETIC, "--output", "r.json", "--no-progress"]) == 2
    assert "--output 'r.json' cannot be written: .: Permission denied" in one_error_line(capsys)


def test_the_output_check_leaves_nothing_behind(workdir, capsys, monkeypatch):
    """A missing parent folder is fine (the write creates it) and is not created by the check."""
    monkeypatch.setattr("mmcoa.eval.evaluate", lambda *a, **k: [])
    monkeypatch.setattr("mmcoa.eval.write_records", lambda *a, **k: None)
    monkeypatch.setattr("mmcoa.eval.format_table", lambda records: "")
    assert main(["eval", *CLEAN_ON_SYNTHETIC, "--output", "new/deeper/r.json", "--no-progress"]) == 0
    assert sorted(os.listdir(workdir)) == ["afile", "suite.yaml"]


# -- settings files: one line naming the key, the value and what is accepted -----------------
@pytest.mark.parametrize(
    "text, words",
    [
        ("123: abc\n", "unknown training setting(s) 123"),
        ("epochs: [1]\n", "epochs must be an integer; got [1]"),
        ("lr: [1]\n", "lr must be a number or null; got [1]"),
        ("shots: 3.5\n", "shots must be one of 1, 5, 50, full; got 3.5"),
        ("betas: [a, b]\n", "betas must be a pair of numbers; got ['a', 'b']"),
        ("- a\n- b\n", "must be a mapping of settings, one 'name: value' per line; got a list"),
        ("epochs: null\n", "epochs must be an integer; got null"),
        ("keep_epoch_checkpoints: 1\n", "keep_epoch_checkpoints must be true or false; got 1"),
        ("device: [cpu]\n", "device must be a string; got ['cpu']"),
    ],
)
def test_training_yaml_type_errors(tmp_path, capsys, text, words):
    config = tmp_path / "train.yaml"
    config.write_text(text)
    assert main(["train", "--config", str(config), "--output", str(tmp_path / "run")]) == 2
    assert words in one_error_line(capsys)
    assert not (tmp_path / "run").exists()


def suite_with(**changes) -> dict:
    return {**SUITE, **changes}


@pytest.mark.parametrize(
    "values, words",
    [
        ({**SUITE, 123: "abc"}, "the suite has unknown key(s) 123"),
        (suite_with(seed=[1]), "seed must be an integer; got [1]"),
        (suite_with(n_samples=3.5), "n_samples must be a positive integer or null; got 3.5"),
        (suite_with(batch_size=None), "batch_size must be a positive integer; got null"),
        (suite_with(split=None), "split must be a non-empty string; got null"),
        (
            suite_with(attacks=[{"name": "pgd", "n_steps": 2.5}]),
            "attacks[0].n_steps must be an integer; got 2.5",
        ),
        (
            suite_with(attacks=[{"name": "pgd", "n_steps": [2]}]),
            "attacks[0].n_steps must be an integer; got [2]",
        ),
        (suite_with(attacks=[{"name": "pgd", "eps": [2]}]), "attacks[0].eps must be a number; got [2]"),
        (
            suite_with(attacks=[{"name": "pgd", "random_start": 1}]),
            "attacks[0].random_start must be true or false; got 1",
        ),
        (suite_with(attacks=[{"name": "bert", "k": 2.5}]), "attacks[0].k must be an integer; got 2.5"),
        (suite_with(attacks=[{"name": "pgd", 123: "abc"}]), "takes no parameter 123"),
        (suite_with(datasets=[{"name": "synthetic", "options": {123: 1, "a": 2}}]), "takes no option 123, a"),
        (
            suite_with(datasets=[{"name": "synthetic", "options": {"n_samples": [8]}}]),
            "datasets[0].options.n_samples must be an integer; got [8]",
        ),
        (
            suite_with(models=[{"name": "tiny-clip", "datasets": [1, [2]]}]),
            "models[0].datasets must be a non-empty list of the suite's datasets (synthetic); got [1, [2]]",
        ),
        (["a", "b"], "must be a mapping of settings, one 'name: value' per line; got a list"),
    ],
)
def test_suite_yaml_type_errors(tmp_path, capsys, values, words):
    config = tmp_path / "suite.yaml"
    config.write_text(yaml.safe_dump(values))
    assert main(["suite", str(config), "--output", str(tmp_path / "out")]) == 2
    assert words in one_error_line(capsys)
    assert not (tmp_path / "out").exists()


# -- Ctrl-C: one line saying what was saved and how to resume, exit 130 ------------------------
def interrupted(monkeypatch, capsys, handler: str, argv: list[str]) -> str:
    def stop(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(mmcoa.cli, handler, stop)
    assert main(argv) == 130
    return one_error_line(capsys, "mmcoa: interrupted")


def test_interrupted_training_names_its_checkpoint_and_resume(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    line = interrupted(monkeypatch, capsys, "cmd_train", ["train", "--output", str(run)])
    assert "no checkpoint" in line
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"")
    line = interrupted(monkeypatch, capsys, "cmd_train", ["train", "--output", str(run)])
    assert str(run / "checkpoints" / "last.pt") in line and "--resume" in line


def test_interrupted_suite_counts_its_finished_cells(tmp_path, capsys, monkeypatch):
    cells = tmp_path / "out" / "cells"
    cells.mkdir(parents=True)
    for name in ("a", "b"):
        (cells / f"{name}.json").write_text("{}")
    line = interrupted(
        monkeypatch, capsys, "cmd_suite", ["suite", "s.yaml", "--output", str(tmp_path / "out")]
    )
    assert "2 finished cells" in line and str(cells) in line and "--resume" in line


@pytest.mark.parametrize(
    "handler, argv, words",
    [
        ("cmd_eval", ["eval", *CLEAN_ON_SYNTHETIC, "--output", "r.json"], "r.json was not written"),
        (
            "cmd_retrieval",
            ["retrieval", "--model", "m", "--data-root", "d", "--output", "r.json"],
            "r.json was not written",
        ),
        ("cmd_report", ["report", "x", "--output", "rep"], "rep"),
        ("cmd_models", ["models"], "nothing was written"),
    ],
)
def test_other_interrupted_commands_say_what_was_written(capsys, monkeypatch, handler, argv, words):
    assert words in interrupted(monkeypatch, capsys, handler, argv)


# -- argparse errors are one line ---------------------------------------------------------------
def test_a_bad_number_is_one_line(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["eval", *CLEAN_ON_SYNTHETIC, "--n-samples", "abc", "--output", "r.json"])
    assert stop.value.code == 2
    assert one_error_line(capsys, "mmcoa eval: error: ") == (
        "mmcoa eval: error: argument --n-samples: invalid int value: 'abc' (see mmcoa eval --help)"
    )


def subcommands() -> list[str]:
    action = next(a for a in build_parser()._actions if a.dest == "command")
    return sorted(action.choices)


@pytest.mark.parametrize("command", subcommands())
def test_every_subcommand_reports_a_bad_flag_in_one_line(capsys, command):
    with pytest.raises(SystemExit) as stop:
        main([command, "--no-such-flag"])
    assert stop.value.code == 2
    assert one_error_line(capsys, f"mmcoa {command}: error: ").endswith(f"(see mmcoa {command} --help)")


@pytest.mark.parametrize(
    "argv, prog",
    [
        ([], "mmcoa"),
        (
            [
                "analyze",
                "eps-sweep",
                "--model",
                "tiny-clip",
                "--dataset",
                "synthetic",
                "--n-samples",
                "x",
                "--output",
                "o",
            ],
            "mmcoa analyze eps-sweep",
        ),
    ],
)
def test_the_main_and_analysis_parsers_are_one_line_too(capsys, argv, prog):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    assert one_error_line(capsys, f"{prog}: error: ").endswith(f"(see {prog} --help)")


def test_help_is_still_the_full_help(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["eval", "--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: mmcoa eval") and "--n-samples" in out and "--output" in out
