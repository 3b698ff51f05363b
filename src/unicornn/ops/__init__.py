"""The UnICORNN recurrence: one function, several backends.

* :mod:`unicornn.ops.reference` -- the readable ground truth and the fused-kernel contract.
* :mod:`unicornn.ops.dispatch` -- the registry of fused kernel pairs and the backend rules.
* :mod:`unicornn.ops.scan` -- the custom op, its autograd formula and the public :func:`unicornn_scan`.
* :mod:`unicornn.ops.cpu`, :mod:`unicornn.ops.triton` -- the fused kernels (imported on first use).
"""

from .dispatch import BACKENDS, backend_available, register_kernels, resolve_backend
from .reference import scan_backward_loop, scan_forward_loop, scan_reference, step, step_sizes
from .scan import unicornn_scan, unicornn_scan_projected

__all__ = [
    "BACKENDS",
    "backend_available",
    "register_kernels",
    "resolve_backend",
    "unicornn_scan",
    "unicornn_scan_projected",
    "scan_reference",
    "scan_forward_loop",
    "scan_backward_loop",
    "step",
    "step_sizes",
]
