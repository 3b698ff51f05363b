"""The training loop: Adam, the paper's step schedule, validation-based selection, checkpoints and resume.

One call of :func:`train_run` trains one seed into one run directory::

    RUN_DIR/config.json      settings, task options and task spec of the run
    RUN_DIR/metrics.jsonl    one JSON line per finished epoch
    RUN_DIR/checkpoint.pt    written atomically after every epoch (model, optimiser, scheduler, grad scaler,
                             RNG states of every process, epoch, best metrics): ``resume=True`` continues
                             from it exactly
    RUN_DIR/best.pt          model weights at the best validation epoch
    RUN_DIR/result.json      written when the run finishes: best epoch, its validation and test metric
    RUN_DIR/tensorboard/     TensorBoard events (if ``tensorboard`` is installed)

Under ``torchrun`` every process calls :func:`train_run`; the model is wrapped in DistributedDataParallel,
the training set is split by a DistributedSampler (the configured batch size is the global one), metrics
are summed over processes, and only rank 0 writes files and prints. Every process reads the run directory
(to resume), so across nodes it must be on a shared filesystem. The training set is split exactly when its size
is a multiple of the number of processes (otherwise DistributedSampler repeats a few items to even it out).
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from ..models import SequenceModel, count_parameters
from .checkpoint import (
    append_jsonl,
    atomic_save,
    atomic_write_text,
    capture_rng_state,
    load_checkpoint,
    read_jsonl,
    restore_rng_state,
    rewrite_jsonl,
)
from .distributed import DistContext, ShardSampler, all_reduce_sum
from .metrics import SplitMetrics, compute_loss, is_better
from .presets import TRAIN_DEFAULTS

__all__ = [
    "NonFiniteError",
    "RunExistsError",
    "train_run",
    "build_model",
    "evaluate",
    "validate_config",
    "RESUME_MUTABLE_KEYS",
]

#: Settings that may differ between a checkpoint and the resumed run (everything else must match).
RESUME_MUTABLE_KEYS = frozenset({"epochs", "eval_batch_size", "num_workers"})

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
METRICS = "metrics.jsonl"
CONFIG = "config.json"
RESULT = "result.json"


class NonFiniteError(RuntimeError):
    """Training produced a NaN/Inf loss, gradient or metric; the last good checkpoint is kept."""


class RunExistsError(RuntimeError):
    """The run directory already holds a run and ``resume`` was not requested."""


# --------------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------------

_INT_KEYS = ("hidden_size", "num_layers", "batch_size", "eval_batch_size", "epochs", "seed", "num_workers")
_OPT_INT_KEYS = ("residual_skip", "lr_reduce_epoch", "train_subset", "eval_subset")
_AMP = ("off", "bf16", "fp16")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def validate_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Check every trainer setting; return a normalised copy (``dt`` a float or a list of floats).

    Raises ValueError naming the setting and what was expected.
    """
    unknown = sorted(set(cfg) - set(TRAIN_DEFAULTS))
    if unknown:
        raise ValueError(
            f"unknown setting(s) {', '.join(unknown)}; valid settings: {', '.join(TRAIN_DEFAULTS)}"
        )
    out = dict(TRAIN_DEFAULTS)
    out.update(cfg)
    for k in _INT_KEYS:
        if not _is_int(out[k]):
            raise ValueError(f"setting {k!r} must be an int, got {out[k]!r}")
    for k in ("hidden_size", "num_layers", "batch_size", "eval_batch_size", "epochs"):
        if out[k] < 1:
            raise ValueError(f"setting {k!r} must be >= 1, got {out[k]}")
    if out["seed"] < 0 or out["num_workers"] < 0:
        raise ValueError("settings 'seed' and 'num_workers' must be >= 0")
    for k in _OPT_INT_KEYS:
        if out[k] is not None and (not _is_int(out[k]) or out[k] < 1):
            raise ValueError(f"setting {k!r} must be none or an int >= 1, got {out[k]!r}")
    dt = out["dt"]
    if isinstance(dt, (list, tuple)):
        if len(dt) != out["num_layers"] or not all(_is_num(v) for v in dt):
            raise ValueError(
                f"setting 'dt' must be one number or {out['num_layers']} numbers (one per layer), got {dt!r}"
            )
        dt = [float(v) for v in dt]
    elif not _is_num(dt):
        raise ValueError(f"setting 'dt' must be a number in (0, 1] or a list of them, got {dt!r}")
    for v in dt if isinstance(dt, list) else [dt]:
        if not 0.0 < v <= 1.0:
            raise ValueError(f"setting 'dt' must be in (0, 1], got {v}")
    out["dt"] = dt
    for k, lo in (("alpha", 0.0), ("lr", None), ("lr_reduce_factor", None)):
        if not _is_num(out[k]) or (lo is not None and out[k] < lo) or (lo is None and out[k] <= 0):
            raise ValueError(
                f"setting {k!r} must be a {'number >= 0' if lo == 0.0 else 'positive number'}, got {out[k]!r}"
            )
    if not _is_num(out["dropout"]) or not 0.0 <= out["dropout"] < 1.0:
        raise ValueError(f"setting 'dropout' must be in [0, 1), got {out['dropout']!r}")
    if out["grad_clip"] is not None and (not _is_num(out["grad_clip"]) or out["grad_clip"] <= 0):
        raise ValueError(f"setting 'grad_clip' must be none or a positive number, got {out['grad_clip']!r}")
    if not _is_num(out["input_gain"]) or out["input_gain"] <= 0:
        raise ValueError(f"setting 'input_gain' must be a positive number, got {out['input_gain']!r}")
    out["input_gain"] = float(out["input_gain"])
    if out["memory"] not in ("standard", "lean"):
        raise ValueError(f"setting 'memory' must be standard or lean, got {out['memory']!r}")
    if out["amp"] not in _AMP:
        raise ValueError(f"setting 'amp' must be one of {', '.join(_AMP)}, got {out['amp']!r}")
    from ..ops import BACKENDS

    if out["backend"] not in BACKENDS:
        raise ValueError(f"setting 'backend' must be one of {', '.join(BACKENDS)}, got {out['backend']!r}")
    for k in ("alpha", "lr", "lr_reduce_factor", "dropout"):
        out[k] = float(out[k])
    if out["grad_clip"] is not None:
        out["grad_clip"] = float(out["grad_clip"])
    return out


