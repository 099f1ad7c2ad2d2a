"""Same seed, same weights: the reproducibility battery behind README's "Reproducibility" paragraph.

Trains the demo's ``minilm-clip`` (a MiniLM text tower with 19 dropout layers) for a few steps
with ``mmcoa train``, each run a fresh process as a user starts it, and compares ``final.pt``:

- the same command twice, and under two Python hash seeds (bit-identical expected);
- a run killed with SIGKILL after 1, 2 and 3 of its 4 steps, resumed with ``--resume``, against
  the uninterrupted run, for TeCoA and MMCoA (bit-identical expected);
- 1 against 2 CPU threads, and 1 against 2 processes under torchrun (float rounding expected);
- another seed (different weights expected).

Prints one JSON line per case (differing tensors, largest absolute and relative difference) and
exits 1 if an exact case is not exact::

    .venv/bin/python tools/reproducibility.py runs/reproducibility [--pretrained runs/demo/minilm-clip-fashion-mnist.pt]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

STEPS = 4
COMMON = ["--model", "minilm-clip", "--dataset", "fashion_mnist", "--batch-size", "16", "--seed", "0"]
METHOD_FLAGS = {"tecoa": [], "mmcoa": ["--mlm", "minilm", "--k", "4", "--text-attack-every", "2"]}


def mmcoa_command(processes: int) -> list[str]:
    if processes == 1:
        return [sys.executable, "-m", "mmcoa"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}"] + [
        "--master_addr=127.0.0.1",
        f"--master_port={port}",
        "-m",
        "mmcoa",
    ]


def train_args(method: str, run: Path, pretrained: str, *extra: str) -> list[str]:
    return ["train", "--method", method, *COMMON, "--pretrained", pretrained, *METHOD_FLAGS[method]] + [
        "--max-steps",
        str(STEPS),
        "--save-every",
        "1",
        "--no-progress",
        "--output",
        str(run),
        *extra,
    ]


def environment(threads: int = 1, hash_seed: int = 0) -> dict:
    return {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "PYTHONHASHSEED": str(hash_seed),
        "HF_HUB_OFFLINE": "1",
    }


def run(args: list[str], processes: int = 1, **env) -> None:
    done = subprocess.run(
        mmcoa_command(processes) + args, env=environment(**env), capture_output=True, text=True
    )
    if done.returncode:
        sys.exit(f"mmcoa {' '.join(args)} failed:\n{done.stderr[-2000:]}")


def killed_after(args: list[str], rows: int) -> bool:
    """Start ``mmcoa ARGS`` and SIGKILL it once its metrics log holds ``rows`` rows; whether the
    kill came before the run ended."""
    metrics = Path(args[args.index("--output") + 1]) / "metrics.jsonl"
    process = subprocess.Popen(mmcoa_command(1) + args, env=environment(), stderr=subprocess.DEVNULL)
    while process.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= rows:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    return process.wait() == -signal.SIGKILL


def compare(name: str, a: Path, b: Path, expect: str) -> dict:
    """Differences between the two runs' ``final.pt``; ``expect``: exact, close or different."""
    one, two = (torch.load(p / "final.pt", map_location="cpu", weights_only=True) for p in (a, b))
    gaps = [(one[k] - two[k]).abs().max().item() for k in one if one[k].is_floating_point()]
    scales = [one[k].abs().max().item() for k in one if one[k].is_floating_point()]
    row = {
        "case": name,
        "expect": expect,
        "differing_tensors": sum(not torch.equal(one[k], two[k]) for k in one),
        "tensors": len(one),
        "max_abs_diff": max(gaps),
        "max_rel_diff": max(g / s for g, s in zip(gaps, scales) if s),
    }
    row["ok"] = {"exact": row["differing_tensors"] == 0, "different": row["differing_tensors"] > 0}.get(
        expect, row["max_rel_diff"] < 1e-3
    )
    print(json.dumps(row), flush=True)
    return row


def battery(out: Path, pretrained: str) -> list[dict]:
    rows = []
    for method in ("tecoa", "mmcoa"):
        base = out / method / "whole"
        run(train_args(method, base, pretrained))
        run(train_args(method, out / method / "again", pretrained))
        rows.append(compare(f"{method}: same command twice", base, out / method / "again", "exact"))
        for steps_done in (1, 2, 3):
            killed = out / method / f"killed{steps_done}"
            if not killed_after(train_args(method, killed, pretrained), steps_done):
                sys.exit(f"{method}: the run ended before the kill after step {steps_done}")
            saved = (killed / "checkpoints" / "last.pt").is_file()  # else killed before its first save
            run(train_args(method, killed, pretrained, *(["--resume"] if saved else [])))
            how = "resumed" if saved else "restarted (killed before its first checkpoint)"
            rows.append(compare(f"{method}: SIGKILL after step {steps_done}, {how}", base, killed, "exact"))
    mmcoa = out / "mmcoa" / "whole"
    variants = {
        "mmcoa: hash seed 1 vs 0": ({"hash_seed": 1}, [], 1, "exact"),
        "mmcoa: 2 CPU threads vs 1": ({"threads": 2}, [], 1, "close"),
        "mmcoa: 2 processes vs 1": ({}, [], 2, "close"),
        "mmcoa: seed 1 vs 0": ({}, ["--seed", "1"], 1, "different"),
    }
    for index, (name, (env, extra, processes, expect)) in enumerate(variants.items()):
        other = out / "mmcoa" / f"variant{index}"
        run(train_args("mmcoa", other, pretrained, *extra), processes=processes, **env)
        rows.append(compare(name, mmcoa, other, expect))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("--pretrained", default="random", help="minilm-clip weights (default: random)")
    args = parser.parse_args()
    shutil.rmtree(args.output, ignore_errors=True)
    rows = battery(args.output, args.pretrained)
    (args.output / "reproducibility.json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0 if all(row["ok"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
