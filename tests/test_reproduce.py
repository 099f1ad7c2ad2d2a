"""Protocols, ``mmcoa reproduce`` and ``mmcoa leaderboard``, end to end offline.

A zoo entry of the test tree is a tiny CLIP exported as a vision-tower state dict (the FARE and
TeCoA ``.pt`` format) over base weights; the datasets are fabricated CLIP_benchmark webdataset
shards; the protocol is a small one of the shipped schema (AutoAttack's APGD at two eps on the
RobustVLM sample selection, clean accuracy on the whole set). Its "published" numbers are taken
from a first run; the second run reproduces them and flags the one deliberately changed.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from mmcoa.cli import main
from mmcoa.errors import MmcoaError
from mmcoa.eval.protocols import check_record, get_protocol, protocol_names
from mmcoa.models import zoo
from mmcoa.report import published

from helpers import needs_chromium, render_dom

CLASSES = ["cat", "dog", "car", "tree"]
TEMPLATES = ["a photo of a {c}.", "a blurry photo of a {c}."]


def write_wds(folder, n: int, shards: int, seed: int) -> None:
    """A CLIP_benchmark webdataset folder: ``test/{0..}.tar`` with png + cls samples."""
    rng = np.random.default_rng(seed)
    (folder / "test").mkdir(parents=True)
    (folder / "test" / "nshards.txt").write_text(str(shards))
    (folder / "classnames.txt").write_text("\n".join(CLASSES) + "\n")
    (folder / "zeroshot_classification_templates.txt").write_text("\n".join(TEMPLATES) + "\n")
    for shard in range(shards):
        with tarfile.open(folder / "test" / f"{shard}.tar", "w") as tar:
            for i in range(shard, n, shards):
                pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
                png = io.BytesIO()
                Image.fromarray(pixels).save(png, format="png")
                _add(tar, f"s{i:05d}.png", png.getvalue())
                _add(tar, f"s{i:05d}.cls", str(int(rng.integers(0, len(CLASSES)))).encode())


def _add(tar, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


MINI = {
    "name": "mini",
    "version": 1,
    "ref": "mini_ref",
    "description": "robustvlm in miniature",
    "settings": {"template": "ensemble", "logit_scale": 100, "batch_size": 8, "precision": "fp32", "seed": 0},
    "datasets": [
        {"label": "alpha", "name": "wds:alpha", "options": {"size": "native"}},
        {"label": "beta", "name": "wds:beta", "options": {"size": "native"}},
    ],
    "parts": {
        "clean": {
            "dataset_options": {},
            "attacks": [{"label": "clean", "name": "clean", "measure": "clean"}],
        },
        "robust": {
            "dataset_options": {"order": "robustvlm", "n_samples": 12},
            "attacks": [
                {"label": f"AA {e}/255", "name": "apgd", "eps": e, "n_steps": 3, "n_restarts": 2}
                | {"n_restarts_targeted": 1, "min_classes_targeted": 3, "measure": "robust"}
                for e in (1, 2)
            ],
        },
    },
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Data root, protocol file, weights and a zoo file whose entry publishes nothing yet."""
    import open_clip

    root = tmp_path_factory.mktemp("reproduce")
    write_wds(root / "data" / "wds_alpha", n=20, shards=1, seed=0)
    write_wds(root / "data" / "wds_beta", n=18, shards=3, seed=1)
    (root / "mini.yaml").write_text(yaml.safe_dump(MINI, sort_keys=False))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        base = open_clip.create_model("tiny-clip", force_quick_gelu=True, load_weights=False).state_dict()
        torch.manual_seed(1)
        robust = open_clip.create_model("tiny-clip", force_quick_gelu=True, load_weights=False).state_dict()
    torch.save(base, root / "base.pt")
    visual = {k[len("visual.") :]: v for k, v in robust.items() if k.startswith("visual.")}
    torch.save(visual, root / "vision.pt")
    full = {**base, **{f"visual.{k}": v for k, v in visual.items()}}
    train = {"vision_encoder_state_dict": {f"module.{k}": v for k, v in visual.items()}, "epoch": 2}
    torch.save(train, root / "train.pth.tar")
    torch.save(full, root / "full.pt")
    (root / "hub").mkdir()
    config = {"model_cfg": {**open_clip.get_model_config("tiny-clip"), "quick_gelu": "TRUE"}}
    (root / "hub" / "open_clip_config.json").write_text(json.dumps(config))
    torch.save(full, root / "hub" / "open_clip_pytorch_model.bin")
    return root


