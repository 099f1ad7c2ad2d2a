"""Evaluation: metrics on hand-computed examples (ties are not correct), records, atomic writes
(a full disk keeps the previous file), determinism, records that do not depend on loader
workers, corrupt images as one line or skipped and counted."""

from __future__ import annotations

import json
import multiprocessing
import os
import resource
import signal
from pathlib import Path

import pytest
import torch

import mmcoa
from mmcoa.attacks import PGD, build_attack
from mmcoa.cli import main
from mmcoa.errors import MmcoaError
from mmcoa.eval import evaluate, format_table, read_records, sample_indices, write_records
from mmcoa.eval import results as results_module
from mmcoa.eval.metrics import Tally
from mmcoa.eval.results import RECORD_KEYS
from mmcoa.files import atomic_path, write_json_atomic
from mmcoa.models import ZeroShotClassifier
from helpers import corrupt_copy


def test_tally_on_a_hand_computed_example():
    labels = torch.tensor([0, 1, 2, 0])
    # clean: samples 0, 1, 2 right; 3 wrong.  attacked: 0 right, 1 wrong, 2 wrong, 3 right.
    clean = torch.tensor([[9.0, 0, 0], [0, 9, 0], [0, 0, 9], [0, 9, 0]])
    attacked = torch.tensor([[9.0, 0, 0], [9, 0, 0], [0, 9, 0], [9, 0, 0]])
    tally = Tally()
    tally.add(attacked, clean, labels)
    assert tally.accuracy == 1 / 4  # sample 3 is right only after the attack: not robust
    assert tally.attack_success_rate == 2 / 3  # 2 of the 3 clean-correct samples flipped
    assert tally.top5 == 1.0  # with 3 classes every label is in every top-5


def test_top5_with_more_classes():
    labels = torch.tensor([0, 0])
    clean = torch.tensor([[5.0, 6, 7, 8, 9, 10], [10.0, 1, 2, 3, 4, 5]])  # label rank 6, rank 1
    attacked = torch.tensor([[10.0, 1, 2, 3, 4, 5], [5.0, 6, 7, 8, 9, 10]])
    tally = Tally()
    tally.add(attacked, clean, labels)
    assert tally.top5 == 0.0 and tally.accuracy == 0.0 and tally.attack_success_rate == 1.0


def test_success_rate_undefined_without_clean_correct_samples():
    tally = Tally()
    tally.add(torch.tensor([[0.0, 1]]), torch.tensor([[0.0, 1]]), torch.tensor([0]))
    assert tally.attack_success_rate is None


def test_sample_indices_are_seeded_and_sorted():
    a = sample_indices(100, 10, seed=0)
    assert a == sample_indices(100, 10, seed=0) and a == sorted(a) and len(set(a)) == 10
    assert a != sample_indices(100, 10, seed=1)
    assert sample_indices(5, None, 0) == list(range(5)) == sample_indices(5, 50, 0)


def test_evaluate_records_schema(tiny_model, synthetic_test):
    records = evaluate(
        tiny_model,
        synthetic_test,
        ["clean", PGD(eps=2 / 255, n_steps=2)],
        batch_size=8,
        n_samples=12,
        progress=False,
    )
    assert [r["attack"] for r in records] == ["clean", "pgd"]
    for record in records:
        assert set(RECORD_KEYS) <= set(record)
        assert 0 <= record["accuracy"] <= 1 and 0 <= record["top5"] <= 1
        assert record["n_samples"] == 12 and record["dataset"] == "synthetic"
        assert record["versions"]["torch"] == torch.__version__.split("+")[0]
        json.dumps(record)
    assert records[1]["attack_params"]["eps"] == pytest.approx(2 / 255)
    assert records[1]["queries_per_sample"] == 2


