"""Training throughput: the trainer's step per method versus a naive loop like the published code.

Usage::

    python bench/train.py [--device cpu|cuda] [--quick] [--repeats N] [--methods m ...]
                          [--threads N] [--output results.json]

Reports training *images per second* for each method (``ft-standard``, ``tecoa``, ``mmcoa``,
``fare``, ``pmg-aft``, ``vp``), all paths of a method in one process on the same model, batch and
labels: ``ours``, the trainer's own step (:meth:`mmcoa.train.trainer.TrainLoop.step`; for
``mmcoa`` also ``ours N=10``, adversarial prompts refreshed every 10 steps), against ``naive``
(:class:`NaivePath`), a step written like the published research code. Also prints the projection
for the issue's GPU goal, an MMCoA epoch over CIFAR10 in at most 90 s on one H100 (pending
without CUDA). Paths, configurations and results: ``docs/benchmarks.md``, "Training throughput".
"""

from __future__ import annotations

import copy
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import torch.nn.functional as F

import mmcoa
from mmcoa.attacks.text import BertAttack, load_mlm
from common import bench_parser, machine, other_load, parse_bench_args, time_it
from mmcoa.data import load_dataset
from mmcoa.data.base import TensorClassificationDataset
from mmcoa.errors import MmcoaError
from mmcoa.models import ZeroShotClassifier
from mmcoa.train.config import TrainConfig
from mmcoa.train.methods import METHODS, MMCOA_DEFAULTS, MMCoA, StepContext
from mmcoa.train.objectives import fare_loss, pmg_aft_loss
from mmcoa_demo.pretrain import CAPTION_TEMPLATES
from mmcoa.train.trainer import TrainLoop, build_optimizer, build_schedule, total_steps

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tiny MLM, a test fixture
from tiny_mlm import INFO_FILE, caption_corpus, train_tiny_mlm  # noqa: E402

METHOD_NAMES = ("ft-standard", "tecoa", "mmcoa", "fare", "pmg-aft", "vp")
CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
K, MAX_WORDS = 10, 1  # BERT-Attack: k candidates per word, 1 word (TrainConfig defaults)
EVERY = (1, 10)  # adversarial-prompt refresh periods timed for mmcoa
EPOCH_IMAGES, GOAL_S = 50_000, 90.0  # the GPU goal: a CIFAR10 epoch in <= 90 s on one H100


@dataclass
class Config:
    """One benchmark setting: a model, a batch, training PGD steps, a masked LM, a precision."""

    name: str
    model: str
    pretrained: str | None
    device: str
    batch: int
    pgd_steps: int
    data: str  # "fashion_mnist" (synthetic fallback) or "random" (CIFAR10 classes)
    image_size: int
    mlm: str  # "tiny" (trained here) or "random" (BertForMaskedLM(BertConfig(**bert)))
    precision: str = "fp32"  # ours; naive is always fp32
    bert: dict = field(default_factory=dict)
    every: tuple[int, ...] = EVERY  # mmcoa: adversarial-prompt refresh periods timed


def configs(device: str, quick: bool, vit_cpu_smoke: bool) -> list[Config]:
    """The CPU configuration always; the CUDA one on CUDA; a ViT smoke one on request."""
    out = [
        Config(
            "tiny-clip cpu",
            "tiny-clip",
            None,
            "cpu",
            16 if quick else 64,
            2 if quick else 10,
            "fashion_mnist",
            28,
            "tiny",
        )
    ]
    if device == "cuda":
        out.append(
            Config(
                "ViT-B-32 cuda",
                "ViT-B-32",
                "random",
                "cuda",
                64 if quick else 256,
                2 if quick else 10,
                "random",
                224,
                "random",
                "bf16",
            )
        )
    if vit_cpu_smoke:  # exercises the CUDA configuration's code paths on a CPU (not a benchmark)
        out.append(
            Config(
                "ViT-B-32 cpu smoke",
                "ViT-B-32",
                "random",
                "cpu",
                2,
                1,
                "random",
                224,
                "random",
                "bf16",
                dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512),
                (1, 2),
            )
        )
    return out


