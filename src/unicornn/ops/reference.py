"""Readable pure-PyTorch implementations of the UnICORNN recurrence: the ground truth.

* :func:`scan_reference` -- the recurrence as a plain time loop, differentiated by autograd. Every other
  backend is tested against it.
* :func:`scan_forward_loop` -- the same loop without autograd: the forward half of the fused-kernel contract.
* :func:`scan_backward_loop` -- the hand-written backward recursion of the paper's Appendix B (eq. 3-5) with
  ``z`` rebuilt by the inverse (eq. 7) from the stored outputs ``y``: the backward half of the contract.

A kernel author reads :func:`step`, :func:`scan_forward_loop` and :func:`scan_backward_loop` and nothing else.
Every function takes the recurrence's arguments in one order, that of :func:`unicornn.unicornn_scan`:
``(x, weight_hh, c, dt, alpha, y0, z0, bias)``; the backward takes the upstream gradients and the stored
output first and the final ``z_N`` in the place of ``z0``. ``bias`` (M,) or None is the projection's bias:
the recurrence sees ``x_n + bias`` (the fused kernels add it as they read ``x``, so the projection is a plain
matmul and ``x + bias`` is never written to memory).

Semantics, per hidden unit (all units independent), ``s = dt * sigmoid(c)``::

    z_n = z_{n-1} - s * (tanh(w * y_{n-1} + x_n) + alpha * y_{n-1})
    y_n = y_{n-1} + s * z_n                                   n = 1..N

The tanh sees the input ``x_n`` of the *same* step (paper eq. 5, eq. 7, Appendix B and the authors' kernel;
eq. 6 of the paper prints ``y^{l-1}_{n-1}``, which we read as a typo).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["scan_reference", "scan_forward_loop", "scan_backward_loop", "step", "step_sizes"]


def step_sizes(c: Tensor, dt: float) -> Tensor:
    """Effective per-unit time steps ``s = dt * sigmoid(c)``, shape of ``c``."""
    return dt * torch.sigmoid(c)


def step(
    x_n: Tensor, y: Tensor, z: Tensor, weight_hh: Tensor, s: Tensor, alpha: float
) -> tuple[Tensor, Tensor]:
    """One step of the recurrence: ``(y_{n-1}, z_{n-1}) -> (y_n, z_n)``; x_n, y, z (B, M), weight_hh, s (M,)."""
    z = z - s * (torch.tanh(weight_hh * y + x_n) + alpha * y)
    return y + s * z, z


def scan_reference(x, weight_hh, c, dt, alpha, y0, z0, bias=None):
    """Run the recurrence with a PyTorch loop; autograd provides every gradient.

    Args:
        x: (N, B, M) projected input of the layer.
        weight_hh, c: (M,) per-unit frequency weight and time-step parameter.
        dt, alpha: floats.
        y0, z0: (B, M) initial states.
        bias: (M,) added to every ``x_n``, or None.

    Returns:
        y (N, B, M) = y_1..y_N, y_N (B, M), z_N (B, M).
    """
    if bias is not None:
        x = x + bias
    s = step_sizes(c, dt)
    y, z = y0, z0
    ys = []
    for x_n in x.unbind(0):  # unbind: one backward node for all steps (x[n] would cost O(N) per step)
        y, z = step(x_n, y, z, weight_hh, s, alpha)
        ys.append(y)
    if not ys:
        return x.new_zeros(x.shape), y.clone(), z.clone()
    return torch.stack(ys), y, z


@torch.no_grad()
def scan_forward_loop(x, weight_hh, c, dt, alpha, y0, z0, bias=None):
    """Forward half of the fused-kernel contract: :func:`scan_reference` without autograd.

    Same arguments and results; every tensor already has the compute dtype.
    """
    return scan_reference(x, weight_hh, c, dt, alpha, y0, z0, bias)


@torch.no_grad()
def scan_backward_loop(grad_y, grad_yN, grad_zN, y, x, weight_hh, c, dt, alpha, y0, zN, bias=None):
    """Backward half of the contract: Appendix B, reading the stored ``y`` and rebuilding ``z`` by inversion.

    Args:
        grad_y: (N, B, M) upstream gradient of the output sequence, or None when the sequence reaches the
            loss only through the final state (the fused kernels then do not read it).
        grad_yN, grad_zN: (B, M) upstream gradients of the final state.
        y: (N, B, M) stored outputs y_1..y_N.
        x, weight_hh, c, dt, alpha, y0, bias: as in the forward pass; zN: (B, M) final z (in the place of
            ``z0``).

    Returns:
        grad_x (N, B, M), grad_weight_hh (M,), grad_s (M,), grad_y0 (B, M), grad_z0 (B, M), where
        ``grad_s`` is the gradient with respect to the step size ``s = dt * sigmoid(c)``, summed over the
        batch. The chain rule to ``c`` is applied once, by the autograd formula of the fused op. The
        gradient of ``bias`` is ``grad_x`` summed over steps and batch; the fused kernels return it as a
        sixth result, accumulated as they write ``grad_x``.

    Walking n = N..1 with adjoints ``gy = dL/dy_n`` and ``gz = dL/dz_n``::

        g     = gz + s * gy                 # z_n reaches the loss directly and through y_n = y_{n-1} + s z_n
        ds   += gy * z_n - g * (tanh(a_n) + alpha * y_{n-1})
        gx_n  = -g * s * (1 - tanh(a_n)^2)  # a_n = w * y_{n-1} + x_n
        gw   += gx_n * y_{n-1}
        gy    = gy + gx_n * w - g * s * alpha + grad_y[n-1]
        gz    = g
        z_{n-1} = z_n + s * (tanh(a_n) + alpha * y_{n-1})     # inverse, paper eq. 7

    The sums over the batch are taken once at the end (deterministic).
    """
    if bias is not None:
        x = x + bias
    s = step_sizes(c, dt)
    N = x.shape[0]
    grad_x = torch.empty_like(x)
    gy = grad_yN.clone()
    gz = grad_zN.clone()
    gw = torch.zeros_like(y0)
    ds = torch.zeros_like(y0)
    z = zN.clone()
    for n in range(N - 1, -1, -1):
        if grad_y is not None:
            gy = gy + grad_y[n]
        y_prev = y[n - 1] if n > 0 else y0
        th = torch.tanh(weight_hh * y_prev + x[n])
        force = th + alpha * y_prev
        g = gz + s * gy
        ds += gy * z - g * force
        gx = -g * s * (1.0 - th * th)
        grad_x[n] = gx
        gw += gx * y_prev
        gy = gy + gx * weight_hh - g * s * alpha
        gz = g
        z = z + s * force
    return grad_x, gw.sum(0), ds.sum(0), gy, gz
