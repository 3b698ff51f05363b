"""One training epoch (with the NaN/Inf guard) and the evaluation of a split."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..metrics import SplitMetrics, compute_loss
from .distributed import DistContext, all_reduce_sum
from .faults import fault_point
from .splits import RunSplits, eval_loader, unpack

__all__ = ["NonFiniteError", "autocast", "forward", "train_epoch", "evaluate", "predict_outputs"]


class NonFiniteError(RuntimeError):
    """Training produced a NaN/Inf loss, gradient or metric; the last good checkpoint is kept."""


def autocast(device: torch.device, amp: str):
    """The autocast context of setting ``amp`` (off, bf16, fp16; CUDA only)."""
    if amp == "off" or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def forward(model: nn.Module, x: Tensor, lengths: Tensor | None, device: torch.device, amp: str) -> Tensor:
    """``model(x)`` or ``model(x, lengths=lengths)`` under ``amp``, returned in float32."""
    with autocast(device, amp):
        out = model(x) if lengths is None else model(x, lengths=lengths)
    return out.float()


def _any_rank(flag: bool, ctx: DistContext) -> bool:
    if not ctx.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], dtype=torch.float64)
    return bool(all_reduce_sum(t, ctx).item() > 0)


def train_epoch(
    net: nn.Module,
    model: nn.Module,
    loader,
    spec,
    cfg: dict[str, Any],
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    ctx: DistContext,
    *,
    on_nonfinite: Callable[[str, int], str],
    progress=None,
) -> dict[str, float]:
    """Train ``net`` (``model``, possibly DDP-wrapped) for one pass over ``loader``; return the training loss
    and metric summed over processes.

    Before each optimiser step the loss and (unless fp16, whose scaler skips such steps) the gradient norm
    are checked on every process; if any is NaN/Inf, :class:`NonFiniteError` is raised before the update,
    with the message ``on_nonfinite(what, batch_number)``. ``progress``: an
    :class:`~.progress.EpochProgress` (or None).
    """
    device, amp = ctx.device, cfg["amp"]
    net.train()
    acc = SplitMetrics(spec.loss, spec.metric)
    batches = progress.wrap(loader) if progress is not None else loader
    for step, batch in enumerate(batches):
        x, y, lengths = unpack(batch, device)
        optimizer.zero_grad(set_to_none=True)
        out = forward(net, x, lengths, device, amp)
        loss = compute_loss(spec.loss, out, y)
        scaler.scale(loss).backward()
        if cfg["grad_clip"] is not None or amp != "fp16":
            scaler.unscale_(optimizer)
            clip = cfg["grad_clip"] if cfg["grad_clip"] is not None else math.inf
            gnorm = nn.utils.clip_grad_norm_(model.parameters(), clip)
        else:
            gnorm = torch.zeros(())
        loss_value = loss.item()
        loss_ok = math.isfinite(loss_value)
        if _any_rank(not loss_ok or (amp != "fp16" and not torch.isfinite(gnorm)), ctx):
            raise NonFiniteError(on_nonfinite("loss" if not loss_ok else "gradient", step + 1))
        scaler.step(optimizer)
        scaler.update()
        if hasattr(model, "constrain_"):  # a model whose parameters must stay in a set (IndRNN's bound)
            model.constrain_()
        acc.update(out.detach(), y, loss.detach())
        if progress is not None:
            progress.batch_done(loss_value)
        fault_point("batch")
    acc.load_sums(all_reduce_sum(acc.sums(), ctx))
    return acc.compute()


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    spec,
    *,
    batch_size: int,
    device: torch.device,
    ctx: DistContext | None = None,
    amp: str = "off",
    num_workers: int = 0,
    splits: RunSplits | None = None,
) -> dict[str, float]:
    """Loss and task metric of ``model`` on ``dataset`` (every item once, summed over processes).

    ``splits``: the run's splits, when the task batches its own way (its batch sampler and collate_fn).
    """
    ctx = ctx or DistContext(device=device)
    was_training = model.training
    model.eval()
    acc = SplitMetrics(spec.loss, spec.metric)
    for batch in eval_loader(dataset, batch_size, ctx, num_workers, splits):
        x, y, lengths = unpack(batch, device)
        out = forward(model, x, lengths, device, amp)
        acc.update(out, y, compute_loss(spec.loss, out, y))
    acc.load_sums(all_reduce_sum(acc.sums(), ctx))
    model.train(was_training)
    return acc.compute()


@torch.no_grad()
def predict_outputs(
    model: nn.Module,
    dataset: Dataset,
    *,
    batch_size: int,
    device: torch.device,
    amp: str = "off",
    splits: RunSplits | None = None,
) -> Tensor:
    """The outputs of ``model`` (in eval mode) for every item of ``dataset`` in order, float32 on the CPU:
    (n, output_size) for readout "last". ``splits``: as in :func:`evaluate` (the task's collate_fn)."""
    was_training = model.training
    model.eval()
    outs = []
    for batch in eval_loader(dataset, batch_size, DistContext(device=device), 0, splits):
        x, _, lengths = unpack(batch, device)
        outs.append(forward(model, x, lengths, device, amp).cpu())
    model.train(was_training)
    return torch.cat(outs)
