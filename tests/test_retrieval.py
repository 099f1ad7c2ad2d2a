"""MSCOCO Karpathy retrieval: the loader on a fake on-disk layout, Recall@K against hand-computed
ranks (a tie with a wrong item is a miss), and the retrieval attacks (each image attacked once
with all of its captions)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from mmcoa.attacks.co_attack import embedding_kl
from mmcoa.attacks.pgd import maximize
from mmcoa.attacks.sga import scaled_copies
from mmcoa.data.coco import RetrievalDataset, load_coco_karpathy, pre_caption
from mmcoa.errors import DatasetUnavailableError, MmcoaError, UnknownNameError
from mmcoa.attacks.retrieval import (
    RetrievalCoAttack,
    RetrievalPGD,
    RetrievalSGA,
    build_retrieval_attack,
    coattack_loss,
    encode_texts,
    pgd_loss,
    sga_loss,
)
from mmcoa.eval import retrieval
from mmcoa.eval.retrieval import evaluate_retrieval, recall_at_k
from helpers import assert_valid_perturbation, make_layout


@pytest.fixture(scope="session")
def coco_root(tmp_path_factory):
    return make_layout(tmp_path_factory.mktemp("coco"))


@pytest.fixture(scope="session")
def coco(coco_root):
    return load_coco_karpathy(coco_root, split="test", image_size=32)


@pytest.fixture(scope="session")
def retrieval_mlm(tiny_mlm, coco):
    return tiny_mlm(coco.captions, steps=80)


def batch_of(dataset):
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    rows = dataset.image_to_captions
    owner = torch.tensor([b for b, row in enumerate(rows) for _ in row])
    return images, owner


# -- Recall@K ------------------------------------------------------------------------------------
def test_recall_at_k_against_hand_computed_ranks():
    # images 0, 1, 2 with captions {0, 1}, {2, 3, 4}, {5, 6}
    image_to_captions = [[0, 1], [2, 3, 4], [5, 6]]
    caption_to_image = [0, 0, 1, 1, 1, 2, 2]
    similarity = torch.tensor(
        [
            # c0   c1   c2   c3   c4   c5   c6
            [0.9, 0.1, 0.2, 0.3, 0.0, 0.5, 0.4],  # image 0: own caption 0 ranked 1st -> i2t hit @1
            [0.1, 0.2, 0.3, 0.8, 0.0, 0.7, 0.6],  # image 1: only its 2nd caption (c3) is top 1
            [0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0],  # image 2: best own caption c5 ranked 6th
        ]
    )
    scores = recall_at_k(similarity, image_to_captions, caption_to_image, ks=(1, 5, 10))
    assert scores["i2t_r1"] == pytest.approx(2 / 3)
    assert scores["i2t_r5"] == pytest.approx(2 / 3)
    assert scores["i2t_r10"] == pytest.approx(1.0)
    # text -> image, per caption the rank of its own image in its column:
    # c0: [.9,.1,.6] img0 1st; c1: [.1,.2,.5] img0 3rd; c2: [.2,.3,.4] img1 2nd;
    # c3: [.3,.8,.3] img1 1st; c4: [0,0,.2] img1 2nd (tie with img0, lower index first);
    # c5: [.5,.7,.1] img2 3rd; c6: [.4,.6,0] img2 3rd
    assert scores["t2i_r1"] == pytest.approx(2 / 7)
    assert scores["t2i_r5"] == pytest.approx(1.0)
    assert set(scores) == {f"{d}_r{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)}


def test_recall_chunking_does_not_change_the_result():
    generator = torch.Generator().manual_seed(0)
    image_to_captions = [[3 * i, 3 * i + 1, 3 * i + 2] for i in range(7)]
    caption_to_image = [i for i in range(7) for _ in range(3)]
    similarity = torch.randn(7, 21, generator=generator)
    whole = recall_at_k(similarity, image_to_captions, caption_to_image, ks=(1, 2, 3))
    assert recall_at_k(similarity, image_to_captions, caption_to_image, ks=(1, 2, 3), chunk=2) == whole
    # cross-check text -> image against a plain argsort
    ranks = similarity.T.argsort(dim=1, descending=True)
    expected = (ranks[:, :2] == torch.tensor(caption_to_image)[:, None]).any(1).float().mean()
    assert whole["t2i_r2"] == pytest.approx(float(expected))


def test_recall_ties_are_not_free_hits():
    scores = recall_at_k(torch.zeros(3, 6), [[0, 1], [2, 3], [4, 5]], [0, 0, 1, 1, 2, 2], ks=(1,))
    assert scores == {"i2t_r1": 0.0, "t2i_r1": 0.0}  # a tie with a wrong item is a miss


@pytest.mark.parametrize("case", ["shape", "mapping", "empty", "ks"])
def test_recall_rejects_inconsistent_inputs(case):
    similarity, i2c, c2i, ks = torch.zeros(2, 3), [[0, 1], [2]], [0, 0, 1], (1,)
    if case == "shape":
        similarity = torch.zeros(3, 3)
    elif case == "mapping":
        c2i = [0, 1, 1]
    elif case == "empty":
        similarity, i2c, c2i = torch.zeros(2, 2), [[0, 1], []], [0, 0]
    else:
        ks = (0,)
    with pytest.raises(MmcoaError):
        recall_at_k(similarity, i2c, c2i, ks)


# -- loader --------------------------------------------------------------------------------------
def test_loader_reads_the_karpathy_layout(coco, coco_root):
    assert isinstance(coco, RetrievalDataset) and len(coco) == 3
    assert coco.name == "mscoco_karpathy" and coco.split == "test"
    assert len(coco.captions) == 15 and coco.captions[0] == "a red dog sits on the grass"
    assert coco.caption_to_image == [i for i in range(3) for _ in range(5)]
    assert coco.image_to_captions == [list(range(5 * i, 5 * i + 5)) for i in range(3)]
    image, index = coco[1]
    assert index == 1 and image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert 0 <= image.min() and image.max() <= 1
    assert image[1].mean() > image[0].mean()  # the green one
    assert coco.image_paths[2] == coco_root / "val2014" / "COCO_val2014_000000000002.jpg"
    raw = load_coco_karpathy(coco_root, image_size=32, pre_caption_text=False)
    assert raw.captions[0] == "A red dog sits on the grass."


def test_loader_default_size_is_a_224_centre_crop(coco_root):
    image, _ = load_coco_karpathy(coco_root)[0]
    assert image.shape == (3, 224, 224)


def test_loader_filters_splits(coco_root):
    val = load_coco_karpathy(coco_root, split="val", image_size=32)
    assert len(val) == 1 and val.captions[0].startswith("a yellow")
    train = load_coco_karpathy(coco_root, split="train", image_size=32)
    assert len(train) == 1 and train.captions[0].startswith("a black")  # restval joins train
    assert len(load_coco_karpathy(coco_root, split="restval", image_size=32)) == 1
    with pytest.raises(MmcoaError, match="unknown MSCOCO Karpathy split"):
        load_coco_karpathy(coco_root, split="testing")


def test_subset_keeps_all_captions_of_each_image(coco):
    part = coco.subset([2, 0])
    assert len(part) == 2 and part.captions[:5] == coco.captions[10:15]
    assert part.image_to_captions == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    assert torch.equal(part[0][0], coco[2][0])


def test_pre_caption_matches_albef():
    assert pre_caption("A man's  dog, running -- fast!/ok") == "a mans dog running fast ok"
    assert pre_caption(" ".join(["w"] * 40)).count("w") == 30


def test_missing_root_and_missing_json(tmp_path):
    with pytest.raises(DatasetUnavailableError, match="dataset_coco.json") as info:
        load_coco_karpathy(tmp_path / "nowhere")
    assert "\n" not in str(info.value)
    with pytest.raises(DatasetUnavailableError, match="no .*dataset_coco.json"):
        load_coco_karpathy(tmp_path)


def test_malformed_json_names_the_file(tmp_path):
    (tmp_path / "dataset_coco.json").write_text("{not json")
    with pytest.raises(MmcoaError, match="malformed annotation .*dataset_coco.json") as info:
        load_coco_karpathy(tmp_path)
    assert "\n" not in str(info.value)
    (tmp_path / "dataset_coco.json").write_text(json.dumps([1, 2]))
    with pytest.raises(MmcoaError, match="'images' list"):
        load_coco_karpathy(tmp_path)


def test_annotation_missing_keys_names_the_file(tmp_path):
    make_layout(tmp_path, [{"filepath": "val2014", "filename": "x.jpg", "split": "test"}])
    with pytest.raises(MmcoaError, match=r"dataset_coco.json: images\[5\] lacks key 'sentences'"):
        load_coco_karpathy(tmp_path)
    make_layout(
        tmp_path,
        [{"filepath": "val2014", "filename": "x.jpg", "split": "test", "sentences": [{"tokens": []}]}],
    )
    with pytest.raises(MmcoaError, match="lacks key 'raw'"):
        load_coco_karpathy(tmp_path)


def test_empty_split_and_missing_images(tmp_path):
    (tmp_path / "dataset_coco.json").write_text(
        json.dumps(
            {
                "images": [
                    {"filepath": "val2014", "filename": "a.jpg", "split": "val", "sentences": [{"raw": "x"}]}
                ]
            }
        )
    )
    with pytest.raises(MmcoaError, match="split 'test' .* has no image .*splits present: val"):
        load_coco_karpathy(tmp_path)
    with pytest.raises(DatasetUnavailableError, match="1 of 1 val images are missing"):
        load_coco_karpathy(tmp_path, split="val")


# -- attacks -------------------------------------------------------------------------------------
def attack_inputs(model, dataset):
    images, owner = batch_of(dataset)
    text = encode_texts(model, dataset.captions)
    return images, text, owner


def make_attack(name, mlm):
    if name == "pgd":
        return RetrievalPGD(eps=2 / 255, step_size=0.5 / 255, n_steps=3)
    attack = {"coattack": RetrievalCoAttack, "sga": RetrievalSGA}[name](mlm=mlm, n_steps=3)
    attack.prepare("cpu")
    return attack


def test_losses_over_every_caption(tiny_model, coco):
    """pgd sums the cosine over an image's captions; coattack averages its caption KL (the
    published per-pair KL_img + alpha · KL_txt weighting)."""
    images, text, owner = attack_inputs(tiny_model, coco)
    with torch.no_grad():
        e = tiny_model.encode_image(images, normalize=True)
    cos = e @ text.T
    expected = -torch.stack([cos[i, coco.image_to_captions[i]].sum() for i in range(3)])
    assert torch.allclose(pgd_loss(e, text, owner), expected, atol=1e-5)
    clean = F.normalize(e + 0.1, dim=-1)
    expected = torch.stack(
        [
            embedding_kl(clean[i : i + 1], e[i : i + 1])[0]
            + 3
            * sum(embedding_kl(text[c : c + 1], e[i : i + 1])[0] for c in coco.image_to_captions[i])
            / len(coco.image_to_captions[i])
            for i in range(3)
        ]
    )
    assert torch.allclose(coattack_loss(clean, e, text, owner, 3.0), expected, atol=1e-6)


def test_coattack_with_identical_captions_is_the_per_pair_loss(tiny_model, coco):
    """Co-Attack's per-pair loss KL_img + alpha · KL_txt: an image with 5 copies of one caption
    gets the loss (and the gradient, and the attack) it gets with that caption alone."""
    images, text, _ = attack_inputs(tiny_model, coco)
    images, one = images[:2], text[[0, 5]]
    five, owner_five = one.repeat_interleave(5, 0), torch.arange(2).repeat_interleave(5)
    owner_one = torch.arange(2)
    with torch.no_grad():
        clean = tiny_model.encode_image(images, normalize=True)

    def loss_and_grad(text, owner):
        adv = (images + 0.01).clamp(0, 1).requires_grad_(True)
        loss = coattack_loss(clean, tiny_model.encode_image(adv, normalize=True), text, owner, 3.0)
        return loss.detach(), torch.autograd.grad(loss.sum(), adv)[0]

    (loss5, grad5), (loss1, grad1) = loss_and_grad(five, owner_five), loss_and_grad(one, owner_one)
    assert torch.allclose(loss5, loss1, rtol=1e-5, atol=1e-8)
    assert torch.allclose(grad5, grad1, rtol=1e-4, atol=1e-9)
    attack = RetrievalCoAttack(n_steps=3)
    adv5 = attack.attack_images(tiny_model, images, five, owner_five, torch.Generator().manual_seed(2))
    adv1 = attack.attack_images(tiny_model, images, one, owner_one, torch.Generator().manual_seed(2))
    assert torch.allclose(adv5, adv1, atol=1e-6)


@pytest.mark.parametrize("name", ["pgd", "coattack", "sga"])
def test_each_image_attacked_once_and_the_seed_matters(name, tiny_model, coco, retrieval_mlm, monkeypatch):
    """Budget, gradients, modes and same-seed determinism: tests/test_attack_contract.py."""
    images, text, owner = attack_inputs(tiny_model, coco)
    attack = make_attack(name, retrieval_mlm)
    batch_sizes = []
    encode = tiny_model.encode_image
    monkeypatch.setattr(
        tiny_model, "encode_image", lambda x, **kw: (batch_sizes.append(len(x)), encode(x, **kw))[1]
    )
    first = attack.attack_images(tiny_model, images, text, owner, torch.Generator().manual_seed(4))
    # each image attacked once: every forward sees the 3 images, never 15 per-caption copies
    assert first.shape == images.shape and set(batch_sizes) == {3}
    assert not torch.equal(first, images)
    other = attack.attack_images(tiny_model, images, text, owner, torch.Generator().manual_seed(5))
    assert not torch.equal(first, other)


def test_pgd_lowers_the_summed_caption_similarity(tiny_model, coco):
    images, text, owner = attack_inputs(tiny_model, coco)
    adv = RetrievalPGD(n_steps=10, random_start=False).attack_images(tiny_model, images, text, owner)
    with torch.no_grad():
        before = pgd_loss(tiny_model.encode_image(images, normalize=True), text, owner)
        after = pgd_loss(tiny_model.encode_image(adv, normalize=True), text, owner)
    assert (after > before).all()


def test_sga_loss_sums_every_scale_and_every_caption(tiny_model, coco, monkeypatch):
    images, text, owner = attack_inputs(tiny_model, coco)
    with torch.no_grad():
        unscaled = pgd_loss(tiny_model.encode_image(images, normalize=True), text, owner)
        assert torch.allclose(sga_loss(tiny_model, images, text, owner, ()), unscaled)
        copies = scaled_copies(images, (0.5, 1.5))
        expected = sum(pgd_loss(tiny_model.encode_image(c, normalize=True), text, owner) for c in copies)
        assert torch.allclose(sga_loss(tiny_model, images, text, owner, (0.5, 1.5)), expected, atol=1e-5)
    sizes = []
    encode = tiny_model.encode_image
    monkeypatch.setattr(
        tiny_model, "encode_image", lambda x, **kw: (sizes.append(tuple(x.shape[-2:])), encode(x, **kw))[1]
    )
    RetrievalSGA(n_steps=2, scales=(0.5, 1.5)).attack_images(tiny_model, images, text, owner)
    assert sizes == [(32, 32), (16, 16), (48, 48)] * 2


def plain_copies(images, scales):
    """Independent: the images and their bicubic resizes, no noise (SGA before the noise)."""
    size = images.shape[-1]
    return [images] + [
        F.interpolate(
            images, size=(round(size * s),) * 2, mode="bicubic", align_corners=False, antialias=s < 1
        ).clamp(0, 1)
        for s in scales
    ]


def test_sga_noise_std_zero_is_the_noiseless_attack(tiny_model, coco):
    images, text, owner = attack_inputs(tiny_model, coco)
    attack = RetrievalSGA(n_steps=3, noise_std=0)
    assert attack.params()["noise_std"] == 0

    def noiseless(adv):
        return sum(
            pgd_loss(tiny_model.encode_image(c, normalize=True), text, owner)
            for c in plain_copies(adv, attack.scales)
        )

    expected = maximize(
        noiseless,
        images,
        eps=2 / 255,
        step_size=0.5 / 255,
        n_steps=3,
        generator=torch.Generator().manual_seed(4),
    )
    got = attack.attack_images(tiny_model, images, text, owner, torch.Generator().manual_seed(4))
    assert torch.equal(got, expected)


def test_sga_noise_changes_the_attack(tiny_model, coco):
    """That the noise is seeded (same generator, same images) is the contract test's."""
    images, text, owner = attack_inputs(tiny_model, coco)
    assert RetrievalSGA().noise_std == 0.05 and RetrievalSGA().params()["noise_std"] == 0.05
    run = lambda **p: RetrievalSGA(n_steps=3, **p).attack_images(  # noqa: E731
        tiny_model, images, text, owner, torch.Generator().manual_seed(4)
    )
    noisy, plain = run(), run(noise_std=0)
    assert not torch.equal(noisy, plain)
    for adv in (noisy, plain):
        assert_valid_perturbation(adv, images, 2 / 255)


