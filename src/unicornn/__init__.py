"""UnICORNN: undamped independent controlled oscillatory recurrent networks (Rusch & Mishra, ICML 2021)."""

from .ops import BACKENDS, backend_available, unicornn_scan

__version__ = "0.1.0"

__all__ = ["BACKENDS", "backend_available", "unicornn_scan", "__version__"]
