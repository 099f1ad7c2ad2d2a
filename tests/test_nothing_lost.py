"""Nothing lost, nothing hanging: outputs checked before any work, one-line errors for bad
settings files and bad flags, and Ctrl-C as one line (what was saved, how to resume), exit 130."""

from __future__ import annotations

import os

import pytest
import yaml

import mmcoa.cli
from mmcoa.analysis.commands import ANALYSES, Analysis
from mmcoa.cli import build_parser, main

SYNTHETIC = ["--model", "tiny-clip", "--dataset", "synthetic", "--attacks", "clean"]
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


# -- 1. outputs are checked before any work ------------------------------------------------------
@pytest.fixture()
def workdir(tmp_path, monkeypatch):
    """A folder holding one regular file, ``afile``; every command's work fails the test."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("not a folder\n")
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(SUITE))
    curves = ANALYSES.get("curves")
    monkeypatch.setitem(ANALYSES._entries, "curves", Analysis(curves.help, curves.configure, no_work))
    for module, name in [
        ("mmcoa.eval", "evaluate"),
        ("mmcoa.models", "load_model"),
        ("mmcoa.train.trainer", "train"),
        ("mmcoa.eval.suite", "run_suite"),
        ("mmcoa.report", "write_report"),
        ("mmcoa.demo", "run_demo"),
    ]:
        monkeypatch.setattr(f"{module}.{name}", no_work)
    return tmp_path


COMMANDS = {  # command → (its arguments but --output, whether --output is a directory)
    "eval": (["eval", *SYNTHETIC, "--no-progress"], False),
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
        assert main(["eval", *SYNTHETIC, "--output", "locked/r.json", "--no-progress"]) == 2
        assert "cannot be written" in one_error_line(capsys)
    finally:
        locked.chmod(0o755)


def test_a_refused_probe_is_one_line(workdir, capsys, monkeypatch):
    """What a read-only folder does to a user who is not root (the probe file is refused)."""

    def refuse(**kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("mmcoa.outputs.tempfile.mkstemp", refuse)
    assert main(["eval", *SYNTHETIC, "--output", "r.json", "--no-progress"]) == 2
    assert "--output 'r.json' cannot be written: .: Permission denied" in one_error_line(capsys)


def test_the_output_check_leaves_nothing_behind(workdir, capsys, monkeypatch):
    """A missing parent folder is fine (the write creates it) and is not created by the check."""
    monkeypatch.setattr("mmcoa.eval.evaluate", lambda *a, **k: [])
    monkeypatch.setattr("mmcoa.eval.write_records", lambda *a, **k: None)
    monkeypatch.setattr("mmcoa.eval.format_table", lambda records: "")
    assert main(["eval", *SYNTHETIC, "--output", "new/deeper/r.json", "--no-progress"]) == 0
    assert sorted(os.listdir(workdir)) == ["afile", "suite.yaml"]


# -- 4. settings files: one line naming the key, the value and what is accepted -----------------
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


# -- 7. Ctrl-C: one line saying what was saved and how to resume, exit 130 ------------------------
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
        ("cmd_eval", ["eval", *SYNTHETIC, "--output", "r.json"], "r.json was not written"),
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


# -- 8. argparse errors are one line ---------------------------------------------------------------
def test_a_bad_number_is_one_line(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["eval", *SYNTHETIC, "--n-samples", "abc", "--output", "r.json"])
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
