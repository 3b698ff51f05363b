"""The ``unicornn`` console script and ``python -m unicornn``: :func:`unicornn.cli.main` behind a Ctrl-C guard
taken before anything heavy is imported.

Ctrl-C at any moment, during the first second's imports too, ends the command with one line on stderr and exit
code 130 (a command that handles it itself, like ``train``, says more in its one line). The first Ctrl-C
raises ``KeyboardInterrupt`` as usual; further ones are ignored while the command stops, so that a quick
double Ctrl-C cannot interrupt the clean-up into a traceback.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence

EXIT_INTERRUPTED = 130  # as unicornn.cli.EXIT_INTERRUPTED (not imported here: it imports PyTorch)


def _interrupt(signum, frame) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the command is stopping: one interruption is enough
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``unicornn`` command line with ``argv`` (default ``sys.argv[1:]``); return its exit code. A
    Ctrl-C the command does not handle itself prints its one line and raises :class:`_Interrupted`."""
    guarded = signal.getsignal(signal.SIGINT) is signal.default_int_handler  # (not where SIGINT is ignored)
    if guarded:
        signal.signal(signal.SIGINT, _interrupt)
    try:
        from .cli import main as cli_main

        return cli_main(argv)
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        print("unicornn: error: interrupted", file=sys.stderr)
        raise _Interrupted from None


class _Interrupted(Exception):
    """Ctrl-C ended the command outside its own handling (its one line is printed)."""


def run() -> None:
    """The console script: :func:`main`, then exit with its code. After a Ctrl-C the process ends at once
    with 130, whether the command handled it (it has stopped and closed its files) or not (one that struck
    during imports, say): an import or a worker thread cut short can leave library state whose clean-up at
    interpreter exit would report the interruption again, or end the process by the signal instead of 130."""
    try:
        code = main()
    except _Interrupted:
        code = EXIT_INTERRUPTED
    if code == EXIT_INTERRUPTED:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_INTERRUPTED)
    sys.exit(code)
