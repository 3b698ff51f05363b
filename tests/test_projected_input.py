"""``unicornn_scan_projected``: a narrow layer input projected inside the fused kernels.

Against ``F.linear`` followed by the float64 reference (the same recurrence, the projection as a matmul): every
output and gradient, odd shapes, each input width the kernels take; float32 within the accuracy contract; the
kernel pair against the readable ``loop`` pair; which path runs for which input; bad arguments.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import F64, make_inputs, rel_err, torch_threads

from unicornn import UnICORNN, backend_available
from unicornn.ops import unicornn_scan, unicornn_scan_projected
from unicornn.ops.dispatch import get_kernels

pytestmark = pytest.mark.skipif(not backend_available("cpu"), reason="needs the fused CPU backend (numba)")


def _problem(N, B, M, d, seed, dtype=F64, states=True):
    """make_inputs' recurrence parameters, plus a layer input ``u`` (N, B, d) and a projection ``V`` (M, d)."""
    f = make_inputs(N, B, M, seed, dtype=dtype, states=states)
    g = torch.Generator().manual_seed(seed + 1)
    f["u"] = torch.randn(N, B, d, generator=g, dtype=F64).to(dtype)
    f["V"] = (torch.rand(M, d, generator=g, dtype=F64) * 2 - 1).to(dtype)
    return f


def _run(f, backend, dt, alpha, *, bias=True, grad_u=True, sequence_grad=True, projected=True):
    """Outputs and gradients (u, V, w, c, y0, z0, bias; None where absent or not asked for) of
    ``<y, gy> + <y_N, gyN> + <z_N, gzN>`` through ``unicornn_scan_projected`` (``projected``) or through
    ``unicornn_scan`` of ``F.linear(u, V)``."""
    leaves = {k: None if f[k] is None else f[k].detach().clone().requires_grad_(k != "u" or grad_u)
              for k in ("u", "V", "w", "c", "y0", "z0", "b")}  # fmt: skip
    b = leaves["b"] if bias else None
    args = (leaves["w"], leaves["c"], dt, alpha, leaves["y0"], leaves["z0"])
    if projected:
        y, yN, zN = unicornn_scan_projected(leaves["u"], leaves["V"], *args, backend=backend, bias=b)
    else:
        y, yN, zN = unicornn_scan(F.linear(leaves["u"], leaves["V"]), *args, backend=backend, bias=b)
    loss = (yN.double() * f["gyN"].double()).sum() + (zN.double() * f["gzN"].double()).sum()
    if sequence_grad:
        loss = loss + (y.double() * f["gy"].double()).sum()
    loss.backward()
    grads = [None if leaves[k] is None or (k == "b" and not bias) else leaves[k].grad
             for k in ("u", "V", "w", "c", "y0", "z0", "b")]  # fmt: skip
    return [y, yN, zN], grads


@pytest.mark.parametrize("d", [1, 2, 3, 4])
@pytest.mark.parametrize(
    "N, B, M, states, bias, grad_u, sequence_grad",
    [
        (1, 1, 1, True, True, True, True),
        (17, 3, 5, False, False, False, True),
        (30, 5, 33, True, True, False, False),  # ranges and blocks cut inside a batch row
        (9, 7, 61, True, False, True, False),
        (12, 2, 300, False, True, True, True),
    ],
)
def test_float64_matches_linear_then_reference(N, B, M, d, states, bias, grad_u, sequence_grad):
    f = _problem(N, B, M, d, seed=N + 7 * d, states=states)
    kw = dict(bias=bias, grad_u=grad_u, sequence_grad=sequence_grad)
    (outs, grads), (outs_r, grads_r) = (_run(f, "cpu", 0.3, 2.0, **kw),
                                        _run(f, "reference", 0.3, 2.0, projected=False, **kw))  # fmt: skip
    assert outs[0].dtype == F64
    for a, r in zip(outs, outs_r, strict=True):
        assert rel_err(a, r) < 1e-12
    for name, a, r in zip(("u", "V", "w", "c", "y0", "z0", "bias"), grads, grads_r, strict=True):
        assert (a is None) == (r is None), name
        if a is not None:
            assert rel_err(a, r) < 1e-10, name


