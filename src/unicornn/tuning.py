"""Studies on Optuna shared by ``unicornn tune`` (:mod:`unicornn.tune`) and ``unicornn sweep``
(:mod:`unicornn.sweep`): the storage, the study, and the worker loop that any number of processes run at once.

* **Storage** (:func:`open_storage`): by default a SQLite file ``optuna.db`` in the output folder; any Optuna
  URL (``sqlite:///...``, ``postgresql://...``, ``mysql://...``), or a journal file path (a
  ``JournalStorage`` on a file: a shared file system needs no database server).
* **Study** (:func:`open_study`): created on first use, joined afterwards; the task and the kind of study
  are stored in its user attributes, so that a study of another task is refused.
* **Workers** (:func:`optimize`): each process asks for a trial while the study holds fewer than
  ``n_trials`` finished or running ones, trains it, tells the result, and when nothing is left waits for
  the other workers' trials, so that every worker ends with the study complete. Asking is serialised by a
  lock file in the study's folder (on one machine, or several sharing that folder, no trial is handed out
  twice and no surplus trial is started).
* **A killed worker** (``kill -9``, a lost machine): its trial stays RUNNING until it is found dead, then it
  is marked FAIL and re-enqueued with the same parameters (Optuna's ``RetryHeartbeatStaleTrialCallback``);
  the retry trains in the same run directory, so it resumes from the last checkpoint instead of starting
  over. Found dead: for a database storage, by Optuna's heartbeat (no heartbeat for ``heartbeat``
  seconds x 2); for a journal file, by the trial's lock file in the study's folder no longer being held.
  A trial interrupted by Ctrl-C or SIGTERM is marked FAIL and re-enqueued when a worker next starts. A
  trial is retried at most :data:`MAX_RETRY` times.

Trial outcomes (:class:`Outcome`): ``complete`` (the objective value), ``pruned``, ``diverged`` (a
non-finite loss: a result, kept as FAIL with its message in the ``error`` user attribute and not retried),
``unfinished`` (stopped early on purpose, e.g. ``stop_after_epoch``: FAIL, retried by a later run).
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .validation import ConfigError

__all__ = ["INSTALL_HINT", "MAX_RETRY", "Outcome", "require_optuna", "open_storage", "open_study", "optimize",
           "study_digest", "trial_rows", "broadcast", "grid_sampler"]  # fmt: skip

INSTALL_HINT = 'this command needs Optuna: pip install "unicornn[tune]"'
#: How many times a trial whose worker died (or was interrupted) is retried.
MAX_RETRY = 3
_ASK_LOCK = ".ask.lock"
#: Seconds a RUNNING trial is left alone after it starts, before its lock file is checked (it is taken
#: right after the trial is asked for).
START_GRACE = 10.0


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


def _retry_callback():
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
        lock = _flock(out / ".storage.lock")  # workers starting together create a new database's tables once
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
            callback = {key: _retry_callback()}
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


@dataclass
class Outcome:
    """How a trial ended (see the module docstring); ``attrs`` become the trial's user attributes."""

    state: str
    value: float | None = None
    attrs: dict[str, Any] = field(default_factory=dict)


def broadcast(ctx, obj: Any) -> Any:
    """``obj`` of the main process, in every process (as is without torchrun)."""
    if ctx is None or not ctx.enabled:
        return obj
    import torch.distributed

    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


@contextlib.contextmanager
def _flock(path: Path, blocking: bool = True) -> Iterator[bool]:
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


def _retried(trials) -> set[int]:
    return {n for t in trials for n in t.system_attrs.get("retry_history", ())}


def _settled_failure(t) -> bool:
    """A FAIL that is a result (diverged) or has used up its retries."""
    return "error" in t.user_attrs or len(t.system_attrs.get("retry_history", ())) + 1 > MAX_RETRY


