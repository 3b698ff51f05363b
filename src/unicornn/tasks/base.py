"""Task interface shared by every experiment.

A task is an object with a ``spec`` (:class:`TaskSpec`) and a ``build(options, data_dir, seed)`` method that
returns the train/validation/test :class:`Splits`. Dataset items are ``(inputs, target)`` pairs:

* ``inputs``: float32 tensor of shape ``(N, input_size)`` (one sequence, time first);
* ``target``: int64 scalar tensor for ``loss="cross_entropy"``; float32 ``(output_size,)`` for
  ``readout="last"`` with ``loss="mse"``; float32 ``(N, output_size)`` for ``readout="all"``.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from torch.utils.data import Dataset

READOUTS = ("last", "all")
LOSSES = ("cross_entropy", "mse")
METRICS = ("accuracy", "mse", "nrmse")


@dataclass(frozen=True)
class TaskSpec:
    """Static description of a task.

    ``readout``: ``"last"`` (predict from the top layer's last state y_N) or ``"all"`` (at every step).
    ``default_options``: every option the task accepts, with its default; user options may only override
    these (see :func:`resolve_options`).
    """

    name: str
    description: str
    input_size: int
    output_size: int
    readout: str
    loss: str
    metric: str
    higher_is_better: bool
    default_options: dict

    def __post_init__(self) -> None:
        if self.readout not in READOUTS:
            raise ValueError(f"TaskSpec.readout must be one of {READOUTS}, got {self.readout!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"TaskSpec.loss must be one of {LOSSES}, got {self.loss!r}")
        if self.metric not in METRICS:
            raise ValueError(f"TaskSpec.metric must be one of {METRICS}, got {self.metric!r}")

    def resolve_options(self, options: Mapping[str, Any] | None = None) -> dict:
        """Return a copy of ``default_options`` updated by ``options``; unknown keys are a ValueError."""
        return resolve_options(self, options)


@dataclass
class Splits:
    """The three datasets of a task."""

    train: Dataset
    valid: Dataset
    test: Dataset


@runtime_checkable
class Task(Protocol):
    """What every task provides."""

    spec: TaskSpec

    def build(self, options: dict, data_dir: pathlib.Path, seed: int) -> Splits: ...


def resolve_options(spec: TaskSpec, options: Mapping[str, Any] | None = None) -> dict:
    """Merge ``options`` into the task's defaults, rejecting keys the task does not know."""
    merged = dict(spec.default_options)
    if options is None:
        return merged
    if not isinstance(options, Mapping):
        raise TypeError(f"options must be a mapping of option name to value, got {type(options).__name__}")
    unknown = sorted(set(options) - set(spec.default_options))
    if unknown:
        valid = ", ".join(sorted(spec.default_options)) or "(none)"
        raise ValueError(
            f"unknown option(s) {', '.join(unknown)} for task {spec.name!r}; valid options: {valid}"
        )
    merged.update(options)
    return merged


def check_int(name: str, value: Any, minimum: int) -> int:
    """Return ``value`` if it is an int >= ``minimum`` (bools are rejected), else raise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"option {name!r} must be an int, got {type(value).__name__} ({value!r})")
    if value < minimum:
        raise ValueError(f"option {name!r} must be >= {minimum}, got {value}")
    return value


def check_float(name: str, value: Any) -> float:
    """Return ``value`` as a finite float (ints accepted, bools rejected), else raise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"option {name!r} must be a number, got {type(value).__name__} ({value!r})")
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"option {name!r} must be finite, got {value}")
    return value


def check_seed(seed: Any) -> int:
    """Return ``seed`` if it is a non-negative int, else raise."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__} ({seed!r})")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return seed