def build_model(spec, cfg: Mapping[str, Any]) -> SequenceModel:
    """The :class:`SequenceModel` for task ``spec`` and trainer settings ``cfg``."""
    return SequenceModel(
        spec.input_size,
        spec.output_size,
        hidden_size=cfg["hidden_size"],
        num_layers=cfg["num_layers"],
        dt=cfg["dt"],
        alpha=cfg["alpha"],
        dropout=cfg["dropout"],
        readout=spec.readout,
        residual_skip=cfg["residual_skip"],
        backend=cfg["backend"],
        input_gain=cfg["input_gain"],
        memory=cfg["memory"],
    )


def _subset(ds: Dataset, n: int | None, seed: int) -> Dataset:
    """A fixed random subset of ``n`` items (chosen from ``seed``), or ``ds`` itself."""
    if n is None or n >= len(ds):
        return ds
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(ds), generator=g)[:n].sort().values.tolist()
    return Subset(ds, idx)


# --------------------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------------------


def _autocast(device: torch.device, amp: str):
    if amp == "off" or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


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
) -> dict[str, float]:
    """Loss and task metric of ``model`` on ``dataset`` (every item once, summed over processes)."""
    ctx = ctx or DistContext(device=device)
    was_training = model.training
    model.eval()
    acc = SplitMetrics(spec.loss, spec.metric)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=ShardSampler(len(dataset), ctx.rank, ctx.world_size),
        num_workers=num_workers,
    )
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with _autocast(device, amp):
            out = model(x)
        out = out.float()
        acc.update(out, y, compute_loss(spec.loss, out, y))
    acc.load_sums(all_reduce_sum(acc.sums(), ctx))
    model.train(was_training)
    return acc.compute()


