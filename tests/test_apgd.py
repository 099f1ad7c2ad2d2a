"""APGD (apgd, apgd-ce, apgd-t): budget and pixel-range invariants, the AutoAttack ordering
(apgd <= apgd-ce <= clean), no side effects on the model or the caller's RNG, determinism,
query accounting, class-count edge cases, and agreement with torchattacks called directly."""

from __future__ import annotations

import pytest
import torch
import torchattacks

from mmcoa.attacks.apgd import APGD, APGDCE, APGDT, LogitsModule, torchattacks_seed
from mmcoa.attacks.base import ATTACKS, build_attack
from mmcoa.errors import MmcoaError
from mmcoa.models import ZeroShotClassifier
from helpers import assert_valid_perturbation, count_forwarded_samples

NAMES = ("apgd", "apgd-ce", "apgd-t")


def _predictions(classifier, images):
    with torch.no_grad():
        return classifier.logits(images).argmax(1)


def _accuracy(classifier, images, labels):
    return float((_predictions(classifier, images) == labels).float().mean())


@pytest.fixture()
def predicted(classifier, synthetic_test):
    """All 16 images labelled with the tiny model's own predictions: clean accuracy 100%, so
    every sample is attacked and the attacks' strengths can be told apart."""
    images = torch.stack([synthetic_test[i][0] for i in range(16)])
    return images, _predictions(classifier, images)


def _seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def test_registered_on_import():
    assert {"apgd", "apgd-ce", "apgd-t"} <= set(ATTACKS.names())
    assert isinstance(build_attack("apgd"), APGD)
    assert isinstance(build_attack("apgd-ce"), APGDCE)
    assert isinstance(build_attack("apgd-t"), APGDT)
    defaults = build_attack("apgd").params()
    assert defaults == dict(
        eps=pytest.approx(1 / 255),
        norm="linf",
        n_steps=100,
        n_restarts=1,
        seed=0,
        rho=0.75,
        precision="fp32",
        n_target_classes=9,
        n_restarts_targeted=None,
        min_classes_targeted=2,
    )


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("norm,eps", [("linf", 4 / 255), ("l2", 0.5)])
def test_perturbation_within_budget_and_pixels_valid(classifier, predicted, name, norm, eps):
    images, labels = predicted
    targets = {} if name == "apgd-ce" else {"n_target_classes": 1}  # the budget holds for each target
    attack = build_attack(name, eps=eps, norm=norm, n_steps=5, **targets)
    adv = attack(classifier, images, labels, _seeded()).images
    assert_valid_perturbation(adv, images, eps, norm)
    assert adv.shape == images.shape and adv.dtype == images.dtype
    assert (adv - images).abs().max() > 0


def test_pixels_at_the_box_edges_stay_valid(classifier):
    images = torch.cat([torch.zeros(2, 3, 28, 28), torch.ones(2, 3, 28, 28)])
    labels = torch.tensor([0, 1, 2, 3])
    adv = APGD(eps=8 / 255, n_steps=5)(classifier, images, labels, _seeded()).images
    assert adv.min() >= 0 and adv.max() <= 1


@pytest.mark.parametrize("norm,eps", [("linf", 0.1 / 255), ("linf", 0.5 / 255), ("l2", 0.05)])
def test_robust_accuracy_apgd_le_apgd_ce_le_clean(classifier, predicted, norm, eps):
    images, labels = predicted
    clean = _accuracy(classifier, images, labels)
    accuracy = {}
    fooled = {}
    for name in ("apgd-ce", "apgd"):
        adv = build_attack(name, eps=eps, norm=norm, n_steps=5)(classifier, images, labels, _seeded(7)).images
        accuracy[name] = _accuracy(classifier, adv, labels)
        fooled[name] = _predictions(classifier, adv) != labels
    assert accuracy["apgd"] <= accuracy["apgd-ce"] <= clean
    assert (fooled["apgd"] | ~fooled["apgd-ce"]).all()  # APGD-T only adds successes
    assert accuracy["apgd"] < clean


def test_fooled_samples_get_adversarial_images_others_stay_clean(classifier, predicted):
    images, labels = predicted
    adv = APGD(eps=0.5 / 255, n_steps=5)(classifier, images, labels, _seeded()).images
    fooled = _predictions(classifier, adv) != labels
    changed = (adv != images).flatten(1).any(1)
    assert fooled.any() and (~fooled).any()
    assert torch.equal(changed, fooled)


