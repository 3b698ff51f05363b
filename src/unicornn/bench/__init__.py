"""Benchmarks of the paper's efficiency claims and of inference, measured side by side in one process.

* :mod:`unicornn.bench.speed` -- forward+backward time against sequence length, UnICORNN (fused backend)
  against LSTM, GRU, coRNN, IndRNN and optional peers (the paper's Fig. 2).
* :mod:`unicornn.bench.memory` -- peak training memory against sequence length, UnICORNN standard and lean
  against an LSTM (the paper's Sec. 2.3).
* :mod:`unicornn.bench.streaming` -- per-step latency of :meth:`unicornn.UnICORNN.step` against stacks of
  ``nn.LSTMCell``/``nn.GRUCell``, and chunked streaming throughput.
* :mod:`unicornn.bench.deployment` -- an exported ONNX model on onnxruntime against the package's kernel.

Each returns a result dict and writes a text table and JSON (speed and memory also a PNG;
:func:`unicornn.plotting.write_outputs`).
"""

from .common import machine_info
from .memory import run_memory
from .speed import run_speed
from .streaming import run_streaming

__all__ = ["machine_info", "run_memory", "run_speed", "run_streaming"]
