"""The training loop: fixed few-shot lists, class-aware losses, checkpoints and exact resume.

Everything random is derived from the seed and the step (data order from (seed, epoch),
attack randomness from (seed, step)), so a run resumed from a checkpoint replays exactly the
same batches and attacks: on CPU its final weights are bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from tqdm.auto import tqdm

from mmcoa.attacks.bert import shared_mlm
from mmcoa.attacks.pgd import RowsOf
from mmcoa.attacks.text.bert_attack import BertAttack
from mmcoa.data import load_dataset
from mmcoa.devices import check_device
from mmcoa.distributed import (SINGLE, World, average_gradients, barrier, gather_objects,
                               mean_terms_over_ranks, world_from_env)
from mmcoa.errors import MmcoaError
from mmcoa.eval.results import versions, write_json_atomic
from mmcoa.files import atomic_path
from mmcoa.models import load_model, validate_model_name
from mmcoa.models.base import MAX_LOGIT_SCALE
from mmcoa.models.checkpoints import META_KEY, meta_sidecar
from mmcoa.models.prompts import prompt_payload
from mmcoa.train.config import TrainConfig
from mmcoa.train.methods import METHODS, StepContext, frozen_copy
from mmcoa.train.shots import dataset_labels, few_shot_indices

CHECKPOINT_FORMAT = "mmcoa-train-v1"
TOWER_CHOICES = {"image": ("image",), "text": ("text",), "both": ("image", "text"), "none": ()}


def train(config: TrainConfig, resume: bool = False, progress: bool = True) -> dict:
    """Run (or resume) one training run into ``config.output``; returns its final metrics."""
    method = METHODS.get(config.method)()
    validate_model_name(config.model)
    check_device(config.device)
    world, device = world_from_env(config.device)
    config = dataclasses.replace(config, device=device)
    run = Path(config.output)
    checkpoint = _load_checkpoint(run, config, world) if resume else None
    dataset = load_dataset(config.dataset, split="train", root=config.data_root)
    labels = functools.cache(functools.partial(dataset_labels, dataset))  # read at most once
    indices = _shot_indices(run, labels, config, reuse=checkpoint is not None)
    _check_shards(len(indices), config.batch_size, world)
    model = load_model(config.model, pretrained=config.pretrained, device=config.device)
    towers = TOWER_CHOICES[config.train_towers] if config.train_towers else method.default_towers
    frozen = frozen_copy(model) if method.needs_frozen_copy else None
    method.setup(model, dataset.image_size or tuple(dataset[0][0].shape[-2:]), towers, config)
    optimizer = build_optimizer(model, config)
    schedule = build_schedule(optimizer, config, total_steps(config, len(indices)))
    text_attack = BertAttack(shared_mlm(config.mlm, config.device), k=config.k,
                             max_words=config.max_words) if method.needs_text_attack and config.beta else None
    method.prepare(model, dataset, indices, config)  # on the starting weights, resumed or not
    state = {"step": 0, "adversarial_prompts": None}
    if checkpoint is not None:
        _check_world_change(checkpoint, model, world)
        state = _restore(checkpoint, model, optimizer, schedule)
    loop = _Loop(config, method, model, frozen, dataset, indices, optimizer, schedule, text_attack,
                 run, world)
    # Every setting has been checked (model, MLM, template, optimizer): only now write the run.
    if world.is_main:
        _prepare_run_logs(run, state["step"])
        _write_json(run / "shots.json", {"shots": config.shots, "seed": config.seed, "indices": indices,
                                         "short_classes": _short_classes(labels, dataset.classnames, indices, config)})
        _write_json(run / "config.json", {**dataclasses.asdict(config), "towers": list(towers),
                                          "world_size": world.size})
    return loop.run(state, progress and world.is_main)


LOGS = ("metrics.jsonl", "adversarial_prompts.jsonl")


def _prepare_run_logs(run: Path, resumed_step: int) -> None:
    """A fresh run starts with empty logs and no stale checkpoint; a resumed run drops the log
    rows written after its checkpoint, which the resumed run writes again. Temporary files of an
    interrupted write (``.<name>.XXXX.tmp``: a kill during a checkpoint save) are swept, and a
    row cut short (a full disk, a power loss) is dropped with a note."""
    sweep_temporary_files(run)
    if resumed_step == 0:
        for stale in [run / "checkpoints" / "last.pt", *(run / "checkpoints").glob("epoch*.pt")]:
            stale.unlink(missing_ok=True)
    for name in LOGS:
        path = run / name
        if path.is_file():
            rows = [row for step, row in _log_rows(path, name) if resumed_step and step <= resumed_step]
            path.write_text("".join(row + "\n" for row in rows))


def sweep_temporary_files(run: Path) -> None:
    """Remove what an interrupted atomic write left in the run (it never renamed it into place)."""
    for folder in (run, run / "checkpoints"):
        for stale in folder.glob(".*.tmp"):
            stale.unlink(missing_ok=True)
            print(f"mmcoa: note: removed {stale}, left by an interrupted write", file=sys.stderr)


def _log_rows(path: Path, name: str) -> list[tuple[int, str]]:
    """(steps done when logged, row) of each readable row; metrics rows count steps from 1,
    prompt rows from 0. A row that is not JSON (cut short by a crash) is left out, with a note."""
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        try:
            step = json.loads(line)["step"]
        except (ValueError, KeyError, TypeError):
            print(f"mmcoa: note: dropped unreadable line {number} of {path} (a write cut short)",
                  file=sys.stderr)
            continue
        rows.append((step if name == "metrics.jsonl" else step + 1, line))
    return rows


def _check_shards(n_items: int, batch_size: int, world: World) -> None:
    """Under torchrun every rank needs at least one sample of every batch, the last one too."""
    if batch_size < world.size:
        raise MmcoaError(f"batch_size {batch_size} is smaller than the {world.size} processes")
    tail = n_items % batch_size
    if world.distributed and 0 < tail < world.size:
        raise MmcoaError(f"the last batch of each epoch holds {tail} of the {n_items} training items, "
                         f"fewer than the {world.size} processes; change batch_size or the number "
                         f"of processes")


def total_steps(config: TrainConfig, n_items: int) -> int:
    per_epoch = math.ceil(n_items / config.batch_size)
    steps = per_epoch * config.epochs
    return min(steps, config.max_steps) if config.max_steps else steps


def build_optimizer(model, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (MMCoA, FARE) or SGD with momentum (TeCoA, PMG-AFT), per ``config.optimizer``; no
    weight decay on norms, biases, embeddings' scalars and logit_scale."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 or "logit_scale" in name or "bias" in name else decay).append(param)
    if not decay and not no_decay:
        raise MmcoaError(f"method {config.method} with train_towers={config.train_towers} trains nothing")
    groups = [{"params": decay, "weight_decay": config.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=config.adam_eps)


def build_schedule(optimizer, config: TrainConfig, steps: int):
    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        if config.schedule == "constant":
            return 1.0
        progress = (step - config.warmup_steps) / max(1, steps - config.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def derived_generator(*parts: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A generator on ``device`` seeded from integers (e.g. seed and step): no state to save.
    Attacks draw their random starts on the images' device, so they need a generator there."""
    seed = 0
    for part in parts:
        seed = (seed * 1_000_003 + int(part)) % (2 ** 63 - 1)
    return torch.Generator(device=device).manual_seed(seed)


