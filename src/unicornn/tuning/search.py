"""``unicornn tune``'s search (:func:`run_tune`): a seeded TPE search on Optuna, every trial a normal run
directory ``OUT/STUDY/trial-NNNN`` (a retry of a dead worker's trial resumes the directory of the trial it
retries), its validation metric (the best so far) reported each epoch to the pruner (:func:`make_pruner`).
The study runs on :func:`~unicornn.tuning.workers.optimize`, so any number of processes share it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..validation import ConfigError
from .results import tune_summary
from .space import Range, apply_params, check_space
from .study import open_storage, open_study, require_optuna
from .workers import Outcome, optimize

__all__ = ["PRUNERS", "make_pruner", "run_tune"]

#: Pruners of ``--pruner``.
PRUNERS = ("median", "hyperband", "none")


def make_pruner(name: str, epochs: int, n_startup_trials: int = 5):
    """``median``: Optuna's MedianPruner (a trial stops when its best-so-far validation metric is worse than
    the median of earlier trials at the same epoch; none before ``n_startup_trials`` trials have finished,
    nor in the first epoch: its validation metric is too noisy to judge); ``hyperband``: HyperbandPruner over 1..``epochs`` epochs; ``none``."""
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=n_startup_trials, n_warmup_steps=2)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 1), reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"--pruner must be one of {', '.join(PRUNERS)}, got {name!r}")


def run_tune(task, settings: Mapping[str, Any], options: Mapping[str, Any], out: str | Path, n_trials: int,
             space: Mapping[str, Range], *, study: str | None = None, storage: str | None = None, seed: int = 0,
             pruner: str = "median", n_startup_trials: int = 5, timeout: float | None = None,
             heartbeat: int = 60, log=print, preset: str | None = None, **train_kw) -> tuple[dict[str, Any], Any]:  # fmt: skip
    """Run (or join) the study until it holds ``n_trials`` trials; return :func:`tune_summary` and the Optuna
    study (``(None, None)`` in the non-main processes under torchrun). ``train_kw`` go to
    :func:`~unicornn.training.trainer.train_run`."""
    from ..metrics import is_better
    from ..training.epoch import NonFiniteError
    from ..training.trainer import train_run

    if not space:
        raise ConfigError("the search space is empty (every key fixed by --set): give a --space KEY=LOW:HIGH")
    check_space(space, settings)
    out, ctx, spec = Path(out), train_kw.get("ctx"), task.spec
    name = study or spec.name
    main = ctx is None or ctx.is_main
    opt = store = None
    if main:
        optuna = require_optuna()
        store = open_storage(storage, out, heartbeat)
        sampler = optuna.samplers.TPESampler(seed=seed)
        direction = "maximize" if spec.higher_is_better else "minimize"
        attrs = {"task": spec.name, "kind": "tune", "metric": spec.metric}
        opt = open_study(
            store, name, attrs, direction, sampler, make_pruner(pruner, settings["epochs"], n_startup_trials)
        )
    folder = out / name

    def train(params, run_id, report) -> Outcome:
        run_dir = folder / f"trial-{run_id:04d}"
        log(f"trial {run_id} in {run_dir}: " + ", ".join(f"{k}={v:.4g}" for k, v in params.items()))
        best: list[float | None] = [None]
        pruned = [False]

        def on_epoch_end(epoch: int, row: dict) -> bool:
            value = row[f"valid_{spec.metric}"]
            if is_better(value, best[0], spec.higher_is_better):
                best[0] = value
            pruned[0] = report(epoch, best[0])
            return pruned[0]

        attrs = {"run_dir": str(run_dir)}
        try:
            r = train_run(task, apply_params(settings, params), options, run_dir, resume=True, preset=preset,
                          log=log, on_epoch_end=on_epoch_end, **train_kw)  # fmt: skip
        except NonFiniteError as err:
            log(f"trial {run_id} diverged: {err}")
            return Outcome("diverged", attrs={**attrs, "error": str(err)})
        attrs.update(valid=r["best"]["valid"], test=r["best"]["test"], best_epoch=r["best"]["epoch"],
                     epochs_done=r["epochs_done"])  # fmt: skip
        if pruned[0] and r["status"] != "finished":
            log(
                f"trial {run_id} pruned after epoch {r['epochs_done']} (validation {spec.metric} {best[0]:.4g})"
            )
            return Outcome("pruned", attrs=attrs)
        if r["status"] != "finished":
            return Outcome("unfinished", attrs=attrs)
        return Outcome("complete", r["best"]["valid"], attrs)

    def suggest(trial) -> dict[str, Any]:
        return {k: r.suggest(trial, k) for k, r in space.items()}

    def sampler_for(number: int):  # TPE seeded per trial: the same study whichever worker draws a trial
        return optuna.samplers.TPESampler(seed=(seed * 1_000_003 + number) % 2**32)

    ran = optimize(opt, store, n_trials, suggest, train, lock_dir=folder / ".optuna", ctx=ctx, log=log,
                   timeout=timeout, sampler_for=sampler_for)  # fmt: skip
    if not main:
        return None, None
    log(f"study {name} in {store.text}: {ran} trial(s) run by this process")
    return tune_summary(opt, settings, spec.metric, n_trials, store.text, options), opt
