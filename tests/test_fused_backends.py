"""Every fused backend (``"cpu"``, ``"triton"``) against the readable reference, one set of tests for all.

* float64 (backends that take it): the kernels do the reference's arithmetic up to rounding, so the
  comparison is tight.
* float32: errors against a float64 reference, with float32 autograd through the reference loop as the
  yardstick -- the accuracy contract of ``docs/accuracy.md``.
* the op's autograd contract (saved tensors, missing upstream gradients, empty sequences), half precision,
  non-finite values, strided inputs, ``torch.compile``.

Without a GPU, ``tests/conftest.py`` sets ``TRITON_INTERPRET=1`` and Triton's interpreter runs the very same
kernels on CPU tensors; it costs milliseconds per program and step, so its sequences are shorter. Aspects of
one backend only (numba's cache and threads; Triton's launch configurations and tanh) are tested in
``test_cpu_backend.py`` and ``test_triton_backend.py``.
"""

from __future__ import annotations

import pytest
import torch
from helpers import F64, INPUTS, device_for, fused_backends, make_inputs, rel_err, run_scan

from unicornn import unicornn_scan
from unicornn.ops.dispatch import get_kernels

FUSED = fused_backends()
if not FUSED:
    pytest.skip("no fused backend can run here", allow_module_level=True)

OUTPUTS = ("y", "y_N", "z_N")
NAMES = OUTPUTS + tuple(f"grad_{k}" for k in INPUTS)
#: About five float32 ulps of an O(1) quantity: the floor under which two float32 errors are both rounding.
FLOOR = 3e-7
HALF_ULP = {torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}


def takes_float64(backend):
    return F64 in get_kernels(backend).dtypes


def on(backend, inp):
    """The problem moved to the backend's device."""
    dev = device_for(backend)
    return {k: None if v is None else v.to(dev) for k, v in inp.items()}


# --------------------------------------------------------------------------------------------------
# float64: tight
# --------------------------------------------------------------------------------------------------

F64_BACKENDS = [b for b in FUSED if takes_float64(b)]


@pytest.mark.parametrize("backend", F64_BACKENDS)
@pytest.mark.parametrize(
    "N,B,M", [(37, 3, 5), (1, 3, 5), (37, 1, 5), (1, 1, 1), (23, 7, 41), (4, 2, 300)], ids=lambda v: str(v)
)
@pytest.mark.parametrize("dt,alpha", [(0.19, 30.65), (0.9, 0.0), (0.0343, 2.5)])
@pytest.mark.parametrize("bias", [False, True], ids=["no_bias", "bias"])
def test_float64_matches_reference(backend, N, B, M, dt, alpha, bias):
    # (23, 7, 41): 287 units, more than one block and blocks not aligned with M; (4, 2, 300): M > block.
    inp = make_inputs(N, B, M, seed=N * 1000 + B * 100 + M, c_scale=2.0)
    out, grads = run_scan(inp, backend, dt, alpha, bias=bias)
    out_ref, grads_ref = run_scan(inp, "reference", dt, alpha, bias=bias)
    for name, a, b in zip(OUTPUTS, out, out_ref, strict=True):
        assert a.dtype == F64 and rel_err(a, b) < 1e-12, name
    for name, a, b in zip(INPUTS + ("b",) * bias, grads, grads_ref, strict=True):
        assert a is not None and a.dtype == F64, name
        assert rel_err(a, b) < 1e-10, f"grad of {name}: {rel_err(a, b)}"


@pytest.mark.parametrize("backend", F64_BACKENDS)
def test_gradcheck_float64(backend):
    inp = make_inputs(7, 2, 3, seed=11, c_scale=1.0)
    args = tuple(inp[k].clone().requires_grad_() for k in INPUTS + ("b",))

    def f(x, w, c, y0, z0, b):
        return unicornn_scan(x, w, c, 0.5, 1.5, y0, z0, backend=backend, bias=b)

    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-8, rtol=1e-6)


# --------------------------------------------------------------------------------------------------
# float32 against float64, with float32 autograd as the yardstick
# --------------------------------------------------------------------------------------------------

