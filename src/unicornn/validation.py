"""Checks of user-given values: one clear error naming the value and what was expected.

:class:`ConfigError` (a ``ValueError``) is what the command line reports as a usage error (exit code 2);
:class:`ConfigTypeError` is also a ``TypeError``. :func:`check_int`, :func:`check_real` and
:func:`check_choice` are the checks every module uses for its settings, options and arguments.
"""

from __future__ import annotations

import math
import numbers

__all__ = ["ConfigError", "ConfigTypeError", "check_int", "check_real", "check_choice"]


class ConfigError(ValueError):
    """A setting, option or name given by the user is invalid (the message names it and what was expected)."""


class ConfigTypeError(ConfigError, TypeError):
    """A setting or option of the wrong type (also a ``TypeError``)."""


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
    names = getattr(registry_or_choices, "names", None)
    choices = names() if callable(names) else registry_or_choices
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}")
