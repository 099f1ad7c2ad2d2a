"""Analyses: interpolation endpoints reproduce the two models exactly, cosine similarity and
t-SNE on hand-made features, time cost from hand-made logs, and every plot function writing a
non-empty PNG of the expected size (tiny-clip, the synthetic dataset, few attack steps)."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch

import mmcoa
from mmcoa.analysis import (
    eps_sweep,
    feature_analysis,
    gallery,
    interpolate_state_dicts,
    interpolation,
    mean_cosine_similarity,
    plot_curves,
    plot_eps_sweep,
    plot_features,
    plot_gallery,
    plot_interpolation,
    plot_time_cost,
    read_runs,
    time_cost,
    training_curves,
    tsne,
)
from mmcoa.analysis.gallery import changed_words, magnified
from mmcoa.analysis.plotting import DPI
from mmcoa.analysis.timecost import training_time
from mmcoa.attacks import PGD
from mmcoa.cli import main
from mmcoa.errors import MmcoaError
from mmcoa.eval import evaluate
from mmcoa.train.config import TrainConfig
from mmcoa.train.trainer import train

FAST = {"n_steps": 1, "step_size": 4 / 255}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def tuned_model(tiny_model):
    """tiny-clip with every floating weight moved: a stand-in for a fine-tuned model."""
    model = mmcoa.load_model("tiny-clip")
    with torch.no_grad():
        generator = torch.Generator().manual_seed(1)
        for param in model.model.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
    return model


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished 2-epoch ft-standard run (64 images, batch 16: 4 steps per epoch)."""
    config = TrainConfig(
        method="ft-standard",
        batch_size=16,
        epochs=2,
        lr=1e-3,
        output=str(tmp_path_factory.mktemp("run") / "ft"),
    )
    train(config, progress=False)
    return config.output


@pytest.fixture(scope="module")
def mlm(synthetic_mlm):
    return synthetic_mlm


def png_size(path) -> tuple[int, int]:
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    return struct.unpack(">II", data[16:24])


def assert_outputs(summary_path, kind: str, size_inches: tuple[float, float]) -> dict:
    """NAME.json names NAME.png, which is a PNG of exactly width × height inches at DPI."""
    summary = json.loads(summary_path.read_text())
    assert summary["analysis"] == kind and summary["table"]["rows"] and summary["title"]
    png = summary_path.parent / summary["figure"]
    assert png_size(png) == (round(size_inches[0] * DPI), round(size_inches[1] * DPI))
    return summary


# -- interpolation (Fig. 8) ----------------------------------------------------------------------
def test_interpolation_endpoints_are_exact(tiny_model, tuned_model):
    start, end = tiny_model.model.state_dict(), tuned_model.model.state_dict()
    at_zero, at_one = interpolate_state_dicts(start, end, 0), interpolate_state_dicts(start, end, 1)
    assert all(torch.equal(at_zero[k], start[k]) for k in start)
    assert all(torch.equal(at_one[k], end[k]) for k in end)
    assert any(not torch.equal(start[k], end[k]) for k in start)  # the endpoints differ
    middle = interpolate_state_dicts(start, end, 0.25)
    key = next(k for k in start if start[k].is_floating_point() and not torch.equal(start[k], end[k]))
    assert torch.allclose(middle[key], 0.75 * start[key] + 0.25 * end[key])
    assert at_zero[key].data_ptr() != start[key].data_ptr()  # copies, not the originals


def test_interpolation_mixes_only_floating_tensors():
    start = {"w": torch.tensor([0.0, 2.0]), "ids": torch.tensor([1, 2])}
    end = {"w": torch.tensor([4.0, 6.0]), "ids": torch.tensor([3, 4])}
    assert torch.equal(interpolate_state_dicts(start, end, 0.5)["w"], torch.tensor([2.0, 4.0]))
    assert torch.equal(interpolate_state_dicts(start, end, 0.4)["ids"], start["ids"])
    assert torch.equal(interpolate_state_dicts(start, end, 0.6)["ids"], end["ids"])
    with pytest.raises(MmcoaError, match="different keys"):
        interpolate_state_dicts(start, {"w": end["w"]}, 0.5)
    with pytest.raises(MmcoaError, match=r"lambda must be in \[0, 1\]"):
        interpolate_state_dicts(start, end, 1.5)


