"""``unicornn_scan``: one public entry point for the recurrence, several backends.

Backends:

* ``"reference"`` -- :func:`unicornn.ops.reference.scan_reference`, a PyTorch time loop differentiated by
  autograd. Slow; the ground truth.
* fused backends (``"cpu"``, ``"triton"``) -- a pair of kernels (forward, backward) behind one
  ``torch.library`` custom op, ``unicornn::scan``, whose autograd formula calls ``unicornn::scan_backward``.
  The op saves only ``x``, the output ``y``, the parameters, ``y0`` and the final ``z_N``; the backward
  rebuilds ``z`` by inversion (paper eq. 7) while reading the stored ``y``. Because it is a registered
  custom op, ``torch.compile`` captures it as one node.

A kernel pair is registered under a name with :func:`register_kernels`; the fused backends live in their own
modules (imported on first use, so a missing optional dependency only disables that backend). The kernel
contract is spelled out by :func:`unicornn.ops.reference.scan_forward_loop` and
:func:`unicornn.ops.reference.scan_backward_loop`, which are also registered here as the ``"loop"`` kernels:
the fused op's plumbing is tested with them independently of any compiled kernel.
"""

from __future__ import annotations

import importlib
import numbers
import warnings
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from .reference import scan_backward_loop, scan_forward_loop, scan_reference

__all__ = [
    "BACKENDS",
    "unicornn_scan",
    "resolve_backend",
    "backend_available",
    "register_kernels",
]

#: Names accepted by ``backend=``.
BACKENDS = ("auto", "reference", "cpu", "triton")

# Fused backends: kernel-pair name -> module that registers it when imported.
_KERNEL_MODULES = {"cpu": "unicornn.ops.cpu", "triton": "unicornn.ops.triton"}


class _Kernels(NamedTuple):
    forward: Callable
    backward: Callable


_KERNELS: dict[str, _Kernels] = {}
_IMPORT_ERRORS: dict[str, str] = {}
_WARNED: set[str] = set()


def register_kernels(name: str, forward: Callable, backward: Callable) -> None:
    """Register a fused kernel pair under ``name``.

    ``forward(x, weight_hh, c, y0, z0, dt, alpha) -> (y, y_N, z_N)`` and
    ``backward(grad_y, grad_yN, grad_zN, x, y, weight_hh, c, y0, z_N, dt, alpha)
    -> (grad_x, grad_weight_hh, grad_c, grad_y0, grad_z0)`` with the semantics of
    :func:`~unicornn.ops.reference.scan_forward_loop` / :func:`~unicornn.ops.reference.scan_backward_loop`.
    ``x``/``y``/``grad_y``/``grad_x`` have ``x``'s dtype (possibly fp16/bf16); every other tensor has the
    compute dtype (float32, or float64 for float64 input). Outputs must be new tensors.
    """
    _KERNELS[name] = _Kernels(forward, backward)


def _loop_forward(x, weight_hh, c, y0, z0, dt, alpha):
    y, yN, zN = scan_forward_loop(x.to(y0.dtype), weight_hh, c, y0, z0, dt, alpha)
    return y.to(x.dtype), yN, zN


def _loop_backward(grad_y, grad_yN, grad_zN, x, y, weight_hh, c, y0, zN, dt, alpha):
    cd = y0.dtype
    gx, gw, gc, gy0, gz0 = scan_backward_loop(
        grad_y.to(cd), grad_yN, grad_zN, x.to(cd), y.to(cd), weight_hh, c, y0, zN, dt, alpha
    )
    return gx.to(x.dtype), gw, gc, gy0, gz0


register_kernels("loop", _loop_forward, _loop_backward)


def _get_kernels(name: str) -> _Kernels:
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
    if name not in _KERNEL_MODULES:
        return False
    if name in _IMPORT_ERRORS:
        return False
    try:
        _get_kernels(name)
    except ImportError as err:  # missing optional dependency
        _IMPORT_ERRORS[name] = str(err)
        return False
    return True


