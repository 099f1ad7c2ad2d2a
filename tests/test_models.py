"""The model layer: one behavioural contract for both backends, loading and its errors, prompts
trimmed to the batch, QuickGELU checkpoints, weight fingerprints, the PIL-equivalent resize."""

from __future__ import annotations

import gc
import json
import time
from pathlib import Path

import numpy as np
import open_clip
import open_clip.factory
import open_clip.pretrained
import pytest
import torch

import mmcoa
from mmcoa.errors import MmcoaError, UnknownNameError, WeightsUnavailableError
from mmcoa.models import TOWERS, ZeroShotClassifier, load_model
from mmcoa.models.hf_backend import check_tokenizer
from mmcoa.train.config import TrainConfig

PROMPTS = ["This is a photo of a dog", "This is a photo of a coat", "a bag"]


def test_encoders_give_one_embedding_per_input(any_tiny_model):
    images = torch.rand(3, 3, 28, 28)
    assert any_tiny_model.encode_image(images).shape == (3, 96)
    assert any_tiny_model.encode_text(PROMPTS).shape == (3, 96)
    normalized = any_tiny_model.encode_text(PROMPTS, normalize=True)
    assert torch.allclose(normalized.norm(dim=-1), torch.ones(3), atol=1e-5)


def test_batch_items_are_encoded_independently(any_tiny_model):
    images = torch.rand(4, 3, 28, 28)
    with torch.no_grad():
        together = any_tiny_model.encode_image(images)
        alone = torch.cat([any_tiny_model.encode_image(images[i : i + 1]) for i in range(4)])
        texts = torch.cat([any_tiny_model.encode_text([p]) for p in PROMPTS])
    assert torch.allclose(together, alone, atol=1e-5)
    assert torch.allclose(any_tiny_model.encode_text(PROMPTS), texts, atol=1e-5)


def test_resize_and_normalization_happen_inside(any_tiny_model):
    size = any_tiny_model.image_size
    images = torch.rand(2, 3, 28, 28)
    pixels = any_tiny_model.preprocess(images)
    assert tuple(pixels.shape[-2:]) == size
    native = torch.rand(2, 3, *size)
    expected = (native - any_tiny_model.pixel_mean) / any_tiny_model.pixel_std
    assert torch.equal(any_tiny_model.preprocess(native), expected)
    assert any_tiny_model.encode_image(torch.rand(1, 3, 64, 48)).shape == (1, 96)


def test_gradient_flows_to_pixels(any_tiny_model):
    images = torch.rand(2, 3, 28, 28, requires_grad=True)
    any_tiny_model.encode_image(images).sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    any_tiny_model.zero_grad(set_to_none=True)


def test_bad_image_shape_is_one_line_error(any_tiny_model):
    with pytest.raises(MmcoaError, match="shape"):
        any_tiny_model.encode_image(torch.rand(3, 28, 28))


def test_logit_scale_is_positive_and_clamped(any_tiny_model):
    scale = any_tiny_model.logit_scale
    assert 0 < float(scale) <= 100
    raw = any_tiny_model._raw_logit_scale()
    with torch.no_grad():
        old = raw.clone()
        raw.fill_(10.0)
        assert float(any_tiny_model.logit_scale) == 100.0
        raw.copy_(old)


def test_towers_partition_the_parameters(any_tiny_model):
    image = {n for n, _ in any_tiny_model.tower_parameters("image")}
    text = {n for n, _ in any_tiny_model.tower_parameters("text")}
    everything = {n for n, _ in any_tiny_model.model.named_parameters()}
    assert image and text and not image & text
    assert everything - image - text == {"logit_scale"}
    with pytest.raises(UnknownNameError, match="image, text"):
        list(any_tiny_model.tower_parameters("audio"))


@pytest.mark.parametrize("towers", [("image",), ("text",), TOWERS, ()])
def test_set_trainable_freezes_other_towers(towers):
    model = load_model("tiny-clip")
    model.set_trainable(towers)
    for tower in TOWERS:
        flags = {p.requires_grad for _, p in model.tower_parameters(tower)}
        assert flags == {tower in towers}
    loss = model.encode_image(torch.rand(2, 3, 28, 28)).sum() + model.encode_text(PROMPTS).sum()
    if towers:
        loss.backward()
    for tower in TOWERS:
        got_grad = {p.grad is not None for _, p in model.tower_parameters(tower)}
        assert got_grad == {tower in towers}


