"""Reports from hand-made record files: the paper's table layouts, missing cells, mixed attack
settings kept apart, gain rows, loading files and directories, one-line errors, the HTML in
headless Chromium, and `mmcoa report` on the command line."""

from __future__ import annotations

import csv
import json

import pytest

from mmcoa.attacks import ATTACKS
from mmcoa.attacks.base import THREATS
from mmcoa.cli import main
from mmcoa.errors import MmcoaError
from mmcoa.attacks import RETRIEVAL_ATTACKS
from mmcoa.report import build_tables, load_records, write_report
from mmcoa.report import columns as C
from mmcoa.report.render import MISSING, table_csv, table_markdown
from mmcoa.report.tables import find_label

from helpers import chromium, console_problems, needs_chromium

EPS1, EPS4 = 1 / 255, 4 / 255


def record(label, dataset, attack, accuracy, n=100, **params):
    """A classification record as `mmcoa eval` writes it (plus the suite's label)."""
    out = {
        "model": "ViT-B-32",
        "pretrained": "openai",
        "dataset": dataset,
        "split": "test",
        "attack": attack,
        "threat": ATTACKS.get(attack).threat,
        "attack_params": params,
        "n_samples": n,
        "accuracy": accuracy,
        "top5": 1.0,
        "seed": 0,
        "elapsed_s": 2.0,
        "versions": {},
    }
    return {**out, "label": label} if label else out


def retrieval_record(label, attack, base, **params):
    scores = {f"{d}_r{k}": base * k / 10 for d in ("i2t", "t2i") for k in (1, 5, 10)}
    return {
        "label": label,
        "model": "ViT-B-32",
        "pretrained": "openai",
        "dataset": "mscoco",
        "split": "test",
        "attack": attack,
        "threat": RETRIEVAL_ATTACKS.get(attack).threat,
        "attack_params": params,
        "n_images": 50,
        "n_captions": 250,
        **scores,
        "seed": 0,
        "elapsed_s": 1.0,
        "versions": {},
    }


@pytest.fixture()
def paper_records():
    """CLIP, TeCoA and MMCoA on two datasets; MMCoA has no CIFAR100 text-attack record."""
    rows = []
    for label, base in (("MMCoA", 0.5), ("TeCoA", 0.4), ("CLIP", 0.1)):
        for dataset in ("cifar10", "cifar100"):
            rows += [
                record(label, dataset, "pgd", base, eps=EPS1, step_size=EPS1, n_steps=100),
                record(label, dataset, "multimodal", base - 0.05, eps=EPS1, mlm="bert"),
                record(label, dataset, "clean", base + 0.3),
            ]
            if not (label == "MMCoA" and dataset == "cifar100"):
                rows.append(record(label, dataset, "bert", base + 0.1, mlm="bert"))
    return rows


def values(table, label):
    return dict(zip([f"{c.group} {c.name}".strip() for c in table.columns], table.row(label).values))


def gain_row(table, name):
    return next(r for r in table.rows if r.gain and r.label == name)


def test_table1_layout_missing_cells_and_gains(paper_records):
    table1 = build_tables(paper_records)[0]
    assert [r.label for r in table1.rows if not r.gain] == ["CLIP", "MMCoA", "TeCoA"]  # CLIP first
    headers = [f"{c.group} {c.name}" for c in table1.columns]
    assert headers == [
        f"{d} {t}" for d in ("cifar10", "cifar100") for t in ("Image", "Text", "Multimodal", "Clean")
    ]
    mmcoa = values(table1, "MMCoA")
    assert mmcoa["cifar10 Image"] == pytest.approx(50.0) and mmcoa["cifar100 Clean"] == pytest.approx(80.0)
    assert mmcoa["cifar100 Text"] is None  # missing, not 0
    assert {r.label for r in table1.rows if r.gain} == {"MMCoA − CLIP", "TeCoA − CLIP", "MMCoA − TeCoA"}
    assert gain_row(table1, "MMCoA − CLIP").values[0] == pytest.approx(40.0)
    assert gain_row(table1, "MMCoA − TeCoA").values[5] is None  # a gain over a missing cell
    markdown = table_markdown(table1)
    assert f"| {MISSING} |" in markdown and "| *MMCoA − TeCoA* |" in markdown and "+10.00" in markdown


def test_different_attack_settings_are_never_merged():
    records = [
        record("CLIP", "cifar10", "pgd", 0.30, eps=EPS1),
        record("CLIP", "cifar10", "pgd", 0.05, eps=EPS4),
        record("TeCoA", "cifar10", "pgd", 0.60, eps=EPS1),
        record("CLIP", "cifar10", "apgd", 0.20, eps=EPS1),
    ]
    table1 = build_tables(records)[0]
    assert [c.name for c in table1.columns] == [
        "Image (apgd, eps=1/255)",
        "Image (pgd, eps=1/255)",
        "Image (pgd, eps=4/255)",
    ]
    assert table1.row("CLIP").values == pytest.approx([20.0, 30.0, 5.0])
    assert (
        table1.row("TeCoA").values[:2] == [None, pytest.approx(60.0)]
        and table1.row("TeCoA").values[2] is None
    )
    assert build_tables(records)[1:] == []  # one dataset: no cross-dataset table repeats Table I