# -- data and the masked LM -------------------------------------------------------------------


def training_batch(cfg: Config) -> tuple[TensorClassificationDataset, str]:
    """``cfg.batch`` seeded images and labels as a dataset (its ``prompts()`` are the classes')."""
    gen = torch.Generator().manual_seed(0)
    if cfg.data == "random":
        images = torch.rand(cfg.batch, 3, cfg.image_size, cfg.image_size, generator=gen)
        labels = torch.randint(len(CIFAR10), (cfg.batch,), generator=gen)
        return (
            TensorClassificationDataset(images, labels, name="random", split="train", classnames=CIFAR10),
            "random images, CIFAR10 classes",
        )
    try:
        source, what = load_dataset("fashion_mnist", split="train"), "Fashion-MNIST train"
    except MmcoaError:
        source = load_dataset(
            "synthetic", split="train", n_samples=max(cfg.batch, 64), n_classes=10, image_size=cfg.image_size
        )
        what = "synthetic (Fashion-MNIST not on disk)"
    chosen = torch.randperm(len(source), generator=gen)[: cfg.batch].tolist()
    items = [source[i] for i in chosen]
    images = torch.stack([image for image, _ in items])
    labels = torch.tensor([label for _, label in items])
    return (
        TensorClassificationDataset(
            images, labels, name=source.name, split="train", classnames=source.classnames
        ),
        what,
    )


def masked_lm(cfg: Config, classnames: list[str], folder: str):
    """(MaskedLM, min_logit, description). The tiny MLM keeps BertAttack's default cut (0.3,
    what the trainer uses); a random MLM's logits sit under it, so it gets -inf (as in
    bench/text_attack.py): each word gets its k candidates, as with a trained BERT."""
    if cfg.mlm == "tiny":
        start = time.perf_counter()
        path = train_tiny_mlm(caption_corpus(classnames, CAPTION_TEMPLATES), Path(folder) / "mlm", seed=0)
        info = json.loads((path / INFO_FILE).read_text())
        mlm = load_mlm(str(path), device=cfg.device)
        return (
            mlm,
            0.3,
            (
                f"tiny MLM trained here on {info['corpus_size']} captions "
                f"({info['steps']} steps, final loss {info['final_loss']:.2f}, "
                f"{time.perf_counter() - start:.1f} s)"
            ),
        )
    from text_attack import MIN_LOGIT, Config as MLMConfig, build_mlm, wordpiece_vocab

    mlm = build_mlm(
        MLMConfig(cfg.name, cfg.model, cfg.pretrained, cfg.device, cfg.bert), wordpiece_vocab(), folder
    )
    return mlm, MIN_LOGIT, f"random BertForMaskedLM {cfg.bert or '(bert-base sizes)'}"


# -- the two paths ----------------------------------------------------------------------------


def train_config(cfg: Config, method: str, every: int, output: str) -> TrainConfig:
    """MMCoA's settings for every method (eps 1/255, step 1/255, AdamW, constant lr, alpha =
    beta = 0.5: the naive loop's, not each method's own published optimizer), with the
    benchmark's batch, training PGD steps, precision and refresh period."""
    return TrainConfig(
        method=method,
        model=cfg.model,
        pretrained=cfg.pretrained,
        batch_size=cfg.batch,
        **{**MMCOA_DEFAULTS, "train_steps": cfg.pgd_steps},
        text_attack_every=every,
        k=K,
        max_words=MAX_WORDS,
        precision=cfg.precision,
        device=cfg.device,
        output=output,
    )


class OursPath:
    """The trainer's step (``TrainLoop.step``), ``every`` steps per call (one refresh per call)."""

    def __init__(
        self,
        cfg: Config,
        method,
        model,
        dataset,
        images,
        labels,
        every: int,
        run_dir: str,
    ):
        config = train_config(cfg, method.name, every, run_dir)
        optimizer = build_optimizer(model, config)
        schedule = build_schedule(optimizer, config, total_steps(config, len(dataset)))
        indices = list(range(len(dataset)))
        self.loop = TrainLoop(config, method, model, dataset, indices, optimizer, schedule, Path(run_dir))
        self.state = {"step": 0}
        self.images, self.labels = images, labels
        self.steps_per_call = every if text_attack_of(method) is not None else 1

    def __call__(self) -> None:
        for _ in range(self.steps_per_call):
            step = self.state["step"]
            self.loop.step(step, self.state, self.images, self.labels)
            self.state["step"] = step + 1


