"""The UnICORNN module: semantics, state handling, padding, dropout, residual stacking, errors.

Whole-module comparisons run every fused backend available here against the reference backend.
"""

from __future__ import annotations

import pytest
import torch
from helpers import device_for, fused_backends, rel_err

from unicornn import UnICORNN, dropout_over_time, unicornn_scan

FUSED = fused_backends()


def make(backend="reference", dtype=torch.float64, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(input_size=3, hidden_size=7, num_layers=3, dt=[0.3, 0.15, 0.2], alpha=2.0)
    cfg.update(kw)
    return UnICORNN(**cfg, backend=backend).to(dtype=dtype, device=device_for(backend))


def test_output_and_state_shapes():
    m = make()
    x = torch.randn(11, 4, 3, dtype=torch.float64)
    out, (y, z) = m(x)
    assert out.shape == (11, 4, 7) and y.shape == (3, 4, 7) and z.shape == (3, 4, 7)
    torch.testing.assert_close(out[-1], y[-1])


def test_module_equals_manual_stack_of_scans():
    m = make(dropout=0.0)
    x = torch.randn(9, 2, 3, dtype=torch.float64)
    out, (y, z) = m(x)
    below = x
    for k in range(3):
        p = m.layer_parameters(k)
        proj = below @ p["weight_ih"].T + p["bias_ih"]
        below, yk, zk = unicornn_scan(proj, p["weight_hh"], p["c"], m.dt[k], 2.0, backend="reference")
        torch.testing.assert_close(y[k], yk)
        torch.testing.assert_close(z[k], zk)
    torch.testing.assert_close(out, below)


def test_batch_first():
    m = make()
    x = torch.randn(10, 3, 3, dtype=torch.float64)
    out, state = m(x)
    m.batch_first = True
    out_bf, state_bf = m(x.transpose(0, 1).contiguous())
    torch.testing.assert_close(out_bf, out.transpose(0, 1))
    torch.testing.assert_close(state_bf[0], state[0])
    torch.testing.assert_close(state_bf[1], state[1])


@pytest.mark.parametrize("backend", ["reference", *FUSED])
def test_state_carrying_equals_one_run(backend):
    dtype = torch.float64 if backend != "triton" else torch.float32
    m = make(backend=backend, dtype=dtype)
    x = torch.randn(24, 3, 3, dtype=dtype, device=device_for(backend))
    out, (y, z) = m(x)
    out1, st = m(x[:10])
    out2, (y2, z2) = m(x[10:], st)
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.cat([out1, out2]), out, **tol)
    torch.testing.assert_close(y2, y, **tol)
    torch.testing.assert_close(z2, z, **tol)


def test_initial_state_receives_gradient():
    m = make()
    x = torch.randn(8, 2, 3, dtype=torch.float64)
    y0 = torch.randn(3, 2, 7, dtype=torch.float64, requires_grad=True)
    z0 = torch.randn(3, 2, 7, dtype=torch.float64, requires_grad=True)
    out, (y, z) = m(x, (y0, z0))
    (out.sum() + z.sum()).backward()
    assert y0.grad is not None and z0.grad is not None
    assert float(y0.grad.abs().sum()) > 0 and float(z0.grad.abs().sum()) > 0


