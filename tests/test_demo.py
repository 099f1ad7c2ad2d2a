"""The offline demo end to end on real Fashion-MNIST images, with fewer evaluation samples and a
shortened Table I; plus the Table I formatting on hand-made records."""

from __future__ import annotations

import json
import os
import re

import open_clip
import pytest
import torch

from mmcoa.demo import (CHECKPOINT_NAME, TABLE1_COLUMNS, TABLE1_ROWS, Table1Settings,
                        format_table1, run_demo, table1_accuracies)
from mmcoa.eval.results import RECORD_KEYS
from mmcoa.models import load_model

FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
SMALL_TABLE1 = Table1Settings(n_samples=100, eval_steps=3, max_steps=3, batch_size=32,
                              report_samples=40, lambdas=(0, 0.5, 1))
ROW_NAMES = [row for row, _ in TABLE1_ROWS]
ATTACKS = ["clean", "pgd", "bert", "multimodal"]  # the records' order (the table's: TABLE1_COLUMNS)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    if not os.path.isdir(FASHION_MNIST):
        pytest.skip("needs Debian's dataset-fashion-mnist (make setup installs it)")
    output = tmp_path_factory.mktemp("demo")
    return output, run_demo(output, n_samples=200, progress=False, table1=SMALL_TABLE1,
                            show_table=False)


def test_demo_trains_saves_and_attacks(demo_run):
    tmp_path, records = demo_run
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


def test_demo_table1_records(demo_run):
    tmp_path, _ = demo_run
    records = json.loads((tmp_path / "table1.json").read_text())
    assert [(r["row"], r["attack"]) for r in records] == [(row, a) for row in ROW_NAMES for a in ATTACKS]
    assert [r["method"] for r in records[::4]] == [None, "ft-standard", "tecoa", "mmcoa"]
    assert all(set(RECORD_KEYS) <= set(r) for r in records)
    assert {r["n_samples"] for r in records} == {SMALL_TABLE1.n_samples}
    assert len({r["sample_indices_sha1"] for r in records}) == 1  # the same images in every row
    checkpoint = str(tmp_path / CHECKPOINT_NAME)
    assert records[0]["pretrained"] == checkpoint
    for record in records[4:]:
        assert record["pretrained"] == str(tmp_path / "train" / record["method"] / "final.pt")
    for record in records:
        params = record["attack_params"]
        if record["attack"] in ("pgd", "multimodal"):
            assert params["eps"] == SMALL_TABLE1.eps and params["n_steps"] == SMALL_TABLE1.eval_steps
        if record["attack"] in ("bert", "multimodal"):
            assert params["mlm"] == str(tmp_path / "mlm")
    by_row = {row: {r["attack"]: r["accuracy"] for r in records if r["row"] == row} for row in ROW_NAMES}
    for accuracy in by_row.values():  # robust accuracy never exceeds clean accuracy
        assert max(accuracy["pgd"], accuracy["bert"], accuracy["multimodal"]) <= accuracy["clean"]
    assert by_row["CLIP (zero-shot)"]["clean"] >= 0.70


def test_demo_table1_fine_tunes_copies_with_the_evaluation_eps(demo_run):
    tmp_path, _ = demo_run
    start = torch.load(tmp_path / CHECKPOINT_NAME, map_location="cpu", weights_only=True)
    for method, towers in (("ft-standard", {"image", "text"}), ("tecoa", {"image"}),
                           ("mmcoa", {"image", "text"})):
        run = tmp_path / "train" / method
        config = json.loads((run / "config.json").read_text())
        assert config["method"] == method and set(config["towers"]) == towers
        assert config["pretrained"] == str(tmp_path / CHECKPOINT_NAME)
        assert config["mlm"] == str(tmp_path / "mlm") and config["dataset"] == "fashion_mnist"
        assert config["train_eps"] == SMALL_TABLE1.eps  # the threat model it is evaluated under
        assert (config["alpha"], config["beta"]) == (0.5, 0.5)
        assert json.loads((run / "metrics.json").read_text())["steps"] == SMALL_TABLE1.max_steps
        tuned = torch.load(run / "final.pt", map_location="cpu", weights_only=True)
        changed = {name for name in start if not torch.equal(start[name], tuned[name])}
        assert any(name.startswith("visual.") for name in changed)
        text_changed = any(not name.startswith(("visual.", "logit_scale")) for name in changed)
        assert text_changed == ("text" in towers)
        load_model("tiny-clip", pretrained=str(run / "final.pt"))
    assert (tmp_path / "train" / "mmcoa" / "adversarial_prompts.jsonl").is_file()