def test_robust_accuracy_never_above_clean_in_evaluate(tiny_model, synthetic_test):
    from mmcoa.eval import evaluate

    records = evaluate(
        tiny_model, synthetic_test, ["clean", APGD(eps=8 / 255, n_steps=5)], batch_size=8, progress=False
    )
    clean, robust = records
    assert robust["accuracy"] <= clean["accuracy"]
    assert robust["queries_per_sample"] == (1 + 1 * (5 + 1)) + (1 + 3 * 1 * (5 + 2))


@pytest.mark.parametrize("name", NAMES)
def test_attack_leaves_parameter_gradients_and_flags_untouched(classifier, predicted, name):
    images, labels = predicted
    model = classifier.model
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    sentinel = torch.full_like(params[0], 7.0)
    params[0].grad = sentinel.clone()
    try:
        build_attack(name, eps=4 / 255, n_steps=3)(classifier, images, labels, _seeded())
        assert torch.equal(params[0].grad, sentinel)
        assert all(p.grad is None for p in params[1:])
        assert [p.requires_grad for p in params] == flags
    finally:
        params[0].grad = None


def test_mixed_requires_grad_flags_restored_exactly(classifier, predicted):
    images, labels = predicted
    model = classifier.model
    before = {name: p.requires_grad for name, p in model.named_parameters()}
    model.set_trainable(["image"])
    try:
        mixed = {name: p.requires_grad for name, p in model.named_parameters()}
        assert any(mixed.values()) and not all(mixed.values())
        APGD(eps=4 / 255, n_steps=3)(classifier, images, labels, _seeded())
        assert {name: p.requires_grad for name, p in model.named_parameters()} == mixed
        assert all(p.grad is None for p in model.parameters())
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(before[name])


@pytest.mark.parametrize("name", NAMES)
def test_runs_in_eval_mode_and_restores_every_module_mode(classifier, predicted, name):
    images, labels = predicted
    model = classifier.model
    seen = []
    hook = model.model.visual.register_forward_pre_hook(lambda m, a: seen.append(m.training))
    model.train()
    frozen_child = next(m for m in model.model.visual.modules() if m is not model.model.visual)
    frozen_child.eval()  # a mixed state: torchattacks' model.train() would flip this one
    modes = {m: m.training for m in model.modules()}
    try:
        build_attack(name, eps=1 / 255, n_steps=2)(classifier, images, labels, _seeded())
        after = {m: m.training for m in model.modules()}
    finally:
        hook.remove()
        model.eval()
    assert seen and not any(seen)
    assert after == modes


def test_adapter_does_not_change_the_wrapped_model_mode(classifier):
    classifier.model.train()
    try:
        adapter = LogitsModule(classifier)
        assert classifier.model.training and not adapter.training
        assert next(adapter.parameters()) is next(classifier.model.parameters())
    finally:
        classifier.model.eval()


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_result_other_seed_other_result(classifier, predicted, name):
    images, labels = predicted
    attack = build_attack(name, eps=4 / 255, n_steps=3)
    first = attack(classifier, images, labels, _seeded(3)).images
    second = attack(classifier, images, labels, _seeded(3)).images
    other = attack(classifier, images, labels, _seeded(4)).images
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


def test_seed_field_used_without_generator(classifier, predicted):
    images, labels = predicted
    first = APGDCE(eps=4 / 255, n_steps=3, seed=1)(classifier, images, labels).images
    second = APGDCE(eps=4 / 255, n_steps=3, seed=1)(classifier, images, labels).images
    other = APGDCE(eps=4 / 255, n_steps=3, seed=2)(classifier, images, labels).images
    assert torch.equal(first, second) and not torch.equal(first, other)


def test_caller_global_rng_state_unchanged(classifier, predicted):
    images, labels = predicted
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    expected = torch.rand(5)
    torch.set_rng_state(state)
    for name in NAMES:
        build_attack(name, eps=4 / 255, n_steps=2)(classifier, images, labels, _seeded())
        build_attack(name, eps=4 / 255, n_steps=2)(classifier, images, labels)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(torch.rand(5), expected)


def test_generator_advances_by_one_draw(classifier, predicted):
    images, labels = predicted
    generator = _seeded(5)
    APGD(eps=1 / 255, n_steps=2)(classifier, images, labels, generator)
    reference = _seeded(5)
    torch.randint(0, 2**31 - 1, (1,), generator=reference)
    assert torch.equal(generator.get_state(), reference.get_state())


