"""Training: every method end to end, losses against hand computations, which parameters move,
no attack gradient in the optimizer step, exact resume, fixed few-shot lists, checkpoint errors,
export to plain open_clip, and `mmcoa train` on the command line; the batch pipeline (workers,
background checkpoints, no host read before ``backward()``, log cuts), resume after a crash, NaN
losses, per-method defaults and faithful TeCoA.

All runs use the generated `synthetic` dataset (64 train images, 4 classes) and `tiny-clip`."""

from __future__ import annotations

import json
import math
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import mmcoa
from mmcoa.cli import main
from mmcoa.errors import MmcoaError
from mmcoa.models import ZeroShotClassifier
from mmcoa.train import checkpointing, trainer
from mmcoa.train import methods as methods_module
from mmcoa.train.config import TrainConfig
from mmcoa.train.methods import METHODS, StepContext
from mmcoa.train.objectives import mmcoa_loss
from mmcoa.train.order import EpochOrder
from mmcoa.train.shots import dataset_labels, few_shot_indices
from mmcoa.train.trainer import build_optimizer, train
from helpers import crash_training_at

ADVERSARIAL = ("tecoa", "mmcoa", "fare", "pmg-aft", "vp")
DEFAULT_TOWERS = {
    "ft-standard": {"image", "text"},
    "mmcoa": {"image", "text"},
    "tecoa": {"image"},
    "tecoa-symmetric": {"image"},
    "fare": {"image"},
    "leaf": {"text"},
    "simclip": {"image"},
    "pmg-aft": {"image"},
    "tga-zsr": {"image"},
    "comp-tga": {"image"},
    "vp": set(),
    "advpt": set(),
}
PROMPTED = {"vp": "visual_prompt", "advpt": "text_prompt"}  # methods that train a prompt module
FINAL_FILES = (
    "final.pt",
    "metrics.json",
    "config.json",
    "shots.json",
    "metrics.jsonl",
    "export/open_clip_pytorch_model.bin",  # final.pt, hard-linked
)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="session")
def train_data():
    return mmcoa.load_dataset("synthetic", split="train")


@pytest.fixture(scope="session")
def mlm(synthetic_mlm):
    """A tiny masked LM for MMCoA's text branch (quality is irrelevant here: few steps)."""
    return synthetic_mlm


def config_maker(folder, mlm):
    def make(method="tecoa", name=None, **overrides):
        settings = dict(
            method=method,
            batch_size=16,
            max_steps=2,
            lr=1e-3,
            train_steps=2,  # FARE's and MMCoA's 10 PGD steps would be most of each test's time
            mlm=mlm,
            output=str(folder / (name or method)),
        )
        return TrainConfig(**{**settings, **overrides})

    return make


@pytest.fixture()
def make_config(tmp_path, mlm):
    return config_maker(tmp_path, mlm)


MMCOA_RESUMED = dict(save_every=1, text_attack_every=2)  # step 3 must reuse step 2's prompts


@pytest.fixture(scope="module")
def whole_mmcoa_run(tmp_path_factory, mlm):
    """The uninterrupted 4-step MMCoA run that the resumed ones must end at."""
    config = config_maker(tmp_path_factory.mktemp("whole"), mlm)("mmcoa", max_steps=None, **MMCOA_RESUMED)
    train(config, progress=False)  # 64 images: 4 steps
    return config.output


@pytest.fixture(scope="module")
def tecoa_run(tmp_path_factory, mlm):
    """One finished 2-step TeCoA run, shared by the read-only tests (its last.pt kept, for the
    resume checks)."""
    config = TrainConfig(
        method="tecoa",
        batch_size=16,
        max_steps=2,
        lr=1e-3,
        mlm=mlm,
        keep_resume_state=True,
        output=str(tmp_path_factory.mktemp("tecoa") / "run"),
    )
    train(config, progress=False)
    return config


def fixed_batch(dataset, n=16):
    images = torch.stack([dataset[i][0] for i in range(n)])
    return images, torch.tensor([dataset[i][1] for i in range(n)])


def adversarial_prompt_set(prompts):
    """A stand-in for BERT-Attack output: one word of each class prompt replaced."""
    return [p.replace("photo", "picture") for p in prompts]


def build(name, train_data, **overrides):
    """What the trainer builds for ``name``: model, method (set up: its frozen teacher, its text
    adversary with the ``mlm`` override, and a stand-in set of adversarial prompts), optimizer."""
    config = TrainConfig(**{"method": name, "batch_size": 16, "lr": 1e-3, "train_steps": 2, **overrides})
    model = mmcoa.load_model("tiny-clip")
    method = METHODS.get(name)()
    method.setup(model, train_data.image_size, method.default_towers, config)
    method.prepare(model, train_data, list(range(16)), config)  # the items of fixed_batch
    if "adversarial_prompts" in method.state_dict():
        method.load_state_dict({"adversarial_prompts": adversarial_prompt_set(train_data.prompts())})
    return config, model, method, build_optimizer(model, config)


def context(config, model, prompts, seed=0, n=16):
    """What the trainer passes for a batch of the first ``n`` items (``fixed_batch``)."""
    return StepContext(
        model=model,
        prompts=prompts,
        config=config,
        generator=torch.Generator().manual_seed(seed),
        batch_indices=list(range(n)),
    )


def recording(function, store: list):
    """``function``, also appending each result to ``store``."""

    def record(*args, **kwargs):
        store.append(function(*args, **kwargs))
        return store[-1]

    return record


def read_json(*parts):
    with open(os.path.join(*map(str, parts))) as handle:
        return json.load(handle)


def read_jsonl(*parts):
    with open(os.path.join(*map(str, parts))) as handle:
        return [json.loads(line) for line in handle]


