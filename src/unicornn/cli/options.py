"""Options and checks shared by the commands: argparse types, ``--out``, ``--device``, ``--threads``,
``--data-dir``, and ``--set key=value`` parsing."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "CLIError",
    "add_data_dir",
    "add_device",
    "add_storage",
    "add_out",
    "add_threads",
    "comma_ints",
    "comma_names",
    "device_name",
    "nonnegative_float",
    "nonnegative_int",
    "out_dir",
    "parse_sets",
    "parse_value",
    "positive_int",
    "seed_int",
    "set_threads",
]


class CLIError(Exception):
    """A user error: printed as one line, exit code 2, no traceback."""


# --------------------------------------------------------------------------------------------------
# argparse types: a bad value is argparse's usage error (exit code 2) naming the option
# --------------------------------------------------------------------------------------------------


def _number(cast: Callable[[str], Any], what: str, minimum: float, maximum: float | None = None):
    def parse(text: str):
        within = f"in [{minimum}, {maximum}]" if maximum is not None else f">= {minimum}"
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what} {within}, got {text!r}") from None
        if not value >= minimum or (maximum is not None and value > maximum):  # also refuses nan
            raise argparse.ArgumentTypeError(f"must be {what} {within}, got {text}")
        return value

    return parse


#: argparse type: an int >= 1.
positive_int = _number(int, "an int", 1)
#: argparse type: an int >= 0.
nonnegative_int = _number(int, "an int", 0)
#: argparse type: a random seed, an int in [0, 2**63 - 1] (what torch's generators take).
seed_int = _number(int, "an int", 0, 2**63 - 1)
#: argparse type: a float >= 0.
nonnegative_float = _number(float, "a number", 0)


def comma_ints(text: str) -> list[int]:
    """argparse type: ``"1000,2000"`` -> [1000, 2000] (positive ints)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated ints >= 1, got {text!r}")
    return values


def device_name(text: str) -> str:
    """argparse type: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` on a machine that has it (returned as given;
    ``auto`` resolves later, per process under torchrun)."""
    if text in ("auto", "cpu"):
        return text
    from ..training.distributed import resolve_device
    from ..validation import ConfigError

    try:
        device = resolve_device(text)
        if device.type == "cuda" and device.index is not None:
            import torch

            if device.index >= torch.cuda.device_count():
                raise ConfigError(
                    f"--device {text}: this machine has {torch.cuda.device_count()} CUDA device(s)"
                )
    except ConfigError as err:
        msg = str(err).removeprefix(f"--device {text}: ").removeprefix("--device: ")
        raise argparse.ArgumentTypeError(msg) from None
    return text


def comma_names(text: str) -> list[str]:
    """argparse type: ``"a,b"`` -> ["a", "b"]."""
    return [v.strip() for v in text.split(",") if v.strip()]


# --------------------------------------------------------------------------------------------------
# options several commands take
# --------------------------------------------------------------------------------------------------


def out_dir(text: str) -> str:
    """argparse type of ``--out``: a path whose every component fits the file system's name limit (checked on
    the nearest existing directory, usually 255 bytes), so that a long name is refused before any work."""
    path = Path(text)
    base = next((p for p in (path, *path.parents) if _is_dir(p)), Path("."))
    try:
        limit = os.pathconf(base, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):  # no pathconf (Windows) or no such limit
        limit = 255
    for part in path.parts:
        size = len(os.fsencode(part))
        if size > limit:
            raise argparse.ArgumentTypeError(
                f"the path component {part[:40]!r}... is {size} bytes long; the file system allows {limit}"
            )
    return text


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:  # a name too long, say
        return False


def add_out(parser: argparse.ArgumentParser, default: str | None, help: str | None = None) -> None:
    """``--out DIR`` (``help`` defaults to "output directory (default ./DEFAULT)"), checked by :func:`out_dir`."""
    parser.add_argument("--out", type=out_dir, default=default, metavar="DIR",
                        help=help or f"output directory (default ./{default})")  # fmt: skip


def add_device(parser: argparse.ArgumentParser, default: str = "auto", help: str | None = None) -> None:
    """``--device`` (``auto``: CUDA if available, else CPU)."""
    parser.add_argument("--device", default=default, type=device_name,
                        help=help or f"auto, cpu, cuda or cuda:N (default {default})")  # fmt: skip


def add_threads(parser: argparse.ArgumentParser, help: str = "CPU threads for PyTorch") -> None:
    """``--threads N`` (an int >= 1; default: PyTorch's choice); apply it with :func:`set_threads`."""
    parser.add_argument("--threads", type=positive_int, metavar="N", help=help)


def add_data_dir(parser: argparse.ArgumentParser, help: str = "dataset cache (default as for train)") -> None:
    """``--data-dir DIR``: where datasets are cached."""
    parser.add_argument("--data-dir", metavar="DIR", help=help)


def add_storage(parser: argparse.ArgumentParser, default_storage: str, default_study: str) -> None:
    """``--storage URL|FILE``, ``--study NAME`` and ``--heartbeat S`` of the Optuna-backed commands."""
    parser.add_argument("--storage", metavar="URL|FILE",
                        help=f"Optuna storage the workers share: sqlite:///PATH, postgresql://..., or a journal "
                        f"file path (default sqlite:///{default_storage})")  # fmt: skip
    parser.add_argument("--study", metavar="NAME", help=f"study name (default {default_study})")
    parser.add_argument("--heartbeat", type=positive_int, default=60, metavar="S",
                        help="seconds between a database storage's heartbeats; a trial silent for twice as long "
                        "is taken as dead, failed and queued again (default 60)")  # fmt: skip


def set_threads(threads: int | None) -> None:
    """``torch.set_num_threads(threads)`` unless None."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------------------
# --set key=value
# --------------------------------------------------------------------------------------------------


def scalar(text: str) -> Any:
    """``"none"`` -> None, ``"true"``/``"false"`` -> bool, an int, a float, else the stripped string."""
    low = text.strip().lower()
    if low in ("none", "null"):
        return None
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text.strip()


def parse_value(text: str) -> Any:
    """``"none"`` -> None, ``"true"``/``"false"`` -> bool, ints, floats, ``"a,b"`` -> list, else the string."""
    if "," in text:
        return [scalar(p) for p in text.split(",") if p.strip()]
    return scalar(text)


def coerce(value: Any, default: Any) -> Any:
    """Match the type of a default where that is lossless (an int given for a float setting)."""
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def parse_sets(items: Sequence[str], train_keys: dict, option_keys: dict) -> tuple[dict, dict]:
    """Split ``--set key=value`` items into trainer settings and task options; unknown keys are errors."""
    settings: dict[str, Any] = {}
    options: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise CLIError(f"--set expects key=value, got {item!r}")
        key, text = (s.strip() for s in item.split("=", 1))
        if key.startswith("task."):  # explicit task option (needed when it shares a setting's name)
            opt = key[len("task.") :]
            if opt not in option_keys:
                raise CLIError(
                    f"unknown task option {opt!r}; valid task options: {', '.join(option_keys) or '(none)'}"
                )
            options[opt] = coerce(parse_value(text), option_keys[opt])
        elif key in train_keys:
            settings[key] = coerce(parse_value(text), train_keys[key])
        elif key in option_keys:
            options[key] = coerce(parse_value(text), option_keys[key])
        else:
            raise CLIError(
                f"unknown --set key {key!r}; valid keys: settings {', '.join(train_keys)}; "
                f"task options {', '.join(option_keys) or '(none)'}"
            )
    return settings, options
