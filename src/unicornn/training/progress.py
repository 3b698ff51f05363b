"""Progress output of a run: bars on a terminal, plain lines anywhere else.

Modes (chosen by :class:`Progress`):

- bars: stderr is a terminal, ``tqdm`` is installed and the run is not ``quiet``: an epoch bar and a batch bar,
  redrawn in place;
- lines: stderr is not a terminal (a log file, a pipe, a batch system's output) or ``tqdm`` is missing: every
  message is one line with the date and time; during an epoch a line ``epoch E/N: batch B/M ...`` at most every
  ``every`` seconds (so a long epoch shows it is alive), never a redraw;
- quiet: the per-epoch lines only.

Only the main process prints. A ``log`` callable, when given, receives every line instead (without the time).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TextIO

__all__ = ["Progress", "EpochProgress", "line_logger"]


def _tqdm():
    try:
        from tqdm.auto import tqdm
    except ImportError:  # the [tasks] extra is not installed
        return None
    return tqdm


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


def line_logger(stream: TextIO | None = None) -> Callable[[str], None]:
    """A ``log(line)`` for long commands: each line printed to ``stream`` (default ``sys.stderr``) at once,
    prefixed with the date and time when the stream is not a terminal (a log file)."""

    def log(msg: str) -> None:
        out = stream if stream is not None else sys.stderr
        stamp = "" if _isatty(out) else f"{time.strftime('%Y-%m-%d %H:%M:%S')}  "
        print(f"{stamp}{msg}", file=out, flush=True)

    return log


class Progress:
    """Where a run's messages and progress go (see the module docstring).

    Args:
        quiet: per-epoch lines only.
        main: this is the process that prints (rank 0).
        log: receives every line instead of ``stream``.
        stream: where lines and bars go (default ``sys.stderr``).
        every: seconds between progress lines within an epoch, in lines mode (None: none).
    """

    def __init__(self, *, quiet: bool, main: bool, log: Callable[[str], None] | None = None,
                 stream: TextIO | None = None, every: float | None = 60.0) -> None:  # fmt: skip
        self.main, self.log, self.every = main, log, every
        self.stream = stream if stream is not None else sys.stderr
        self.tqdm = _tqdm() if main and not quiet and log is None and _isatty(self.stream) else None
        self.lines = main and not quiet and self.tqdm is None and every is not None

    def say(self, msg: str) -> None:
        """One message (a line; in bars mode printed above the bars)."""
        if not self.main:
            return
        if self.log is not None:
            self.log(msg)
        elif self.tqdm is not None:
            self.tqdm.write(msg, file=self.stream)
        else:
            print(f"{time.strftime('%Y-%m-%d %H:%M:%S')}  {msg}", file=self.stream, flush=True)

    def run_bar(self, total: int, initial: int, desc: str):
        """The epoch bar (an object with ``update(n)`` and ``close()``), or None outside bars mode."""
        if self.tqdm is None:
            return None
        return self.tqdm(total=total, initial=initial, desc=desc, unit="epoch", file=self.stream)

    def epoch(self, epoch: int, epochs: int) -> EpochProgress | None:
        """Progress within epoch ``epoch`` (1-based) of ``epochs``; None when nothing is shown."""
        if self.tqdm is None and not self.lines:
            return None
        return EpochProgress(self, epoch, epochs)


class EpochProgress:
    """Progress of one epoch: iterate the loader through :meth:`wrap`, report each batch's loss to
    :meth:`batch_done`."""

    def __init__(self, progress: Progress, epoch: int, epochs: int) -> None:
        self.p, self.epoch, self.epochs = progress, epoch, epochs
        self.bar: Any = None
        self.total: int | None = None
        self.n, self.loss_sum = 0, 0.0
        self.t0 = self.last = time.monotonic()

    def wrap(self, loader: Iterable) -> Iterator:
        try:
            self.total = len(loader)  # type: ignore[arg-type]
        except TypeError:
            self.total = None
        if self.p.tqdm is not None:
            self.bar = self.p.tqdm(loader, desc=f"epoch {self.epoch}/{self.epochs}", leave=False, unit="batch",
                                   file=self.p.stream)  # fmt: skip
            return iter(self.bar)
        return iter(loader)

    def batch_done(self, loss: float) -> None:
        """Batch done with training loss ``loss``."""
        self.n += 1
        self.loss_sum += loss
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
            return
        now = time.monotonic()
        if now - self.last < self.p.every or self.n == self.total:
            return
        self.last = now
        elapsed = now - self.t0
        of = f"/{self.total}" if self.total else ""
        left = f", about {elapsed / self.n * (self.total - self.n):.0f}s left" if self.total else ""
        self.p.say(
            f"epoch {self.epoch}/{self.epochs}: batch {self.n}{of}  loss {loss:.4g} (epoch mean "
            f"{self.loss_sum / self.n:.4g})  {elapsed:.0f}s{left}"
        )