def test_demo_table1_markdown_matches_the_records(demo_run):
    tmp_path, _ = demo_run
    records = json.loads((tmp_path / "table1.json").read_text())
    text = (tmp_path / "table1.md").read_text()
    assert text == format_table1(records, SMALL_TABLE1.describe(
        SMALL_TABLE1.max_steps * SMALL_TABLE1.batch_size)) + "\n"
    rows = _markdown_rows(text)
    assert list(rows) == ROW_NAMES + ["FT-standard − CLIP", "TeCoA − CLIP", "MMCoA − CLIP",
                                      "MMCoA − TeCoA"]
    accuracy = table1_accuracies(records)
    for row in ROW_NAMES:
        assert rows[row] == pytest.approx([accuracy[row][c] for c, _ in TABLE1_COLUMNS], abs=0.05)
    assert rows["MMCoA − TeCoA"] == pytest.approx(
        [a - b for a, b in zip(rows["MMCoA"], rows["TeCoA"])], abs=0.11)
    assert "4/255" in text and f"{SMALL_TABLE1.n_samples} Fashion-MNIST test images" in text


def test_demo_writes_its_report_with_the_sweep_and_interpolation(demo_run):
    """The demo ends with `mmcoa report` over Table I and its analyses: the HTML and Markdown
    report, the eps-sweep, interpolation and gallery plots (non-empty PNGs) and their numbers."""
    tmp_path, _ = demo_run
    report, analyses = tmp_path / "report", tmp_path / "analyses"
    html = (report / "report.html").read_text()
    assert "data:image/png;base64," in html and (report / "report.md").is_file()
    for name in ("eps_sweep", "interpolation", "gallery"):
        png = (analyses / f"{name}.png").read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 5000
        assert json.loads((analyses / f"{name}.json").read_text())
    sweep = json.loads((analyses / "eps_sweep_records.json").read_text())
    attacked = {(r["label"], r["attack"], round(r["attack_params"]["eps"] * 255)) for r in sweep
                if r["attack"] != "clean"}
    assert attacked == {(row, attack, eps) for row in ("CLIP (zero-shot)", "TeCoA", "MMCoA")
                        for attack in ("pgd", "multimodal") for eps in (1, 2, 4)}
    path = json.loads((analyses / "interpolation_records.json").read_text())
    assert sorted({r["lambda"] for r in path}) == [0, 0.5, 1] and all(r["n_samples"] == 40 for r in path)
    # Cross-check: the path's endpoints are the sweep's models on the same seeded subset.
    clean = {r["label"]: r["accuracy"] for r in sweep if r["attack"] == "clean"}
    ends = {r["lambda"]: r["accuracy"] for r in path if r["attack"] == "clean"}
    assert (ends[0], ends[1]) == (clean["CLIP (zero-shot)"], clean["MMCoA"])
    assert "MMCoA" in (report / "report.md").read_text()


def test_table1_format_on_hand_made_records():
    values = {"CLIP (zero-shot)": (0.50, 0.0, 0.0, 0.78), "FT-standard": (0.49, 0.0, 0.0, 0.80),
              "TeCoA": (0.61, 0.0, 0.0, 0.77), "MMCoA": (0.62, 0.25, 0.24, 0.76)}
    records = [{"row": row, "attack": attack, "accuracy": acc}
               for row, accs in values.items() for (_, attack), acc in zip(TABLE1_COLUMNS, accs)]
    rows = _markdown_rows(format_table1(records))
    assert rows["MMCoA"] == [62.0, 25.0, 24.0, 76.0]
    assert rows["FT-standard − CLIP"] == pytest.approx([-1.0, 0.0, 0.0, 2.0])
    assert rows["MMCoA − CLIP"] == pytest.approx([12.0, 25.0, 24.0, -2.0])
    assert rows["MMCoA − TeCoA"] == pytest.approx([1.0, 25.0, 24.0, -1.0])
    header = format_table1(records).splitlines()[2]
    assert header == "| Method | Image Attack | Text Attack | Multimodal Attack | Clean |"
    # only the rows present are printed, and no delta that needs a missing row
    partial = _markdown_rows(format_table1([r for r in records if r["row"] != "TeCoA"]))
    assert "TeCoA" not in partial and "MMCoA − TeCoA" not in partial and "MMCoA − CLIP" in partial


def _markdown_rows(text: str) -> dict[str, list[float]]:
    """Table rows of a Markdown table as {first cell: numbers} ("−" read as minus)."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells and re.fullmatch(r"[+−-]?\d+\.\d", cells[-1]):
            rows[cells[0]] = [float(c.replace("−", "-")) for c in cells[1:]]
    return rows
