"""Test fixture: a tiny masked language model trained offline on captions, BERT-Attack's
candidate source in the tests and in ``bench/train.py`` (not part of the library).

:func:`train_tiny_mlm` trains a small ``BertForMaskedLM`` from scratch with the standard MLM
objective (15% of tokens selected; of those 80% ``[MASK]``, 10% random, 10% kept) on a caption
corpus and saves it with ``save_pretrained``, so ``mmcoa.attacks.text.load_mlm(directory)`` (and
``--mlm DIRECTORY``) loads and runs it exactly as a real BERT; it is never told the labels or the
victim's gradients. It ranks only the captions' words, so results are comparable with the paper's
(``bert-base-uncased``) only when they say which MLM produced them: the directory holds
``mmcoa_mlm.json`` (corpus size, steps, final loss, seed, sizes) beside the weights.
Tests get trained copies once per session through ``conftest.py``'s ``tiny_mlm`` fixture.
"""

from __future__ import annotations

import json
import os
import shutil
import string
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import torch

from mmcoa.errors import MmcoaError
from mmcoa.models.hub import quiet_transformers_progress

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
INFO_FILE = "mmcoa_mlm.json"
# Every ASCII letter, digit and punctuation mark gets a word-initial and a "##" piece, so a word
# outside the captions is split into characters instead of collapsing into one [UNK].
_ALPHABET = string.ascii_lowercase + string.digits + string.punctuation
_MIN_POSITIONS = 32
_MAX_BATCH = 64


def caption_corpus(classnames: Sequence[str], templates: Sequence[str]) -> list[str]:
    """Every template filled with every class name, template-major: ``templates[0]`` x all names,
    then ``templates[1]`` x all names, and so on. Duplicates are kept (they weight the corpus as
    the captions were weighted in training)."""
    if isinstance(classnames, str) or isinstance(templates, str):
        raise MmcoaError("classnames and templates must be lists of strings, not one string")
    if not classnames or not templates:
        raise MmcoaError(
            f"need at least one class name and one template "
            f"(got {len(classnames)} names and {len(templates)} templates)"
        )
    for template in templates:
        if template.count("{}") != 1:
            raise MmcoaError(f"caption template {template!r} must contain exactly one '{{}}'")
    return [template.format(name) for template in templates for name in classnames]