def test_sga_caption_edits_move_away_from_the_guiding_image(tiny_model, coco, retrieval_mlm):
    attack = make_attack("sga", retrieval_mlm)
    images, text, owner = attack_inputs(tiny_model, coco)
    with torch.no_grad():
        guide = tiny_model.encode_image(images, normalize=True)[owner]
    adversarial, changed = attack.attack_captions(tiny_model, coco.captions, guide)
    assert len(adversarial) == len(coco.captions) and max(changed) <= 1 and sum(changed) > 0
    before = (text * guide).sum(-1)
    after = (encode_texts(tiny_model, adversarial) * guide).sum(-1)
    assert (after <= before + 1e-6).all() and (after < before - 1e-6).any()
    with pytest.raises(ValueError, match="pass image_embeddings"):
        attack.attack_captions(tiny_model, coco.captions)


def test_evaluate_sga_alternates_captions_and_images(tiny_model, coco, retrieval_mlm, monkeypatch):
    guides, outputs, image_embeddings = [], [], []
    attack_captions = RetrievalSGA.attack_captions
    embed_images = retrieval._attacked_image_embeddings

    def spy_captions(self, model, captions, image_embeddings=None):
        guides.append(image_embeddings)
        outputs.append(attack_captions(self, model, captions, image_embeddings))
        return outputs[-1]

    monkeypatch.setattr(RetrievalSGA, "attack_captions", spy_captions)
    monkeypatch.setattr(
        retrieval,
        "_attacked_image_embeddings",
        lambda *a: (image_embeddings.append(embed_images(*a)), image_embeddings[-1])[1],
    )
    record = evaluate_retrieval(
        tiny_model, coco, "sga", mlm=retrieval_mlm, attack_params={"n_steps": 2}, batch_size=2, seed=1
    )
    images, _, owner = attack_inputs(tiny_model, coco)
    with torch.no_grad():
        clean = tiny_model.encode_image(images, normalize=True)
    assert len(guides) == 2 and torch.allclose(guides[0], clean[owner], atol=1e-6)
    assert torch.equal(guides[1], image_embeddings[0][owner]) and not torch.allclose(guides[1], guides[0])
    final_captions, final_changed = outputs[1]
    expected = recall_at_k(
        image_embeddings[0] @ encode_texts(tiny_model, final_captions).T,
        coco.image_to_captions,
        coco.caption_to_image,
    )
    assert {k: record[k] for k in expected} == pytest.approx(expected)
    assert record["n_captions_changed"] == sum(1 for c in final_changed if c)
    assert record["attack"] == "sga" and record["attack_params"]["scales"] == (0.5, 0.75, 1.25, 1.5)
    assert record["attack_params"]["noise_std"] == 0.05


