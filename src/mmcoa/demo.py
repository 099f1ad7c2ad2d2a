"""The offline demo: train a tiny CLIP on Fashion-MNIST, then attack it with PGD.

1. Contrastive training of ``tiny-clip`` from scratch on Fashion-MNIST train images paired with
   captions from a few templates, until zero-shot accuracy with the paper's prompt on 1,000
   held-out training images reaches 0.80.
2. The weights are saved as a plain open_clip state dict that
   ``mmcoa eval --model tiny-clip --pretrained OUTPUT/tiny-clip-fashion-mnist.pt`` loads.
3. A tiny masked LM is trained on the same caption corpus (``OUTPUT/mlm``): the offline
   candidate source for BERT-Attack (no pretrained BERT can be downloaded here). Each text
   attack's record names it in ``attack_params.mlm``.
4. The checkpoint is evaluated on 1,000 test images: clean, PGD (eps 1/255 and 4/255, step
   1/255, 100 steps), the paper's text attack (BERT-Attack on the class prompts, 1 word), its
   multimodal attack (PGD 1/255 + BERT-Attack) and Co-Attack; the records go to
   ``OUTPUT/results.json``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mmcoa.attacks import PGD, build_attack
from mmcoa.data import load_dataset
from mmcoa.eval import evaluate, write_json_atomic, write_records
from mmcoa.models import load_model
from mmcoa.attacks.text.tiny_mlm import caption_corpus, train_tiny_mlm
from mmcoa.train.pretrain import CAPTION_TEMPLATES, PretrainConfig, pretrain_contrastive

DEMO_MODEL = "tiny-clip"
DEMO_DATASET = "fashion_mnist"
CHECKPOINT_NAME = "tiny-clip-fashion-mnist.pt"


def demo_attacks(mlm: str) -> list:
    return [build_attack("clean"), PGD(eps=1 / 255), PGD(eps=4 / 255),
            build_attack("bert", mlm=mlm), build_attack("multimodal", mlm=mlm),
            build_attack("coattack", mlm=mlm)]


def run_demo(output: str | Path, *, data_root: str | None = None, device: str = "cpu",
             n_samples: int = 1000, seed: int = 0, progress: bool = True) -> list[dict]:
    """Run the whole demo; returns the result records also written to ``output/results.json``."""
    output = Path(output)
    train = load_dataset(DEMO_DATASET, split="train", root=data_root)
    load_dataset(DEMO_DATASET, split="test", root=data_root)  # fail now, not after training
    torch.manual_seed(seed)
    model = load_model(DEMO_MODEL, device=device)
    summary = pretrain_contrastive(model, train, PretrainConfig(seed=seed), progress=progress)
    checkpoint = save_checkpoint(model, output / CHECKPOINT_NAME)
    write_json_atomic(output / "pretrain.json", summary)
    mlm = train_tiny_mlm(caption_corpus(train.classnames, CAPTION_TEMPLATES), output / "mlm",
                         seed=seed)
    records = evaluate(DEMO_MODEL, DEMO_DATASET, demo_attacks(str(mlm)), pretrained=str(checkpoint),
                       data_root=data_root, n_samples=n_samples, batch_size=250, seed=seed,
                       device=device, progress=progress)
    write_records(output / "results.json", records)
    return records


def save_checkpoint(model, path: Path) -> Path:
    """Save the backend model's state dict (loadable by plain open_clip) atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(model.model.state_dict(), tmp)
    tmp.replace(path)
    return path
