"""A new defense and a new attack, each one file of ``tests/plugins/``, go through every command.

The proof that a method's or an attack's facts live on its class: loaded with
``MMCOA_PLUGINS``, ``noise-ft`` (a defense) and ``fgsm`` (an attack with a setting of its own,
``label_smoothing``) appear in ``--help`` with their defaults, train, evaluate, run in a suite
file and land in the report's Image column, with no other file touched.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import yaml

from mmcoa.attacks import ATTACKS
from mmcoa.cli import main
from mmcoa.errors import MmcoaError
from mmcoa.plugins import ENVIRONMENT, load_plugins
from mmcoa.train.methods import METHODS

pytestmark = pytest.mark.usefixtures("one_thread")

PLUGINS = Path(__file__).resolve().parent / "plugins"
FILES = [PLUGINS / "noise_ft.py", PLUGINS / "fgsm.py"]


@pytest.fixture()
def plugins(monkeypatch):
    """The two plugins on ``$MMCOA_PLUGINS``; the registries and imported modules as they
    were after the test (the plugins register into copies)."""
    for registry in (METHODS, ATTACKS):
        monkeypatch.setattr(registry, "_entries", dict(registry._entries))
    for path in FILES:
        monkeypatch.delitem(sys.modules, f"mmcoa_plugin_{path.stem}", raising=False)
    monkeypatch.setenv(ENVIRONMENT, os.pathsep.join(map(str, FILES)))
    yield
    for path in FILES:
        sys.modules.pop(f"mmcoa_plugin_{path.stem}", None)


def help_text(capsys, command: str) -> str:
    """``mmcoa COMMAND --help`` without whitespace (argparse wraps lines, also at hyphens)."""
    with pytest.raises(SystemExit):
        main([command, "--help"])
    return squash(capsys.readouterr().out)


def squash(text: str) -> str:
    return "".join(text.split())


def test_help_lists_the_plugins_with_their_defaults(plugins, capsys):
    train = help_text(capsys, "train")
    assert squash("noise-ft: Noise fine-tuning: cross-entropy on images with uniform noise") in train
    assert "2e-05:noise-ft" in train.split("--lrLR")[-1].split("--")[0]  # its own lr
    evaluate = help_text(capsys, "eval")
    assert "fgsm" in evaluate.split("--attacksATTACKS")[-1].split("--")[0]
    assert squash("--label-smoothing LABEL_SMOOTHING FGSM: label smoothing") in evaluate
    assert "4forfgsm" in evaluate.split("--epsEPS")[-1].split("--")[0]


def test_a_plugin_defense_and_attack_train_evaluate_run_in_a_suite_and_report(plugins, tmp_path):
    run = tmp_path / "run"
    common = ["--model", "tiny-clip", "--pretrained", "random", "--dataset", "synthetic"]
    assert main(["train", *common, "--method", "noise-ft", "--max-steps", "2", "--batch-size", "8",
                 "--device", "cpu", "--output", str(run)]) == 0  # fmt: skip
    config = json.loads((run / "config.json").read_text())
    assert config["method"] == "noise-ft" and config["lr"] == 2e-5 and config["train_eps"] == 4 / 255

    weights = str(run / "final.pt")
    records = tmp_path / "eval.json"
    assert main(["eval", "--model", "tiny-clip", "--pretrained", weights, "--dataset", "synthetic",
                 "--attacks", "clean,fgsm", "--eps", "2", "--label-smoothing", "0.1", "--n-samples", "8",
                 "--device", "cpu", "--output", str(records)]) == 0  # fmt: skip
    fgsm = json.loads(records.read_text())[1]
    assert fgsm["attack"] == "fgsm" and fgsm["threat"] == "image"
    assert fgsm["attack_params"]["eps"] == 2 / 255 and fgsm["attack_params"]["label_smoothing"] == 0.1

    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({
        "name": "plugins", "n_samples": 6, "batch_size": 4, "device": "cpu",
        "models": [{"label": "CLIP", "name": "tiny-clip"},
                   {"label": "Noise-FT", "name": "tiny-clip", "checkpoint": weights}],
        "datasets": [{"name": "synthetic", "options": {"n_samples": 16, "n_classes": 4, "image_size": 28}}],
        "attacks": [{"name": "clean"}, {"name": "fgsm", "eps": 1, "step_size": 1}],
    }))  # fmt: skip
    results = tmp_path / "suite"
    assert main(["suite", str(suite), "--output", str(results), "--no-progress"]) == 0
    cells = json.loads((results / "records.json").read_text())
    assert {(r["label"], r["attack"], r["threat"]) for r in cells} >= {("Noise-FT", "fgsm", "image")}

    report = tmp_path / "report"
    assert main(["report", str(results), "--output", str(report)]) == 0
    table = (report / "report.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| Noise-FT"))
    header = next(line for line in table.splitlines() if "Image" in line and line.startswith("|"))
    assert "Clean" in header and row.count("|") == header.count("|")


def test_a_missing_plugin_is_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv(ENVIRONMENT, str(tmp_path / "nowhere.py"))
    assert main(["attacks"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "plugin file" in err and "nowhere.py" in err
    with pytest.raises(MmcoaError, match="cannot import 'no_such_plugin_module'"):
        load_plugins("no_such_plugin_module")
