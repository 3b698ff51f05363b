"""Experiment tasks: a registry name -> task object (see :mod:`unicornn.tasks.base` for the interface)."""

from __future__ import annotations

from .adding import AddingTask
from .base import Splits, Task, TaskSpec, resolve_options
from .lorenz96 import Lorenz96Task
from .mnist import MnistTask

TASKS: dict[str, Task] = {
    "adding": AddingTask(),
    "psmnist": MnistTask(permuted=True),
    "smnist": MnistTask(permuted=False),
    "lorenz96": Lorenz96Task(),
}


def get_task(name: str) -> Task:
    """Return the task registered as ``name``; unknown names raise ValueError listing the valid ones."""
    try:
        return TASKS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(sorted(TASKS))}") from None


__all__ = ["TASKS", "Splits", "Task", "TaskSpec", "get_task", "resolve_options"]
