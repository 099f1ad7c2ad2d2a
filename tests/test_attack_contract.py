"""One contract for every registered attack, as timm runs one test over every registered model:
each name in ``ATTACKS`` (zero-shot classification) and in ``RETRIEVAL_ATTACKS`` (image-text
retrieval), at tiny budgets, must

- keep its adversarial images within eps of the images (its norm) and inside [0, 1];
- leave every model parameter's ``.grad`` as it found it (attacks differentiate with respect
  to their input only);
- restore the train/eval mode of every module;
- give the same output for the same generator seed;
- rebuild from its recorded parameters: ``build_attack(name, **attack.params())``, also after
  the parameters went through JSON as they do in result records.

Every attack also declares its threat, and a setting many attacks take (``eps``, ``mlm``...)
has one declaration (the same help, unit and choices everywhere). A new attack is covered by
registering it; :data:`FAST` gives tiny budgets by field name, so an attack whose slow fields
have the usual names needs no entry.
"""

from __future__ import annotations

import json

import pytest
import torch

from mmcoa.attacks import ATTACKS, RETRIEVAL_ATTACKS, build_attack, build_retrieval_attack
from mmcoa.attacks.base import THREATS, parameter_names, user_settings
from mmcoa.attacks.retrieval import encode_texts
from tiny_mlm import caption_corpus, train_tiny_mlm
from mmcoa.models import ZeroShotClassifier
from mmcoa_demo.pretrain import CAPTION_TEMPLATES
from helpers import assert_valid_perturbation

pytestmark = pytest.mark.usefixtures("one_thread")

# Tiny budgets for the parameters an attack has (eps 4/255 so that a perturbation is visible).
FAST = {
    "eps": 4 / 255,
    "step_size": 1 / 255,
    "n_steps": 2,
    "n_target_classes": 2,
    "fab_steps": 2,
    "square_queries": 8,
    "n_queries": 8,
    "k": 4,
    "n_positions": 4,
}


def fast_params(cls, mlm: str) -> dict:
    fields = parameter_names(cls)
    return {k: v for k, v in {**FAST, "mlm": mlm}.items() if k in fields}


@pytest.fixture(scope="module")
def mlm(tmp_path_factory, synthetic_test):
    corpus = caption_corpus(synthetic_test.classnames, CAPTION_TEMPLATES)
    return str(train_tiny_mlm(corpus, tmp_path_factory.mktemp("mlm") / "mlm", steps=40))


@pytest.fixture()
def watched(tiny_model):
    """The model with one parameter holding a gradient and mixed train/eval modes, checked to
    be exactly so again after the test."""
    params = list(tiny_model.parameters())
    params[0].grad = torch.full_like(params[0], 3.0)
    tiny_model.train()
    modules = list(tiny_model.modules())
    modules[len(modules) // 2].eval()
    modes = [m.training for m in tiny_model.modules()]
    yield tiny_model
    try:
        assert torch.equal(params[0].grad, torch.full_like(params[0], 3.0)), "a .grad was changed"
        appeared = [n for n, p in tiny_model.named_parameters() if p.grad is not None][1:]
        assert appeared == [], "a .grad appeared"
        assert [m.training for m in tiny_model.modules()] == modes, "train/eval modes not restored"
    finally:
        for param in params:
            param.grad = None
        tiny_model.eval()


def check_rebuilds(build, name: str, attack) -> None:
    assert build(name, **attack.params()).params() == attack.params()
    recorded = json.loads(json.dumps(attack.params()))
    assert json.loads(json.dumps(build(name, **recorded).params())) == recorded


@pytest.mark.parametrize("name", ATTACKS.names())
def test_classification_attack_contract(name, mlm, watched, synthetic_test, batch):
    attack = build_attack(name, **fast_params(ATTACKS.get(name), mlm))
    assert attack.name == name
    check_rebuilds(build_attack, name, attack)
    attack.prepare("cpu")
    classifier = ZeroShotClassifier(watched, synthetic_test.prompts())
    images, labels = batch
    runs = [attack(classifier, images, labels, torch.Generator().manual_seed(7)) for _ in range(2)]
    params = attack.params()
    assert_valid_perturbation(runs[0].images, images, params.get("eps", 0), params.get("norm", "linf"))
    assert torch.equal(runs[0].images, runs[1].images)
    assert runs[0].adversarial_prompts == runs[1].adversarial_prompts


@pytest.mark.parametrize("name", RETRIEVAL_ATTACKS.names())
def test_retrieval_attack_contract(name, mlm, watched, synthetic_test, batch):
    attack = build_retrieval_attack(name, **fast_params(RETRIEVAL_ATTACKS.get(name), mlm))
    assert attack.name == name
    check_rebuilds(build_retrieval_attack, name, attack)
    attack.prepare("cpu")
    images = batch[0][:3]
    captions = [p for p in synthetic_test.prompts()[:3] for _ in range(2)]  # two per image
    owner = torch.arange(3).repeat_interleave(2)

    def run():
        with torch.no_grad():
            guide = watched.encode_image(images, normalize=True)[owner] if attack.image_guided else None
        edited, changed = attack.attack_captions(watched, captions, guide)
        text = encode_texts(watched, edited)
        return edited, attack.attack_images(watched, images, text, owner, torch.Generator().manual_seed(7))

    (edited, adversarial), again = run(), run()
    assert len(edited) == len(captions)
    assert_valid_perturbation(adversarial, images, attack.params().get("eps", 0))
    assert edited == again[0] and torch.equal(adversarial, again[1])


@pytest.mark.parametrize("registry", [ATTACKS, RETRIEVAL_ATTACKS], ids=lambda r: r.kind)
def test_every_attack_declares_its_threat(registry):
    threats = {name: registry.get(name).threat for name in registry.names()}
    assert {name: t for name, t in threats.items() if t not in THREATS} == {}


def test_a_setting_shared_by_attacks_has_one_declaration():
    declared: dict[str, set] = {}
    for registry in (ATTACKS, RETRIEVAL_ATTACKS):
        for name in registry.names():
            for f in user_settings(registry.get(name)):
                meta = f.metadata
                declared.setdefault(f.name, set()).add((meta["help"], meta.get("unit"), meta.get("choices")))
    assert {name: found for name, found in declared.items() if len(found) > 1} == {}


def test_a_sep_attack_reuses_its_image_part(mlm, synthetic_test, batch, tiny_model):
    """The paper's multimodal attack is PGD's images plus the attacked prompts: given PGD's
    result it returns those images; without it, it computes the same ones (same seed)."""
    attack = build_attack("multimodal", **fast_params(ATTACKS.get("multimodal"), mlm))
    attack.prepare("cpu")
    part = attack.image_part()
    assert part.name == "pgd" and part.threat == "image"
    assert build_attack("multimodal-joint", mlm=mlm).image_part() is None
    classifier = ZeroShotClassifier(tiny_model, synthetic_test.prompts())
    images, labels = batch
    given = part(classifier, images, labels, torch.Generator().manual_seed(3))
    reused = attack(classifier, images, labels, image_result=given)
    computed = attack(classifier, images, labels, torch.Generator().manual_seed(3))
    assert reused.images is given.images
    assert torch.equal(computed.images, given.images)
    assert reused.queries == computed.queries > given.queries
