"""DistributedDataParallel plumbing for ``torchrun``: process group, device, reductions, data sharding."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from ..validation import ConfigError

__all__ = [
    "DistContext",
    "init_distributed",
    "resolve_device",
    "ShardSampler",
    "all_reduce_sum",
    "barrier",
    "joined_a_process_group",
]

_joined = False  # init_distributed created a process group in this process (see joined_a_process_group)


@dataclass
class DistContext:
    """Where this process sits: ``rank`` of ``world_size`` (1 and 0 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialized_here: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def close(self) -> None:
        """Destroy the process group if this context created it."""
        if self.initialized_here and dist.is_initialized():
            dist.destroy_process_group()
            self.initialized_here = False


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda:LOCAL_RANK`` if CUDA is available, else ``cpu``; otherwise ``torch.device(device)``."""
    if device == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ConfigError(f"--device: expected auto, cpu, cuda or cuda:N, got {device!r}") from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device}: CUDA is not available on this machine")
        if dev.index is None:
            dev = torch.device(f"cuda:{local_rank}")
    return dev


def init_distributed(device: str = "auto") -> DistContext:
    """Join the process group if launched by ``torchrun`` (``WORLD_SIZE`` > 1), else a 1-process context.

    Backend: ``nccl`` for CUDA devices, ``gloo`` for CPU. Each process uses ``cuda:LOCAL_RANK`` on GPUs.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world <= 1:
        return DistContext(0, 1, 0, dev, False)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    global _joined
    created = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        created = _joined = True
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, dev, created)


def joined_a_process_group() -> bool:
    """Whether :func:`init_distributed` created a process group in this process (even one closed since).

    Such a process should end without the interpreter's finalisation (the console script does): a model
    wrapped in DistributedDataParallel keeps its process group alive after ``destroy_process_group``, so the
    group's worker threads outlive the interpreter, and one that drops its last reference to a tensor while
    the interpreter is finalising aborts the process (``terminate called without an active exception``,
    SIGABRT) after all the work is done. Rare, but a torchrun job would report a failure."""
    return _joined


def all_reduce_sum(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum ``t`` over all processes (returns a new tensor on ``t``'s device; identity when not distributed)."""
    if not ctx.enabled:
        return t
    work = t.to(ctx.device).clone()
    dist.all_reduce(work, op=dist.ReduceOp.SUM)
    return work.to(t.device)


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


class ShardSampler(Sampler[int]):
    """Evaluation sampler: indices ``rank, rank + world, ...`` in order, without padding (every item counted
    exactly once across processes)."""

    def __init__(self, n: int, rank: int, world_size: int) -> None:
        self.n, self.rank, self.world = n, rank, world_size

    def __iter__(self):
        return iter(range(self.rank, self.n, self.world))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world))