def train_tiny_mlm(
    corpus: Sequence[str],
    output_dir: str | Path,
    *,
    seed: int = 0,
    steps: int = 300,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 2,
    lr: float = 3e-3,
    progress: bool = False,
) -> Path:
    """Train a tiny BERT masked LM on ``corpus`` and save it (model + tokenizer) to ``output_dir``.

    The WordPiece vocabulary (lowercased, ``[PAD] [UNK] [CLS] [SEP] [MASK]`` first, every caption
    word whole, plus single-character pieces for all ASCII letters, digits and punctuation) is
    built from ``corpus``. Training is seeded and runs on the CPU, on one thread, inside
    ``torch.random.fork_rng``, so the caller's global RNG (and thread count) is untouched and the
    same arguments give identical weights. Each step uses the whole corpus, or a random batch of
    64 captions when the corpus is larger; AdamW with a 20-step warm-up, then constant ``lr``.

    The directory is written atomically (built in a temporary directory beside it, then renamed;
    an existing ``output_dir`` is replaced). It holds what ``save_pretrained`` writes for the
    model and the tokenizer, loadable with ``AutoTokenizer.from_pretrained(output_dir)`` and
    ``AutoModelForMaskedLM.from_pretrained(output_dir)``, and ``mmcoa_mlm.json`` describing the
    run. Returns ``output_dir`` as a :class:`Path`.
    """
    if isinstance(corpus, str):
        raise MmcoaError("the MLM corpus must be a list of captions, not one string")
    corpus = list(corpus)
    if not corpus or not all(isinstance(c, str) and c.strip() for c in corpus):
        raise MmcoaError("the MLM corpus must be a non-empty list of non-empty strings")
    if not isinstance(seed, int):
        raise MmcoaError(f"seed must be an integer, got {seed!r}")
    for name, value in (("steps", steps), ("hidden_size", hidden_size), ("layers", layers), ("heads", heads)):
        if not isinstance(value, int) or value < 1:
            raise MmcoaError(f"{name} must be a positive integer, got {value!r}")
    if hidden_size % heads:
        raise MmcoaError(f"hidden_size ({hidden_size}) must be divisible by heads ({heads})")
    if not lr > 0:
        raise MmcoaError(f"lr must be positive, got {lr!r}")
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise MmcoaError(
            f"MLM output {output_dir} exists and is not a directory; give a directory (new or existing)"
        )

    from transformers import BertConfig

    start = time.perf_counter()
    tokenizer = _build_tokenizer(corpus)
    encoded = [tokenizer(text)["input_ids"] for text in corpus]
    longest = max(len(ids) for ids in encoded)
    positions = max(_MIN_POSITIONS, 1 << (2 * longest - 1).bit_length())  # room for longer edits
    tokenizer.model_max_length = positions
    input_ids = torch.full((len(encoded), longest), tokenizer.pad_token_id, dtype=torch.long)
    for row, ids in enumerate(encoded):
        input_ids[row, : len(ids)] = torch.tensor(ids)
    attention_mask = (input_ids != tokenizer.pad_token_id).long()
    special = torch.tensor(sorted(tokenizer.all_special_ids))
    maskable = ~torch.isin(input_ids, special)
    n_regular = len(tokenizer) - len(SPECIAL_TOKENS)  # random replacements avoid special tokens

    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden_size,
        max_position_embeddings=positions,
        pad_token_id=tokenizer.pad_token_id,
    )
    losses: list[float] = []
    threads = torch.get_num_threads()
    # One thread: these matrices are tiny, and with two threads on a busy 2-core machine a run
    # took 30-60 s instead of 3 s (OpenMP threads waiting on each other). Also makes the result
    # independent of the caller's thread setting.
    torch.set_num_threads(1)
    try:
        model = _train(
            config,
            input_ids,
            attention_mask,
            maskable,
            tokenizer.mask_token_id,
            n_regular,
            seed=seed,
            steps=steps,
            lr=lr,
            progress=progress,
            losses=losses,
        )
    finally:
        torch.set_num_threads(threads)

    info = {
        "kind": "mmcoa-tiny-mlm",
        "corpus_size": len(corpus),
        "steps": steps,
        "seed": seed,
        "final_loss": losses[-1],
        "mean_loss_last_20": sum(losses[-20:]) / len(losses[-20:]),
        "vocab_size": len(tokenizer),
        "hidden_size": hidden_size,
        "layers": layers,
        "heads": heads,
        "lr": lr,
        "max_position_embeddings": positions,
        "train_seconds": round(time.perf_counter() - start, 3),
    }
    _save_atomically(model, tokenizer, info, output_dir, progress)
    return output_dir


def _train(
    config,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    maskable: torch.Tensor,
    mask_id: int,
    n_regular: int,
    *,
    seed: int,
    steps: int,
    lr: float,
    progress: bool,
    losses: list[float],
):
    """The seeded MLM training loop; appends each step's loss to ``losses``."""
    from transformers import BertForMaskedLM

    n = len(input_ids)
    generator = torch.Generator().manual_seed(seed)  # batches and masking
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)  # init and dropout; CPU only, no CUDA touched
        model = BertForMaskedLM(config)
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 20))
        bar = _progress_bar(steps, progress)
        for _ in range(steps):
            rows = torch.randperm(n, generator=generator)[:_MAX_BATCH] if n > _MAX_BATCH else torch.arange(n)
            ids, labels = _mask_tokens(
                input_ids[rows], maskable[rows], mask_id, len(SPECIAL_TOKENS), n_regular, generator
            )
            loss = model(input_ids=ids, attention_mask=attention_mask[rows], labels=labels).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
        if bar is not None:
            bar.close()
    return model.eval()


