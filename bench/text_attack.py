"""BERT-Attack throughput: ``mmcoa``'s batched, cached BertAttack versus per-text loops.

Usage::

    python bench/text_attack.py [--device cpu|cuda] [--quick] [--repeats N] [--output f.json]
    python bench/text_attack.py --config train-text [--quick] [--output f.json]

Attacks the 100 CIFAR-100 class prompts (paper Eq. 4, k 10, 1 word) and reports texts per second,
all paths on the same victim and masked LM in one process: ``ours``
(:meth:`mmcoa.attacks.text.BertAttack.attack_embeddings`, fresh and then cached) against
:func:`loop_attack`, per-text loops written like the published research code; every path must
produce the same edits (checked). ``--config train-text`` times the text side of one MMCoA
training step on the 1,000 ImageNet class prompts instead (:func:`bench_train_text`). The models
are random-init (:func:`wordpiece_vocab` builds the MLM's vocabulary). Paths, models and
results: ``docs/benchmarks.md``, "BERT-Attack throughput" and "The training step's text side".
"""

from __future__ import annotations

import gzip
import itertools
import json
import os
import statistics
import string
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import torch.nn.functional as F

import mmcoa
from mmcoa.attacks.text import BertAttack, MaskedLM, kl_divergence_score
from mmcoa.attacks.text.stopwords import default_stop_words
from common import bench_parser, machine, other_load, parse_bench_args, time_it

CIFAR100 = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus "
    "butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch "
    "crab crocodile cup dinosaur dolphin elephant flatfish forest fox girl hamster house "
    "kangaroo keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree motorcycle "
    "mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree "
    "plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew "
    "skunk skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank "
    "telephone television tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf "
    "woman worm"
).split()
PROMPTS = [f"This is a photo of a {name.replace('_', ' ')}" for name in CIFAR100]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
VOCAB_SIZE = 30522
K, MAX_WORDS, MAX_LENGTH, PIECE_TOP, MAX_COMBINATIONS = 10, 1, 30, 4, 24
MIN_LOGIT = float("-inf")


@dataclass
class Config:
    """A victim and a masked LM on one device."""

    name: str
    victim: str
    pretrained: str | None
    device: str
    bert: dict = field(default_factory=dict)  # BertConfig overrides (empty: bert-base sizes)


def configs(device: str) -> list[Config]:
    tiny_bert = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512)
    out = [Config("tiny-clip cpu", "tiny-clip", None, "cpu", tiny_bert)]
    if device == "cuda":
        out.append(Config("ViT-B-32 cuda", "ViT-B-32", "random", "cuda"))
    return out


# -- the masked LM ----------------------------------------------------------------------------


def wordpiece_vocab(size: int = VOCAB_SIZE, piece_share: float = 0.19) -> list[str]:
    """A deterministic WordPiece vocabulary like BERT's: specials, letters, the commonest word
    endings as ``##`` pieces (``piece_share`` of it, as in BERT's), then whole words: the prompt
    words and open_clip's BPE whole words in merge (≈ frequency) order. The words of every
    fourth class name are left out, so those split into pieces (exercising the multi-piece path,
    as rarer names do with BERT's own vocabulary)."""
    from open_clip.tokenizer import default_bpe

    merges = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    left_out = {w for name in CIFAR100[::4] for w in name.split("_")}
    clip_words = ("".join(m.split())[:-4] for m in merges if m.replace(" ", "").endswith("</w>"))
    prompt_words = (w.lower() for p in PROMPTS for w in p.split())
    words = [
        w
        for w in dict.fromkeys(itertools.chain(prompt_words, clip_words))
        if w.isascii() and w.isalpha() and w not in left_out
    ]
    endings = Counter(w[-n:] for w in words for n in range(1, 6) if len(w) > n)
    letters = list(string.ascii_lowercase)
    pieces = ["##" + e for e, _ in sorted(endings.items(), key=lambda kv: (-kv[1], kv[0]))]
    head = SPECIALS + letters + ["##" + c for c in letters]
    return list(dict.fromkeys(head + pieces[: int(size * piece_share)] + words))[:size]


def build_mlm(cfg: Config, vocab: list[str], folder: str) -> MaskedLM:
    """A random-init ``BertForMaskedLM`` (seed 0) with a ``BertTokenizer`` over ``vocab``."""
    from transformers import BertConfig, BertForMaskedLM, BertTokenizer

    with open(os.path.join(folder, "vocab.txt"), "w") as f:
        f.write("\n".join(vocab) + "\n")
    tokenizer = BertTokenizer.from_pretrained(folder)
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=len(vocab), **cfg.bert))
    return MaskedLM(
        tokenizer, model.requires_grad_(False), name=f"random BERT {cfg.bert or 'base'}", device=cfg.device
    )