FORMATS = {  # the published formats, one file each, all holding the same weights
    "training_checkpoint": "train.pth.tar",
    "full_state_dict": "full.pt",
    "open_clip_hub": "hub",
}


def zoo_file(root, published_results=None, fmt="vision_state_dict", name="tiny-robust"):
    entry = {
        "name": name,
        "method": "FARE (test)",
        "arch": "tiny-clip",
        "train_eps": "2/255",
        "load": {
            "format": fmt,
            "arch": "tiny-clip",
            "quick_gelu": True,
            "base": str(root / "base.pt"),
        },
        "published": published_results or [],
    }
    path = root / f"zoo-{name}-{len(published_results or [])}.yaml"
    path.write_text(yaml.safe_dump({"checkpoints": [entry]}))
    return path


@pytest.fixture(autouse=True)
def no_user_zoo(monkeypatch):
    monkeypatch.delenv(zoo.ZOO_ENV, raising=False)
    yield
    zoo._added_files.clear()


def reproduce(world, output, zoo_path, *extra, model="tiny-robust", weights="vision.pt"):
    argv = ["reproduce", str(world / "mini.yaml"), "--model", model, "--zoo", str(zoo_path)]
    argv += ["--pretrained", str(world / weights), "--data-root", str(world / "data"), "--device", "cpu"]
    return main([*argv, "--output", str(output), "--no-progress", *extra])


@pytest.fixture(scope="module")
def first_run(world, tmp_path_factory):
    output = tmp_path_factory.mktemp("first")
    assert reproduce(world, output, zoo_file(world)) == 0
    zoo._added_files.clear()
    return output


def _records(folder):
    return [
        r for part in ("clean", "robust") for r in json.loads((folder / part / "records.json").read_text())
    ]


def test_every_record_carries_the_protocol_and_its_settings(first_run, world):
    protocol = get_protocol(str(world / "mini.yaml"))
    records = _records(first_run)
    assert len(records) == 2 + 2 * 2
    for record in records:
        assert record["protocol"] == {**protocol.identity, "part": record["protocol"]["part"]}
        assert record["logit_scale"] == 100 and record["prompt_ensemble"] == len(TEMPLATES)
        check_record(record, protocol)
    robust = [r for r in records if r["attack"] == "apgd"]
    assert {r["n_samples"] for r in robust} == {12}
    assert {r["n_samples"] for r in records if r["attack"] == "clean"} == {20, 18}


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_published_format_gives_the_same_records(first_run, world, tmp_path, fmt):
    """The same weights exported in each format reproduce the vision state dict's run exactly."""
    name = f"tiny-{fmt.replace('_', '-')}"
    assert (
        reproduce(world, tmp_path, zoo_file(world, fmt=fmt, name=name), model=name, weights=FORMATS[fmt]) == 0
    )
    numbers = {(r["dataset"], r["attack_label"]): r["accuracy"] for r in _records(tmp_path)}
    assert numbers == {(r["dataset"], r["attack_label"]): r["accuracy"] for r in _records(first_run)}


def test_a_record_of_other_settings_is_never_compared(first_run, world):
    protocol = get_protocol(str(world / "mini.yaml"))
    record = next(r for r in _records(first_run) if r["attack"] == "apgd")
    changed = json.loads(json.dumps(record))
    changed["cell_settings"]["attack_params"]["n_steps"] = 100
    with pytest.raises(MmcoaError, match="settings other than protocol mini"):
        check_record(changed, protocol)
    older = {**record, "protocol": {**record["protocol"], "version": 0}}
    with pytest.raises(MmcoaError, match="version 0"):
        check_record(older, protocol)
    with pytest.raises(MmcoaError, match="not made by a protocol run"):
        check_record({k: v for k, v in record.items() if k != "protocol"}, protocol)


