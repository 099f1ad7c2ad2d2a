"""The two visual prompt kinds: this toolkit's pixel frame (PaddingPrompt, in [0, 1] pixels at the
dataset's resolution) and TeCoA's published pad prompter (NormalizedPadPrompt, in the model's
normalized input space), how the model applies each, their files and their errors."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from mmcoa.errors import MmcoaError
from mmcoa.models.prompts import (
    VISUAL_PROMPTS,
    NormalizedPadPrompt,
    PaddingPrompt,
    attach_prompt,
    prompt_payload,
    read_prompt,
    visual_prompt_for,
)

# CLIP's normalization constants (what tiny-clip uses too; checked below).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PAD = 4  # tiny-clip's input is 32 px: no room for 30


@pytest.fixture()
def model(tiny_model):
    """A private copy of the session's tiny-clip, without prompts, in eval mode."""
    fresh = copy.deepcopy(tiny_model).eval()
    fresh.visual_prompt = fresh.text_prompt = None
    return fresh


@pytest.fixture()
def images():
    return torch.rand(3, 3, 28, 28, generator=torch.Generator().manual_seed(1))


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def hand_border(prompt: NormalizedPadPrompt) -> torch.Tensor:
    """The prompt image written strip by strip."""
    height, width = prompt.input_size
    pad = prompt.args["pad"]
    border = torch.zeros(1, 3, height, width)
    border[..., :pad, :] = prompt.top.detach()
    border[..., height - pad :, :] = prompt.bottom.detach()
    border[..., pad : height - pad, :pad] = prompt.left.detach()
    border[..., pad : height - pad, width - pad :] = prompt.right.detach()
    return border