# (N, B, M, dt, alpha): odd batch and width. B * M = 210 spans several programs on a GPU.
SHAPES = [(7, 3, 5, 0.19, 30.65), (23, 3, 70, 0.5, 0.0), (11, 2, 33, 1.0, 2.0), (1, 1, 1, 0.3, 1.0)]


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("states", [True, False])
@pytest.mark.parametrize("N,B,M,dt,alpha", SHAPES)
def test_float32_every_output_and_gradient(backend, N, B, M, dt, alpha, states):
    """Within 3x float32 autograd's own error plus a few ulps (both errors are rounding-level here).
    With initial states also a bias (its gradient included); without, neither."""
    inp = on(backend, make_inputs(N, B, M, seed=N * 1000 + M, states=states))
    out, grads = run_scan(inp, backend, dt, alpha, dtype=torch.float32, bias=states)
    out32, grads32 = run_scan(inp, "reference", dt, alpha, dtype=torch.float32, bias=states)
    ref, grads_ref = run_scan(inp, "reference", dt, alpha, bias=states)
    names = NAMES + ("grad_b",) * states
    for name, a, b, r in zip(names, out + grads, out32 + grads32, ref + grads_ref, strict=True):
        if r is None:
            assert a is None, name
            continue
        assert a.dtype == torch.float32 and a.shape == r.shape, name
        err, err32 = rel_err(a, r), rel_err(b, r)
        assert err <= 3 * err32 + FLOOR, f"{name}: {err:.3e} vs float32 autograd {err32:.3e}"


def _contract_errors(backend, N, dt, alpha, seed):
    """Errors (y, grad x, grad w, grad c) of the backend and of float32 autograd against float64
    (B=4, M=32, zero initial states, upstream gradient of the output sequence only)."""
    inp = on(backend, make_inputs(N, 4, 32, seed=seed, states=False))
    ref_out, ref_g = run_scan(inp, "reference", dt, alpha, final_grads=False)
    out32, g32 = run_scan(inp, "reference", dt, alpha, dtype=torch.float32, final_grads=False)
    out, g = run_scan(inp, backend, dt, alpha, dtype=torch.float32, final_grads=False)
    ref = (ref_out[0],) + ref_g[:3]
    yardstick = [rel_err(a, r) for a, r in zip((out32[0],) + g32[:3], ref, strict=True)]
    ours = [rel_err(a, r) for a, r in zip((out[0],) + g[:3], ref, strict=True)]
    print(f"\n{backend} N={N}: float32 autograd (y, x, w, c) {yardstick}\n    backend {ours}")
    return yardstick, ours


def _check_contract(yardstick, ours):
    # docs/accuracy.md: output within 2x the float32 reference's own error, gradients within 1.5x.
    for name, limit, e_ref, e in zip(
        ("y", "grad x", "grad w", "grad c"), (2.0, 1.5, 1.5, 1.5), yardstick, ours
    ):
        assert e_ref > 1e-7, f"{name}: float32 rounding should be visible at this length"
        assert e <= limit * e_ref, f"{name}: {e:.3g} > {limit} x {e_ref:.3g}"


def _psmnist_length(backend):
    # The interpreter runs Triton kernels step by step in Python: a shorter sequence there.
    return 150 if backend == "triton" and device_for(backend) == "cpu" else 1000


@pytest.mark.parametrize("backend", FUSED)
def test_accuracy_contract_psmnist(backend):
    _check_contract(*_contract_errors(backend, _psmnist_length(backend), 0.19, 30.65, seed=2021))


@pytest.mark.slow
@pytest.mark.parametrize("backend", [b for b in FUSED if b == "cpu"])
def test_accuracy_contract_eigenworms(backend):
    # Triton: at this length one seed's error ratio is a wide random variable (docs/accuracy.md);
    # benchmarks/gpu_bench.py checks the median over three seeds on a GPU.
    _check_contract(*_contract_errors(backend, 17984, 0.0343, 0.0, seed=2022))


# --------------------------------------------------------------------------------------------------
# The kernel pair against the loop kernels (the contract of ops/reference.py)
# --------------------------------------------------------------------------------------------------


