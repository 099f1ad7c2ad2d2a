"""AutoAttack (standard) and Square: the standard budgets, the attack contract (eps-ball, pixel
range, no side effects, determinism), the sequential worst case (never weaker than APGD),
agreement with torchattacks' MultiAttack called directly, query accounting, and the CLI."""

from __future__ import annotations

import json

import pytest
import torch
import torchattacks

from mmcoa.attacks import list_attacks
from mmcoa.attacks.apgd import LogitsModule, torchattacks_seed
from mmcoa.attacks.autoattack import AutoAttack, Square
from mmcoa.attacks.base import build_attack
from mmcoa.cli import main
from mmcoa.errors import MmcoaError
from mmcoa.models import ZeroShotClassifier
from helpers import assert_valid_perturbation, count_forwarded_samples

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(n_steps=4, fab_steps=3, square_queries=15)  # budgets small enough for a unit test
STANDARD = dict(
    eps=pytest.approx(1 / 255),
    norm="linf",
    n_steps=100,
    n_restarts=1,
    seed=0,
    rho=0.75,
    precision="fp32",
    n_target_classes=9,
    fab_steps=100,
    square_queries=5000,
)


def _predictions(classifier, images):
    with torch.no_grad():
        return classifier.logits(images).argmax(1)


def _seeded(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture()
def predicted(classifier, synthetic_test):
    """16 images labelled with the tiny model's own predictions (clean accuracy 100%)."""
    images = torch.stack([synthetic_test[i][0] for i in range(16)])
    return images, _predictions(classifier, images)


@pytest.fixture()
def frozen(classifier):
    """torchattacks called directly, as the reference: parameters frozen (FAB calls
    ``backward``, which would otherwise write ``.grad`` into the shared tiny model), global RNG
    forked; restored afterwards."""
    params = list(classifier.model.parameters())
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        yield LogitsModule(classifier)
    for p, flag in zip(params, flags):
        p.requires_grad_(flag)


# -- budgets -------------------------------------------------------------------------------------
def test_registered_with_the_standard_budgets():
    assert build_attack("autoattack").params() == STANDARD
    listed = {row["name"]: row for row in list_attacks()}
    assert {"autoattack", "square", "noise"} <= set(listed)
    assert listed["autoattack"]["defaults"]["square_queries"] == 5000
    assert build_attack("square").params() == dict(
        eps=pytest.approx(1 / 255), norm="linf", n_queries=5000, n_restarts=1, p_init=0.8, seed=0
    )


def test_stages_are_the_reference_standard_version(classifier):
    """Croce & Hein's set_version('standard'): apgd-ce, apgd-t, fab-t, square; 100 iterations,
    9 targets, 1 restart, 5,000 queries, Square's schedule not rescaled."""
    ce, t, fab, square = AutoAttack().stages(LogitsModule(classifier), seed=5, n_classes=100)
    assert (type(ce), isinstance(t, torchattacks.APGDT), type(fab), type(square)) == (
        torchattacks.APGD,
        True,
        torchattacks.FAB,
        torchattacks.Square,
    )
    assert (ce.steps, ce.loss, ce.n_restarts, ce.eps) == (100, "ce", 1, pytest.approx(1 / 255))
    assert (t.steps, t.n_target_classes, t.n_restarts) == (100, 9, 1)
    assert (fab.steps, fab.n_target_classes, fab.n_restarts, fab.multi_targeted) == (100, 9, 1, True)
    assert (square.n_queries, square.n_restarts, square.p_init, square.loss) == (5000, 1, 0.8, "margin")
    assert square.rescale_schedule is False
    assert {a.seed for a in (ce, t, fab, square)} == {5}


def test_torchattacks_own_standard_version_has_reduced_budgets(classifier):
    """Why mmcoa does not call torchattacks.AutoAttack: its standard version runs 10 iterations
    (the attacks' class defaults) and rescales Square's schedule (docs/attacks.md)."""
    reference = torchattacks.AutoAttack(LogitsModule(classifier), version="standard", seed=0)
    ce, t, fab, square = reference._autoattack.attacks
    assert (ce.steps, t.steps, fab.steps) == (10, 10, 10)
    assert square.n_queries == 5000 and square.rescale_schedule is True


def test_targets_capped_at_the_wrong_classes(classifier):
    _, t, fab, _ = AutoAttack().stages(LogitsModule(classifier), seed=0, n_classes=4)
    assert t.n_target_classes == fab.n_target_classes == 3


# -- contract ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,params", [("autoattack", SMALL), ("square", dict(n_queries=15))])
@pytest.mark.parametrize("norm,eps", [("linf", 4 / 255), ("l2", 2.0)])
def test_perturbation_within_budget_and_pixels_valid(classifier, predicted, name, params, norm, eps):
    images, labels = predicted
    adv = build_attack(name, eps=eps, norm=norm, **params)(classifier, images, labels, _seeded()).images
    assert_valid_perturbation(adv, images, eps, norm)
    assert adv.shape == images.shape and adv.dtype == images.dtype
    assert (_predictions(classifier, adv) != labels).any()


@pytest.mark.parametrize("name,params", [("autoattack", SMALL), ("square", dict(n_queries=15))])
def test_no_parameter_gradient_and_modes_and_flags_restored(classifier, predicted, name, params):
    images, labels = predicted
    model = classifier.model
    params_ = list(model.parameters())
    before = [p.requires_grad for p in params_]
    model.set_trainable(["image"])  # mixed flags
    flags = [p.requires_grad for p in params_]
    model.train()
    modes = {m: m.training for m in model.modules()}
    seen = []
    hook = model.model.visual.register_forward_pre_hook(lambda m, a: seen.append(m.training))
    try:
        build_attack(name, eps=4 / 255, **params)(classifier, images, labels, _seeded())
        assert all(p.grad is None for p in params_)
        assert [p.requires_grad for p in params_] == flags
        assert {m: m.training for m in model.modules()} == modes
        assert seen and not any(seen)
    finally:
        hook.remove()
        model.eval()
        for p, flag in zip(params_, before):
            p.requires_grad_(flag)


def test_caller_global_rng_state_unchanged(classifier, predicted):
    images, labels = predicted
    state = torch.get_rng_state()
    AutoAttack(eps=4 / 255, **SMALL)(classifier, images, labels, _seeded())
    Square(eps=4 / 255, n_queries=5)(classifier, images, labels)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("name,params", [("autoattack", SMALL), ("square", dict(n_queries=15))])
def test_same_seed_same_result_other_seed_other_result(classifier, predicted, name, params):
    images, labels = predicted
    attack = build_attack(name, eps=4 / 255, **params)
    first = attack(classifier, images, labels, _seeded(3)).images
    assert torch.equal(first, attack(classifier, images, labels, _seeded(3)).images)
    assert not torch.equal(first, attack(classifier, images, labels, _seeded(4)).images)


# -- strength ------------------------------------------------------------------------------------
@pytest.mark.parametrize("norm,eps", [("linf", 0.5 / 255), ("l2", 0.05)])
def test_never_correct_where_apgd_fooled(classifier, predicted, norm, eps):
    """The first two stages are exactly ``apgd`` (same seed), later ones only add successes."""
    images, labels = predicted
    fooled = {}
    for name in ("apgd-ce", "apgd", "autoattack"):
        params = SMALL if name == "autoattack" else dict(n_steps=SMALL["n_steps"])
        adv = build_attack(name, eps=eps, norm=norm, **params)(classifier, images, labels, _seeded(7)).images
        fooled[name] = _predictions(classifier, adv) != labels
    assert (fooled["autoattack"] | ~fooled["apgd"]).all()
    assert (fooled["apgd"] | ~fooled["apgd-ce"]).all()
    assert 0 < fooled["apgd-ce"].sum() <= fooled["apgd"].sum() <= fooled["autoattack"].sum() < len(labels)


def test_matches_torchattacks_multiattack_called_directly(classifier, predicted, frozen):
    images, labels = predicted
    got = AutoAttack(eps=0.5 / 255, **SMALL)(classifier, images, labels, _seeded(9)).images
    seed = torchattacks_seed(_seeded(9), default=0)
    stages = [
        torchattacks.APGD(frozen, norm="Linf", eps=0.5 / 255, steps=4, n_restarts=1, seed=seed, loss="ce"),
        torchattacks.APGDT(frozen, norm="Linf", eps=0.5 / 255, steps=4, n_restarts=1, seed=seed, n_classes=4),
        torchattacks.FAB(
            frozen,
            norm="Linf",
            eps=0.5 / 255,
            steps=3,
            n_restarts=1,
            seed=seed,
            multi_targeted=True,
            n_classes=4,
        ),
        torchattacks.Square(
            frozen,
            norm="Linf",
            eps=0.5 / 255,
            n_queries=15,
            n_restarts=1,
            p_init=0.8,
            seed=seed,
            resc_schedule=False,
        ),
    ]
    expected = torchattacks.MultiAttack(stages)(images, labels)
    assert torch.equal(got, expected)


def test_square_matches_torchattacks_called_directly(classifier, predicted, frozen):
    images, labels = predicted
    got = Square(eps=2 / 255, n_queries=30, seed=4)(classifier, images, labels).images
    expected = torchattacks.Square(frozen, eps=2 / 255, n_queries=30, seed=4, resc_schedule=False)(
        images, labels
    )
    assert torch.equal(got, expected)


def test_fooled_samples_get_adversarial_images_others_stay_clean(classifier, predicted):
    images, labels = predicted
    adv = AutoAttack(eps=0.5 / 255, **SMALL)(classifier, images, labels, _seeded()).images
    fooled = _predictions(classifier, adv) != labels
    assert fooled.any() and (~fooled).any()
    assert torch.equal((adv != images).flatten(1).any(1), fooled)


def test_misclassified_samples_come_back_clean(classifier, predicted):
    images, labels = predicted
    wrong = (labels + 1) % classifier.n_classes
    assert torch.equal(AutoAttack(eps=4 / 255, **SMALL)(classifier, images, wrong, _seeded()).images, images)


# -- queries, edge cases, errors -----------------------------------------------------------------
@pytest.mark.parametrize(
    "name,params,per_sample",
    [
        # apgd-ce 1 + 2·(3+1); apgd-t 1 + 3·2·(3+2); fab-t 1 + 3·2·(2·2+3); square 1 + 2·(5+2); 4 checks
        ("autoattack", dict(n_steps=3, fab_steps=2, square_queries=5), 9 + 31 + 43 + 15 + 4),
        ("square", dict(n_queries=5), 15),
    ],
)
def test_queries_count_forward_passes_of_a_sample_never_fooled(
    classifier, predicted, name, params, per_sample
):
    images, labels = predicted
    counts, hook = count_forwarded_samples(classifier)
    try:
        result = build_attack(name, eps=1e-6, n_restarts=2, **params)(classifier, images, labels, _seeded())
    finally:
        hook.remove()
    assert (_predictions(classifier, result.images) == labels).all()
    assert result.queries == per_sample
    assert sum(counts) == per_sample * len(images)


@pytest.mark.parametrize("n_classes", [2, 3])
def test_few_classes(tiny_model, synthetic_test, n_classes):
    classifier = ZeroShotClassifier(tiny_model, synthetic_test.prompts()[:n_classes])
    images = torch.stack([synthetic_test[i][0] for i in range(8)])
    labels = _predictions(classifier, images)
    adv = AutoAttack(eps=8 / 255, **SMALL)(classifier, images, labels, _seeded()).images
    assert_valid_perturbation(adv, images, 8 / 255)
    assert (_predictions(classifier, adv) != labels).any()


def test_single_sample_and_one_class(tiny_model, classifier, predicted, synthetic_test):
    images, labels = predicted
    for eps in (1e-6, 8 / 255):  # robust through every stage, then fooled at once
        adv = AutoAttack(eps=eps, **SMALL)(classifier, images[:1], labels[:1], _seeded()).images
        assert adv.shape == images[:1].shape and (adv - images[:1]).abs().max() <= eps + 1e-6
    one = ZeroShotClassifier(tiny_model, synthetic_test.prompts()[:1])
    result = AutoAttack(**SMALL)(one, images[:4], torch.zeros(4, dtype=torch.long))
    assert torch.equal(result.images, images[:4]) and result.queries == 0


@pytest.mark.parametrize(
    "name,params,message",
    [
        ("autoattack", dict(fab_steps=0), "fab_steps must be in"),
        ("autoattack", dict(square_queries=2.5), "square_queries must be an integer"),
        ("autoattack", dict(n_target_classes=0), "n_target_classes must be in"),
        ("autoattack", dict(norm="l1"), "norm must be one of linf, l2"),
        ("autoattack", dict(eps=0.0), "eps must be in"),
        ("square", dict(n_queries=0), "n_queries must be in"),
        ("square", dict(p_init=1.5), "p_init must be in"),
        ("square", dict(n_steps=3), "takes no parameter n_steps"),
        ("noise", dict(norm="l1"), "norm must be one of linf, l2"),
    ],
)
def test_bad_parameters_are_one_line_errors(name, params, message):
    with pytest.raises(MmcoaError, match=message) as caught:
        build_attack(name, **params)
    assert "\n" not in str(caught.value)


def test_noise_is_uniform_in_the_ball_and_seeded(classifier, predicted):
    images, labels = predicted
    noise = build_attack("noise", eps=4 / 255)
    first = noise(classifier, images, labels, _seeded(1)).images
    assert_valid_perturbation(first, images, 4 / 255)
    assert torch.equal(first, noise(classifier, images, labels, _seeded(1)).images)
    inside = (first - images)[(images > 4 / 255) & (images < 1 - 4 / 255)] * 255 / 4
    assert inside.min() < -0.9 and inside.max() > 0.9 and abs(float(inside.mean())) < 0.05


def test_eval_command_runs_autoattack(tmp_path, capsys):
    """A budget that fools every sample in APGD-CE: the later stages have nothing left to do."""
    output = tmp_path / "r.json"
    code = main(
        [
            "eval",
            "--dataset",
            "synthetic",
            "--model",
            "tiny-clip",
            "--attacks",
            "clean,autoattack",
            "--eps",
            "64",
            "--n-steps",
            "3",
            "--n-samples",
            "8",
            "--output",
            str(output),
            "--no-progress",
        ]
    )
    assert code == 0 and "autoattack" in capsys.readouterr().out
    clean, robust = json.loads(output.read_text())
    assert robust["attack"] == "autoattack" and robust["attack_params"]["n_steps"] == 3
    assert robust["attack_params"]["square_queries"] == 5000
    assert robust["accuracy"] <= clean["accuracy"]
