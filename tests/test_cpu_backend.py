"""The fused CPU backend (``backend="cpu"``) against the pure-PyTorch reference.

float64 comparisons are tight (the kernels do the reference's arithmetic up to rounding); float32 results are
held to the DESIGN.md section 2 contract against a float64 reference, with float32 autograd through the
reference loop as the yardstick. The reference loops run on one PyTorch thread: they are thousands of tiny
ops, which several threads only slow down.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("numba")

from unicornn.ops import cpu as cpu_ops  # noqa: E402
from unicornn.ops import resolve_backend, unicornn_scan  # noqa: E402
from unicornn.ops.reference import scan_backward_loop, scan_forward_loop  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src"
NAMES = ("x", "w", "c", "y0", "z0")


@contextlib.contextmanager
def torch_threads(n):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def make_inputs(N, B, M, seed, c_scale=0.1, states=True):
    """float64 inputs and upstream gradients; c ~ U(-c_scale, c_scale)."""
    g = torch.Generator().manual_seed(seed)
    d = torch.float64
    out = {
        "x": torch.randn(N, B, M, dtype=d, generator=g),
        "w": torch.rand(M, dtype=d, generator=g),
        "c": (torch.rand(M, dtype=d, generator=g) * 2 - 1) * c_scale,
        "y0": 0.5 * torch.randn(B, M, dtype=d, generator=g) if states else torch.zeros(B, M, dtype=d),
        "z0": 0.5 * torch.randn(B, M, dtype=d, generator=g) if states else torch.zeros(B, M, dtype=d),
        "gy": torch.randn(N, B, M, dtype=d, generator=g),
        "gyN": torch.randn(B, M, dtype=d, generator=g),
        "gzN": torch.randn(B, M, dtype=d, generator=g),
    }
    return out


def run(inp, backend, dt, alpha, dtype=torch.float64, final_grads=True):
    """Forward and backward through ``unicornn_scan``; returns (y, yN, zN) and the five gradients."""
    leaves = {k: inp[k].to(dtype).detach().requires_grad_() for k in NAMES}
    threads = 1 if backend == "reference" else torch.get_num_threads()
    with torch_threads(threads):
        y, yN, zN = unicornn_scan(
            leaves["x"], leaves["w"], leaves["c"], dt, alpha, leaves["y0"], leaves["z0"], backend=backend
        )
        loss = (y * inp["gy"].to(dtype)).sum()
        if final_grads:
            loss = loss + (yN * inp["gyN"].to(dtype)).sum() + (zN * inp["gzN"].to(dtype)).sum()
        loss.backward()
    return (y.detach(), yN.detach(), zN.detach()), tuple(leaves[k].grad for k in NAMES)


def rel(a, ref):
    """Relative error ||a - ref|| / ||ref|| in float64."""
    return ((a.double() - ref.double()).norm() / ref.double().norm()).item()


# --------------------------------------------------------------------------------------------------
# float64: the kernels against the reference, tightly
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "N,B,M",
    [(37, 3, 5), (1, 3, 5), (37, 1, 5), (1, 1, 1), (23, 7, 41), (4, 2, 300)],
    ids=lambda v: str(v),
)
@pytest.mark.parametrize("dt,alpha", [(0.19, 30.65), (0.9, 0.0), (0.0343, 2.5)])
def test_float64_matches_reference(N, B, M, dt, alpha):
    # (23, 7, 41): 287 units, more than one block and blocks not aligned with M; (4, 2, 300): M > block.
    inp = make_inputs(N, B, M, seed=N * 1000 + B * 100 + M, c_scale=2.0)
    out, grads = run(inp, "cpu", dt, alpha)
    out_ref, grads_ref = run(inp, "reference", dt, alpha)
    for name, a, b in zip(("y", "y_N", "z_N"), out, out_ref, strict=True):
        assert a.dtype == torch.float64
        assert rel(a, b) < 1e-12, name
    for name, a, b in zip(NAMES, grads, grads_ref, strict=True):
        assert a is not None and a.dtype == torch.float64, name
        assert rel(a, b) < 1e-10, f"grad of {name}: {rel(a, b)}"


@pytest.mark.parametrize("N,B,M", [(5, 0, 3), (5, 2, 0)])
def test_empty_batch_or_width(N, B, M):
    inp = make_inputs(N, B, M, seed=1)
    out, grads = run(inp, "cpu", 0.5, 1.0)
    out_ref, grads_ref = run(inp, "reference", 0.5, 1.0)
    for a, b in zip(out + grads, out_ref + grads_ref, strict=True):
        assert a.shape == b.shape and torch.equal(a, b)


def test_kernel_pair_matches_loop_contract_float32():
    # The kernel pair itself against scan_forward_loop / scan_backward_loop in float64, fed float32 data.
    inp = make_inputs(50, 4, 9, seed=7)
    f32 = {k: v.float() for k, v in inp.items()}
    y, yN, zN = cpu_ops.scan_forward(f32["x"], f32["w"], f32["c"], f32["y0"], f32["z0"], 0.3, 4.0)
    assert y.dtype == yN.dtype == zN.dtype == torch.float32
    d = {k: v.double() for k, v in f32.items()}
    ry, ryN, rzN = scan_forward_loop(d["x"], d["w"], d["c"], d["y0"], d["z0"], 0.3, 4.0)
    for a, b in ((y, ry), (yN, ryN), (zN, rzN)):
        assert rel(a, b) < 1e-6
    f = f32
    g = cpu_ops.scan_backward(f["gy"], f["gyN"], f["gzN"], f["x"], y, f["w"], f["c"], f["y0"], zN, 0.3, 4.0)
    gr = scan_backward_loop(d["gy"], d["gyN"], d["gzN"], d["x"], ry, d["w"], d["c"], d["y0"], rzN, 0.3, 4.0)
    for a, b in zip(g, gr, strict=True):
        assert a.dtype == torch.float32
        assert rel(a, b) < 1e-5


def test_results_do_not_depend_on_thread_count(monkeypatch):
    monkeypatch.setattr(cpu_ops, "_MIN_PARALLEL_WORK", 0)
    inp = make_inputs(19, 5, 61, seed=3)  # 305 units: ranges of 16-aligned sizes, a ragged last one
    results = []
    for threads in (1, 3):
        with torch_threads(threads):
            assert len(cpu_ops._ranges(5 * 61, 19)) == threads
            results.append(run(inp, "cpu", 0.4, 3.0, dtype=torch.float32))
    (o1, g1), (o3, g3) = results
    for a, b in zip(o1 + g1, o3 + g3, strict=True):
        assert torch.equal(a, b)


def test_gradcheck_float64():
    inp = make_inputs(7, 2, 3, seed=11, c_scale=1.0)
    args = tuple(inp[k].clone().requires_grad_() for k in NAMES)

    def f(x, w, c, y0, z0):
        return unicornn_scan(x, w, c, 0.5, 1.5, y0, z0, backend="cpu")

    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-8, rtol=1e-6)


def test_default_zero_states_and_partial_upstream_gradients():
    # y0/z0 omitted, and only the sequence output used (grad_yN/grad_zN arrive as None).
    inp = make_inputs(31, 3, 8, seed=5, states=False)
    x = inp["x"].clone().requires_grad_()
    w = inp["w"].clone().requires_grad_()
    c = inp["c"].clone().requires_grad_()
    outs = []
    for backend in ("cpu", "reference"):
        for p in (x, w, c):
            p.grad = None
        y, _, _ = unicornn_scan(x, w, c, 0.2, 7.0, backend=backend)
        (y * inp["gy"]).sum().backward()
        outs.append((y.detach(), x.grad.clone(), w.grad.clone(), c.grad.clone()))
    for a, b in zip(*outs, strict=True):
        assert rel(a, b) < 1e-10


# --------------------------------------------------------------------------------------------------
# float32: the accuracy contract of DESIGN.md section 2
# --------------------------------------------------------------------------------------------------


def _contract_errors(N, dt, alpha, seed):
    B, M = 4, 32
    inp = make_inputs(N, B, M, seed=seed, states=False)
    z = torch.zeros(B, M, dtype=torch.float64)
    with torch_threads(1):
        # float64 reference: the pure-PyTorch forward loop and Appendix-B backward loop.
        y64, _, zN64 = scan_forward_loop(inp["x"], inp["w"], inp["c"], z, z, dt, alpha)
        zero = torch.zeros_like(z)
        g64 = scan_backward_loop(inp["gy"], zero, zero, inp["x"], y64, inp["w"], inp["c"], z, zN64, dt, alpha)
        ref = (y64,) + g64[:3]
        out_ref32, g_ref32 = run(inp, "reference", dt, alpha, dtype=torch.float32, final_grads=False)
    out_cpu, g_cpu = run(inp, "cpu", dt, alpha, dtype=torch.float32, final_grads=False)
    yardstick = [rel(a, b) for a, b in zip((out_ref32[0],) + g_ref32[:3], ref, strict=True)]
    ours = [rel(a, b) for a, b in zip((out_cpu[0],) + g_cpu[:3], ref, strict=True)]
    print(
        f"\nN={N}: float32 autograd errors (y, x, w, c) {yardstick}\n       cpu backend errors        {ours}"
    )
    return yardstick, ours


def _check_contract(yardstick, ours):
    names = ("output", "grad x", "grad w", "grad c")
    # output: within 2x the float32 reference's own error; gradients: within 1.5x float32 autograd's error.
    for name, limit, e_ref, e in zip(names, (2.0, 1.5, 1.5, 1.5), yardstick, ours, strict=True):
        assert e <= limit * e_ref, f"{name}: {e:.3g} > {limit} x {e_ref:.3g}"


def test_accuracy_contract_psmnist():
    _check_contract(*_contract_errors(1000, 0.19, 30.65, seed=2021))


@pytest.mark.slow
def test_accuracy_contract_eigenworms():
    _check_contract(*_contract_errors(17984, 0.0343, 0.0, seed=2022))


# --------------------------------------------------------------------------------------------------
# Autograd plumbing, torch.compile, dtypes, non-finite values
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("with_states", [True, False])
def test_saved_tensors_are_inputs_output_params_and_final_state(with_states):
    N, B, M = 29, 3, 5
    inp = make_inputs(N, B, M, seed=13)
    x, w, c = (inp[k].float().requires_grad_() for k in ("x", "w", "c"))
    y0 = inp["y0"].float().requires_grad_() if with_states else None
    z0 = inp["z0"].float().requires_grad_() if with_states else None
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y, yN, zN = unicornn_scan(x, w, c, 0.3, 1.0, y0, z0, backend="cpu")
    shapes = sorted(tuple(t.shape) for t in saved)
    assert shapes == sorted([(N, B, M), (N, B, M), (M,), (M,), (B, M), (B, M)])
    ptrs = {t.data_ptr() for t in saved}
    assert {x.data_ptr(), y.data_ptr(), w.data_ptr(), c.data_ptr(), zN.data_ptr()} <= ptrs
    if with_states:
        assert y0.data_ptr() in ptrs
    (y.sum() + zN.sum()).backward()
    assert x.grad is not None and w.grad is not None and c.grad is not None


def test_auto_backend_is_cpu_for_cpu_tensors():
    assert resolve_backend("auto", torch.device("cpu")) == "cpu"


class _Tiny(torch.nn.Module):
    def __init__(self, width=2, hidden=6, classes=3):
        super().__init__()
        self.proj = torch.nn.Linear(width, hidden)
        self.w = torch.nn.Parameter(torch.rand(hidden))
        self.c = torch.nn.Parameter(torch.rand(hidden) * 0.2 - 0.1)
        self.head = torch.nn.Linear(hidden, classes)

    def forward(self, u):
        y, _, zN = unicornn_scan(self.proj(u), self.w, self.c, 0.2, 3.0, backend="cpu")
        return self.head(y[-1]) + zN.sum(-1, keepdim=True)


def _loss_and_grads(model, u):
    model.zero_grad()
    out = model(u)
    (out * torch.arange(out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
    return out.detach(), [p.grad.clone() for p in model.parameters()]


# Inductor (torch.compile's default backend) generates and compiles C++ for the ops around the custom op: about
# half a minute on a 2-core machine with an empty cache, so it is marked slow (CI runs it).
_INDUCTOR = pytest.param("inductor", marks=pytest.mark.slow)


@pytest.mark.parametrize("backend", ["aot_eager", _INDUCTOR])
def test_torch_compile_matches_eager(backend):
    torch.manual_seed(0)
    model = _Tiny().double()
    u = torch.randn(15, 4, 2, dtype=torch.float64)
    out, grads = _loss_and_grads(model, u)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    out_c, grads_c = _loss_and_grads(compiled, u)
    torch.testing.assert_close(out_c, out, rtol=1e-12, atol=1e-12)
    for a, b in zip(grads_c, grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_input(dtype):
    inp = make_inputs(20, 3, 7, seed=17)
    x = inp["x"].to(dtype).requires_grad_()
    w = inp["w"].float().requires_grad_()
    c = inp["c"].float().requires_grad_()
    y, yN, zN = unicornn_scan(x, w, c, 0.25, 2.0, backend="cpu")
    assert y.dtype == dtype and yN.dtype == zN.dtype == torch.float32  # final states stay in float32
    (y.float() * inp["gy"].float()).sum().backward()
    assert x.grad.dtype == dtype and w.grad.dtype == torch.float32
    # The same computation in float32 on the rounded input.
    x32 = x.detach().float().requires_grad_()
    w32 = w.detach().clone().requires_grad_()
    c32 = c.detach().clone().requires_grad_()
    y32, _, _ = unicornn_scan(x32, w32, c32, 0.25, 2.0, backend="cpu")
    (y32.to(dtype).float() * inp["gy"].float()).sum().backward()
    tol = 2e-2 if dtype == torch.bfloat16 else 5e-3
    assert rel(y, y32) < tol
    for a, b in ((x.grad, x32.grad), (w.grad, w32.grad), (c.grad, c32.grad)):
        assert torch.isfinite(a).all()
        assert rel(a, b) < 5 * tol


def test_non_finite_values_propagate_per_unit():
    N, B, M = 12, 2, 4
    inp = make_inputs(N, B, M, seed=19)
    x = inp["x"].float().clone()
    x[5, 0, 1] = float("nan")
    x[3, 1, 2] = float("inf")  # tanh(inf) = 1: stays finite
    w = inp["w"].float().clone()
    w[3] = float("nan")
    x.requires_grad_()
    w.requires_grad_()
    c = inp["c"].float().requires_grad_()
    y, yN, zN = unicornn_scan(x, w, c, 0.3, 1.0, backend="cpu")
    nan = torch.isnan(y)
    expected = torch.zeros(N, B, M, dtype=torch.bool)
    expected[5:, 0, 1] = True
    expected[:, :, 3] = True
    assert torch.equal(nan, expected)
    assert torch.isfinite(y[:, 1, 2]).all()
    (y * inp["gy"].float()).sum().backward()
    bad = torch.zeros(N, B, M, dtype=torch.bool)
    bad[:, 0, 1] = True
    bad[:, :, 3] = True
    assert torch.isfinite(x.grad[~bad]).all()
    assert torch.isnan(x.grad[:6, 0, 1]).all()
    assert torch.isnan(w.grad[[1, 3]]).all() and torch.isfinite(w.grad[[0, 2]]).all()


def test_tanh_rational_accuracy():
    a = np.concatenate(
        [
            np.linspace(-12.0, 12.0, 2_000_001),
            np.geomspace(1e-38, 1.0, 100_000),
            -np.geomspace(1e-38, 1.0, 1000),
            np.random.default_rng(0).standard_normal(100_000) * 3,
        ]
    ).astype(np.float32)
    got = cpu_ops.tanh32(a).astype(np.float64)
    exact = np.tanh(a.astype(np.float64))
    ulp = np.abs(got - exact) / np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64)
    assert ulp.max() <= 0.51
    special = cpu_ops.tanh32(np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 9.5, 40.0], np.float32))
    assert np.isnan(special[0])
    assert special[1] == 1.0 and special[2] == -1.0 and special[5] == 1.0 and special[6] == 1.0
    assert special[3] == 0.0 and not np.signbit(special[3]) and np.signbit(special[4])


def test_kernels_reject_unsupported_compute_dtype():
    x = torch.zeros(3, 1, 2, dtype=torch.float16)
    s = torch.zeros(1, 2, dtype=torch.float16)
    with pytest.raises(TypeError, match="float32 or float64"):
        cpu_ops.scan_forward(x, torch.zeros(2), torch.zeros(2), s, s, 0.1, 0.0)


# --------------------------------------------------------------------------------------------------
# Installation: missing numba, read-only install, JIT cache
# --------------------------------------------------------------------------------------------------


def _python(code, env_extra=None, pythonpath=SRC, env_drop=()):
    env = {k: v for k, v in os.environ.items() if k not in env_drop}
    env["PYTHONPATH"] = str(pythonpath)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=300
    )


def test_missing_numba_raises_import_error_and_auto_falls_back():
    proc = _python(
        """
        import sys
        sys.modules["numba"] = None  # makes `import numba` raise ImportError
        import torch
        try:
            import unicornn.ops.cpu
        except ImportError as err:
            print("ImportError:", err)
        else:
            raise SystemExit("imported without numba")
        from unicornn.ops import backend_available, resolve_backend
        assert not backend_available("cpu")
        assert resolve_backend("auto", torch.device("cpu")) == "reference"
        print("fallback ok")
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert "ImportError: the fused CPU backend needs numba" in proc.stdout and "fallback ok" in proc.stdout


