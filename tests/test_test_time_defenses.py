"""Test-time defenses (``mmcoa.models.test_time``): CLIPure-Cos's purification and TTC's
counterattack against hand computations, the gradient modes (full, BPDA, the authors' detached
one, non-adaptive), adaptive attacks at least as strong as non-adaptive ones, seeded draws,
clean accuracy, one-line errors, the records and the gradient-masking checks."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mmcoa
from mmcoa.analysis.sanity import run_sanity
from mmcoa.attacks import build_attack
from mmcoa.cli import main
from mmcoa.errors import MmcoaError
from mmcoa.eval import evaluate
from mmcoa.models import VisionLanguageModel, ZeroShotClassifier
from mmcoa.models.test_time import (
    TTC,
    build_defense,
    clipure_purify,
    defend,
    draw_seeds,
    pixel_clamp,
    ttc_counterattack,
    ttc_weights,
    uniform_noise,
)

pytestmark = pytest.mark.usefixtures("one_thread")

# A TTC the tiny model notices: its counterattack as large as the attack, every image countered
STRONG_TTC = dict(eps=16 / 255, step_size=4 / 255, tau=1.0)


# -- fixtures ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data():
    """(test set, its 32 images, their labels) of 4 synthetic classes."""
    test = mmcoa.load_dataset("synthetic", split="test", n_samples=32, n_classes=4, image_size=28)
    images = torch.stack([test[i][0] for i in range(len(test))])
    return test, images, torch.tensor([test[i][1] for i in range(len(test))])


@pytest.fixture(scope="module")
def trained(data):
    """tiny-clip with its image tower fitted for 15 Adam steps to the synthetic classes (100 %
    clean accuracy; PGD needs eps 16/255 to fool a third): a model attacks and defenses move."""
    test = data[0]
    model = mmcoa.load_model("tiny-clip")
    train = mmcoa.load_dataset("synthetic", split="train", n_samples=64, n_classes=4, image_size=28)
    images = torch.stack([train[i][0] for i in range(len(train))])
    labels = torch.tensor([train[i][1] for i in range(len(train))])
    head = ZeroShotClassifier(model, test.prompts())
    text = head.class_embeddings()
    model.set_trainable(["image"])
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    for _ in range(15):
        loss = F.cross_entropy(head.logits(images, text), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    optimizer.zero_grad()
    model.set_trainable([])
    return model.eval()


class LinearCLIP(VisionLanguageModel):
    """An image 'encoder' ``f(x) = flatten(x) @ W`` (no resize, no normalization): TTC's
    counterattack gradient is then ``2 δ W Wᵀ`` in closed form."""

    def __init__(self, weight: torch.Tensor, size: int):
        super().__init__(
            nn.Identity(), name="linear", pretrained=None, image_size=size, mean=[0] * 3, std=[1] * 3
        )
        self.register_buffer("weight", weight)

    def _encode_pixels(self, pixels):
        return pixels.flatten(1) @ self.weight


def _accuracy(model, test, attack, n=32, **kwargs) -> float:
    records = evaluate(model, test, [attack], n_samples=n, batch_size=32, progress=False, **kwargs)
    return records[0]["accuracy"]


# -- CLIPure-Cos: the purification by hand ------------------------------------------------------
def _turned(phi: float, eta: float) -> float:
    """One normalized step of cos towards e = (1, 0) from angle ``phi``: a turn by atan(eta)."""
    return phi - math.copysign(math.atan(eta), phi)


def test_clipure_step_turns_each_embedding_by_atan_eta_towards_the_blank():
    blank = torch.tensor([1.0, 0.0])
    angles, radii = [0.3, -1.2, 2.9], [1.0, 2.5, 0.7]
    z = torch.tensor([[r * math.cos(a), r * math.sin(a)] for a, r in zip(angles, radii)])
    for steps, eta in [(1, 0.5), (3, 2.0), (4, 30.0)]:
        out = clipure_purify(z, blank, steps, eta, step_norm="sample")
        expected = []
        for a, r in zip(angles, radii):
            for _ in range(steps):
                a = _turned(a, eta)
            expected.append([r * math.cos(a), r * math.sin(a)])
        torch.testing.assert_close(out, torch.tensor(expected), atol=1e-5, rtol=0)


def test_clipure_batch_norm_is_the_authors_batch_coupled_step():
    """Dividing by the whole batch's norm: sample i turns by atan(η sin φ_i / sqrt(Σ_j sin² φ_j))."""
    blank, eta = torch.tensor([1.0, 0.0, 0.0]), 2.0
    angles = [0.4, 1.1]
    z = torch.tensor([[math.cos(a), math.sin(a), 0.0] for a in angles])
    out = clipure_purify(z, blank, 2, eta, step_norm="batch")
    for _ in range(2):
        total = math.sqrt(sum(math.sin(a) ** 2 for a in angles))
        angles = [_turned(a, eta * abs(math.sin(a)) / total) for a in angles]
    expected = torch.tensor([[math.cos(a), math.sin(a), 0.0] for a in angles])
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    alone = clipure_purify(z[:1], blank, 2, eta, step_norm="batch")
    assert not torch.allclose(alone, out[:1], atol=1e-3)  # its batch changes an image's result


