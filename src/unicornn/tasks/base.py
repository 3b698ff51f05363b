"""Task interface shared by every experiment.

A task is an object with a ``spec`` (:class:`TaskSpec`) and a ``build(options, data_dir, seed)`` method that
returns the train/validation/test :class:`Splits`. Tasks are registered by name in :data:`unicornn.tasks.TASKS`.

Dataset items are ``(inputs, target)`` or ``(inputs, target, length)``:

* ``inputs``: one sequence, time first: float32 ``(N, input_size)`` (or whatever the task's model takes,
  e.g. token ids);
* ``target``: int64 scalar for ``loss="cross_entropy"``; float32 scalar or ``(1,)`` 0/1 for
  ``loss="binary_cross_entropy"``; float32 ``(output_size,)`` for ``readout="last"`` with ``loss="mse"``;
  float32 ``(N, output_size)`` for ``readout="all"``;
* ``length`` (optional): int64 scalar, the number of valid steps of a padded sequence. The trainer then calls
  ``model(inputs, lengths=lengths)`` with ``lengths`` of shape (B,).

A task may batch its own way (for example, bucketing sequences of similar length): :class:`Splits` then
carries a ``batch_sampler(dataset, batch_size, shuffle, seed, rank, world_size)`` factory returning an
iterable of index lists for process ``rank`` (``dataset`` may be a ``Subset`` of the split; ``batch_size`` is
per process; a ``set_epoch(epoch)`` method, if present, is called before each training epoch), and/or a
``collate_fn``; both are handed to the DataLoader.

A task whose spec follows its data (``uea``: channels, classes, classification or regression come from the
files it reads) sets its ``spec`` attribute in ``build``: callers read ``task.spec`` after ``build``.

A task whose model needs something built from its data (IMDB: the vocabulary's pretrained embedding
matrix) puts it in ``Splits.model_args``: keyword arguments added to the model factory's call,
``factory(spec, settings, **model_args)`` (see :mod:`unicornn.task_models`). They are rebuilt with the data
(never written to a run's config); the trained values are in the checkpoint.

The loss, metric and readout names are checked against their registries
(:data:`unicornn.metrics.LOSSES`, :data:`~unicornn.metrics.METRICS`, :data:`~unicornn.metrics.READOUTS`).
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from torch.utils.data import Dataset

from ..metrics import METRICS, READOUTS, check_pairing
from ..registry import UnknownNameError
from ..validation import ConfigError, ConfigTypeError, check_real
from ..validation import check_int as _check_int


@dataclass(frozen=True)
class TaskSpec:
    """Static description of a task.

    ``readout``: ``"last"`` (predict from the top layer's last state y_N) or ``"all"`` (at every step).
    ``loss`` and ``metric``: names in the loss and metric registries (the pair must fit: accuracy needs a
    classification loss); ``higher_is_better`` must agree with the metric.
    ``default_options``: every option the task accepts, with its default; user options may only override
    these (see :func:`resolve_options`).
    ``paper_tables``: where the paper reports the task ("-": not a paper experiment);
    ``default_preset``: the preset ``unicornn train TASK`` uses without ``--preset``.
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
    paper_tables: str = "-"
    default_preset: str = "paper"

    def __post_init__(self) -> None:
        if self.readout not in READOUTS:
            raise UnknownNameError("readout", self.readout, list(READOUTS))
        check_pairing(self.loss, self.metric)
        if self.higher_is_better != METRICS.get(self.metric).higher_is_better:
            raise ConfigError(
                f"TaskSpec {self.name!r}: higher_is_better={self.higher_is_better} contradicts metric "
                f"{self.metric!r}"
            )

    def resolve_options(self, options: Mapping[str, Any] | None = None) -> dict:
        """Return a copy of ``default_options`` updated by ``options``; unknown keys are a ConfigError."""
        return resolve_options(self, options)


#: The spec fields written to a run's config.json (the descriptive ones are left out).
RECORD_FIELDS = ("name", "description", "input_size", "output_size", "readout", "loss", "metric",
                 "higher_is_better")  # fmt: skip


@dataclass
class Splits:
    """The three datasets of a task, and optionally its own batching (see the module docstring)."""

    train: Dataset
    valid: Dataset
    test: Dataset
    batch_sampler: Callable[..., Any] | None = None
    collate_fn: Callable[[list], Any] | None = None
    model_args: Mapping[str, Any] = field(default_factory=dict)


@runtime_checkable
class Task(Protocol):
    """What every task provides."""

    spec: TaskSpec

    def build(self, options: dict, data_dir: pathlib.Path, seed: int) -> Splits: ...


def resolve_options(spec: TaskSpec, options: Mapping[str, Any] | None = None) -> dict:
    """Merge ``options`` into the task's defaults, rejecting keys the task does not know and values whose type
    differs from their default's (:func:`check_option_type`); the task's ``build`` checks ranges and choices."""
    merged = dict(spec.default_options)
    if options is None:
        return merged
    if not isinstance(options, Mapping):
        raise TypeError(f"options must be a mapping of option name to value, got {type(options).__name__}")
    unknown = sorted(set(options) - set(spec.default_options))
    if unknown:
        valid = ", ".join(sorted(spec.default_options)) or "(none)"
        raise ConfigError(
            f"unknown option(s) {', '.join(unknown)} for task {spec.name!r}; valid options: {valid}"
        )
    for key, value in options.items():
        merged[key] = check_option_type(key, value, spec.default_options[key])
    return merged


def check_option_type(name: str, value: Any, default: Any) -> Any:
    """Task option ``value`` checked against the type of its ``default``: a bool (true/false) for a bool, an
    int for an int, a finite number for a float (returned as a float), a string for a string; a
    :class:`~unicornn.validation.ConfigError` naming the option otherwise. Options whose default is of
    another type (or None) are the task's to check."""
    where = f"option {name!r}"
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigTypeError(f"{where} must be a bool (true or false), got {value!r}")
        return value
    if isinstance(default, int):
        return _check_int(where, value)
    if isinstance(default, float):
        return check_real(where, value)
    if isinstance(default, str) and not isinstance(value, str):
        raise ConfigTypeError(f"{where} must be a name, got {type(value).__name__} ({value!r})")
    return value


def check_int(name: str, value: Any, minimum: int) -> int:
    """Return task option ``value`` if it is an int >= ``minimum`` (bools are rejected), else raise."""
    return _check_int(f"option {name!r}", value, minimum)


def check_float(name: str, value: Any) -> float:
    """Return task option ``value`` as a finite float (ints accepted, bools rejected), else raise."""
    return check_real(f"option {name!r}", value)


def check_seed(seed: Any) -> int:
    """Return ``seed`` if it is a non-negative int, else raise."""
    return _check_int("seed", seed, 0)