def clip_loss(image_features, text_features, logit_scale) -> torch.Tensor:
    """The published code's CLIP loss: per-sample texts, ``arange(batch)`` targets both ways
    (two images of one class are each other's negatives)."""
    image, text = F.normalize(image_features, dim=-1), F.normalize(text_features, dim=-1)
    logits = logit_scale * image @ text.T
    targets = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def naive_ascent(loss_fn, images, eps, step_size, n_steps, generator):
    """``bench/pgd.py``'s ``naive_pgd`` with the loss as an argument: fp32, eager, one random
    start, ``loss.backward()`` each step (every trainable weight's ``.grad`` is filled and
    accumulated, never cleared), sign step on ``delta.grad``, clamp to the eps-ball and [0, 1]."""
    delta = (torch.rand(images.shape, generator=generator, device=images.device) * 2 - 1) * eps
    delta = ((images + delta).clamp(0, 1) - images).detach()
    delta.requires_grad_()
    for _ in range(n_steps):
        loss = loss_fn(images + delta)
        loss.backward()
        d = (delta.data + step_size * delta.grad.detach().sign()).clamp(-eps, eps)
        delta.data = (images + d).clamp(0, 1) - images
        delta.grad.zero_()
    return (images + delta).detach()


class NaivePath:
    """One training step per call, written like the published research code (see the module
    docstring). ``leaked`` counts the trainable tensors holding a ``.grad`` from the attack when
    the training loss is back-propagated (they are then stepped with it)."""

    def __init__(self, cfg: Config, method, model, frozen, prompts, images, labels, mlm, min_logit):
        config = train_config(cfg, method.name, 1, "")
        self.cfg, self.config, self.name = cfg, config, method.name
        self.model, self.frozen, self.prompts, self.images, self.labels = (
            model,
            frozen,
            prompts,
            images,
            labels,
        )
        self.mlm, self.min_logit = mlm, min_logit
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.params,
            lr=config.lr,
            betas=config.betas,
            eps=config.adam_eps,
            weight_decay=config.weight_decay,
        )
        self.sample_prompts = [prompts[int(y)] for y in labels]
        self.step, self.leaked = 0, 0

    def pgd(self, loss_fn):
        gen = torch.Generator(device=self.cfg.device).manual_seed(self.step)
        c = self.config
        return naive_ascent(loss_fn, self.images, c.train_eps, c.train_step_size, c.train_steps, gen)

    def ce_pgd(self):
        classifier = ZeroShotClassifier(self.model, self.prompts)
        return self.pgd(lambda x: F.cross_entropy(classifier.logits(x), self.labels)), classifier

    def text_attack(self) -> list[str]:
        """Per sample, one text at a time, a fresh engine each (no batching, no cache)."""
        return [
            BertAttack(self.mlm, k=K, max_words=MAX_WORDS, min_logit=self.min_logit)
            .attack_embeddings([p], self.model)[0]
            .adversarial
            for p in self.sample_prompts
        ]

    def loss(self) -> torch.Tensor:
        model, images, labels, name = self.model, self.images, self.labels, self.name
        if name == "ft-standard":
            return clip_loss(
                model.encode_image(images), model.encode_text(self.sample_prompts), model.logit_scale
            )
        if name in ("tecoa", "vp"):
            adv, _ = self.ce_pgd()
            return clip_loss(
                model.encode_image(adv), model.encode_text(self.sample_prompts), model.logit_scale
            )
        if name == "mmcoa":
            adv, _ = self.ce_pgd()
            adversarial_prompts = self.text_attack()
            scale, c = model.logit_scale, self.config
            image_term = clip_loss(model.encode_image(adv), model.encode_text(self.sample_prompts), scale)
            text_term = clip_loss(model.encode_image(images), model.encode_text(adversarial_prompts), scale)
            return c.adv_image_weight * image_term + c.adv_text_weight * text_term
        if name == "fare":
            with torch.no_grad():
                target = self.frozen.encode_image(images)
            adv = self.pgd(lambda x: (model.encode_image(x) - target).pow(2).sum(-1).mean())
            return fare_loss(model.encode_image(adv), target)
        if name == "pmg-aft":
            adv, classifier = self.ce_pgd()
            with torch.no_grad():
                original = ZeroShotClassifier(self.frozen, self.prompts).logits(adv)
            return pmg_aft_loss(classifier.logits(adv), classifier.logits(images), original, labels)[0]
        raise ValueError(f"no naive step for method {name!r}")

    def __call__(self) -> None:
        self.model.train()
        self.optimizer.zero_grad()  # once, before the attack: its backward() calls leak into .grad
        loss = self.loss()
        self.leaked = sum(p.grad is not None for p in self.params)
        loss.backward()
        self.optimizer.step()
        self.step += 1