def _kernel_pair(name, f, dt, alpha, bias=False, gy="gy"):
    """Forward then backward of kernel pair ``name`` on the problem ``f``, with ``f["b"]`` as the bias when
    ``bias``; ``gy``: the key of the upstream gradient of the sequence in ``f``, or None for none."""
    k = get_kernels(name)
    b = f["b"] if bias else None
    y, yN, zN = k.forward(f["x"], f["w"], f["c"], dt, alpha, f["y0"], f["z0"], b)
    g = None if gy is None else f[gy]
    grads = k.backward(g, f["gyN"], f["gzN"], y, f["x"], f["w"], f["c"], dt, alpha, f["y0"], zN, b)
    return (y, yN, zN), grads


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("bias", [False, True], ids=["no_bias", "bias"])
@pytest.mark.parametrize("gy", ["gy", None], ids=["grad_y", "no_grad_y"])
def test_kernel_pair_matches_loop_kernels_float32(backend, bias, gy):
    f = on(backend, make_inputs(50, 4, 9, seed=7, dtype=torch.float32))
    out, grads = _kernel_pair(backend, f, 0.3, 4.0, bias, gy)
    out_l, grads_l = _kernel_pair("loop", {k: v.double() for k, v in f.items()}, 0.3, 4.0, bias, gy)
    assert len(grads) == 6  # grad_x, grad_w, grad_s, grad_y0, grad_z0, grad_bias
    for a, b in zip(out + grads, out_l + grads_l, strict=True):
        assert a.dtype == torch.float32 and a.shape == b.shape
        assert rel_err(a, b) < 1e-5
    torch.testing.assert_close(grads[5], grads[0].sum((0, 1)), rtol=1e-5, atol=1e-5)  # grad_bias


