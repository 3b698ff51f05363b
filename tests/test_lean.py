"""memory="lean": gradients equal the standard mode's, and nothing per step is kept but the input."""

from __future__ import annotations

import pytest
import torch
from helpers import device_for, fused_backends, rel_err

from unicornn import UnICORNN

BACKENDS = ["reference", *[b for b in fused_backends() if b == "cpu"]]


def pair(backend="reference", dtype=torch.float64, chunk=4, **kw):
    cfg = dict(input_size=3, hidden_size=6, num_layers=4, dt=[0.3, 0.1, 0.2, 0.25], alpha=1.5, dropout=0.3,
               residual_skip=2)  # fmt: skip
    cfg.update(kw)
    torch.manual_seed(0)
    standard = UnICORNN(**cfg, backend=backend).to(dtype)
    lean = UnICORNN(**cfg, backend=backend, memory="lean", checkpoint_every=chunk).to(dtype)
    lean.load_state_dict(standard.state_dict())
    return standard, lean


def run(m, x, state, lengths, return_sequence=True, seed=3):
    m.zero_grad()
    x = x.clone().requires_grad_()
    state = tuple(s.clone().requires_grad_() for s in state) if state is not None else None
    torch.manual_seed(seed)  # the same dropout masks in both modes
    out, (y, z) = m(x, state, lengths=lengths, return_sequence=return_sequence)
    loss = (y.sin() * z).sum() + (out.pow(2).sum() if out is not None else 0.0)
    loss.backward()
    grads = [x.grad] + ([s.grad for s in state] if state is not None else [])
    return [t for t in (out, y, z) if t is not None] + grads + [p.grad for p in m.parameters()]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("chunk", [1, 4, 7, 50])
@pytest.mark.parametrize("with_state,with_lengths", [(False, False), (True, False), (True, True)])
def test_lean_equals_standard_float64(backend, chunk, with_state, with_lengths):
    standard, lean = pair(backend, chunk=chunk)
    N, B = 17, 3
    x = torch.randn(N, B, 3, dtype=torch.float64)
    state = (
        (torch.randn(4, B, 6, dtype=torch.float64), torch.randn(4, B, 6, dtype=torch.float64))
        if with_state
        else None
    )
    lengths = torch.tensor([17, 9, 4]) if with_lengths else None
    for a, b in zip(run(standard, x, state, lengths), run(lean, x, state, lengths)):
        assert rel_err(b, a) < 1e-9


@pytest.mark.parametrize("backend", fused_backends())
def test_lean_equals_standard_float32_on_every_fused_backend(backend):
    """float32 on each fused backend (Triton on CUDA when present): the same kernels in both modes."""
    dev = device_for(backend)
    standard, lean = pair(backend, dtype=torch.float32, chunk=6)
    standard.to(dev)
    lean.to(dev)
    x = torch.randn(23, 3, 3, device=dev)
    state = (torch.randn(4, 3, 6, device=dev), torch.randn(4, 3, 6, device=dev))
    lengths = torch.tensor([23, 11, 6])
    for a, b in zip(run(standard, x, state, lengths), run(lean, x, state, lengths)):
        assert rel_err(b, a) < 1e-5


def test_lean_without_output_sequence_and_batch_first():
    standard, lean = pair(chunk=5, batch_first=True)
    x = torch.randn(3, 23, 3, dtype=torch.float64)
    a = run(standard, x, None, None, return_sequence=False)
    b = run(lean, x, None, None, return_sequence=False)
    assert len(a) == len(b)
    for p, q in zip(a, b):
        assert rel_err(q, p) < 1e-9
    out, _ = lean(x)
    assert out.shape == (3, 23, 6)