def test_attack_parameters_and_names():
    assert RetrievalCoAttack().step_size == pytest.approx(2 / 255 / 10 * 1.25)
    assert RetrievalCoAttack().text_weight == 3 and RetrievalPGD().eps == pytest.approx(2 / 255)
    assert RetrievalSGA().step_size == pytest.approx(0.5 / 255) and RetrievalSGA().n_steps == 10
    assert RetrievalSGA().eps == pytest.approx(2 / 255) and RetrievalSGA(scales=[2]).scales == (2.0,)
    with pytest.raises(UnknownNameError, match="known: bert, charmer, clean, coattack, pgd, sga"):
        build_retrieval_attack("apgd")
    with pytest.raises(MmcoaError, match="scale must be in"):
        build_retrieval_attack("sga", scales=(0.5, 0))
    with pytest.raises(MmcoaError, match=r"noise_std must be in \[0, 1\]"):
        build_retrieval_attack("sga", noise_std=-0.1)
    with pytest.raises(MmcoaError, match="takes no parameter text_weight"):
        build_retrieval_attack("pgd", text_weight=3)
    with pytest.raises(MmcoaError, match="eps must be in"):
        build_retrieval_attack("pgd", eps=0)


# -- end to end ----------------------------------------------------------------------------------
RECORD_KEYS = {
    "model",
    "pretrained",
    "dataset",
    "split",
    "attack",
    "attack_params",
    "n_images",
    "n_captions",
    "i2t_r1",
    "i2t_r5",
    "i2t_r10",
    "t2i_r1",
    "t2i_r5",
    "t2i_r10",
    "elapsed_s",
    "versions",
}


