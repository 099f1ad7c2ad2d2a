"""Right numbers with real weights: the activation real checkpoints need, the published filter
words, tie-aware correctness, cache keys that cannot collide, registration at import, the
PIL-equivalent resize, faithful TeCoA and per-method training defaults.

Each test fails on the code before the fix it guards (see docs/deviations.md)."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import open_clip
import open_clip.factory
import open_clip.pretrained
import pytest
import torch
import torch.nn.functional as F

import mmcoa
from mmcoa.attacks.text.stopwords import default_stop_words
from mmcoa.errors import MmcoaError
from mmcoa.eval.metrics import Tally
from mmcoa.eval.retrieval import recall_at_k
from mmcoa.models import ZeroShotClassifier, load_model
from mmcoa.train.config import TrainConfig


def meta_sidecar(path):
    from mmcoa.models.checkpoints import meta_sidecar as sidecar  # imported late: each test fails

    return sidecar(path)  # alone on the code before its fix, instead of the whole module


REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"
QUICK_TAG = "fake_openai"  # open_clip cleans tags to lower case with underscores


# -- 1. QuickGELU ------------------------------------------------------------------------------
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


# -- 2. filter words ---------------------------------------------------------------------------
PUBLISHED_FILTER_WORDS_SHA256 = "eca1b689ed4ecce8db29913a77e05cade8a08162234a4107ee5eda550c58502b"  # shared/reference/bert_attack_filter_words.txt


def test_default_filter_words_are_the_published_list():
    """The shipped file is the published list byte for byte (its SHA-256; compared with the
    reference file itself where the checkout has it beside it)."""
    import hashlib
    from importlib import resources

    shipped = resources.files("mmcoa.attacks.text").joinpath("filter_words.txt").read_bytes()
    assert hashlib.sha256(shipped).hexdigest() == PUBLISHED_FILTER_WORDS_SHA256
    reference = REFERENCE / "bert_attack_filter_words.txt"
    if reference.is_file():
        assert shipped == reference.read_bytes()
    published = {line.strip().lower() for line in shipped.decode("utf-8").splitlines() if line.strip()}
    assert default_stop_words() == published
    assert {"t", "s", "one", "first", "back", "same", "once", "please", ".", "this"} <= default_stop_words()


def test_the_t_of_t_shirt_gets_no_candidates(tmp_path):
    """On the demo, "t shirt top" lost its "t" under the old list; "t" is a published filter word."""
    from mmcoa.attacks.text import BertAttack, load_mlm
    from mmcoa.attacks.text.tiny_mlm import caption_corpus, train_tiny_mlm

    corpus = caption_corpus(["t shirt top", "trouser", "pullover", "dress"], ["This is a photo of a {}"])
    mlm = load_mlm(str(train_tiny_mlm(corpus, tmp_path / "mlm", steps=5)))
    attack = BertAttack(mlm, k=10, min_logit=-1e9)  # every top-k piece is a candidate
    per_word = attack.candidates(["This is a photo of a t shirt top"])[0]
    assert per_word[0] == per_word[1] == per_word[5] == []  # This, is, t
    assert any(per_word[6] + per_word[7])  # content words are still attacked
    unfiltered = BertAttack(mlm, k=10, min_logit=-1e9, stop_words=frozenset())
    assert unfiltered.candidates(["This is a photo of a t shirt top"])[0][5]  # the list does it


# -- 9. ties -----------------------------------------------------------------------------------
def test_a_tie_with_the_true_class_is_not_correct():
    from mmcoa.models.zeroshot import top_k_correct

    logits = torch.tensor([[2.0, 2.0, 0.0], [1.0, 2.0, 2.0], [3.0, 1.0, 0.0], [float("nan"), 0.0, 0.0]])
    labels = torch.tensor([0, 2, 0, 0])
    assert top_k_correct(logits, labels, 1).tolist() == [False, False, True, False]
    assert top_k_correct(logits, labels, 2).tolist() == [True, True, True, False]
    tally = Tally()
    tally.add(logits, logits, labels)
    assert tally.correct == 1 and tally.clean_correct == 1


def test_a_retrieval_tie_with_a_wrong_item_is_a_miss():
    similarity = torch.tensor([[1.0, 1.0], [0.0, 1.0]])  # image 0 ties its caption with caption 1
    scores = recall_at_k(similarity, [[0], [1]], [0, 1], ks=(1,))
    assert scores["i2t_r1"] == 0.5 and scores["t2i_r1"] == 0.5


def test_two_own_captions_tied_at_the_top_still_hit():
    similarity = torch.tensor([[1.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
    assert recall_at_k(similarity, [[0, 1], [2]], [0, 0, 1], ks=(1,))["i2t_r1"] == 1.0


# -- 8. cache keys -----------------------------------------------------------------------------
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
    """Fused AdamW leaves Tensor._version alone; the library's mark after the step does not."""
    import copy

    model = copy.deepcopy(tiny_model)
    classifier = ZeroShotClassifier(model, ["a photo of a cat", "a photo of a dog"])
    before = classifier.class_embeddings().clone()
    params = [p for _, p in model.tower_parameters("text")]
    optimizer = torch.optim.AdamW(params, lr=0.1, fused=True)
    model.encode_text(["a photo of a cat"]).sum().backward()
    versions = [p._version for p in params]
    optimizer.step()
    assert [p._version for p in params] == versions  # why _version alone cannot be the key
    model.mark_weights_changed()  # what the trainer does after every optimizer step
    assert not torch.allclose(classifier.class_embeddings(), before)