def text_attack_of(method):
    """The method's own text adversary (MMCoA's BERT-Attack engine), or None."""
    return getattr(method, "text_attack", None)


def ours_leak_check(cfg: Config, method, model, prompts, images, labels) -> int:
    """Untimed: trainable tensors holding a ``.grad`` after ``method.loss`` (attack included)
    from cleared gradients, on 4 images (clean prompts stand in for the adversarial ones)."""
    config = train_config(cfg, method.name, 1, "")
    generator = torch.Generator(device=cfg.device).manual_seed(0)
    ctx = StepContext(model=model, prompts=prompts, config=config, generator=generator)
    if "adversarial_prompts" in method.state_dict():
        method.load_state_dict({"adversarial_prompts": prompts})
    model.zero_grad(set_to_none=True)
    model.train()
    dtype = torch.bfloat16 if cfg.precision == "bf16" else None
    with torch.autocast(device_type=torch.device(cfg.device).type, dtype=dtype, enabled=dtype is not None):
        method.loss(ctx, images[:4], labels[:4])
    held = sum(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.zero_grad(set_to_none=True)
    return held


# -- timing -----------------------------------------------------------------------------------


def text_attack_seconds(cfg: Config, model, prompts, naive: NaivePath, mlm, min_logit, repeats: int) -> dict:
    """Median seconds of the text attack alone, as each path runs it once per (refresh) step:
    ours, one batched call on the C class prompts with a fresh engine; naive, B per-sample
    calls. The model is left as training left it."""

    def ours():
        BertAttack(mlm, k=K, max_words=MAX_WORDS, min_logit=min_logit).attack_embeddings(prompts, model)

    times = measure({"ours": ours, "naive": naive.text_attack}, cfg.device, 0, repeats)
    return {name: statistics.median(seconds) for name, seconds in times.items()}


def measure(paths: dict, device: str, warmup: int, repeats: int) -> dict:
    """Per path: timed seconds of ``repeats`` interleaved calls, after ``warmup`` untimed ones."""
    for fn in paths.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in paths}
    for _ in range(repeats):
        for name, fn in paths.items():
            times[name].append(time_it(fn, device))
    return times


