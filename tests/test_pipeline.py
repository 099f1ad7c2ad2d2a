"""The batch pipeline (issue "Feed the GPU"): worker processes change nothing but speed.

Same batches and values with 0 and 2 workers, the global RNG left alone, the same final weights,
exact resume with workers, a corrupt file as one line naming it, suites that decode each dataset
once and reuse PGD images for the Sep multimodal attack with the records of cell-by-cell runs,
background checkpoints (by steps and by wall-clock, model-only epoch files), no host read before
``backward()``, the data-wait share in the logs, and log cuts on resume that read only what they
need."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import mmcoa
from mmcoa.attacks.pgd import PGD
from mmcoa.attacks.text.tiny_mlm import caption_corpus, train_tiny_mlm
from mmcoa.cli import main
from mmcoa.data.loading import BatchLoader, as_float_images, default_workers, resolve_workers
from mmcoa.errors import BadImageError, MmcoaError
from mmcoa.eval import suite
from mmcoa.eval.suite_config import load_suite
from mmcoa.train import checkpointing, trainer
from mmcoa.train.config import TrainConfig
from mmcoa.train.order import EpochOrder
from mmcoa.train.pretrain import CAPTION_TEMPLATES
from mmcoa.train.trainer import train
from helpers import crash_training_at

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py
CLASSES = ("cat", "dog", "bird")


def write_folder(root: Path, per_class: int = 4, size=(50, 37)) -> Path:
    """An imagefolder of small JPEGs, some grey (8-bit L) and some RGB."""
    rng = np.random.default_rng(0)
    for name in CLASSES:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
            image = Image.fromarray(pixels)
            (image.convert("L") if i % 3 == 2 else image).save(root / name / f"{i}.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("folder") / "images")


@pytest.fixture(scope="module")
def mlm(tmp_path_factory):
    corpus = caption_corpus(list(CLASSES) + mmcoa.load_dataset("synthetic").classnames, CAPTION_TEMPLATES)
    return str(train_tiny_mlm(corpus, tmp_path_factory.mktemp("pipe-mlm") / "mlm", steps=30))


# -- the loader ----------------------------------------------------------------------------------
@pytest.mark.parametrize("workers", [0, 2])
def test_batches_hold_the_items_in_the_given_order_bit_for_bit(folder, workers):
    dataset = mmcoa.load_dataset(f"imagefolder:{folder}")
    batches = [[5, 0, 7], [11, 2], [3]]
    state = torch.get_rng_state()
    loaded = list(BatchLoader(dataset, batches, workers=workers))
    assert torch.equal(torch.get_rng_state(), state)  # workers' seeds come from their own generator
    assert [b.indices for b in loaded] == batches and [b.position for b in loaded] == [0, 1, 2]
    for batch, chosen in zip(loaded, batches):
        expected = torch.stack([dataset[i][0] for i in chosen])
        assert batch.images.dtype == torch.float32 and torch.equal(batch.images, expected)
        assert batch.labels.tolist() == [dataset[i][1] for i in chosen] and batch.wait_s >= 0


def test_uint8_travels_and_becomes_what_to_tensor_gives(folder):
    from torchvision.transforms.functional import to_tensor

    dataset = mmcoa.load_dataset(f"imagefolder:{folder}")
    raw, _ = dataset.raw_item(0)
    assert raw.dtype == torch.uint8 and raw.shape == (3, 224, 224)
    with Image.open(dataset.source(0)) as image:
        reference = to_tensor(
            dataset.inner.transform.transforms[1](dataset.inner.transform.transforms[0](image.convert("RGB")))
        )
    assert torch.equal(as_float_images(raw.unsqueeze(0))[0], reference)


def test_positions_pick_the_batches_and_a_batch_function_works(folder):
    dataset = mmcoa.load_dataset(f"imagefolder:{folder}")
    loaded = list(BatchLoader(dataset, lambda p: [p, p + 1], positions=range(3, 6), workers=0))
    assert [b.indices for b in loaded] == [[3, 4], [4, 5], [5, 6]] and [b.position for b in loaded] == [
        3,
        4,
        5,
    ]
    with pytest.raises(MmcoaError, match="positions"):
        BatchLoader(dataset, lambda p: [p])


def test_worker_counts(monkeypatch):
    synthetic = mmcoa.load_dataset("synthetic")
    assert resolve_workers(None, synthetic) == 0  # held in memory: nothing to decode
    assert resolve_workers(3, synthetic) == 3 and 1 <= default_workers() <= 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "64")  # more processes on the node than cores
    assert default_workers() == 1
    for bad in (-1, 1.5):
        with pytest.raises(MmcoaError, match="workers must be a non-negative integer"):
            resolve_workers(bad, synthetic)


def corrupt_copy(folder: Path, tmp_path: Path) -> tuple[Path, Path]:
    import shutil

    copy = tmp_path / "images"
    shutil.copytree(folder, copy)
    bad = copy / "dog" / "1.jpg"
    bad.write_bytes(bad.read_bytes()[:200])  # a truncated JPEG
    return copy, bad


@pytest.mark.parametrize("workers", [0, 2])
def test_a_corrupt_file_in_a_worker_is_one_line_naming_it(folder, tmp_path, workers):
    copy, bad = corrupt_copy(folder, tmp_path)
    dataset = mmcoa.load_dataset(f"imagefolder:{copy}")
    with pytest.raises(BadImageError) as caught:
        list(BatchLoader(dataset, [list(range(len(dataset)))], workers=workers))
    message = str(caught.value)
    assert "\n" not in message and str(bad) in message and "Traceback" not in message
    skipped = list(BatchLoader(dataset, [list(range(len(dataset)))], workers=workers, skip_bad_images=True))
    assert skipped[0].skipped == 1 and len(skipped[0]) == len(dataset) - 1


def test_eval_cli_with_workers_names_the_corrupt_file(folder, tmp_path, capsys):
    copy, bad = corrupt_copy(folder, tmp_path)
    code = main(
        [
            "eval",
            "--model",
            "tiny-clip",
            "--dataset",
            f"imagefolder:{copy}",
            "--attacks",
            "clean",
            "--workers",
            "2",
            "--output",
            str(tmp_path / "r.json"),
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert code != 0 and err.count("\n") == 1 and str(bad) in err and "--skip-bad-images" in err
    assert not (tmp_path / "r.json").exists()


def test_eval_records_do_not_depend_on_workers(folder):
    records = [
        mmcoa.evaluate(
            "tiny-clip", f"imagefolder:{folder}", ["clean", "pgd"], batch_size=5, workers=w, progress=False
        )
        for w in (0, 2)
    ]
    for a, b in zip(*records):
        assert {k: v for k, v in a.items() if k != "elapsed_s"} == {
            k: v for k, v in b.items() if k != "elapsed_s"
        }


# -- training ------------------------------------------------------------------------------------
def test_epoch_order_is_one_permutation_per_epoch():
    order = EpochOrder(list(range(10, 20)), batch_size=4, seed=3)
    epoch0 = [i for step in range(3) for i in order.global_batch(step)]
    epoch1 = [i for step in range(3, 6) for i in order.global_batch(step)]
    assert sorted(epoch0) == sorted(epoch1) == list(range(10, 20)) and epoch0 != epoch1
    assert [len(order.global_batch(s)) for s in range(3)] == [4, 4, 2]
    assert [order.global_size(s) for s in range(6)] == [len(order.global_batch(s)) for s in range(6)]
    assert EpochOrder(list(range(10, 20)), 4, 3).global_batch(4) == order.global_batch(4)  # no state


def folder_config(folder, tmp_path, name, **overrides) -> TrainConfig:
    settings = dict(
        method="tecoa",
        model="tiny-clip",
        dataset=f"imagefolder:{folder}",
        batch_size=5,
        max_steps=None,
        epochs=2,
        lr=1e-3,
        save_every=1,
        output=str(tmp_path / name),
    )
    return TrainConfig(**{**settings, **overrides})


def record_batches(monkeypatch) -> list:
    seen, step = [], trainer.TrainLoop.step

    def recording(self, index, state, images, labels, chosen=None):
        seen.append((index, list(chosen), images.sum().item()))
        return step(self, index, state, images, labels, chosen)

    monkeypatch.setattr(trainer.TrainLoop, "step", recording)
    return seen


def final_weights(config: TrainConfig) -> dict:
    return torch.load(os.path.join(config.output, "final.pt"), map_location="cpu", weights_only=True)


def test_training_with_workers_gives_the_same_batches_and_weights(folder, tmp_path, monkeypatch):
    seen = {}
    for workers in (0, 2):
        seen[workers] = record_batches(monkeypatch)
        train(folder_config(folder, tmp_path, f"w{workers}", workers=workers), progress=False)
        monkeypatch.undo()
    assert seen[0] == seen[2] and len(seen[0]) == 6  # 12 items, batch 5: 3 steps x 2 epochs
    a, b = (final_weights(folder_config(folder, tmp_path, f"w{w}")) for w in (0, 2))
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(line) for line in (tmp_path / "w2" / "metrics.jsonl").read_text().splitlines()]
    assert all(0 <= r["data_share"] <= 1 and r["data_wait_s"] <= r["step_s"] + 1e-3 for r in rows)
    metrics = json.loads((tmp_path / "w2" / "metrics.json").read_text())
    assert 0 <= metrics["data_wait_share"] <= 1 and metrics["workers"] == 2


def test_resume_with_workers_is_exact(folder, tmp_path, monkeypatch):
    full = folder_config(folder, tmp_path, "full", workers=2)
    train(full, progress=False)
    cut = folder_config(folder, tmp_path, "cut", workers=2)
    crash_training_at(cut, 4, monkeypatch)
    assert checkpointing.saved_step(Path(cut.output) / "checkpoints" / "last.pt") == 4
    train(cut, resume=True, progress=False)
    a, b = final_weights(full), final_weights(cut)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_no_host_read_between_the_loss_and_backward(tmp_path, monkeypatch):
    """The logged values are read after the optimizer step: between the method's loss and
    ``backward()`` nothing calls ``.item()``, ``.tolist()`` or ``float()`` on a tensor."""
    reads, window = [], {"open": False}
    for name in ("item", "tolist", "__float__"):
        original = getattr(torch.Tensor, name)

        def spy(self, *args, _original=original, _name=name):
            if window["open"]:
                reads.append(_name)
            return _original(self, *args)

        monkeypatch.setattr(torch.Tensor, name, spy)
    backward = torch.Tensor.backward

    def closing_backward(self, *args, **kwargs):
        window["open"] = False
        return backward(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "backward", closing_backward)
    method_loss = trainer.METHODS.get("tecoa").loss

    def opening_loss(self, *args):
        result = method_loss(self, *args)
        window["open"] = True
        return result

    monkeypatch.setattr(trainer.METHODS.get("tecoa"), "loss", opening_loss)
    train(
        TrainConfig(method="tecoa", batch_size=16, max_steps=2, output=str(tmp_path / "run")), progress=False
    )
    assert reads == []


def test_checkpoints_by_wall_clock_and_model_only_epoch_files(tmp_path, monkeypatch):
    saves = []
    write = checkpointing.BackgroundWriter.write

    def recording(self, files):
        saves.append([(payload["step"], path.name, sorted(payload)) for payload, path in files])
        return write(self, files)

    monkeypatch.setattr(checkpointing.BackgroundWriter, "write", recording)
    config = TrainConfig(
        method="tecoa",
        batch_size=16,
        epochs=2,
        max_steps=None,
        save_every_minutes=1e-9,
        keep_epoch_checkpoints=True,
        output=str(tmp_path / "run"),
    )  # 4 steps an epoch
    train(config, progress=False)
    assert [s[0][0] for s in saves] == list(range(1, 9))  # overdue after every step
    epochs = [entry for s in saves for entry in s if entry[1].startswith("epoch")]
    assert [(step, name) for step, name, _ in epochs] == [(4, "epoch1.pt"), (8, "epoch2.pt")]
    assert all("optimizer" not in keys and "model" in keys for _, _, keys in epochs)
    epoch1 = Path(config.output) / "checkpoints" / "epoch1.pt"
    assert epoch1.stat().st_size < (Path(config.output) / "checkpoints" / "last.pt").stat().st_size
    model = mmcoa.load_model("tiny-clip", pretrained=str(epoch1))  # what the curves load
    assert model is not None
    saves.clear()
    train(
        TrainConfig(
            method="tecoa",
            batch_size=16,
            epochs=2,
            max_steps=5,
            save_every_minutes=0,
            output=str(tmp_path / "steps"),
        ),
        progress=False,
    )
    assert [s[0][0] for s in saves] == [4, 5]  # the epoch end and the end


def test_a_failed_background_write_surfaces_as_one_error(tmp_path, monkeypatch):
    def full_disk(payload, path):
        raise MmcoaError(f"no space left to write {path} (No space left on device); nothing was written")

    monkeypatch.setattr(checkpointing, "save_atomic", full_disk)
    with pytest.raises(MmcoaError, match="no space left to write .*last.pt"):
        train(
            TrainConfig(
                method="tecoa", batch_size=16, max_steps=3, save_every=1, output=str(tmp_path / "run")
            ),
            progress=False,
        )


def test_prompt_log_rows_only_when_the_prompts_change(tmp_path, mlm, monkeypatch):
    from mmcoa.attacks.text import bert_attack

    calls = {"n": 0}
    original = bert_attack.BertAttack.attack_embeddings

    def every_other_step_the_same(self, prompts, model):
        calls["n"] += 1
        edits = original(self, prompts, model)
        return edits if calls["n"] % 2 else original(self, prompts, model)

    monkeypatch.setattr(bert_attack.BertAttack, "attack_embeddings", every_other_step_the_same)
    config = TrainConfig(method="mmcoa", batch_size=16, max_steps=4, mlm=mlm, output=str(tmp_path / "run"))
    train(config, progress=False)
    rows = [
        json.loads(line) for line in (tmp_path / "run" / "adversarial_prompts.jsonl").read_text().splitlines()
    ]
    assert rows and rows[0]["step"] == 0
    assert all(a["prompts"] != b["prompts"] for a, b in zip(rows, rows[1:]))  # a row means a change
    assert len(rows) <= 4


def test_resume_cuts_a_log_without_rewriting_it(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [json.dumps({"step": s, "loss": 0.1 * s}) + "\n" for s in range(1, 6)]
    path.write_text("".join(rows))
    inode = path.stat().st_ino
    trainer._cut_log(path, "metrics.jsonl", 3)
    assert path.read_text() == "".join(rows[:3]) and path.stat().st_ino == inode
    path.write_text(rows[0] + '{"step": 2, "lo\n' + rows[2])  # a row cut short by a crash
    trainer._cut_log(path, "metrics.jsonl", 3)
    assert path.read_text() == rows[0] + rows[2]


# -- suites --------------------------------------------------------------------------------------
SYNTHETIC = {"name": "synthetic", "options": {"n_samples": 12, "n_classes": 4, "image_size": 28}}
OTHER = {"name": "synthetic", "options": {"n_samples": 10, "n_classes": 3, "image_size": 24}}


def table_one(path: Path, mlm: str, **values) -> Path:
    pgd = {"eps": 4, "step_size": 1, "n_steps": 3}
    base = {
        "name": "t1",
        "n_samples": 10,
        "batch_size": 4,
        "device": "cpu",
        "models": [{"label": "CLIP", "name": "tiny-clip"}, {"label": "HF", "name": "tiny-clip-hf"}],
        "datasets": [SYNTHETIC],
        "attacks": [
            {"name": "clean"},
            {"label": "image", "name": "pgd", **pgd},
            {"label": "text", "name": "bert", "mlm": mlm},
            {"label": "multimodal", "name": "multimodal", "mlm": mlm, **pgd},
        ],
    }
    path.write_text(yaml.safe_dump({**base, **values}, sort_keys=False))
    return path


def comparable(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in ("elapsed_s", "versions")}


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
    original = PGD.__call__

    def counting(self, classifier, images, *args, **kwargs):
        pgd_calls.append(len(images))
        return original(self, classifier, images, *args, **kwargs)

    monkeypatch.setattr(PGD, "__call__", counting)
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


def test_a_suite_interrupted_mid_row_resumes_with_the_same_records(tmp_path, mlm, monkeypatch):
    config_path = table_one(
        tmp_path / "t1.yaml",
        mlm,
        datasets=[SYNTHETIC, OTHER],
        models=[{"label": "CLIP", "name": "tiny-clip"}],
    )
    # two datasets of one name are not a valid suite: give the second its own name
    values = yaml.safe_load(config_path.read_text())
    values["datasets"][1] = {"name": "imagefolder:" + str(write_folder(tmp_path / "folder"))}
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


def test_a_dataset_workers_cannot_receive_falls_back_to_the_main_process(folder, monkeypatch, capsys):
    """Under spawn/forkserver the workers get a pickled dataset; one that does not pickle loads
    in the main process, with a one-line note."""
    import multiprocessing

    dataset = mmcoa.load_dataset(f"imagefolder:{folder}")
    dataset.unpicklable = lambda: None  # e.g. a user's dataset holding an open handle or a lambda
    monkeypatch.setattr(multiprocessing, "get_start_method", lambda allow_none=False: "spawn")
    loader = BatchLoader(dataset, [[0, 1]], workers=2)
    note = capsys.readouterr().err
    assert loader.workers == 0 and note.count("\n") == 1 and "cannot be sent to worker processes" in note
    assert [b.indices for b in loader] == [[0, 1]]
