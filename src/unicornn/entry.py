"""The ``unicornn`` console script and ``python -m unicornn``: :func:`unicornn.cli.main` behind a Ctrl-C guard
taken before anything heavy is imported.

Ctrl-C at any moment, during the first second's imports too, ends the command with one line on stderr and exit
code 130 (a command that handles it itself, like ``train``, says more in its one line). The first Ctrl-C
raises ``KeyboardInterrupt`` as usual, and further ones are ignored for ``INTERRUPT_GRACE_S`` seconds, so
that a quick double Ctrl-C cannot interrupt the clean-up into a traceback. Library code can swallow the
``KeyboardInterrupt`` (C code that clears any error, e.g. a ``hasattr`` reaching a Python ``__getattr__``, or
an ``except BaseException``): so if the command has not begun to stop (:func:`stopping`) by the end of that
grace period, the Ctrl-C is raised again, every ``REPEAT_INTERRUPT_S`` seconds until it does. Once the
command stops, further Ctrl-Cs are ignored.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from contextlib import contextmanager

EXIT_INTERRUPTED = 130  # as unicornn.cli.EXIT_INTERRUPTED (not imported here: it imports PyTorch)
#: Seconds after a Ctrl-C during which further ones are ignored (the command stops meanwhile).
INTERRUPT_GRACE_S = 2.0
#: Seconds between the repeats of a Ctrl-C the command has not acted on after the grace period.
REPEAT_INTERRUPT_S = 0.5

_guarded = False  # main() installed _interrupt
_stopping = threading.Event()  # this command acts on the Ctrl-C (stopping() was called) or has ended
_first_interrupt: list[float] = []  # time.monotonic() of the first Ctrl-C


def _interrupt(signum, frame) -> None:
    if _stopping.is_set():
        return  # the command is stopping: one interruption is enough
    if not _first_interrupt:
        _first_interrupt.append(time.monotonic())
        threading.Thread(
            target=_repeat_until_stopping, args=(_stopping,), name="unicornn-interrupt", daemon=True
        ).start()
    elif time.monotonic() - _first_interrupt[0] < INTERRUPT_GRACE_S:
        return  # a quick second Ctrl-C while the first one is being handled
    raise KeyboardInterrupt


def _repeat_until_stopping(stopped: threading.Event) -> None:
    """Raise the Ctrl-C again in the main thread, after the grace period and until the command acts on it or
    ends (``stopped``; see the module docstring)."""
    import _thread

    main_thread = threading.main_thread().ident
    wait = INTERRUPT_GRACE_S
    while not stopped.wait(wait):
        if hasattr(signal, "pthread_kill"):
            signal.pthread_kill(main_thread, signal.SIGINT)  # a real signal: it also ends a blocking call
        else:  # pragma: no cover - Windows
            _thread.interrupt_main(signal.SIGINT)
        wait = REPEAT_INTERRUPT_S


def stopping() -> None:
    """Say that the command caught the Ctrl-C and is stopping: further Ctrl-Cs are ignored, and the first one is
    not raised again. Called where a command catches ``KeyboardInterrupt`` to stop cleanly (main thread)."""
    _stopping.set()
    if _guarded and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextmanager
def interrupts_deferred():
    """Hold a Ctrl-C back until the block ends (then it is raised as usual), where an interruption cannot be
    handled: an import that runs Python code under a C++ extension's initialisation (Triton's), which aborts
    the process when an exception crosses it. Main thread under :func:`main` only; elsewhere it does nothing."""
    if not _guarded or threading.current_thread() is not threading.main_thread():
        yield
        return
    held = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if held and callable(previous):
            previous(signal.SIGINT, None)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``unicornn`` command line with ``argv`` (default ``sys.argv[1:]``); return its exit code. A
    Ctrl-C the command does not handle itself prints its one line and raises :class:`_Interrupted`."""
    global _guarded, _stopping
    _stopping = threading.Event()  # one per command: a repeat left from an earlier one watches its own
    _first_interrupt.clear()
    _guarded = signal.getsignal(signal.SIGINT) is signal.default_int_handler  # (not where SIGINT is ignored)
    if _guarded:
        signal.signal(signal.SIGINT, _interrupt)
    try:
        from .cli import main as cli_main

        return cli_main(argv)
    except BaseException as err:
        if not _from_interrupt(err):
            raise
        stopping()
        print("unicornn: error: interrupted", file=sys.stderr)
        raise _Interrupted from None
    finally:
        _stopping.set()  # the command is over: its Ctrl-C is not raised again


def _from_interrupt(err: BaseException) -> bool:
    """Whether ``err`` is a Ctrl-C's KeyboardInterrupt or was raised because of one (Python 3.11 wraps an
    exception raised in ``__set_name__``, e.g. while a dataclass is created during an import, in a
    RuntimeError)."""
    if not isinstance(err, (KeyboardInterrupt, Exception)):
        return False  # SystemExit and the like keep their meaning
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, KeyboardInterrupt):
            return True
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return False


class _Interrupted(Exception):
    """Ctrl-C ended the command outside its own handling (its one line is printed)."""


def run() -> None:
    """The console script: :func:`main`, then exit with its code. After a Ctrl-C the process ends at once
    with 130, whether the command handled it (it has stopped and closed its files) or not (one that struck
    during imports, say): an import or a worker thread cut short can leave library state whose clean-up at
    interpreter exit would report the interruption again, or end the process by the signal instead of 130.
    A process that joined a torchrun process group runs the ``atexit`` functions, then ends without the
    interpreter's finalisation (see :func:`unicornn.training.distributed.joined_a_process_group`)."""
    try:
        code = main()
    except _Interrupted:
        code = EXIT_INTERRUPTED
    if code == EXIT_INTERRUPTED:
        _end_process(EXIT_INTERRUPTED)
    if _joined_a_process_group():
        import atexit

        atexit._run_exitfuncs()  # what a normal exit runs first: flushes logs, stops worker processes
        _end_process(code)
    sys.exit(code)


def _joined_a_process_group() -> bool:
    distributed = sys.modules.get("unicornn.training.distributed")  # not imported: no process group
    return distributed is not None and distributed.joined_a_process_group()


def _end_process(code: int) -> None:
    """Flush stdout and stderr, then end the process with ``code`` at once (no interpreter finalisation)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
