"""Every training YAML file under configs/ (the suites in configs/paper/ are tested in
test_suite.py) loads as a TrainConfig; the Table I files hold the paper's settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmcoa.settings import read_mapping
from mmcoa.profiles import switch_fields
from mmcoa.train.config import PER_255, TrainConfig, load_config
from mmcoa.train.methods import METHODS

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
YAML_FILES = [
    p
    for p in sorted(CONFIGS.rglob("*.yaml")) + sorted(CONFIGS.rglob("*.yml"))
    if "paper" not in p.relative_to(CONFIGS).parts
]  # configs/paper: suites (test_suite.py)
TABLE1 = {  # name: (method, adv_image_weight, adv_text_weight, towers)
    "ft-standard": ("ft-standard", None, None, "both"),
    "tecoa": ("tecoa", None, None, "image"),
    "mmcoa": ("mmcoa", 0.5, 0.5, "both"),
    "mmcoa-image-only": ("mmcoa", 1.0, 0.0, "both"),
    "mmcoa-text-only": ("mmcoa", 0.0, 1.0, "both"),
}


def test_there_are_configs():
    assert {p.stem for p in (CONFIGS / "table1").glob("*.yaml")} == set(TABLE1)


@pytest.mark.parametrize("path", YAML_FILES, ids=[str(p.relative_to(CONFIGS)) for p in YAML_FILES])
def test_every_config_loads(path):
    config = load_config(str(path), {})
    assert config.method and config.output


@pytest.mark.parametrize("name", sorted(TABLE1))
def test_table1_configs_hold_the_papers_settings(name):
    method, alpha, beta, towers = TABLE1[name]
    config = load_config(str(CONFIGS / "table1" / f"{name}.yaml"), {})
    assert config.method == method and config.train_towers == towers
    assert (config.model, config.pretrained, config.dataset, config.shots) == (
        "ViT-B-32",
        "openai",
        "cifar10",
        "full",
    )
    assert (config.epochs, config.batch_size) == (10, 256)
    assert config.betas == (0.9, 0.98) and config.adam_eps == 1e-6
    assert_method_settings(config)
    assert (config.mlm, config.k, config.max_words, config.text_attack_every) == (
        "bert-base-uncased",
        10,
        1,
        1,
    )
    assert config.precision == "bf16" and config.device == "cuda"
    assert config.output == f"runs/table1/cifar10/{name}"  # where configs/paper/table1.yaml looks
    if alpha is not None:
        assert (config.adv_image_weight, config.adv_text_weight) == (alpha, beta)


def assert_method_settings(config):
    """The file holds its method's published settings (its class's ``defaults``)."""
    for key, value in METHODS.get(config.method).defaults.items():
        if key in ("train_eps", "train_step_size"):
            assert getattr(config, key) == pytest.approx(value, rel=1e-9), key
        elif not (config.method in ("ft-standard",) and key.startswith("train_")):
            assert getattr(config, key) == value, key


@pytest.mark.parametrize("name", ["fare", "pmg-aft"])
def test_baseline_configs_hold_their_published_settings(name):
    config = load_config(str(CONFIGS / "baselines" / f"{name}.yaml"), {})
    assert config.method == name and config.train_towers == "image"
    assert_method_settings(config)


def test_cli_flags_override_a_table1_config():
    config = load_config(str(CONFIGS / "table1" / "mmcoa.yaml"), {"lr": 5e-6, "output": "elsewhere"})
    assert config.lr == 5e-6 and config.output == "elsewhere" and config.adv_image_weight == 0.5


@pytest.mark.parametrize("name", ["vp", "advpt"])
def test_table7_prompt_tuning_configs_freeze_the_model(name):
    config = load_config(str(CONFIGS / "table7" / f"{name}.yaml"), {})
    assert config.method == name and config.train_towers == "none"
    assert (config.model, config.pretrained, config.dataset) == ("ViT-B-32", "openai", "cifar10")
    assert config.output == f"runs/table7/{name}" and config.weight_decay == 0.0


@pytest.mark.parametrize("name", sorted(TABLE1))
def test_published_table1_configs_are_table1_as_the_published_code_runs_it(name):
    """The same runs under the published profile, with the published MMCoA code's optimizer,
    learning rate, epochs and fp32 (its CIFAR-100 config); TeCoA keeps its own settings."""
    corrected = load_config(str(CONFIGS / "table1" / f"{name}.yaml"), {})
    published = load_config(str(CONFIGS / "table1-published" / f"{name}.yaml"), {})
    assert (corrected.profile, published.profile) == ("corrected", "published")
    for switch in switch_fields(TrainConfig):
        expected = switch.metadata["published"]
        if name == "tecoa" and switch.name == "attack_grad_leak":
            expected = False  # TeCoA's GradScaler divides its leak away (Method.published)
        assert getattr(published, switch.name) == expected, switch.name
    assert published.output == f"runs/table1-published/cifar10/{name}"
    if name == "tecoa":
        same = {"optimizer", "lr", "epochs", "precision", "weight_decay", "schedule", "warmup_steps"}
        assert all(getattr(published, k) == getattr(corrected, k) for k in same)
    else:
        assert (published.optimizer, published.lr, published.epochs) == ("adam", 1e-6, 30)
        assert (published.precision, published.weight_decay) == ("fp32", 0.2)
    shared = {"method", "train_towers", "adv_image_weight", "adv_text_weight", "train_eps", "train_steps"}
    assert all(getattr(published, k) == getattr(corrected, k) for k in shared)


@pytest.mark.parametrize("path", YAML_FILES, ids=[str(p.relative_to(CONFIGS)) for p in YAML_FILES])
def test_configs_write_eps_and_step_sizes_in_255ths(path):
    """The shipped files use the one unit: train_eps: 1 (1/255), never a pixel value."""
    written = read_mapping(path, "config file")
    for name in PER_255:
        if name in written:
            assert written[name] >= 1 and float(written[name]).is_integer(), (name, written[name])
    assert "alpha" not in written and "beta" not in written  # adv_image_weight, adv_text_weight
