"""The fused Triton backend against the readable reference.

On a machine with CUDA the kernels run on the GPU; without one, ``tests/conftest.py`` sets
``TRITON_INTERPRET=1`` and Triton's interpreter runs the very same kernels on CPU tensors. The interpreter
costs milliseconds per program and step, so sequences here are short and shapes odd.

Tolerances: every float32 path (the reference loop in float32 and the kernels) is compared with the float64
reference on the same inputs, as the relative error ``||a - ref|| / ||ref||`` of whole tensors. The kernels
may differ from float32 autograd only by rounding (fused multiply-adds, the exp-based tanh, the order of
the final batch sums), so their error must stay within a small multiple of float32 autograd's own error,
plus a few float32 ulps (``FLOOR``) for the short sequences where both errors are at rounding level.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

from unicornn import UnICORNN, unicornn_scan  # noqa: E402
from unicornn.ops import autograd as ag  # noqa: E402
from unicornn.ops import triton as tk  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
if DEVICE.type == "cpu" and not tk.INTERPRETED:
    pytest.skip("no CUDA device and TRITON_INTERPRET=1 was not set before import", allow_module_level=True)

F64 = torch.float64
FLOOR = 3e-7  # about five float32 ulps of an O(1) quantity

# (N, B, M, dt, alpha): odd batch and width. B * M = 210 spans several programs on a GPU; under the
# interpreter one program takes it (test_block_size_does_not_change_results splits it explicitly).
SHAPES = [
    (7, 3, 5, 0.19, 30.65),
    (23, 3, 70, 0.5, 0.0),
    (11, 2, 33, 1.0, 2.0),
    (1, 1, 1, 0.3, 1.0),
]


def rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return ((a.to(F64) - ref).norm() / ref.norm().clamp_min(1e-300)).item()


def make_inputs(N, B, M, seed, state=True):
    """Fresh float64 inputs on DEVICE: x, w, c, y0, z0 and upstream gradients of y, y_N, z_N."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=F64).to(DEVICE)

    x = randn(N, B, M)
    w = torch.rand(M, generator=g, dtype=F64).to(DEVICE)
    c = ((torch.rand(M, generator=g, dtype=F64) - 0.5) * 0.2).to(DEVICE)
    y0 = randn(B, M) if state else None
    z0 = randn(B, M) if state else None
    grads = (randn(N, B, M), randn(B, M), randn(B, M))
    return (x, w, c, y0, z0), grads


def run_scan(backend, dtype, inputs, grads, dt, alpha):
    """Forward and backward through ``unicornn_scan``; returns outputs then gradients of the inputs."""
    leaves = [None if t is None else t.detach().to(dtype).requires_grad_() for t in inputs]
    x, w, c, y0, z0 = leaves
    y, yN, zN = unicornn_scan(x, w, c, dt, alpha, y0, z0, backend=backend)
    gy, gyN, gzN = grads
    loss = (y.to(F64) * gy).sum() + (yN.to(F64) * gyN).sum() + (zN.to(F64) * gzN).sum()
    loss.backward()
    outs = [y.detach(), yN.detach(), zN.detach()]
    return outs + [None if t is None else t.grad for t in leaves]


NAMES = ["y", "y_N", "z_N", "grad_x", "grad_w", "grad_c", "grad_y0", "grad_z0"]


# --------------------------------------------------------------------------------------------------
# Accuracy against the float64 reference
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("state", [True, False])
@pytest.mark.parametrize("N,B,M,dt,alpha", SHAPES)
def test_forward_and_every_gradient_match_reference(N, B, M, dt, alpha, state):
    inputs, grads = make_inputs(N, B, M, seed=N * 1000 + M, state=state)
    ref = run_scan("reference", F64, inputs, grads, dt, alpha)
    r32 = run_scan("reference", torch.float32, inputs, grads, dt, alpha)
    out = run_scan("triton", torch.float32, inputs, grads, dt, alpha)
    for name, a, b, r in zip(NAMES, out, r32, ref, strict=True):
        if r is None:
            assert a is None, name
            continue
        assert a.dtype == torch.float32, name
        assert a.shape == r.shape, name
        err, err32 = rel(a, r), rel(b, r)
        assert err <= 3 * err32 + FLOOR, f"{name}: {err:.3e} vs float32 autograd {err32:.3e}"


