"""The zoo: published robust CLIPs by name (mmcoa.models.zoo, zoo_load).

No weights can be downloaded here: each format is a file fabricated with the key layout of an
open_clip ViT (:data:`ARCH`, mmcoa's tiny-clip config: the layout of every open_clip ViT,
ViT-B-32's and ViT-L-14's included, at a few MB; or transformers' ViT-B/32 CLIPModel) and
random weights, registered in a test zoo YAML (local files, file:// URLs, a pre-populated Hugging
Face cache), and loaded by name and by path; the embeddings must equal plain open_clip or
transformers loading the same weights."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml

import mmcoa
from mmcoa.cli import main
from mmcoa.errors import MmcoaError
from mmcoa.models import model_spec, zoo, zoo_load
from mmcoa.models.tiny import clip_bpe_tokenizer
from mmcoa.models.zoo import ZOO_ENV, entries, get_entry, markdown_table, read_entries

ARCH = "tiny-clip"  # an open_clip ViT config (mmcoa registers it): every ViT's key layout, small
OTHER_ARCH = "tiny-clip-p4"  # ARCH with another patch size: same keys, other shapes (registered below)

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
CLIP = {"mean": list(zoo.CLIP_MEAN), "std": list(zoo.CLIP_STD)}
TEXTS = ["a photo of a cat", "a photo of a dog"]
SNAPSHOT = "0" * 40


@pytest.fixture(autouse=True)
def clean_zoo(monkeypatch):
    """No user zoo from the environment; files added with --zoo forgotten after each test."""
    monkeypatch.delenv(ZOO_ENV, raising=False)
    yield
    zoo._added_files.clear()


# -- the shipped data -------------------------------------------------------------------------------
def test_shipped_zoo_has_the_34_checkpoints_with_unique_names():
    shipped = read_entries(zoo.ZOO_FILE)
    assert len(shipped) == 34 and len({e.name for e in shipped}) == 34
    fare2 = get_entry("fare2-vitl14")
    assert (fare2.format, fare2.arch, fare2.train_eps) == ("open_clip_hub", "ViT-L-14", "2/255")
    assert fare2.load["hub"] == "chs20/fare2-clip" and fare2.load["quick_gelu"] is True
    assert get_entry("pmg-aft-vitb32").mean == tuple(IMAGENET["mean"])
    assert get_entry("delta-clip-l14-224").std == tuple(IMAGENET["std"])


def test_advxl_and_robust_llava_are_marked_not_clips():
    not_clips = {e.name for e in entries().values() if not e.is_clip}
    assert not_clips == {"advxl-vith14", "advxl-vitg14", "robust-llava"}
    with pytest.raises(MmcoaError, match="ImageNet-1k classifier.*cannot be loaded as a CLIP"):
        mmcoa.load_model("advxl-vith14")


def test_every_shipped_architecture_builds():
    """Each entry that names an open_clip architecture builds it (on the meta device)."""
    for entry in entries().values():
        if entry.load.get("arch"):
            model = zoo_load._meta_model(entry)
            assert model.visual is not None, entry.name


def test_an_alias_names_one_entry_or_says_which():
    assert get_entry("FARE2 ViT-L/14").name == "fare2-vitl14"
    with pytest.raises(MmcoaError, match="zoo alias 'Delta-CLIP' names 3 entries: delta-clip-h14-336, "):
        get_entry("Delta-CLIP")


def test_unknown_zoo_name_is_one_line_with_close_names():
    with pytest.raises(MmcoaError) as error:
        get_entry("fare2-vitl1")
    assert (
        "\n" not in str(error.value)
        and "fare2-vitl14" in str(error.value)
        and "mmcoa zoo" in str(error.value)
    )
    with pytest.raises(MmcoaError, match="close zoo names: fare2-vitl14") as error:
        model_spec("fare2-vitl1")
    assert "\n" not in str(error.value)


def test_missing_base_weights_offline_are_one_line_saying_how_to_provide_them(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))  # an empty cache
    with pytest.raises(MmcoaError) as error:
        zoo_load._base_model(get_entry("fare2-vitl14"))
    message = str(error.value)
    assert "\n" not in message and "ViT-L-14 (openai), the base of fare2-vitl14" in message
    assert "set load.base of fare2-vitl14 to a local file in a --zoo YAML" in message


def test_an_entry_without_public_weights_says_what_to_pass():
    with pytest.raises(
        MmcoaError, match="no public weights: pass --pretrained PATH .*vision_encoder_state_dict"
    ):
        zoo_load.fetch_file(get_entry("pmg-aft-vitb32"))
    with pytest.raises(MmcoaError, match="drive.google.com.*pass --pretrained PATH"):
        zoo_load.fetch_file(get_entry("tga-zsr-vitb32"))


# -- the command line ---------------------------------------------------------------------------
def test_mmcoa_zoo_lists_every_entry(capsys):
    assert main(["zoo"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["name", "method", "arch", "train", "eps", "format", "published", "protocols"]
    assert len(out) == 35
    fare2 = next(line for line in out if line.startswith("fare2-vitl14 "))
    assert re.search(r"FARE +ViT-L-14 +2/255 +open_clip_hub +robustvlm_zeroshot_aa@2/255", fare2)
    assert "classifier (not a CLIP)" in next(line for line in out if line.startswith("advxl-vith14"))


def test_mmcoa_zoo_show_prints_the_published_numbers(capsys):
    assert main(["zoo", "show", "fare2-vitl14"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["published"][0]["results"]["avg_zero_shot"] == {"clean": 67.0, "robust": 43.1}
    assert shown["citation"].startswith("Schlarmann") and shown["load"]["format"] == "open_clip_hub"


def test_mmcoa_zoo_show_unknown_is_one_line(capsys):
    assert main(["zoo", "show", "fare3-vitl14"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown zoo name 'fare3-vitl14'" in err and "did you mean" in err
    assert main(["zoo", "fare2-vitl14"]) == 2
    assert "takes nothing or 'show NAME'" in capsys.readouterr().err


def test_user_zoo_by_flag_and_environment(tmp_path, capsys, monkeypatch):
    own = tmp_path / "lab.yaml"
    own.write_text(
        yaml.safe_dump(
            {
                "checkpoints": [
                    {
                        "name": "lab-clip",
                        "method": "ours",
                        "load": {"format": "vision_state_dict", "arch": "ViT-B-32"},
                    }
                ]
            }
        )
    )
    assert main(["zoo", "--zoo", str(own)]) == 0
    assert re.search(r"^lab-clip +ours +ViT-B-32 ", capsys.readouterr().out, re.M)
    zoo._added_files.clear()
    assert "lab-clip" not in entries()
    monkeypatch.setenv(ZOO_ENV, str(own))
    assert get_entry("lab-clip").origin == str(own)


def test_every_command_taking_model_takes_zoo_and_a_bad_zoo_file_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("checkpoints:\n- name: x\n  load: {format: onnx}\n")
    commands = (
        ["eval", "--model", "x", "--dataset", "d", "--output", "o"],
        ["train"],
        ["retrieval"],
        ["zoo"],
    )
    for command in commands:
        with pytest.raises(SystemExit) as exit_:
            main([*command, "--zoo", str(bad)])
        assert exit_.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "load.format 'onnx'; accepted: open_clip_hub" in err, err


def test_docs_table_matches_the_yaml():
    docs = (Path(__file__).parents[1] / "docs" / "reproduce.md").read_text()
    table = re.search(r"<!-- zoo-table -->\n(.*?)\n<!-- /zoo-table -->", docs, re.S)
    assert table, "docs/reproduce.md lacks the zoo table markers"
    assert table.group(1).strip() == markdown_table().strip(), "regenerate it: mmcoa zoo --markdown"


# -- wrong formats, before any work ----------------------------------------------------------------
@pytest.fixture()
def small_zoo(tmp_path):
    path = tmp_path / "zoo.yaml"
    checkpoints = [
        {"name": "v", "load": {"format": "vision_state_dict", "arch": ARCH, "base": "random"}},
        {"name": "h", "load": {"format": "open_clip_hub", "arch": ARCH}},
    ]
    path.write_text(yaml.safe_dump({"checkpoints": checkpoints}))
    zoo.add_zoo_file(str(path))
    return tmp_path


def test_wrong_format_files_are_one_line_naming_expected_and_found(small_zoo):
    text_only = small_zoo / "text.pt"
    torch.save({"token_embedding.weight": torch.zeros(2, 2), "ln_final.weight": torch.zeros(2)}, text_only)
    partial = small_zoo / "partial.pt"
    torch.save({"conv1.weight": torch.zeros(768, 3, 32, 32)}, partial)
    nothing = small_zoo / "meta.pt"
    torch.save({"epoch": 3, "acc": 0.5}, nothing)
    cases = [
        (
            text_only,
            "v",
            r"found a state dict without vision keys .*expected a state dict of the vision tower",
        ),
        (partial, "v", r"\(vision tower of " + ARCH + r"\): missing \d+ keys \(e.g. .*unexpected 0"),
        (nothing, "v", r"found a file holding no state dict of tensors \(top level: \['epoch', 'acc'\]\)"),
        (small_zoo, "v", r"found a folder with neither open_clip_config.json nor config.json"),
        (
            partial,
            "h",
            r"found vision_state_dict; expected an open_clip model folder .* or a state dict of the whole",
        ),
        (small_zoo / "absent.pt", "v", r"does not exist"),
    ]
    for path, name, pattern in cases:
        with pytest.raises(MmcoaError) as error:
            mmcoa.models.check_checkpoint(name, str(path))
        assert "\n" not in str(error.value) and re.search(pattern, str(error.value)), str(error.value)


# -- downloads --------------------------------------------------------------------------------------
def test_download_checks_sha256_and_restarts_or_resumes(tmp_path):
    source = tmp_path / "w.bin"
    source.write_bytes(os.urandom(3000))
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    dest = tmp_path / "cache" / "w.bin"
    dest.parent.mkdir()
    (tmp_path / "cache" / "w.bin.part").write_bytes(b"stale")  # file:// answers whole: restart
    assert zoo_load.download(source.as_uri(), dest, digest) == str(dest)
    assert dest.read_bytes() == source.read_bytes()
    with pytest.raises(MmcoaError, match="has SHA-256 .* expected 00000000.*removed") as error:
        zoo_load.download(source.as_uri(), tmp_path / "again.bin", "0" * 64)
    assert "\n" not in str(error.value) and not (tmp_path / "again.bin").exists()


def test_download_refuses_the_network_when_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MmcoaError, match="not in the cache and downloads are off"):
        zoo_load.download("https://example.org/w.pt", tmp_path / "w.pt")


# -- each format, loaded by name and by path, equals plain loading ---------------------------------
def _random_state(seed: int, quick_gelu: bool = True) -> dict:
    import open_clip

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return open_clip.create_model(ARCH, force_quick_gelu=quick_gelu, load_weights=False).state_dict()


def _hub_cache(root: Path, repo: str, files: dict[str, Path]) -> None:
    """A Hugging Face cache holding ``repo`` at one snapshot (what a download leaves)."""
    folder = root / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(SNAPSHOT)
    snapshot = folder / "snapshots" / SNAPSHOT
    snapshot.mkdir(parents=True)
    for name, target in files.items():
        (snapshot / name).symlink_to(target)


@pytest.fixture(scope="module")
def fabricated(tmp_path_factory):
    """Every format's file from one ARCH: base weights (the text tower's source) and a
    "robust" vision tower; ``expected`` is the full state dict they make together."""
    import open_clip

    root = tmp_path_factory.mktemp("zoo")
    other = open_clip.get_model_config(ARCH)
    other = {**other, "vision_cfg": {**other["vision_cfg"], "patch_size": 4}}
    (root / "configs").mkdir()
    (root / "configs" / f"{OTHER_ARCH}.json").write_text(json.dumps(other))
    open_clip.add_model_config(root / "configs")
    base = _random_state(0)
    visual = {k.removeprefix("visual."): v for k, v in _random_state(1).items() if k.startswith("visual.")}
    expected = {**base, **{f"visual.{k}": v for k, v in visual.items()}}
    torch.save(base, root / "base.pt")
    torch.save(visual, root / "vision.pt")
    torch.save(
        {
            "epoch": 10,
            "state_dict": {"module.pad_up": torch.zeros(1, 3, 30, 224)},  # a prompter, to be ignored
            "vision_encoder_state_dict": {f"module.{k}": v for k, v in visual.items()},
            "best_acc1": 40.0,
            "optimizer": {"state": {}, "param_groups": []},
        },
        root / "train.pth.tar",
    )
    torch.save(
        {"model": {f"module.{k}": v for k, v in expected.items()}, "acc": 1.0, "epoch": 3}, root / "full.ckpt"
    )
    hub = root / "hub"
    hub.mkdir()
    config = {
        "model_cfg": {**open_clip.get_model_config(ARCH), "quick_gelu": "TRUE"},
        "preprocess_cfg": CLIP,
    }
    (hub / "open_clip_config.json").write_text(json.dumps(config, indent=4))
    torch.save(expected, hub / "open_clip_pytorch_model.bin")
    bare = root / "hub-in"  # no preprocess_cfg: the entry's (ImageNet) mean/std apply, as Delta-CLIP's
    bare.mkdir()
    (bare / "open_clip_config.json").write_text(json.dumps({"model_cfg": config["model_cfg"]}))
    (bare / "open_clip_pytorch_model.bin").symlink_to(hub / "open_clip_pytorch_model.bin")
    cache = root / "hf-cache"
    _hub_cache(cache, "test/hub", {f.name: f for f in hub.iterdir()})
    _hub_cache(cache, "test/hub-in", {f.name: f for f in bare.iterdir()})
    _hub_cache(cache, "test/raw", {"train.pth.tar": root / "train.pth.tar"})
    full_sha = hashlib.sha256((root / "full.ckpt").read_bytes()).hexdigest()
    checkpoints = [
        _entry("t-hub", "open_clip_hub", CLIP, hub="test/hub"),
        _entry("t-hub-in", "open_clip_hub", IMAGENET, hub="test/hub-in"),
        _entry(
            "t-vision",
            "vision_state_dict",
            CLIP,
            url=(root / "vision.pt").as_uri(),
            base=str(root / "base.pt"),
        ),
        _entry(
            "t-train",
            "training_checkpoint",
            IMAGENET,
            hub="test/raw",
            file="train.pth.tar",
            base=str(root / "base.pt"),
        ),
        _entry("t-full", "full_state_dict", CLIP, url=(root / "full.ckpt").as_uri(), sha256=full_sha),
        _entry("t-b16", "vision_state_dict", CLIP, arch=OTHER_ARCH, base="random"),
    ]
    (root / "zoo.yaml").write_text(yaml.safe_dump({"checkpoints": checkpoints}))
    plain = open_clip.create_model(ARCH, force_quick_gelu=True, load_weights=False).eval()
    plain.load_state_dict(expected)
    yield {"root": root, "plain": plain, "tokenizer": open_clip.get_tokenizer(ARCH)}
    shutil.rmtree(root)


def _entry(name, fmt, stats, arch=ARCH, **load):
    return {
        "name": name,
        "normalization": stats,
        "load": {"format": fmt, "arch": arch, "quick_gelu": True, **load},
    }


@pytest.fixture()
def test_zoo(fabricated, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(fabricated["root"] / "hf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv(zoo_load.CACHE_ENV, str(fabricated["root"] / "zoo-cache"))
    zoo.add_zoo_file(str(fabricated["root"] / "zoo.yaml"))
    return fabricated


def _images(size: int | None = None) -> torch.Tensor:
    """Two seeded images at ``size`` px (default: ARCH's input size)."""
    import open_clip

    size = size or open_clip.get_model_config(ARCH)["vision_cfg"]["image_size"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        return torch.rand(2, 3, size, size)


def _assert_same_as_plain(model, fabricated, stats) -> None:
    """Image and text embeddings (and so the logits) equal plain open_clip's on the same weights,
    with the entry's mean/std applied by the wrapper to [0, 1] pixels."""
    plain, images = fabricated["plain"], _images()
    mean, std = (torch.tensor(stats[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(images), plain.encode_image((images - mean) / std))
        torch.testing.assert_close(
            model.encode_text(TEXTS), plain.encode_text(fabricated["tokenizer"](TEXTS))
        )
        torch.testing.assert_close(model.logit_scale, plain.logit_scale.exp())
    assert model.quick_gelu


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, path, stats",
    [
        ("t-vision", "vision.pt", CLIP),  # raw vision tower (FARE/TeCoA/Sim-CLIP .pt) + base text tower
        ("t-train", "train.pth.tar", IMAGENET),  # vision_encoder_state_dict, module. prefixes, ImageNet stats
        ("t-full", "full.ckpt", CLIP),  # the whole CLIP under 'model' with module. prefixes (MMCoA)
        ("t-hub", "hub", CLIP),  # open_clip folder whose config says quick_gelu "TRUE"
        ("t-hub-in", "hub-in", IMAGENET),  # a folder whose config has no mean/std: the entry's
    ],
)
def test_each_format_by_name_and_by_path_equals_plain_open_clip(test_zoo, name, path, stats):
    by_name = mmcoa.load_model(name)
    _assert_same_as_plain(by_name, test_zoo, stats)
    by_path = mmcoa.load_model(name, pretrained=str(test_zoo["root"] / path))
    _assert_same_as_plain(by_path, test_zoo, stats)
    assert by_name.name == by_path.name == name


@pytest.mark.slow
def test_a_raw_download_lands_in_the_cache_with_its_sha256_checked(test_zoo):
    mmcoa.models.check_checkpoint("t-full", zoo_load.fetch_file(get_entry("t-full")))
    assert (test_zoo["root"] / "zoo-cache" / "t-full" / "full.ckpt").is_file()


@pytest.mark.slow
def test_quick_gelu_string_true_builds_quick_gelu(test_zoo):
    from open_clip.transformer import QuickGELU

    config = json.loads((test_zoo["root"] / "hub" / "open_clip_config.json").read_text())
    assert config["model_cfg"]["quick_gelu"] == "TRUE"
    model = mmcoa.load_model("t-hub", pretrained=str(test_zoo["root"] / "hub"))
    activations = {type(m) for m in model.model.modules() if type(m).__name__ in ("GELU", "QuickGELU")}
    assert activations == {QuickGELU}


@pytest.mark.slow
def test_a_vision_tower_of_another_architecture_is_one_line(test_zoo):
    with pytest.raises(MmcoaError) as error:
        mmcoa.load_model("t-b16", pretrained=str(test_zoo["root"] / "vision.pt"))
    message = str(error.value)
    assert "\n" not in message
    assert re.search(
        r"t-b16 \(vision tower of "
        + OTHER_ARCH
        + r"\): \S+ has shape \[.*\] in the file, \[.*\] in the model",
        message,
    )


# -- transformers CLIPModel folders (LEAF) ------------------------------------------------------
@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """A transformers CLIPModel of ViT-B/32's shape (QuickGELU) with the CLIP tokenizer; and the
    same weights without tokenizer files, as LEAF publishes them."""
    from transformers import CLIPConfig, CLIPModel

    root = tmp_path_factory.mktemp("hf")
    config = CLIPConfig(
        text_config=dict(
            hidden_size=512, intermediate_size=2048, num_attention_heads=8, num_hidden_layers=12
        ),
        vision_config=dict(
            hidden_size=768,
            intermediate_size=3072,
            num_attention_heads=12,
            num_hidden_layers=12,
            patch_size=32,
        ),
        projection_dim=512,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(2)
        CLIPModel(config).save_pretrained(root / "full")
    clip_bpe_tokenizer().save_pretrained(root / "full")
    (root / "weights-only").mkdir()
    for name in ("config.json", "model.safetensors"):
        (root / "weights-only" / name).symlink_to(root / "full" / name)
    yield root
    shutil.rmtree(root)


@pytest.mark.slow
def test_a_transformers_folder_by_name_and_by_path_equals_plain_transformers(
    hf_folder, tmp_path, monkeypatch
):
    import huggingface_hub.constants
    from transformers import CLIPModel

    _hub_cache(tmp_path / "cache", "test/leaf", {f.name: f for f in (hf_folder / "weights-only").iterdir()})
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    own = tmp_path / "zoo.yaml"
    entry = {
        "name": "t-leaf",
        "normalization": CLIP,
        "load": {"format": "transformers", "hub": "test/leaf", "tokenizer": str(hf_folder / "full")},
    }
    own.write_text(yaml.safe_dump({"checkpoints": [entry]}))
    zoo.add_zoo_file(str(own))
    plain = CLIPModel.from_pretrained(hf_folder / "full").eval()
    tokens = clip_bpe_tokenizer()(TEXTS, padding=True, return_tensors="pt")
    images = _images(plain.config.vision_config.image_size)
    mean, std = (torch.tensor(CLIP[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    with torch.no_grad():
        want_image = plain.get_image_features(pixel_values=(images - mean) / std).pooler_output
        want_text = plain.get_text_features(**tokens).pooler_output
    for pretrained in (None, str(hf_folder / "full"), str(hf_folder / "weights-only")):
        model = mmcoa.load_model("t-leaf", pretrained=pretrained)
        with torch.no_grad():
            torch.testing.assert_close(model.encode_image(images), want_image)
            torch.testing.assert_close(model.encode_text(TEXTS), want_text)


@pytest.mark.slow
def test_mmcoa_eval_takes_a_zoo_name_from_a_zoo_file(test_zoo, tmp_path, capsys):
    zoo._added_files.clear()  # --zoo registers it again
    out = tmp_path / "r.json"
    argv = [
        "eval",
        "--model",
        "t-vision",
        "--zoo",
        str(test_zoo["root"] / "zoo.yaml"),
        "--dataset",
        "synthetic",
    ]
    argv += [
        "--attacks",
        "clean",
        "--n-samples",
        "4",
        "--device",
        "cpu",
        "--output",
        str(out),
        "--no-progress",
    ]
    assert main(argv) == 0, capsys.readouterr().err
    assert "t-vision" in out.read_text()


def test_an_interrupted_http_download_resumes_with_a_range_request(tmp_path, monkeypatch):
    import http.server
    import threading

    body, ranges = os.urandom(5000), []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            start = int(re.match(r"bytes=(\d+)-", self.headers.get("Range", "bytes=0-")).group(1))
            ranges.append(start)
            self.send_response(206 if start else 200)
            self.send_header("Content-Length", str(len(body) - start))
            self.end_headers()
            self.wfile.write(body[start:])

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    dest = tmp_path / "w.pt"
    (tmp_path / "w.pt.part").write_bytes(body[:1234])  # what an interrupted download left
    try:
        url = f"http://127.0.0.1:{server.server_port}/w.pt"
        zoo_load.download(url, dest, hashlib.sha256(body).hexdigest())
    finally:
        server.shutdown()
    assert ranges == [1234] and dest.read_bytes() == body
