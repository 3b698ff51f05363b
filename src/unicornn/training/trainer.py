"""The training loop: Adam, the paper's step schedule, validation-based selection, checkpoints and resume.

One call of :func:`train_run` trains one seed into one run directory (files: :mod:`.run`). Its pieces:
:func:`~.run.open_run` (fresh, resume or finished), :func:`~.splits.build_splits` (datasets and subsets),
:func:`~.epoch.train_epoch` (one epoch, NaN/Inf guard), :func:`~.epoch.evaluate` and
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
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..models import MODELS, count_parameters
from ..registry import ConfigError
from ..tasks.base import RECORD_FIELDS
from .checkpoint import capture_rng_state, restore_rng_state
from .distributed import DistContext
from .epoch import NonFiniteError, evaluate, train_epoch
from .metrics import is_better
from .records import EpochWriter, epoch_row, fmt, truncate_metrics, write_config, write_result
from .run import RunExistsError, open_run
from .settings import RESUME_MUTABLE_KEYS, validate_config
from .splits import build_splits, train_loader

__all__ = [
    "NonFiniteError",
    "RunExistsError",
    "train_run",
    "build_model",
    "evaluate",
    "validate_config",
    "RESUME_MUTABLE_KEYS",
]


def build_model(spec, cfg: Mapping[str, Any]) -> nn.Module:
    """The model ``cfg["model"]`` for task ``spec``; its own errors about its arguments become ConfigError."""
    factory = MODELS.get(cfg.get("model", "unicornn"))
    try:
        return factory(spec, cfg)
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
    device, main = ctx.device, ctx.is_main
    say = _logger(log, quiet, main)
    if cfg["amp"] != "off" and device.type != "cuda":
        raise ConfigError(f"setting 'amp={cfg['amp']}' needs a CUDA device; this run uses {device}")
    if cfg["batch_size"] % ctx.world_size:
        raise ConfigError(
            f"setting 'batch_size' ({cfg['batch_size']}) must be divisible by the number of processes "
            f"({ctx.world_size})"
        )
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
    ckpt = opened.checkpoint

    seed = cfg["seed"]
    torch.manual_seed(seed)  # model initialisation depends on the seed only
    model = build_model(spec, cfg).to(device)
    _seed_all(seed)
    splits = build_splits(task, options, data_dir, cfg)
    _seed_all(seed * 1_000_003 + ctx.rank + 1)  # every process draws its own dropout masks

    net: nn.Module = model
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

    start_epoch = 0
    best: dict[str, Any] = {"epoch": None, "valid": None, "test": None}
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        start_epoch, best = ckpt["epoch"], ckpt["best"]
        restore_rng_state(ckpt["rng"][ctx.rank], loader_gen)
        if main:
            truncate_metrics(run_dir, start_epoch)
        say(f"resuming {run_dir} after epoch {start_epoch}")
    elif main:
        record["parameters"] = count_parameters(model)
        write_config(run_dir, record)
        say(
            f"{spec.name}: {count_parameters(model):,} parameters, {len(splits.train):,} training sequences, "
            f"{cfg['epochs']} epochs, device {device}"
            + (f" x {ctx.world_size} processes" if ctx.enabled else "")
        )

    metric = spec.metric
    tq = _progress(quiet, main)
    writer = (
        EpochWriter(run_dir, metric, cfg["epochs"], main and tensorboard, start_epoch, say) if main else None
    )
    epoch_bar = (
        tq(total=cfg["epochs"], initial=start_epoch, desc=f"{spec.name} seed {seed}", unit="epoch")
        if tq is not None
        else None
    )
    last_row: dict[str, Any] | None = None
    status = "finished"
    ev = dict(batch_size=cfg["eval_batch_size"], device=device, ctx=ctx, amp=cfg["amp"],
              num_workers=cfg["num_workers"], splits=splits)  # fmt: skip
    try:
        for epoch in range(start_epoch, cfg["epochs"]):
            if stop_after_epoch is not None and epoch >= stop_after_epoch:
                status = "stopped"
                break
            t0 = time.perf_counter()
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)
            lr = optimizer.param_groups[0]["lr"]
            good = start_epoch if last_row is None else last_row["epoch"]

            def on_nonfinite(what: str, batch: int, epoch=epoch, lr=lr, good=good) -> str:
                return (
                    f"non-finite {what} at epoch {epoch + 1}, batch {batch} (lr {lr:.3g}); training stopped "
                    f"before the update. The checkpoint of epoch {good} in {run_dir} is kept. Try a smaller "
                    f"lr, grad_clip or dt (--set key=value)."
                )

            progress = None
            if tq is not None:
                desc = f"epoch {epoch + 1}/{cfg['epochs']}"
                progress = lambda it, desc=desc: tq(it, desc=desc, leave=False, unit="batch")  # noqa: E731
            train_m = train_epoch(
                net,
                model,
                loader,
                spec,
                cfg,
                optimizer,
                scaler,
                ctx,
                on_nonfinite=on_nonfinite,
                progress=progress,
            )
            scheduler.step()
            valid_m = evaluate(model, splits.valid, spec, **ev)
            test_m = evaluate(model, splits.test, spec, **ev)
            if not (math.isfinite(valid_m[metric]) and math.isfinite(test_m[metric])):
                raise NonFiniteError(
                    f"non-finite {metric} after epoch {epoch + 1} (valid {valid_m[metric]}, test "
                    f"{test_m[metric]}); the checkpoint of epoch {epoch} in {run_dir} is kept"
                )
            improved = is_better(valid_m[metric], best["valid"], spec.higher_is_better)
            if improved:
                best = {"epoch": epoch + 1, "valid": valid_m[metric], "test": test_m[metric]}
            last_row = epoch_row(
                epoch + 1, lr, metric, train_m, valid_m, test_m, best, time.perf_counter() - t0
            )
            rng = _gather_rng(ctx, loader_gen)
            if writer is not None:
                state = {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "rng": rng,
                    "epoch": epoch + 1,
                    "best": best,
                    "record": record,
                }
                writer.write(last_row, improved, state)
            if epoch_bar is not None:
                epoch_bar.update(1)
    finally:
        if epoch_bar is not None:
            epoch_bar.close()
        if writer is not None:
            writer.close()
    return _finish(run_dir, spec, cfg, status, best, last_row, start_epoch, main, say)


def _finish(run_dir, spec, cfg, status, best, last_row, start_epoch, main, say) -> dict[str, Any]:
    """The run's result (written to result.json when finished)."""
    from .checkpoint import read_jsonl
    from .run import METRICS

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
