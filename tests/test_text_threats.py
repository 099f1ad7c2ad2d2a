"""Text and multimodal threat models on zero-shot classification: budgets, pixel range, words
changed, no weight gradients, determinism, and cross-checks against independent computations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmcoa.attacks import PGD, build_attack
from mmcoa.attacks.co_attack import embedding_kl
from mmcoa.attacks.sga import scaled_copies
from tiny_mlm import caption_corpus, train_tiny_mlm
from mmcoa.eval import evaluate
from mmcoa_demo.pretrain import CAPTION_TEMPLATES
from helpers import assert_valid_perturbation

TEXT_ATTACKS = ("bert", "bert-targeted", "multimodal", "multimodal-joint", "coattack", "sga")
IMAGE_BUDGET = {"multimodal": 4 / 255, "multimodal-joint": 4 / 255, "coattack": 4 / 255, "sga": 4 / 255}


@pytest.fixture(scope="session")
def mlm_dir(tmp_path_factory, synthetic_test):
    corpus = caption_corpus(synthetic_test.classnames, CAPTION_TEMPLATES)
    return str(train_tiny_mlm(corpus, tmp_path_factory.mktemp("mlm") / "mlm", steps=150))


def make(name: str, mlm_dir: str, **params):
    if name in IMAGE_BUDGET:
        params = {"eps": IMAGE_BUDGET[name], "n_steps": 3, **params}
    attack = build_attack(name, mlm=mlm_dir, **params)
    attack.prepare("cpu")
    return attack


def words_of(text: str) -> list[str]:
    return text.split()


@pytest.mark.parametrize("name", TEXT_ATTACKS)
def test_invariants(name, mlm_dir, classifier, batch):
    images, labels = batch
    params = list(classifier.model.parameters())
    params[0].grad = torch.full_like(params[0], 3.0)
    result = make(name, mlm_dir)(classifier, images, labels, torch.Generator().manual_seed(0))
    assert torch.equal(params[0].grad, torch.full_like(params[0], 3.0))
    assert all(p.grad is None for p in params[1:])
    params[0].grad = None
    assert_valid_perturbation(result.images, images, IMAGE_BUDGET.get(name, 0))
    assert result.words_changed.shape == labels.shape
    assert (result.words_changed <= 1).all() and result.queries > 0
    embeddings = result.class_embeddings
    assert embeddings.shape[-2:] == classifier.class_embeddings().shape
    assert torch.allclose(embeddings.norm(dim=-1), torch.ones(embeddings.shape[:-1]), atol=1e-5)


@pytest.mark.parametrize("name", TEXT_ATTACKS)
def test_deterministic_under_a_seed(name, mlm_dir, classifier, batch):
    images, labels = batch
    attack = make(name, mlm_dir)
    first = attack(classifier, images, labels, torch.Generator().manual_seed(1))
    second = attack(classifier, images, labels, torch.Generator().manual_seed(1))
    assert torch.equal(first.images, second.images)
    assert torch.equal(first.class_embeddings, second.class_embeddings)


def test_label_agnostic_prompts_change_at_most_one_word(mlm_dir, classifier, batch):
    images, labels = batch
    result = make("bert", mlm_dir)(classifier, images, labels)
    assert torch.equal(result.images, images)
    for clean, adversarial in zip(classifier.prompts, result.adversarial_prompts):
        a, b = words_of(clean), words_of(adversarial)
        assert len(a) == len(b) and sum(x != y for x, y in zip(a, b)) <= 1
    expected = classifier.encode_prompts(result.adversarial_prompts)
    assert torch.allclose(result.class_embeddings, expected, atol=1e-6)


def test_targeted_never_raises_true_class_probability(mlm_dir, classifier, batch):
    images, labels = batch
    result = make("bert-targeted", mlm_dir)(classifier, images, labels)
    with torch.no_grad():
        clean = classifier.logits(images).softmax(-1)
        attacked = classifier.logits(images, result.class_embeddings).softmax(-1)
    rows = torch.arange(len(labels))
    assert (attacked[rows, labels] <= clean[rows, labels] + 1e-6).all()
    # only each sample's own true-class row may differ from the clean prompt set
    base = classifier.class_embeddings()
    for i, y in enumerate(labels):
        others = [c for c in range(base.shape[0]) if c != y]
        assert torch.equal(result.class_embeddings[i, others], base[others])


def test_separate_multimodal_is_pgd_plus_bert(mlm_dir, classifier, batch):
    images, labels = batch
    multimodal = make("multimodal", mlm_dir)
    got = multimodal(classifier, images, labels, torch.Generator().manual_seed(2))
    pgd = PGD(eps=4 / 255, n_steps=3)(classifier, images, labels, torch.Generator().manual_seed(2))
    bert = make("bert", mlm_dir)(classifier, images, labels)
    assert torch.equal(got.images, pgd.images)
    assert torch.equal(got.class_embeddings, bert.class_embeddings)


def test_joint_multimodal_attacks_the_adversarial_prompt_set(mlm_dir, classifier, batch):
    images, labels = batch
    got = make("multimodal-joint", mlm_dir)(classifier, images, labels, torch.Generator().manual_seed(2))
    target = classifier.with_prompt_set(got.class_embeddings)
    expected = PGD(eps=4 / 255, n_steps=3)(target, images, labels, torch.Generator().manual_seed(2))
    assert torch.equal(got.images, expected.images)


@pytest.mark.parametrize("name", ["coattack", "sga"])
def test_random_start_takes_both_signs(name, mlm_dir, classifier, batch):
    """With a vanishing step, the result is the random start itself."""
    images, labels = batch
    images = images.clamp(0.1, 0.9)
    result = make(name, mlm_dir, step_size=1e-12, n_steps=1)(
        classifier, images, labels, torch.Generator().manual_seed(4)
    )
    delta = result.images - images
    assert (delta > 2 / 255).any() and (delta < -2 / 255).any()


def test_embedding_kl_matches_the_formula():
    p, q = torch.randn(3, 5), torch.randn(3, 5)
    ps, qs = p.softmax(-1), q.softmax(-1)
    expected = (ps * (ps.log() - qs.log())).sum(-1)
    assert torch.allclose(embedding_kl(p, q), expected, atol=1e-6)
    assert torch.allclose(embedding_kl(p, p), torch.zeros(3), atol=1e-6)


def test_coattack_objective_increases(mlm_dir, classifier, batch):
    images, labels = batch
    attack = make("coattack", mlm_dir, n_steps=5)
    result = attack(classifier, images, labels, torch.Generator().manual_seed(0))
    model = classifier.model
    with torch.no_grad():
        clean = model.encode_image(images, normalize=True)
        adv = model.encode_image(result.images, normalize=True)
        text = result.class_embeddings[labels]
    objective = embedding_kl(clean, adv) + 3.0 * embedding_kl(text, adv)
    baseline = 3.0 * embedding_kl(text, clean)
    assert objective.mean() > baseline.mean()


def test_scaled_copies_sizes():
    copies = scaled_copies(torch.rand(2, 3, 20, 20), (0.5, 1.5))
    assert [tuple(c.shape[-2:]) for c in copies] == [(20, 20), (10, 10), (30, 30)]
    assert all(c.min() >= 0 and c.max() <= 1 for c in copies)


def resize(images, size, scale):
    return F.interpolate(images, size=size, mode="bicubic", align_corners=False, antialias=scale < 1)


def test_scaled_copies_noise_is_added_before_each_resize():
    """SGA project (get_scaled_imgs): each scale resizes image + N(0, 0.05²) noise of the full
    image's shape, drawn afresh, and clamps the resized copy; the unscaled copy has no noise."""
    images = torch.rand(2, 3, 20, 20)
    generator = torch.Generator().manual_seed(7)
    plain = scaled_copies(images, (0.5, 1.5), 0.0, generator)
    assert torch.equal(generator.get_state(), torch.Generator().manual_seed(7).get_state())  # no draw
    assert all(torch.equal(c, e) for c, e in zip(plain, scaled_copies(images, (0.5, 1.5))))
    noisy = scaled_copies(images, (0.5, 1.5), 0.05, torch.Generator().manual_seed(7))
    draws = torch.Generator().manual_seed(7)
    expected = [
        resize(images + 0.05 * torch.randn(images.shape, generator=draws), size, s).clamp(0, 1)
        for size, s in (((10, 10), 0.5), ((30, 30), 1.5))
    ]
    assert torch.equal(noisy[0], images)
    assert all(torch.allclose(c, e, atol=1e-6) for c, e in zip(noisy[1:], expected))
    assert not torch.allclose(noisy[1], plain[1], atol=1e-3)
    assert all(c.min() >= 0 and c.max() <= 1 for c in noisy)


