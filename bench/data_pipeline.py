"""Data pipeline throughput: ``BatchLoader`` versus the old per-item loop, and a suite that decodes
once versus cell by cell.

Usage::

    python bench/data_pipeline.py [--quick] [--device cpu|cuda] [--threads N] [--output f.json]
                                  [--checkpoint PATH] [--data-root DIR] [--loader-only]

Two figures, old and new side by side in one process: the images per second that
:class:`mmcoa.data.loading.BatchLoader` delivers to the training step against :func:`old_batch`,
the trainer's per-item loop before the batch pipeline (``loader_ratio``), and the wall seconds of
a Table-I-like suite run by :func:`mmcoa.eval.suite.run_suite` in one pass against every cell
evaluated alone (``suite_ratio``; ``records_identical`` checks that the numbers agree). The data,
paths and settings: ``docs/benchmarks.md``, "Data pipeline and suites".
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
import yaml
from PIL import Image

import mmcoa
from common import bench_parser, machine, other_load, parse_bench_args, time_it
from mmcoa.data.loading import BatchLoader
from mmcoa_demo.demo import CHECKPOINT_NAME, DEMO_DATASET, DEMO_MLM, DEMO_MODEL
from mmcoa.eval import sample_indices
from mmcoa.files import write_json_atomic
from mmcoa.eval.suite import evaluate_cell, run_suite
from mmcoa.eval.suite_config import load_suite
from mmcoa.models import load_model

ROOT = Path(__file__).resolve().parents[1]
DEMO_OUTPUT = ROOT / "runs" / "demo"  # where `make demo` writes
CHECKPOINTS = (  # the default --checkpoint: the first that exists, else the demo's random start
    ("MMCoA (demo)", DEMO_OUTPUT / "train" / "mmcoa" / "final.pt"),
    ("CLIP zero-shot (demo)", DEMO_OUTPUT / CHECKPOINT_NAME),
)
WIDTH, HEIGHT, CLASSES, QUALITY = 500, 375, 10, 90
OCTAVES = ((4, 80), (16, 45), (64, 30), (250, 32))  # (noise cells across, amplitude)
BATCH, SEED = 256, 0
METRICS = (
    "accuracy",
    "top5",
    "n_correct",
    "n_samples",
    "attack_success_rate",
    "mean_words_changed",
    "adversarial_prompts",
    "sample_indices_sha1",
)


def settings_for(quick: bool) -> dict:
    """Sizes of both figures (``--quick``: a smoke run)."""
    if quick:
        return {
            "images": 300,
            "batch": BATCH,
            "timed_batches": 3,
            "suite_images": 100,
            "pgd_steps": 10,
            "suite_batch": 250,
        }
    return {
        "images": 2000,
        "batch": BATCH,
        "timed_batches": 16,
        "suite_images": 500,
        "pgd_steps": 100,
        "suite_batch": 250,
    }


# -- the synthetic ImageFolder ----------------------------------------------------------------


def smooth_image(rng: np.random.Generator) -> Image.Image:
    """A WIDTH x HEIGHT RGB image: bicubically upsampled random noise at a few scales, so it
    has structure at every scale and compresses like a photograph, not like noise or a flat."""
    total = np.zeros((HEIGHT, WIDTH, 3), np.float32)
    for cells, amplitude in OCTAVES:
        small = rng.integers(0, 256, (max(2, cells * HEIGHT // WIDTH), cells, 3), dtype=np.uint8)
        up = np.asarray(Image.fromarray(small).resize((WIDTH, HEIGHT), Image.BICUBIC), np.float32)
        total += (up - 127.5) * amplitude / 127.5
    return Image.fromarray(np.clip(total + 127.5, 0, 255).astype(np.uint8))


def write_image(job: tuple[str, int]) -> int:
    """Write image ``index`` under ``root``; returns its size in bytes."""
    root, index = job
    path = Path(root) / f"class_{index % CLASSES:02d}" / f"{index:05d}.jpg"
    smooth_image(np.random.default_rng([SEED, index])).save(path, "JPEG", quality=QUALITY)
    return path.stat().st_size


def build_imagefolder(root: Path, n: int) -> dict:
    """``n`` JPEGs in CLASSES class folders under ``root`` (written by a process pool)."""
    for c in range(CLASSES):
        (root / f"class_{c:02d}").mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with multiprocessing.Pool(os.cpu_count()) as pool:
        sizes = pool.map(write_image, [(str(root), i) for i in range(n)], chunksize=16)
    return {
        "n": n,
        "size": [WIDTH, HEIGHT],
        "classes": CLASSES,
        "quality": QUALITY,
        "mean_kb": sum(sizes) / len(sizes) / 1024,
        "build_s": time.perf_counter() - start,
    }


# -- loader: the two paths ----------------------------------------------------------------------


def epoch_order(n: int, epoch: int) -> torch.Tensor:
    """The seeded permutation of epoch ``epoch`` (the trainer's: one per epoch)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(SEED + epoch))


def step_indices(order: torch.Tensor, position: int, batch: int) -> list[int]:
    """Batch ``position`` of an epoch permutation (full batches only)."""
    return order[position * batch : (position + 1) * batch].tolist()


def new_batches(n: int, batch: int, steps: range) -> list[list[int]]:
    """The index lists of ``steps``, each epoch's permutation drawn once."""
    per_epoch, orders = n // batch, {}
    out = []
    for step in steps:
        epoch, position = divmod(step, per_epoch)
        if epoch not in orders:
            orders[epoch] = epoch_order(n, epoch)
        out.append(step_indices(orders[epoch], position, batch))
    return out


def old_batch(dataset, step: int, batch: int, device: str):
    """One batch as the old trainer built it: a fresh permutation at every step, then
    ``dataset[i]`` per item in this process (float images) and ``torch.stack``."""
    epoch, position = divmod(step, len(dataset) // batch)
    chosen = step_indices(epoch_order(len(dataset), epoch), position, batch)
    items = [dataset[i] for i in chosen]
    images = torch.stack([image for image, _ in items]).to(device)
    return images, torch.tensor([label for _, label in items], device=device)


def time_old(dataset, batch: int, timed: int, device: str) -> tuple[float, float]:
    """Seconds of ``timed`` old batches after one warm-up batch, and the other load."""
    old_batch(dataset, 0, batch, device)

    def run():
        for step in range(1, timed + 1):
            old_batch(dataset, step, batch, device)

    return other_load(lambda: time_it(run, device))


def time_new(dataset, batch: int, timed: int, workers: int, device: str) -> tuple[float, float]:
    """Seconds of ``timed`` batches from a fresh ``BatchLoader`` with ``workers`` processes
    (worker start included), after a warm-up batch through another loader; and the other load."""
    for _ in BatchLoader(dataset, new_batches(len(dataset), batch, range(1)), device=device, workers=workers):
        pass
    batches = new_batches(len(dataset), batch, range(1, timed + 1))

    def run():
        for _ in BatchLoader(dataset, batches, device=device, workers=workers):
            pass

    return other_load(lambda: time_it(run, device))


def worker_counts() -> list[int]:
    """2, this machine's CPU count, and 16 on a machine with at least 16 cores."""
    cores = os.cpu_count() or 1
    return sorted({2, cores} | ({16} if cores >= 16 else set()))


def timed_batches(base: int, workers: int) -> int:
    """At least ``base`` batches and two per worker, a multiple of ``workers`` (so the last
    round of batches keeps every worker busy)."""
    return math.ceil(max(base, 2 * workers) / workers) * workers


def bench_loader(settings: dict, device: str) -> dict:
    """Images/s of the old loop and of ``BatchLoader`` at each worker count."""
    with tempfile.TemporaryDirectory(prefix="mmcoa-bench-jpegs-") as tmp:
        folder = build_imagefolder(Path(tmp), settings["images"])
        dataset = mmcoa.load_dataset(f"imagefolder:{tmp}", split="test")
        batch, base = settings["batch"], settings["timed_batches"]
        seconds, load = time_old(dataset, batch, base, device)
        rows = {"old": row(base * batch, seconds, load, 0)}
        for workers in worker_counts():
            n = timed_batches(base, workers)
            seconds, load = time_new(dataset, batch, n, workers, device)
            rows[f"workers={workers}"] = row(n * batch, seconds, load, workers)
    return {
        "folder": folder,
        "rows": rows,
        "loader_ratio": rows["workers=2"]["images_per_s"] / rows["old"]["images_per_s"],
    }


def row(images: int, seconds: float, load: float | None, workers: int) -> dict:
    """One timed loader path."""
    return {
        "images": images,
        "seconds": seconds,
        "images_per_s": images / seconds,
        "workers": workers,
        "other_load_cores": load,
    }


# -- suite: cell by cell versus one pass --------------------------------------------------------


def pick_weights(checkpoint: str | None) -> tuple[str, dict, str | None]:
    """(row label, model-row weights, note): ``--checkpoint``, else the first demo checkpoint
    that exists, else the demo model's starting weights (random image tower)."""
    if checkpoint:
        return "given checkpoint", {"checkpoint": str(Path(checkpoint).resolve())}, None
    for label, path in CHECKPOINTS:
        if path.is_file():
            return label, {"checkpoint": str(path)}, None
    note = (
        f"no demo checkpoint under {DEMO_OUTPUT} (run `make demo` first): the suite uses the "
        f"demo model's starting weights ({DEMO_MODEL} --pretrained random), so its accuracies "
        f"mean nothing; the timings still compare the two paths"
    )
    return "demo start (random image tower)", {"pretrained": "random"}, note


def suite_file(
    path: Path,
    settings: dict,
    weights: tuple[str, dict],
    n: int,
    steps: int,
    device: str,
    data_root: str | None,
) -> Path:
    """Write the Table-I-like suite YAML (units of 1/255, as suite files are written)."""
    text = {"mlm": DEMO_MLM, "k": 10, "max_words": 1}
    pgd = {"eps": 1, "step_size": 1, "n_steps": steps}
    suite = {
        "name": "bench-table1",
        "task": "classification",
        "split": "test",
        "n_samples": n,
        "seed": SEED,
        "batch_size": settings["suite_batch"],
        "device": device,
        "data_root": data_root,
        "datasets": [DEMO_DATASET],
        "models": [{"label": weights[0], "name": DEMO_MODEL, **weights[1]}],
        "attacks": [
            {"label": "clean", "name": "clean"},
            {"label": "image", "name": "pgd", **pgd},
            {"label": "text", "name": "bert", **text},
            {"label": "multimodal", "name": "multimodal", **pgd, **text},
        ],
    }
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path


def old_suite(config, output: Path) -> list[dict]:
    """The suite as it ran before: the model and the dataset loaded once, each column's attack
    built once, then every cell evaluated alone; records written like ``run_suite``'s."""
    cells = config.cells()
    model = load_model(cells[0].model.name, pretrained=cells[0].weights, device=config.device)
    entry = cells[0].dataset
    dataset = mmcoa.load_dataset(entry.name, split=config.split, root=config.data_root, **entry.options)
    indices = sample_indices(len(dataset), config.n_samples, config.seed)
    attacks = {column.label: config.build_attack(column) for column in config.attacks}
    for attack in attacks.values():
        attack.prepare(config.device)
    records = []
    for cell in cells:
        records.append(evaluate_cell(config, cell, model, dataset, indices, attacks[cell.attack.label]))
        write_json_atomic(output / "cells" / f"{cell.id}.json", records[-1])
    write_json_atomic(output / "records.json", records)
    return records


def identical(old: list[dict], new: list[dict]) -> bool:
    """Whether every cell's numbers (:data:`METRICS`) agree between the two runs."""

    def numbers(records):
        return {r["cell"]: {k: r.get(k) for k in METRICS} for r in records}

    return numbers(old) == numbers(new)


def read_suite(path: Path):
    """``load_suite`` without its checkpoint-file check: that check builds the model on the meta
    device, which ``minilm-clip``'s pretrained text tower refuses (transformers'
    ``from_pretrained`` under a meta device); loading the model checks the file anyway."""
    return load_suite(path, check_files=False)


def bench_suite(settings: dict, device: str, checkpoint: str | None, data_root: str | None) -> dict:
    """Wall seconds of the suite cell by cell (old) and in one pass (new), after a warm-up."""
    label, weights, note = pick_weights(checkpoint)
    if note:
        print(f"NOTE: {note}")
    n, steps = settings["suite_images"], settings["pgd_steps"]
    with tempfile.TemporaryDirectory(prefix="mmcoa-bench-suite-") as tmp:
        tmp = Path(tmp)
        warm = read_suite(suite_file(tmp / "warm.yaml", settings, (label, weights), 8, 1, device, data_root))
        run_suite(warm, tmp / "warm", progress=False)  # loads the MLM and the data files once
        config = read_suite(
            suite_file(tmp / "suite.yaml", settings, (label, weights), n, steps, device, data_root)
        )
        (old, old_s), old_load = other_load(lambda: timed(lambda: old_suite(config, tmp / "old")))
        (new, new_s), new_load = other_load(
            lambda: timed(lambda: run_suite(config, tmp / "new", progress=False))
        )
    return {
        "label": label,
        "weights": weights,
        "note": note,
        "n": n,
        "pgd_steps": steps,
        "seconds": {"old": old_s, "new": new_s},
        "other_load_cores": {"old": old_load, "new": new_load},
        "records_identical": identical(old, new),
        "suite_ratio": old_s / new_s,
        "accuracy": {r["cell"]: r["accuracy"] for r in new},
    }


def timed(fn):
    """``fn()``'s result and its wall seconds."""
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


# -- report -------------------------------------------------------------------------------------


def print_report(info: dict, loader: dict, suite: dict) -> None:
    """The two figures as short tables."""
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    f = loader["folder"]
    print(
        f"loader: {f['n']} JPEGs {f['size'][0]}x{f['size'][1]}, mean {f['mean_kb']:.0f} KB "
        f"(written in {f['build_s']:.1f} s); Resize 256 + CenterCrop 224, batch {BATCH}"
    )
    header = f"{'path':<12} {'images':>7} {'seconds':>8} {'images/s':>9} {'vs old':>7} {'other load':>11}"
    print(header + "\n" + "-" * len(header))
    old_rate = loader["rows"]["old"]["images_per_s"]
    for name, r in loader["rows"].items():
        load = "n/a" if r["other_load_cores"] is None else f"{r['other_load_cores']:.2f} cores"
        print(
            f"{name:<12} {r['images']:>7} {r['seconds']:>8.2f} {r['images_per_s']:>9.1f} "
            f"{r['images_per_s'] / old_rate:>6.2f}x {load:>11}"
        )
    print(f"loader_ratio (workers=2 / old): {loader['loader_ratio']:.2f}  (target >= 1.7)")
    if suite is None:  # --loader-only
        return
    print(
        f"suite: {suite['label']}, {DEMO_DATASET} {suite['n']} images, clean/pgd/bert/multimodal, "
        f"PGD 1/255 x {suite['pgd_steps']} steps"
    )
    for path in ("old", "new"):
        load = suite["other_load_cores"][path]
        print(
            f"  {path:<4} {suite['seconds'][path]:>8.1f} s   other load "
            f"{'n/a' if load is None else f'{load:.2f} cores'}"
        )
    print(
        f"suite_ratio (old / new): {suite['suite_ratio']:.2f}  (target >= 1.8); "
        f"records_identical: {suite['records_identical']}"
    )
    print("accuracy: " + ", ".join(f"{c.rsplit('__', 1)[-1]} {a:.4f}" for c, a in suite["accuracy"].items()))
    loads = [r["other_load_cores"] for r in loader["rows"].values()] + list(
        suite["other_load_cores"].values()
    )
    loads = [v for v in loads if v is not None]
    if loads and max(loads) > 0.2:
        print(
            f"WARNING: other processes kept up to {max(loads):.2f} cores busy while timing; "
            "the numbers are contended; rerun on an idle machine"
        )


def main(argv=None) -> None:
    parser = bench_parser(__doc__, "300 images and 3 batches; 100 suite images, 10 PGD steps")
    parser.add_argument("--checkpoint", help="suite weights (default: the demo's MMCoA checkpoint)")
    parser.add_argument("--data-root", help="where Fashion-MNIST is (default: the library's search)")
    parser.add_argument(
        "--loader-only",
        action="store_true",
        help="only the loader figure (no suite: a machine without the MiniLM package)",
    )
    args = parse_bench_args(parser, argv)
    settings = settings_for(args.quick)
    start = time.perf_counter()
    info = machine(args.device)
    loader = bench_loader(settings, args.device)
    suite = None if args.loader_only else bench_suite(settings, args.device, args.checkpoint, args.data_root)
    print_report(info, loader, suite)
    print(f"whole script: {time.perf_counter() - start:.0f} s")
    if args.output:
        result = {
            "loader_ratio": loader["loader_ratio"],
            "images_per_s": {k: r["images_per_s"] for k, r in loader["rows"].items()},
            "machine": info,
            "settings": {**settings, "device": args.device, "folder": loader["folder"]},
            "loader": loader["rows"],
        }
        if suite is not None:
            result.update(
                suite_ratio=suite["suite_ratio"],
                suite_s=suite["seconds"],
                records_identical=suite["records_identical"],
                suite=suite,
            )
            result["settings"].update(
                suite_weights={"label": suite["label"], **suite["weights"]}, note=suite["note"]
            )
        with open(args.output, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
