"""The offline demo end to end on real Fashion-MNIST images, with fewer evaluation samples."""

from __future__ import annotations

import json
import os

import open_clip
import pytest

from mmcoa.demo import CHECKPOINT_NAME, run_demo
from mmcoa.eval.results import RECORD_KEYS

FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


@pytest.mark.skipif(not os.path.isdir(FASHION_MNIST),
                    reason="needs Debian's dataset-fashion-mnist (make setup installs it)")
def test_demo_trains_saves_and_attacks(tmp_path):
    records = run_demo(tmp_path, n_samples=200, progress=False)
    clean, pgd1, pgd4, bert, multimodal, coattack = records
    assert [r["attack"] for r in records] == ["clean", "pgd", "pgd", "bert", "multimodal", "coattack"]
    assert clean["accuracy"] >= 0.70
    assert pgd4["accuracy"] < clean["accuracy"] - 0.05
    assert pgd4["accuracy"] <= pgd1["accuracy"] <= clean["accuracy"]
    for text_attack in (bert, multimodal, coattack):
        assert text_attack["accuracy"] < clean["accuracy"]
        assert text_attack["attack_params"]["mlm"] == str(tmp_path / "mlm")
        assert 0 < text_attack["mean_words_changed"] <= 1
    assert multimodal["accuracy"] <= bert["accuracy"]
    written = json.loads((tmp_path / "results.json").read_text())
    assert written == json.loads(json.dumps(records))
    assert all(set(RECORD_KEYS) <= set(r) for r in written)
    assert json.loads((tmp_path / "pretrain.json").read_text())["val_accuracy"] >= 0.80
    open_clip.create_model("tiny-clip", pretrained=str(tmp_path / CHECKPOINT_NAME))
