"""The ``unicornn`` command line: ``train``, ``eval``, ``tasks``, ``report``, ``export``, the checks of the
paper's claims ``bench``, ``diagnose``, ``plot`` and ``sweep``, and the hyper-parameter search ``tune``.

Run ``unicornn COMMAND --help`` for every option. Under ``torchrun --nproc_per_node=K -m unicornn train ...``
the training runs with DistributedDataParallel over K processes.

Layout: one module per command (``unicornn.cli.train``, ``.eval``, ``.tasks``, ``.report``, ``.export``,
``.bench``, ``.diagnose``, ``.plot``, ``.sweep``, ``.tune``), each with ``add_parser(subparsers)`` (which sets
``func``, the handler ``func(args) -> exit code``, in the same module) and listed by name in :data:`COMMANDS`: a new command is one
new module plus one name there. Options several commands share (``--out``, ``--device``, ``--threads``,
``--data-dir``, argparse types, ``--set`` parsing) are in :mod:`unicornn.cli.options`; helpers they share in
:mod:`unicornn.cli.common`. Handlers parse arguments, call the library and print what it formats.

:func:`main` maps the project's own exceptions to exit codes (:data:`EXIT_CODES`, first match wins); any
other exception is a bug and shows its traceback. Exit codes: 0 done, 1 a benchmark point failed
(``bench memory``), 2 usage, data, run-directory or file-system error (also argparse's own; an ``OSError``
from any command, e.g. ``--out`` naming a file or a read-only file system, is one line too), 3 non-finite
loss, 4 a bound exceeded (``diagnose states``), 130 interrupted (Ctrl-C), 143 terminated (SIGTERM).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib import import_module

from ..tasks.download import DataUnavailableError
from ..training.epoch import NonFiniteError
from ..training.errors import RunDirError
from ..validation import ConfigError
from .options import CLIError, parse_sets, parse_value

__all__ = ["main", "build_parser", "parse_value", "parse_sets", "error", "CLIError", "COMMANDS", "EXIT_CODES"]

EXIT_FAILED = 1  # bench memory: a measurement point failed (its error is in the JSON)
EXIT_USAGE = 2
EXIT_NONFINITE = 3
EXIT_VIOLATED = 4  # diagnose states: the bound was exceeded
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, as a shell reports a process ended by it

#: The project's exceptions and their exit codes (first match wins); anything else is a bug.
EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (CLIError, EXIT_USAGE),
    (ConfigError, EXIT_USAGE),  # bad setting, option, name (UnknownNameError), device, ...
    (RunDirError, EXIT_USAGE),  # run exists, is locked, a damaged file, a file-system error
    (DataUnavailableError, EXIT_USAGE),
    (NonFiniteError, EXIT_NONFINITE),
    (OSError, EXIT_USAGE),  # the file system refused a read or write (--out a file, read-only, full, ...)
)

#: The command modules of this package, in the order ``--help`` lists them.
COMMANDS = ("train", "eval", "tasks", "report", "export", "bench", "diagnose", "plot", "sweep", "tune")


def error(msg: str, code: int = EXIT_USAGE, lines: bool = False) -> int:
    """Print ``unicornn: error: MSG`` on stderr and return ``code``: on one line (line breaks of MSG become
    spaces), or with ``lines`` as MSG's own short lines (the list of missing data files, one per line)."""
    text = "\n".join(line.rstrip() for line in msg.strip().splitlines()) if lines else " ".join(msg.split())
    print(f"unicornn: error: {text}", file=sys.stderr)
    return code


class _Parser(argparse.ArgumentParser):
    """argparse's parser with its usage errors on one line (``PROG: error: MSG (see PROG --help)``), exit 2."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``unicornn`` command (its subcommands' parsers are of the same class)."""
    from .. import __version__

    parser = _Parser(
        prog="unicornn",
        description="UnICORNN (Rusch & Mishra, ICML 2021): train and evaluate the paper's experiments.",
    )
    parser.add_argument("--version", action="version", version=f"unicornn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        import_module(f".{name}", __name__).add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``unicornn`` console script; returns the exit code.

    The project's own exceptions become one line (a list of missing data files: one line per file) and an
    exit code; any other exception propagates
    (with its traceback): it is a bug.
    """
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Exception as err:
        for kind, code in EXIT_CODES:
            if isinstance(err, kind):
                # the missing data files keep their one line each (name, URL, checksum)
                return error(_message(err), code, lines=bool(getattr(err, "missing", ())))
        raise


def _message(err: Exception) -> str:
    """The one line of an exception: an ``OSError`` as ``file system: reason: path``, else its text."""
    if isinstance(err, OSError):
        from ..training.errors import os_error_text

        return f"file system: {os_error_text(err)}"
    return str(err)


if __name__ == "__main__":
    sys.exit(main())