class _Loop:
    """One run's state and steps; kept small so each piece reads on its own."""

    def __init__(self, config, method, model, frozen, dataset, indices, optimizer, schedule,
                 text_attack, run: Path, world: World = SINGLE):
        self.config, self.method, self.model, self.frozen = config, method, model, frozen
        self.world = world
        self.dataset, self.indices = dataset, indices
        self.optimizer, self.schedule, self.text_attack, self.run_dir = optimizer, schedule, text_attack, run
        self.prompts = method.class_prompts(dataset, config, model)
        self.steps = total_steps(config, len(indices))
        self.per_epoch = math.ceil(len(indices) / config.batch_size)
        self.global_size = config.batch_size  # of the current step's global batch (``_batch``)

    def run(self, state: dict, progress: bool) -> dict:
        started, losses = time.perf_counter(), []
        bar = tqdm(total=self.steps, initial=state["step"], desc=f"train {self.config.method}",
                   unit="step", disable=not progress)
        for step in range(state["step"], self.steps):
            images, labels, chosen = self._batch(step)
            loss, terms = self._step(step, state, images, labels, chosen)
            losses.append(loss)
            state["step"] = step + 1
            self._log(step, loss, terms, self.global_size, started)
            bar.update()
            rate = _rate(losses, time.perf_counter() - started, self.config)
            bar.set_postfix(loss=f"{loss:.3f}", **{k: f"{v:.3g}" for k, v in terms.items()},
                            img_s=f"{rate:.0f}" if rate else "-")
            if self._should_save(step + 1):
                self._save(state, self._epoch_end(step + 1))
        bar.close()
        metrics = self._export(state, losses, time.perf_counter() - started)
        barrier(self.world)
        return metrics

    def _batch(self, step: int):
        """This rank's shard of the step's global batch (every rank draws the same order)."""
        epoch, position = divmod(step, self.per_epoch)
        order = torch.randperm(len(self.indices), generator=derived_generator(self.config.seed, epoch))
        chosen = order[position * self.config.batch_size:(position + 1) * self.config.batch_size]
        self.global_size = len(chosen)
        chosen = self.world.shard([self.indices[int(i)] for i in chosen])
        items = [self.dataset[i] for i in chosen]
        images = torch.stack([image for image, _ in items]).to(self.config.device)
        return images, torch.tensor([label for _, label in items], device=self.config.device), chosen

    def _step(self, step: int, state: dict, images, labels, chosen=None) -> tuple[float, dict]:
        self._refresh_adversarial_prompts(step, state)
        ctx = StepContext(model=self.model, prompts=self.prompts, config=self.config,
                          generator=self._attack_generator(step),
                          adversarial_prompts=state["adversarial_prompts"], frozen=self.frozen,
                          batch_indices=chosen, world=self.world,
                          share_text=self.method.global_batch_loss)
        self.model.train()
        with self._autocast():
            loss, terms = self.method.loss(ctx, images, labels)
        share = self._shard_weight(len(labels))
        loss = loss * share if share != 1 else loss
        # the logged loss and terms: means over ranks, in one all-reduce
        terms = mean_terms_over_ranks({"loss": loss.item(), **{k: v * share for k, v in terms.items()}},
                                      self.world, self.config.device)
        terms["lr"] = self.optimizer.param_groups[0]["lr"]  # the rate this step used
        self.optimizer.zero_grad(set_to_none=True)
        if not math.isfinite(terms["loss"]):  # the mean over ranks: every rank agrees
            return self._nonfinite(step, state, terms)
        loss.backward()
        average_gradients(self.trainable, self.world)
        terms["grad_norm"] = _grad_norm(self.trainable)
        self.optimizer.step()
        self.schedule.step()
        with torch.no_grad():
            self.model._raw_logit_scale().clamp_(max=math.log(MAX_LOGIT_SCALE))
        self.model.mark_weights_changed()  # fused optimizers do not bump Tensor._version
        return terms.pop("loss"), terms

    def _nonfinite(self, step: int, state: dict, terms: dict) -> tuple[float, dict]:
        """A NaN/inf loss: stop with the step and the intact last checkpoint named, or (with
        ``skip_nonfinite``) leave the weights and optimizer as they were and count the step."""
        if not self.config.skip_nonfinite:
            saved = self.run_dir / "checkpoints" / "last.pt"
            kept = f"{saved} (step {_saved_step(saved)}) is intact" if saved.is_file() else "no checkpoint was saved yet"
            raise MmcoaError(f"the loss is {terms['loss']} at step {step + 1}; {kept}; lower the "
                             f"learning rate, or pass --skip-nonfinite to skip such steps")
        self.schedule.step()  # the schedule stays indexed by step
        state["skipped_nonfinite"] = state.get("skipped_nonfinite", 0) + 1
        print(f"mmcoa: warning: skipped step {step + 1}: the loss is {terms['loss']}", file=sys.stderr)
        terms["grad_norm"] = 0.0
        return terms.pop("loss"), {**terms, "skipped": 1}

    def _attack_generator(self, step: int):
        """The step's attack randomness from (seed, step); under torchrun drawn for the global
        batch with this rank's rows kept, as one process would draw it."""
        generator = derived_generator(self.config.seed, step, 1, device=self.config.device)
        if not self.world.distributed:
            return generator
        return RowsOf(generator, self.world.shard_start(self.global_size), self.global_size)

    def _shard_weight(self, n_local: int) -> float:
        """A per-sample mean loss on this shard counts ``size · n_local / n_global``, so that
        averaging over ranks gives the global batch's mean (1 in one process and for losses
        computed on the gathered global batch)."""
        if not self.world.distributed or self.method.global_batch_loss:
            return 1
        return self.world.size * n_local / self.global_size

    @property
    def trainable(self) -> list[torch.nn.Parameter]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def _autocast(self):
        dtype = torch.bfloat16 if self.config.precision == "bf16" else None
        return torch.autocast(device_type=torch.device(self.config.device).type, dtype=dtype,
                              enabled=dtype is not None)

    def _refresh_adversarial_prompts(self, step: int, state: dict) -> None:
        """BERT-Attack on the class prompts against the current text tower, every N steps."""
        if self.text_attack is None or (state["adversarial_prompts"] is not None
                                        and step % self.config.text_attack_every):
            return
        self.model.eval()
        with self._autocast():  # the training precision; each rank attacks its share
            edits = self.text_attack.attack_embeddings(self.world.shard(self.prompts), self.model)
        prompts = gather_objects([e.adversarial for e in edits], self.world)
        if self.world.is_main:
            _append_jsonl(self.run_dir / "adversarial_prompts.jsonl", {"step": step, "prompts": prompts})
        state["adversarial_prompts"] = prompts

    def _log(self, step, loss, terms, n, started) -> None:
        if not self.world.is_main:
            return
        elapsed = time.perf_counter() - started
        _append_jsonl(self.run_dir / "metrics.jsonl",
                      {"step": step + 1, "epoch": step // self.per_epoch, "loss": loss, **terms,
                       "images": n, "elapsed_s": round(elapsed, 3)})

    def _should_save(self, done: int) -> bool:
        every = self.config.save_every
        return (every and done % every == 0) or done % self.per_epoch == 0 or done == self.steps

    def _epoch_end(self, done: int) -> int | None:
        """The epoch just finished after ``done`` steps, if one did and the run keeps them."""
        if self.config.keep_epoch_checkpoints and done % self.per_epoch == 0:
            return done // self.per_epoch
        return None

    def _save(self, state: dict, epoch: int | None = None) -> None:
        """checkpoints/last.pt, and checkpoints/epoch<N>.pt at the end of epoch N when the run
        keeps them (``keep_epoch_checkpoints``: the points of paper Fig. 7's curves)."""
        if not self.world.is_main:
            return
        payload = {"format": CHECKPOINT_FORMAT, "step": state["step"],
                   "skipped_nonfinite": state.get("skipped_nonfinite", 0),
                   "adversarial_prompts": state["adversarial_prompts"],
                   "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                   "schedule": self.schedule.state_dict(), "rng": torch.get_rng_state(),
                   "config": _identity(self.config), "world_size": self.world.size,
                   META_KEY: self.model.build_meta()}
        _save_atomic(payload, self.run_dir / "checkpoints" / "last.pt")
        if epoch is not None:
            _save_atomic(payload, self.run_dir / "checkpoints" / f"epoch{epoch}.pt")

    def _export(self, state: dict, losses: list[float], elapsed: float) -> dict:
        """final.pt (plain backend state dict: open_clip loads it) with its build metadata in
        final.pt.json (the activation: see ``models/checkpoints.py``), prompt.pt for VP and AdvPT
        (``mmcoa eval --prompt``), metrics; written by rank 0."""
        if not self.world.is_main:
            return self._metrics(state, losses, elapsed)
        _save_atomic(self.model.model.state_dict(), self.run_dir / "final.pt")
        _write_json(Path(meta_sidecar(self.run_dir / "final.pt")), self.model.build_meta())
        for prompt in (self.model.visual_prompt, self.model.text_prompt):
            if prompt is not None:
                _save_atomic(prompt_payload(prompt), self.run_dir / "prompt.pt")
        metrics = self._metrics(state, losses, elapsed)
        _write_json(self.run_dir / "metrics.json", metrics)
        return metrics

    def _metrics(self, state: dict, losses: list[float], elapsed: float) -> dict:
        return {"steps": state["step"], "final_loss": losses[-1] if losses else None,
                "elapsed_s": round(elapsed, 3), "images_per_s": _rate(losses, elapsed, self.config),
                "n_train_items": len(self.indices), "world_size": self.world.size,
                "skipped_nonfinite_steps": state.get("skipped_nonfinite", 0),
                "versions": versions()}