def test_sga_noise_std_zero_is_the_noiseless_attack(mlm_dir, classifier, batch, monkeypatch):
    from mmcoa.attacks import sga

    images, labels = batch

    def run():
        return make("sga", mlm_dir, noise_std=0)(
            classifier, images, labels, torch.Generator().manual_seed(3)
        ).images

    def plain(x, scales, *_):
        return [x] + [resize(x, (round(x.shape[-1] * s),) * 2, s).clamp(0, 1) for s in scales]

    got = run()
    monkeypatch.setattr(sga, "scaled_copies", plain)
    assert torch.equal(got, run())


def test_sga_noise_is_seeded_and_changes_the_attack(mlm_dir, classifier, batch):
    from mmcoa.errors import MmcoaError

    images, labels = batch
    assert make("sga", mlm_dir).params()["noise_std"] == 0.05

    def run(**p):
        return make("sga", mlm_dir, **p)(classifier, images, labels, torch.Generator().manual_seed(3)).images

    noisy, again, plain = run(), run(), run(noise_std=0)
    assert torch.equal(noisy, again) and not torch.equal(noisy, plain)
    for adv in (noisy, plain):
        assert_valid_perturbation(adv, images, IMAGE_BUDGET["sga"])
    with pytest.raises(MmcoaError, match=r"noise_std must be in \[0, 1\]"):
        build_attack("sga", noise_std=2)


