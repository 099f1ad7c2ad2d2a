"""Fill the GPU: precision for every image-side attack, exact text-context trimming with token
ids cached per string, and text work shared across ranks with a correct gradient."""

from __future__ import annotations

import tempfile

import pytest
import torch
import torch.multiprocessing as mp

import mmcoa
from helpers import assert_valid_perturbation
from mmcoa.attacks import ATTACKS, build_attack
from mmcoa.attacks.text.tiny_mlm import caption_corpus, train_tiny_mlm

IMAGE_ATTACKS = ("pgd", "multimodal", "multimodal-joint", "coattack", "sga")
SHORT = ["a", "a dog", "This is a photo of a cat", "This is a photo of a t shirt top"]


@pytest.fixture(scope="module")
def mlm(tmp_path_factory, synthetic_test):
    corpus = caption_corpus(synthetic_test.classnames, ["This is a photo of a {}"])
    return str(train_tiny_mlm(corpus, tmp_path_factory.mktemp("fill-mlm") / "mlm", steps=20))


# -- precision ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", IMAGE_ATTACKS)
def test_every_image_attack_runs_in_bf16_within_its_budget(name, mlm, classifier, batch):
    images, labels = batch
    params = {"n_steps": 2, "precision": "bf16"} | ({"mlm": mlm} if name != "pgd" else {})
    attack = build_attack(name, **params)
    attack.prepare("cpu")
    result = attack(classifier, images, labels, torch.Generator().manual_seed(0))
    assert_valid_perturbation(result.images, images, attack.eps)
    assert attack.params()["precision"] == "bf16"
    fp32 = build_attack(name, **{**params, "precision": "fp32"})
    fp32.prepare("cpu")
    assert not torch.equal(
        fp32(classifier, images, labels, torch.Generator().manual_seed(0)).images, result.images
    )  # bf16 really changed the arithmetic


def test_a_bad_precision_is_one_line():
    with pytest.raises(mmcoa.MmcoaError, match="precision must be one of fp32, bf16"):
        build_attack("coattack", precision="fp16")


def test_every_attack_with_precision_is_listed_here():
    """A new image attack must join IMAGE_ATTACKS (and so the bf16 test) when it takes precision."""
    import dataclasses

    takes = {
        name
        for name in ATTACKS.names()
        if "precision" in {f.name for f in dataclasses.fields(ATTACKS.get(name))}
    }
    assert takes - set(TORCHATTACKS) == set(IMAGE_ATTACKS)


TORCHATTACKS = {
    "apgd": {"n_steps": 2},
    "apgd-ce": {"n_steps": 2},
    "apgd-t": {"n_steps": 2},
    "autoattack": {"n_steps": 2, "fab_steps": 2, "square_queries": 4},
}


@pytest.mark.parametrize("name", sorted(TORCHATTACKS))
def test_torchattacks_based_attacks_run_the_model_in_bf16(name, classifier, batch, monkeypatch):
    images, labels = batch
    attack = build_attack(name, precision="bf16", **TORCHATTACKS[name])
    dtypes = []
    original = classifier.model._encode_pixels
    monkeypatch.setattr(
        classifier.model,
        "_encode_pixels",
        lambda pixels: (
            dtypes.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None),
            original(pixels),
        )[1],
    )
    result = attack(classifier, images, labels, torch.Generator().manual_seed(0))
    assert_valid_perturbation(result.images, images, attack.eps)
    assert dtypes and set(dtypes) == {torch.bfloat16}


def test_the_seed_does_not_depend_on_precision(classifier, batch):
    """Same random start in fp32 and bf16: the records' gap is the precision's alone."""
    records = [
        mmcoa.evaluate(
            classifier.model,
            "synthetic",
            [build_attack("pgd", n_steps=1, step_size=1e-9, precision=p)],
            n_samples=8,
            progress=False,
        )[0]
        for p in ("fp32", "bf16")
    ]
    assert records[1]["attack_params"]["precision"] == "bf16"
    assert records[0]["accuracy"] == records[1]["accuracy"]


# -- trimming and cached ids -------------------------------------------------------------------
@pytest.mark.parametrize("name", ["tiny-clip", "tiny-clip-hf"])
def test_trimmed_prompts_encode_as_at_full_length(name):
    model = mmcoa.load_model(name)
    tokens = model.tokenize(SHORT)
    ids = next(iter(tokens.values()))
    assert ids.shape[1] < 16  # the batch is cut to its longest prompt
    with torch.no_grad():
        trimmed = model.encode_text(SHORT, normalize=True)
        full = torch.nn.functional.normalize(_full_length_features(model, SHORT), dim=-1)
    assert torch.allclose(trimmed, full, atol=1e-6)


def _full_length_features(model, texts):
    """The untrimmed path as the backends give it (context-length padding)."""
    if name_of(model) == "tiny-clip":
        return model.model.encode_text(model.tokenizer(texts))
    batch = model.tokenizer(
        texts, padding="max_length", max_length=model.context_length, truncation=True, return_tensors="pt"
    )
    return model.model.get_text_features(**batch).pooler_output


def name_of(model):
    return model.name


