"""Loading a zoo entry (:mod:`mmcoa.models.zoo`) the way its ``load.format`` says.

``pretrained`` None fetches the published weights (Hugging Face hub through open_clip or
``huggingface_hub``, or a URL into ``$MMCOA_ZOO_CACHE``, default ``~/.cache/mmcoa/zoo``, resumed
after an interruption and checked against ``sha256`` when the entry records one); a local file
or folder is recognised by what it holds and checked against what the entry accepts (keys and
shapes, before anything is built or downloaded); ``random`` builds the architecture untrained.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

import torch

from mmcoa.errors import MmcoaError, WeightsUnavailableError
from mmcoa.models.checkpoints import load_into
from mmcoa.models.hub import fetching_weights, offline_requested, pretrained_source
from mmcoa.models.open_clip_backend import (
    LOCAL_DIR,
    LOCAL_DIR_CONFIG,
    RANDOM,
    OpenClipModel,
    _quiet_open_clip_logs,
    _seeded_random_init,
    _to_open_clip_layout,
    load_open_clip,
    model_to_load,
    open_clip_registered,
    tokenizer_of,
)
from mmcoa.models.zoo import ZooEntry, get_entry

CACHE_ENV = "MMCOA_ZOO_CACHE"
VISION = ("vision_state_dict", "training_checkpoint")
FULL = ("open_clip_hub", "full_state_dict")
DESCRIBE = {
    "open_clip_hub": "an open_clip model folder (open_clip_config.json + weights)",
    "full_state_dict": "a state dict of the whole open_clip CLIP (visual.* and text keys)",
    "vision_state_dict": "a state dict of the vision tower only (open_clip model.visual)",
    "training_checkpoint": "a training checkpoint dict holding 'vision_encoder_state_dict'",
    "transformers": "a transformers CLIPModel folder (config.json + weights)",
}
TEXT_KEYS = (
    "token_embedding.",
    "text.",
    "ln_final.",
    "text_projection",
    "logit_scale",
)  # no vision tower has them


def backend(name: str) -> str:
    return "transformers" if get_entry(name).format == "transformers" else "open_clip"


def load_zoo_model(name: str, pretrained: str | None, device: str):
    """Build zoo entry ``name`` with its published weights, a local file/folder, or ``random``."""
    entry = _loadable(name)
    fmt = entry.format
    with _quiet_open_clip_logs():
        if pretrained == RANDOM:
            wrapped = _wrap(entry, _random_model(entry), RANDOM)
        elif pretrained is None and fmt in ("open_clip_hub", "transformers") and entry.load.get("hub"):
            wrapped = _from_source(entry, fmt, None, entry.load["hub"])
        else:
            path = os.path.expanduser(pretrained) if pretrained else fetch_file(entry)
            wrapped = _from_source(entry, check_zoo_file(name, path), path, path)
    return wrapped.to(device).eval()


def _from_source(entry: ZooEntry, kind: str, path: str | None, source: str):
    if kind == "transformers":
        return _transformers(entry, source)
    if kind == "open_clip_hub":
        return _open_clip_folder(entry, source if path else None)
    return _wrap(entry, _raw_model(entry, kind, path), path)


def _loadable(name: str) -> ZooEntry:
    entry = get_entry(name)
    if not entry.is_clip:
        why = entry.facts.get("not_clip") or entry.format
        raise MmcoaError(
            f"zoo entry {entry.name} is {why}: it cannot be loaded as a CLIP (mmcoa zoo show {name})"
        )
    return entry


# -- what a local file or folder holds ----------------------------------------------------------
def check_zoo_file(name: str, path: str) -> str:
    """The format of ``path`` when zoo entry ``name`` accepts it (keys and shapes fit its
    architecture); else the one-line error naming what was expected and what was found."""
    entry = _loadable(name)
    kind, state = _classify(path)
    accepted = _accepted(entry)
    if kind not in accepted:
        raise MmcoaError(
            f"checkpoint {path!r} does not fit zoo entry {name}: found {kind}; expected {_expected(accepted)}"
        )
    if state is not None:
        _check_shapes(entry, kind, state, path)
    return kind


def _accepted(entry: ZooEntry) -> list[str]:
    formats = [entry.format, *(a.get("format") for a in entry.load.get("alternates") or [])]
    out = []
    for fmt in formats:
        group = VISION if fmt in VISION else FULL if fmt in FULL else (fmt,)
        out += [k for k in group if k not in out]
    return out


def _expected(accepted: list[str]) -> str:
    return " or ".join(DESCRIBE[k] for k in accepted)


def _classify(path: str) -> tuple[str, dict | None]:
    """(format name, state dict of tensors or None for folders); unrecognised content is
    described instead of named."""
    if os.path.isdir(path):
        for marker, kind in ((LOCAL_DIR_CONFIG, "open_clip_hub"), ("config.json", "transformers")):
            if os.path.isfile(os.path.join(path, marker)):
                return kind, None
        return f"a folder with neither {LOCAL_DIR_CONFIG} nor config.json", None
    payload = _payload(path)
    if isinstance(payload, Mapping) and isinstance(payload.get("vision_encoder_state_dict"), Mapping):
        return "training_checkpoint", _strip(payload["vision_encoder_state_dict"])
    state = _tensors(payload)
    if state is None:
        keys = list(payload)[:4] if isinstance(payload, Mapping) else type(payload).__name__
        return f"a file holding no state dict of tensors (top level: {keys})", None
    if any(k.startswith("visual.") for k in state):
        return "full_state_dict", state
    if any(k.startswith(TEXT_KEYS) for k in state):
        return f"a state dict without vision keys ({len(state)} keys, e.g. {sorted(state)[:2]})", None
    return "vision_state_dict", state


def _payload(path: str):
    if not os.path.isfile(path):
        raise MmcoaError(f"checkpoint {path!r} does not exist; pass a file or folder of the entry's format")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path)
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as error:
            if "mmap" not in str(error):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise MmcoaError(
            f"checkpoint {path!r} is corrupt or unreadable ({type(error).__name__}); expected a torch.save "
            f"file (.pt/.pth/.bin/.pth.tar) or .safetensors"
        ) from error


def _tensors(payload) -> dict | None:
    for key in ("state_dict", "model"):
        if isinstance(payload, Mapping) and isinstance(payload.get(key), Mapping):
            payload = payload[key]
    if (
        not isinstance(payload, Mapping)
        or not payload
        or not all(torch.is_tensor(v) for v in payload.values())
    ):
        return None
    return _strip(payload)


def _strip(state: Mapping) -> dict:
    """``module.`` (DataParallel) prefixes off; a vision tower saved under ``visual.`` unwrapped."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if state and all(k.startswith("visual.") for k in state):
        state = {k.removeprefix("visual."): v for k, v in state.items()}
    return state


