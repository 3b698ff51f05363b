"""The training loop: Adam, the paper's step schedule, validation-based selection, checkpoints and resume.

One call of :func:`train_run` trains one seed into one run directory (files: :mod:`.run`). Its pieces:
:func:`~.settings.validate_config` (the trainer's settings), :func:`~.run.open_run` (fresh, resume or
finished), :func:`~.splits.build_splits` (datasets and subsets), ``_setup`` (model from :data:`MODELS`,
optimiser, schedule), :func:`~.epoch.train_epoch` (one epoch, NaN/Inf guard), :func:`~.epoch.evaluate`,
:class:`~.records.EpochWriter` (an epoch's results). Several seeds: :mod:`.seeds`.

Under ``torchrun`` every process calls :func:`train_run`; the model is wrapped in DistributedDataParallel,
the training set is split by a DistributedSampler (the configured batch size is the global one), metrics
are summed over processes, and only rank 0 writes files and prints. Every process reads the run directory
(to resume), so across nodes it must be on a shared filesystem. The training set is split exactly when its size
is a multiple of the number of processes (otherwise DistributedSampler repeats a few items to even it out).
"""

from __future__ import annotations

import math
import random
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..models import MODELS, count_parameters
from ..registry import ConfigError
from ..tasks.base import RECORD_FIELDS
from .checkpoint import capture_rng_state, read_jsonl, restore_rng_state
from .distributed import DistContext
from .epoch import NonFiniteError, evaluate, train_epoch
from .metrics import is_better
from .records import EpochWriter, epoch_row, fmt, truncate_metrics, write_config, write_result
from .run import METRICS, RunExistsError, open_run
from .settings import RESUME_MUTABLE_KEYS, validate_config
from .splits import RunSplits, build_splits, train_loader

__all__ = [
    "NonFiniteError",
    "RunExistsError",
    "train_run",
    "build_model",
    "evaluate",
    "validate_config",
    "RESUME_MUTABLE_KEYS",
]


def build_model(spec, cfg: Mapping[str, Any], model_args: Mapping[str, Any] | None = None) -> nn.Module:
    """The model ``cfg["model"]`` for task ``spec``; its own errors about its arguments become ConfigError.

    ``model_args``: the task's extra keyword arguments for the factory (``Splits.model_args``).
    """
    factory = MODELS.get(cfg.get("model", "unicornn"))
    try:
        return factory(spec, cfg, **(model_args or {}))
    except (ValueError, TypeError) as err:  # the model validates its arguments (dt, alpha, ...)
        raise ConfigError(f"model {cfg.get('model', 'unicornn')!r}: {err}") from err


def _progress(quiet: bool, main: bool):
    if quiet or not main:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # the [tasks] extra is not installed
        return None
    return tqdm


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _gather_rng(ctx: DistContext, gen: torch.Generator) -> list:
    state = capture_rng_state(gen)
    if not ctx.enabled:
        return [state]
    states: list = [None] * ctx.world_size
    torch.distributed.all_gather_object(states, state)
    return states


def _logger(log: Callable[[str], None] | None, quiet: bool, main: bool) -> Callable[[str], None]:
    def say(msg: str) -> None:
        if not main:
            return
        if log is not None:
            log(msg)
        else:
            tq = _progress(quiet, main)
            (tq.write if tq is not None else print)(msg, file=sys.stderr)

    return say