def test_interpolation_evaluates_the_endpoint_models(tiny_model, tuned_model, synthetic_test, tmp_path):
    before = {k: v.clone() for k, v in tiny_model.model.state_dict().items()}
    attacks = ["clean", PGD(eps=4 / 255, **FAST)]
    records = interpolation(
        tiny_model,
        tuned_model,
        synthetic_test,
        lambdas=(0, 0.5, 1),
        attacks=attacks,
        n_samples=8,
        batch_size=8,
    )
    assert [(r["lambda"], r["attack"]) for r in records] == [
        (lam, a) for lam in (0, 0.5, 1) for a in ("clean", "pgd")
    ]
    for lam, model in ((0, tiny_model), (1, tuned_model)):
        direct = evaluate(model, synthetic_test, attacks, n_samples=8, batch_size=8, progress=False)
        assert [r["n_correct"] for r in records if r["lambda"] == lam] == [r["n_correct"] for r in direct]
    assert all(torch.equal(v, before[k]) for k, v in tiny_model.model.state_dict().items())
    summary = assert_outputs(plot_interpolation(records, tmp_path), "interpolation", (8, 5))
    assert len(summary["data"]["series"]["Image (pgd)"]) == 3
    with pytest.raises(MmcoaError, match="needs clean"):
        interpolation(tiny_model, tuned_model, synthetic_test, attacks=["pgd"])


# -- eps sweep (Fig. 6) --------------------------------------------------------------------------
def test_eps_sweep_records_and_plot(tiny_model, tuned_model, synthetic_test, tmp_path):
    records = eps_sweep(
        {"CLIP": tiny_model, "Tuned": tuned_model},
        synthetic_test,
        eps=(1, 4),
        attacks=("pgd",),
        attack_params=FAST,
        n_samples=8,
        batch_size=8,
    )
    assert [(r["label"], r["attack"], r["attack_params"].get("eps")) for r in records] == [
        (label, attack, eps)
        for label in ("CLIP", "Tuned")
        for attack, eps in (("clean", None), ("pgd", 1 / 255), ("pgd", 4 / 255))
    ]
    summary = assert_outputs(plot_eps_sweep(records, tmp_path), "eps-sweep", (8, 5))
    assert summary["table"]["columns"] == ["series", "eps=1/255", "eps=4/255", "clean"]
    assert set(summary["data"]["series"]) == {"CLIP", "Tuned"}
    with pytest.raises(MmcoaError, match="eps values must be in"):
        eps_sweep(tiny_model, synthetic_test, eps=(0,))


# -- features (Fig. 9) ---------------------------------------------------------------------------
def test_mean_cosine_similarity_on_hand_made_features():
    clean = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])
    adversarial = torch.tensor([[5.0, 0.0], [1.0, 1.0], [-3.0, -4.0]])  # cos 1, 1/√2, -1
    expected = (1 + 2**-0.5 - 1) / 3
    assert mean_cosine_similarity(clean, adversarial) == pytest.approx(expected)
    assert mean_cosine_similarity(clean.numpy(), clean.numpy()) == pytest.approx(1.0)
    with pytest.raises(MmcoaError, match="two \\[N, D\\] arrays"):
        mean_cosine_similarity(clean, adversarial[:2])


def test_tsne_keeps_separated_clusters_apart():
    generator = torch.Generator().manual_seed(0)
    centers = 10 * torch.randn(3, 16, generator=generator)
    points = torch.cat([c + torch.randn(20, 16, generator=generator) for c in centers]).numpy()
    labels = torch.arange(3).repeat_interleave(20)
    embedded = tsne(points, perplexity=10, n_iter=400)
    assert embedded.shape == (60, 2) and embedded.dtype == np.float64 and np.isfinite(embedded).all()
    distances = torch.cdist(torch.tensor(embedded), torch.tensor(embedded)).fill_diagonal_(float("inf"))
    assert (labels[distances.argmin(1)] == labels).all()  # nearest neighbour: same cluster
    centroids = torch.stack([torch.tensor(embedded)[labels == k].mean(0) for k in range(3)])
    spread = max(torch.tensor(embedded)[labels == k].std(0).norm() for k in range(3))
    assert torch.pdist(centroids).min() > 3 * spread  # the clusters stay apart, not just adjacent
    assert (tsne(points, perplexity=10, n_iter=400) == embedded).all()  # same seed: same map