def test_the_report_opens_with_the_main_table_then_figures_then_the_other_tables(tmp_path, paper_records):

    folder = write_plot(write_inputs(tmp_path / "in", paper_records))
    write_report([folder], tmp_path / "out")
    markdown = (tmp_path / "out" / "report.md").read_text()
    heads = [line for line in markdown.splitlines() if line.startswith("## ")]
    assert heads == ["## Main table", "## Analyses", "## More tables"]
    assert (
        markdown.index("### Table I layout")
        < markdown.index("### A plot")
        < markdown.index("### Table II layout")
    )


def test_character_level_text_attacks_have_their_own_named_columns():
    word = {**record("CLIP", "cifar10", "bert", 0.4, k=10), "text_threat": "word"}
    character = {**record("CLIP", "cifar10", "charmer", 0.2, max_edits=1), "text_threat": "character"}
    both = {**record("CLIP", "cifar10", "multimodal", 0.1, text_attack="charmer"), "text_threat": "character"}
    names = [c.name for c in build_tables([word, character, both])[0].columns]
    assert names == ["Text (bert)", "Text (character-level) (charmer)", "Multimodal (character-level)"]


def test_other_parameters_and_sample_counts_show_in_headers():
    records = [
        record("CLIP", "cifar10", "pgd", 0.3, eps=EPS1, n_steps=10),
        record("CLIP", "cifar10", "pgd", 0.2, eps=EPS1, n_steps=100),
        record("CLIP", "cifar10", "clean", 0.8, n=100),
        record("CLIP", "cifar10", "clean", 0.7, n=500),
    ]
    names = [c.name for c in build_tables(records)[0].columns]
    assert names == ["Image (n_steps=10)", "Image (n_steps=100)", "Clean (n=100)", "Clean (n=500)"]


def test_conflicting_records_are_an_error():
    records = [record("TeCoA", "cifar10", "clean", 0.8), record("TeCoA", "cifar10", "clean", 0.7)]
    with pytest.raises(MmcoaError, match="two records for row 'TeCoA' disagree") as error:
        build_tables(records)
    assert "\n" not in str(error.value)
    assert len(build_tables(records[:1] * 2)[0].rows) == 1  # the same record twice is one cell


def test_ood_table_average_only_for_complete_rows(paper_records):
    text = next(t for t in build_tables(paper_records) if t.title.startswith("Table II layout: Text"))
    assert [c.name for c in text.columns] == ["cifar10", "cifar100", "Average"]
    assert text.row("CLIP").values == pytest.approx([20.0, 20.0, 20.0])
    assert text.row("MMCoA").values[1:] == [None, None]  # no CIFAR100 record: no average
    clean = next(t for t in build_tables(paper_records) if "Clean accuracy" in t.title)
    assert gain_row(clean, "MMCoA − CLIP").values[-1] == pytest.approx(40.0)


def test_retrieval_table():
    records = [
        retrieval_record("CLIP", "coattack", 0.1, eps=2 / 255),
        retrieval_record("MMCoA", "coattack", 0.3, eps=2 / 255),
    ]
    (table,) = build_tables(records)
    assert [(c.group, c.name) for c in table.columns] == [
        (g, f"R@{k}") for g in ("TR", "IR") for k in (1, 5, 10)
    ]
    assert table.row("MMCoA").values == pytest.approx([3.0, 15.0, 30.0, 3.0, 15.0, 30.0])
    assert gain_row(table, "MMCoA − CLIP").values[2] == pytest.approx(20.0)
    assert "coattack" in table.title and "mscoco" in table.title


def test_demo_rows_match_the_default_zero_shot_label():
    records = [
        {**record(None, "cifar10", attack, accuracy), "row": row}
        for row, accuracy in (("CLIP (zero-shot)", 0), ("TeCoA", 1), ("MMCoA", 1))
        for attack in ("clean", "pgd")
    ]
    table = build_tables(records)[0]
    assert table.row("CLIP (zero-shot)").values == [0.0, 0.0]
    assert [r.label for r in table.rows if r.gain] == [
        "TeCoA − CLIP (zero-shot)",
        "MMCoA − CLIP (zero-shot)",
        "MMCoA − TeCoA",
    ]
    assert "| TeCoA | 100.00 | 100.00 |" in table_markdown(table)  # integer accuracies as percent