def test_evaluate_is_deterministic_and_independent_of_attack_order(tiny_model, synthetic_test):
    pgd = PGD(eps=8 / 255, n_steps=2)
    one = evaluate(tiny_model, synthetic_test, ["clean", pgd], batch_size=8, progress=False)
    two = evaluate(tiny_model, synthetic_test, ["clean", pgd], batch_size=8, progress=False)
    assert [r["accuracy"] for r in one] == [r["accuracy"] for r in two]
    other = PGD(eps=1 / 255, n_steps=1)
    reordered = evaluate(tiny_model, synthetic_test, [pgd, other], batch_size=8, progress=False)
    assert reordered[0]["n_correct"] == one[1]["n_correct"]
    assert reordered[0]["accuracy"] == one[1]["accuracy"]


def test_evaluate_matches_an_independent_clean_count(tiny_model, synthetic_test):
    classifier = ZeroShotClassifier(tiny_model, synthetic_test.prompts())
    images = torch.stack([synthetic_test[i][0] for i in range(len(synthetic_test))])
    labels = torch.tensor([synthetic_test[i][1] for i in range(len(synthetic_test))])
    with torch.no_grad():
        text = torch.nn.functional.normalize(tiny_model.encode_text(synthetic_test.prompts()), dim=-1)
        image = torch.nn.functional.normalize(tiny_model.encode_image(images), dim=-1)
    expected = float(((image @ text.T).argmax(1) == labels).float().mean())
    (record,) = evaluate(tiny_model, synthetic_test, ["clean"], batch_size=5, progress=False)
    assert record["accuracy"] == pytest.approx(expected)
    assert torch.allclose(classifier.class_embeddings(), text, atol=1e-6)


def test_class_embeddings_are_cached_until_text_weights_change(tiny_model):
    classifier = ZeroShotClassifier(tiny_model, ["a dog", "a cat"])
    first = classifier.class_embeddings()
    assert classifier.class_embeddings() is first
    _, param = next(tiny_model.tower_parameters("text"))
    with torch.no_grad():
        param.mul_(1.0)
    assert classifier.class_embeddings() is not first


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(n_samples=0), "n_samples must be a positive"),
        (dict(batch_size=0), "batch_size must be a positive"),
        (dict(attacks=[]), "no attack given"),
        (dict(attacks=["pgd", "nope"]), "unknown attack 'nope'"),
    ],
)
def test_bad_arguments_fail_before_loading(kwargs, message, monkeypatch):
    import mmcoa.eval.runner as runner

    monkeypatch.setattr(runner, "load_model", lambda *a, **k: pytest.fail("model was loaded"))
    kwargs.setdefault("attacks", ["clean"])
    with pytest.raises(MmcoaError, match=message):
        evaluate("tiny-clip", "synthetic", **kwargs)