def _check_shapes(entry: ZooEntry, kind: str, state: dict, path: str) -> None:
    model = _meta_model(entry)
    own = model.visual.state_dict() if kind in VISION else model.state_dict()
    given = state if kind in VISION else _to_open_clip_layout(model, dict(state))
    mismatch = _mismatch(
        {k: tuple(v.shape) for k, v in own.items()}, {k: tuple(v.shape) for k, v in given.items()}
    )
    if mismatch:
        tower = "vision tower of " if kind in VISION else ""
        raise MmcoaError(
            f"checkpoint {path!r} does not fit zoo entry {entry.name} ({tower}{_arch(entry)}): {mismatch}; "
            f"expected {DESCRIBE[kind]} of {_arch(entry)}"
        )


def _mismatch(own: dict, given: dict) -> str:
    missing, unexpected = sorted(set(own) - set(given)), sorted(set(given) - set(own))
    if missing or unexpected:
        return f"missing {len(missing)} keys (e.g. {missing[:2]}), unexpected {len(unexpected)} (e.g. {unexpected[:2]})"
    bad = [k for k in own if own[k] != given[k]]
    return (
        f"{bad[0]} has shape {list(given[bad[0]])} in the file, {list(own[bad[0]])} in the model"
        if bad
        else ""
    )


def _arch(entry: ZooEntry) -> str:
    arch = entry.load.get("arch")
    if not arch:
        raise MmcoaError(
            f"zoo entry {entry.name} names no load.arch to build: pass {DESCRIBE[entry.format]} as --pretrained"
        )
    return arch


def _meta_model(entry: ZooEntry):
    open_clip = open_clip_registered()
    with _quiet_open_clip_logs(), torch.device("meta"):
        return open_clip.create_model(_arch(entry), device="meta", load_weights=False)


# -- building -------------------------------------------------------------------------------------
def _random_model(entry: ZooEntry):
    if entry.format == "transformers" or not entry.load.get("arch"):
        raise MmcoaError(f"zoo entry {entry.name}: '{RANDOM}' needs an open_clip load.arch; pass its weights")
    return _seeded_random_init(
        open_clip_registered(), _arch(entry), quick_gelu=bool(entry.load.get("quick_gelu"))
    )


