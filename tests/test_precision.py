"""Precision (fp32 or bf16) of the image-side attacks: every attack that takes ``precision`` runs
in bf16 within its budget and really changes the arithmetic, the torchattacks-based ones run the
model under bf16 autocast, the seed does not depend on it, and it reaches records and suites."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

import mmcoa
from mmcoa.attacks import ATTACKS, build_attack
from mmcoa.cli import main
from mmcoa.eval.suite_config import load_suite
from helpers import assert_valid_perturbation

IMAGE_ATTACKS = ("pgd", "multimodal", "multimodal-joint", "coattack", "sga")


# -- precision ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", IMAGE_ATTACKS)
def test_every_image_attack_runs_in_bf16_within_its_budget(name, synthetic_mlm, classifier, batch):
    images, labels = batch
    params = {"n_steps": 2, "precision": "bf16"} | ({"mlm": synthetic_mlm} if name != "pgd" else {})
    attack = build_attack(name, **params)
    attack.prepare("cpu")
    result = attack(classifier, images, labels, torch.Generator().manual_seed(0))
    assert_valid_perturbation(result.images, images, attack.eps)
    assert attack.params()["precision"] == "bf16"
    fp32 = build_attack(name, **{**params, "precision": "fp32"})
    fp32.prepare("cpu")
    assert not torch.equal(
        fp32(classifier, images, labels, torch.Generator().manual_seed(0)).images, result.images
    )  # bf16 really changed the arithmetic


def test_a_bad_precision_is_one_line():
    with pytest.raises(mmcoa.MmcoaError, match="precision must be one of fp32, bf16"):
        build_attack("coattack", precision="fp16")


def test_every_attack_with_precision_is_listed_here():
    """A new image attack must join IMAGE_ATTACKS (and so the bf16 test) when it takes precision."""
    import dataclasses

    takes = {
        name
        for name in ATTACKS.names()
        if "precision" in {f.name for f in dataclasses.fields(ATTACKS.get(name))}
    }
    assert takes - set(TORCHATTACKS) == set(IMAGE_ATTACKS)


TORCHATTACKS = {
    "apgd": {"n_steps": 2},
    "apgd-ce": {"n_steps": 2},
    "apgd-t": {"n_steps": 2},
    "autoattack": {"n_steps": 2, "fab_steps": 2, "square_queries": 4},
}


@pytest.mark.parametrize("name", sorted(TORCHATTACKS))
def test_torchattacks_based_attacks_run_the_model_in_bf16(name, classifier, batch, monkeypatch):
    images, labels = batch
    attack = build_attack(name, precision="bf16", **TORCHATTACKS[name])
    dtypes = []
    original = classifier.model._encode_pixels
    monkeypatch.setattr(
        classifier.model,
        "_encode_pixels",
        lambda pixels: (
            dtypes.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None),
            original(pixels),
        )[1],
    )
    result = attack(classifier, images, labels, torch.Generator().manual_seed(0))
    assert_valid_perturbation(result.images, images, attack.eps)
    assert dtypes and set(dtypes) == {torch.bfloat16}


def test_the_seed_does_not_depend_on_precision(classifier, batch):
    """Same random start in fp32 and bf16: the records' gap is the precision's alone."""
    records = [
        mmcoa.evaluate(
            classifier.model,
            "synthetic",
            [build_attack("pgd", n_steps=1, step_size=1e-9, precision=p)],
            n_samples=8,
            progress=False,
        )[0]
        for p in ("fp32", "bf16")
    ]
    assert records[1]["attack_params"]["precision"] == "bf16"
    assert records[0]["accuracy"] == records[1]["accuracy"]


# -- the command line --------------------------------------------------------------------------
def test_eval_precision_and_runtime_reach_the_record(tmp_path):
    output = tmp_path / "r.json"
    assert (
        main(
            [
                "eval",
                "--model",
                "tiny-clip",
                "--dataset",
                "synthetic",
                "--attacks",
                "clean,pgd",
                "--n-steps",
                "1",
                "--n-samples",
                "4",
                "--precision",
                "bf16",
                "--no-tf32",
                "--output",
                str(output),
                "--no-progress",
            ]
        )
        == 0
    )
    clean, pgd = json.loads(output.read_text())
    assert pgd["attack_params"]["precision"] == "bf16"
    assert pgd["runtime"]["tf32"] is False and pgd["runtime"]["compile"] is False


def test_eval_precision_needs_an_image_attack(tmp_path, capsys):
    assert (
        main(
            [
                "eval",
                "--model",
                "tiny-clip",
                "--dataset",
                "synthetic",
                "--attacks",
                "clean",
                "--precision",
                "bf16",
                "--output",
                str(tmp_path / "r.json"),
            ]
        )
        == 2
    )
    assert "no chosen attack takes precision" in capsys.readouterr().err


def test_a_suite_precision_is_the_default_of_its_image_attacks(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "p",
                "precision": "bf16",
                "datasets": ["synthetic"],
                "models": [{"name": "tiny-clip"}],
                "attacks": [
                    {"name": "clean"},
                    {"name": "pgd"},
                    {"name": "pgd", "label": "fp32", "precision": "fp32"},
                ],
            }
        )
    )
    config = load_suite(str(path))
    assert [a.params.get("precision") for a in config.attacks] == [None, "bf16", "fp32"]