def test_works_when_called_under_no_grad(classifier, predicted):
    images, labels = predicted
    expected = APGDCE(eps=4 / 255, n_steps=3)(classifier, images, labels, _seeded()).images
    with torch.no_grad():
        got = APGDCE(eps=4 / 255, n_steps=3)(classifier, images, labels, _seeded()).images
    assert torch.equal(got, expected)


@pytest.mark.parametrize(
    "name,per_sample",
    [
        ("apgd-ce", 1 + 2 * (4 + 1)),
        ("apgd-t", 1 + 3 * 2 * (4 + 2)),
        ("apgd", 1 + 2 * (4 + 1) + 1 + 3 * 2 * (4 + 2)),
    ],
)
def test_queries_count_forward_passes_of_a_sample_never_fooled(classifier, predicted, name, per_sample):
    images, labels = predicted
    counts, hook = count_forwarded_samples(classifier)
    try:
        # a budget too small to fool anyone: every sample goes through every run
        result = build_attack(name, eps=1e-6, n_steps=4, n_restarts=2)(classifier, images, labels, _seeded())
    finally:
        hook.remove()
    assert (_predictions(classifier, result.images) == labels).all()
    assert result.queries == per_sample
    assert sum(counts) == per_sample * len(images)


def test_queries_are_an_upper_bound_when_samples_are_fooled(classifier, predicted):
    images, labels = predicted
    counts, hook = count_forwarded_samples(classifier)
    try:
        result = APGD(eps=4 / 255, n_steps=4, n_restarts=2)(classifier, images, labels, _seeded())
    finally:
        hook.remove()
    assert sum(counts) < result.queries * len(images)


def test_misclassified_samples_come_back_clean(classifier, predicted):
    images, labels = predicted
    wrong = (labels + 1) % classifier.n_classes
    adv = APGD(eps=4 / 255, n_steps=3)(classifier, images, wrong, _seeded()).images
    assert torch.equal(adv, images)


@pytest.mark.parametrize("name", NAMES)
def test_single_sample_batches(classifier, predicted, name):
    images, labels = predicted
    for eps in (1e-6, 8 / 255):  # one sample robust, then one fooled (torchattacks squeezes)
        result = build_attack(name, eps=eps, n_steps=3)(classifier, images[:1], labels[:1], _seeded())
        assert result.images.shape == images[:1].shape
        assert (result.images - images[:1]).abs().max() <= eps + 1e-6


@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize("name", NAMES)
def test_few_classes(tiny_model, synthetic_test, n_classes, name):
    classifier = ZeroShotClassifier(tiny_model, synthetic_test.prompts()[:n_classes])
    images = torch.stack([synthetic_test[i][0] for i in range(8)])
    labels = _predictions(classifier, images)
    result = build_attack(name, eps=8 / 255, n_steps=5)(classifier, images, labels, _seeded())
    assert (result.images - images).abs().max() <= 8 / 255 + 1e-6
    assert _accuracy(classifier, result.images, labels) < 1.0
    if name != "apgd-ce":
        targets = n_classes - 1  # min(9, C - 1)
        assert result.queries >= 1 + targets * (5 + 2)


@pytest.mark.parametrize("name", NAMES)
def test_one_class_returns_images_unchanged(tiny_model, synthetic_test, name):
    classifier = ZeroShotClassifier(tiny_model, synthetic_test.prompts()[:1])
    images = torch.stack([synthetic_test[i][0] for i in range(4)])
    result = build_attack(name, n_steps=2)(classifier, images, torch.zeros(4, dtype=torch.long))
    assert torch.equal(result.images, images) and result.queries == 0


@pytest.mark.parametrize("norm,eps", [("linf", 4 / 255), ("l2", 0.5)])
def test_apgd_ce_matches_torchattacks_called_directly(classifier, predicted, norm, eps):
    images, labels = predicted
    generator = _seeded(9)
    seed = torchattacks_seed(_seeded(9), default=0)
    got = APGDCE(eps=eps, norm=norm, n_steps=6)(classifier, images, labels, generator).images
    reference = torchattacks.APGD(
        LogitsModule(classifier),
        norm={"linf": "Linf", "l2": "L2"}[norm],
        eps=eps,
        steps=6,
        n_restarts=1,
        seed=seed,
        loss="ce",
        rho=0.75,
    )
    with torch.random.fork_rng(devices=[]):
        expected = reference(images, labels)
    assert torch.equal(got, expected)