def test_lean_inference_and_eval_mode():
    standard, lean = pair(chunk=6)
    standard.eval()
    lean.eval()
    x = torch.randn(20, 2, 3, dtype=torch.float64)
    with torch.no_grad():
        a, (ya, za) = standard(x)
        b, (yb, zb) = lean(x)
    torch.testing.assert_close(b, a)
    torch.testing.assert_close(yb, ya)
    torch.testing.assert_close(zb, za)


def test_lean_keeps_nothing_per_step_but_the_input():
    N, B = 64, 2
    standard, lean = pair(chunk=8, dropout=0.0)
    x = torch.randn(N, B, 3, dtype=torch.float64, requires_grad=True)

    def saved_shapes(m):
        shapes = []

        def pack(t):
            shapes.append(tuple(t.shape))
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            m(x, return_sequence=False)
        return shapes

    lean_shapes = saved_shapes(lean)
    per_step = [s for s in lean_shapes if len(s) == 3 and s[0] == N]
    assert per_step == [(N, B, 3)], lean_shapes  # the input, once
    numel = [sum(torch.Size(s).numel() for s in saved_shapes(m)) for m in (standard, lean)]
    assert numel[0] > 4 * numel[1], numel  # the standard mode keeps every layer's sequences


@pytest.mark.parametrize("chunk", [2, 1024])
def test_lean_errors_and_repr(chunk):
    with pytest.raises(ValueError, match="memory"):
        UnICORNN(2, 3, memory="tiny")
    with pytest.raises(ValueError, match="checkpoint_every"):
        UnICORNN(2, 3, memory="lean", checkpoint_every=0)
    assert f"checkpoint_every={chunk}" in repr(UnICORNN(2, 3, memory="lean", checkpoint_every=chunk))


def test_lean_under_autocast():
    standard, lean = pair(dtype=torch.float32, chunk=5, dropout=0.0)
    x = torch.randn(19, 2, 3)
    results = []
    for m in (standard, lean):
        m.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, (y, z) = m(x)
            loss = out.float().pow(2).sum() + y.float().sum()
        loss.backward()
        assert out.dtype == torch.bfloat16
        results.append([out.float(), *[p.grad for p in m.parameters()]])
    torch.testing.assert_close(results[1][0], results[0][0], rtol=0, atol=0)  # the same forward
    for a, b in zip(*results):
        # weight gradients are bf16 matmuls summed per chunk instead of over the whole sequence
        assert rel_err(b, a) < 2e-2


def _output_and_grads(m, x, g_out, dtype):
    """Output and gradients (input, every parameter) by name, for one upstream gradient of the output."""
    m.zero_grad()
    xi = x.detach().to(dtype).requires_grad_()
    out, _ = m(xi)
    out.backward(g_out.to(dtype))
    return {"output": out, "x": xi.grad, **{n: p.grad for n, p in m.named_parameters()}}


@pytest.mark.slow
@pytest.mark.skipif("cpu" not in BACKENDS, reason="needs the fused CPU backend for the float64 ground truth")
def test_lean_accuracy_at_eigenworms_length():
    """Accuracy contract: lean gradients no worse than 2x float32 autograd's own error at N=17,984 (dt=0.0343, alpha=0).

    Ground truth: the fused CPU backend in float64 (itself equal to the reference loop to 1e-10, tested in
    test_cpu_backend.py); yardstick: float32 autograd through the reference loop."""
    N, B, d, M = 17984, 4, 6, 32
    cfg = dict(input_size=d, hidden_size=M, num_layers=2, dt=0.0343, alpha=0.0)
    torch.manual_seed(0)
    truth_model = UnICORNN(**cfg, backend="cpu").double()
    state = truth_model.state_dict()
    x = torch.randn(N, B, d, dtype=torch.float64)
    g_out = torch.randn(N, B, M, dtype=torch.float64)
    truth = _output_and_grads(truth_model, x, g_out, torch.float64)
    yardstick_model = UnICORNN(**cfg, backend="reference")
    yardstick_model.load_state_dict(state)
    yardstick = _output_and_grads(yardstick_model, x, g_out, torch.float32)
    lean = UnICORNN(**cfg, memory="lean", backend="cpu")
    lean.load_state_dict(state)
    got = _output_and_grads(lean, x, g_out, torch.float32)
    for name, t in truth.items():
        assert rel_err(got[name], t) <= 2.0 * rel_err(yardstick[name], t) + 1e-7, name


