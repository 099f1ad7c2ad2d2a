"""Every training run exports an open_clip model folder (``<run>/export/``) that plain open_clip
loads with ``local-dir:`` and that gives our model's embeddings; ``local-dir:`` models load
through :func:`mmcoa.load_model` (activation and preprocessing from the folder); transformers
models export a transformers folder; the model card lists method, data, settings and the run's
evaluation records."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

import mmcoa
from mmcoa.errors import MmcoaError, UnknownNameError
from mmcoa.models import check_checkpoint, validate_model_name
from mmcoa.models.open_clip_backend import OpenClipModel
from mmcoa.train.config import TrainConfig
from mmcoa.train.export import (
    OPEN_CLIP_CONFIG,
    OPEN_CLIP_WEIGHTS,
    TRANSFORMERS_WEIGHTS,
    refresh_card,
    write_export,
)
from mmcoa.train.trainer import train

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py
TEXTS = ["This is a photo of a red square", "This is a photo of a blue circle", "a"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A two-step FT-standard run of tiny-clip (no attack: the fastest method)."""
    folder = tmp_path_factory.mktemp("export-run") / "run"
    train(
        TrainConfig(method="ft-standard", batch_size=16, max_steps=2, lr=1e-3, output=str(folder)),
        progress=False,
    )
    return folder


@pytest.fixture(scope="module")
def images():
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (4, 32, 32, 3), generator=generator, dtype=torch.uint8)


def _ours(model, images):
    with torch.no_grad():
        pixels = images.permute(0, 3, 1, 2).float() / 255
        return model.encode_image(pixels), model.encode_text(TEXTS)


def _plain(folder, images):
    """Embeddings from plain open_clip, fed by its own PIL transform and tokenizer."""
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    model.eval()
    with torch.no_grad():
        pixels = torch.stack([preprocess(Image.fromarray(image.numpy())) for image in images])
        return model.encode_image(pixels), model.encode_text(tokenizer(TEXTS)), model


def test_training_run_exports_an_open_clip_folder(run):
    folder = run / "export"
    assert {p.name for p in folder.iterdir()} == {OPEN_CLIP_CONFIG, OPEN_CLIP_WEIGHTS, "README.md"}
    config = json.loads((folder / OPEN_CLIP_CONFIG).read_text())
    assert config["model_cfg"]["quick_gelu"] is False
    assert config["model_cfg"]["vision_cfg"]["image_size"] == 32
    assert set(config["preprocess_cfg"]) >= {"mean", "std"}
    assert config["mmcoa"]["architecture"] == "tiny-clip"
    assert not list(run.glob(".export*")), "the partial folder is renamed into place"


def test_a_finished_run_keeps_one_copy_of_its_weights(run):
    """The export's weights file is final.pt (a hard link: the same bytes on disk once), and
    the resumable state (checkpoints/last.pt, with the optimizer) is gone."""
    assert (run / "export" / OPEN_CLIP_WEIGHTS).samefile(run / "final.pt")
    assert not (run / "checkpoints").exists()
    assert sorted(p.name for p in run.iterdir()) == [
        "config.json",
        "export",
        "final.pt",
        "final.pt.json",
        "metrics.json",
        "metrics.jsonl",
        "shots.json",
    ]


def test_without_hard_links_the_export_holds_a_copy(tmp_path, monkeypatch, capsys):
    model = mmcoa.load_model("tiny-clip")
    final = tmp_path / "final.pt"
    torch.save(model.model.state_dict(), final)

    def no_links(source, target):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr("os.link", no_links)
    folder = write_export(tmp_path, model, TrainConfig(method="tecoa"), weights=final)
    copied = folder / OPEN_CLIP_WEIGHTS
    assert not copied.samefile(final) and copied.read_bytes() == final.read_bytes()
    assert "is a copy of" in capsys.readouterr().err