def test_clipure_published_settings_return_near_embeddings_to_themselves():
    """η = 30 turns by 88.1° and overshoots; ten steps come back to the start (per sample)."""
    torch.manual_seed(0)
    blank = F.normalize(torch.randn(64), dim=0)
    cos = torch.linspace(0.05, 0.95, 16)[:, None]  # all within 88.1° of the blank
    other = torch.randn(16, 64)
    other = F.normalize(other - (other @ blank)[:, None] * blank, dim=-1)
    z = (cos * blank + (1 - cos**2).sqrt() * other) * torch.linspace(0.5, 4, 16)[:, None]
    torch.testing.assert_close(clipure_purify(z, blank, 10, 30.0), z, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(clipure_purify(z, blank, 9, 30.0), z, atol=1e-2)


def _authors_purify(z, blank, steps, eta, create_graph):
    """CLIPure-Cos as the authors compute it: the step direction by autograd of cos."""
    r = z.norm(dim=-1, keepdim=True)
    u = z / r
    for _ in range(steps):
        point = r * u
        cos = F.cosine_similarity(point, blank[None], dim=-1)
        (grad,) = torch.autograd.grad(cos.sum(), point, create_graph=create_graph)
        d = r * grad
        u = F.normalize(u + eta * d / d.norm(dim=-1, keepdim=True), dim=-1)
    return r * u


@pytest.mark.parametrize("track", [True, False])
def test_clipure_gradients_match_the_authors_autograd(track):
    """``track=True`` is autograd through every step; ``False`` the authors' attack gradient
    (``autograd.grad`` without ``create_graph``)."""
    torch.manual_seed(1)
    blank, z, weights = (torch.randn(*shape, dtype=torch.float64) for shape in [(8,), (3, 8), (3, 8)])
    ours = z.clone().requires_grad_(True)
    (mine,) = torch.autograd.grad((clipure_purify(ours, blank, 3, 0.7, track=track) * weights).sum(), ours)
    theirs = z.clone().requires_grad_(True)
    out = _authors_purify(theirs, blank, 3, 0.7, create_graph=track)
    (expected,) = torch.autograd.grad((out * weights).sum(), theirs)
    torch.testing.assert_close(mine, expected, atol=1e-5, rtol=1e-4)


def test_the_authors_gradient_vanishes_at_the_published_step():
    """Each detached step scales the gradient by 1 / sqrt(1 + η²): 1.7e-15 after ten at η = 30,
    while the true gradient of the (identity) purification is the identity's."""
    torch.manual_seed(2)
    blank = F.normalize(torch.randn(16, dtype=torch.float64), dim=0)
    z = F.normalize(blank + F.normalize(torch.randn(16, dtype=torch.float64), dim=0), dim=0)[None]
    probe = torch.randn(1, 16, dtype=torch.float64)
    probe = probe - (probe * z).sum() * z  # a direction along the sphere
    z.requires_grad_(True)

    def gradient(track):
        direction = F.normalize(clipure_purify(z, blank, 10, 30.0, track=track), dim=-1)
        return torch.autograd.grad((direction * probe).sum(), z)[0]

    torch.testing.assert_close(gradient(True), probe)
    assert gradient(False).norm() / probe.norm() == pytest.approx(901 ** (-5), rel=1e-3)


# -- TTC: the counterattack by hand --------------------------------------------------------------
def test_ttc_counterattack_matches_a_direct_computation():
    torch.manual_seed(3)
    images = torch.rand(2, 3, 4, 4)
    weight = torch.randn(48, 5)
    eps, alpha = 4 / 255, 1 / 255
    start = pixel_clamp(uniform_noise(images, eps, [11, 12]), images)
    encode = lambda x: x.flatten(1) @ weight  # noqa: E731
    anchor = encode(images)
    deltas, signs, tau = ttc_counterattack(encode, images, anchor, start, eps, alpha, 2)
    expected = [start]
    for _ in range(2):
        grad = 2 * (expected[-1].flatten(1) @ weight) @ weight.T  # ∇_δ ||δ W||²
        step = (expected[-1] + alpha * grad.view_as(images).sign()).clamp(-eps, eps)
        expected.append(torch.min(torch.max(step, -images), 1 - images))
    for mine, hand in zip(deltas, expected):
        torch.testing.assert_close(mine, hand)
    torch.testing.assert_close(tau, (start.flatten(1) @ weight).norm(dim=1) / anchor.norm(dim=1))
    assert len(signs) == 2 and (images + deltas[-1]).min() >= 0 and (images + deltas[-1]).max() <= 1


def test_ttc_weights_counterattack_only_falsely_stable_images():
    weights = ttc_weights(torch.tensor([0.1, 0.3, 0.2]), 0.2, 2.0, 2)
    soft = torch.tensor([1.0, math.e**2, math.e**4])
    torch.testing.assert_close(weights[0], soft / soft.sum())
    torch.testing.assert_close(weights[1:], torch.tensor([[1.0, 0, 0], [1.0, 0, 0]]))  # τ ≥ τ_thres


@pytest.mark.parametrize("tau", [1.0, 1e-6])
def test_ttc_model_is_the_direct_pipeline(tau):
    """The defended embedding is ``f(x + Σ w_k δ_k)`` of the direct computation (counterattacked
    with τ_thres 1; the random start alone with τ_thres 1e-6)."""
    torch.manual_seed(4)
    base = LinearCLIP(torch.randn(48, 5), 4)
    images = torch.rand(3, 3, 4, 4)
    settings = TTC(tau=tau, seed=7)
    start = pixel_clamp(uniform_noise(images, settings.eps, draw_seeds(images, 7, 0)), images)
    deltas, _, measured = ttc_counterattack(
        base.encode_image, images, base.encode_image(images), start, settings.eps, settings.step_size, 2
    )
    soft = torch.softmax(torch.tensor([0.0, 2.0, 4.0]), 0)
    delta = sum(w * d for w, d in zip(soft, deltas)) if tau == 1.0 else start
    assert (measured < tau).all() == (tau == 1.0)
    with torch.no_grad():
        torch.testing.assert_close(
            defend(base, settings).encode_image(images), base.encode_image(images + delta)
        )


# -- gradient modes -------------------------------------------------------------------------------
def test_non_adaptive_gradients_are_the_undefended_models(trained, data):
    _, images, labels = data
    x = images[:4].clone().requires_grad_(True)
    defended = defend(trained, "ttc", gradient="undefended", **STRONG_TTC)
    (mine,) = torch.autograd.grad(defended.encode_image(x).sum(), x)
    (plain,) = torch.autograd.grad(trained.encode_image(x).sum(), x)
    torch.testing.assert_close(mine, plain)
    with torch.no_grad():  # a prediction: the defended model
        assert not torch.allclose(defended.encode_image(images[:4]), trained.encode_image(images[:4]))


@pytest.mark.parametrize("gradient", ["full", "bpda"])
def test_adaptive_values_are_the_defended_ones(trained, data, gradient):
    """Whether autograd records or not, the value is the same draw of the defense."""
    images = data[1][:4]
    defended = defend(trained, "ttc", gradient=gradient, eot_samples=2, **STRONG_TTC)
    with torch.no_grad():
        value = defended.encode_image(images)
    x = images.clone().requires_grad_(True)
    tracked = defended.encode_image(x)
    torch.testing.assert_close(tracked.detach(), value, atol=1e-5, rtol=1e-5)
    (grad,) = torch.autograd.grad(tracked.sum(), x)
    assert grad.abs().sum() > 0


def test_clipure_bpda_passes_the_gradient_of_the_base_embedding(trained, data):
    x = data[1][:4].clone().requires_grad_(True)
    defended = defend(trained, "clipure", gradient="bpda", steps=3, sphere_step=1.0)
    (mine,) = torch.autograd.grad(defended.encode_image(x).sum(), x)
    (plain,) = torch.autograd.grad(trained.encode_image(x).float().sum(), x)
    torch.testing.assert_close(mine, plain)


# -- adaptive against non-adaptive --------------------------------------------------------------
@pytest.mark.parametrize("gradient", ["full", "bpda"])
def test_adaptive_ttc_is_at_least_as_strong_as_non_adaptive(trained, data, gradient):
    """APGD-CE at eps 16/255 on the same 32 samples: the non-adaptive attack (the papers')
    leaves TTC at 100 %, the adaptive ones, end to end, near the undefended model's 72 %."""
    test = data[0]
    attack = build_attack("apgd-ce", eps=16 / 255, n_steps=5)
    non_adaptive = _accuracy(defend(trained, "ttc", gradient="undefended", **STRONG_TTC), test, attack)
    adaptive = _accuracy(defend(trained, "ttc", gradient=gradient, **STRONG_TTC), test, attack)
    assert adaptive <= non_adaptive - 4 / 32


def test_adaptive_clipure_is_at_least_as_strong_as_non_adaptive(trained, data):
    """A mild CLIPure (3 steps of η = 1) the tiny model keeps its accuracy under; one sample of
    slack."""
    test = data[0]
    attack = build_attack("apgd-ce", eps=16 / 255, n_steps=10)
    mild = dict(steps=3, sphere_step=1.0, step_norm="batch")
    non_adaptive = _accuracy(defend(trained, "clipure", gradient="undefended", **mild), test, attack)
    adaptive = _accuracy(defend(trained, "clipure", gradient="full", **mild), test, attack)
    assert adaptive <= non_adaptive + 1 / 32


# -- seeds and clean accuracy ----------------------------------------------------------------------
def test_draws_are_seeded_per_image(data):
    images = data[1][:6]
    seeds = draw_seeds(images, 0, 0)
    assert draw_seeds(images[3:4], 0, 0) == seeds[3:4] and draw_seeds(images.flip(0), 0, 0) == seeds[::-1]
    assert len(set(seeds)) == 6 and draw_seeds(images, 1, 0) != seeds and draw_seeds(images, 0, 1) != seeds
    torch.testing.assert_close(
        uniform_noise(images[3:4], 0.1, seeds[3:4]), uniform_noise(images, 0.1, seeds)[3:4]
    )


def test_evaluation_is_deterministic_under_a_seed(trained, data):
    test, images, _ = data
    attack = build_attack("pgd", eps=16 / 255, step_size=4 / 255, n_steps=2)

    def run(seed):
        model = defend(trained, "ttc", eot_samples=2, seed=seed, **STRONG_TTC)
        records = evaluate(
            model, test, ["clean", attack], n_samples=8, batch_size=4, seed=seed, progress=False
        )
        with torch.no_grad():
            return [r["n_correct"] for r in records], model.encode_image(images[:4])

    (counts, features), (again, same) = run(0), run(0)
    assert counts == again and torch.equal(features, same)
    assert not torch.equal(run(1)[1], features)  # another seed, other random starts


def test_clean_accuracy_stays_in_range(trained, data):
    """TTC at its published settings counterattacks clean images too: every one stays right
    (the tiny model's clean accuracy is 100 %); CLIPure-Cos per sample at the published
    settings moves no embedding within 88° of the blank one, and so changes nothing else."""
    test, images, _ = data
    clean = build_attack("clean")
    assert _accuracy(trained, test, clean) == 1.0 == _accuracy(defend(trained, "ttc"), test, clean)
    clipure = defend(trained, "clipure")
    with torch.no_grad():
        z, purified = trained.encode_image(images), clipure.encode_image(images)
    near = F.cosine_similarity(z, clipure.blank_embedding()[None]) > math.cos(math.radians(85))
    assert near.any()
    torch.testing.assert_close(purified[near], z[near], atol=1e-4, rtol=1e-4)


# -- the wrapper ----------------------------------------------------------------------------------
def test_the_wrapper_is_the_base_model_but_for_the_image_embedding(trained):
    defended = defend(trained, "ttc")
    assert defended.logit_scale == trained.logit_scale and defended.device == trained.device
    assert torch.equal(defended.encode_text(["a red stripe"]), trained.encode_text(["a red stripe"]))
    assert defended.text_fingerprint() == trained.text_fingerprint()
    assert defended.name == "tiny-clip" and defended.image_size == trained.image_size
    assert defended.describe() == "tiny-clip (random init) + ttc (adaptive)"
    assert [n for n, _ in defended.tower_parameters("image")] == [
        n for n, _ in trained.tower_parameters("image")
    ]
    defended.resize = "pil"  # set on the base model, which does the resizing
    try:
        assert trained.resize == "pil" == defended.resize
    finally:
        trained.resize = "torch"


@pytest.mark.parametrize("name", ["clipure", "ttc"])
def test_attacks_write_no_parameter_gradients(tiny_model, data, name):
    _, images, labels = data
    assert all(p.requires_grad and p.grad is None for p in tiny_model.parameters())
    head = ZeroShotClassifier(defend(tiny_model, name), data[0].prompts())
    build_attack("pgd", eps=4 / 255, step_size=1 / 255, n_steps=2)(head, images[:4], labels[:4])
    assert all(p.grad is None for p in tiny_model.parameters())


# -- errors and records -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,params,message",
    [
        ("ttc", dict(eps=0), r"eps must be a number in \(0, 1\]"),
        ("ttc", dict(steps=0), "steps must be an integer >= 1"),
        ("ttc", dict(gradient="detached"), "ttc gradient must be one of full, bpda, undefended"),
        ("ttc", dict(eot_samples=2, gradient="undefended"), "eot_samples applies to adaptive gradients"),
        ("ttc", dict(sphere_step=3.0), "defense 'ttc' takes no parameter sphere_step"),
        ("clipure", dict(eot_samples=3), "clipure is deterministic: eot_samples must be 1"),
        ("clipure", dict(step_norm="row"), "step_norm must be one of batch, sample"),
        ("clipure", dict(blank_prompt=" "), "blank_prompt must be a non-empty string"),
        ("clipure", dict(sphere_step=-1.0), "sphere_step must be a number"),
        ("purify", {}, "unknown defense 'purify'; known: clipure, ttc"),
    ],
)
def test_bad_settings_are_one_line_errors(name, params, message):
    with pytest.raises(MmcoaError, match=message) as caught:
        build_defense(name, **params)
    assert "\n" not in str(caught.value)