def _published_from(first_run, change: float):
    """Averages of the first run as 'published' numbers (percent, 1 decimal), the 4/255 robust
    one moved by ``change`` points."""
    ours = {}
    for record in _records(first_run):
        ours.setdefault(record["attack_label"], []).append(100 * record["accuracy"])
    mean = {label: round(sum(v) / len(v), 1) for label, v in ours.items()}
    return [
        {
            "protocol": {"ref": "mini_ref", "eps": f"{e}/255"},
            "results": {
                "avg_zero_shot": {
                    "clean": mean["clean"],
                    "robust": mean[f"AA {e}/255"] + (change if e == 2 else 0),
                }
            },
        }
        for e in (1, 2)
    ]


def test_reproduce_matches_the_published_numbers_and_flags_a_changed_one(first_run, world, tmp_path, capsys):
    assert json.loads((first_run / "comparison.json").read_text())["rows"] == []  # nothing published yet
    zoo_path = zoo_file(world, _published_from(first_run, change=30.0))
    shutil.copytree(first_run, tmp_path / "run")
    first_run = tmp_path / "run"
    assert reproduce(world, first_run, zoo_path, "--resume") == 0  # every cell finished: compare only
    assert "4 published numbers compared, 1 beyond sampling error" in capsys.readouterr().out
    rows = json.loads((first_run / "comparison.json").read_text())["rows"]
    flagged = [(r["eps"], r["metric"]) for r in rows if r["flagged"]]
    assert flagged == [("2/255", "robust")]
    for row in rows:
        assert row["tolerance"] > 0 and abs(row["difference"]) <= (30.05 if row["flagged"] else 0.05 + 1e-9)
    assert "BEYOND SAMPLING" in (first_run / "comparison.md").read_text()
    zoo.add_zoo_file(str(zoo_path))
    assert (
        main(
            [
                "report",
                str(first_run / "clean"),
                str(first_run / "robust"),
                "--output",
                str(tmp_path / "report"),
            ]
        )
        == 0
    )
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert markdown.index("## Main table") < markdown.index("## Ours beside the published numbers")
    assert "BEYOND SAMPLING" in markdown


def test_tolerance_is_the_binomial_interval_plus_rounding():
    m = published.Measured(0.5, 1000)
    assert published.Z_95 * 100 * np.sqrt(m.variance) == pytest.approx(3.099, abs=1e-3)
    assert published._rounding(43.1) == pytest.approx(0.05) and published._rounding(56.44) == pytest.approx(
        0.005
    )


def test_leaderboard_ranks_models_and_its_page_sorts(first_run, world, tmp_path, capsys):
    zoo.add_zoo_file(str(zoo_file(world, _published_from(first_run, change=0.0))))
    out = tmp_path / "board"
    assert main(["leaderboard", str(first_run), "--output", str(out)]) == 0, capsys.readouterr().err
    markdown = (out / "leaderboard.md").read_text()
    assert "tiny-robust" in markdown and "FARE (test)" in markdown and "mini v1" in markdown
    assert (out / "leaderboard-leaderboard.csv").read_text().count("\n") == 2  # header + one model


@needs_chromium
def test_leaderboard_page_opens_and_sorts_in_headless_chromium(first_run, world, tmp_path):
    zoo.add_zoo_file(str(zoo_file(world)))
    assert main(["leaderboard", str(first_run), "--output", str(tmp_path)]) == 0
    dom, problems = render_dom(tmp_path / "leaderboard.html", click="table.results thead tr:last-child th")
    assert not problems and "tiny-robust" in dom and 'data-sorted-by="' in dom


def test_leaderboard_refuses_records_of_two_protocols_or_none(first_run, tmp_path, capsys):
    record = json.loads((first_run / "clean" / "records.json").read_text())[0]
    other = tmp_path / "other.json"
    other.write_text(json.dumps([{**record, "protocol": {**record["protocol"], "name": "tecoa"}}]))
    assert main(["leaderboard", str(first_run), str(other), "--output", str(tmp_path / "b")]) == 2
    assert "records of several protocols (mini, tecoa)" in capsys.readouterr().err
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps([{k: v for k, v in record.items() if k != "protocol"}]))
    assert main(["leaderboard", str(bare), "--output", str(tmp_path / "c")]) == 2
    assert "a record without a protocol" in capsys.readouterr().err


