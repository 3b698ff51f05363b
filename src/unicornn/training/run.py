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

Every run has a run id, drawn when it starts and stored in config.json, checkpoint.pt and best.pt (in the
record) and in result.json: a file copied from another run directory is refused (:func:`check_same_run`).
Runs written before run ids existed have none and are read as before.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..validation import ConfigError
from .checkpoint import read_checkpoint
from .errors import RunExistsError, RunFileError, RunLockedError, os_error_text
from .settings import RESUME_MUTABLE_KEYS, epochs_text, validate_config

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
    "RUN_ID",
    "new_run_id",
    "check_same_run",
    "check_beside_its_run",
    "run_id_of",
]

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
METRICS_FILE = "metrics.jsonl"  # (the metric registry is unicornn.metrics.METRICS)
CONFIG = "config.json"
RESULT = "result.json"
LOCK = ".lock"
RUN_ID = "run_id"  # the key of the run id in a record (config.json, checkpoints) and in result.json


def new_run_id() -> str:
    """A fresh run id (32 hex digits)."""
    return uuid.uuid4().hex


def run_id_of(doc: Any) -> str | None:
    """The run id of a record, result or checkpoint (None: written before run ids existed, or not a dict)."""
    if isinstance(doc, dict) and isinstance(doc.get("record"), dict):
        doc = doc["record"]
    return doc.get(RUN_ID) if isinstance(doc, dict) else None


def check_same_run(path: Path, doc: Any, run_id: str | None, source: str) -> None:
    """Raise :class:`RunFileError` if ``doc`` (the content of ``path``) belongs to a run other than ``run_id``
    (the id ``source`` holds); a missing id on either side (an older run) passes."""
    other = run_id_of(doc)
    if run_id is not None and other is not None and other != run_id:
        raise RunFileError(
            f"{path} belongs to another run (run id {other}, while {source} has {run_id}): it was copied from "
            f"another run directory; move it away or put this run's own file back"
        )


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


def check_beside_its_run(path: Path, doc: Any) -> None:
    """A run file read on its own (``unicornn eval``, ``diagnose``): :class:`RunFileError` when the config.json
    beside it is another run's (an unreadable or absent config.json, or an older run without ids, passes)."""
    config = Path(path).parent / CONFIG
    if Path(path).name == CONFIG or not config.is_file():
        return
    try:
        own = read_json(config)
    except RunFileError:
        return
    check_same_run(Path(path), doc, run_id_of(own), str(config))


# --------------------------------------------------------------------------------------------------
# the lock
# --------------------------------------------------------------------------------------------------


#: Descriptors of the locks this process holds. A flock belongs to the open file, which a forked child
#: (a DataLoader worker) shares: the child closes its copies at once, so that the lock dies with the process
#: that took it, not with the last of its children.
_HELD_LOCKS: set[int] = set()


def _close_inherited_locks() -> None:
    for fd in _HELD_LOCKS:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD_LOCKS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_inherited_locks)


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir/.lock`` (creating the directory) while the block writes the run directory.

    An exclusive ``fcntl.flock``: a second process asking for it gets :class:`RunLockedError` at once. The
    kernel releases it when the holder ends, however it ends (``kill -9`` and crashes included), so it is never
    left stuck; processes forked while it is held (DataLoader workers) close their copy of it at once and
    never hold it. Works on local file systems and on NFS (Linux emulates it there with POSIX locks). Where
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
    try:
        created = [d for d in (run_dir, *run_dir.parents) if not d.exists()]  # innermost first
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise RunFileError(f"cannot create the run directory {run_dir}: {os_error_text(err)}") from None
    _HELD_LOCKS.add(fd)
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
        if fd in _HELD_LOCKS:  # (a forked child has closed it already)
            _HELD_LOCKS.discard(fd)
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


def _read_result(run_dir: Path, notes: list[str], run_id: str | None, source: str) -> dict[str, Any] | None:
    """result.json, or None (with a note) when it is damaged: the run is then finished again from its
    checkpoint, which rewrites it. A result.json of another run is a :class:`RunFileError`."""
    try:
        result = read_json(run_dir / RESULT)
        int(result["epochs_done"]), result["best"]["epoch"]  # noqa: B018
    except RunFileError as err:
        notes.append(f"{err}; it is written again from {CHECKPOINT}")
        return None
    except (KeyError, TypeError, ValueError) as err:
        notes.append(f"{run_dir / RESULT} is damaged ({err!r}); it is written again from {CHECKPOINT}")
        return None
    check_same_run(run_dir / RESULT, result, run_id, source)
    return result


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
    source = str(run_dir / (CHECKPOINT if ckpt is not None else CONFIG))
    _check_best(run_dir, run_id_of(old), source)
    done = ckpt["epoch"] if ckpt is not None else None
    rec, changes = _resumed_record(run_dir, old, record, requested, done)
    result = _read_result(run_dir, notes, run_id_of(old), source) if has[RESULT] else None
    if result is not None and result["epochs_done"] >= rec["settings"]["epochs"]:
        return OpenedRun(record=rec, result=result)
    if ckpt is None:
        raise RunFileError(
            f"{run_dir / CHECKPOINT} is missing: the run cannot be trained further (to train this seed "
            f"again, remove {run_dir} or choose another --out)"
        )
    return OpenedRun(record=rec, checkpoint=ckpt, changes=changes, notes=notes)


def _check_best(run_dir: Path, run_id: str | None, source: str) -> None:
    """best.pt, if present and readable, must be this run's (a damaged one is dealt with on resume)."""
    if run_id is None or not (run_dir / BEST).exists():
        return
    try:
        best = read_checkpoint(run_dir / BEST, "model")
    except RunFileError:
        return
    check_same_run(run_dir / BEST, best, run_id, source)


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
            f"{refuse} with setting 'epochs' {asked['epochs']}: the run has already done {epochs_text(done)}"
        )
    changes = {k: [saved[k], asked[k]] for k in changed}
    rec = dict(old, settings=asked)
    if changes:
        rec["changes"] = [*old.get("changes", []), {"after_epoch": done or 0, **changes}]
    return rec, changes
