"""One-line errors say both what was wrong and what is accepted (or what to do instead).

Each case names a fragment of the complaint and a fragment of the remedy; a message that only
complains fails. The fixtures build the smallest bad input that reaches each message.
"""

from __future__ import annotations

import dataclasses
import json
import struct
from pathlib import Path

import pytest
import torch

import mmcoa
from mmcoa.errors import MmcoaError
from mmcoa.models import check_checkpoint
from mmcoa.models.checkpoints import META_KEY, meta_sidecar


def assert_says_both(error: pytest.ExceptionInfo, wrong: str, accepted: str) -> None:
    """The message is one line holding the complaint ``wrong`` and the remedy ``accepted``."""
    message = str(error.value)
    assert "\n" not in message, message
    assert wrong in message and accepted in message, message


# -- a checkpoint saved from another architecture -------------------------------------------------
@pytest.fixture(scope="module")
def other_architecture_state() -> dict[str, torch.Tensor]:
    """A state dict of ``tiny-clip-77``, whose positional embedding does not fit ``tiny-clip``."""
    return mmcoa.load_model("tiny-clip-77").model.state_dict()


def save_with_meta(path: Path, state: dict, meta: dict | None, where: str) -> str:
    """``state`` at ``path`` with its build metadata in the file (as a training checkpoint holds
    it), in the sidecar (as ``final.pt``), or nowhere."""
    payload = {"model": state, META_KEY: meta} if where == "file" else state
    torch.save(payload, path)
    if where == "sidecar":
        Path(meta_sidecar(path)).write_text(json.dumps(meta))
    return str(path)


# Both ways a file meets a model: the suite's up-front check of its header, and loading it.
INTO_TINY_CLIP = {
    "header": lambda path: check_checkpoint("tiny-clip", path),
    "load": lambda path: mmcoa.load_model("tiny-clip", pretrained=path),
}


@pytest.mark.parametrize("where", ["file", "sidecar"])
@pytest.mark.parametrize("load", INTO_TINY_CLIP.values(), ids=INTO_TINY_CLIP.keys())
def test_a_checkpoint_that_does_not_fit_names_the_architecture_it_was_saved_from(
    tmp_path, other_architecture_state, where, load
):
    meta = {"architecture": "tiny-clip-77", "quick_gelu": False}
    path = save_with_meta(tmp_path / "final.pt", other_architecture_state, meta, where)
    with pytest.raises(MmcoaError) as caught:
        load(path)
    assert_says_both(
        caught, "does not fit model tiny-clip", "saved from tiny-clip-77: load it as model tiny-clip-77"
    )


def test_a_checkpoint_without_metadata_names_the_model_it_had_to_fit(tmp_path, other_architecture_state):
    path = save_with_meta(tmp_path / "final.pt", other_architecture_state, None, "nowhere")
    with pytest.raises(MmcoaError) as caught:
        mmcoa.load_model("tiny-clip", pretrained=path)
    assert_says_both(caught, "does not fit model tiny-clip", "expected a state dict saved from tiny-clip")
    assert "does not record its architecture" in str(caught.value)


# -- an image folder without images ---------------------------------------------------------------
def test_an_empty_image_folder_names_the_layout_expected(tmp_path):
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    with pytest.raises(MmcoaError) as caught:
        mmcoa.load_dataset(f"imagefolder:{tmp_path}")
    assert_says_both(caught, "is empty", f"{tmp_path}/[test/]<class name>/<image>.jpg|.jpeg|.png")


