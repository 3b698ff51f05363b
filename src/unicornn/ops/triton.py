"""Fused GPU backend (``backend="triton"``): the UnICORNN recurrence as two Triton kernels.

The kernels compute exactly what :func:`unicornn.ops.reference.scan_forward_loop` and
:func:`unicornn.ops.reference.scan_backward_loop` spell out; importing this module registers them as the
``"triton"`` kernel pair of the ``unicornn::scan`` custom op (:mod:`unicornn.ops.scan`), which provides
autograd and ``torch.compile`` capture. The accuracy contract the kernels meet is ``docs/accuracy.md``; the
design notes and measurements are in ``docs/backends.md`` and ``docs/performance.md``.

Design:

* **Parallelism.** The ``B * M`` units (batch x hidden) are independent. ``x`` (N, B, M) is contiguous, so
  unit ``i = b * M + m`` of step ``n`` sits at ``n * B * M + i``: one program owns a block of consecutive
  units and walks the N steps inside the kernel, so every step's loads and stores are coalesced along M.
  The block is at most 256 units and shrinks (down to one warp, 32 units) until there are about four
  programs per streaming multiprocessor; ``num_warps`` gives one unit per thread.
* **Latency.** A unit's steps form a dependent chain, so memory latency, not bandwidth, would bound a
  step-by-step loop. The kernels walk time in chunks of 4 steps and issue the loads of the next chunk
  (forward: 4 of ``x``; backward: 4 each of ``x``, ``grad_y`` and the stored ``y``) before computing the
  current one: several loads per unit are in flight while the arithmetic runs. The ``N mod 4`` leftover
  steps run one at a time (forward: first; backward: last, before step 0, which reads ``y0``).
* **Backward.** Reads the stored outputs ``y`` and rebuilds only ``z`` by the inverse (paper eq. 7) from
  the final ``z_N``; nothing per step is stored besides ``grad_x``. Without an upstream gradient of the
  sequence (only the final state reaches the loss) a second compilation (``HAS_GY=False``) skips its loads.
* **Bias.** The projection's bias (M,) is added to ``x_n`` in registers, and its gradient is accumulated
  per unit alongside ``grad_w``: the projection before the scan is a plain matmul.
* **Deterministic reductions.** ``grad_weight_hh``, ``grad_s`` (the gradient with respect to the step
  size ``s``; the op's autograd formula turns it into ``grad_c``) and ``grad_bias`` are sums over the batch. Each unit
  accumulates its own partial sums over time in registers, the kernel writes them as (B, M) float32
  tensors, and ``torch.sum(0)`` finishes. No atomics: results are bitwise reproducible run to run, and the
  extra traffic (three B x M tensors) is negligible next to the N x B x M streams.
* **Precision.** ``x``, ``y``, ``grad_y`` and ``grad_x`` may be float32, float16 or bfloat16; every
  computation and every state (``y_N``, ``z_N``, gradients of parameters and initial states) is float32.
  float64 input is refused (by :func:`unicornn.ops.dispatch.resolve_backend` for ``unicornn_scan``).
  ``tanh`` is built from ``exp`` (an odd polynomial for ``|a| < 0.55``, ``1 - 2t / (1 + t)`` with
  ``t = e^{-2|a|}`` beyond): at most 2.7 x 2^-24 relative error under the interpreter (rms near torch's);
  on GPUs ``exp`` uses the hardware's approximate ``ex2``, which may add about an ulp. The same code runs
  in both places.
* **Layout.** Non-contiguous tensors are copied (``Tensor.contiguous``, a no-op for contiguous ones);
  :func:`unicornn.unicornn_scan` already hands the op a contiguous ``x``.
* **Streams.** Kernels launch on the current CUDA stream of the tensors' device.
* **Without a GPU.** With ``TRITON_INTERPRET=1`` set before this module is imported, Triton's interpreter
  runs the same kernels on CPU tensors (slowly); that is how the tests run without a GPU.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except Exception as err:  # ImportError, or a broken installation
    raise ImportError(f"backend 'triton' needs the triton package (pip install triton): {err}") from err

from .dispatch import register_kernels

__all__ = ["scan_forward", "scan_backward", "launch_config", "INTERPRETED"]

_IO_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_MAX_BLOCK = 256
_MIN_BLOCK = 32


@triton.jit
def _tanh(a):
    # float32 tanh from exp only (libdevice's tanh does not run under the interpreter).
    b = tl.abs(a)
    # |a| >= 0.55: tanh = 1 - 2t / (1 + t) with t = exp(-2|a|) <= 0.333; the rounding errors of the
    # quotient (<= 0.5) shrink in the final subtraction, which halves the rms error of (1 - t) / (1 + t).
    # Correctly rounded division: the default `/` is the 2-ulp approximate one on GPUs.
    t = tl.exp(-2.0 * b)
    large = 1.0 - tl.math.div_rn(2.0 * t, 1.0 + t)
    # |a| < 0.55: tanh(b) = b + b^3 P(b^2), P fitted for relative error (about 1 ulp in float32).
    u = b * b
    p = -0.006356495855058666
    p = p * u + 0.021127241403722356
    p = p * u - 0.05386507907154046
    p = p * u + 0.1333269968199417
    p = p * u - 0.33333320607613104
    small = b + b * u * p
    r = tl.where(b < 0.55, small, large)
    return tl.where(a < 0.0, -r, r)


@triton.jit
def _fwd_step(xv, b, yv, zv, w, s, alpha):
    # One forward step (float32), the input x_n + b: returns y_n, z_n.
    th = _tanh(w * yv + (xv + b))
    zv = zv - s * (th + alpha * yv)
    yv = yv + s * zv
    return yv, zv


@triton.jit
def _bwd_step(xv, b, gv, yp, gy, gz, z, gw, ds, gb, w, s, alpha):
    # One backward step n (float32), yp = y_{n-1}; z = z_n becomes z_{n-1} by the inverse (eq. 7).
    # Returns grad_x_n and the updated (gy, gz, z, gw, ds, gb).
    gy = gy + gv
    th = _tanh(w * yp + (xv + b))
    force = th + alpha * yp
    g = gz + s * gy
    ds += gy * z - g * force
    gx = -g * s * (1.0 - th * th)
    gw += gx * yp
    gb += gx
    gy = gy + gx * w - g * s * alpha
    z = z + s * force
    return gx, gy, g, z, gw, ds, gb


@triton.jit
def _load_f32(p, mask, ENABLED: tl.constexpr, BLOCK: tl.constexpr):
    # tl.load(p) as float32, or zeros without reading when ENABLED is false (no upstream gradient).
    if ENABLED:
        v = tl.load(p, mask=mask, other=0.0).to(tl.float32)
    else:
        v = tl.zeros([BLOCK], dtype=tl.float32)
    return v


@triton.jit
def _scan_fwd_kernel(
    x_ptr,  # (N, B, M) input, io dtype
    y_ptr,  # (N, B, M) output y_1..y_N, io dtype
    w_ptr,  # (M,) float32
    s_ptr,  # (M,) float32, dt * sigmoid(c)
    b_ptr,  # (M,) float32 bias added to every x_n
    y0_ptr,  # (B, M) float32
    z0_ptr,
    yN_ptr,  # (B, M) float32 outputs
    zN_ptr,
    N,
    BM,
    M,
    alpha,
    BLOCK: tl.constexpr,
):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < BM
    m = offs % M
    w = tl.load(w_ptr + m, mask=mask, other=0.0)
    s = tl.load(s_ptr + m, mask=mask, other=0.0)
    b = tl.load(b_ptr + m, mask=mask, other=0.0)
    yv = tl.load(y0_ptr + offs, mask=mask, other=0.0)
    zv = tl.load(z0_ptr + offs, mask=mask, other=0.0)
    out_ty = y_ptr.dtype.element_ty
    # Pointers to the current step; they advance by BM per step (64-bit addresses: no int32 overflow).
    x_p = x_ptr + offs
    y_p = y_ptr + offs
    # Head: the first N % 4 steps one at a time.
    Q = N // 4
    for _ in range(N - 4 * Q):
        yv, zv = _fwd_step(tl.load(x_p, mask=mask, other=0.0).to(tl.float32), b, yv, zv, w, s, alpha)
        tl.store(y_p, yv.to(out_ty), mask=mask)
        x_p += BM
        y_p += BM
    # Body: chunks of 4 steps; the 4 inputs of the next chunk are loaded before the current chunk is
    # computed, so several loads per unit are in flight while the dependent arithmetic runs. (Step
    # conditions enter masks through a scalar bound: the interpreter mistypes `vector & scalar_bool`.)
    live = offs < tl.where(Q > 0, BM, 0)
    x0 = tl.load(x_p, mask=live, other=0.0)
    x1 = tl.load(x_p + BM, mask=live, other=0.0)
    x2 = tl.load(x_p + 2 * BM, mask=live, other=0.0)
    x3 = tl.load(x_p + 3 * BM, mask=live, other=0.0)
    for q in range(Q):
        x_p += 4 * BM
        live = offs < tl.where(q + 1 < Q, BM, 0)
        n0 = tl.load(x_p, mask=live, other=0.0)
        n1 = tl.load(x_p + BM, mask=live, other=0.0)
        n2 = tl.load(x_p + 2 * BM, mask=live, other=0.0)
        n3 = tl.load(x_p + 3 * BM, mask=live, other=0.0)
        yv, zv = _fwd_step(x0.to(tl.float32), b, yv, zv, w, s, alpha)
        tl.store(y_p, yv.to(out_ty), mask=mask)
        yv, zv = _fwd_step(x1.to(tl.float32), b, yv, zv, w, s, alpha)
        tl.store(y_p + BM, yv.to(out_ty), mask=mask)
        yv, zv = _fwd_step(x2.to(tl.float32), b, yv, zv, w, s, alpha)
        tl.store(y_p + 2 * BM, yv.to(out_ty), mask=mask)
        yv, zv = _fwd_step(x3.to(tl.float32), b, yv, zv, w, s, alpha)
        tl.store(y_p + 3 * BM, yv.to(out_ty), mask=mask)
        y_p += 4 * BM
        x0, x1, x2, x3 = n0, n1, n2, n3
    tl.store(yN_ptr + offs, yv, mask=mask)
    tl.store(zN_ptr + offs, zv, mask=mask)


@triton.jit
def _scan_bwd_kernel(
    gy_ptr,  # (N, B, M) upstream gradient of y_1..y_N, io dtype (not read without HAS_GY)
    gyN_ptr,  # (B, M) float32 upstream gradients of y_N, z_N
    gzN_ptr,
    x_ptr,  # (N, B, M) io dtype
    y_ptr,  # (N, B, M) stored outputs, io dtype
    w_ptr,  # (M,) float32
    s_ptr,  # (M,) float32
    b_ptr,  # (M,) float32 bias
    y0_ptr,  # (B, M) float32
    zN_ptr,  # (B, M) float32 final z
    gx_ptr,  # (N, B, M) out, io dtype
    gw_ptr,  # (B, M) out float32: per-unit partial sums of grad w
    ds_ptr,  # (B, M) out float32: per-unit partial sums of dL/ds
    gb_ptr,  # (B, M) out float32: per-unit partial sums of dL/dbias
    gy0_ptr,  # (B, M) out float32
    gz0_ptr,
    N,
    BM,
    last,  # (N - 1) * BM, passed from the host (may need 64 bits)
    M,
    alpha,
    HAS_GY: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < BM
    m = offs % M
    w = tl.load(w_ptr + m, mask=mask, other=0.0)
    s = tl.load(s_ptr + m, mask=mask, other=0.0)
    b = tl.load(b_ptr + m, mask=mask, other=0.0)
    gy = tl.load(gyN_ptr + offs, mask=mask, other=0.0)
    gz = tl.load(gzN_ptr + offs, mask=mask, other=0.0)
    z = tl.load(zN_ptr + offs, mask=mask, other=0.0)
    gw = tl.zeros([BLOCK], dtype=tl.float32)
    ds = tl.zeros([BLOCK], dtype=tl.float32)
    gb = tl.zeros([BLOCK], dtype=tl.float32)
    out_ty = gx_ptr.dtype.element_ty
    # Pointers to the current step n (walking N - 1 down to 0); yp_p points at y_{n-1}, stored 0-based at
    # y[n - 1]. Steps N-1..1 read y_{n-1} from the stored outputs, step 0 uses y0.
    x_p = x_ptr + last + offs
    g_p = gy_ptr + last + offs
    gx_p = gx_ptr + last + offs
    yp_p = y_ptr + last + offs - BM
    # Body: steps N-1 .. N-4Q in chunks of 4; the 12 loads of the next chunk are issued before the
    # current chunk is computed.
    Q = (N - 1) // 4
    live = offs < tl.where(Q > 0, BM, 0)
    x0 = tl.load(x_p, mask=live, other=0.0)
    x1 = tl.load(x_p - BM, mask=live, other=0.0)
    x2 = tl.load(x_p - 2 * BM, mask=live, other=0.0)
    x3 = tl.load(x_p - 3 * BM, mask=live, other=0.0)
    g0 = _load_f32(g_p, live, HAS_GY, BLOCK)
    g1 = _load_f32(g_p - BM, live, HAS_GY, BLOCK)
    g2 = _load_f32(g_p - 2 * BM, live, HAS_GY, BLOCK)
    g3 = _load_f32(g_p - 3 * BM, live, HAS_GY, BLOCK)
    y0_ = tl.load(yp_p, mask=live, other=0.0)
    y1_ = tl.load(yp_p - BM, mask=live, other=0.0)
    y2_ = tl.load(yp_p - 2 * BM, mask=live, other=0.0)
    y3_ = tl.load(yp_p - 3 * BM, mask=live, other=0.0)
    for q in range(Q):
        x_p -= 4 * BM
        g_p -= 4 * BM
        yp_p -= 4 * BM
        live = offs < tl.where(q + 1 < Q, BM, 0)
        nx0 = tl.load(x_p, mask=live, other=0.0)
        nx1 = tl.load(x_p - BM, mask=live, other=0.0)
        nx2 = tl.load(x_p - 2 * BM, mask=live, other=0.0)
        nx3 = tl.load(x_p - 3 * BM, mask=live, other=0.0)
        ng0 = _load_f32(g_p, live, HAS_GY, BLOCK)
        ng1 = _load_f32(g_p - BM, live, HAS_GY, BLOCK)
        ng2 = _load_f32(g_p - 2 * BM, live, HAS_GY, BLOCK)
        ng3 = _load_f32(g_p - 3 * BM, live, HAS_GY, BLOCK)
        ny0 = tl.load(yp_p, mask=live, other=0.0)
        ny1 = tl.load(yp_p - BM, mask=live, other=0.0)
        ny2 = tl.load(yp_p - 2 * BM, mask=live, other=0.0)
        ny3 = tl.load(yp_p - 3 * BM, mask=live, other=0.0)
        gx, gy, gz, z, gw, ds, gb = _bwd_step(
            x0.to(tl.float32), b, g0, y0_.to(tl.float32), gy, gz, z, gw, ds, gb, w, s, alpha
        )
        tl.store(gx_p, gx.to(out_ty), mask=mask)
        gx, gy, gz, z, gw, ds, gb = _bwd_step(
            x1.to(tl.float32), b, g1, y1_.to(tl.float32), gy, gz, z, gw, ds, gb, w, s, alpha
        )
        tl.store(gx_p - BM, gx.to(out_ty), mask=mask)
        gx, gy, gz, z, gw, ds, gb = _bwd_step(
            x2.to(tl.float32), b, g2, y2_.to(tl.float32), gy, gz, z, gw, ds, gb, w, s, alpha
        )
        tl.store(gx_p - 2 * BM, gx.to(out_ty), mask=mask)
        gx, gy, gz, z, gw, ds, gb = _bwd_step(
            x3.to(tl.float32), b, g3, y3_.to(tl.float32), gy, gz, z, gw, ds, gb, w, s, alpha
        )
        tl.store(gx_p - 3 * BM, gx.to(out_ty), mask=mask)
        gx_p -= 4 * BM
        x0, x1, x2, x3 = nx0, nx1, nx2, nx3
        g0, g1, g2, g3 = ng0, ng1, ng2, ng3
        y0_, y1_, y2_, y3_ = ny0, ny1, ny2, ny3
    # Tail: the remaining (N - 1) % 4 steps down to step 1, one at a time.
    for _ in range(N - 1 - 4 * Q):
        gx, gy, gz, z, gw, ds, gb = _bwd_step(
            tl.load(x_p, mask=mask, other=0.0).to(tl.float32),
            b,
            _load_f32(g_p, mask, HAS_GY, BLOCK),
            tl.load(yp_p, mask=mask, other=0.0).to(tl.float32),
            gy,
            gz,
            z,
            gw,
            ds,
            gb,
            w,
            s,
            alpha,
        )
        tl.store(gx_p, gx.to(out_ty), mask=mask)
        x_p -= BM
        g_p -= BM
        yp_p -= BM
        gx_p -= BM
    # Step 0: y_{-1} is the initial state y0.
    gx, gy, gz, z, gw, ds, gb = _bwd_step(
        tl.load(x_p, mask=mask, other=0.0).to(tl.float32),
        b,
        _load_f32(g_p, mask, HAS_GY, BLOCK),
        tl.load(y0_ptr + offs, mask=mask, other=0.0),
        gy,
        gz,
        z,
        gw,
        ds,
        gb,
        w,
        s,
        alpha,
    )
    tl.store(gx_p, gx.to(out_ty), mask=mask)
    tl.store(gw_ptr + offs, gw, mask=mask)
    tl.store(ds_ptr + offs, ds, mask=mask)
    tl.store(gb_ptr + offs, gb, mask=mask)
    tl.store(gy0_ptr + offs, gy, mask=mask)
    tl.store(gz0_ptr + offs, gz, mask=mask)


#: True when Triton's interpreter runs the kernels (``TRITON_INTERPRET=1`` was set before import).
INTERPRETED = type(_scan_fwd_kernel).__name__ == "InterpretedFunction"


def launch_config(units: int, device: torch.device) -> tuple[int, int]:
    """Default ``(block, num_warps)`` for ``units = B * M`` independent units on ``device``.

    On CUDA: blocks of up to 256 units, halved (down to 32) until there are about four programs per
    streaming multiprocessor, one unit per thread. Under the interpreter (CPU tensors), whose cost is per
    program and step rather than per unit: the fewest programs, blocks of up to 256 units.
    """
    if device.type != "cuda":
        return min(_MAX_BLOCK, max(_MIN_BLOCK, triton.next_power_of_2(units))), 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    block = _MAX_BLOCK
    while block > _MIN_BLOCK and triton.cdiv(units, block) < 4 * sms:
        block //= 2
    return block, max(1, block // 32)


def _check(tensors: dict[str, Tensor], io: tuple[str, ...]) -> torch.device:
    """The kernels' preconditions, for direct callers (``unicornn_scan`` has chosen device and dtype already
    through :func:`unicornn.ops.dispatch.resolve_backend` and converted the rest): a launch with the wrong
    device or dtypes would read memory wrongly rather than fail."""
    x = tensors[io[0]]
    device = x.device
    if device.type != "cuda" and not INTERPRETED:
        raise RuntimeError(
            f"backend 'triton' needs CUDA tensors, or TRITON_INTERPRET=1 to run the interpreter on CPU "
            f"(set before importing unicornn.ops.triton); got tensors on {device}"
        )
    if x.dtype not in _IO_DTYPES:
        raise TypeError(f"backend 'triton' takes float32, float16 or bfloat16 x, got {x.dtype}")
    for name, t in tensors.items():
        if t.device != device:
            raise ValueError(f"{name} is on {t.device} but {io[0]} is on {device}")
        want = x.dtype if name in io else torch.float32
        if t.dtype != want:
            raise TypeError(f"backend 'triton' expects {name} of dtype {want}, got {t.dtype}")
    if x.shape[1] * x.shape[2] >= 2**29:  # in-kernel offsets up to 4 * B * M are int32
        raise ValueError(f"B * M must be < 2**29 for backend 'triton', got shape {tuple(x.shape)}")
    return device


def _device_ctx(device: torch.device):
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def scan_forward(
    x: Tensor,
    weight_hh: Tensor,
    c: Tensor,
    dt: float,
    alpha: float,
    y0: Tensor,
    z0: Tensor,
    bias: Tensor | None = None,
    *,
    block: int | None = None,
    num_warps: int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Fused forward pass.

    Args:
        x: (N, B, M) float32/float16/bfloat16. weight_hh, c: (M,) float32. dt, alpha: floats.
        y0, z0: (B, M) float32. bias: (M,) float32 added to every x_n, or None.
        block, num_warps: launch configuration (default: :func:`launch_config`).

    Returns:
        y (N, B, M) in x's dtype, y_N (B, M) and z_N (B, M) in float32.
    """
    bias = torch.zeros_like(weight_hh) if bias is None else bias
    device = _check({"x": x, "weight_hh": weight_hh, "c": c, "y0": y0, "z0": z0, "bias": bias}, ("x",))
    N, B, M = x.shape
    x, y0, z0, bias = x.contiguous(), y0.contiguous(), z0.contiguous(), bias.contiguous()
    w = weight_hh.contiguous()
    s = (float(dt) * torch.sigmoid(c)).contiguous()
    y = torch.empty_like(x)
    yN = torch.empty_like(y0)
    zN = torch.empty_like(z0)
    if N == 0:
        yN.copy_(y0)
        zN.copy_(z0)
        return y, yN, zN
    units = B * M
    if units == 0:
        return y, yN, zN
    dflt_block, dflt_warps = launch_config(units, device)
    block = block or dflt_block
    num_warps = num_warps or dflt_warps
    grid = (triton.cdiv(units, block),)
    with _device_ctx(device):
        _scan_fwd_kernel[grid](
            x, y, w, s, bias, y0, z0, yN, zN, N, units, M, float(alpha), BLOCK=block, num_warps=num_warps
        )
    return y, yN, zN


