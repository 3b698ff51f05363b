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

__all__ = [
    "atomic_save",
    "atomic_write_text",
    "load_checkpoint",
    "capture_rng_state",
    "restore_rng_state",
    "read_jsonl",
    "append_jsonl",
    "rewrite_jsonl",
]


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same directory, then ``os.replace``: never a partial file."""
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(text: str, path: str | os.PathLike) -> None:
    """Write ``text`` (UTF-8) atomically."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint onto the CPU (it holds NumPy RNG state and plain Python objects)."""
    return torch.load(Path(path), map_location="cpu", weights_only=False)


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
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def rewrite_jsonl(rows: Iterable[dict], path: str | os.PathLike) -> None:
    """Replace ``path`` atomically with ``rows``."""
    atomic_write_text("".join(json.dumps(r) + "\n" for r in rows), path)
