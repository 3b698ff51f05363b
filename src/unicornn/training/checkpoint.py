"""Atomic file writes and the training checkpoint (model, optimiser, scheduler, RNG states, epoch, best)."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._files import atomic_write
from .errors import RunFileError
from .faults import fault_point

__all__ = [
    "atomic_save",
    "atomic_write_text",
    "load_checkpoint",
    "read_checkpoint",
    "load_model_state",
    "CHECKPOINT_KEYS",
    "capture_rng_state",
    "restore_rng_state",
    "read_jsonl",
    "append_jsonl",
    "rewrite_jsonl",
]


def _write_in_halves(data: bytes, name: str):
    """A writer of ``data`` in two parts, passing :func:`~.faults.fault_point` ``name`` in between."""

    def write(f) -> None:
        half = len(data) // 2
        f.write(data[:half])
        f.flush()
        fault_point(name)
        f.write(data[half:])

    return write


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same directory, then ``os.replace``: never a partial file."""
    name = Path(path).name

    def write(f) -> None:
        torch.save(obj, f)
        fault_point(name)  # the temporary file is written, not yet in place

    atomic_write(path, write)


def atomic_write_text(text: str, path: str | os.PathLike) -> None:
    """Write ``text`` (UTF-8) atomically."""
    atomic_write(path, _write_in_halves(text.encode("utf-8"), Path(path).name))


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint onto the CPU (it holds NumPy RNG state and plain Python objects)."""
    return torch.load(Path(path), map_location="cpu", weights_only=False)


#: What each kind of checkpoint file holds: checkpoint.pt the whole training state, best.pt the best model.
CHECKPOINT_KEYS = {
    "checkpoint": ("model", "optimizer", "scheduler", "scaler", "rng", "epoch", "best", "record"),
    "model": ("model", "record", "epoch"),
}


def read_checkpoint(path: str | os.PathLike, kind: str = "checkpoint") -> dict:
    """:func:`load_checkpoint`, raising :class:`~.errors.RunFileError` (one line, naming the file) when the
    file is missing, unreadable, damaged (truncated, empty, overwritten) or not a unicornn checkpoint.

    ``kind``: ``"checkpoint"`` (a run's checkpoint.pt: everything to resume) or ``"model"`` (best.pt or
    checkpoint.pt: enough to evaluate).
    """
    path = Path(path)
    try:
        ckpt = load_checkpoint(path)
    except FileNotFoundError:
        raise RunFileError(f"{path} does not exist") from None
    except Exception as err:  # whatever torch.load makes of a damaged file: the file's fault, not a bug
        raise RunFileError(f"{path} is damaged or not a unicornn checkpoint ({_short(err)})") from None
    missing = [k for k in CHECKPOINT_KEYS[kind] if not isinstance(ckpt, dict) or k not in ckpt]
    record = ckpt.get("record") if isinstance(ckpt, dict) else None
    if not missing and not (isinstance(record, dict) and {"task", "settings", "task_options"} <= set(record)):
        missing = ["its run's record"]
    if missing:
        raise RunFileError(f"{path} is not a unicornn checkpoint (it lacks {', '.join(missing)})")
    return ckpt


def load_model_state(model: torch.nn.Module, ckpt: dict, path: str | os.PathLike) -> None:
    """Load ``ckpt["model"]`` into ``model``; :class:`~.errors.RunFileError` when the weights do not fit."""
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, TypeError, ValueError, AttributeError) as err:
        raise RunFileError(f"{path} is damaged: its weights do not fit its model ({_short(err)})") from None


def _short(err: BaseException) -> str:
    """The first line of an error, at most 160 characters."""
    text = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return f"{type(err).__name__}: {text[:160]}"


def capture_rng_state(loader_generator: torch.Generator | None = None) -> dict:
    """RNG states of Python, NumPy, torch (CPU and every CUDA device) and the DataLoader generator."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "loader": loader_generator.get_state() if loader_generator is not None else None,
    }
    return state


def restore_rng_state(state: dict, loader_generator: torch.Generator | None = None) -> None:
    """Inverse of :func:`capture_rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if loader_generator is not None and state.get("loader") is not None:
        loader_generator.set_state(state["loader"])


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """All complete JSON lines of ``path`` ([] if missing); a torn last line is ignored."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


def append_jsonl(row: dict, path: str | os.PathLike) -> None:
    """Append one JSON line and flush it to disk."""
    with open(path, "ab") as f:
        _write_in_halves((json.dumps(row) + "\n").encode("utf-8"), Path(path).name)(f)
        f.flush()
        os.fsync(f.fileno())


def rewrite_jsonl(rows: Iterable[dict], path: str | os.PathLike) -> None:
    """Replace ``path`` atomically with ``rows``."""
    atomic_write_text("".join(json.dumps(r) + "\n" for r in rows), path)
