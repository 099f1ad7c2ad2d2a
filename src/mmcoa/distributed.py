"""Multi-process training and evaluation under ``torchrun`` (gloo on CPU, nccl on CUDA).

Each process reads its rank from the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``).
Training gives each rank a contiguous shard of every global batch and, after ``backward``,
averages the gradients in one flattened all-reduce (:func:`average_gradients`; explicit rather
than ``DistributedDataParallel``'s hooks, since a step calls the encoders several times outside
one ``forward``), so the update equals a single process's on the global batch. Per-sample losses
are weighted by their shard's share; the class-aware contrastive loss, which couples a batch's
images, gathers the whole global batch's features (:func:`gather_with_grad`): this rank's rows
carry their gradient multiplied by the world size, so after averaging the image tower's gradient
sums over shards while shared terms (logit scale), computed in full on every rank, stay as they
are. Evaluation shards the samples and sums the counts. A failing rank ends the whole job at once
(:func:`fail_fast`) instead of leaving the others waiting in a collective. Details: the "Several
GPUs" section of ``docs/methods.md``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from mmcoa.errors import MmcoaError


@dataclass(frozen=True)
class World:
    """This process's place among the ranks (a single process is rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def shard_start(self, n: int) -> int:
        """Where this rank's contiguous part of ``n`` items starts (sizes differ by at most one)."""
        base, extra = divmod(n, self.size)
        return self.rank * base + min(self.rank, extra)

    def shard(self, items: list) -> list:
        """This rank's contiguous part of ``items``."""
        start = self.shard_start(len(items))
        return items[start : start + len(items) // self.size + (self.rank < len(items) % self.size)]


SINGLE = World()
PROCESS_GROUP_TIMEOUT = timedelta(minutes=60)


def world_from_env(device: str) -> tuple[World, str]:
    """Join the process group ``torchrun`` set up (if any); returns the world and the device
    this rank uses (``cuda`` becomes ``cuda:LOCAL_RANK``)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return SINGLE, device
    world = World(rank=int(os.environ["RANK"]), size=size, local_rank=int(os.environ.get("LOCAL_RANK", "0")))
    cuda = torch.device(device).type == "cuda"
    if cuda:
        if torch.cuda.device_count() <= world.local_rank:
            raise MmcoaError(
                f"rank {world.rank} needs GPU {world.local_rank} but {torch.cuda.device_count()} are "
                "visible; start at most that many processes per node (torchrun --nproc_per_node)"
            )
        device = f"cuda:{world.local_rank}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():  # long timeout: rank 0 alone saves checkpoints
        dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=PROCESS_GROUP_TIMEOUT)
    return world, device


def gather_with_grad(local: torch.Tensor, world: World) -> torch.Tensor:
    """The rows of every rank, concatenated in rank order; only this rank's rows carry a
    gradient, scaled by the world size (see the module docstring)."""
    if not world.distributed:
        return local
    parts = _all_gather_rows(local.detach(), world)
    parts[world.rank] = scaled_gradient(local, world.size)
    return torch.cat(parts)


def scaled_gradient(local: torch.Tensor, factor: int) -> torch.Tensor:
    """Exactly ``local``'s value (in any dtype, bf16 included) with its gradient × ``factor``."""
    frozen = local.detach()
    return frozen + (local - frozen) * factor


def gather_rows(local: torch.Tensor, world: World) -> torch.Tensor:
    """Every rank's rows (e.g. labels), concatenated in rank order, without gradient."""
    return torch.cat(_all_gather_rows(local, world)) if world.distributed else local


def _all_gather_rows(local: torch.Tensor, world: World) -> list[torch.Tensor]:
    """all_gather for row counts that may differ by rank (padded, then trimmed)."""
    count = torch.tensor([local.shape[0]], device=local.device)
    counts = [torch.zeros_like(count) for _ in range(world.size)]
    dist.all_gather(counts, count)
    longest = int(max(c.item() for c in counts))
    padded = torch.zeros((longest, *local.shape[1:]), dtype=local.dtype, device=local.device)
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in range(world.size)]
    dist.all_gather(parts, padded.contiguous())
    return [part[: int(c.item())] for part, c in zip(parts, counts)]


def average_gradients(parameters, world: World) -> None:
    """Replace each gradient by its mean over ranks (one flattened all-reduce)."""
    if not world.distributed:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world.size
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
        offset += grad.numel()


def sum_over_ranks(values: list[float], world: World, device) -> list[float]:
    if not world.distributed:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def mean_terms_over_ranks(terms: dict, world: World, device) -> dict[str, float]:
    """Each logged term (a float or a 0-d tensor, left on the device until now) averaged over
    ranks, as floats: one all-reduce and one read to the host for all of them."""
    if not terms:
        return {}
    names = list(terms)
    stacked = torch.stack(
        [torch.as_tensor(terms[n], device=device).detach().double().reshape(()) for n in names]
    )
    if world.distributed:
        dist.all_reduce(stacked)
        stacked /= world.size
    return dict(zip(names, stacked.tolist()))


def max_over_ranks(value: float, world: World, device) -> float:
    if not world.distributed:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return float(tensor.item())


def gather_objects(items: list, world: World) -> list:
    """Every rank's list, concatenated in rank order (e.g. each rank's share of the adversarial
    prompts: BERT-Attack is deterministic per prompt, so the shares join into one process's)."""
    if not world.distributed:
        return items
    boxes = [None] * world.size
    dist.all_gather_object(boxes, items)
    return [item for box in boxes for item in box]


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def fail_fast(message: str) -> None:
    """End this rank now with ``message`` (one line, naming the rank) on stderr: ``os._exit``
    skips the process-group teardown, which can wait on peers that are stuck in a collective,
    and torchrun stops the other ranks as soon as one exits with an error."""
    import sys

    rank = os.environ.get("RANK", "0")
    print(f"mmcoa: error: rank {rank}: {message}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(2)


def running_under_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1
