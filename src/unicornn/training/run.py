"""Opening a run directory: a fresh start, a resume from its checkpoint, or a finished run returned as is.

Files of a run directory (names below)::

    config.json      settings, task options and task spec of the run
    metrics.jsonl    one JSON line per finished epoch
    checkpoint.pt    written atomically after every epoch: resume continues from it exactly
    best.pt          model weights at the best validation epoch
    result.json      written when the run finishes: best epoch, its validation and test metric
    tensorboard/     TensorBoard events (if ``tensorboard`` is installed)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..registry import ConfigError
from .checkpoint import load_checkpoint
from .settings import RESUME_MUTABLE_KEYS, TRAIN_DEFAULTS

__all__ = ["CHECKPOINT", "BEST", "METRICS", "CONFIG", "RESULT", "RunExistsError", "OpenedRun", "open_run"]

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
METRICS = "metrics.jsonl"
CONFIG = "config.json"
RESULT = "result.json"


class RunExistsError(RuntimeError):
    """The run directory already holds a run and ``resume`` was not requested."""


@dataclass
class OpenedRun:
    """What :func:`open_run` found: ``result`` of a finished run, else ``checkpoint`` to resume (or None)."""

    result: dict[str, Any] | None = None
    checkpoint: dict[str, Any] | None = None


def open_run(run_dir: Path, record: dict[str, Any], resume: bool) -> OpenedRun:
    """Look at ``run_dir`` before training into it with ``record`` (task, settings, task options, ...).

    Raises:
        RunExistsError: the directory holds a run and ``resume`` is False.
        ConfigError: resuming with settings (other than :data:`RESUME_MUTABLE_KEYS`), task, task options or
            number of processes different from the checkpoint's.
    """
    if not ((run_dir / RESULT).exists() or (run_dir / CHECKPOINT).exists()):
        return OpenedRun()
    if not resume:
        raise RunExistsError(
            f"{run_dir} already holds a run; pass --resume to continue it or choose another --out"
        )
    if (run_dir / RESULT).exists():
        return OpenedRun(result=json.loads((run_dir / RESULT).read_text()))
    ckpt = load_checkpoint(run_dir / CHECKPOINT)
    old = ckpt["record"]
    cfg = record["settings"]
    diff = sorted(
        k for k in cfg if k not in RESUME_MUTABLE_KEYS and old["settings"].get(k, TRAIN_DEFAULTS[k]) != cfg[k]
    )
    if old["task"] != record["task"] or old["task_options"] != record["task_options"]:
        diff.append("task/task options")
    if old["world_size"] != record["world_size"]:
        diff.append(f"number of processes ({old['world_size']} -> {record['world_size']})")
    if diff:
        raise ConfigError(
            f"cannot resume {run_dir}: the checkpoint was made with different {', '.join(diff)}; "
            f"only {', '.join(sorted(RESUME_MUTABLE_KEYS))} may change on resume"
        )
    return OpenedRun(checkpoint=ckpt)
