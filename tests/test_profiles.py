"""Behaviour switches and the ``published`` profile: each switch's published behaviour pinned on
a case small enough to compute by hand (or by an independent re-implementation written here),
and each default at its corrected value. Tiny models, batches of 3-8, 2 PGD steps."""

from __future__ import annotations

import dataclasses
import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
import yaml

import mmcoa
from helpers import first_items
from mmcoa.attacks import build_attack
from mmcoa.attacks.base import eval_mode, seed_identity, seed_params
from mmcoa.attacks.pgd import random_start
from mmcoa.cli import main
from mmcoa.errors import MmcoaError
from mmcoa.eval.metrics import Scoring, Tally
from mmcoa.eval.suite_config import load_suite
from mmcoa.profiles import profile_of, profile_settings, switch_fields, switches_of
from mmcoa.train.config import TrainConfig
from mmcoa.train.methods import METHODS, StepContext
from mmcoa.train.objectives import batch_contrastive_loss, class_aware_contrastive_loss, contrastive_loss
from mmcoa.train.trainer import build_optimizer, train

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

TRAIN_SWITCHES = {
    "contrastive_targets",
    "attack_grad_leak",
    "ft_standard_loss",
    "vp_prompt",
    "candidate_position",
    "shot_sampler",
}


def side(profile: str) -> dict:
    """Every TrainConfig switch's value under ``profile``, read from the fields' metadata."""
    return {f.name: f.metadata[profile] for f in switch_fields(TrainConfig)}


@pytest.fixture(scope="module")
def train_data():
    return mmcoa.load_dataset("synthetic", split="train")


def set_up(name, train_data, **overrides):
    """A fresh tiny-clip with method ``name`` set up on it, as the trainer does."""
    config = TrainConfig(method=name, batch_size=8, **overrides)
    model = mmcoa.load_model("tiny-clip")
    method = METHODS.get(name)()
    method.setup(model, train_data.image_size, method.default_towers, config)
    return config, model, method


def step_context(config, model, prompts, seed=0):
    return StepContext(
        model=model, prompts=prompts, config=config, generator=torch.Generator().manual_seed(seed)
    )


def trainable(model) -> dict:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def gradients(model) -> dict:
    return {n: p.grad.detach().clone() for n, p in trainable(model).items()}


def assert_same_gradients(actual: dict, expected: dict, rel: float = 2e-5) -> None:
    """Each parameter's gradient equal up to float32 summation order: within ``rel`` of the
    largest entry of that parameter's expected gradient (observed: about 2.5e-6)."""
    assert set(actual) == set(expected)
    for name, grad in expected.items():
        scale = float(grad.abs().max())
        torch.testing.assert_close(actual[name], grad, rtol=0, atol=rel * scale, msg=name)


# -- 1. profile resolution --------------------------------------------------------------------
def test_profile_resolution_sets_every_switch_and_the_published_optimizer():
    corrected, published = side("corrected"), side("published")
    assert set(corrected) == TRAIN_SWITCHES
    assert all(corrected[k] != published[k] for k in corrected)  # each switch has two sides

    default = TrainConfig()
    assert switches_of(default) == corrected
    assert (default.optimizer, default.lr) == ("adamw", 1e-5)

    paper = TrainConfig(profile="published")
    assert switches_of(paper) == published
    assert (paper.optimizer, paper.lr) == ("adam", 1e-6)

    explicit = TrainConfig(profile="published", lr=3e-4, contrastive_targets="class")
    assert (explicit.lr, explicit.optimizer, explicit.contrastive_targets) == (3e-4, "adam", "class")
    assert switches_of(explicit) == {**published, "contrastive_targets": "class"}

    tecoa = TrainConfig(method="tecoa", profile="published")
    assert tecoa.attack_grad_leak is False
    assert switches_of(tecoa) == {**published, "attack_grad_leak": False}
    assert (tecoa.optimizer, tecoa.lr) == ("sgd", 1e-5)

    with pytest.raises(MmcoaError) as error:
        TrainConfig(profile="paper")
    message = str(error.value)
    assert "\n" not in message and "corrected, published" in message and "'paper'" in message

    published_values = profile_settings(TrainConfig, "published")
    assert profile_of(switches_of(default), published_values) == "corrected"
    assert profile_of(switches_of(paper), published_values) == "published"
    assert profile_of(switches_of(explicit), published_values) == "mixed"
    assert profile_of({}, published_values) == "corrected"


