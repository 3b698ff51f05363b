"""The datasets of a run: the task's splits, the fixed subsets the settings ask for, and their loaders.

:func:`build_splits` is the one place that knows which seed draws which subset, so that ``unicornn eval``
evaluates exactly the sequences the trainer validated and tested on. Batches are ``(inputs, target)`` or
``(inputs, target, lengths)`` (see :mod:`unicornn.tasks.base`); :func:`unpack` reads both.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from .distributed import DistContext, ShardSampler

__all__ = [
    "RunSplits",
    "SUBSET_SEED_OFFSET",
    "subset",
    "build_splits",
    "train_loader",
    "eval_loader",
    "unpack",
]

#: The subset of split ``name`` is drawn with seed ``settings["seed"] + SUBSET_SEED_OFFSET[name]``.
SUBSET_SEED_OFFSET = {"train": 0, "valid": 1, "test": 2}


def subset(ds: Dataset, n: int | None, seed: int) -> Dataset:
    """A fixed random subset of ``n`` items (chosen from ``seed``, kept in order), or ``ds`` itself."""
    if n is None or n >= len(ds):
        return ds
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(ds), generator=g)[:n].sort().values.tolist()
    return Subset(ds, idx)


@dataclass
class RunSplits:
    """The datasets a run trains, validates and tests on (subsets applied), and the task's batching."""

    train: Dataset
    valid: Dataset
    test: Dataset
    batch_sampler: Any = None
    collate_fn: Any = None
    model_args: Mapping[str, Any] = field(default_factory=dict)  # the task's extra model arguments

    def get(self, name: str) -> Dataset:
        """The split ``name``: train, valid or test."""
        return {"train": self.train, "valid": self.valid, "test": self.test}[name]


def build_splits(
    task, options: Mapping[str, Any], data_dir: Path | None, cfg: Mapping[str, Any]
) -> RunSplits:
    """Build ``task``'s splits for settings ``cfg`` (seed, train_subset, eval_subset)."""
    seed = cfg["seed"]
    s = task.build(options, data_dir, seed)
    sizes = {"train": cfg["train_subset"], "valid": cfg["eval_subset"], "test": cfg["eval_subset"]}
    sets = {k: subset(getattr(s, k), sizes[k], seed + off) for k, off in SUBSET_SEED_OFFSET.items()}
    return RunSplits(
        **sets,
        batch_sampler=getattr(s, "batch_sampler", None),
        collate_fn=getattr(s, "collate_fn", None),
        model_args=dict(getattr(s, "model_args", None) or {}),
    )


def train_loader(
    splits: RunSplits, cfg: Mapping[str, Any], ctx: DistContext, generator: torch.Generator
) -> tuple[DataLoader, Any]:
    """The shuffling training loader of this process and its sampler (call ``set_epoch`` on it)."""
    local_batch = cfg["batch_size"] // ctx.world_size
    common = dict(
        num_workers=cfg["num_workers"], pin_memory=ctx.device.type == "cuda", collate_fn=splits.collate_fn
    )
    if splits.batch_sampler is not None:
        sampler = splits.batch_sampler(splits.train, local_batch, True, cfg["seed"], ctx.rank, ctx.world_size)
        return DataLoader(splits.train, batch_sampler=sampler, **common), sampler
    sampler = DistributedSampler(
        splits.train,
        num_replicas=ctx.world_size,
        rank=ctx.rank,
        shuffle=True,
        seed=cfg["seed"],
        drop_last=False,
    )
    loader = DataLoader(
        splits.train, batch_size=local_batch, sampler=sampler, generator=generator, drop_last=False, **common
    )
    return loader, sampler


def eval_loader(
    dataset: Dataset, batch_size: int, ctx: DistContext, num_workers: int = 0, splits: RunSplits | None = None
) -> DataLoader:
    """A loader giving this process its share of ``dataset``, every item once over all processes."""
    collate = splits.collate_fn if splits is not None else None
    if splits is not None and splits.batch_sampler is not None:
        bs = splits.batch_sampler(dataset, batch_size, False, 0, ctx.rank, ctx.world_size)
        return DataLoader(dataset, batch_sampler=bs, num_workers=num_workers, collate_fn=collate)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=ShardSampler(len(dataset), ctx.rank, ctx.world_size),
        num_workers=num_workers,
        collate_fn=collate,
    )


def unpack(batch, device: torch.device) -> tuple[Tensor, Tensor, Tensor | None]:
    """``(inputs, target)`` or ``(inputs, target, lengths)`` on ``device``; lengths None when absent."""
    x, y = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
    lengths = batch[2].to(device, non_blocking=True) if len(batch) > 2 else None
    return x, y, lengths