def test_text_fingerprint_tracks_in_place_updates(any_tiny_model):
    before = any_tiny_model.text_fingerprint()
    assert any_tiny_model.text_fingerprint() == before
    _, param = next(any_tiny_model.tower_parameters("text"))
    with torch.no_grad():
        param.add_(0.0)
    assert any_tiny_model.text_fingerprint() != before


def test_random_init_is_deterministic_and_leaves_global_rng(any_tiny_model):
    state = torch.random.get_rng_state()
    again = load_model(any_tiny_model.name)
    assert torch.equal(torch.random.get_rng_state(), state)
    for (n, a), (_, b) in zip(any_tiny_model.model.state_dict().items(), again.model.state_dict().items()):
        assert torch.equal(a, b), n


@pytest.mark.parametrize("name", ["tiny-clip", "tiny-clip-hf"])
def test_checkpoint_round_trip(tmp_path, name):
    model = load_model(name)
    with torch.no_grad():
        for p in model.model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = tmp_path / "weights.pt"
    torch.save(model.model.state_dict(), path)
    loaded = load_model(name, pretrained=str(path))
    images = torch.rand(2, 3, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(images), model.encode_image(images))
        assert torch.equal(loaded.encode_text(PROMPTS), model.encode_text(PROMPTS))


def test_plain_open_clip_loads_our_checkpoint(tmp_path, tiny_model):
    path = tmp_path / "tiny.pt"
    torch.save(tiny_model.model.state_dict(), path)
    plain = open_clip.create_model("tiny-clip", pretrained=str(path))
    for key, value in tiny_model.model.state_dict().items():
        assert torch.equal(plain.state_dict()[key], value), key


def test_wrapper_state_dict_also_loads(tmp_path, tiny_model):
    path = tmp_path / "wrapped.pt"
    torch.save({"state_dict": tiny_model.state_dict()}, path)
    loaded = load_model("tiny-clip", pretrained=str(path))
    assert torch.equal(loaded.model.logit_scale, tiny_model.model.logit_scale)


def test_safetensors_checkpoint(tmp_path, tiny_model):
    from safetensors.torch import save_file

    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_model.model.state_dict().items()}, str(path))
    loaded = load_model("tiny-clip", pretrained=str(path))
    assert torch.equal(loaded.model.logit_scale, tiny_model.model.logit_scale)


@pytest.mark.parametrize("name", ["tiny-clip", "tiny-clip-hf"])
def test_missing_corrupt_and_mismatched_checkpoints(tmp_path, name):
    with pytest.raises(MmcoaError, match="does not exist"):
        load_model(name, pretrained=str(tmp_path / "absent.pt"))
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x80\x04 this is not a checkpoint")
    with pytest.raises(MmcoaError, match="corrupt or unreadable"):
        load_model(name, pretrained=str(corrupt))
    wrong = tmp_path / "wrong.pt"
    torch.save({"some.weight": torch.zeros(3)}, wrong)
    with pytest.raises(MmcoaError, match="does not fit model"):
        load_model(name, pretrained=str(wrong))
    not_tensors = tmp_path / "list.pt"
    torch.save([1, 2, 3], not_tensors)
    with pytest.raises(MmcoaError, match="no state dict"):
        load_model(name, pretrained=str(not_tensors))


def test_unknown_names_list_what_is_accepted():
    with pytest.raises(UnknownNameError, match="tiny-clip.*hf-hub:"):
        load_model("resnet-9000")
    with pytest.raises(UnknownNameError, match="known tags: openai"):
        load_model("ViT-B-32", pretrained="not-a-tag")


def test_real_architecture_requires_explicit_weights():
    with pytest.raises(MmcoaError, match="needs --pretrained.*random"):
        load_model("ViT-B-32")