# -- 2. contrastive_targets: batch ------------------------------------------------------------
def test_batch_targets_sum_both_arange_directions_and_make_same_class_images_negatives():
    images = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])  # images 0 and 1: class 0
    labels = torch.tensor([0, 0, 1])
    class_text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    scale = torch.tensor(2.0)

    own = [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]  # each image's own class prompt
    logits = [[2.0 * sum(a * b for a, b in zip(img, txt)) for txt in own] for img in images.tolist()]

    def ce(row, target):
        return math.log(sum(math.exp(v) for v in row)) - row[target]

    image_to_text = sum(ce(logits[i], i) for i in range(3)) / 3
    text_to_image = sum(ce([logits[i][j] for i in range(3)], j) for j in range(3)) / 3
    expected = image_to_text + text_to_image  # summed, not averaged

    batch = batch_contrastive_loss(images, class_text[labels], scale)
    assert abs(float(batch) - expected) < 1e-5
    assert abs(float(contrastive_loss(images, class_text, labels, scale, "batch")) - expected) < 1e-5
    # image 0's own prompt and image 1's are the same: under arange targets image 0 can do no
    # better than log 2 against them; the class-aware loss has no such floor
    assert ce(logits[0], 0) > math.log(2)
    class_aware = contrastive_loss(images, class_text, labels, scale, "class")
    assert torch.allclose(class_aware, class_aware_contrastive_loss(images, class_text, labels, scale))
    assert abs(float(class_aware) - expected) > 0.5


# -- 3. attack_grad_leak ----------------------------------------------------------------------
def published_loop_gradients(model, prompts, images, labels, config, generator):
    """An independent re-implementation of the published MMCoA step (adv_text_weight 0): a PGD
    whose every iterate's batch-mean cross-entropy is ``backward()``-ed into the weights (the
    leak), then the training loss on the final images, ``backward()``-ed on top. Returns the
    leaked gradients, the training loss's gradients and the leaked losses."""
    eps, step = config.train_eps, config.train_step_size
    model.zero_grad(set_to_none=True)
    leaked_losses = []
    delta = random_start(images, eps, "linf", generator)
    with eval_mode(model):  # the library's PGD runs the model in eval mode
        for _ in range(config.train_steps):
            delta = delta.detach().requires_grad_(True)
            text = F.normalize(model.encode_text(prompts), dim=-1)  # with gradient
            image = F.normalize(model.encode_image(images + delta), dim=-1)
            loss = F.cross_entropy(model.logit_scale * image @ text.T, labels)
            loss.backward()  # the published leak: the weights' gradients accumulate
            leaked_losses.append(loss.detach())
            delta = (delta.detach() + step * delta.grad.sign()).clamp(-eps, eps)
            delta = (images + delta).clamp(0, 1) - images
    leak = gradients(model)
    model.zero_grad(set_to_none=True)
    adversarial = (images + delta).detach()
    train_loss = config.adv_image_weight * class_aware_contrastive_loss(
        model.encode_image(adversarial), model.encode_text(prompts), labels, model.logit_scale
    )
    train_loss.backward()
    trained = gradients(model)
    model.zero_grad(set_to_none=True)
    return leak, trained, leaked_losses