def test_evaluate_clean_matches_a_direct_computation(tiny_model, coco):
    record = evaluate_retrieval(tiny_model, coco, "clean", batch_size=2)
    assert RECORD_KEYS <= set(record)
    assert record["dataset"] == "mscoco_karpathy" and record["split"] == "test"
    assert record["model"] == "tiny-clip" and record["attack"] == "clean"
    assert (record["n_images"], record["n_captions"]) == (3, 15)
    images, text, _ = attack_inputs(tiny_model, coco)
    with torch.no_grad():
        similarity = tiny_model.encode_image(images, normalize=True) @ text.T
    expected = recall_at_k(similarity, coco.image_to_captions, coco.caption_to_image)
    for key, value in expected.items():
        assert record[key] == pytest.approx(value)
    assert record["t2i_r5"] == 1.0  # only 3 images
    json.dumps(record)


def test_evaluate_from_root_with_a_subset(tiny_model, coco_root):
    record = evaluate_retrieval(tiny_model, coco_root, "clean", n_images=2)
    assert (record["n_images"], record["n_captions"]) == (2, 10)


def test_evaluate_on_given_indices(tiny_model, coco):
    record = evaluate_retrieval(tiny_model, coco, "clean", indices=[2, 0])
    assert (record["n_images"], record["n_captions"]) == (2, 10)
    subset = evaluate_retrieval(tiny_model, coco.subset([2, 0]), "clean")
    assert {k: record[k] for k in ("i2t_r1", "t2i_r1")} == {k: subset[k] for k in ("i2t_r1", "t2i_r1")}


