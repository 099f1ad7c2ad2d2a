"""The demo's settings on held-out training images: how they were chosen, never on test images.

Runs the demo's step 1 (LiT pre-training, seed 0, the same 1,000 held-out training images) and
its three fine-tunings with the demo's :class:`~mmcoa_demo.demo.Table1Settings`, then evaluates the
four models on 500 of those held-out training images (``split="train"``): Table I's attacks,
PGD at 4/255 with 20 and 50 steps beside Table I's 10, and the attack table's 1/255 PGD for
the zero-shot model. Prints one line per model. About 7 minutes on one CPU thread.

    .venv/bin/python tools/demo_heldout.py runs/demo-heldout
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from mmcoa.attacks import PGD
from mmcoa.data import load_dataset
from mmcoa_demo.demo import DEMO_MLM, DEMO_MODEL, PRETRAIN, TABLE1_ROWS, Table1Settings, pretrain_demo_clip
from mmcoa.eval import evaluate
from mmcoa.train.trainer import train

HELD_OUT = 500  # of pre-training's 1,000 held-out training images (its val split)


def held_out_indices(dataset, n: int = HELD_OUT, seed: int = 0) -> list[int]:
    """The first ``n`` of the images :func:`pretrain_contrastive` holds out (same permutation)."""
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()
    return order[: min(n, PRETRAIN.val_size)]


def extra_attacks(settings: Table1Settings, zero_shot: bool) -> list:
    """PGD at Table I's eps with more steps, and (zero-shot) at the paper's 1/255."""
    more = [PGD(**{**settings.pgd_params(), "n_steps": n}) for n in (20, 50)]
    return more + ([PGD(**settings.pgd_params(1 / 255))] if zero_shot else [])


def main(output: str = "runs/demo-heldout") -> int:
    torch.set_num_threads(1)
    output, settings = Path(output), Table1Settings()
    train_set = load_dataset("fashion_mnist", split="train")
    weights = {None: pretrain_demo_clip(output, train_set, PRETRAIN, progress=False)}
    for method in settings.methods:
        config = settings.train_config(
            method,
            checkpoint=weights[None],
            mlm=DEMO_MLM,
            output=output / "train" / method,
            data_root=None,
            device="cpu",
            seed=0,
        )
        train(config, progress=False)
        weights[method] = output / "train" / method / "final.pt"
    indices = held_out_indices(train_set)
    for row, method in TABLE1_ROWS:
        attacks = settings.attacks(DEMO_MLM) + extra_attacks(settings, method is None)
        records = evaluate(
            DEMO_MODEL,
            "fashion_mnist",
            attacks,
            pretrained=str(weights[method]),
            split="train",
            indices=indices,
            batch_size=250,
            progress=False,
        )
        cells = [f"{_name(r)} {100 * r['accuracy']:.1f}" for r in records]
        print(f"{row}: " + ", ".join(cells), flush=True)
    return 0


def _name(record: dict) -> str:
    params = record["attack_params"]
    if record["attack"] != "pgd":
        return record["attack"]
    return f"pgd {params['eps'] * 255:g}/255 {params['n_steps']} steps"


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