@pytest.mark.parametrize("backend", ["reference", *FUSED])
def test_lengths_give_each_sequence_its_own_result(backend):
    dtype = torch.float64 if backend != "triton" else torch.float32
    m = make(backend=backend, dtype=dtype, residual_skip=2, num_layers=4, dt=0.2)
    N, B = 15, 5
    lengths = torch.tensor([15, 4, 9, 9, 1])
    dev = device_for(backend)
    x = torch.randn(N, B, 3, dtype=dtype, device=dev)
    x_noisy = x.clone()
    for b in range(B):
        x_noisy[lengths[b] :, b] = 1e3 * torch.randn(N - lengths[b], 3, dtype=dtype, device=dev)  # garbage
    y0 = torch.randn(4, B, 7, dtype=dtype, device=dev)
    z0 = torch.randn(4, B, 7, dtype=dtype, device=dev)
    out, (y, z) = m(x_noisy, (y0, z0), lengths=lengths)
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    for b in range(B):
        L = int(lengths[b])
        ob, (yb, zb) = m(x[:L, b : b + 1], (y0[:, b : b + 1], z0[:, b : b + 1]))
        torch.testing.assert_close(out[:L, b], ob[:, 0], **tol)
        torch.testing.assert_close(y[:, b], yb[:, 0], **tol)
        torch.testing.assert_close(z[:, b], zb[:, 0], **tol)
        assert bool((out[L:, b] == 0).all())


def test_lengths_gradients_ignore_padding():
    m = make()
    x = torch.randn(12, 3, 3, dtype=torch.float64, requires_grad=True)
    lengths = [12, 5, 8]
    out, (y, z) = m(x, lengths=lengths)
    (out.pow(2).sum() + y.sum() + z.sum()).backward()
    for b, L in enumerate(lengths):
        assert bool((x.grad[L:, b] == 0).all())
        assert float(x.grad[:L, b].abs().sum()) > 0


def test_dropout_mask_is_shared_over_time():
    torch.manual_seed(0)
    x = torch.ones(50, 6, 40)
    out = dropout_over_time(x, 0.3, training=True)
    mask = out[0]
    assert bool((out == mask).all()), "the same mask at every step"
    assert set(torch.unique(mask).tolist()) <= {0.0, torch.tensor(1.0 / 0.7).item()}
    assert 0.2 < float((mask == 0).float().mean()) < 0.4
    assert dropout_over_time(x, 0.3, training=False) is x


def test_module_dropout_between_layers_only_in_training():
    m = make(dropout=0.5, num_layers=2, dt=0.2)
    x = torch.randn(10, 4, 3, dtype=torch.float64)
    m.eval()
    a, _ = m(x)
    b, _ = m(x)
    torch.testing.assert_close(a, b)
    m.train()
    torch.manual_seed(1)
    c, _ = m(x)
    torch.manual_seed(1)
    d, _ = m(x)
    torch.testing.assert_close(c, d)
    assert not torch.allclose(a, c)
    m1 = make(dropout=0.5, num_layers=1, dt=0.2)
    m1.train()
    torch.testing.assert_close(m1(x)[0], m1.eval()(x)[0])  # no dropout after the top layer


@pytest.mark.parametrize("input_size", [3, 7])
def test_residual_stacking(input_size):
    m = make(num_layers=5, residual_skip=2, input_size=input_size, dt=0.2)
    names = {n: tuple(p.shape) for n, p in m.named_parameters() if n.startswith("weight_skip")}
    # layers l = 3, 4, 5 (1-based) receive y^{l-3}: u, y^1, y^2
    assert names == {"weight_skip_l2": (7, input_size), "weight_skip_l3": (7, 7), "weight_skip_l4": (7, 7)}
    x = torch.randn(9, 2, input_size, dtype=torch.float64)
    out, _ = m(x)
    out.pow(2).sum().backward()
    for n, p in m.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, n
    # layer 3's input is V y^2 + Lambda u, checked by hand
    y1, _, _ = _layer(m, 0, x)
    y2, _, _ = _layer(m, 1, y1)
    p = m.layer_parameters(2)
    proj = y2 @ p["weight_ih"].T + p["bias_ih"] + x @ p["weight_skip"].T
    y3, _, _ = unicornn_scan(proj, p["weight_hh"], p["c"], 0.2, 2.0, backend="reference")
    _, (ys, _) = m(x)
    torch.testing.assert_close(ys[2], y3[-1])


def _layer(m, k, below):
    p = m.layer_parameters(k)
    return unicornn_scan(below @ p["weight_ih"].T + p["bias_ih"], p["weight_hh"], p["c"], m.dt[k], m.alpha)