# -- the per-text loop, written like the published code --------------------------------------


class VictimCounter:
    """Victim forwards (strings encoded) spent by a loop."""

    def __init__(self, victim):
        self.victim, self.strings = victim, 0

    def embed(self, texts: list[str]) -> torch.Tensor:
        self.strings += len(texts)
        return self.victim.encode_text(texts, normalize=True)


def loop_attack(text: str, mlm: MaskedLM, victim: VictimCounter, per_word: bool) -> str:
    """One text: MLM forward, importance, then candidates word by word (greedy, 1 word)."""
    tokenizer, model, stop = mlm.tokenizer, mlm.model, default_stop_words()
    words = text.split()
    sub_words, keys = [], []
    for word in words:
        pieces = tokenizer.tokenize(word)
        keys.append((len(sub_words), len(sub_words) + len(pieces)))
        sub_words += pieces
    tokens = ["[CLS]"] + sub_words[: MAX_LENGTH - 2] + ["[SEP]"]
    ids = torch.tensor([tokenizer.convert_tokens_to_ids(tokens)], device=mlm.device)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0]
    scores, predictions = logits.topk(K, dim=-1)
    scores, predictions = scores[1 : len(sub_words) + 1], predictions[1 : len(sub_words) + 1]
    original = victim.embed([text])
    kl = lambda emb: kl_divergence_score(original, emb, torch.zeros(len(emb), dtype=torch.long))  # noqa: E731
    masked = [" ".join(words[:i] + ["[UNK]"] + words[i + 1 :]) for i in range(len(words))]
    importance = _scores(masked, victim, kl, per_word)
    current = 0.0
    for i in sorted(range(len(words)), key=lambda i: -importance[i]):
        if words[i].lower() in stop or keys[i][1] > MAX_LENGTH - 2:
            continue
        subs = _substitutes(predictions[keys[i][0] : keys[i][1]], scores[keys[i][0] : keys[i][1]], mlm)
        cands = _filter(subs, words[i], stop, mlm.id_to_token)
        if not cands:
            continue
        texts = [" ".join(words[:i] + [c] + words[i + 1 :]) for c in cands]
        values = _scores(texts, victim, kl, per_word)
        best = max(range(len(values)), key=values.__getitem__)
        if values[best] > current:
            return texts[best]  # MAX_WORDS = 1
    return text


def _scores(texts: list[str], victim: VictimCounter, kl, per_word: bool) -> list[float]:
    with torch.no_grad():
        if per_word:
            return kl(victim.embed(texts)).tolist()
        return [kl(victim.embed([t])).item() for t in texts]


def _substitutes(predictions: torch.Tensor, scores: torch.Tensor, mlm: MaskedLM) -> list[list[int]]:
    """Single piece: top-k until a logit < MIN_LOGIT; several: 24 combos by perplexity."""
    if len(predictions) == 1:
        return [[int(i)] for i, s in zip(predictions[0], scores[0]) if s >= MIN_LOGIT]
    rows = [row[:PIECE_TOP].tolist() for row in predictions]
    combos = list(itertools.islice(itertools.product(*rows), MAX_COMBINATIONS))
    tok = mlm.tokenizer
    ids = torch.tensor([[tok.cls_token_id, *c, tok.sep_token_id] for c in combos], device=mlm.device)
    with torch.no_grad():
        logits = mlm.model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, 1:-1]
    ppl = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:-1], reduction="none").mean(1)
    order = sorted(range(len(combos)), key=lambda j: ppl[j].item())
    return [list(combos[j]) for j in order[:K]]


def _filter(
    substitutes: list[list[int]], original: str, stop: frozenset[str], id_to_token: list[str]
) -> list[str]:
    """Drop the original, pieces that do not spell one word, non-alphabetic tokens, stop words."""
    out = []
    for ids in substitutes:
        pieces = [id_to_token[i] if i < len(id_to_token) else "" for i in ids]
        if not pieces[0]:
            continue
        if pieces[0].startswith("##") or not all(p.startswith("##") for p in pieces[1:]):
            continue
        word = pieces[0] + "".join(p[2:] for p in pieces[1:])
        if (
            word.isalpha()
            and word.lower() not in stop
            and word.lower() != original.lower()
            and word not in out
        ):
            out.append(word)
    return out


# -- timing -----------------------------------------------------------------------------------