@pytest.mark.parametrize(
    "name,pretrained",
    [
        ("ViT-B-32", "openai"),
        ("hf-hub:timm/vit_base_patch32_clip_224.openai", None),
        ("hf:openai/clip-vit-base-patch32", None),
    ],
)
def test_unobtainable_weights_fail_fast_with_one_line(name, pretrained):
    started = time.perf_counter()
    with pytest.raises(WeightsUnavailableError) as info:
        load_model(name, pretrained=pretrained)
    assert time.perf_counter() - started < 10
    message = str(info.value)
    assert "\n" not in message and "cannot obtain weights" in message


def test_unreachable_hub_forces_offline_even_without_env(monkeypatch):
    from mmcoa.models import hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "host_reachable", lambda *a, **k: False)
    started = time.perf_counter()
    with pytest.raises(WeightsUnavailableError, match="hub is unreachable"):
        load_model("ViT-B-32", pretrained="openai")
    assert time.perf_counter() - started < 10


def test_empty_offline_tokenizer_is_refused():
    class EmptyTokenizer:
        def __len__(self):
            return 2

    with pytest.raises(MmcoaError, match="has 2 tokens"):
        check_tokenizer(EmptyTokenizer(), 49408, "hf:some/model")


def test_hf_directory_backend(tmp_path):
    """A local transformers directory (config, weights, tokenizer) loads through hf:<dir>."""
    source = load_model("tiny-clip-hf")
    source.model.save_pretrained(tmp_path)
    source.tokenizer.save_pretrained(tmp_path)
    for name in (f"hf:{tmp_path}", str(tmp_path)):
        loaded = load_model(name)
        assert len(loaded.tokenizer) == len(source.tokenizer)
        with torch.no_grad():
            assert torch.allclose(loaded.encode_text(PROMPTS), source.encode_text(PROMPTS), atol=1e-6)


def test_hf_directory_without_tokenizer_is_refused(tmp_path):
    load_model("tiny-clip-hf").model.save_pretrained(tmp_path)
    with pytest.raises(MmcoaError, match=r"tokenizer|cannot obtain"):
        load_model(f"hf:{tmp_path}")


def test_public_entry_point():
    assert mmcoa.load_model is load_model


# -- prompts trimmed to the batch's longest, token ids cached per string -------------------------
SHORT = ["a", "a dog", "This is a photo of a cat", "This is a photo of a t shirt top"]


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


def test_models_of_one_architecture_share_one_tokenizer_and_copies_share_it():
    """Built once per configuration (parsing the BPE file costs more than a tiny model), equal
    to open_clip's own; a configuration registered again under the name gets its own."""
    import copy

    import open_clip

    from mmcoa.models.open_clip_backend import tokenizer_of

    first, second = mmcoa.load_model("tiny-clip"), mmcoa.load_model("tiny-clip")
    assert first.tokenizer is second.tokenizer
    assert torch.equal(first.tokenizer(SHORT), open_clip.get_tokenizer("tiny-clip")(SHORT))
    config = open_clip.get_model_config("tiny-clip")
    changed = {**config, "text_cfg": {**config["text_cfg"], "context_length": 7}}
    stub = type("OpenClip", (), {"get_model_config": staticmethod(lambda name: changed)})
    stub.get_tokenizer = staticmethod(lambda name: ("built for", name))
    assert tokenizer_of(stub, "tiny-clip") == ("built for", "tiny-clip")  # not the cached one
    copied = copy.deepcopy(first, memo=first.copy_memo())
    assert copied.tokenizer is first.tokenizer and copied.token_cache is first.token_cache
    assert copied.model is not first.model
    for (name, a), b in zip(first.state_dict().items(), copied.state_dict().values()):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr(), name


def test_a_file_loads_without_random_init_into_the_saved_model(tmp_path, monkeypatch):
    """A checkpoint replaces every parameter, so the model it loads into is built with its
    parameters uninitialized (random init is most of a load's time): it equals the saved
    model, buffers included, and the initializers are back afterwards."""
    saved = mmcoa.load_model("tiny-clip", pretrained="random")
    with torch.no_grad():
        for param in saved.parameters():
            param.add_(1.0)  # away from what a seeded random init would give
    torch.save(saved.model.state_dict(), tmp_path / "w.pt")
    initialized = []
    monkeypatch.setattr(torch.nn.init, "normal_", lambda t, *a, **k: initialized.append(t) or t)
    loaded = mmcoa.load_model("tiny-clip", pretrained=str(tmp_path / "w.pt"))
    assert not any(isinstance(t, torch.nn.Parameter) for t in initialized)
    for which in ("named_parameters", "named_buffers"):
        theirs, ours = dict(getattr(saved, which)()), dict(getattr(loaded, which)())
        assert theirs.keys() == ours.keys()
        assert all(torch.equal(theirs[k], ours[k]) for k in theirs), which
    mmcoa.load_model("tiny-clip", pretrained="random")
    assert any(isinstance(t, torch.nn.Parameter) for t in initialized)  # random init initializes


