"""A hook for fault-injection tests: stop this process at a named point of a run.

Only the environment variable ``UNICORNN_FAULT`` switches it on; unset (as it always is outside the tests in
``tests/test_faults.py``) :func:`fault_point` does nothing but one dictionary look-up. Its value is
``POINT:N`` or ``POINT:N:stop``: at the N-th time (1-based) this process reaches ``POINT`` it sends itself
SIGKILL (the default: as if the machine had lost the job) or SIGSTOP (to hold a run still, e.g. while it holds
its run directory's lock). The points are

- ``batch``: after an optimiser step;
- a file name of the run directory (``checkpoint.pt``, ``best.pt``, ``result.json``, ``config.json``,
  ``metrics.jsonl``): in the middle of writing it, after part of its bytes are written (for the files written
  atomically, into the temporary file that would replace it).
"""

from __future__ import annotations

import os
import signal

__all__ = ["ENV", "fault_point"]

ENV = "UNICORNN_FAULT"
_counts: dict[str, int] = {}


def fault_point(name: str) -> None:
    """Count a pass through point ``name``; kill or stop this process there if ``UNICORNN_FAULT`` says so."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    point, _, rest = spec.partition(":")
    if point != name:
        return
    nth, _, action = rest.partition(":")
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGSTOP if action == "stop" else signal.SIGKILL)