# --------------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------------


def _progress(quiet: bool, main: bool):
    if quiet or not main:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # the [tasks] extra is not installed
        return None
    return tqdm


def _tensorboard(run_dir: Path, start_epoch: int):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard missing or broken: JSONL only
        return None
    return SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_epoch + 1)


def _gather_rng(ctx: DistContext, gen: torch.Generator) -> list:
    state = capture_rng_state(gen)
    if not ctx.enabled:
        return [state]
    states: list = [None] * ctx.world_size
    torch.distributed.all_gather_object(states, state)
    return states


def _any_rank(flag: bool, ctx: DistContext) -> bool:
    if not ctx.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], dtype=torch.float64)
    return bool(all_reduce_sum(t, ctx).item() > 0)


def _fmt(v: float) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


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
        config: trainer settings (see :data:`~unicornn.training.presets.TRAIN_DEFAULTS`).
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
    """
    spec = task.spec
    ctx = ctx or DistContext()
    cfg = validate_config(config)
    options = spec.resolve_options(task_options) if hasattr(spec, "resolve_options") else dict(task_options)
    run_dir = Path(run_dir)
    device = ctx.device
    main = ctx.is_main

    def say(msg: str) -> None:
        if not main:
            return
        if log is not None:
            log(msg)
        else:
            tq = _progress(quiet, main)
            (tq.write if tq is not None else print)(msg, file=sys.stderr)

    if cfg["amp"] != "off" and device.type != "cuda":
        raise ValueError(f"setting 'amp={cfg['amp']}' needs a CUDA device; this run uses {device}")
    if cfg["batch_size"] % ctx.world_size:
        raise ValueError(
            f"setting 'batch_size' ({cfg['batch_size']}) must be divisible by the number of processes "
            f"({ctx.world_size})"
        )

    ckpt_path = run_dir / CHECKPOINT
    record = {
        "task": spec.name,
        "settings": cfg,
        "task_options": options,
        "spec": {k: v for k, v in asdict(spec).items() if k != "default_options"},
        "world_size": ctx.world_size,
    }

    # ---- resume or fresh start -------------------------------------------------------------------
    ckpt = None
    if (run_dir / RESULT).exists() or ckpt_path.exists():
        if not resume:
            raise RunExistsError(
                f"{run_dir} already holds a run; pass --resume to continue it or choose another --out"
            )
        if (run_dir / RESULT).exists():
            result = json.loads((run_dir / RESULT).read_text())
            say(f"{run_dir}: already finished (best epoch {result['best']['epoch']}); nothing to do")
            return result
        ckpt = load_checkpoint(ckpt_path)
        old = ckpt["record"]
        diff = sorted(k for k in cfg if k not in RESUME_MUTABLE_KEYS and old["settings"].get(k) != cfg[k])
        if old["task"] != spec.name or old["task_options"] != options:
            diff.append("task/task options")
        if old["world_size"] != ctx.world_size:
            diff.append(f"number of processes ({old['world_size']} -> {ctx.world_size})")
        if diff:
            raise ValueError(
                f"cannot resume {run_dir}: the checkpoint was made with different {', '.join(diff)}; "
                f"only {', '.join(sorted(RESUME_MUTABLE_KEYS))} may change on resume"
            )

    seed = cfg["seed"]
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)

    splits = task.build(options, data_dir, seed)
    train_set = _subset(splits.train, cfg["train_subset"], seed)
    valid_set = _subset(splits.valid, cfg["eval_subset"], seed + 1)
    test_set = _subset(splits.test, cfg["eval_subset"], seed + 2)

    torch.manual_seed(seed)  # model initialisation depends on the seed only
    model = build_model(spec, cfg).to(device)
    # every process draws its own dropout masks
    torch.manual_seed(seed * 1_000_003 + ctx.rank + 1)
    random.seed(seed * 1_000_003 + ctx.rank + 1)
    np.random.seed(seed * 1_000_003 + ctx.rank + 1)

    net: nn.Module = model
    if ctx.enabled:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    local_batch = cfg["batch_size"] // ctx.world_size
    sampler = DistributedSampler(
        train_set, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed, drop_last=False
    )
    loader_gen = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(
        train_set,
        batch_size=local_batch,
        sampler=sampler,
        num_workers=cfg["num_workers"],
        generator=loader_gen,
        pin_memory=device.type == "cuda",
        drop_last=False,
    )
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
        start_epoch = ckpt["epoch"]
        best = ckpt["best"]
        restore_rng_state(ckpt["rng"][ctx.rank], loader_gen)
        if main:  # drop lines of epochs the checkpoint does not cover (a crash between the two writes)
            rows = [r for r in read_jsonl(run_dir / METRICS) if r["epoch"] <= start_epoch]
            rewrite_jsonl(rows, run_dir / METRICS)
        say(f"resuming {run_dir} after epoch {start_epoch}")
    elif main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / METRICS).unlink(missing_ok=True)
        record["parameters"] = count_parameters(model)
        atomic_write_text(json.dumps(record, indent=2) + "\n", run_dir / CONFIG)
        say(
            f"{spec.name}: {count_parameters(model):,} parameters, {len(train_set):,} training sequences, "
            f"{cfg['epochs']} epochs, device {device}"
            + (f" x {ctx.world_size} processes" if ctx.enabled else "")
        )

    metric = spec.metric
    tq = _progress(quiet, main)
    writer = _tensorboard(run_dir, start_epoch) if main and tensorboard else None
    epoch_bar = (
        tq(total=cfg["epochs"], initial=start_epoch, desc=f"{spec.name} seed {seed}", unit="epoch")
        if tq is not None
        else None
    )
    last_row: dict[str, Any] | None = None
    status = "finished"
    try:
        for epoch in range(start_epoch, cfg["epochs"]):
            if stop_after_epoch is not None and epoch >= stop_after_epoch:
                status = "stopped"
                break
            t0 = time.perf_counter()
            sampler.set_epoch(epoch)
            net.train()
            lr = optimizer.param_groups[0]["lr"]
            train_acc = SplitMetrics(spec.loss, metric)
            batches = (
                tq(train_loader, desc=f"epoch {epoch + 1}/{cfg['epochs']}", leave=False, unit="batch")
                if tq is not None
                else train_loader
            )
            for step, (x, y) in enumerate(batches):
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                optimizer.zero_grad(set_to_none=True)
                with _autocast(device, cfg["amp"]):
                    out = net(x)
                out = out.float()
                loss = compute_loss(spec.loss, out, y)
                scaler.scale(loss).backward()
                if cfg["grad_clip"] is not None or cfg["amp"] != "fp16":
                    scaler.unscale_(optimizer)
                    gnorm = nn.utils.clip_grad_norm_(
                        model.parameters(), cfg["grad_clip"] if cfg["grad_clip"] is not None else math.inf
                    )
                else:
                    gnorm = torch.zeros(())
                bad = not math.isfinite(loss.item()) or (cfg["amp"] != "fp16" and not torch.isfinite(gnorm))
                if _any_rank(bad, ctx):
                    raise NonFiniteError(
                        f"non-finite {'loss' if not math.isfinite(loss.item()) else 'gradient'} at epoch "
                        f"{epoch + 1}, batch {step + 1} (lr {lr:.3g}); training stopped before the update. "
                        f"The checkpoint of epoch {start_epoch if last_row is None else last_row['epoch']} "
                        f"in {run_dir} is kept. Try a smaller lr, grad_clip or dt (--set key=value)."
                    )
                scaler.step(optimizer)
                scaler.update()
                train_acc.update(out.detach(), y, loss.detach())
                if tq is not None:
                    batches.set_postfix(loss=f"{loss.item():.4g}", refresh=False)
            scheduler.step()
            train_acc.load_sums(all_reduce_sum(train_acc.sums(), ctx))
            train_m = train_acc.compute()
            ev = dict(
                batch_size=cfg["eval_batch_size"],
                device=device,
                ctx=ctx,
                amp=cfg["amp"],
                num_workers=cfg["num_workers"],
            )
            valid_m = evaluate(model, valid_set, spec, **ev)
            test_m = evaluate(model, test_set, spec, **ev)
            if not (math.isfinite(valid_m[metric]) and math.isfinite(test_m[metric])):
                raise NonFiniteError(
                    f"non-finite {metric} after epoch {epoch + 1} (valid {valid_m[metric]}, test "
                    f"{test_m[metric]}); the checkpoint of epoch {epoch} in {run_dir} is kept"
                )
            improved = is_better(valid_m[metric], best["valid"], spec.higher_is_better)
            if improved:
                best = {"epoch": epoch + 1, "valid": valid_m[metric], "test": test_m[metric]}
            row = {
                "epoch": epoch + 1,
                "lr": lr,
                "train_loss": train_m["loss"],
                f"train_{metric}": train_m[metric],
                "valid_loss": valid_m["loss"],
                f"valid_{metric}": valid_m[metric],
                "test_loss": test_m["loss"],
                f"test_{metric}": test_m[metric],
                "best_epoch": best["epoch"],
                f"best_valid_{metric}": best["valid"],
                f"best_test_{metric}": best["test"],
                "seconds": time.perf_counter() - t0,
            }
            last_row = row
            rng = _gather_rng(ctx, loader_gen)
            if main:
                if improved:
                    atomic_save(
                        {"model": model.state_dict(), "record": record, "epoch": epoch + 1, "best": best},
                        run_dir / BEST,
                    )
                append_jsonl(row, run_dir / METRICS)
                atomic_save(
                    {
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "scaler": scaler.state_dict(),
                        "rng": rng,
                        "epoch": epoch + 1,
                        "best": best,
                        "record": record,
                    },
                    ckpt_path,
                )
                if writer is not None:
                    for k, v in row.items():
                        if k not in ("epoch", "best_epoch") and isinstance(v, float):
                            writer.add_scalar(k.replace("_", "/", 1), v, epoch + 1)
                    writer.flush()
                say(
                    f"epoch {epoch + 1}/{cfg['epochs']}  lr {lr:.3g}  train loss {_fmt(train_m['loss'])}  "
                    f"valid {metric} {_fmt(valid_m[metric])}  test {metric} {_fmt(test_m[metric])}  "
                    f"best: epoch {best['epoch']} (test {metric} {_fmt(best['test'])})  "
                    f"{row['seconds']:.1f}s"
                )
            if epoch_bar is not None:
                epoch_bar.update(1)
    finally:
        if epoch_bar is not None:
            epoch_bar.close()
        if writer is not None:
            writer.close()

    rows = read_jsonl(run_dir / METRICS) if main else []
    epochs_done = rows[-1]["epoch"] if rows else (last_row["epoch"] if last_row else start_epoch)
    result = {
        "task": spec.name,
        "metric": metric,
        "higher_is_better": spec.higher_is_better,
        "seed": seed,
        "status": status if epochs_done < cfg["epochs"] else "finished",
        "epochs_done": epochs_done,
        "epochs": cfg["epochs"],
        "best": best,
        "final": rows[-1] if rows else last_row,
    }
    if main and result["status"] == "finished":
        atomic_write_text(json.dumps(result, indent=2) + "\n", run_dir / RESULT)
        say(
            f"{spec.name} seed {seed}: best validation {metric} {_fmt(best['valid'])} at epoch "
            f"{best['epoch']}; test {metric} at that epoch: {_fmt(best['test'])}"
        )
    return result
