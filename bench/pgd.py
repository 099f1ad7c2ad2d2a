"""PGD throughput: ``mmcoa.attacks.PGD`` versus a naive loop written like the published code.

Usage::

    python bench/pgd.py [--device cpu|cuda] [--quick] [--output results.json]

Reports image-steps per second (images x PGD steps / wall seconds) for each configuration and
path, measured in one process on the same model, images and labels, timed in interleaved repeats
after untimed warm-up calls (median reported): ``ours``, :class:`mmcoa.attacks.PGD` (gradients
with respect to the perturbation only; on CUDA also bf16 and bf16 + ``torch.compile``), against
``naive``, :func:`naive_pgd`, an fp32 eager loop like the published research code that calls
``loss.backward()`` and so computes a ``.grad`` for every weight at every step. Configurations
and results: ``docs/benchmarks.md``, "PGD throughput".
"""

from __future__ import annotations

import json
import os
import statistics
from dataclasses import asdict, dataclass
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import torch.nn.functional as F

import mmcoa
from mmcoa.attacks import PGD
from common import bench_parser, machine, other_load, parse_bench_args, time_it
from mmcoa.models import ZeroShotClassifier

EPS = 4 / 255
STEP_SIZE = 1 / 255
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
PROMPTS = [f"a photo of a {c}." for c in CLASSES]


@dataclass
class Config:
    """One benchmark setting: a model at an input size, a batch and a number of PGD steps."""

    name: str
    model: str
    pretrained: str | None
    device: str
    image_size: int
    batch: int
    steps: int
    bf16: bool = False  # also time ours with precision="bf16" (and compiled), and the accuracy gap