def bench_method(
    cfg: Config,
    name: str,
    base,
    dataset,
    images,
    labels,
    mlm,
    min_logit,
    warmup: int,
    repeats: int,
    folder: str,
) -> list[dict]:
    """Rows (one per path) for one method on a fresh copy of ``base``."""
    torch.manual_seed(0)
    engine = BertAttack(mlm, k=K, max_words=MAX_WORDS, min_logit=min_logit)  # the benchmark's MLM
    method = MMCoA(text_attack=engine) if name == "mmcoa" else METHODS.get(name)()
    model = copy.deepcopy(base)
    method.setup(model, dataset.image_size, method.default_towers, train_config(cfg, name, 1, folder))
    frozen = getattr(method, "frozen", None)  # FARE's and PMG-AFT's teacher
    prompts = dataset.prompts()
    trainable = sum(p.requires_grad for p in model.parameters())
    ours_held = ours_leak_check(cfg, method, model, prompts, images, labels)
    attacks_text = text_attack_of(method) is not None
    everies = cfg.every if attacks_text else (1,)
    paths = {}
    for every in everies:
        label = "ours" if every == 1 else f"ours N={every}"
        run_dir = os.path.join(folder, f"{name}-{every}")
        paths[label] = OursPath(cfg, method, model, dataset, images, labels, every, run_dir)
    naive = paths["naive"] = NaivePath(cfg, method, model, frozen, prompts, images, labels, mlm, min_logit)

    def timed():
        times = measure(paths, cfg.device, warmup, repeats)
        text_s = (
            text_attack_seconds(cfg, model, prompts, naive, mlm, min_logit, repeats) if attacks_text else {}
        )
        return times, text_s

    (times, text_s), load = other_load(timed)
    rate = lambda path, s: cfg.batch * getattr(paths[path], "steps_per_call", 1) / s  # noqa: E731
    naive_rate = rate("naive", statistics.median(times["naive"]))
    rows = []
    for path, seconds in times.items():
        median = rate(path, statistics.median(seconds))
        rows.append(
            {
                **asdict(cfg),
                "method": name,
                "path": path,
                "steps_per_call": getattr(paths[path], "steps_per_call", 1),
                "precision_used": "fp32" if path == "naive" else cfg.precision,
                "seconds": seconds,
                "images_per_s": median,
                "best_images_per_s": rate(path, min(seconds)),
                "ratio_vs_naive": median / naive_rate,
                "trainable_tensors": trainable,
                "grads_after_attack": naive.leaked if path == "naive" else ours_held,
                "text_attack_s": text_s.get("naive" if path == "naive" else "ours"),
                "other_load_cores": load,
            }
        )
    paths = naive = model = frozen = None  # drop them before empty_cache (timed() shares them)
    if cfg.device == "cuda":
        torch.cuda.empty_cache()
    return rows


def bench_config(cfg: Config, methods, warmup: int, repeats: int) -> tuple[list[dict], dict]:
    base = mmcoa.load_model(cfg.model, pretrained=cfg.pretrained, device=cfg.device)
    dataset, data = training_batch(cfg)
    images, labels = dataset.images.to(cfg.device), dataset.labels.to(cfg.device)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        mlm, min_logit, mlm_info = masked_lm(cfg, dataset.classnames, folder)
        for name in methods:
            started = time.perf_counter()
            rows += bench_method(
                cfg, name, base, dataset, images, labels, mlm, min_logit, warmup, repeats, folder
            )
            print(f"  [{cfg.name}] {name}: {time.perf_counter() - started:.1f} s", file=sys.stderr)
    info = {"data": data, "mlm": mlm_info, "min_logit": min_logit, "prompts": dataset.prompts()}
    del base, mlm
    if cfg.device == "cuda":
        torch.cuda.empty_cache()
    return rows, info


# -- report -----------------------------------------------------------------------------------


def goal_projection(rows: list[dict]) -> list[str]:
    """Seconds for a 50,000-image MMCoA epoch at the measured CUDA rates (ours N=1 and N=10)."""
    cuda = [r for r in rows if r["device"] == "cuda" and r["method"] == "mmcoa"]
    if not cuda:
        return [
            f"GPU goal (MMCoA epoch over CIFAR10's {EPOCH_IMAGES:,} images, {10}-step training "
            f"PGD + text attack, <= {GOAL_S:.0f} s on one H100): pending, no CUDA device here; "
            "run: python bench/train.py --device cuda --output train-cuda.json"
        ]
    out = []
    for r in cuda:
        seconds = EPOCH_IMAGES / r["images_per_s"]
        verdict = "meets" if seconds <= GOAL_S else "misses"
        out.append(
            f"GPU goal projection [{r['name']} {r['path']} {r['precision_used']}, "
            f"{r['pgd_steps']}-step PGD, batch {r['batch']}]: {EPOCH_IMAGES:,} / "
            f"{r['images_per_s']:,.1f} images/s = {seconds:,.1f} s per epoch -> {verdict} "
            f"the <= {GOAL_S:.0f} s goal (random images at {r['image_size']} px; data loading "
            f"not included; GPU: see machine line)"
        )
    return out