def test_evaluate_pgd_attacks_each_image_once_with_all_captions(tiny_model, coco, monkeypatch):
    calls = []
    original = RetrievalPGD.attack_images

    def spy(self, model, images, text, owner, generator=None):
        calls.append((len(images), len(text), owner.tolist()))
        return original(self, model, images, text, owner, generator)

    monkeypatch.setattr(RetrievalPGD, "attack_images", spy)
    params = {"n_steps": 2}
    first = evaluate_retrieval(tiny_model, coco, "pgd", attack_params=params, batch_size=2, seed=3)
    assert calls == [(2, 10, [0] * 5 + [1] * 5), (1, 5, [0] * 5)]
    second = evaluate_retrieval(tiny_model, coco, "pgd", attack_params=params, batch_size=2, seed=3)
    assert first["attack_params"]["eps"] == pytest.approx(2 / 255)
    assert first["attack_params"]["n_steps"] == 2
    for key in ("i2t_r1", "t2i_r1", "t2i_r5"):
        assert first[key] == second[key]


def test_evaluate_coattack_uses_adversarial_captions(tiny_model, coco, retrieval_mlm, monkeypatch):
    encoded = []
    original = retrieval.encode_texts
    monkeypatch.setattr(
        retrieval,
        "encode_texts",
        lambda model, captions, **kw: (encoded.append(list(captions)), original(model, captions, **kw))[1],
    )
    record = evaluate_retrieval(
        tiny_model, coco, "coattack", mlm=retrieval_mlm, attack_params={"n_steps": 2}, batch_size=3
    )
    assert record["attack"] == "coattack" and RECORD_KEYS <= set(record)
    assert record["attack_params"]["mlm"] == retrieval_mlm
    assert record["attack_params"]["text_weight"] == 3
    assert record["attack_params"]["step_size"] == pytest.approx(2 / 255 / 2 * 1.25)
    assert 0 < record["n_captions_changed"] and record["mean_words_changed"] <= 1
    attack = RetrievalCoAttack(mlm=retrieval_mlm)
    attack.prepare("cpu")
    adversarial, changed = attack.attack_captions(tiny_model, coco.captions)
    assert encoded == [adversarial] and adversarial != coco.captions
    for clean, adv in zip(coco.captions, adversarial):
        a, b = clean.split(), adv.split()
        assert len(a) == len(b) and sum(x != y for x, y in zip(a, b)) <= 1
    assert sum(1 for c in changed if c) == record["n_captions_changed"]