def test_a_defended_model_is_not_defended_again(tiny_model):
    with pytest.raises(MmcoaError, match="already runs the defense ttc"):
        defend(defend(tiny_model, "ttc"), "clipure")


EVAL = ["eval", "--model", "tiny-clip", "--dataset", "synthetic", "--n-samples", "4", "--no-progress"]


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--defense-eps", "4"], "--defense-eps need --defense"),
        (["--defense", "clipure", "--defense-eps", "4"], "--defense-eps does not apply to clipure"),
        (["--defense", "ttc", "--defense-eps", "0.004"], "a pixel value"),
        (
            ["--defense", "ttc", "--defense-eval", "non-adaptive", "--defense-gradient", "bpda"],
            "drop --defense-gradient",
        ),
        (["--defense", "ttc", "--defense-gradient", "undefended"], "give --defense-eval non-adaptive"),
        (["--defense", "ttc", "--defense-eot-samples", "0"], "eot_samples must be an integer >= 1"),
    ],
)
def test_bad_defense_flags_are_one_line_errors_before_any_work(flags, message, tmp_path, capsys, monkeypatch):
    import mmcoa.eval

    monkeypatch.setattr(mmcoa.eval, "evaluate", lambda *a, **k: pytest.fail("evaluated"))
    assert main([*EVAL, *flags, "--output", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("evaluation", ["adaptive", "non-adaptive"])
def test_records_carry_the_defense_and_the_evaluation_mode(evaluation, tmp_path):
    output = tmp_path / "r.json"
    flags = ["--attacks", "clean,pgd", "--n-steps", "2", "--defense", "ttc", "--defense-eps", "8"]
    assert main([*EVAL, *flags, "--defense-eval", evaluation, "--output", str(output)]) == 0
    for record in json.loads(output.read_text()):
        defense = record["model_build"]["defense"]
        assert defense["name"] == "ttc" and defense["evaluation"] == evaluation
        assert defense["params"]["eps"] == pytest.approx(8 / 255) and defense["params"]["tau"] == 0.2
        assert defense["params"]["gradient"] == ("bpda" if evaluation == "adaptive" else "undefended")
    assert main([*EVAL, "--attacks", "clean", "--output", str(output)]) == 0
    assert "defense" not in json.loads(output.read_text())[0]["model_build"]  # no defense: as before


# -- gradient-masking checks ----------------------------------------------------------------------
def test_sanity_checks_flag_the_non_adaptive_evaluation(trained, data):
    """The papers' protocol on TTC: transferred PGD looks harmless (100 %), Square, black-box
    on the defended model itself, is stronger, and the large eps stays above chance: the
    black-box and large-eps checks fail, as they do for gradient masking."""
    summary = run_sanity(
        defend(trained, "ttc", gradient="undefended", **STRONG_TTC),
        data[0],
        eps=(8, 16),
        steps=(5, 10),
        check_eps=16,
        large_eps=64,
        square_queries=40,
        step_size=8,
        n_samples=12,
        batch_size=12,
    )
    verdicts = {c["name"]: c["passed"] for c in summary["checks"]}
    assert not verdicts["black-box"] and not summary["passed"]
    assert summary["numbers"]["pgd"] == 1.0 > summary["numbers"]["square"]
    assert summary["records"][0]["model_build"]["defense"]["evaluation"] == "non-adaptive"


def test_analyze_sanity_takes_the_defense(tmp_path, capsys):
    from mmcoa.analysis.commands import run_command

    argv = ["--model", "tiny-clip", "--dataset", "synthetic", "--n-samples", "4", "--eps", "1,2"]
    argv += ["--n-steps", "1,2", "--square-queries", "2", "--device", "cpu", "--no-progress"]
    argv += ["--defense", "clipure", "--defense-steps", "2", "--output", str(tmp_path)]
    assert run_command("sanity", argv) == 0
    records = json.loads((tmp_path / "sanity_records.json").read_text())
    assert {r["model_build"]["defense"]["params"]["steps"] for r in records} == {2}
    assert "+ clipure (adaptive)" in records[0]["label"]
