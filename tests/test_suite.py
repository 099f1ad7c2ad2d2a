"""Suites (paper Tables I–VI): the grid of models × datasets × attacks, one record per cell,
resume without recomputation, fixed saved subsets, up-front config errors, the paper configs;
one pass per model and dataset giving the cell-by-cell records (the Sep multimodal attack reusing
the PGD images)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml

import mmcoa
from mmcoa.attacks.pgd import PGD as PGDAttack
from mmcoa.cli import main
from mmcoa.data import DATASETS, load_dataset
from mmcoa.errors import MmcoaError
from mmcoa.eval import suite
from mmcoa.eval.results import RECORD_KEYS
from mmcoa.eval.suite_config import load_suite
from mmcoa_demo.pretrain import CAPTION_TEMPLATES
from helpers import FOLDER_CLASSES, fake_eurosat, fake_stl10, make_layout
from tiny_mlm import caption_corpus

PAPER = Path(__file__).resolve().parent.parent / "configs" / "paper"
SUITE_KEYS = {"suite", "cell", "label", "attack_label", "cell_settings", "subset"}
SYNTHETIC = {"name": "synthetic", "options": {"n_samples": 16, "n_classes": 4, "image_size": 28}}
PGD = {"label": "image", "name": "pgd", "eps": 1, "step_size": 1, "n_steps": 2}


def write_suite(path: Path, **values) -> Path:
    base = {
        "name": "mini",
        "n_samples": 6,
        "batch_size": 4,
        "device": "cpu",
        "models": [{"label": "CLIP", "name": "tiny-clip"}],
        "datasets": [SYNTHETIC],
        "attacks": [{"name": "clean"}, PGD],
    }
    path.write_text(yaml.safe_dump({**base, **values}, sort_keys=False))
    return path


def save_checkpoint(path: Path, shift: float) -> str:
    """A tiny-clip state dict whose weights differ from the random init (a 'fine-tuned' model)."""
    import mmcoa

    model = mmcoa.load_model("tiny-clip")
    with torch.no_grad():
        for parameter in model.model.visual.parameters():
            parameter.add_(shift)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.model.state_dict(), path)
    return str(path)


def count_calls(monkeypatch, name: str, fail_on: int | None = None) -> list:
    """Wrap ``suite.<name>``; record each call's first argument; raise on call ``fail_on``."""
    calls, original = [], getattr(suite, name)

    def wrapper(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == fail_on:
            raise RuntimeError("interrupted")
        return original(*args, **kwargs)

    monkeypatch.setattr(suite, name, wrapper)
    return calls


def comparable(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in ("elapsed_s", "versions")}


# -- end to end ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fake_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    fake_stl10(root)
    fake_eurosat(root)
    return root


@pytest.fixture(scope="module")
def prompt_mlm(tiny_mlm, fake_root):
    corpus = [p for name in ("stl10", "eurosat") for p in load_dataset(name, root=str(fake_root)).prompts()]
    return tiny_mlm(corpus)


def test_suite_produces_the_table_structure(tmp_path, fake_root, prompt_mlm, monkeypatch):
    runs = tmp_path / "runs"
    for dataset, shift in (("stl10", 0.01), ("eurosat", -0.01)):
        save_checkpoint(runs / dataset / "mmcoa" / "final.pt", shift)
    save_checkpoint(runs / "ood" / "tecoa.pt", 0.02)
    config = write_suite(
        tmp_path / "table.yaml",
        data_root=str(fake_root),
        n_samples=3,
        models=[
            {"label": "CLIP", "name": "tiny-clip"},
            {
                "label": "MMCoA",
                "name": "tiny-clip",
                "checkpoint": str(runs / "{dataset}" / "mmcoa" / "final.pt"),
            },
            {
                "label": "TeCoA (1-shot)",
                "name": "tiny-clip",
                "checkpoint": str(runs / "ood" / "tecoa.pt"),
                "datasets": ["eurosat"],
            },
        ],
        datasets=["stl10", "eurosat"],
        attacks=[{"name": "clean"}, PGD, {"label": "text", "name": "bert", "mlm": prompt_mlm}],
    )
    model_loads, dataset_loads = (
        count_calls(monkeypatch, "load_model"),
        count_calls(monkeypatch, "load_dataset"),
    )
    output = tmp_path / "out"
    assert main(["suite", str(config), "--output", str(output), "--no-progress"]) == 0

    records = json.loads((output / "records.json").read_text())
    grid = {(r["label"], r["dataset"], r["attack_label"]): r["accuracy"] for r in records}
    labels = ("CLIP", "MMCoA", "TeCoA (1-shot)")
    expected = [
        (m, d, a)
        for m in labels
        for d in ("stl10", "eurosat")
        for a in ("clean", "image", "text")
        if m != "TeCoA (1-shot)" or d == "eurosat"
    ]
    assert list(grid) == expected and all(0 <= v <= 1 for v in grid.values())
    assert len(model_loads) == 4  # CLIP once, MMCoA once per dataset, TeCoA once
    assert sorted(dataset_loads) == ["eurosat", "stl10"]
    suite_file = json.loads((output / "suite.json").read_text())
    assert [c["id"] for c in suite_file["cells"]] == [r["cell"] for r in records]
    assert suite_file["config"]["models"][1]["label"] == "MMCoA" and "torch" in suite_file["versions"]
    for record in records:
        assert set(RECORD_KEYS) <= set(record) and SUITE_KEYS <= set(record)
        assert record["suite"] == "mini" and record["seed"] == 0 and record["n_samples"] == 3
        assert json.loads((output / "cells" / f"{record['cell']}.json").read_text()) == record
        subset = json.loads((output / record["subset"]["file"]).read_text())
        assert len(subset["indices"]) == 3 and subset["sha1"] == record["sample_indices_sha1"]
    weights = {r["label"]: r["pretrained"] for r in records if r["dataset"] == "eurosat"}
    assert weights["MMCoA"].endswith("eurosat/mmcoa/final.pt") and weights["CLIP"] is None
    text = [r for r in records if r["attack_label"] == "text"]
    assert all(r["adversarial_prompts"] for r in text)


def test_interrupted_suite_resumes_without_recomputing(tmp_path, monkeypatch):
    config = write_suite(
        tmp_path / "s.yaml",
        models=[{"label": "CLIP", "name": "tiny-clip"}, {"label": "Other", "name": "tiny-clip-hf"}],
    )
    calls = count_calls(monkeypatch, "evaluate", fail_on=2)  # one pass per (row, dataset)
    output = tmp_path / "out"
    with pytest.raises(RuntimeError, match="interrupted"):
        suite.run_suite(load_suite(config), output, progress=False)
    finished = sorted(p.name for p in (output / "cells").glob("*.json"))
    assert finished == ["clip__synthetic__clean.json", "clip__synthetic__image.json"]
    assert len(json.loads((output / "records.json").read_text())) == 2
    subset = (output / "subsets" / "synthetic.json").read_text()

    monkeypatch.undo()
    calls = count_calls(monkeypatch, "evaluate")
    loads = count_calls(monkeypatch, "load_model")
    resumed = suite.run_suite(load_suite(config), output, resume=True, progress=False)
    assert len(calls) == 1 and len(loads) == 1  # only the second row's two cells, in one pass
    assert (output / "subsets" / "synthetic.json").read_text() == subset
    assert suite.run_suite(load_suite(config), output, resume=True, progress=False) == resumed
    assert len(calls) == 1  # everything finished: nothing recomputed
    fresh = suite.run_suite(load_suite(config), tmp_path / "fresh", progress=False)
    assert [comparable(r) for r in resumed] == [comparable(r) for r in fresh]  # cell by cell


def test_a_suite_interrupted_before_its_first_record_leaves_no_records_file(tmp_path, monkeypatch):
    """An empty ``records.json`` would read as a finished suite with no cells."""
    config = write_suite(tmp_path / "s.yaml")
    count_calls(monkeypatch, "evaluate", fail_on=1)
    with pytest.raises(RuntimeError, match="interrupted"):
        suite.run_suite(load_suite(config), tmp_path / "out", progress=False)
    assert (tmp_path / "out" / "suite.json").is_file()  # the run had started
    assert not (tmp_path / "out" / "records.json").exists()
    assert not list((tmp_path / "out").glob("cells/*.json"))


def test_resume_recomputes_only_cells_whose_settings_changed(tmp_path, monkeypatch):
    config = write_suite(tmp_path / "s.yaml")
    output = tmp_path / "out"
    suite.run_suite(load_suite(config), output, progress=False)
    write_suite(config, attacks=[{"name": "clean"}, {**PGD, "n_steps": 3}])
    calls = count_calls(monkeypatch, "evaluate")
    records = suite.run_suite(load_suite(config), output, resume=True, progress=False)
    assert len(calls) == 1 and records[1]["attack_params"]["n_steps"] == 3


def test_output_folder_rules(tmp_path, capsys):
    config = write_suite(tmp_path / "s.yaml")
    output = tmp_path / "out"
    suite.run_suite(load_suite(config), output, progress=False)
    with pytest.raises(MmcoaError, match="already holds this suite's results; pass --resume"):
        suite.run_suite(load_suite(config), output, progress=False)
    with pytest.raises(MmcoaError, match=r"different suite settings \(attacks\).*--resume"):
        suite.run_suite(
            load_suite(write_suite(tmp_path / "t.yaml", attacks=[{"name": "clean"}])), output, progress=False
        )
    with pytest.raises(MmcoaError, match=r"settings \(n_samples\); give a new folder$"):
        suite.run_suite(load_suite(config, n_samples=5), output, progress=False)
    with pytest.raises(MmcoaError, match="was drawn with other n_samples .*n_samples=6; now n_samples=5"):
        suite.run_suite(load_suite(config, n_samples=5), output, resume=True, progress=False)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(MmcoaError, match="holds no suite.json"):
        suite.run_suite(load_suite(config), other, resume=True, progress=False)
    assert main(["suite", str(config), "--output", str(output), "--resume", "--no-progress"]) == 0
    assert "2 of 2 cells done" in capsys.readouterr().out


def test_subset_is_seeded_and_stored_with_the_seed(tmp_path):
    records = suite.run_suite(
        load_suite(write_suite(tmp_path / "s.yaml", seed=3)), tmp_path / "a", progress=False
    )
    subset = json.loads((tmp_path / "a" / "subsets" / "synthetic.json").read_text())
    assert (subset["seed"], subset["n_samples"], subset["n_total"]) == (3, 6, 16)
    assert all(r["seed"] == 3 and r["cell_settings"]["seed"] == 3 for r in records)
    other = suite.run_suite(
        load_suite(write_suite(tmp_path / "t.yaml", seed=4)), tmp_path / "b", progress=False
    )
    assert other[0]["subset"]["sha1"] != records[0]["subset"]["sha1"]


# -- retrieval suites (Table VI) -----------------------------------------------------------------
def test_retrieval_suite_with_sga(tmp_path, tiny_mlm):
    root = make_layout(tmp_path / "coco")
    captions = [
        c
        for e in json.loads((root / "dataset_coco.json").read_text())["images"]
        for c in (s["raw"].lower().rstrip(".") for s in e["sentences"])
    ]
    mlm = tiny_mlm(captions)
    config = write_suite(
        tmp_path / "t6.yaml",
        task="retrieval",
        n_samples=2,
        datasets=["mscoco_karpathy"],
        attacks=[{"name": "clean"}, {"name": "sga", "eps": 2, "step_size": 0.5, "n_steps": 2, "mlm": mlm}],
    )
    with pytest.raises(MmcoaError, match="retrieval suites need data_root"):
        suite.run_suite(load_suite(config), tmp_path / "out", progress=False)
    records = suite.run_suite(load_suite(config, data_root=str(root)), tmp_path / "out", progress=False)
    assert [(r["label"], r["attack_label"], r["n_images"], r["n_captions"]) for r in records] == [
        ("CLIP", "clean", 2, 10),
        ("CLIP", "sga", 2, 10),
    ]
    assert records[1]["attack_params"]["eps"] == pytest.approx(2 / 255)
    assert all(0 <= r["i2t_r1"] <= r["i2t_r5"] <= 1 and SUITE_KEYS <= set(r) for r in records)
    subset = json.loads((tmp_path / "out" / "subsets" / "mscoco_karpathy.json").read_text())
    assert (subset["n_total"], len(subset["indices"])) == (3, 2)
    assert suite.format_cells(records).count("i2t R@1/5/10") == 2


# -- configuration errors ------------------------------------------------------------------------
BAD = [
    ({"models": [{"name": "no-such-model"}]}, "models\\[0\\]: unknown model 'no-such-model'"),
    ({"models": [{"name": "ViT-B-32"}]}, "ViT-B-32 needs pretrained"),
    ({"models": [{"name": "ViT-B-32", "pretrained": "nope"}]}, "unknown pretrained tag 'nope'"),
    (
        {"models": [{"name": "tiny-clip", "checkpoint": "missing/{dataset}.pt"}]},
        "1 checkpoint file\\(s\\) missing, e.g. missing/synthetic.pt",
    ),
    (
        {"models": [{"name": "tiny-clip", "checkpoint": "runs/{method}.pt"}]},
        "only the \\{dataset\\} placeholder",
    ),
    (
        {"models": [{"name": "tiny-clip", "datasets": ["cifar10"]}]},
        "must be a non-empty list of the suite's datasets",
    ),
    (
        {"models": [{"name": "tiny-clip"}, {"name": "tiny-clip"}]},
        "model labels must be distinct; repeated: tiny-clip",
    ),
    ({"models": [{"name": "tiny-clip", "weights": "x"}]}, "models\\[0\\] has unknown key\\(s\\) weights"),
    ({"datasets": ["no_such_set"]}, "datasets\\[0\\]: unknown dataset 'no_such_set'"),
    ({"datasets": ["mscoco_karpathy"]}, "unknown dataset 'mscoco_karpathy'.*task: retrieval"),
    ({"task": "retrieval", "datasets": ["cifar10"]}, "retrieval suites evaluate mscoco_karpathy"),
    ({"split": "val"}, "dataset synthetic has no split 'val'"),
    ({"datasets": [{"name": "synthetic", "options": {"colour": 1}}]}, "takes no option colour"),
    ({"attacks": [{"name": "nope"}]}, "attacks\\[0\\]: unknown attack 'nope'"),
    ({"attacks": [{"name": "pgd", "eps": 0}]}, "attacks\\[0\\]: eps must be from 0.1 to 255"),
    (
        {"attacks": [{"name": "pgd", "eps": 300}]},
        "eps must be from 0.1 to 255 \\(units of 1/255: 1 means 1/255\\); got 300",
    ),
    ({"attacks": [{"name": "pgd", "text_weight": 3}]}, "attack 'pgd' takes no parameter text_weight"),
    ({"attacks": [{"name": "coattack", "alpha": 3}]}, "attacks\\[0\\]: alpha was renamed to text_weight"),
    ({"attacks": [{"name": "pgd", "steps": 2}]}, "attacks\\[0\\]: steps was renamed to n_steps"),
    ({"attacks": [{"name": "pgd", "eps": 0.0039}]}, "eps is in units of 1/255.*write 0.9945"),
    (
        {"attacks": [{"name": "pgd", "n_steps": "ten"}]},
        "attacks\\[0\\].n_steps must be an integer; got 'ten'",
    ),
    ({"attacks": [{"name": "pgd"}, {"name": "pgd", "eps": 2}]}, "attack labels must be distinct"),
    ({"attacks": [{"name": "pgd", "label": "a b"}, {"name": "clean", "label": "a-b"}]}, "same file name"),
    ({"attacks": []}, "attacks must be a non-empty list"),
    ({"n_samples": 0}, "n_samples must be a positive integer or null"),
    ({"batch_size": 1.5}, "batch_size must be a positive integer"),
    ({"task": "detection"}, "task must be one of classification, retrieval"),
    ({"epochs": 3}, "the suite has unknown key\\(s\\) epochs"),
    ({"template": "no placeholder"}, "template must be a string with \\{\\}"),
]


@pytest.mark.parametrize("values, message", BAD, ids=[m[:30] for _, m in BAD])
def test_config_errors_are_one_line_before_any_work(tmp_path, capsys, monkeypatch, values, message):
    config = write_suite(tmp_path / "bad.yaml", **values)
    monkeypatch.setattr(suite, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    output = tmp_path / "out"
    assert main(["suite", str(config), "--output", str(output)]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"mmcoa: error: suite {config}: ") and error.count("\n") == 1
    assert re.search(message, error), error
    assert not output.exists()


@pytest.mark.parametrize(
    "text, message",
    [
        ("models: [tiny-clip\n", "is not valid YAML: .* at line 2"),
        ("- just\n- a list\n", "must be a mapping of settings"),
    ],
)
def test_malformed_yaml(tmp_path, capsys, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert main(["suite", str(path), "--output", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert re.search(message, error) and error.count("\n") == 1


def test_cli_overrides_and_missing_file(tmp_path, capsys):
    assert main(["suite", str(tmp_path / "none.yaml"), "--output", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    config = write_suite(tmp_path / "s.yaml", device="cuda:7")
    assert main(["suite", str(config), "--output", str(tmp_path / "o")]) == 2
    assert "device 'cuda:7' is not available" in capsys.readouterr().err and not (tmp_path / "o").exists()
    assert (
        main(
            [
                "suite",
                str(config),
                "--output",
                str(tmp_path / "o"),
                "--device",
                "cpu",
                "--n-samples",
                "2",
                "--no-progress",
            ]
        )
        == 0
    )
    records = json.loads((tmp_path / "o" / "records.json").read_text())
    assert [r["n_samples"] for r in records] == [2, 2]


# -- the paper's configurations ------------------------------------------------------------------
IN_DISTRIBUTION = ["cifar10", "cifar100", "tiny_imagenet", "imagenet"]
FIFTEEN = {
    "imagenet",
    "cifar10",
    "cifar100",
    "tiny_imagenet",
    "stl10",
    "sun397",
    "food101",
    "oxford_pets",
    "flowers102",
    "dtd",
    "eurosat",
    "fgvc_aircraft",
    "country211",
    "caltech101",
    "caltech256",
}
PAPER_ATTACKS = ["multimodal", "image", "text", "clean"]


def paper(name):
    return load_suite(PAPER / f"{name}.yaml", check_files=False)


def test_every_paper_config_validates_without_weights():
    assert sorted(p.stem for p in PAPER.glob("*.yaml")) == [
        "table1",
        "table1-published",
        "table2_3",
        "table4",
        "table5",
        "table6",
    ]
    for path in PAPER.glob("*.yaml"):
        config = load_suite(path, check_files=False)
        assert config.device == "cuda" and config.n_samples is None and config.seed == 0
        assert config.models[0].label == "CLIP" and config.models[0].pretrained == "openai"
        assert all(row.name == "ViT-B-32" for row in config.models)
    with pytest.raises(MmcoaError, match="checkpoint file\\(s\\) missing.*docs/reproduce.md"):
        load_suite(PAPER / "table1.yaml")


def test_the_published_table1_is_table1_under_the_published_profile():
    corrected, published = paper("table1"), paper("table1-published")
    assert (corrected.profile, published.profile) == ("corrected", "published")
    assert (corrected.robust_metric, published.robust_metric) == ("clean-and-adversarial", "adversarial")
    assert [a.label for a in published.attacks] == PAPER_ATTACKS
    positions = {a.label: a.params.get("candidate_position") for a in published.attacks}
    assert positions == {"multimodal": "preceding", "image": None, "text": "preceding", "clean": None}
    # the published code's preprocessing: TinyImageNet at Resize(256) + CenterCrop(224)
    assert {d.name: d.options for d in published.datasets}["tiny_imagenet"] == {"size": "224"}
    assert all(d.options == {} for d in corrected.datasets)
    assert [d.name for d in published.datasets] == [d.name for d in corrected.datasets]
    for row, published_row in zip(corrected.models, published.models):
        assert row.label == published_row.label
        assert (published_row.checkpoint or "").replace("table1-published", "table1") == (
            row.checkpoint or ""
        )
    for entry, published_entry in zip(corrected.attacks, published.attacks):
        switches = {"candidate_position"}
        assert {k: v for k, v in entry.params.items() if k not in switches} == {
            k: v for k, v in published_entry.params.items() if k not in switches
        }


def test_table1_and_table4_in_distribution():
    for name, labels in (
        ("table1", ["CLIP", "FT-standard", "TeCoA", "MMCoA"]),
        (
            "table4",
            ["CLIP", "MMCoA (alpha=1, beta=0)", "MMCoA (alpha=0, beta=1)", "MMCoA (alpha=0.5, beta=0.5)"],
        ),
    ):
        config = paper(name)
        assert [m.label for m in config.models] == labels
        assert [d.name for d in config.datasets] == IN_DISTRIBUTION
        assert [a.label for a in config.attacks] == PAPER_ATTACKS
        assert config.models[3].weights("cifar100").startswith("runs/table1/cifar100/")
        assert len(config.cells()) == 4 * 4 * 4
        image = config.attacks[1].params
        assert (image["eps"], image["step_size"], image["n_steps"]) == pytest.approx((1 / 255, 1 / 255, 100))
        assert config.attacks[2].params["k"] == 10 and config.attacks[2].params["max_words"] == 1


def test_table2_3_out_of_distribution():
    config = paper("table2_3")
    assert {d.name for d in config.datasets} == FIFTEEN and FIFTEEN <= set(DATASETS.names())
    shots = ["1-shot", "5-shot", "50-shot", "full"]
    assert [m.label for m in config.models[1:]] == [
        f"{m} ({s})" for s in shots for m in ("FT-standard", "TeCoA", "MMCoA")
    ]
    assert config.models[-1].weights("dtd") == "runs/ood/imagenet-full/mmcoa/final.pt"
    assert [a.label for a in config.attacks] == PAPER_ATTACKS and len(config.cells()) == 13 * 15 * 4


def test_table5_coattack():
    config = paper("table5")
    [attack] = config.attacks
    assert attack.name == "coattack" and attack.params["n_steps"] == 100 and attack.params["text_weight"] == 3
    in_distribution = [m for m in config.models if m.datasets]
    assert [m.label for m in in_distribution] == ["FT-standard", "TeCoA", "MMCoA"]
    assert all(m.datasets == ("cifar10", "cifar100", "tiny_imagenet") for m in in_distribution)
    assert len(config.cells()) == 15 + 3 * 3 + 9 * 15


def test_table6_retrieval():
    config = paper("table6")
    assert config.task == "retrieval" and [d.name for d in config.datasets] == ["mscoco_karpathy"]
    assert [m.label for m in config.models] == ["CLIP", "TeCoA", "MMCoA"]
    params = {a.label: a.params for a in config.attacks}
    assert params["coattack"]["step_size"] == pytest.approx(2 / 255 / 10 * 1.25)
    assert params["sga"]["step_size"] == pytest.approx(0.5 / 255) and params["sga"]["eps"] == pytest.approx(
        2 / 255
    )
    assert params["pgd"]["n_steps"] == 10


# -- one pass over each model and dataset --------------------------------------------------------
@pytest.fixture(scope="module")
def mlm(tiny_mlm):
    """The tiny MLM on the captions of the image folder's and the synthetic set's classes."""
    classnames = [*FOLDER_CLASSES, *mmcoa.load_dataset("synthetic").classnames]
    return tiny_mlm(caption_corpus(classnames, CAPTION_TEMPLATES))


SYNTHETIC_12 = {"name": "synthetic", "options": {"n_samples": 12, "n_classes": 4, "image_size": 28}}
SYNTHETIC_3_CLASSES = {"name": "synthetic", "options": {"n_samples": 10, "n_classes": 3, "image_size": 24}}


def table_one(path: Path, mlm: str, **values) -> Path:
    pgd = {"eps": 4, "step_size": 1, "n_steps": 3}
    base = {
        "name": "t1",
        "n_samples": 10,
        "batch_size": 4,
        "device": "cpu",
        "models": [{"label": "CLIP", "name": "tiny-clip"}, {"label": "HF", "name": "tiny-clip-hf"}],
        "datasets": [SYNTHETIC_12],
        "attacks": [
            {"name": "clean"},
            {"label": "image", "name": "pgd", **pgd},
            {"label": "text", "name": "bert", "mlm": mlm},
            {"label": "multimodal", "name": "multimodal", "mlm": mlm, **pgd},
        ],
    }
    path.write_text(yaml.safe_dump({**base, **values}, sort_keys=False))
    return path


def cell_by_cell(config, output: Path) -> list[dict]:
    """Every cell evaluated alone, as before suites shared their passes."""
    records = []
    for cell in config.cells():
        model = mmcoa.load_model(cell.model.name, pretrained=cell.weights)
        dataset = suite.DatasetCache(config).get(cell.dataset, model.image_size[0])
        indices = suite.sample_indices(len(dataset), config.n_samples, config.seed)
        attack = suite._build_attack(config, cell.attack)
        records.append(suite.evaluate_cell(config, cell, model, dataset, indices, attack))
    return records


def test_one_pass_suite_gives_the_cell_by_cell_records(tmp_path, mlm, monkeypatch):
    config = load_suite(table_one(tmp_path / "t1.yaml", mlm))
    pgd_calls = []
    original = PGDAttack.__call__

    def counting(self, classifier, images, *args, **kwargs):
        pgd_calls.append(len(images))
        return original(self, classifier, images, *args, **kwargs)

    monkeypatch.setattr(PGDAttack, "__call__", counting)
    shared = suite.run_suite(config, tmp_path / "out", progress=False)
    assert len(pgd_calls) == 2 * 3  # 2 rows x 3 batches: the multimodal cells reused the PGD images
    pgd_calls.clear()
    alone = cell_by_cell(config, tmp_path / "alone")
    assert len(pgd_calls) == 2 * 2 * 3  # pgd and multimodal each ran their own
    assert [comparable(r) for r in shared] == [comparable(r) for r in alone]
    multimodal = [r for r in shared if r["attack"] == "multimodal"]
    image = [r for r in shared if r["attack"] == "pgd"]
    assert all(m["accuracy"] <= p["accuracy"] for m, p in zip(multimodal, image))


def test_multimodal_with_other_pgd_settings_runs_its_own(tmp_path, mlm, monkeypatch):
    path = table_one(tmp_path / "t1.yaml", mlm)
    values = yaml.safe_load(path.read_text())
    values["attacks"][3]["n_steps"] = 2
    config = load_suite(table_one(path, mlm, attacks=values["attacks"], models=values["models"][:1]))
    shared = suite.run_suite(config, tmp_path / "out", progress=False)
    assert [comparable(r) for r in shared] == [comparable(r) for r in cell_by_cell(config, tmp_path / "a")]


def test_a_suite_interrupted_mid_row_resumes_with_the_same_records(tmp_path, mlm, image_folder, monkeypatch):
    config_path = table_one(
        tmp_path / "t1.yaml",
        mlm,
        datasets=[SYNTHETIC_12, SYNTHETIC_3_CLASSES],
        models=[{"label": "CLIP", "name": "tiny-clip"}],
    )
    # two datasets of one name are not a valid suite: give the second its own name
    values = yaml.safe_load(config_path.read_text())
    values["datasets"][1] = {"name": f"imagefolder:{image_folder}"}
    config_path.write_text(yaml.safe_dump(values, sort_keys=False))
    calls, original = [], suite.evaluate

    def interrupt_second_pass(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(suite, "evaluate", interrupt_second_pass)
    with pytest.raises(KeyboardInterrupt):
        suite.run_suite(load_suite(config_path), tmp_path / "out", progress=False)
    monkeypatch.undo()
    assert len(list((tmp_path / "out" / "cells").glob("*.json"))) == 4  # the first dataset's cells
    resumed = suite.run_suite(load_suite(config_path), tmp_path / "out", resume=True, progress=False)
    fresh = suite.run_suite(load_suite(config_path), tmp_path / "fresh", progress=False)
    assert len(resumed) == 8 and [comparable(r) for r in resumed] == [comparable(r) for r in fresh]


# -- a suite that fails up front -----------------------------------------------------------------
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


# -- shards across machines, and merging their folders ------------------------------------------
SHARDED_ATTACKS = [{"name": "clean"}, PGD, {**PGD, "label": "image2", "eps": 2}]


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """A 6-cell suite (2 rows × 3 attacks) run whole, and as shards 1/2 and 2/2 in a folder each
    (shard 1: cells 0, 2, 4 of the table; shard 2: cells 1, 3, 5)."""
    root = tmp_path_factory.mktemp("shards")
    config = write_suite(
        root / "s.yaml",
        models=[{"label": "CLIP", "name": "tiny-clip"}, {"label": "Other", "name": "tiny-clip-hf"}],
        attacks=SHARDED_ATTACKS,
    )
    whole = suite.run_suite(load_suite(config), root / "whole", progress=False)
    parts = [root / "part1", root / "part2"]
    for i, part in enumerate(parts, 1):
        suite.run_suite(load_suite(config), part, progress=False, shard=(i, 2))
    return {"config": config, "whole": whole, "whole_dir": root / "whole", "parts": parts}


def read(path: Path):
    return json.loads(path.read_text())


def same_records(records: list[dict], expected: list[dict]) -> bool:
    return [comparable(r) for r in records] == [comparable(r) for r in expected]


def test_two_shards_sharing_a_folder_give_the_unsharded_records(sharded, tmp_path, capsys, monkeypatch):
    config, whole, shared = sharded["config"], sharded["whole"], tmp_path / "shared"
    shared.mkdir()
    (shared / ".suite.json.x1.tmp").write_text("{")  # a sibling shard's write in progress
    argv = ["suite", str(config), "--output", str(shared), "--no-progress"]
    assert main([*argv, "--shard", "1/2"]) == 0
    assert "shard 1/2: 3 of its 3 cells done; 3 of 6 cells of the suite" in capsys.readouterr().out
    assert same_records(read(shared / "records.json"), whole[:3])  # the first model row's group
    assert read(shared / "suite.json")["shard"] == [1, 2]

    records = suite.run_suite(load_suite(config), shared, progress=False, shard=(2, 2))  # no --resume
    assert same_records(records, whole) and same_records(read(shared / "records.json"), whole)
    assert read(shared / "suite.json")["settings"] == read(sharded["whole_dir"] / "suite.json")["settings"]
    for part in (shared, *sharded["parts"]):  # seeded: every shard drew the same subset
        assert read(part / "subsets" / "synthetic.json") == read(
            sharded["whole_dir"] / "subsets" / "synthetic.json"
        )

    calls = count_calls(monkeypatch, "evaluate")
    assert main([*argv, "--shard", "1/2", "--resume"]) == 0  # resume per shard: nothing left
    assert calls == [] and "6 of 6 cells of the suite" in capsys.readouterr().out
    with pytest.raises(MmcoaError, match="already holds this suite's results; pass --resume"):
        suite.run_suite(load_suite(config), shared, progress=False, shard=(2, 2))


def test_shards_in_separate_folders_merge_into_the_unsharded_records(sharded, tmp_path, capsys):
    parts, output = sharded["parts"], tmp_path / "merged"
    assert [len(read(p / "records.json")) for p in parts] == [3, 3]
    assert main(["suite-merge", *map(str, parts), "--output", str(output)]) == 0
    assert "6 of 6 cells merged" in capsys.readouterr().out
    records = read(output / "records.json")
    assert same_records(records, sharded["whole"])
    assert all(read(output / "cells" / f"{r['cell']}.json") == r for r in records)
    merged, whole = read(output / "suite.json"), read(sharded["whole_dir"] / "suite.json")
    assert "shard" not in merged and merged["settings"] == whole["settings"]
    assert merged["cells"] == whole["cells"]
    assert [p["shard"] for p in merged["merged_from"]] == [[1, 2], [2, 2]]
    assert read(output / "subsets" / "synthetic.json") == read(
        sharded["whole_dir"] / "subsets" / "synthetic.json"
    )


def copy_part(part: Path, to: Path) -> Path:
    import shutil

    return Path(shutil.copytree(part, to))


def merge_error(capsys, *argv) -> str:
    assert main(["suite-merge", *map(str, argv)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("mmcoa: error: ") and error.count("\n") == 1, error
    return error


def test_merge_refuses_other_settings_and_conflicting_cells(sharded, tmp_path, capsys):
    part1, part2 = sharded["parts"]
    output = tmp_path / "merged"
    other = copy_part(part2, tmp_path / "other")
    saved = read(other / "suite.json")
    saved["settings"]["seed"] = 1
    (other / "suite.json").write_text(json.dumps(saved))
    assert "first difference: seed" in merge_error(capsys, part1, other, "--output", output)

    conflict = copy_part(part1, tmp_path / "conflict")
    cell = read(part1 / "cells" / "clip__synthetic__image.json")
    (conflict / "cells" / "clip__synthetic__image.json").write_text(json.dumps({**cell, "accuracy": 0.5}))
    error = merge_error(capsys, part1, conflict, "--output", output)
    assert (
        "cell clip__synthetic__image has different records" in error and "first difference: accuracy" in error
    )

    subsets = copy_part(part2, tmp_path / "subsets")
    path = subsets / "subsets" / "synthetic.json"
    path.write_text(json.dumps({**read(path), "indices": [0, 1, 2, 3, 4, 5]}))
    assert "differs from" in merge_error(capsys, part1, subsets, "--output", output)
    assert "holds no suite.json" in merge_error(capsys, part1, tmp_path, "--output", output)
    assert not output.exists()  # nothing written before every check passed

    rerun = copy_part(part1, tmp_path / "rerun")  # the same cell computed twice: only timing differs
    (rerun / "cells" / "clip__synthetic__image.json").write_text(json.dumps({**cell, "elapsed_s": 99.0}))
    assert main(["suite-merge", str(part1), str(rerun), "--output", str(output)]) == 0


def test_merging_incomplete_parts_reports_the_missing_cells(sharded, tmp_path, capsys):
    part1, part2 = sharded["parts"]
    output = tmp_path / "merged"
    assert main(["suite-merge", str(part1), "--output", str(output)]) == 0
    out = capsys.readouterr().out
    assert "3 of 6 cells missing" in out and "3 of 6 cells merged" in out
    assert (
        "shard 2/2: 3 missing (other__synthetic__clean, other__synthetic__image, other__synthetic__image2)"
        in out
    )
    assert same_records(read(output / "records.json"), sharded["whole"][:3])
    # merging the second part into the earlier merge completes it
    assert main(["suite-merge", str(part2), "--output", str(output)]) == 0
    assert "missing" not in capsys.readouterr().out
    assert same_records(read(output / "records.json"), sharded["whole"])
    assert [p["shard"] for p in read(output / "suite.json")["merged_from"]] == [[2, 2], [1, 2]]


@pytest.mark.parametrize(
    "value, message",
    [
        ("0/2", "--shard 0/2: I must be from 1 to 2"),
        ("3/2", "--shard 3/2: I must be from 1 to 2"),
        ("a/b", "--shard must be I/N, shard I of N .*; got 'a/b'"),
        ("1/0", "--shard 1/0: N, the number of shards, must be 1 or more"),
    ],
)
def test_bad_shard_values_are_one_line_errors(tmp_path, capsys, monkeypatch, value, message):
    monkeypatch.setattr(suite, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    output = tmp_path / "out"
    argv = ["suite", str(write_suite(tmp_path / "s.yaml")), "--output", str(output), "--shard", value]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert error.startswith("mmcoa: error: ") and error.count("\n") == 1 and re.search(message, error), error
    assert not output.exists()


def test_records_carry_the_suite_protocol(tmp_path, sharded):
    config = load_suite(write_suite(tmp_path / "s.yaml", n_samples=2, attacks=[{"name": "clean"}]))
    config.protocol = {"name": "mini-protocol", "eps": 1}
    [record] = suite.run_suite(config, tmp_path / "out", progress=False)
    assert record["protocol"] == {"name": "mini-protocol", "eps": 1}
    assert all("protocol" not in r for r in sharded["whole"])  # none set: no key


def test_shards_keep_a_model_row_and_dataset_together():
    """A (row, dataset) group's cells share one pass (and a multimodal column reuses the PGD of its
    neighbour), so a shard takes whole groups; with fewer groups than shards, single cells."""
    groups = [("a", None, "x")] * 3 + [("a", None, "y")] * 3 + [("b", None, "x")] * 3
    assert suite.shard_owners(groups, 2) == [1, 1, 1, 2, 2, 2, 1, 1, 1]
    assert suite.shard_owners(groups, 3) == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert suite.shard_owners(groups[:3], 2) == [1, 2, 1]


def test_a_model_row_with_a_test_time_defense_gives_mmcoa_evals_records(tmp_path):
    """A suite row's ``defense:`` wraps the row's model as ``mmcoa eval --defense`` does: the same
    numbers, the defense in the record and in the cell settings; a bad one is one line."""
    from mmcoa.cli import main

    rows = [
        {
            "label": "TTC",
            "name": "tiny-clip",
            "defense": {"name": "ttc", "eps": 8, "gradient": "undefended"},
        }
    ]
    path = write_suite(tmp_path / "s.yaml", models=rows, datasets=["synthetic"])
    [clean, image] = suite.run_suite(load_suite(path), tmp_path / "out", progress=False)
    assert image["model_build"]["defense"]["evaluation"] == "non-adaptive"
    assert image["cell_settings"]["defense"]["eps"] == pytest.approx(8 / 255)
    argv = ["eval", "--model", "tiny-clip", "--dataset", "synthetic", "--n-samples", "6", "--batch-size", "4"]
    argv += ["--attacks", "clean,pgd", "--eps", "1", "--step-size", "1", "--n-steps", "2", "--device", "cpu"]
    argv += ["--defense", "ttc", "--defense-eps", "8", "--defense-eval", "non-adaptive", "--no-progress"]
    assert main([*argv, "--output", str(tmp_path / "e.json")]) == 0
    alone = json.loads((tmp_path / "e.json").read_text())
    assert [r["accuracy"] for r in alone] == [clean["accuracy"], image["accuracy"]]
    bad = write_suite(
        tmp_path / "b.yaml", models=[{"name": "tiny-clip", "defense": {"name": "ttc", "tau": -1}}]
    )
    with pytest.raises(MmcoaError, match=r"models\[0\]\.defense: .*tau") as error:
        load_suite(bad)
    assert "\n" not in str(error.value)