def paths(mlm: MaskedLM, victim) -> dict:
    """Zero-argument callables returning (adversarial texts, victim strings encoded)."""
    cached = BertAttack(mlm, k=K, max_words=MAX_WORDS, min_logit=MIN_LOGIT)
    cached.attack_embeddings(PROMPTS, victim)

    def ours(attack: BertAttack):
        edits = attack.attack_embeddings(PROMPTS, victim)
        return [e.adversarial for e in edits], sum(e.queries for e in edits)

    def loop(per_word: bool):
        counter = VictimCounter(victim)
        texts = [loop_attack(t, mlm, counter, per_word) for t in PROMPTS]
        return texts, counter.strings

    return {
        "ours": lambda: ours(BertAttack(mlm, k=K, max_words=MAX_WORDS, min_logit=MIN_LOGIT)),
        "ours cached": lambda: ours(cached),
        "loop/word": lambda: loop(True),
        "loop": lambda: loop(False),
    }


def measure(fns: dict, device: str, repeats: int) -> tuple[dict, dict]:
    """Outputs of an untimed warm-up call per path, then interleaved timed repeats."""
    outputs = {name: fn() for name, fn in fns.items()}
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(time_it(fn, device))
    return outputs, times


def bench_config(cfg: Config, vocab: list[str], repeats: int) -> list[dict]:
    victim = mmcoa.load_model(cfg.victim, pretrained=cfg.pretrained, device=cfg.device).eval()
    with tempfile.TemporaryDirectory() as folder:
        mlm = build_mlm(cfg, vocab, folder)
    multi = sum(len(mlm.tokenizer.tokenize(w)) > 1 for p in PROMPTS for w in p.split()[5:])
    with torch.no_grad():
        (outputs, times), load = other_load(lambda: measure(paths(mlm, victim), cfg.device, repeats))
    reference = outputs["ours"][0]
    loop_rate = len(PROMPTS) / statistics.median(times["loop"])
    rows = []
    for path, seconds in times.items():
        rate = len(PROMPTS) / statistics.median(seconds)
        rows.append(
            {
                **asdict(cfg),
                "path": path,
                "seconds": seconds,
                "texts_per_s": rate,
                "best_texts_per_s": len(PROMPTS) / min(seconds),
                "ratio_vs_loop": rate / loop_rate,
                "victim_strings": outputs[path][1],
                "same_edits": sum(a == b for a, b in zip(outputs[path][0], reference)),
                "changed": sum(a != b for a, b in zip(outputs[path][0], PROMPTS)),
                "multi_piece_class_words": multi,
                "other_load_cores": load,
            }
        )
    return rows


