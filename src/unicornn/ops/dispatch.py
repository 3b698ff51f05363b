"""Backends: the registry of fused kernel pairs and the one function that picks a backend.

* ``"reference"`` -- :func:`unicornn.ops.reference.scan_reference`, a PyTorch loop under autograd; any device
  and floating dtype. Slow; the ground truth.
* ``"cpu"`` -- numba kernels (:mod:`unicornn.ops.cpu`), CPU tensors.
* ``"triton"`` -- Triton kernels (:mod:`unicornn.ops.triton`), CUDA tensors (CPU tensors under Triton's
  interpreter); they compute in float32 and take no float64.

A fused backend is a kernel pair registered with :func:`register_kernels` together with the devices and
input dtypes it takes. Its module is imported on first use, so a missing optional dependency only disables
that backend. :func:`resolve_backend` owns every rule about which backend runs what.

The kernel contract (argument order, dtypes, results) is spelled out by
:func:`unicornn.ops.reference.scan_forward_loop` and :func:`unicornn.ops.reference.scan_backward_loop`,
which are registered here as the ``"loop"`` kernels: the fused op's plumbing is tested with them
independently of any compiled kernel.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from typing import NamedTuple

import torch

from .reference import scan_backward_loop, scan_forward_loop

__all__ = [
    "BACKENDS",
    "backend_available",
    "check_backend",
    "get_kernels",
    "register_kernels",
    "resolve_backend",
]

#: Names accepted by ``backend=``.
BACKENDS = ("auto", "reference", "cpu", "triton")

# Fused backends: kernel-pair name -> module that registers it when imported.
_KERNEL_MODULES = {"cpu": "unicornn.ops.cpu", "triton": "unicornn.ops.triton"}

_FLOATS = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


class Kernels(NamedTuple):
    """A registered kernel pair and what it takes; optionally the pair that projects the input itself."""

    forward: Callable
    backward: Callable
    devices: tuple[str, ...]
    dtypes: tuple[torch.dtype, ...]
    projected: tuple[Callable, Callable] | None = None
    max_projected_width: Callable[[int], int] = lambda M: 0


_KERNELS: dict[str, Kernels] = {}
_IMPORT_ERRORS: dict[str, str] = {}
_WARNED: set[str] = set()


def register_kernels(
    name: str,
    forward: Callable,
    backward: Callable,
    *,
    devices: tuple[str, ...],
    dtypes: tuple[torch.dtype, ...] = _FLOATS,
    projected: tuple[Callable, Callable] | None = None,
    max_projected_width: Callable[[int], int] | None = None,
) -> None:
    """Register a fused kernel pair under ``name``.

    ``forward(x, weight_hh, c, dt, alpha, y0, z0, bias=None) -> (y, y_N, z_N)`` and
    ``backward(grad_y, grad_yN, grad_zN, y, x, weight_hh, c, dt, alpha, y0, z_N, bias=None)
    -> (grad_x, grad_weight_hh, grad_s, grad_y0, grad_z0, grad_bias)`` with the semantics of
    :func:`~unicornn.ops.reference.scan_forward_loop` / :func:`~unicornn.ops.reference.scan_backward_loop`
    (``grad_s``: gradient with respect to ``s = dt * sigmoid(c)``, summed over the batch; ``grad_bias``
    (M,): ``grad_x`` summed over steps and batch, returned whether or not ``bias`` is given). ``bias`` (M,)
    or None is added to every ``x_n`` as it is read; ``grad_y`` may be None (no upstream gradient of the
    sequence: taken as zeros and not read). ``x``/``y``/``grad_y``/``grad_x`` have ``x``'s dtype (possibly
    fp16/bf16); every other tensor has the compute dtype (float32, or float64 for float64 input). Outputs
    must be new tensors. ``devices``: device types the kernels run on; ``dtypes``: dtypes of ``x`` they take.

    ``projected``, optional: a pair that takes the layer's input ``u`` (N, B, d) and the projection
    ``weight_ih`` (M, d) in place of ``x = u weight_ih^T`` and computes ``x`` as it goes, for inputs at most
    ``max_projected_width(M)`` wide: ``forward(u, weight_ih, weight_hh, c, dt, alpha, y0, z0, bias=None)
    -> (y, y_N, z_N)`` and ``backward(grad_y, grad_yN, grad_zN, y, u, weight_ih, weight_hh, c, dt, alpha, y0,
    z_N, bias=None, grad_x=False) -> (grad_x or None, grad_weight_ih, grad_weight_hh, grad_s, grad_y0,
    grad_z0, grad_bias)``; ``grad_x`` (N, B, M) only when asked for, ``grad_weight_ih`` (M, d) in the
    compute dtype, the rest as above with ``u`` in the place of ``x``.
    """
    widest = (
        max_projected_width if projected is not None and max_projected_width is not None else (lambda M: 0)
    )
    _KERNELS[name] = Kernels(forward, backward, tuple(devices), tuple(dtypes), projected, widest)


def _loop_forward(x, weight_hh, c, dt, alpha, y0, z0, bias=None):
    y, yN, zN = scan_forward_loop(x.to(y0.dtype), weight_hh, c, dt, alpha, y0, z0, bias)
    return y.to(x.dtype), yN, zN


def _loop_backward(grad_y, grad_yN, grad_zN, y, x, weight_hh, c, dt, alpha, y0, zN, bias=None):
    cd = y0.dtype
    grad_y = None if grad_y is None else grad_y.to(cd)
    gx, gw, gs, gy0, gz0 = scan_backward_loop(
        grad_y, grad_yN, grad_zN, y.to(cd), x.to(cd), weight_hh, c, dt, alpha, y0, zN, bias
    )
    return gx.to(x.dtype), gw, gs, gy0, gz0, gx.sum((0, 1))


def _loop_projected_forward(u, weight_ih, weight_hh, c, dt, alpha, y0, z0, bias=None):
    y, yN, zN = _loop_forward(torch.nn.functional.linear(u.to(y0.dtype), weight_ih), weight_hh, c, dt, alpha,
                              y0, z0, bias)  # fmt: skip
    return y.to(u.dtype), yN, zN


def _loop_projected_backward(
    grad_y, grad_yN, grad_zN, y, u, weight_ih, weight_hh, c, dt, alpha, y0, zN, bias=None, grad_x=False
):
    u_c = u.to(y0.dtype)
    x = torch.nn.functional.linear(u_c, weight_ih)
    gx, *rest = _loop_backward(grad_y, grad_yN, grad_zN, y, x, weight_hh, c, dt, alpha, y0, zN, bias)
    grad_weight_ih = gx.flatten(0, 1).T @ u_c.flatten(0, 1)
    return (gx.to(u.dtype) if grad_x else None), grad_weight_ih, *rest


register_kernels(
    "loop",
    _loop_forward,
    _loop_backward,
    devices=("cpu", "cuda"),
    projected=(_loop_projected_forward, _loop_projected_backward),
    max_projected_width=lambda M: 1 << 30,
)


def get_kernels(name: str) -> Kernels:
    """The kernel pair registered under ``name``, importing its module on first use."""
    if name not in _KERNELS and name in _KERNEL_MODULES:
        importlib.import_module(_KERNEL_MODULES[name])
    try:
        return _KERNELS[name]
    except KeyError:
        raise ValueError(f"no fused kernels registered under {name!r}") from None


def backend_available(name: str) -> bool:
    """True if backend ``name`` can run here (its optional dependencies import)."""
    if name == "reference" or name in _KERNELS:
        return True
    if name not in _KERNEL_MODULES or name in _IMPORT_ERRORS:
        return False
    try:
        get_kernels(name)
    except ImportError as err:  # missing optional dependency
        _IMPORT_ERRORS[name] = str(err)
        return False
    return True


def check_backend(backend) -> str:
    """Validate a ``backend=`` name (not its availability): one of :data:`BACKENDS`."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def _fits(name: str, device: torch.device, dtype: torch.dtype) -> bool:
    k = _KERNELS[name]
    return device.type in k.devices and dtype in k.dtypes