def test_initializers_skip_only_parameters_and_only_inside_the_context():
    """Buffers (Hugging Face's non-persistent ``token_type_ids``) are initialized; an
    initializer a library took inside the context (transformers, at its first import, did in
    the demo's spawned process) initializes parameters once the context has ended."""
    from mmcoa.models.skip_init import parameters_left_uninitialized

    original = torch.nn.init.zeros_
    parameter, buffer = torch.nn.Parameter(torch.ones(3)), torch.ones(3)
    with parameters_left_uninitialized():
        taken = torch.nn.init.zeros_
        taken(parameter), taken(buffer)
        assert parameter.tolist() == [1, 1, 1] and buffer.tolist() == [0, 0, 0]
        with pytest.raises(ZeroDivisionError):
            with parameters_left_uninitialized():
                raise ZeroDivisionError
        taken(parameter)
        assert parameter.tolist() == [1, 1, 1]  # the outer context is still open
    assert torch.nn.init.zeros_ is original
    taken(parameter)
    assert parameter.tolist() == [0, 0, 0]


def test_a_text_context_survives_a_batch_shorter_than_it(tiny_model):
    from mmcoa.models.prompts import text_context_for

    model = mmcoa.load_model("tiny-clip")
    model.text_prompt = text_context_for(model, n_ctx=4)
    assert model.encode_text(["a"]).shape == (1, 96)


# -- QuickGELU, weight fingerprints, registration at import, resize ------------------------------
def meta_sidecar(path):
    from mmcoa.models.checkpoints import meta_sidecar as sidecar  # imported late: each test fails

    return sidecar(path)  # alone on the code before its fix, instead of the whole module


QUICK_TAG = "fake_openai"  # open_clip cleans tags to lower case with underscores


# -- QuickGELU ------------------------------------------------------------------------------
@pytest.fixture()
def quick_gelu_tag(monkeypatch, tmp_path):
    """A pretrained tag of tiny-clip whose config says quick_gelu (like ViT-B-32's 'openai'),
    its 'download' stubbed to a local file of QuickGELU-trained weights."""
    weights = tmp_path / "tiny-quickgelu.pt"
    torch.save(open_clip.create_model("tiny-clip", force_quick_gelu=True).state_dict(), weights)
    tags = {QUICK_TAG: open_clip.pretrained._pcfg(url="https://example.invalid/w.pt", quick_gelu=True)}
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, "tiny-clip", tags)
    monkeypatch.setattr(open_clip.factory, "download_pretrained", lambda cfg, cache_dir=None: str(weights))
    return weights


def test_a_quick_gelu_tag_builds_quick_gelu(quick_gelu_tag):
    assert load_model("tiny-clip", pretrained=QUICK_TAG).quick_gelu
    assert not load_model("tiny-clip").quick_gelu  # the architecture's own activation otherwise


def test_vit_b_32_openai_asks_open_clip_for_quick_gelu(monkeypatch):
    """No weights needed: the factory call for the 'openai' tag must force QuickGELU."""
    assert open_clip.get_pretrained_cfg("ViT-B-32", "openai")["quick_gelu"]
    calls = []

    def fake_create_model(name, **kwargs):
        calls.append((name, kwargs))
        raise RuntimeError("stop here")

    monkeypatch.setattr(open_clip, "create_model", fake_create_model)
    with pytest.raises(MmcoaError):  # the factory's error, as one line
        load_model("ViT-B-32", pretrained="openai")
    assert calls and calls[0][1].get("force_quick_gelu") is True


