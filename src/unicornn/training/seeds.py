"""Several seeds of one task: run directories ``OUT/TASK/seed-K``, one :func:`train_run` each, and the
summary (per seed, and the mean +- std report when there are several)."""

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

__all__ = ["run_dir_for", "train_seeds", "summary_lines"]


def run_dir_for(out: str | Path, task: str, seed: int) -> Path:
    """The run directory of ``seed`` of ``task`` under ``out``: ``out/task/seed-<seed>``."""
    return Path(out) / task / f"seed-{seed}"


def train_seeds(task, settings: Mapping[str, Any], options: Mapping[str, Any], out: str | Path, runs: int,
                **train_kw) -> list[dict[str, Any]]:  # fmt: skip
    """Train seeds ``settings["seed"] + k`` for k < ``runs``, each into :func:`run_dir_for`; ``train_kw``
    go to :func:`~unicornn.training.trainer.train_run` (a ``requested`` seed is shifted like the settings').
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
        seed_dir = run_dir_for(out, task.spec.name, first + k)
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
        lines += [rep["text"] for rep in write_report(task_dir, plot=plot)]
    return lines