def test_gradcheck_module():
    m = make(num_layers=3, residual_skip=2, hidden_size=3, dt=0.4)
    x = torch.randn(6, 2, 3, dtype=torch.float64, requires_grad=True)
    y0 = torch.randn(3, 2, 3, dtype=torch.float64, requires_grad=True)
    z0 = torch.randn(3, 2, 3, dtype=torch.float64, requires_grad=True)
    params = list(m.parameters())
    names = [n for n, _ in m.named_parameters()]

    def f(x, y0, z0, *ps):
        out, (y, z) = torch.func.functional_call(m, dict(zip(names, ps)), (x, (y0, z0)))
        return out, y, z

    assert torch.autograd.gradcheck(f, (x, y0, z0, *[p.detach().clone().requires_grad_() for p in params]))


@pytest.mark.parametrize("backend", FUSED)
def test_fused_backend_matches_reference_on_whole_module(backend):
    dtype = torch.float64 if backend == "cpu" else torch.float32
    kw = dict(num_layers=4, residual_skip=2, dt=[0.05, 0.3, 0.2, 0.1], dropout=0.25, hidden_size=9)
    dev = device_for(backend)
    ref = make(backend="reference", dtype=dtype, **kw).to(dev)  # the same device: the same dropout masks
    fused = make(backend=backend, dtype=dtype, **kw)
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(13, 3, 3, dtype=dtype, device=dev)
    state = (torch.randn(4, 3, 9, dtype=dtype, device=dev), torch.randn(4, 3, 9, dtype=dtype, device=dev))
    lengths = torch.tensor([13, 6, 10])
    results = []
    for m in (ref, fused):
        m.zero_grad()
        xi = x.clone().requires_grad_()
        st = tuple(s.clone().requires_grad_() for s in state)
        torch.manual_seed(7)  # the same dropout masks
        out, (y, z) = m(xi, st, lengths=lengths)
        (out.pow(2).sum() + (y * z).sum()).backward()
        grads = [xi.grad, st[0].grad, st[1].grad] + [p.grad for p in m.parameters()]
        results.append([out, y, z, *grads])
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    for a, b in zip(*results):
        assert rel_err(b, a) < tol


def test_effective_time_steps():
    m = make(dt=[0.5, 0.25, 0.1])
    steps = m.effective_time_steps()
    assert steps.shape == (3, 7)
    for k, dt in enumerate([0.5, 0.25, 0.1]):
        torch.testing.assert_close(steps[k], dt * torch.sigmoid(m.layer_parameters(k)["c"].detach()))
    assert bool((steps > 0).all()) and bool(
        (steps < torch.tensor([0.5, 0.25, 0.1], dtype=steps.dtype)[:, None]).all()
    )


def test_paper_initialisation():
    torch.manual_seed(0)
    m = UnICORNN(64, 256, num_layers=2)
    for k in range(2):
        p = {n: t.detach() for n, t in m.layer_parameters(k).items() if t is not None}
        w, c = p["weight_hh"], p["c"]
        assert 0 <= float(w.min()) and float(w.max()) <= 1 and 0.4 < float(w.mean()) < 0.6
        assert -0.1 <= float(c.min()) and float(c.max()) <= 0.1
        assert bool((p["bias_ih"] == 0).all())
        fan_in = p["weight_ih"].shape[1]
        bound = (6.0 / ((1 + 8**2) * fan_in)) ** 0.5  # Kaiming-uniform, a = 8, fan_in
        assert float(p["weight_ih"].abs().max()) <= bound
        assert float(p["weight_ih"].abs().max()) > 0.9 * bound


