"""The training loop: few-shot lists, class-aware losses, checkpoints and exact resume.

Everything random is derived from the seed and the step (data order from (seed, epoch), or from
the run's ``shots.json`` under ``shot_sampler: pop``,
attack randomness from (seed, step), dropout masks from the global generators seeded from
(seed, step) for the step's duration), so the same command gives the same weights, and a run
resumed from a checkpoint replays exactly the same batches, attacks and masks: on CPU its final
weights are bit-identical to an uninterrupted run. Parts of the model that do not train run in
eval mode throughout (:func:`mmcoa.models.modes.train_unfrozen`): no dropout in a frozen tower.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from tqdm.auto import tqdm

from mmcoa.attacks.pgd import RowsOf
from mmcoa.data import load_dataset
from mmcoa.devices import check_device
from mmcoa.distributed import (
    SINGLE,
    World,
    average_gradients,
    barrier,
    mean_terms_over_ranks,
    world_from_env,
)
from mmcoa.errors import MmcoaError
from mmcoa.files import load_tensors, write_json_atomic
from mmcoa.models import load_model, validate_model_name
from mmcoa.models.checkpoints import META_KEY, TRAINING_KEY, meta_sidecar
from mmcoa.models.modes import active_dropout, frozen_parts, train_unfrozen
from mmcoa.models.prompts import prompt_payload
from mmcoa.profiles import CORRECTED, PUBLISHED, profile_settings, switch_fields
from mmcoa.provenance import versions
from mmcoa.seeding import ATTACK_STREAM, DROPOUT_STREAM, derived_generator, seeded_global_rng
from mmcoa.data.loading import BatchLoader
from mmcoa.train.checkpointing import (
    CHECKPOINT_FORMAT,
    RESUME_STATE,
    BackgroundWriter,
    drop_resume_state,
    host_copy,
    model_only,
    save_atomic,
    saved_step,
)
from mmcoa.train.config import TrainConfig
from mmcoa.train.export import write_export
from mmcoa.train.logsinks import write_sinks
from mmcoa.train.methods import METHODS, StepContext
from mmcoa.train.order import EpochOrder, training_order
from mmcoa.train.shots import dataset_labels, few_shot_indices, popped_epochs

TOWER_CHOICES = {"image": ("image",), "text": ("text",), "both": ("image", "text"), "none": ()}


def train(config: TrainConfig, resume: bool = False, progress: bool = True) -> dict:
    """Run (or resume) one training run into ``config.output``; returns its final metrics."""
    method = METHODS.get(config.method)()
    validate_model_name(config.model)
    check_device(config.device)
    _check_sampler(config)
    world, device = world_from_env(config.device)
    config = dataclasses.replace(config, device=device)
    run = Path(config.output)
    checkpoint = _load_checkpoint(run, config, world) if resume else None
    dataset = load_dataset(config.dataset, split="train", root=config.data_root)
    labels = functools.cache(functools.partial(dataset_labels, dataset))  # read at most once
    shots = _shot_record(run, labels, config, reuse=checkpoint is not None)
    indices, order = shots["indices"], training_order(shots, config.batch_size, config.seed)
    _check_shards(order.epoch_items, config.batch_size, world)
    model = load_model(config.model, pretrained=config.pretrained, device=config.device)
    towers = TOWER_CHOICES[config.train_towers] if config.train_towers else method.default_towers
    method.setup(model, dataset.image_size or tuple(dataset[0][0].shape[-2:]), towers, config)
    optimizer = build_optimizer(model, config)
    schedule = build_schedule(optimizer, config, total_steps(config, order.epoch_items))
    method.prepare(model, dataset, indices, config)  # on the starting weights, resumed or not
    state = {"step": 0}
    if checkpoint is not None:
        _check_world_change(checkpoint, model, world)
        state = _restore(checkpoint, model, method, optimizer, schedule)
    loop = TrainLoop(config, method, model, dataset, indices, optimizer, schedule, run, world, order)
    # Every setting has been checked (model, MLM, template, optimizer): only now write the run.
    if world.is_main:
        _prepare_run_logs(run, state["step"], method.logs)
        write_json_atomic(
            run / "shots.json",
            {**shots, "short_classes": _short_classes(labels, dataset.classnames, indices, config)},
        )
        write_json_atomic(
            run / "config.json",
            {**dataclasses.asdict(config), "towers": list(towers), "world_size": world.size},
        )
    return loop.run(state, progress and world.is_main)


METRICS_LOG = "metrics.jsonl"
FINAL_WEIGHTS = "final.pt"


def _prepare_run_logs(run: Path, resumed_step: int, method_logs: tuple[str, ...] = ()) -> None:
    """A fresh run starts with empty logs and no stale checkpoint; a resumed run drops the log
    rows written after its checkpoint, which the resumed run writes again (``metrics.jsonl`` and
    the method's own ``method_logs``). Temporary files of an interrupted write
    (``.<name>.XXXX.tmp``: a kill during a checkpoint save) are swept, and a row cut short (a
    full disk, a power loss) is dropped with a note."""
    sweep_temporary_files(run)
    if resumed_step == 0:
        for stale in [run / RESUME_STATE, *(run / "checkpoints").glob("epoch*.pt")]:
            stale.unlink(missing_ok=True)
    for name in (METRICS_LOG, *method_logs):
        path = run / name
        if path.is_file():
            _cut_log(path, name, resumed_step)


def sweep_temporary_files(run: Path) -> None:
    """Remove what an interrupted atomic write left in the run (it never renamed it into place)."""
    for folder in (run, run / "checkpoints"):
        for stale in folder.glob(".*.tmp"):
            stale.unlink(missing_ok=True)
            print(f"mmcoa: note: removed {stale}, left by an interrupted write", file=sys.stderr)


def _cut_log(path: Path, name: str, resumed_step: int) -> None:
    """Keep the rows of ``path`` logged up to ``resumed_step``: rows are in step order, so the
    file is read only up to the first later row and cut there (rewritten only when a row is
    unreadable). Metrics rows count steps done (from 1), a method's rows the step they were
    written before (from 0)."""
    kept, clean = [], True
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            step = _row_step(line, name)
            if step is None:
                print(
                    f"mmcoa: note: dropped unreadable line {number} of {path} (a write cut short)",
                    file=sys.stderr,
                )
                clean = False
                continue
            if not resumed_step or step > resumed_step:
                break
            kept.append(line)
    if clean and all(line.endswith(b"\n") for line in kept):  # the kept rows are the file's start
        os.truncate(path, sum(len(line) for line in kept))
    else:
        path.write_bytes(b"".join(line if line.endswith(b"\n") else line + b"\n" for line in kept))


def _row_step(line: bytes, name: str) -> int | None:
    """Steps done when a log row was written; None for a row that is not JSON (cut short)."""
    try:
        step = json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return None
    return step if name == METRICS_LOG else step + 1


def _check_shards(n_items: int, batch_size: int, world: World) -> None:
    """Under torchrun every rank needs at least one sample of every batch, the last one too."""
    if batch_size < world.size:
        raise MmcoaError(f"batch_size {batch_size} is smaller than the {world.size} processes")
    tail = n_items % batch_size
    if world.distributed and 0 < tail < world.size:
        raise MmcoaError(
            f"the last batch of each epoch holds {tail} of the {n_items} training items, "
            f"fewer than the {world.size} processes; change batch_size or the number "
            f"of processes"
        )


def total_steps(config: TrainConfig, n_items: int) -> int:
    """Optimizer steps of a run of ``n_items`` training items per epoch (``max_steps`` caps it)."""
    per_epoch = math.ceil(n_items / config.batch_size)
    steps = per_epoch * config.epochs
    return min(steps, config.max_steps) if config.max_steps else steps


def build_optimizer(model, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (MMCoA, FARE) or SGD with momentum (TeCoA, PMG-AFT), per ``config.optimizer``; no
    weight decay on norms, biases, embeddings' scalars and logit_scale. ``adam`` is the
    published MMCoA code's: Adam with coupled L2 ``weight_decay`` on every parameter."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 or "logit_scale" in name or "bias" in name else decay).append(param)
    if not decay and not no_decay:
        raise MmcoaError(f"method {config.method} with train_towers={config.train_towers} trains nothing")
    if config.optimizer == "adam":
        return torch.optim.Adam(
            [*decay, *no_decay],
            lr=config.lr,
            betas=config.betas,
            eps=config.adam_eps,
            weight_decay=config.weight_decay,
        )
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
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


class TrainLoop:
    """One run's state and steps; kept small so each piece reads on its own. ``bench/train.py``
    times :meth:`step` on its own."""

    def __init__(
        self,
        config,
        method,
        model,
        dataset,
        indices,
        optimizer,
        schedule,
        run: Path,
        world: World = SINGLE,
        order=None,
    ):
        self.config, self.method, self.model = config, method, model
        self.world = world
        self.dataset, self.indices = dataset, indices
        self.optimizer, self.schedule, self.run_dir = optimizer, schedule, run
        self.prompts = method.class_prompts(dataset, config, model)
        # The batch order (mmcoa.train.order): one seeded permutation of ``indices`` per epoch
        # unless ``train`` passes the run's (training_order: PoppingOrder under shot_sampler pop).
        self.order = order or EpochOrder(indices, config.batch_size, config.seed)
        self.steps = total_steps(config, self.order.epoch_items)
        self.per_epoch = self.order.per_epoch
        self.global_size = config.batch_size  # of the current step's global batch
        self.frozen_parts = frozen_parts(model)  # in eval mode for the whole run
        # A trained text tower with dropout draws its masks for the prompts encoded together:
        # then every rank encodes all of them, as one process does, instead of its share.
        self.shard_text = method.global_batch_loss and not self._trained_dropout("text")
        self._note_sharded_image_dropout()
        self.writer = BackgroundWriter()
        self._last_save = time.perf_counter()

    def run(self, state: dict, progress: bool) -> dict:
        started, losses = time.perf_counter(), []
        self._last_save = started
        bar = tqdm(
            total=self.steps,
            initial=state["step"],
            desc=f"train {self.config.method}",
            unit="step",
            disable=not progress,
        )
        try:
            waited = self._steps(state, bar, started, losses)
        except BaseException:  # Ctrl-C, a crash: the checkpoint being written lands first
            self.writer.wait(quiet=True)
            raise
        bar.close()
        self.writer.wait()  # the last checkpoint is on disk before the run is exported
        metrics = self._export(state, losses, time.perf_counter() - started, waited)
        barrier(self.world)
        return metrics

    def _steps(self, state: dict, bar, started: float, losses: list) -> float:
        """Run the remaining steps; returns the seconds spent waiting for data."""
        waited = 0.0
        previous = started
        for batch in self.batches(state["step"]):
            step = batch.position
            self.global_size = self.order.global_size(step)
            loss, terms = self.step(step, state, batch.images, batch.labels, batch.indices)
            losses.append(loss)
            state["step"] = step + 1
            waited += batch.wait_s
            now = time.perf_counter()
            self._log(step, loss, terms, batch.wait_s, now - previous, now - started)
            previous = now
            bar.update()
            self._show(bar, loss, terms, losses, waited, now - started)
            if self._should_save(step + 1):
                self._save(state, self._epoch_end(step + 1))
        return waited

    def batches(self, start: int) -> BatchLoader:
        """This rank's shard of each step's global batch from step ``start`` on (every rank draws
        the same order), decoded by the batch pipeline's worker processes."""
        return BatchLoader(
            self.dataset,
            lambda step: self.world.shard(self.order.global_batch(step)),
            positions=range(start, self.steps),
            device=self.config.device,
            workers=self.config.workers,
            seed=self.config.seed,
        )

    def _trained_dropout(self, tower: str) -> bool:
        """Whether ``tower`` draws dropout masks in training (it trains and has dropout)."""
        train_unfrozen(self.model, self.frozen_parts)
        try:
            return active_dropout(self.model.tower_modules(tower))
        finally:
            self.model.eval()

    def _note_sharded_image_dropout(self) -> None:
        """Under torchrun, dropout masks are drawn for each process's shard of the images."""
        if self.world.distributed and self.world.is_main and self._trained_dropout("image"):
            print(
                "mmcoa: note: the trained image tower has dropout, whose masks are drawn for each "
                "process's shard: runs repeat exactly on the same number of processes, but "
                "differ from a run on another number by those masks",
                file=sys.stderr,
            )

    def step(self, step: int, state: dict, images, labels, chosen=None) -> tuple[float, dict]:
        """One optimizer step; returns the loss and the logged terms (means over ranks). Torch's
        global generators (dropout) are seeded from (seed, step) for the step's duration, the
        same on every rank."""
        with seeded_global_rng(self.config.seed, step, DROPOUT_STREAM, device=self.config.device):
            return self._update(step, state, images, labels, chosen)

    def _update(self, step: int, state: dict, images, labels, chosen=None) -> tuple[float, dict]:
        """The step's update. Nothing reads a value on the host before ``backward()``: the logged
        values are read once, after the update (with ``skip_nonfinite``, the loss is checked after
        ``backward()``)."""
        ctx = StepContext(
            model=self.model,
            prompts=self.prompts,
            config=self.config,
            generator=self._attack_generator(step),
            batch_indices=chosen,
            world=self.world,
            share_text=self.shard_text,
        )
        self._before_step(step, ctx)
        train_unfrozen(self.model, self.frozen_parts)
        with ctx.autocast():
            loss, terms = self.method.loss(ctx, images, labels)
        share = self._shard_weight(len(labels))
        loss = loss * share if share != 1 else loss
        logged = {"loss": loss.detach(), **{k: v * share for k, v in terms.items()}}
        lr = self.optimizer.param_groups[0]["lr"]  # the rate this step uses
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(self.trainable, self.world)
        if self.config.skip_nonfinite and not self._finite(logged["loss"]):
            return self._skip_nonfinite(step, state, lr)
        logged["grad_norm"] = _grad_norm(self.trainable)
        self.optimizer.step()
        self.schedule.step()
        self.model.clamp_logit_scale()
        terms = mean_terms_over_ranks(logged, self.world, self.config.device)  # one host read
        if not math.isfinite(terms["loss"]):  # the mean over ranks: every rank agrees
            raise self._nonfinite_error(step, terms["loss"])
        return terms.pop("loss"), {**terms, "lr": lr}

    def _finite(self, loss: torch.Tensor) -> bool:
        return math.isfinite(mean_terms_over_ranks({"loss": loss}, self.world, self.config.device)["loss"])

    def _nonfinite_error(self, step: int, loss: float) -> MmcoaError:
        """A NaN/inf loss stops the run, naming the step and the intact last checkpoint."""
        self.writer.wait()
        saved = self.run_dir / RESUME_STATE
        kept = (
            f"{saved} (step {saved_step(saved)}) is intact"
            if saved.is_file()
            else "no checkpoint was saved yet"
        )
        return MmcoaError(
            f"the loss is {loss} at step {step + 1}; {kept}; lower the learning "
            f"rate, or pass --skip-nonfinite to skip such steps"
        )

    def _skip_nonfinite(self, step: int, state: dict, lr: float) -> tuple[float, dict]:
        """``skip_nonfinite``: leave the weights and optimizer as they were and count the step."""
        self.optimizer.zero_grad(set_to_none=True)
        self.schedule.step()  # the schedule stays indexed by step
        state["skipped_nonfinite"] = state.get("skipped_nonfinite", 0) + 1
        print(f"mmcoa: warning: skipped step {step + 1}: the loss is not finite", file=sys.stderr)
        return math.nan, {"lr": lr, "grad_norm": 0.0, "skipped": 1}

    def _attack_generator(self, step: int):
        """The step's attack randomness from (seed, step); under torchrun drawn for the global
        batch with this rank's rows kept, as one process would draw it."""
        generator = derived_generator(self.config.seed, step, ATTACK_STREAM, device=self.config.device)
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

    def _before_step(self, step: int, ctx: StepContext) -> None:
        """The method's work before the loss (e.g. refreshing its adversarial prompts), the model in
        eval mode; rank 0 appends the rows it returns to the method's logs."""
        self.model.eval()
        rows = self.method.before_step(step, ctx)
        if self.world.is_main:
            for name, row in rows.items():
                _append_jsonl(self.run_dir / name, row)

    def _log(self, step, loss, terms, waited: float, step_s: float, elapsed: float) -> None:
        """A metrics.jsonl row; ``data_wait_s`` of the step's ``step_s`` went to waiting for
        its batch (``data_share``: the share; near 1 means the run is input-bound)."""
        if not self.world.is_main:
            return
        _append_jsonl(
            self.run_dir / "metrics.jsonl",
            {
                "step": step + 1,
                "epoch": step // self.per_epoch,
                "loss": loss,
                **terms,
                "images": self.global_size,
                "elapsed_s": round(elapsed, 3),
                "step_s": round(step_s, 4),
                "data_wait_s": round(waited, 4),
                "data_share": round(waited / step_s, 4) if step_s > 0 else 0.0,
            },
        )
        write_sinks(self.config.log, self.run_dir, step + 1, {"loss": loss, **terms}, step + 1 == self.steps)

    def _show(self, bar, loss: float, terms: dict, losses: list, waited: float, elapsed: float) -> None:
        rate = _rate(losses, elapsed, self.config)
        bar.set_postfix(
            loss=f"{loss:.3f}",
            **{k: f"{v:.3g}" for k, v in terms.items()},
            img_s=f"{rate:.0f}" if rate else "-",
            data=f"{waited / elapsed:.0%}" if elapsed > 0 else "-",
        )

    def _should_save(self, done: int) -> bool:
        """last.pt after every ``save_every`` steps, after ``save_every_minutes`` of wall-clock
        time since the last save, at each epoch end and at the end."""
        every, minutes = self.config.save_every, self.config.save_every_minutes
        overdue = minutes and time.perf_counter() - self._last_save >= 60 * minutes
        return bool(
            overdue or (every and done % every == 0) or done % self.per_epoch == 0 or done == self.steps
        )

    def _epoch_end(self, done: int) -> int | None:
        """The epoch just finished after ``done`` steps, if one did and the run keeps them."""
        if self.config.keep_epoch_checkpoints and done % self.per_epoch == 0:
            return done // self.per_epoch
        return None

    def _save(self, state: dict, epoch: int | None = None) -> None:
        """checkpoints/last.pt, and the model-only checkpoints/epoch<N>.pt at the end of epoch N
        when the run keeps them (``keep_epoch_checkpoints``: the points of paper Fig. 7's
        curves); copied to the host here, written in the background
        (:mod:`mmcoa.train.checkpointing`)."""
        self._last_save = time.perf_counter()
        if not self.world.is_main:
            return
        payload = host_copy(
            {
                "format": CHECKPOINT_FORMAT,
                "step": state["step"],
                "skipped_nonfinite": state.get("skipped_nonfinite", 0),
                "method": self.method.state_dict(),
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(),
                "config": _identity(self.config),
                "world_size": self.world.size,
                META_KEY: self.model.build_meta(),
            }
        )
        folder = self.run_dir / "checkpoints"
        files = [(payload, self.run_dir / RESUME_STATE)]
        if epoch is not None:
            files.append((model_only(payload, (META_KEY,)), folder / f"epoch{epoch}.pt"))
        self.writer.write(files)

    def _export(self, state: dict, losses: list[float], elapsed: float, waited: float) -> dict:
        """final.pt (plain backend state dict: open_clip loads it) with its build metadata in
        final.pt.json (the activation: see ``models/checkpoints.py``), prompt.pt for VP and AdvPT
        (``mmcoa eval --prompt``), metrics and export/ (whose weights file is final.pt, hard
        linked); then, unless ``keep_resume_state``, last.pt goes: written by rank 0."""
        if not self.world.is_main:
            return self._metrics(state, losses, elapsed, waited)
        final = self.run_dir / FINAL_WEIGHTS
        save_atomic(self.model.model.state_dict(), final)
        write_json_atomic(
            Path(meta_sidecar(final)), {**self.model.build_meta(), TRAINING_KEY: trained_with(self.config)}
        )
        for prompt in (self.model.visual_prompt, self.model.text_prompt):
            if prompt is not None:
                save_atomic(prompt_payload(prompt), self.run_dir / "prompt.pt")
        metrics = self._metrics(state, losses, elapsed, waited)
        write_json_atomic(self.run_dir / "metrics.json", metrics)
        write_export(self.run_dir, self.model, self.config, metrics, weights=final)
        if not self.config.keep_resume_state:
            drop_resume_state(self.run_dir)
        return metrics

    def _metrics(self, state: dict, losses: list[float], elapsed: float, waited: float) -> dict:
        return {
            "steps": state["step"],
            "final_loss": losses[-1] if losses else None,
            "elapsed_s": round(elapsed, 3),
            "images_per_s": _rate(losses, elapsed, self.config),
            "data_wait_share": round(waited / elapsed, 4) if elapsed > 0 else None,
            "workers": self.config.workers,
            "n_train_items": len(self.indices),  # distinct images (shot_sampler pop: all epochs')
            "n_epoch_items": self.order.epoch_items,
            "world_size": self.world.size,
            "skipped_nonfinite_steps": state.get("skipped_nonfinite", 0),
            "versions": versions(),
        }


def _grad_norm(parameters) -> torch.Tensor | float:
    """L2 norm of all gradients of the step (after averaging over ranks), left on the device."""
    grads = [p.grad.detach().float().norm() for p in parameters if p.grad is not None]
    return torch.stack(grads).norm() if grads else 0.0


def _rate(losses, elapsed, config) -> float | None:
    return round(len(losses) * config.batch_size / elapsed, 2) if losses and elapsed else None


SWITCHES = tuple(f.name for f in switch_fields(TrainConfig))
IDENTITY_KEYS = (
    "method",
    "model",
    "pretrained",
    "dataset",
    "shots",
    "batch_size",
    "seed",
    "adv_image_weight",
    "adv_text_weight",
    "train_towers",
    *SWITCHES,  # the behaviour switches (mmcoa.profiles)
)


def trained_with(config: TrainConfig) -> dict:
    """What final.pt's sidecar says made the weights: method, the profile asked for and the
    behaviour switches it resolved to (the method's own published settings included: TeCoA
    keeps its leak off); records of models loaded from it carry it in ``model_build``."""
    switches = {name: getattr(config, name) for name in SWITCHES}
    return {"method": config.method, "profile": config.profile, "switches": switches}


def _identity(config: TrainConfig) -> dict:
    """The settings a resumed run must share with the run it continues."""
    return {key: getattr(config, key) for key in IDENTITY_KEYS}


OLD_IDENTITY_NAMES = {"alpha": "adv_image_weight", "beta": "adv_text_weight"}  # before the rename


def _renamed_identity(saved: dict) -> dict:
    """A checkpoint's identity settings under today's names (a run saved before MMCoA's loss
    weights were renamed from alpha/beta resumes as it was; one saved before the behaviour
    switches existed ran with their corrected values)."""
    renamed = {OLD_IDENTITY_NAMES.get(k, k): v for k, v in saved.items()}
    return {**profile_settings(TrainConfig, CORRECTED), **renamed}


def _load_checkpoint(run: Path, config: TrainConfig, world: World = SINGLE) -> dict:
    path = run / RESUME_STATE
    if not path.is_file() and (run / "metrics.json").is_file() and (run / FINAL_WEIGHTS).is_file():
        raise MmcoaError(
            f"--resume: the run in {run} has finished and its resumable state {path} was removed "
            f"at its end (a run keeps it with --keep-resume-state); its weights are "
            f"{run / FINAL_WEIGHTS}: start a new run from them with --pretrained"
        )
    if not path.is_file():
        raise MmcoaError(f"--resume: no checkpoint at {path}; start without --resume")
    checkpoint = load_tensors(path, f"--resume: checkpoint {path}")
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise MmcoaError(f"--resume: {path} is not an mmcoa training checkpoint")
    saved = _renamed_identity(checkpoint["config"])
    mismatched = {
        k: (v, saved.get(k)) for k, v in _identity(config).items() if not _same_setting(k, saved.get(k), v)
    }
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
        raise MmcoaError(
            f"--resume: the run was started with {saved} process(es), now "
            f"{world.size}; this model has BatchNorm layers, whose statistics are per "
            f"process: resume with {saved}"
        )
    if world.is_main:
        print(
            f"mmcoa: note: resuming a {saved}-process run on {world.size} process(es); the "
            f"updates are those of the global batch either way",
            file=sys.stderr,
        )


def _restore(checkpoint: dict, model, method, optimizer, schedule) -> dict:
    """Load the checkpoint's states; returns the loop's state (step, skipped steps). A checkpoint
    saved before methods kept their own state holds that state at its top level."""
    try:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
    except (RuntimeError, ValueError, KeyError) as error:
        raise MmcoaError(
            f"--resume: checkpoint does not fit this model/method ({str(error).splitlines()[0][:120]}); "
            f"it was saved from {_saved_from(checkpoint)}: resume with that model, method and towers"
        ) from error
    schedule.load_state_dict(checkpoint["schedule"])
    method.load_state_dict(checkpoint.get("method", checkpoint))
    return {"step": checkpoint["step"], "skipped_nonfinite": checkpoint.get("skipped_nonfinite", 0)}


def _saved_from(checkpoint: dict) -> str:
    """The architecture, method and towers a training checkpoint records."""
    saved = _renamed_identity(checkpoint.get("config", {}))
    architecture = checkpoint.get(META_KEY, {}).get("architecture", saved.get("model"))
    return (
        f"model {architecture} with method {saved.get('method')}, "
        f"train_towers {saved.get('train_towers') or 'the method default'}"
    )


def _check_sampler(config: TrainConfig) -> None:
    """``shot_sampler: pop`` is the published few-shot sampler: refused with ``shots: full``
    unless it is the published profile's value (full runs then leave it unused)."""
    if config.shot_sampler == "pop" and config.shots == "full" and config.profile != PUBLISHED:
        raise MmcoaError(
            "shot_sampler pop applies to shots 1, 5 or 50 (the published few-shot sampler); got "
            "shots full: use shot_sampler fixed, or shots 1, 5 or 50"
        )


def _shot_record(run: Path, labels, config: TrainConfig, reuse: bool) -> dict:
    """What ``shots.json`` holds (``train`` saves it in the run; reused on resume): the training
    ``indices`` (``fixed``: the per-class list every epoch reuses), and under ``shot_sampler:
    pop`` each epoch's class-ordered items, ``epoch_items`` (``docs/deviations.md`` row 6).
    ``labels()`` gives every label of the dataset (read once, and only when needed)."""
    path = run / "shots.json"
    if reuse and path.is_file():
        return _reused_record(json.loads(path.read_text()), config)
    if config.shot_sampler == "pop" and config.shots != "full":
        epochs = popped_epochs(labels(), config.shots, config.epochs, config.seed)
        indices = sorted(i for items in epochs for i in items)
        record = {"shot_sampler": "pop", "indices": indices, "epoch_items": epochs}
    else:
        record = {"indices": few_shot_indices(labels(), config.shots, config.seed)}
    if not record["indices"]:
        raise MmcoaError(f"dataset {config.dataset} has no training samples")
    return {"shots": config.shots, "seed": config.seed, **record}


def _reused_record(record: dict, config: TrainConfig) -> dict:
    """A resumed run's saved ``shots.json`` record; under ``pop`` it must hold every epoch's items."""
    drawn = len(record.get("epoch_items", []))
    if "epoch_items" in record and drawn < config.epochs:
        raise MmcoaError(
            f"--resume: shot_sampler pop drew the images of {drawn} epoch(s) (shots.json), fewer "
            f"than epochs {config.epochs}; resume with epochs at most {drawn}"
        )
    return record


def _short_classes(labels, classnames: list[str], indices: list[int], config: TrainConfig) -> list[dict]:
    """Classes with fewer than ``shots`` training images (all of theirs are used): label, name
    and count of each; each is also reported on stderr."""
    if config.shots == "full":
        return []
    every = labels()
    counts = Counter(every[i] for i in indices)
    short = [
        {"label": c, "name": name, "images": counts.get(c, 0)}
        for c, name in enumerate(classnames)
        if counts.get(c, 0) < int(config.shots)
    ]
    for entry in short:
        print(
            f"mmcoa: warning: class {entry['name']!r} has {entry['images']} training images, "
            f"fewer than --shots {config.shots}; all are used",
            file=sys.stderr,
        )
    return short


def _append_jsonl(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.write(json.dumps(row) + "\n")
