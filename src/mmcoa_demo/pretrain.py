"""Step 1 of the demo: contrastive training from scratch on (image, class caption) pairs.

Each step draws one caption template for the batch, encodes the C class captions and applies
:func:`class_aware_contrastive_loss`. Training stops once zero-shot accuracy with the paper's
prompt on a held-out part of the training split reaches the target.

With ``lock_text`` the text tower's pretrained encoder is locked, as in LiT (Zhai et al. 2022,
"LiT: Zero-shot transfer with locked-image text tuning", here with the roles of the towers
swapped): open_clip's ``lock_text_tower`` freezes it (a Hugging Face text tower keeps its
projection trainable) and the frozen modules stay in eval mode (no dropout), so only the image
tower, the projection and the temperature learn. This is the demo's own loop (early stopping on
held-out accuracy, one caption template per step), not the library's trainer, so it lives in
the demo's package.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from mmcoa.data import DEFAULT_TEMPLATE, ClassificationDataset
from mmcoa.errors import MmcoaError
from mmcoa.models import VisionLanguageModel, ZeroShotClassifier
from mmcoa.models.modes import train_unfrozen
from mmcoa.models.zeroshot import top_k_correct
from mmcoa.seeding import DROPOUT_STREAM, seeded_global_rng
from mmcoa.train.objectives import class_aware_contrastive_loss

CAPTION_TEMPLATES = (
    DEFAULT_TEMPLATE,
    "a photo of a {}.",
    "a picture of a {}",
    "an image of a {}.",
    "a {} on a plain background",
)


@dataclass
class PretrainConfig:
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 50
    max_steps: int = 3000
    eval_every: int = 50
    target_accuracy: float = 0.80
    val_size: int = 1000
    seed: int = 0
    templates: tuple[str, ...] = CAPTION_TEMPLATES
    lock_text: bool = False  # LiT-style: a pretrained text encoder stays as it is


def pretrain_contrastive(
    model: VisionLanguageModel,
    dataset: ClassificationDataset,
    config: PretrainConfig | None = None,
    progress: bool = True,
) -> dict:
    """Train ``model`` in place; returns the history and the held-out accuracy reached."""
    config = config or PretrainConfig()
    generator = torch.Generator().manual_seed(config.seed)
    order = torch.randperm(len(dataset), generator=generator).tolist()
    val, train = Subset(dataset, order[: config.val_size]), Subset(dataset, order[config.val_size :])
    if config.lock_text:
        lock_text_tower(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _warmup_cosine(s, config))
    validator = ZeroShotClassifier(model, dataset.prompts(DEFAULT_TEMPLATE))
    history, accuracy, started = [], 0.0, time.perf_counter()
    bar = tqdm(total=config.max_steps, desc="pretrain", unit="step", disable=not progress)
    for step, (images, labels) in enumerate(_batches(train, config, generator), start=1):
        with seeded_global_rng(config.seed, step, DROPOUT_STREAM):  # dropout masks from (seed, step)
            loss = _train_step(model, optimizer, images, labels, dataset, config, generator)
        schedule.step()
        bar.update()
        if step % config.eval_every == 0 or step == config.max_steps:
            accuracy = zero_shot_accuracy(validator, val)
            history.append(
                {
                    "step": step,
                    "loss": loss,
                    "val_accuracy": accuracy,
                    "elapsed_s": round(time.perf_counter() - started, 2),
                }
            )
            bar.set_postfix(loss=f"{loss:.3f}", val_acc=f"{accuracy:.3f}")
            if accuracy >= config.target_accuracy or step >= config.max_steps:
                break
    bar.close()
    model.eval()
    return {"steps": step, "val_accuracy": accuracy, "history": history}


def lock_text_tower(model: VisionLanguageModel) -> None:
    """Freeze the text encoder with open_clip's ``lock_text_tower`` (LiT)."""
    backend = model.model
    if not hasattr(backend, "lock_text_tower"):
        raise MmcoaError(f"lock_text: {model.name} has no lock_text_tower (open_clip models have)")
    backend.lock_text_tower()


def _train_step(model, optimizer, images, labels, dataset, config, generator) -> float:
    train_unfrozen(model)
    template = config.templates[int(torch.randint(len(config.templates), (1,), generator=generator))]
    images, labels = images.to(model.device), labels.to(model.device)
    loss = class_aware_contrastive_loss(
        model.encode_image(images), model.encode_text(dataset.prompts(template)), labels, model.logit_scale
    )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()  # the step renews the model's weight key (mmcoa.models.weight_version)
    return loss.item()


def _batches(train: Subset, config: PretrainConfig, generator: torch.Generator):
    """Shuffled batches, epoch after epoch, until ``max_steps`` batches were yielded."""
    yielded = 0
    while yielded < config.max_steps:
        loader = DataLoader(
            train, batch_size=config.batch_size, shuffle=True, drop_last=True, generator=generator
        )
        for batch in loader:
            yield batch
            yielded += 1
            if yielded == config.max_steps:
                return


def _warmup_cosine(step: int, config: PretrainConfig) -> float:
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@torch.no_grad()
def zero_shot_accuracy(classifier: ZeroShotClassifier, dataset, batch_size: int = 500) -> float:
    """Top-1 zero-shot accuracy over a whole dataset (clean images)."""
    classifier.model.eval()
    correct = total = 0
    for images, labels in DataLoader(dataset, batch_size=batch_size):
        logits = classifier.logits(images.to(classifier.model.device))
        correct += int(top_k_correct(logits, labels).sum())
        total += len(labels)
    return correct / total
