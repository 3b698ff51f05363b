"""The reference recurrence against an independent NumPy implementation, and its mathematical properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import INPUTS, make_inputs

from unicornn import unicornn_scan
from unicornn.ops.reference import scan_backward_loop, scan_forward_loop, scan_reference
from unicornn.ops.scan import fused_scan


def tensors(N, B, M, seed=0, dtype=torch.float64, requires_grad=False, states=True):
    """(x, w, c, y0, z0) of :func:`helpers.make_inputs`, optionally as leaves requiring gradients."""
    inp = make_inputs(N, B, M, seed=seed, dtype=dtype, states=states)
    return [None if inp[k] is None else inp[k].requires_grad_(requires_grad) for k in INPUTS]


def numpy_scan(x, w, c, dt, alpha, y0, z0):
    """Independent float64 implementation, written unit by unit from the paper's eq. (5)-(6)."""
    N, B, M = x.shape
    y_out = np.zeros((N, B, M))
    yN = np.zeros((B, M))
    zN = np.zeros((B, M))
    for b in range(B):
        for j in range(M):
            s = dt * 0.5 * (1.0 + math.tanh(c[j] / 2.0))  # sigma_hat(u) = 0.5 + 0.5 tanh(u/2)
            y, z = y0[b, j], z0[b, j]
            for n in range(N):
                z = z - s * (math.tanh(w[j] * y + x[n, b, j]) + alpha * y)
                y = y + s * z
                y_out[n, b, j] = y
            yN[b, j], zN[b, j] = y, z
    return y_out, yN, zN