class _Worker:
    """One process's share of a study (see :func:`optimize`)."""

    def __init__(self, study, storage: Storage, lock_dir: Path, log) -> None:
        self.study, self.storage, self.lock_dir, self.log = study, storage, lock_dir, log
        self.retry = _retry_callback()
        self.left: set[int] = set()  # trials this worker left unfinished on purpose (not retried by it)

    def _reap(self, trials) -> None:
        """Mark dead workers' RUNNING trials FAIL and re-enqueue them."""
        from optuna.storages import fail_stale_trials
        from optuna.trial import TrialState

        if self.storage.heartbeat:
            fail_stale_trials(self.study)
            return
        for t in trials:
            if t.state != TrialState.RUNNING or time.time() - t.datetime_start.timestamp() < START_GRACE:
                continue
            with _flock(self.lock_dir / f"trial-{t.number}.lock", blocking=False) as free:
                if free:  # its worker is gone: the kernel dropped the lock
                    self.study.tell(t.number, state=TrialState.FAIL)
                    self.retry(self.study, t)
                    self.log(f"trial {t.number}: its worker is gone; marked failed and queued again")

    def next_trial(
        self, n_trials: int, deadline: float | None, poll: float, wait: bool = True, sampler_for=None
    ):
        """The next trial to run (RUNNING, this worker's), or None when the study needs no more; with
        ``wait``, waits while other workers' trials run (one of them may die and be queued again)."""
        from optuna.trial import TrialState

        while True:
            with _flock(self.lock_dir / _ASK_LOCK):
                self._reap(self.study.get_trials(deepcopy=False))
                trials = self.study.get_trials(deepcopy=False)
                retried = _retried(trials)
                for t in trials:  # interrupted trials (Ctrl-C, a stopped run) of earlier workers
                    if (t.state == TrialState.FAIL and t.number not in retried and t.number not in self.left
                            and not _settled_failure(t)):  # fmt: skip
                        self.retry(self.study, t)
                        self.log(
                            f"trial {t.number} was interrupted; queued again (its run directory resumes)"
                        )
                trials = self.study.get_trials(deepcopy=False)
                states = [t.state for t in trials]
                taken = len(self.left) + sum(
                    s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
                    or (s == TrialState.FAIL and _settled_failure(t))
                    for s, t in zip(states, trials)
                )
                if taken < n_trials and (deadline is None or time.monotonic() < deadline):
                    if sampler_for is not None:  # seeded by the trial's number: workers draw different points
                        self.study.sampler = sampler_for(len(trials))
                    return self.study.ask()
            if (
                not wait
                or TrialState.RUNNING not in states
                or (deadline is not None and time.monotonic() >= deadline)
            ):
                return None
            time.sleep(poll)

    @contextlib.contextmanager
    def running(self, trial) -> Iterator[None]:
        """While the trial runs: its lock file held, and the storage's heartbeat recorded."""
        stop = threading.Event()
        beat = None
        if self.storage.heartbeat:
            interval = self.storage.storage.get_heartbeat_interval()

            def pulse() -> None:
                while True:
                    self.storage.storage.record_heartbeat(trial._trial_id)
                    if stop.wait(interval):
                        return

            beat = threading.Thread(target=pulse, daemon=True)
            beat.start()
        try:
            with _flock(self.lock_dir / f"trial-{trial.number}.lock"):
                yield
        finally:
            stop.set()
            if beat is not None:
                beat.join()

    def tell(self, trial, outcome: Outcome) -> None:
        from optuna.trial import TrialState

        for k, v in outcome.attrs.items():
            trial.set_user_attr(k, v)
        if outcome.state == "complete":
            self.study.tell(trial, outcome.value)
        elif outcome.state == "pruned":
            self.study.tell(trial, state=TrialState.PRUNED)
        else:
            if outcome.state == "unfinished":
                self.left.add(trial.number)
            self.study.tell(trial, state=TrialState.FAIL)


def optimize(study, storage: Storage | None, n_trials: int, suggest: Callable[[Any], dict[str, Any]],
             train: Callable[[dict[str, Any], int, Callable[[int, float], bool]], Outcome], *, lock_dir: Path,
             ctx=None, log=print, timeout: float | None = None, poll: float = 2.0, sampler_for=None) -> int:  # fmt: skip
    """Run trials of ``study`` until it holds ``n_trials`` (counting finished, pruned, diverged and running
    ones), then wait for the running ones of other workers. Returns how many trials this process ran.

    ``suggest(trial) -> params`` draws a trial's parameters; ``train(params, run_id, report) -> Outcome``
    trains it (``run_id``: the number of the first trial with these parameters, so that a retry finds its
    run directory; ``report(step, value) -> bool``: the intermediate value, True when the pruner stops the
    trial). ``timeout``: seconds after which no new trial starts. ``sampler_for(number)``: the sampler that
    draws trial ``number`` (a seeded sampler per trial, so that workers started alike draw different points
    and the study does not depend on which worker asked). Under torchrun every process calls this;
    only the main one (``study`` and ``storage`` may be None in the others) talks to the storage, and it
    does not wait for other workers' trials (the idle ranks would sit in a collective call meanwhile).
    """
    main = ctx is None or ctx.is_main
    worker = _Worker(study, storage, lock_dir, log) if main else None
    deadline = None if timeout is None else time.monotonic() + timeout
    ran = 0
    while True:
        wait = ctx is None or not ctx.enabled
        trial = worker.next_trial(n_trials, deadline, poll, wait, sampler_for) if main else None
        job = None
        if trial is not None:
            frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number)
            job = (suggest(trial), frozen.system_attrs.get("failed_trial", trial.number), trial.number)
        job = broadcast(ctx, job)
        if job is None:
            return ran
        params, run_id, number = job

        def report(step: int, value: float, trial=trial) -> bool:
            stop = False
            if main:
                trial.report(value, step)
                stop = trial.should_prune()
            return bool(broadcast(ctx, stop))

        context = worker.running(trial) if main else contextlib.nullcontext()
        with context:
            try:
                outcome = train(params, run_id, report)
            except BaseException:  # Ctrl-C, SIGTERM, a bug: FAIL now, retried by the next worker to start
                if main:
                    worker.tell(trial, Outcome("unfinished"))
                    worker.left.discard(number)
                raise
            if main:
                worker.tell(trial, outcome)
        ran += 1


def trial_rows(study) -> list[dict[str, Any]]:
    """Every trial of ``study``: number, state, value, parameters, user attributes, retry of which trial."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append({"number": t.number, "state": t.state.name.lower(), "value": t.value, "params": dict(t.params),
                     "retry_of": t.system_attrs.get("failed_trial"), **dict(t.user_attrs),
                     "started": t.datetime_start.isoformat(timespec="seconds") if t.datetime_start else None,
                     "seconds": t.duration.total_seconds() if t.duration else None})  # fmt: skip
    return rows
