"""Several seeds of one task: run directories ``OUT/GROUP/seed-K``, one :func:`train_run` each, and the
summary (per seed, and the mean +- std report when there are several).

``GROUP`` is the task's name for runs of the preset's model (UnICORNN) and ``TASK-MODEL`` for another model
(:func:`run_group`), so that a baseline trained after the quick start (``--set model=lstm``) gets its own
directory."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..validation import ConfigError
from .report import write_report
from .run import Requested
from .settings import SEED_MAX, validate_config
from .trainer import train_run

__all__ = ["run_dir_for", "run_group", "train_seeds", "summary_lines"]


def run_dir_for(out: str | Path, task: str, seed: int) -> Path:
    """The run directory of ``seed`` of ``task`` under ``out``: ``out/task/seed-<seed>``."""
    return Path(out) / task / f"seed-{seed}"


def run_group(task: str, model: str, preset_model: str = "unicornn") -> str:
    """The directory name of ``task``'s runs of ``model``: ``task`` for the preset's own model
    ``preset_model`` (UnICORNN), ``task-MODEL`` for another (``adding-lstm``)."""
    return task if model == preset_model else f"{task}-{model}"


def train_seeds(task, settings: Mapping[str, Any], options: Mapping[str, Any], out: str | Path, runs: int,
                group: str | None = None, **train_kw) -> list[dict[str, Any]]:  # fmt: skip
    """Train seeds ``settings["seed"] + k`` for k < ``runs``, each into :func:`run_dir_for` (``group``:
    the directory under ``out``, default the task's name); ``train_kw`` go to
    :func:`~unicornn.training.trainer.train_run` (a ``requested`` seed is shifted like the settings').
    Returns the results in seed order."""
    first = validate_config(settings)["seed"]
    if first + runs - 1 > SEED_MAX:
        raise ConfigError(f"setting 'seed' ({first}) plus {runs} runs goes past the largest seed {SEED_MAX}")
    requested: Requested | None = train_kw.pop("requested", None)
    results = []
    for k in range(runs):
        req = requested
        if req is not None and "seed" in req.settings:
            req = dataclasses.replace(req, settings=dict(req.settings, seed=first + k))
        seed_dir = run_dir_for(out, group or task.spec.name, first + k)
        results.append(
            train_run(task, dict(settings, seed=first + k), options, seed_dir, requested=req, **train_kw)
        )
    return results


def summary_lines(results: list[dict[str, Any]], task_dir: Path, plot: bool = True) -> list[str]:
    """One line per seed, then (for several seeds) the report over seeds, written next to the runs."""
    metric = results[0]["metric"]
    lines = [
        f"seed {r['seed']}: best validation {metric} {r['best']['valid']:.6g} at epoch {r['best']['epoch']}, "
        f"test {metric} {r['best']['test']:.6g}"
        for r in results
    ]
    if len(results) > 1:
        for rep in write_report(task_dir, plot=plot):
            lines += [rep["text"], "written: " + ", ".join(map(str, rep["files"]))]
    return lines
