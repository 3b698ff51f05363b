"""The UnICORNN recurrence: one function, several backends."""

from .autograd import BACKENDS, backend_available, register_kernels, resolve_backend, unicornn_scan
from .reference import scan_backward_loop, scan_forward_loop, scan_reference, step_sizes

__all__ = [
    "BACKENDS",
    "backend_available",
    "register_kernels",
    "resolve_backend",
    "unicornn_scan",
    "scan_reference",
    "scan_forward_loop",
    "scan_backward_loop",
    "step_sizes",
]
