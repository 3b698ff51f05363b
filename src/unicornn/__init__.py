"""UnICORNN: undamped independent controlled oscillatory recurrent networks (Rusch & Mishra, ICML 2021).

Public API:

* :class:`UnICORNN` -- the stacked layer, with the interface of :class:`torch.nn.LSTM`.
* :func:`unicornn_scan` -- one layer's recurrence on an already projected input, with selectable backends.
* :func:`dropout_over_time` -- variational dropout with one mask per sequence and unit.

They are imported on first use (``import unicornn`` alone does not import PyTorch), so that the command line
can take Ctrl-C from its first moment on (:mod:`unicornn.entry`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .modules import UnICORNN, dropout_over_time
    from .ops import BACKENDS, backend_available, unicornn_scan

__version__ = "0.1.0"

__all__ = ["BACKENDS", "UnICORNN", "backend_available", "dropout_over_time", "unicornn_scan", "__version__"]

#: Public name -> the submodule that defines it.
_LAZY = {
    "UnICORNN": "modules",
    "dropout_over_time": "modules",
    "BACKENDS": "ops",
    "backend_available": "ops",
    "unicornn_scan": "ops",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    if not name.startswith("_"):  # a submodule (``unicornn.ops``), as when this file imported them
        try:
            return importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{name}":
                raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