def _saved_step(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)["step"]
    except Exception:  # the message names the file either way
        return "?"


def _grad_norm(parameters) -> float:
    """L2 norm of all gradients of the step (after averaging over ranks)."""
    grads = [p.grad.detach().float().norm() for p in parameters if p.grad is not None]
    return float(torch.stack(grads).norm()) if grads else 0.0


def _rate(losses, elapsed, config) -> float | None:
    return round(len(losses) * config.batch_size / elapsed, 2) if losses and elapsed else None


IDENTITY_KEYS = ("method", "model", "pretrained", "dataset", "shots", "batch_size", "seed",
                 "alpha", "beta", "train_towers")


def _identity(config: TrainConfig) -> dict:
    """The settings a resumed run must share with the run it continues."""
    return {key: getattr(config, key) for key in IDENTITY_KEYS}


def _load_checkpoint(run: Path, config: TrainConfig, world: World = SINGLE) -> dict:
    path = run / "checkpoints" / "last.pt"
    if not path.is_file():
        raise MmcoaError(f"--resume: no checkpoint at {path}; start without --resume")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise MmcoaError(f"--resume: checkpoint {path} is corrupt or unreadable "
                         f"({type(error).__name__})") from error
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise MmcoaError(f"--resume: {path} is not an mmcoa training checkpoint")
    mismatched = {k: (v, checkpoint["config"].get(k)) for k, v in _identity(config).items()
                  if not _same_setting(k, checkpoint["config"].get(k), v)}
    if mismatched:
        detail = ", ".join(f"{k}={new!r} (checkpoint {old!r})" for k, (new, old) in mismatched.items())
        raise MmcoaError(f"--resume: settings differ from the checkpoint's: {detail}")
    return checkpoint