def _model_to_load(entry: ZooEntry):
    """The entry's architecture built for a strict load of a full state dict (no random init)."""
    quick_gelu = bool(entry.load.get("quick_gelu"))
    return model_to_load(open_clip_registered(), _arch(entry), quick_gelu=quick_gelu)


def _raw_model(entry: ZooEntry, kind: str, path: str):
    """A vision-only file into ``base``'s ``model.visual``; a full state dict into the architecture."""
    state = _classify(path)[1]
    if kind in VISION:
        model = _base_model(entry)
        load_into(model.visual, state, path, f"{entry.name} (vision tower of {_arch(entry)})")
        return model
    model = _model_to_load(entry)
    load_into(model, _to_open_clip_layout(model, dict(state)), path, entry.name)
    return model


def _base_model(entry: ZooEntry):
    """The text tower and logit scale of a vision-only entry: ``load.base`` (a pretrained tag of
    the architecture, a full open_clip state dict file, or ``random``)."""
    open_clip, arch, base = open_clip_registered(), _arch(entry), entry.load.get("base")
    quick_gelu = bool(entry.load.get("quick_gelu"))
    if not base:
        raise MmcoaError(
            f"zoo entry {entry.name} names no load.base for the text tower; add one (a tag or a file)"
        )
    if base == RANDOM:
        return _random_model(entry)
    if base in open_clip.list_pretrained_tags_by_model(arch):
        hint = f"download it with internet, or set load.base of {entry.name} to a local file in a --zoo YAML"
        with fetching_weights(f"{arch} ({base}), the base of {entry.name}", hint):
            return open_clip.create_model(arch, pretrained=base, force_quick_gelu=quick_gelu)
    path = os.path.expanduser(base)
    kind, state = _classify(path)
    if kind != "full_state_dict":
        raise MmcoaError(
            f"base {path!r} of zoo entry {entry.name} is {kind}; expected {DESCRIBE['full_state_dict']}"
        )
    model = _model_to_load(entry)
    load_into(model, _to_open_clip_layout(model, dict(state)), path, f"{arch} (base of {entry.name})")
    return model


def _wrap(entry: ZooEntry, model, pretrained: str | None) -> OpenClipModel:
    """The [0, 1]-pixel wrapper, normalising with the entry's mean/std."""
    model.visual.preprocess_cfg = {
        **(getattr(model.visual, "preprocess_cfg", None) or {}),
        "mean": entry.mean,
        "std": entry.std,
    }
    tokenizer = tokenizer_of(open_clip_registered(), _arch(entry))
    return OpenClipModel(model, tokenizer, name=entry.name, pretrained=pretrained)


def _open_clip_folder(entry: ZooEntry, folder: str | None) -> OpenClipModel:
    """An open_clip model folder (local, or the entry's hub repo), read by open_clip itself: its
    config's ``quick_gelu`` (even the string "TRUE") and mean/std; the entry's mean/std when
    the config has none."""
    name = f"{LOCAL_DIR}{folder}" if folder else f"hf-hub:{entry.load['hub']}"
    wrapped = load_open_clip(name, None, "cpu")
    if not _config_has_stats(folder, entry):
        wrapped.pixel_mean.copy_(torch.tensor(entry.mean).view(1, 3, 1, 1))
        wrapped.pixel_std.copy_(torch.tensor(entry.std).view(1, 3, 1, 1))
    wrapped.name, wrapped.pretrained = entry.name, folder or name
    return wrapped


def _config_has_stats(folder: str | None, entry: ZooEntry) -> bool:
    if folder:
        config = Path(folder) / LOCAL_DIR_CONFIG
    else:
        from huggingface_hub import hf_hub_download

        with fetching_weights(entry.name, "download it with internet"):
            config = Path(hf_hub_download(entry.load["hub"], LOCAL_DIR_CONFIG))
    preprocess = json.loads(config.read_text()).get("preprocess_cfg") or {}
    return "mean" in preprocess and "std" in preprocess


