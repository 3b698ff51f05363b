"""UnICORNN: undamped independent controlled oscillatory recurrent networks (Rusch & Mishra, ICML 2021).

Public API:

* :class:`UnICORNN` -- the stacked layer, with the interface of :class:`torch.nn.LSTM`.
* :func:`unicornn_scan` -- one layer's recurrence on an already projected input, with selectable backends.
* :func:`dropout_over_time` -- variational dropout with one mask per sequence and unit.
* :class:`UnICORNNClassifier`, :class:`UnICORNNRegressor` -- scikit-learn estimators for time-series
  collections (:mod:`unicornn.estimators`; imported on first use, they need the ``sklearn`` extra).
"""

from .modules import UnICORNN, dropout_over_time
from .ops import BACKENDS, backend_available, unicornn_scan

__version__ = "0.1.0"

__all__ = ["BACKENDS", "UnICORNN", "backend_available", "dropout_over_time", "unicornn_scan", "__version__"]


_ESTIMATORS = ("UnICORNNClassifier", "UnICORNNRegressor")


def __getattr__(name: str):
    """The scikit-learn estimators, imported on first use (``import unicornn`` works without scikit-learn)."""
    if name in _ESTIMATORS:
        try:
            from . import estimators
        except ImportError as err:
            raise ImportError(
                f"unicornn.{name} needs scikit-learn ({err}); install it with: pip install 'unicornn[sklearn]'"
            ) from err
        return getattr(estimators, name)
    raise AttributeError(f"module 'unicornn' has no attribute {name!r}")