@pytest.mark.parametrize(
    "N, dt, alpha, d",
    [
        (1000, 0.19, 30.65, 1),  # psMNIST
        (1000, 0.19, 30.65, 3),
        pytest.param(17984, 0.0343, 0.0, 1, marks=pytest.mark.slow),  # EigenWorms
    ],
)
def test_float32_within_the_accuracy_contract(N, dt, alpha, d):
    """Errors against float64 at most those of float32 autograd through a matmul and the reference loop (the
    yardstick) times the contract's factors (1.5 for the gradients, 2 for y)."""
    f = _problem(N, 4, 32, d, seed=2021)
    f32 = {k: None if v is None else v.float() for k, v in f.items()}
    exact = _run(f, "reference", dt, alpha, projected=False)
    fused = _run(f32, "cpu", dt, alpha)
    with torch_threads(1):
        yardstick = _run(f32, "reference", dt, alpha, projected=False)
    names = ("y", "y_N", "z_N", "u", "V", "w", "c", "y0", "z0", "bias")
    for name, a, y, r in zip(names, sum(fused, []), sum(yardstick, []), sum(exact, []), strict=True):
        limit = 2.0 if name == "y" else 1.5
        assert rel_err(a, r) <= limit * rel_err(y, r) + 3e-7, name


@pytest.mark.parametrize("grad_y", [True, False], ids=["grad_y", "no_grad_y"])
def test_cpu_pair_matches_the_loop_pair(grad_y):
    """The kernel contract of the projected pair, with the readable ``loop`` pair (a matmul and the loop
    kernels) as its definition."""
    f = _problem(23, 3, 19, 2, seed=5)
    results = []
    for name in ("cpu", "loop"):
        forward, backward = get_kernels(name).projected
        y, yN, zN = forward(f["u"], f["V"], f["w"], f["c"], 0.2, 1.0, f["y0"], f["z0"], f["b"])
        gy = f["gy"] if grad_y else None
        grads = backward(gy, f["gyN"], f["gzN"], y, f["u"], f["V"], f["w"], f["c"], 0.2, 1.0, f["y0"], zN,
                         f["b"], grad_x=True)  # fmt: skip
        results.append([y, yN, zN, *grads])
    for a, r in zip(*results, strict=True):
        assert rel_err(a, r) < 1e-12


def test_without_grad_x_the_backward_writes_none():
    f = _problem(8, 2, 5, 1, seed=3)
    forward, backward = get_kernels("cpu").projected
    y, _, zN = forward(f["u"], f["V"], f["w"], f["c"], 0.2, 1.0, f["y0"], f["z0"])
    grads = backward(f["gy"], f["gyN"], f["gzN"], y, f["u"], f["V"], f["w"], f["c"], 0.2, 1.0, f["y0"], zN)
    grads_x = backward(f["gy"], f["gyN"], f["gzN"], y, f["u"], f["V"], f["w"], f["c"], 0.2, 1.0, f["y0"], zN,
                       grad_x=True)  # fmt: skip
    assert grads[0] is None and grads_x[0].shape == (8, 2, 5)
    # dL/dV: summed in the unit loop without grad_x, from the written grad_x with it (another rounding order).
    assert rel_err(grads[1], grads_x[1]) < 1e-14
    for a, b in zip(grads[2:], grads_x[2:], strict=True):
        assert torch.equal(a, b)


def test_results_do_not_depend_on_thread_count(monkeypatch):
    from unicornn.ops import cpu as cpu_ops

    monkeypatch.setattr(cpu_ops, "_MIN_THREAD_WORK", 0)
    f32 = {k: None if v is None else v.float() for k, v in _problem(19, 5, 61, 2, seed=3).items()}
    results = []
    for threads in (1, 3):
        with torch_threads(threads):
            assert len(cpu_ops._ranges(5 * 61, 19)) == threads  # ranges cut inside batch rows
            outs, grads = _run(f32, "cpu", 0.4, 3.0)
            results.append(outs + grads)
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


def _ops_in_graph(t: torch.Tensor) -> set[str]:
    """Names of the autograd nodes ``t`` depends on."""
    seen, todo, names = set(), [t.grad_fn], set()
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(node.name())
        todo.extend(n for n, _ in node.next_functions)
    return names


def _projected_in(t: torch.Tensor) -> bool:
    """Whether ``t`` comes from a projected scan: the op's node, or that of its eager path."""
    return any("scan_projected" in name or "ScanProjected" in name for name in _ops_in_graph(t))


def test_which_inputs_are_projected_in_the_kernels():
    from unicornn.ops.cpu import max_projected_width

    assert [max_projected_width(M) for M in (1, 32, 159, 160, 256)] == [3, 3, 3, 4, 6]
    for d, M, backend, expected in [(1, 3, "cpu", True), (3, 5, "auto", True), (4, 5, "cpu", False),
                                    (4, 160, "cpu", True), (5, 160, "cpu", False), (1, 3, "reference", False)]:  # fmt: skip
        f = _problem(6, 2, M, d, seed=d)
        V = f["V"].clone().requires_grad_()
        y, _, _ = unicornn_scan_projected(f["u"], V, f["w"], f["c"], 0.1, 1.0, backend=backend)
        assert _projected_in(y) == expected, (d, M, backend)