def resolve_backend(backend: str, device: torch.device, dtype: torch.dtype) -> str:
    """Map ``backend`` (possibly ``"auto"``) to the backend that runs input of ``dtype`` on ``device``.

    ``"auto"``: Triton for CUDA tensors of float32/float16/bfloat16 (float64, or Triton missing: the
    reference loop, with a one-time warning when Triton is missing), the numba kernels for CPU tensors (the
    reference loop without numba), the reference loop elsewhere. An explicit backend that cannot run here, or
    cannot take this device or dtype, is a clear error naming what would work.
    """
    check_backend(backend)
    device = torch.device(device)
    if backend == "reference":
        return backend
    if backend != "auto":
        if not backend_available(backend):
            raise RuntimeError(
                f"backend {backend!r} is not available: {_IMPORT_ERRORS.get(backend, 'unknown reason')}"
            )
        k = _KERNELS[backend]
        if dtype not in k.dtypes:
            raise TypeError(
                f"backend {backend!r} does not take {dtype} input (it takes {', '.join(map(str, k.dtypes))}); "
                f"use backend='reference' (any device) or backend='cpu' (CPU tensors) for float64"
            )
        if device.type not in k.devices:
            hint = (
                ", or TRITON_INTERPRET=1 set before importing triton to run its interpreter on CPU"
                if backend == "triton"
                else ""
            )
            raise RuntimeError(
                f"backend {backend!r} needs {' or '.join(k.devices)} tensors{hint}; got {device}"
            )
        return backend
    if device.type == "cuda":
        if not backend_available("triton"):
            if "cuda" not in _WARNED:
                _WARNED.add("cuda")
                warnings.warn(
                    "unicornn: Triton is not importable, so CUDA tensors use the slow reference loop. "
                    "Install the fused GPU backend with `pip install triton`.",
                    RuntimeWarning,
                    stacklevel=3,
                )
            return "reference"
        return "triton" if _fits("triton", device, dtype) else "reference"
    if device.type == "cpu" and backend_available("cpu") and _fits("cpu", device, dtype):
        return "cpu"
    return "reference"