def train_run(
    task,
    config: Mapping[str, Any],
    task_options: Mapping[str, Any],
    run_dir: str | Path,
    *,
    data_dir: Path | None = None,
    ctx: DistContext | None = None,
    resume: bool = False,
    quiet: bool = False,
    stop_after_epoch: int | None = None,
    log=None,
    tensorboard: bool = True,
) -> dict[str, Any]:
    """Train one seed of ``task`` into ``run_dir`` and return the result (see module docstring).

    Args:
        task: an object with ``spec`` and ``build(options, data_dir, seed)`` (see :mod:`unicornn.tasks`).
        config: settings (see :data:`~unicornn.training.settings.TRAIN_DEFAULTS`).
        task_options: options passed to ``task.build`` (merged into the task's defaults).
        run_dir: directory of this run.
        data_dir: dataset cache directory handed to the task.
        ctx: distributed context (default: one process on the CPU).
        resume: continue from ``run_dir/checkpoint.pt``; a finished run is returned as is.
        quiet: no progress bars; one plain line per epoch instead.
        stop_after_epoch: stop (as if interrupted) once this many epochs are done; for tests and for
            splitting long jobs.
        log: callable taking one line of text (default: print to stderr on rank 0).
        tensorboard: also write TensorBoard events (when ``tensorboard`` is installed).

    Returns:
        A dict with ``status`` ("finished" or "stopped"), ``epochs_done``, ``best`` (epoch, valid, test
        metrics) and ``final`` (last epoch's row).

    Raises:
        NonFiniteError: the loss, a gradient or a metric became NaN/Inf (files of the last good epoch kept).
        RunExistsError: ``run_dir`` holds a run and ``resume`` is False.
        ConfigError: a bad setting, task option or model argument (the message names it).
    """
    spec, ctx, run_dir = task.spec, ctx or DistContext(), Path(run_dir)
    cfg = validate_config(config)
    options = spec.resolve_options(task_options) if hasattr(spec, "resolve_options") else dict(task_options)
    _check_placement(cfg, ctx)
    say = _logger(log, quiet, ctx.is_main)
    record = {
        "task": spec.name,
        "settings": cfg,
        "task_options": options,
        "spec": {k: v for k, v in asdict(spec).items() if k in RECORD_FIELDS},
        "world_size": ctx.world_size,
    }
    opened = open_run(run_dir, record, resume)
    if opened.result is not None:
        say(f"{run_dir}: already finished (best epoch {opened.result['best']['epoch']}); nothing to do")
        return opened.result
    t = _setup(task, cfg, options, data_dir, ctx)
    if opened.checkpoint is not None:
        _restore(t, opened.checkpoint, ctx)
        if ctx.is_main:
            truncate_metrics(run_dir, t.start_epoch)
        say(f"resuming {run_dir} after epoch {t.start_epoch}")
    elif ctx.is_main:
        record["parameters"] = count_parameters(t.model)
        write_config(run_dir, record)
        say(
            f"{spec.name}: {count_parameters(t.model):,} parameters, {len(t.splits.train):,} training sequences, "
            f"{cfg['epochs']} epochs, device {ctx.device}"
            + (f" x {ctx.world_size} processes" if ctx.enabled else "")
        )

    tq = _progress(quiet, ctx.is_main)
    writer = (
        EpochWriter(run_dir, spec.metric, cfg["epochs"], tensorboard, t.start_epoch, say)
        if ctx.is_main
        else None
    )
    bar = (
        tq(total=cfg["epochs"], initial=t.start_epoch, desc=f"{spec.name} seed {cfg['seed']}", unit="epoch")
        if tq
        else None
    )
    last_row: dict[str, Any] | None = None
    status = "finished"
    try:
        for epoch in range(t.start_epoch, cfg["epochs"]):
            if stop_after_epoch is not None and epoch >= stop_after_epoch:
                status = "stopped"
                break
            good = t.start_epoch if last_row is None else last_row["epoch"]
            last_row, improved = _epoch(t, spec, cfg, ctx, epoch, good, run_dir, tq)
            rng = _gather_rng(ctx, t.loader_gen)
            if writer is not None:
                writer.write(last_row, improved, _state(t, epoch + 1, rng, record))
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()
    return _finish(run_dir, spec, cfg, status, t.best, last_row, t.start_epoch, ctx.is_main, say)


def _check_placement(cfg: dict[str, Any], ctx: DistContext) -> None:
    """Settings that depend on where the run runs: amp needs CUDA, the batch splits over the processes."""
    if cfg["amp"] != "off" and ctx.device.type != "cuda":
        raise ConfigError(f"setting 'amp={cfg['amp']}' needs a CUDA device; this run uses {ctx.device}")
    if cfg["batch_size"] % ctx.world_size:
        raise ConfigError(
            f"setting 'batch_size' ({cfg['batch_size']}) must be divisible by the number of processes "
            f"({ctx.world_size})"
        )


@dataclass
class _Training:
    """Everything one run trains with."""

    model: nn.Module
    net: nn.Module  # the model, wrapped in DistributedDataParallel under torchrun
    splits: RunSplits
    loader: Any
    sampler: Any
    loader_gen: torch.Generator
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    start_epoch: int = 0
    best: dict[str, Any] = field(default_factory=lambda: {"epoch": None, "valid": None, "test": None})


def _setup(task, cfg: dict[str, Any], options: dict, data_dir: Path | None, ctx: DistContext) -> _Training:
    """Model (initialised from the seed alone), splits, loader, Adam, the step schedule and the grad scaler."""
    seed, device = cfg["seed"], ctx.device
    _seed_all(seed)
    splits = build_splits(task, options, data_dir, cfg)  # first: the model may take arguments from the data
    torch.manual_seed(seed)  # model initialisation depends on the seed only
    model = build_model(task.spec, cfg, splits.model_args).to(device)
    _seed_all(seed * 1_000_003 + ctx.rank + 1)  # every process draws its own dropout masks
    net = model
    if ctx.enabled:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    loader_gen = torch.Generator().manual_seed(seed)
    loader, sampler = train_loader(splits, cfg, ctx, loader_gen)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    milestones = [cfg["lr_reduce_epoch"]] if cfg["lr_reduce_epoch"] is not None else []
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=cfg["lr_reduce_factor"])
    scaler = torch.amp.GradScaler("cuda", enabled=cfg["amp"] == "fp16" and device.type == "cuda")
    return _Training(model, net, splits, loader, sampler, loader_gen, optimizer, scheduler, scaler)


