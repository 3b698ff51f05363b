"""What only the Triton backend has: launch configurations, the chunked time loop, its tanh, ahead-of-time
compilation, and its own preconditions.

On a machine with CUDA the kernels run on the GPU; without one, ``tests/conftest.py`` sets
``TRITON_INTERPRET=1`` and Triton's interpreter runs the very same kernels on CPU tensors. Its numerics against
the reference, the accuracy contract, half precision, the autograd contract and ``torch.compile`` are tested
with the other fused backends in ``test_fused_backends.py``.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import torch
from helpers import make_inputs

pytest.importorskip("triton")

from unicornn.ops import dispatch  # noqa: E402
from unicornn.ops import triton as tk  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
if DEVICE.type == "cpu" and not tk.INTERPRETED:
    pytest.skip("no CUDA device and TRITON_INTERPRET=1 was not set before import", allow_module_level=True)

F64 = torch.float64
LOOP = dispatch.get_kernels("loop")


def problem(N, B, M, seed):
    """float32 problem on DEVICE: the recurrence's tensors and the upstream gradients."""
    return make_inputs(N, B, M, seed=seed, dtype=torch.float32, device=DEVICE)


def pair(fwd, bwd, f, dt, alpha, **launch):
    """Forward and backward of a kernel pair on problem ``f``: (y, y_N, z_N, grad_x, grad_w, grad_s, ...)."""
    y, yN, zN = fwd(f["x"], f["w"], f["c"], dt, alpha, f["y0"], f["z0"], **launch)
    grads = bwd(f["gy"], f["gyN"], f["gzN"], y, f["x"], f["w"], f["c"], dt, alpha, f["y0"], zN, **launch)
    return (y, yN, zN, *grads)


@pytest.mark.parametrize("block", [16, 32, 64])
def test_block_size_does_not_change_results(block):
    """Several programs with a partial last block (B*M = 210) give the loop kernels' results, bit for bit
    the same whatever the block."""
    f = problem(9, 3, 70, seed=block)
    got = pair(tk.scan_forward, tk.scan_backward, f, 0.4, 3.0, block=block, num_warps=1)
    default = pair(tk.scan_forward, tk.scan_backward, f, 0.4, 3.0)
    for a, b in zip(got, default, strict=True):
        assert torch.equal(a, b)
    loop = pair(LOOP.forward, LOOP.backward, f, 0.4, 3.0)
    for a, b in zip(got, loop, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("N", range(1, 11))
def test_every_sequence_length_modulo_the_chunk(N):
    """The kernels walk time in chunks of 4 plus single steps: every N mod 4, with and without a chunk."""
    f = problem(N, 2, 3, seed=100 + N)
    got = pair(tk.scan_forward, tk.scan_backward, f, 0.7, 4.0)
    loop = pair(LOOP.forward, LOOP.backward, f, 0.7, 4.0)
    for a, b in zip(got, loop, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


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
    fwd = dict(x_ptr=t, y_ptr=t, w_ptr=f32, s_ptr=f32, b_ptr=f32, y0_ptr=f32, z0_ptr=f32, yN_ptr=f32,
               zN_ptr=f32, N="i32", BM="i32", M="i32", alpha="fp32", BLOCK="constexpr")
    bwd = dict(gy_ptr=t, gyN_ptr=f32, gzN_ptr=f32, x_ptr=t, y_ptr=t, w_ptr=f32, s_ptr=f32, b_ptr=f32,
               y0_ptr=f32, zN_ptr=f32, gx_ptr=t, gw_ptr=f32, ds_ptr=f32, gb_ptr=f32, gy0_ptr=f32, gz0_ptr=f32,
               N="i32", BM="i32", last="i64", M="i32", alpha="fp32", HAS_GY="constexpr", BLOCK="constexpr")
    builds = [(tk._scan_fwd_kernel, fwd, {"BLOCK": 128})]
    builds += [(tk._scan_bwd_kernel, bwd, {"BLOCK": 128, "HAS_GY": has_gy}) for has_gy in (True, False)]
    for fn, sig, constexprs in builds:
        k = triton.compile(ASTSource(fn, sig, constexprs=constexprs), target=GPUTarget("cuda", arch, 32),
                           options={"num_warps": 4})
        assert k.asm["cubin"], "no cubin"
print("ok")
"""


@pytest.mark.slow  # a fresh Python process compiling for a GPU target
@pytest.mark.skipif(DEVICE.type == "cuda", reason="on a GPU every other test compiles the kernels for real")
def test_kernels_compile_for_a_gpu_without_one():
    """The interpreter does not type-check like the compiler: compile both kernels (the backward with and
    without an upstream gradient of the sequence), for float32, float16 and bfloat16 io, ahead of time to Hopper (sm_90) cubins, which Triton can do without a GPU."""
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


def test_wrong_parameter_dtype_is_refused():
    x = torch.zeros(3, 2, 4, device=DEVICE)
    w = torch.zeros(4, dtype=torch.float16, device=DEVICE)
    s = torch.zeros(2, 4, device=DEVICE)
    with pytest.raises(TypeError, match="weight_hh"):
        tk.scan_forward(x, w, w.float(), 0.1, 0.0, s, s)


def test_cpu_tensors_without_interpreter_are_refused(monkeypatch):
    monkeypatch.setattr(tk, "INTERPRETED", False)
    x = torch.zeros(3, 2, 4)
    w = torch.zeros(4)
    s = torch.zeros(2, 4)
    with pytest.raises(RuntimeError, match="needs CUDA tensors, or TRITON_INTERPRET=1"):
        tk.scan_forward(x, w, w, 0.1, 0.0, s, s)


def test_import_without_triton_raises_import_error(monkeypatch):
    """A missing triton disables the backend with ImportError (which backend_available turns into False)."""
    monkeypatch.setitem(sys.modules, "triton", None)
    monkeypatch.delitem(sys.modules, "unicornn.ops.triton")
    with pytest.raises(ImportError, match="pip install triton"):
        importlib.import_module("unicornn.ops.triton")
    # monkeypatch restores sys.modules; the registered kernels were never touched.
    assert dispatch._KERNELS["triton"].forward is tk.scan_forward
