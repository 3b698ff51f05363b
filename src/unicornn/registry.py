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

from collections.abc import Iterator
from typing import Generic, TypeVar

from .validation import ConfigError

__all__ = ["UnknownNameError", "Registry"]

T = TypeVar("T")


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