def test_float32_and_autocast():
    m = make(dtype=torch.float32)
    x = torch.randn(12, 2, 3)
    out32, _ = m(x)
    assert out32.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, (y, z) = m(x)
        out.float().sum().backward()
    assert out.dtype == torch.bfloat16
    assert rel_err(out.float(), out32) < 5e-2
    assert all(p.grad is not None for p in m.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    m = make(dtype=torch.float32)
    x = torch.randn(20, 3, 3)
    out, _ = m(x)
    out_cuda, _ = m.cuda()(x.cuda())
    assert rel_err(out_cuda.cpu(), out) < 1e-5


# ---------------------------------------------------------------------------------------------------
# Bad input: clear errors naming the argument
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(num_layers=0), ValueError, "num_layers"),
        (dict(num_layers=1.5), TypeError, "num_layers"),
        (dict(hidden_size=0), ValueError, "hidden_size"),
        (dict(input_size=0), ValueError, "input_size"),
        (dict(dt=0.0), ValueError, "dt"),
        (dict(dt=1.5), ValueError, "dt"),
        (dict(dt=-0.1), ValueError, "dt"),
        (dict(dt=[0.1, 0.2]), ValueError, "dt"),
        (dict(dt="fast"), TypeError, "dt"),
        (dict(alpha=-1.0), ValueError, "alpha"),
        (dict(alpha=float("inf")), ValueError, "alpha must be finite"),
        (dict(alpha=float("nan")), ValueError, "alpha must be finite"),
        (dict(dt=float("nan")), ValueError, "dt must be finite"),
        (dict(dt=[0.1, float("inf"), 0.2]), ValueError, "dt must be finite"),
        (dict(input_gain=0.0), ValueError, "input_gain"),
        (dict(input_gain=-2.0), ValueError, "input_gain"),
        (dict(input_gain=float("inf")), ValueError, "input_gain"),
        (dict(input_gain=float("nan")), ValueError, "input_gain"),
        (dict(input_gain="big"), TypeError, "input_gain"),
        (dict(dropout=1.0), ValueError, "dropout"),
        (dict(dropout=-0.1), ValueError, "dropout"),
        (dict(residual_skip=1), ValueError, "residual_skip"),
        (dict(residual_skip=3), ValueError, "residual_skip"),
        (dict(residual_skip=2.0), TypeError, "residual_skip"),
        (dict(backend="gpu"), ValueError, "backend"),
    ],
)
def test_constructor_errors(kwargs, exc, match):
    cfg = dict(input_size=3, hidden_size=7, num_layers=3, dt=0.1, alpha=1.0)
    cfg.update(kwargs)
    with pytest.raises(exc, match=match):
        UnICORNN(**cfg)