def _same_setting(key: str, saved, given) -> bool:
    """Whether a resumed run's setting is the checkpoint's: a ``pretrained`` file may be named
    by another path (relative or absolute, through a link) if it resolves to the same file."""
    if saved == given:
        return True
    if key != "pretrained" or not isinstance(saved, str) or not isinstance(given, str):
        return False
    return Path(saved).is_file() and Path(given).is_file() and Path(saved).samefile(given)


def _check_world_change(checkpoint: dict, model, world: World) -> None:
    """A run may resume on another number of processes: batch order, shards and random starts
    are drawn for the global batch, so the update is the same; not with BatchNorm layers, whose
    statistics are per shard."""
    saved = checkpoint.get("world_size", 1)
    if saved == world.size:
        return
    if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise MmcoaError(f"--resume: the run was started with {saved} process(es), now "
                         f"{world.size}; this model has BatchNorm layers, whose statistics are per "
                         f"process: resume with {saved}")
    if world.is_main:
        print(f"mmcoa: note: resuming a {saved}-process run on {world.size} process(es); the "
              f"updates are those of the global batch either way", file=sys.stderr)


def _restore(checkpoint: dict, model, optimizer, schedule) -> dict:
    try:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
    except (RuntimeError, ValueError, KeyError) as error:
        raise MmcoaError(f"--resume: checkpoint does not fit this model/method "
                         f"({str(error).splitlines()[0][:120]})") from error
    schedule.load_state_dict(checkpoint["schedule"])
    torch.set_rng_state(checkpoint["rng"])
    return {"step": checkpoint["step"], "adversarial_prompts": checkpoint["adversarial_prompts"],
            "skipped_nonfinite": checkpoint.get("skipped_nonfinite", 0)}