def _transformers(entry: ZooEntry, source: str):
    """A transformers ``CLIPModel`` folder or hub repo; the tokenizer from the folder, else from
    ``load.tokenizer`` (LEAF folders ship none); every weight must load."""
    from transformers import AutoTokenizer, CLIPModel

    from mmcoa.models.hf_backend import HFClipModel

    with pretrained_source(f"zoo model {entry.name}", source) as only_local:
        model, info = CLIPModel.from_pretrained(source, local_files_only=only_local, output_loading_info=True)
    missing = [k for k in info.get("missing_keys", ()) if not k.endswith("position_ids")]
    if missing or info.get("mismatched_keys"):
        raise MmcoaError(
            f"{source!r} does not fit zoo entry {entry.name}: missing {len(missing)} weights (e.g. {sorted(missing)[:2]}), "
            f"{len(info.get('mismatched_keys') or [])} of another shape; expected {DESCRIBE['transformers']}"
        )
    tokens = source if _has_tokenizer(source) else entry.load.get("tokenizer") or source
    with pretrained_source(f"the tokenizer of {entry.name}", tokens) as only_local:
        tokenizer = AutoTokenizer.from_pretrained(tokens, local_files_only=only_local)
    return HFClipModel(model, tokenizer, name=entry.name, pretrained=source, mean=entry.mean, std=entry.std)


def _has_tokenizer(source: str) -> bool:
    return os.path.isdir(source) and any(
        os.path.isfile(os.path.join(source, f))
        for f in ("tokenizer.json", "vocab.json", "tokenizer_config.json")
    )


# -- fetching -------------------------------------------------------------------------------------
def fetch_file(entry: ZooEntry) -> str:
    """The local path of the entry's published raw file: the hub cache, a URL download, or a
    one-line error saying where to get it and how to pass it."""
    load = entry.load
    if load.get("hub") and load.get("file"):
        from huggingface_hub import hf_hub_download

        hint = f"download {load['file']} from {load['hub']} with internet, or pass --pretrained PATH"
        with fetching_weights(entry.name, hint):
            return hf_hub_download(load["hub"], load["file"])
    if load.get("url"):
        dest = cache_dir() / entry.name / os.path.basename(load["url"].split("?")[0])
        return download(load["url"], dest, load.get("sha256"))
    if load.get("page"):
        raise WeightsUnavailableError(
            f"zoo entry {entry.name} is published at {load['page']} (no direct download): download it there "
            f"and pass --pretrained PATH ({DESCRIBE[entry.format]})"
        )
    raise WeightsUnavailableError(
        f"zoo entry {entry.name} has no public weights: pass --pretrained PATH ({_expected(_accepted(entry))})"
    )


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV, "~/.cache/mmcoa/zoo")).expanduser()


def download(url: str, dest: str | os.PathLike, sha256: str | None = None, timeout: float = 60) -> str:
    """``url`` to ``dest`` through ``dest.part`` (resumed with an HTTP Range request when a
    previous download stopped); the SHA-256 checked when known. Returns ``dest``."""
    dest = Path(dest)
    if not dest.is_file():
        if offline_requested() and not url.startswith("file:"):
            raise WeightsUnavailableError(
                f"{dest} is not in the cache and downloads are off (HF_HUB_OFFLINE): download {url} "
                f"with internet, or pass --pretrained PATH"
            )
        dest.parent.mkdir(parents=True, exist_ok=True)
        print(f"mmcoa: downloading {url} to {dest}", file=sys.stderr)
        _fetch(url, dest.with_name(dest.name + ".part"), timeout)
        if sha256:
            _check_sha256(dest.with_name(dest.name + ".part"), sha256, url)
        os.replace(dest.with_name(dest.name + ".part"), dest)
    elif sha256:
        _check_sha256(dest, sha256, url)
    return str(dest)


def _fetch(url: str, part: Path, timeout: float) -> None:
    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            resumed = have and getattr(response, "status", None) == 206
            with open(part, "ab" if resumed else "wb") as out:
                shutil.copyfileobj(response, out, 1 << 20)
    except urllib.error.HTTPError as error:
        if error.code != 416:  # 416: the part file is already whole
            raise WeightsUnavailableError(
                f"cannot download {url}: HTTP {error.code}; pass --pretrained PATH"
            ) from error
    except OSError as error:
        raise WeightsUnavailableError(
            f"cannot download {url} ({type(error).__name__}); rerun to resume from {part}, or pass --pretrained PATH"
        ) from error


def _check_sha256(path: Path, expected: str, url: str) -> None:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != expected.lower():
        path.unlink()
        raise WeightsUnavailableError(
            f"{path.name} from {url} has SHA-256 {digest.hexdigest()[:16]}..., expected {expected[:16]}...; "
            f"the file was removed, rerun to download it again"
        )