def test_attack_grad_leak_adds_the_published_loops_attack_gradients(train_data):
    images, labels = first_items(train_data, 6)
    prompts = train_data.prompts()
    budget = dict(adv_text_weight=0.0, adv_image_weight=0.7, train_steps=2, train_eps=2 / 255)
    config, model, method = set_up("mmcoa", train_data, attack_grad_leak=True, **budget)
    # tiny-clip has no dropout (no Dropout module, attention dropout 0): eval and train mode
    # compute the same, so the trainer's train mode and the attack's eval mode agree
    assert not [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert all(m.dropout == 0 for m in model.modules() if isinstance(m, torch.nn.MultiheadAttention))
    model.train()

    leak, trained, leaked_losses = published_loop_gradients(
        model, prompts, images, labels, config, torch.Generator().manual_seed(0)
    )
    loss, terms = method.loss(step_context(config, model, prompts), images, labels)
    loss.backward()
    leaky = gradients(model)
    model.zero_grad(set_to_none=True)

    assert set(leaky) == set(leak) == set(trained) and len(leaky) > 10
    expected = {n: leak[n] + trained[n] for n in leak}
    assert_same_gradients(leaky, expected)
    torch.testing.assert_close(terms["attack_leak"], sum(leaked_losses), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss.detach(), terms["image_adv"] * 0.7 + sum(leaked_losses))

    corrected = dataclasses.replace(config, attack_grad_leak=False)
    loss, terms = method.loss(step_context(corrected, model, prompts), images, labels)
    loss.backward()
    clean = gradients(model)
    assert "attack_leak" not in terms
    assert_same_gradients(clean, trained)  # the same final images
    # the leak has an effect: a sizeable share of the leaky step's gradient
    leak_norm = torch.cat([g.flatten() for g in leak.values()]).norm()
    assert leak_norm > 0.1 * torch.cat([g.flatten() for g in trained.values()]).norm()
    with pytest.raises(AssertionError):
        assert_same_gradients(clean, leaky)


# -- 4. optimizer adam ------------------------------------------------------------------------
def first_adam_step(grad, param, lr, wd, eps):
    """The first Adam step on ``param`` (bias-corrected moments equal g', g'^2)."""
    coupled = grad + wd * param
    return -lr * coupled / (coupled.abs() + eps)


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_adam_decays_every_parameter_coupled_while_adamw_spares_biases(train_data, optimizer):
    lr, wd = 1e-3, 0.2
    config = TrainConfig(optimizer=optimizer, weight_decay=wd, lr=lr)
    model = mmcoa.load_model("tiny-clip")
    model.set_trainable(("image", "text"))
    params = trainable(model)
    images, labels = first_items(train_data, 4)
    model.train()
    class_aware_contrastive_loss(
        model.encode_image(images), model.encode_text(train_data.prompts()), labels, model.logit_scale
    ).backward()
    names = ["model.visual.transformer.resblocks.3.mlp.c_fc.bias", "model.logit_scale"]
    before = {n: params[n].detach().clone() for n in names}
    for name in names:  # a gradient against the parameter, half the decay's size: g' = wd/2 · p
        params[name].grad = -0.5 * wd * before[name]
    optimizer_ = build_optimizer(model, config)
    assert sum(len(g["params"]) for g in optimizer_.param_groups) == len(params)
    optimizer_.step()
    for name in names:
        moved = params[name].detach() - before[name]
        grad = -0.5 * wd * before[name]
        decayed = first_adam_step(grad, before[name], lr, wd, config.adam_eps)  # ≈ -lr·sign(p)
        undecayed = first_adam_step(grad, before[name], lr, 0.0, config.adam_eps)  # ≈ +lr·sign(p)
        nonzero = before[name] != 0
        assert nonzero.any()
        sign = before[name][nonzero].sign()  # the two formulas step in opposite directions
        assert torch.equal(decayed[nonzero].sign(), -sign) and torch.equal(undecayed[nonzero].sign(), sign)
        if optimizer == "adam":  # coupled L2 on biases and logit_scale too
            torch.testing.assert_close(moved, decayed, rtol=1e-4, atol=lr * 1e-5)
        else:  # AdamW: no decay on biases and logit_scale
            torch.testing.assert_close(moved, undecayed, rtol=1e-4, atol=lr * 1e-5)


# -- 5. ft_standard_loss image-feature-ce -----------------------------------------------------
def test_ft_standard_image_feature_ce_and_its_class_count_check(train_data):
    images, labels = first_items(train_data, 6)
    prompts = train_data.prompts()
    config, model, method = set_up("ft-standard", train_data, profile="published")
    assert config.ft_standard_loss == "image-feature-ce"
    method.prepare(model, train_data, list(range(6)), config)  # 4 classes <= 96 dimensions
    loss, terms = method.loss(step_context(config, model, prompts), images, labels)
    with torch.no_grad():
        expected = F.cross_entropy(F.normalize(model.encode_image(images), dim=-1), labels)
    torch.testing.assert_close(loss.detach(), expected)
    torch.testing.assert_close(terms["clean"], expected)

    contrastive = TrainConfig(method="ft-standard")
    assert contrastive.ft_standard_loss == "contrastive"
    other, _ = method.loss(step_context(contrastive, model, prompts), images, labels)
    assert abs(float(other.detach()) - float(expected)) > 1e-3

    many = [f"class {i}" for i in range(97)]  # one more than tiny-clip's 96 dimensions
    fake = SimpleNamespace(
        name="many",
        classnames=many,
        prompts=lambda template=None: [f"a photo of a {c}" for c in many],
    )
    with pytest.raises(MmcoaError) as error:
        method.prepare(model, fake, list(range(6)), config)
    message = str(error.value)
    assert "\n" not in message and "96" in message and "97 classes" in message
    method.prepare(model, fake, list(range(6)), contrastive)  # the corrected loss takes any count


# -- 6. robust_metric adversarial -------------------------------------------------------------
def test_adversarial_robust_metric_counts_attack_alone_and_breaks_ties_to_the_lower_index():
    labels = torch.tensor([0, 0, 1])
    clean = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    attacked = torch.tensor(
        [
            [1.0, 0.0, 0.0],  # wrong clean, right under attack
            [1.0, 1.0, 0.0],  # tie: the true class 0 has the lower index
            [1.0, 1.0, 0.0],  # tie: the true class 1 has the higher index
        ]
    )
    default, published = Tally(), Tally(robust_metric="adversarial")
    default.add(attacked, clean, labels)
    published.add(attacked, clean, labels)
    assert (default.correct, default.clean_correct, default.flipped) == (0, 2, 2)
    assert (published.correct, published.clean_correct, published.flipped) == (2, 2, 1)
    assert published.accuracy == pytest.approx(2 / 3) and default.accuracy == 0
    assert published.attack_success_rate == pytest.approx(1 / 2)
    assert Scoring().robust_metric == "clean-and-adversarial"


# -- 7. records and the command line ----------------------------------------------------------
def test_records_store_the_scoring_switch_and_its_profile(tmp_path):
    pgd = build_attack("pgd", n_steps=2)
    run = dict(n_samples=8, batch_size=8, progress=False)
    published = mmcoa.evaluate(
        "tiny-clip", "synthetic", ["clean", pgd], scoring=Scoring("adversarial"), **run
    )
    corrected = mmcoa.evaluate("tiny-clip", "synthetic", ["clean", pgd], **run)
    for record in published:
        assert (record["profile"], record["switches"]) == ("published", {"robust_metric": "adversarial"})
    for record in corrected:
        assert (record["profile"], record["switches"]) == (
            "corrected",
            {"robust_metric": "clean-and-adversarial"},
        )
    # the adversarial metric never counts fewer than clean-and-adversarial on the same images
    assert published[1]["n_correct"] >= corrected[1]["n_correct"]

    base = ["eval", "--model", "tiny-clip", "--dataset", "synthetic", "--attacks", "clean"]
    base += ["--n-samples", "8", "--device", "cpu", "--no-progress", "--profile", "published"]
    for extra, profile, metric in (
        ([], "published", "adversarial"),
        (["--robust-metric", "clean-and-adversarial"], "corrected", "clean-and-adversarial"),
    ):
        output = tmp_path / f"{profile}.json"
        assert main([*base, *extra, "--output", str(output)]) == 0
        (record,) = json.loads(output.read_text())
        assert (record["profile"], record["switches"]) == (profile, {"robust_metric": metric})


# -- 8. suites --------------------------------------------------------------------------------
def test_published_suite_sets_attack_switches_and_scoring(tmp_path, synthetic_mlm):
    suite = {
        "name": "published",
        "profile": "published",
        "device": "cpu",
        "models": [{"name": "tiny-clip"}],
        "datasets": [{"name": "synthetic"}],
        "attacks": [
            {"name": "bert", "mlm": synthetic_mlm},
            {"label": "own", "name": "bert", "mlm": synthetic_mlm, "candidate_position": "own"},
        ],
    }
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    config = load_suite(path, check_files=False)
    assert config.profile == "published" and config.robust_metric == "adversarial"
    assert [a.params["candidate_position"] for a in config.attacks] == ["preceding", "own"]

    path.write_text(yaml.safe_dump({**suite, "profile": "corrected"}))
    config = load_suite(path, check_files=False)
    assert config.robust_metric == "clean-and-adversarial"
    assert [a.params["candidate_position"] for a in config.attacks] == ["own", "own"]


# -- 9. seeds ---------------------------------------------------------------------------------
def test_a_switch_at_its_corrected_value_leaves_the_seed_unchanged():
    attack = build_attack("coattack")
    params = attack.params()
    assert params["candidate_position"] == "own"
    without = seed_params({k: v for k, v in params.items() if k != "candidate_position"})
    assert seed_identity(attack) == ("coattack", without)
    preceding = seed_identity(build_attack("coattack", candidate_position="preceding"))
    assert preceding != seed_identity(attack)
    assert preceding == ("coattack", {**without, "candidate_position": "preceding"})


# -- VP: TeCoA's code's prompt under the published profile -----------------------------------
def test_published_vp_is_tecoas_pad_prompter_with_its_sgd(tmp_path):
    corrected, published = (TrainConfig(method="vp", profile=p) for p in ("corrected", "published"))
    assert (corrected.vp_prompt, corrected.optimizer, corrected.lr) == ("frame", "adamw", 1e-5)
    assert (published.vp_prompt, published.optimizer, published.lr) == ("pad30", "sgd", 40.0)
    assert published.weight_decay == 0.0 and published.attack_grad_leak is False
    # tiny-clip's 32-px input has no room for a 30-px border: one line, before the run is written
    config = dataclasses.replace(published, max_steps=1, batch_size=4, output=str(tmp_path / "vp"))
    with pytest.raises(MmcoaError) as error:
        train(config, progress=False)
    assert "\n" not in str(error.value) and "pad" in str(error.value)
    assert not (tmp_path / "vp").exists()


# -- the published code's image preprocessing (dataset options) --------------------------------
def test_published_profile_gives_suites_the_published_preprocessing_unless_set(tmp_path):
    def suite(profile, datasets):
        path = tmp_path / f"{profile}-{len(datasets)}.yaml"
        values = {"profile": profile, "models": [{"name": "tiny-clip"}], "attacks": [{"name": "clean"}]}
        path.write_text(yaml.safe_dump({**values, "datasets": datasets}))
        return {d.name: d.options for d in load_suite(path, check_files=False).datasets}

    assert suite("published", ["tiny_imagenet", "cifar10"]) == {
        "tiny_imagenet": {"size": "224"},
        "cifar10": {},
    }
    assert suite("corrected", ["tiny_imagenet"]) == {"tiny_imagenet": {}}
    mine = [{"name": "tiny_imagenet", "options": {"size": "native"}}]
    assert suite("published", mine) == {"tiny_imagenet": {"size": "native"}}  # an explicit option wins
    retrieval = tmp_path / "retrieval.yaml"
    values = {"task": "retrieval", "profile": "published", "models": [{"name": "tiny-clip"}]}
    values |= {"datasets": ["mscoco_karpathy"], "attacks": [{"name": "clean"}]}
    retrieval.write_text(yaml.safe_dump(values))
    [coco] = load_suite(retrieval, check_files=False).datasets
    assert coco.options == {"transform": "bicubic224-crop"}
    values["datasets"] = [{"name": "mscoco_karpathy", "options": {"transform": "nope"}}]
    retrieval.write_text(yaml.safe_dump(values))
    with pytest.raises(MmcoaError, match="transform") as error:
        load_suite(retrieval, check_files=False)
    assert "\n" not in str(error.value)


# -- the weights say what trained them ----------------------------------------------------------
def test_final_weights_and_their_records_say_which_profile_and_switches_trained_them(tmp_path):
    config = TrainConfig(
        method="tecoa",
        profile="published",
        max_steps=1,
        batch_size=4,
        train_steps=1,
        output=str(tmp_path / "r"),
    )
    train(config, progress=False)
    sidecar = json.loads((tmp_path / "r" / "final.pt.json").read_text())
    expected = {name: getattr(config, name) for name in TRAIN_SWITCHES}
    assert sidecar["training"] == {"method": "tecoa", "profile": "published", "switches": expected}
    assert expected["attack_grad_leak"] is False and expected["contrastive_targets"] == "batch"
    [record] = mmcoa.evaluate(
        "tiny-clip",
        "synthetic",
        ["clean"],
        pretrained=str(tmp_path / "r" / "final.pt"),
        n_samples=4,
        progress=False,
    )
    assert record["model_build"]["trained_with"] == sidecar["training"]
    card = (tmp_path / "r" / "export" / "README.md").read_text()
    assert "Behaviour: profile `published` (published switches: `contrastive_targets: batch`" in card
    [plain] = mmcoa.evaluate(
        "tiny-clip", "synthetic", ["clean"], pretrained="random", n_samples=4, progress=False
    )
    assert "trained_with" not in plain["model_build"]