def test_tsne_small_and_impossible_inputs():
    points = np.random.default_rng(0).normal(size=(5, 1))  # perplexity 30 capped; 1-D input padded
    assert tsne(points, n_iter=250).shape == (5, 2)
    with pytest.raises(MmcoaError, match="at least 4 points"):
        tsne(points[:3])
    with pytest.raises(MmcoaError, match="not all identical"):
        tsne(np.ones((6, 3)))
    with pytest.raises(MmcoaError, match="n_iter >= 250"):
        tsne(points, n_iter=100)


def test_feature_analysis_and_plot(tiny_model, tuned_model, synthetic_test, tmp_path):
    result = feature_analysis(
        {"CLIP": tiny_model, "Tuned": tuned_model},
        synthetic_test,
        PGD(eps=4 / 255, **FAST),
        n_samples=12,
        batch_size=6,
        n_iter=250,
    )
    assert result["CLIP"]["n"] == 12 and result["CLIP"]["tsne"].shape == (24, 2)
    assert -1 <= result["CLIP"]["cosine"] <= 1
    summary = assert_outputs(plot_features(result, tmp_path), "features", (10, 5))
    assert [row[0] for row in summary["table"]["rows"]] == ["CLIP", "Tuned"]


# -- training curves (Fig. 7) and time cost (Table VIII) -----------------------------------------
def test_training_curves_from_a_run(run_dir, tuned_model, synthetic_test, tmp_path):
    extra = tmp_path / "epoch1.pt"
    torch.save(tuned_model.model.state_dict(), extra)
    curves = training_curves(
        [run_dir],
        checkpoints={1: str(extra)},
        dataset=synthetic_test,
        attacks=["clean"],
        n_samples=8,
        batch_size=8,
    )
    assert curves["loss"]["ft-standard"]["epoch"] == [s / 4 for s in range(1, 9)]
    # epoch 0 (the run's starting weights), 1 (given), 2 (final.pt; last.pt is the same step)
    assert [r["epoch"] for r in curves["records"]] == [0.0, 1.0, 2.0]
    assert curves["records"][0]["label"] == "ft-standard @ epoch 0"
    assert_outputs(plot_curves(curves, tmp_path), "curves", (14, 5))
    loss_only = training_curves([run_dir], evaluate_checkpoints=False)
    summary_path = plot_curves(loss_only, tmp_path / "loss")
    assert png_size(summary_path.with_suffix(".png")) == (8 * DPI, 5 * DPI)