@pytest.mark.parametrize("backend", BACKENDS)
def test_lean_retain_graph_like_standard(backend):
    """Two backward passes through one forward (retain_graph=True), and two autograd.grad calls."""
    standard, lean = pair(backend, chunk=4)
    x = torch.randn(13, 2, 3, dtype=torch.float64)
    state = (torch.randn(4, 2, 6, dtype=torch.float64), torch.randn(4, 2, 6, dtype=torch.float64))
    results = []
    for m in (standard, lean):
        m.zero_grad()
        xi = x.clone().requires_grad_()
        torch.manual_seed(5)
        out, (y, z) = m(xi, state)
        loss = out.pow(2).sum() + (y.sin() * z).sum()
        loss.backward(retain_graph=True)
        once = [p.grad.clone() for p in m.parameters()] + [xi.grad.clone()]
        loss.backward(retain_graph=True)  # accumulates: twice the first gradients
        twice = [p.grad for p in m.parameters()] + [xi.grad]
        for a, b in zip(once, twice):
            torch.testing.assert_close(b, 2 * a, rtol=1e-12, atol=0)
        g1 = torch.autograd.grad(loss, [xi, *m.parameters()], retain_graph=True)
        g2 = torch.autograd.grad(loss, [xi, *m.parameters()])
        for a, b in zip(g1, g2):
            torch.testing.assert_close(b, a, rtol=0, atol=0)
        results.append(g1)
    for a, b in zip(*results):
        assert rel_err(b, a) < 1e-9
    with pytest.raises(RuntimeError, match="second time"):
        loss.backward()  # the graph was freed by the last call, as in the standard mode


def test_lean_gradcheck():
    """torch.autograd.gradcheck through a lean module (input, initial states), several chunks."""
    _, lean = pair(chunk=3, dropout=0.0)
    x = torch.randn(8, 2, 3, dtype=torch.float64, requires_grad=True)
    y0 = torch.randn(4, 2, 6, dtype=torch.float64, requires_grad=True)
    z0 = torch.randn(4, 2, 6, dtype=torch.float64, requires_grad=True)

    def f(x, y0, z0):
        out, (y, z) = lean(x, (y0, z0))
        return out, y, z

    assert torch.autograd.gradcheck(f, (x, y0, z0))


@pytest.mark.parametrize("backend", BACKENDS)
def test_double_backward_is_a_clear_error_in_lean_mode(backend):
    _, lean = pair(backend, chunk=4)
    x = torch.randn(9, 2, 3, dtype=torch.float64, requires_grad=True)
    out, _ = lean(x)
    with pytest.raises(RuntimeError, match="does not support double backward"):
        torch.autograd.grad(out.pow(2).sum(), x, create_graph=True)


@pytest.mark.skipif("cpu" not in BACKENDS, reason="needs the fused CPU backend")
def test_double_backward_in_standard_mode():
    """The reference backend is plain autograd (double backward works); a fused one raises a RuntimeError."""
    for backend in ("reference", "cpu"):
        standard, _ = pair(backend, dropout=0.0)
        x = torch.randn(9, 2, 3, dtype=torch.float64, requires_grad=True)
        out, _ = standard(x)
        (g,) = torch.autograd.grad(out.pow(2).sum(), x, create_graph=True)
        if backend == "reference":
            (gg,) = torch.autograd.grad(g.sum(), x)
            assert torch.isfinite(gg).all()
        else:
            with pytest.raises(RuntimeError, match="double backward .* not supported"):
                torch.autograd.grad(g.sum(), x)