def test_write_records_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "out" / "results.json"
    record = {key: 0 for key in RECORD_KEYS}
    record.update(attack="clean", attack_params={}, versions={})
    write_records(path, [record])
    assert read_records(path) == [record]

    def explode(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(results_module.json, "dump", explode)
    with pytest.raises(RuntimeError):
        write_records(path, [record])
    assert read_records(path) == [record]  # the old file is intact
    assert os.listdir(path.parent) == ["results.json"]  # no temporary file left behind


def test_write_records_checks_schema(tmp_path):
    with pytest.raises(ValueError, match="lack required keys"):
        write_records(tmp_path / "r.json", [{"attack": "clean"}])
    assert not (tmp_path / "r.json").exists()


def test_table_shows_every_record(tiny_model, synthetic_test):
    records = evaluate(
        tiny_model, synthetic_test, ["clean", PGD(eps=4 / 255, n_steps=1)], batch_size=16, progress=False
    )
    table = format_table(records)
    assert "4/255" in table and len(table.splitlines()) == 4


def test_public_entry_point():
    assert mmcoa.evaluate is evaluate


def test_result_files_get_the_usual_permissions(tmp_path):
    """Atomic writes go through mkstemp (mode 0600); the file in place has 0666 minus umask."""
    from mmcoa.files import write_json_atomic

    mask = os.umask(0o022)
    try:
        write_json_atomic(tmp_path / "r.json", {"a": 1})
    finally:
        os.umask(mask)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o644


# -- loader workers: one-line errors, records that do not depend on them -------------------------
def test_eval_cli_with_workers_names_the_corrupt_file(image_folder, tmp_path, capsys):
    copy, bad = corrupt_copy(image_folder, tmp_path)
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


def test_eval_records_do_not_depend_on_workers(image_folder):
    records = [
        mmcoa.evaluate(
            "tiny-clip",
            f"imagefolder:{image_folder}",
            ["clean", build_attack("pgd", n_steps=2)],  # the workers' part: the loading
            batch_size=5,
            workers=w,
            progress=False,
        )
        for w in (0, 2)
    ]
    for a, b in zip(*records):
        assert {k: v for k, v in a.items() if k != "elapsed_s"} == {
            k: v for k, v in b.items() if k != "elapsed_s"
        }


# -- ties with the true class --------------------------------------------------------------------
def test_a_tie_with_the_true_class_is_not_correct():
    from mmcoa.models.zeroshot import top_k_correct

    logits = torch.tensor([[2.0, 2.0, 0.0], [1.0, 2.0, 2.0], [3.0, 1.0, 0.0], [float("nan"), 0.0, 0.0]])
    labels = torch.tensor([0, 2, 0, 0])
    assert top_k_correct(logits, labels, 1).tolist() == [False, False, True, False]
    assert top_k_correct(logits, labels, 2).tolist() == [True, True, True, False]
    tally = Tally()
    tally.add(logits, logits, labels)
    assert tally.correct == 1 and tally.clean_correct == 1


# -- a corrupt image -----------------------------------------------------------------------------
def test_a_corrupt_image_is_one_line_naming_file_and_index(bad_folder):
    folder, bad = bad_folder
    with pytest.raises(MmcoaError) as caught:
        mmcoa.evaluate("tiny-clip", f"imagefolder:{folder}", ["clean"], batch_size=4, progress=False)
    message = str(caught.value)
    assert "\n" not in message and str(bad) in message and "image 5 " in message
    assert "--skip-bad-images" in message


def test_skip_bad_images_counts_them_in_the_record(bad_folder):
    folder, _ = bad_folder
    (record,) = mmcoa.evaluate(
        "tiny-clip", f"imagefolder:{folder}", ["clean"], batch_size=4, skip_bad_images=True, progress=False
    )
    assert record["skipped_images"] == 1 and record["n_samples"] == 7


# -- a full disk -------------------------------------------------------------------------------
def _fill_the_disk(target: str, queue) -> None:
    """In a forked child (the file-size limit is per process): write the previous files, then
    try to overwrite them on a disk that fills up; put each one-line error on ``queue``."""
    write_json_atomic(target + ".json", {"previous": True})
    with atomic_path(target + ".pt") as tmp:
        torch.save({"previous": torch.ones(3)}, tmp)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))  # a disk that fills up
    lines = []
    try:
        write_json_atomic(target + ".json", {"big": "x" * 200_000})
    except MmcoaError as error:
        lines.append(f"json: {error}")
    try:
        with atomic_path(target + ".pt") as tmp:
            torch.save({"big": torch.zeros(100_000)}, tmp)
    except MmcoaError as error:
        lines.append(f"torch: {error}")
    queue.put(lines)


def test_a_full_disk_is_one_line_and_keeps_the_previous_files(tmp_path):
    target = str(tmp_path / "out")
    context = multiprocessing.get_context("fork")  # no new interpreter: the modules are loaded
    queue = context.Queue()
    child = context.Process(target=_fill_the_disk, args=(target, queue))
    child.start()
    lines = queue.get(timeout=120)
    child.join(timeout=60)
    assert child.exitcode == 0
    assert len(lines) == 2 and all(
        "no space left" in line and "previous file is intact" in line for line in lines
    )
    assert json.loads(Path(target + ".json").read_text()) == {"previous": True}
    assert torch.equal(torch.load(target + ".pt", weights_only=True)["previous"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json", "out.pt"]  # no temp files
