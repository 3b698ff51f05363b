"""UnICORNN: undamped independent controlled oscillatory recurrent networks (Rusch & Mishra, ICML 2021).

Public API:

* :class:`UnICORNN` -- the stacked layer, with the interface of :class:`torch.nn.LSTM`.
* :func:`unicornn_scan` -- one layer's recurrence on an already projected input, with selectable backends.
* :func:`dropout_over_time` -- variational dropout with one mask per sequence and unit.
"""

from .modules import UnICORNN, dropout_over_time
from .ops import BACKENDS, backend_available, unicornn_scan

__version__ = "0.1.0"

__all__ = ["BACKENDS", "UnICORNN", "backend_available", "dropout_over_time", "unicornn_scan", "__version__"]