def test_numerical_contract_psmnist_parameters():
    """DESIGN.md section 2 at psMNIST's dt and alpha: gradients within 1.5x, output within 2x of float32
    autograd's own error (N shortened for the interpreter; the GPU benchmark checks N=1000 and 17,984)."""
    N, B, M, dt, alpha = 150, 4, 32, 0.19, 30.65
    inputs, grads = make_inputs(N, B, M, seed=7, state=False)
    grads = (grads[0], torch.zeros_like(grads[1]), torch.zeros_like(grads[2]))
    ref = run_scan("reference", F64, inputs, grads, dt, alpha)
    r32 = run_scan("reference", torch.float32, inputs, grads, dt, alpha)
    out = run_scan("triton", torch.float32, inputs, grads, dt, alpha)
    for name, i, factor in (("y", 0, 2.0), ("grad_x", 3, 1.5), ("grad_w", 4, 1.5), ("grad_c", 5, 1.5)):
        err, err32 = rel(out[i], ref[i]), rel(r32[i], ref[i])
        assert err32 > 1e-7, "float32 rounding should be visible at this length"
        assert err <= factor * err32, f"{name}: {err:.3e} vs float32 autograd {err32:.3e}"


@pytest.mark.parametrize("block", [16, 32, 64])
def test_block_size_does_not_change_results(block):
    """Several programs with a partial last block (B*M = 210) give the loop kernels' results, bit for bit
    the same whatever the block."""
    N, B, M, dt, alpha = 9, 3, 70, 0.4, 3.0
    (x, w, c, y0, z0), (gy, gyN, gzN) = make_inputs(N, B, M, seed=block)
    f = [t.float() for t in (x, w, c, y0, z0, gy, gyN, gzN)]
    x, w, c, y0, z0, gy, gyN, gzN = f
    y, yN, zN = tk.scan_forward(x, w, c, y0, z0, dt, alpha, block=block, num_warps=1)
    grads = tk.scan_backward(gy, gyN, gzN, x, y, w, c, y0, zN, dt, alpha, block=block, num_warps=1)
    y_d, yN_d, zN_d = tk.scan_forward(x, w, c, y0, z0, dt, alpha)
    grads_d = tk.scan_backward(gy, gyN, gzN, x, y_d, w, c, y0, zN_d, dt, alpha)
    for a, b in zip((y, yN, zN, *grads), (y_d, yN_d, zN_d, *grads_d), strict=True):
        assert torch.equal(a, b)
    y_l, yN_l, zN_l = ag._loop_forward(x, w, c, y0, z0, dt, alpha)
    grads_l = ag._loop_backward(gy, gyN, gzN, x, y_l, w, c, y0, zN_l, dt, alpha)
    for a, b in zip((y, yN, zN, *grads), (y_l, yN_l, zN_l, *grads_l), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("N", range(1, 11))
def test_every_sequence_length_modulo_the_chunk(N):
    """The kernels walk time in chunks of 4 plus single steps: every N mod 4, with and without a chunk."""
    B, M, dt, alpha = 2, 3, 0.7, 4.0
    (x, w, c, y0, z0), (gy, gyN, gzN) = make_inputs(N, B, M, seed=100 + N)
    x, w, c, y0, z0, gy, gyN, gzN = (t.float() for t in (x, w, c, y0, z0, gy, gyN, gzN))
    y, yN, zN = tk.scan_forward(x, w, c, y0, z0, dt, alpha)
    grads = tk.scan_backward(gy, gyN, gzN, x, y, w, c, y0, zN, dt, alpha)
    y_l, yN_l, zN_l = ag._loop_forward(x, w, c, y0, z0, dt, alpha)
    grads_l = ag._loop_backward(gy, gyN, gzN, x, y_l, w, c, y0, zN_l, dt, alpha)
    for a, b in zip((y, yN, zN, *grads), (y_l, yN_l, zN_l, *grads_l), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_gradients_are_deterministic():
    (x, w, c, y0, z0), (gy, gyN, gzN) = make_inputs(13, 5, 37, seed=3)
    x, w, c, y0, z0, gy, gyN, gzN = (t.float() for t in (x, w, c, y0, z0, gy, gyN, gzN))
    y, yN, zN = tk.scan_forward(x, w, c, y0, z0, 0.2, 1.0)
    first = tk.scan_backward(gy, gyN, gzN, x, y, w, c, y0, zN, 0.2, 1.0)
    second = tk.scan_backward(gy, gyN, gzN, x, y, w, c, y0, zN, 0.2, 1.0)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_tanh_accuracy():
    """The exp-based tanh against float64 tanh: a few float32 ulps, exact limits, NaN propagated."""
    import triton
    import triton.language as tl

    @triton.jit
    def tanh_kernel(a_ptr, o_ptr, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        tl.store(o_ptr + offs, tk._tanh(tl.load(a_ptr + offs, mask=mask)), mask=mask)

    g = torch.Generator().manual_seed(0)
    a = torch.cat(
        [
            torch.linspace(-1.0, 1.0, 2001),
            torch.linspace(0.54, 0.56, 101),  # around the switch between the two formulas
            torch.randn(2000, generator=g) * 4,
            torch.tensor([0.0, -0.0, 1e-30, -1e-30, 1e-8, -3e-5, 9.0, -9.0, 20.0, 88.0, -100.0]),
        ]
    ).to(DEVICE)
    out = torch.empty_like(a)
    tanh_kernel[(triton.cdiv(a.numel(), 1024),)](a, out, a.numel(), BLOCK=1024)
    ref = torch.tanh(a.to(F64))
    err = ((out.to(F64) - ref).abs() / ref.abs().clamp_min(1e-300)).max().item()
    # Interpreter: numpy's exp; GPU: the approximate ex2 instruction (about 2 ulp) inside exp.
    assert err <= (4 if DEVICE.type == "cpu" else 8) * 2.0**-24, err
    special = torch.tensor([float("inf"), -float("inf"), float("nan")], device=DEVICE)
    out = torch.empty_like(special)
    tanh_kernel[(1,)](special, out, 3, BLOCK=4)
    assert out[0].item() == 1.0 and out[1].item() == -1.0 and torch.isnan(out[2])


_AOT_SCRIPT = """
import sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from unicornn.ops import triton as tk

assert not tk.INTERPRETED
arch = int(sys.argv[1])
f32 = "*fp32"
for t in ("*fp32", "*fp16", "*bf16"):
    fwd = dict(x_ptr=t, y_ptr=t, w_ptr=f32, s_ptr=f32, y0_ptr=f32, z0_ptr=f32, yN_ptr=f32, zN_ptr=f32,
               N="i32", BM="i32", M="i32", alpha="fp32", BLOCK="constexpr")
    bwd = dict(gy_ptr=t, gyN_ptr=f32, gzN_ptr=f32, x_ptr=t, y_ptr=t, w_ptr=f32, s_ptr=f32, y0_ptr=f32,
               zN_ptr=f32, gx_ptr=t, gw_ptr=f32, ds_ptr=f32, gy0_ptr=f32, gz0_ptr=f32, N="i32", BM="i32",
               last="i64", M="i32", alpha="fp32", BLOCK="constexpr")
    for fn, sig in ((tk._scan_fwd_kernel, fwd), (tk._scan_bwd_kernel, bwd)):
        k = triton.compile(ASTSource(fn, sig, constexprs={"BLOCK": 128}), target=GPUTarget("cuda", arch, 32),
                           options={"num_warps": 4})
        assert k.asm["cubin"], "no cubin"
print("ok")
"""


@pytest.mark.skipif(DEVICE.type == "cuda", reason="on a GPU every other test compiles the kernels for real")
def test_kernels_compile_for_a_gpu_without_one():
    """The interpreter does not type-check like the compiler: compile both kernels, for float32, float16
    and bfloat16 io, ahead of time to Hopper (sm_90) cubins, which Triton can do without a GPU."""
    import os
    import subprocess

    pytest.importorskip("triton.compiler")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(tk.__file__).parents[2]), env.get("PYTHONPATH", "")])
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    proc = subprocess.run(
        [sys.executable, "-c", _AOT_SCRIPT, "90"], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


# --------------------------------------------------------------------------------------------------
# Half-precision inputs
# --------------------------------------------------------------------------------------------------

HALF_ULP = {torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_matches_loop_kernels(dtype):
    """x, y, grad_y, grad_x in half precision; states, parameters and arithmetic in float32. Against the
    loop kernels on identical inputs (including the stored y), outputs agree to float32 rounding, except
    that a half-precision result may round to the neighbouring value (one half ulp)."""
    N, B, M, dt, alpha = 13, 3, 37, 0.3, 2.0
    (x, w, c, y0, z0), (gy, gyN, gzN) = make_inputs(N, B, M, seed=11)
    xh, gyh = x.to(dtype), gy.to(dtype)
    w, c, y0, z0, gyN, gzN = (t.float() for t in (w, c, y0, z0, gyN, gzN))
    y, yN, zN = tk.scan_forward(xh, w, c, y0, z0, dt, alpha)
    y_l, yN_l, zN_l = ag._loop_forward(xh, w, c, y0, z0, dt, alpha)
    assert y.dtype == dtype and yN.dtype == torch.float32 and zN.dtype == torch.float32
    ulp = HALF_ULP[dtype]
    torch.testing.assert_close(y.float(), y_l.float(), rtol=ulp, atol=ulp * 1e-2)
    torch.testing.assert_close(yN, yN_l, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(zN, zN_l, rtol=1e-5, atol=1e-6)
    grads = tk.scan_backward(gyh, gyN, gzN, xh, y_l, w, c, y0, zN_l, dt, alpha)
    grads_l = ag._loop_backward(gyh, gyN, gzN, xh, y_l, w, c, y0, zN_l, dt, alpha)
    assert grads[0].dtype == dtype and all(g.dtype == torch.float32 for g in grads[1:])
    torch.testing.assert_close(grads[0].float(), grads_l[0].float(), rtol=ulp, atol=ulp * 1e-2)
    for a, b in zip(grads[1:], grads_l[1:], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_through_autograd_against_float64(dtype):
    """End to end: the only loss of accuracy is storing y (and grad_x) in half precision; the float64
    reference sees the same half-rounded inputs."""
    N, B, M, dt, alpha = 17, 3, 21, 0.3, 1.0
    inputs, grads = make_inputs(N, B, M, seed=5)
    x = inputs[0].to(dtype).to(F64)
    inputs = (x, *inputs[1:])
    ref = run_scan("reference", F64, inputs, grads, dt, alpha)
    leaves = [inputs[0].to(dtype).requires_grad_()] + [t.float().requires_grad_() for t in inputs[1:]]
    y, yN, zN = unicornn_scan(leaves[0], *leaves[1:3], dt, alpha, *leaves[3:], backend="triton")
    assert y.dtype == dtype and yN.dtype == torch.float32 and zN.dtype == torch.float32
    loss = (y.to(F64) * grads[0]).sum() + (yN.to(F64) * grads[1]).sum() + (zN.to(F64) * grads[2]).sum()
    loss.backward()
    ulp = HALF_ULP[dtype]
    out = [y, yN, zN] + [t.grad for t in leaves]
    assert out[3].dtype == dtype
    for name, a, r in zip(NAMES, out, ref, strict=True):
        # Half-precision rounding of y feeds the rebuilt z in the backward: a few ulps over these lengths.
        assert rel(a.detach(), r) <= 4 * ulp, name


# --------------------------------------------------------------------------------------------------
# Autograd contract, layouts, compile, module
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_saved_tensors_are_only_inputs_output_and_final_state(dtype):
    N, B, M = 9, 3, 10
    (x, w, c, y0, z0), _ = make_inputs(N, B, M, seed=1)
    x = x.to(dtype).requires_grad_()
    w, c, y0, z0 = (t.float().requires_grad_() for t in (w, c, y0, z0))
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y, yN, zN = unicornn_scan(x, w, c, 0.3, 1.0, y0, z0, backend="triton")
    big = [t for t in saved if t.numel() == N * B * M]
    assert len(big) == 2, [tuple(t.shape) for t in saved]
    assert all(t.dtype == dtype for t in big)
    assert {t.data_ptr() for t in big} == {x.data_ptr(), y.data_ptr()}
    small = {t.data_ptr() for t in saved if t.numel() != N * B * M}
    expected = {w.data_ptr(), c.data_ptr(), y0.data_ptr()}
    assert expected <= small and len(small - expected) == 1  # plus the final z (float32)
    (y.float().sum() + yN.float().sum() + zN.float().sum()).backward()
    assert x.grad is not None and w.grad is not None and z0.grad is not None


def test_non_contiguous_inputs():
    """Strided views (batch-first data seen time-major, every other weight) give the same results."""
    N, B, M = 8, 3, 12
    (x, w, c, y0, z0), _ = make_inputs(N, B, M, seed=2)
    x_bf = x.float().transpose(0, 1).contiguous().transpose(0, 1)  # (N, B, M) view of (B, N, M) storage
    w_wide = torch.stack([w.float(), torch.zeros_like(w.float())], 1)  # w_wide[:, 0] has stride 2
    y0_t = y0.float().t().contiguous().t()
    assert not x_bf.is_contiguous() and not w_wide[:, 0].is_contiguous() and not y0_t.is_contiguous()
    a = unicornn_scan(x_bf, w_wide[:, 0], c.float(), 0.3, 1.0, y0_t, z0.float(), backend="triton")
    b = unicornn_scan(x.float(), w.float(), c.float(), 0.3, 1.0, y0.float(), z0.float(), backend="triton")
    for u, v in zip(a, b, strict=True):
        assert torch.equal(u, v)
    a = tk.scan_forward(x_bf, w_wide[:, 0], c.float(), y0_t, z0.float(), 0.3, 1.0)
    for u, v in zip(a, b, strict=True):
        assert torch.equal(u, v)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_non_finite_inputs_stay_local():
    """inf saturates tanh like the reference; NaN poisons only its own unit; nothing hangs."""
    N, B, M, dt, alpha = 6, 2, 8, 0.5, 1.0
    (x, w, c, _, _), _ = make_inputs(N, B, M, seed=4, state=False)
    x = x.float()
    x[2, 0, 1] = float("inf")
    x[3, 1, 2] = -float("inf")
    x[1, 1, 5] = float("nan")
    y, _, _ = unicornn_scan(x, w.float(), c.float(), dt, alpha, backend="triton")
    r, _, _ = unicornn_scan(x.double(), w, c, dt, alpha, backend="reference")
    assert torch.equal(torch.isnan(y), torch.isnan(r))
    assert torch.isnan(y[1:, 1, 5]).all() and torch.isfinite(y[:, :, :5]).all()
    finite = ~torch.isnan(r)
    torch.testing.assert_close(y[finite].double(), r[finite], rtol=1e-5, atol=1e-6)


def test_torch_compile_captures_the_op():
    """The custom op appears as one node in a full graph (no graph break) and gives eager's results."""
    N, B, M, dt, alpha = 6, 3, 7, 0.3, 2.0
    (x, w, c, y0, z0), _ = make_inputs(N, B, M, seed=9)

    def f(x, w, c, y0, z0):
        y, yN, zN = unicornn_scan(x, w, c, dt, alpha, y0, z0, backend="triton")
        return (y * y).sum() + yN.sum() - zN.sum()

    leaves = [t.float().requires_grad_() for t in (x, w, c, y0, z0)]
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    torch._dynamo.reset()
    loss = compiled(*leaves)
    loss.backward()
    got = [loss.detach()] + [t.grad.clone() for t in leaves]
    for t in leaves:
        t.grad = None
    loss = f(*leaves)
    loss.backward()
    want = [loss.detach()] + [t.grad for t in leaves]
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_module_with_lengths_matches_reference_module():
    """Padded batch through the stacked module: the kernels inside the module's length handling."""
    torch.manual_seed(0)
    ref = UnICORNN(3, 9, num_layers=2, dt=[0.4, 0.2], alpha=1.5, backend="reference").to(DEVICE, F64)
    mod = UnICORNN(3, 9, num_layers=2, dt=[0.4, 0.2], alpha=1.5, backend="triton").to(DEVICE)
    mod.load_state_dict({k: v.float() for k, v in ref.state_dict().items()})
    u = torch.randn(10, 3, 3, dtype=F64, device=DEVICE)
    lengths = [10, 4, 7]
    out_r, (yr, zr) = ref(u, lengths=lengths)
    out, (yn, zn) = mod(u.float(), lengths=lengths)
    (out_r.sum() + yr.sum() * 0.5 + zr.sum()).backward()
    (out.sum() + yn.sum() * 0.5 + zn.sum()).backward()
    for a, b in ((out, out_r), (yn, yr), (zn, zr)):
        torch.testing.assert_close(a.double(), b.detach(), rtol=1e-5, atol=1e-6)
    for (name, p), q in zip(mod.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p.grad.double(), q.grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.skipif(DEVICE.type != "cuda", reason="backend='auto' picks Triton only for CUDA tensors")
def test_auto_picks_triton_for_cuda_tensors():
    assert ag.resolve_backend("auto", DEVICE) == "triton"


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


def test_float64_is_refused_with_a_pointer_to_other_backends():
    x = torch.zeros(3, 2, 4, dtype=F64, device=DEVICE)
    w = torch.zeros(4, dtype=F64, device=DEVICE)
    with pytest.raises(TypeError, match="float64.*reference"):
        unicornn_scan(x, w, w, 0.1, 0.0, backend="triton")


def test_wrong_parameter_dtype_is_refused():
    x = torch.zeros(3, 2, 4, device=DEVICE)
    w = torch.zeros(4, dtype=torch.float16, device=DEVICE)
    s = torch.zeros(2, 4, device=DEVICE)
    with pytest.raises(TypeError, match="weight_hh"):
        tk.scan_forward(x, w, w.float(), s, s, 0.1, 0.0)


def test_cpu_tensors_without_interpreter_are_refused(monkeypatch):
    monkeypatch.setattr(tk, "INTERPRETED", False)
    x = torch.zeros(3, 2, 4)
    w = torch.zeros(4)
    s = torch.zeros(2, 4)
    with pytest.raises(RuntimeError, match="needs CUDA tensors, or TRITON_INTERPRET=1"):
        tk.scan_forward(x, w, w, s, s, 0.1, 0.0)


def test_empty_sequence_returns_initial_state():
    s = torch.randn(2, 4, device=DEVICE)
    y, yN, zN = tk.scan_forward(torch.zeros(0, 2, 4, device=DEVICE), s[0], s[0], s, 2 * s, 0.1, 0.0)
    assert y.shape == (0, 2, 4) and torch.equal(yN, s) and torch.equal(zN, 2 * s)


def test_import_without_triton_raises_import_error(monkeypatch):
    """A missing triton disables the backend with ImportError (which backend_available turns into False)."""
    monkeypatch.setitem(sys.modules, "triton", None)
    monkeypatch.delitem(sys.modules, "unicornn.ops.triton")
    with pytest.raises(ImportError, match="pip install triton"):
        importlib.import_module("unicornn.ops.triton")
    # monkeypatch restores sys.modules; the registered kernels were never touched.
    assert ag._KERNELS["triton"].forward is tk.scan_forward