@pytest.mark.parametrize("N,B,M", [(1, 1, 1), (17, 3, 5), (60, 2, 7)])
@pytest.mark.parametrize("dt,alpha", [(0.19, 30.65), (1.0, 0.0), (0.034, 2.5)])
def test_scan_matches_numpy(N, B, M, dt, alpha):
    x, w, c, y0, z0 = tensors(N, B, M, seed=N * 31 + M)
    y, yN, zN = unicornn_scan(x, w, c, dt, alpha, y0, z0, backend="reference")
    ny, nyN, nzN = numpy_scan(*(t.numpy() for t in (x, w, c)), dt, alpha, y0.numpy(), z0.numpy())
    np.testing.assert_allclose(y.numpy(), ny, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(yN.numpy(), nyN, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(zN.numpy(), nzN, rtol=1e-12, atol=1e-12)


def test_zero_initial_state_is_default():
    x, w, c, _, _ = tensors(9, 2, 3, states=False)
    zeros = torch.zeros(2, 3, dtype=torch.float64)
    a = unicornn_scan(x, w, c, 0.3, 1.0, backend="reference")
    b = unicornn_scan(x, w, c, 0.3, 1.0, zeros, zeros, backend="reference")
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_gradcheck_reference():
    inputs = tensors(12, 2, 3, seed=1, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, w, c, y0, z0: unicornn_scan(x, w, c, 0.4, 3.0, y0, z0, backend="reference"), inputs
    )


def test_gradcheck_fused_op_with_loop_kernels():
    """The custom op's autograd formula (Appendix B backward with z rebuilt by inversion) is exact."""
    inputs = tensors(15, 3, 4, seed=2, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, w, c, y0, z0: fused_scan(x, w, c, 0.3, 5.0, y0, z0, "loop"), inputs
    )


def test_backward_loop_matches_autograd():
    """The hand-written backward (the fused-kernel contract) gives autograd's gradients; its step-size
    gradient, with respect to s = dt * sigmoid(c), times ds/dc is autograd's gradient of c."""
    dt, alpha = 0.25, 4.0
    x, w, c, y0, z0 = tensors(40, 3, 5, seed=3, requires_grad=True)
    y, yN, zN = scan_reference(x, w, c, dt, alpha, y0, z0)
    g = [torch.randn_like(t) for t in (y, yN, zN)]
    auto = torch.autograd.grad(sum((a * b).sum() for a, b in zip((y, yN, zN), g)), [x, w, c, y0, z0])
    x, w, c, y0, z0 = (t.detach() for t in (x, w, c, y0, z0))
    fy, fyN, fzN = scan_forward_loop(x, w, c, dt, alpha, y0, z0)
    for a, b in zip((fy, fyN, fzN), (y, yN, zN)):
        assert torch.equal(a, b.detach())  # one loop for both
    gx, gw, gs, gy0, gz0 = scan_backward_loop(*g, fy, x, w, c, dt, alpha, y0, fzN)
    assert gs.shape == c.shape
    sig = torch.sigmoid(c)
    manual = (gx, gw, gs * dt * sig * (1 - sig), gy0, gz0)
    for a, m in zip(auto, manual, strict=True):
        torch.testing.assert_close(m, a, rtol=1e-10, atol=1e-12)


def test_inverse_rebuilds_states_from_final_state():
    """Paper eq. (7): y_0..y_N rebuilt backward from (y_N, z_N) to 1e-10 in float64 at N=1000."""
    N, B, M, dt, alpha = 1000, 4, 16, 0.19, 30.65
    x, w, c, y0, z0 = tensors(N, B, M, seed=4)
    y, yN, zN = unicornn_scan(x, w, c, dt, alpha, y0, z0, backend="reference")
    s = dt * torch.sigmoid(c)
    ys = torch.cat([y0[None], y])  # y_0..y_N
    yb, zb = yN.clone(), zN.clone()
    for n in range(N, 0, -1):
        y_prev = yb - s * zb
        zb = zb + s * (torch.tanh(w * y_prev + x[n - 1]) + alpha * y_prev)
        yb = y_prev
        assert float((yb - ys[n - 1]).abs().max()) < 1e-10, f"step {n}"
    assert float((zb - z0).abs().max()) < 1e-10


@pytest.mark.parametrize("alpha", [0.5, 2.0, 9.0])
def test_hidden_state_bound_of_proposition_c1(alpha):
    """|y_n| <= sqrt(2/alpha (1 + 2 beta t_n)), |z_n| <= sqrt(2 (1 + 2 beta t_n)), beta = max(1+2a, 4a^2)."""
    N, B, M, dt = 3000, 8, 32, 0.01
    g = torch.Generator().manual_seed(int(alpha * 10))
    x = 3.0 * torch.randn(N, B, M, generator=g, dtype=torch.float64)
    w = 4.0 * torch.rand(M, generator=g, dtype=torch.float64) - 2.0
    c = 4.0 * torch.randn(M, generator=g, dtype=torch.float64)
    y, _, _ = unicornn_scan(x, w, c, dt, alpha, backend="reference")
    s = dt * torch.sigmoid(c)
    zs = (y - torch.cat([torch.zeros_like(y[:1]), y[:-1]])) / s  # z_n = (y_n - y_{n-1}) / s
    beta = max(1 + 2 * alpha, 4 * alpha**2)
    t = dt * torch.arange(1, N + 1, dtype=torch.float64)
    y_bound = torch.sqrt(2.0 / alpha * (1 + 2 * beta * t))
    z_bound = torch.sqrt(2.0 * (1 + 2 * beta * t))
    assert bool((y.abs().amax(dim=(1, 2)) <= y_bound).all())
    assert bool((zs.abs().amax(dim=(1, 2)) <= z_bound).all())
    # The bound is not vacuous: the states do move.
    assert float(y.abs().max()) > 1e-3 * float(y_bound[0])


def test_low_precision_input_computed_in_float32():
    x, w, c, y0, z0 = tensors(30, 2, 4, dtype=torch.float32, seed=5)
    ref, _, _ = unicornn_scan(
        x.double(), w.double(), c.double(), 0.2, 1.0, y0.double(), z0.double(), backend="reference"
    )
    for dtype in (torch.bfloat16, torch.float16):
        y, yN, zN = unicornn_scan(x.to(dtype), w, c, 0.2, 1.0, y0, z0, backend="reference")
        assert y.dtype == dtype and yN.dtype == torch.float32 and zN.dtype == torch.float32
        assert float((y.double() - ref).norm() / ref.norm()) < 2e-2


def test_empty_sequence_returns_initial_state():
    x, w, c, y0, z0 = tensors(0, 2, 3)
    for backend in ("reference", "auto"):
        y, yN, zN = unicornn_scan(x, w, c, 0.2, 1.0, y0, z0, backend=backend)
        assert y.shape == (0, 2, 3)
        torch.testing.assert_close(yN, y0)
        torch.testing.assert_close(zN, z0)
