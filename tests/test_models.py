"""The model layer: one behavioural contract for both backends, loading and its errors."""

from __future__ import annotations

import time

import open_clip
import pytest
import torch

import mmcoa
from mmcoa.errors import MmcoaError, UnknownNameError, WeightsUnavailableError
from mmcoa.models import TOWERS, load_model
from mmcoa.models.hf_backend import check_tokenizer

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