def test_apgd_t_matches_torchattacks_called_directly(classifier, predicted):
    """Four classes: the targeted DLR loss is torchattacks' own."""
    images, labels = predicted
    got = APGDT(eps=1 / 255, n_steps=6, seed=3)(classifier, images, labels).images
    reference = torchattacks.APGDT(
        LogitsModule(classifier),
        norm="Linf",
        eps=1 / 255,
        steps=6,
        n_restarts=1,
        seed=3,
        rho=0.75,
        n_classes=classifier.n_classes,
    )
    with torch.random.fork_rng(devices=[]):
        expected = reference(images, labels)
    assert torch.equal(got, expected)


def test_robustvlm_restarts_equal_the_two_stages_run_by_hand(classifier, predicted):
    """APGD-CE with 5 restarts, then APGD-T with 1 restart on the samples still robust (RobustVLM's
    AutoAttack), equals the two registered stages composed by hand with the same seed."""
    images, labels = predicted
    got = APGD(eps=0.5 / 255, n_steps=4, n_restarts=3, n_restarts_targeted=1, seed=5)
    adv = got(classifier, images, labels).images
    stage_ce = APGDCE(eps=0.5 / 255, n_steps=4, n_restarts=3, seed=5)(classifier, images, labels).images
    expected = stage_ce.clone()
    still = (_predictions(classifier, stage_ce) == labels).nonzero().flatten()
    stage_t = APGDT(eps=0.5 / 255, n_steps=4, n_restarts=1, seed=5)
    expected[still] = stage_t(classifier, images[still], labels[still]).images
    assert torch.equal(adv, expected)


def test_min_classes_targeted_runs_apgd_ce_alone_below_it(tiny_model, synthetic_test):
    classifier = ZeroShotClassifier(tiny_model, synthetic_test.prompts()[:2])
    images = torch.stack([synthetic_test[i][0] for i in range(8)])
    labels = _predictions(classifier, images)
    alone = APGD(eps=2 / 255, n_steps=3, min_classes_targeted=3)(classifier, images, labels, _seeded())
    ce = APGDCE(eps=2 / 255, n_steps=3)(classifier, images, labels, _seeded())
    assert torch.equal(alone.images, ce.images) and alone.queries == ce.queries


def test_new_fields_at_their_neutral_values_keep_the_seed():
    """Fields added after records were made leave the seed alone at their neutral values."""
    from mmcoa.attacks.base import seed_identity

    before = seed_identity(APGD())
    assert "n_restarts_targeted" not in before[1] and "min_classes_targeted" not in before[1]
    assert seed_identity(APGD(min_classes_targeted=3)) != before


def test_works_on_the_transformers_backend(any_tiny_model, synthetic_test):
    classifier = ZeroShotClassifier(any_tiny_model, synthetic_test.prompts())
    images = torch.stack([synthetic_test[i][0] for i in range(4)])
    labels = _predictions(classifier, images)
    adv = APGD(eps=4 / 255, n_steps=3)(classifier, images, labels, _seeded()).images
    assert (adv - images).abs().max() <= 4 / 255 + 1e-6
    assert all(p.grad is None for p in any_tiny_model.parameters())


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    "params,message",
    [
        (dict(eps=0.0), "eps must be in"),
        (dict(eps=2.0), "eps must be in"),
        (dict(norm="l1"), "norm must be one of linf, l2"),
        (dict(n_steps=0), "n_steps must be in"),
        (dict(n_steps=2.5), "n_steps must be an integer"),
        (dict(n_restarts=0), "n_restarts must be in"),
        (dict(seed=-1), "seed must be in"),
        (dict(seed=1.5), "seed must be an integer"),
        (dict(rho=0.0), "rho must be in"),
        (dict(rho=1.5), "rho must be in"),
        (dict(step_size=1.0), "takes no parameter step_size; accepted: eps"),
    ],
)
def test_bad_parameters_are_one_line_errors(name, params, message):
    with pytest.raises(MmcoaError, match=message) as caught:
        build_attack(name, **params)
    assert "\n" not in str(caught.value)


def test_n_target_classes_validated_and_only_for_targeted():
    for name in ("apgd", "apgd-t"):
        with pytest.raises(MmcoaError, match="n_target_classes must be in"):
            build_attack(name, n_target_classes=0)
    with pytest.raises(MmcoaError, match="takes no parameter n_target_classes"):
        build_attack("apgd-ce", n_target_classes=3)


def test_l2_allows_eps_above_one():
    assert build_attack("apgd", norm="l2", eps=2.0).eps == 2.0
