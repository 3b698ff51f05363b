"""Errors about a run directory. Each is the user's or the machine's doing, not a bug: the CLI prints its one-line
message and exits with code 2."""

from __future__ import annotations

import os

__all__ = ["RunDirError", "RunExistsError", "RunLockedError", "RunFileError", "os_error_text"]


class RunDirError(RuntimeError):
    """A run directory cannot be used as asked (the message says why and what to do)."""


class RunExistsError(RunDirError):
    """The run directory already holds a run and ``resume`` was not requested."""


class RunLockedError(RunDirError):
    """Another process is writing the run directory (it holds the directory's lock)."""


class RunFileError(RunDirError):
    """A file of the run directory cannot be read (damaged, not a unicornn file) or written (permissions,
    read-only or full file system, a path through a regular file)."""


def os_error_text(err: OSError) -> str:
    """``err`` as ``reason: path`` (without Python's ``[Errno N]`` prefix)."""
    reason = err.strerror or type(err).__name__
    return f"{reason}: {os.fsdecode(err.filename)}" if err.filename else reason
