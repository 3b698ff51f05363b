"""The worker loop that any number of processes run on one study at once (:func:`optimize`).

Each process asks for a trial while the study holds fewer than ``n_trials`` finished or running ones,
trains it, tells the result, and when nothing is left waits for the other workers' trials, so that every
worker ends with the study complete. Asking is serialised by a lock file in the study's folder (on one
machine, or several sharing that folder, no trial is handed out twice and no surplus trial is started).

A killed worker (``kill -9``, a lost machine) leaves its trial RUNNING until it is found dead; then it is
marked FAIL and re-enqueued with the same parameters (Optuna's stale-trial retry callback); the retry trains
in the same run directory, so it resumes from the last checkpoint instead of starting over. Found dead: for
a database storage, by Optuna's heartbeat (none for twice the heartbeat interval); for a journal file, by
the trial's lock file in the study's folder no longer being held. A trial interrupted by Ctrl-C or SIGTERM
is marked FAIL and re-enqueued when a worker next starts. A trial is retried at most
:data:`~unicornn.tuning.study.MAX_RETRY` times.

Trial outcomes (:class:`Outcome`): ``complete`` (the objective value), ``pruned``, ``diverged`` (a
non-finite loss: a result, kept as FAIL with its message in the ``error`` user attribute and not retried),
``unfinished`` (stopped early on purpose, e.g. ``stop_after_epoch``: FAIL, retried by a later run).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .study import MAX_RETRY, Storage, flock, retry_callback

__all__ = ["Outcome", "broadcast", "optimize", "START_GRACE"]

_ASK_LOCK = ".ask.lock"
#: Seconds a RUNNING trial is left alone after it starts, before its lock file is checked (it is taken
#: right after the trial is asked for).
START_GRACE = 10.0


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


def _retried(trials) -> set[int]:
    return {n for t in trials for n in t.system_attrs.get("retry_history", ())}


def _settled_failure(t) -> bool:
    """A FAIL that is a result (diverged) or has used up its retries."""
    return "error" in t.user_attrs or len(t.system_attrs.get("retry_history", ())) + 1 > MAX_RETRY


class _Worker:
    """One process's share of a study (see :func:`optimize`)."""

    def __init__(self, study, storage: Storage, lock_dir: Path, log) -> None:
        self.study, self.storage, self.lock_dir, self.log = study, storage, lock_dir, log
        self.retry = retry_callback()
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
            with flock(self.lock_dir / f"trial-{t.number}.lock", blocking=False) as free:
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
            with flock(self.lock_dir / _ASK_LOCK):
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
            with flock(self.lock_dir / f"trial-{trial.number}.lock"):
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
