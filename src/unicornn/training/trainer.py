"""The training loop: Adam, the paper's step schedule, validation-based selection, checkpoints and resume.

One call of :func:`train_run` trains one seed into one run directory (files: :mod:`.run`). Its pieces:
:func:`~.settings.validate_config` (the trainer's settings), :func:`~.run.run_lock` (one writer per
directory), :func:`~.run.open_run` (fresh, resume with the run's own settings, or finished),
:func:`~.records.restore_run_files` (the directory made whole on resume), :func:`~.splits.build_splits`
(datasets and subsets), ``_setup`` (model from :func:`~unicornn.task_models.build_model`, optimiser, schedule), :func:`~.epoch.train_epoch`
(one epoch, NaN/Inf guard), :func:`~.epoch.evaluate`, :class:`~.records.EpochWriter` (an epoch's results),
:mod:`.progress` (bars or log lines). Several seeds: :mod:`.seeds`. Test hook: :mod:`.faults`.

Under ``torchrun`` every process calls :func:`train_run`; the model is wrapped in DistributedDataParallel,
the training set is split by a DistributedSampler (the configured batch size is the global one), metrics
are summed over processes, and only rank 0 writes files and prints. Every process reads the run directory
(to resume), so across nodes it must be on a shared filesystem. The training set is split exactly when its size
is a multiple of the number of processes (otherwise DistributedSampler repeats a few items to even it out).
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..metrics import is_better
from ..modules import UnICORNN
from ..ops.dispatch import resolve_backend
from ..task_models import build_model, count_parameters, recurrent_weight_norms
from ..tasks.base import RECORD_FIELDS
from ..validation import ConfigError
from .checkpoint import capture_rng_state, restore_rng_state
from .distributed import DistContext
from .epoch import NonFiniteError, evaluate, train_epoch
from .errors import RunDirError, RunExistsError, RunFileError, RunLockedError
from .memory import check_memory
from .progress import Progress
from .records import EpochWriter, epoch_row, fmt, metrics_rows, restore_run_files, write_config, write_result
from .run import CHECKPOINT, CONFIG, RUN_ID, Requested, new_run_id, open_run, run_lock
from .settings import RESUME_MUTABLE_KEYS, epochs_text, validate_config
from .splits import RunSplits, build_splits, train_loader

__all__ = [
    "NonFiniteError",
    "RunExistsError",
    "RunLockedError",
    "RunFileError",
    "Requested",
    "train_run",
    "make_optimizer",
    "evaluate",
    "validate_config",
    "RESUME_MUTABLE_KEYS",
]


def make_optimizer(model: nn.Module, cfg: Mapping[str, Any]) -> tuple[torch.optim.Optimizer, Any]:
    """Adam with ``cfg["lr"]`` and the step schedule (``lr_reduce_epoch``, ``lr_reduce_factor``; step the
    scheduler once per epoch)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    milestones = [cfg["lr_reduce_epoch"]] if cfg["lr_reduce_epoch"] is not None else []
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=cfg["lr_reduce_factor"])
    return optimizer, scheduler