def _shot_indices(run: Path, labels, config: TrainConfig, reuse: bool) -> list[int]:
    """The fixed per-class index list (``train`` saves it in the run), reused on resume;
    ``labels()`` gives every label of the dataset (read once, and only when needed)."""
    path = run / "shots.json"
    if reuse and path.is_file():
        return json.loads(path.read_text())["indices"]
    indices = few_shot_indices(labels(), config.shots, config.seed)
    if not indices:
        raise MmcoaError(f"dataset {config.dataset} has no training samples")
    return indices


def _short_classes(labels, classnames: list[str], indices: list[int], config: TrainConfig) -> list[dict]:
    """Classes with fewer than ``shots`` training images (all of theirs are used): label, name
    and count of each; each is also reported on stderr."""
    if config.shots == "full":
        return []
    every = labels()
    counts = Counter(every[i] for i in indices)
    short = [{"label": c, "name": name, "images": counts.get(c, 0)}
             for c, name in enumerate(classnames) if counts.get(c, 0) < int(config.shots)]
    for entry in short:
        print(f"mmcoa: warning: class {entry['name']!r} has {entry['images']} training images, "
              f"fewer than --shots {config.shots}; all are used", file=sys.stderr)
    return short


def _save_atomic(payload, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def _write_json(path: Path, payload) -> None:
    write_json_atomic(path, payload)


def _append_jsonl(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.write(json.dumps(row) + "\n")