def normalized_input(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize (bicubic, upsampling: no antialias) and CLIP-normalize, recomputed here."""
    resized = F.interpolate(images, size=size, mode="bicubic", align_corners=False)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (resized - mean) / std


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message, message
    return message


# -- (a) the normalized prompt equals an independent computation ---------------------------------
def test_normalized_prompt_is_added_after_resize_and_normalization(model, images):
    torch.testing.assert_close(model.pixel_mean.flatten(), torch.tensor(CLIP_MEAN))
    torch.testing.assert_close(model.pixel_std.flatten(), torch.tensor(CLIP_STD))
    prompt = NormalizedPadPrompt(model.image_size, PAD, seeded())
    expected_input = normalized_input(images, model.image_size) + hand_border(prompt)
    torch.testing.assert_close(prompt(model.preprocess(images)), expected_input)
    model.visual_prompt = prompt
    with torch.no_grad():
        got = model.encode_image(images)
        want = model._encode_pixels(expected_input)
    torch.testing.assert_close(got, want)
    model.visual_prompt = None
    with torch.no_grad():
        assert not torch.allclose(model.encode_image(images), got)  # the prompt changed something


# -- (b) shape, start and determinism ------------------------------------------------------------
def test_normalized_prompt_leaves_the_inside_and_spans_pad_pixels():
    prompt = NormalizedPadPrompt((224, 224), generator=seeded())
    assert prompt.args == {"input_size": [224, 224], "pad": 30}
    assert (prompt.kind, prompt.space) == ("pad-normalized", "normalized")
    assert [tuple(p.shape) for p in prompt.parameters()] == [
        (1, 3, 30, 224),
        (1, 3, 30, 224),
        (1, 3, 164, 30),
        (1, 3, 164, 30),
    ]
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        added = prompt(x) - x
    inside = torch.zeros(224, 224, dtype=torch.bool)
    inside[30:194, 30:194] = True
    assert torch.equal(added[..., inside], torch.zeros_like(added[..., inside]))
    assert (added[..., ~inside] != 0).all()  # every border pixel moves: the frame is 30 px wide
    values = torch.cat([p.detach().flatten() for p in prompt.parameters()])
    assert abs(values.mean().item()) < 0.05 and abs(values.std().item() - 1) < 0.05  # N(0, 1)


def test_normalized_prompt_start_is_reproducible_from_a_seeded_generator():
    first, again, other = (NormalizedPadPrompt((32, 32), PAD, seeded(s)) for s in (7, 7, 8))
    assert torch.equal(first.border(), again.border())
    assert not torch.equal(first.border(), other.border())
    state = torch.random.get_rng_state()
    NormalizedPadPrompt((32, 32), PAD, seeded(7))
    assert torch.equal(torch.random.get_rng_state(), state)  # a given generator leaves torch's alone


# -- (c) the frame prompt's path and the plain path are unchanged ---------------------------------
def test_frame_prompt_and_no_prompt_encode_as_before(model, images):
    prompt = PaddingPrompt((28, 28))
    with torch.no_grad():
        prompt.prompt.copy_(torch.randn(1, 3, 28, 28, generator=seeded(2)))
        plain = model.encode_image(images)
        assert torch.equal(plain, model._encode_pixels(model.preprocess(images)))
        by_hand = model.encode_image(images + prompt.mask * prompt.prompt)
        model.visual_prompt = prompt
        assert torch.equal(model.encode_image(images), by_hand)


# -- (d) gradients reach only the prompt ----------------------------------------------------------
@pytest.mark.parametrize("kind", VISUAL_PROMPTS)
def test_gradients_reach_only_the_prompt_of_a_frozen_model(kind, model, images):
    model.set_trainable(())
    model.visual_prompt = visual_prompt_for(kind, model, (28, 28), seeded(), pad=PAD)
    images = images.clone().requires_grad_(True)
    model.encode_image(images).square().sum().backward()
    trained = {n for n, p in model.named_parameters() if p.grad is not None}
    expected = {"pad30": {f"visual_prompt.{s}" for s in ("top", "bottom", "left", "right")}}
    assert trained == expected.get(kind, {"visual_prompt.prompt"})
    assert all(p.grad.abs().sum() > 0 for p in model.visual_prompt.parameters())
    assert images.grad is not None and images.grad.abs().sum() > 0  # attacks still get a gradient


# -- the factory ----------------------------------------------------------------------------------
def test_factory_makes_each_kind(model):
    frame = visual_prompt_for("frame", model, (28, 28))
    assert isinstance(frame, PaddingPrompt) and frame.args == {"image_size": [28, 28], "pad": 4}
    assert not frame.prompt.any()
    pad = visual_prompt_for("pad30", model, (28, 28), seeded(3), pad=PAD)
    assert isinstance(pad, NormalizedPadPrompt) and pad.input_size == model.image_size
    assert torch.equal(pad.border(), NormalizedPadPrompt(model.image_size, PAD, seeded(3)).border())
    assert pad.border().device == model.device


# -- (e) files ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", VISUAL_PROMPTS)
def test_saved_visual_prompt_reattaches(kind, model, images, tmp_path):
    prompt = visual_prompt_for(kind, model, (28, 28), seeded(4), pad=PAD)
    with torch.no_grad():
        for param in prompt.parameters():
            param.add_(torch.randn(param.shape, generator=seeded(5)))
    model.visual_prompt = prompt
    path = tmp_path / "prompt.pt"
    torch.save(prompt_payload(prompt), path)
    payload = read_prompt(path)
    assert payload["kind"] == prompt.kind
    fresh = copy.deepcopy(model)
    fresh.visual_prompt = None
    assert attach_prompt(fresh, path, payload) is None
    assert type(fresh.visual_prompt) is type(prompt)
    with torch.no_grad():
        assert torch.equal(fresh.encode_image(images), model.encode_image(images))


# -- (f) one-line errors --------------------------------------------------------------------------
def test_normalized_prompt_refuses_a_batch_of_another_size():
    prompt = NormalizedPadPrompt((32, 32), PAD, seeded())
    with pytest.raises(MmcoaError) as error:
        prompt(torch.zeros(1, 3, 28, 28))
    assert "(32, 32) px model input" in one_line(error) and "(28, 28) px" in one_line(error)


def test_a_pad_too_wide_for_the_model_input_is_one_line(model):
    with pytest.raises(MmcoaError) as error:
        visual_prompt_for("pad30", model, (28, 28), seeded())
    assert "30-px pad does not fit a 32x32 px" in one_line(error) and "15 px at most" in one_line(error)


def test_unknown_visual_prompt_kind_is_one_line(model):
    with pytest.raises(MmcoaError) as error:
        visual_prompt_for("corners", model, (28, 28))
    assert "'corners'" in one_line(error) and "frame, pad30" in one_line(error)


def test_a_prompt_file_of_unknown_kind_is_one_line(model, tmp_path):
    payload = {**prompt_payload(PaddingPrompt((28, 28))), "kind": "corners"}
    path = tmp_path / "prompt.pt"
    torch.save(payload, path)
    for call in (lambda: read_prompt(path), lambda: attach_prompt(model, path, payload)):
        with pytest.raises(MmcoaError) as error:
            call()
        assert "unknown kind 'corners'" in one_line(error) and "pad-normalized" in one_line(error)
    assert model.visual_prompt is None


def test_a_normalized_prompt_for_another_input_size_is_one_line(model, tmp_path):
    path = tmp_path / "prompt.pt"
    torch.save(prompt_payload(NormalizedPadPrompt((64, 64), PAD, seeded())), path)
    with pytest.raises(MmcoaError) as error:
        attach_prompt(model, path)
    assert "(64, 64) px model input" in one_line(error) and "takes (32, 32) px" in one_line(error)