def resolve_backend(backend: str, device: torch.device) -> str:
    """Map ``backend`` (possibly ``"auto"``) to a concrete backend name for tensors on ``device``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "auto":
        if not backend_available(backend):
            raise RuntimeError(
                f"backend {backend!r} is not available: {_IMPORT_ERRORS.get(backend, 'unknown reason')}"
            )
        return backend
    if device.type == "cuda":
        if backend_available("triton"):
            return "triton"
        if "cuda" not in _WARNED:
            _WARNED.add("cuda")
            warnings.warn(
                "unicornn: Triton is not importable, so CUDA tensors use the slow reference loop. "
                "Install the fused GPU backend with `pip install triton`.",
                RuntimeWarning,
                stacklevel=3,
            )
        return "reference"
    if device.type == "cpu" and backend_available("cpu"):
        return "cpu"
    return "reference"


# --------------------------------------------------------------------------------------------------
# The custom op and its autograd formula
# --------------------------------------------------------------------------------------------------


@torch.library.custom_op("unicornn::scan", mutates_args=())
def _scan_op(
    x: Tensor, weight_hh: Tensor, c: Tensor, y0: Tensor, z0: Tensor, dt: float, alpha: float, kernels: str
) -> tuple[Tensor, Tensor, Tensor]:
    return _get_kernels(kernels).forward(x, weight_hh, c, y0, z0, dt, alpha)


@_scan_op.register_fake
def _(x, weight_hh, c, y0, z0, dt, alpha, kernels):
    return torch.empty_like(x), torch.empty_like(y0), torch.empty_like(z0)


@torch.library.custom_op("unicornn::scan_backward", mutates_args=())
def _scan_backward_op(
    grad_y: Tensor,
    grad_yN: Tensor,
    grad_zN: Tensor,
    x: Tensor,
    y: Tensor,
    weight_hh: Tensor,
    c: Tensor,
    y0: Tensor,
    zN: Tensor,
    dt: float,
    alpha: float,
    kernels: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return _get_kernels(kernels).backward(grad_y, grad_yN, grad_zN, x, y, weight_hh, c, y0, zN, dt, alpha)


@_scan_backward_op.register_fake
def _(grad_y, grad_yN, grad_zN, x, y, weight_hh, c, y0, zN, dt, alpha, kernels):
    return (
        torch.empty_like(x),
        torch.empty_like(weight_hh),
        torch.empty_like(c),
        torch.empty_like(y0),
        torch.empty_like(y0),
    )


def _setup_context(ctx, inputs, output):
    x, weight_hh, c, y0, _z0, dt, alpha, kernels = inputs
    y, _yN, zN = output
    ctx.save_for_backward(x, y, weight_hh, c, y0, zN)
    ctx.dt, ctx.alpha, ctx.kernels = dt, alpha, kernels


def _backward(ctx, grad_y, grad_yN, grad_zN):
    x, y, weight_hh, c, y0, zN = ctx.saved_tensors
    grad_y = torch.zeros_like(y) if grad_y is None else grad_y.to(y.dtype).contiguous()
    grad_yN = torch.zeros_like(y0) if grad_yN is None else grad_yN.to(y0.dtype).contiguous()
    grad_zN = torch.zeros_like(zN) if grad_zN is None else grad_zN.to(zN.dtype).contiguous()
    gx, gw, gc, gy0, gz0 = _scan_backward_op(
        grad_y, grad_yN, grad_zN, x, y, weight_hh, c, y0, zN, ctx.dt, ctx.alpha, ctx.kernels
    )
    return gx, gw, gc, gy0, gz0, None, None, None


torch.library.register_autograd("unicornn::scan", _backward, setup_context=_setup_context)


# --------------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------------


def _check_float(name: str, value, low: float, high: float | None, low_open: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    v = float(value)
    ok_low = v > low if low_open else v >= low
    ok_high = high is None or v <= high
    if not (ok_low and ok_high):
        lo = "(" if low_open else "["
        hi = f"{high}]" if high is not None else "inf)"
        raise ValueError(f"{name} must be in {lo}{low}, {hi}, got {value}")
    return v


def check_dt(dt, name: str = "dt") -> float:
    """Validate a nominal time step: a real number in (0, 1]."""
    return _check_float(name, dt, 0.0, 1.0, low_open=True)


def check_alpha(alpha, name: str = "alpha") -> float:
    """Validate the restoring-force coefficient: a real number >= 0."""
    return _check_float(name, alpha, 0.0, None, low_open=False)


def _check_state(name: str, state: Tensor | None, B: int, M: int, x: Tensor) -> None:
    if state is None:
        return
    if not isinstance(state, Tensor):
        raise TypeError(f"{name} must be a Tensor of shape ({B}, {M}) or None, got {type(state).__name__}")
    if tuple(state.shape) != (B, M):
        raise ValueError(f"{name} must have shape (B, M) = ({B}, {M}), got {tuple(state.shape)}")
    if state.device != x.device:
        raise ValueError(f"{name} is on {state.device} but x is on {x.device}")


def unicornn_scan(
    x: Tensor,
    weight_hh: Tensor,
    c: Tensor,
    dt: float,
    alpha: float,
    y0: Tensor | None = None,
    z0: Tensor | None = None,
    backend: str = "auto",
) -> tuple[Tensor, Tensor, Tensor]:
    """Run one UnICORNN layer's recurrence over a whole sequence.

    Args:
        x: (N, B, M) time-major, already projected input ``V u_n + b`` of the layer.
        weight_hh: (M,) per-unit frequency weights ``w``.
        c: (M,) time-step parameters; the effective step is ``dt * sigmoid(c)``.
        dt: nominal time step in (0, 1].
        alpha: restoring-force coefficient, >= 0.
        y0, z0: (B, M) initial states, or None for zeros.
        backend: ``"auto"`` (fastest available for x's device), ``"reference"``, ``"cpu"`` or ``"triton"``.

    Returns:
        ``(y, y_N, z_N)``: y (N, B, M) holds y_1..y_N; y_N and z_N are (B, M). Differentiable in x,
        weight_hh, c, y0 and z0. float16/bfloat16 inputs are computed in float32: y has x's dtype, the final
        states stay in float32 (so that carrying them loses nothing).
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a Tensor, got {type(x).__name__}")
    if x.dim() != 3:
        raise ValueError(f"x must be 3-D (N, B, M), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
    N, B, M = x.shape
    for name, p in (("weight_hh", weight_hh), ("c", c)):
        if not isinstance(p, Tensor):
            raise TypeError(f"{name} must be a Tensor of shape ({M},), got {type(p).__name__}")
        if tuple(p.shape) != (M,):
            raise ValueError(f"{name} must have shape (M,) = ({M},), got {tuple(p.shape)}")
        if p.device != x.device:
            raise ValueError(f"{name} is on {p.device} but x is on {x.device}")
    _check_state("y0", y0, B, M, x)
    _check_state("z0", z0, B, M, x)
    dt = check_dt(dt)
    alpha = check_alpha(alpha)
    name = resolve_backend(backend, x.device)

    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    weight_hh = weight_hh.to(compute)
    c = c.to(compute)
    y0 = x.new_zeros((B, M), dtype=compute) if y0 is None else y0.to(compute)
    z0 = x.new_zeros((B, M), dtype=compute) if z0 is None else z0.to(compute)

    if name == "reference":
        y, yN, zN = scan_reference(x.to(compute), weight_hh, c, dt, alpha, y0, z0)
        return y.to(x.dtype), yN, zN
    if N == 0:
        return x.new_zeros(x.shape), y0.clone(), z0.clone()
    return _scan_op(x.contiguous(), weight_hh, c, y0.contiguous(), z0.contiguous(), dt, alpha, name)


def _fused_scan(x, weight_hh, c, y0, z0, dt, alpha, kernels: str):
    """The custom op with an explicit kernel pair (``"loop"`` included); no validation. For tests."""
    return _scan_op(x, weight_hh, c, y0, z0, dt, alpha, kernels)