def test_cli_retrieval_writes_one_record_per_attack(coco_root, tmp_path, capsys):
    from mmcoa.cli import main

    output = tmp_path / "retrieval.json"
    code = main(
        [
            "retrieval",
            "--model",
            "tiny-clip",
            "--data-root",
            str(coco_root),
            "--attacks",
            "clean,pgd",
            "--output",
            str(output),
            "--no-progress",
        ]
    )
    assert code == 0
    records = json.loads(output.read_text())
    assert [r["attack"] for r in records] == ["clean", "pgd"]
    assert all(0 <= r["i2t_r1"] <= r["i2t_r5"] <= r["i2t_r10"] <= 1 for r in records)
    assert "t2i R@1/5/10" in capsys.readouterr().out


# -- ties in Recall@K ----------------------------------------------------------------------------
def test_a_retrieval_tie_with_a_wrong_item_is_a_miss():
    similarity = torch.tensor([[1.0, 1.0], [0.0, 1.0]])  # image 0 ties its caption with caption 1
    scores = recall_at_k(similarity, [[0], [1]], [0, 1], ks=(1,))
    assert scores["i2t_r1"] == 0.5 and scores["t2i_r1"] == 0.5


def test_two_own_captions_tied_at_the_top_still_hit():
    similarity = torch.tensor([[1.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
    assert recall_at_k(similarity, [[0, 1], [2]], [0, 0, 1], ks=(1,))["i2t_r1"] == 1.0
