"""The search space of ``unicornn tune``: ranges, the default space around a preset, ``--space`` parsing.

The default space (:func:`default_space`) is centred on the preset's values, so the paper's Table 6 values
lie inside it:

* ``dt``: preset / 10 to preset x 10 (at most 1), log scale; where the preset gives the first layer its own
  dt (IMDB, EigenWorms), ``dt`` is the other layers' and the first layer's stays;
* ``alpha``: preset / 10 to preset x 10, log scale (0 to 10, linear, where the preset has alpha = 0);
* ``lr``: preset / 10 to preset x 10, log scale;
* ``dropout``: 0 to max(0.5, preset + 0.2), linear;
* ``hidden_size``: max(8, preset / 4) to 2 x preset, log scale, integers.

``--space KEY=LOW:HIGH[:log]`` (:func:`parse_space`) sets or adds a range; a key fixed with ``--set`` leaves
the space.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..validation import ConfigError

__all__ = ["Range", "default_space", "space_table", "parse_space", "apply_params", "check_space"]


@dataclass(frozen=True)
class Range:
    """One dimension of the search space: ``low`` to ``high``, on a log scale or not, integers or not."""

    low: float
    high: float
    log: bool = False
    integer: bool = False

    def text(self) -> str:
        """As ``--space`` takes it: ``LOW:HIGH`` or ``LOW:HIGH:log``."""
        return f"{self.low:g}:{self.high:g}" + (":log" if self.log else "")

    def suggest(self, trial, name: str):
        if self.integer:
            return trial.suggest_int(name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(name, self.low, self.high, log=self.log)


def _g(x: float) -> float:
    return float(f"{x:.3g}")


def _last(v: Any) -> Any:
    return v[-1] if isinstance(v, (list, tuple)) else v


def default_space(settings: Mapping[str, Any]) -> dict[str, Range]:
    """The default search space around a preset's ``settings`` (see the module docstring)."""
    dt, alpha, lr, dropout, hidden = (
        _last(settings[k]) for k in ("dt", "alpha", "lr", "dropout", "hidden_size")
    )
    return {
        "dt": Range(_g(dt / 10), min(1.0, _g(dt * 10)), log=True),
        "alpha": Range(_g(alpha / 10), _g(alpha * 10), log=True) if alpha > 0 else Range(0.0, 10.0),
        "lr": Range(_g(lr / 10), _g(lr * 10), log=True),
        "dropout": Range(0.0, min(0.9, max(0.5, round(dropout + 0.2, 2)))),
        "hidden_size": Range(max(8, hidden // 4), 2 * hidden, log=True, integer=True),
    }


def space_table() -> str:
    """Markdown table of every task's default space (around its default preset), as in the docs page."""
    from ..tasks import TASKS
    from ..training.presets import get_preset

    keys = list(default_space({"dt": 0.1, "alpha": 1.0, "lr": 1.0, "dropout": 0.0, "hidden_size": 8}))
    lines = ["| task (preset) | " + " | ".join(f"`{k}`" for k in keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name in TASKS.names():
        preset = get_preset(name, TASKS.get(name).spec.default_preset)
        space = default_space(preset.config())
        lines.append(f"| {name} ({preset.name}) | " + " | ".join(space[k].text() for k in keys) + " |")
    return "\n".join(lines) + "\n"


def parse_space(items: Sequence[str], train_keys: Mapping[str, Any]) -> dict[str, Range]:
    """``KEY=LOW:HIGH[:log]`` items -> ranges; integers for settings whose default is an int."""
    space = {}
    for item in items:
        key, sep, text = (s.strip() for s in item.partition("="))
        if not sep:
            raise ConfigError(f"--space expects KEY=LOW:HIGH[:log], got {item!r}")
        default = train_keys.get(key)
        if key not in train_keys or isinstance(default, (bool, str)):
            numeric = [
                k for k, v in train_keys.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            ]
            raise ConfigError(
                f"--space key {key!r} is not a numeric setting; valid keys: {', '.join(numeric)}"
            )
        parts = text.split(":")
        try:
            if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2].strip().lower() != "log"):
                raise ValueError
            low, high = float(parts[0]), float(parts[1])
        except ValueError:
            raise ConfigError(f"--space {key}: expected LOW:HIGH or LOW:HIGH:log, got {text!r}") from None
        log = len(parts) == 3
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ConfigError(f"--space {key}: expected finite LOW < HIGH, got {text!r}")
        if log and low <= 0:
            raise ConfigError(f"--space {key}: a log range needs LOW > 0, got {text!r}")
        integer = isinstance(default, int)
        if integer and not (low.is_integer() and high.is_integer()):
            raise ConfigError(f"--space {key}: an integer setting needs integer bounds, got {text!r}")
        space[key] = Range(low, high, log, integer)
    return space


def apply_params(settings: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` with a trial's ``params``; a per-layer ``dt`` keeps its first layer's value."""
    out = dict(settings)
    for k, v in params.items():
        base = out.get(k)
        out[k] = (base[0], *[v] * (len(base) - 1)) if k == "dt" and isinstance(base, (list, tuple)) else v
    return out


def check_space(space: Mapping[str, Range], settings: Mapping[str, Any]) -> None:
    """Every bound of ``space`` must be a valid setting (the message names the key and the bound)."""
    from ..ops.scan import check_alpha, check_dt
    from ..training.settings import validate_config

    model_checks = {"dt": check_dt, "alpha": check_alpha}  # checked by the model when it is built
    for key, r in space.items():
        for bound in (r.low, r.high):
            value = int(bound) if r.integer else bound
            try:
                validate_config(apply_params(settings, {key: value}))
                if key in model_checks:
                    model_checks[key](value)
            except ConfigError as err:
                raise ConfigError(
                    f"--space {key}={r.text()}: the bound {value:g} is not valid: {err}"
                ) from None