def test_rows_without_label_use_demo_row_or_shortest_distinct_path():
    first = {**record(None, "cifar10", "clean", 0.5), "pretrained": "runs/tecoa/final.pt"}
    second = {**record(None, "cifar10", "clean", 0.6), "pretrained": "runs/mmcoa/final.pt"}
    demo = {**record(None, "cifar10", "clean", 0.7), "row": "CLIP (zero-shot)"}
    assert C.row_labels([first, second, demo]) == [
        "ViT-B-32:tecoa/final.pt",
        "ViT-B-32:mmcoa/final.pt",
        "CLIP (zero-shot)",
    ]


def test_baseline_labels_match_exactly_or_with_a_parenthesis():
    assert find_label(["CLIP (zero-shot)", "TeCoA"], "CLIP") == "CLIP (zero-shot)"
    assert find_label(["CLIP", "CLIP (zero-shot)"], "CLIP") == "CLIP"
    assert find_label(["MMCoA (alpha=1, beta=0)", "MMCoA (alpha=0, beta=1)"], "MMCoA") is None
    records = [record("Zero-shot", "cifar10", "clean", 0.5), record("Mine", "cifar10", "clean", 0.7)]
    table = build_tables(records, zero_shot="Zero-shot", tecoa=None)[0]
    assert [r.label for r in table.rows if r.gain] == ["Mine − Zero-shot"]


def test_a_record_s_threat_is_its_column_family():
    """The report reads the threat the attack wrote; a record written before threats were
    recorded is its attack's own family, never guessed from a name table."""
    assert C.threat_of(record("A", "cifar10", "pgd", 0.1)) == "image"
    assert C.threat_of(record("A", "cifar10", "bert", 0.1)) == "text"
    assert C.threat_of(retrieval_record("A", "sga", 0.1)) == "multimodal"
    old = {k: v for k, v in record("A", "cifar10", "pgd", 0.1).items() if k != "threat"}
    assert C.threat_of(old) == "pgd" and C.threat_name("pgd") == "pgd"
    assert set(C.THREAT_ORDER) == set(THREATS)


# -- loading -------------------------------------------------------------------------------------
def test_load_files_and_directories(tmp_path, paper_records):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "cell.json").write_text(json.dumps(paper_records[0]))  # one object
    (tmp_path / "a" / "deep").mkdir()
    (tmp_path / "a" / "deep" / "list.json").write_text(json.dumps(paper_records[1:4]))
    (tmp_path / "a" / "config.json").write_text(json.dumps({"method": "tecoa"}))  # not a record
    (tmp_path / "b.json").write_text(json.dumps(paper_records[4:6]))
    records = load_records([tmp_path / "a", tmp_path / "b.json", tmp_path / "a" / "cell.json"])
    assert len(records) == 6  # cell.json read once
    assert all(r["_source"].endswith(".json") for r in records)


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "malformed record file .*not valid JSON"),
        (json.dumps([{"model": "m"}]), "malformed record file .*item 0 lacks dataset, attack"),
        (json.dumps({"method": "tecoa"}), "malformed record file"),
    ],
)
def test_malformed_files_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(MmcoaError, match=message) as error:
        load_records([path])
    assert "\n" not in str(error.value)