def _build_tokenizer(corpus: list[str]):
    """A lowercase WordPiece tokenizer for ``corpus``, wrapped as a transformers tokenizer.

    The vocabulary is built deterministically (``tokenizers``' WordPiece trainer orders its
    vocabulary differently from one process to the next, which would break seeded training):
    the special tokens, then every word of the corpus after BERT's normalisation and
    pre-tokenisation (most frequent first, ties alphabetical), then a word-initial and a ``##``
    piece for every ASCII letter, digit and punctuation mark and every other character in the
    corpus. Caption words are single tokens; other words split into the longest known pieces.
    """
    from collections import Counter

    from tokenizers import BertWordPieceTokenizer
    from tokenizers.normalizers import BertNormalizer
    from tokenizers.pre_tokenizers import BertPreTokenizer
    from transformers import BertTokenizerFast

    normalizer, pre_tokenizer = BertNormalizer(lowercase=True), BertPreTokenizer()
    counts = Counter(
        word for text in corpus for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))
    )
    chars = sorted(set(_ALPHABET) | {c for word in counts for c in word})
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for piece in [*sorted(counts, key=lambda w: (-counts[w], w)), *chars, *(f"##{c}" for c in chars)]:
        vocab.setdefault(piece, len(vocab))
    wordpiece = BertWordPieceTokenizer(
        vocab,
        lowercase=True,
        unk_token="[UNK]",
        sep_token="[SEP]",
        cls_token="[CLS]",
        pad_token="[PAD]",
        mask_token="[MASK]",
    )
    return BertTokenizerFast(
        tokenizer_object=wordpiece._tokenizer,
        do_lower_case=True,
        unk_token="[UNK]",
        sep_token="[SEP]",
        cls_token="[CLS]",
        pad_token="[PAD]",
        mask_token="[MASK]",
    )


def _mask_tokens(
    input_ids: torch.Tensor,
    maskable: torch.Tensor,
    mask_id: int,
    first_regular: int,
    n_regular: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's MLM corruption: select 15% of maskable tokens (at least one per batch); of those
    80% -> [MASK], 10% -> a random non-special token, 10% unchanged. Labels are -100 elsewhere."""
    selected = (torch.rand(input_ids.shape, generator=generator) < 0.15) & maskable
    if not selected.any():
        candidates = maskable.nonzero()
        pick = candidates[torch.randint(len(candidates), (1,), generator=generator)][0]
        selected[pick[0], pick[1]] = True
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, -100))
    ids = input_ids.clone()
    roll = torch.rand(input_ids.shape, generator=generator)
    ids[selected & (roll < 0.8)] = mask_id
    random_slots = selected & (roll >= 0.8) & (roll < 0.9)
    random_tokens = torch.randint(
        first_regular, first_regular + n_regular, input_ids.shape, generator=generator
    )
    ids[random_slots] = random_tokens[random_slots]
    return ids, labels


def _progress_bar(steps: int, progress: bool):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=steps, desc="tiny-mlm", unit="step")


def _save_atomically(model, tokenizer, info: dict, output_dir: Path, progress: bool) -> None:
    """Write into a temporary directory beside ``output_dir``, then rename it into place."""
    parent = output_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = parent / f".{output_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()  # honours the umask, unlike tempfile.mkdtemp's 0700
    try:
        with quiet_transformers_progress(not progress):
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
        (staging / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
        mode = staging.stat().st_mode & 0o666  # safetensors writes 0600; match the dir (umask)
        for path in staging.iterdir():
            path.chmod(mode)
        if output_dir.exists():
            old = parent / f".{output_dir.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            os.replace(output_dir, old)
            try:
                os.replace(staging, output_dir)
            except BaseException:
                os.replace(old, output_dir)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
