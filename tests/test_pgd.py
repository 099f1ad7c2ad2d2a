"""PGD: budget and pixel-range invariants, no weight gradients, determinism, and agreement
with torchattacks (an independent implementation) from the same start."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchattacks
from torch import nn

from mmcoa.attacks import PGD, build_attack
from mmcoa.attacks.pgd import maximize, random_start
from mmcoa.errors import MmcoaError, UnknownNameError
from helpers import assert_valid_perturbation


def _l2(x):
    return x.flatten(1).norm(dim=1)


def _fooled(classifier, images, labels):
    with torch.no_grad():
        return classifier.logits(images).argmax(1) != labels


@pytest.mark.parametrize("norm,eps", [("linf", 4 / 255), ("l2", 0.5)])
def test_perturbation_within_budget_and_pixels_valid(classifier, batch, norm, eps):
    images, labels = batch
    adv = PGD(eps=eps, step_size=eps / 2, n_steps=5, norm=norm)(classifier, images, labels).images
    assert_valid_perturbation(adv, images, eps, norm)
    assert (adv - images).abs().max() > 0


def test_random_start_is_uniform_in_the_ball_with_both_signs():
    images = torch.full((64, 3, 8, 8), 0.5)
    generator = torch.Generator().manual_seed(0)
    delta = random_start(images, 4 / 255, "linf", generator)
    assert delta.min() < -3 / 255 and delta.max() > 3 / 255
    assert abs(float(delta.mean())) < 0.1 / 255
    l2_delta = random_start(images, 0.5, "l2", generator)
    norms = _l2(l2_delta)
    assert norms.max() <= 0.5 + 1e-6 and (l2_delta > 0).any() and (l2_delta < 0).any()


def test_random_start_respects_pixel_box():
    images = torch.cat([torch.zeros(4, 3, 8, 8), torch.ones(4, 3, 8, 8)])
    delta = random_start(images, 8 / 255, "linf", torch.Generator().manual_seed(1))
    assert ((images + delta) >= 0).all() and ((images + delta) <= 1).all()


def test_attack_runs_in_eval_mode_and_restores_training_mode(classifier, batch):
    images, labels = batch
    model = classifier.model
    seen = []
    hook = model.model.visual.register_forward_pre_hook(lambda m, a: seen.append(m.training))
    model.train()
    try:
        PGD(eps=1 / 255, n_steps=2)(classifier, images, labels)
    finally:
        hook.remove()
        trained_after = model.training
        model.eval()
    assert seen and not any(seen)
    assert trained_after


def test_same_seed_same_result_other_seed_other_start(classifier, batch):
    images, labels = batch
    attack = PGD(eps=4 / 255, n_steps=3)
    first = attack(classifier, images, labels, torch.Generator().manual_seed(3)).images
    second = attack(classifier, images, labels, torch.Generator().manual_seed(3)).images
    other = attack(classifier, images, labels, torch.Generator().manual_seed(4)).images
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


def test_robust_accuracy_never_above_clean(tiny_model, synthetic_test):
    from mmcoa.eval import evaluate

    records = evaluate(
        tiny_model, synthetic_test, ["clean", PGD(eps=8 / 255, n_steps=5)], batch_size=8, progress=False
    )
    clean, robust = records
    assert robust["accuracy"] <= clean["accuracy"]
    assert robust["top5"] <= clean["top5"]


def test_restarts_only_add_successes(classifier, batch):
    images, labels = batch
    single = PGD(eps=2 / 255, n_steps=2)(classifier, images, labels, torch.Generator().manual_seed(5))
    multi = PGD(eps=2 / 255, n_steps=2, n_restarts=3)(
        classifier, images, labels, torch.Generator().manual_seed(5)
    )
    fooled_single = _fooled(classifier, single.images, labels)
    fooled_multi = _fooled(classifier, multi.images, labels)
    assert (fooled_multi | ~fooled_single).all()
    assert multi.queries > single.queries


def test_loss_increases_over_clean(classifier, batch):
    images, labels = batch
    adv = PGD(eps=8 / 255, step_size=2 / 255, n_steps=10)(classifier, images, labels).images
    with torch.no_grad():
        clean_loss = F.cross_entropy(classifier.logits(images), labels)
        adv_loss = F.cross_entropy(classifier.logits(adv), labels)
    assert adv_loss > clean_loss


class _AsModule(nn.Module):
    """torchattacks wants an nn.Module that maps [0, 1] images to logits."""

    def __init__(self, classifier):
        super().__init__()
        self.model = classifier.model
        self.classifier = classifier

    def forward(self, images):
        return self.classifier.logits(images)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_matches_torchattacks_from_the_same_start(classifier, batch, norm):
    images, labels = batch
    eps, step = (4 / 255, 1 / 255) if norm == "linf" else (0.5, 0.1)
    ours = PGD(eps=eps, step_size=step, n_steps=5, norm=norm, random_start=False)
    reference_cls = torchattacks.PGD if norm == "linf" else torchattacks.PGDL2
    reference = reference_cls(_AsModule(classifier), eps=eps, alpha=step, steps=5, random_start=False)
    expected = reference(images, labels)
    got = ours(classifier, images, labels).images
    assert torch.allclose(got, expected, atol=1e-5)


def test_matches_a_plain_reference_loop_with_random_start(classifier, batch):
    """Same random start (same generator), then the textbook loop written out here."""
    images, labels = batch
    eps, step, steps = 4 / 255, 1 / 255, 4
    got = PGD(eps=eps, step_size=step, n_steps=steps)(
        classifier, images, labels, torch.Generator().manual_seed(11)
    ).images
    noise = torch.rand(images.shape, generator=torch.Generator().manual_seed(11)) * 2 - 1
    adv = (images + noise * eps).clamp(0, 1)
    for _ in range(steps):
        adv.requires_grad_(True)
        loss = F.cross_entropy(classifier.logits(adv), labels, reduction="sum")
        (grad,) = torch.autograd.grad(loss, adv)
        adv = adv.detach() + step * grad.sign()
        adv = (images + (adv - images).clamp(-eps, eps)).clamp(0, 1)
    assert torch.allclose(got, adv, atol=1e-6)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_momentum_follows_a_normalised_velocity_as_fares_training_pgd(classifier, batch, norm):
    """FARE's pgd_train.py, written out here: v = normalise(momentum * v + normalise(grad)), a step
    along v, projection; from the same random start. Momentum 0 is plain PGD; under L-inf the
    sign normalisation makes momentum 0.9 a no-op wherever the gradient is non-zero."""
    images, labels = batch
    eps, step, steps = (4 / 255, 1 / 255, 4) if norm == "linf" else (0.5, 0.1, 4)

    def loss_fn(adv):
        return F.cross_entropy(classifier.logits(adv), labels, reduction="none")

    def unit(g):
        return g.sign() if norm == "linf" else g / g.flatten(1).norm(dim=1).view(-1, 1, 1, 1)

    def run(momentum):
        return maximize(
            loss_fn,
            images,
            eps=eps,
            step_size=step,
            n_steps=steps,
            norm=norm,
            generator=torch.Generator().manual_seed(5),
            momentum=momentum,
        )

    delta = random_start(images, eps, norm, torch.Generator().manual_seed(5))
    velocity = torch.zeros_like(images)
    for _ in range(steps):
        delta.requires_grad_(True)
        (grad,) = torch.autograd.grad(loss_fn(images + delta).sum(), delta)
        velocity = unit(0.9 * velocity + unit(grad))
        delta = delta.detach() + step * velocity
        if norm == "linf":
            delta = delta.clamp(-eps, eps)
        else:
            delta = delta * (eps / delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)).clamp(max=1)
        delta = (images + delta).clamp(0, 1) - images
    with_momentum = run(0.9)
    assert torch.allclose(with_momentum, images + delta, atol=1e-6)
    plain = PGD(eps=eps, step_size=step, n_steps=steps, norm=norm)
    assert torch.equal(run(0.0), plain(classifier, images, labels, torch.Generator().manual_seed(5)).images)
    if norm == "l2":
        assert not torch.allclose(with_momentum, run(0.0), atol=1e-4)  # the velocity changes the path
    else:  # |sign(g)| = 1 > 0.9 |v|: sign(0.9 v + sign(g)) = sign(g) wherever g != 0
        assert torch.equal(with_momentum, run(0.0))


def test_bf16_autocast_path_keeps_invariants(classifier, batch):
    images, labels = batch
    adv = PGD(eps=4 / 255, n_steps=2, precision="bf16")(classifier, images, labels).images
    assert adv.dtype == images.dtype
    assert (adv - images).abs().max() <= 4 / 255 + 1e-6


@pytest.mark.parametrize(
    "params,message",
    [
        (dict(eps=0.0), "eps must be in"),
        (dict(eps=2.0), "eps must be in"),
        (dict(norm="l1"), "norm must be one of linf, l2"),
        (dict(n_steps=0), "n_steps must be in"),
        (dict(step_size=-1.0), "step_size must be in"),
        (dict(precision="fp8"), "precision must be one of"),
        (dict(gamma=1.0), "takes no parameter gamma; accepted: eps"),
    ],
)
def test_bad_parameters_are_one_line_errors(params, message):
    with pytest.raises(MmcoaError, match=message):
        build_attack("pgd", **params)


def test_registry_lookup():
    assert isinstance(build_attack("pgd"), PGD)
    defaults = build_attack("pgd").params()
    assert defaults["eps"] == pytest.approx(1 / 255) and defaults["n_steps"] == 100
    with pytest.raises(UnknownNameError, match="known: .*clean.*pgd"):
        build_attack("fgsm-ish")
