"""A trained run's model, rebuilt from its checkpoint with its own task, settings and data splits: what
``unicornn eval`` evaluates and ``unicornn export`` exports."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import load_model_state, read_checkpoint
from .errors import RunFileError
from .run import check_beside_its_run

__all__ = ["LoadedRun", "load_run"]


@dataclass
class LoadedRun:
    """``path``: the checkpoint read; ``ckpt``: its contents; ``task``, ``settings`` (as the model was built),
    ``splits`` of the run; ``model`` with the checkpoint's weights."""

    path: Path
    ckpt: dict
    task: Any
    settings: dict
    splits: Any
    model: nn.Module


def load_run(
    checkpoint: str | os.PathLike, data_dir=None, device: str | torch.device = "cpu", **overrides: Any
) -> LoadedRun:
    """Rebuild the model of ``checkpoint`` (a run directory, meaning its ``best.pt``, or a ``.pt`` file).

    ``overrides``: settings that change how the model runs, not what it computes (e.g. ``memory``,
    ``backend``). Raises :class:`~unicornn.training.errors.RunFileError` for a missing or damaged checkpoint.
    """
    from ..task_models import build_model
    from ..tasks import TASKS
    from ..tasks.download import data_root
    from .splits import build_splits

    path = Path(checkpoint)
    if path.is_dir():
        path = path / "best.pt"
        if not path.exists():
            raise RunFileError(
                f"{path.parent} has no best.pt: the run has no finished model yet (best.pt is written after "
                "the first epoch's validation); train it first, or give another run directory"
            )
    if not path.exists():
        raise RunFileError(
            f"checkpoint {path} does not exist (give a run directory, best.pt or checkpoint.pt)"
        )
    ckpt = read_checkpoint(path, "model")
    check_beside_its_run(path, ckpt)  # a best.pt copied from another run would stand for that run's model
    record = ckpt["record"]
    task = TASKS.get(record["task"])
    settings = dict(record["settings"], **overrides)
    splits = build_splits(task, record["task_options"], data_root(data_dir), settings)
    model = build_model(task.spec, settings, splits.model_args).to(device)
    load_model_state(model, ckpt, path)
    return LoadedRun(path, ckpt, task, settings, splits, model)