def _restore(t: _Training, ckpt: dict[str, Any], ctx: DistContext) -> None:
    """Continue from checkpoint ``ckpt`` exactly (weights, optimiser, schedule, scaler, RNG states)."""
    t.model.load_state_dict(ckpt["model"])
    t.optimizer.load_state_dict(ckpt["optimizer"])
    t.scheduler.load_state_dict(ckpt["scheduler"])
    t.scaler.load_state_dict(ckpt["scaler"])
    t.start_epoch, t.best = ckpt["epoch"], ckpt["best"]
    restore_rng_state(ckpt["rng"][ctx.rank], t.loader_gen)


def _state(t: _Training, epoch: int, rng: list, record: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint after ``epoch`` epochs."""
    return {
        "model": t.model.state_dict(),
        "optimizer": t.optimizer.state_dict(),
        "scheduler": t.scheduler.state_dict(),
        "scaler": t.scaler.state_dict(),
        "rng": rng,
        "epoch": epoch,
        "best": t.best,
        "record": record,
    }


def _epoch(t: _Training, spec, cfg, ctx: DistContext, epoch: int, good: int, run_dir: Path, tq):
    """Train epoch ``epoch`` (0-based), evaluate, update ``t.best``; return the epoch's row and whether the
    validation metric improved. ``good``: the last epoch whose checkpoint is on disk (for error messages)."""
    t0 = time.perf_counter()
    if hasattr(t.sampler, "set_epoch"):
        t.sampler.set_epoch(epoch)
    lr = t.optimizer.param_groups[0]["lr"]

    def on_nonfinite(what: str, batch: int) -> str:
        return (
            f"non-finite {what} at epoch {epoch + 1}, batch {batch} (lr {lr:.3g}); training stopped before the "
            f"update. The checkpoint of epoch {good} in {run_dir} is kept. Try a smaller lr, grad_clip or dt "
            f"(--set key=value)."
        )

    progress = None
    if tq is not None:
        progress = lambda it: tq(it, desc=f"epoch {epoch + 1}/{cfg['epochs']}", leave=False, unit="batch")  # noqa: E731
    train_m = train_epoch(
        t.net,
        t.model,
        t.loader,
        spec,
        cfg,
        t.optimizer,
        t.scaler,
        ctx,
        on_nonfinite=on_nonfinite,
        progress=progress,
    )
    t.scheduler.step()
    ev = dict(batch_size=cfg["eval_batch_size"], device=ctx.device, ctx=ctx, amp=cfg["amp"],
              num_workers=cfg["num_workers"], splits=t.splits)  # fmt: skip
    valid_m = evaluate(t.model, t.splits.valid, spec, **ev)
    test_m = evaluate(t.model, t.splits.test, spec, **ev)
    metric = spec.metric
    if not (math.isfinite(valid_m[metric]) and math.isfinite(test_m[metric])):
        raise NonFiniteError(
            f"non-finite {metric} after epoch {epoch + 1} (valid {valid_m[metric]}, test "
            f"{test_m[metric]}); the checkpoint of epoch {epoch} in {run_dir} is kept"
        )
    improved = is_better(valid_m[metric], t.best["valid"], spec.higher_is_better)
    if improved:
        t.best = {"epoch": epoch + 1, "valid": valid_m[metric], "test": test_m[metric]}
    row = epoch_row(epoch + 1, lr, metric, train_m, valid_m, test_m, t.best, time.perf_counter() - t0)
    return row, improved


def _finish(run_dir, spec, cfg, status, best, last_row, start_epoch, main, say) -> dict[str, Any]:
    """The run's result (written to result.json when finished)."""
    rows = read_jsonl(run_dir / METRICS) if main else []
    epochs_done = rows[-1]["epoch"] if rows else (last_row["epoch"] if last_row else start_epoch)
    metric = spec.metric
    result = {
        "task": spec.name,
        "metric": metric,
        "higher_is_better": spec.higher_is_better,
        "seed": cfg["seed"],
        "status": status if epochs_done < cfg["epochs"] else "finished",
        "epochs_done": epochs_done,
        "epochs": cfg["epochs"],
        "best": best,
        "final": rows[-1] if rows else last_row,
    }
    if main and result["status"] == "finished":
        write_result(run_dir, result)
        say(
            f"{spec.name} seed {cfg['seed']}: best validation {metric} {fmt(best['valid'])} at epoch "
            f"{best['epoch']}; test {metric} at that epoch: {fmt(best['test'])}"
        )
    return result
