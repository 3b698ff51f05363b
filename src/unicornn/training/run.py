"""Opening a run directory: its lock, then a fresh start, a resume from its checkpoint with the run's own
settings, or a finished run returned as is.

Files of a run directory (names below)::

    config.json      settings, task options, task spec and preset of the run, and the changes made on resume
    metrics.jsonl    one JSON line per finished epoch
    checkpoint.pt    written atomically after every epoch: resume continues from it exactly; the single
                     source of truth of an unfinished run (config.json and metrics.jsonl are rewritten from
                     it on resume)
    best.pt          model weights at the best validation epoch
    result.json      written when the run finishes: best epoch, its validation and test metric
    tensorboard/     TensorBoard events (if ``tensorboard`` is installed)
    .lock            held (``fcntl.flock``) by the one process writing the directory
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..validation import ConfigError
from .checkpoint import read_checkpoint
from .errors import RunExistsError, RunFileError, RunLockedError, os_error_text
from .settings import RESUME_MUTABLE_KEYS, validate_config

__all__ = [
    "CHECKPOINT",
    "BEST",
    "METRICS_FILE",
    "CONFIG",
    "RESULT",
    "LOCK",
    "RunExistsError",
    "Requested",
    "OpenedRun",
    "open_run",
    "run_lock",
    "read_json",
]

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
METRICS_FILE = "metrics.jsonl"  # (the metric registry is unicornn.metrics.METRICS)
CONFIG = "config.json"
RESULT = "result.json"
LOCK = ".lock"


@dataclass(frozen=True)
class Requested:
    """What the caller named explicitly (the CLI's ``--preset`` and ``--set``).

    A fresh run starts from the full settings. A resumed run keeps its own settings, task options and preset
    and only compares these with them: a setting of :data:`~.settings.RESUME_MUTABLE_KEYS` that differs is
    changed (e.g. ``epochs``, to extend a finished run) and the change recorded in config.json; any other
    difference is refused.
    """

    settings: Mapping[str, Any] = field(default_factory=dict)
    task_options: Mapping[str, Any] = field(default_factory=dict)
    preset: str | None = None


@dataclass
class OpenedRun:
    """What :func:`open_run` found.

    ``record``: the run's record (settings, task options, ...) to train with; ``result``: set when the run is
    finished; ``checkpoint``: the state to resume from (None: start from scratch); ``changes``: settings changed
    on this resume (name -> [old, new]); ``notes``: lines to log (damaged files that will be rewritten);
    ``restart``: a resumed run that had not finished an epoch, started again from scratch with its own record.
    """

    record: dict[str, Any]
    result: dict[str, Any] | None = None
    checkpoint: dict[str, Any] | None = None
    changes: dict[str, list] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    restart: bool = False


# --------------------------------------------------------------------------------------------------
# the lock
# --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir/.lock`` (creating the directory) while the block writes the run directory.

    An exclusive ``fcntl.flock``: a second process asking for it gets :class:`RunLockedError` at once. The
    kernel releases it when the holder ends, however it ends (``kill -9`` and crashes included), so it is never
    left stuck. Works on local file systems and on NFS (Linux emulates it there with POSIX locks). Where
    ``fcntl`` does not exist (Windows) there is no lock. The file holds the holder's pid, host and start time,
    for the message of the one refused. If the block fails before writing anything into a directory that this
    call created (data missing, say), the directory is removed again, with every parent this call created.

    Raises:
        RunLockedError: another process holds the lock.
        RunFileError: the directory or the lock file cannot be created (read-only file system, permissions,
            a path through a regular file, ...).
    """
    try:
        import fcntl
    except ImportError:  # no flock on this platform
        fcntl = None
    path = run_dir / LOCK
    created = [d for d in (run_dir, *run_dir.parents) if not d.exists()]  # innermost first
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise RunFileError(f"cannot create the run directory {run_dir}: {os_error_text(err)}") from None
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
                raise RunLockedError(
                    f"{run_dir} is being written by {holder}; two runs cannot share a run directory: "
                    f"wait for that one to end (or stop it), or choose another --out"
                ) from None
            except OSError as err:
                raise RunFileError(
                    f"cannot lock {path}: {os_error_text(err)} (a file system without locks?)"
                ) from None
        now = datetime.datetime.now().isoformat(timespec="seconds")
        with contextlib.suppress(OSError):  # the holder's description is informative only
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {now}\n".encode(), 0)
        yield
    except BaseException:
        if created and [p.name for p in run_dir.iterdir()] == [LOCK]:  # nothing written: leave no trace
            with contextlib.suppress(OSError):
                path.unlink()
                for d in created:
                    d.rmdir()
        raise
    finally:
        os.close(fd)  # releases the lock


# --------------------------------------------------------------------------------------------------
# reading a run directory
# --------------------------------------------------------------------------------------------------


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; :class:`RunFileError` (naming the file) if it is unreadable or damaged."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise RunFileError(f"cannot read {path}: {os_error_text(err)}") from None
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        raise RunFileError(f"{path} is damaged (not JSON: {err})") from None
    if not isinstance(value, dict):
        raise RunFileError(f"{path} is damaged (a JSON {type(value).__name__}, not an object)")
    return value


def _read_result(run_dir: Path, notes: list[str]) -> dict[str, Any] | None:
    """result.json, or None (with a note) when it is damaged: the run is then finished again from its
    checkpoint, which rewrites it."""
    try:
        result = read_json(run_dir / RESULT)
        int(result["epochs_done"]), result["best"]["epoch"]  # noqa: B018
        return result
    except RunFileError as err:
        notes.append(f"{err}; it is written again from {CHECKPOINT}")
    except (KeyError, TypeError, ValueError) as err:
        notes.append(f"{run_dir / RESULT} is damaged ({err!r}); it is written again from {CHECKPOINT}")
    return None


def open_run(run_dir: Path, record: dict[str, Any], resume: bool, requested: Requested) -> OpenedRun:
    """Look at ``run_dir`` before training into it with ``record`` (task, settings, task options, ...).

    The caller holds the directory's lock (:func:`run_lock`). Without ``resume`` only an empty directory (or one
    where no epoch has finished) is used. With ``resume`` the run continues with its own record;
    ``requested`` is checked against it (see :class:`Requested`).

    Raises:
        RunExistsError: the directory holds a run and ``resume`` is False.
        RunFileError: checkpoint.pt is damaged (or missing where it is needed; or, for a finished run
            without one, config.json is damaged).
        ConfigError: ``requested`` differs from the run's own settings where they cannot change.
    """
    has = {name: (run_dir / name).exists() for name in (CHECKPOINT, RESULT, CONFIG)}
    if not (has[CHECKPOINT] or has[RESULT]):
        if resume and has[CONFIG]:  # started, but no epoch finished: start again with its own settings
            try:
                old = read_json(run_dir / CONFIG)
            except RunFileError as err:  # nothing trained is lost: start from the settings given
                return OpenedRun(record=record, notes=[f"{err}; no epoch had finished: starting afresh"])
            rec, changes = _resumed_record(run_dir, old, record, requested, None)
            return OpenedRun(record=rec, changes=changes, restart=True)
        return OpenedRun(record=record)
    if not resume:
        raise RunExistsError(
            f"{run_dir} already holds a run; pass --resume to continue it or choose another --out"
        )
    notes: list[str] = []
    try:
        ckpt = read_checkpoint(run_dir / CHECKPOINT) if has[CHECKPOINT] else None
    except RunFileError as err:
        raise RunFileError(
            f"{err}; the run cannot continue from it (nothing was changed; to train this seed again, move "
            f"{run_dir} away)"
        ) from None
    old = ckpt["record"] if ckpt is not None else read_json(run_dir / CONFIG)
    done = ckpt["epoch"] if ckpt is not None else None
    rec, changes = _resumed_record(run_dir, old, record, requested, done)
    result = _read_result(run_dir, notes) if has[RESULT] else None
    if result is not None and result["epochs_done"] >= rec["settings"]["epochs"]:
        return OpenedRun(record=rec, result=result)
    if ckpt is None:
        raise RunFileError(
            f"{run_dir / CHECKPOINT} is missing: the run cannot be trained further (to train this seed "
            f"again, remove {run_dir} or choose another --out)"
        )
    return OpenedRun(record=rec, checkpoint=ckpt, changes=changes, notes=notes)


def _resumed_record(run_dir: Path, old: dict[str, Any], record: dict[str, Any], requested: Requested,
                    done: int | None) -> tuple[dict[str, Any], dict[str, list]]:  # fmt: skip
    """The run's own record ``old`` with the requested changes applied, and those changes.

    ``record``: what a fresh run would record (its task and number of processes must match); ``done``: the
    epochs the checkpoint has done (None: no checkpoint).
    """
    try:
        task, saved, options = old["task"], validate_config(old["settings"]), dict(old["task_options"])
    except (KeyError, TypeError, ValueError) as err:
        raise RunFileError(f"the record of the run in {run_dir} is damaged ({err!r})") from None
    refuse = f"cannot resume {run_dir}"
    if task != record["task"]:
        raise ConfigError(f"{refuse}: it holds a run of task {task!r}, not {record['task']!r}")
    if old.get("world_size", 1) != record["world_size"]:
        raise ConfigError(
            f"{refuse}: the checkpoint was made with a different number of processes "
            f"({old.get('world_size', 1)} -> {record['world_size']})"
        )
    if requested.preset is not None and old.get("preset") not in (None, requested.preset):
        raise ConfigError(
            f"{refuse} with --preset {requested.preset}: the run was started with preset {old['preset']!r} "
            f"and keeps its own settings on resume (leave out --preset)"
        )
    fixed = [
        f"task option {k!r} (the run's {options.get(k)!r}, asked {v!r})"
        for k, v in requested.task_options.items()
        if options.get(k) != v
    ]
    asked = validate_config({**saved, **requested.settings})
    changed = [k for k in requested.settings if asked[k] != saved[k]]
    fixed += [
        f"setting {k!r} (the run's {saved[k]!r}, asked {asked[k]!r})"
        for k in changed
        if k not in RESUME_MUTABLE_KEYS
    ]
    if fixed:
        raise ConfigError(
            f"{refuse}: a resumed run keeps its own settings; these differ: {'; '.join(fixed)}. Only "
            f"{', '.join(sorted(RESUME_MUTABLE_KEYS))} may change on resume"
        )
    if "epochs" in changed and done is not None and asked["epochs"] < done:
        raise ConfigError(
            f"{refuse} with setting 'epochs' {asked['epochs']}: the run has already done {done} epochs"
        )
    changes = {k: [saved[k], asked[k]] for k in changed}
    rec = dict(old, settings=asked)
    if changes:
        rec["changes"] = [*old.get("changes", []), {"after_epoch": done or 0, **changes}]
    return rec, changes