def print_report(info: dict, rows: list[dict]) -> None:
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    header = (
        f"{'config':<14} {'path':<12} {'texts/s':>10} {'(best)':>10} {'vs loop':>8} "
        f"{'victim strings':>14} {'same edits':>10} {'other load':>11}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        load = "n/a" if r["other_load_cores"] is None else f"{r['other_load_cores']:.2f} cores"
        print(
            f"{r['name']:<14} {r['path']:<12} {r['texts_per_s']:>10,.1f} "
            f"{r['best_texts_per_s']:>10,.1f} {r['ratio_vs_loop']:>7.1f}x "
            f"{r['victim_strings']:>14,} {r['same_edits']:>6}/{len(PROMPTS)} {load:>11}"
        )
    print(
        f"{len(PROMPTS)} prompts, k={K}, max_words={MAX_WORDS}, min_logit={MIN_LOGIT}; "
        f"texts/s: median of the repeats; (best): fastest repeat; victim strings: strings the "
        f"victim encoded (ours: TextEdit.queries; cached: as first computed); same edits: "
        f"adversarial prompts equal to ours'; prompts changed: {rows[0]['changed']}; class "
        f"words split into several WordPieces: {rows[0]['multi_piece_class_words']}"
    )
    loads = [r["other_load_cores"] for r in rows if r["other_load_cores"] is not None]
    if loads and max(loads) > 0.2:
        print(
            f"WARNING: other processes kept up to {max(loads):.2f} cores busy while timing; "
            "the CPU numbers are contended; rerun on an idle machine"
        )


# -- the text side of a training step (--config train-text) ------------------------------------


def imagenet_prompts(n: int | None = None) -> list[str]:
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    return [f"This is a photo of a {name}" for name in IMAGENET_CLASSNAMES][:n]


def old_text_path(model):
    """``model`` as the toolkit encoded text before: re-tokenized on every call, all 77
    positions (the tokenizer's full rows, which the backend encodes untrimmed)."""
    model.tokenize = lambda texts: {"text": model.tokenizer(list(texts))}
    return model


def train_text_step(model, mlm: MaskedLM, prompts: list[str], attack: BertAttack | None = None) -> int:
    """One MMCoA step's text work: BERT-Attack on the class prompts, then clean and adversarial
    prompts encoded with gradient and back-propagated. Returns the adversarial prompts changed.

    ``attack``: the trainer's attack object, kept across steps (the MLM's candidates are the
    same at every step; the victim's scores are not: the weights are marked changed first, as
    after an optimizer step). None: a fresh attack, what the toolkit's engine amounted to
    before it kept candidates (its cache was keyed on the text tower's state)."""
    model.mark_weights_changed()
    attack = attack or BertAttack(mlm, k=K, max_words=MAX_WORDS, min_logit=MIN_LOGIT)
    with torch.no_grad():
        adversarial = [e.adversarial for e in attack.attack_embeddings(prompts, model)]
    features = torch.cat(
        [model.encode_text(prompts[i : i + 256]) for i in range(0, len(prompts), 256)]
        + [model.encode_text(adversarial[i : i + 256]) for i in range(0, len(prompts), 256)]
    )
    features.float().pow(2).sum().backward()
    model.zero_grad(set_to_none=True)
    return sum(a != p for a, p in zip(adversarial, prompts))


def bench_train_text(device: str, quick: bool, repeats: int) -> dict:
    prompts = imagenet_prompts(200 if quick else None)
    cfg = Config(
        "tiny-clip-77 cpu",
        "tiny-clip-77",
        None,
        device,
        dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512),
    )
    with tempfile.TemporaryDirectory() as folder:
        mlm = build_mlm(cfg, wordpiece_vocab(), folder)
    new = mmcoa.load_model(cfg.victim, device=device).eval()
    old = old_text_path(mmcoa.load_model(cfg.victim, device=device).eval())
    lengths = [len(row) for row in new.token_cache.rows(new.tokenizer, prompts, new._tokenize_rows)]
    kept = BertAttack(mlm, k=K, max_words=MAX_WORDS, min_logit=MIN_LOGIT)  # the trainer's
    fns = {
        "old": lambda: train_text_step(old, mlm, prompts),
        "new": lambda: train_text_step(new, mlm, prompts, kept),
    }
    (outputs, times), load = other_load(lambda: measure(fns, device, repeats))
    seconds = {name: statistics.median(t) for name, t in times.items()}
    return {
        "config": "train-text",
        "model": cfg.victim,
        "n_prompts": len(prompts),
        "prompt_tokens_max": max(lengths),
        "prompt_tokens_mean": statistics.mean(lengths),
        "seconds": times,
        "median_s": seconds,
        "changed": outputs,
        "train_text_ratio": seconds["old"] / seconds["new"],
        "other_load_cores": load,
    }


def main(argv=None) -> None:
    parser = bench_parser(__doc__, "one timed repeat (train-text: 200 prompts)")
    parser.add_argument("--config", choices=("attack", "train-text"), default="attack")
    args = parse_bench_args(parser, argv)
    repeats = args.repeats or (1 if args.quick else 3)
    if args.config == "train-text":
        return main_train_text(args, repeats)
    start = time.perf_counter()
    vocab = wordpiece_vocab()
    info = machine(args.device)
    rows = [row for cfg in configs(args.device) for row in bench_config(cfg, vocab, repeats)]
    print_report(info, rows)
    print(f"whole script: {time.perf_counter() - start:.0f} s")
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"machine": info, "prompts": PROMPTS, "repeats": repeats, "results": rows}, f, indent=2)
        print(f"wrote {args.output}")


def main_train_text(args, repeats: int) -> None:
    result = {"machine": machine(args.device), **bench_train_text(args.device, args.quick, repeats)}
    print("machine: " + ", ".join(f"{k}={v}" for k, v in result["machine"].items()))
    print(
        f"train-text: {result['n_prompts']} ImageNet prompts on {result['model']} "
        f"(tokens: max {result['prompt_tokens_max']}, mean {result['prompt_tokens_mean']:.1f} of 77)"
    )
    for name in ("old", "new"):
        print(
            f"  {name:<4} {result['median_s'][name]:8.2f} s per step (median of {repeats}); "
            f"prompts changed: {result['changed'][name]}"
        )
    print(f"  train_text_ratio (old / new): {result['train_text_ratio']:.2f}x")
    if result["other_load_cores"] and result["other_load_cores"] > 0.2:
        print(f"WARNING: other processes kept {result['other_load_cores']:.2f} cores busy; rerun idle")
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