def test_unknown_protocol_is_one_line(capsys):
    assert main(["reproduce", "robustbench", "--model", "tiny-clip", "--output", "x"]) == 2
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1
        and "unknown protocol 'robustbench'; known: mmcoa, robustvlm, tecoa, tga-zsr" in err
    )


def test_missing_shards_are_one_line_before_any_file_is_written(world, tmp_path, capsys):
    (world / "data" / "wds_gamma" / "test").mkdir(parents=True, exist_ok=True)
    spec = {**MINI, "datasets": [{"label": "g", "name": "wds:gamma"}]}
    path = tmp_path / "gamma.yaml"
    path.write_text(yaml.safe_dump(spec))
    argv = ["reproduce", str(path), "--model", "tiny-clip", "--data-root", str(world / "data")]
    assert main([*argv, "--device", "cpu", "--output", str(tmp_path / "out"), "--no-progress"]) == 2
    assert "nshards.txt" in capsys.readouterr().err
    assert not (tmp_path / "out" / "clean" / "records.json").exists()


# -- the shipped protocols, as published -------------------------------------------------------------
def test_the_four_protocols_ship_with_their_published_settings():
    assert protocol_names() == ["mmcoa", "robustvlm", "tecoa", "tga-zsr"]
    robustvlm = get_protocol("robustvlm")
    assert len(robustvlm.datasets) == 13 and robustvlm.ref == "robustvlm_zeroshot_aa"
    robust = robustvlm.suite("robust", "tiny-clip")
    assert (robust.template, robust.logit_scale, robust.batch_size) == ("ensemble", 100, 50)
    aa = robust.attacks[0].params
    assert (aa["n_steps"], aa["n_restarts"], aa["n_restarts_targeted"], aa["n_target_classes"]) == (
        100,
        5,
        1,
        9,
    )
    assert aa["eps"] == pytest.approx(2 / 255) and robust.attacks[1].params["eps"] == pytest.approx(4 / 255)
    options = {d.name: d.options for d in robust.datasets}
    assert options["wds:vtab/cifar10"] == {"size": "native", "order": "robustvlm", "n_samples": 1000}
    assert options["wds:cars"]["size"] == "224"
    assert {d.options.get("n_samples") for d in robustvlm.suite("clean", "tiny-clip").datasets} == {None}
    tecoa, tga = (
        get_protocol("tecoa").suite("eval", "tiny-clip"),
        get_protocol("tga-zsr").suite("eval", "tiny-clip"),
    )
    pgd = tecoa.attacks[1].params
    assert (pgd["n_steps"], pgd["eps"] * 255, pgd["step_size"] * 255) == (
        100,
        pytest.approx(1),
        pytest.approx(1),
    )
    assert len(tecoa.datasets) == 16 and tecoa.template == "This is a photo of a {}"
    assert {d.name: d.options for d in tecoa.datasets}["cifar10"] == {}
    assert {d.name: d.options for d in tga.datasets}["cifar10"] == {"size": "224"}
    mmcoa = get_protocol("mmcoa").suite("eval", "tiny-clip")
    assert [a.name for a in mmcoa.attacks] == ["clean", "pgd", "bert", "multimodal"]


def test_leaderboard_puts_the_most_robust_model_first(first_run, tmp_path):
    records = _records(first_run)
    better = [{**r, "label": "tiny-better", "accuracy": min(1.0, r["accuracy"] + 0.1)} for r in records]
    (tmp_path / "better.json").write_text(json.dumps(better))
    assert (
        main(["leaderboard", str(first_run), str(tmp_path / "better.json"), "--output", str(tmp_path / "b")])
        == 0
    )
    rows = (tmp_path / "b" / "leaderboard-leaderboard.csv").read_text().splitlines()[1:]
    assert [row.split(",")[0] for row in rows] == ["tiny-better", "tiny-robust"]
