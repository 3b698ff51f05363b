"""The storage and the study: opened (or created) for ``unicornn tune`` and ``unicornn sweep``.

* **Storage** (:func:`open_storage`): by default a SQLite file ``optuna.db`` in the output folder; any Optuna
  URL (``sqlite:///...``, ``postgresql://...``, ``mysql://...``), or a journal file path (a
  ``JournalStorage`` on a file: a shared file system needs no database server).
* **Study** (:func:`open_study`): created on first use, joined afterwards; the task and the kind of study
  are stored in its user attributes, so that a study of another task is refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..validation import ConfigError

__all__ = ["INSTALL_HINT", "MAX_RETRY", "Storage", "require_optuna", "open_storage", "open_study", "grid_sampler",
           "study_digest", "trial_rows", "flock", "retry_callback"]  # fmt: skip

INSTALL_HINT = 'this command needs Optuna: pip install "unicornn[tune]"'
#: How many times a trial whose worker died (or was interrupted) is retried.
MAX_RETRY = 3


def require_optuna():
    """The ``optuna`` module (its log quieted to warnings); :class:`ConfigError` naming the extra when missing."""
    try:
        import optuna
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # the heartbeat, the retry callback and the matplotlib plots are marked experimental; this package pins
    # its use of them with tests
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings(
        "ignore", message="Heartbeat of storage is supposed to be used with Study.optimize"
    )
    return optuna


def retry_callback():
    """Optuna's callback that re-enqueues a failed trial with its parameters (at most :data:`MAX_RETRY` times)."""
    from optuna import storages

    kind = getattr(storages, "RetryHeartbeatStaleTrialCallback", None) or storages.RetryFailedTrialCallback
    return kind(max_retry=MAX_RETRY)


@dataclass(frozen=True)
class Storage:
    """An opened storage: the Optuna object, its description, and whether it has a heartbeat."""

    storage: Any
    text: str
    heartbeat: bool


def open_storage(storage: str | None, out: Path, heartbeat: int = 60) -> Storage:
    """The storage named by ``--storage`` (default: ``sqlite:///OUT/optuna.db``); see the module docstring.

    ``heartbeat``: seconds between a database storage's heartbeats (a trial silent for twice as long is
    dead). Raises :class:`ConfigError` when it cannot be opened.
    """
    optuna = require_optuna()
    if storage is None:
        storage = f"sqlite:///{(out / 'optuna.db').resolve()}"
    try:
        out.mkdir(parents=True, exist_ok=True)
        lock = flock(out / ".storage.lock")  # workers starting together create a new database's tables once
    except OSError as err:
        raise ConfigError(f"cannot create the output folder {out}: {err.strerror or err}") from None
    with lock:
        return _open_storage(optuna, storage, heartbeat)


def _open_storage(optuna, storage: str, heartbeat: int) -> Storage:
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalFileBackend

    try:
        if "://" in storage:
            kw = {"connect_args": {"timeout": 60}} if storage.startswith("sqlite") else {}
            # Optuna >= 4.9 renamed the stale-trial callback's argument
            key = "heartbeat_stale_trial_callback"
            key = key if key in inspect.signature(RDBStorage).parameters else "failed_trial_callback"
            callback = {key: retry_callback()}
            opened = RDBStorage(storage, engine_kwargs=kw, heartbeat_interval=heartbeat, **callback)
            return Storage(opened, storage, True)
        path = Path(storage)
        if not path.parent.is_dir():
            raise FileNotFoundError(f"no directory {path.parent}")
        return Storage(JournalStorage(JournalFileBackend(str(path))), f"journal file {path}", False)
    except (Exception, optuna.exceptions.OptunaError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(
            f"--storage {storage!r} cannot be opened: {reason} (expected an Optuna URL such as "
            f"sqlite:///PATH or postgresql://USER@HOST/DB, or a journal file path in an existing directory)"
        ) from None


def open_study(storage: Storage, name: str, attrs: Mapping[str, Any], direction: str, sampler, pruner=None):
    """Create study ``name`` (user attributes ``attrs``: at least ``task`` and ``kind``) or join it.

    Raises :class:`ConfigError` when the study exists with other ``attrs`` (another task, another kind of
    study) or another direction."""
    optuna = require_optuna()
    try:
        study = optuna.create_study(storage=storage.storage, study_name=name, direction=direction,
                                    sampler=sampler, pruner=pruner, load_if_exists=True)  # fmt: skip
        have = study.user_attrs
        for k, v in attrs.items():  # a new study (or one a worker is creating at this moment)
            if k not in have:
                study.set_user_attr(k, v)
                have[k] = v
    except Exception as err:
        raise ConfigError(f"study {name!r} in {storage.text} cannot be opened: {err}") from None
    for k, v in attrs.items():
        if have.get(k) != v:
            raise ConfigError(
                f"study {name!r} in {storage.text} was created with {k} {have.get(k)!r}, not {v!r}: "
                f"choose another --study (or another --storage)"
            )
    if study.direction.name.lower() != direction:
        raise ConfigError(
            f"study {name!r} in {storage.text} is {study.direction.name.lower()}d, not {direction}d"
        )
    return study


def grid_sampler(search_space: Mapping[str, list], seed: int = 0):
    """Optuna's ``GridSampler`` over ``search_space``, except that the worker loop (:func:`optimize`), not
    the sampler, decides when the study is complete (the sampler's own stop works only inside
    ``study.optimize``)."""
    from optuna.samplers import GridSampler

    class Grid(GridSampler):
        def after_trial(self, study, trial, state, values) -> None:
            return None

    return Grid(dict(search_space), seed=seed)


def study_digest(obj: Any) -> str:
    """8 hex digits identifying ``obj`` (JSON-serialisable): a study name that changes with what it holds."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:8]


@contextlib.contextmanager
def flock(path: Path, blocking: bool = True) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on ``path`` (yields False when ``blocking`` is off and it is taken)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def trial_rows(study) -> list[dict[str, Any]]:
    """Every trial of ``study``: number, state, value, parameters, user attributes, retry of which trial."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append({"number": t.number, "state": t.state.name.lower(), "value": t.value, "params": dict(t.params),
                     "retry_of": t.system_attrs.get("failed_trial"), **dict(t.user_attrs),
                     "started": t.datetime_start.isoformat(timespec="seconds") if t.datetime_start else None,
                     "seconds": t.duration.total_seconds() if t.duration else None})  # fmt: skip
    return rows
