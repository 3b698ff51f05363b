"""Benchmarks of the paper's efficiency claims, measured side by side in one process.

* :mod:`unicornn.bench.speed` -- forward+backward time against sequence length, UnICORNN (fused backend)
  against LSTM, GRU, coRNN, IndRNN and optional peers (the paper's Fig. 2).
* :mod:`unicornn.bench.memory` -- peak training memory against sequence length, UnICORNN standard and lean
  against an LSTM (the paper's Sec. 2.3).

Each returns a result dict and writes a text table, JSON and a PNG (:func:`unicornn.plotting.write_outputs`).
"""

from .common import machine_info
from .memory import run_memory
from .speed import run_speed

__all__ = ["machine_info", "run_memory", "run_speed"]