def test_copies_and_loads_get_fresh_fingerprints(tiny_model):
    import copy

    copied = copy.deepcopy(tiny_model)
    assert copied.text_fingerprint() != tiny_model.text_fingerprint()
    key = copied.text_fingerprint()
    copied.load_state_dict(tiny_model.state_dict())
    assert copied.text_fingerprint() != key


def test_trainer_marks_weights_after_each_step(tmp_path, monkeypatch):
    marks = []
    original = mmcoa.models.base.VisionLanguageModel.mark_weights_changed
    monkeypatch.setattr(
        mmcoa.models.base.VisionLanguageModel,
        "mark_weights_changed",
        lambda self: (marks.append(1), original(self)),
    )
    config = TrainConfig(method="ft-standard", batch_size=16, max_steps=1, output=str(tmp_path / "r"))
    mmcoa.train.train(config, progress=False)
    steps = len(marks)
    marks.clear()
    config = TrainConfig(method="ft-standard", batch_size=16, max_steps=3, output=str(tmp_path / "s"))
    mmcoa.train.train(config, progress=False)
    assert len(marks) - steps == 2  # one mark per optimizer step, beyond the loading marks


# -- 10. registration at import ----------------------------------------------------------------
def test_import_mmcoa_registers_tiny_clip_with_open_clip():
    code = "import mmcoa, open_clip; open_clip.create_model('tiny-clip'); print('ok')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "ok", result.stderr


# -- 11. resize --------------------------------------------------------------------------------
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


# -- 4. TeCoA ----------------------------------------------------------------------------------
def test_tecoa_loss_is_image_to_text_cross_entropy(tiny_model, synthetic_test):
    from mmcoa.train.methods import METHODS, StepContext

    images = torch.stack([synthetic_test[i][0] for i in range(8)])
    labels = torch.tensor([synthetic_test[i][1] for i in range(8)])
    prompts = synthetic_test.prompts()
    config = TrainConfig(method="tecoa", train_eps=1e-6, train_step_size=1e-6, train_steps=1)

    def context():
        return StepContext(
            model=tiny_model, prompts=prompts, config=config, generator=torch.Generator().manual_seed(0)
        )

    loss, _ = METHODS.get("tecoa")().loss(context(), images, labels)
    with torch.no_grad():
        logits = ZeroShotClassifier(tiny_model, prompts).logits(images)
    assert torch.allclose(loss, F.cross_entropy(logits, labels), atol=1e-4)
    symmetric, _ = METHODS.get("tecoa-symmetric")().loss(context(), images, labels)
    assert not torch.allclose(symmetric, loss, atol=1e-3)


# -- 7. per-method defaults --------------------------------------------------------------------
def test_each_method_gets_its_published_training_settings():
    fare, pmg, tecoa, mmcoa_ = (TrainConfig(method=m) for m in ("fare", "pmg-aft", "tecoa", "mmcoa"))
    assert (fare.optimizer, fare.weight_decay, fare.train_eps, fare.train_steps) == (
        "adamw",
        1e-4,
        4 / 255,
        10,
    )
    assert (pmg.optimizer, pmg.lr, pmg.weight_decay, pmg.schedule) == ("sgd", 5e-5, 0.0, "cosine")
    assert (tecoa.optimizer, tecoa.train_steps, tecoa.warmup_steps) == ("sgd", 2, 1000)
    assert (mmcoa_.weight_decay, mmcoa_.train_eps, mmcoa_.train_step_size, mmcoa_.train_steps) == (
        0.2,
        1 / 255,
        1 / 255,
        10,
    )
    assert TrainConfig(method="fare", train_steps=3, lr=2e-5).train_steps == 3  # given values win
    for name in mmcoa.train.METHODS.names():  # every method's class holds every per-method setting
        assert TrainConfig(method=name).lr == mmcoa.train.METHODS.get(name).defaults["lr"]
    with pytest.raises(mmcoa.errors.UnknownNameError, match="unknown method 'nope'; known: .*mmcoa"):
        TrainConfig(method="nope")


def test_sgd_methods_build_sgd_with_momentum(tiny_model):
    from mmcoa.train.trainer import build_optimizer

    tiny_model.set_trainable(["image"])
    optimizer = build_optimizer(tiny_model, TrainConfig(method="pmg-aft"))
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["momentum"] == 0.9
    tiny_model.set_trainable([])


def test_a_zero_training_step_size_is_refused_up_front():
    with pytest.raises(MmcoaError, match="train_step_size"):
        TrainConfig(method="tecoa", train_step_size=0.0)
