"""Named registries: one per kind of thing (tasks, presets, models, metrics, losses).

Each registry is the single source of the allowed names of its kind. Looking up a name that is not registered
raises :class:`UnknownNameError`, whose message lists the valid names::

    >>> LOSSES = Registry("loss")
    >>> @LOSSES.register("mse")
    ... def mse(output, target): ...
    >>> LOSSES.get("mae")
    Traceback (most recent call last):
    unicornn.registry.UnknownNameError: unknown loss 'mae'; valid losses: mse
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator
from typing import Generic, TypeVar

__all__ = [
    "ConfigError",
    "ConfigTypeError",
    "UnknownNameError",
    "Registry",
    "check_int",
    "check_real",
    "check_choice",
]

T = TypeVar("T")


class ConfigError(ValueError):
    """A setting, option or name given by the user is invalid (the message names it and what was expected)."""


class ConfigTypeError(ConfigError, TypeError):
    """A setting or option of the wrong type (also a ``TypeError``)."""


class UnknownNameError(ConfigError):
    """A name that is not in its registry; the message lists the valid names."""

    def __init__(self, kind: str, name: object, valid: list[str], where: str = "") -> None:
        plural = kind + ("es" if kind.endswith("s") else "s")
        where = f" {where}" if where else ""
        super().__init__(f"unknown {kind} {name!r}{where}; valid {plural}: {', '.join(valid) or '(none)'}")
        self.kind, self.name, self.valid = kind, name, valid


class Registry(Generic[T]):
    """A mapping ``name -> object`` of one kind, filled by :meth:`register`, read like a dict.

    Args:
        kind: what the names are ("task", "loss", ...), used in error messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None):
        """Register ``obj`` as ``name`` (returns ``obj``); without ``obj``, a decorator doing the same.

        Registering a name twice is an error (a silent replacement would hide a clash).
        """
        if not isinstance(name, str) or not name:
            raise TypeError(f"{self.kind} name must be a non-empty str, got {name!r}")

        def add(o: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = o
            return o

        return add if obj is None else add(obj)

    def get(self, name: str) -> T:
        """The object registered as ``name``; :class:`UnknownNameError` listing the valid names otherwise."""
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise UnknownNameError(self.kind, name, self.names()) from None

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        return list(self._items)

    def items(self):
        return self._items.items()

    def values(self):
        return self._items.values()

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._items)})"


def check_int(name: str, value: object, minimum: int | None = None, *, optional: bool = False) -> int | None:
    """``value`` as an int if it is an integer (bools rejected) >= ``minimum`` (or None when ``optional``).

    ``name`` is how the user knows the value ("setting 'epochs'", "option 'T'", "hidden_size").
    """
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        none = " or none" if optional else ""
        raise ConfigTypeError(f"{name} must be an int{none}, got {type(value).__name__} ({value!r})")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_real(
    name: str,
    value: object,
    *,
    low: float | None = None,
    low_open: bool = False,
    high: float | None = None,
    high_open: bool = False,
    optional: bool = False,
) -> float | None:
    """``value`` as a finite float (ints and other reals accepted, bools rejected); None when ``optional``.

    Bounds: ``low`` (excluded when ``low_open``) and ``high`` (excluded when ``high_open``). With both bounds
    the message names the interval, e.g. "dt must be in (0.0, 1.0], got 2.0".
    """
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        none = " or none" if optional else ""
        raise ConfigTypeError(f"{name} must be a number{none}, got {type(value).__name__} ({value!r})")
    v = float(value)
    if not math.isfinite(v):
        raise ConfigError(f"{name} must be finite, got {v}")
    below = low is not None and (v <= low if low_open else v < low)
    above = high is not None and (v >= high if high_open else v > high)
    if low is not None and high is not None:
        if below or above:
            interval = f"{'(' if low_open else '['}{float(low)}, {float(high)}{')' if high_open else ']'}"
            raise ConfigError(f"{name} must be in {interval}, got {value}")
    elif below:
        raise ConfigError(f"{name} must be {'>' if low_open else '>='} {low:g}, got {v:g}")
    elif above:
        raise ConfigError(f"{name} must be {'<' if high_open else '<='} {high:g}, got {v:g}")
    return v


def check_choice(name: str, value: object, registry_or_choices) -> None:
    """Raise :class:`ConfigError` unless ``value`` is one of the allowed choices (a Registry or a tuple)."""
    choices = (
        registry_or_choices.names() if isinstance(registry_or_choices, Registry) else registry_or_choices
    )
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}")