def scan_backward(
    grad_y: Tensor,
    grad_yN: Tensor,
    grad_zN: Tensor,
    y: Tensor,
    x: Tensor,
    weight_hh: Tensor,
    c: Tensor,
    dt: float,
    alpha: float,
    y0: Tensor,
    zN: Tensor,
    bias: Tensor | None = None,
    *,
    block: int | None = None,
    num_warps: int | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Fused backward pass (paper Appendix B), ``z`` rebuilt by inversion from ``z_N`` and the stored ``y``.

    Args:
        grad_y, y, x: (N, B, M) in x's dtype (grad_y None: zeros, not read). grad_yN, grad_zN, y0, zN:
        (B, M) float32. weight_hh, c, bias: (M,) float32 (bias may be None). dt, alpha: floats.
        block, num_warps: launch configuration.

    Returns:
        grad_x (N, B, M) in x's dtype; grad_weight_hh, grad_s (M,) (gradient w.r.t. ``s = dt * sigmoid(c)``,
        summed over the batch), grad_y0, grad_z0 (B, M) and grad_bias (M,) (grad_x summed over steps and
        batch) in float32.
    """
    has_gy = grad_y is not None
    grad_y = grad_y if has_gy else y  # a valid pointer the kernel does not read
    bias = torch.zeros_like(weight_hh) if bias is None else bias
    device = _check(
        {
            "grad_y": grad_y,
            "bias": bias,
            "x": x,
            "y": y,
            "grad_yN": grad_yN,
            "grad_zN": grad_zN,
            "weight_hh": weight_hh,
            "c": c,
            "y0": y0,
            "zN": zN,
        },
        ("x", "grad_y", "y"),
    )
    N, B, M = x.shape
    grad_y, x, y = grad_y.contiguous(), x.contiguous(), y.contiguous()
    grad_yN, grad_zN, y0, zN = grad_yN.contiguous(), grad_zN.contiguous(), y0.contiguous(), zN.contiguous()
    w, bias = weight_hh.contiguous(), bias.contiguous()
    s = (float(dt) * torch.sigmoid(c)).contiguous()
    grad_x = torch.empty_like(x)
    units = B * M
    if N == 0 or units == 0:
        zero = torch.zeros_like(w)
        return grad_x, zero, zero.clone(), grad_yN.clone(), grad_zN.clone(), zero.clone()
    parts = torch.empty((3, B, M), dtype=torch.float32, device=device)  # per unit: dL/dw, dL/ds, dL/dbias
    grad_y0 = torch.empty_like(y0)
    grad_z0 = torch.empty_like(y0)
    dflt_block, dflt_warps = launch_config(units, device)
    block = block or dflt_block
    num_warps = num_warps or dflt_warps
    grid = (triton.cdiv(units, block),)
    with _device_ctx(device):
        _scan_bwd_kernel[grid](
            grad_y,
            grad_yN,
            grad_zN,
            x,
            y,
            w,
            s,
            bias,
            y0,
            zN,
            grad_x,
            parts[0],
            parts[1],
            parts[2],
            grad_y0,
            grad_z0,
            N,
            units,
            (N - 1) * units,
            M,
            float(alpha),
            HAS_GY=has_gy,
            BLOCK=block,
            num_warps=num_warps,
        )
    grad_w, grad_s, grad_b = (part.sum(0) for part in parts)  # separate tensors: outputs may not alias
    return grad_x, grad_w, grad_s, grad_y0, grad_z0, grad_b


register_kernels(
    "triton",
    scan_forward,
    scan_backward,
    devices=("cuda", "cpu") if INTERPRETED else ("cuda",),
    dtypes=_IO_DTYPES,
)