def load_state(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_one_line(error: BaseException, *words: str):
    message = str(error)
    assert message and "\n" not in message
    for word in words:
        assert word in message


# -- every method, end to end and on a fixed batch ------------------------------------------------
@pytest.mark.parametrize("name", METHODS.names())
def test_each_method_trains_end_to_end(name, make_config):
    config = make_config(name)
    metrics = train(config, progress=False)
    run = config.output
    for file in FINAL_FILES + (("prompt.pt",) if name in PROMPTED else ()):
        assert os.path.isfile(os.path.join(run, file)), file
    assert metrics == {**read_json(run, "metrics.json"), "versions": metrics["versions"]}
    assert metrics["steps"] == 2 and math.isfinite(metrics["final_loss"])
    rows = read_jsonl(run, "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2] and all(math.isfinite(r["loss"]) for r in rows)
    saved = read_json(run, "config.json")
    assert saved["method"] == name and set(saved["towers"]) == DEFAULT_TOWERS[name]
    assert not os.path.exists(os.path.join(run, "checkpoints"))  # no keep_resume_state: last.pt went
    prompts_log = os.path.join(run, "adversarial_prompts.jsonl")
    assert os.path.isfile(prompts_log) == (name == "mmcoa")


@pytest.mark.parametrize("name", METHODS.names())
def test_each_method_lowers_its_loss_on_a_fixed_batch(name, train_data, mlm):
    lr = 1e-2 if name in PROMPTED else 3e-4
    config, model, method, optimizer = build(name, train_data, lr=lr, mlm=mlm)
    if name in ("fare", "simclip"):  # the model starts equal to its frozen reference (the loss floor):
        with torch.no_grad():  # start its image tower elsewhere so there is a loss to lower
            g = torch.Generator().manual_seed(1)
            for param in model.model.visual.parameters():
                param.add_(0.05 * torch.randn(param.shape, generator=g))
    images, labels = fixed_batch(train_data)
    prompts = method.class_prompts(train_data, config, model)
    model.train()
    losses = []
    for _ in range(4):  # the same attack randomness every step: only the weights change
        loss, terms = method.loss(context(config, model, prompts, seed=0), images, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        assert all(math.isfinite(v) for v in terms.values())
    assert losses[-1] < losses[0], losses


# -- the MMCoA objective ---------------------------------------------------------------------------
def reference_contrastive(image, text, labels, scale):
    """Class-aware CLIP loss in plain Python: the mean of image→text CE over the class prompts
    and text→image CE over the batch (target spread evenly over that class's images, for each
    class present)."""

    def unit(v):
        norm = math.sqrt(sum(x * x for x in v))
        return [x / norm for x in v]

    image, text, labels = [unit(v) for v in image.tolist()], [unit(v) for v in text.tolist()], labels.tolist()
    logits = [[scale * sum(a * b for a, b in zip(i, t)) for t in text] for i in image]
    lse = lambda values: math.log(sum(math.exp(v) for v in values))  # noqa: E731
    i2t = sum(lse(row) - row[y] for row, y in zip(logits, labels)) / len(labels)
    t2i = []
    for c in sorted(set(labels)):
        column = [row[c] for row in logits]
        members = [i for i, y in enumerate(labels) if y == c]
        t2i.append(sum(lse(column) - column[i] for i in members) / len(members))
    return (i2t + sum(t2i) / len(t2i)) / 2


@pytest.mark.parametrize("alpha,beta", [(0.5, 0.5), (1.0, 0.0), (0.0, 1.0), (0.3, 0.9)])
def test_mmcoa_loss_matches_hand_computation(alpha, beta):
    g = torch.Generator().manual_seed(0)
    adv_image, clean_image, clean_text, adv_text = (torch.randn(n, 8, generator=g) for n in (6, 6, 4, 4))
    labels = torch.tensor([0, 2, 0, 1, 2, 0])  # class 3 absent, classes 0 and 2 repeated
    scale = torch.tensor(5.0)
    loss, terms = mmcoa_loss(
        adv_image if alpha else None,
        clean_image if beta else None,
        clean_text if alpha else None,
        adv_text if beta else None,
        labels,
        scale,
        alpha=alpha,
        beta=beta,
    )
    image_term = reference_contrastive(adv_image, clean_text, labels, 5.0)
    text_term = reference_contrastive(clean_image, adv_text, labels, 5.0)
    assert float(loss) == pytest.approx(alpha * image_term + beta * text_term, rel=1e-5)
    assert set(terms) == {k for k, w in (("image_adv", alpha), ("text_adv", beta)) if w}
    if alpha:
        assert terms["image_adv"] == pytest.approx(image_term, rel=1e-5)
    if beta:
        assert terms["text_adv"] == pytest.approx(text_term, rel=1e-5)


def test_mmcoa_ablations_skip_the_unused_attack(train_data, make_config, monkeypatch, mlm):
    """alpha = 0 runs no PGD; beta = 0 needs neither adversarial prompts nor a masked LM."""
    config, model, method, _ = build("mmcoa", train_data, adv_image_weight=0.0, adv_text_weight=1.0, mlm=mlm)
    images, labels = fixed_batch(train_data, 8)
    monkeypatch.setattr(methods_module, "train_pgd", lambda *a: pytest.fail("PGD ran with alpha=0"))
    _, terms = method.loss(context(config, model, train_data.prompts()), images, labels)
    assert set(terms) == {"text_adv"}
    monkeypatch.undo()
    metrics = train(
        make_config("mmcoa", adv_image_weight=1.0, adv_text_weight=0.0, mlm="/no/such/mlm", max_steps=1),
        progress=False,
    )
    assert metrics["steps"] == 1


# -- what the optimizer may touch ------------------------------------------------------------------
def tower_of(name: str) -> str:
    """The tower of an open_clip CLIP parameter, by name (independent of the library's prefixes)."""
    if name == "logit_scale":
        return "logit_scale"
    return "image" if name.startswith("visual.") else "text"


@pytest.mark.parametrize(
    "name,towers",
    [(m, None) for m in METHODS.names()]
    + [
        ("ft-standard", "image"),
        ("ft-standard", "text"),
        ("ft-standard", "both"),
        ("tecoa", "text"),
        ("mmcoa", "image"),
        ("pmg-aft", "both"),
        ("fare", "image"),
    ],
)
def test_gradients_reach_only_the_trained_parameters(name, towers, make_config, monkeypatch):
    """Trained set: the chosen towers, plus the shared logit scale whenever any tower trains
    (`set_trainable`'s documented rule); VP trains only its prompt. Everything else keeps its
    exact values and never gets a `.grad`."""
    models = []
    monkeypatch.setattr(trainer, "load_model", recording(trainer.load_model, models))
    config = make_config(name, train_towers=towers, max_steps=1)
    train(config, progress=False)
    (model,) = models
    trained = set(
        {"image": ["image"], "text": ["text"], "both": ["image", "text"]}[towers]
        if towers
        else DEFAULT_TOWERS[name]
    )
    trained |= {"logit_scale"} if trained else set()
    before = mmcoa.load_model("tiny-clip").model.state_dict()
    after = load_state(os.path.join(config.output, "final.pt"))
    moved = set()
    for param_name, param in model.model.named_parameters():
        tower = tower_of(param_name)
        assert param.requires_grad == (tower in trained), param_name
        if tower in trained:
            moved |= {tower} if not torch.equal(before[param_name], after[param_name]) else set()
        else:
            assert param.grad is None, param_name
            assert torch.equal(before[param_name], after[param_name]), param_name
    unscaled = name in ("fare", "simclip", "leaf")  # embedding losses: the logit scale gets no gradient
    assert moved == trained - ({"logit_scale"} if unscaled else set())
    assert (model.visual_prompt is not None) == (name == "vp")
    assert (model.text_prompt is not None) == (name == "advpt")
    if name in PROMPTED:
        (param,) = getattr(model, PROMPTED[name]).parameters()
        start = getattr(build(name, mmcoa.load_dataset("synthetic", split="train"))[1], PROMPTED[name])
        assert param.requires_grad and param.grad is not None
        assert not torch.equal(param, next(start.parameters()))  # it moved from its start


@pytest.mark.parametrize("name", ADVERSARIAL)
def test_no_attack_gradient_reaches_the_optimizer_step(name, train_data, monkeypatch, mlm):
    """The gradient of the method's loss equals the gradient of the same loss recomputed on the
    (detached) adversarial images with fresh grads: the attack accumulated nothing."""
    config, model, method, _ = build(name, train_data, mlm=mlm)
    images, labels = fixed_batch(train_data, 8)
    prompts = train_data.prompts()
    made = []
    monkeypatch.setattr(methods_module, "train_pgd", recording(methods_module.train_pgd, made))
    monkeypatch.setattr(
        methods_module, "maximize_in_train_budget", recording(methods_module.maximize_in_train_budget, made)
    )
    model.train()
    loss, _ = method.loss(context(config, model, prompts), images, labels)
    assert all(p.grad is None for p in model.parameters())  # the attack left no gradient behind
    loss.backward()
    first = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    (adversarial,) = [m[0] if isinstance(m, tuple) else m for m in made]  # train_pgd: (images, leak)
    assert not torch.equal(adversarial, images)
    model.zero_grad(set_to_none=True)
    monkeypatch.setattr(methods_module, "train_pgd", lambda *a: (adversarial, None))
    monkeypatch.setattr(methods_module, "maximize_in_train_budget", lambda *a, **k: adversarial)
    again, _ = method.loss(context(config, model, prompts), images, labels)
    again.backward()
    second = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert torch.equal(loss.detach(), again.detach())
    assert first.keys() == second.keys() and first
    for key in first:
        assert torch.equal(first[key], second[key]), key


# -- exact resume ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,interrupt,extra",
    [
        ("tecoa", "max_steps", {}),
        ("mmcoa", "max_steps", {"text_attack_every": 2}),  # the whole run: whole_mmcoa_run
        ("tecoa", "crash", {"schedule": "cosine", "warmup_steps": 1}),
        *[(name, "max_steps", {}) for name in ("ft-standard", "fare", "pmg-aft", "vp", "advpt")],
    ],
)
def test_resume_gives_bit_identical_weights(name, interrupt, extra, make_config, monkeypatch, request):
    full = make_config(name, "straight", max_steps=None, save_every=1, **extra)  # 4 steps
    if name == "mmcoa":
        full = replace(full, output=request.getfixturevalue("whole_mmcoa_run"))
    else:
        train(full, progress=False)
    resumed = make_config(name, "resumed", max_steps=None, save_every=1, **extra)
    if interrupt == "max_steps":
        cut = make_config(name, "resumed", max_steps=3, save_every=1, keep_resume_state=True, **extra)
        train(cut, progress=False)
    else:
        crash_training_at(resumed, 3, monkeypatch)
    assert load_state(os.path.join(resumed.output, "checkpoints", "last.pt"))["step"] == 3
    metrics = train(resumed, resume=True, progress=False)
    assert metrics["steps"] == 4
    for exported in ("final.pt", "prompt.pt") if name in PROMPTED else ("final.pt",):
        expected = load_state(os.path.join(full.output, exported))
        got = load_state(os.path.join(resumed.output, exported))
        expected, got = (e.get("state", e) for e in (expected, got))  # prompt.pt nests its weights
        assert expected.keys() == got.keys()
        for key in expected:
            assert torch.equal(expected[key], got[key]), (exported, key)
    losses = [[row["loss"] for row in read_jsonl(c.output, "metrics.jsonl")] for c in (full, resumed)]
    assert losses[0] == losses[1][-4:]
    if name == "mmcoa":
        logs = [read_jsonl(c.output, "adversarial_prompts.jsonl") for c in (full, resumed)]
        assert [row["step"] for row in logs[1]] == [0, 2]  # not recomputed after the resume
        assert logs[0] == logs[1]


# -- few-shot lists --------------------------------------------------------------------------------
def test_few_shot_lists_are_fixed_and_have_k_per_class(train_data):
    labels = dataset_labels(train_data)
    for k in (1, 5):
        indices = few_shot_indices(labels, str(k), seed=3)
        assert indices == few_shot_indices(labels, str(k), seed=3)
        assert sorted(indices) == indices and len(set(indices)) == len(indices)
        assert sorted(labels[i] for i in indices) == sorted(list(range(4)) * k)
    assert few_shot_indices(labels, "5", seed=3) != few_shot_indices(labels, "5", seed=4)
    assert few_shot_indices(labels, "full", seed=3) == list(range(len(labels)))


def test_few_shot_list_is_saved_used_and_reused_on_resume(make_config, train_data, monkeypatch):
    read = []
    load = trainer.load_dataset

    def spying_load(*args, **kwargs):
        dataset = load(*args, **kwargs)
        item = dataset._item
        dataset._item = lambda i: read.append(int(i)) or item(i)
        return dataset

    monkeypatch.setattr(trainer, "load_dataset", spying_load)
    config = make_config("ft-standard", shots="5", epochs=2, max_steps=2, keep_resume_state=True)
    metrics = train(config, progress=False)  # 20 images: 2 steps/epoch
    saved = read_json(config.output, "shots.json")
    expected = few_shot_indices(dataset_labels(train_data), "5", seed=0)
    assert saved == {"shots": "5", "seed": 0, "indices": expected, "short_classes": []}
    assert metrics["n_train_items"] == 20 and sorted(read) == expected  # one epoch: each once

    monkeypatch.setattr(trainer, "few_shot_indices", lambda *a: pytest.fail("list redrawn on resume"))
    read.clear()
    metrics = train(
        make_config("ft-standard", shots="5", epochs=2, max_steps=None), resume=True, progress=False
    )
    assert metrics["steps"] == 4 and sorted(read) == expected
    assert read_json(config.output, "shots.json") == saved


def test_classes_short_of_k_shots_are_reported_and_saved(make_config, train_data, capsys):
    """The synthetic set has 16 training images per class: 50-shot uses all 16 of each and
    says so (stderr and shots.json) instead of silently training on fewer."""
    config = make_config("ft-standard", shots="50", max_steps=1)
    train(config, progress=False)
    saved = read_json(config.output, "shots.json")
    assert saved["short_classes"] == [
        {"label": c, "name": name, "images": 16} for c, name in enumerate(train_data.classnames)
    ]
    assert len(saved["indices"]) == 64
    err = capsys.readouterr().err
    assert err.count("fewer than --shots 50") == len(train_data.classnames)


# -- checkpoint errors -----------------------------------------------------------------------------
def test_corrupt_checkpoint_is_a_one_line_error(make_config):
    config = make_config()
    path = os.path.join(config.output, "checkpoints", "last.pt")
    os.makedirs(os.path.dirname(path))
    with open(path, "wb") as handle:
        handle.write(
            torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
            .numpy()
            .tobytes()
        )
    with pytest.raises(MmcoaError) as error:
        train(config, resume=True, progress=False)
    assert_one_line(error.value, "corrupt", "last.pt")
    assert sorted(os.listdir(config.output)) == ["checkpoints"]


@pytest.mark.parametrize(
    "change,word", [({"method": "ft-standard"}, "method"), ({"batch_size": 8}, "batch_size")]
)
def test_mismatched_checkpoint_is_a_one_line_error(change, word, tecoa_run):
    config = TrainConfig(**{**vars(tecoa_run), **change})
    with pytest.raises(MmcoaError) as error:
        train(config, resume=True, progress=False)
    assert_one_line(error.value, word, "checkpoint")


def test_a_finished_run_keeps_its_resume_state_only_when_asked(make_config, tmp_path, capsys):
    """Without keep_resume_state, a finished run drops checkpoints/last.pt (final.pt holds the
    weights) and --resume says so in one line; with it (--keep-resume-state), the run continues."""
    config = make_config("ft-standard", max_steps=1)
    train(config, progress=False)
    assert not os.path.exists(os.path.join(config.output, "checkpoints"))
    with pytest.raises(MmcoaError) as error:
        train(make_config("ft-standard", max_steps=2), resume=True, progress=False)
    assert_one_line(error.value, "finished", "final.pt", "--keep-resume-state")
    output = str(tmp_path / "kept")
    flags = ["train", "--method", "ft-standard", "--batch-size", "16", "--output", output, "--no-progress"]
    assert main(flags + ["--max-steps", "1", "--keep-resume-state"]) == 0
    assert load_state(os.path.join(output, "checkpoints", "last.pt"))["step"] == 1
    assert main(flags + ["--max-steps", "2", "--resume"]) == 0  # continued, then last.pt went
    capsys.readouterr()
    assert read_json(output, "metrics.json")["steps"] == 2
    assert not os.path.exists(os.path.join(output, "checkpoints"))


def test_resume_without_checkpoint_is_a_one_line_error(make_config, tmp_path, capsys):
    with pytest.raises(MmcoaError) as error:
        train(make_config(), resume=True, progress=False)
    assert_one_line(error.value, "no checkpoint")
    output = tmp_path / "cli-run"
    code = main(["train", "--method", "tecoa", "--resume", "--output", str(output), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("mmcoa: error:") and err.count("\n") == 1
    assert not output.exists()


# -- export ----------------------------------------------------------------------------------------
def test_final_weights_load_in_plain_open_clip(tecoa_run):
    import open_clip  # `import mmcoa` registered the tiny configurations with open_clip

    path = os.path.join(tecoa_run.output, "final.pt")
    saved = load_state(path)
    loaded = open_clip.create_model("tiny-clip", pretrained=path).state_dict()
    initial = mmcoa.load_model("tiny-clip").model.state_dict()
    assert loaded.keys() == saved.keys()
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)
    assert not all(torch.equal(initial[k], saved[k]) for k in saved)  # it is the trained model


def test_final_weights_evaluate_with_mmcoa_eval(tecoa_run, tmp_path, capsys):
    path = os.path.join(tecoa_run.output, "final.pt")
    output = tmp_path / "results.json"
    code = main(
        [
            "eval",
            "--model",
            "tiny-clip",
            "--pretrained",
            path,
            "--dataset",
            "synthetic",
            "--attacks",
            "clean",
            "--n-samples",
            "8",
            "--output",
            str(output),
            "--no-progress",
        ]
    )
    capsys.readouterr()
    assert code == 0
    (record,) = json.loads(output.read_text())
    assert record["pretrained"] == path


# -- command line ----------------------------------------------------------------------------------
def test_cli_flags_override_the_yaml_config(tmp_path, capsys):
    output = tmp_path / "run"
    config = tmp_path / "train.yaml"
    config.write_text(
        f"method: tecoa\nbatch-size: 16\nmax_steps: 1\nlr: 1e-3\nseed: 7\noutput: {output}\n"
    )  # YAML reads 1e-3 (no dot) as a string
    code = main(["train", "--config", str(config), "--lr", "0.002", "--train-eps", "2", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    saved = read_json(output, "config.json")
    assert saved["lr"] == 0.002 and saved["batch_size"] == 16 and saved["seed"] == 7
    assert saved["method"] == "tecoa" and saved["train_eps"] == pytest.approx(2 / 255)
    assert "final.pt" in capsys.readouterr().out


@pytest.mark.parametrize(
    "yaml_text,flags,words",
    [
        ("method: [tecoa\n", [], "not valid YAML"),
        ("learning_rate: 0.1\n", [], "unknown training setting(s) learning_rate"),
        ("lr: fast\n", [], "lr must be a number"),
        ("batch_size: 1.5\n", [], "batch_size must be an integer"),
        ("method: ft-standard\n", ["--train-towers", "none"], "trains nothing"),
        ("method: mmcoa\n", ["--mlm", "{tmp}/no-such-mlm"], "no-such-mlm"),
        ("method: tecoa\n", ["--template", "no placeholder"], "'no placeholder' has no"),
        ("method: tecoa\n", ["--pretrained", "{tmp}/missing.pt"], "missing.pt"),
    ],
)
def test_cli_bad_settings_exit_2_and_write_nothing(yaml_text, flags, words, tmp_path, capsys):
    output = tmp_path / "run"
    config = tmp_path / "train.yaml"
    config.write_text(yaml_text)
    flags = [f.format(tmp=tmp_path) for f in flags]
    code = main(
        [
            "train",
            "--config",
            str(config),
            "--max-steps",
            "1",
            "--output",
            str(output),
            "--no-progress",
            *flags,
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("mmcoa: error:") and err.count("\n") == 1 and words in err
    assert not output.exists()


# -- precision -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mmcoa", "fare"])
def test_bf16_trains_a_step_on_cpu(name, make_config):
    metrics = train(make_config(name, precision="bf16", max_steps=1), progress=False)
    assert metrics["steps"] == 1 and math.isfinite(metrics["final_loss"])


def test_a_fresh_run_starts_clean_and_a_resumed_run_drops_rows_past_its_checkpoint(make_config):
    config = make_config("tecoa", max_steps=2, keep_resume_state=True)
    train(config, progress=False)
    train(config, progress=False)  # the same output again, without --resume: logs start over
    assert [row["step"] for row in read_jsonl(config.output, "metrics.jsonl")] == [1, 2]
    with open(os.path.join(config.output, "metrics.jsonl"), "a") as handle:
        handle.write(json.dumps({"step": 3, "loss": 0.0}) + "\n")  # logged, then crashed before saving
    resumed = make_config("tecoa", max_steps=4)
    train(resumed, resume=True, progress=False)
    rows = read_jsonl(config.output, "metrics.jsonl")
    assert [row["step"] for row in rows] == [1, 2, 3, 4] and rows[2]["loss"] != 0.0


# -- prompt tuning: AdvPT's text context and the saved prompt files --------------------------------
@pytest.mark.parametrize("model_name", ["tiny-clip", "tiny-clip-hf"])
def test_text_context_started_from_a_phrase_encodes_like_that_phrase(model_name):
    """Cross-check: the context initialised from "a photo of a" must make "a a a a cat." encode
    exactly as the plain text "a photo of a cat." does; other texts are left alone."""
    from mmcoa.models.prompts import text_context_for

    model = mmcoa.load_model(model_name, pretrained="random" if model_name == "tiny-clip" else None)
    context = text_context_for(model, n_ctx=4, init="a photo of a")
    plain = model.encode_text(["a photo of a cat.", "a photo of a dog.", "a dog."])
    model.text_prompt = context
    prompted = model.encode_text([context.template.format("cat"), context.template.format("dog"), "a dog."])
    torch.testing.assert_close(prompted, plain, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        context.context.add_(1.0)
    moved = model.encode_text([context.template.format("cat"), "a dog."])
    assert not torch.allclose(moved[0], plain[0]) and torch.equal(moved[1], prompted[2])


def test_advpt_attacks_images_once_before_training_within_budget(train_data, monkeypatch):
    """The adversarial images are made in `prepare` (image tower only, eps-ball, [0, 1]) and
    deterministically; no step runs an attack, and only the context gets a gradient."""
    made = []
    monkeypatch.setattr(
        methods_module, "maximize_in_train_budget", recording(methods_module.maximize_in_train_budget, made)
    )
    config, model, method, _ = build("advpt", train_data, train_eps=4 / 255, train_steps=3)
    (adversarial,) = made
    images, labels = fixed_batch(train_data)
    assert (adversarial - images).abs().max() <= 4 / 255 + 1e-6
    assert adversarial.min() >= 0 and adversarial.max() <= 1 and not torch.equal(adversarial, images)
    first = method.adversarial_features.clone()
    method.prepare(model, train_data, list(range(16)), config)
    assert torch.equal(first, method.adversarial_features)
    with torch.no_grad():
        torch.testing.assert_close(first, model.encode_image(adversarial))
    loss, _ = method.loss(
        context(config, model, method.class_prompts(train_data, config, model)), images, labels
    )
    assert len(made) == 2  # the two prepare calls; the loss attacked nothing
    loss.backward()
    assert [n for n, p in model.named_parameters() if p.grad is not None] == ["text_prompt.context"]


@pytest.mark.parametrize("name", sorted(PROMPTED))
def test_saved_prompt_reattaches_and_evaluates(name, make_config, tmp_path, capsys):
    """prompt.pt put back on a fresh model reproduces the trained prompt's embeddings, and
    `mmcoa eval --prompt` uses it (with the context's own template for AdvPT)."""
    from mmcoa.models.prompts import attach_prompt

    config = make_config(name, max_steps=2)
    models = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trainer, "load_model", recording(trainer.load_model, models))
        train(config, progress=False)
    fresh = mmcoa.load_model("tiny-clip", pretrained=os.path.join(config.output, "final.pt"))
    template = attach_prompt(fresh, os.path.join(config.output, "prompt.pt"))
    trained = models[0].eval()
    images = fixed_batch(mmcoa.load_dataset("synthetic", split="train"), 4)[0]
    texts = [(template or "a photo of a {}.").format(c) for c in ("cat", "dog")]
    with torch.no_grad():
        torch.testing.assert_close(fresh.encode_image(images), trained.encode_image(images))
        torch.testing.assert_close(fresh.encode_text(texts), trained.encode_text(texts))
    assert (template is not None) == (name == "advpt")
    out = tmp_path / "eval.json"
    assert (
        main(
            [
                "eval",
                "--model",
                "tiny-clip",
                "--pretrained",
                os.path.join(config.output, "final.pt"),
                "--prompt",
                os.path.join(config.output, "prompt.pt"),
                "--dataset",
                "synthetic",
                "--attacks",
                "clean",
                "--n-samples",
                "8",
                "--no-progress",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    (record,) = read_json(out)
    assert record["n_samples"] == 8


@pytest.mark.parametrize(
    "content,words", [(None, "does not exist"), (b"garbage", "corrupt"), ("state", "not an mmcoa prompt")]
)
def test_bad_prompt_file_is_a_one_line_error_before_loading(content, words, tmp_path, capsys):
    path = tmp_path / "prompt.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "state":
        torch.save({"context": torch.zeros(2)}, path)
    code = main(
        [
            "eval",
            "--model",
            "tiny-clip",
            "--pretrained",
            "random",
            "--prompt",
            str(path),
            "--dataset",
            "synthetic",
            "--attacks",
            "clean",
            "--output",
            str(tmp_path / "o.json"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and words in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o.json").exists()


def test_step_attacks_draw_from_a_generator_on_the_training_device(make_config, monkeypatch):
    """PGD draws its random start on the images' device, so the step's generator must live on
    the training device (a CPU generator fails for CUDA images)."""
    seen = []
    real = methods_module.train_pgd
    monkeypatch.setattr(
        methods_module, "train_pgd", lambda ctx, *a: seen.append(ctx.generator.device) or real(ctx, *a)
    )
    train(make_config("tecoa", max_steps=1), progress=False)
    assert seen == [torch.device("cpu")]


def test_epoch_checkpoints_are_kept_when_asked(make_config):
    """keep_epoch_checkpoints: checkpoints/epoch<N>.pt at each epoch end (paper Fig. 7's points),
    each holding its step; a fresh run in the same folder drops stale ones."""
    config = make_config("ft-standard", shots="5", epochs=2, max_steps=None, keep_epoch_checkpoints=True)
    train(config, progress=False)  # 20 images, batch 16: 2 steps per epoch
    folder = os.path.join(config.output, "checkpoints")
    assert sorted(os.listdir(folder)) == ["epoch1.pt", "epoch2.pt"]  # last.pt went at the end
    assert [load_state(os.path.join(folder, f"epoch{e}.pt"))["step"] for e in (1, 2)] == [2, 4]
    train(make_config("ft-standard", shots="5", epochs=1, max_steps=None), progress=False)
    assert not os.path.exists(folder)


def test_text_attacks_leave_the_advpt_context_in_place(mlm, train_data):
    """The placeholders are stop words: BERT-Attack on a prompt-tuned model edits the class
    name, never the words the learned context replaces."""
    from mmcoa.attacks import build_attack
    from mmcoa.models import ZeroShotClassifier
    from mmcoa.models.prompts import text_context_for

    model = mmcoa.load_model("tiny-clip")
    model.text_prompt = text_context_for(model)
    prompts = train_data.prompts(model.text_prompt.template)
    attack = build_attack("bert", mlm=mlm)
    attack.prepare("cpu")
    images, labels = fixed_batch(train_data, 8)
    result = attack(ZeroShotClassifier(model, prompts), images, labels)
    assert result.adversarial_prompts and len(result.adversarial_prompts) == len(prompts)
    assert all(p.startswith("a a a a ") for p in result.adversarial_prompts)
    assert result.adversarial_prompts != prompts  # the class names were attacked


def test_visual_prompt_at_another_resolution_is_a_one_line_error():
    from mmcoa.models.prompts import PaddingPrompt

    prompt = PaddingPrompt((32, 32))
    with pytest.raises(MmcoaError, match="trained at \\(32, 32\\) px; the images are \\(28, 28\\) px"):
        prompt(torch.zeros(1, 3, 28, 28))


def test_a_checkpoint_saved_before_the_alpha_beta_rename_resumes(make_config):
    """Runs saved with MMCoA's loss weights named alpha/beta (before adv_image_weight and
    adv_text_weight) resume instead of failing the settings check on names."""
    config = make_config("tecoa", "old-names", max_steps=2, save_every=1, keep_resume_state=True)
    train(config, progress=False)
    path = os.path.join(config.output, "checkpoints", "last.pt")
    checkpoint = load_state(path)
    saved = checkpoint["config"]
    saved["alpha"], saved["beta"] = saved.pop("adv_image_weight"), saved.pop("adv_text_weight")
    torch.save(checkpoint, path)
    metrics = train(make_config("tecoa", "old-names", max_steps=3, save_every=1), resume=True, progress=False)
    assert metrics["steps"] == 3


def test_a_checkpoint_from_before_methods_kept_their_state_resumes_exactly(make_config, whole_mmcoa_run):
    """Checkpoints saved before the method kept its own state hold MMCoA's adversarial prompts at
    their top level (no ``method`` entry) and the global RNG state: they resume where the
    uninterrupted run ends, the prompts reused across the interruption."""
    extra = MMCOA_RESUMED
    train(make_config("mmcoa", "old", max_steps=3, keep_resume_state=True, **extra), progress=False)
    path = os.path.join(make_config("mmcoa", "old").output, "checkpoints", "last.pt")
    checkpoint = load_state(path)
    checkpoint.update(checkpoint.pop("method"), rng=torch.get_rng_state())
    assert checkpoint["adversarial_prompts"]
    torch.save(checkpoint, path)
    train(make_config("mmcoa", "old", max_steps=4, **extra), resume=True, progress=False)
    whole, old = (
        load_state(os.path.join(run, "final.pt"))
        for run in (whole_mmcoa_run, make_config("mmcoa", "old").output)
    )
    assert all(torch.equal(whole[k], old[k]) for k in whole)


# -- the batch pipeline in training: workers, background checkpoints, logs -----------------------
def test_epoch_order_is_one_permutation_per_epoch():
    order = EpochOrder(list(range(10, 20)), batch_size=4, seed=3)
    epoch0 = [i for step in range(3) for i in order.global_batch(step)]
    epoch1 = [i for step in range(3, 6) for i in order.global_batch(step)]
    assert sorted(epoch0) == sorted(epoch1) == list(range(10, 20)) and epoch0 != epoch1
    assert [len(order.global_batch(s)) for s in range(3)] == [4, 4, 2]
    assert [order.global_size(s) for s in range(6)] == [len(order.global_batch(s)) for s in range(6)]
    assert EpochOrder(list(range(10, 20)), 4, 3).global_batch(4) == order.global_batch(4)  # no state


def folder_config(image_folder, tmp_path, name, **overrides) -> TrainConfig:
    settings = dict(
        method="tecoa",
        model="tiny-clip",
        dataset=f"imagefolder:{image_folder}",
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


def test_training_with_workers_gives_the_same_batches_and_weights(image_folder, tmp_path, monkeypatch):
    seen = {}
    for workers in (0, 2):
        seen[workers] = record_batches(monkeypatch)
        train(folder_config(image_folder, tmp_path, f"w{workers}", workers=workers), progress=False)
        monkeypatch.undo()
    assert seen[0] == seen[2] and len(seen[0]) == 6  # 12 items, batch 5: 3 steps x 2 epochs
    a, b = (final_weights(folder_config(image_folder, tmp_path, f"w{w}")) for w in (0, 2))
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(line) for line in (tmp_path / "w2" / "metrics.jsonl").read_text().splitlines()]
    assert all(0 <= r["data_share"] <= 1 and r["data_wait_s"] <= r["step_s"] + 1e-3 for r in rows)
    metrics = json.loads((tmp_path / "w2" / "metrics.json").read_text())
    assert 0 <= metrics["data_wait_share"] <= 1 and metrics["workers"] == 2


def test_resume_with_workers_is_exact(image_folder, tmp_path, monkeypatch):
    full = folder_config(image_folder, tmp_path, "full", workers=2)
    train(full, progress=False)
    cut = folder_config(image_folder, tmp_path, "cut", workers=2)
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
        keep_resume_state=True,
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


# -- weight marks, faithful TeCoA, per-method defaults -------------------------------------------
def test_every_training_step_renews_the_fingerprint_even_with_a_fused_optimizer(tmp_path, monkeypatch):
    """Caches keyed on the text fingerprint (class embeddings, BERT-Attack's edits) are dropped
    after every optimizer step with nothing to remember in the trainer: a fused AdamW leaves
    ``Tensor._version`` alone, the optimizer-step count of models/weight_version.py does not."""
    keys, step = [], trainer.TrainLoop.step

    def recording(self, *args, **kwargs):
        keys.append(self.model.text_fingerprint())
        return step(self, *args, **kwargs)

    def fused(model, config):
        return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, fused=True)

    monkeypatch.setattr(trainer.TrainLoop, "step", recording)
    monkeypatch.setattr(trainer, "build_optimizer", fused)
    config = TrainConfig(method="ft-standard", batch_size=16, max_steps=3, output=str(tmp_path / "r"))
    train(config, progress=False)
    assert len(keys) == 3 and len(set(keys)) == 3


# -- TeCoA ----------------------------------------------------------------------------------
def test_tecoa_loss_is_image_to_text_cross_entropy(tiny_model, synthetic_test):
    from mmcoa.train.methods import METHODS, StepContext

    images = torch.stack([synthetic_test[i][0] for i in range(8)])
    labels = torch.tensor([synthetic_test[i][1] for i in range(8)])
    prompts = synthetic_test.prompts()
    config = TrainConfig(method="tecoa", train_eps=1e-6, train_step_size=1e-6, train_steps=1)

    def context():
        return StepContext(
            model=tiny_model, prompts=prompts, config=config, generator=torch.Generator().manual_seed(0)
        )

    loss, _ = METHODS.get("tecoa")().loss(context(), images, labels)
    with torch.no_grad():
        logits = ZeroShotClassifier(tiny_model, prompts).logits(images)
    assert torch.allclose(loss, F.cross_entropy(logits, labels), atol=1e-4)
    symmetric, _ = METHODS.get("tecoa-symmetric")().loss(context(), images, labels)
    assert not torch.allclose(symmetric, loss, atol=1e-3)


# -- per-method defaults --------------------------------------------------------------------
def test_each_method_gets_its_published_training_settings():
    fare, pmg, tecoa, mmcoa_ = (TrainConfig(method=m) for m in ("fare", "pmg-aft", "tecoa", "mmcoa"))
    assert (fare.optimizer, fare.weight_decay, fare.train_eps, fare.train_steps) == (
        "adamw",
        1e-4,
        4 / 255,
        10,
    )
    assert (pmg.optimizer, pmg.lr, pmg.weight_decay, pmg.schedule) == ("sgd", 5e-5, 0.0, "cosine")
    assert (tecoa.optimizer, tecoa.train_steps, tecoa.warmup_steps) == ("sgd", 2, 1000)
    assert (mmcoa_.weight_decay, mmcoa_.train_eps, mmcoa_.train_step_size, mmcoa_.train_steps) == (
        0.2,
        1 / 255,
        1 / 255,
        10,
    )
    assert TrainConfig(method="fare", train_steps=3, lr=2e-5).train_steps == 3  # given values win
    for name in mmcoa.train.METHODS.names():  # every method's class holds every per-method setting
        assert TrainConfig(method=name).lr == mmcoa.train.METHODS.get(name).defaults["lr"]
    with pytest.raises(mmcoa.errors.UnknownNameError, match="unknown method 'nope'; known: .*mmcoa"):
        TrainConfig(method="nope")


def test_sgd_methods_build_sgd_with_momentum(tiny_model):
    from mmcoa.train.trainer import build_optimizer

    tiny_model.set_trainable(["image"])
    optimizer = build_optimizer(tiny_model, TrainConfig(method="pmg-aft"))
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["momentum"] == 0.9
    tiny_model.set_trainable([])


def test_a_zero_training_step_size_is_refused_up_front():
    with pytest.raises(MmcoaError, match="train_step_size"):
        TrainConfig(method="tecoa", train_step_size=0.0)


# -- resume after a crash ------------------------------------------------------------------------
def _config(tmp_path, **overrides):
    settings = dict(
        method="ft-standard",
        batch_size=16,
        max_steps=2,
        save_every=1,
        keep_resume_state=True,  # these runs are resumed after they finish
        output=str(tmp_path / "run"),
    )
    return TrainConfig(**{**settings, **overrides})


def test_resume_drops_a_partial_last_metrics_line(tmp_path, capsys):
    train(_config(tmp_path, max_steps=1), progress=False)
    metrics = tmp_path / "run" / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"step": 2, "lo')  # what a full disk leaves
    train(_config(tmp_path), resume=True, progress=False)
    assert "dropped unreadable line 2" in capsys.readouterr().err
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == [1, 2]


def test_resume_sweeps_temporary_files_of_an_interrupted_save(tmp_path):
    train(_config(tmp_path, max_steps=1), progress=False)
    stale = tmp_path / "run" / "checkpoints" / ".last.pt.k3j2h1.tmp"
    stale.write_bytes(b"half a checkpoint")
    train(_config(tmp_path), resume=True, progress=False)
    assert not stale.exists()


def test_resume_accepts_the_same_pretrained_file_by_another_path(tmp_path, monkeypatch):
    weights = tmp_path / "start.pt"
    torch.save(mmcoa.load_model("tiny-clip").model.state_dict(), weights)
    monkeypatch.chdir(tmp_path)
    train(_config(tmp_path, max_steps=1, pretrained="start.pt"), progress=False)
    train(_config(tmp_path, pretrained=str(weights.resolve())), resume=True, progress=False)
    other = tmp_path / "other.pt"
    torch.save(mmcoa.load_model("tiny-clip").model.state_dict(), other)
    with pytest.raises(MmcoaError, match="settings differ"):
        train(_config(tmp_path, max_steps=3, pretrained=str(other)), resume=True, progress=False)


# -- NaN / inf losses --------------------------------------------------------------------------
def _nan_at_step(monkeypatch, bad_step: int):
    from mmcoa.train import methods

    original = methods.FTStandard.loss
    calls = []

    def loss(self, ctx, images, labels):
        calls.append(1)
        value, terms = original(self, ctx, images, labels)
        return (value * float("nan"), terms) if len(calls) == bad_step else (value, terms)

    monkeypatch.setattr(methods.FTStandard, "loss", loss)


def test_a_nan_loss_stops_at_its_step_with_the_last_checkpoint_intact(tmp_path, monkeypatch):
    _nan_at_step(monkeypatch, 2)
    with pytest.raises(MmcoaError, match=r"the loss is nan at step 2; .*last.pt \(step 1\) is intact"):
        train(_config(tmp_path, max_steps=3), progress=False)
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert checkpoint["step"] == 1
    assert all(torch.isfinite(v).all() for v in checkpoint["model"].values() if v.is_floating_point())


def test_skip_nonfinite_skips_and_counts_the_step(tmp_path, monkeypatch):
    _nan_at_step(monkeypatch, 2)
    metrics = train(_config(tmp_path, max_steps=3, skip_nonfinite=True), progress=False)
    assert metrics["skipped_nonfinite_steps"] == 1 and metrics["steps"] == 3
    final = torch.load(tmp_path / "run" / "final.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in final.values() if v.is_floating_point())