def test_fine_tuned_quick_gelu_weights_reload_as_quick_gelu(quick_gelu_tag, tmp_path):
    """The export records the activation, so `tiny-clip` + final.pt cannot switch back to GELU
    (open_clip issue #771's trap); a checkpoint payload (last.pt) carries it too."""
    config = TrainConfig(
        method="ft-standard",
        model="tiny-clip",
        pretrained=QUICK_TAG,
        batch_size=16,
        max_steps=1,
        keep_resume_state=True,
        output=str(tmp_path / "run"),
    )
    mmcoa.train.train(config, progress=False)
    final = tmp_path / "run" / "final.pt"
    assert json.loads(Path(meta_sidecar(final)).read_text())["quick_gelu"] is True
    for path in (final, tmp_path / "run" / "checkpoints" / "last.pt"):
        assert load_model("tiny-clip", pretrained=str(path)).quick_gelu, path
    plain = torch.load(final, map_location="cpu", weights_only=True)  # still a plain state dict
    assert "visual.conv1.weight" in plain


def test_recorded_gelu_against_a_quick_gelu_architecture_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "gelu.pt"
    torch.save(open_clip.create_model("tiny-clip").state_dict(), path)
    Path(meta_sidecar(path)).write_text(json.dumps({"quick_gelu": False}))
    monkeypatch.setattr(
        open_clip,
        "get_model_config",
        lambda name: {**open_clip.factory.get_model_config("tiny-clip"), "quick_gelu": True},
    )
    with pytest.raises(MmcoaError, match="records GELU"):
        load_model("tiny-clip", pretrained=str(path))


# -- cache keys -----------------------------------------------------------------------------
def test_fingerprints_never_repeat_across_freed_models():
    seen = set()
    for _ in range(6):
        model = load_model("tiny-clip")
        key = model.text_fingerprint()
        assert key not in seen
        seen.add(key)
        del model
        gc.collect()


def test_a_fused_optimizer_step_refreshes_cached_prompt_embeddings(tiny_model):
    """Fused AdamW leaves Tensor._version alone; the optimizer-step count in the key does not."""
    import copy

    model = copy.deepcopy(tiny_model).requires_grad_(True)  # whatever towers another test froze
    classifier = ZeroShotClassifier(model, ["a photo of a cat", "a photo of a dog"])
    before = classifier.class_embeddings().clone()
    params = [p for _, p in model.tower_parameters("text")]
    optimizer = torch.optim.AdamW(params, lr=0.1, fused=True)
    model.encode_text(["a photo of a cat"]).sum().backward()
    versions = [p._version for p in params]
    optimizer.step()
    assert [p._version for p in params] == versions  # why _version alone cannot be the key
    assert not torch.allclose(classifier.class_embeddings(), before)  # no mark needed


def test_weights_key_changes_with_each_way_weights_change():
    """WeightVersioned (models/weight_version.py), the one entry behind text_fingerprint: the
    key holds while nothing changes and moves with every change it lists."""
    import copy

    from mmcoa.models.weight_version import WeightVersioned

    class Net(WeightVersioned):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 2)

    net = Net()
    optimizer = torch.optim.AdamW(net.parameters(), lr=0.1, fused=True)
    changes = {
        "in-place edit": lambda: net.layer.weight.detach().add_(1.0),
        "load_state_dict": lambda: net.load_state_dict(net.state_dict()),
        "to(dtype)": lambda: net.to(torch.float64),
        "submodule set": lambda: setattr(net, "extra", torch.nn.Linear(2, 2)),
        "submodule removed": lambda: setattr(net, "extra", None),
        "fused optimizer step": lambda: (net.layer(torch.ones(1, 2)).sum().backward(), optimizer.step()),
        "mark_weights_changed": net.mark_weights_changed,
    }
    for what, change in changes.items():
        net = net.float()
        key = net.weights_key(net.parameters())
        with torch.no_grad():
            net.layer(torch.ones(1, 2, dtype=net.layer.weight.dtype))  # a forward changes nothing
        assert net.weights_key(net.parameters()) == key, what
        change()
        assert net.weights_key(net.parameters()) != key, what
    assert copy.deepcopy(net).weights_key(net.parameters()) != net.weights_key(net.parameters())