def test_the_module_projects_a_narrow_first_layer_input():
    torch.manual_seed(0)
    narrow = UnICORNN(2, 8, num_layers=2, dt=0.1, alpha=1.0, backend="cpu")
    out, _ = narrow(torch.randn(10, 3, 2))
    assert _projected_in(out)
    wide = UnICORNN(9, 8, num_layers=1, dt=0.1, alpha=1.0, backend="cpu")
    out, _ = wide(torch.randn(10, 3, 9))
    assert not _projected_in(out)
    # Each direction of a bidirectional layer: the reversed input is projected.
    bi = UnICORNN(1, 8, dt=0.1, alpha=1.0, bidirectional=True, backend="cpu").double()
    ref = UnICORNN(1, 8, dt=0.1, alpha=1.0, bidirectional=True, backend="reference").double()
    ref.load_state_dict(bi.state_dict())
    u = torch.randn(10, 3, 1, dtype=F64)
    out, (yN, zN) = bi(u)
    out_r, (yN_r, zN_r) = ref(u)
    assert _projected_in(out)
    for a, r in ((out, out_r), (yN, yN_r), (zN, zN_r)):
        assert rel_err(a, r) < 1e-12


def test_padded_batches_are_projected_per_segment():
    """With lengths (a right-padded batch cut at each distinct length), each segment projects its input in the
    kernels: results and gradients equal the reference's, in both directions."""
    torch.manual_seed(1)
    fused = UnICORNN(2, 8, num_layers=2, dt=0.1, alpha=1.0, bidirectional=True, backend="cpu").double()
    ref = UnICORNN(2, 8, num_layers=2, dt=0.1, alpha=1.0, bidirectional=True, backend="reference").double()
    ref.load_state_dict(fused.state_dict())
    u = torch.randn(11, 4, 2, dtype=F64)
    lengths = torch.tensor([11, 7, 3, 7])
    results = []
    for model in (fused, ref):
        model.zero_grad()
        out, (yN, zN) = model(u, lengths=lengths)
        ((out * out).sum() + yN.sum() + (zN * zN).sum()).backward()
        results.append([out, yN, zN] + [p.grad for p in model.parameters()])
        if model is fused:
            assert _projected_in(out)
    for a, r in zip(*results, strict=True):
        assert rel_err(a, r) < 1e-12


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_input_is_computed_in_float32(dtype):
    f = _problem(12, 2, 7, 2, seed=4)
    f32 = {k: None if v is None else v.float() for k, v in f.items()}
    u = f["u"].to(dtype)
    y, yN, zN = unicornn_scan_projected(u, f32["V"], f32["w"], f32["c"], 0.2, 1.0, f32["y0"], f32["z0"])
    y_r, yN_r, zN_r = unicornn_scan_projected(u.float(), f32["V"], f32["w"], f32["c"], 0.2, 1.0, f32["y0"],
                                              f32["z0"])  # fmt: skip
    assert y.dtype == dtype and yN.dtype == torch.float32
    assert torch.equal(y, y_r.to(dtype)) and torch.equal(yN, yN_r) and torch.equal(zN, zN_r)


def test_bad_arguments_are_named():
    f = _problem(5, 2, 3, 2, seed=1)
    args = (f["w"], f["c"], 0.1, 1.0)
    with pytest.raises(ValueError, match="u must be 3-D"):
        unicornn_scan_projected(f["u"][0], f["V"], *args)
    with pytest.raises(TypeError, match="u must be a floating-point"):
        unicornn_scan_projected(f["u"].long(), f["V"], *args)
    with pytest.raises(ValueError, match=r"weight_ih must be a Tensor of shape \(M, d\) with d = 2"):
        unicornn_scan_projected(f["u"], f["V"][:, :1], *args)
    with pytest.raises(ValueError, match="weight_hh must have shape"):
        unicornn_scan_projected(f["u"], f["V"], f["w"][:2], f["c"], 0.1, 1.0)
    with pytest.raises(ValueError, match="dt"):
        unicornn_scan_projected(f["u"], f["V"], f["w"], f["c"], 0.0, 1.0)


@pytest.mark.parametrize("compiler", ["aot_eager"])
def test_torch_compile_captures_the_op(compiler):
    f = _problem(9, 2, 5, 1, seed=6)
    V = f["V"].clone().requires_grad_()

    def fn(u, V):
        y, yN, zN = unicornn_scan_projected(u, V, f["w"], f["c"], 0.2, 1.0, backend="cpu")
        return y.sum() + yN.sum() + zN.sum()

    fn(f["u"], V).backward()
    grad = V.grad.clone()
    V.grad = None
    torch._dynamo.reset()
    out = torch.compile(fn, backend=compiler, fullgraph=True)(f["u"], V)
    out.backward()
    assert torch.allclose(out, fn(f["u"], V)) and torch.allclose(V.grad, grad, rtol=1e-12, atol=1e-12)