def test_plain_open_clip_gives_our_embeddings(run, images):
    ours = mmcoa.load_model("tiny-clip", pretrained=str(run / "final.pt"))
    image_ours, text_ours = _ours(ours, images)
    image_plain, text_plain, _ = _plain(run / "export", images)
    torch.testing.assert_close(image_plain, image_ours, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(text_plain, text_ours, atol=1e-5, rtol=1e-4)
    local = mmcoa.load_model(f"local-dir:{run / 'export'}")
    torch.testing.assert_close(_ours(local, images)[0], image_ours, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(_ours(local, images)[1], text_ours, atol=1e-6, rtol=1e-5)


@pytest.mark.slow  # a fresh interpreter
def test_export_loads_without_mmcoa_imported_and_import_mmcoa_registers_tiny_clip(run, images, tmp_path):
    """In a fresh interpreter that has not imported mmcoa (tiny-clip is not registered there):
    the folder alone rebuilds the model. Then ``import mmcoa`` alone registers the tiny
    configurations with plain open_clip (one interpreter for both: each start costs seconds)."""
    out = tmp_path / "plain.pt"
    script = (
        "import sys, torch, open_clip\n"
        f"name = 'local-dir:{run / 'export'}'\n"
        "model, _, preprocess = open_clip.create_model_and_transforms(name)\n"
        "assert 'mmcoa' not in sys.modules and 'tiny-clip' not in open_clip.list_models()\n"
        "model.eval()\n"
        f"with torch.no_grad(): torch.save(model.encode_text(open_clip.get_tokenizer(name)({TEXTS!r})), {str(out)!r})\n"
        "import mmcoa\n"
        "open_clip.create_model('tiny-clip')\n"
        "print('registered')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "registered", done.stderr[-2000:]
    ours = mmcoa.load_model("tiny-clip", pretrained=str(run / "final.pt"))
    torch.testing.assert_close(torch.load(out), _ours(ours, images)[1], atol=1e-5, rtol=1e-4)


def test_quick_gelu_and_preprocessing_survive_the_round_trip(tmp_path, images):
    """A QuickGELU model with its own mean/std: the folder says so, open_clip and load_model
    build QuickGELU and normalize with those statistics."""
    base = open_clip.create_model(
        "tiny-clip",
        force_quick_gelu=True,
        force_preprocess_cfg={"mean": (0.5, 0.4, 0.3), "std": (0.2, 0.25, 0.3)},
    )
    model = OpenClipModel(
        base, open_clip.get_tokenizer("tiny-clip"), name="tiny-clip", pretrained=None
    ).eval()
    folder = write_export(tmp_path, model, TrainConfig(method="tecoa"))
    config = json.loads((folder / OPEN_CLIP_CONFIG).read_text())
    assert config["model_cfg"]["quick_gelu"] is True
    assert config["preprocess_cfg"]["mean"] == pytest.approx([0.5, 0.4, 0.3])
    image_ours, text_ours = _ours(model, images)
    image_plain, text_plain, plain = _plain(folder, images)
    assert any(isinstance(m, open_clip.transformer.QuickGELU) for m in plain.modules())
    torch.testing.assert_close(image_plain, image_ours, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(text_plain, text_ours, atol=1e-5, rtol=1e-4)
    local = mmcoa.load_model(f"local-dir:{folder}")
    assert local.quick_gelu
    assert local.pixel_mean.flatten().tolist() == pytest.approx([0.5, 0.4, 0.3])
    torch.testing.assert_close(_ours(local, images)[0], image_ours, atol=1e-6, rtol=1e-5)


def test_local_dir_pretrained_random_and_file(run, images):
    name = f"local-dir:{run / 'export'}"
    final = str(run / "final.pt")
    check_checkpoint(name, final)
    from_file = mmcoa.load_model(name, pretrained=final)
    torch.testing.assert_close(
        _ours(from_file, images)[1], _ours(mmcoa.load_model(name), images)[1], atol=1e-6, rtol=1e-5
    )
    random = mmcoa.load_model(name, pretrained="random")
    assert not torch.allclose(_ours(random, images)[1], _ours(from_file, images)[1])


def test_local_dir_errors_are_one_line(tmp_path, run):
    with pytest.raises(UnknownNameError, match="is not a folder"):
        validate_model_name(f"local-dir:{tmp_path / 'missing'}")
    with pytest.raises(UnknownNameError, match="has no open_clip_config.json"):
        validate_model_name(f"local-dir:{tmp_path}")
    with pytest.raises(UnknownNameError, match="pass it as local-dir:"):
        validate_model_name(str(run / "export"))
    bare = tmp_path / "config-only"
    bare.mkdir()
    (bare / OPEN_CLIP_CONFIG).write_text((run / "export" / OPEN_CLIP_CONFIG).read_text())
    with pytest.raises(MmcoaError, match="no weights"):
        mmcoa.load_model(f"local-dir:{bare}")


def test_transformers_models_export_a_transformers_folder(tmp_path, images):
    model = mmcoa.load_model("tiny-clip-hf")
    folder = write_export(tmp_path, model, TrainConfig(method="fare", model="tiny-clip-hf"))
    assert (folder / "config.json").is_file() and (folder / TRANSFORMERS_WEIGHTS).is_file()
    assert not (folder / OPEN_CLIP_CONFIG).exists()
    again = mmcoa.load_model(f"hf:{folder}")
    for ours, back in zip(_ours(model, images), _ours(again, images)):
        torch.testing.assert_close(back, ours, atol=1e-6, rtol=1e-5)
    assert "library_name: transformers" in (folder / "README.md").read_text()


def test_model_card_names_method_data_settings_and_records(run):
    card = (run / "export" / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: open_clip" in card
    assert "ft-standard" in card and "synthetic" in card and "| batch_size | 16 |" in card
    assert "No evaluation records" in card
    (run / "eval").mkdir(exist_ok=True)
    record = {
        "model": "local-dir:export",
        "dataset": "synthetic",
        "attack": "pgd",
        "attack_params": {"eps": 1 / 255},
        "n_samples": 8,
        "accuracy": 0.375,
        "top5": 1.0,
    }
    (run / "eval" / "pgd.json").write_text(json.dumps([record]))
    try:
        card = refresh_card(run).read_text()
    finally:
        (run / "eval" / "pgd.json").unlink()
    assert "| eval/pgd.json | synthetic | pgd | 1/255 | 8 | 0.375 | 1 |" in card
    assert np.isfinite(json.loads((run / "metrics.json").read_text())["final_loss"])