def test_token_ids_are_cached_and_dropped_with_the_tokenizer(monkeypatch):
    model = mmcoa.load_model("tiny-clip")
    calls = []
    tokenizer = model.tokenizer
    model.tokenizer = lambda texts: (calls.append(list(texts)), tokenizer(texts))[1]
    model.tokenize(SHORT)
    model.tokenize(SHORT[:2] + ["a cat"])
    assert calls == [SHORT, ["a cat"]]  # each string tokenized once
    other = mmcoa.load_model("tiny-clip-hf").tokenizer  # another vocabulary
    model.tokenizer = lambda texts: (
        calls.append(("other", list(texts))),
        torch.tensor(other(list(texts), padding="max_length", max_length=16, truncation=True)["input_ids"]),
    )[1]
    model.tokenize(["a dog"])
    assert calls[-1] == ("other", ["a dog"])  # not served from the old tokenizer's cache


def test_a_text_context_survives_a_batch_shorter_than_it(tiny_model):
    from mmcoa.models.prompts import text_context_for

    model = mmcoa.load_model("tiny-clip")
    model.text_prompt = text_context_for(model, n_ctx=4)
    assert model.encode_text(["a"]).shape == (1, 96)


# -- text shared across ranks ------------------------------------------------------------------
def _sharded_text_gradients(rank, world_size, init_file, scale, queue):
    from mmcoa.distributed import World, gather_with_grad, scaled_gradient
    import mmcoa.distributed as D

    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    torch.set_num_threads(1)
    model = mmcoa.load_model("tiny-clip")
    world = World(rank=rank, size=world_size)
    if not scale:  # the broken variant: gathered rows keep an unscaled gradient
        D.scaled_gradient = lambda local, factor: scaled_gradient(local, 1)
    local = model.encode_text(world.shard(PROMPTS))
    loss = _text_loss(model, gather_with_grad(local, world))
    loss.backward()
    D.average_gradients([p for p in model.parameters() if p.grad is not None], world)
    queue.put(
        (
            rank,
            {
                n: p.grad.numpy().copy()  # by value: the process ends before the read
                for n, p in model.model.named_parameters()
                if p.grad is not None
            },
        )
    )
    torch.distributed.destroy_process_group()


PROMPTS = [f"This is a photo of a {c}" for c in ("cat", "dog", "bird", "fish", "car")]


def _text_loss(model, text):
    """A global loss every rank computes whole: text features against fixed image features."""
    images = torch.linspace(-1, 1, 3 * 96).view(3, 96)
    return torch.nn.functional.cross_entropy(
        images @ torch.nn.functional.normalize(text, dim=-1).T, torch.tensor([0, 2, 4])
    )


def _two_process_gradients(scale: bool) -> dict:
    context = mp.get_context("spawn")
    queue = context.Queue()
    init_file = tempfile.mktemp(prefix="mmcoa-gloo-")
    processes = [
        context.Process(target=_sharded_text_gradients, args=(r, 2, init_file, scale, queue))
        for r in range(2)
    ]
    for process in processes:
        process.start()
    grads = dict(queue.get(timeout=300) for _ in processes)
    for process in processes:
        process.join(timeout=60)
    return {n: torch.from_numpy(g) for n, g in grads[0].items()}


@pytest.mark.slow
@pytest.mark.parametrize("scale", [True, False], ids=["scaled", "broken-scaling"])
def test_text_shared_across_two_ranks_gives_one_process_gradient(scale):
    model = mmcoa.load_model("tiny-clip")
    _text_loss(model, model.encode_text(PROMPTS)).backward()
    single = {n: p.grad for n, p in model.model.named_parameters() if p.grad is not None}
    shared = _two_process_gradients(scale)
    # shards are trimmed to their own longest prompt: float rounding of about 1e-6 remains
    agree = all(torch.allclose(single[n], shared[n], rtol=1e-4, atol=1e-5) for n in single)
    assert agree is scale  # and the check fails when the gradient scaling is left out


# -- the command line --------------------------------------------------------------------------
def test_eval_precision_and_runtime_reach_the_record(tmp_path):
    import json

    from mmcoa.cli import main

    output = tmp_path / "r.json"
    assert (
        main(
            [
                "eval",
                "--model",
                "tiny-clip",
                "--dataset",
                "synthetic",
                "--attacks",
                "clean,pgd",
                "--n-steps",
                "1",
                "--n-samples",
                "4",
                "--precision",
                "bf16",
                "--no-tf32",
                "--output",
                str(output),
                "--no-progress",
            ]
        )
        == 0
    )
    clean, pgd = json.loads(output.read_text())
    assert pgd["attack_params"]["precision"] == "bf16"
    assert pgd["runtime"]["tf32"] is False and pgd["runtime"]["compile"] is False


def test_eval_precision_needs_an_image_attack(tmp_path, capsys):
    from mmcoa.cli import main

    assert (
        main(
            [
                "eval",
                "--model",
                "tiny-clip",
                "--dataset",
                "synthetic",
                "--attacks",
                "clean",
                "--precision",
                "bf16",
                "--output",
                str(tmp_path / "r.json"),
            ]
        )
        == 2
    )
    assert "no chosen attack takes precision" in capsys.readouterr().err


def test_a_suite_precision_is_the_default_of_its_image_attacks(tmp_path):
    import yaml

    from mmcoa.eval.suite_config import load_suite

    path = tmp_path / "s.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "p",
                "precision": "bf16",
                "datasets": ["synthetic"],
                "models": [{"name": "tiny-clip"}],
                "attacks": [
                    {"name": "clean"},
                    {"name": "pgd"},
                    {"name": "pgd", "label": "fp32", "precision": "fp32"},
                ],
            }
        )
    )
    config = load_suite(str(path))
    assert [a.params.get("precision") for a in config.attacks] == [None, "bf16", "fp32"]
