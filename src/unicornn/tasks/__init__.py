"""Experiment tasks: the registry :data:`TASKS`, name -> task object (see :mod:`unicornn.tasks.base`).

Every task of the paper is registered, with its spec (metric, loss, readout) and its data pipeline.
"""

from __future__ import annotations

from ..registry import Registry
from .adding import AddingTask
from .base import (
    Splits,
    Task,
    TaskSpec,
    resolve_options,
)
from .bidmc import BidmcTask
from .cifar10 import NoisyCifarTask
from .eigenworms import EigenWormsTask
from .imdb import ImdbTask
from .lorenz96 import Lorenz96Task
from .mnist import MnistTask
from .uea import UeaTask

TASKS: Registry[Task] = Registry("task")

TASKS.register("adding", AddingTask())
TASKS.register("psmnist", MnistTask(permuted=True))
TASKS.register("smnist", MnistTask(permuted=False))
TASKS.register("noisy-cifar10", NoisyCifarTask())
TASKS.register("eigenworms", EigenWormsTask())
TASKS.register("bidmc-rr", BidmcTask("rr"))
TASKS.register("bidmc-hr", BidmcTask("hr"))
TASKS.register("imdb", ImdbTask())
TASKS.register("lorenz96", Lorenz96Task())
TASKS.register("uea", UeaTask())


def get_task(name: str) -> Task:
    """Return the task registered as ``name``; unknown names raise UnknownNameError listing the valid ones."""
    return TASKS.get(name)


__all__ = [
    "TASKS",
    "Splits",
    "Task",
    "TaskSpec",
    "get_task",
    "resolve_options",
]