# Run as root, permission bits do not stop writes, so there the probe numba uses to find a writable cache
# directory (a temporary file created in it) is made to fail for the package tree instead.
_READ_ONLY_PRELUDE = """
import os, sys, tempfile
PKG = {pkg!r}
if os.geteuid() == 0:
    _tf = tempfile.TemporaryFile
    def _guarded(*args, dir=None, **kwargs):
        if dir is not None and os.path.abspath(dir).startswith(PKG):
            raise PermissionError(13, "Permission denied", dir)
        return _tf(*args, dir=dir, **kwargs)
    tempfile.TemporaryFile = _guarded
"""

_SMALL_RUN = """
import torch
from unicornn.ops import unicornn_scan
x = torch.randn(6, 2, 3, requires_grad=True)
w = torch.rand(3, requires_grad=True)
c = torch.zeros(3, requires_grad=True)
y, _, _ = unicornn_scan(x, w, c, 0.5, 1.0, backend="cpu")
y.sum().backward()
assert torch.isfinite(x.grad).all()
print("run ok")
"""


def _read_only_copy(tmp_path):
    site = tmp_path / "site"
    shutil.copytree(SRC / "unicornn", site / "unicornn", ignore=shutil.ignore_patterns("__pycache__"))
    for root, dirs, files in os.walk(site):
        for f in files:
            os.chmod(os.path.join(root, f), 0o444)
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o555)
    os.chmod(site, 0o555)
    return site


