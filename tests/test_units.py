"""One unit and one source for every setting (issue 13, part 1): eps and step sizes in 1/255
wherever a user writes them, pixel-looking values refused before anything is written, the
`mmcoa train` flags made from TrainConfig's fields, one declaration of the attack flags."""

from __future__ import annotations

import argparse
import dataclasses
import os

import pytest

from mmcoa.analysis.commands import ANALYSES
from mmcoa.attacks.flags import ATTACK_FLAGS
from mmcoa.cli import build_parser, main
from mmcoa.errors import MmcoaError
from mmcoa.flags import OneLineParser
from mmcoa.train.config import TrainConfig, load_config
from mmcoa.units import from_255


def run(capsys, *argv):
    """Exit status, stdout and stderr of ``mmcoa ARGV`` (argparse's errors exit with status 2)."""
    try:
        code = main(list(argv))
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def subparser(name: str) -> argparse.ArgumentParser:
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices[name]


def flags_of(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions if a.help != argparse.SUPPRESS for s in a.option_strings}


def write_yaml(tmp_path, text: str):
    path = tmp_path / "train.yaml"
    path.write_text("method: tecoa\nbatch_size: 16\nmax_steps: 1\n" + text)
    return path


# -- units ---------------------------------------------------------------------------------------
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
    code, _, err = run(
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
    code, _, err = run(capsys, "train", "--method", "tecoa", *argv, "--output", str(output), "--no-progress")
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
    code, _, err = run(
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
    assert "training PGD eps [units of 1/255] (default: the method's: mmcoa 1; 4: fare)" in " ".join(
        text.split()
    )
    assert "AdamW betas (default: 0.9 0.98)" in " ".join(text.split())
    assert "--adam-eps" in text and "--betas" in text and "auto" in text
    assert "[units of 1/255]" in subparser("eval").format_help()


# -- one declaration of the attack flags ---------------------------------------------------------
def attack_flags_of(parser) -> set[str]:
    declared = {f"--{f.name.replace('_', '-')}" for f in ATTACK_FLAGS}
    return flags_of(parser) & (declared | {"--steps", "--restarts", "--alpha"})


def analysis_parser(kind: str) -> argparse.ArgumentParser:
    parser = OneLineParser(prog=f"mmcoa analyze {kind}")
    ANALYSES.get(kind).configure(parser)
    return parser


@pytest.mark.parametrize("kind", ["eps-sweep", "curves", "interpolation", "features", "gallery"])
def test_analyze_and_eval_take_the_same_attack_flags(kind):
    every = {f"--{f.name.replace('_', '-')}" for f in ATTACK_FLAGS}
    assert attack_flags_of(subparser("eval")) == every
    assert attack_flags_of(analysis_parser(kind)) == every


def test_flags_are_the_attack_field_names(tmp_path, capsys):
    from mmcoa.attacks import ATTACKS
    from mmcoa.attacks.base import parameter_names

    fields = set().union(*(parameter_names(ATTACKS.get(n)) for n in ATTACKS.names()))
    assert {f.name for f in ATTACK_FLAGS} <= fields  # no bridge table between flag and field
    code, _, err = run(
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