def print_report(info: dict, rows: list[dict], details: dict) -> None:
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    for name, d in details.items():
        print(f"[{name}] data: {d['data']}; MLM: {d['mlm']}; min_logit {d['min_logit']}")
    header = (
        f"{'config':<18} {'method':<11} {'path':<10} {'prec':<4} {'batch x PGD':>11} "
        f"{'images/s':>9} {'(best)':>9} {'vs naive':>9} {'.grad after attack':>18} {'other load':>11}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        ratio = "" if r["path"] == "naive" else f"{r['ratio_vs_naive']:.2f}x"
        load = "n/a" if r["other_load_cores"] is None else f"{r['other_load_cores']:.2f} cores"
        grads = f"{r['grads_after_attack']}/{r['trainable_tensors']}"
        print(
            f"{r['name']:<18} {r['method']:<11} {r['path']:<10} {r['precision_used']:<4} "
            f"{r['batch']:>5} x {r['pgd_steps']:<3} {r['images_per_s']:>9,.1f} "
            f"{r['best_images_per_s']:>9,.1f} {ratio:>9} {grads:>18} {load:>11}"
        )
    print(
        "images/s: training images per wall second, median of the repeats ('ours N=10': blocks of "
        "10 steps with one prompt refresh); (best): fastest repeat; .grad after attack: trainable "
        "tensors holding a gradient from the attack when the training loss is back-propagated "
        "(naive: leaked and stepped; ours: checked untimed after method.loss from cleared grads); "
        "other load: cores kept busy by other processes while timing"
    )
    for r in rows:
        if r["method"] == "mmcoa" and r["path"] in ("ours", "naive") and r["text_attack_s"]:
            what = (
                f"one batched call on the {len(details[r['name']]['prompts'])} class prompts"
                if r["path"] == "ours"
                else f"{r['batch']} per-sample calls"
            )
            step_s = r["batch"] / r["images_per_s"]
            print(
                f"[{r['name']}] mmcoa {r['path']}: text attack alone {r['text_attack_s']:.3f} s "
                f"({what}) of a {step_s:.3f} s step ({r['text_attack_s'] / step_s:.0%})"
            )
    loads = [r["other_load_cores"] for r in rows if r["other_load_cores"] is not None]
    if loads and max(loads) > 0.2:
        print(
            f"WARNING: other processes kept up to {max(loads):.2f} cores busy while timing; "
            "the CPU numbers are contended; rerun on an idle machine"
        )
    for line in goal_projection(rows):
        print(line)


def main(argv=None) -> None:
    parser = bench_parser(__doc__, "smaller batches, 2 PGD steps, 1 repeat")
    parser.add_argument("--methods", nargs="+", choices=METHOD_NAMES, default=list(METHOD_NAMES))
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per path")
    parser.add_argument(
        "--vit-cpu-smoke",
        action="store_true",
        help="also run the CUDA configuration's code on the CPU, tiny (not a benchmark)",
    )
    args = parse_bench_args(parser, argv)
    repeats = args.repeats or (1 if args.quick else 3)
    start = time.perf_counter()
    info = machine(args.device)
    rows, details = [], {}
    for cfg in configs(args.device, args.quick, args.vit_cpu_smoke):
        cfg_rows, details[cfg.name] = bench_config(cfg, args.methods, args.warmup, repeats)
        rows += cfg_rows
    print_report(info, rows, details)
    print(f"whole script: {time.perf_counter() - start:.0f} s")
    if args.output:
        with open(args.output, "w") as f:
            json.dump(
                {
                    "machine": info,
                    "warmup": args.warmup,
                    "repeats": repeats,
                    "details": details,
                    "results": rows,
                    "goal": goal_projection(rows),
                },
                f,
                indent=2,
            )
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