def _make_writable(path):
    for root, dirs, _ in os.walk(path):
        os.chmod(root, 0o755)
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o755)


def test_read_only_install_caches_in_user_directory(tmp_path):
    site = _read_only_copy(tmp_path)
    xdg = tmp_path / "xdg-cache"
    env = {"HOME": str(tmp_path / "home"), "XDG_CACHE_HOME": str(xdg), "NUMBA_DEBUG_CACHE": "1"}
    code = _READ_ONLY_PRELUDE.format(pkg=str(site)) + _SMALL_RUN
    try:
        first = _python(code, env, pythonpath=site, env_drop=("NUMBA_CACHE_DIR",))
        assert first.returncode == 0, first.stderr
        assert "run ok" in first.stdout
        assert not list(site.rglob("*.nbi")) and not list(site.rglob("*.nbc"))
        user_cache = xdg / "numba"
        assert list(user_cache.rglob("*.nbi")) and list(user_cache.rglob("*.nbc"))
        assert "index saved" in first.stdout
        second = _python(code, env, pythonpath=site, env_drop=("NUMBA_CACHE_DIR",))
        assert second.returncode == 0, second.stderr
        assert "data loaded" in second.stdout and "index saved" not in second.stdout
    finally:
        _make_writable(site)


def test_no_writable_cache_location_still_works(tmp_path):
    env = {"HOME": str(tmp_path / "home"), "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    code = (
        """
import tempfile
def _refuse(*args, **kwargs):
    raise PermissionError(13, "Permission denied")
tempfile.TemporaryFile = _refuse
"""
        + _SMALL_RUN
    )
    site = tmp_path / "site"
    shutil.copytree(SRC / "unicornn", site / "unicornn", ignore=shutil.ignore_patterns("__pycache__"))
    proc = _python(code, env, pythonpath=site, env_drop=("NUMBA_CACHE_DIR",))
    assert proc.returncode == 0, proc.stderr
    assert "run ok" in proc.stdout
    assert not list(site.rglob("*.nbi")) and not list((tmp_path / "xdg").rglob("*.nbi"))


def _scan_in_child(queue):
    cpu_ops._MIN_PARALLEL_WORK = 0
    torch.set_num_threads(2)
    x = torch.randn(9, 4, 16)
    w = torch.rand(16)
    c = torch.zeros(16)
    y, _, _ = unicornn_scan(x, w, c, 0.3, 1.0, backend="cpu")
    ref, _, _ = unicornn_scan(x, w, c, 0.3, 1.0, backend="reference")
    queue.put(bool(torch.allclose(y, ref, rtol=1e-5, atol=1e-6)))


def test_threads_work_in_a_forked_process(monkeypatch):
    import multiprocessing

    monkeypatch.setattr(cpu_ops, "_MIN_PARALLEL_WORK", 0)
    with torch_threads(2):
        unicornn_scan(torch.randn(5, 4, 16), torch.rand(16), torch.zeros(16), 0.3, 1.0, backend="cpu")
    assert cpu_ops._POOL is not None  # the parent's pool exists and is inherited without its threads
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_scan_in_child, args=(queue,))
    proc.start()
    proc.join(timeout=120)
    if proc.is_alive():
        proc.terminate()
        pytest.fail("the fused CPU backend hung in a forked child")
    assert proc.exitcode == 0 and queue.get(timeout=5) is True
