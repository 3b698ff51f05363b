"""Readable pure-PyTorch implementations of the UnICORNN recurrence: the ground truth.

Two things live here:

* :func:`scan_reference` -- the recurrence as a plain time loop, differentiated by autograd. Every other
  backend is tested against it.
* :func:`scan_forward_loop` / :func:`scan_backward_loop` -- the forward pass and the hand-written backward
  recursion of the paper's Appendix B (eq. 3-5) with ``z`` rebuilt by the inverse (eq. 7) from the stored
  outputs ``y``. They spell out, step by step, exactly what the fused CPU and Triton kernels compute, so a
  kernel author reads these two functions and nothing else.

Semantics, per hidden unit (all units independent), ``s = dt * sigmoid(c)``::

    z_n = z_{n-1} - s * (tanh(w * y_{n-1} + x_n) + alpha * y_{n-1})
    y_n = y_{n-1} + s * z_n                                   n = 1..N

The tanh sees the input ``x_n`` of the *same* step (paper eq. 5, eq. 7, Appendix B and the authors' kernel;
eq. 6 of the paper prints ``y^{l-1}_{n-1}``, which we read as a typo).
"""

from __future__ import annotations

import torch

__all__ = ["scan_reference", "scan_forward_loop", "scan_backward_loop", "step_sizes"]


def step_sizes(c: torch.Tensor, dt: float) -> torch.Tensor:
    """Effective per-unit time steps ``dt * sigmoid(c)``, shape of ``c``."""
    return dt * torch.sigmoid(c)


def scan_reference(x, weight_hh, c, dt, alpha, y0, z0):
    """Run the recurrence with a PyTorch loop; autograd provides every gradient.

    Args:
        x: (N, B, M) projected input of the layer.
        weight_hh, c: (M,) per-unit frequency weight and time-step parameter.
        dt, alpha: floats.
        y0, z0: (B, M) initial states.

    Returns:
        y (N, B, M) = y_1..y_N, y_N (B, M), z_N (B, M).
    """
    s = step_sizes(c, dt)
    y, z = y0, z0
    ys = []
    for x_n in x.unbind(0):  # unbind: one backward node for all steps (x[n] would cost O(N) per step)
        z = z - s * (torch.tanh(weight_hh * y + x_n) + alpha * y)
        y = y + s * z
        ys.append(y)
    if not ys:
        return x.new_zeros(x.shape), y, z
    return torch.stack(ys), y, z


@torch.no_grad()
def scan_forward_loop(x, weight_hh, c, y0, z0, dt, alpha):
    """Forward pass in the fused-kernel convention (no autograd).

    Same arguments as :func:`scan_reference`; every tensor already has the compute dtype.
    Returns y (N, B, M), y_N (B, M), z_N (B, M).
    """
    s = step_sizes(c, dt)
    y = torch.empty_like(x)
    yn, zn = y0.clone(), z0.clone()
    for n in range(x.shape[0]):
        zn = zn - s * (torch.tanh(weight_hh * yn + x[n]) + alpha * yn)
        yn = yn + s * zn
        y[n] = yn
    return y, yn, zn


@torch.no_grad()
def scan_backward_loop(grad_y, grad_yN, grad_zN, x, y, weight_hh, c, y0, zN, dt, alpha):
    """Backward recursion of Appendix B, reading the stored ``y`` and rebuilding ``z`` by inversion.

    Args:
        grad_y: (N, B, M) upstream gradient of the output sequence.
        grad_yN, grad_zN: (B, M) upstream gradients of the final state.
        x: (N, B, M) input; y: (N, B, M) stored outputs y_1..y_N.
        weight_hh, c: (M,); y0: (B, M) initial y; zN: (B, M) final z.

    Returns:
        grad_x (N, B, M), grad_weight_hh (M,), grad_c (M,), grad_y0 (B, M), grad_z0 (B, M).

    Walking n = N..1 with adjoints ``gy = dL/dy_n`` and ``gz = dL/dz_n``::

        g     = gz + s * gy                 # z_n reaches the loss directly and through y_n = y_{n-1} + s z_n
        ds   += gy * z_n - g * (tanh(a_n) + alpha * y_{n-1})
        gx_n  = -g * s * (1 - tanh(a_n)^2)  # a_n = w * y_{n-1} + x_n
        gw   += gx_n * y_{n-1}
        gy    = gy + gx_n * w - g * s * alpha + grad_y[n-1]
        gz    = g
        z_{n-1} = z_n + s * (tanh(a_n) + alpha * y_{n-1})     # inverse, paper eq. 7

    and finally ``grad_c = sum_b ds * dt * sigmoid'(c)``. The sums over the batch are taken once at the end
    (deterministic).
    """
    sig = torch.sigmoid(c)
    s = dt * sig
    N = x.shape[0]
    grad_x = torch.empty_like(x)
    gy = grad_yN.clone()
    gz = grad_zN.clone()
    gw = torch.zeros_like(y0)
    ds = torch.zeros_like(y0)
    z = zN.clone()
    for n in range(N - 1, -1, -1):
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
    grad_c = ds.sum(0) * dt * sig * (1.0 - sig)
    return grad_x, gw.sum(0), grad_c, gy, gz