def test_no_records_is_an_error(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(MmcoaError, match="no result records found"):
        load_records([tmp_path])
    with pytest.raises(MmcoaError, match="does not exist"):
        load_records([tmp_path / "missing"])


# -- writing -------------------------------------------------------------------------------------
def write_inputs(folder, paper_records):
    folder.mkdir()
    (folder / "records.json").write_text(json.dumps(paper_records))
    retrieval = [retrieval_record("CLIP", "coattack", 0.1), retrieval_record("MMCoA", "coattack", 0.3)]
    (folder / "retrieval.json").write_text(json.dumps(retrieval))
    return folder


def write_plot(folder):
    """An analysis summary with its figure ("A plot") beside the records in ``folder``."""
    from mmcoa.analysis.plotting import new_figure, write_analysis

    figure, _ = new_figure(4, 3)
    write_analysis(
        folder,
        "plot",
        analysis="eps-sweep",
        title="A plot",
        figure=figure,
        columns=["series", "value"],
        rows=[["a", 1.0]],
        data={},
    )
    return folder


def test_write_report_files(tmp_path, paper_records):
    page = write_report([write_inputs(tmp_path / "in", paper_records)], tmp_path / "out")
    out = tmp_path / "out"
    assert page == out / "report.html"
    tables = sorted(p.stem for p in (out / "tables").glob("*.csv"))
    assert tables == ["ood1", "ood2", "ood3", "ood4", "retrieval1", "table1"]
    rows = list(csv.reader((out / "tables" / "table1.csv").open()))
    assert rows[0][:3] == ["Method", "cifar10 Image", "cifar10 Text"]
    mmcoa = next(r for r in rows if r[0] == "MMCoA")
    assert mmcoa[6] == MISSING and mmcoa[1] == "50.00"
    long = list(csv.DictReader((out / "records.csv").open()))
    assert len(long) == len(paper_records) + 2 and long[0]["threat"] == "image"
    markdown = (out / "report.md").read_text()
    assert markdown.count("### Table") == 6 and MISSING in markdown
    assert "<script" not in page.read_text()


def test_report_embeds_analysis_figures(tmp_path, paper_records):
    from mmcoa.analysis.plotting import new_figure, write_analysis

    folder = write_inputs(tmp_path / "in", paper_records)
    figure, (ax,) = new_figure(4, 3)
    ax.plot([1, 2], [3, 4])
    write_analysis(
        folder / "plots",
        "demo_plot",
        analysis="eps-sweep",
        title="A plot",
        figure=figure,
        columns=["series", "value"],
        rows=[["a", 1.5], ["b", None]],
        data={},
    )
    page = write_report([folder], tmp_path / "out").read_text()
    assert page.count("data:image/png;base64,") == 1 and 'id="table-demo_plot-numbers"' in page
    assert (tmp_path / "out" / "figures" / "01-demo_plot.png").is_file()
    assert "![A plot](figures/01-demo_plot.png)" in (tmp_path / "out" / "report.md").read_text()


def test_table_csv_roundtrip(paper_records):
    text = table_csv(build_tables(paper_records)[0])
    rows = list(csv.reader(text.splitlines()))
    assert rows[1][0] == "CLIP" and len({len(r) for r in rows}) == 1


# -- the HTML in a browser -----------------------------------------------------------------------
@needs_chromium
def test_chromium_detects_console_errors(tmp_path):
    """The check below is able to fail: a page with a script error is caught."""
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>undefined_function();</script></body></html>")
    assert console_problems(chromium("--dump-dom", bad.as_uri()).stderr)


@needs_chromium
def test_html_report_opens_in_headless_chromium(tmp_path, paper_records):

    folder = write_plot(write_inputs(tmp_path / "in", paper_records))
    page = write_report([folder], tmp_path / "out")
    result = chromium("--dump-dom", page.as_uri())
    assert result.returncode == 0, result.stderr[-2000:]
    assert console_problems(result.stderr) == []
    dom = result.stdout
    keys = ["table1", "ood1", "ood2", "ood3", "ood4", "retrieval1", "plot-numbers"]
    for key in keys:
        assert f'id="table-{key}"' in dom, key
    assert dom.count("<table") == len(keys) and 'src="data:image/png;base64,' in dom
    assert "MMCoA − TeCoA" in dom and MISSING in dom


# -- command line --------------------------------------------------------------------------------
def test_cli_report(tmp_path, capsys, paper_records):
    folder = write_inputs(tmp_path / "in", paper_records)
    assert (
        main(
            [
                "report",
                str(folder),
                "--output",
                str(tmp_path / "out"),
                "--zero-shot-label",
                "CLIP",
                "--tecoa-label",
                "TeCoA",
            ]
        )
        == 0
    )
    assert "report.html" in capsys.readouterr().out
    assert (tmp_path / "out" / "report.html").is_file()


def test_cli_report_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty"), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mmcoa: error: no result records found") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_interpolation_points_stay_out_of_the_tables(tmp_path, paper_records):
    """theta(lambda) mixtures are a figure's points (Fig. 8), not table rows: the report's
    tables hold only the models; records.csv keeps every record."""
    mixtures = [
        {
            **record(f"lambda={lam:g}", "cifar10", attack, 0.3, eps=EPS1),
            "lambda": lam,
            "analysis": "interpolation",
        }
        for lam in (0, 0.5, 1)
        for attack in ("clean", "pgd")
    ]
    (tmp_path / "records.json").write_text(json.dumps(paper_records + mixtures))
    write_report([tmp_path / "records.json"], tmp_path / "report")
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "| MMCoA |" in markdown and "lambda=" not in markdown
    rows = list(csv.DictReader(open(tmp_path / "report" / "records.csv")))
    assert sum(r["label"].startswith("lambda=") for r in rows) == len(mixtures)


def test_a_record_repeated_across_files_counts_once(tmp_path, paper_records):
    """A suite writes each record to cells/<id>.json and again to records.json."""
    (tmp_path / "cells").mkdir()
    for index, item in enumerate(paper_records):
        (tmp_path / "cells" / f"{index}.json").write_text(json.dumps(item))
    (tmp_path / "records.json").write_text(json.dumps(paper_records))
    write_report([tmp_path], tmp_path / "report")
    rows = list(csv.DictReader(open(tmp_path / "report" / "records.csv")))
    assert len(rows) == len(paper_records)