def test_training_time_handles_resumes_and_partial_epochs(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(
        json.dumps(
            {"method": "tecoa", "dataset": "cifar10", "batch_size": 2, "shots": "full", "device": "cpu"}
        )
    )
    (run / "shots.json").write_text(json.dumps({"indices": [0, 1, 2, 3]}))  # 2 steps per epoch
    elapsed = [1.0, 3.0, 4.0, 0.5, 2.5]  # restarted (resumed) before step 4
    rows = [
        {"step": i + 1, "epoch": i // 2, "loss": 1.0, "images": 2, "elapsed_s": e}
        for i, e in enumerate(elapsed)
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    timing = training_time(read_runs([run])[0])
    # steps take 1, 2, 1, 0.5, 2 s; epochs 0 and 1 are complete (3 s and 1.5 s)
    assert timing["seconds_per_epoch"] == pytest.approx(2.25) and not timing["estimated"]
    assert timing["total_s"] == pytest.approx(6.5) and timing["complete_epochs"] == 2
    (run / "shots.json").write_text(json.dumps({"indices": list(range(20))}))  # 10 steps per epoch
    partial = training_time(read_runs([run])[0])
    assert partial["estimated"] and partial["seconds_per_epoch"] == pytest.approx(6.5 / 5 * 10)


def test_time_cost_plot(run_dir, tmp_path):
    records = [
        {
            "label": "CLIP",
            "model": "m",
            "dataset": "cifar10",
            "attack": "pgd",
            "attack_params": {"eps": 1 / 255},
            "n_samples": 100,
            "accuracy": 0.1,
            "elapsed_s": 5.0,
        }
    ]
    cost = time_cost(read_runs([run_dir]), records)
    assert cost["evaluation"][0]["ms_per_sample"] == pytest.approx(50.0)
    assert cost["training"][0]["complete_epochs"] == 2
    assert_outputs(plot_time_cost(cost, tmp_path), "time", (14, 5))
    with pytest.raises(MmcoaError, match="not a training run directory"):
        read_runs([tmp_path])


# -- gallery -------------------------------------------------------------------------------------
def test_changed_words_and_magnified_perturbation():
    assert changed_words("a photo of a red stripe", "a photo of a red ring") == ([5], [5])
    assert changed_words("a photo of a cat", "a photo of a cat") == ([], [])
    clean = torch.zeros(2, 2, 3).numpy()
    image, factor = magnified(clean, clean + 0.01)
    assert factor == pytest.approx(50) and image.max() == pytest.approx(1.0)
    assert magnified(clean, clean)[1] is None


def test_gallery_examples_and_plot(tiny_model, synthetic_test, mlm, tmp_path):
    examples = gallery(
        tiny_model,
        synthetic_test,
        [PGD(eps=4 / 255, **FAST), "bert"],
        attack_params={"mlm": mlm},
        per_attack=2,
        pool=8,
    )
    assert [e.attack for e in examples] == ["pgd", "pgd", "bert", "bert"]
    pgd, bert = examples[0], examples[2]
    assert pgd.attacked_prompt == pgd.original_prompt and 0 < pgd.linf_255 <= 4 + 1e-3
    assert bert.linf_255 == 0 and bert.words_changed == len(bert.changed_attacked) >= 1
    words = bert.attacked_prompt.split()
    assert all(words[i] != bert.original_prompt.split()[i] for i in bert.changed_attacked)
    summary = assert_outputs(plot_gallery(examples, tmp_path), "gallery", (13, 2.2 * 4))
    assert summary["data"]["examples"][2]["attacked_prompt"] == bert.attacked_prompt


# -- command line --------------------------------------------------------------------------------
def test_cli_analyze(tmp_path, capsys):
    out = tmp_path / "out"
    assert (
        main(
            [
                "analyze",
                "eps-sweep",
                "--model",
                "tiny-clip",
                "--dataset",
                "synthetic",
                "--attacks",
                "pgd",
                "--eps",
                "1,4",
                "--n-steps",
                "1",
                "--n-samples",
                "8",
                "--batch-size",
                "8",
                "--output",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    assert "eps_sweep.png" in capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == {"eps_sweep.png", "eps_sweep.json", "eps_sweep_records.json"}
    assert main(["report", str(out), "--output", str(tmp_path / "report")]) == 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["analyze", "nope", "--output", "x"], "unknown analysis 'nope'; known: curves, eps-sweep"),
        (
            [
                "analyze",
                "interpolation",
                "--model",
                "tiny-clip",
                "--tuned",
                "x.pt",
                "--dataset",
                "synthetic",
                "--mlm",
                "m",
                "--output",
                "x",
            ],
            "no chosen attack takes mlm",
        ),
        (["analyze", "curves", "/nonexistent", "--output", "x"], "not a training run directory"),
        (
            [
                "analyze",
                "eps-sweep",
                "--model",
                "tiny-clip",
                "--dataset",
                "synthetic",
                "--eps",
                "a",
                "--output",
                "x",
            ],
            "--eps takes comma-separated numbers",
        ),
    ],
)
def test_cli_analyze_errors_are_one_line(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "x").exists()