@pytest.mark.parametrize("backend", FUSED)
def test_kernel_pair_without_grad_y_equals_zero_grad_y(backend):
    """No upstream gradient of the sequence (not read) gives bit for bit the results of an explicit zero one;
    a zero bias those of no bias."""
    f = on(backend, make_inputs(21, 3, 11, seed=8, dtype=torch.float32))
    f["zero"] = torch.zeros_like(f["gy"])
    for bias in (False, True):
        _, none = _kernel_pair(backend, f, 0.4, 2.0, bias, gy=None)
        _, zero = _kernel_pair(backend, f, 0.4, 2.0, bias, gy="zero")
        for a, b in zip(none, zero, strict=True):
            assert torch.equal(a, b)
    f["b"] = torch.zeros_like(f["b"])
    for a, b in zip(
        _kernel_pair(backend, f, 0.4, 2.0, True), _kernel_pair(backend, f, 0.4, 2.0), strict=True
    ):
        for u, v in zip(a, b, strict=True):
            assert torch.equal(u, v)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_kernel_pair_half_precision_matches_loop_kernels(backend, dtype):
    """x, y, grad_y, grad_x in half precision; states, parameters and arithmetic in float32. Against the
    loop kernels on identical inputs (the stored y included), results agree to float32 rounding, except
    that a half-precision result may round to the neighbouring value (one half ulp)."""
    f = on(backend, make_inputs(13, 3, 37, seed=11, dtype=torch.float32))
    xh, gyh = f["x"].to(dtype), f["gy"].to(dtype)
    k, loop = get_kernels(backend), get_kernels("loop")
    (y, yN, zN) = k.forward(xh, f["w"], f["c"], 0.3, 2.0, f["y0"], f["z0"])
    (y_l, yN_l, zN_l) = loop.forward(xh, f["w"], f["c"], 0.3, 2.0, f["y0"], f["z0"])
    assert y.dtype == dtype and yN.dtype == zN.dtype == torch.float32
    ulp = HALF_ULP[dtype]
    torch.testing.assert_close(y.float(), y_l.float(), rtol=ulp, atol=ulp * 1e-2)
    torch.testing.assert_close(yN, yN_l, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(zN, zN_l, rtol=1e-5, atol=1e-6)
    args = (gyh, f["gyN"], f["gzN"], y_l, xh, f["w"], f["c"], 0.3, 2.0, f["y0"], zN_l)
    grads, grads_l = k.backward(*args), loop.backward(*args)
    assert grads[0].dtype == dtype and all(g.dtype == torch.float32 for g in grads[1:])
    torch.testing.assert_close(grads[0].float(), grads_l[0].float(), rtol=ulp, atol=ulp * 1e-2)
    for a, b in zip(grads[1:], grads_l[1:], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", FUSED)
def test_gradients_are_deterministic(backend):
    f = on(backend, make_inputs(13, 5, 37, seed=3, dtype=torch.float32))
    first = _kernel_pair(backend, f, 0.2, 1.0)
    second = _kernel_pair(backend, f, 0.2, 1.0)
    for a, b in zip(first[0] + first[1], second[0] + second[1], strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend", FUSED)
def test_kernel_pair_empty_sequence_returns_initial_state(backend):
    f = on(backend, make_inputs(0, 2, 4, seed=5, dtype=torch.float32))
    (y, yN, zN), grads = _kernel_pair(backend, f, 0.1, 0.0)
    assert y.shape == (0, 2, 4) and torch.equal(yN, f["y0"]) and torch.equal(zN, f["z0"])
    gx, gw, gs, gy0, gz0, gb = grads
    assert gx.shape == (0, 2, 4)
    for g in (gw, gs, gb):
        assert g.shape == (4,) and torch.equal(g, torch.zeros_like(g))
    assert torch.equal(gy0, f["gyN"]) and torch.equal(gz0, f["gzN"])


# --------------------------------------------------------------------------------------------------
# Through unicornn_scan: autograd contract, shapes, dtypes, layouts
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("N,B,M", [(5, 0, 3), (5, 2, 0), (0, 2, 3)])
def test_empty_batch_width_or_sequence(backend, N, B, M):
    dtype = F64 if takes_float64(backend) else torch.float32
    inp = on(backend, make_inputs(N, B, M, seed=1))
    out, grads = run_scan(inp, backend, 0.5, 1.0, dtype=dtype)
    out_ref, grads_ref = run_scan(inp, "reference", 0.5, 1.0, dtype=dtype)
    for a, b in zip(out + grads, out_ref + grads_ref, strict=True):
        assert (a is None and b is None) or (a.shape == b.shape and torch.equal(a, b))
    if N == 0:
        torch.testing.assert_close(out[1], inp["y0"].to(dtype), rtol=0, atol=0)


@pytest.mark.parametrize("backend", FUSED)
def test_default_zero_states_and_partial_upstream_gradients(backend):
    # y0/z0 omitted, and only the sequence output used (grad_yN/grad_zN arrive as None).
    dtype = F64 if takes_float64(backend) else torch.float32
    inp = on(backend, make_inputs(31, 3, 8, seed=5, states=False))
    results = [run_scan(inp, b, 0.2, 7.0, dtype=dtype, final_grads=False) for b in (backend, "reference")]
    (out, grads), (out_ref, grads_ref) = results
    tol = 1e-10 if dtype == F64 else 1e-4
    for a, b in zip(out[:1] + grads[:3], out_ref[:1] + grads_ref[:3], strict=True):
        assert rel_err(a, b) < tol
    assert grads[3] is None and grads[4] is None


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("bias", [False, True], ids=["no_bias", "bias"])
def test_only_the_final_state_reaches_the_loss(backend, dtype, bias):
    """y unused: autograd hands the op no gradient of the sequence and the kernels read none; the gradients
    are the reference's."""
    if dtype == F64 and not takes_float64(backend):
        pytest.skip(f"{backend} takes no float64")
    inp = on(backend, make_inputs(29, 3, 13, seed=23))
    kw = dict(dtype=dtype, bias=bias, sequence_grad=False)
    (out, grads), (out_ref, grads_ref) = (run_scan(inp, b, 0.3, 5.0, **kw) for b in (backend, "reference"))
    tol = 1e-10 if dtype == F64 else 1e-4
    for a, b in zip(out + grads, out_ref + grads_ref, strict=True):
        assert rel_err(a, b) < tol


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("states", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_saved_tensors_are_inputs_output_params_and_final_state(backend, states, dtype):
    """The op keeps x and y (N B M each, in x's dtype), w, c, y0 and the final z: nothing else per step."""
    N, B, M = 9, 3, 10
    f = on(backend, make_inputs(N, B, M, seed=13, dtype=torch.float32))
    x = f["x"].to(dtype).requires_grad_()
    w, c = f["w"].requires_grad_(), f["c"].requires_grad_()
    y0 = f["y0"].requires_grad_() if states else None
    z0 = f["z0"].requires_grad_() if states else None
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y, yN, zN = unicornn_scan(x, w, c, 0.3, 1.0, y0, z0, backend=backend)
    big = [t for t in saved if t.numel() == N * B * M]
    assert len(big) == 2 and all(t.dtype == dtype for t in big), [tuple(t.shape) for t in saved]
    assert {t.data_ptr() for t in big} == {x.data_ptr(), y.data_ptr()}
    small = [t for t in saved if t.numel() != N * B * M]
    assert sorted(tuple(t.shape) for t in small) == sorted([(M,), (M,), (B, M), (B, M)])
    ptrs = {t.data_ptr() for t in small}
    assert {w.data_ptr(), c.data_ptr(), zN.data_ptr()} <= ptrs
    if states:
        assert y0.data_ptr() in ptrs
    (y.float().sum() + yN.sum() + zN.sum()).backward()
    assert x.grad is not None and w.grad is not None and c.grad is not None
    if states:
        assert z0.grad is not None


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_through_autograd_against_float64(backend, dtype):
    """The only loss of accuracy is storing y (and grad_x) in half precision; the float64 reference sees the
    same half-rounded inputs."""
    inp = on(backend, make_inputs(17, 3, 21, seed=5))
    inp["x"] = inp["x"].to(dtype).double()
    out, grads = run_scan(inp, backend, 0.3, 1.0, dtype=dtype)
    ref, grads_ref = run_scan(inp, "reference", 0.3, 1.0)
    assert out[0].dtype == dtype and out[1].dtype == out[2].dtype == torch.float32  # states stay float32
    assert grads[0].dtype == dtype and grads[1].dtype == torch.float32
    ulp = HALF_ULP[dtype]
    for name, a, r in zip(NAMES, out + grads, ref + grads_ref, strict=True):
        # Half-precision rounding of y feeds the rebuilt z in the backward: a few ulps over these lengths.
        assert rel_err(a, r) <= 4 * ulp, name


@pytest.mark.parametrize("backend", FUSED)
def test_non_contiguous_inputs(backend):
    """Strided views (batch-first data seen time-major, every other weight) give the same results."""
    f = on(backend, make_inputs(8, 3, 12, seed=2, dtype=torch.float32))
    x_bf = f["x"].transpose(0, 1).contiguous().transpose(0, 1)  # (N, B, M) view of (B, N, M) storage
    w_wide = torch.stack([f["w"], torch.zeros_like(f["w"])], 1)  # w_wide[:, 0] has stride 2
    y0_t = f["y0"].t().contiguous().t()
    assert not x_bf.is_contiguous() and not w_wide[:, 0].is_contiguous() and not y0_t.is_contiguous()
    a = unicornn_scan(x_bf, w_wide[:, 0], f["c"], 0.3, 1.0, y0_t, f["z0"], backend=backend)
    b = unicornn_scan(f["x"], f["w"], f["c"], 0.3, 1.0, f["y0"], f["z0"], backend=backend)
    for u, v in zip(a, b, strict=True):
        assert torch.equal(u, v)
    a = get_kernels(backend).forward(x_bf, w_wide[:, 0], f["c"], 0.3, 1.0, y0_t, f["z0"])  # the kernels too
    for u, v in zip(a, b, strict=True):
        assert torch.equal(u, v)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_non_finite_values_stay_in_their_unit(backend):
    """inf saturates tanh like the reference; NaN (in x or in w) poisons only its own unit; nothing hangs."""
    N, B, M = 12, 2, 5
    f = on(backend, make_inputs(N, B, M, seed=19, dtype=torch.float32, states=False))
    x, w = f["x"].clone(), f["w"].clone()
    x[5, 0, 1] = float("nan")
    x[3, 1, 2] = float("inf")
    x[2, 0, 0] = -float("inf")
    w[3] = float("nan")
    x.requires_grad_()
    w.requires_grad_()
    c = f["c"].requires_grad_()
    y, _, _ = unicornn_scan(x, w, c, 0.3, 1.0, backend=backend)
    r, _, _ = unicornn_scan(x.detach().double(), w.detach().double(), c.detach().double(), 0.3, 1.0,
                            backend="reference")  # fmt: skip
    expected = torch.zeros(N, B, M, dtype=torch.bool, device=x.device)
    expected[5:, 0, 1] = True
    expected[:, :, 3] = True
    assert torch.equal(torch.isnan(y), expected) and torch.equal(torch.isnan(r), expected)
    torch.testing.assert_close(y[~expected].double(), r[~expected], rtol=1e-5, atol=1e-6)
    (y * f["gy"]).sum().backward()
    bad = torch.zeros(N, B, M, dtype=torch.bool, device=x.device)
    bad[:, 0, 1] = True
    bad[:, :, 3] = True
    assert torch.isfinite(x.grad[~bad]).all()
    assert torch.isnan(x.grad[:6, 0, 1]).all()
    assert torch.isnan(w.grad[[1, 3]]).all() and torch.isfinite(w.grad[[0, 2, 4]]).all()


class _Tiny(torch.nn.Module):
    def __init__(self, backend, width=2, hidden=6, classes=3):
        super().__init__()
        self.backend = backend
        self.proj = torch.nn.Linear(width, hidden)
        self.w = torch.nn.Parameter(torch.rand(hidden))
        self.c = torch.nn.Parameter(torch.rand(hidden) * 0.2 - 0.1)
        self.y0 = torch.nn.Parameter(torch.randn(4, hidden))
        self.head = torch.nn.Linear(hidden, classes)

    def forward(self, u):
        y, yN, zN = unicornn_scan(self.proj(u), self.w, self.c, 0.2, 3.0, self.y0, backend=self.backend)
        return self.head(y[-1]) + (yN - zN).sum(-1, keepdim=True)


def _loss_and_grads(model, u):
    model.zero_grad()
    out = model(u)
    (out * torch.arange(out.numel(), dtype=out.dtype, device=out.device).view_as(out)).sum().backward()
    return out.detach(), [p.grad.clone() for p in model.parameters()]


# Inductor (torch.compile's default backend) generates and compiles C++ for the ops around the custom op: about
# half a minute on a 2-core machine with an empty cache, so it is marked slow (CI runs it).
_INDUCTOR = pytest.param("inductor", marks=pytest.mark.slow)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("compiler", ["aot_eager", _INDUCTOR])
def test_torch_compile_captures_the_op(backend, compiler):
    """The custom op compiles in a full graph (no graph break) and gives eager's results."""
    dtype = F64 if takes_float64(backend) else torch.float32
    torch.manual_seed(0)
    model = _Tiny(backend).to(dtype=dtype, device=device_for(backend))
    u = torch.randn(15, 4, 2, dtype=dtype, device=device_for(backend))
    out, grads = _loss_and_grads(model, u)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=compiler, fullgraph=True)
    out_c, grads_c = _loss_and_grads(compiled, u)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == F64 else dict(rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out_c, out, **tol)
    for a, b in zip(grads_c, grads, strict=True):
        torch.testing.assert_close(a, b, **tol)


# --------------------------------------------------------------------------------------------------
# Eager calls skip the dispatcher; traced calls run the op
# --------------------------------------------------------------------------------------------------


def _op_and_eager_results(fn, leaves, upstream):
    """Outputs of ``fn(*leaves)`` and the gradients of ``<outputs, upstream>`` (None where no gradient)."""
    args = [None if t is None else t.detach().clone().requires_grad_(t.requires_grad) for t in leaves]
    outs = fn(*args)
    loss = sum((o * g).sum() for o, g in zip(outs, upstream, strict=True) if g is not None)
    tensors = [a for a in args if a is not None and a.requires_grad]
    return [o.detach() for o in outs], torch.autograd.grad(loss, tensors, allow_unused=True)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("sequence_grad", [True, False], ids=["grad_y", "final_state_only"])
@pytest.mark.parametrize("projected", [False, True], ids=["x", "projected"])
def test_eager_calls_match_the_op_bitwise(backend, sequence_grad, projected):
    """Eager calls run an autograd function instead of the registered op: the same kernels, saved tensors and
    formula, so outputs and gradients are bitwise the op's, with and without an upstream gradient of y."""
    from unicornn.ops import scan

    dtype = F64 if takes_float64(backend) else torch.float32
    dev = device_for(backend)
    N, B, M, d = 13, 3, 7, 2
    g = torch.Generator().manual_seed(1234 + 2 * projected + sequence_grad)

    def rand(*shape, grad=True):
        return torch.randn(*shape, generator=g, dtype=F64).to(dtype=dtype, device=dev).requires_grad_(grad)

    w, c, y0, z0, bias = rand(M), rand(M), rand(B, M), rand(B, M), rand(M)
    upstream = [rand(N, B, M, grad=False) if sequence_grad else None, rand(B, M, grad=False), None]
    if projected:
        if backend == "triton":
            pytest.skip("the triton backend projects no input in its kernels")
        u, V = rand(N, B, d), rand(M, d)
        leaves = (u, V, w, c, y0, z0, bias)

        def through(call):
            return lambda u, V, w, c, y0, z0, bias: call(u, V, w, c, 0.3, 2.0, y0, z0, bias, backend)

        op, eager = through(scan._scan_projected_op), through(scan._EagerScanProjected.apply)
    else:
        leaves = (rand(N, B, M), w, c, y0, z0, bias)

        def through(call):
            return lambda x, w, c, y0, z0, bias: call(x, w, c, 0.3, 2.0, y0, z0, bias, backend)

        op, eager = through(scan._scan_op), through(scan._EagerScan.apply)
    out_op, grads_op = _op_and_eager_results(op, leaves, upstream)
    out_eager, grads_eager = _op_and_eager_results(eager, leaves, upstream)
    for a, b in zip(out_eager + list(grads_eager), out_op + list(grads_op), strict=True):
        assert torch.equal(a, b)


def test_traced_calls_run_the_op():
    """Under a dispatch mode (``make_fx``, fake tensors) the registered op runs: a tracer records one node, and
    no kernel sees a fake tensor."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.proxy_tensor import make_fx

    inp = make_inputs(6, 2, 4, seed=3)

    def f(x, w, c, y0, z0):
        return unicornn_scan(x, w, c, 0.3, 2.0, y0, z0, backend="cpu")

    graph = make_fx(f)(*(inp[k] for k in INPUTS))
    targets = {str(n.target) for n in graph.graph.nodes if n.op == "call_function"}
    assert "unicornn.scan.default" in targets, targets
    with FakeTensorMode() as mode:
        fake = [mode.from_tensor(inp[k]) for k in INPUTS]
        y, yN, zN = f(*fake)
    assert y.shape == (6, 2, 4) and yN.shape == zN.shape == (2, 4)
    # torch.func.vmap over sequences: the op (through PyTorch's fallback), one result per sequence
    xs = torch.randn(3, 6, 2, 4, dtype=F64)
    batched = torch.func.vmap(lambda x: f(x, *(inp[k] for k in INPUTS[1:]))[0])(xs)
    for i in range(3):
        assert torch.equal(batched[i], f(xs[i], *(inp[k] for k in INPUTS[1:]))[0])


@pytest.mark.parametrize("projected", [False, True], ids=["x", "projected"])
def test_eager_gradients_with_create_graph_refuse_a_second_derivative(projected):
    """``create_graph=True`` gives the same first gradients, which refuse to be differentiated again (the
    backward op runs then), instead of silently leaving the graph."""
    from unicornn.ops import unicornn_scan_projected

    inp = make_inputs(8, 2, 5, seed=21)
    u = torch.randn(8, 2, 1, dtype=F64, requires_grad=True)
    V = torch.randn(5, 1, dtype=F64)
    x = inp["x"].clone().requires_grad_()

    def first(create_graph):
        if projected:
            y, _, _ = unicornn_scan_projected(u, V, inp["w"], inp["c"], 0.3, 2.0, backend="cpu")
            leaf = u
        else:
            y, _, _ = unicornn_scan(x, inp["w"], inp["c"], 0.3, 2.0, backend="cpu")
            leaf = x
        return torch.autograd.grad((y * y).sum(), leaf, create_graph=create_graph)[0]

    g = first(True)
    assert torch.equal(g.detach(), first(False))
    with pytest.raises(RuntimeError, match="double backward .* not supported"):
        torch.autograd.grad(g.sum(), u if projected else x)
