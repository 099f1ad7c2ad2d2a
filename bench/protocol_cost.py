"""Projected H100-hours of a protocol run (``mmcoa reproduce PROTOCOL --model NAME``).

A projection, not a timing: no GPU was lent to the session that wrote it. It multiplies

- the image-steps (one forward + backward to the input per image and iteration) the protocol's
  attacks take per sample, with AutoAttack's early exit: a sample misclassified clean costs
  nothing, one fooled costs (about) its first APGD-CE run, one still robust at the end every
  APGD-CE restart and every APGD-T target; the clean and robust fractions are the zoo entry's
  published averages (what the run is expected to find);
- the samples: the protocol's 1,000 per dataset, or the full test sets (clean accuracy is
  forward-only and left out; so is BERT-Attack, text work, and the multimodal column, which
  reuses the image column's PGD);
- the seconds per image-step on one H100: a ViT-B/32 rate measured elsewhere (``--b32-rate``,
  image-steps/s: 2,070 fp32, 8,630 bf16 autocast, as docs/benchmarks.md quotes them) scaled by
  the FLOP ratio of the two architectures' forward + input-backward, counted here with
  ``torch.utils.flop_counter`` (``--mfu-gain``: how much better a large model fills the GPU than
  ViT-B/32 at batch 256; 1 = the same utilisation).

Usage: ``python bench/protocol_cost.py --protocol robustvlm --model fare2-vitl14``. A GPU run's
``bench/pgd.py --device cuda`` on the architecture replaces the scaled rate (``--rate``).
"""

from __future__ import annotations

import argparse
import json

import torch
from torch.utils.flop_counter import FlopCounterMode


def image_step_flops(arch: str) -> float:
    """FLOPs of one image's forward + backward to the input through ``arch``'s image tower."""
    import open_clip

    model = open_clip.create_model(arch, load_weights=False).visual.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    size = model.image_size if isinstance(model.image_size, int) else model.image_size[0]
    images = torch.zeros(1, 3, size, size, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        model(images).sum().backward()
    return float(counter.get_total_flops())


def steps_per_sample(attack: dict, clean: float, robust: float) -> float:
    """Expected image-steps per sample of one attack column under early exit."""
    steps = attack.get("n_steps", 100)
    if attack["name"] == "clean":
        return 0.0
    if attack["name"] == "bert":
        return 0.0  # text only: no image-steps
    if attack["name"] != "apgd":
        return steps * attack.get("n_restarts", 1)  # PGD attacks every sample, no early exit
    restarts = attack.get("n_restarts", 1)
    targeted = attack.get("n_target_classes", 9) * (attack.get("n_restarts_targeted") or restarts)
    return (clean - robust) * steps + robust * (restarts + targeted) * steps


TEST_SIZES = {
    "cifar10": 10000, "cifar100": 10000, "stl10": 8000, "food101": 25250, "oxford_pets": 3669,
    "flowers102": 6149, "dtd": 1880, "eurosat": 5400, "fgvc_aircraft": 3333, "sun397": 21750,
    "country211": 21100, "caltech101": 1736, "caltech256": 6122, "tiny_imagenet": 10000,
    "imagenet": 50000, "wds:cars": 8041, "wds:vtab/pcam": 32768,
}  # fmt: skip
"""Test-set sizes (our splits; Stanford Cars and PCAM as published) of the full-set protocols."""


def samples_of(protocol, part: dict) -> int:
    """Samples attacked per part: the part's n_samples on every dataset, else the full sets."""
    if "n_samples" in part.get("dataset_options", {}):
        return part["dataset_options"]["n_samples"] * len(protocol.datasets)
    return sum(TEST_SIZES[d["name"]] for d in protocol.datasets)


def project(protocol_name: str, model: str, rate: float) -> list[dict]:
    """One row per robust attack column: image-steps and hours at ``rate`` image-steps/s."""
    from mmcoa.eval.protocols import get_protocol
    from mmcoa.models.zoo import get_entry
    from mmcoa.report.published import _same_eps, published_results

    protocol = get_protocol(protocol_name)
    published = dict(published_results(get_entry(model), protocol))
    rows = []
    for part in protocol.definition["parts"].values():
        for attack in part["attacks"]:
            if attack["name"] in ("clean", "bert") or attack["name"] == "multimodal":
                continue  # multimodal reuses the image column's PGD
            eps = f"{attack.get('eps', 1):g}/255"
            result = next((r for e, r in published.items() if e and _same_eps(e, eps)), None)
            numbers = next(iter(result.values())) if result else {"clean": 60.0, "robust": 30.0}
            per_sample = steps_per_sample(attack, numbers["clean"] / 100, numbers["robust"] / 100)
            total = per_sample * samples_of(protocol, part)
            rows.append(
                {
                    "column": attack["label"],
                    "clean": numbers["clean"],
                    "robust": numbers["robust"],
                    "image_steps_per_sample": round(per_sample, 1),
                    "image_steps": round(total),
                    "hours": round(total / rate / 3600, 2),
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", default="robustvlm")
    parser.add_argument("--model", default="fare2-vitl14", help="a zoo name (its arch and published numbers)")
    parser.add_argument("--b32-rate", type=float, nargs=2, default=(2070.0, 8630.0), metavar=("FP32", "BF16"))
    parser.add_argument("--mfu-gain", type=float, default=1.0)
    parser.add_argument("--rate", type=float, default=None, help="measured image-steps/s (replaces scaling)")
    args = parser.parse_args()
    from mmcoa.models.zoo import get_entry

    arch = get_entry(args.model).arch
    ratio = image_step_flops(arch) / image_step_flops("ViT-B-32")
    print(f"{arch}: {ratio:.1f}x the FLOPs of ViT-B-32 per image-step")
    for precision, b32 in zip(("fp32", "bf16"), args.b32_rate):
        rate = args.rate or b32 * args.mfu_gain / ratio
        rows = project(args.protocol, args.model, rate)
        total = sum(r["hours"] for r in rows)
        print(json.dumps({"precision": precision, "image_steps_per_s": round(rate, 1), "rows": rows}))
        print(f"{args.protocol} on {args.model}, {precision}: {total:.1f} H100-hours")


if __name__ == "__main__":
    main()
