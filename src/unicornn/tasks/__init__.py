"""Experiment tasks: the registry :data:`TASKS`, name -> task object (see :mod:`unicornn.tasks.base`).

Every task of the paper is registered, with its spec (metric, loss, readout): the ones whose data pipeline
is not implemented yet are :class:`~unicornn.tasks.base.PlannedTask` objects, whose ``build`` raises
:class:`~unicornn.tasks.base.TaskNotImplementedError`.
"""

from __future__ import annotations

from ..registry import Registry
from .adding import AddingTask
from .base import (
    PlannedTask,
    Splits,
    Task,
    TaskNotImplementedError,
    TaskSpec,
    is_implemented,
    resolve_options,
)
from .lorenz96 import Lorenz96Task
from .mnist import MnistTask

TASKS: Registry[Task] = Registry("task")


def _planned(name, description, paper_tables, input_size, output_size, loss, metric):
    higher = metric == "accuracy"
    spec = TaskSpec(
        name, description, input_size, output_size, "last", loss, metric, higher, {}, paper_tables
    )
    TASKS.register(name, PlannedTask(spec))


TASKS.register("adding", AddingTask())
TASKS.register("psmnist", MnistTask(permuted=True))
TASKS.register("smnist", MnistTask(permuted=False))
TASKS.register("lorenz96", Lorenz96Task())
# noise padded CIFAR-10: 32 x 32 x 3 images read row by row (96 values per step), padded with noise
_planned("noisy-cifar10", "noise padded CIFAR-10", "Tables 2, 6, 8", 96, 10, "cross_entropy", "accuracy")
_planned("eigenworms", "EigenWorms (UEA archive)", "Tables 3, 6", 6, 5, "cross_entropy", "accuracy")
_planned("bidmc-rr", "BIDMC vital signs: respiratory rate", "Tables 4, 6", 3, 1, "mse", "rmse")
_planned("bidmc-hr", "BIDMC vital signs: heart rate", "Tables 4, 6", 3, 1, "mse", "rmse")
# IMDB: one logit from 100-dimensional word embeddings (the embedding belongs to the task's model)
_planned("imdb", "IMDB sentiment analysis", "Tables 5, 6, 8", 100, 1, "binary_cross_entropy", "accuracy")


def get_task(name: str) -> Task:
    """Return the task registered as ``name``; unknown names raise UnknownNameError listing the valid ones."""
    return TASKS.get(name)


__all__ = [
    "TASKS",
    "PlannedTask",
    "Splits",
    "Task",
    "TaskNotImplementedError",
    "TaskSpec",
    "get_task",
    "is_implemented",
    "resolve_options",
]