def _seed_all(seed: int) -> None:
    """Seed Python's, NumPy's and PyTorch's global generators from a non-negative int; NumPy's takes it
    modulo 2**32 (its range), PyTorch's modulo 2**64: a seed within a range is used as it is."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed % 2**64)


def _gather_rng(ctx: DistContext, gen: torch.Generator) -> list:
    state = capture_rng_state(gen)
    if not ctx.enabled:
        return [state]
    states: list = [None] * ctx.world_size
    torch.distributed.all_gather_object(states, state)
    return states


@contextlib.contextmanager
def _locked(run_dir: Path, ctx: DistContext):
    """The run directory's lock (:func:`~.run.run_lock`), taken by the main process; under torchrun every
    process learns whether it got it (and raises the same error if not)."""
    with contextlib.ExitStack() as stack:
        error: BaseException | None = None
        if ctx.is_main:
            try:
                stack.enter_context(run_lock(run_dir))
            except RunDirError as err:
                error = err
        if ctx.enabled:
            box = [None if error is None else (type(error), str(error))]
            torch.distributed.broadcast_object_list(box, src=0)
            if box[0] is not None and error is None:
                error = box[0][0](box[0][1])
        if error is not None:
            raise error
        yield


def _import_dynamo_holding_ctrl_c() -> None:
    """torch imports torch._dynamo on first use (in an optimiser's constructor, in initialisers on the meta
    device), and with it Triton where installed, whose C++ initialisation aborts the process if a Ctrl-C
    strikes during it: import it here, with a Ctrl-C held back until the import is done."""
    from ..entry import interrupts_deferred

    with interrupts_deferred():
        import torch._dynamo  # noqa: F401


def train_run(
    task,
    config: Mapping[str, Any],
    task_options: Mapping[str, Any],
    run_dir: str | Path,
    *,
    data_dir: Path | None = None,
    ctx: DistContext | None = None,
    resume: bool = False,
    requested: Requested | None = None,
    preset: str | None = None,
    quiet: bool = False,
    stop_after_epoch: int | None = None,
    log=None,
    tensorboard: bool = True,
    progress_every: float | None = 60.0,
    on_epoch_end: Callable[[int, dict[str, Any]], bool] | None = None,
    memory_check: bool = True,
) -> dict[str, Any]:
    """Train one seed of ``task`` into ``run_dir`` and return the result (see module docstring).

    Args:
        task: an object with ``spec`` and ``build(options, data_dir, seed)`` (see :mod:`unicornn.tasks`).
        config: settings of a fresh run (see :data:`~unicornn.training.settings.TRAIN_DEFAULTS`).
        task_options: options of a fresh run, passed to ``task.build`` (merged into the task's defaults).
        run_dir: directory of this run; one process at a time writes it (its lock, see :mod:`.run`).
        data_dir: dataset cache directory handed to the task.
        ctx: distributed context (default: one process on the CPU).
        resume: continue from ``run_dir/checkpoint.pt`` with the run's own settings; a finished run is returned
            as is, unless ``requested`` extends its ``epochs``.
        requested: what the caller named explicitly; on resume it is checked against (and may change some of)
            the run's own settings, see :class:`~.run.Requested`. Default: all of ``config`` and
            ``task_options``.
        preset: name of the preset ``config`` comes from, recorded in config.json.
        quiet: no progress bars or in-epoch lines: one line per epoch.
        stop_after_epoch: stop (as if interrupted) once this many epochs are done; for tests and for
            splitting long jobs.
        log: callable taking one line of text (default: stderr on rank 0, see :mod:`.progress`).
        tensorboard: also write TensorBoard events (when ``tensorboard`` is installed).
        progress_every: seconds between progress lines within an epoch when stderr is not a terminal.
        on_epoch_end: called as ``on_epoch_end(epoch, row)`` after each epoch is written (``epoch`` 1-based,
            ``row`` its metrics.jsonl row, e.g. ``row["valid_<metric>"]``); a true return value stops the run
            there (status "stopped", resumable), e.g. a tuner's pruning. Called in every process under
            torchrun: it must return the same answer in each.
        memory_check: refuse a run whose estimated memory exceeds what the machine (or device) has, before the
            run directory is created (see :mod:`.memory`); False skips the check.

    Returns:
        A dict with ``status`` ("finished" or "stopped"), ``epochs_done``, ``best`` (epoch, valid, test
        metrics) and ``final`` (last epoch's row).

    Raises:
        NonFiniteError: the loss, a gradient or a metric became NaN/Inf (files of the last good epoch kept).
        RunExistsError: ``run_dir`` holds a run and ``resume`` is False.
        RunLockedError: another process is writing ``run_dir``.
        RunFileError: a file of ``run_dir`` is damaged, or the file system refuses a write.
        ConfigError: a bad setting, task option or model argument (the message names it), or a resume asking
            for settings that cannot change.
        MemoryLimitError: (a ConfigError) the run's estimated memory exceeds the machine's (``memory_check``).
    """
    _import_dynamo_holding_ctrl_c()
    spec, ctx, run_dir = task.spec, ctx or DistContext(), Path(run_dir)
    cfg = validate_config(config)
    options = spec.resolve_options(task_options) if hasattr(spec, "resolve_options") else dict(task_options)
    requested = requested if requested is not None else Requested(config, task_options, preset)
    out = Progress(quiet=quiet, main=ctx.is_main, log=log, every=progress_every)
    say = out.say
    record = {
        "task": spec.name,
        "preset": preset,
        "settings": cfg,
        "task_options": options,
        "spec": {k: v for k, v in asdict(spec).items() if k in RECORD_FIELDS},
        "world_size": ctx.world_size,
        "run_id": new_run_id(),  # a fresh run's; a resumed run keeps its own (see open_run)
    }
    if ctx.enabled:  # one id for the run: rank 0's
        box = [record[RUN_ID]]
        torch.distributed.broadcast_object_list(box, src=0)
        record[RUN_ID] = box[0]
    existing = resume and any((run_dir / name).exists() for name in (CHECKPOINT, CONFIG))
    if memory_check and not existing:  # before the run directory is created; a resumed run: its own settings
        check_memory(task, cfg, options, ctx.device)
    with _locked(run_dir, ctx):
        opened = open_run(run_dir, record, resume, requested)
        for note in opened.notes:
            say(note)
        if opened.result is not None:
            r = opened.result
            say(
                f"{run_dir}: already finished ({epochs_text(r['epochs_done'])}, best epoch {r['best']['epoch']}); "
                f"nothing to do (to train longer: --resume --set epochs=N)"
            )
            return r
        record = opened.record
        cfg, options = record["settings"], record["task_options"]
        if memory_check and existing:
            check_memory(task, cfg, options, ctx.device)
        _check_placement(cfg, ctx)
        layers = cfg.get("num_layers")
        if isinstance(layers, int) and layers >= 1000:  # building the stack alone takes seconds per thousand
            say(f"{spec.name}: building a model of {layers:,} layers (this takes a while)")
        t = _setup(task, cfg, options, data_dir, ctx)
        if task.spec is not spec:  # a task whose spec follows its data (uea) sets it in build
            spec = task.spec
            if opened.checkpoint is None:
                record["spec"] = {k: v for k, v in asdict(spec).items() if k in RECORD_FIELDS}
        if opened.checkpoint is not None:
            _restore(t, opened.checkpoint, ctx, run_dir)
            if ctx.is_main:
                restore_run_files(run_dir, opened, t.rows, say)
            changed = "".join(f"; {k} {a} -> {b} as asked" for k, (a, b) in opened.changes.items())
            say(f"resuming {run_dir} after epoch {t.start_epoch} with its own settings{changed}")
        elif ctx.is_main:
            record["parameters"] = count_parameters(t.model)
            write_config(run_dir, record)
            again = " (started again with its own settings: no epoch had finished)" if opened.restart else ""
            say(
                f"{spec.name}: {count_parameters(t.model):,} parameters, {len(t.splits.train):,} training sequences, "
                f"{epochs_text(cfg['epochs'])}, device {ctx.device}"
                + (f" x {ctx.world_size} processes" if ctx.enabled else "")
                + again
            )
        return _train_epochs(
            t, spec, cfg, ctx, run_dir, record, out, tensorboard, stop_after_epoch, on_epoch_end
        )


def _train_epochs(t: _Training, spec, cfg, ctx: DistContext, run_dir: Path, record: dict[str, Any],
                  out: Progress, tensorboard: bool, stop_after_epoch: int | None,
                  on_epoch_end=None) -> dict[str, Any]:  # fmt: skip
    """The epoch loop from ``t.start_epoch``: train, evaluate, write each epoch; then the result."""
    writer = (
        EpochWriter(run_dir, spec.metric, cfg["epochs"], tensorboard, t.start_epoch, out.say)
        if ctx.is_main
        else None
    )
    bar = out.run_bar(cfg["epochs"], t.start_epoch, f"{spec.name} seed {cfg['seed']}")
    status = "finished"
    try:
        for epoch in range(t.start_epoch, cfg["epochs"]):
            if stop_after_epoch is not None and epoch >= stop_after_epoch:
                status = "stopped"
                break
            row, improved = _epoch(t, spec, cfg, ctx, epoch, run_dir, out.epoch(epoch + 1, cfg["epochs"]))
            t.rows.append(row)
            rng = _gather_rng(ctx, t.loader_gen)
            if writer is not None:
                writer.write(row, improved, _state(t, epoch + 1, rng, record))
            if bar is not None:
                bar.update(1)
            if on_epoch_end is not None and on_epoch_end(epoch + 1, row) and epoch + 1 < cfg["epochs"]:
                status = "stopped"
                break
    finally:
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()
    return _finish(run_dir, spec, cfg, status, t, ctx.is_main, out.say, record.get(RUN_ID))


def _check_placement(cfg: dict[str, Any], ctx: DistContext) -> None:
    """Settings that depend on where the run runs: amp needs CUDA, the batch splits over the processes."""
    if cfg["amp"] != "off" and ctx.device.type != "cuda":
        raise ConfigError(f"setting 'amp={cfg['amp']}' needs a CUDA device; this run uses {ctx.device}")
    if cfg["batch_size"] % ctx.world_size:
        raise ConfigError(
            f"setting 'batch_size' ({cfg['batch_size']}) must be divisible by the number of processes "
            f"({ctx.world_size})"
        )


def _check_backends(model: nn.Module, device: torch.device) -> None:
    """Every UnICORNN stack of ``model`` has a backend that runs on ``device`` (before any training step):
    a :class:`ConfigError` naming the setting otherwise (``backend=triton`` without CUDA, say)."""
    for m in model.modules():
        if isinstance(m, UnICORNN):
            try:
                resolve_backend(m.backend, device, torch.float32)
            except (RuntimeError, TypeError) as err:
                raise ConfigError(f"setting 'backend={m.backend}' cannot run here: {err}") from None


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
    rows: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl rows of the epochs done


def _setup(task, cfg: dict[str, Any], options: dict, data_dir: Path | None, ctx: DistContext) -> _Training:
    """Model (initialised from the seed alone), splits, loader, Adam, the step schedule and the grad scaler."""
    seed, device = cfg["seed"], ctx.device
    _seed_all(seed)
    splits = build_splits(task, options, data_dir, cfg)  # first: the model may take arguments from the data
    torch.manual_seed(seed)  # model initialisation depends on the seed only
    model = build_model(task.spec, cfg, splits.model_args).to(device)
    _check_backends(model, device)
    _seed_all(seed * 1_000_003 + ctx.rank + 1)  # every process draws its own dropout masks
    net = model
    if ctx.enabled:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    loader_gen = torch.Generator().manual_seed(seed)
    loader, sampler = train_loader(splits, cfg, ctx, loader_gen)
    optimizer, scheduler = make_optimizer(model, cfg)
    scaler = torch.amp.GradScaler("cuda", enabled=cfg["amp"] == "fp16" and device.type == "cuda")
    return _Training(model, net, splits, loader, sampler, loader_gen, optimizer, scheduler, scaler)


def _restore(t: _Training, ckpt: dict[str, Any], ctx: DistContext, run_dir: Path) -> None:
    """Continue from checkpoint ``ckpt`` exactly (weights, optimiser, schedule, scaler, RNG states, rows)."""
    try:
        t.model.load_state_dict(ckpt["model"])
        t.optimizer.load_state_dict(ckpt["optimizer"])
        t.scheduler.load_state_dict(ckpt["scheduler"])
        t.scaler.load_state_dict(ckpt["scaler"])
        t.start_epoch, t.best = int(ckpt["epoch"]), dict(ckpt["best"])
        restore_rng_state(ckpt["rng"][ctx.rank], t.loader_gen)
    except (
        KeyError,
        IndexError,
        TypeError,
        ValueError,
        RuntimeError,
    ) as err:  # a damaged checkpoint's content
        raise RunFileError(
            f"{run_dir / CHECKPOINT} is damaged: it does not fit the run's model and settings ({err!r:.200})"
        ) from None
    if "rows" in ckpt:
        t.rows = list(ckpt["rows"])
    else:  # a checkpoint of an earlier version: the rows are in metrics.jsonl only
        t.rows = metrics_rows(run_dir, t.start_epoch)[0]


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
        "rows": t.rows,
    }


def _kept(epochs_done: int, run_dir: Path) -> str:
    """What is left of the run after a failure with ``epochs_done`` epochs on disk."""
    if epochs_done == 0:
        return f"no checkpoint was written yet in {run_dir} (the first epoch failed): run it again with other settings"
    return f"the checkpoint of epoch {epochs_done} in {run_dir} is kept"


def _epoch(t: _Training, spec, cfg, ctx: DistContext, epoch: int, run_dir: Path, progress):
    """Train epoch ``epoch`` (0-based), evaluate, update ``t.best``; return the epoch's row and whether the
    validation metric improved. ``progress``: an :class:`~.progress.EpochProgress` or None."""
    t0 = time.perf_counter()
    if hasattr(t.sampler, "set_epoch"):
        t.sampler.set_epoch(epoch)
    lr = t.optimizer.param_groups[0]["lr"]

    def on_nonfinite(what: str, batch: int) -> str:
        return (
            f"non-finite {what} at epoch {epoch + 1}, batch {batch} (lr {lr:.3g}); training stopped before the "
            f"update; {_kept(epoch, run_dir)}. Try a smaller lr, grad_clip or dt (--set key=value)."
        )

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
            f"{test_m[metric]}); {_kept(epoch, run_dir)}"
        )
    improved = is_better(valid_m[metric], t.best["valid"], spec.higher_is_better)
    if improved:
        t.best = {"epoch": epoch + 1, "valid": valid_m[metric], "test": test_m[metric]}
    row = epoch_row(epoch + 1, lr, metric, train_m, valid_m, test_m, t.best, time.perf_counter() - t0)
    row["weight_norms"] = recurrent_weight_norms(t.model.state_dict())  # ||w^l||_inf (the paper's Fig. 7)
    return row, improved


def _finish(run_dir, spec, cfg, status, t: _Training, main: bool, say, run_id: str | None) -> dict[str, Any]:
    """The run's result (written to result.json, with the run's id, when finished)."""
    epochs_done = t.rows[-1]["epoch"] if t.rows else t.start_epoch
    metric, best = spec.metric, t.best
    result = {
        "task": spec.name,
        "metric": metric,
        "higher_is_better": spec.higher_is_better,
        "seed": cfg["seed"],
        "status": status if epochs_done < cfg["epochs"] else "finished",
        "epochs_done": epochs_done,
        "epochs": cfg["epochs"],
        "best": best,
        "final": t.rows[-1] if t.rows else None,
    }
    if run_id is not None:  # (None: a run from before run ids)
        result[RUN_ID] = run_id
    if main and result["status"] == "finished":
        write_result(run_dir, result)
        say(
            f"{spec.name} seed {cfg['seed']}: best validation {metric} {fmt(best['valid'])} at epoch "
            f"{best['epoch']}; test {metric} at that epoch: {fmt(best['test'])}"
        )
    return result