def test_records_report_words_and_queries(mlm_dir, tiny_model, synthetic_test):
    attacks = ["clean", make("bert", mlm_dir), make("multimodal", mlm_dir)]
    clean, bert, multimodal = evaluate(tiny_model, synthetic_test, attacks, batch_size=8, progress=False)
    assert clean["mean_words_changed"] == 0 and clean["adversarial_prompts"] is None
    assert 0 < bert["mean_words_changed"] <= 1
    assert bert["attack_params"]["mlm"] == mlm_dir
    assert len(bert["adversarial_prompts"]) == len(synthetic_test.classnames)
    assert multimodal["queries_per_sample"] > bert["queries_per_sample"]
    assert bert["accuracy"] <= clean["accuracy"] and multimodal["accuracy"] <= clean["accuracy"]


def test_text_attack_parameters_are_validated():
    from mmcoa.errors import MmcoaError

    with pytest.raises(MmcoaError, match="k must be in"):
        build_attack("bert", k=0)
    with pytest.raises(MmcoaError, match="max_words must be in"):
        build_attack("multimodal", max_words=0)
    with pytest.raises(MmcoaError, match="eps must be in"):
        build_attack("coattack", eps=0.0)


def test_missing_mlm_fails_before_any_work(tiny_model, synthetic_test):
    from mmcoa.errors import MmcoaError

    with pytest.raises(MmcoaError, match="masked LM"):
        evaluate(tiny_model, synthetic_test, [build_attack("bert", mlm="no-org/no-such-mlm")], progress=False)