def test_forward_errors():
    m = make()
    x = torch.randn(10, 4, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="3-D"):
        m(torch.randn(10, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="input_size=3"):
        m(torch.randn(10, 4, 5, dtype=torch.float64))
    with pytest.raises(TypeError, match="input"):
        m(x.numpy())
    good = torch.zeros(3, 4, 7, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"state\[0\]"):
        m(x, (torch.zeros(3, 5, 7, dtype=torch.float64), good))
    with pytest.raises(ValueError, match=r"state\[1\]"):
        m(x, (good, torch.zeros(2, 4, 7, dtype=torch.float64)))
    with pytest.raises(TypeError, match="state"):
        m(x, good)
    with pytest.raises(ValueError, match="lengths"):
        m(x, lengths=[10, 10, 10])
    with pytest.raises(ValueError, match="lengths"):
        m(x, lengths=[10, 11, 3, 3])
    with pytest.raises(ValueError, match="lengths"):
        m(x, lengths=[10, 0, 3, 3])
    with pytest.raises(TypeError, match="lengths"):
        m(x, lengths=[1.0, 2.0, 3.0, 4.0])


def test_scan_errors():
    x = torch.randn(5, 2, 3)
    w, c = torch.rand(3), torch.rand(3)
    with pytest.raises(ValueError, match="x must be 3-D"):
        unicornn_scan(x[0], w, c, 0.1, 1.0)
    with pytest.raises(ValueError, match="weight_hh"):
        unicornn_scan(x, torch.rand(4), c, 0.1, 1.0)
    with pytest.raises(ValueError, match="c must"):
        unicornn_scan(x, w, torch.rand(2, 3), 0.1, 1.0)
    with pytest.raises(ValueError, match="y0"):
        unicornn_scan(x, w, c, 0.1, 1.0, y0=torch.zeros(3, 3))
    with pytest.raises(ValueError, match="z0"):
        unicornn_scan(x, w, c, 0.1, 1.0, z0=torch.zeros(2, 4))
    with pytest.raises(ValueError, match="dt"):
        unicornn_scan(x, w, c, 0.0, 1.0)
    with pytest.raises(ValueError, match="alpha"):
        unicornn_scan(x, w, c, 0.1, -1.0)
    with pytest.raises(ValueError, match="backend"):
        unicornn_scan(x, w, c, 0.1, 1.0, backend="fast")
    with pytest.raises(TypeError, match="x must be a floating"):
        unicornn_scan(x.long(), w, c, 0.1, 1.0)


def test_scan_rejects_non_finite_parameters():
    x = torch.randn(5, 2, 3)
    w, c = torch.rand(3), torch.rand(3)
    for value in (float("inf"), float("nan")):
        with pytest.raises(ValueError, match="alpha must be finite"):
            unicornn_scan(x, w, c, 0.1, value)
        with pytest.raises(ValueError, match="dt must be finite"):
            unicornn_scan(x, w, c, value, 1.0)


@pytest.mark.parametrize(
    "model_dtype,input_dtype,fix",
    [
        (torch.float32, torch.float64, r"model\.double\(\)"),
        (torch.float64, torch.float32, r"model\.float\(\)"),
        (torch.float32, torch.float16, r"x\.to\(torch\.float32\)"),
        (torch.float32, torch.int64, r"x\.to\(torch\.float32\)"),
        (torch.float64, torch.int64, r"x\.to\(torch\.float64\)"),
    ],
)
def test_input_of_another_dtype_is_a_clear_error(model_dtype, input_dtype, fix):
    """Not a bare matmul error: the message names both dtypes and a fix."""
    m = make(dtype=model_dtype)
    x = torch.ones(6, 2, 3, dtype=input_dtype)
    with pytest.raises(TypeError, match=str(model_dtype)) as err:
        m(x)
    assert str(input_dtype) in str(err.value)
    assert err.match(fix)


def test_input_gain_scales_the_first_projection_in_reset_parameters():
    plain = make(dtype=torch.float32, seed=3)
    gained = make(dtype=torch.float32, seed=3, input_gain=30.0)
    assert gained.input_gain == 30.0 and "input_gain=30.0" in repr(gained)
    assert "input_gain" not in repr(plain)
    torch.testing.assert_close(gained.weight_ih_l0, 30.0 * plain.weight_ih_l0)
    for k in (1, 2):  # only the first layer
        torch.testing.assert_close(getattr(gained, f"weight_ih_l{k}"), getattr(plain, f"weight_ih_l{k}"))
    # reset_parameters() re-draws the paper's initialisation and applies the gain again, not twice
    torch.manual_seed(5)
    gained.reset_parameters()
    torch.manual_seed(5)
    plain.reset_parameters()
    torch.testing.assert_close(gained.weight_ih_l0, 30.0 * plain.weight_ih_l0)
    bound = (6.0 / ((1 + 8**2) * 3)) ** 0.5
    assert float(gained.weight_ih_l0.detach().abs().max()) > 0.9 * 30.0 * bound


def test_docstring_example_runs():
    import doctest

    import unicornn.modules

    finder = doctest.DocTestFinder()
    tests = [t for t in finder.find(unicornn.modules.UnICORNN, globs={"torch": torch, "UnICORNN": UnICORNN})
             if t.examples]  # fmt: skip
    assert tests, "UnICORNN's docstring must keep a runnable example"
    runner = doctest.DocTestRunner()
    for t in tests:
        runner.run(t)
    assert runner.tries >= 4 and runner.failures == 0