def test_copies_and_loads_get_fresh_fingerprints(tiny_model):
    import copy

    copied = copy.deepcopy(tiny_model)
    assert copied.text_fingerprint() != tiny_model.text_fingerprint()
    key = copied.text_fingerprint()
    copied.load_state_dict(tiny_model.state_dict())
    assert copied.text_fingerprint() != key


# -- resize --------------------------------------------------------------------------------
def test_pil_resize_matches_pil_within_its_rounding():
    from PIL import Image

    from mmcoa.models.base import resize_images

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (28, 35, 3), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(pixels).resize((64, 64), Image.BICUBIC)) / 255
    images = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255
    ours = resize_images(images, (64, 64), "pil")[0].permute(1, 2, 0).numpy()
    assert np.abs(ours - expected).max() <= 1.5 / 255
    torch_mode = resize_images(images, (64, 64), "torch")
    assert torch_mode.min() < 0 or torch_mode.max() > 1  # the published path overshoots
    assert 0 <= ours.min() and ours.max() <= 1


def test_resize_mode_reaches_the_model_and_the_record(tmp_path):
    model = load_model("tiny-clip", resize="pil")
    assert model.resize == "pil"
    with pytest.raises(mmcoa.errors.UnknownNameError, match="resize"):
        load_model("tiny-clip", resize="nearest")
    records = mmcoa.evaluate("tiny-clip", "synthetic", ["clean"], n_samples=8, resize="pil", progress=False)
    assert records[0]["model_build"] == {"architecture": "tiny-clip", "quick_gelu": False, "resize": "pil"}


# -- a checkpoint of another architecture --------------------------------------------------------
def test_a_checkpoint_of_another_architecture_is_caught_from_its_header(tmp_path):
    from mmcoa.models import check_checkpoint

    path = tmp_path / "wide.pt"
    state = mmcoa.load_model("tiny-clip").model.state_dict()
    state["visual.proj"] = torch.zeros(96, 8)
    torch.save(state, path)
    with pytest.raises(MmcoaError, match=r"visual.proj has shape \[96, 8\] in the file, \[96, 96\]"):
        check_checkpoint("tiny-clip", str(path))
    check_checkpoint("tiny-clip", str(_saved(tmp_path)))


def _saved(tmp_path):
    path = tmp_path / "fits.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in mmcoa.load_model("tiny-clip").model.state_dict().items()}, path)
    return path


# -- prompt ensembles and a fixed logit scale (the robustvlm protocol's head) -----------------------
def test_an_ensemble_classifier_averages_normalised_prompt_embeddings(tiny_model):
    import torch.nn.functional as F

    from mmcoa.models import ZeroShotClassifier

    sets = [["a cat", "a dog"], ["a photo of a cat", "a photo of a dog"], ["cat art", "dog art"]]
    head = ZeroShotClassifier(tiny_model, sets[0], ensemble=sets, logit_scale=100.0)
    with torch.no_grad():
        each = [F.normalize(tiny_model.encode_text(s).float(), dim=-1) for s in sets]
    expected = F.normalize(sum(each) / len(each), dim=-1)
    torch.testing.assert_close(head.class_embeddings(), expected, rtol=1e-5, atol=1e-6)
    images = torch.rand(3, 3, *tiny_model.image_size)
    with torch.no_grad():
        image = F.normalize(tiny_model.encode_image(images).float(), dim=-1)
        torch.testing.assert_close(head.logits(images), 100.0 * image @ expected.T, rtol=1e-5, atol=1e-4)


def test_ensemble_and_logit_scale_errors_are_one_line_before_the_model_loads(capsys, tmp_path):
    from mmcoa.cli import main

    base = ["eval", "--model", "tiny-clip", "--dataset", "synthetic", "--n-samples", "4", "--device", "cpu"]
    cases = [
        (["--attacks", "clean", "--template", "ensemble"], "dataset synthetic ships no prompt ensemble"),
        (["--attacks", "clean,bert", "--template", "ensemble"], "the text attack(s) bert edit one prompt"),
        (["--attacks", "clean", "--logit-scale", "-1"], "logit_scale must be a positive number"),
    ]
    for extra, message in cases:
        assert main([*base, *extra, "--output", str(tmp_path / "r.json")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err
    assert not (tmp_path / "r.json").exists()
