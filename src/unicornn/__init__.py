"""UnICORNN: undamped independent controlled oscillatory recurrent networks (Rusch & Mishra, ICML 2021).

Public API:

* :class:`UnICORNN` -- the stacked layer, with the interface of :class:`torch.nn.LSTM`.
* :func:`unicornn_scan` -- one layer's recurrence on an already projected input, with selectable backends.
* :func:`dropout_over_time` -- variational dropout with one mask per sequence and unit.
* :class:`UnICORNNClassifier`, :class:`UnICORNNRegressor` -- scikit-learn estimators for time-series
  collections (:mod:`unicornn.estimators`; imported on first use, they need the ``sklearn`` extra).

They are imported on first use (``import unicornn`` alone does not import PyTorch), so that the command line
can take Ctrl-C from its first moment on (:mod:`unicornn.entry`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .estimators import UnICORNNClassifier, UnICORNNRegressor  # noqa: F401 (needs the sklearn extra)
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
    "UnICORNNClassifier": "estimators",
    "UnICORNNRegressor": "estimators",
}
#: Names whose module needs an extra: the error says how to install it.
_EXTRAS = {"estimators": "sklearn"}


def __getattr__(name: str):
    if name in _LAZY:
        module = _LAZY[name]
        try:
            value = getattr(importlib.import_module(f".{module}", __name__), name)
        except ImportError as err:
            if module not in _EXTRAS:
                raise
            raise ImportError(
                f"unicornn.{name} needs {err.name or 'a missing package'} ({err}); install it with: "
                f"pip install 'unicornn[{_EXTRAS[module]}]'"
            ) from err
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