# -- the others -----------------------------------------------------------------------------------
def training_run(
    folder: Path, metrics: str = '{"step": 1, "epoch": 0, "loss": 1.0, "elapsed_s": 1.0}'
) -> Path:
    """The two files that make ``folder`` a training run directory."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model": "tiny-clip", "batch_size": 4}))
    (folder / "metrics.jsonl").write_text(metrics + "\n")
    return folder


def garbage(path: Path) -> Path:
    path.write_bytes(b"this is not a checkpoint")
    return path


def missing_config(tmp: Path):
    from mmcoa.settings import read_mapping

    read_mapping(tmp / "absent.yaml", "config file")


def missing_result_path(tmp: Path):
    from mmcoa.report import load_records

    load_records([tmp / "absent"])


def analyses_only(tmp: Path):
    from mmcoa.report import load_records

    (tmp / "summary.json").write_text(json.dumps({"analysis": "eps_sweep", "figure": "eps_sweep.png"}))
    load_records([tmp])


def missing_prompt(tmp: Path):
    from mmcoa.models.prompts import read_prompt

    read_prompt(tmp / "absent.pt")


def corrupt_prompt(tmp: Path):
    from mmcoa.models.prompts import read_prompt

    read_prompt(garbage(tmp / "prompt.pt"))


def captions_for_fewer_images(tmp: Path):
    from mmcoa.data.coco import RetrievalDataset

    RetrievalDataset([tmp / "a.jpg", tmp / "b.jpg"], [["a cat"]])


def image_without_caption(tmp: Path):
    from mmcoa.data.coco import RetrievalDataset

    RetrievalDataset([tmp / "a.jpg"], [[]])


def missing_retrieval_image(tmp: Path):
    from mmcoa.data.coco import RetrievalDataset

    RetrievalDataset([tmp / "absent.jpg"], [["a cat"]])[0]


def idx_with_wrong_magic(tmp: Path):
    from mmcoa.data.fashion_mnist import IMAGES_MAGIC, LABELS_MAGIC, read_idx

    path = tmp / "t10k-images-idx3-ubyte"
    path.write_bytes(struct.pack(">iIII", LABELS_MAGIC, 1, 1, 1) + b"\0")
    read_idx(path, IMAGES_MAGIC)


def template_without_placeholder(tmp: Path):
    mmcoa.load_dataset("synthetic", split="test", n_samples=4, n_classes=2).prompts("a photo")


def interpolating_other_shapes(tmp: Path):
    from mmcoa.analysis.interpolation import interpolate_state_dicts

    interpolate_state_dicts({"w": torch.zeros(2)}, {"w": torch.zeros(3)}, 0.5)


def unparsable_metrics_line(tmp: Path):
    from mmcoa.analysis.runs import read_runs

    read_runs([training_run(tmp / "run", metrics="{not json")])


def corrupt_trainer_checkpoint(tmp: Path):
    from mmcoa.analysis.curves import checkpoint_points
    from mmcoa.analysis.runs import read_runs

    run = training_run(tmp / "run")
    (run / "checkpoints").mkdir()
    garbage(run / "checkpoints" / "epoch1.pt")
    checkpoint_points(read_runs([run])[0])


def nothing_to_time(tmp: Path):
    from mmcoa.analysis.timecost import plot_time_cost

    plot_time_cost({"training": [], "evaluation": []}, tmp)


def unreadable_paper_set_file(tmp: Path):
    from mmcoa.data.paper_common import reading

    with reading("food101", tmp, "food-101/meta/{train,test}.json"):
        raise ValueError("Expecting value")


def words_without_a_class(tmp: Path):
    from mmcoa.data.imagenet_sets import read_words

    (tmp / "words.txt").write_text("n01443537\tgoldfish\n")
    read_words(tmp / "words.txt", ["n01443537", "n01629819"])


def unfinished_run_export(tmp: Path):
    from mmcoa.train.export import refresh_card

    refresh_card(training_run(tmp / "run"))


def mlm_output_is_a_file(tmp: Path):
    from tiny_mlm import train_tiny_mlm  # the test fixture's own message

    (tmp / "mlm").write_text("")
    train_tiny_mlm(["a photo of a cat"], tmp / "mlm", steps=1)


def template_in_a_retrieval_suite(tmp: Path):
    from mmcoa.eval.suite_config import load_suite

    suite = {
        "task": "retrieval",
        "template": "a photo of a {}",
        "models": [{"name": "tiny-clip"}],
        "datasets": ["mscoco_karpathy"],
        "attacks": [{"name": "clean"}],
    }
    (tmp / "suite.yaml").write_text(json.dumps(suite))
    load_suite(tmp / "suite.yaml")


CASES = {
    "missing config file": (missing_config, "does not exist", "YAML file of 'name: value' settings"),
    "missing result path": (missing_result_path, "does not exist", "written by mmcoa eval"),
    "analyses but no records": (analyses_only, "no result records found", "written by mmcoa eval"),
    "missing prompt file": (missing_prompt, "does not exist", "RUN/prompt.pt"),
    "corrupt prompt file": (corrupt_prompt, "corrupt or unreadable", "RUN/prompt.pt"),
    "caption lists": (captions_for_fewer_images, "2 images but 1 caption lists", "one list of captions per"),
    "image without caption": (image_without_caption, "has no caption", "at least one"),
    "missing coco image": (missing_retrieval_image, "is missing", "<root>/<filepath>/<filename>"),
    "corrupt IDX file": (idx_with_wrong_magic, "magic number 2049, expected 2051", "pass --download"),
    "template without {}": (template_without_placeholder, "has no '{}'", "e.g. 'This is a photo of a {}'"),
    "interpolation shapes": (interpolating_other_shapes, "has shape [2]", "of the same architecture"),
    "metrics line": (unparsable_metrics_line, "line 1 is not JSON", "one JSON object per line"),
    "trainer checkpoint": (corrupt_trainer_checkpoint, "corrupt or unreadable", "saved with torch.save"),
    "nothing to time": (nothing_to_time, "no training run", "config.json and metrics.jsonl"),
    "paper set file": (unreadable_paper_set_file, "cannot read", "expected under --data-root: food-101/"),
    "words.txt": (words_without_a_class, "names no class for n01629819", "'<wnid><TAB><names>' line"),
    "export of unfinished run": (unfinished_run_export, "does not exist", "finished mmcoa train run"),
    "MLM output": (mlm_output_is_a_file, "is not a directory", "give a directory"),
    "suite template": (template_in_a_retrieval_suite, "classification suites only", "task: retrieval"),
}


@pytest.mark.parametrize("make, wrong, accepted", CASES.values(), ids=CASES.keys())
def test_errors_say_what_was_wrong_and_what_is_accepted(tmp_path, make, wrong, accepted):
    with pytest.raises(MmcoaError) as caught:
        make(tmp_path)
    assert_says_both(caught, wrong, accepted)


def test_too_few_gpus_for_the_ranks_says_how_many_processes_to_start(monkeypatch):
    from mmcoa.distributed import world_from_env

    if torch.cuda.device_count() > 1:
        pytest.skip("this machine has the GPU that rank 1 needs")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(MmcoaError) as caught:
        world_from_env("cuda")
    assert_says_both(caught, "needs GPU 1", "torchrun --nproc_per_node")


def test_a_training_checkpoint_that_does_not_fit_names_what_it_was_saved_from(tmp_path):
    """--resume with a last.pt whose weights no longer fit the model (same recorded settings):
    the message names the model, method and towers the checkpoint was saved from."""
    from mmcoa.train.config import TrainConfig
    from mmcoa.train.trainer import train

    config = TrainConfig(
        method="ft-standard", batch_size=16, max_steps=1, keep_resume_state=True, output=str(tmp_path / "run")
    )
    train(config, progress=False)
    path = tmp_path / "run" / "checkpoints" / "last.pt"
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["model"].pop(next(iter(checkpoint["model"])))
    torch.save(checkpoint, path)
    with pytest.raises(MmcoaError) as caught:
        train(dataclasses.replace(config, max_steps=2), resume=True, progress=False)
    assert_says_both(
        caught, "does not fit this model/method", "saved from model tiny-clip with method ft-standard"
    )
