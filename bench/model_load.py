"""Loading a model from a checkpoint file, and copying it: ours versus the plain way.

Usage::

    python bench/model_load.py [--quick] [--repeats N] [--threads T] [--output results.json]

Two measurements per model, each as the median of interleaved timed repeats after one untimed
warm-up, in one process:

- ``load``: ``mmcoa.load_model(name, pretrained=FILE)`` (parameters left uninitialized for the
  strict load, :mod:`mmcoa.models.skip_init`; the architecture's tokenizer built once,
  ``tokenizer_of``) against ``plain``: ``open_clip.create_model`` with its random init, then
  ``load_state_dict`` and ``open_clip.get_tokenizer``, as a load did before.
- ``copy``: ``copy.deepcopy(model, memo=model.copy_memo())`` (the tokenizer shared: FARE's and
  PMG-AFT's frozen teacher, the interpolation's working copy) against ``copy.deepcopy(model)``.

Models: tiny-clip, minilm-clip (when its package is installed) and, without ``--quick``,
ViT-B-32 (random weights written to a temporary file). Results: ``docs/benchmarks.md``,
"Model loading".
"""

from __future__ import annotations

import copy
import json
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

import mmcoa
from common import bench_parser, machine, other_load, parse_bench_args, time_it
from mmcoa.models.minilm import MINILM_CLIP, minilm_dir
from mmcoa.models.open_clip_backend import open_clip_registered


def plain_load(name: str, path: str):
    """The load as it was: random init, then the weights; a new tokenizer."""
    open_clip = open_clip_registered()
    model = open_clip.create_model(name, load_weights=False)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model, open_clip.get_tokenizer(name)


def interleaved(paths: dict, repeats: int) -> dict[str, float]:
    """Median wall seconds of each path, the paths timed in turn after one warm-up call each."""
    for fn in paths.values():
        fn()
    times = {name: [] for name in paths}
    for _ in range(repeats):
        for name, fn in paths.items():
            times[name].append(time_it(fn, "cpu"))
    return {name: statistics.median(values) for name, values in times.items()}


def bench_model(name: str, repeats: int) -> dict:
    model = mmcoa.load_model(name, pretrained="random")
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "weights.pt")
        torch.save(model.model.state_dict(), path)
        load = interleaved(
            {
                "ours": lambda: mmcoa.load_model(name, pretrained=path),
                "plain": lambda: plain_load(name, path),
            },
            repeats,
        )
    copies = interleaved(
        {
            "ours": lambda: copy.deepcopy(model, memo=model.copy_memo()),
            "plain": lambda: copy.deepcopy(model),
        },
        repeats,
    )
    parameters = sum(p.numel() for p in model.parameters())
    return {"model": name, "parameters": parameters, "load_s": load, "copy_s": copies}


def main(argv=None) -> None:
    parser = bench_parser(__doc__, "tiny-clip and minilm-clip only")
    args = parse_bench_args(parser, argv)
    repeats = args.repeats or 5
    names = ["tiny-clip"] + ([MINILM_CLIP] if minilm_dir() else []) + ([] if args.quick else ["ViT-B-32"])
    start = time.perf_counter()
    rows, load = other_load(lambda: [bench_model(name, repeats) for name in names])
    info = machine("cpu")
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    print(
        f"{'model':<12} {'parameters':>11}  {'load ours':>9} {'plain':>7} {'x':>5}  {'copy ours':>9} {'plain':>7} {'x':>5}"
    )
    for row in rows:
        cells = []
        for key in ("load_s", "copy_s"):
            ours, plain = row[key]["ours"], row[key]["plain"]
            cells.append(f"{ours:8.3f}s {plain:6.3f}s {plain / ours:4.1f}x")
        print(f"{row['model']:<12} {row['parameters']:>11,}  " + "  ".join(cells))
    print(f"median of {repeats} interleaved repeats; whole script: {time.perf_counter() - start:.0f} s")
    if load and load > 0.2:
        print(f"WARNING: other processes kept {load:.2f} cores busy; rerun idle")
    if args.output:
        with open(args.output, "w") as f:
            json.dump(
                {"machine": info, "repeats": repeats, "other_load_cores": load, "results": rows}, f, indent=2
            )
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