def configs(device: str, quick: bool) -> list[Config]:
    """The CPU configurations always; the CUDA ones (ViT-B/32 at batch 256, ViT-L/14 at
    RobustVLM's batch 50) when running on CUDA."""
    scale = 4 if quick else 1  # --quick: a quarter of the batch, fewer steps
    steps = 3 if quick else 10
    out = [
        Config("tiny-clip cpu", "tiny-clip", None, "cpu", 28, 256 // scale, steps),
        Config("ViT-B-32 cpu", "ViT-B-32", "random", "cpu", 224, 16 // scale, 1 if quick else 3),
    ]
    if device == "cuda":
        out.append(Config("ViT-B-32 cuda", "ViT-B-32", "random", "cuda", 224, 256 // scale, steps, bf16=True))
        # RobustVLM's protocol: ViT-L/14 at batch 50 (bench/protocol_cost.py --rate takes its rate)
        out.append(Config("ViT-L-14 cuda", "ViT-L-14", "random", "cuda", 224, 50, steps, bf16=True))
    return out


# -- the two PGD paths ------------------------------------------------------------------------


def naive_pgd(classifier, images, labels, eps, step_size, n_steps, generator=None):
    """PGD as the published research code wrote it: fp32, eager, ``loss.backward()``.

    Every step back-propagates into all weights that require grad (their ``.grad`` is filled
    and accumulated, never cleared), reads ``delta.grad``, takes a sign step, clamps to the
    eps-ball and to valid pixels, and zeroes ``delta.grad``.
    """
    delta = (torch.rand(images.shape, generator=generator, device=images.device) * 2 - 1) * eps
    delta = ((images + delta).clamp(0, 1) - images).detach()
    delta.requires_grad_()
    for _ in range(n_steps):
        logits = classifier.logits(images + delta)
        loss = F.cross_entropy(logits, labels)
        loss.backward()
        grad = delta.grad.detach()
        d = (delta.data + step_size * grad.sign()).clamp(-eps, eps)
        delta.data = (images + d).clamp(0, 1) - images
        delta.grad.zero_()
    return (images + delta).detach()


def ours_pgd(classifier, images, labels, eps, step_size, n_steps, generator=None, precision="fp32"):
    """The library's PGD (one random start, as in :func:`naive_pgd`)."""
    attack = PGD(eps=eps, step_size=step_size, n_steps=n_steps, precision=precision)
    return attack(classifier, images, labels, generator=generator).images


# -- timing -----------------------------------------------------------------------------------


def measure(paths: dict[str, Callable[[], object]], device: str, warmup: int, repeats: int):
    """Per path: the list of timed seconds, after ``warmup`` untimed calls each."""
    for fn in paths.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in paths}
    for _ in range(repeats):
        for name, fn in paths.items():
            times[name].append(time_it(fn, device))
    return times


# -- one configuration ------------------------------------------------------------------------


def setup(cfg: Config):
    """Model (all weights requires_grad=True), classifier, seeded images and labels."""
    model = mmcoa.load_model(cfg.model, pretrained=cfg.pretrained, device=cfg.device)
    model.requires_grad_(True)
    classifier = ZeroShotClassifier(model, PROMPTS)
    classifier.class_embeddings()  # encode the prompts once, outside timing
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(cfg.batch, 3, cfg.image_size, cfg.image_size, generator=gen).to(cfg.device)
    labels = torch.randint(len(PROMPTS), (cfg.batch,), generator=gen).to(cfg.device)
    return model, classifier, images, labels


def paths_for(cfg: Config, classifier, images, labels) -> dict[str, Callable[[], object]]:
    """Zero-argument callables, one per path, each with its own seeded generator."""

    def run(pgd, **kw):
        gen = torch.Generator(device=cfg.device).manual_seed(0)
        return lambda: pgd(classifier, images, labels, EPS, STEP_SIZE, cfg.steps, generator=gen, **kw)

    paths = {"ours fp32": run(ours_pgd)}
    if cfg.bf16:
        paths["ours bf16"] = run(ours_pgd, precision="bf16")
        compiled = compiled_classifier(classifier)
        paths["ours bf16+compile"] = lambda: ours_pgd(
            compiled,
            images,
            labels,
            EPS,
            STEP_SIZE,
            cfg.steps,
            generator=torch.Generator(device=cfg.device).manual_seed(0),
            precision="bf16",
        )
    paths["naive fp32"] = run(naive_pgd)
    return paths


def compiled_classifier(classifier):
    """A copy of the classifier's model with both encoders under ``torch.compile``."""
    import copy

    from mmcoa.models.runtime import configure_runtime

    model = copy.deepcopy(classifier.model)
    print(f"compile: {configure_runtime(model, compile=True)['compile_s']} s")
    return ZeroShotClassifier(model, classifier.prompts)


def precision_gap(classifier, images) -> dict:
    """Robust accuracy (eps 1/255, 10 steps, same random starts) under fp32 and bf16 PGD, with
    the model's own clean predictions as labels (random weights have no true labels): the
    percentage-point gap is the precision's alone."""
    with torch.no_grad():
        labels = classifier.logits(images).argmax(1)
    accuracy = {}
    for precision in ("fp32", "bf16"):
        attack = PGD(eps=1 / 255, step_size=1 / 255, n_steps=10, precision=precision)
        adv = attack(classifier, images, labels, torch.Generator(device=images.device).manual_seed(0)).images
        with torch.no_grad():
            accuracy[precision] = float((classifier.logits(adv).argmax(1) == labels).float().mean())
    return {**accuracy, "gap_pp": 100 * abs(accuracy["fp32"] - accuracy["bf16"]), "n": len(images)}


def grads_left(model) -> int:
    """How many parameters hold a ``.grad``."""
    return sum(p.grad is not None for p in model.parameters())


def check_grads(model, classifier, images, labels) -> dict:
    """Cheap sanity (not timed): one step of each path on two images, from cleared grads."""
    few, few_labels = images[:2], labels[:2]
    model.zero_grad(set_to_none=True)
    ours_pgd(classifier, few, few_labels, EPS, STEP_SIZE, 1)
    ours = grads_left(model)
    naive_pgd(classifier, few, few_labels, EPS, STEP_SIZE, 1)
    naive = grads_left(model)
    model.zero_grad(set_to_none=True)
    return {"params": sum(1 for _ in model.parameters()), "ours": ours, "naive": naive}


def bench_config(cfg: Config, warmup: int, repeats: int) -> tuple[list[dict], dict]:
    """Rows (one per path) and the gradient check for one configuration."""
    torch.manual_seed(0)
    model, classifier, images, labels = setup(cfg)
    grads = check_grads(model, classifier, images, labels)
    paths = paths_for(cfg, classifier, images, labels)
    times, load = other_load(lambda: measure(paths, cfg.device, warmup, repeats))
    if cfg.bf16:
        grads["precision_gap"] = precision_gap(classifier, images)
    naive_rate = cfg.batch * cfg.steps / statistics.median(times["naive fp32"])
    rows = []
    for path, seconds in times.items():
        rate = cfg.batch * cfg.steps / statistics.median(seconds)
        rows.append(
            {
                **asdict(cfg),
                "path": path,
                "seconds": seconds,
                "median_s": statistics.median(seconds),
                "image_steps_per_s": rate,
                "best_image_steps_per_s": cfg.batch * cfg.steps / min(seconds),
                "ratio_vs_naive": rate / naive_rate,
                "other_load_cores": load,
            }
        )
    del model, classifier
    if cfg.device == "cuda":
        torch.cuda.empty_cache()
    return rows, grads


# -- report -----------------------------------------------------------------------------------


def print_report(info: dict, rows: list[dict], grads: dict) -> None:
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    header = (
        f"{'config':<16} {'batch x steps':>13}  {'path':<11} {'image-steps/s':>14} "
        f"{'(best)':>10} {'ours/naive':>11} {'other load':>11}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        ratio = "" if r["path"].startswith("naive") else f"{r['ratio_vs_naive']:.2f}x"
        load = "n/a" if r["other_load_cores"] is None else f"{r['other_load_cores']:.2f} cores"
        print(
            f"{r['name']:<16} {r['batch']:>6} x {r['steps']:<4}  {r['path']:<11} "
            f"{r['image_steps_per_s']:>14,.1f} {r['best_image_steps_per_s']:>10,.1f} "
            f"{ratio:>11} {load:>11}"
        )
    print(
        "image-steps/s: median of the repeats; (best): fastest repeat; other load: cores kept "
        "busy by other processes while timing (non-zero means contended numbers)"
    )
    loads = [r["other_load_cores"] for r in rows if r["other_load_cores"] is not None]
    if loads and max(loads) > 0.2:
        print(
            f"WARNING: other processes kept up to {max(loads):.2f} cores busy while timing; "
            "the CPU numbers are contended; rerun on an idle machine"
        )
    for name, g in grads.items():
        ok = g["ours"] == 0 and g["naive"] > 0
        print(
            f"grad check [{name}]: after ours {g['ours']}/{g['params']} weights hold .grad, "
            f"after naive {g['naive']}/{g['params']} -> {'OK' if ok else 'UNEXPECTED'}"
        )
        if "precision_gap" in g:
            gap = g["precision_gap"]
            print(
                f"precision gap [{name}]: robust accuracy fp32 {gap['fp32']:.4f}, bf16 "
                f"{gap['bf16']:.4f} on {gap['n']} images: {gap['gap_pp']:.2f} pp (target <= 0.5)"
            )


def main(argv=None) -> None:
    parser = bench_parser(__doc__, "smaller batches, fewer repeats")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls per path")
    args = parse_bench_args(parser, argv)
    warmup = args.warmup if args.warmup is not None else 1
    repeats = args.repeats if args.repeats is not None else (2 if args.quick else 5)

    info = machine(args.device)
    rows, grads = [], {}
    for cfg in configs(args.device, args.quick):
        cfg_rows, grads[cfg.name] = bench_config(cfg, warmup, repeats)
        rows += cfg_rows
    print_report(info, rows, grads)
    if args.output:
        with open(args.output, "w") as f:
            json.dump(
                {
                    "machine": info,
                    "eps": EPS,
                    "step_size": STEP_SIZE,
                    "warmup": warmup,
                    "repeats": repeats,
                    "results": rows,
                    "grad_check": grads,
                },
                f,
                indent=2,
            )
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
